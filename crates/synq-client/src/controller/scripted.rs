//! The controller driven by scripted reflector frames, without a server: the frames are
//! written with the reflector's own encoders (`synq_protocol::frames`), and what the
//! controller sends is read with the reflector's own parsers.

use synq_model::demo::{Room, RoomInput, RoomViewData};
use synq_protocol::client::{JoinArgs, SendArgs, SnapArgs, TuttiArgs};
use synq_protocol::frames::{self, RecvFrame, SnapshotRef, Sync, quote};
use synq_protocol::{Action, ClientEnvelope, INITIAL_SEQ};

use super::*;

fn controller_with(password: &str, name: &str) -> Controller<Room> {
    let mut cfg = ClientConfig::for_server("http://127.0.0.1:1", "app", "room", password);
    cfg.kdf_rounds = 1;
    // Snapshots only when the test asks (REQU).
    cfg.snapshot_every = None;
    let data = RoomViewData { name: name.into() };
    Controller::new(cfg, &data).expect("controller")
}

/// The reflector's side of one session: seqs, time, and the announcements it makes.
struct Script {
    id_json: String,
    seq: u32,
    time: u64,
    /// The creating JOIN's `tove`, echoed in every SYNC.
    tove: String,
    /// Every message array so far with its seq, as the reflector retains them for SYNC.
    log: Vec<(u32, String)>,
}

impl Script {
    /// A fresh session created by `creator`'s JOIN.
    fn new(creator: &Controller<Room>) -> Script {
        let join = parse_join(&creator.join_frame());
        Script {
            id_json: quote(creator.session_id()),
            seq: INITIAL_SEQ,
            time: 0,
            tove: join.tove.expect("a tove"),
            log: Vec::new(),
        }
    }

    fn sync(&self, snapshot: Option<SnapshotRef<'_>>, messages: &[String]) -> String {
        Sync {
            snapshot,
            persisted_url: None,
            time: self.time,
            seq: self.seq,
            tove: Some(&self.tove),
            reflector: "script",
            timeline: "t1",
            flags_json: "{}",
            fallback: None,
        }
        .frame(&self.id_json, messages.iter().map(String::as_str))
    }

    /// The next message of the stream with this tail (`"payload",latency,"stamp"`).
    fn recv(&mut self, tail: &str) -> RecvFrame {
        self.seq = self.seq.wrapping_add(1);
        self.time += 10;
        let m = RecvFrame::new(&self.id_json, self.time, self.seq, tail);
        self.log.push((self.seq, m.args().to_owned()));
        m
    }

    /// The retained messages after `seq` (all of them for `None`).
    fn since(&self, seq: Option<u32>) -> Vec<String> {
        self.log
            .iter()
            .filter(|(s, _)| seq.is_none_or(|after| synq_protocol::seq::after(after, *s)))
            .map(|(_, m)| m.clone())
            .collect()
    }

    /// "These views joined": the announcement the reflector makes after their JOINs.
    fn joined(&mut self, views: &[&Controller<Room>], active: usize) -> RecvFrame {
        let users: Vec<String> = views.iter().map(|c| announced_user(c)).collect();
        let users: Vec<&str> = users.iter().map(String::as_str).collect();
        let payload = frames::users_payload(active, active, &users, &[]);
        self.recv(&payload)
    }

    /// A client's SEND as the synq reflector reflects it: stamped with its view id.
    fn reflect(&mut self, from: &Controller<Room>, send: &str) -> RecvFrame {
        let env = ClientEnvelope::parse(send).expect("an envelope");
        assert_eq!(env.action, Action::Send, "{send}");
        let args = SendArgs::parse(env.args).expect("SEND args");
        let stamp = quote(from.view_id().as_str());
        self.recv(&format!("{},{stamp}", args.tail.text))
    }
}

fn parse_join(frame: &str) -> JoinArgs {
    let env = ClientEnvelope::parse(frame).expect("an envelope");
    assert_eq!(env.action, Action::Join);
    JoinArgs::parse(env.args).expect("JOIN args")
}

/// The `user` of a JOIN as the reflector announces it: `{id, data}` (proof and room key
/// stay with the reflector).
fn announced_user(c: &Controller<Room>) -> String {
    let join = parse_join(&c.join_frame());
    let user: Value = serde_json::from_str(join.user.expect("a user").get()).expect("JSON");
    json!({"id": user["id"], "data": user["data"]}).to_string()
}

