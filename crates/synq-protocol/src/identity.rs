//! synq's extension of the Croquet protocol: authenticated senders.
//!
//! The Croquet reflector protocol does not say who sent a message (the sender's view id is
//! a claim inside the encrypted payload, which any participant who knows the password can
//! forge). In sessions whose id starts with [`SYNQ_SESSION_PREFIX`] the synq reflector
//! therefore:
//!
//! 1. requires the JOIN's `user` to be `{"id": ID, "data"?: D, "proof": P}` with
//!    `ID == view_id_for_proof(P)`: a view id is a commitment to a secret that only the
//!    view and the reflector see, so nobody else can join under that id (a reconnecting
//!    view presents the same proof and keeps its id). The proof is removed before the
//!    `user` value is announced to the session.
//! 2. appends the sending connection's view id as the last element of every message it
//!    sequences (`[time, seq, payload, latency, "ID"]`).
//!
//! The synq client additionally puts its view id inside the encrypted payload and drops a
//! message whose two ids differ: a participant cannot impersonate another (the reflector
//! stamps the connection's id), and the reflector cannot re-attribute a message without
//! every client noticing (it cannot change the encrypted claim). Every client sees the
//! same frames and so drops the same messages: rejection never makes replicas diverge.
//! Croquet sessions (ids without the prefix) are not affected.

use serde_json::Value;

/// Session ids with this prefix get authenticated senders.
pub const SYNQ_SESSION_PREFIX: &str = "synq1-";

/// Whether the session uses authenticated senders.
pub fn is_synq_session(session_id: &str) -> bool {
    session_id.starts_with(SYNQ_SESSION_PREFIX)
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
}

/// A checked synq user: its view id and the `user` JSON to announce (without the proof).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedUser {
    pub view_id: String,
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
    let mut announced = serde_json::Map::new();
    announced.insert("id".into(), Value::String(id.to_owned()));
    if let Some(data) = obj.get("data") {
        announced.insert("data".into(), data.clone());
    }
    Ok(CheckedUser {
        view_id: id.to_owned(),
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
        let user = format!(r#"{{"id":"{id}","data":"enc","proof":"secret"}}"#);
        let checked = check_user(&user).unwrap();
        assert_eq!(checked.view_id, id);
        assert!(!checked.announced.contains("secret"));
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
        let forged = format!(r#"{{"id":"{id}","proof":"guess"}}"#);
        assert_eq!(check_user(&forged), Err(IdentityError::Mismatch));
        assert_eq!(check_user(r#""plainviewid""#), Err(IdentityError::Shape));
        assert_eq!(
            check_user(&format!(r#"{{"id":"{id}"}}"#)),
            Err(IdentityError::Shape)
        );
    }
}
