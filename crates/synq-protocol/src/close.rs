//! WebSocket close codes used by the reflector.
//!
//! A Croquet 2.0.4 client reconnects by itself after codes below 4100 (and 1001/1006),
//! treats 4110 as "dormant", and treats every other code ≥ 4100 as fatal: it shows the
//! reason and does not reconnect. Codes 4104–4107 are synq's own, chosen inside the fatal
//! range so that a misbehaving client stops instead of reconnecting in a loop.

/// A reflector close code with its reason text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseCode {
    /// 4000: TUTTI/SNAP/SAVE/TICKS without a joined session (client reconnects).
    UnknownSession,
    /// 4001: the client could not keep up with the session (client reconnects, then catches up via SYNC).
    ClientUnresponsive,
    /// 4002: nothing received from the client for too long.
    ClientInactive,
    /// 4003: the session moved or closed; reconnect.
    PleaseReconnect,
    /// 4100: no session id in the URL, or JOIN without a protocol version.
    OutdatedProtocol,
    /// 4101: SAVE for a session without appId/persistentId.
    BadAppId,
    /// 4102: a frame that is not a JSON object, or arguments of the wrong shape.
    MalformedMessage,
    /// 4103: JOIN without an apiKey field.
    BadApiKey,
    /// 4104: a frame larger than the reflector accepts.
    MessageTooLarge,
    /// 4105: the client sent more messages per second than allowed.
    RateLimited,
    /// 4106: the session refuses this JOIN (e.g. too many clients).
    SessionFull,
    /// 4107: in a synq session, a JOIN whose view id does not match its proof (see
    /// `identity`).
    BadIdentity,
    /// 4108: the server holds as many sessions as it may (in all, or for this address).
    ServerFull,
    /// 4109: an internal error while handling a message.
    UnknownError,
    /// 4110: in a synq session, a JOIN whose room key is not the session's (a wrong
    /// password; see `identity`).
    WrongRoomKey,
    /// 4121: no JOIN within the allowed time after connecting.
    NeverJoined,
}

impl CloseCode {
    pub fn code(self) -> u16 {
        match self {
            CloseCode::UnknownSession => 4000,
            CloseCode::ClientUnresponsive => 4001,
            CloseCode::ClientInactive => 4002,
            CloseCode::PleaseReconnect => 4003,
            CloseCode::OutdatedProtocol => 4100,
            CloseCode::BadAppId => 4101,
            CloseCode::MalformedMessage => 4102,
            CloseCode::BadApiKey => 4103,
            CloseCode::MessageTooLarge => 4104,
            CloseCode::RateLimited => 4105,
            CloseCode::SessionFull => 4106,
            CloseCode::BadIdentity => 4107,
            CloseCode::ServerFull => 4108,
            CloseCode::UnknownError => 4109,
            CloseCode::WrongRoomKey => 4110,
            CloseCode::NeverJoined => 4121,
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            CloseCode::UnknownSession => "unknown session",
            CloseCode::ClientUnresponsive => "client unresponsive",
            CloseCode::ClientInactive => "client inactive",
            CloseCode::PleaseReconnect => "please reconnect",
            CloseCode::OutdatedProtocol => "outdated protocol",
            CloseCode::BadAppId => "bad appId",
            CloseCode::MalformedMessage => "malformed message",
            CloseCode::BadApiKey => "bad apiKey",
            CloseCode::MessageTooLarge => "message too large",
            CloseCode::RateLimited => "rate limit exceeded",
            CloseCode::SessionFull => "session full",
            CloseCode::BadIdentity => "view id does not match its proof",
            CloseCode::ServerFull => "server full",
            CloseCode::UnknownError => "unknown error",
            CloseCode::WrongRoomKey => "wrong room key (password)",
            CloseCode::NeverJoined => "client never joined",
        }
    }

    pub fn from_code(code: u16) -> Option<CloseCode> {
        ALL.iter().copied().find(|c| c.code() == code)
    }

    /// Whether a Croquet client reconnects by itself after this code.
    pub fn client_reconnects(self) -> bool {
        self.code() < 4100
    }
}

const ALL: [CloseCode; 16] = [
    CloseCode::UnknownSession,
    CloseCode::ClientUnresponsive,
    CloseCode::ClientInactive,
    CloseCode::PleaseReconnect,
    CloseCode::OutdatedProtocol,
    CloseCode::BadAppId,
    CloseCode::MalformedMessage,
    CloseCode::BadApiKey,
    CloseCode::MessageTooLarge,
    CloseCode::RateLimited,
    CloseCode::SessionFull,
    CloseCode::BadIdentity,
    CloseCode::ServerFull,
    CloseCode::UnknownError,
    CloseCode::WrongRoomKey,
    CloseCode::NeverJoined,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip() {
        for c in ALL {
            assert_eq!(CloseCode::from_code(c.code()), Some(c));
        }
    }

    #[test]
    fn abuse_codes_are_fatal_for_croquet_clients() {
        assert!(!CloseCode::RateLimited.client_reconnects());
        assert!(!CloseCode::MessageTooLarge.client_reconnects());
        assert!(CloseCode::ClientUnresponsive.client_reconnects());
    }
}
