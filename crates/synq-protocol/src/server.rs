//! Reflector→client frames as clients read them: a typed [`ServerFrame`], the messages of
//! the ordered stream with the reflector's own `users` and `tally` events, and `_CHUNK`
//! reassembly. The reflector writes these frames with [`crate::frames`]; the tests of
//! this module parse what it writes.
//!
//! Parsing is as lenient as Croquet's client: a frame fails only where a client cannot go
//! on without it (a SYNC without its seq, a RECV without a message); anything else it
//! does not understand is [`ServerFrame::Other`], which clients ignore.

use serde::Deserialize;
use serde_json::Value;

/// Why a reflector frame could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("invalid frame: {0}")]
    NotJson(String),
    #[error("{action} frame is malformed: {why}")]
    Malformed {
        action: &'static str,
        why: &'static str,
    },
    #[error("a _CHUNK frame without its flags")]
    ChunkFlags,
    #[error("a _CHUNK without its first")]
    ChunkWithoutFirst,
    #[error("a frame sent in _CHUNK pieces is larger than {limit} bytes")]
    ChunkTooLarge { limit: usize },
}

/// One frame from the reflector.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerFrame {
    /// The answer to JOIN: where the session is, and what to replay.
    Sync(SyncArgs),
    /// A message of the ordered stream.
    Recv(StreamMessage),
    /// Session time advanced without a message (ms).
    Tick(f64),
    /// A notice for the user.
    Info(Info),
    /// "Please snapshot soon": the reflector's message buffer is filling.
    Requ,
    /// The answer to PING, with its args (absent: `None`).
    Pong(Option<Value>),
    /// synq: the capability for the server's AI gateway.
    AiCap { token: String },
    /// An action this crate does not know, or a known one whose args it cannot read
    /// (a TICK without a time): ignored by clients, as by Croquet's.
    Other { action: String, args: Value },
}

/// The `args` of a SYNC.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SyncArgs {
    /// The snapshot to load (or, with `persisted`, the persisted data); empty: start fresh.
    pub url: String,
    /// The messages after the snapshot, in order.
    pub messages: Vec<StreamMessage>,
    /// Session time (ms).
    pub time: f64,
    /// Seq of the last message of the session.
    pub seq: u32,
    /// The session check value the creating JOIN gave, echoed.
    pub tove: Option<String>,
    pub reflector: Option<String>,
    /// Changes when the session restarts; a rejoin on the same timeline keeps its replica.
    pub timeline: String,
    pub flags: Value,
    pub snapshot_time: Option<f64>,
    pub snapshot_seq: Option<u32>,
    /// `url` is persisted data, not a snapshot.
    pub persisted: bool,
    /// synq: what to load if the snapshot does not (see [`crate::frames::Sync`]).
    pub fallback: Option<Fallback>,
}

/// synq's fallback of a SYNC: an older snapshot, or (url empty) a replay from the start,
/// or (`persisted`) a replay from the persisted data the session started from, at `url`.
#[derive(Debug, Clone, PartialEq)]
pub struct Fallback {
    pub url: String,
    pub time: Option<f64>,
    pub seq: u32,
    /// `url` is the persisted data the session started from, not a snapshot.
    pub persisted: bool,
}

/// The `args` of an INFO.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Info {
    pub code: Option<String>,
    pub msg: String,
    pub level: Option<String>,
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

    /// The payload as a join/leave announcement, if it is one.
    pub fn users(&self) -> Option<Users> {
        (self.what() == Some("users")).then(|| Users::from_value(&self.payload))
    }

    /// The payload as the tally of a TUTTI, if it is one.
    pub fn tally(&self) -> Option<Tally> {
        (self.what() == Some("tally")).then(|| Tally::from_value(&self.payload))
    }
}

/// A join/leave announcement:
/// `{"what":"users","active":A,"total":T,"joined":[…],"left":[…]}`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Users {
    pub active: Option<u64>,
    pub total: Option<u64>,
    pub joined: Vec<User>,
    pub left: Vec<User>,
}

/// An entry of `joined` or `left`: the JOIN's `user`, verbatim.
#[derive(Debug, Clone, PartialEq)]
pub enum User {
    /// A string user (Croquet apps; the benchmark).
    Name(String),
    /// An object with a string `id` (synq views: `{id, data}`; the proof and room key
    /// never leave the reflector).
    View { id: String, data: Option<String> },
    /// Anything else.
    Other(Value),
}

