//! `synq serve` without `--ai-url`: the embedded model answers through the gateway when
//! its weights are there (`--ai-model-path`, the real SmolLM2-135M GGUF), and the gateway
//! explains how to fix it when they cannot be had (offline, nothing cached).

mod common;

use std::path::PathBuf;

/// `synq serve` answering anonymous calls (these tests ask the AI like curl would).
fn serve(args: &[&str], env: &[(&str, &str)]) -> common::Serve {
    let data = tempfile::tempdir().expect("tempdir");
    let mut args = args.to_vec();
    args.push("--ai-allow-anonymous");
    common::serve_with(&data.keep(), &args, env)
}

/// The line in which `synq serve` says which AI serves (or why none does), printed once
/// the model is loaded or has failed.
fn ai_line(server: &mut common::Serve) -> String {
    loop {
        let line = server.stderr_line("synq: AI: ");
        if line.starts_with("synq: AI: none") || line.starts_with("synq: AI: embedded model /") {
            return line;
        }
    }
}

fn test_model() -> PathBuf {
    let path = std::env::var_os("SYNQ_TEST_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            dirs::home_dir()
                .unwrap_or_default()
                .join(".cache/synq/test-models/SmolLM2-135M-Instruct.Q4_1.gguf")
        });
    assert!(
        path.exists(),
        "the test model is missing at {}: run scripts/fetch-test-model.sh",
        path.display()
    );
    path
}

