//! `SAVE`: a client uploaded the session's persistent data.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::value::RawValue;

use super::{ArgsError, envelope, malformed, raw_truthy};

/// `SAVE` arguments, as the reflector reads them.
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

/// A SAVE as a client sends it.
#[derive(Debug, Clone, PartialEq)]
pub struct SaveRequest<'a> {
    pub url: &'a str,
    pub dissident: bool,
}

impl SaveRequest<'_> {
    /// `{"id":…,"action":"SAVE","args":{"url":…,"dissident":null}}`
    pub fn encode(&self, session_id: &str) -> String {
        #[derive(Serialize)]
        struct Wire<'a> {
            url: &'a str,
            dissident: Option<bool>,
        }
        let args = Wire {
            url: self.url,
            dissident: self.dissident.then_some(true),
        };
        envelope::<_, ()>(session_id, "SAVE", &args, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Action;
    use crate::action::testing::args_of;

    #[test]
    fn save_round_trip() {
        for dissident in [false, true] {
            let req = SaveRequest {
                url: "http://h/files/persistent.json",
                dissident,
            };
            let (args, _) = args_of(&req.encode("s"), Action::Save);
            let s = SaveArgs::parse(Some(&args)).unwrap();
            assert_eq!(s.url, req.url);
            assert_eq!(s.dissident, dissident);
        }
        let (args, _) = args_of(r#"{"action":"SAVE","args":{"url":5}}"#, Action::Save);
        assert!(SaveArgs::parse(Some(&args)).is_err());
    }
}
