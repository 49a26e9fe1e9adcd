//! End-to-end encryption: the key comes from the password (which lives only in the
//! session URL), and every payload, view data, snapshot and the session check value is
//! sealed with an AEAD. The reflector and the file store only ever see ciphertext.

// Not model code: nonces and secrets come from the OS on purpose; nothing here is replica
// state.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// PBKDF2 rounds: OWASP's figure for PBKDF2-HMAC-SHA256 (2023). Session passwords made
/// by synq are random (≥ 128 bits), for which any count is enough; the count protects
/// passwords that people choose themselves. Browsers derive with WebCrypto, natively
/// fast; the wasm fallback (pages on plain http, where WebCrypto is absent) takes longer.
pub const PBKDF2_ROUNDS: u32 = 600_000;

/// The PBKDF2 output that every session key is expanded from.
pub type MasterKey = [u8; 32];

/// The PBKDF2 salt of a room: `"synq3/" ‖ room id` ([`crate::wire::room_id`]). The room,
/// not the session: the sessions of one room under successive model versions share the
/// master key, so that a later version opens what an earlier one persisted.
pub fn kdf_salt(room_id: &str) -> String {
    format!("synq3/{room_id}")
}

/// PBKDF2-HMAC-SHA256(password, [`kdf_salt`], `rounds`) → 32 bytes. One output block:
/// longer outputs would cost a full run of `rounds` per 32 bytes.
pub fn derive_master(password: &str, room_id: &str, rounds: u32) -> MasterKey {
    let mut master = [0u8; 32];
    pbkdf2::pbkdf2_hmac::<Sha256>(
        password.as_bytes(),
        kdf_salt(room_id).as_bytes(),
        rounds,
        &mut master,
    );
    master
}

fn expand(master: &MasterKey, label: &[u8], session_id: Option<&str>) -> [u8; 32] {
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(master).expect("HMAC accepts any key length");
    mac.update(b"synq2/");
    mac.update(label);
    if let Some(id) = session_id {
        mac.update(b"\0");
        mac.update(id.as_bytes());
    }
    mac.finalize().into_bytes().into()
}

const NONCE_LEN: usize = 24;

/// What a ciphertext is for. It is bound into the AEAD's associated data, so a ciphertext
/// of one kind (or of another session) never opens as another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Message,
    ViewData,
    Snapshot,
    SessionCheck,
    /// What the model persisted for later versions: bound to the room, not the session.
    Persisted,
    /// A file the model wrote (`Cx::write_file`): bound to the room and its name.
    File,
}

impl Purpose {
    fn label(self) -> &'static [u8] {
        match self {
            Purpose::Message => b"msg",
            Purpose::ViewData => b"view",
            Purpose::Snapshot => b"snap",
            Purpose::SessionCheck => b"tove",
            Purpose::Persisted => b"persist",
            Purpose::File => b"file",
        }
    }
}

/// Why a ciphertext did not open.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    #[error("ciphertext is not valid base64")]
    Encoding,
    #[error("ciphertext is truncated")]
    Truncated,
    #[error("ciphertext does not authenticate (wrong password, or tampered with)")]
    Authentication,
    #[error("the system's random number generator failed: {0}")]
    Random(String),
}

/// The session key: derived once per session from the password.
#[derive(Clone)]
pub struct SessionKey {
    aead: XChaCha20Poly1305,
    vote_key: [u8; 32],
    /// Names the room's files in the file store (see [`SessionKey::file_storage_name`]).
    file_key: [u8; 32],
    room_key: String,
    session_id: String,
    room_id: String,
}

impl std::fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionKey(..)")
    }
}

impl SessionKey {
    /// [`derive_master`], then [`SessionKey::from_master`].
    pub fn derive(password: &str, room_id: &str, session_id: &str, rounds: u32) -> SessionKey {
        SessionKey::from_master(
            &derive_master(password, room_id, rounds),
            room_id,
            session_id,
        )
    }