async fn ask(base: &str) -> (u16, serde_json::Value) {
    let body = serde_json::json!({
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "max_tokens": 24, "temperature": 0
    });
    let r = reqwest::Client::new()
        .post(format!("{base}/ai/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .expect("request");
    let status = r.status().as_u16();
    (status, r.json().await.expect("json"))
}

/// Right after start-up the model is still loading (about half a second for this one): a
/// request then waits for it instead of getting 503 "try again". (The test cannot force
/// the request into the loading time; the server logs "a request waits" when it was.)
#[tokio::test]
async fn a_request_that_comes_while_the_model_loads_is_answered() {
    let model = test_model();
    let server = serve(
        &["--ai-model-path", model.to_str().expect("utf-8 path")],
        &[],
    );
    let (status, v) = ask(&server.base).await;
    assert_eq!(status, 200, "{v}");
}

#[tokio::test]
async fn the_embedded_model_answers_through_the_gateway() {
    let model = test_model();
    let mut server = serve(
        &["--ai-model-path", model.to_str().expect("utf-8 path")],
        &[],
    );
    let said = ai_line(&mut server);
    assert!(said.contains("SmolLM2"), "{said}");
    let (status, v) = ask(&server.base).await;
    assert_eq!(status, 200, "{v}");
    let text = v
        .pointer("/choices/0/message/content")
        .and_then(|c| c.as_str())
        .unwrap_or("");
    assert!(
        text.split_whitespace().count() >= 2,
        "an answer in words: {v}"
    );
    assert_eq!(v["model"], "SmolLM2-135M-Instruct.Q4_1");
}

/// The operator is told how to fix it (stderr); callers (and so chat rooms) only why.
#[tokio::test]
async fn without_weights_the_gateway_says_why_and_stderr_how_to_fix_it() {
    let empty = tempfile::tempdir().expect("tempdir");
    let hf_home = empty.path().to_str().expect("utf-8");
    let mut server = serve(&[], &[("HF_HOME", hf_home), ("HF_HUB_OFFLINE", "1")]);
    let said = ai_line(&mut server);
    assert!(
        said.contains("--ai-model-path"),
        "stderr explains it too: {said}"
    );
    let (status, v) = ask(&server.base).await;
    assert_eq!(status, 503, "{v}");
    let msg = v
        .pointer("/error/message")
        .and_then(|m| m.as_str())
        .unwrap_or("");
    assert!(msg.contains("HF_HUB_OFFLINE"), "why: {msg}");
    assert!(
        msg.contains("qwen2.5-1.5b-instruct-q4_k_m.gguf"),
        "the default model: {msg}"
    );
    assert!(
        !msg.contains("--ai"),
        "no command-line flags for callers: {msg}"
    );
}

/// `--ai-embedded-model` chooses another model to download, by name; a name it does not
/// know stops the server at start with the names it knows.
#[tokio::test]
async fn the_embedded_model_is_chosen_by_name() {
    let empty = tempfile::tempdir().expect("tempdir");
    let hf_home = empty.path().to_str().expect("utf-8");
    let mut server = serve(
        &["--ai-embedded-model", "qwen2.5-0.5b"],
        &[("HF_HOME", hf_home), ("HF_HUB_OFFLINE", "1")],
    );
    let said = ai_line(&mut server);
    assert!(
        said.contains("qwen2.5-0.5b-instruct-q4_k_m.gguf"),
        "stderr names the chosen model: {said}"
    );
    let (status, v) = ask(&server.base).await;
    assert_eq!(status, 503, "{v}");
    let msg = v.pointer("/error/message").and_then(|m| m.as_str());
    assert!(
        msg.is_some_and(|m| m.contains("qwen2.5-0.5b-instruct-q4_k_m.gguf")),
        "{v}"
    );

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_synq"))
        .args(["serve", "--ai-embedded-model", "gpt-5"])
        .output()
        .expect("run synq");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("qwen2.5-0.5b") && err.contains("qwen2.5-1.5b"),
        "{err}"
    );
}

/// A streamed request to the gateway, read event by event as a client would.
struct Streamed {
    resp: reqwest::Response,
    decoder: synq_openai::SseDecoder,
    ready: std::collections::VecDeque<String>,
}

impl Streamed {
    async fn open(base: &str, question: &str) -> Streamed {
        let body = serde_json::json!({
            "messages": [{"role": "user", "content": question}],
            "max_tokens": 1024, "temperature": 0, "stream": true
        });
        let resp = reqwest::Client::new()
            .post(format!("{base}/ai/v1/chat/completions"))
            .json(&body)
            .send()
            .await
            .expect("request");
        assert_eq!(resp.status(), 200);
        Streamed {
            resp,
            decoder: synq_openai::SseDecoder::default(),
            ready: Default::default(),
        }
    }

    async fn next(&mut self) -> synq_openai::Event {
        loop {
            if let Some(data) = self.ready.pop_front() {
                return synq_openai::parse_event(&data).expect("an OpenAI event");
            }
            let chunk = self.resp.chunk().await.expect("body").expect("more events");
            self.ready.extend(self.decoder.push(&chunk));
        }
    }

    /// The next queue position it is told (skipping repeats of `not`).
    async fn queue(&mut self, not: Option<u32>) -> u32 {
        loop {
            match self.next().await {
                synq_openai::Event::Chunk {
                    queue: Some(n),
                    text,
                    ..
                } if Some(n) != not => {
                    assert_eq!(text, None, "a queue chunk has no text");
                    return n;
                }
                synq_openai::Event::Chunk { text: Some(t), .. } => {
                    panic!("text {t:?} before the queue position changed")
                }
                synq_openai::Event::Chunk { .. } => {}
                other => panic!("unexpected {other:?} while queued"),
            }
        }
    }

    /// Waits for the first text of the answer.
    async fn text(&mut self) -> String {
        loop {
            if let synq_openai::Event::Chunk { text: Some(t), .. } = self.next().await {
                return t;
            }
        }
    }
}

/// One generation at a time: the others wait in line and are told their place (the
/// number of requests ahead), which drops as requests ahead leave, whether they end or
/// their callers go away.
#[tokio::test]
async fn waiting_requests_see_their_place_in_line_and_a_cancelled_one_frees_it() {
    let model = test_model();
    let mut server = serve(
        &["--ai-model-path", model.to_str().expect("utf-8 path")],
        &[],
    );
    ai_line(&mut server);
    let base = &server.base;
    // A long answer holds the model while the others come.
    let mut a = Streamed::open(base, "Count from 1 to 1000, one number per line.").await;
    a.text().await;
    let mut b = Streamed::open(base, "Say hello.").await;
    assert_eq!(b.queue(None).await, 1, "b waits behind a");
    let mut c = Streamed::open(base, "Say hello.").await;
    assert_eq!(c.queue(None).await, 2);
    let mut d = Streamed::open(base, "Say hello.").await;
    assert_eq!(d.queue(None).await, 3);
    // c's caller goes away: d moves up at once.
    drop(c);
    assert_eq!(d.queue(Some(3)).await, 2, "c left the line");
    // a's caller goes away mid-answer: its generation stops, b gets the model.
    drop(a);
    assert_eq!(b.queue(Some(1)).await, 0, "b's turn");
    assert!(!b.text().await.is_empty());
    assert_eq!(d.queue(Some(2)).await, 1, "only b is ahead of d");
}
