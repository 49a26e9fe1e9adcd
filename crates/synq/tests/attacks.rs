//! Attacks on a public `synq serve`, run against the real binary as an attacker would run
//! them (raw WebSocket frames), each asserting what the participants then see. Two kinds
//! of attacker: a participant who knows the room's password (Mallory), and anyone who
//! knows only the room's name, which gives the session id (Eve): the reflector lets Eve
//! in nowhere, because she cannot make the room key.

// Not model code: a test of the synq binary, which measures and waits on wall-clock time
// (clippy.toml's determinism rules are for model code).
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::path::Path;
use std::time::Duration;

mod common;

use common::{Serve, Ws, next_json};
use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use serde_json::{Value, json};
use synq_client::crypto::SessionKey;
use synq_client::{ClientConfig, Session, SessionEvent, join, room_id, session_id};
use synq_model::Model;
use synq_model::demo::{Room, RoomInput, RoomViewData};
use synq_protocol::identity::view_id_for_proof;
use tokio_tungstenite::tungstenite::Message;

const PATIENCE: Duration = Duration::from_secs(30);
const APP: &str = "synq.test";
const KDF_ROUNDS: u32 = 1000;

fn config(base: &str, room: &str) -> ClientConfig {
    let mut c = ClientConfig::for_server(base, APP, room, "pw");
    c.tps = 1.0 / 30.0;
    c.kdf_rounds = KDF_ROUNDS;
    c.snapshot_every = None;
    c.max_sends_per_sec = 100.0;
    c
}

async fn joined_with(config: ClientConfig, who: &str) -> Session<Room> {
    let data = RoomViewData { name: who.into() };
    tokio::time::timeout(PATIENCE, join::<Room>(config, data))
        .await
        .expect("joined in time")
        .expect("join")
}

async fn joined(base: &str, room: &str, who: &str) -> Session<Room> {
    joined_with(config(base, room), who).await
}

/// Waits on session events until `pred` holds for the model.
async fn until(s: &mut Session<Room>, what: &str, pred: impl Fn(&Room) -> bool) {
    let wait = async {
        while !s.read(&pred).unwrap_or(false) {
            match s.next_event().await {
                Some(SessionEvent::Failed(e)) => panic!("session failed waiting for {what}: {e}"),
                Some(_) => {}
                None => panic!("session ended waiting for {what}"),
            }
        }
    };
    tokio::time::timeout(PATIENCE, wait)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
}

/// Waits for a `Rejected` event whose text contains `needle`.
async fn rejected(s: &mut Session<Room>, needle: &str) -> String {
    let wait = async {
        loop {
            match s.next_event().await {
                Some(SessionEvent::Rejected(why)) if why.contains(needle) => return why,
                Some(SessionEvent::Failed(e)) => panic!("session failed: {e}"),
                Some(_) => {}
                None => panic!("session ended"),
            }
        }
    };
    tokio::time::timeout(PATIENCE, wait)
        .await
        .unwrap_or_else(|_| panic!("no rejection containing {needle:?}"))
}

async fn post_and_see(from: &Session<Room>, to: &mut Session<Room>, text: &str) {
    from.publish(RoomInput::Post(text.into())).expect("publish");
    until(to, text, |m| m.posts.iter().any(|p| p.text == text)).await;
}

/// A post by `sessions[0]` that every session has applied; then their states must agree.
async fn settle(sessions: &mut [&mut Session<Room>], marker: &str) {
    sessions[0]
        .publish(RoomInput::Post(marker.into()))
        .expect("publish");
    for s in sessions.iter_mut() {
        until(s, marker, |m| {
            m.posts.last().is_some_and(|p| p.text == marker)
        })
        .await;
    }
    let hashes: Vec<_> = sessions.iter().map(|s| s.hash()).collect();
    assert!(
        hashes.windows(2).all(|w| w[0] == w[1]),
        "replicas agree after {marker}: {hashes:?}"
    );
}

/// The plaintext of a synq message, as `synq-client` encodes it (postcard of the same
/// shape as its private `Wire`).
#[derive(Serialize)]
struct Wire {
    view: String,
    body: Body,
}

#[derive(Serialize)]
enum Body {
    Inputs { first_n: u64, inputs: Vec<Vec<u8>> },
}

/// A raw connection, as an attacker writes it.
struct Raw {
    ws: Ws,
    sid: String,
    id: String,
    /// The SYNC it got.
    sync: Value,
}

