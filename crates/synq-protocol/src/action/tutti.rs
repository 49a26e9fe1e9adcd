//! `TUTTI`: a vote of every client, answered by one `tally` message (docs/protocol.md, "TUTTI").

use serde_json::Value;
use serde_json::value::RawValue;

use super::{ArgsError, JsNumber, MessageTail, envelope, malformed, raw_truthy};

/// `TUTTI` arguments, as the reflector reads them.
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

/// A TUTTI as a client sends it:
/// `[sendTime, 0, payload, firstMsg | null, wantsVote, tallyTarget, tuttiKey]`.
#[derive(Debug, Clone, PartialEq)]
pub struct TuttiRequest<'a> {
    /// Session time of the vote; the tally echoes it.
    pub send_time: f64,
    /// This client's vote.
    pub payload: &'a str,
    /// The payload of a message broadcast once, by the first vote to arrive.
    pub first_msg: Option<&'a str>,
    pub wants_vote: bool,
    /// Where the tally goes, echoed verbatim (Croquet: `["handleSnapshotVote"]`).
    pub tally_target: Value,
    pub tutti_key: &'a str,
}

impl TuttiRequest<'_> {
    pub fn encode(&self, session_id: &str) -> String {
        let time = JsNumber(self.send_time);
        let first = self.first_msg.map(|p| (time, 0, p));
        let args = (
            time,
            0,
            self.payload,
            first,
            self.wants_vote,
            &self.tally_target,
            self.tutti_key,
        );
        envelope::<_, ()>(session_id, "TUTTI", &args, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Action;
    use crate::action::testing::{args_of, raw};
    use serde_json::json;

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
    fn tutti_round_trip() {
        for first_msg in [None, Some("first")] {
            let req = TuttiRequest {
                send_time: 7212.0,
                payload: r#"{"vote":"v","viewId":"x"}"#,
                first_msg,
                wants_vote: true,
                tally_target: json!(["synqSnapshot"]),
                tutti_key: "synq-snapshot@7",
            };
            let frame = req.encode("s");
            let (args, _) = args_of(&frame, Action::Tutti);
            let t = TuttiArgs::parse(Some(&args)).unwrap();
            assert_eq!(t.send_time, 7212.0);
            assert_eq!(t.send_time_raw.get(), "7212");
            assert_eq!(t.payload, req.payload);
            assert_eq!(
                t.first_msg.map(|m| m.text),
                first_msg.map(|p| format!("{p:?}"))
            );
            assert!(t.wants_vote);
            assert_eq!(t.tally_target.get(), r#"["synqSnapshot"]"#);
            assert_eq!(t.tutti_key, "synq-snapshot@7");
        }
        assert_eq!(
            TuttiRequest {
                send_time: 3000.0,
                payload: "x",
                first_msg: None,
                wants_vote: false,
                tally_target: json!(["handleSnapshotVote"]),
                tutti_key: "snapshot@3000",
            }
            .encode("s"),
            r#"{"id":"s","action":"TUTTI","args":[3000,0,"x",null,false,["handleSnapshotVote"],"snapshot@3000"]}"#
        );
    }
}
