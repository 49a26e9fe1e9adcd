//! The reflector protocol, observed from raw WebSocket clients against a real server.

mod common;

use common::{Client, Ended, start};
use serde_json::json;
use synq_protocol::INITIAL_SEQ;

#[tokio::test]
async fn first_join_gets_a_fresh_sync_then_its_own_join_announcement() {
    let server = start(|_| {}).await;
    let mut a = Client::connect(&server, "s1").await;
    let sync = a
        .join_with(Client::join_args(
            json!({"id": "va", "data": "ENCRYPTED"}),
            1000.0,
        ))
        .await;
    assert_eq!(sync.id.as_deref(), Some("s1"));
    assert_eq!(sync.args["url"], "");
    assert_eq!(sync.args["seq"], INITIAL_SEQ);
    assert_eq!(sync.args["messages"], json!([]));
    assert_eq!(sync.args["tove"], "TOVE");
    assert!(
        sync.args["timeline"]
            .as_str()
            .is_some_and(|t| !t.is_empty())
    );
    let m = a.recv().await;
    assert_eq!(
        m.seq,
        INITIAL_SEQ.wrapping_add(1),
        "the first message of a session is 0xFFFFFFF1"
    );
    assert_eq!(m.payload["what"], "users");
    assert_eq!(m.payload["active"], 1);
    assert_eq!(m.payload["total"], 1);
    assert_eq!(
        m.payload["joined"],
        json!([{"id": "va", "data": "ENCRYPTED"}]),
        "viewData travels verbatim"
    );
}

#[tokio::test]
async fn every_client_sees_the_same_ordered_stream_with_monotonic_times() {
    let server = start(|c| c.client_rate_limit = 0).await;
    let mut clients = Vec::new();
    for i in 0..3 {
        let mut c = Client::connect(&server, "order").await;
        c.join(&format!("v{i}")).await;
        clients.push(c);
    }
    // Everyone knows everyone before the concurrent sends start.
    for c in &mut clients {
        while c.users().await["active"] != 3 {}
    }
    const N: usize = 40;
    let mut tasks = Vec::new();
    for (i, mut c) in clients.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            for k in 0..N {
                c.send_msg(&format!("c{i}-m{k}")).await;
            }
            let mut seen = Vec::new();
            while seen.len() < 3 * N {
                let m = c.recv().await;
                if m.payload.is_string() {
                    seen.push((
                        m.seq,
                        m.time,
                        m.payload.as_str().unwrap_or_default().to_owned(),
                    ));
                }
            }
            seen
        }));
    }
    let mut streams = Vec::new();
    for t in tasks {
        streams.push(t.await.expect("client task"));
    }
    for s in &streams {
        assert_eq!(s, &streams[0], "all clients see one order");
        for w in s.windows(2) {
            assert_eq!(
                w[1].0,
                w[0].0.wrapping_add(1),
                "sequence numbers are consecutive"
            );
            assert!(w[1].1 >= w[0].1, "session time never decreases");
        }
    }
    // Each sender's own messages keep their order.
    for i in 0..3 {
        let mine: Vec<_> = streams[0]
            .iter()
            .filter(|m| m.2.starts_with(&format!("c{i}-")))
            .map(|m| m.2.clone())
            .collect();
        let expected: Vec<_> = (0..N).map(|k| format!("c{i}-m{k}")).collect();
        assert_eq!(mine, expected);
    }
}

#[tokio::test]
async fn a_late_joiner_gets_past_messages_in_sync_and_then_the_stream_without_a_gap() {
    let server = start(|_| {}).await;
    let mut a = Client::connect(&server, "late").await;
    a.join("va").await;
    a.users().await;
    for k in 0..5 {
        a.send_msg(&format!("m{k}")).await;
    }
    let mut last = 0;
    for _ in 0..5 {
        last = a.recv().await.seq;
    }
    let mut b = Client::connect(&server, "late").await;
    let sync = b.join("vb").await;
    assert_eq!(sync.args["seq"], last);
    let msgs = sync.sync_messages();
    assert_eq!(msgs.len(), 6, "users + 5 messages are replayed");
    assert_eq!(msgs.last().map(|m| m.seq), Some(last));
    a.send_msg("after").await;
    let first = b.recv().await;
    assert_eq!(
        first.seq,
        last.wrapping_add(1),
        "no gap and no duplicate after SYNC"
    );
}