impl Raw {
    /// A fresh identity for `sid`: with `key` its view data is sealed properly and it
    /// carries the room key (a participant with the password), else both are made up
    /// (anyone else).
    fn user(key: Option<&SessionKey>, name: &str) -> (String, Value) {
        let proof = format!("attacker-proof-{name}-{}", std::process::id());
        let id = view_id_for_proof(&proof);
        let (data, room) = match key {
            Some(k) => {
                let plain =
                    postcard::to_stdvec(&RoomViewData { name: name.into() }).expect("encode");
                (
                    k.seal_view_data(&id, &plain).expect("seal"),
                    k.room_key().to_owned(),
                )
            }
            None => (
                "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".into(),
                "0".repeat(64),
            ),
        };
        let user = json!({"id": id, "data": data, "proof": proof, "room": room});
        (id, user)
    }

    /// JOINs `sid` as [`Raw::user`] and returns after the SYNC.
    async fn join(serve: &Serve, sid: &str, key: Option<&SessionKey>, name: &str) -> Raw {
        let (id, user) = Raw::user(key, name);
        Raw::join_as(serve, sid, Some(user), json!({"tick": 30000}))
            .await
            .with_id(id)
    }

    async fn join_as(serve: &Serve, sid: &str, user: Option<Value>, ticks: Value) -> Raw {
        match Raw::try_join_as(serve, sid, user, ticks).await {
            Ok(raw) => raw,
            Err(code) => panic!("JOIN to {sid} refused with {code:?}"),
        }
    }

    /// JOINs and waits for the SYNC, or for the close code that refused the JOIN.
    async fn try_join_as(
        serve: &Serve,
        sid: &str,
        user: Option<Value>,
        ticks: Value,
    ) -> Result<Raw, Option<u16>> {
        let mut ws = connect(serve, sid).await;
        let mut args = json!({"name": "x", "version": 1, "apiKey": "none", "ticks": ticks});
        if let Some(u) = user {
            args["user"] = u;
        }
        send(&mut ws, json!({"id": sid, "action": "JOIN", "args": args})).await;
        let wait = async {
            while let Some(m) = ws.next().await {
                match m {
                    Ok(Message::Text(t)) => {
                        let f: Value = serde_json::from_str(&t).expect("json");
                        if f["action"] == "SYNC" {
                            return Ok(f);
                        }
                    }
                    Ok(Message::Close(f)) => return Err(f.map(|f| u16::from(f.code))),
                    Ok(_) => {}
                    Err(_) => return Err(None),
                }
            }
            Err(None)
        };
        let sync = tokio::time::timeout(PATIENCE, wait)
            .await
            .expect("SYNC or close in time")?;
        Ok(Raw {
            ws,
            sid: sid.into(),
            id: String::new(),
            sync,
        })
    }

    fn with_id(mut self, id: String) -> Raw {
        self.id = id;
        self
    }

    async fn send(&mut self, frame: Value) {
        send(&mut self.ws, frame).await;
    }
}

async fn connect(serve: &Serve, sid: &str) -> Ws {
    let url = format!("ws://{}/reflector/{sid}", serve.addr);
    tokio_tungstenite::connect_async(url.as_str())
        .await
        .expect("connect")
        .0
}

async fn send(ws: &mut Ws, frame: Value) {
    ws.send(Message::Text(frame.to_string().into()))
        .await
        .expect("send");
}

