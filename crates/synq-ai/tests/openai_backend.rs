//! The OpenAI-compatible backend against a real local HTTP server that speaks the API
//! (`synq_ai::testing::FakeUpstream`): streaming and not, error statuses, retries, timeouts,
//! and cancellation by dropping the stream.

// Not model code: a test of the AI backends (clippy.toml's determinism rules are for model
// code).
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use synq_ai::openai::{OpenAiBackend, OpenAiConfig};
use synq_ai::testing::{FakeUpstream, Reply, within};
use synq_ai::{AiError, AiEvent, ChatBackend, ChatMessage, ChatRequest};

/// Short delays so that retry tests are fast; generous timeouts unless a test is about them.
fn config(base_url: &str) -> OpenAiConfig {
    let mut c = OpenAiConfig::new(base_url, "the-servers-model");
    c.api_key = Some("sk-test".into());
    c.retry_delay = Duration::from_millis(10);
    c.max_retry_delay = Duration::from_millis(100);
    c.first_token_timeout = Duration::from_secs(10);
    c.idle_timeout = Duration::from_secs(10);
    c
}

fn backend(c: OpenAiConfig) -> OpenAiBackend {
    OpenAiBackend::new(c).expect("backend")
}

fn hello() -> ChatRequest {
    ChatRequest::new(vec![
        ChatMessage::system("be brief"),
        ChatMessage::user("hi"),
    ])
    .max_tokens(42)
}

#[tokio::test]
async fn streaming_deltas_arrive_in_order_and_the_request_is_openai_shaped() {
    let up = FakeUpstream::start().await;
    up.script([Reply::text(&["Hel", "lo", ", ", "world"])]);
    let b = backend(config(&up.base_url));
    let stream = b.stream_chat(hello()).await.expect("stream");
    let deltas: Vec<String> = stream.map(|d| d.expect("delta")).collect().await;
    assert_eq!(deltas, ["Hel", "lo", ", ", "world"]);

    let body = &up.requests()[0];
    assert_eq!(body["model"], "the-servers-model");
    assert_eq!(body["stream"], true);
    assert_eq!(body["max_tokens"], 42);
    assert_eq!(body["messages"][0]["role"], "system");
    assert_eq!(body["messages"][1]["content"], "hi");
    assert_eq!(up.last_headers()["authorization"], "Bearer sk-test");
}

#[tokio::test]
async fn non_streaming_completion_returns_the_whole_answer() {
    let up = FakeUpstream::start().await;
    up.script([Reply::text(&["one ", "two"])]);
    let text = backend(config(&up.base_url))
        .complete(hello())
        .await
        .expect("answer");
    assert_eq!(text, "one two");
    assert_eq!(up.requests()[0]["stream"], false);
}

#[tokio::test]
async fn unauthorized_is_reported_without_retrying() {
    let up = FakeUpstream::start().await;
    up.script([
        Reply::status(401, "bad key"),
        Reply::status(403, "forbidden"),
    ]);
    let b = backend(config(&up.base_url));
    for status in [401, 403] {
        match b.stream_chat(hello()).await {
            Err(e @ AiError::Unauthorized { .. }) => {
                assert!(e.to_string().contains("refused the API key"), "{e}");
                assert!(e.to_string().contains(&status.to_string()), "{e}");
                assert!(!e.to_string().contains("--"), "no command-line advice: {e}");
            }
            Err(e) => panic!("expected Unauthorized, got {e}"),
            Ok(_) => panic!("expected Unauthorized, got a stream"),
        }
    }
    assert_eq!(up.request_count(), 2, "no retry on 401/403");
}

#[tokio::test]
async fn unknown_model_is_reported_with_where_the_models_are_listed() {
    let up = FakeUpstream::start().await;
    up.script([Reply::status(404, "model \"the-servers-model\" not found")]);
    let err = backend(config(&up.base_url))
        .complete(hello())
        .await
        .expect_err("unknown model");
    assert!(matches!(err, AiError::UnknownModel { .. }), "{err}");
    assert!(err.to_string().contains("/models"), "{err}");
    assert!(
        !err.to_string().contains("--"),
        "no command-line advice: {err}"
    );
    assert_eq!(up.request_count(), 1);
}