#[tokio::test]
async fn sessions_are_isolated() {
    let server = start(|_| {}).await;
    let mut a = Client::connect(&server, "room-a").await;
    let mut b = Client::connect(&server, "room-b").await;
    a.join("va").await;
    b.join("vb").await;
    a.users().await;
    b.users().await;
    a.send_msg("for-a").await;
    b.send_msg("for-b").await;
    assert_eq!(a.recv().await.payload, "for-a");
    assert_eq!(b.recv().await.payload, "for-b");
    let late = Client::connect(&server, "room-b").await.join("vc").await;
    let payloads: Vec<_> = late
        .sync_messages()
        .into_iter()
        .map(|m| m.payload)
        .collect();
    assert!(payloads.contains(&json!("for-b")));
    assert!(!payloads.contains(&json!("for-a")));
}

#[tokio::test]
async fn joins_and_leaves_are_announced_with_view_data() {
    let server = start(|_| {}).await;
    let mut a = Client::connect(&server, "users").await;
    a.join_with(Client::join_args(json!({"id": "va", "data": "A"}), 1000.0))
        .await;
    a.users().await;
    let mut b = Client::connect(&server, "users").await;
    b.join_with(Client::join_args(json!({"id": "vb", "data": "B"}), 1000.0))
        .await;
    let u = a.users().await;
    assert_eq!(u["active"], 2);
    assert_eq!(u["joined"], json!([{"id": "vb", "data": "B"}]));
    b.close().await;
    let u = a.users().await;
    assert_eq!(u["active"], 1);
    assert_eq!(u["total"], 1);
    assert_eq!(u["left"], json!([{"id": "vb", "data": "B"}]));
    assert!(u.get("joined").is_none());
}

#[tokio::test]
async fn a_view_that_reconnects_gets_a_sync_on_the_same_timeline_and_its_old_connection_leaves() {
    let server = start(|_| {}).await;
    let mut a = Client::connect(&server, "rejoin").await;
    a.join("va").await;
    a.users().await;
    let mut b = Client::connect(&server, "rejoin").await;
    let first = b.join("vb").await;
    assert_eq!(a.users().await["active"], 2);
    a.send_msg("before-drop").await;
    b.recv().await;
    // The connection drops without a close handshake; the view comes back at once.
    drop(b);
    let mut b2 = Client::connect(&server, "rejoin").await;
    let again = b2.join("vb").await;
    assert_eq!(
        again.args["timeline"], first.args["timeline"],
        "same session incarnation: seamless rejoin possible"
    );
    assert!(
        again
            .sync_messages()
            .iter()
            .any(|m| m.payload == "before-drop")
    );
    // Croquet semantics: the new connection is announced, the old one leaves after leaveDelay;
    // the view's count of connections goes 2 → 1 and it never disappears.
    let mut active = Vec::new();
    while active.last() != Some(&2) || active.len() < 2 {
        active.push(a.users().await["active"].as_u64().unwrap_or(0));
    }
    assert!(
        active.iter().all(|n| *n >= 2),
        "vb never left the session: {active:?}"
    );
    a.send_msg("after-rejoin").await;
    assert_eq!(b2.recv_client().await.payload, "after-rejoin");
}

#[tokio::test]
async fn ticks_follow_the_session_rate_and_never_go_back_in_time() {
    let server = start(|_| {}).await;
    let mut a = Client::connect(&server, "ticks").await;
    a.join_with(Client::join_args(json!("va"), 20.0)).await;
    let mut last = 0.0;
    let mut ticks = 0;
    let mut sent = false;
    while ticks < 10 {
        let f = a.frame().await;
        let t = if let Some(t) = f.tick_time() {
            ticks += 1;
            t
        } else if let Some(m) = f.message() {
            m.time
        } else {
            continue;
        };
        assert!(t >= last, "time went back from {last} to {t}");
        last = t;
        if ticks == 5 && !sent {
            sent = true;
            a.send_msg("between-ticks").await;
        }
    }
}

#[tokio::test]
async fn a_session_created_with_tick_zero_gets_no_idle_ticks() {
    let server = start(|_| {}).await;
    let mut quiet = Client::connect(&server, "no-ticks").await;
    quiet.join_with(Client::join_args(json!("vq"), 0.0)).await;
    quiet.users().await;
    let mut busy = Client::connect(&server, "with-ticks").await;
    busy.join_with(Client::join_args(json!("vb"), 10.0)).await;
    let mut ticks = 0;
    while ticks < 10 {
        if busy.frame().await.tick_time().is_some() {
            ticks += 1;
        }
    }
    // In the time the other session got 10 ticks, this one got none.
    quiet
        .send_json(json!({"action": "PING", "args": "marker"}))
        .await;
    let f = quiet.frame().await;
    assert_eq!(
        f.action, "PONG",
        "expected no TICK before the PONG, got {f:?}"
    );
}