impl User {
    fn from_value(v: &Value) -> User {
        match v {
            Value::String(s) => User::Name(s.clone()),
            Value::Object(o) => match o.get("id").and_then(Value::as_str) {
                Some(id) => User::View {
                    id: id.to_owned(),
                    data: o.get("data").and_then(Value::as_str).map(str::to_owned),
                },
                None => User::Other(v.clone()),
            },
            _ => User::Other(v.clone()),
        }
    }
}

impl Users {
    fn from_value(v: &Value) -> Users {
        let list = |field: &str| -> Vec<User> {
            v.get(field)
                .and_then(Value::as_array)
                .map(|a| a.iter().map(User::from_value).collect())
                .unwrap_or_default()
        };
        Users {
            active: v.get("active").and_then(Value::as_u64),
            total: v.get("total").and_then(Value::as_u64),
            joined: list("joined"),
            left: list("left"),
        }
    }
}

/// The result of a TUTTI: `{"what":"tally","sendTime":…,"tally":{vote: count},
/// "tallyTarget":…,"tuttiKey":…,"missingClients":n}`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Tally {
    pub send_time: Option<f64>,
    /// Each distinct vote with its count. Counts that are not unsigned integers are read
    /// as 1 (the reflector counts voters, so any entry is at least one).
    pub votes: Vec<(String, u64)>,
    pub tally_target: Value,
    pub tutti_key: Option<String>,
    pub missing_clients: Option<i64>,
}

impl Tally {
    fn from_value(v: &Value) -> Tally {
        Tally {
            send_time: v.get("sendTime").and_then(Value::as_f64),
            votes: v
                .get("tally")
                .and_then(Value::as_object)
                .map(|m| {
                    m.iter()
                        .map(|(vote, n)| (vote.clone(), n.as_u64().unwrap_or(1)))
                        .collect()
                })
                .unwrap_or_default(),
            tally_target: v.get("tallyTarget").cloned().unwrap_or(Value::Null),
            tutti_key: v.get("tuttiKey").and_then(Value::as_str).map(str::to_owned),
            missing_clients: v.get("missingClients").and_then(Value::as_i64),
        }
    }
}

/// Any reflector frame as `{id, action, args}` without interpreting it: for tests and
/// tools that look at fields the typed [`ServerFrame`] does not keep.
#[derive(Debug, Clone, Deserialize)]
pub struct LooseFrame {
    /// Absent only on PONG.
    #[serde(default)]
    pub id: Option<String>,
    pub action: String,
    #[serde(default)]
    pub args: Value,
}

impl LooseFrame {
    pub fn parse(text: &str) -> Result<LooseFrame, serde_json::Error> {
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
        tick_time(&self.args)
    }

    /// The messages of a SYNC frame.
    pub fn sync_messages(&self) -> Vec<StreamMessage> {
        messages(&self.args)
    }
}

fn tick_time(args: &Value) -> Option<f64> {
    args.as_f64()
        .or_else(|| args.get("time").and_then(Value::as_f64))
}

/// Messages that are not `[time, seq, payload, …]` are left out; the client then sees a
/// gap in the seqs and rejoins.
fn messages(args: &Value) -> Vec<StreamMessage> {
    args.get("messages")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(StreamMessage::from_value).collect())
        .unwrap_or_default()
}

fn seq_of(v: Option<&Value>) -> Option<u32> {
    v.and_then(Value::as_u64)
        .and_then(|s| u32::try_from(s).ok())
}

fn string_of(v: &Value, field: &str) -> Option<String> {
    v.get(field).and_then(Value::as_str).map(str::to_owned)
}

impl SyncArgs {
    fn from_value(args: &Value) -> Result<SyncArgs, FrameError> {
        let seq = seq_of(args.get("seq")).ok_or(FrameError::Malformed {
            action: "SYNC",
            why: "no seq",
        })?;
        let fallback = args.get("fallback").and_then(|f| {
            Some(Fallback {
                url: string_of(f, "url")?,
                time: f.get("time").and_then(Value::as_f64),
                seq: seq_of(f.get("seq"))?,
                persisted: f.get("persisted") == Some(&Value::Bool(true)),
            })
        });
        Ok(SyncArgs {
            url: string_of(args, "url").unwrap_or_default(),
            messages: messages(args),
            time: args.get("time").and_then(Value::as_f64).unwrap_or(0.0),
            seq,
            tove: string_of(args, "tove"),
            reflector: string_of(args, "reflector"),
            timeline: string_of(args, "timeline").unwrap_or_default(),
            flags: args.get("flags").cloned().unwrap_or(Value::Null),
            snapshot_time: args.get("snapshotTime").and_then(Value::as_f64),
            snapshot_seq: seq_of(args.get("snapshotSeq")),
            persisted: args.get("persisted") == Some(&Value::Bool(true)),
            fallback,
        })
    }
}

