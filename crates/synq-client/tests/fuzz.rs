//! Fuzzing the client's handling of everything a reflector may send: sequences of
//! arbitrary and near-valid SYNC/RECV/TICK/REQU/INFO/`_CHUNK` frames fed to
//! [`Controller::on_frame`], snapshot downloads of arbitrary bytes fed to
//! [`Controller::on_snapshot`], mixed with the app's own calls. Near-valid frames are
//! built with the session key, so that they get past decryption and reach the replica:
//! inputs, polls, joins and leaves, tallies, sealed snapshots (valid ones with bytes
//! flipped). The property: no panic and no hang; errors are fine (the driver rejoins or
//! reports them).
//!
//! `SYNQ_FUZZ_CASES=1000000 cargo test --release -p synq-client --test fuzz` for a long
//! run; the default is small enough for CI.

// The JSON generators are shared with synq-protocol's fuzz tests (same frames, other side).
#[path = "../../synq-protocol/tests/fuzz_json/mod.rs"]
mod fuzz_json;

use std::sync::OnceLock;

use fuzz_json::*;
use proptest::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use synq_client::controller::MAX_CHUNKED_FRAME_BYTES;
use synq_client::crypto::{Purpose, SessionKey};
use synq_client::{ClientConfig, Controller, Effect, SessionEvent, room_id, session_id};
use synq_model::demo::{Room, RoomInput, RoomViewData};
use synq_model::{Event, Model, Replica, ViewId};

/// The plaintext of a payload, as `synq_client::wire::Wire` (crate-private) encodes it
/// with postcard; `the_mirror_of_the_wire_format_matches_the_client` checks that it does.
#[derive(Debug, Serialize, Deserialize)]
struct Wire {
    view: String,
    body: Body,
}

#[derive(Debug, Serialize, Deserialize)]
enum Body {
    Inputs { first_n: u64, inputs: Vec<Vec<u8>> },
    SnapshotPoll,
}

const PASSWORD: &str = "pw";

fn config(snapshot_every: Option<u64>, max_chunked: usize) -> ClientConfig {
    let mut cfg = ClientConfig::for_server("http://127.0.0.1:1", "app", "room", PASSWORD);
    cfg.kdf_rounds = 1;
    cfg.snapshot_every = snapshot_every;
    cfg.max_chunked_frame_bytes = max_chunked;
    cfg
}

fn key() -> &'static SessionKey {
    static KEY: OnceLock<SessionKey> = OnceLock::new();
    KEY.get_or_init(|| {
        SessionKey::derive(
            PASSWORD,
            &room_id("app", "room"),
            &session_id("app", "room", Room::SCHEMA),
            1,
        )
    })
}

fn sealed(purpose: Purpose, plain: &[u8]) -> String {
    key().seal_text(purpose, plain).unwrap_or_default()
}

/// A view's data as its client seals it: bound to the view id it is announced with.
fn view_data(view_id: &str, name: &str) -> String {
    let data = postcard::to_stdvec(&RoomViewData { name: name.into() }).unwrap_or_default();
    key().seal_view_data(view_id, &data).unwrap_or_default()
}

/// Snapshots of real Room replicas to flip bytes in: a fresh one and a busy one.
fn base_snapshots() -> &'static [Vec<u8>] {
    static SNAPS: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    SNAPS.get_or_init(|| {
        let (fresh, _) = Replica::<Room>::new(b"seed", 0);
        let (mut busy, _) = Replica::<Room>::new(b"seed", 0);
        for (time, event) in synq_model::demo::room_log(7, 60, 3) {
            busy.apply(time, event);
        }
        let view = ViewId("someone".into());
        busy.apply(
            1,
            Event::Join {
                view: view.clone(),
                data: RoomViewData { name: "x".into() },
            },
        );
        busy.apply(
            2,
            Event::Input {
                from: view,
                n: u64::MAX - 1,
                input: RoomInput::Typing,
            },
        );
        [fresh, busy]
            .iter()
            .filter_map(|r| r.snapshot().ok().map(|s| s.bytes))
            .collect()
    })
}

// ---- the script: what the fuzzer generates ----

/// Who a message claims to be from, or who the reflector stamped.
#[derive(Debug, Clone)]
enum Who {
    Me,
    Other(String),
    /// No stamp at all / a stamp that is not a string.
    Missing,
    Raw(String),
}

