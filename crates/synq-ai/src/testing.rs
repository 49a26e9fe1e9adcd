//! [`FakeUpstream`]: a real HTTP server on 127.0.0.1 that speaks the OpenAI
//! chat-completions API (streaming and not), scripted per request, for tests and benchmarks.
//!
//! It records every request body and its headers, counts requests, can hold back tokens
//! until the test releases them, can fail the first requests with an error status, and
//! reports when a client goes away in the middle of an answer — so tests synchronise on
//! events, never on sleeps.
//!
//! Only built with the `testing` feature.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::stream::{self, Stream, StreamExt};
use serde_json::{Value, json};
use tokio::sync::{Notify, watch};

/// The model name the fake upstream reports.
pub const FAKE_MODEL: &str = "fake-model";

/// What the fake upstream answers to one request.
#[derive(Debug, Clone)]
pub enum Reply {
    /// These deltas as an SSE stream (or one JSON body if the request had `stream: false`).
    Text(Vec<String>),
    /// Waits this long, then answers like [`Reply::Text`] (simulates time to first token).
    Delayed(Duration, Vec<String>),
    /// Sends the first delta, then waits for [`FakeUpstream::release`] before each next one.
    Gated(Vec<String>),
    /// Sends the SSE headers, then waits for [`FakeUpstream::release`] before the first delta.
    SlowFirst(Vec<String>),
    /// Exactly this status, content type and body, whatever was asked (for servers that
    /// ignore `stream`, answer HTML, or send an error event mid-stream).
    Raw {
        status: u16,
        content_type: String,
        body: String,
    },
    /// Streamed: a synq queue chunk (`"synq": {"queue": N}`) for each of `positions`,
    /// `every` apart, then the deltas as [`Reply::Text`] (like a synq gateway in front of
    /// a busy embedded model). Not streamed: the deltas after the same wait.
    Queued {
        positions: Vec<u32>,
        every: Duration,
        deltas: Vec<String>,
    },
    /// An error status with an OpenAI-style error body and an optional `Retry-After` (s).
    Status {
        status: u16,
        message: String,
        retry_after: Option<u64>,
    },
}

impl Reply {
    pub fn text(deltas: &[&str]) -> Reply {
        Reply::Text(deltas.iter().map(|d| d.to_string()).collect())
    }
    pub fn gated(deltas: &[&str]) -> Reply {
        Reply::Gated(deltas.iter().map(|d| d.to_string()).collect())
    }
    pub fn slow_first(deltas: &[&str]) -> Reply {
        Reply::SlowFirst(deltas.iter().map(|d| d.to_string()).collect())
    }
    pub fn delayed(delay: Duration, deltas: &[&str]) -> Reply {
        Reply::Delayed(delay, deltas.iter().map(|d| d.to_string()).collect())
    }
    pub fn raw(status: u16, content_type: &str, body: &str) -> Reply {
        Reply::Raw {
            status,
            content_type: content_type.to_string(),
            body: body.to_string(),
        }
    }
    pub fn queued(positions: &[u32], every: Duration, deltas: &[&str]) -> Reply {
        Reply::Queued {
            positions: positions.to_vec(),
            every,
            deltas: deltas.iter().map(|d| d.to_string()).collect(),
        }
    }
    pub fn status(status: u16, message: &str) -> Reply {
        Reply::Status {
            status,
            message: message.to_string(),
            retry_after: None,
        }
    }
}