#[tokio::test]
async fn ping_is_answered_with_pong_without_id_even_before_join() {
    let server = start(|_| {}).await;
    let mut a = Client::connect(&server, "ping").await;
    a.send_json(json!({"action": "PING", "args": {"t": 1}}))
        .await;
    let f = a.frame().await;
    assert_eq!(f.action, "PONG");
    assert_eq!(f.id, None);
    assert_eq!(f.args, json!({"t": 1}));
}

#[tokio::test]
async fn tutti_broadcasts_the_first_message_once_and_the_tally_of_differing_votes() {
    let server = start(|_| {}).await;
    let mut a = Client::connect(&server, "tutti").await;
    let mut b = Client::connect(&server, "tutti").await;
    a.join("va").await;
    b.join("vb").await;
    while a.users().await["active"] != 2 {}
    while b.users().await["active"] != 2 {}
    let vote = |payload: &str| json!({"id": "tutti", "action": "TUTTI", "args": [100, 0, payload, [100, 0, "FIRST"], false, ["handleSnapshotVote"], "snapshot@100"]});
    a.send_json(vote("{\"hash\":\"x\"}")).await;
    b.send_json(vote("{\"hash\":\"y\"}")).await;
    let first = a.recv().await;
    assert_eq!(first.payload, "FIRST");
    let tally = a.recv().await;
    assert_eq!(
        tally.what(),
        Some("tally"),
        "the first message is broadcast only once, then the tally"
    );
    assert_eq!(
        tally.payload["tally"],
        json!({"{\"hash\":\"x\"}": 1, "{\"hash\":\"y\"}": 1})
    );
    assert_eq!(tally.payload["tuttiKey"], "snapshot@100");
    assert_eq!(tally.payload["tallyTarget"], json!(["handleSnapshotVote"]));
    assert_eq!(tally.payload["missingClients"], 0);
    assert_eq!(tally.seq, first.seq.wrapping_add(1));
    // A late vote for a completed tally changes nothing.
    a.send_json(vote("{\"hash\":\"z\"}")).await;
    a.send_msg("marker").await;
    assert_eq!(a.recv().await.payload, "marker");
}

#[tokio::test]
async fn agreeing_votes_without_wants_vote_produce_no_tally() {
    let server = start(|_| {}).await;
    let mut a = Client::connect(&server, "agree").await;
    a.join("va").await;
    a.users().await;
    a.send_json(json!({"id": "agree", "action": "TUTTI", "args": [50, 0, "same", null, false, null, "t@50"]})).await;
    a.send_msg("marker").await;
    assert_eq!(a.recv().await.payload, "marker");
}

#[tokio::test]
async fn a_snapshot_trims_the_replay_for_late_joiners() {
    let server = start(|_| {}).await;
    let mut a = Client::connect(&server, "snap").await;
    a.join("va").await;
    a.users().await;
    let mut seqs = Vec::new();
    for k in 0..6 {
        a.send_msg(&format!("m{k}")).await;
        seqs.push(a.recv().await);
    }
    let at = &seqs[3];
    let url = format!("http://{}/files/snapshots/snap/snap1.snap", server.addr);
    a.send_json(json!({"id": "snap", "action": "SNAP", "args": {"time": at.time, "seq": at.seq, "hash": "h", "url": url, "dissident": null}})).await;
    // A dissident snapshot never replaces the consensus one.
    a.send_json(json!({"id": "snap", "action": "SNAP", "args": {"time": seqs[5].time + 1.0, "seq": seqs[5].seq, "hash": "bad", "url": "http://x/files/bad", "dissident": {"groupVotes": 1}}})).await;
    a.send_json(json!({"action": "PING"})).await;
    a.expect_action("PONG").await;
    let sync = Client::connect(&server, "snap").await.join("vb").await;
    assert_eq!(sync.args["url"], url.as_str());
    assert_eq!(sync.args["snapshotSeq"], at.seq);
    let payloads: Vec<_> = sync
        .sync_messages()
        .into_iter()
        .map(|m| m.payload)
        .collect();
    assert_eq!(payloads, vec![json!("m4"), json!("m5")]);
}

#[tokio::test]
async fn debounced_messages_with_the_same_id_are_dropped() {
    let server = start(|_| {}).await;
    let mut a = Client::connect(&server, "debounce").await;
    a.join("va").await;
    a.users().await;
    let poll = json!({"id": "debounce", "action": "SEND", "args": [0, 0, "poll", 0], "tags": {"debounce": 60000, "msgID": "pollForSnapshot"}});
    a.send_json(poll.clone()).await;
    a.send_json(poll).await;
    a.send_msg("marker").await;
    assert_eq!(a.recv().await.payload, "poll");
    assert_eq!(
        a.recv().await.payload,
        "marker",
        "the second poll within the debounce window is dropped"
    );
}