impl ServerFrame {
    /// One whole frame (not a `_CHUNK` piece: see [`Reassembler`]).
    pub fn parse(text: &str) -> Result<ServerFrame, FrameError> {
        let loose = LooseFrame::parse(text).map_err(|e| FrameError::NotJson(e.to_string()))?;
        let args = loose.args;
        let other = |args: Value| ServerFrame::Other {
            action: loose.action.clone(),
            args,
        };
        Ok(match loose.action.as_str() {
            "SYNC" => ServerFrame::Sync(SyncArgs::from_value(&args)?),
            "RECV" => ServerFrame::Recv(StreamMessage::from_value(&args).ok_or(
                FrameError::Malformed {
                    action: "RECV",
                    why: "args is not [time, seq, payload, …]",
                },
            )?),
            "TICK" => match tick_time(&args) {
                Some(t) => ServerFrame::Tick(t),
                None => other(args),
            },
            "INFO" => ServerFrame::Info(Info {
                code: string_of(&args, "code"),
                msg: string_of(&args, "msg").unwrap_or_default(),
                level: args.get("options").and_then(|o| string_of(o, "level")),
            }),
            "REQU" => ServerFrame::Requ,
            "PONG" => ServerFrame::Pong((!args.is_null()).then_some(args)),
            "AICAP" => match string_of(&args, "token") {
                Some(token) => ServerFrame::AiCap { token },
                None => other(args),
            },
            _ => other(args),
        })
    }

    /// The action name as on the wire.
    pub fn action(&self) -> &str {
        match self {
            ServerFrame::Sync(_) => "SYNC",
            ServerFrame::Recv(_) => "RECV",
            ServerFrame::Tick(_) => "TICK",
            ServerFrame::Info(_) => "INFO",
            ServerFrame::Requ => "REQU",
            ServerFrame::Pong(_) => "PONG",
            ServerFrame::AiCap { .. } => "AICAP",
            ServerFrame::Other { action, .. } => action,
        }
    }
}

/// Joins the `_CHUNK<first><last><body>` pieces of frames longer than
/// [`crate::CHUNK_SIZE`] (see [`crate::frames::chunk`]), up to a limit: a reflector must
/// not make a client buffer without bound.
#[derive(Debug, Clone)]
pub struct Reassembler {
    buf: Option<String>,
    limit: usize,
}

impl Reassembler {
    /// Refuses frames longer than `limit` bytes once reassembled.
    pub fn new(limit: usize) -> Reassembler {
        Reassembler { buf: None, limit }
    }

    /// Whether `text` is a `_CHUNK` piece (else it is a whole frame).
    pub fn is_chunk(text: &str) -> bool {
        text.starts_with("_CHUNK")
    }

    /// Takes one `_CHUNK` piece: `Some(frame)` once the last piece arrived. An error
    /// drops what was buffered.
    pub fn push(&mut self, text: &str) -> Result<Option<String>, FrameError> {
        let rest = text.strip_prefix("_CHUNK").ok_or(FrameError::ChunkFlags)?;
        let (flags, body) = rest.split_at_checked(2).ok_or(FrameError::ChunkFlags)?;
        let first = flags.starts_with('1');
        let last = flags.ends_with('1');
        let buf = if first {
            self.buf.insert(String::new())
        } else {
            self.buf.as_mut().ok_or(FrameError::ChunkWithoutFirst)?
        };
        if buf.len().saturating_add(body.len()) > self.limit {
            self.buf = None;
            return Err(FrameError::ChunkTooLarge { limit: self.limit });
        }
        buf.push_str(body);
        Ok(if last { self.buf.take() } else { None })
    }

