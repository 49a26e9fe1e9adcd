//! Attacks on the AI gateway of the real `synq serve`, in front of a scripted upstream
//! (`synq_ai::testing::FakeUpstream`): each test runs an attack that worked before and
//! asserts that it now fails. Prompt tokens count against the budget; one address cannot
//! use up another's budget; calls need an AI capability of a live session (or the
//! operator's --ai-allow-anonymous); host names outside the allowlist are refused (DNS
//! rebinding); upstream errors are logged, not handed to the caller.

// Not model code: a test of the synq binary, which measures and waits on wall-clock time
// (clippy.toml's determinism rules are for model code).
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

mod common;

use common::{Serve, Ws, serve_with};
use futures_util::SinkExt;
use serde_json::{Value, json};
use synq_ai::testing::{FakeUpstream, Reply, within};
use tokio_tungstenite::tungstenite::Message;

const PATIENCE: Duration = Duration::from_secs(20);

/// `synq serve` in front of `up`, stderr kept (see `Serve::stderr_containing`).
fn serve(up: &FakeUpstream, extra: &[&str]) -> (Serve, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut args = vec!["--ai-url", &up.base_url, "--ai-model", "server-model"];
    args.extend_from_slice(extra);
    let s = serve_with(dir.path(), &args, &[("SYNQ_AI_KEY", "sk-operator")]);
    (s, dir)
}

fn url(s: &Serve, path: &str) -> String {
    format!("{}{path}", s.base)
}

fn body(prompt: &str) -> Value {
    json!({"messages": [{"role": "user", "content": prompt}], "max_tokens": 16})
}

