//! synq-client against a real `synq serve`: convergence, late join from a snapshot,
//! reconnect without lost or duplicated input, wrong password, tampered and forged
//! frames, and a reflector that never sees plaintext.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

mod common;

use common::Serve;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use synq_client::{ClientConfig, ClientError, Session, SessionEvent, join};
use synq_model::demo::{Room, RoomInput, RoomViewData};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

const PATIENCE: Duration = Duration::from_secs(30);
const CANARY: &str = "PLAINTEXT-CANARY-7f3a";

fn serve(data_dir: &Path) -> Serve {
    common::serve(data_dir, &["--client-rate-limit", "0", "--no-ai"])
}

fn config(base: &str, session: &str, password: &str) -> ClientConfig {
    let mut c = ClientConfig::for_server(base, "synq.test", session, password);
    // Ticks every 30 s: within a test, reflector time only moves with messages, so
    // replicas that applied the same messages have the same state.
    c.tps = 1.0 / 30.0;
    c.kdf_rounds = 1000;
    c.snapshot_every = None;
    c.max_sends_per_sec = 100.0;
    c
}

fn name(n: &str) -> RoomViewData {
    RoomViewData {
        name: format!("{n} NAME-{CANARY}"),
    }
}

async fn joined(base: &str, session: &str, who: &str) -> Session<Room> {
    tokio::time::timeout(
        PATIENCE,
        join::<Room>(config(base, session, "pw"), name(who)),
    )
    .await
    .expect("joined in time")
    .expect("join")
}

/// Waits (on session events, not on time) until `pred` holds for the model.
async fn until(s: &mut Session<Room>, what: &str, pred: impl Fn(&Room) -> bool) {
    let wait = async {
        while !s.read(&pred).unwrap_or(false) {
            match s.next_event().await {
                Some(SessionEvent::Failed(e)) => {
                    panic!("session failed while waiting for {what}: {e}")
                }
                Some(_) => {}
                None => panic!("session ended while waiting for {what}"),
            }
        }
    };
    tokio::time::timeout(PATIENCE, wait)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
}

/// One more post from `by`, awaited everywhere: afterwards every replica has applied the
/// same messages, so their hashes must be equal.
async fn settle(sessions: &mut [Session<Room>], by: usize, marker: &str) {
    sessions[by]
        .publish(RoomInput::Post(marker.to_owned()))
        .expect("publish");
    for s in sessions.iter_mut() {
        until(s, marker, |m| {
            m.posts.last().is_some_and(|p| p.text == marker)
        })
        .await;
    }
    let hashes: Vec<_> = sessions.iter().map(|s| s.hash().expect("hash")).collect();
    assert!(
        hashes.windows(2).all(|w| w[0] == w[1]),
        "replicas diverged after {marker}: {hashes:?}"
    );
}

fn base(s: &Serve) -> String {
    s.base.clone()
}

#[tokio::test]
async fn native_clients_converge_under_concurrent_input_and_a_late_joiner_matches() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = serve(dir.path());
    let base = base(&server);
    let mut sessions = Vec::new();
    for who in ["ann", "bob", "cid"] {
        sessions.push(joined(&base, "converge", who).await);
    }
    let n = 30; // 90 posts: under the demo room's cap of 100
    for k in 0..n {
        for (i, s) in sessions.iter().enumerate() {
            s.publish(RoomInput::Post(format!("{i}:{k} {CANARY}")))
                .expect("publish");
            if k % 7 == 0 {
                s.publish(RoomInput::Typing).expect("publish");
            }
        }
    }
    for s in &mut sessions {
        until(s, "all posts", |m| m.posts.len() == 3 * n).await;
    }
    settle(&mut sessions, 0, "settled-1").await;
    // Every client's posts arrived in its own order.
    let posts = sessions[1].read(|m| m.posts.clone()).expect("model");
    for i in 0..3 {
        let mine: Vec<_> = posts
            .iter()
            .filter(|p| p.text.starts_with(&format!("{i}:")))
            .map(|p| p.text.clone())
            .collect();
        let expected: Vec<_> = (0..n).map(|k| format!("{i}:{k} {CANARY}")).collect();
        assert_eq!(mine, expected);
    }
    let names = sessions[2].read(|m| m.names.len()).expect("model");
    assert_eq!(names, 3, "every view joined with its view data");

    // A late joiner replays everything (no snapshot yet) and matches.
    sessions.push(joined(&base, "converge", "dee").await);
    settle(&mut sessions, 3, "settled-2").await;
    let late_posts = sessions[3].read(|m| m.posts.len()).expect("model");
    assert_eq!(late_posts, 3 * n + 2);
}