#[derive(Debug, Clone)]
enum SeqChoice {
    Next,
    Same,
    Skip(u32),
    Raw(String),
}

#[derive(Debug, Clone)]
enum InputBytes {
    Valid(RoomInput),
    Raw(Vec<u8>),
}

#[derive(Debug, Clone)]
enum Entry {
    Sealed(Who, String),
    BadData(Who, String),
    Raw(String),
}

#[derive(Debug, Clone)]
enum Payload {
    Inputs {
        claimed: Who,
        stamp: Who,
        first_n: u64,
        inputs: Vec<InputBytes>,
    },
    Poll {
        claimed: Who,
        stamp: Who,
    },
    SealedRaw(Vec<u8>, Who),
    Text(String, Who),
    Users {
        joined: Vec<Entry>,
        left: Vec<Entry>,
        active: Option<String>,
    },
    Tally {
        pending_key: bool,
        raw_key: String,
        /// `(this client's vote?, other vote, viewId, count)`
        ballots: Vec<(bool, String, Who, String)>,
    },
    Any(String),
}

#[derive(Debug, Clone)]
struct Msg {
    time: String,
    seq: SeqChoice,
    payload: Payload,
}

#[derive(Debug, Clone)]
enum Tove {
    Good,
    Bad,
    Absent,
    Raw(String),
}

#[derive(Debug, Clone)]
enum SnapBytes {
    Raw(Vec<u8>),
    SealedRaw(Vec<u8>),
    /// A real snapshot with bytes changed (`(index, xor)`), maybe cut short, then sealed.
    SealedValid {
        base: usize,
        flips: Vec<(usize, u8)>,
        cut: Option<usize>,
    },
}

#[derive(Debug, Clone)]
enum Step {
    /// Any server frame from the shared generators.
    Raw(String),
    Sync {
        tove: Tove,
        seq: String,
        time: String,
        snapshot_url: Option<String>,
        snapshot_seq: Option<String>,
        persisted: bool,
        new_timeline: bool,
        messages: Vec<Msg>,
    },
    Recv(Msg),
    Tick(String, bool),
    Requ,
    Info(String),
    /// The step's frame split into `_CHUNK` pieces at these byte fractions (‰), maybe with
    /// wrong flags.
    Chunked(Box<Step>, Vec<u16>, bool),
    Snapshot(SnapBytes),
    SnapshotFailed,
    Publish(RoomInput),
    Flush(f64),
    Lost,
}

/// Session times: small steps mostly, and values no reflector can produce. Mid-range
/// jumps (days to years) are legitimate and cost model time in proportion (the replica
/// runs every timer that falls due), so they are left out to keep cases fast.
fn time() -> BoxedStrategy<String> {
    prop_oneof![
        6 => (0u64..2_000_000).prop_map(|t| t.to_string()),
        1 => (0u64..2_000_000).prop_map(|t| format!("{t}.5")),
        2 => proptest::sample::select(&[
            "-1", "-1e308", "1e308", "1e400", "18446744073709551615", "18446744073709551616",
            "9007199254740993", "1e20", "null", "\"12\"", "[]",
        ][..])
        .prop_map(str::to_owned),
    ]
    .boxed()
}

fn who() -> BoxedStrategy<Who> {
    prop_oneof![
        4 => Just(Who::Me),
        2 => "[0-9a-f]{20}|v[0-9]".prop_map(Who::Other),
        1 => Just(Who::Missing),
        1 => leaf().prop_map(Who::Raw),
    ]
    .boxed()
}

fn room_input() -> BoxedStrategy<RoomInput> {
    prop_oneof![
        4 => ".{0,40}".prop_map(RoomInput::Post),
        2 => Just(RoomInput::Typing),
        1 => Just(RoomInput::Reset),
    ]
    .boxed()
}

fn seq_choice() -> BoxedStrategy<SeqChoice> {
    prop_oneof![
        8 => Just(SeqChoice::Next),
        1 => Just(SeqChoice::Same),
        1 => any::<u32>().prop_map(SeqChoice::Skip),
        1 => number().prop_map(SeqChoice::Raw),
    ]
    .boxed()
}