#[tokio::test]
async fn the_message_cap_requests_a_snapshot_then_refuses_with_a_clear_info() {
    let server = start(|c| {
        c.snapshot_request_at = 3;
        c.max_messages = 6;
    })
    .await;
    let mut a = Client::connect(&server, "cap").await;
    a.join("va").await;
    a.users().await; // message 1 retained
    for k in 0..6 {
        a.send_msg(&format!("m{k}")).await;
    }
    let mut requ = false;
    let mut info = None;
    let mut delivered = Vec::new();
    // INFO goes to each connection directly and may overtake the REQU on the stream.
    while info.is_none() || !requ {
        let f = a.frame().await;
        match f.action.as_str() {
            "REQU" => requ = true,
            "INFO"
                if f.args["msg"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("Cannot buffer")) =>
            {
                info = Some(f.args)
            }
            "RECV" => delivered.push(f.message().map(|m| m.payload)),
            _ => {}
        }
    }
    assert!(
        requ,
        "REQU sent once the session held snapshot_request_at messages"
    );
    let info = info.unwrap_or_default();
    assert_eq!(info["code"], "SNAPSHOT_NEEDED");
    assert!(
        info["msg"]
            .as_str()
            .is_some_and(|m| m.contains("Need snapshot"))
    );
    assert_eq!(
        delivered.len(),
        5,
        "users + 5 messages fill the buffer of 6; the 6th is refused"
    );
    // A snapshot frees the buffer and messages flow again.
    let url = format!("http://{}/files/snapshots/cap/s.snap", server.addr);
    a.send_json(json!({"id": "cap", "action": "SNAP", "args": {"time": 1, "seq": INITIAL_SEQ.wrapping_add(6), "hash": "h", "url": url, "dissident": null}})).await;
    a.send_msg("flows-again").await;
    loop {
        if let Some(m) = a.frame().await.message() {
            assert_eq!(m.payload, "flows-again");
            break;
        }
    }
}

#[tokio::test]
async fn time_and_seq_supplied_by_clients_are_replaced_and_extra_elements_kept() {
    let server = start(|_| {}).await;
    let mut a = Client::connect(&server, "stamp").await;
    a.join("va").await;
    a.users().await;
    a.send_json(json!({"id": "stamp", "action": "SEND", "args": [999999, 12345, "p", 7, "extra"]}))
        .await;
    let m = a.recv().await;
    assert!(m.time < 999999.0);
    assert_ne!(m.seq, 12345);
    assert_eq!(m.rest, vec![json!(7), json!("extra")]);
}

#[tokio::test]
async fn a_connection_without_user_gets_sync_but_no_stream() {
    let server = start(|_| {}).await;
    let mut a = Client::connect(&server, "nouser").await;
    a.join("va").await;
    a.users().await;
    let mut observer = Client::connect(&server, "nouser").await;
    let mut args = Client::join_args(json!(null), 10.0);
    args.as_object_mut().map(|o| o.remove("user"));
    observer.join_with(args).await;
    a.send_msg("not-for-observer").await;
    a.recv().await;
    observer
        .send_json(json!({"action": "PING", "args": 1}))
        .await;
    assert_eq!(
        observer.frame().await.action,
        "PONG",
        "no RECV or TICK reaches an inactive connection"
    );
}

