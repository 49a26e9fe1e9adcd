//! The AI gateway of the real `synq serve` binary over HTTP, with `--ai-url` pointing at a
//! scripted OpenAI-compatible server (`synq_ai::testing::FakeUpstream`): both body shapes,
//! streaming, and the guards. These tests call it like curl, so the server runs with
//! `--ai-allow-anonymous`; the AI capabilities and the attacks are in ai_abuse.rs.

// Not model code: a test of the synq binary, which measures and waits on wall-clock time
// (clippy.toml's determinism rules are for model code).
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Value, json};
use synq_ai::testing::{FakeUpstream, Reply, within};

struct Serve {
    child: Child,
    addr: SocketAddr,
    /// stderr lines, read by a thread.
    stderr: mpsc::Receiver<String>,
    _data_dir: tempfile::TempDir,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Serve {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Waits for a stderr line containing `needle`.
    fn stderr_line(&self, needle: &str) -> String {
        loop {
            match self.stderr.recv_timeout(Duration::from_secs(10)) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => continue,
                Err(e) => panic!("no stderr line with {needle:?}: {e}"),
            }
        }
    }
}

/// Starts `synq serve` on a free port with a fresh data dir and these extra flags.
fn serve(extra: &[&str]) -> Serve {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = Command::new(env!("CARGO_BIN_EXE_synq"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .args(extra)
        .env_remove("SYNQ_AI_URL")
        .env_remove("SYNQ_AI_MODEL")
        .env_remove("SYNQ_AI_MODEL_PATH")
        .env("SYNQ_AI_KEY", "sk-from-env")
        // Without --ai-url the embedded model is the default: never download it in tests.
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_HOME", dir.path().join("hf"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start synq serve");
    let stdout = child.stdout.take().expect("stdout");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read listening line");
    let addr = line
        .trim()
        .strip_prefix("synq: listening on http://")
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("unexpected first line from synq serve: {line:?}"));
    Serve {
        child,
        addr,
        stderr: rx,
        _data_dir: dir,
    }
}

/// `synq serve` in front of `up`, serving model "server-model" to anonymous callers, with
/// these extra flags.
fn serve_upstream(up: &FakeUpstream, extra: &[&str]) -> Serve {
    let mut args = vec![
        "--ai-url",
        &up.base_url,
        "--ai-model",
        "server-model",
        "--ai-allow-anonymous",
    ];
    args.extend_from_slice(extra);
    serve(&args)
}

fn chat_body(stream: bool) -> Value {
    json!({
        "model": "gpt-4-very-expensive",
        "stream": stream,
        "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
    })
}

async fn post(url: &str, body: &Value, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut req = reqwest::Client::new().post(url).json(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    within(req.send()).await.expect("request")
}

async fn json_of(resp: reqwest::Response) -> Value {
    within(resp.json::<Value>()).await.expect("JSON body")
}

/// The `data:` payloads of an SSE body.
fn sse_data(body: &str) -> Vec<String> {
    body.lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(|d| d.trim().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_shape_streams_chunks_then_done() {
    let up = FakeUpstream::start().await;
    up.script([Reply::text(&["Hel", "lo", " world"])]);
    let s = serve_upstream(&up, &[]);
    let resp = post(&s.url("/ai/v1/chat/completions"), &chat_body(true), &[]).await;
    assert_eq!(resp.status(), 200);
    let ctype = resp.headers()["content-type"]
        .to_str()
        .unwrap_or("")
        .to_string();
    assert!(ctype.starts_with("text/event-stream"), "{ctype}");
    let body = within(resp.text()).await.expect("body");
    let data = sse_data(&body);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{body}");
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).expect("chunk JSON"))
        .collect();
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "Hello world");
    assert!(
        chunks
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk")
    );
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(
        chunks.last().expect("chunks")["choices"][0]["finish_reason"],
        "stop"
    );
    assert_eq!(chunks[0]["model"], "server-model");
    // The key comes from the server's environment, never from the client.
    assert_eq!(up.last_headers()["authorization"], "Bearer sk-from-env");
    assert!(s.stderr_line("synq: AI:").contains("server-model"));
}