/// The close code the server ends this connection with.
async fn close_code(ws: &mut Ws) -> Option<u16> {
    let wait = async {
        while let Some(m) = ws.next().await {
            match m {
                Ok(Message::Close(f)) => return f.map(|f| u16::from(f.code)),
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
        None
    };
    tokio::time::timeout(PATIENCE, wait)
        .await
        .expect("connection closed in time")
}

fn room_key(room: &str) -> (String, SessionKey) {
    let sid = session_id(APP, room, Room::SCHEMA);
    let key = SessionKey::derive("pw", &room_id(APP, room), &sid, KDF_ROUNDS);
    (sid, key)
}

fn sealed_post(key: &SessionKey, claimed: &str, first_n: u64, text: &str) -> String {
    let input = postcard::to_stdvec(&RoomInput::Post(text.into())).expect("encode");
    let wire = Wire {
        view: claimed.into(),
        body: Body::Inputs {
            first_n,
            inputs: vec![input],
        },
    };
    let plain = postcard::to_stdvec(&wire).expect("encode");
    key.seal_text(synq_client::crypto::Purpose::Message, &plain)
        .expect("seal")
}

fn serve(dir: &Path, extra: &[&str]) -> Serve {
    let mut args = vec!["--no-ai"];
    args.extend_from_slice(extra);
    common::serve(dir, &args)
}

/// A server (and its data directory) with Alice and Bob in `room`.
async fn alice_and_bob(room: &str) -> (tempfile::TempDir, Serve, Session<Room>, Session<Room>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = serve(dir.path(), &[]);
    let alice = joined(&server.base, room, "alice").await;
    let bob = joined(&server.base, room, "bob").await;
    (dir, server, alice, bob)
}

#[tokio::test]
async fn a_vote_cannot_carry_a_message_in_another_participants_name() {
    let room = "forged-vote";
    let (_dir, server, alice, mut bob) = alice_and_bob(room).await;
    let alice_id = alice.view_id().as_str().to_owned();
    let (sid, key) = room_key(room);
    // Mallory knows the password: she seals a post that claims to be Alice's, with a huge
    // input number (which, accepted, would silence Alice's later posts as duplicates), and
    // sends it as a vote's `firstMsg`, which the reflector broadcasts.
    let mut mallory = Raw::join(&server, &sid, Some(&key), "mallory").await;
    let forged = sealed_post(&key, &alice_id, u64::MAX / 2, "FORGED by Mallory: 2+2 is 5");
    mallory
        .send(json!({"id": sid, "action": "TUTTI",
            "args": [0, 0, "vote", [0, 0, forged, 0], false, null, "forged@1"]}))
        .await;
    let why = rejected(&mut bob, "claims to come from").await;
    assert!(
        why.contains(&mallory.id),
        "stamped with Mallory's id: {why}"
    );
    // A stamp of her own behind the payload does not pass either: the reflector closes her.
    mallory
        .send(json!({"id": sid, "action": "TUTTI",
            "args": [0, 0, "vote", [0, 0, forged, 0, alice_id], false, null, "forged@2"]}))
        .await;
    assert_eq!(close_code(&mut mallory.ws).await, Some(4102));
    // Alice is not silenced, and nobody ever saw the forged post.
    post_and_see(&alice, &mut bob, "alice is still heard").await;
    for s in [&alice, &bob] {
        let texts: Vec<String> = s
            .read(|m| m.posts.iter().map(|p| p.text.clone()).collect())
            .expect("model");
        assert!(!texts.iter().any(|t| t.contains("FORGED")), "{texts:?}");
    }
    alice.leave();
}

#[tokio::test]
async fn without_the_password_nobody_gets_into_a_room() {
    let room = "no-password";
    let (dir, server, alice, mut bob) = alice_and_bob(room).await;
    let (sid, _) = room_key(room);
    // Eve knows only the room name: a made-up room key, the key of another password, a
    // JOIN without a user (an observer), a user without a room key. Every one is refused
    // before the SYNC, so she never sees a frame of the room.
    let (_, guessed) = Raw::user(None, "eve");
    let other = SessionKey::derive("not-pw", &room_id(APP, room), &sid, KDF_ROUNDS);
    let (_, wrong) = Raw::user(Some(&other), "eve2");
    let (eve_id, mut keyless) = Raw::user(None, "eve3");
    keyless.as_object_mut().expect("object").remove("room");
    for (user, code) in [
        (Some(guessed), 4110),
        (Some(wrong), 4110),
        (None, 4107),
        (Some(keyless), 4107),
    ] {
        let refused = Raw::try_join_as(&server, &sid, user.clone(), json!({"tick": 30000})).await;
        assert_eq!(refused.err(), Some(Some(code)), "{user:?}");
    }
    // The real client with a wrong password is told so.
    let mut c = config(&server.base, room);
    c.password = "not-pw".into();
    let failed = join::<Room>(c, RoomViewData { name: "eve".into() }).await;
    assert!(
        matches!(failed, Err(synq_client::ClientError::WrongPassword)),
        "{:?}",
        failed.err()
    );
    // Alice and Bob never heard of Eve.
    post_and_see(&alice, &mut bob, "alice after eve").await;
    let names = bob.read(|m| m.names.clone()).expect("model");
    assert!(
        !names.contains_key(&synq_model::ViewId(eve_id)),
        "{names:?}"
    );
    assert_eq!(names.len(), 2, "{names:?}");
    // After a restart, the journal still fixes the key: the first JOIN does not choose it.
    drop((alice, bob));
    drop(server);
    let server = serve(dir.path(), &[]);
    let (_, guessed) = Raw::user(None, "eve4");
    let refused = Raw::try_join_as(&server, &sid, Some(guessed), json!({"tick": 30000})).await;
    assert_eq!(refused.err(), Some(Some(4110)));
    let carol = joined(&server.base, room, "carol").await;
    assert_eq!(carol.read(|m| m.posts.len()).expect("model"), 1);
}

#[tokio::test]
async fn a_participant_cannot_announce_a_leave_or_pose_as_the_reflector() {
    let room = "forged-leave";
    let (_dir, server, alice, mut bob) = alice_and_bob(room).await;
    let alice_id = alice.view_id().as_str().to_owned();
    let (sid, key) = room_key(room);
    let users = json!({"what": "users", "active": 1, "total": 1, "left": [{"id": alice_id}]});
    // Mallory has the password. As a SEND...
    let mut mallory = Raw::join(&server, &sid, Some(&key), "mallory").await;
    mallory
        .send(json!({"id": sid, "action": "SEND", "args": [0, 0, users, 0]}))
        .await;
    assert_eq!(close_code(&mut mallory.ws).await, Some(4102));
    // ...and as a vote's firstMsg.
    let mut mallory = Raw::join(&server, &sid, Some(&key), "mallory2").await;
    mallory
        .send(json!({"id": sid, "action": "TUTTI",
        "args": [0, 0, "vote", [0, 0, users, 0], false, null, "leave@1"]}))
        .await;
    assert_eq!(close_code(&mut mallory.ws).await, Some(4102));
    // Alice is still in the room for Bob, and her posts still arrive.
    post_and_see(&alice, &mut bob, "alice after the forged leave").await;
    let names = bob.read(|m| m.names.clone()).expect("model");
    assert_eq!(
        names.get(alice.view_id()).map(String::as_str),
        Some("alice"),
        "{names:?}"
    );
}

#[tokio::test]
async fn a_profile_cannot_be_replayed_under_another_view_id() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = serve(dir.path(), &[]);
    let room = "replayed-profile";
    let alice = joined(&server.base, room, "alice").await;
    let (sid, key) = room_key(room);
    // Mallory, with the password, copies Alice's sealed profile from the join announcement
    // in her SYNC, and joins under her own id with it.
    let mut bob = joined(&server.base, room, "bob").await;
    let watcher = Raw::join(&server, &sid, Some(&key), "watcher").await;
    let alice_data = watcher.sync["args"]["messages"]
        .as_array()
        .and_then(|ms| {
            ms.iter().find_map(|m| {
                m[2]["joined"].as_array().and_then(|j| {
                    j.iter()
                        .find(|e| e["id"] == alice.view_id().as_str())
                        .and_then(|e| e["data"].as_str().map(str::to_owned))
                })
            })
        })
        .expect("Alice's join announcement in the SYNC");
    let proof = "eve-replays-alice";
    let eve_id = view_id_for_proof(proof);
    let _eve = Raw::join_as(
        &server,
        &sid,
        Some(json!({"id": eve_id, "data": alice_data, "proof": proof, "room": key.room_key()})),
        json!({"tick": 30000}),
    )
    .await;
    rejected(&mut bob, &eve_id).await;
    post_and_see(&alice, &mut bob, "after eve").await;
    let names = bob.read(|m| m.names.clone()).expect("model");
    assert_eq!(
        names.values().filter(|n| *n == "alice").count(),
        1,
        "only Alice is called alice: {names:?}"
    );
}

#[tokio::test]
async fn a_poisoned_snapshot_is_refused_and_the_room_stays_joinable_across_a_restart() {
    let room = "poisoned-snap";
    let (dir, mut server, alice, mut bob) = alice_and_bob(room).await;
    post_and_see(&alice, &mut bob, "before the attack").await;
    let (sid, _) = room_key(room);
    let first_seq = synq_protocol::INITIAL_SEQ.wrapping_add(1);
    let own = format!("http://{}/files/snapshots/{sid}/x.snap", server.addr);
    let attempts = [
        // Croquet's flow would take each of these: a far-future time, a foreign host, a
        // sequence number never issued.
        json!({"time": 1e300, "seq": first_seq, "hash": "h", "url": own}),
        json!({"time": 1, "seq": first_seq, "hash": "h", "url": "http://evil.example/files/snapshots/x.snap"}),
        json!({"time": 1, "seq": 7, "hash": "h", "url": own}),
    ];
    // Mallory, a participant with the password (anyone else cannot even join).
    let (_, key) = room_key(room);
    let mut mallory = Raw::join(&server, &sid, Some(&key), "mallory").await;
    for a in &attempts {
        mallory
            .send(json!({"id": sid, "action": "SNAP", "args": a}))
            .await;
    }
    // Let every SNAP be handled: a post sent after them on the same connection is
    // sequenced after them.
    mallory
        .send(json!({"id": sid, "action": "SEND", "args": [0, 0, "AAAA", 0]}))
        .await;
    let _ = next_message_position(&mut mallory.ws).await;
    post_and_see(&alice, &mut bob, "after the attack").await;
    let metrics = metrics(&server).await;
    assert!(
        metrics.contains("synq_snapshots_total 0"),
        "no snapshot was registered:\n{metrics}"
    );
    assert!(
        metrics.contains("synq_snapshots_refused_total 3"),
        "each of Mallory's snapshots was refused:\n{metrics}"
    );
    let carol = joined(&server.base, room, "carol").await;
    assert_eq!(carol.loaded_snapshot(), None);
    let posts = carol.read(|m| m.posts.len()).expect("model");
    assert_eq!(posts, 2, "carol replayed the room");
    drop((carol, alice, bob, mallory));
    // After a restart on the same data, the room is still joinable.
    let addr = server.addr.to_string();
    drop(server);
    server = serve(dir.path(), &[]);
    let _ = addr;
    let dan = joined(&server.base, room, "dan").await;
    assert_eq!(dan.read(|m| m.posts.len()).expect("model"), 2);
}

#[tokio::test]
async fn real_snapshots_still_register_and_late_joiners_load_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = serve(dir.path(), &[]);
    let room = "real-snap";
    let mut c = config(&server.base, room);
    c.snapshot_every = Some(5);
    let mut alice = joined_with(c, "alice").await;
    for i in 0..6 {
        alice
            .publish(RoomInput::Post(format!("post {i}")))
            .expect("publish");
    }
    let wait = async {
        loop {
            match alice.next_event().await {
                Some(SessionEvent::SnapshotUploaded { .. }) => break,
                Some(SessionEvent::Failed(e)) => panic!("{e}"),
                Some(_) => {}
                None => panic!("ended"),
            }
        }
    };
    tokio::time::timeout(PATIENCE, wait)
        .await
        .expect("a snapshot");
    // The SNAP follows the upload; a post after it is sequenced after it.
    let mut bob = joined(&server.base, room, "bob").await;
    post_and_see(&alice, &mut bob, "after the snapshot").await;
    let mut carol = joined(&server.base, room, "carol").await;
    assert!(
        carol.loaded_snapshot().is_some(),
        "a late joiner loads the snapshot"
    );
    settle(&mut [&mut alice, &mut bob, &mut carol], "carol is in").await;
}

