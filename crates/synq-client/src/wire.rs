//! What travels inside the encrypted payload of a message, and the session id.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use synq_protocol::identity::SYNQ_SESSION_PREFIX;

use crate::crypto::hex;

/// The plaintext of a message payload (postcard, then sealed).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct Wire {
    /// The sender's claim; it must equal the id the reflector stamped.
    pub view: String,
    pub body: Body,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) enum Body {
    /// Consecutive inputs numbered `first_n`, `first_n + 1`, … (postcard of `M::Input`).
    Inputs { first_n: u64, inputs: Vec<Vec<u8>> },
    /// "Everybody snapshot here": every synced replica snapshots at this point of the
    /// stream and votes.
    SnapshotPoll,
}

/// The reflector session id for an app, a session name and a model schema. The schema is
/// part of it so that replicas of incompatible models never meet; the password is not, so
/// that a wrong password is reported as such (the reflector refuses its room key)
/// instead of opening an empty session.
pub fn session_id(app_id: &str, session_name: &str, schema: &str) -> String {
    let digest = Sha256::new()
        .chain_update(b"synq2/session\0")
        .chain_update(app_id.as_bytes())
        .chain_update(b"\0")
        .chain_update(session_name.as_bytes())
        .chain_update(b"\0")
        .chain_update(schema.as_bytes())
        .finalize();
    format!("{SYNQ_SESSION_PREFIX}{}", hex(&digest[..16]))
}

/// The room of an app and a session name, whatever the model version: the sessions of
/// one room under successive schemas share it. It is the `persistentId` of the JOIN (the
/// reflector hands a new session what the room's last session persisted) and the salt of
/// the room's key ([`crate::crypto::kdf_salt`]).
pub fn room_id(app_id: &str, session_name: &str) -> String {
    let digest = Sha256::new()
        .chain_update(b"synq3/room\0")
        .chain_update(app_id.as_bytes())
        .chain_update(b"\0")
        .chain_update(session_name.as_bytes())
        .finalize();
    hex(&digest[..16])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_session_id_depends_on_app_name_and_schema() {
        let a = session_id("app", "room", "chat/1");
        assert!(a.starts_with("synq2-"));
        assert_eq!(a, session_id("app", "room", "chat/1"));
        assert_ne!(a, session_id("app", "room", "chat/2"));
        assert_ne!(a, session_id("app", "room2", "chat/1"));
        assert_ne!(a, session_id("app2", "room", "chat/1"));
    }

    #[test]
    fn the_room_id_is_the_same_for_every_schema() {
        let r = room_id("app", "room");
        assert_eq!(r.len(), 32);
        assert!(r.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(r, room_id("app", "room2"));
        assert_ne!(r, room_id("app2", "room"));
    }
}
