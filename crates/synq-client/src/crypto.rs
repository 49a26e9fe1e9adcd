//! End-to-end encryption: the key comes from the password (which lives only in the
//! session URL), and every payload, view data, snapshot and the session check value is
//! sealed with an AEAD. The reflector and the file store only ever see ciphertext.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// PBKDF2 rounds. Session passwords made by synq are random (≥ 128 bits), for which any
/// count is enough; the count protects passwords that people choose themselves, and stays
/// around a tenth of a second in a browser.
pub const PBKDF2_ROUNDS: u32 = 100_000;

const NONCE_LEN: usize = 24;

/// What a ciphertext is for. It is bound into the AEAD's associated data, so a ciphertext
/// of one kind (or of another session) never opens as another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Message,
    ViewData,
    Snapshot,
    SessionCheck,
}

impl Purpose {
    fn label(self) -> &'static [u8] {
        match self {
            Purpose::Message => b"msg",
            Purpose::ViewData => b"view",
            Purpose::Snapshot => b"snap",
            Purpose::SessionCheck => b"tove",
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
    session_id: String,
}

impl std::fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionKey(..)")
    }
}

impl SessionKey {
    /// PBKDF2-HMAC-SHA256(password, salt = "synq1/" ‖ session id, `rounds`) → 64 bytes:
    /// the AEAD key and a key for snapshot votes.
    pub fn derive(password: &str, session_id: &str, rounds: u32) -> SessionKey {
        let mut okm = [0u8; 64];
        let salt = format!("synq1/{session_id}");
        pbkdf2::pbkdf2_hmac::<Sha256>(password.as_bytes(), salt.as_bytes(), rounds, &mut okm);
        let (enc, vote) = okm.split_at(32);
        let aead = XChaCha20Poly1305::new(enc.into());
        let mut vote_key = [0u8; 32];
        vote_key.copy_from_slice(vote);
        SessionKey {
            aead,
            vote_key,
            session_id: session_id.to_owned(),
        }
    }

    fn aad(&self, purpose: Purpose, bound: Option<&str>) -> Vec<u8> {
        let mut aad = b"synq1/".to_vec();
        aad.extend_from_slice(purpose.label());
        aad.push(b'/');
        aad.extend_from_slice(self.session_id.as_bytes());
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
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.vote_key)
            .expect("HMAC accepts any key length");
        mac.update(snapshot_hash);
        mac.finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

/// Random bytes as lowercase hex (view proofs, session names).
pub fn random_hex(bytes: usize) -> Result<String, CryptoError> {
    let mut buf = vec![0u8; bytes];
    getrandom::getrandom(&mut buf).map_err(|e| CryptoError::Random(e.to_string()))?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(pw: &str, sid: &str) -> SessionKey {
        SessionKey::derive(pw, sid, 1000)
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
    fn votes_are_keyed() {
        let h = [1u8; 32];
        assert_eq!(key("pw", "s").vote(&h), key("pw", "s").vote(&h));
        assert_ne!(key("pw", "s").vote(&h), key("pw2", "s").vote(&h));
    }
}
