//! Errors a user of the client can act on.

/// Why joining or staying in a session failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    #[error(
        "wrong password: this session was created with a different password (nothing was applied)"
    )]
    WrongPassword,
    #[error("the reflector at {url} is unreachable: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("the session's snapshot could not be loaded: {0}")]
    Snapshot(String),
    #[error("the reflector skipped messages (expected seq {expected}, got {got}); rejoining")]
    Gap { expected: u32, got: u32 },
    #[error("the reflector sent something this client does not understand: {0}")]
    Protocol(String),
    #[error("the reflector closed the session: {reason} ({code})")]
    Closed { code: u16, reason: String },
    #[error("an input of {size} bytes is larger than a message may be ({limit} bytes)")]
    InputTooLarge { size: usize, limit: usize },
    #[error("the input could not be encoded: {0}")]
    Encode(String),
    #[error("encryption failed: {0}")]
    Crypto(String),
    #[error("the session has ended")]
    Ended,
}

impl ClientError {
    /// The error for the reflector's close frame: a refused room key (4110) is a wrong
    /// password.
    pub fn closed(code: u16, reason: String) -> ClientError {
        if code == synq_protocol::CloseCode::WrongRoomKey.code() {
            ClientError::WrongPassword
        } else {
            ClientError::Closed { code, reason }
        }
    }

    /// Whether the client should rejoin by itself after this error.
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Gap { .. } | ClientError::Unreachable { .. } => true,
            ClientError::Closed { code, .. } => *code < 4100 || *code == 1006 || *code == 1001,
            _ => false,
        }
    }
}