fn first_n() -> BoxedStrategy<u64> {
    prop_oneof![
        4 => 0u64..20,
        1 => Just(u64::MAX),
        1 => Just(u64::MAX - 1),
        1 => any::<u64>(),
    ]
    .boxed()
}

fn entry() -> BoxedStrategy<Entry> {
    prop_oneof![
        4 => (who(), ".{0,12}").prop_map(|(w, n)| Entry::Sealed(w, n)),
        1 => (who(), string()).prop_map(|(w, d)| Entry::BadData(w, d)),
        1 => value().prop_map(Entry::Raw),
    ]
    .boxed()
}

fn payload() -> BoxedStrategy<Payload> {
    let input_bytes = prop_oneof![
        4 => room_input().prop_map(InputBytes::Valid),
        1 => proptest::collection::vec(any::<u8>(), 0..16).prop_map(InputBytes::Raw),
    ];
    let ballot = (any::<bool>(), string(), who(), number());
    prop_oneof![
        6 => (who(), who(), first_n(), proptest::collection::vec(input_bytes, 0..4)).prop_map(
            |(claimed, stamp, first_n, inputs)| Payload::Inputs { claimed, stamp, first_n, inputs }
        ),
        2 => (who(), who()).prop_map(|(claimed, stamp)| Payload::Poll { claimed, stamp }),
        1 => (proptest::collection::vec(any::<u8>(), 0..64), who())
            .prop_map(|(b, w)| Payload::SealedRaw(b, w)),
        1 => (prop_oneof![string(), value()], who()).prop_map(|(t, w)| Payload::Text(t, w)),
        3 => (
            proptest::collection::vec(entry(), 0..4),
            proptest::collection::vec(entry(), 0..3),
            proptest::option::of(number()),
        )
            .prop_map(|(joined, left, active)| Payload::Users { joined, left, active }),
        2 => (any::<bool>(), string(), proptest::collection::vec(ballot, 0..4)).prop_map(
            |(pending_key, raw_key, ballots)| Payload::Tally { pending_key, raw_key, ballots }
        ),
        1 => prop_oneof![users_payload(), tally_payload(), value()].prop_map(Payload::Any),
    ]
    .boxed()
}

fn msg() -> BoxedStrategy<Msg> {
    (time(), seq_choice(), payload())
        .prop_map(|(time, seq, payload)| Msg { time, seq, payload })
        .boxed()
}

fn snap_bytes() -> BoxedStrategy<SnapBytes> {
    prop_oneof![
        1 => proptest::collection::vec(any::<u8>(), 0..128).prop_map(SnapBytes::Raw),
        1 => proptest::collection::vec(any::<u8>(), 0..128).prop_map(SnapBytes::SealedRaw),
        4 => (
            0usize..2,
            proptest::collection::vec((any::<usize>(), 1u8..=255), 0..4),
            proptest::option::weighted(0.2, any::<usize>()),
        )
            .prop_map(|(base, flips, cut)| SnapBytes::SealedValid { base, flips, cut }),
    ]
    .boxed()
}

fn step() -> BoxedStrategy<Step> {
    let sync = (
        prop_oneof![6 => Just(Tove::Good), 1 => Just(Tove::Bad), 2 => Just(Tove::Absent),
            1 => leaf().prop_map(Tove::Raw)],
        prop_oneof![4 => (4294967270u64..4294967295).prop_map(|s| s.to_string()), 1 => number()],
        time(),
        proptest::option::weighted(
            0.3,
            prop_oneof![
                Just("\"http://127.0.0.1:1/files/s.snap\"".to_owned()),
                string(),
                value()
            ],
        ),
        proptest::option::weighted(0.5, number()),
        proptest::bool::weighted(0.1),
        proptest::bool::weighted(0.3),
        proptest::collection::vec(msg(), 0..5),
    )
        .prop_map(
            |(tove, seq, time, snapshot_url, snapshot_seq, persisted, new_timeline, messages)| {
                Step::Sync {
                    tove,
                    seq,
                    time,
                    snapshot_url,
                    snapshot_seq,
                    persisted,
                    new_timeline,
                    messages,
                }
            },
        );
    let simple = prop_oneof![
        2 => server_frame().prop_map(Step::Raw),
        3 => sync,
        10 => msg().prop_map(Step::Recv),
        2 => (time(), any::<bool>()).prop_map(|(t, obj)| Step::Tick(t, obj)),
        1 => Just(Step::Requ),
        1 => leaf().prop_map(Step::Info),
        2 => snap_bytes().prop_map(Step::Snapshot),
        1 => Just(Step::SnapshotFailed),
        2 => room_input().prop_map(Step::Publish),
        2 => (0.0f64..1e7).prop_map(Step::Flush),
        1 => Just(Step::Lost),
    ];
    simple
        .prop_recursive(1, 4, 1, |inner| {
            (
                inner,
                proptest::collection::vec(0u16..1000, 0..4),
                proptest::bool::weighted(0.2),
            )
                .prop_map(|(s, cuts, bad)| Step::Chunked(Box::new(s), cuts, bad))
        })
        .boxed()
}

