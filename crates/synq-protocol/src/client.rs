//! Typed arguments of the client→reflector actions.
//!
//! Croquet clients are lenient about types, and so is this module: a field of an
//! unexpected type is treated as absent rather than failing the whole message, except where
//! the reflector cannot act without it (then the error names the field).

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;

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

fn malformed(action: &'static str, why: &'static str) -> ArgsError {
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

fn raw_truthy(raw: &RawValue) -> bool {
    serde_json::from_str::<Value>(raw.get()).is_ok_and(|v| truthy(&v))
}

/// Tick configuration of a session.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TickConfig {
    /// Idle tick period in ms; `None` or ≤ 0 means no idle ticks.
    pub tick: Option<f64>,
    /// Hold-back delay for local tick multiplication (ms).
    pub delay: Option<f64>,
    /// Time scale (TICKS only).
    pub scale: Option<f64>,
}

impl TickConfig {
    fn from_value(v: &Value) -> TickConfig {
        TickConfig {
            tick: v.get("tick").and_then(Value::as_f64),
            delay: v.get("delay").and_then(Value::as_f64),
            scale: v.get("scale").and_then(Value::as_f64),
        }
    }

    pub fn parse(raw: Option<&RawValue>) -> TickConfig {
        let v = raw
            .and_then(|r| serde_json::from_str::<Value>(r.get()).ok())
            .unwrap_or(Value::Null);
        TickConfig::from_value(&v)
    }
}

/// `JOIN` arguments (docs/protocol.md, "JOIN").
#[derive(Debug, Clone)]
pub struct JoinArgs {
    pub name: Option<String>,
    pub app_id: Option<String>,
    pub url: Option<String>,
    pub persistent_id: Option<String>,
    pub developer_id: Option<String>,
    pub sdk: Option<String>,
    pub code_hash: Option<String>,
    /// The value announced in join/leave events, verbatim (string, array or object).
    /// `None` if absent or falsy: such a connection gets SYNC but is never active.
    pub user: Option<Box<RawValue>>,
    pub ticks: Option<TickConfig>,
    pub tove: Option<String>,
    pub leave_delay: Option<f64>,
    pub dormant_delay: Option<f64>,
    pub herald_url: Option<String>,
    /// Only the flags the reflector implements are kept (`rawtime`, `microverse`).
    pub flags: BTreeMap<String, bool>,
    pub location: bool,
}

impl JoinArgs {
    pub fn parse(raw: Option<&RawValue>) -> Result<JoinArgs, ArgsError> {
        let raw = raw.ok_or(ArgsError::NoVersion)?;
        // Croquet closes with "outdated protocol" for any args that are not an object
        // with a truthy version (including a bare number).
        let fields: BTreeMap<String, &RawValue> =
            serde_json::from_str(raw.get()).map_err(|_| ArgsError::NoVersion)?;
        let value = |k: &str| -> Option<Value> {
            fields
                .get(k)
                .and_then(|r| serde_json::from_str::<Value>(r.get()).ok())
        };
        let string = |k: &str| value(k).and_then(|v| v.as_str().map(str::to_owned));
        let number = |k: &str| value(k).and_then(|v| v.as_f64());
        if !value("version").is_some_and(|v| truthy(&v)) {
            return Err(ArgsError::NoVersion);
        }
        if !fields.contains_key("apiKey") {
            return Err(ArgsError::NoApiKey);
        }
        let user = fields
            .get("user")
            .filter(|r| raw_truthy(r))
            .map(|r| (*r).to_owned());
        let flags = value("flags")
            .and_then(|v| v.as_object().cloned())
            .map(|m| {
                m.into_iter()
                    .filter(|(k, _)| k == "rawtime" || k == "microverse")
                    .map(|(k, v)| (k, truthy(&v)))
                    .filter(|(_, on)| *on)
                    .collect()
            })
            .unwrap_or_default();
        Ok(JoinArgs {
            name: string("name"),
            app_id: string("appId"),
            url: string("url"),
            persistent_id: string("persistentId"),
            developer_id: string("developerId"),
            sdk: string("sdk"),
            code_hash: string("codeHash"),
            user,
            ticks: value("ticks").map(|v| TickConfig::from_value(&v)),
            tove: string("tove"),
            leave_delay: number("leaveDelay"),
            dormant_delay: number("dormantDelay"),
            herald_url: string("heraldUrl"),
            flags,
            location: value("location").is_some_and(|v| truthy(&v)),
        })
    }