#[tokio::test]
async fn huge_or_tiny_tick_values_neither_panic_nor_stall_the_session() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = serve(dir.path(), &[]);
    let sid = "croquet-style-tick-session";
    // The JOIN that creates the session asks for a tick of 1e308 ms, then TICKS asks for
    // 1e308 and for 1 ms.
    let mut a = Raw::join_as(&server, sid, Some(json!("a")), json!({"tick": 1e308})).await;
    a.send(json!({"id": sid, "action": "TICKS", "args": {"tick": 1e308, "delay": 1e308, "scale": 1e308}}))
        .await;
    a.send(json!({"id": sid, "action": "TICKS", "args": {"tick": 1}}))
        .await;
    // The session still answers: another client joins and sees a's message.
    let mut b = Raw::join_as(&server, sid, Some(json!("b")), json!({"tick": 1e308})).await;
    a.send(json!({"id": sid, "action": "SEND", "args": [0, 0, "hello", 0]}))
        .await;
    loop {
        let f = next_json(&mut b.ws, PATIENCE).await;
        if f["action"] == "RECV" && f["args"][2] == "hello" {
            break;
        }
    }
}

#[tokio::test]
async fn a_frame_over_the_transport_limit_is_closed_with_4104() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = serve(dir.path(), &[]);
    let sid = "big-frame-session";
    let mut a = Raw::join_as(&server, sid, Some(json!("a")), json!({"tick": 30000})).await;
    let big = "x".repeat(2 * 1024 * 1024);
    let frame = json!({"id": sid, "action": "SEND", "args": [0, 0, big, 0]});
    // The server closes before it has read the whole frame, so the tail of this write may
    // meet a closed socket: its outcome does not matter, the close frame before it does.
    let _ = a.ws.send(Message::Text(frame.to_string().into())).await;
    assert_eq!(close_code(&mut a.ws).await, Some(4104));
}

