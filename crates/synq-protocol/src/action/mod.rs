//! Client→reflector actions, one module each, with both directions: the typed arguments
//! the reflector parses (`*Args::parse`) and the frames clients send (`*Request::encode`).
//!
//! Croquet clients are lenient about types, and so is parsing: a field of an unexpected
//! type is treated as absent rather than failing the whole message, except where the
//! reflector cannot act without it (then the error names the field). Encoding writes what
//! Croquet 2.0.4's client writes (numbers as JavaScript prints them: `200`, not `200.0`).

pub mod join;
pub mod save;
pub mod send;
pub mod snap;
pub mod ticks;
pub mod tutti;

use serde::Serialize;
use serde_json::Value;
use serde_json::value::RawValue;

pub use join::{JoinArgs, JoinRequest, JoinUser};
pub use save::{SaveArgs, SaveRequest};
pub use send::{MessageTail, SendArgs, SendRequest, SendTags};
pub use snap::{SnapArgs, SnapRequest};
pub use ticks::{TickConfig, TicksRequest};
pub use tutti::{TuttiArgs, TuttiRequest};

/// Why the arguments of an action were refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ArgsError {
    #[error("JOIN without a protocol version")]
    NoVersion,
    #[error("JOIN without an apiKey field")]
    NoApiKey,
    #[error("{action} arguments are malformed: {why}")]
    Malformed {
        action: &'static str,
        why: &'static str,
    },
}

pub(crate) fn malformed(action: &'static str, why: &'static str) -> ArgsError {
    ArgsError::Malformed { action, why }
}

/// JSON truthiness as JavaScript sees it.
pub fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0 && !f.is_nan()),
        Value::String(s) => !s.is_empty(),
        Value::Array(_) | Value::Object(_) => true,
    }
}

pub(crate) fn raw_truthy(raw: &RawValue) -> bool {
    serde_json::from_str::<Value>(raw.get()).is_ok_and(|v| truthy(&v))
}

/// `{"action":"PULSE"}`: "still here" on a connection that has sent nothing for a while.
pub fn pulse() -> String {
    String::from("{\"action\":\"PULSE\"}")
}

/// `{"action":"PING","args":<args>}`: the reflector answers PONG with the same args.
pub fn ping(args: &Value) -> String {
    format!("{{\"action\":\"PING\",\"args\":{}}}", to_json(args))
}

/// A number as JavaScript's `JSON.stringify` writes it: integers without a fraction
/// (`200`, not serde_json's `200.0`), non-finite numbers as `null`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct JsNumber(pub f64);

impl Serialize for JsNumber {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let f = self.0;
        // 2^53: beyond it an f64 is not an exact integer in JavaScript either.
        if f.fract() == 0.0 && f.abs() < 9_007_199_254_740_992.0 {
            s.serialize_i64(f as i64)
        } else {
            s.serialize_f64(f)
        }
    }
}

pub(crate) fn js_number_opt<S: serde::Serializer>(
    v: &Option<f64>,
    s: S,
) -> Result<S::Ok, S::Error> {
    v.map(JsNumber).serialize(s)
}

/// JSON text of a value. Serializing the types of this crate cannot fail (no maps with
/// non-string keys, no fallible `Serialize` impls), so there is no error to hand on.
pub(crate) fn to_json<T: Serialize + ?Sized>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| String::from("null"))
}

/// `{"id":<session>,"action":<action>,"args":<args>[,"tags":<tags>]}`
pub(crate) fn envelope<A: Serialize, T: Serialize>(
    session_id: &str,
    action: &'static str,
    args: &A,
    tags: Option<&T>,
) -> String {
    #[derive(Serialize)]
    struct Envelope<'a, A, T> {
        id: &'a str,
        action: &'static str,
        args: &'a A,
        #[serde(skip_serializing_if = "Option::is_none")]
        tags: Option<&'a T>,
    }
    to_json(&Envelope {
        id: session_id,
        action,
        args,
        tags,
    })
}

#[cfg(test)]
pub(crate) mod testing {
    use crate::{Action, ClientEnvelope};
    use serde_json::value::RawValue;

    /// The args and tags of an encoded frame, as the reflector reads them.
    pub fn args_of(frame: &str, action: Action<'static>) -> (Box<RawValue>, Option<Box<RawValue>>) {
        let env = ClientEnvelope::parse(frame).expect("an envelope");
        assert_eq!(env.action, action, "{frame}");
        (
            env.args.expect("args").to_owned(),
            env.tags.map(ToOwned::to_owned),
        )
    }

    pub fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_owned()).expect("raw JSON")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_written_as_javascript_writes_them() {
        assert_eq!(to_json(&JsNumber(200.0)), "200");
        assert_eq!(to_json(&JsNumber(-3.0)), "-3");
        assert_eq!(to_json(&JsNumber(7244.5)), "7244.5");
        assert_eq!(to_json(&JsNumber(4294967284.0)), "4294967284");
        assert_eq!(to_json(&JsNumber(f64::NAN)), "null");
        assert_eq!(to_json(&JsNumber(1e300)), "1e+300");
    }

    #[test]
    fn pulse_and_ping_frames() {
        assert_eq!(pulse(), r#"{"action":"PULSE"}"#);
        assert_eq!(
            ping(&serde_json::json!({"t":1})),
            r#"{"action":"PING","args":{"t":1}}"#
        );
        let frame = ping(&serde_json::json!(12345));
        let env = crate::ClientEnvelope::parse(&frame).unwrap();
        assert_eq!(env.action, crate::Action::Ping);
        assert_eq!(env.args.unwrap().get(), "12345");
    }
}