#[tokio::test]
async fn rate_limited_then_success_is_retried_honouring_retry_after() {
    let up = FakeUpstream::start().await;
    up.fail_first(1, 429, Some(1));
    up.fail_first(1, 429, None);
    up.script([Reply::text(&["finally"])]);
    let started = Instant::now();
    let mut c = config(&up.base_url);
    c.max_retry_delay = Duration::from_secs(5);
    let text = backend(c).complete(hello()).await.expect("answer");
    assert_eq!(text, "finally");
    assert_eq!(up.request_count(), 3);
    assert!(
        started.elapsed() >= Duration::from_millis(950),
        "waited for Retry-After: 1 (took {:?})",
        started.elapsed()
    );
}

#[tokio::test]
async fn server_errors_forever_give_up_after_max_retries_with_a_clear_error() {
    let up = FakeUpstream::start().await;
    up.set_default(Reply::status(500, "boom"));
    let mut c = config(&up.base_url);
    c.max_retries = 2;
    let err = match backend(c).stream_chat(hello()).await {
        Err(e) => e,
        Ok(_) => panic!("expected an error"),
    };
    assert!(
        matches!(err, AiError::Upstream { status: 500, .. }),
        "{err}"
    );
    let msg = err.to_string();
    assert!(msg.contains("HTTP 500") && msg.contains("boom"), "{msg}");
    assert!(msg.contains("gave up after 3 attempts"), "{msg}");
    assert_eq!(up.request_count(), 3, "1 try + max_retries");
}

#[tokio::test]
async fn a_first_token_slower_than_first_token_timeout_is_a_timeout_error() {
    let up = FakeUpstream::start().await;
    up.script([Reply::slow_first(&["late"])]);
    let mut c = config(&up.base_url);
    c.first_token_timeout = Duration::from_millis(300);
    let b = backend(c);
    let first = match b.stream_chat(hello()).await {
        Ok(mut s) => s.next().await.expect("an item"),
        Err(e) => Err(e),
    };
    match first {
        Err(e @ AiError::Timeout { .. }) => assert!(e.to_string().contains("sent nothing")),
        other => panic!("expected a timeout, got {other:?}"),
    }
    // The timed-out request was abandoned, not left open.
    within(up.wait_disconnects(1)).await;
}

#[tokio::test]
async fn silence_mid_answer_longer_than_idle_timeout_is_a_timeout_error() {
    let up = FakeUpstream::start().await;
    up.script([Reply::gated(&["first", "never"])]);
    let mut c = config(&up.base_url);
    c.idle_timeout = Duration::from_millis(300);
    let mut s = backend(c).stream_chat(hello()).await.expect("stream");
    assert_eq!(s.next().await.expect("item").expect("delta"), "first");
    let second = s.next().await.expect("an item");
    assert!(matches!(second, Err(AiError::Timeout { .. })), "{second:?}");
    assert!(s.next().await.is_none(), "an error ends the stream");
}

#[tokio::test]
async fn dropping_the_stream_mid_answer_closes_the_upstream_connection() {
    let up = FakeUpstream::start().await;
    up.script([Reply::gated(&["a", "b", "c"])]);
    let mut s = backend(config(&up.base_url))
        .stream_chat(hello())
        .await
        .expect("stream");
    assert_eq!(s.next().await.expect("item").expect("delta"), "a");
    assert_eq!(up.disconnect_count(), 0);
    drop(s);
    within(up.wait_disconnects(1)).await;
}