#[tokio::test]
async fn a_late_joiner_loads_the_voted_snapshot_and_matches() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = serve(dir.path());
    let base = base(&server);
    // Whichever of the two has the lower view id asks for a snapshot every 30 events.
    let mut cfg = config(&base, "snap", "pw");
    cfg.snapshot_every = Some(30);
    let mut a = join::<Room>(cfg.clone(), name("ann")).await.expect("join");
    let mut b = join::<Room>(cfg, name("bob")).await.expect("join");
    for k in 0..40 {
        a.publish(RoomInput::Post(format!("before {k} {CANARY}")))
            .expect("publish");
    }
    // The lowest view of the majority uploads; either may be it.
    let uploaded = async {
        loop {
            tokio::select! {
                Some(e) = a.next_event() => {
                    if let SessionEvent::Diverged { .. } = e { panic!("diverged: {e:?}") }
                    if let SessionEvent::SnapshotUploaded { url } = e { break url }
                }
                Some(e) = b.next_event() => {
                    if let SessionEvent::Diverged { .. } = e { panic!("diverged: {e:?}") }
                    if let SessionEvent::SnapshotUploaded { url } = e { break url }
                }
            }
        }
    };
    let url = tokio::time::timeout(PATIENCE, uploaded)
        .await
        .expect("a snapshot was uploaded");
    assert!(url.contains("/files/snapshots/synq2-"), "{url}");
    // The stored snapshot is ciphertext.
    let stored = reqwest_get(&url).await;
    assert!(!contains(&stored, CANARY.as_bytes()));

    for k in 0..5 {
        a.publish(RoomInput::Post(format!("after {k}")))
            .expect("publish");
    }
    until(&mut a, "after posts", |m| {
        m.posts.iter().any(|p| p.text == "after 4")
    })
    .await;
    let late = joined(&base, "snap", "cid").await;
    assert_eq!(
        late.loaded_snapshot().as_deref(),
        Some(url.as_str()),
        "the late joiner started from the snapshot"
    );
    let mut sessions = vec![a, b, late];
    settle(&mut sessions, 2, "settled").await;
    let (_, events) = sessions[2].progress().expect("replica");
    let (_, events_a) = sessions[0].progress().expect("replica");
    assert_eq!(
        events, events_a,
        "the late joiner restored the event count from the snapshot"
    );
}

