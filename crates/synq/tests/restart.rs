//! Sessions survive a restart of `synq serve`, including `kill -9`: every message that was
//! broadcast before the kill is in the SYNC a client gets from the restarted server. A
//! SIGTERM stops it cleanly: clients are asked to reconnect (4003), and the session's time
//! is recorded.

use std::net::SocketAddr;
use std::time::Duration;

mod common;

use common::serve;
use futures_util::SinkExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

const PATIENCE: Duration = Duration::from_secs(10);

use common::Ws;

async fn join(addr: SocketAddr, session: &str, user: &str) -> (Ws, Value) {
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/reflector/{session}"))
        .await
        .expect("connect");
    let join = json!({"id": session, "action": "JOIN", "args": {"name": "t/s", "apiKey": "none", "appId": "t", "version": 1, "user": user, "ticks": {"tick": 50, "delay": 0}, "tove": "T"}});
    ws.send(Message::Text(join.to_string().into()))
        .await
        .expect("send");
    loop {
        let f = next(&mut ws).await;
        if f["action"] == "SYNC" {
            return (ws, f["args"].clone());
        }
    }
}

/// The payloads of a SYNC's messages.
fn payloads(sync: &Value) -> Vec<String> {
    sync["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .filter_map(|m| m[2].as_str().map(str::to_owned))
        .collect()
}

async fn next(ws: &mut Ws) -> Value {
    common::next_json(ws, PATIENCE).await
}

#[tokio::test]
async fn no_broadcast_message_is_lost_by_kill_9_and_the_session_resumes_on_its_timeline() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut first = serve(dir.path(), &["--no-ai"]);
    let (mut ws, sync) = join(first.addr, "durable", "va").await;
    let timeline = sync["timeline"].clone();
    const N: usize = 150; // under the default per-client burst
    for k in 0..N {
        let send = json!({"id": "durable", "action": "SEND", "args": [0, 0, format!("m{k}"), 0]});
        ws.send(Message::Text(send.to_string().into()))
            .await
            .expect("send");
    }
    // Wait until the last one has been broadcast to us, then kill without warning.
    let mut last = (0.0, 0u64);
    loop {
        let f = next(&mut ws).await;
        if f["action"] == "TICK" {
            last.0 = f["args"].as_f64().unwrap_or(last.0);
        }
        if f["action"] == "RECV" && f["args"][2] == format!("m{}", N - 1) {
            last = (
                f["args"][0].as_f64().unwrap_or(0.0),
                f["args"][1].as_u64().unwrap_or(0),
            );
            break;
        }
    }
    first.child.kill().expect("kill -9");
    let _ = first.child.wait();

    let mut second = serve(dir.path(), &["--no-ai"]);
    let (mut ws2, sync) = join(second.addr, "durable", "vb").await;
    let payloads = payloads(&sync);
    let expected: Vec<String> = (0..N).map(|k| format!("m{k}")).collect();
    assert_eq!(
        payloads, expected,
        "every broadcast message survived, in order"
    );
    assert_eq!(
        sync["seq"].as_u64(),
        Some(last.1),
        "the sequence continues where it stopped"
    );
    assert_eq!(sync["timeline"], timeline, "same session incarnation");
    assert!(
        sync["time"].as_f64().unwrap_or(0.0) >= last.0,
        "time never goes backwards across a restart"
    );
    let send = json!({"id": "durable", "action": "SEND", "args": [0, 0, "after-restart", 0]});
    ws2.send(Message::Text(send.to_string().into()))
        .await
        .expect("send");
    loop {
        let f = next(&mut ws2).await;
        if f["action"] == "RECV" && f["args"][2] == "after-restart" {
            let seq = f["args"][1].as_u64().unwrap_or(0);
            let next_seqs = [(last.1 + 1) % (1 << 32), (last.1 + 2) % (1 << 32)];
            assert!(
                next_seqs.contains(&seq),
                "numbering continues after {}: got {seq}",
                last.1
            );
            break;
        }
    }
    let _ = second.child.kill();
    let _ = second.child.wait();
}