    /// The session's keys from its room's master key, each an HMAC of the master with its
    /// own label: the AEAD key (the room's; every ciphertext names its session, or for
    /// persisted data its room, in the associated data), a key for snapshot votes and the
    /// room key that the reflector checks at JOIN (both the session's own). Knowing the
    /// room key (the reflector does) yields none of the others, nor another session's.
    pub fn from_master(master: &MasterKey, room_id: &str, session_id: &str) -> SessionKey {
        let enc = expand(master, b"enc", None);
        let room = expand(master, b"room", Some(session_id));
        SessionKey {
            aead: XChaCha20Poly1305::new((&enc).into()),
            vote_key: expand(master, b"vote", Some(session_id)),
            file_key: expand(master, b"file", None),
            room_key: hex(&room),
            session_id: session_id.to_owned(),
            room_id: room_id.to_owned(),
        }
    }

    /// The room key (64 hex digits) that proves to the reflector that a JOIN knows the
    /// password (see `synq_protocol::identity`).
    pub fn room_key(&self) -> &str {
        &self.room_key
    }

    fn aad(&self, purpose: Purpose, bound: Option<&str>) -> Vec<u8> {
        let mut aad = b"synq1/".to_vec();
        aad.extend_from_slice(purpose.label());
        aad.push(b'/');
        let scope = match purpose {
            Purpose::Persisted | Purpose::File => &self.room_id,
            _ => &self.session_id,
        };
        aad.extend_from_slice(scope.as_bytes());
        if let Some(b) = bound {
            aad.push(0);
            aad.extend_from_slice(b.as_bytes());
        }
        aad
    }

    /// nonce ‖ ciphertext ‖ tag.
    pub fn seal(&self, purpose: Purpose, plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        self.seal_bound(purpose, None, plaintext)
    }

    /// [`SessionKey::seal`], bound to `bound` as well: it opens only with the same value
    /// (a view's data is bound to its view id, so that nobody can replay it as another).
    fn seal_bound(
        &self,
        purpose: Purpose,
        bound: Option<&str>,
        plaintext: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::getrandom(&mut nonce).map_err(|e| CryptoError::Random(e.to_string()))?;
        let aad = self.aad(purpose, bound);
        let ct = self
            .aead
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: &aad,
                },
            )
            .map_err(|_| CryptoError::Authentication)?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ct);
        Ok(out)
    }

    pub fn open(&self, purpose: Purpose, sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
        self.open_bound(purpose, None, sealed)
    }

    fn open_bound(
        &self,
        purpose: Purpose,
        bound: Option<&str>,
        sealed: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        if sealed.len() < NONCE_LEN + 16 {
            return Err(CryptoError::Truncated);
        }
        let (nonce, ct) = sealed.split_at(NONCE_LEN);
        let aad = self.aad(purpose, bound);
        self.aead
            .decrypt(XNonce::from_slice(nonce), Payload { msg: ct, aad: &aad })
            .map_err(|_| CryptoError::Authentication)
    }

    /// [`SessionKey::seal`] as base64 text (for JSON frames).
    pub fn seal_text(&self, purpose: Purpose, plaintext: &[u8]) -> Result<String, CryptoError> {
        Ok(B64.encode(self.seal(purpose, plaintext)?))
    }

    pub fn open_text(&self, purpose: Purpose, text: &str) -> Result<Vec<u8>, CryptoError> {
        let sealed = B64.decode(text).map_err(|_| CryptoError::Encoding)?;
        self.open(purpose, &sealed)
    }

    /// A file of the room named `name` by the model, sealed for that name only (so that
    /// one file cannot be passed off as another).
    pub fn seal_file(&self, name: &str, data: &[u8]) -> Result<Vec<u8>, CryptoError> {
        self.seal_bound(Purpose::File, Some(name), data)
    }

    pub fn open_file(&self, name: &str, sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
        self.open_bound(Purpose::File, Some(name), sealed)
    }

    /// Where the room's file `name` is stored: an HMAC of the name with a key of the
    /// room, so that only those with the password can tell (or take first) the name of a
    /// file the model will write. 32 hex digits.
    pub fn file_storage_name(&self, name: &str) -> String {
        hex(&hmac(&self.file_key, name.as_bytes())[..16])
    }

    /// A view's data, sealed for that view id only.
    pub fn seal_view_data(&self, view_id: &str, data: &[u8]) -> Result<String, CryptoError> {
        Ok(B64.encode(self.seal_bound(Purpose::ViewData, Some(view_id), data)?))
    }

    /// Opens a view's data announced for `view_id`; data sealed for another view id
    /// (replayed from another participant's join) does not open.
    pub fn open_view_data(&self, view_id: &str, text: &str) -> Result<Vec<u8>, CryptoError> {
        let sealed = B64.decode(text).map_err(|_| CryptoError::Encoding)?;
        self.open_bound(Purpose::ViewData, Some(view_id), &sealed)
    }

    /// The value a replica votes with for a snapshot: HMAC of its hash, so that the
    /// reflector, which tallies votes, learns nothing about the state.
    pub fn vote(&self, snapshot_hash: &[u8; 32]) -> String {
        hex(&hmac(&self.vote_key, snapshot_hash))
    }
}