async fn reqwest_get(url: &str) -> Vec<u8> {
    // A raw HTTP/1.1 GET keeps reqwest out of this crate's dev-dependencies.
    let rest = url.strip_prefix("http://").expect("http url");
    let (host, path) = rest.split_once('/').expect("path");
    let mut s = TcpStream::connect(host).await.expect("connect");
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(
        format!("GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .expect("write");
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.expect("read");
    assert!(buf.starts_with(b"HTTP/1.1 200"), "GET {url} failed");
    buf
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// A TCP proxy whose live connections can be cut, as a network would.
struct Proxy {
    addr: SocketAddr,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
    _accept: JoinHandle<()>,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let conns: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let list = Arc::clone(&conns);
        let accept = tokio::spawn(async move {
            while let Ok((mut down, _)) = listener.accept().await {
                let task = tokio::spawn(async move {
                    if let Ok(mut up) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                    }
                });
                list.lock().expect("lock").push(task);
            }
        });
        Proxy {
            addr,
            conns,
            _accept: accept,
        }
    }

    fn cut(&self) {
        for t in self.conns.lock().expect("lock").drain(..) {
            t.abort();
        }
    }
}

#[tokio::test]
async fn a_client_cut_off_mid_stream_rejoins_with_no_lost_or_duplicated_input() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = serve(dir.path());
    let base = base(&server);
    let proxy = Proxy::start(server.addr).await;
    let mut a = joined(&base, "cut", "ann").await;
    let mut c = joined(&format!("http://{}", proxy.addr), "cut", "cut-off").await;
    let n = 60;
    for k in 0..n {
        c.publish(RoomInput::Post(format!("c{k}")))
            .expect("publish");
        if k == 20 {
            // Some of c's posts are in flight now.
            until(&mut a, "some of c's posts", |m| m.posts.len() >= 5).await;
            proxy.cut();
        }
    }
    // c notices, rejoins with the same view id, and sends what was not seen.
    let mut reconnected = false;
    let wait = async {
        loop {
            match c.next_event().await {
                Some(SessionEvent::Reconnecting(_)) => reconnected = true,
                Some(SessionEvent::Synced) if reconnected => break,
                Some(SessionEvent::Failed(e)) => panic!("{e}"),
                None => panic!("ended"),
                _ => {}
            }
        }
    };
    tokio::time::timeout(PATIENCE, wait)
        .await
        .expect("c rejoined");
    until(&mut a, "all of c's posts", |m| {
        m.posts.iter().filter(|p| p.text.starts_with('c')).count() >= n
    })
    .await;
    let mut sessions = vec![a, c];
    settle(&mut sessions, 1, "settled").await;
    let texts = sessions[0]
        .read(|m| m.posts.iter().map(|p| p.text.clone()).collect::<Vec<_>>())
        .expect("model");
    let expected: Vec<_> = (0..n)
        .map(|k| format!("c{k}"))
        .chain(["settled".to_owned()])
        .collect();
    assert_eq!(texts, expected, "each of c's inputs exactly once, in order");
    let views = sessions[0].read(|m| m.names.len()).expect("model");
    assert_eq!(views, 2, "c is still one view after the reconnect");
}

#[tokio::test]
async fn a_wrong_password_is_a_clear_error_and_nothing_is_applied() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = serve(dir.path());
    let base = base(&server);
    let mut a = joined(&base, "pw", "ann").await;
    a.publish(RoomInput::Post("secret".into()))
        .expect("publish");
    until(&mut a, "post", |m| m.posts.len() == 1).await;
    let wrong = join::<Room>(config(&base, "pw", "not-the-password"), name("eve")).await;
    assert_eq!(wrong.err(), Some(ClientError::WrongPassword));
    assert!(
        ClientError::WrongPassword
            .to_string()
            .contains("wrong password"),
        "the message says what is wrong"
    );
    // The intruder's failed join left no trace in the session.
    a.publish(RoomInput::Post("still fine".into()))
        .expect("publish");
    until(&mut a, "post", |m| m.posts.len() == 2).await;
    assert_eq!(a.read(|m| m.names.len()), Some(1));
}

#[tokio::test]
async fn an_unreachable_reflector_is_a_clear_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let err = join::<Room>(config(&format!("http://{addr}"), "x", "pw"), name("a"))
        .await
        .err()
        .expect("no server there");
    assert!(matches!(err, ClientError::Unreachable { .. }), "{err}");
    assert!(err.to_string().contains("unreachable"));
}

use common::Ws;