/// `synq serve --ai-url` in front of another synq server whose model is busy: the queue
/// positions it is told pass on to its own callers, in synq's extension (chunks with no
/// choices, which standard clients ignore), before the answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_positions_from_a_synq_upstream_pass_through_as_synq_chunks() {
    let up = FakeUpstream::start().await;
    up.script([Reply::queued(
        &[2, 1, 0],
        Duration::from_millis(20),
        &["Hel", "lo"],
    )]);
    let s = serve_upstream(&up, &[]);
    let resp = post(&s.url("/ai/v1/chat/completions"), &chat_body(true), &[]).await;
    assert_eq!(resp.status(), 200);
    let body = within(resp.text()).await.expect("body");
    let events: Vec<synq_openai::Event> = sse_data(&body)
        .iter()
        .map(|d| synq_openai::parse_event(d).expect("an OpenAI event"))
        .collect();
    let queue: Vec<u32> = events
        .iter()
        .filter_map(|e| match e {
            synq_openai::Event::Chunk { queue, .. } => *queue,
            _ => None,
        })
        .collect();
    assert_eq!(queue, [2, 1, 0], "{body}");
    let first_text = events
        .iter()
        .position(|e| matches!(e, synq_openai::Event::Chunk { text: Some(_), .. }));
    assert_eq!(first_text, Some(3), "the positions come first: {body}");
    for d in &sse_data(&body)[..3] {
        let v: Value = serde_json::from_str(d).expect("chunk JSON");
        assert_eq!(v["choices"], json!([]), "{d}");
        assert_eq!(v["object"], "chat.completion.chunk");
    }
    assert_eq!(events.last(), Some(&synq_openai::Event::Done));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_shape_without_stream_answers_one_completion() {
    let up = FakeUpstream::start().await;
    let s = serve_upstream(&up, &[]);
    let resp = post(&s.url("/ai/v1/chat/completions"), &chat_body(false), &[]).await;
    assert_eq!(resp.status(), 200);
    let v = json_of(resp).await;
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert_eq!(v["choices"][0]["message"]["content"], "Hello world");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");

    let models = json_of(
        within(reqwest::get(s.url("/ai/v1/models")))
            .await
            .expect("models"),
    )
    .await;
    assert_eq!(models["data"][0]["id"], "server-model");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_apps_worker_shape_is_served() {
    let up = FakeUpstream::start().await;
    let s = serve_upstream(&up, &[]);
    let body = json!({"run": {
        "model": "@cf/meta/llama-3.1-8b-instruct-fast",
        "options": {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 100},
    }});
    let resp = post(&s.url("/ai"), &body, &[]).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(json_of(resp).await, json!({"response": "Hello world"}));
    let sent = up.wait_request(1).await;
    assert_eq!(sent["model"], "server-model");
    assert_eq!(sent["max_tokens"], 100);
    assert_eq!(sent["messages"][0]["content"], "hi");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_chosen_model_is_ignored_and_max_tokens_is_clamped() {
    let up = FakeUpstream::start().await;
    let s = serve_upstream(&up, &["--ai-max-tokens", "64"]);
    let mut body = chat_body(false);
    body["max_tokens"] = json!(100_000);
    assert_eq!(
        post(&s.url("/ai/v1/chat/completions"), &body, &[])
            .await
            .status(),
        200
    );
    body["max_tokens"] = json!(10);
    assert_eq!(
        post(&s.url("/ai/v1/chat/completions"), &body, &[])
            .await
            .status(),
        200
    );
    body.as_object_mut().expect("object").remove("max_tokens");
    assert_eq!(
        post(&s.url("/ai/v1/chat/completions"), &body, &[])
            .await
            .status(),
        200
    );
    let sent = up.requests();
    assert!(
        sent.iter().all(|b| b["model"] == "server-model"),
        "{sent:?}"
    );
    let max: Vec<_> = sent.iter().map(|b| b["max_tokens"].clone()).collect();
    assert_eq!(max, [json!(64), json!(10), json!(64)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_origins_are_refused_own_localhost_and_listed_ones_allowed() {
    let up = FakeUpstream::start().await;
    let s = serve_upstream(&up, &["--ai-allowed-origin", "https://app.example.com"]);
    let url = s.url("/ai/v1/chat/completions");
    let body = chat_body(false);

    let refused = post(&url, &body, &[("origin", "https://evil.example")]).await;
    assert_eq!(refused.status(), 403);
    let msg = json_of(refused).await["error"]["message"].to_string();
    assert!(msg.contains("operator can allow"), "{msg}");
    assert!(
        !msg.contains("--ai"),
        "no command-line flags for callers: {msg}"
    );
    assert_eq!(
        up.request_count(),
        0,
        "a refused request never reaches the upstream"
    );

    let own = format!("http://{}", s.addr);
    for origin in [
        own.as_str(),
        "http://localhost:5173",
        "https://app.example.com",
    ] {
        let resp = post(&url, &body, &[("origin", origin)]).await;
        assert_eq!(resp.status(), 200, "{origin}");
        assert_eq!(resp.headers()["access-control-allow-origin"], origin);
    }
    assert_eq!(
        post(&url, &body, &[]).await.status(),
        200,
        "no Origin: not a browser page"
    );

    // A browser's CORS preflight.
    let preflight = within(
        reqwest::Client::new()
            .request(reqwest::Method::OPTIONS, &url)
            .header("origin", "http://127.0.0.1:3000")
            .header("access-control-request-method", "POST")
            .send(),
    )
    .await
    .expect("preflight");
    assert!(preflight.status().is_success());
    assert_eq!(
        preflight.headers()["access-control-allow-origin"],
        "http://127.0.0.1:3000"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_ip_rate_limit_answers_429_with_retry_after() {
    let up = FakeUpstream::start().await;
    let s = serve_upstream(&up, &["--ai-rate-per-minute", "2"]);
    let url = s.url("/ai/v1/chat/completions");
    for _ in 0..2 {
        assert_eq!(post(&url, &chat_body(false), &[]).await.status(), 200);
    }
    let limited = post(&url, &chat_body(false), &[]).await;
    assert_eq!(limited.status(), 429);
    assert!(limited.headers().contains_key("retry-after"));
    let v = json_of(limited).await;
    assert_eq!(v["error"]["code"], "rate_limit_exceeded");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("2 per minute")
    );
    assert_eq!(up.request_count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daily_token_budget_cuts_the_answer_then_refuses() {
    let up = FakeUpstream::start().await;
    // About one token per 4 characters, 4 more per message: the prompt ("be brief",
    // "hi") counts 6 + 5 tokens, then the answer 1 + 1 use up a budget of 13.
    up.script([Reply::text(&["aaaa", "bbbb", "cccc"])]);
    let s = serve_upstream(&up, &["--ai-daily-token-budget", "13"]);
    let url = s.url("/ai/v1/chat/completions");
    let v = json_of(post(&url, &chat_body(false), &[]).await).await;
    assert_eq!(v["choices"][0]["message"]["content"], "aaaabbbb");
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    let refused = post(&url, &chat_body(true), &[]).await;
    assert_eq!(refused.status(), 429);
    let msg = json_of(refused).await["error"]["message"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(
        msg.contains("daily AI budget") && msg.contains("midnight UTC"),
        "{msg}"
    );
    assert_eq!(up.request_count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_request_body_is_refused_with_413() {
    let up = FakeUpstream::start().await;
    let s = serve_upstream(&up, &["--ai-max-request-bytes", "1000"]);
    let mut body = chat_body(false);
    body["messages"][1]["content"] = json!("x".repeat(5000));
    let resp = post(&s.url("/ai/v1/chat/completions"), &body, &[]).await;
    assert_eq!(resp.status(), 413);
    assert!(
        json_of(resp).await["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("1000 bytes")
    );
    assert_eq!(up.request_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstream_call_is_cancelled_when_the_client_disconnects_mid_stream() {
    let up = FakeUpstream::start().await;
    up.script([Reply::gated(&["first", "second", "third"])]);
    let s = serve_upstream(&up, &[]);
    let client = reqwest::Client::new();
    let resp = within(
        client
            .post(s.url("/ai/v1/chat/completions"))
            .json(&chat_body(true))
            .send(),
    )
    .await
    .expect("request");
    assert_eq!(resp.status(), 200);
    let mut body = resp.bytes_stream();
    let mut seen = String::new();
    while !seen.contains("first") {
        let chunk = within(body.next())
            .await
            .expect("more body")
            .expect("chunk");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert_eq!(up.disconnect_count(), 0);
    drop(body);
    drop(client);
    within(up.wait_disconnects(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_errors_tell_the_caller_to_retry_and_the_operator_what_to_fix() {
    let up = FakeUpstream::start().await;
    up.script([Reply::status(401, "invalid api key")]);
    let s = serve_upstream(&up, &[]);
    let resp = post(&s.url("/ai/v1/chat/completions"), &chat_body(true), &[]).await;
    assert_eq!(resp.status(), 502);
    let v = json_of(resp).await;
    assert_eq!(v["error"]["code"], "ai_unavailable");
    let msg = v["error"]["message"].as_str().unwrap_or("");
    assert!(msg.contains("try again later"), "{msg}");
    assert!(
        !msg.contains("SYNQ_AI_KEY"),
        "the caller cannot fix the key: {msg}"
    );
    // The operator can: the log says how.
    assert!(s.stderr_line("AI backend failed").contains("SYNQ_AI_KEY"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_backend_the_ai_answers_503_saying_why_and_stderr_how_to_fix_it() {
    let s = serve(&["--ai-allow-anonymous"]);
    let line = s.stderr_line("synq: AI: none");
    assert!(line.contains("--ai-url"), "{line}");
    let url = s.url("/ai/v1/chat/completions");
    let mut msg = String::new();
    // The background start may still be "loading" for the very first request.
    for _ in 0..100 {
        let resp = post(&url, &chat_body(false), &[]).await;
        assert_eq!(resp.status(), 503);
        msg = json_of(resp).await["error"]["message"]
            .as_str()
            .unwrap_or("")
            .to_string();
        if !msg.contains("not ready yet") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Why, without the operator's command line: this message can reach a chat room.
    assert!(msg.contains("unavailable"), "{msg}");
    assert!(
        !msg.contains("--ai"),
        "no command-line flags for callers: {msg}"
    );
    let seed = post(
        &s.url("/ai"),
        &json!({"run": {"options": {"messages": []}}}),
        &[],
    )
    .await;
    assert_eq!(
        seed.status(),
        400,
        "an invalid request is still an invalid request"
    );
    let models = within(reqwest::get(s.url("/ai/v1/models")))
        .await
        .expect("models");
    assert_eq!(models.status(), 503);

    let off = serve(&["--no-ai", "--ai-allow-anonymous"]);
    let resp = post(
        &off.url("/ai"),
        &json!({"run": {"options": {"messages": [{"role": "user", "content": "hi"}]}}}),
        &[],
    )
    .await;
    assert_eq!(resp.status(), 503);
    assert!(
        json_of(resp).await["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("runs without AI")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_streaming_caller_that_goes_away_cancels_the_upstream_call_too() {
    let up = FakeUpstream::start().await;
    up.script([Reply::gated(&["first", "second"])]);
    let s = serve_upstream(&up, &[]);
    let body = json!({"run": {"options": {"messages": [{"role": "user", "content": "hi"}]}}});
    let url = s.url("/ai");
    let request = tokio::spawn(async move {
        let _ = reqwest::Client::new().post(url).json(&body).send().await;
    });
    // The gateway is waiting for the rest of the answer: give up on it.
    within(up.wait_request(1)).await;
    request.abort();
    within(up.wait_disconnects(1)).await;
    // The server is still up (the disconnect was not its exit).
    let ok = post(&s.url("/ai/v1/chat/completions"), &chat_body(false), &[]).await;
    assert_eq!(ok.status(), 200);
}

#[test]
fn ai_url_without_a_model_is_refused_at_start_with_what_to_add() {
    let out = Command::new(env!("CARGO_BIN_EXE_synq"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--ai-url",
            "http://localhost:11434/v1",
        ])
        .env_remove("SYNQ_AI_MODEL")
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("run synq serve");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--ai-url needs --ai-model NAME"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_failure_mid_answer_reaches_the_streaming_client_as_an_error_event() {
    let up = FakeUpstream::start().await;
    let sse = concat!(
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"par\"}}]}\n\n",
        "data: {\"error\":{\"message\":\"model crashed\"}}\n\n",
    );
    up.script([Reply::raw(200, "text/event-stream", sse)]);
    let s = serve_upstream(&up, &[]);
    let resp = post(&s.url("/ai/v1/chat/completions"), &chat_body(true), &[]).await;
    assert_eq!(resp.status(), 200);
    let data = sse_data(&within(resp.text()).await.expect("body"));
    assert_eq!(data.len(), 2, "{data:?}");
    let first: Value = serde_json::from_str(&data[0]).expect("chunk");
    assert_eq!(first["choices"][0]["delta"]["content"], "par");
    let err: Value = serde_json::from_str(&data[1]).expect("error event");
    let msg = err["error"]["message"].as_str().unwrap_or("");
    assert!(msg.contains("try again later"), "{err}");
    assert!(
        !msg.contains("model crashed"),
        "the upstream's words stay in the log: {err}"
    );
    assert!(s.stderr_line("AI backend failed").contains("model crashed"));
}