fn sends(c: &mut Controller<Room>) -> Vec<String> {
    c.take_effects()
        .into_iter()
        .map(|e| match e {
            Effect::Send(f) => f,
            other => panic!("expected a frame to send, got {other:?}"),
        })
        .collect()
}

fn feed(c: &mut Controller<Room>, frame: &str) {
    c.on_frame(frame)
        .unwrap_or_else(|e| panic!("{e} on {frame:.200}"));
}

fn posts(c: &Controller<Room>) -> Vec<String> {
    let r = c.replica().expect("a replica");
    r.model().posts.iter().map(|p| p.text.clone()).collect()
}

/// `c` creates the session and is synced.
fn create(c: &mut Controller<Room>) -> Script {
    let mut s = Script::new(c);
    feed(c, &s.sync(None, &[]));
    assert!(!c.is_synced(), "synced only once its own join is applied");
    let joined = s.joined(&[c], 1);
    feed(c, &joined.frame);
    assert!(c.is_synced());
    assert!(c.take_events().contains(&SessionEvent::Synced));
    s
}

/// `c` posts `text` and the script reflects what it sends.
fn post(c: &mut Controller<Room>, s: &mut Script, text: &str, now_ms: f64) -> RecvFrame {
    c.publish(&RoomInput::Post(text.into())).expect("publish");
    c.flush(now_ms).expect("flush");
    let sent = sends(c);
    assert_eq!(sent.len(), 1, "one bundle: {sent:?}");
    s.reflect(c, &sent[0])
}

#[test]
fn a_wrong_password_fails_the_join_before_anything_is_applied() {
    let mut creator = controller_with("right", "a");
    let script = Script::new(&creator);
    feed(&mut creator, &script.sync(None, &[]));
    let mut intruder = controller_with("wrong", "b");
    let err = intruder
        .on_frame(&script.sync(None, &[]))
        .expect_err("the session check value does not open");
    assert_eq!(err, ClientError::WrongPassword);
    assert!(!err.is_transient());
    assert!(intruder.replica().is_none());
    assert!(intruder.take_effects().is_empty());
}

#[test]
fn a_gap_in_the_seqs_rejoins_and_a_repeated_message_is_skipped() {
    let mut a = controller_with("pw", "a");
    let mut s = create(&mut a);
    let first = post(&mut a, &mut s, "one", 0.0);
    feed(&mut a, &first.frame);
    // The same message again (a reflector resending after a rejoin): applied once.
    feed(&mut a, &first.frame);
    assert_eq!(posts(&a), ["one"]);
    let expected = s.seq.wrapping_add(1);
    s.seq = s.seq.wrapping_add(1); // one message lost on the way
    let after_gap = s.recv("\"x\",0,\"v\"");
    let err = a.on_frame(&after_gap.frame).expect_err("a gap");
    assert_eq!(
        err,
        ClientError::Gap {
            expected,
            got: expected.wrapping_add(1)
        }
    );
    assert!(err.is_transient(), "the driver rejoins");
}

#[test]
fn a_sync_in_chunks_is_reassembled_and_replayed() {
    let mut a = controller_with("pw", "a");
    let mut s = create(&mut a);
    let hello = post(&mut a, &mut s, "hello", 0.0);
    feed(&mut a, &hello.frame);
    // B joins late: its SYNC replays A's join and post, in 100-byte pieces.
    let mut b = controller_with("pw", "b");
    let sync = s.sync(None, &s.since(None));
    let pieces = frames::chunk_with(&sync, 100);
    assert!(pieces.len() > 5);
    for p in &pieces {
        assert!(b.replica().is_none(), "nothing before the last piece");
        feed(&mut b, p);
    }
    assert_eq!(posts(&b), ["hello"]);
    let b_joined = s.joined(&[&b], 2);
    feed(&mut b, &b_joined.frame);
    assert!(b.is_synced());
    // A piece with no first is refused.
    let err = b.on_frame(&pieces[1]).expect_err("no first piece");
    assert!(err.to_string().contains("without its first"), "{err}");
}

