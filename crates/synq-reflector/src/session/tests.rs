//! The session's rules with synthetic time: every `Instant` is `t0` plus a chosen offset,
//! and what the session produced is read from its outbox, effects and journal records.

use std::sync::atomic::Ordering::Relaxed;

use serde_json::{Value, json};

use super::snapshots::snapshot_url_ok;
use super::*;

const HOST: &str = "h:8080";

struct Harness {
    s: Session,
    t0: Instant,
    metrics: Arc<Metrics>,
}

/// What the session sent, simplified for assertions.
#[derive(Debug, PartialEq)]
enum Sent {
    /// A frame of the stream (RECV, REQU, INFO), parsed.
    Msg(Value),
    Tick(Value),
    Sync(ConnId, Value),
    Direct(ConnId, Value),
}

fn parse(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

fn raw(v: Value) -> Box<serde_json::value::RawValue> {
    serde_json::value::RawValue::from_string(v.to_string()).expect("raw JSON")
}

impl Harness {
    fn new(id: &str) -> Harness {
        Harness::with(id, |_| {})
    }

    fn with(id: &str, tune: impl FnOnce(&mut ReflectorConfig)) -> Harness {
        let mut config = ReflectorConfig::new("/nonexistent/never-touched");
        tune(&mut config);
        let metrics = Arc::new(Metrics::default());
        let t0 = Instant::now();
        let s = Session::new(
            Arc::new(config),
            Arc::clone(&metrics),
            id.into(),
            Recovered::default(),
            Records::default(),
            t0,
        );
        Harness { s, t0, metrics }
    }

    fn at(&self, ms: u64) -> Instant {
        self.t0 + Duration::from_millis(ms)
    }

    /// A JOIN with `user` (`None`: an observer) and further JOIN args `extra`.
    fn join_with(&mut self, ms: u64, conn: ConnId, user: Option<Value>, extra: Value) {
        let mut args = json!({"version": 1, "apiKey": "k"});
        if let Some(u) = user {
            args["user"] = u;
        }
        if let (Some(a), Some(e)) = (args.as_object_mut(), extra.as_object()) {
            a.extend(e.clone());
        }
        let args = JoinArgs::parse(Some(&raw(args))).expect("JOIN args");
        let input = Input::Join {
            conn,
            host: Some(Arc::from(HOST)),
            args: Box::new(args),
            persisted_url: None,
        };
        self.s.handle(input, self.at(ms));
    }

    fn join(&mut self, ms: u64, conn: ConnId, user: &str) {
        self.join_with(ms, conn, Some(json!(user)), json!({}));
    }

    fn send_tagged(&mut self, ms: u64, conn: ConnId, payload: Value, tags: Option<Value>) {
        let args = SendArgs::parse(Some(&raw(json!([0, 0, payload])))).expect("SEND args");
        let tags = tags.and_then(|t| SendTags::parse(Some(&raw(t))));
        self.s.handle(Input::Send { conn, args, tags }, self.at(ms));
    }

    fn send(&mut self, ms: u64, conn: ConnId, payload: &str) {
        self.send_tagged(ms, conn, json!(payload), None);
    }

    fn tutti(&mut self, ms: u64, conn: ConnId, vote: &str, wants_vote: bool, key: &str) {
        let a = json!([5, 0, vote, null, wants_vote, {"t": 1}, key]);
        let args = TuttiArgs::parse(Some(&raw(a))).expect("TUTTI args");
        self.s.handle(Input::Tutti { conn, args }, self.at(ms));
    }

    fn snap(&mut self, ms: u64, conn: ConnId, time: f64, seq: u32, url: &str) {
        let a = json!({"time": time, "seq": seq, "hash": "x", "url": url});
        let args = SnapArgs::parse(Some(&raw(a))).expect("SNAP args");
        self.s.handle(Input::Snap { conn, args }, self.at(ms));
    }

    fn poll(&mut self, ms: u64) {
        self.s.poll(self.at(ms), true);
    }

    fn sent(&mut self) -> Vec<Sent> {
        self.s
            .take_outbox()
            .into_iter()
            .map(|o| match o {
                Out::Broadcast(Shared::Msg(f)) => Sent::Msg(parse(&f)),
                Out::Broadcast(Shared::Tick(f)) => Sent::Tick(parse(&f)),
                Out::Sync { conn, frame } => {
                    let len = frame.len();
                    let whole: String = frame.pieces(len, len).collect();
                    Sent::Sync(conn, parse(&whole))
                }
                Out::Frame(conn, f) => Sent::Direct(conn, parse(&f)),
            })
            .collect()
    }

    /// The payloads (element 2) of the RECV frames sent.
    fn received(&mut self) -> Vec<Value> {
        self.sent()
            .into_iter()
            .filter_map(|s| match s {
                Sent::Msg(f) if f["action"] == "RECV" => Some(f["args"][2].clone()),
                _ => None,
            })
            .collect()
    }
}

fn seq(n: u32) -> u32 {
    INITIAL_SEQ.wrapping_add(n)
}

// --- users batching ---

#[test]
fn joins_are_announced_together_once_the_users_interval_has_passed() {
    let mut h = Harness::new("room");
    h.join(0, 1, "a");
    h.join(50, 2, "b");
    let sent = h.sent();
    assert!(
        matches!(sent[..], [Sent::Sync(1, _), Sent::Sync(2, _)]),
        "{sent:?}"
    );
    assert_eq!(
        h.s.next_deadline(),
        Some(h.at(200)),
        "the first join armed the batch"
    );
    h.poll(199);
    assert!(h.sent().is_empty());
    h.poll(200);
    let users = h.received();
    assert_eq!(users.len(), 1, "one announcement for both");
    assert_eq!(users[0]["what"], "users");
    assert_eq!(users[0]["joined"], json!(["a", "b"]));
    assert_eq!(
        (users[0]["active"].clone(), users[0]["total"].clone()),
        (json!(2), json!(2))
    );
}

#[test]
fn a_leave_waits_for_the_leave_delay_and_a_quick_rejoin_is_not_announced() {
    let mut h = Harness::new("room");
    // leaveDelay is session-wide and follows the latest JOIN.
    h.join(0, 2, "b");
    h.join_with(0, 1, Some(json!("a")), json!({"leaveDelay": 500}));
    h.poll(200);
    h.sent();
    h.s.handle(Input::Closed { conn: 1 }, h.at(1000));
    h.poll(1499);
    assert_eq!(
        h.s.client(1),
        Some(true),
        "still in the session during its leave delay"
    );
    h.poll(1500);
    assert_eq!(h.s.client(1), None);
    assert_eq!(h.s.take_departed(), vec![1]);
    // The same user is back before the batch is announced: nothing to announce.
    h.join(1600, 3, "a");
    h.sent();
    h.poll(1700);
    assert_eq!(h.received(), Vec::<Value>::new());
    // A real leave is announced with the left user.
    h.s.handle(Input::Closed { conn: 2 }, h.at(2000));
    h.poll(2500);
    h.poll(2700);
    let users = h.received();
    assert_eq!(users.len(), 1);
    assert_eq!(users[0]["left"], json!(["b"]));
    assert_eq!(users[0]["active"], 1);
}

#[test]
fn observers_get_a_sync_but_are_not_announced_and_do_not_count_as_participants() {
    let mut h = Harness::with("room", |c| c.max_clients_per_session = 1);
    h.join_with(0, 1, None, json!({}));
    h.join(0, 2, "a");
    h.join(0, 3, "b");
    assert_eq!(
        h.s.take_effects(),
        vec![Effect::Close(3, CloseCode::SessionFull)]
    );
    assert_eq!(h.s.take_departed(), vec![3]);
    assert_eq!(
        (h.s.client(1), h.s.client(2), h.s.client(3)),
        (Some(false), Some(true), None)
    );
    h.poll(200);
    let users = h.received();
    assert_eq!(users[0]["joined"], json!(["a"]));
    assert_eq!(
        (users[0]["active"].clone(), users[0]["total"].clone()),
        (json!(1), json!(2))
    );
}

// --- tallies ---

#[test]
fn a_tally_completes_when_every_client_voted_and_differing_votes_are_announced() {
    let mut h = Harness::new("room");
    h.join(0, 1, "a");
    h.join(0, 2, "b");
    h.poll(200);
    h.sent();
    h.tutti(300, 1, "x", false, "k1");
    assert!(h.sent().is_empty(), "waits for the other vote");
    h.tutti(310, 2, "y", false, "k1");
    let tally = h.received();
    assert_eq!(tally.len(), 1);
    assert_eq!(tally[0]["what"], "tally");
    assert_eq!(tally[0]["tally"], json!({"x": 1, "y": 1}));
    assert_eq!(tally[0]["tuttiKey"], "k1");
    assert_eq!(tally[0]["missingClients"], 0);
    // Agreeing votes without wantsVote need no tally.
    h.tutti(400, 1, "same", false, "k2");
    h.tutti(410, 2, "same", false, "k2");
    assert!(h.sent().is_empty());
}

#[test]
fn a_tally_expires_after_its_interval_and_late_votes_are_ignored() {
    let mut h = Harness::new("room");
    h.join(0, 1, "a");
    h.join(0, 2, "b");
    h.poll(200);
    h.sent();
    h.tutti(300, 1, "x", true, "k");
    assert_eq!(h.s.next_deadline().map(|d| d <= h.at(1300)), Some(true));
    h.poll(1299);
    assert!(h.received().is_empty());
    h.poll(1300);
    let tally = h.received();
    assert_eq!(tally.len(), 1, "wantsVote: announced even with one vote");
    assert_eq!(tally[0]["tally"], json!({"x": 1}));
    assert_eq!(tally[0]["missingClients"], 1);
    h.tutti(1400, 2, "y", true, "k");
    h.poll(2500);
    assert!(h.received().is_empty(), "the tally was completed");
}

#[test]
fn an_observers_tutti_opens_no_tally() {
    let mut h = Harness::new("room");
    h.join_with(0, 1, None, json!({}));
    h.join(0, 2, "a");
    h.poll(200);
    h.sent();
    h.tutti(300, 1, "x", true, "k");
    h.poll(1400);
    assert!(
        h.received().is_empty(),
        "an observer's TUTTI opens no tally"
    );
}

// --- debounce ---

#[test]
fn debounced_messages_with_the_same_id_are_dropped_for_their_period() {
    let mut h = Harness::new("room");
    h.join(0, 1, "a");
    h.poll(200);
    h.sent();
    let tags = || Some(json!({"debounce": 100, "msgID": "m"}));
    h.send_tagged(1000, 1, json!("one"), tags());
    h.send_tagged(1050, 1, json!("two"), tags());
    h.send_tagged(1100, 1, json!("three"), tags());
    h.send_tagged(
        1101,
        1,
        json!("other"),
        Some(json!({"debounce": 100, "msgID": "n"})),
    );
    assert_eq!(
        h.received(),
        vec![json!("one"), json!("three"), json!("other")]
    );
}

#[test]
fn the_debounce_memory_is_bounded() {
    let mut h = Harness::with("room", |c| c.max_debounce_ids = 2);
    h.join(0, 1, "a");
    h.poll(200);
    h.sent();
    let tags = |id: &str| Some(json!({"debounce": 10_000, "msgID": id}));
    for id in ["a", "b", "c", "c"] {
        h.send_tagged(1000, 1, json!(id), tags(id));
    }
    // "c" found no room among two live ids: let through, and not remembered.
    assert_eq!(
        h.received(),
        vec![json!("a"), json!("b"), json!("c"), json!("c")]
    );
    h.send_tagged(1001, 1, json!("a"), tags("a"));
    assert!(
        h.received().is_empty(),
        "a remembered id is still debounced"
    );
}

// --- the message cap and snapshot requests ---

#[test]
fn the_message_cap_requests_a_snapshot_then_refuses_with_an_info_to_everyone() {
    let mut h = Harness::with("cap", |c| {
        c.snapshot_request_at = 3;
        c.max_messages = 6;
    });
    h.join(0, 1, "a");
    h.join_with(0, 2, None, json!({}));
    h.poll(200); // the users message: 1 retained
    h.sent();
    h.send(300, 1, "m0");
    assert_eq!(h.received(), vec![json!("m0")], "2 retained: no REQU yet");
    h.send(310, 1, "m1");
    let sent = h.sent();
    assert!(
        matches!(&sent[0], Sent::Msg(f) if f["action"] == "REQU"),
        "{sent:?}"
    );
    assert!(matches!(&sent[1], Sent::Msg(f) if f["args"][2] == "m1"));
    h.send(320, 1, "m2");
    assert_eq!(h.sent().len(), 1, "REQU at most once a second");
    h.send(330, 1, "m3");
    h.send(340, 1, "m4");
    h.sent();
    assert_eq!(h.metrics.messages_refused.load(Relaxed), 0);
    h.send(1400, 1, "m5");
    let sent = h.sent();
    let info = |s: &Sent| match s {
        Sent::Msg(f) | Sent::Direct(_, f) => {
            f["action"] == "INFO"
                && f["args"]["msg"] == "Cannot buffer more messages. Need snapshot."
        }
        _ => false,
    };
    assert!(
        sent.iter()
            .any(|s| matches!(s, Sent::Msg(f) if f["action"] == "REQU"))
    );
    assert!(
        sent.iter().any(|s| matches!(s, Sent::Msg(_)) && info(s)),
        "to participants"
    );
    assert!(
        sent.iter()
            .any(|s| matches!(s, Sent::Direct(2, _)) && info(s)),
        "to the observer"
    );
    assert!(
        !sent
            .iter()
            .any(|s| matches!(s, Sent::Msg(f) if f["action"] == "RECV"))
    );
    assert_eq!(h.metrics.messages_refused.load(Relaxed), 1);
    // The refusal is told at most once a second.
    h.send(1500, 1, "m6");
    assert!(h.sent().is_empty());
    // A snapshot (of everything so far) makes room.
    let url = format!("http://{HOST}/files/snapshots/cap/s.snap");
    h.snap(2000, 1, 1.0, seq(6), &url);
    h.send(2010, 1, "flows");
    assert_eq!(h.received(), vec![json!("flows")]);
}

// --- snapshots ---

#[test]
fn a_snapshot_is_accepted_once_per_min_interval_and_trims_the_replay() {
    let mut h = Harness::new("room");
    h.join(0, 1, "a");
    h.poll(200);
    h.send(300, 1, "m1");
    h.send(310, 1, "m2");
    h.sent();
    let url = format!("http://{HOST}/files/snapshots/room/1.snap");
    h.snap(400, 1, 300.0, seq(2), &url);
    assert_eq!(h.metrics.snapshots.load(Relaxed), 1);
    assert!(
        h.s.records().take_compaction().is_some(),
        "the journal is compacted"
    );
    h.send(500, 1, "m3");
    h.snap(1000, 1, 500.0, seq(3), &url);
    assert_eq!(
        h.metrics.snapshots_refused.load(Relaxed),
        1,
        "within --snapshot-min-interval"
    );
    h.snap(2400, 1, 500.0, seq(3), &url);
    assert_eq!(h.metrics.snapshots.load(Relaxed), 2);
    // A Croquet joiner gets the snapshot and only what came after it.
    h.sent();
    h.join(2500, 2, "b");
    let sync = h.sent().into_iter().find_map(|s| match s {
        Sent::Sync(2, f) => Some(f),
        _ => None,
    });
    let sync = sync.expect("a SYNC for the joiner");
    assert_eq!(sync["args"]["url"], url.as_str());
    assert_eq!(sync["args"]["snapshotSeq"], seq(3));
    let messages = sync["args"]["messages"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(messages.len(), 1, "{messages:?}");
    assert_eq!(messages[0][2], "m3");
}

#[test]
fn snapshots_that_late_joiners_must_not_load_are_refused() {
    let mut h = Harness::new("room");
    h.join(0, 1, "a");
    h.join_with(0, 2, None, json!({}));
    h.poll(200);
    h.send(300, 1, "m1");
    let good = format!("http://{HOST}/files/snapshots/room/1.snap");
    let refused = |h: &Harness| h.metrics.snapshots_refused.load(Relaxed);
    h.snap(400, 2, 300.0, seq(2), &good);
    assert_eq!(refused(&h), 1, "an observer's");
    h.snap(400, 1, 300.0, seq(3), &good);
    assert_eq!(refused(&h), 2, "a seq not issued yet");
    h.snap(400, 1, 10_000.0, seq(2), &good);
    assert_eq!(refused(&h), 3, "a time in the future");
    h.snap(
        400,
        1,
        300.0,
        seq(2),
        "http://evil/files/snapshots/room/1.snap",
    );
    assert_eq!(refused(&h), 4, "another server's file");
    h.snap(
        400,
        1,
        300.0,
        seq(2),
        &format!("http://{HOST}/files/snapshots/other/1.snap"),
    );
    assert_eq!(refused(&h), 5, "another session's file");
    assert_eq!(h.metrics.snapshots.load(Relaxed), 0);
    h.snap(400, 1, 300.0, seq(2), &good);
    assert_eq!(h.metrics.snapshots.load(Relaxed), 1);
}

// --- ticks ---

#[test]
fn ticks_come_every_period_only_while_no_message_flows() {
    let mut h = Harness::new("room");
    h.join_with(0, 1, Some(json!("a")), json!({"ticks": {"tick": 100}}));
    h.sent();
    assert_eq!(h.s.next_deadline(), Some(h.at(100)));
    h.poll(100);
    let sent = h.sent();
    assert!(
        matches!(&sent[..], [Sent::Tick(f)] if f["args"] == 100),
        "{sent:?}"
    );
    h.poll(200); // the users message: the next tick is a period after it
    h.sent();
    h.send(250, 1, "m");
    h.sent();
    assert_eq!(h.s.next_deadline(), Some(h.at(350)));
    h.poll(300);
    assert!(h.sent().is_empty(), "a message resets the tick");
    h.poll(350);
    let sent = h.sent();
    assert!(
        matches!(&sent[..], [Sent::Tick(f)] if f["args"] == 350),
        "{sent:?}"
    );
    // Nobody reads the stream: no tick is made, but the period goes on.
    h.s.poll(h.at(450), false);
    assert!(h.sent().is_empty());
    assert_eq!(h.s.next_deadline(), Some(h.at(550)));
    assert_eq!(h.metrics.ticks.load(Relaxed), 2);
}

#[test]
fn tick_rates_are_clamped_and_a_session_created_with_tick_zero_never_ticks() {
    let mut h = Harness::with("room", |c| c.min_tick = Duration::from_millis(20));
    h.join(0, 1, "a");
    let ticks = |h: &mut Harness, tick: Value| {
        let cfg = TickConfig::parse(Some(&raw(json!({ "tick": tick }))));
        h.s.handle(Input::Ticks { conn: 1, cfg }, h.at(1000));
        h.s.next_deadline()
    };
    h.poll(200);
    assert_eq!(
        ticks(&mut h, json!(1)),
        Some(h.at(1020)),
        "at least min_tick"
    );
    assert_eq!(
        ticks(&mut h, json!(1e308)),
        Some(h.at(61_000)),
        "at most a minute"
    );

    let mut h = Harness::new("room");
    h.join_with(0, 1, Some(json!("a")), json!({"ticks": {"tick": 0}}));
    h.poll(200);
    h.sent();
    h.poll(10_000);
    assert!(h.sent().is_empty());
    assert_eq!(h.s.next_deadline(), None);
}

#[test]
fn the_clock_never_goes_back_and_scales() {
    let mut h = Harness::new("room");
    h.join_with(0, 1, Some(json!("a")), json!({"ticks": {"tick": 0}}));
    h.send(1000, 1, "m");
    let cfg = TickConfig::parse(Some(&raw(json!({"scale": 2}))));
    h.s.handle(Input::Ticks { conn: 1, cfg }, h.at(1000));
    h.send(1500, 1, "n");
    h.send(1400, 1, "o"); // an earlier instant: time does not go back
    let times: Vec<Value> = h
        .sent()
        .into_iter()
        .filter_map(|s| match s {
            Sent::Msg(f) if f["action"] == "RECV" => Some(f["args"][0].clone()),
            _ => None,
        })
        .collect();
    assert_eq!(times, vec![json!(1000), json!(2000), json!(2000)]);
}

// --- synq sessions: the room key and stamped senders ---

fn synq_user(proof: &str, room: &str) -> Value {
    json!({"id": identity::view_id_for_proof(proof), "data": "d", "proof": proof, "room": room})
}

#[test]
fn a_synq_session_takes_only_joins_with_its_room_key_and_stamps_senders() {
    let mut h = Harness::new("synq2-room");
    h.join_with(0, 1, Some(synq_user("p1", "key")), json!({}));
    h.join_with(0, 2, Some(synq_user("p2", "other key")), json!({}));
    let mut forged = synq_user("p3", "key");
    forged["id"] = json!("0123456789abcdef0123");
    h.join_with(0, 3, Some(forged), json!({}));
    h.join_with(0, 4, None, json!({}));
    assert_eq!(
        h.s.take_effects(),
        vec![
            Effect::Close(2, CloseCode::WrongRoomKey),
            Effect::Close(3, CloseCode::BadIdentity),
            Effect::Close(4, CloseCode::BadIdentity),
        ]
    );
    assert_eq!(h.s.take_departed(), vec![2, 3, 4]);
    h.poll(200);
    let users = h.received();
    assert_eq!(
        users[0]["joined"],
        json!([{"id": identity::view_id_for_proof("p1"), "data": "d"}])
    );
    // The sender's view id is appended; anything but a sealed payload closes the sender.
    let args = SendArgs::parse(Some(&raw(json!([0, 0, "c2VhbGVk", 12])))).expect("args");
    h.s.handle(
        Input::Send {
            conn: 1,
            args,
            tags: None,
        },
        h.at(300),
    );
    let sent = h.sent();
    let Some(Sent::Msg(f)) = sent.first() else {
        panic!("{sent:?}")
    };
    let stamped = f["args"].as_array().map(|a| a[2..].to_vec());
    let id = identity::view_id_for_proof("p1");
    assert_eq!(stamped, Some(vec![json!("c2VhbGVk"), json!(12), json!(id)]));
    h.send_tagged(400, 1, json!({"what": "users"}), None);
    assert_eq!(
        h.s.take_effects(),
        vec![Effect::Close(1, CloseCode::MalformedMessage)]
    );
    assert!(h.sent().is_empty());
}

#[test]
fn the_room_key_is_fixed_by_the_first_join_and_journaled() {
    let mut h = Harness::new("synq2-room");
    h.join_with(0, 1, Some(synq_user("p1", "key")), json!({}));
    let header = String::from_utf8_lossy(h.s.records().bytes()).into_owned();
    assert!(header.contains(&identity::room_verifier("key")), "{header}");
    assert!(!header.contains("\"key\""), "the key itself is not stored");
    h.s.handle(Input::Closed { conn: 1 }, h.at(10));
    h.poll(10);
    // The room is empty, but its key stays.
    h.join_with(20, 2, Some(synq_user("p2", "other")), json!({}));
    assert_eq!(
        h.s.take_effects(),
        vec![Effect::Close(2, CloseCode::WrongRoomKey)]
    );
}

// --- journal, persistent data, idle ---

#[test]
fn messages_are_journaled_in_the_batch_that_sends_them() {
    let mut h = Harness::new("room");
    h.join(0, 1, "a");
    h.send(300, 1, "journaled");
    let records = String::from_utf8_lossy(h.s.records().bytes()).into_owned();
    assert!(records.contains("\"journaled\""), "{records}");
    let mut off = Harness::new("room");
    off.s.records = Records::disabled();
    off.join(0, 1, "a");
    off.send(300, 1, "x");
    assert!(off.s.records().is_empty());
}

fn save_args(url: &str) -> SaveArgs {
    SaveArgs::parse(Some(&raw(json!({ "url": url })))).expect("SAVE args")
}

#[test]
fn save_records_persistent_data_only_for_sessions_with_an_app_and_persistent_id() {
    let mut h = Harness::new("room");
    h.join_with(
        0,
        1,
        Some(json!("a")),
        json!({"appId": "app", "persistentId": "pid"}),
    );
    h.s.handle(
        Input::Save {
            conn: 1,
            args: save_args(PERSISTED),
        },
        h.at(10),
    );
    assert_eq!(
        h.s.take_effects(),
        vec![Effect::Persist {
            key: "unknown_dev_id.app.pid".into(),
            url: PERSISTED.into()
        }]
    );
    let mut h = Harness::new("room");
    h.join(0, 1, "a");
    h.s.handle(
        Input::Save {
            conn: 1,
            args: save_args(PERSISTED),
        },
        h.at(10),
    );
    assert_eq!(
        h.s.take_effects(),
        vec![Effect::Close(1, CloseCode::BadAppId)]
    );
}

#[test]
fn a_save_must_name_the_apps_persistent_data_in_this_servers_store() {
    let mut h = Harness::new("room");
    h.join_with(
        0,
        1,
        Some(json!("a")),
        json!({"appId": "app", "persistentId": "pid"}),
    );
    // The next version's joiners would be told to download these.
    for bad in [
        "http://evil.example/files/apps/app/pid/save/abc",
        "http://h:8080/files/apps/app/other/save/abc",
        "http://h:8080/files/apps/other/pid/save/abc",
        "http://h:8080/files/apps/app/pid/data/abc",
        "http://h:8080/files/snapshots/room/1.snap",
        "http://h:8080/files/apps/app/pid/save/../../x",
        "http://h:8080/apps/app/pid/save/abc",
        "file:///etc/passwd",
        "",
    ] {
        h.s.handle(
            Input::Save {
                conn: 1,
                args: save_args(bad),
            },
            h.at(10),
        );
        assert_eq!(h.s.take_effects(), vec![], "{bad:?} must not be recorded");
    }
    assert_eq!(h.metrics.saves_refused.load(Relaxed), 9);
    assert_eq!(h.s.client(1), Some(true), "the sender stays");
    for good in [PERSISTED, "https://H:8080/files/apps/app/pid/save/abc"] {
        h.s.handle(
            Input::Save {
                conn: 1,
                args: save_args(good),
            },
            h.at(20),
        );
        assert_eq!(
            h.s.take_effects(),
            vec![Effect::Persist {
                key: "unknown_dev_id.app.pid".into(),
                url: good.into()
            }]
        );
    }
}

#[test]
fn a_session_is_idle_after_its_last_client_left_for_the_idle_grace() {
    let mut h = Harness::with("room", |c| c.idle_grace = Duration::from_secs(10));
    assert!(
        h.s.is_idle(h.at(10_000)),
        "a session nobody joined is idle too"
    );
    h.join(0, 1, "a");
    assert!(!h.s.is_idle(h.at(10_000)));
    h.s.handle(Input::Closed { conn: 1 }, h.at(1000));
    h.poll(1000);
    assert!(!h.s.is_idle(h.at(10_999)));
    assert!(h.s.is_idle(h.at(11_000)));
    h.s.kept(h.at(11_000));
    assert!(!h.s.is_idle(h.at(11_000)));
}

#[test]
fn a_fresh_session_asks_for_its_apps_persistent_data_and_tells_the_joiner() {
    let mut h = Harness::new("room");
    let args = JoinArgs::parse(Some(&raw(
        json!({"version": 1, "apiKey": "k", "appId": "app", "persistentId": "pid"}),
    )))
    .expect("args");
    assert_eq!(
        h.s.persisted_key(&args).as_deref(),
        Some("unknown_dev_id.app.pid")
    );
    h.s.handle(
        Input::Join {
            conn: 1,
            host: None,
            args: Box::new(args),
            persisted_url: Some("p".into()),
        },
        h.at(0),
    );
    let sent = h.sent();
    assert!(
        matches!(&sent[..], [Sent::Sync(1, f)] if f["args"].to_string().contains("\"p\"")),
        "{sent:?}"
    );
}

// --- sessions that start from persisted data ---

const PERSISTED: &str = "http://h:8080/files/apps/app/pid/save/abc";

impl Harness {
    /// The session `id` as the journal in `dir` left it (a restart of the server).
    fn resume(id: &str, dir: &std::path::Path) -> (Harness, crate::journal::Journal) {
        let config = ReflectorConfig::new("/nonexistent/never-touched");
        let (journal, rec) =
            crate::journal::Journal::open(dir, crate::config::Durability::Write).expect("journal");
        let metrics = Arc::new(Metrics::default());
        let t0 = Instant::now();
        let s = Session::new(
            Arc::new(config),
            Arc::clone(&metrics),
            id.into(),
            rec,
            Records::default(),
            t0,
        );
        (Harness { s, t0, metrics }, journal)
    }

    /// A JOIN of app "app", persistent id "pid", handed the persisted data `persisted` as
    /// the task does: only while the session does not exist yet.
    fn join_app(&mut self, ms: u64, conn: ConnId, user: Value) {
        let args = json!({"version": 1, "apiKey": "k", "appId": "app", "persistentId": "pid", "user": user});
        let args = JoinArgs::parse(Some(&raw(args))).expect("JOIN args");
        let persisted_url = self.s.persisted_key(&args).map(|key| {
            assert_eq!(key, "unknown_dev_id.app.pid");
            PERSISTED.to_owned()
        });
        let input = Input::Join {
            conn,
            host: Some(Arc::from(HOST)),
            args: Box::new(args),
            persisted_url,
        };
        self.s.handle(input, self.at(ms));
    }

    /// The SYNC `conn` got, from what was sent since the last call.
    fn sync_of(&mut self, conn: ConnId) -> Value {
        let sent = self.sent();
        sent.iter()
            .find_map(|s| match s {
                Sent::Sync(c, f) if *c == conn => Some(f["args"].clone()),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no SYNC for {conn}: {sent:?}"))
    }

    /// Writes the batch's records (and a snapshot's compaction) to `journal`.
    fn write(&mut self, journal: &mut crate::journal::Journal) {
        if let Some(image) = self.s.records().take_compaction() {
            journal.install(&image).expect("install");
        }
        journal
            .write(self.s.records(), Instant::now())
            .expect("write");
    }
}

fn payloads(sync: &Value) -> Vec<Value> {
    sync["messages"]
        .as_array()
        .map(|m| m.iter().map(|m| m[2].clone()).collect())
        .unwrap_or_default()
}

#[test]
fn every_joiner_starts_from_the_persisted_data_until_the_first_snapshot() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut h, mut journal) = Harness::resume("room", dir.path());
    h.join_app(0, 1, json!("a"));
    let first = h.sync_of(1);
    assert_eq!(
        (&first["url"], &first["persisted"]),
        (&json!(PERSISTED), &json!(true))
    );
    h.poll(200);
    h.send(300, 1, "m1");
    h.sent();
    // The bug this guards against: a second joiner before any snapshot replayed the
    // messages from an empty start, so its state differed from the first joiner's.
    h.join_app(400, 2, json!("b"));
    let second = h.sync_of(2);
    assert_eq!(
        (&second["url"], &second["persisted"]),
        (&json!(PERSISTED), &json!(true))
    );
    let replay = payloads(&second);
    assert_eq!(replay.len(), 2, "{second}");
    assert_eq!(
        (&replay[0]["what"], &replay[1]),
        (&json!("users"), &json!("m1"))
    );
    h.write(&mut journal);

    // A restart keeps what the session started from (it is in the journal's header).
    drop(journal);
    let (mut r, mut journal) = Harness::resume("room", dir.path());
    assert_eq!(
        r.s.persisted_key(
            &JoinArgs::parse(Some(&raw(
                json!({"version": 1, "apiKey": "k", "appId": "app", "persistentId": "pid"})
            )))
            .expect("args")
        ),
        None,
        "the data is not looked up again"
    );
    r.join_app(0, 3, json!("c"));
    let third = r.sync_of(3);
    assert_eq!(
        (&third["url"], &third["persisted"]),
        (&json!(PERSISTED), &json!(true))
    );
    assert!(payloads(&third).contains(&json!("m1")), "{third}");

    // Once a snapshot is registered, joiners load it instead (it contains the data).
    r.poll(200);
    r.send(300, 3, "m2");
    let snapshot = format!("http://{HOST}/files/snapshots/room/1.snap");
    r.snap(400, 3, 300.0, r.s.seq(), &snapshot);
    r.write(&mut journal);
    r.join_app(500, 4, json!("d"));
    let fourth = r.sync_of(4);
    assert_eq!(fourth["url"], snapshot.as_str());
    assert_eq!(fourth.get("persisted"), None, "{fourth}");
    drop(journal);
    let (mut r, _journal) = Harness::resume("room", dir.path());
    r.join_app(0, 5, json!("e"));
    assert_eq!(
        r.sync_of(5)["url"],
        snapshot.as_str(),
        "also after a restart"
    );
}

#[test]
fn a_synq_session_that_started_from_persisted_data_falls_back_to_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut h, mut journal) = Harness::resume("synq2-room", dir.path());
    h.join_app(0, 1, synq_user("p1", "key"));
    assert_eq!(h.sync_of(1)["url"], PERSISTED);
    h.poll(200);
    let args = SendArgs::parse(Some(&raw(json!([0, 0, "c2VhbGVk", 12])))).expect("args");
    h.s.handle(
        Input::Send {
            conn: 1,
            args,
            tags: None,
        },
        h.at(300),
    );
    let snapshot = format!("http://{HOST}/files/snapshots/synq2-room/1.snap");
    h.snap(400, 1, 300.0, h.s.seq(), &snapshot);
    h.write(&mut journal);
    h.join_app(500, 2, synq_user("p2", "key"));
    let sync = h.sync_of(2);
    assert_eq!(sync["url"], snapshot.as_str());
    // If the snapshot does not load, replaying "from the start" means from the data the
    // session started from, not from an empty model.
    let persisted_start =
        json!({"url": PERSISTED, "time": 0, "seq": INITIAL_SEQ, "persisted": true});
    assert_eq!(sync["fallback"], persisted_start);
    assert_eq!(
        payloads(&sync).len(),
        2,
        "every message since the start: {sync}"
    );
    drop(journal);
    let (mut r, _journal) = Harness::resume("synq2-room", dir.path());
    r.join_app(0, 3, synq_user("p3", "key"));
    assert_eq!(
        r.sync_of(3)["fallback"],
        persisted_start,
        "also after a restart"
    );

    // Without persisted data, the fallback is the plain replay from the start.
    let mut plain = Harness::new("synq2-room");
    plain.join_with(0, 1, Some(synq_user("p1", "key")), json!({}));
    plain.poll(200);
    let args = SendArgs::parse(Some(&raw(json!([0, 0, "c2VhbGVk", 12])))).expect("args");
    plain.s.handle(
        Input::Send {
            conn: 1,
            args,
            tags: None,
        },
        plain.at(300),
    );
    plain.snap(400, 1, 300.0, plain.s.seq(), &snapshot);
    plain.join_with(500, 2, Some(synq_user("p2", "key")), json!({}));
    assert_eq!(
        plain.sync_of(2)["fallback"],
        json!({"url": "", "time": 0, "seq": INITIAL_SEQ})
    );
}

