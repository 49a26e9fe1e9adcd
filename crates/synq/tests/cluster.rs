//! Many nodes as one service (`synq serve --cluster`): a real `nats-server` with JetStream
//! (Debian's package `nats-server`, installed by scripts/test.sh) and real synq nodes on
//! loopback, spoken to by raw protocol clients.
//!
//! What a user would notice: clients of one session on different nodes see one history;
//! when the node that sequences a session dies (`kill -9`) or is paused past its lease
//! (SIGSTOP), the clients reconnect through another node and find every message they had
//! seen, in order, numbered as before, with time that never went backwards; a node
//! stopped with SIGTERM hands its sessions over at once; a node restarted with an empty
//! disk serves its old sessions.

// Not model code: the test measures wall-clock deadlines and drains a child's log.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::{Serve, Ws, serve};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use synq_cluster::testing::NatsServer;
use tokio_tungstenite::tungstenite::Message;

const PATIENCE: Duration = Duration::from_secs(15);
const TOKEN: &str = "cluster-test-token-0123456789";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A synq node of the cluster, with its own data directory.
struct Node {
    serve: Serve,
    /// Its cluster listener, `127.0.0.1:PORT`.
    cluster_listen: String,
    _dir: tempfile::TempDir,
}

impl Node {
    fn addr(&self) -> SocketAddr {
        self.serve.addr
    }

    fn kill(&mut self) {
        let _ = self.serve.child.kill();
        let _ = self.serve.child.wait();
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.serve.child.id().to_string()])
            .status()
            .expect("kill(1)")
            .success();
        assert!(ok, "kill {sig}");
    }

    /// Waits for the node's process to exit by itself.
    fn exit_status(&mut self) -> std::process::ExitStatus {
        self.serve.child.wait().expect("wait")
    }

    async fn metric(&self, name: &str) -> u64 {
        let text = http_get(self.addr(), "/metrics").await;
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} in /metrics"))
    }
}

fn node(nats: &NatsServer, name: &str) -> Node {
    node_with(nats, name, &["--no-ai"])
}

fn node_with(nats: &NatsServer, name: &str, extra: &[&str]) -> Node {
    node_env(nats, name, extra, None)
}

/// `log`: keep the node's log for [`Serve::stderr_containing`] (read it, or it fills up).
fn node_env(nats: &NatsServer, name: &str, extra: &[&str], log: Option<&str>) -> Node {
    let dir = tempfile::tempdir().expect("tempdir");
    let listen = format!("127.0.0.1:{}", free_port());
    let mut args = extra.to_vec();
    args.extend([
        "--cluster",
        &nats.url,
        "--cluster-listen",
        &listen,
        "--cluster-token",
        TOKEN,
        "--node",
        name,
    ]);
    let serve = match log {
        Some(filter) => common::serve_with(dir.path(), &args, &[("RUST_LOG", filter)]),
        None => serve(dir.path(), &args),
    };
    Node {
        serve,
        cluster_listen: listen,
        _dir: dir,
    }
}

/// A GET over a plain TCP connection (the tests' HTTP needs are this small).
async fn http_get(addr: SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("read");
    out
}

fn join_frame(session: &str, user: &str) -> Message {
    let join = json!({"id": session, "action": "JOIN", "args": {"name": "t/s", "apiKey": "none", "appId": "t", "version": 1, "user": user, "ticks": {"tick": 100, "delay": 0}, "tove": "T"}});
    Message::Text(join.to_string().into())
}

/// How a join attempt ended.
enum Joined {
    Synced(Box<Ws>, Value),
    /// Closed before SYNC with this code (4003: reconnect, e.g. the owner just died).
    Closed(u16),
}

async fn try_join(addr: SocketAddr, session: &str, user: &str) -> Joined {
    let Ok((mut ws, _)) =
        tokio_tungstenite::connect_async(format!("ws://{addr}/reflector/{session}")).await
    else {
        return Joined::Closed(0);
    };
    if ws.send(join_frame(session, user)).await.is_err() {
        return Joined::Closed(0);
    }
    loop {
        match tokio::time::timeout(PATIENCE, ws.next())
            .await
            .expect("an answer to JOIN")
        {
            Some(Ok(Message::Text(t))) => {
                let f: Value = serde_json::from_str(t.as_str()).expect("json");
                if f["action"] == "SYNC" {
                    return Joined::Synced(Box::new(ws), f["args"].clone());
                }
            }
            Some(Ok(Message::Close(frame))) => {
                return Joined::Closed(frame.map_or(0, |f| u16::from(f.code)));
            }
            Some(Ok(_)) => {}
            _ => return Joined::Closed(0),
        }
    }
}

