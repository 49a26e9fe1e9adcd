//! `SEND`: a message for the ordered stream, `[time, seq, payload, ...rest]`.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::{ArgsError, JsNumber, envelope, malformed};

/// Elements 2.. of a message array, joined back into JSON text (`"payload",latency,…`).
#[derive(Debug, Clone, PartialEq)]
pub struct MessageTail {
    /// The JSON text of elements 2.. separated by commas, exactly as the client sent them.
    pub text: String,
    /// Byte offset in `text` of the last element (for the `rawtime` flag).
    pub last_offset: usize,
    /// Number of elements in the tail.
    pub len: usize,
}

impl MessageTail {
    pub(crate) fn from_elements(elements: &[&RawValue]) -> MessageTail {
        let mut text = String::with_capacity(elements.iter().map(|e| e.get().len() + 1).sum());
        let mut last_offset = 0;
        for (i, e) in elements.iter().enumerate() {
            if i > 0 {
                text.push(',');
            }
            last_offset = text.len();
            text.push_str(e.get());
        }
        MessageTail {
            text,
            last_offset,
            len: elements.len(),
        }
    }

    /// The tail with its last element replaced by `value` (`rawtime`).
    pub fn with_last_replaced(&self, value: &str) -> String {
        let mut s = String::with_capacity(self.last_offset + value.len());
        s.push_str(&self.text[..self.last_offset]);
        s.push_str(value);
        s
    }
}

/// `SEND` arguments: `[time, seq, payload, ...rest]`; time and seq are replaced by the reflector.
#[derive(Debug, Clone, PartialEq)]
pub struct SendArgs {
    pub tail: MessageTail,
    /// The sender's last measured round-trip latency (last element, if a positive number).
    pub latency: Option<f64>,
}

impl SendArgs {
    pub fn parse(raw: Option<&RawValue>) -> Result<SendArgs, ArgsError> {
        let raw = raw.ok_or(malformed("SEND", "no args"))?;
        let elements: Vec<&RawValue> = serde_json::from_str(raw.get())
            .map_err(|_| malformed("SEND", "args is not an array"))?;
        if elements.len() < 3 {
            return Err(malformed("SEND", "message has no payload"));
        }
        let tail = MessageTail::from_elements(&elements[2..]);
        let latency = elements
            .last()
            .and_then(|e| e.get().parse::<f64>().ok())
            .filter(|l| *l > 0.0);
        Ok(SendArgs { tail, latency })
    }
}

/// `tags` of a SEND: only `debounce` is implemented (as in Croquet).
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
pub struct SendTags {
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "super::js_number_opt"
    )]
    pub debounce: Option<f64>,
    #[serde(rename = "msgID", skip_serializing_if = "Option::is_none")]
    pub msg_id: Option<String>,
}

impl SendTags {
    pub fn parse(raw: Option<&RawValue>) -> Option<SendTags> {
        raw.and_then(|r| serde_json::from_str(r.get()).ok())
    }

    /// `(msgID, debounce ms)` if this message is to be debounced.
    pub fn debounce(&self) -> Option<(&str, f64)> {
        match (&self.msg_id, self.debounce) {
            (Some(id), Some(ms)) if ms > 0.0 => Some((id.as_str(), ms)),
            _ => None,
        }
    }
}

/// A SEND as a client sends it: `[time, 0, payload, latency]`. The reflector replaces
/// time and seq; Croquet's client writes its own time there, synq's clients 0.
#[derive(Debug, Clone, PartialEq)]
pub struct SendRequest<'a> {
    pub time: f64,
    /// The payload string (opaque to the reflector; ciphertext in synq sessions).
    pub payload: &'a str,
    /// The sender's last round-trip latency in ms, 0 if unknown.
    pub latency: f64,
    pub tags: Option<SendTags>,
}

impl<'a> SendRequest<'a> {
    /// A message at time 0 with latency 0 and no tags.
    pub fn new(payload: &'a str) -> Self {
        SendRequest {
            time: 0.0,
            payload,
            latency: 0.0,
            tags: None,
        }
    }

    /// `{"id":…,"action":"SEND","args":[time,0,"payload",latency][,"tags":{…}]}`
    pub fn encode(&self, session_id: &str) -> String {
        let args = (JsNumber(self.time), 0, self.payload, JsNumber(self.latency));
        envelope(session_id, "SEND", &args, self.tags.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Action;
    use crate::action::testing::{args_of, raw};

    #[test]
    fn send_keeps_everything_after_time_and_seq() {
        let s = SendArgs::parse(Some(&raw(r#"[1603.5,0,"enc==",2]"#))).unwrap();
        assert_eq!(s.tail.text, r#""enc==",2"#);
        assert_eq!(s.latency, Some(2.0));
        assert_eq!(s.tail.with_last_replaced("77"), r#""enc==",77"#);
        assert!(SendArgs::parse(Some(&raw(r#"[1,0]"#))).is_err());
        assert!(SendArgs::parse(Some(&raw(r#""x""#))).is_err());
    }

    #[test]
    fn send_round_trip_with_and_without_tags() {
        let plain = SendRequest::new("enc==");
        let frame = plain.encode("s");
        assert_eq!(
            frame,
            r#"{"id":"s","action":"SEND","args":[0,0,"enc==",0]}"#
        );
        let (args, tags) = args_of(&frame, Action::Send);
        let s = SendArgs::parse(Some(&args)).unwrap();
        assert_eq!(s.tail.text, r#""enc==",0"#);
        assert_eq!(s.latency, None);
        assert!(tags.is_none());

        let tags = SendTags {
            debounce: Some(5000.0),
            msg_id: Some("pollForSnapshot".into()),
        };
        let tagged = SendRequest {
            time: 1603.0,
            payload: "a \"quoted\" payload",
            latency: 12.0,
            tags: Some(tags.clone()),
        };
        let frame = tagged.encode("s");
        assert!(frame.ends_with(r#""tags":{"debounce":5000,"msgID":"pollForSnapshot"}}"#));
        let (args, raw_tags) = args_of(&frame, Action::Send);
        let s = SendArgs::parse(Some(&args)).unwrap();
        assert_eq!(s.tail.text, r#""a \"quoted\" payload",12"#);
        assert_eq!(s.latency, Some(12.0));
        let parsed = SendTags::parse(raw_tags.as_deref()).unwrap();
        assert_eq!(parsed, tags);
        assert_eq!(parsed.debounce(), Some(("pollForSnapshot", 5000.0)));
    }
}