/// HMAC-SHA256 of `data` under `key`.
fn hmac(key: &[u8; 32], data: &[u8]) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC accepts any key length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// Lowercase hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Random bytes as lowercase hex (view proofs, session names).
pub fn random_hex(bytes: usize) -> Result<String, CryptoError> {
    let mut buf = vec![0u8; bytes];
    getrandom::getrandom(&mut buf).map_err(|e| CryptoError::Random(e.to_string()))?;
    Ok(hex(&buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(pw: &str, sid: &str) -> SessionKey {
        SessionKey::derive(pw, "room", sid, 1000)
    }

    #[test]
    fn sealed_text_opens_with_the_same_password_and_purpose_only() {
        let k = key("pw", "s");
        let sealed = k.seal_text(Purpose::Message, b"hello").unwrap();
        assert_eq!(k.open_text(Purpose::Message, &sealed).unwrap(), b"hello");
        assert_eq!(
            key("other", "s").open_text(Purpose::Message, &sealed),
            Err(CryptoError::Authentication)
        );
        assert_eq!(
            key("pw", "other-session").open_text(Purpose::Message, &sealed),
            Err(CryptoError::Authentication)
        );
        assert_eq!(
            k.open_text(Purpose::Snapshot, &sealed),
            Err(CryptoError::Authentication)
        );
    }

    #[test]
    fn tampered_or_truncated_ciphertext_is_refused() {
        let k = key("pw", "s");
        let mut sealed = k.seal(Purpose::Snapshot, &[7u8; 100]).unwrap();
        let last = sealed.len() - 1;
        sealed[last] ^= 1;
        assert_eq!(
            k.open(Purpose::Snapshot, &sealed),
            Err(CryptoError::Authentication)
        );
        assert_eq!(
            k.open(Purpose::Snapshot, &sealed[..10]),
            Err(CryptoError::Truncated)
        );
        assert_eq!(
            k.open_text(Purpose::Message, "%%%"),
            Err(CryptoError::Encoding)
        );
    }

    #[test]
    fn sealing_twice_gives_different_ciphertexts() {
        let k = key("pw", "s");
        assert_ne!(
            k.seal(Purpose::Message, b"same").unwrap(),
            k.seal(Purpose::Message, b"same").unwrap()
        );
    }

    #[test]
    fn view_data_opens_only_for_the_view_it_was_sealed_for() {
        let k = key("pw", "s");
        let sealed = k.seal_view_data("alice", b"Alice").unwrap();
        assert_eq!(k.open_view_data("alice", &sealed).unwrap(), b"Alice");
        assert_eq!(
            k.open_view_data("mallory", &sealed),
            Err(CryptoError::Authentication)
        );
        assert_eq!(
            k.open_text(Purpose::ViewData, &sealed),
            Err(CryptoError::Authentication)
        );
    }

    #[test]
    fn the_room_key_depends_on_password_and_session_and_is_none_of_the_other_keys() {
        let k = key("pw", "s");
        assert_eq!(k.room_key().len(), 64);
        assert_eq!(k.room_key(), key("pw", "s").room_key());
        assert_ne!(k.room_key(), key("pw2", "s").room_key());
        assert_ne!(k.room_key(), key("pw", "s2").room_key());
        let master = derive_master("pw", "room", 1000);
        assert_eq!(
            SessionKey::from_master(&master, "room", "s").room_key(),
            k.room_key()
        );
        assert_ne!(k.vote(&[0; 32]), k.room_key());
    }

    #[test]
    fn the_master_key_is_standard_pbkdf2_hmac_sha256() {
        // RFC 7914 section 11's PBKDF2-HMAC-SHA256 vector ("passwd", "salt", c = 1): the
        // browser derives the same bytes with WebCrypto.
        let mut out = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<Sha256>(b"passwd", b"salt", 1, &mut out);
        assert_eq!(out[..8], [0x55, 0xac, 0x04, 0x6e, 0x56, 0xe3, 0x08, 0x9f]);
        assert_eq!(kdf_salt("r"), "synq3/r");
    }

    #[test]
    fn persisted_data_opens_in_every_session_of_its_room_only() {
        // Two versions of a model: two sessions of one room.
        let v1 = key("pw", "session-v1");
        let v2 = key("pw", "session-v2");
        let sealed = v1.seal(Purpose::Persisted, b"history").unwrap();
        assert_eq!(v2.open(Purpose::Persisted, &sealed).unwrap(), b"history");
        let other_room = SessionKey::derive("pw", "room2", "session-v2", 1000);
        assert_eq!(
            other_room.open(Purpose::Persisted, &sealed),
            Err(CryptoError::Authentication)
        );
        assert_eq!(
            key("pw2", "session-v2").open(Purpose::Persisted, &sealed),
            Err(CryptoError::Authentication)
        );
        // Everything else stays bound to its session.
        let msg = v1.seal(Purpose::Message, b"hi").unwrap();
        assert_eq!(
            v2.open(Purpose::Message, &msg),
            Err(CryptoError::Authentication)
        );
        assert_ne!(v1.room_key(), v2.room_key());
        assert_ne!(v1.vote(&[0; 32]), v2.vote(&[0; 32]));
    }

    #[test]
    fn a_file_opens_in_every_session_of_its_room_under_its_own_name_only() {
        let v1 = key("pw", "session-v1");
        let v2 = key("pw", "session-v2");
        let sealed = v1.seal_file("archive/1", b"page").unwrap();
        assert_eq!(v2.open_file("archive/1", &sealed).unwrap(), b"page");
        assert_eq!(
            v2.open_file("archive/2", &sealed),
            Err(CryptoError::Authentication)
        );
        assert_eq!(
            v2.file_storage_name("archive/1"),
            v1.file_storage_name("archive/1")
        );
        assert_ne!(
            v1.file_storage_name("archive/1"),
            v1.file_storage_name("archive/2")
        );
        assert_ne!(
            key("pw2", "session-v1").file_storage_name("archive/1"),
            v1.file_storage_name("archive/1")
        );
    }

    #[test]
    fn votes_are_keyed() {
        let h = [1u8; 32];
        assert_eq!(key("pw", "s").vote(&h), key("pw", "s").vote(&h));
        assert_ne!(key("pw", "s").vote(&h), key("pw2", "s").vote(&h));
    }
}