/// POSTs `body` from the loopback address `from` (Linux answers on all of 127/8).
async fn post_from(
    from: &str,
    url: &str,
    body: &Value,
    headers: &[(&str, &str)],
) -> reqwest::Response {
    let client = reqwest::Client::builder()
        .local_address(from.parse::<std::net::IpAddr>().expect("ip"))
        .build()
        .expect("client");
    let mut req = client.post(url).json(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    within(req.send()).await.expect("request")
}

async fn post(url: &str, body: &Value, headers: &[(&str, &str)]) -> reqwest::Response {
    post_from("127.0.0.1", url, body, headers).await
}

/// (status, error code, error message) of a refused request.
async fn refusal(resp: reqwest::Response) -> (u16, String, String) {
    let status = resp.status().as_u16();
    let text = within(resp.text()).await.expect("body");
    let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    let s = |p: &str| {
        v.pointer(p)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned()
    };
    (status, s("/error/code"), s("/error/message"))
}

/// Joins `session` (a synq session id) as a participant with a valid identity, and
/// returns the socket, the AI capability the reflector handed over, and its expiry.
async fn participant(addr: SocketAddr, session: &str) -> (Ws, String, u64) {
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/reflector/{session}"))
        .await
        .expect("connect");
    let proof = format!("proof-of-{session}");
    let id = synq_protocol::identity::view_id_for_proof(&proof);
    let join = json!({"id": session, "action": "JOIN", "args": {"name": "x/y", "apiKey": "none", "version": 1,
        "user": {"id": id, "data": "sealed", "proof": proof, "room": "room-key"}, "ticks": {"tick": 30000}}});
    ws.send(Message::text(join.to_string()))
        .await
        .expect("send JOIN");
    loop {
        let f = common::next_json(&mut ws, PATIENCE).await;
        if f["action"] == "AICAP" {
            let token = f["args"]["token"].as_str().expect("token").to_owned();
            let expires = f["args"]["expires"].as_u64().expect("expires");
            return (ws, token, expires);
        }
        assert_ne!(
            f["action"], "SYNC",
            "SYNC came without an AI capability before it"
        );
    }
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_without_a_capability_is_refused_unless_the_operator_allows_anonymous_calls() {
    let up = FakeUpstream::start().await;
    let (s, _d) = serve(&up, &[]);
    let api = url(&s, "/ai/v1/chat/completions");
    let (status, code, msg) = refusal(post(&api, &body("hi"), &[]).await).await;
    assert_eq!(
        (status, code.as_str()),
        (401, "ai_capability_missing"),
        "{msg}"
    );
    assert!(msg.contains("operator can allow anonymous calls"), "{msg}");
    assert!(
        !msg.contains("--"),
        "no command-line flags for callers: {msg}"
    );
    // The old per-session header buys nothing.
    let with_header = post(&api, &body("hi"), &[("x-synq-session", "synq2-x")]).await;
    assert_eq!(with_header.status(), 401);
    let seed = post(
        &url(&s, "/ai"),
        &json!({"run": {"options": body("hi")}}),
        &[],
    )
    .await;
    assert_eq!(seed.status(), 401);
    assert_eq!(up.request_count(), 0, "nothing reached the upstream");

    // A participant of a live session gets through.
    let (_ws, token, _) = participant(s.addr, "synq2-anon-test").await;
    let ok = post(&api, &body("hi"), &[("authorization", &bearer(&token))]).await;
    assert_eq!(ok.status(), 200);
    assert_eq!(up.request_count(), 1);
    // The operator's key, never the caller's token, goes upstream.
    assert_eq!(up.last_headers()["authorization"], "Bearer sk-operator");

    let (open, _d2) = serve(&up, &["--ai-allow-anonymous"]);
    let ok = post(&url(&open, "/ai/v1/chat/completions"), &body("hi"), &[]).await;
    assert_eq!(ok.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_foreign_expired_and_dead_session_capabilities_are_refused() {
    let up = FakeUpstream::start().await;
    let (s, _d) = serve(&up, &["--ai-capability-ttl", "1"]);
    let api = url(&s, "/ai/v1/chat/completions");
    let (ws, token, expires) = participant(s.addr, "synq2-forge-test").await;

    // Forged: the token's last character changed, and one made up from scratch.
    let mut tampered = token.clone();
    let last = tampered.pop().expect("non-empty");
    tampered.push(if last == 'A' { 'B' } else { 'A' });
    for forged in [tampered.as_str(), "c3lucTEtZm9yZ2UtdGVzdA", "x"] {
        let (status, code, _) =
            refusal(post(&api, &body("hi"), &[("authorization", &bearer(forged))]).await).await;
        assert_eq!(
            (status, code.as_str()),
            (401, "ai_capability_invalid"),
            "{forged}"
        );
    }
    // A capability of another server (another secret) for the same session name.
    let (other, _d2) = serve(&up, &[]);
    let (_ws2, foreign, _) = participant(other.addr, "synq2-forge-test").await;
    let (status, code, _) =
        refusal(post(&api, &body("hi"), &[("authorization", &bearer(&foreign))]).await).await;
    assert_eq!((status, code.as_str()), (401, "ai_capability_invalid"));

    // Expired: wait until the server's expiry time has passed.
    loop {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_secs();
        if now > expires {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, code, msg) =
        refusal(post(&api, &body("hi"), &[("authorization", &bearer(&token))]).await).await;
    assert_eq!(
        (status, code.as_str()),
        (401, "ai_capability_expired"),
        "{msg}"
    );
    assert_eq!(up.request_count(), 0);

    // A valid capability whose session is no longer live: its last participant left
    // and the session closed.
    let (mut s2, _d3) = serve(&up, &[]);
    let api = url(&s2, "/ai/v1/chat/completions");
    let (ws2, token, _) = participant(s2.addr, "synq2-dead-test").await;
    let live = post(&api, &body("hi"), &[("authorization", &bearer(&token))]).await;
    assert_eq!(live.status(), 200);
    drop(ws2);
    s2.stderr_containing("session closed (idle)");
    let (status, code, _) =
        refusal(post(&api, &body("hi"), &[("authorization", &bearer(&token))]).await).await;
    assert_eq!((status, code.as_str()), (401, "session_not_live"));
    assert_eq!(up.request_count(), 1);
    drop(ws);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_session_limit_keys_on_the_capabilitys_session_not_on_a_header() {
    let up = FakeUpstream::start().await;
    let (s, _d) = serve(
        &up,
        &[
            "--ai-rate-per-minute",
            "0",
            "--ai-session-rate-per-minute",
            "2",
        ],
    );
    let api = url(&s, "/ai");
    let seed = json!({"run": {"options": body("hi")}});
    let (_a, token_a, _) = participant(s.addr, "synq2-room-a").await;
    let (_b, token_b, _) = participant(s.addr, "synq2-room-b").await;
    let auth_a = bearer(&token_a);
    for _ in 0..2 {
        assert_eq!(
            post(&api, &seed, &[("authorization", &auth_a)])
                .await
                .status(),
            200
        );
    }
    // A fresh session name in the header used to give a fresh limit.
    let (status, _, msg) = refusal(
        post(
            &api,
            &seed,
            &[("authorization", &auth_a), ("x-synq-session", "fresh")],
        )
        .await,
    )
    .await;
    assert_eq!(status, 429);
    assert!(msg.contains("session"), "{msg}");
    let other = post(&api, &seed, &[("authorization", &bearer(&token_b))]).await;
    assert_eq!(other.status(), 200, "another session has its own limit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prompt_tokens_count_against_the_daily_budget() {
    let up = FakeUpstream::start().await;
    // About 10,000 prompt tokens per request (4 characters a token) against 25,000 a day.
    let (s, _d) = serve(
        &up,
        &[
            "--ai-allow-anonymous",
            "--ai-daily-token-budget",
            "25000",
            "--ai-address-daily-token-budget",
            "0",
        ],
    );
    let api = url(&s, "/ai/v1/chat/completions");
    let big = body(&"word ".repeat(8_000));
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let (status, _, msg) = refusal(post(&api, &big, &[]).await).await;
        if status == 429 {
            assert!(msg.contains("budget"), "{msg}");
        }
        statuses.push(status);
    }
    assert_eq!(statuses, [200, 200, 429, 429, 429]);
    assert_eq!(
        up.request_count(),
        2,
        "the third big prompt never reached the upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstreams_own_token_count_replaces_the_estimate() {
    let up = FakeUpstream::start().await;
    // The upstream says the short prompt cost 5,000 tokens (a long system prompt of its
    // own, another tokenizer): the budget follows it.
    up.report_usage(5_000);
    let (s, _d) = serve(
        &up,
        &["--ai-allow-anonymous", "--ai-daily-token-budget", "1000"],
    );
    let api = url(&s, "/ai/v1/chat/completions");
    assert_eq!(post(&api, &body("hi"), &[]).await.status(), 200);
    let (status, _, msg) = refusal(post(&api, &body("hi"), &[]).await).await;
    assert_eq!(status, 429, "{msg}");
    assert!(msg.contains("used up"), "{msg}");
    assert_eq!(up.request_count(), 1);
    assert_eq!(
        up.requests()[0]["stream_options"]["include_usage"],
        true,
        "the gateway asks for the count"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_over_its_budget_does_not_stop_another() {
    let up = FakeUpstream::start().await;
    let (s, _d) = serve(
        &up,
        &[
            "--ai-allow-anonymous",
            "--ai-address-daily-token-budget",
            "400",
        ],
    );
    let api = url(&s, "/ai/v1/chat/completions");
    // ~250 tokens each: the second from the same address does not fit.
    let prompt = body(&"word ".repeat(200));
    assert_eq!(
        post_from("127.0.0.1", &api, &prompt, &[]).await.status(),
        200
    );
    let (status, _, msg) = refusal(post_from("127.0.0.1", &api, &prompt, &[]).await).await;
    assert_eq!(status, 429, "{msg}");
    assert!(msg.contains("your address"), "{msg}");
    let other = post_from("127.0.0.2", &api, &prompt, &[]).await;
    assert_eq!(other.status(), 200, "another address still has the AI");
    assert_eq!(up.request_count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_name_outside_the_allowlist_is_refused() {
    let up = FakeUpstream::start().await;
    // The flag's older name (now --allowed-host, for the reflector as well) still works.
    let (s, _d) = serve(
        &up,
        &[
            "--ai-allow-anonymous",
            "--ai-allowed-host",
            "chat.example.org",
        ],
    );
    let api = url(&s, "/ai/v1/chat/completions");
    let port = s.addr.port();
    // DNS rebinding: a page at http://evil.example:PORT whose name now resolves to this
    // server. Its requests are same-origin for the browser: Origin and Host agree.
    let evil = format!("evil.example:{port}");
    let evil_origin = format!("http://{evil}");
    for headers in [
        vec![("host", evil.as_str()), ("origin", evil_origin.as_str())],
        vec![("host", evil.as_str())],
    ] {
        let (status, code, msg) = refusal(post(&api, &body("hi"), &headers).await).await;
        assert_eq!((status, code.as_str()), (403, "host_not_allowed"), "{msg}");
        assert!(msg.contains("operator can allow"), "{msg}");
    }
    assert_eq!(up.request_count(), 0);
    // The operator's domain, localhost and IP addresses are served.
    let own = format!("chat.example.org:{port}");
    let own_origin = format!("https://{own}");
    let allowed = post(
        &api,
        &body("hi"),
        &[("host", own.as_str()), ("origin", own_origin.as_str())],
    )
    .await;
    assert_eq!(allowed.status(), 200);
    let local = format!("localhost:{port}");
    assert_eq!(
        post(&api, &body("hi"), &[("host", local.as_str())])
            .await
            .status(),
        200
    );
    assert_eq!(post(&api, &body("hi"), &[]).await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_error_body_is_logged_but_not_handed_to_the_caller() {
    let up = FakeUpstream::start().await;
    let secret = "backend http://10.1.2.3:9000/internal/v1 refused: tenant acme-corp";
    up.script([
        Reply::status(400, secret),
        Reply::raw(
            200,
            "text/event-stream",
            &format!(
                "data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"par\"}}}}]}}\n\ndata: {{\"error\":{{\"message\":\"{secret}\"}}}}\n\n"
            ),
        ),
    ]);
    let (mut s, _d) = serve(&up, &["--ai-allow-anonymous"]);
    let api = url(&s, "/ai/v1/chat/completions");
    let resp = post(&api, &body("hi"), &[]).await;
    assert_eq!(resp.status(), 502);
    let text = within(resp.text()).await.expect("body");
    for leak in [
        "10.1.2.3",
        "acme-corp",
        &up.base_url,
        &up.addr.port().to_string(),
    ] {
        assert!(!text.contains(leak), "{leak:?} reached the caller: {text}");
    }
    assert!(text.contains("try again later"), "{text}");
    let logged = s.stderr_containing("AI backend failed");
    assert!(
        logged.contains("10.1.2.3"),
        "the operator sees why: {logged}"
    );

    // The same error in the middle of a streamed answer.
    let mut streamed = body("hi");
    streamed["stream"] = json!(true);
    let resp = post(&api, &streamed, &[]).await;
    assert_eq!(resp.status(), 200);
    let text = within(resp.text()).await.expect("body");
    assert!(text.contains("par"), "{text}");
    assert!(
        !text.contains("10.1.2.3") && !text.contains("acme-corp"),
        "{text}"
    );
    assert!(text.contains("try again later"), "{text}");
    let logged = s.stderr_containing("AI backend failed");
    assert!(logged.contains("acme-corp"), "{logged}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_participants_of_synq_sessions_get_a_capability() {
    let up = FakeUpstream::start().await;
    let (s, _d) = serve(&up, &[]);
    // A Croquet session. (A synq session refuses a JOIN without a user, or without the
    // room key: see attacks.rs.)
    let session = "croquet-app-session";
    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("ws://{}/reflector/{session}", s.addr))
            .await
            .expect("connect");
    let join = json!({"id": session, "action": "JOIN", "args": {"name": "x/y", "apiKey": "none",
        "version": 1, "ticks": {"tick": 30000}, "user": "alice"}});
    ws.send(Message::text(join.to_string()))
        .await
        .expect("send JOIN");
    loop {
        let f = common::next_json(&mut ws, PATIENCE).await;
        assert_ne!(f["action"], "AICAP", "{session}");
        if f["action"] == "SYNC" {
            break;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_whose_capability_expired_rejoins_and_the_next_question_is_answered() {
    use std::sync::Arc;
    use synq_ai::openai::{OpenAiBackend, OpenAiConfig};
    use synq_chat::native::{AiService, Participant};
    use synq_chat::{AiState, EntryKind};

    let up = FakeUpstream::start().await;
    let (s, _d) = serve(&up, &["--ai-capability-ttl", "3"]);
    let mut cfg = OpenAiConfig::new(format!("{}/ai/v1", s.base), "any");
    cfg.max_retries = 0;
    let service = Arc::new(AiService(Arc::new(
        OpenAiBackend::new(cfg).expect("backend"),
    )));
    let mut config =
        synq_client::ClientConfig::for_server(&s.base, "synq.chat.test", "expiry", "pw");
    config.kdf_rounds = 1000;
    let mut p = within(Participant::join(config, "Ann", Some(service)))
        .await
        .expect("join");
    within(p.until(|m| m.elected().is_some()))
        .await
        .expect("elected");
    // Stay connected past the capability's lifetime.
    tokio::time::sleep(Duration::from_secs(4)).await;
    p.post("first").expect("post");
    within(p.until(|m| {
        m.history().any(|e| {
            matches!(&e.kind, EntryKind::Notice { text } if text.starts_with("AI could not answer"))
        })
    }))
    .await
    .expect("a notice for the refused call");
    assert_eq!(up.request_count(), 0);
    // It rejoined and holds a new capability: the next question is answered.
    p.post("second").expect("post");
    within(p.until(|m| {
        m.history().any(|e| {
            matches!(&e.kind, EntryKind::Ai { text, state: AiState::Done, .. } if text == "Hello world")
        })
    }))
    .await
    .expect("the second answer");
    assert_eq!(up.request_count(), 1);
}
