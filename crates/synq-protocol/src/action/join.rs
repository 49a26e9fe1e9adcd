//! `JOIN`: a connection joins the session its URL names (docs/protocol.md, "JOIN").

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;
use serde_json::value::RawValue;

use super::{ArgsError, JsNumber, TickConfig, envelope, raw_truthy, truthy};

/// `JOIN` arguments, as the reflector reads them.
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

/// A JOIN as a client sends it. `version` is [`crate::PROTOCOL_VERSION`] and `apiKey`
/// `"none"` (a reflector without accounts); absent options are left out of the frame.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JoinRequest {
    pub name: String,
    pub app_id: String,
    pub sdk: Option<String>,
    /// What the reflector announces in join/leave events.
    pub user: JoinUser,
    pub ticks: Option<TickConfig>,
    pub tove: Option<String>,
    pub leave_delay: Option<f64>,
    pub dormant_delay: Option<f64>,
    pub url: Option<String>,
    pub persistent_id: Option<String>,
    pub developer_id: Option<String>,
    pub code_hash: Option<String>,
    /// Flags to switch on (`rawtime`, `microverse`).
    pub flags: Vec<String>,
}

/// The `user` of a JOIN.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum JoinUser {
    /// A string (Croquet apps' user names; the benchmark's).
    Name(String),
    /// A view: Croquet's `{id, data}`; synq sessions add the proof of the id and the room
    /// key (see [`crate::identity`]), which the reflector checks and never announces.
    View {
        id: String,
        data: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        proof: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        room: Option<String>,
    },
}

impl Default for JoinUser {
    fn default() -> Self {
        JoinUser::Name(String::new())
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct JoinWire<'a> {
    name: &'a str,
    api_key: &'static str,
    app_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    url: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    persistent_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sdk: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    developer_id: Option<&'a str>,
    version: u64,
    user: &'a JoinUser,
    #[serde(skip_serializing_if = "Option::is_none")]
    ticks: Option<TickConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dormant_delay: Option<JsNumber>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tove: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    code_hash: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    leave_delay: Option<JsNumber>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    flags: BTreeMap<&'a str, bool>,
}

impl JoinRequest {
    /// `{"id":<session>,"action":"JOIN","args":{…}}`, fields in the order Croquet's
    /// client writes them (the same bytes for the same values: `tests/croquet_frames.rs`).
    pub fn encode(&self, session_id: &str) -> String {
        let wire = JoinWire {
            name: &self.name,
            app_id: &self.app_id,
            api_key: "none",
            version: crate::PROTOCOL_VERSION,
            url: self.url.as_deref(),
            persistent_id: self.persistent_id.as_deref(),
            sdk: self.sdk.as_deref(),
            developer_id: self.developer_id.as_deref(),
            user: &self.user,
            ticks: self.ticks,
            dormant_delay: self.dormant_delay.map(JsNumber),
            tove: self.tove.as_deref(),
            code_hash: self.code_hash.as_deref(),
            leave_delay: self.leave_delay.map(JsNumber),
            flags: self.flags.iter().map(|f| (f.as_str(), true)).collect(),
        };
        envelope::<_, ()>(session_id, "JOIN", &wire, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Action;
    use crate::action::testing::{args_of, raw};

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
    fn join_round_trip() {
        let req = JoinRequest {
            name: "app/room".into(),
            app_id: "app".into(),
            sdk: Some("synq-client/0".into()),
            user: JoinUser::View {
                id: "v1".into(),
                data: "sealed".into(),
                proof: Some("p".into()),
                room: Some("k".into()),
            },
            ticks: Some(TickConfig {
                tick: Some(50.0),
                delay: Some(0.0),
                scale: None,
            }),
            tove: Some("T".into()),
            leave_delay: Some(1250.0),
            dormant_delay: Some(10.0),
            url: Some("http://localhost/".into()),
            persistent_id: Some("pid".into()),
            developer_id: Some("dev".into()),
            code_hash: Some("hash".into()),
            flags: vec!["rawtime".into()],
        };
        let frame = req.encode("sid");
        assert!(
            frame.starts_with(r#"{"id":"sid","action":"JOIN","args":{"name":"app/room","apiKey":"none","appId":"app","url":"#),
            "{frame}"
        );
        let (args, tags) = args_of(&frame, Action::Join);
        assert!(tags.is_none());
        let j = JoinArgs::parse(Some(&args)).unwrap();
        assert_eq!(j.name.as_deref(), Some("app/room"));
        assert_eq!(j.app_id.as_deref(), Some("app"));
        assert_eq!(j.sdk.as_deref(), Some("synq-client/0"));
        assert_eq!(
            j.user.as_ref().unwrap().get(),
            r#"{"id":"v1","data":"sealed","proof":"p","room":"k"}"#
        );
        assert_eq!(j.ticks, req.ticks);
        assert_eq!(j.tove, req.tove);
        assert_eq!(j.leave_delay, Some(1250.0));
        assert_eq!(j.dormant_delay, Some(10.0));
        assert_eq!(j.url, req.url);
        assert_eq!(j.persistent_id, req.persistent_id);
        assert_eq!(j.developer_id, req.developer_id);
        assert_eq!(j.code_hash, req.code_hash);
        assert_eq!(j.flags.keys().collect::<Vec<_>>(), vec!["rawtime"]);
    }

    #[test]
    fn a_minimal_join_is_what_the_bench_sends() {
        let req = JoinRequest {
            name: "bench/s".into(),
            app_id: "bench".into(),
            user: JoinUser::Name("v7".into()),
            ticks: Some(TickConfig {
                tick: Some(0.0),
                delay: Some(0.0),
                scale: None,
            }),
            ..JoinRequest::default()
        };
        assert_eq!(
            req.encode("s"),
            r#"{"id":"s","action":"JOIN","args":{"name":"bench/s","apiKey":"none","appId":"bench","version":1,"user":"v7","ticks":{"tick":0,"delay":0}}}"#
        );
        let (args, _) = args_of(&req.encode("s"), Action::Join);
        assert_eq!(
            JoinArgs::parse(Some(&args))
                .unwrap()
                .user_string()
                .as_deref(),
            Some("v7")
        );
    }
}