struct Inner {
    script: Mutex<VecDeque<Reply>>,
    default_reply: Mutex<Reply>,
    bodies: Mutex<Vec<Value>>,
    headers: Mutex<Vec<HeaderMap>>,
    release: Notify,
    /// Number of requests received so far.
    requests: watch::Sender<usize>,
    /// Number of streams a client dropped before their end.
    disconnects: watch::Sender<usize>,
    /// TCP connections accepted.
    connections: AtomicUsize,
    /// Prompt tokens to report in a final `usage` chunk, when a streaming request asks
    /// for it (`stream_options.include_usage`).
    usage: Mutex<Option<u64>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking test thread must not hide the state from the others.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A scripted OpenAI-compatible server on 127.0.0.1 (see the module docs). Cheap to clone.
#[derive(Clone)]
pub struct FakeUpstream {
    /// The listening address.
    pub addr: SocketAddr,
    /// The API base to give a client: `http://ADDR/v1`.
    pub base_url: String,
    inner: Arc<Inner>,
}

impl FakeUpstream {
    /// Starts the server on a free port of 127.0.0.1. It runs until the runtime ends.
    pub async fn start() -> FakeUpstream {
        let inner = Arc::new(Inner {
            script: Mutex::default(),
            default_reply: Mutex::new(Reply::text(&["Hello", " world"])),
            bodies: Mutex::default(),
            headers: Mutex::default(),
            release: Notify::new(),
            requests: watch::channel(0).0,
            disconnects: watch::channel(0).0,
            connections: AtomicUsize::new(0),
            usage: Mutex::new(None),
        });
        let app = Router::new()
            .route("/v1/chat/completions", post(chat))
            .route("/v1/models", get(models))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("FakeUpstream: bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("FakeUpstream: local addr");
        // No Nagle delay between the SSE headers and the first small event, as in a real
        // streaming server: latency measurements through it would be skewed otherwise.
        let counted = inner.clone();
        let listener = axum::serve::ListenerExt::tap_io(listener, move |tcp| {
            let _ = tcp.set_nodelay(true);
            counted.connections.fetch_add(1, Ordering::Relaxed);
        });
        tokio::spawn(async move { axum::serve(listener, app).await });
        FakeUpstream {
            addr,
            base_url: format!("http://{addr}/v1"),
            inner,
        }
    }

    /// Queues replies for the next requests, in order; after them the default reply.
    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        lock(&self.inner.script).extend(replies);
    }

    /// The reply once the script is used up (initially `Text(["Hello", " world"])`).
    pub fn set_default(&self, reply: Reply) {
        *lock(&self.inner.default_reply) = reply;
    }

    /// The next `n` requests get `status` (with `Retry-After: retry_after` if given).
    pub fn fail_first(&self, n: usize, status: u16, retry_after: Option<u64>) {
        self.script((0..n).map(|_| Reply::Status {
            status,
            message: format!("scripted failure {status}"),
            retry_after,
        }));
    }

    /// From now on, streams that ask for it end with a `usage` chunk reporting
    /// `prompt_tokens` and one completion token per delta, as OpenAI does.
    pub fn report_usage(&self, prompt_tokens: u64) {
        *lock(&self.inner.usage) = Some(prompt_tokens);
    }

    /// Lets a gated or slow stream send its next delta.
    pub fn release(&self) {
        self.inner.release.notify_one();
    }

    /// How many chat-completion requests arrived so far.
    pub fn request_count(&self) -> usize {
        *self.inner.requests.borrow()
    }

    /// Every request body received so far, in order.
    pub fn requests(&self) -> Vec<Value> {
        lock(&self.inner.bodies).clone()
    }

    /// The headers of the last request.
    pub fn last_headers(&self) -> HeaderMap {
        lock(&self.inner.headers)
            .last()
            .cloned()
            .unwrap_or_default()
    }

    /// Resolves once at least `n` requests arrived; returns the `n`th body.
    pub async fn wait_request(&self, n: usize) -> Value {
        let mut rx = self.inner.requests.subscribe();
        let _ = rx.wait_for(|&c| c >= n).await;
        lock(&self.inner.bodies)[n - 1].clone()
    }

    /// How many TCP connections were accepted so far (to check that clients reuse them).
    pub fn connection_count(&self) -> usize {
        self.inner.connections.load(Ordering::Relaxed)
    }

    /// How many streams were dropped by their client before they ended.
    pub fn disconnect_count(&self) -> usize {
        *self.inner.disconnects.borrow()
    }

    /// Resolves once at least `n` streams were dropped by their client before they ended.
    pub async fn wait_disconnects(&self, n: usize) {
        let mut rx = self.inner.disconnects.subscribe();
        let _ = rx.wait_for(|&c| c >= n).await;
    }
}

/// Fails the test instead of hanging forever if an awaited event never comes.
pub async fn within<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(20), f)
        .await
        .expect("the awaited event did not happen within 20 s")
}

async fn models() -> Json<Value> {
    Json(json!({"object": "list", "data": [{"id": FAKE_MODEL, "object": "model"}]}))
}

fn chunk(text: &str) -> Event {
    Event::default().data(
        json!({
            "id": "chatcmpl-fake", "object": "chat.completion.chunk", "model": FAKE_MODEL,
            "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": null}]
        })
        .to_string(),
    )
}

/// Counts a disconnect if the stream is dropped before it finished.
struct DropGuard {
    finished: bool,
    inner: Arc<Inner>,
}

impl Drop for DropGuard {
    fn drop(&mut self) {
        if !self.finished {
            self.inner.disconnects.send_modify(|c| *c += 1);
        }
    }
}

