//! Parsing a client→reflector frame into its envelope, without copying the arguments.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

/// Why a frame could not be understood at all (→ close 4102 "malformed message").
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnvelopeError {
    #[error("frame is not valid JSON: {0}")]
    NotJson(String),
    #[error("frame is JSON but not an object")]
    NotAnObject,
}

/// The actions a client may send. Unknown actions are kept so they can be logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action<'a> {
    Join,
    Send,
    Tutti,
    Snap,
    Save,
    Pulse,
    Log,
    Ping,
    Ticks,
    Unknown(Cow<'a, str>),
}

impl<'a> Action<'a> {
    fn from_name(name: Cow<'a, str>) -> Action<'a> {
        match name.as_ref() {
            "JOIN" => Action::Join,
            "SEND" => Action::Send,
            "TUTTI" => Action::Tutti,
            "SNAP" => Action::Snap,
            "SAVE" => Action::Save,
            "PULSE" => Action::Pulse,
            "LOG" => Action::Log,
            "PING" => Action::Ping,
            "TICKS" => Action::Ticks,
            _ => Action::Unknown(name),
        }
    }
}

/// `{"id": …, "action": …, "args": …, "tags": …}` as sent by a client.
///
/// `id` is ignored: the session is the one named by the WebSocket URL, as in Croquet.
#[derive(Debug)]
pub struct ClientEnvelope<'a> {
    pub action: Action<'a>,
    pub args: Option<&'a RawValue>,
    pub tags: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Wire<'a> {
    #[serde(borrow, default)]
    action: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    args: Option<&'a RawValue>,
    #[serde(borrow, default)]
    tags: Option<&'a RawValue>,
}

impl<'a> ClientEnvelope<'a> {
    /// Parse one text frame. Fails only for frames that are not a JSON object; a missing
    /// or unknown `action` yields [`Action::Unknown`] (logged and ignored by the reflector).
    pub fn parse(text: &'a str) -> Result<ClientEnvelope<'a>, EnvelopeError> {
        // serde would happily read a struct from a JSON array; Croquet requires an object.
        let first = text.trim_start().as_bytes().first().copied();
        let wire: Wire<'a> = serde_json::from_str(text).map_err(|e| {
            if first == Some(b'{') {
                EnvelopeError::NotJson(e.to_string())
            } else if serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok() {
                EnvelopeError::NotAnObject
            } else {
                EnvelopeError::NotJson(e.to_string())
            }
        })?;
        if first != Some(b'{') {
            return Err(EnvelopeError::NotAnObject);
        }
        let action = Action::from_name(wire.action.unwrap_or(Cow::Borrowed("")));
        // `"args": null` is the same as no args.
        let args = wire.args.filter(|a| a.get() != "null");
        Ok(ClientEnvelope {
            action,
            args,
            tags: wire.tags,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_send_without_copying_args() {
        let text = r#"{"id":"s","action":"SEND","args":[1,0,"abc",0],"tags":{"debounce":5}}"#;
        let env = ClientEnvelope::parse(text).unwrap();
        assert_eq!(env.action, Action::Send);
        assert_eq!(env.args.unwrap().get(), r#"[1,0,"abc",0]"#);
        assert_eq!(env.tags.unwrap().get(), r#"{"debounce":5}"#);
    }

    #[test]
    fn rejects_non_objects() {
        assert_eq!(
            ClientEnvelope::parse("42").unwrap_err(),
            EnvelopeError::NotAnObject
        );
        assert_eq!(
            ClientEnvelope::parse(r#"["JOIN"]"#).unwrap_err(),
            EnvelopeError::NotAnObject
        );
        assert!(matches!(
            ClientEnvelope::parse("{not json").unwrap_err(),
            EnvelopeError::NotJson(_)
        ));
    }

    #[test]
    fn unknown_and_missing_actions_are_not_errors() {
        let env = ClientEnvelope::parse(r#"{"action":"FOO"}"#).unwrap();
        assert_eq!(env.action, Action::Unknown("FOO".into()));
        let env = ClientEnvelope::parse(r#"{}"#).unwrap();
        assert_eq!(env.action, Action::Unknown("".into()));
    }
}