#[tokio::test]
async fn sigterm_asks_clients_to_reconnect_and_the_restarted_server_resumes_where_it_stopped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut first = serve(dir.path(), &["--no-ai"]);
    let (mut ws, _) = join(first.addr, "graceful", "va").await;
    const N: usize = 20;
    for k in 0..N {
        let send = json!({"id": "graceful", "action": "SEND", "args": [0, 0, format!("m{k}"), 0]});
        ws.send(Message::Text(send.to_string().into()))
            .await
            .expect("send");
    }
    let mut last_time = 0.0f64;
    loop {
        let f = next(&mut ws).await;
        if f["action"] == "TICK" || f["action"] == "RECV" {
            let t = if f["action"] == "TICK" {
                &f["args"]
            } else {
                &f["args"][0]
            };
            last_time = last_time.max(t.as_f64().unwrap_or(0.0));
        }
        if f["action"] == "RECV" && f["args"][2] == format!("m{}", N - 1) {
            break;
        }
    }
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &first.child.id().to_string()])
        .status()
        .expect("kill(1)");
    assert!(killed.success());
    assert_eq!(
        common::close_code(&mut ws, PATIENCE).await,
        4003,
        "asked to reconnect, not cut off"
    );
    let status = first.child.wait().expect("wait");
    assert!(status.success(), "a clean exit: {status}");

    let mut second = serve(dir.path(), &["--no-ai"]);
    let (_ws2, sync) = join(second.addr, "graceful", "vb").await;
    let payloads = payloads(&sync);
    let expected: Vec<String> = (0..N).map(|k| format!("m{k}")).collect();
    assert_eq!(payloads, expected);
    assert!(
        sync["time"].as_f64().unwrap_or(0.0) >= last_time,
        "the session's time at the stop was kept: {} < {last_time}",
        sync["time"]
    );
    let _ = second.child.kill();
    let _ = second.child.wait();
}

#[tokio::test]
async fn a_snapshot_pointer_survives_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut first = serve(dir.path(), &["--no-ai"]);
    let (mut ws, _) = join(first.addr, "snapped", "va").await;
    let mut seqs = Vec::new();
    for k in 0..4 {
        let send = json!({"id": "snapped", "action": "SEND", "args": [0, 0, format!("m{k}"), 0]});
        ws.send(Message::Text(send.to_string().into()))
            .await
            .expect("send");
    }
    while seqs.len() < 4 {
        let f = next(&mut ws).await;
        if f["action"] == "RECV" && f["args"][2].is_string() {
            seqs.push((
                f["args"][0].as_u64().unwrap_or(0),
                f["args"][1].as_u64().unwrap_or(0),
            ));
        }
    }
    let url = format!("http://{}/files/snapshots/snapped/s.snap", first.addr);
    let snap = json!({"id": "snapped", "action": "SNAP", "args": {"time": seqs[1].0, "seq": seqs[1].1, "hash": "h", "url": url, "dissident": null}});
    ws.send(Message::Text(snap.to_string().into()))
        .await
        .expect("send");
    // A PING round trip orders the SNAP before the kill.
    ws.send(Message::Text(
        json!({"action": "PING", "args": 1}).to_string().into(),
    ))
    .await
    .expect("send");
    while next(&mut ws).await["action"] != "PONG" {}
    first.child.kill().expect("kill");
    let _ = first.child.wait();
    let mut second = serve(dir.path(), &["--no-ai"]);
    let (_ws2, sync) = join(second.addr, "snapped", "vb").await;
    assert_eq!(sync["url"], url.as_str());
    assert_eq!(sync["snapshotSeq"].as_u64(), Some(seqs[1].1));
    let payloads: Vec<_> = sync["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m[2].clone())
        .collect();
    assert_eq!(payloads, vec![json!("m2"), json!("m3")]);
    let _ = second.child.kill();
    let _ = second.child.wait();
}