fn sse(
    deltas: Vec<String>,
    gate_first: bool,
    gate_rest: bool,
    inner: Arc<Inner>,
    prompt_tokens: Option<u64>,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let usage = prompt_tokens.map(|p| {
        let n = deltas.len() as u64;
        Event::default().data(
            json!({
                "id": "chatcmpl-fake", "object": "chat.completion.chunk", "model": FAKE_MODEL,
                "choices": [],
                "usage": {"prompt_tokens": p, "completion_tokens": n, "total_tokens": p + n}
            })
            .to_string(),
        )
    });
    let gated = deltas.len();
    let deltas: Vec<Event> = deltas.iter().map(|d| chunk(d)).chain(usage).collect();
    let guard = DropGuard {
        finished: false,
        inner,
    };
    stream::unfold(
        (deltas.into_iter().enumerate(), guard, false),
        move |(mut it, mut guard, ended)| async move {
            if ended {
                return None;
            }
            match it.next() {
                Some((i, event)) => {
                    if (i == 0 && gate_first) || (i > 0 && i < gated && gate_rest) {
                        guard.inner.release.notified().await;
                    }
                    Some((event, (it, guard, false)))
                }
                None => {
                    guard.finished = true;
                    let last = Event::default().data("[DONE]");
                    Some((last, (it, guard, true)))
                }
            }
        },
    )
    .map(Ok)
}

async fn chat(State(inner): State<Arc<Inner>>, headers: HeaderMap, body: String) -> Response {
    let body: Value = match serde_json::from_str(&body) {
        Ok(v) => v,
        Err(e) => {
            let err = json!({"error": {"message": format!("bad JSON: {e}"), "type": "invalid_request_error"}});
            return (StatusCode::BAD_REQUEST, Json(err)).into_response();
        }
    };
    let stream = body["stream"].as_bool().unwrap_or(false);
    let prompt_tokens = if body["stream_options"]["include_usage"] == json!(true) {
        *lock(&inner.usage)
    } else {
        None
    };
    lock(&inner.headers).push(headers);
    lock(&inner.bodies).push(body);
    inner.requests.send_modify(|c| *c += 1);
    let reply = lock(&inner.script)
        .pop_front()
        .unwrap_or_else(|| lock(&inner.default_reply).clone());
    let (deltas, gate_first, gate_rest) = match reply {
        Reply::Status {
            status,
            message,
            retry_after,
        } => {
            let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let err = json!({"error": {"message": message, "type": "fake_upstream"}});
            let mut resp = (code, Json(err)).into_response();
            if let Some(s) = retry_after {
                resp.headers_mut().insert("retry-after", s.into());
            }
            return resp;
        }
        Reply::Raw {
            status,
            content_type,
            body,
        } => {
            let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return (
                code,
                [(axum::http::header::CONTENT_TYPE, content_type)],
                body,
            )
                .into_response();
        }
        Reply::Delayed(delay, d) => {
            tokio::time::sleep(delay).await;
            (d, false, false)
        }
        Reply::Queued {
            positions,
            every,
            deltas,
        } => {
            if stream {
                let queue = stream::iter(positions).then(move |ahead| async move {
                    tokio::time::sleep(every).await;
                    let chunk = synq_openai::ChatCompletionChunk::queue(
                        "chatcmpl-fake",
                        0,
                        FAKE_MODEL,
                        ahead,
                    );
                    Ok::<_, Infallible>(
                        Event::default().data(serde_json::to_string(&chunk).unwrap_or_default()),
                    )
                });
                let rest = sse(deltas, false, false, inner, prompt_tokens);
                return Sse::new(queue.chain(rest)).into_response();
            }
            tokio::time::sleep(every * positions.len() as u32).await;
            (deltas, false, false)
        }
        Reply::Text(d) => (d, false, false),
        Reply::Gated(d) => (d, false, true),
        Reply::SlowFirst(d) => (d, true, false),
    };
    if stream {
        return Sse::new(sse(deltas, gate_first, gate_rest, inner, prompt_tokens)).into_response();
    }
    if gate_first || gate_rest {
        let guard = DropGuard {
            finished: false,
            inner: inner.clone(),
        };
        let gates = usize::from(gate_first)
            + if gate_rest {
                deltas.len().saturating_sub(1)
            } else {
                0
            };
        for _ in 0..gates {
            inner.release.notified().await;
        }
        let mut guard = guard;
        guard.finished = true;
    }
    let text = deltas.concat();
    Json(json!({
        "id": "chatcmpl-fake", "object": "chat.completion", "model": FAKE_MODEL,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": deltas.len(), "total_tokens": 5 + deltas.len()}
    }))
    .into_response()
}