// ---- running a script ----

struct Runner {
    c: Controller<Room>,
    me: String,
    next_seq: u32,
    timeline: u32,
    /// The last snapshot vote this client sent: `(tuttiKey, vote)`.
    my_vote: Option<(String, String)>,
}

impl Runner {
    fn new(snapshot_every: Option<u64>) -> Runner {
        Runner::with_chunk_limit(snapshot_every, MAX_CHUNKED_FRAME_BYTES)
    }

    fn with_chunk_limit(snapshot_every: Option<u64>, max_chunked: usize) -> Runner {
        let c = Controller::<Room>::new(
            config(snapshot_every, max_chunked),
            &RoomViewData::default(),
        )
        .expect("controller");
        let me = c.view_id().as_str().to_owned();
        Runner {
            c,
            me,
            next_seq: 4294967281,
            timeline: 0,
            my_vote: None,
        }
    }

    fn who(&self, w: &Who) -> Option<Value> {
        match w {
            Who::Me => Some(Value::String(self.me.clone())),
            Who::Other(id) => Some(Value::String(id.clone())),
            Who::Missing => None,
            Who::Raw(v) => serde_json::from_str(v).ok(),
        }
    }

    fn who_str(&self, w: &Who) -> String {
        match self.who(w) {
            Some(Value::String(s)) => s,
            Some(v) => v.to_string(),
            None => String::new(),
        }
    }

    fn entry(&self, e: &Entry) -> String {
        match e {
            Entry::Sealed(w, name) => {
                let id = self.who(w);
                let bound = id.as_ref().and_then(Value::as_str).unwrap_or_default();
                json!({"id": id, "data": view_data(bound, name)}).to_string()
            }
            Entry::BadData(w, data) => format!(
                "{{\"id\":{},\"data\":{data}}}",
                self.who(w).unwrap_or(Value::Null)
            ),
            Entry::Raw(v) => v.clone(),
        }
    }

    fn seq(&mut self, s: &SeqChoice) -> String {
        match s {
            SeqChoice::Next => {
                let s = self.next_seq;
                self.next_seq = s.wrapping_add(1);
                s.to_string()
            }
            SeqChoice::Same => self.next_seq.wrapping_sub(1).to_string(),
            SeqChoice::Skip(k) => {
                let s = self.next_seq.wrapping_add(*k);
                self.next_seq = s.wrapping_add(1);
                s.to_string()
            }
            SeqChoice::Raw(n) => n.clone(),
        }
    }

    fn sealed_wire(&self, claimed: &Who, body: Body) -> String {
        let wire = Wire {
            view: self.who_str(claimed),
            body,
        };
        sealed(
            Purpose::Message,
            &postcard::to_stdvec(&wire).unwrap_or_default(),
        )
    }

