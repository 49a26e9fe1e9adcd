//! `TICKS`: change the session's tick configuration; also the `ticks` field of JOIN.

use serde::Serialize;
use serde_json::Value;
use serde_json::value::RawValue;

use super::{JsNumber, envelope};

/// Tick configuration of a session.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct TickConfig {
    /// Idle tick period in ms; `None` or ≤ 0 means no idle ticks.
    pub tick: Option<f64>,
    /// Hold-back delay for local tick multiplication (ms).
    pub delay: Option<f64>,
    /// Time scale (TICKS only).
    pub scale: Option<f64>,
}

impl TickConfig {
    pub(crate) fn from_value(v: &Value) -> TickConfig {
        TickConfig {
            tick: v.get("tick").and_then(Value::as_f64),
            delay: v.get("delay").and_then(Value::as_f64),
            scale: v.get("scale").and_then(Value::as_f64),
        }
    }

    /// The arguments of a TICKS (anything unreadable is an empty configuration).
    pub fn parse(raw: Option<&RawValue>) -> TickConfig {
        let v = raw
            .and_then(|r| serde_json::from_str::<Value>(r.get()).ok())
            .unwrap_or(Value::Null);
        TickConfig::from_value(&v)
    }
}

impl Serialize for TickConfig {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Wire {
            #[serde(skip_serializing_if = "Option::is_none")]
            tick: Option<JsNumber>,
            #[serde(skip_serializing_if = "Option::is_none")]
            delay: Option<JsNumber>,
            #[serde(skip_serializing_if = "Option::is_none")]
            scale: Option<JsNumber>,
        }
        Wire {
            tick: self.tick.map(JsNumber),
            delay: self.delay.map(JsNumber),
            scale: self.scale.map(JsNumber),
        }
        .serialize(s)
    }
}

/// A TICKS frame, as a client sends it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TicksRequest(pub TickConfig);

impl TicksRequest {
    /// `{"id":…,"action":"TICKS","args":{"tick":…,"delay":…,"scale":…}}`
    pub fn encode(&self, session_id: &str) -> String {
        envelope::<_, ()>(session_id, "TICKS", &self.0, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Action;
    use crate::action::testing::args_of;

    #[test]
    fn ticks_round_trip() {
        let c = TickConfig {
            tick: Some(50.0),
            delay: Some(0.0),
            scale: Some(1.5),
        };
        let frame = TicksRequest(c).encode("s");
        assert_eq!(
            frame,
            r#"{"id":"s","action":"TICKS","args":{"tick":50,"delay":0,"scale":1.5}}"#
        );
        let (args, _) = args_of(&frame, Action::Ticks);
        assert_eq!(TickConfig::parse(Some(&args)), c);
        let none = TickConfig::default();
        let (args, _) = args_of(&TicksRequest(none).encode("s"), Action::Ticks);
        assert_eq!(TickConfig::parse(Some(&args)), none);
    }
}