#[tokio::test]
async fn the_files_endpoint_stores_and_serves_with_cors() {
    let server = start(|c| c.max_file_bytes = 1000).await;
    // Uploads go to sessions the reflector holds.
    let mut a = Client::connect(&server, "sid").await;
    a.join("va").await;
    let path = "/files/snapshots/sid/0000007244_4294967284-abc.snap";
    let (status, head, _) = common::http(
        server.addr,
        "PUT",
        path,
        &[("Content-Type", "application/octet-stream")],
        b"CRQ1data",
    )
    .await;
    assert_eq!(status, 201);
    assert!(
        head.to_ascii_lowercase()
            .contains("access-control-allow-origin: *")
    );
    let (status, _, body) = common::http(server.addr, "GET", path, &[], b"").await;
    assert_eq!(status, 200);
    assert_eq!(body, b"CRQ1data");
    let (status, head, _) = common::http(
        server.addr,
        "OPTIONS",
        path,
        &[
            ("Origin", "http://other.example"),
            ("Access-Control-Request-Method", "PUT"),
        ],
        b"",
    )
    .await;
    assert!(
        status == 204 || status == 200,
        "preflight answered: {status}"
    );
    assert!(
        head.to_ascii_lowercase()
            .contains("access-control-allow-methods: get, put, options")
    );
    let (status, _, _) = common::http(server.addr, "GET", "/files/snapshots/none", &[], b"").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn the_files_endpoint_refuses_traversal_overwrites_and_oversized_uploads() {
    let server = start(|c| c.max_file_bytes = 1000).await;
    for bad in [
        "/files/../secret",
        "/files/a/../../x",
        "/files/a/%2e%2e/x",
        "/files/.hidden",
    ] {
        let (status, _, _) = common::http(server.addr, "PUT", bad, &[], b"x").await;
        assert!(
            status == 400 || status == 404,
            "{bad} must be refused, got {status}"
        );
    }
    assert!(!server.dir.path().join("secret").exists());
    let mut a = Client::connect(&server, "s").await;
    a.join("va").await;
    let (status, _, _) = common::http(
        server.addr,
        "PUT",
        "/files/snapshots/s/big",
        &[],
        &vec![b'x'; 2000],
    )
    .await;
    assert_eq!(status, 413);
    let once = "/files/snapshots/s/once";
    let (status, _, _) = common::http(server.addr, "PUT", once, &[], b"one").await;
    assert_eq!(status, 201);
    let (status, _, _) = common::http(server.addr, "PUT", once, &[], b"two").await;
    assert_eq!(
        status, 409,
        "a stored file is never replaced by other content"
    );
    let (_, _, body) = common::http(server.addr, "GET", once, &[], b"").await;
    assert_eq!(body, b"one");
}

#[tokio::test]
async fn health_and_metrics_report_activity() {
    let server = start(|_| {}).await;
    let mut a = Client::connect(&server, "metrics").await;
    a.join("va").await;
    a.users().await;
    a.send_msg("x").await;
    a.recv().await;
    let (status, _, body) = common::http(server.addr, "GET", "/healthz", &[], b"").await;
    assert_eq!(status, 200);
    assert_eq!(body, b"ok\n");
    let (status, _, body) = common::http(server.addr, "GET", "/metrics", &[], b"").await;
    assert_eq!(status, 200);
    let text = String::from_utf8_lossy(&body);
    let value = |name: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(-1.0)
    };
    assert_eq!(value("synq_sessions"), 1.0);
    assert_eq!(value("synq_clients"), 1.0);
    assert!(value("synq_messages_broadcast_total") >= 2.0);
    assert!(value("synq_frames_out_total") >= 3.0);
    assert!(value("synq_bytes_in_total") > 0.0);
    let _ = Ended::Dropped;
}

#[tokio::test]
async fn a_sync_larger_than_a_megabyte_arrives_in_chunks_that_reassemble() {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let server = start(|_| {}).await;
    let mut a = Client::connect(&server, "chunky").await;
    a.join("va").await;
    a.users().await;
    let payload = "p".repeat(16 * 1024);
    for _ in 0..80 {
        a.send_msg(&payload).await;
    }
    for _ in 0..80 {
        a.recv_client().await;
    }
    let mut b = Client::connect(&server, "chunky").await;
    b.send_json(
        json!({"id": "chunky", "action": "JOIN", "args": Client::join_args(json!("vb"), 1000.0)}),
    )
    .await;
    let mut body = String::new();
    let mut parts = 0;
    loop {
        let m = tokio::time::timeout(common::PATIENCE, b.ws.next())
            .await
            .expect("frame in time");
        let Some(Ok(Message::Text(t))) = m else {
            panic!("unexpected {m:?}")
        };
        let t = t.as_str();
        let head = t.get(..8).unwrap_or_default();
        assert!(
            head.starts_with("_CHUNK"),
            "a 1.3 MB SYNC is sent in chunks, got {head:?}"
        );
        assert_eq!(head.as_bytes()[6] == b'1', parts == 0, "first-chunk flag");
        assert!(t.len() <= synq_protocol::CHUNK_SIZE + 8);
        body.push_str(&t[8..]);
        parts += 1;
        if head.as_bytes()[7] == b'1' {
            break;
        }
    }
    assert!(parts >= 2);
    let sync = synq_protocol::server::LooseFrame::parse(&body).expect("reassembled SYNC is JSON");
    assert_eq!(sync.action, "SYNC");
    assert_eq!(
        sync.sync_messages()
            .iter()
            .filter(|m| m.payload == json!(payload))
            .count(),
        80
    );
}