#[tokio::test]
async fn silent_observers_cannot_fill_a_room_and_one_address_cannot_hold_every_session() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = serve(
        dir.path(),
        &[
            "--max-observers-per-session",
            "2",
            "--max-sessions-per-address",
            "2",
        ],
    );
    let sid = "observed-session";
    let mut observers = Vec::new();
    for _ in 0..2 {
        observers.push(Raw::join_as(&server, sid, None, json!({"tick": 30000})).await);
    }
    let mut third = connect(&server, sid).await;
    send(
        &mut third,
        json!({"id": sid, "action": "JOIN",
        "args": {"name": "x", "version": 1, "apiKey": "none"}}),
    )
    .await;
    assert_eq!(close_code(&mut third).await, Some(4106));
    // A participant still gets in.
    let _p = Raw::join_as(&server, sid, Some(json!("p")), json!({"tick": 30000})).await;
    // This address holds one session; a second is fine, a third is refused.
    let _s2 = Raw::join_as(
        &server,
        "second-session",
        Some(json!("p")),
        json!({"tick": 30000}),
    )
    .await;
    let mut s3 = connect(&server, "third-session").await;
    send(
        &mut s3,
        json!({"id": "third-session", "action": "JOIN",
        "args": {"name": "x", "version": 1, "apiKey": "none", "user": "p"}}),
    )
    .await;
    assert_eq!(close_code(&mut s3).await, Some(4108));
}