    /// The `user` value as a string, if it is one (only string users cancel a pending
    /// leave on rejoin, as in Croquet where objects never compare equal).
    pub fn user_string(&self) -> Option<String> {
        self.user
            .as_ref()
            .and_then(|u| serde_json::from_str::<String>(u.get()).ok())
    }
}

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
    fn from_elements(elements: &[&RawValue]) -> MessageTail {
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
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct SendTags {
    pub debounce: Option<f64>,
    #[serde(rename = "msgID")]
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

/// `TUTTI` arguments (docs/protocol.md, "TUTTI").
#[derive(Debug, Clone)]
pub struct TuttiArgs {
    /// Send time as the client wrote it (echoed verbatim in the tally).
    pub send_time_raw: Box<RawValue>,
    pub send_time: f64,
    /// This client's vote.
    pub payload: String,
    /// A message to broadcast once (first arrival wins): elements 2.. of `[time, 0, payload]`.
    pub first_msg: Option<MessageTail>,
    pub wants_vote: bool,
    pub tally_target: Box<RawValue>,
    pub tutti_key: String,
}

impl TuttiArgs {
    pub fn parse(raw: Option<&RawValue>) -> Result<TuttiArgs, ArgsError> {
        let raw = raw.ok_or(malformed("TUTTI", "no args"))?;
        let a: Vec<&RawValue> = serde_json::from_str(raw.get())
            .map_err(|_| malformed("TUTTI", "args is not an array"))?;
        if a.len() < 7 {
            return Err(malformed("TUTTI", "expected 7 elements"));
        }
        let send_time: f64 = serde_json::from_str(a[0].get())
            .map_err(|_| malformed("TUTTI", "sendTime is not a number"))?;
        let payload: String = serde_json::from_str(a[2].get())
            .map_err(|_| malformed("TUTTI", "payload is not a string"))?;
        let first_msg = if a[3].get() == "null" {
            None
        } else {
            let m: Vec<&RawValue> = serde_json::from_str(a[3].get())
                .map_err(|_| malformed("TUTTI", "firstMsg is not an array"))?;
            if m.len() < 3 {
                return Err(malformed("TUTTI", "firstMsg has no payload"));
            }
            Some(MessageTail::from_elements(&m[2..]))
        };
        let tutti_key: String = serde_json::from_str(a[6].get())
            .map_err(|_| malformed("TUTTI", "tuttiKey is not a string"))?;
        Ok(TuttiArgs {
            send_time_raw: a[0].to_owned(),
            send_time,
            payload,
            first_msg,
            wants_vote: raw_truthy(a[4]),
            tally_target: a[5].to_owned(),
            tutti_key,
        })
    }
}

/// `SNAP` arguments: a snapshot was uploaded.
#[derive(Debug, Clone)]
pub struct SnapArgs {
    /// VM time of the snapshot, as the client wrote it (may be fractional).
    pub time_raw: Box<RawValue>,
    pub time: f64,
    pub seq: u32,
    pub hash: Option<String>,
    pub url: String,
    pub dissident: bool,
}

impl SnapArgs {
    pub fn parse(raw: Option<&RawValue>) -> Result<SnapArgs, ArgsError> {
        let raw = raw.ok_or(malformed("SNAP", "no args"))?;
        let f: BTreeMap<String, &RawValue> = serde_json::from_str(raw.get())
            .map_err(|_| malformed("SNAP", "args is not an object"))?;
        let time_raw = f.get("time").ok_or(malformed("SNAP", "no time"))?;
        let time: f64 = serde_json::from_str(time_raw.get())
            .map_err(|_| malformed("SNAP", "time is not a number"))?;
        let seq: f64 = f
            .get("seq")
            .and_then(|r| serde_json::from_str(r.get()).ok())
            .ok_or(malformed("SNAP", "seq is not a number"))?;
        let url: String = f
            .get("url")
            .and_then(|r| serde_json::from_str(r.get()).ok())
            .ok_or(malformed("SNAP", "url is not a string"))?;
        Ok(SnapArgs {
            time_raw: (*time_raw).to_owned(),
            time,
            // Clients send seq as an unsigned 32-bit integer; `as` saturates anything odd.
            seq: seq as u32,
            hash: f
                .get("hash")
                .and_then(|r| serde_json::from_str(r.get()).ok()),
            url,
            dissident: f.get("dissident").is_some_and(|r| raw_truthy(r)),
        })
    }
}

/// `SAVE` arguments: persistent data was uploaded.
#[derive(Debug, Clone)]
pub struct SaveArgs {
    pub url: String,
    pub dissident: bool,
}

impl SaveArgs {
    pub fn parse(raw: Option<&RawValue>) -> Result<SaveArgs, ArgsError> {
        let raw = raw.ok_or(malformed("SAVE", "no args"))?;
        let f: BTreeMap<String, &RawValue> = serde_json::from_str(raw.get())
            .map_err(|_| malformed("SAVE", "args is not an object"))?;
        let url: String = f
            .get("url")
            .and_then(|r| serde_json::from_str(r.get()).ok())
            .ok_or(malformed("SAVE", "url is not a string"))?;
        Ok(SaveArgs {
            url,
            dissident: f.get("dissident").is_some_and(|r| raw_truthy(r)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_owned()).unwrap()
    }

    #[test]
    fn join_requires_version_then_api_key() {
        assert_eq!(
            JoinArgs::parse(Some(&raw("5"))).unwrap_err(),
            ArgsError::NoVersion
        );
        assert_eq!(
            JoinArgs::parse(Some(&raw(r#"{"apiKey":"none"}"#))).unwrap_err(),
            ArgsError::NoVersion
        );
        assert_eq!(
            JoinArgs::parse(Some(&raw(r#"{"version":1}"#))).unwrap_err(),
            ArgsError::NoApiKey
        );
        let j = JoinArgs::parse(Some(&raw(
            r#"{"version":1,"apiKey":"none","user":{"id":"v1","data":"x"},"ticks":{"tick":50,"delay":0},"leaveDelay":1250,"flags":{"rawtime":true,"other":true}}"#,
        )))
        .unwrap();
        assert_eq!(j.user.unwrap().get(), r#"{"id":"v1","data":"x"}"#);
        assert_eq!(j.ticks.unwrap().tick, Some(50.0));
        assert_eq!(j.leave_delay, Some(1250.0));
        assert_eq!(j.flags.keys().collect::<Vec<_>>(), vec!["rawtime"]);
    }

    #[test]
    fn falsy_user_means_inactive() {
        let j = JoinArgs::parse(Some(&raw(r#"{"version":1,"apiKey":"none","user":""}"#))).unwrap();
        assert!(j.user.is_none());
    }

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
    fn tutti_parses_all_seven_fields() {
        let t = TuttiArgs::parse(Some(&raw(
            r#"[7212,0,"{\"hash\":1}",[7212,0,"first"],true,["handleSnapshotVote"],"snapshot@7212"]"#,
        )))
        .unwrap();
        assert_eq!(t.send_time, 7212.0);
        assert_eq!(t.payload, r#"{"hash":1}"#);
        assert_eq!(t.first_msg.unwrap().text, r#""first""#);
        assert!(t.wants_vote);
        assert_eq!(t.tally_target.get(), r#"["handleSnapshotVote"]"#);
        assert_eq!(t.tutti_key, "snapshot@7212");
    }

    #[test]
    fn snap_parses_fractional_time_and_dissident() {
        let s = SnapArgs::parse(Some(&raw(
            r#"{"time":7244.5,"seq":4294967284,"hash":"h","url":"http://x/s.snap","dissident":null}"#,
        )))
        .unwrap();
        assert_eq!(s.time, 7244.5);
        assert_eq!(s.time_raw.get(), "7244.5");
        assert_eq!(s.seq, 4294967284);
        assert!(!s.dissident);
    }
}
