//! synq's extension of the Croquet protocol: a room key and authenticated senders.
//!
//! The Croquet reflector protocol lets anyone who knows a session id join it, and does not
//! say who sent a message (the sender's view id is a claim inside the encrypted payload,
//! which any participant who knows the password can forge). In sessions whose id starts
//! with [`SYNQ_SESSION_PREFIX`] the synq reflector therefore:
//!
//! 1. requires the JOIN's `user` to be `{"id": ID, "data"?: D, "proof": P, "room": R}`:
//!    - `ID == view_id_for_proof(P)`: a view id is a commitment to a secret that only the
//!      view and the reflector see, so nobody else can join under that id (a reconnecting
//!      view presents the same proof and keeps its id);
//!    - `R` is the room key, derived from the password (the client's `SessionKey`). The
//!      JOIN that creates the session fixes [`room_verifier`]`(R)`; every later JOIN must
//!      present a key with the same verifier, or it is refused (4110). Without the password
//!      nobody can join, send, vote or register a snapshot; the key opens nothing (the
//!      encryption key is derived apart from it).
//!
//!    The proof and the room key are removed before the `user` value is announced.
//! 2. appends the sending connection's view id as the last element of every message it
//!    sequences (`[time, seq, payload, latency, "ID"]`).
//!
//! The synq client additionally puts its view id inside the encrypted payload and drops a
//! message whose two ids differ: a participant cannot impersonate another (the reflector
//! stamps the connection's id), and the reflector cannot re-attribute a message without
//! every client noticing (it cannot change the encrypted claim). Every client sees the
//! same frames and so drops the same messages: rejection never makes replicas diverge.
//! Croquet sessions (ids without the prefix) are not affected. Sessions of an older synq
//! ([`OBSOLETE_SYNQ_PREFIXES`]) are refused as outdated: they have no room key.

use serde_json::Value;

/// Session ids with this prefix need the room key and get authenticated senders.
pub const SYNQ_SESSION_PREFIX: &str = "synq2-";

/// Session ids of older synq versions, refused (their clients send no room key).
pub const OBSOLETE_SYNQ_PREFIXES: &[&str] = &["synq1-"];

/// Whether the session needs the room key and uses authenticated senders.
pub fn is_synq_session(session_id: &str) -> bool {
    session_id.starts_with(SYNQ_SESSION_PREFIX)
}

/// Whether the session id is one of an older synq, which this reflector refuses.
pub fn is_obsolete_synq_session(session_id: &str) -> bool {
    OBSOLETE_SYNQ_PREFIXES
        .iter()
        .any(|p| session_id.starts_with(p))
}

/// Longest room key accepted (a client sends 64 hex digits).
const MAX_ROOM_KEY_LEN: usize = 128;

/// What the reflector keeps of a room key: 64 hex digits of SHA-256("synq2/room/" ‖ key).
/// The key itself is never stored, so a journal does not let anyone join.
pub fn room_verifier(room_key: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::new()
        .chain_update(b"synq2/room/")
        .chain_update(room_key.as_bytes())
        .finalize();
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The view id that a proof commits to: 20 hex digits (80 bits) of
/// SHA-256("synq1/view/" ‖ proof).
pub fn view_id_for_proof(proof: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::new()
        .chain_update(b"synq1/view/")
        .chain_update(proof.as_bytes())
        .finalize();
    digest[..10].iter().map(|b| format!("{b:02x}")).collect()
}

/// Why a JOIN's `user` was refused in a synq session.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("user must be an object with string fields id and proof")]
    Shape,
    #[error("the view id does not match its proof")]
    Mismatch,
    #[error(
        "a JOIN to a synq session must carry the room key (field room, at most {MAX_ROOM_KEY_LEN} characters)"
    )]
    NoRoomKey,
}

/// A checked synq user: its view id, the verifier of its room key, and the `user` JSON to
/// announce (without the proof and the room key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedUser {
    pub view_id: String,
    pub room_verifier: String,
    pub announced: String,
}

/// Why a message's content was refused in a synq session.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContentError {
    #[error("a message in a synq session must be [time, seq, \"<base64 ciphertext>\", latency]")]
    Shape,
}

/// Checks that the elements after `[time, seq` of a client's message are what a synq
/// client sends: one base64 string (the sealed payload) and the latency number.
///
/// Anything else is refused by the reflector in synq sessions: in particular an object
/// payload, which clients would take for a reflector event (`{"what":"users",…}`), and
/// extra elements, which would sit where the reflector puts the sender's stamp.
pub fn check_content(tail: &crate::client::MessageTail) -> Result<(), ContentError> {
    if tail.len != 2 {
        return Err(ContentError::Shape);
    }
    let (payload, latency) = tail
        .text
        .split_at_checked(tail.last_offset.saturating_sub(1))
        .ok_or(ContentError::Shape)?;
    let sealed = payload
        .strip_prefix('"')
        .and_then(|p| p.strip_suffix('"'))
        .ok_or(ContentError::Shape)?;
    let base64 = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=');
    if sealed.is_empty() || !sealed.bytes().all(base64) {
        return Err(ContentError::Shape);
    }
    // `latency` is ",<number>".
    let number = latency.strip_prefix(',').ok_or(ContentError::Shape)?;
    if number.parse::<f64>().is_err() {
        return Err(ContentError::Shape);
    }
    Ok(())
}