    /// `[time, seq, payload, latency, stamp?]` as text.
    fn message(&mut self, m: &Msg) -> String {
        let seq = self.seq(&m.seq);
        let (payload, stamp) = match &m.payload {
            Payload::Inputs {
                claimed,
                stamp,
                first_n,
                inputs,
            } => {
                let inputs = inputs
                    .iter()
                    .map(|i| match i {
                        InputBytes::Valid(input) => postcard::to_stdvec(input).unwrap_or_default(),
                        InputBytes::Raw(b) => b.clone(),
                    })
                    .collect();
                let body = Body::Inputs {
                    first_n: *first_n,
                    inputs,
                };
                (json!(self.sealed_wire(claimed, body)), self.who(stamp))
            }
            Payload::Poll { claimed, stamp } => (
                json!(self.sealed_wire(claimed, Body::SnapshotPoll)),
                self.who(stamp),
            ),
            Payload::SealedRaw(b, stamp) => (json!(sealed(Purpose::Message, b)), self.who(stamp)),
            Payload::Text(t, stamp) => (
                serde_json::from_str(t).unwrap_or(Value::Null),
                self.who(stamp),
            ),
            Payload::Users {
                joined,
                left,
                active,
            } => {
                let joined: Vec<String> = joined.iter().map(|e| self.entry(e)).collect();
                let left: Vec<String> = left.iter().map(|e| self.entry(e)).collect();
                let active = active.clone().unwrap_or_else(|| joined.len().to_string());
                let text = format!(
                    "{{\"what\":\"users\",\"active\":{active},\"total\":{active},\"joined\":[{}],\"left\":[{}]}}",
                    joined.join(","),
                    left.join(",")
                );
                (serde_json::from_str(&text).unwrap_or(Value::Null), None)
            }
            Payload::Tally {
                pending_key,
                raw_key,
                ballots,
            } => {
                let key = match (&self.my_vote, pending_key) {
                    (Some((k, _)), true) => json!(k),
                    _ => serde_json::from_str(raw_key).unwrap_or(Value::Null),
                };
                let mut tally = serde_json::Map::new();
                for (mine, vote, viewer, count) in ballots {
                    let vote = match (&self.my_vote, mine) {
                        (Some((_, v)), true) => json!(v),
                        _ => serde_json::from_str(vote).unwrap_or(Value::Null),
                    };
                    let ballot = json!({"vote": vote, "viewId": self.who(viewer)}).to_string();
                    tally.insert(ballot, serde_json::from_str(count).unwrap_or(Value::Null));
                }
                (
                    json!({"what": "tally", "tuttiKey": key, "tally": tally}),
                    None,
                )
            }
            Payload::Any(v) => {
                return format!("[{},{seq},{v}]", m.time);
            }
        };
        let mut text = format!("[{},{seq},{payload},0", m.time);
        if let Some(s) = stamp {
            text.push(',');
            text.push_str(&s.to_string());
        }
        text.push(']');
        text
    }

    fn frame(&mut self, step: &Step) -> Option<String> {
        Some(match step {
            Step::Raw(t) => t.clone(),
            Step::Sync {
                tove,
                seq,
                time,
                snapshot_url,
                snapshot_seq,
                persisted,
                new_timeline,
                messages,
            } => {
                if *new_timeline {
                    self.timeline += 1;
                }
                if let Ok(s) = seq.parse::<u32>() {
                    self.next_seq = s.wrapping_add(1);
                }
                let msgs: Vec<String> = messages.iter().map(|m| self.message(m)).collect();
                let mut f = format!(
                    "{{\"id\":\"s\",\"action\":\"SYNC\",\"args\":{{\"url\":{},\"messages\":[{}],\"time\":{time},\"seq\":{seq},\"timeline\":\"t{}\"",
                    snapshot_url.as_deref().unwrap_or("\"\""),
                    msgs.join(","),
                    self.timeline
                );
                match tove {
                    Tove::Good => {
                        let t = sealed(Purpose::SessionCheck, self.c.session_id().as_bytes());
                        f.push_str(&format!(",\"tove\":\"{t}\""));
                    }
                    Tove::Bad => f.push_str(",\"tove\":\"AAAA\""),
                    Tove::Absent => {}
                    Tove::Raw(v) => f.push_str(&format!(",\"tove\":{v}")),
                }
                if let Some(s) = snapshot_seq {
                    f.push_str(&format!(",\"snapshotTime\":1,\"snapshotSeq\":{s}"));
                }
                if *persisted {
                    f.push_str(",\"persisted\":true");
                }
                f.push_str("}}");
                f
            }
            Step::Recv(m) => {
                let args = self.message(m);
                format!("{{\"id\":\"s\",\"action\":\"RECV\",\"args\":{args}}}")
            }
            Step::Tick(t, obj) => {
                if *obj {
                    format!("{{\"id\":\"s\",\"action\":\"TICK\",\"args\":{{\"time\":{t}}}}}")
                } else {
                    format!("{{\"id\":\"s\",\"action\":\"TICK\",\"args\":{t}}}")
                }
            }
            Step::Requ => "{\"id\":\"s\",\"action\":\"REQU\"}".to_owned(),
            Step::Info(m) => format!(
                "{{\"id\":\"s\",\"action\":\"INFO\",\"args\":{{\"code\":\"X\",\"msg\":{m}}}}}"
            ),
            _ => return None,
        })
    }