/// A asks for a snapshot (REQU), votes, wins the tally and uploads; returns the SNAP
/// frame, the uploaded body and its URL.
fn snapshot_of(a: &mut Controller<Room>, s: &mut Script) -> (SnapArgs, Vec<u8>) {
    feed(a, &frames::requ(&s.id_json));
    let poll = sends(a);
    let tags = ClientEnvelope::parse(&poll[0])
        .expect("poll")
        .tags
        .map(|t| t.get().to_owned());
    assert_eq!(
        tags.as_deref(),
        Some(r#"{"debounce":5000,"msgID":"pollForSnapshot"}"#)
    );
    let poll = s.reflect(a, &poll[0]);
    feed(a, &poll.frame);
    let tutti = sends(a);
    let env = ClientEnvelope::parse(&tutti[0]).expect("an envelope");
    assert_eq!(env.action, Action::Tutti);
    let vote = TuttiArgs::parse(env.args).expect("TUTTI args");
    assert!(vote.wants_vote);
    let tally = frames::tally_payload(
        vote.send_time_raw.get(),
        &[(vote.payload.clone(), 1)],
        vote.tally_target.get(),
        &vote.tutti_key,
        0,
    );
    let tally = s.recv(&tally);
    feed(a, &tally.frame);
    let mut effects = a.take_effects();
    assert_eq!(effects.len(), 1, "{effects:?}");
    let Some(Effect::Upload { url, body, then }) = effects.pop() else {
        panic!("A is the majority's lowest view: it uploads");
    };
    let then = then.expect("a SNAP after the upload");
    let env = ClientEnvelope::parse(&then).expect("SNAP");
    assert_eq!(env.action, Action::Snap);
    let snap = SnapArgs::parse(env.args).expect("SNAP args");
    assert_eq!(snap.url, url);
    assert_eq!(
        snap.seq,
        poll.args()
            .split(',')
            .nth(1)
            .and_then(|s| s.parse::<u32>().ok())
            .expect("seq")
    );
    (snap, body)
}

#[test]
fn a_late_joiner_loads_the_voted_snapshot_and_replays_what_followed() {
    let mut a = controller_with("pw", "a");
    let mut s = create(&mut a);
    for (i, text) in ["one", "two"].into_iter().enumerate() {
        let m = post(&mut a, &mut s, text, i as f64 * 1000.0);
        feed(&mut a, &m.frame);
    }
    let (snap, body) = snapshot_of(&mut a, &mut s);
    let after = post(&mut a, &mut s, "three", 5000.0);
    feed(&mut a, &after.frame);

    let mut b = controller_with("pw", "b");
    let snapshot = SnapshotRef {
        time_raw: snap.time_raw.get(),
        seq: snap.seq,
        url: &snap.url,
    };
    let messages = s.since(Some(snap.seq));
    assert_eq!(
        messages.len(),
        2,
        "the tally and the post after the snapshot"
    );
    feed(&mut b, &s.sync(Some(snapshot), &messages));
    let Some(Effect::Download(url)) = b.take_effects().pop() else {
        panic!("B downloads the snapshot");
    };
    assert_eq!(url, snap.url, "from its own server's file store");
    assert!(b.replica().is_none());
    b.on_snapshot(&body).expect("the snapshot loads");
    assert_eq!(b.loaded_snapshot(), Some(url.as_str()));
    assert_eq!(posts(&b), ["one", "two", "three"]);
    let joined = s.joined(&[&b], 2);
    feed(&mut b, &joined.frame);
    feed(&mut a, &joined.frame);
    assert!(b.is_synced());
    let (ra, rb) = (a.replica().expect("A"), b.replica().expect("B"));
    assert_eq!(ra.hash().expect("hash"), rb.hash().expect("hash"));
}

#[test]
fn a_tally_against_this_replica_reports_divergence_and_does_not_upload() {
    let mut a = controller_with("pw", "a");
    let mut s = create(&mut a);
    feed(&mut a, &frames::requ(&s.id_json));
    let poll = sends(&mut a);
    let poll = s.reflect(&a, &poll[0]);
    feed(&mut a, &poll.frame);
    let tutti = sends(&mut a);
    let mine = TuttiArgs::parse(ClientEnvelope::parse(&tutti[0]).expect("TUTTI").args)
        .expect("TUTTI args");
    // Two other views voted for another state.
    let theirs = |view: &str| json!({"vote": "f".repeat(64), "viewId": view}).to_string();
    let tally = frames::tally_payload(
        mine.send_time_raw.get(),
        &[
            (mine.payload.clone(), 1),
            (theirs("v1"), 1),
            (theirs("v2"), 1),
        ],
        mine.tally_target.get(),
        &mine.tutti_key,
        0,
    );
    let tally = s.recv(&tally);
    feed(&mut a, &tally.frame);
    assert!(a.take_effects().is_empty(), "a minority does not upload");
    let diverged = a
        .take_events()
        .into_iter()
        .find_map(|e| match e {
            SessionEvent::Diverged { votes, my_vote, .. } => Some((votes, my_vote)),
            _ => None,
        })
        .expect("divergence reported");
    assert!(diverged.0.contains(&("f".repeat(64), 2)));
    assert!(diverged.0.contains(&(diverged.1, 1)));
}

#[test]
fn inputs_lost_with_the_connection_are_resent_after_the_rejoin_and_applied_once() {
    let mut a = controller_with("pw", "a");
    let mut s = create(&mut a);
    a.publish(&RoomInput::Post("lost?".into()))
        .expect("publish");
    a.flush(0.0).expect("flush");
    let first_try = sends(&mut a);
    assert_eq!(first_try.len(), 1);
    a.connection_lost("cut");
    assert!(matches!(
        a.take_events()[..],
        [SessionEvent::Reconnecting(_)]
    ));
    assert!(!a.is_synced());
    // The rejoin: same timeline, nothing new; then the join announcement.
    assert_eq!(parse_join(&a.join_frame()).user_string(), None);
    feed(&mut a, &s.sync(None, &[]));
    assert!(
        a.take_effects().is_empty(),
        "no resend before the view is back"
    );
    let joined = s.joined(&[&a], 1);
    feed(&mut a, &joined.frame);
    assert!(a.is_synced());
    let resent = sends(&mut a);
    assert_eq!(resent.len(), 1, "{resent:?}");
    // Both the first try (it did reach the reflector after all) and the resend arrive.
    for frame in [&first_try[0], &resent[0]] {
        let m = s.reflect(&a, frame);
        feed(&mut a, &m.frame);
    }
    assert_eq!(posts(&a), ["lost?"]);
}

/// A SYNC that names the room's persisted data (a new session of a later model version):
/// the replica starts from it once downloaded and opened with the room's key; data from
/// another host is not fetched, and data that does not open starts the room empty, on
/// every replica alike.
#[test]
fn a_new_session_starts_from_the_rooms_persisted_data() {
    let room = crate::wire::room_id("app", "room");
    let persisted_sync = |c: &Controller<Room>, url: &str| {
        let s = Script::new(c);
        Sync {
            snapshot: None,
            persisted_url: Some(url),
            time: s.time,
            seq: s.seq,
            tove: Some(&s.tove),
            reflector: "script",
            timeline: "t1",
            flags_json: "{}",
            fallback: None,
        }
        .frame(&s.id_json, std::iter::empty())
    };
    let saved = format!("http://elsewhere:9/files/apps/app/{room}/save/0000000001_ab");
    let data = br#"{"schema":"synq-demo-room/0","time":1,"data":{"posts":[]}}"#;

    // Downloaded from this client's own store, whatever host the SYNC named.
    let mut a = controller_with("pw", "ann");
    let sync = persisted_sync(&a, &saved);
    feed(&mut a, &sync);
    let own = format!("http://127.0.0.1:1/files/apps/app/{room}/save/0000000001_ab");
    assert_eq!(a.take_effects(), [Effect::Download(own)]);
    assert!(
        a.replica().is_none(),
        "nothing runs before the data is here"
    );
    let key = SessionKey::derive("pw", &room, a.session_id(), 1);
    let sealed = key.seal(Purpose::Persisted, data).expect("seal");
    a.on_snapshot(&sealed).expect("started");
    assert!(a.replica().is_some());
    assert!(a.take_events().contains(&SessionEvent::Restored {
        schema: "synq-demo-room/0".into()
    }));

    // Sealed for another room (or tampered with): the room starts empty, and says why.
    let mut b = controller_with("pw", "bob");
    let sync = persisted_sync(&b, &saved);
    feed(&mut b, &sync);
    b.take_effects();
    let other = SessionKey::derive("pw", "another-room", b.session_id(), 1);
    let foreign = other.seal(Purpose::Persisted, data).expect("seal");
    b.on_snapshot(&foreign).expect("started empty");
    assert!(b.replica().is_some());
    assert!(
        b.take_events()
            .iter()
            .any(|e| matches!(e, SessionEvent::Rejected(why) if why.contains("starting empty")))
    );

    // Another app's or room's files are not this room's data: not even downloaded.
    let mut c = controller_with("pw", "cy");
    let wrong = "http://127.0.0.1:1/files/apps/app/0123/save/x";
    let sync = persisted_sync(&c, wrong);
    feed(&mut c, &sync);
    assert!(c.take_effects().is_empty(), "nothing downloaded");
    assert!(c.replica().is_some(), "started empty");
}