/// A raw protocol client with a valid identity and the room key but no session key: what
/// the reflector's operator could do (the reflector sees the room key at every JOIN).
/// Anyone without the password is not even let in.
async fn raw_join(addr: SocketAddr, room_name: &str, session: &str) -> Ws {
    let room_id = synq_client::room_id("synq.test", room_name);
    let room = synq_client::crypto::SessionKey::derive("pw", &room_id, session, 1000);
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/reflector/{session}"))
        .await
        .expect("connect");
    let proof = "raw-client-proof";
    let id = synq_protocol::identity::view_id_for_proof(proof);
    let join = json!({"id": session, "action": "JOIN", "args": {"name": "x/y", "apiKey": "none", "version": 1,
        "user": {"id": id, "data": "not-encrypted", "proof": proof, "room": room.room_key()},
        "ticks": {"tick": 30000}}});
    ws.send(Message::text(join.to_string()))
        .await
        .expect("send");
    ws
}

async fn next_frame(ws: &mut Ws) -> Value {
    common::next_json(ws, PATIENCE).await
}

#[tokio::test]
async fn tampered_and_forged_frames_are_dropped_everywhere_and_the_reflector_sees_no_plaintext() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = serve(dir.path());
    let base = base(&server);
    let mut sessions = vec![
        joined(&base, "tamper", "ann").await,
        joined(&base, "tamper", "bob").await,
    ];
    let session_id = sessions[0].session_id().to_owned();
    let mut raw = raw_join(server.addr, "tamper", &session_id).await;
    let mut relayed = Vec::new();
    let sync = next_frame(&mut raw).await;
    relayed.push(sync.to_string());

    sessions[0]
        .publish(RoomInput::Post(format!("hello {CANARY}")))
        .expect("publish");
    // Capture ann's real ciphertext as the reflector relays it.
    let captured = loop {
        let f = next_frame(&mut raw).await;
        relayed.push(f.to_string());
        if f["action"] == "RECV" && f["args"][2].is_string() {
            break f["args"][2].as_str().expect("str").to_owned();
        }
    };
    for s in sessions.iter_mut() {
        until(s, "hello", |m| m.posts.len() == 1).await;
    }
    // 1. A bit flipped in a real ciphertext. 2. Ann's ciphertext replayed by another sender
    // (the reflector stamps the raw client, the payload claims ann).
    let mut bytes = captured.clone().into_bytes();
    let i = bytes.len() / 2;
    bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(bytes).expect("ascii");
    for payload in [tampered, captured] {
        let send = json!({"id": session_id, "action": "SEND", "args": [0, 0, payload, 0]});
        raw.send(Message::text(send.to_string()))
            .await
            .expect("send");
    }
    // 3. Not base64: the reflector refuses it (4102) before anyone sees it.
    let mut raw2 = raw_join(server.addr, "tamper", &session_id).await;
    let _sync = next_frame(&mut raw2).await;
    let send = json!({"id": session_id, "action": "SEND", "args": [0, 0, "%%% not base64", 0]});
    raw2.send(Message::text(send.to_string()))
        .await
        .expect("send");
    let code = loop {
        match tokio::time::timeout(PATIENCE, raw2.next())
            .await
            .expect("closed in time")
        {
            Some(Ok(Message::Close(f))) => break f.map(|f| u16::from(f.code)),
            Some(Ok(_)) => continue,
            other => panic!("connection ended without a close frame: {other:?}"),
        }
    };
    assert_eq!(code, Some(4102));
    // Every replica reports two rejections and keeps going, identically.
    for s in sessions.iter_mut() {
        let mut rejected = Vec::new();
        let wait = async {
            while rejected.len() < 2 {
                match s.next_event().await {
                    Some(SessionEvent::Rejected(why)) => rejected.push(why),
                    Some(SessionEvent::Failed(e)) => panic!("{e}"),
                    None => panic!("ended"),
                    _ => {}
                }
            }
        };
        tokio::time::timeout(PATIENCE, wait)
            .await
            .expect("two rejections");
        assert!(
            rejected.iter().any(|r| r.contains("claims to come from")),
            "{rejected:?}"
        );
        assert!(
            rejected.iter().any(|r| r.contains("does not authenticate")),
            "{rejected:?}"
        );
    }
    settle(&mut sessions, 1, "after the attack").await;
    assert_eq!(
        sessions[0].read(|m| m.posts.len()),
        Some(2),
        "nothing forged was applied"
    );
    // The raw client's join (its view data does not open) is not a participant.
    assert_eq!(sessions[0].read(|m| m.names.len()), Some(2));

    // Drain what the raw client received, then look for plaintext in everything the
    // reflector relayed and stored.
    sessions[0]
        .publish(RoomInput::Post("last".into()))
        .expect("publish");
    loop {
        let f = next_frame(&mut raw).await;
        relayed.push(f.to_string());
        // The first message from ann since the captured one is "last".
        if f["action"] == "RECV" && f["args"][4].as_str() == Some(sessions[0].view_id().as_str()) {
            break;
        }
    }
    let all: String = relayed.concat();
    assert!(!all.contains(CANARY), "plaintext relayed by the reflector");
    assert!(!all.contains("hello"), "plaintext relayed by the reflector");
    let mut stored = 0;
    for entry in walk(dir.path()) {
        let bytes = std::fs::read(&entry).expect("read");
        stored += bytes.len();
        assert!(
            !contains(&bytes, CANARY.as_bytes()),
            "plaintext stored in {}",
            entry.display()
        );
    }
    assert!(stored > 0, "the reflector journaled the session");
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// A model that breaks the determinism rules on purpose: it stores a process-wide
/// counter, so two replicas in this test process disagree after their first input.
mod leaky {
    use std::sync::atomic::{AtomicU64, Ordering};

