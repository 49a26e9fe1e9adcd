//! Parsing reflector→client frames, for clients, tests and the benchmark.

use serde::Deserialize;
use serde_json::Value;

/// One frame from the reflector.
#[derive(Debug, Clone, Deserialize)]
pub struct ServerFrame {
    /// Absent only on PONG.
    #[serde(default)]
    pub id: Option<String>,
    pub action: String,
    #[serde(default)]
    pub args: Value,
}

/// A message of the ordered stream: `[time, seq, payload, ...rest]`.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamMessage {
    pub time: f64,
    pub seq: u32,
    /// A string (client payload, opaque) or an object (reflector-generated: users, tally).
    pub payload: Value,
    pub rest: Vec<Value>,
}

impl StreamMessage {
    pub fn from_value(v: &Value) -> Option<StreamMessage> {
        let a = v.as_array()?;
        Some(StreamMessage {
            time: a.first()?.as_f64()?,
            seq: u32::try_from(a.get(1)?.as_u64()?).ok()?,
            payload: a.get(2)?.clone(),
            rest: a.get(3..).map(<[Value]>::to_vec).unwrap_or_default(),
        })
    }

    /// The `what` of a reflector-generated message (`users`, `tally`), if it is one.
    pub fn what(&self) -> Option<&str> {
        self.payload.get("what").and_then(Value::as_str)
    }
}

impl ServerFrame {
    pub fn parse(text: &str) -> Result<ServerFrame, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// The message of a RECV frame.
    pub fn message(&self) -> Option<StreamMessage> {
        (self.action == "RECV")
            .then(|| StreamMessage::from_value(&self.args))
            .flatten()
    }

    /// The time of a TICK frame (number or `{time}` form).
    pub fn tick_time(&self) -> Option<f64> {
        if self.action != "TICK" {
            return None;
        }
        self.args
            .as_f64()
            .or_else(|| self.args.get("time").and_then(Value::as_f64))
    }

    /// The messages of a SYNC frame.
    pub fn sync_messages(&self) -> Vec<StreamMessage> {
        self.args
            .get("messages")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(StreamMessage::from_value).collect())
            .unwrap_or_default()
    }
}