// --- pure helpers ---

#[test]
fn tick_periods_are_clamped_and_never_panic() {
    let min = Duration::from_millis(20);
    assert_eq!(tick_period(Some(1e308), min), Some(Duration::from_secs(60)));
    assert_eq!(
        tick_period(Some(f64::INFINITY), min),
        Some(Duration::from_secs(60))
    );
    assert_eq!(tick_period(Some(1.0), min), Some(min));
    assert_eq!(
        tick_period(Some(50.0), min),
        Some(Duration::from_millis(50))
    );
    assert_eq!(tick_period(Some(f64::NAN), min), None);
    assert_eq!(tick_period(Some(-5.0), min), None);
    assert_eq!(clamped_ms(Some(1e308)), Duration::from_secs(60));
    assert_eq!(clamped_ms(Some(f64::NAN)), Duration::ZERO);
}

#[test]
fn snapshot_urls_must_name_this_sessions_file_in_this_store() {
    let ok = "http://h:8080/files/snapshots/sid/0000007244_42-abc.snap";
    assert!(snapshot_url_ok(ok, Some("h:8080"), "sid"));
    let croquet = "https://h/files/apps/com.app/snap/code/pid.sid/0000007244_1.hash";
    assert!(snapshot_url_ok(croquet, Some("h"), "sid"));
    assert!(!snapshot_url_ok(croquet, Some("h"), "other"));
    assert!(snapshot_url_ok(ok, Some("H:8080"), "sid"));
    assert!(!snapshot_url_ok(ok, Some("h:8081"), "sid"));
    assert!(!snapshot_url_ok(ok, None, "sid"));
    assert!(!snapshot_url_ok(ok, Some("h:8080"), "other"));
    for bad in [
        "http://evil/files/snapshots/sid/x.snap",
        "http://h:8080/files/snapshots/sid/../x.snap",
        "http://h:8080/files/snapshots/sid/a/b.snap",
        "http://h:8080/files/snapshots/sidx/a.snap",
        "ftp://h:8080/files/snapshots/sid/a.snap",
        "http://h:8080/files/snapshots/sid/",
        "http://h:8080/files/snapshots/sid/a.snap?x=1",
    ] {
        assert!(!snapshot_url_ok(bad, Some("h:8080"), "sid"), "{bad}");
    }
}