    use serde::{Deserialize, Serialize};
    use synq_model::{Cx, Model, ViewId};

    static CALLS: AtomicU64 = AtomicU64::new(0);

    #[derive(Default, Serialize, Deserialize)]
    pub struct Leaky {
        pub seen: Vec<u64>,
    }

    impl Model for Leaky {
        type Input = u8;
        type Output = ();
        type Timer = ();
        type ViewData = ();
        const SCHEMA: &'static str = "leaky/1";

        fn init(_: &mut Cx<'_, Self>) -> Self {
            Leaky::default()
        }

        fn input(&mut self, _: &mut Cx<'_, Self>, _: &ViewId, _: u8) {
            self.seen.push(CALLS.fetch_add(1, Ordering::SeqCst));
        }
    }
}

#[tokio::test]
async fn replicas_that_diverge_are_reported_with_both_hashes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = serve(dir.path());
    let base = base(&server);
    let mut cfg = config(&base, "diverge", "pw");
    cfg.snapshot_every = Some(5);
    let mut a = join::<leaky::Leaky>(cfg.clone(), ()).await.expect("join");
    let mut b = join::<leaky::Leaky>(cfg, ()).await.expect("join");
    for k in 0..10 {
        a.publish(k).expect("publish");
    }
    let mut reports = Vec::new();
    let wait = async {
        while reports.len() < 2 {
            tokio::select! {
                Some(e) = a.next_event() => if let SessionEvent::Diverged { mine, votes, .. } = e { reports.push((mine, votes)) },
                Some(e) = b.next_event() => if let SessionEvent::Diverged { mine, votes, .. } = e { reports.push((mine, votes)) },
            }
        }
    };
    tokio::time::timeout(PATIENCE, wait)
        .await
        .expect("both replicas report the divergence");
    assert_ne!(
        reports[0].0, reports[1].0,
        "each reports its own state hash"
    );
    for (mine, votes) in &reports {
        assert_eq!(mine.len(), 64, "a SHA-256 in hex: {mine}");
        assert_eq!(votes.len(), 2, "two different votes: {votes:?}");
    }
}