/// Joins, reconnecting as a Croquet client does while the cluster asks it to (the
/// session's owner is changing); gives up after `PATIENCE`.
async fn join(addr: SocketAddr, session: &str, user: &str) -> (Ws, Value) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        match try_join(addr, session, user).await {
            Joined::Synced(ws, sync) => return (*ws, sync),
            Joined::Closed(code) => {
                assert!(
                    Instant::now() < deadline,
                    "no SYNC through {addr}: last close code {code}"
                );
                // A client's reconnect delay (Croquet's is longer).
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn send(ws: &mut Ws, session: &str, payload: &str) {
    let send = json!({"id": session, "action": "SEND", "args": [0, 0, payload, 0]});
    ws.send(Message::Text(send.to_string().into()))
        .await
        .expect("send");
}

/// The next RECV of a client message: (time, seq, payload). `None`: the connection closed.
async fn next_recv(ws: &mut Ws) -> Option<(f64, u64, String)> {
    loop {
        match tokio::time::timeout(PATIENCE, ws.next())
            .await
            .expect("a frame in time")
        {
            Some(Ok(Message::Text(t))) => {
                let f: Value = serde_json::from_str(t.as_str()).expect("json");
                if f["action"] == "RECV"
                    && let Some(p) = f["args"][2].as_str()
                {
                    return Some((
                        f["args"][0].as_f64().unwrap_or(0.0),
                        f["args"][1].as_u64().unwrap_or(0),
                        p.to_owned(),
                    ));
                }
            }
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
            Some(Ok(_)) => {}
        }
    }
}

/// The client messages of a SYNC: (seq, payload).
fn synced(sync: &Value) -> Vec<(u64, String)> {
    sync["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .filter_map(|m| Some((m[1].as_u64()?, m[2].as_str()?.to_owned())))
        .collect()
}

#[tokio::test]
async fn clients_of_one_session_on_three_nodes_see_one_history() {
    let nats = NatsServer::start();
    let nodes = [node(&nats, "a"), node(&nats, "b"), node(&nats, "c")];
    // The first JOIN makes its node the owner; the others forward.
    let mut clients = Vec::new();
    for (k, n) in nodes.iter().enumerate() {
        clients.push(join(n.addr(), "spread", &format!("u{k}")).await.0);
    }
    for (k, ws) in clients.iter_mut().enumerate() {
        send(ws, "spread", &format!("from-{k}")).await;
    }
    let mut histories = Vec::new();
    for ws in &mut clients {
        let mut h = Vec::new();
        while h.len() < 3 {
            let (_, seq, p) = next_recv(ws).await.expect("RECV");
            h.push((seq, p));
        }
        histories.push(h);
    }
    assert_eq!(histories[0], histories[1], "nodes a and b agree");
    assert_eq!(histories[0], histories[2], "nodes a and c agree");
    let mut payloads: Vec<_> = histories[0].iter().map(|(_, p)| p.clone()).collect();
    payloads.sort();
    assert_eq!(payloads, ["from-0", "from-1", "from-2"]);
    assert_eq!(nodes[0].metric("synq_cluster_claims_total").await, 1);
    assert_eq!(nodes[1].metric("synq_cluster_forwards_total").await, 1);
    assert_eq!(nodes[2].metric("synq_cluster_forwards_total").await, 1);
    assert_eq!(nodes[1].metric("synq_cluster_claims_total").await, 0);
}

#[tokio::test]
async fn kill_9_of_the_owner_loses_no_message_and_the_clients_go_on_through_other_nodes() {
    let nats = NatsServer::start();
    let mut owner = node(&nats, "a");
    let b = node(&nats, "b");
    let c = node(&nats, "c");
    let (mut on_a, _) = join(owner.addr(), "failover", "ua").await;
    let (mut on_b, _) = join(b.addr(), "failover", "ub").await;
    let (_on_c, sync_c) = join(c.addr(), "failover", "uc").await;
    // Messages flow from the client on b; the client on c only watches.
    let mut seen: Vec<(u64, String)> = Vec::new();
    let mut last_time = sync_c["time"].as_f64().unwrap_or(0.0);
    for k in 0..50 {
        send(&mut on_b, "failover", &format!("m{k}")).await;
    }
    while seen.len() < 50 {
        let (t, seq, p) = next_recv(&mut on_a).await.expect("RECV before the kill");
        last_time = last_time.max(t);
        seen.push((seq, p));
    }
    // More are on their way when the owner dies.
    for k in 50..80 {
        send(&mut on_b, "failover", &format!("m{k}")).await;
    }
    owner.kill();
    let killed = Instant::now();
    // The client on b learns it from its node (4003) and reconnects there.
    while next_recv(&mut on_b).await.is_some() {}
    let (mut again, sync) = join(b.addr(), "failover", "ub").await;
    let history = synced(&sync);
    assert!(
        history.len() >= seen.len(),
        "the new owner has every message the old one sent"
    );
    assert_eq!(
        &history[..seen.len()],
        &seen[..],
        "same messages, same order, same numbers"
    );
    let mut seqs: Vec<_> = history.iter().map(|(s, _)| *s).collect();
    seqs.dedup();
    assert_eq!(seqs.len(), history.len(), "no message twice");
    assert!(
        sync["time"].as_f64().unwrap_or(0.0) >= last_time,
        "time never goes backwards across the failover"
    );
    send(&mut again, "failover", "after").await;
    let (t, seq, p) = next_recv(&mut again)
        .await
        .expect("RECV after the failover");
    let failover = killed.elapsed();
    assert_eq!(p, "after");
    assert!(
        seq > history.last().map_or(0, |(s, _)| *s),
        "numbering goes on"
    );
    assert!(t >= last_time);
    eprintln!(
        "failover: {} ms from kill -9 to the first message delivered again",
        failover.as_millis()
    );
    let claims =
        b.metric("synq_cluster_claims_total").await + c.metric("synq_cluster_claims_total").await;
    assert_eq!(claims, 1, "exactly one node took the session over");
}

/// A rolling restart: the owner is stopped with SIGTERM. It journals what it has, gives
/// its lease up, and asks its clients to reconnect (4003), and exits 0. The lease here
/// lasts 30 s, longer than the clients' patience: they find the session on the other node
/// at once only because the stopping owner gave it up.
#[tokio::test]
async fn sigterm_hands_the_owners_sessions_over_at_once() {
    let nats = NatsServer::start();
    let long_lease = ["--no-ai", "--cluster-lease-ms", "30000"];
    let mut owner = node_with(&nats, "a", &long_lease);
    let b = node_with(&nats, "b", &long_lease);
    let (mut on_a, _) = join(owner.addr(), "handover", "ua").await;
    let (mut on_b, _) = join(b.addr(), "handover", "ub").await;
    for k in 0..30 {
        send(&mut on_b, "handover", &format!("m{k}")).await;
    }
    let mut seen: Vec<(u64, String)> = Vec::new();
    while seen.len() < 30 {
        let (_, seq, p) = next_recv(&mut on_a).await.expect("RECV before SIGTERM");
        seen.push((seq, p));
    }
    owner.signal("-TERM");
    let stopped = Instant::now();
    assert_eq!(
        common::close_code(&mut on_a, PATIENCE).await,
        4003,
        "asked to reconnect"
    );
    assert_eq!(
        common::close_code(&mut on_b, PATIENCE).await,
        4003,
        "the relayed client is asked too"
    );
    let status = owner.exit_status();
    assert!(status.success(), "the node exits cleanly: {status}");
    let (mut again, sync) = join(b.addr(), "handover", "ub").await;
    println!(
        "from SIGTERM to the SYNC on the other node: {:?}",
        stopped.elapsed()
    );
    assert_eq!(
        &synced(&sync)[..seen.len()],
        &seen[..],
        "every message, in order, numbered as before"
    );
    assert_eq!(b.metric("synq_cluster_claims_total").await, 1);
    send(&mut again, "handover", "after").await;
    let (_, seq, p) = next_recv(&mut again).await.expect("RECV on the new owner");
    assert_eq!(p, "after");
    assert!(seq > seen.last().map_or(0, |s| s.0), "numbering goes on");
}

#[tokio::test]
async fn an_owner_paused_past_its_lease_never_sequences_again() {
    let nats = NatsServer::start();
    let owner = node(&nats, "a");
    let b = node(&nats, "b");
    let (mut on_a, _) = join(owner.addr(), "paused", "ua").await;
    send(&mut on_a, "paused", "before").await;
    let (_, before_seq, _) = next_recv(&mut on_a).await.expect("RECV");
    owner.signal("-STOP");
    // Through b, a client finds the session once a's lease has lapsed, and b takes it.
    let (mut on_b, sync) = join(b.addr(), "paused", "ub").await;
    assert_eq!(synced(&sync), vec![(before_seq, "before".to_owned())]);
    send(&mut on_b, "paused", "new-owner").await;
    let (_, new_seq, _) = next_recv(&mut on_b).await.expect("RECV from the new owner");
    // The paused owner wakes up believing it still owns the session; its client sends.
    owner.signal("-CONT");
    send(&mut on_a, "paused", "stale").await;
    // It sends nothing more: the client on a is asked to reconnect.
    assert_eq!(
        next_recv(&mut on_a).await,
        None,
        "the old owner sequenced nothing"
    );
    assert_eq!(owner.metric("synq_cluster_sessions_lost_total").await, 1);
    // The one history goes on at b, without the stale message.
    send(&mut on_b, "paused", "later").await;
    let (_, seq, p) = next_recv(&mut on_b).await.expect("RECV");
    assert_eq!(p, "later");
    assert!(seq > new_seq);
}

#[tokio::test]
async fn a_node_restarted_with_an_empty_disk_serves_its_old_sessions() {
    let nats = NatsServer::start();
    let mut first = node(&nats, "a");
    let (mut ws, _) = join(first.addr(), "remembered", "ua").await;
    for k in 0..5 {
        send(&mut ws, "remembered", &format!("m{k}")).await;
    }
    let mut seen = Vec::new();
    while seen.len() < 5 {
        let (_, seq, p) = next_recv(&mut ws).await.expect("RECV");
        seen.push((seq, p));
    }
    first.kill();
    // Same name, new empty data directory.
    let second = node(&nats, "a");
    let (_ws, sync) = join(second.addr(), "remembered", "ub").await;
    assert_eq!(synced(&sync), seen);
}

/// The real Croquet client (`@croquet/croquet` 2.0.4, interop/croquet/harness.mjs): four
/// clients of one session spread over three nodes agree, through a snapshot (compacted
/// into the stream) and a late joiner.
#[tokio::test]
async fn real_croquet_clients_spread_over_three_nodes_agree() {
    let interop = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../interop/croquet");
    assert!(
        interop.join("node_modules/@croquet/croquet").is_dir(),
        "run `npm ci --ignore-scripts` in interop/croquet (scripts/test.sh does it)"
    );
    let nats = NatsServer::start();
    let nodes = [node(&nats, "a"), node(&nats, "b"), node(&nats, "c")];
    let boxes: Vec<String> = nodes
        .iter()
        .map(|n| format!("http://{}/", n.addr()))
        .collect();
    let harness = tokio::process::Command::new("node")
        .current_dir(&interop)
        .args(["harness.mjs", &boxes.join(","), "--timeout", "60"])
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .expect("node (Node.js) runs the harness");
    let stdout = String::from_utf8_lossy(&harness.stdout);
    let summary = stdout.lines().last().unwrap_or("");
    assert!(
        harness.status.success() && summary.contains("\"ok\":true"),
        "the harness failed: {summary}\n{}",
        String::from_utf8_lossy(&harness.stderr)
    );
    let mut forwards = 0;
    for n in &nodes {
        forwards += n.metric("synq_cluster_forwards_total").await;
    }
    assert!(
        forwards >= 2,
        "clients reached the owner through other nodes ({forwards})"
    );
}

/// The AI chat on a cluster: three participants, each through its own node, one post;
/// the elected participant's AI request goes through its node's gateway with the
/// capability the session's owner issued, and every participant sees the one answer.
#[tokio::test]
async fn the_ai_chat_answers_participants_spread_over_three_nodes() {
    use std::sync::Arc;
    use synq_ai::openai::{OpenAiBackend, OpenAiConfig};
    use synq_ai::testing::{FAKE_MODEL, FakeUpstream, Reply};
    use synq_chat::native::{AiService, Participant};
    use synq_chat::{AiState, ChatModel, EntryKind};

    let upstream = FakeUpstream::start().await;
    upstream.set_default(Reply::text(&["One", " answer."]));
    let nats = NatsServer::start();
    let ai = [
        "--ai-url",
        upstream.base_url.as_str(),
        "--ai-model",
        FAKE_MODEL,
    ];
    let nodes = [
        node_with(&nats, "a", &ai),
        node_with(&nats, "b", &ai),
        node_with(&nats, "c", &ai),
    ];
    let mut people = Vec::new();
    for (n, name) in nodes.iter().zip(["Ann", "Bob", "Cid"]) {
        let base = format!("http://{}", n.addr());
        let mut cfg = OpenAiConfig::new(format!("{base}/ai/v1"), "chosen-by-the-server");
        cfg.max_retries = 0;
        let service = Arc::new(AiService(Arc::new(
            OpenAiBackend::new(cfg).expect("backend"),
        )));
        let mut config = synq_client::ClientConfig::for_server(
            &base,
            "synq.chat.test",
            "spread",
            "room-password",
        );
        config.kdf_rounds = 1000;
        // Ann, first in, joins through the node that then owns the session and does not
        // relay: Bob, on another node, is elected and asks his node's gateway with a
        // capability the owner issued.
        let service = (name != "Ann").then_some(service);
        let p = tokio::time::timeout(PATIENCE, Participant::join(config, name, service))
            .await
            .expect("joined in time")
            .expect("join");
        people.push(p);
    }
    let answers = |m: &ChatModel| -> Vec<(String, AiState)> {
        m.history()
            .filter_map(|e| match &e.kind {
                EntryKind::Ai { text, state, .. } => Some((text.clone(), *state)),
                _ => None,
            })
            .collect()
    };
    for p in &mut people {
        tokio::time::timeout(PATIENCE, p.until(|m| m.users().count() == 3))
            .await
            .expect("everyone present in time")
            .expect("session alive");
    }
    people[1].post("@AI hello from node b").expect("post");
    for p in &mut people {
        tokio::time::timeout(
            PATIENCE,
            p.until(|m| answers(m) == [("One answer.".to_string(), AiState::Done)]),
        )
        .await
        .expect("the answer in time")
        .expect("session alive");
    }
    assert_eq!(
        upstream.request_count(),
        1,
        "one post, one upstream request"
    );
}

/// Croquet's `persistSession` on a cluster: version 1 of an app saves through node a;
/// version 2 (another session) starts on node b and gets the saved data.
#[tokio::test]
async fn persisted_data_reaches_the_next_app_version_on_another_node() {
    let interop = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../interop/croquet");
    let nats = NatsServer::start();
    // Only the line that says the SAVE was recorded (a quiet log cannot fill its pipe).
    let mut a = node_env(
        &nats,
        "a",
        &["--no-ai"],
        Some("warn,synq_reflector::island=info"),
    );
    let b = node(&nats, "b");
    let state = tempfile::tempdir().expect("tempdir");
    let state = state.path().join("persist-v1.json");
    let phase = |node: &Node, phase: &str| {
        let out = std::process::Command::new("node")
            .current_dir(&interop)
            .arg("persist.mjs")
            .arg(format!("http://{}/", node.addr()))
            .args(["--phase", phase, "--timeout", "60", "--state"])
            .arg(&state)
            .stdin(Stdio::null())
            .output()
            .expect("node (Node.js) runs persist.mjs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let summary = stdout.lines().last().unwrap_or("").to_owned();
        assert!(
            out.status.success() && summary.contains("\"ok\":true"),
            "persist.mjs {phase} failed: {summary}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    phase(&a, "v1");
    a.serve.stderr_containing("persistent data registered");
    phase(&b, "v2");
}

/// A client that stops reading, through a node that forwards it: the owner drops it from
/// the session, and its node gives up the relay (and its connection to the owner) after
/// `--client-write-timeout-secs` instead of holding them for good.
#[tokio::test]
async fn a_forwarded_client_that_stops_reading_is_let_go_on_both_nodes() {
    let nats = NatsServer::start();
    let slow_args = [
        "--no-ai",
        "--client-write-timeout-secs",
        "1",
        "--max-session-bytes",
        "134217728",
        "--client-rate-limit",
        "0",
    ];
    let a = node_with(&nats, "a", &slow_args);
    let b = node_with(&nats, "b", &slow_args);
    let (mut fast, _) = join(a.addr(), "stuck", "fast").await;
    let (_slow, _) = join(b.addr(), "stuck", "slow").await;
    assert_eq!(b.metric("synq_cluster_forwarding").await, 1);
    // The sender joins without a user: it gets no stream, so it cannot be slow itself.
    let (mut sender, _) =
        tokio_tungstenite::connect_async(format!("ws://{}/reflector/stuck", a.addr()))
            .await
            .expect("connect");
    let join = json!({"id": "stuck", "action": "JOIN", "args": {"name": "t/s", "apiKey": "none", "appId": "t", "version": 1, "ticks": {"tick": 1000}, "tove": "T"}});
    sender
        .send(Message::Text(join.to_string().into()))
        .await
        .expect("JOIN");
    while common::next_json(&mut sender, PATIENCE).await["action"] != "SYNC" {}
    // 64 MiB through the session: more than loopback buffers hold for `slow`.
    let payload = "z".repeat(16 * 1024);
    let sending = tokio::spawn(async move {
        for _ in 0..4000 {
            send(&mut sender, "stuck", &payload).await;
        }
        sender
    });
    // The owner lets `slow` go: `fast` learns it from the session's users announcement.
    loop {
        let f = common::next_json(&mut fast, PATIENCE).await;
        let event = &f["args"][2];
        if f["action"] == "RECV" && event["what"] == "users" && event["active"] == 1 {
            break;
        }
    }
    let _sender = sending.await.expect("sender");
    // And b ends the relay (checked every 50 ms: a gauge has no notification).
    let deadline = Instant::now() + PATIENCE;
    while b.metric("synq_cluster_forwarding").await != 0 {
        assert!(
            Instant::now() < deadline,
            "b still relays a client that stopped reading"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The cluster listener takes only connections that carry the cluster's token: without
/// it, nobody can pass as another client address or skip the node's own checks.
#[tokio::test]
async fn the_cluster_listener_refuses_connections_without_the_token() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let nats = NatsServer::start();
    let a = node(&nats, "a");
    let url = format!("ws://{}/reflector/guarded", a.cluster_listen);
    for token in [None, Some("not-the-cluster-token-at-all")] {
        let mut req = url.as_str().into_client_request().expect("request");
        req.headers_mut().insert(
            "x-synq-forwarded-for",
            "203.0.113.9".parse().expect("header"),
        );
        if let Some(t) = token {
            req.headers_mut()
                .insert("x-synq-cluster-token", t.parse().expect("header"));
        }
        match tokio_tungstenite::connect_async(req).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status(), 403, "token {token:?}");
            }
            other => panic!("token {token:?}: expected 403, got {:?}", other.map(|_| ())),
        }
    }
    // With the token, the same request is a relayed client.
    let mut req = url.as_str().into_client_request().expect("request");
    req.headers_mut().insert(
        "x-synq-forwarded-for",
        "203.0.113.9".parse().expect("header"),
    );
    req.headers_mut()
        .insert("x-synq-cluster-token", TOKEN.parse().expect("header"));
    let (mut ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .expect("accepted");
    ws.send(join_frame("guarded", "relayed"))
        .await
        .expect("JOIN");
    while common::next_json(&mut ws, PATIENCE).await["action"] != "SYNC" {}
}