    fn snapshot_bytes(s: &SnapBytes) -> Vec<u8> {
        match s {
            SnapBytes::Raw(b) => b.clone(),
            SnapBytes::SealedRaw(b) => key().seal(Purpose::Snapshot, b).unwrap_or_default(),
            SnapBytes::SealedValid { base, flips, cut } => {
                let bases = base_snapshots();
                let mut b = bases[*base % bases.len()].clone();
                for (i, x) in flips {
                    let n = b.len();
                    if n > 0 {
                        b[i % n] ^= x;
                    }
                }
                if let Some(c) = cut {
                    b.truncate(c % (b.len() + 1));
                }
                key().seal(Purpose::Snapshot, &b).unwrap_or_default()
            }
        }
    }

    /// Feeds a frame in `_CHUNK` pieces cut at `cuts` (‰ of its length).
    fn chunked(&mut self, text: &str, cuts: &[u16], bad_flags: bool) -> Result<(), String> {
        let mut at: Vec<usize> = cuts
            .iter()
            .map(|c| {
                let mut i = text.len() * usize::from(*c) / 1000;
                while !text.is_char_boundary(i) {
                    i -= 1;
                }
                i
            })
            .collect();
        at.push(0);
        at.push(text.len());
        at.sort_unstable();
        at.dedup();
        let n = at.len() - 1;
        for k in 0..n {
            let (first, last) = if bad_flags {
                (k % 2 == 1, k == 0)
            } else {
                (k == 0, k + 1 == n)
            };
            let piece = format!(
                "_CHUNK{}{}{}",
                u8::from(first),
                u8::from(last),
                &text[at[k]..at[k + 1]]
            );
            self.c.on_frame(&piece).map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Runs one step; an error is handled as the driver would (the connection is
    /// dropped and the client rejoins).
    fn run(&mut self, step: &Step) {
        let result = match step {
            Step::Chunked(inner, cuts, bad_flags) => match self.frame(inner) {
                Some(text) => self.chunked(&text, cuts, *bad_flags),
                None => Ok(()),
            },
            Step::Snapshot(s) => self
                .c
                .on_snapshot(&Self::snapshot_bytes(s))
                .map_err(|e| e.to_string()),
            Step::SnapshotFailed => self.c.on_snapshot_failed("fuzz").map_err(|e| e.to_string()),
            Step::Publish(input) => self.c.publish(input).map_err(|e| e.to_string()),
            Step::Flush(now) => self.c.flush(*now).map_err(|e| e.to_string()),
            Step::Lost => {
                self.c.connection_lost("fuzz");
                Ok(())
            }
            other => match self.frame(other) {
                Some(text) => self.c.on_frame(&text).map_err(|e| e.to_string()),
                None => Ok(()),
            },
        };
        if result.is_err() {
            self.c.connection_lost("fuzz");
        }
        let _ = self.c.take_events();
        for e in self.c.take_effects() {
            self.note_effect(&e);
        }
        let _ = self.c.is_synced();
        let _ = self.c.replica().map(|r| (r.now(), r.events()));
    }

    /// Remembers this client's snapshot vote, so that a generated tally can name it.
    fn note_effect(&mut self, e: &Effect) {
        let text = match e {
            Effect::Send(text) => text,
            Effect::Upload {
                then: Some(then), ..
            } => then,
            Effect::Upload { then: None, .. } | Effect::Download(_) => return,
        };
        let Ok(v) = serde_json::from_str::<Value>(text) else {
            panic!("the client sent invalid JSON: {text}");
        };
        if v["action"] == "TUTTI" {
            let payload: Value = v["args"][2]
                .as_str()
                .and_then(|p| serde_json::from_str(p).ok())
                .unwrap_or(Value::Null);
            if let (Some(k), Some(vote)) = (v["args"][6].as_str(), payload["vote"].as_str()) {
                self.my_vote = Some((k.to_owned(), vote.to_owned()));
            }
        }
    }
}

/// A SYNC that works: a fresh session in which this view has just joined.
fn good_sync() -> Step {
    Step::Sync {
        tove: Tove::Good,
        seq: "4294967280".into(),
        time: "0".into(),
        snapshot_url: None,
        snapshot_seq: None,
        persisted: false,
        new_timeline: false,
        messages: vec![Msg {
            time: "0".into(),
            seq: SeqChoice::Raw("4294967281".into()),
            payload: Payload::Users {
                joined: vec![Entry::Sealed(Who::Me, "me".into())],
                left: vec![],
                active: None,
            },
        }],
    }
}

fn script() -> impl Strategy<Value = (Option<u64>, usize, Vec<Step>)> {
    (
        prop_oneof![Just(None), Just(Some(1)), Just(Some(3)), Just(Some(5000))],
        // Small limits make the chunked steps run into the reassembly limit too.
        prop_oneof![3 => Just(MAX_CHUNKED_FRAME_BYTES), 1 => 64usize..4096],
        proptest::collection::vec(step(), 1..24),
    )
}

proptest! {
    #![proptest_config(fuzz_json::config(500))]

    /// A script starts with a SYNC that works (so that most steps reach a running replica
    /// in which this view has joined), then anything.
    #[test]
    fn the_client_survives_anything_a_reflector_sends((every, max_chunked, steps) in script()) {
        let mut r = Runner::with_chunk_limit(every, max_chunked);
        r.run(&good_sync());
        for s in &steps {
            r.run(s);
        }
    }

    /// Any frame text at all, from a fresh client.
    #[test]
    fn the_client_survives_any_frame_text(frames in proptest::collection::vec(
        prop_oneof![server_frame(), garbage().prop_map(|g| format!("_CHUNK{g}"))], 1..8)
    ) {
        let mut r = Runner::new(Some(5000));
        for f in &frames {
            r.run(&Step::Raw(f.clone()));
        }
    }

    /// A reflector that never sends the last `_CHUNK` piece (or sends more than any
    /// frame may be) is refused as soon as the pieces pass the limit, not before; after
    /// a rejoin, a new first piece starts over.
    #[test]
    fn chunk_pieces_are_refused_once_they_pass_the_limit(
        limit in 1usize..8192,
        pieces in proptest::collection::vec("[a-z\\[\\]{}\",:0-9é]{0,700}", 1..48),
    ) {
        let mut r = Runner::with_chunk_limit(None, limit);
        r.run(&good_sync());
        let mut total = 0usize;
        for (i, piece) in pieces.iter().enumerate() {
            total += piece.len();
            let flags = if i == 0 { "10" } else { "00" };
            let result = r.c.on_frame(&format!("_CHUNK{flags}{piece}"));
            if total > limit {
                let err = result.expect_err("past the limit");
                prop_assert!(err.to_string().contains("larger than"), "{}", err);
                // The pieces are dropped: the next chunked frame is reassembled anew.
                r.c.connection_lost("fuzz");
                let _ = r.c.take_events();
                let info = r#"{"id":"s","action":"INFO","args":{"msg":"again"}}"#;
                if info.len() <= limit {
                    r.c.on_frame(&format!("_CHUNK10{}", &info[..20])).expect("first piece");
                    r.c.on_frame(&format!("_CHUNK01{}", &info[20..])).expect("last piece");
                    prop_assert_eq!(
                        r.c.take_events(),
                        vec![SessionEvent::Info("reflector: again".into())]
                    );
                }
                return Ok(());
            }
            prop_assert!(result.is_ok(), "{:?} at {} of {} bytes", result, total, limit);
        }
    }
}

/// The fuzzer's mirror of the payload format is the client's own: a script that relies
/// on it reaches the replica (an input from the fuzzer is applied).
#[test]
fn the_mirror_of_the_wire_format_matches_the_client() {
    let mut r = Runner::new(None);
    r.run(&good_sync());
    assert!(r.c.is_synced(), "the generated SYNC syncs the client");
    r.run(&Step::Recv(Msg {
        time: "10".into(),
        seq: SeqChoice::Next,
        payload: Payload::Inputs {
            claimed: Who::Me,
            stamp: Who::Me,
            first_n: 1,
            inputs: vec![InputBytes::Valid(RoomInput::Post("hello".into()))],
        },
    }));
    let room = r.c.replica().expect("replica").model();
    assert_eq!(room.posts.len(), 1, "the fuzzer's input reached the model");
    assert_eq!(room.posts[0].text, "hello");

    // And what the client sends decodes with the mirror.
    r.c.publish(&RoomInput::Typing).expect("publish");
    r.c.flush(1e6).expect("flush");
    let sent = r.c.take_effects();
    let Some(Effect::Send(text)) = sent.first() else {
        panic!("nothing sent: {sent:?}");
    };
    let v: Value = serde_json::from_str(text).expect("json");
    let plain = key()
        .open_text(Purpose::Message, v["args"][2].as_str().expect("payload"))
        .expect("opens");
    let wire: Wire = postcard::from_bytes(&plain).expect("mirror decodes");
    assert_eq!(wire.view, r.me);
    assert!(matches!(wire.body, Body::Inputs { ref inputs, .. } if inputs.len() == 1));

    // A sealed snapshot of the fuzzer's busy replica loads.
    let mut r = Runner::new(None);
    let mut sync = good_sync();
    if let Step::Sync { snapshot_url, .. } = &mut sync {
        // Snapshots are loaded only from the client's own store, for its session.
        let url = format!(
            "http://127.0.0.1:1/files/snapshots/{}/s.snap",
            r.c.session_id()
        );
        *snapshot_url = Some(format!("\"{url}\""));
    }
    r.run(&sync);
    r.run(&Step::Snapshot(SnapBytes::SealedValid {
        base: 1,
        flips: vec![],
        cut: None,
    }));
    assert!(r.c.replica().is_some_and(|rep| rep.events() > 0));
}

/// Found by this fuzzer: a SYNC, TICK or message time of `1e308` made the replica run
/// the demo model's periodic timer until the end of time (the client hung). Now the
/// client refuses the frame with a protocol error.
#[test]
fn an_absurd_reflector_time_is_an_error_not_a_hang() {
    for frame in [
        r#"{"id":"s","action":"TICK","args":1e308}"#,
        r#"{"id":"s","action":"TICK","args":{"time":18446744073709551615}}"#,
    ] {
        let mut r = Runner::new(None);
        r.run(&good_sync());
        assert!(r.c.is_synced());
        let err = r.c.on_frame(frame).expect_err("refused");
        assert!(err.to_string().contains("time jumps"), "{err}");
    }
    let mut r = Runner::new(None);
    let mut sync = good_sync();
    if let Step::Sync { time, .. } = &mut sync {
        *time = "1e308".into();
    }
    let text = r.frame(&sync).expect("frame");
    assert!(r.c.on_frame(&text).is_err());
    // A tick an hour ahead is fine.
    let mut r = Runner::new(None);
    r.run(&good_sync());
    r.c.on_frame(r#"{"id":"s","action":"TICK","args":3600000}"#)
        .expect("an hour");
    assert_eq!(r.c.replica().map(|rep| rep.now()), Some(3_600_000));
}

/// Found by this fuzzer: a bundle whose input numbers run past `u64::MAX` overflowed
/// (a panic in debug builds). The inputs past the end are dropped, by every replica.
#[test]
fn input_numbers_past_the_last_number_are_dropped() {
    let mut r = Runner::new(None);
    r.run(&good_sync());
    let msg = Msg {
        time: "5".into(),
        seq: SeqChoice::Next,
        payload: Payload::Inputs {
            claimed: Who::Me,
            stamp: Who::Me,
            first_n: u64::MAX,
            inputs: vec![
                InputBytes::Valid(RoomInput::Post("last".into())),
                InputBytes::Valid(RoomInput::Post("past the last".into())),
            ],
        },
    };
    let text = r.frame(&Step::Recv(msg)).expect("frame");
    r.c.on_frame(&text).expect("not an error");
    let posts: Vec<String> =
        r.c.replica()
            .expect("replica")
            .model()
            .posts
            .iter()
            .map(|p| p.text.clone())
            .collect();
    assert_eq!(posts, ["last"]);
}