#[tokio::test]
async fn journals_of_long_unused_sessions_are_deleted_at_start_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sessions = dir.path().join("sessions");
    for (name, age_days) in [("old-session", 40u64), ("recent-session", 1)] {
        let d = sessions.join(name);
        std::fs::create_dir_all(&d).expect("mkdir");
        let f = std::fs::File::create(d.join("journal")).expect("journal");
        let when = std::time::SystemTime::now() - Duration::from_secs(age_days * 24 * 3600);
        f.set_modified(when).expect("mtime");
    }
    let mut server = common::serve_with(
        dir.path(),
        &["--no-ai", "--session-retention-days", "30"],
        &[],
    );
    server.stderr_containing("deleted the journals");
    assert!(!sessions.join("old-session").exists());
    assert!(sessions.join("recent-session").exists());
}

/// Peak resident memory of a process, in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmHWM")
        * 1024
}

#[tokio::test]
async fn memory_stays_bounded_when_big_messages_pile_up_and_joiners_stop_reading() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Unlimited rate, so that the flood is quick; the byte cap is what is tested.
    let server = serve(
        dir.path(),
        &[
            "--max-session-bytes",
            "16777216",
            "--client-rate-limit",
            "0",
            "--client-write-timeout-secs",
            "3",
        ],
    );
    let sid = "memory-flood-session";
    let payload = "y".repeat(60_000);
    // One participant that reads everything; four observers (no user) that only send, so
    // that nobody but the stalled joiners below stops reading.
    let first = Raw::join_as(&server, sid, Some(json!("s0")), json!({"tick": 30000})).await;
    let mut senders = vec![first];
    for _ in 1..5 {
        senders.push(Raw::join_as(&server, sid, None, json!({"tick": 30000})).await);
    }
    // Each sends 60 KB messages until the session refuses them (it asks for a snapshot
    // that never comes).
    let mut refused = false;
    'flood: for _ in 0..200 {
        for s in &mut senders {
            s.send(json!({"id": sid, "action": "SEND", "args": [0, 0, payload, 0]}))
                .await;
        }
        // Drain what arrived; stop at the refusal notice.
        while let Ok(Some(Ok(m))) =
            tokio::time::timeout(Duration::from_millis(1), senders[0].ws.next()).await
        {
            if let Message::Text(t) = m
                && t.as_str().contains("Cannot buffer more messages")
            {
                refused = true;
                break 'flood;
            }
        }
    }
    assert!(
        refused,
        "the session refused messages past --max-session-bytes"
    );
    // Six clients join and never read their SYNC.
    let mut stalled = Vec::new();
    for i in 0..6 {
        let mut ws = connect(&server, sid).await;
        send(
            &mut ws,
            json!({"id": sid, "action": "JOIN",
            "args": {"name": "x", "version": 1, "apiKey": "none", "user": format!("j{i}")}}),
        )
        .await;
        stalled.push(ws);
    }
    // Four of them (--max-syncs-per-address) hold a turn to write their SYNC, two wait
    // for one, until a turn's writer gives up on its reader (after 3 s).
    let mut page = String::new();
    for _ in 0..500 {
        page = metrics(&server).await;
        if page.contains("synq_syncs_writing 4\n") && page.contains("synq_syncs_waiting 2\n") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        page.contains("synq_syncs_writing 4\n") && page.contains("synq_syncs_waiting 2\n"),
        "{page}"
    );
    // A late joiner that does read gets the whole SYNC, in pieces, once it has a turn.
    let mut reader = connect(&server, sid).await;
    send(
        &mut reader,
        json!({"id": sid, "action": "JOIN",
        "args": {"name": "x", "version": 1, "apiKey": "none"}}),
    )
    .await;
    let mut whole = String::new();
    loop {
        let m = tokio::time::timeout(PATIENCE, reader.next())
            .await
            .expect("sync in time")
            .expect("open")
            .expect("frame");
        let Message::Text(t) = m else { continue };
        let t = t.as_str();
        if let Some(rest) = t.strip_prefix("_CHUNK") {
            whole.push_str(&rest[2..]);
            if rest.as_bytes()[1] == b'1' {
                break;
            }
        } else if t.contains("\"SYNC\"") {
            whole = t.to_owned();
            break;
        }
    }
    let sync: Value = serde_json::from_str(&whole).expect("a SYNC that parses");
    let n = sync["args"]["messages"].as_array().map_or(0, Vec::len);
    assert!(n > 100, "the SYNC replays the retained messages ({n})");
    let peak = peak_rss(server.child.id());
    assert!(
        peak < 200 * 1024 * 1024,
        "peak RSS {} MiB (16 MiB of messages, 6 stalled joiners)",
        peak / 1024 / 1024
    );
    drop(stalled);
}