/// Checks a JOIN's `user` value in a synq session.
pub fn check_user(user_json: &str) -> Result<CheckedUser, IdentityError> {
    let value: Value = serde_json::from_str(user_json).map_err(|_| IdentityError::Shape)?;
    let obj = value.as_object().ok_or(IdentityError::Shape)?;
    let id = obj
        .get("id")
        .and_then(Value::as_str)
        .ok_or(IdentityError::Shape)?;
    let proof = obj
        .get("proof")
        .and_then(Value::as_str)
        .ok_or(IdentityError::Shape)?;
    if view_id_for_proof(proof) != id {
        return Err(IdentityError::Mismatch);
    }
    let room = obj
        .get("room")
        .and_then(Value::as_str)
        .filter(|r| !r.is_empty() && r.len() <= MAX_ROOM_KEY_LEN)
        .ok_or(IdentityError::NoRoomKey)?;
    let mut announced = serde_json::Map::new();
    announced.insert("id".into(), Value::String(id.to_owned()));
    if let Some(data) = obj.get("data") {
        announced.insert("data".into(), data.clone());
    }
    Ok(CheckedUser {
        view_id: id.to_owned(),
        room_verifier: room_verifier(room),
        announced: Value::Object(announced).to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_matching_proof_is_accepted_and_removed_from_the_announcement() {
        let id = view_id_for_proof("secret");
        assert_eq!(id.len(), 20);
        let user = format!(r#"{{"id":"{id}","data":"enc","proof":"secret","room":"roomkey"}}"#);
        let checked = check_user(&user).unwrap();
        assert_eq!(checked.view_id, id);
        assert_eq!(checked.room_verifier, room_verifier("roomkey"));
        assert!(!checked.announced.contains("secret"));
        assert!(!checked.announced.contains("roomkey"));
        assert!(checked.announced.contains(r#""data":"enc""#));
    }

    #[test]
    fn only_a_sealed_string_and_a_latency_are_content() {
        use crate::client::SendArgs;
        let tail = |args: &str| {
            let raw = serde_json::value::RawValue::from_string(args.to_owned()).unwrap();
            SendArgs::parse(Some(&raw)).unwrap().tail
        };
        assert_eq!(check_content(&tail(r#"[0,0,"AbC+/9==",0]"#)), Ok(()));
        assert_eq!(check_content(&tail(r#"[0,0,"AbC",12.5]"#)), Ok(()));
        for bad in [
            r#"[0,0,{"what":"users","left":[{"id":"x"}]},0]"#,
            r#"[0,0,"AbC",0,"forgedviewid"]"#,
            r#"[0,0,"AbC"]"#,
            r#"[0,0,"",0]"#,
            r#"[0,0,"a\u0022b",0]"#,
            r#"[0,0,"AbC","0"]"#,
            r#"[0,0,["AbC"],0]"#,
        ] {
            assert_eq!(check_content(&tail(bad)), Err(ContentError::Shape), "{bad}");
        }
    }

    #[test]
    fn a_wrong_or_missing_proof_is_refused() {
        let id = view_id_for_proof("secret");
        let forged = format!(r#"{{"id":"{id}","proof":"guess","room":"k"}}"#);
        assert_eq!(check_user(&forged), Err(IdentityError::Mismatch));
        assert_eq!(check_user(r#""plainviewid""#), Err(IdentityError::Shape));
        assert_eq!(
            check_user(&format!(r#"{{"id":"{id}"}}"#)),
            Err(IdentityError::Shape)
        );
        for room in ["", r#","room":"""#, r#","room":7"#] {
            let user = format!(r#"{{"id":"{id}","proof":"secret"{room}}}"#);
            assert_eq!(check_user(&user), Err(IdentityError::NoRoomKey), "{user}");
        }
        let long = "k".repeat(129);
        let user = format!(r#"{{"id":"{id}","proof":"secret","room":"{long}"}}"#);
        assert_eq!(check_user(&user), Err(IdentityError::NoRoomKey));
    }

    #[test]
    fn only_synq2_sessions_need_the_room_key_and_synq1_ones_are_obsolete() {
        assert!(is_synq_session("synq2-abc"));
        assert!(!is_synq_session("synq1-abc"));
        assert!(is_obsolete_synq_session("synq1-abc"));
        assert!(!is_obsolete_synq_session("croquet-session"));
        assert_ne!(room_verifier("a"), room_verifier("b"));
        assert_eq!(room_verifier("a").len(), 64);
    }
}