#[tokio::test]
async fn an_unreachable_server_is_reported_as_unreachable_after_retrying() {
    // A port that was free a moment ago: nothing listens there.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let mut c = config(&format!("http://127.0.0.1:{port}/v1"));
    c.max_retries = 1;
    let err = backend(c).complete(hello()).await.expect_err("unreachable");
    assert!(matches!(err, AiError::Unreachable { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("unreachable") && !msg.contains("--ai-url"),
        "{msg}"
    );
    assert!(msg.contains("gave up after 2 attempts"), "{msg}");
}

#[tokio::test]
async fn an_invalid_request_is_refused_before_any_network_call() {
    let up = FakeUpstream::start().await;
    let err = backend(config(&up.base_url))
        .complete(ChatRequest::new(vec![]))
        .await
        .expect_err("no messages");
    assert!(matches!(err, AiError::InvalidRequest(_)));
    assert_eq!(up.request_count(), 0);
}

#[tokio::test]
async fn a_server_answering_something_else_than_the_api_is_a_protocol_error() {
    let up = FakeUpstream::start().await;
    up.script([Reply::raw(
        200,
        "text/html",
        "<html>Welcome to nginx</html>",
    )]);
    let b = backend(config(&up.base_url));
    let err = match b.stream_chat(hello()).await {
        Err(e) => e,
        Ok(_) => panic!("expected a protocol error"),
    };
    assert!(matches!(err, AiError::Protocol { .. }), "{err}");
    assert!(err.to_string().contains("not OpenAI-compatible"), "{err}");
}

#[tokio::test]
async fn a_server_that_ignores_stream_true_still_gives_its_answer() {
    let up = FakeUpstream::start().await;
    let body = r#"{"object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"all at once"}}]}"#;
    up.script([Reply::raw(200, "application/json", body)]);
    let stream = backend(config(&up.base_url))
        .stream_chat(hello())
        .await
        .expect("stream");
    let deltas: Vec<String> = stream.map(|d| d.expect("delta")).collect().await;
    assert_eq!(deltas, ["all at once"]);
}

#[tokio::test]
async fn an_error_event_mid_stream_ends_the_stream_with_that_error() {
    let up = FakeUpstream::start().await;
    let sse = concat!(
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"par\"}}]}\n\n",
        "data: {\"error\":{\"message\":\"model crashed\"}}\n\n",
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"never\"}}]}\n\n",
    );
    up.script([Reply::raw(200, "text/event-stream", sse)]);
    let mut s = backend(config(&up.base_url))
        .stream_chat(hello())
        .await
        .expect("stream");
    assert_eq!(s.next().await.expect("item").expect("delta"), "par");
    match s.next().await {
        Some(Err(e)) => assert!(e.to_string().contains("model crashed"), "{e}"),
        other => panic!("expected the upstream's error, got {other:?}"),
    }
    assert!(s.next().await.is_none());
}

#[tokio::test]
async fn finished_streams_leave_their_connection_for_the_next_request() {
    let up = FakeUpstream::start().await;
    let b = backend(config(&up.base_url));
    for _ in 0..3 {
        let s = b.stream_chat(hello()).await.expect("stream");
        let text: Vec<String> = s.map(|d| d.expect("delta")).collect().await;
        assert_eq!(text.concat(), "Hello world");
    }
    assert_eq!(
        up.connection_count(),
        1,
        "one keep-alive connection for all"
    );
}

/// A synq gateway in front of a busy embedded model says where the request is in line:
/// the positions come through as events, and each restarts the first-token timeout, so
/// that a wait in line longer than it is not a timeout.
#[tokio::test]
async fn a_synq_gateways_queue_position_is_reported_and_restarts_the_first_token_timeout() {
    let up = FakeUpstream::start().await;
    let every = Duration::from_millis(200);
    up.script([
        Reply::queued(&[3, 2, 1, 0], every, &["Hel", "lo"]),
        Reply::queued(&[1, 0], every, &["Hi"]),
    ]);
    let mut c = config(&up.base_url);
    c.first_token_timeout = Duration::from_millis(600);
    let b = backend(c);
    let (events, _) = within(b.stream_events(hello())).await.expect("stream");
    let got: Vec<AiEvent> = within(events.map(|e| e.expect("no timeout")).collect()).await;
    let queued = |ahead| AiEvent::Queued { ahead };
    let text = |t: &str| AiEvent::Text(t.to_string());
    assert_eq!(
        got,
        [
            queued(3),
            queued(2),
            queued(1),
            queued(0),
            text("Hel"),
            text("lo")
        ]
    );
    // Callers that want the text alone do not see the queue.
    let text_only = within(b.stream_chat(hello())).await.expect("stream");
    let text_only = within(synq_ai::collect_text(text_only)).await;
    assert_eq!(text_only.expect("text"), "Hi");
}