    /// Forgets a partly received frame (the connection dropped).
    pub fn reset(&mut self) {
        self.buf = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frames::{self, RecvFrame, SnapshotRef, Sync, quote};
    use serde_json::json;

    fn sync(snapshot: Option<SnapshotRef<'_>>, fallback: Option<SnapshotRef<'_>>) -> String {
        Sync {
            snapshot,
            persisted_url: None,
            time: 14005,
            seq: 4294967286,
            tove: Some("T1"),
            reflector: "local",
            timeline: "tl",
            flags_json: r#"{"rawtime":true}"#,
            fallback,
        }
        .frame(
            &quote("sid"),
            ["[1,4294967285,\"a\",\"v1\"]", "[3,4294967286,\"b\"]"].into_iter(),
        )
    }

    #[test]
    fn reads_the_sync_the_reflector_writes() {
        let snap = SnapshotRef {
            time_raw: "7244.5",
            seq: 4294967284,
            url: "http://h/files/snapshots/sid/x.snap",
        };
        let fallback = SnapshotRef {
            time_raw: "0",
            seq: 4294967280,
            url: "",
        };
        let ServerFrame::Sync(s) = ServerFrame::parse(&sync(Some(snap), Some(fallback))).unwrap()
        else {
            panic!("not a SYNC");
        };
        assert_eq!(s.url, "http://h/files/snapshots/sid/x.snap");
        assert_eq!(s.time, 14005.0);
        assert_eq!(s.seq, 4294967286);
        assert_eq!(s.tove.as_deref(), Some("T1"));
        assert_eq!(s.reflector.as_deref(), Some("local"));
        assert_eq!(s.timeline, "tl");
        assert_eq!(s.flags, json!({"rawtime": true}));
        assert_eq!(s.snapshot_time, Some(7244.5));
        assert_eq!(s.snapshot_seq, Some(4294967284));
        assert!(!s.persisted);
        assert_eq!(
            s.fallback,
            Some(Fallback {
                url: String::new(),
                time: Some(0.0),
                seq: 4294967280,
                persisted: false,
            })
        );
        assert_eq!(s.messages.len(), 2);
        assert_eq!(s.messages[0].rest, vec![json!("v1")]);
        assert_eq!(s.messages[1].payload, json!("b"));

        let ServerFrame::Sync(fresh) = ServerFrame::parse(&sync(None, None)).unwrap() else {
            panic!("not a SYNC");
        };
        assert_eq!(fresh.url, "");
        assert_eq!((fresh.snapshot_seq, fresh.fallback), (None, None));
        let persisted = Sync {
            snapshot: None,
            persisted_url: Some("http://h/p.json"),
            time: 0,
            seq: 1,
            tove: None,
            reflector: "r",
            timeline: "t",
            flags_json: "{}",
            fallback: None,
        }
        .frame("\"s\"", std::iter::empty());
        let ServerFrame::Sync(p) = ServerFrame::parse(&persisted).unwrap() else {
            panic!("not a SYNC");
        };
        assert!(p.persisted);
        assert_eq!(p.url, "http://h/p.json");

        // After the first snapshot of a session that started from persisted data, the
        // fallback to its start is that data.
        let started_persisted = Sync {
            snapshot: Some(SnapshotRef {
                time_raw: "7244.5",
                seq: 4294967284,
                url: "http://h/files/snapshots/sid/x.snap",
            }),
            persisted_url: Some("http://h/p.json"),
            time: 14005,
            seq: 4294967286,
            tove: None,
            reflector: "r",
            timeline: "t",
            flags_json: "{}",
            fallback: Some(SnapshotRef {
                time_raw: "0",
                seq: 4294967280,
                url: "",
            }),
        }
        .frame("\"s\"", std::iter::empty());
        let ServerFrame::Sync(p) = ServerFrame::parse(&started_persisted).unwrap() else {
            panic!("not a SYNC");
        };
        assert_eq!(p.url, "http://h/files/snapshots/sid/x.snap");
        assert!(!p.persisted, "the SYNC's own url is the snapshot");
        assert_eq!(
            p.fallback,
            Some(Fallback {
                url: "http://h/p.json".into(),
                time: Some(0.0),
                seq: 4294967280,
                persisted: true,
            })
        );
    }

    #[test]
    fn a_sync_without_seq_and_a_recv_without_message_are_errors() {
        assert!(matches!(
            ServerFrame::parse(r#"{"id":"s","action":"SYNC","args":{"url":""}}"#),
            Err(FrameError::Malformed { action: "SYNC", .. })
        ));
        assert!(matches!(
            ServerFrame::parse(r#"{"id":"s","action":"RECV","args":[1]}"#),
            Err(FrameError::Malformed { action: "RECV", .. })
        ));
        assert!(matches!(
            ServerFrame::parse("{not json"),
            Err(FrameError::NotJson(_))
        ));
    }

    #[test]
    fn reads_every_other_frame_the_reflector_writes() {
        let id = quote("sid");
        let recv = RecvFrame::new(&id, 1712, 4294967282, "\"enc\",0,\"v1\"");
        let ServerFrame::Recv(m) = ServerFrame::parse(&recv.frame).unwrap() else {
            panic!("not a RECV");
        };
        assert_eq!((m.time, m.seq), (1712.0, 4294967282));
        assert_eq!(m.payload, json!("enc"));
        assert_eq!(m.rest, vec![json!(0), json!("v1")]);
        assert_eq!(m.users(), None);

        assert_eq!(
            ServerFrame::parse(&frames::tick(&id, 603)).unwrap(),
            ServerFrame::Tick(603.0)
        );
        assert_eq!(
            ServerFrame::parse(r#"{"id":"s","action":"TICK","args":{"time":5}}"#).unwrap(),
            ServerFrame::Tick(5.0)
        );
        assert_eq!(
            ServerFrame::parse(&frames::requ(&id)).unwrap(),
            ServerFrame::Requ
        );
        assert_eq!(
            ServerFrame::parse(&frames::info(&id, "c", "hello \"you\"", "warning")).unwrap(),
            ServerFrame::Info(Info {
                code: Some("c".into()),
                msg: "hello \"you\"".into(),
                level: Some("warning".into()),
            })
        );
        let echo = serde_json::value::RawValue::from_string("{\"t\":1}".into()).unwrap();
        assert_eq!(
            ServerFrame::parse(&frames::pong(Some(&echo))).unwrap(),
            ServerFrame::Pong(Some(json!({"t": 1})))
        );
        assert_eq!(
            ServerFrame::parse(&frames::pong(None)).unwrap(),
            ServerFrame::Pong(None)
        );
        assert_eq!(
            ServerFrame::parse(r#"{"id":"s","action":"AICAP","args":{"token":"abc"}}"#).unwrap(),
            ServerFrame::AiCap {
                token: "abc".into()
            }
        );
        let odd = ServerFrame::parse(r#"{"id":"s","action":"TICK","args":"soon"}"#).unwrap();
        assert_eq!(odd.action(), "TICK");
        assert!(matches!(odd, ServerFrame::Other { .. }));
    }

    #[test]
    fn reads_users_and_tally_payloads() {
        let id = quote("sid");
        let users = frames::users_payload(2, 3, &[r#"{"id":"v1","data":"d"}"#, "\"B\""], &["7"]);
        let recv = RecvFrame::new(&id, 5, 9, &users);
        let ServerFrame::Recv(m) = ServerFrame::parse(&recv.frame).unwrap() else {
            panic!("not a RECV");
        };
        assert_eq!(
            m.users(),
            Some(Users {
                active: Some(2),
                total: Some(3),
                joined: vec![
                    User::View {
                        id: "v1".into(),
                        data: Some("d".into())
                    },
                    User::Name("B".into())
                ],
                left: vec![User::Other(json!(7))],
            })
        );
        assert_eq!(m.tally(), None);

        let tally = frames::tally_payload(
            "3000",
            &[("\"y\"".into(), 2), ("\"x\"".into(), 1)],
            "[\"handleSnapshotVote\"]",
            "snapshot@3000",
            1,
        );
        let m =
            StreamMessage::from_value(&serde_json::from_str(&format!("[1,2,{tally}]")).unwrap())
                .unwrap();
        let t = m.tally().unwrap();
        assert_eq!(t.send_time, Some(3000.0));
        let mut votes = t.votes.clone();
        votes.sort();
        assert_eq!(votes, vec![("\"x\"".into(), 1), ("\"y\"".into(), 2)]);
        assert_eq!(t.tally_target, json!(["handleSnapshotVote"]));
        assert_eq!(t.tutti_key.as_deref(), Some("snapshot@3000"));
        assert_eq!(t.missing_clients, Some(1));
    }

    #[test]
    fn reassembles_what_the_reflector_chunks() {
        let frame = format!(
            r#"{{"id":"s","action":"INFO","args":{{"msg":"{}"}}}}"#,
            "é€x".repeat(40)
        );
        let pieces = frames::chunk_with(&frame, 16);
        assert!(pieces.len() > 3);
        let mut r = Reassembler::new(frame.len());
        let mut out = None;
        for (i, p) in pieces.iter().enumerate() {
            assert!(Reassembler::is_chunk(p));
            out = r.push(p).unwrap();
            assert_eq!(out.is_some(), i + 1 == pieces.len());
        }
        assert_eq!(out.as_deref(), Some(frame.as_str()));
        // One byte less of room: refused, and the buffer is gone.
        let mut small = Reassembler::new(frame.len() - 1);
        let err = pieces
            .iter()
            .find_map(|p| small.push(p).err())
            .expect("too large");
        assert_eq!(
            err,
            FrameError::ChunkTooLarge {
                limit: frame.len() - 1
            }
        );
        assert_eq!(
            small.push(&pieces[1]).unwrap_err(),
            FrameError::ChunkWithoutFirst
        );
        assert_eq!(small.push("_CHUNK1").unwrap_err(), FrameError::ChunkFlags);
    }
}