/// The `[time, seq]` of the next RECV that carries a client's message.
async fn next_message_position(ws: &mut Ws) -> (u64, u64) {
    loop {
        let f = next_json(ws, PATIENCE).await;
        if f["action"] == "RECV" && f["args"][2].is_string() {
            let time = f["args"][0].as_u64().expect("time");
            let seq = f["args"][1].as_u64().expect("seq");
            return (time, seq);
        }
    }
}

/// Mallory (with the password) stores a file of garbage in the room's snapshot folder and
/// registers it as the room's snapshot at the latest message, which passes every check
/// the reflector can make.
async fn poison_snapshot(server: &Serve, eve: &mut Raw, alice: &Session<Room>, name: &str) {
    alice
        .publish(RoomInput::Post(format!("before {name}")))
        .expect("publish");
    let (time, seq) = next_message_position(&mut eve.ws).await;
    let url = format!("{}/files/snapshots/{}/{name}", server.base, eve.sid);
    let put = reqwest::Client::new()
        .put(&url)
        .body(vec![7u8; 4096])
        .send()
        .await
        .expect("upload");
    assert!(put.status().is_success(), "{}", put.status());
    let sid = eve.sid.clone();
    eve.send(json!({"id": sid, "action": "SNAP",
        "args": {"time": time, "seq": seq, "hash": "h", "url": url}}))
        .await;
}

#[tokio::test]
async fn a_snapshot_that_does_not_load_makes_joiners_replay_the_room() {
    let room = "poison-then-replay";
    let (_dir, server, alice, mut bob) = alice_and_bob(room).await;
    let (sid, key) = room_key(room);
    let mut eve = Raw::join(&server, &sid, Some(&key), "mallory").await;
    poison_snapshot(&server, &mut eve, &alice, "poison.snap").await;
    post_and_see(&alice, &mut bob, "after the poison").await;
    let mut alice = alice;
    let mut carol = joined(&server.base, room, "carol").await;
    assert_eq!(
        carol.loaded_snapshot(),
        None,
        "carol replayed from the start"
    );
    settle(&mut [&mut alice, &mut bob, &mut carol], "carol is in").await;
}

#[tokio::test]
async fn a_snapshot_that_does_not_load_makes_joiners_use_the_one_before() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = serve(dir.path(), &["--snapshot-min-interval-ms", "0"]);
    let room = "poison-then-older";
    let mut c = config(&server.base, room);
    // Joins and posts count: the poll comes with the 6th message, and fewer than 6 follow
    // before Bob's join, so the real snapshot is still the one before the poison then.
    c.snapshot_every = Some(6);
    let mut alice = joined_with(c, "alice").await;
    let (sid, key) = room_key(room);
    let mut eve = Raw::join(&server, &sid, Some(&key), "mallory").await;
    for i in 0..5 {
        alice
            .publish(RoomInput::Post(format!("post {i}")))
            .expect("publish");
    }
    let real = loop {
        match tokio::time::timeout(PATIENCE, alice.next_event())
            .await
            .expect("a snapshot in time")
        {
            Some(SessionEvent::SnapshotUploaded { url }) => break url,
            Some(SessionEvent::Failed(e)) => panic!("{e}"),
            Some(_) => {}
            None => panic!("ended"),
        }
    };
    poison_snapshot(&server, &mut eve, &alice, "poison.snap").await;
    let mut bob = joined(&server.base, room, "bob").await;
    assert_eq!(bob.loaded_snapshot().as_deref(), Some(real.as_str()));
    settle(&mut [&mut alice, &mut bob], "bob is in").await;
}

/// The server's `/metrics` page.
async fn metrics(server: &Serve) -> String {
    reqwest::get(format!("{}/metrics", server.base))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text")
}

