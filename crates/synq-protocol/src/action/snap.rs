//! `SNAP`: a client uploaded a snapshot; later joiners start from it.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::value::RawValue;

use super::{ArgsError, JsNumber, envelope, malformed, raw_truthy};

/// `SNAP` arguments, as the reflector reads them.
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

/// A SNAP as a client sends it, once the snapshot is uploaded to `url`.
#[derive(Debug, Clone, PartialEq)]
pub struct SnapRequest<'a> {
    pub time: f64,
    /// The seq of the last message the snapshot contains.
    pub seq: u32,
    pub hash: &'a str,
    pub url: &'a str,
    /// Set by a client whose snapshot disagrees with the majority (Croquet writes `null`
    /// when it agrees).
    pub dissident: bool,
}

impl SnapRequest<'_> {
    /// `{"id":…,"action":"SNAP","args":{"time":…,"seq":…,"hash":…,"url":…,"dissident":null}}`
    pub fn encode(&self, session_id: &str) -> String {
        #[derive(Serialize)]
        struct Wire<'a> {
            time: JsNumber,
            seq: u32,
            hash: &'a str,
            url: &'a str,
            dissident: Option<bool>,
        }
        let args = Wire {
            time: JsNumber(self.time),
            seq: self.seq,
            hash: self.hash,
            url: self.url,
            dissident: self.dissident.then_some(true),
        };
        envelope::<_, ()>(session_id, "SNAP", &args, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Action;
    use crate::action::testing::{args_of, raw};

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

    #[test]
    fn snap_round_trip() {
        for dissident in [false, true] {
            let req = SnapRequest {
                time: 7244.0,
                seq: 4294967284,
                hash: "c7Sz",
                url: "http://h/files/snapshots/s/0000007244_4294967284-c7Sz.snap",
                dissident,
            };
            let frame = req.encode("s");
            let (args, _) = args_of(&frame, Action::Snap);
            let s = SnapArgs::parse(Some(&args)).unwrap();
            assert_eq!(s.time, 7244.0);
            assert_eq!(s.time_raw.get(), "7244");
            assert_eq!(s.seq, req.seq);
            assert_eq!(s.hash.as_deref(), Some(req.hash));
            assert_eq!(s.url, req.url);
            assert_eq!(s.dissident, dissident);
        }
    }
}
