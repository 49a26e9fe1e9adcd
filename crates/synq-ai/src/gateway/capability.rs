//! AI capabilities: the tokens that let a participant of a live session call the gateway.
//!
//! The reflector hands one to every participant of a synq session when it joins
//! ([`Capabilities::issue_frame_args`], called through a closure so that the reflector
//! does not depend on this crate). The gateway accepts a call only with a token that
//! verifies ([`Capabilities::verify`]) and whose session is live right now (asked of the
//! reflector through another closure), and keys its per-session limit on the token's
//! session, never on anything the caller names.
//!
//! Token: base64url (no padding) of `1 ‖ expiry (u64, big-endian Unix seconds) ‖ session id
//! ‖ HMAC-SHA256(secret, "synq-ai-capability/v1" ‖ 1 ‖ expiry ‖ session id)`. The secret is
//! random per process: a restart invalidates every token, and every client gets a new one
//! when it rejoins.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

const VERSION: u8 = 1;
const DOMAIN: &[u8] = b"synq-ai-capability/v1";
const MAC_LEN: usize = 32;
/// Longest session id in a token (the reflector allows 128 characters).
const MAX_SESSION: usize = 256;
/// Longest token accepted: checked before any decoding.
pub const MAX_TOKEN_CHARS: usize = (1 + 8 + MAX_SESSION + MAC_LEN) * 4 / 3 + 4;

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CapabilityError {
    #[error("the AI capability is malformed")]
    Malformed,
    #[error("the AI capability was not issued by this server")]
    Forged,
    #[error("the AI capability has expired")]
    Expired,
}

/// Issues and verifies AI capabilities with a secret made at start-up.
pub struct Capabilities {
    secret: [u8; 32],
    ttl: Duration,
}

impl std::fmt::Debug for Capabilities {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Capabilities")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Capabilities {
    /// Tokens valid for `ttl`, signed with a fresh random secret.
    pub fn new(ttl: Duration) -> Self {
        Self {
            secret: rand::random(),
            ttl,
        }
    }

    /// Tokens valid for `ttl`, signed with a secret derived from `shared`: every server
    /// given the same `shared` (the nodes of a cluster) accepts the others' tokens.
    pub fn shared(shared: &[u8], ttl: Duration) -> Self {
        use sha2::Digest as _;
        let mut h = sha2::Sha256::new();
        h.update(b"synq ai capability secret\0");
        h.update(shared);
        Self {
            secret: h.finalize().into(),
            ttl,
        }
    }

    fn mac(&self) -> HmacSha256 {
        let mut mac =
            HmacSha256::new_from_slice(&self.secret).expect("HMAC-SHA256 takes keys of any size");
        mac.update(DOMAIN);
        mac
    }

    /// A token for `session`, valid until the returned Unix time (seconds).
    pub fn issue(&self, session: &str) -> (String, u64) {
        self.issue_at(session, unix_now())
    }

    fn issue_at(&self, session: &str, now: u64) -> (String, u64) {
        let expires = now.saturating_add(self.ttl.as_secs().max(1));
        let session = truncate_bytes(session, MAX_SESSION);
        let mut bytes = Vec::with_capacity(1 + 8 + session.len() + MAC_LEN);
        bytes.push(VERSION);
        bytes.extend_from_slice(&expires.to_be_bytes());
        bytes.extend_from_slice(session.as_bytes());
        let mut mac = self.mac();
        mac.update(&bytes);
        bytes.extend_from_slice(&mac.finalize().into_bytes());
        (URL_SAFE_NO_PAD.encode(bytes), expires)
    }

    /// The `args` of the reflector's `AICAP` frame: `{"token": "…", "expires": UNIX_SECONDS}`.
    pub fn issue_frame_args(&self, session: &str) -> String {
        let (token, expires) = self.issue(session);
        serde_json::json!({"token": token, "expires": expires}).to_string()
    }

    /// The session a token was issued for, if it is this server's and not expired.
    pub fn verify(&self, token: &str) -> Result<String, CapabilityError> {
        self.verify_at(token, unix_now())
    }

    fn verify_at(&self, token: &str, now: u64) -> Result<String, CapabilityError> {
        if token.len() > MAX_TOKEN_CHARS {
            return Err(CapabilityError::Malformed);
        }
        let bytes = URL_SAFE_NO_PAD
            .decode(token.trim())
            .map_err(|_| CapabilityError::Malformed)?;
        if bytes.len() < 1 + 8 + 1 + MAC_LEN || bytes[0] != VERSION {
            return Err(CapabilityError::Malformed);
        }
        let (signed, tag) = bytes.split_at(bytes.len() - MAC_LEN);
        let mut mac = self.mac();
        mac.update(signed);
        // Constant-time comparison.
        mac.verify_slice(tag).map_err(|_| CapabilityError::Forged)?;
        let mut expiry = [0u8; 8];
        expiry.copy_from_slice(&signed[1..9]);
        if now >= u64::from_be_bytes(expiry) {
            return Err(CapabilityError::Expired);
        }
        String::from_utf8(signed[9..].to_vec()).map_err(|_| CapabilityError::Malformed)
    }
}

fn truncate_bytes(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut cut = max;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    &s[..cut]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_verifies_to_its_session_until_it_expires() {
        let caps = Capabilities::new(Duration::from_secs(60));
        let (token, expires) = caps.issue_at("synq1-room", 1_000);
        assert_eq!(expires, 1_060);
        assert!(token.len() <= MAX_TOKEN_CHARS);
        assert_eq!(caps.verify_at(&token, 1_059).as_deref(), Ok("synq1-room"));
        assert_eq!(caps.verify_at(&token, 1_060), Err(CapabilityError::Expired));
    }

    #[test]
    fn tokens_of_another_secret_or_tampered_ones_are_refused() {
        let caps = Capabilities::new(Duration::from_secs(60));
        let other = Capabilities::new(Duration::from_secs(60));
        let (theirs, _) = other.issue_at("synq1-room", 1_000);
        assert_eq!(caps.verify_at(&theirs, 1_001), Err(CapabilityError::Forged));

        let (token, _) = caps.issue_at("synq1-room", 1_000);
        let mut bytes = URL_SAFE_NO_PAD.decode(&token).expect("base64");
        // Another session under the same signature.
        bytes[9] ^= 1;
        let swapped = URL_SAFE_NO_PAD.encode(&bytes);
        assert_eq!(
            caps.verify_at(&swapped, 1_001),
            Err(CapabilityError::Forged)
        );
        // A later expiry under the same signature.
        let mut bytes = URL_SAFE_NO_PAD.decode(&token).expect("base64");
        bytes[1] = 0xff;
        let extended = URL_SAFE_NO_PAD.encode(&bytes);
        assert_eq!(
            caps.verify_at(&extended, 1_001),
            Err(CapabilityError::Forged)
        );

        for junk in ["", "not base64!", "AAAA", &"A".repeat(MAX_TOKEN_CHARS + 1)] {
            assert_eq!(caps.verify_at(junk, 1_001), Err(CapabilityError::Malformed));
        }
    }

    #[test]
    fn frame_args_are_json_with_the_token_and_its_expiry() {
        let caps = Capabilities::new(Duration::from_secs(60));
        let v: serde_json::Value =
            serde_json::from_str(&caps.issue_frame_args("synq1-x")).expect("json");
        let token = v["token"].as_str().expect("token");
        assert_eq!(caps.verify(token).as_deref(), Ok("synq1-x"));
        assert!(v["expires"].as_u64().is_some());
    }
}