/// Bytes the process has passed to write(2) and friends so far (`wchar` of
/// `/proc/PID/io`: what it asked to write, whether or not the page cache absorbed it).
fn bytes_written(pid: u32) -> u64 {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).expect("io");
    io.lines()
        .find_map(|l| l.strip_prefix("wchar:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("wchar")
}

/// Item 11: 40 SNAPs, each valid (own store, a new issued seq, a past time), against a
/// session holding 9 MB. Each accepted SNAP rewrites the journal; the session takes one
/// per --snapshot-min-interval-ms, so the journal is rewritten once, not 40 times.
#[tokio::test]
async fn a_snapshot_storm_rewrites_the_journal_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = serve(dir.path(), &[]);
    let (sid, key) = room_key("snap-storm");
    let mut mallory = Raw::join(&server, &sid, Some(&key), "mallory").await;
    let big = "A".repeat(60 * 1024);
    // Each message is read back before the next: a client that sends megabytes without
    // reading what the session sends it is closed (4001) once its writes stall.
    for _ in 0..150 {
        mallory
            .send(json!({"id": sid, "action": "SEND", "args": [0, 0, big, 0]}))
            .await;
        next_message_position(&mut mallory.ws).await;
    }
    let before = bytes_written(server.child.id());
    let url = format!("{}/files/snapshots/{sid}/storm.snap", server.base);
    for _ in 0..40 {
        mallory
            .send(json!({"id": sid, "action": "SEND", "args": [0, 0, "AAAA", 0]}))
            .await;
        let (time, seq) = next_message_position(&mut mallory.ws).await;
        mallory
            .send(json!({"id": sid, "action": "SNAP",
                "args": {"time": time, "seq": seq, "hash": "h", "url": url}}))
            .await;
    }
    // A message after the last SNAP on the same connection: every SNAP has been handled
    // (and the compaction it caused written) when it comes back.
    mallory
        .send(json!({"id": sid, "action": "SEND", "args": [0, 0, "AAAA", 0]}))
        .await;
    next_message_position(&mut mallory.ws).await;
    let written = bytes_written(server.child.id()) - before;
    let metrics = metrics(&server).await;
    assert!(metrics.contains("synq_snapshots_total 1"), "{metrics}");
    assert!(
        metrics.contains("synq_snapshots_refused_total 39"),
        "{metrics}"
    );
    // One rewrite of ~9 MB (and the small messages); 40 would be ~370 MB.
    assert!(
        written < 30 * 1024 * 1024,
        "the server wrote {written} bytes during the storm"
    );
    let healthz = reqwest::get(format!("{}/healthz", server.base))
        .await
        .expect("healthz");
    assert!(healthz.status().is_success());
}

/// A Croquet client of app `com.example.app` (persistent id `pid`) in `session`: its
/// connection, after its SYNC's `args`.
async fn croquet_app_client(server: &Serve, session: &str) -> (Ws, Value) {
    let mut ws = connect(server, session).await;
    let args = json!({"name": "app/room", "version": 1, "apiKey": "none", "user": "u",
        "appId": "com.example.app", "persistentId": "pid"});
    send(
        &mut ws,
        json!({"id": session, "action": "JOIN", "args": args}),
    )
    .await;
    loop {
        let f = next_json(&mut ws, PATIENCE).await;
        if f["action"] == "SYNC" {
            return (ws, f["args"].clone());
        }
    }
}

/// Sends `frame` and, to know it was handled, a message after it on the same connection,
/// which is sequenced after it: returns once that message comes back.
async fn handled(ws: &mut Ws, session: &str, frame: Value) {
    send(ws, frame).await;
    send(
        ws,
        json!({"id": session, "action": "SEND", "args": [0, 0, "after"]}),
    )
    .await;
    loop {
        let f = next_json(ws, PATIENCE).await;
        if f["action"] == "RECV" && f["args"][2] == "after" {
            return;
        }
    }
}

#[tokio::test]
async fn a_save_cannot_point_the_apps_next_version_at_another_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = serve(dir.path(), &[]);
    let (mut mallory, _) = croquet_app_client(&server, "app-v1").await;
    let addr = server.addr;
    // The next code version's joiners would be told to download these.
    for url in [
        "http://evil.example/files/apps/com.example.app/pid/save/x".to_string(),
        format!("http://{addr}/files/apps/com.example.app/other-pid/save/x"),
        format!("http://{addr}/files/snapshots/app-v1/x.snap"),
    ] {
        let save =
            json!({"id": "app-v1", "action": "SAVE", "args": {"url": url, "persistTime": 1}});
        handled(&mut mallory, "app-v1", save).await;
    }
    assert!(
        metrics(&server)
            .await
            .contains("synq_saves_refused_total 3"),
        "each SAVE was refused"
    );
    let (_, sync) = croquet_app_client(&server, "app-v2").await;
    assert_eq!(
        (&sync["url"], sync.get("persisted")),
        (&json!(""), None),
        "the next version starts empty: {sync}"
    );
    // Persistent data of this app in this server's store is recorded, for the version after.
    let own = format!("http://{addr}/files/apps/com.example.app/pid/save/0000000001_abc");
    let save = json!({"id": "app-v1", "action": "SAVE", "args": {"url": own, "persistTime": 1}});
    handled(&mut mallory, "app-v1", save).await;
    let (_, sync) = croquet_app_client(&server, "app-v3").await;
    assert_eq!(
        (&sync["url"], &sync["persisted"]),
        (&json!(own), &json!(true))
    );
}
