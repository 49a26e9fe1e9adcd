//! A real HTTP server on 127.0.0.1 that speaks the OpenAI chat-completions API, scripted
//! per request, and that reports when a client goes away in the middle of an answer.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::stream::{self, Stream, StreamExt};
use serde_json::{Value, json};
use tokio::sync::{Notify, mpsc};

/// What the fake upstream answers to one request.
pub enum Reply {
    /// An SSE stream (or one JSON body if the request had `stream: false`) of these deltas.
    Text(Vec<&'static str>),
    /// Sends the first delta, then waits for `Upstream::release` before each next one.
    Gated(Vec<&'static str>),
    /// Sends the SSE headers, then waits for `Upstream::release` before the first delta.
    SlowFirst(Vec<&'static str>),
    /// An error status with an OpenAI-style error body.
    Status(u16, &'static str, Option<u64>),
}

#[derive(Clone)]
struct Shared {
    script: Arc<Mutex<VecDeque<Reply>>>,
    requests: mpsc::UnboundedSender<Value>,
    headers: Arc<Mutex<Vec<HeaderMap>>>,
    release: Arc<Notify>,
    disconnects: mpsc::UnboundedSender<()>,
}

pub struct Upstream {
    pub addr: SocketAddr,
    pub base_url: String,
    shared: Shared,
    requests: mpsc::UnboundedReceiver<Value>,
    disconnects: mpsc::UnboundedReceiver<()>,
}

impl Upstream {
    pub async fn start() -> Upstream {
        let (req_tx, req_rx) = mpsc::unbounded_channel();
        let (disc_tx, disc_rx) = mpsc::unbounded_channel();
        let shared = Shared {
            script: Arc::default(),
            requests: req_tx,
            headers: Arc::default(),
            release: Arc::new(Notify::new()),
            disconnects: disc_tx,
        };
        let app = Router::new()
            .route("/v1/chat/completions", post(chat))
            .route("/v1/models", get(models))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        Upstream {
            addr,
            base_url: format!("http://{addr}/v1"),
            shared,
            requests: req_rx,
            disconnects: disc_rx,
        }
    }

    /// Queues replies for the next requests (then the default `Text(["Hello", " world"])`).
    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.shared.script.lock().unwrap().extend(replies);
    }

    /// Lets a gated or slow stream send its next delta.
    pub fn release(&self) {
        self.shared.release.notify_one();
    }

    /// The next request body the server received.
    pub async fn next_request(&mut self) -> Value {
        within(self.requests.recv()).await.expect("server gone")
    }

    /// All request bodies received so far.
    pub fn received(&mut self) -> Vec<Value> {
        let mut all = Vec::new();
        while let Ok(v) = self.requests.try_recv() {
            all.push(v);
        }
        all
    }

    pub fn last_headers(&self) -> HeaderMap {
        self.shared.headers.lock().unwrap().last().cloned().unwrap_or_default()
    }

    /// Resolves when the server saw a client drop an unfinished stream.
    pub async fn disconnected(&mut self) {
        within(self.disconnects.recv()).await.expect("server gone");
    }
}

/// Fails the test instead of hanging forever if an awaited event never comes.
pub async fn within<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(std::time::Duration::from_secs(20), f)
        .await
        .expect("the awaited event did not happen within 20 s")
}

async fn models() -> Json<Value> {
    Json(json!({"object": "list", "data": [{"id": "fake-model", "object": "model"}]}))
}

fn chunk(text: &str) -> Event {
    Event::default().data(
        json!({
            "id": "chatcmpl-1", "object": "chat.completion.chunk", "model": "fake-model",
            "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": null}]
        })
        .to_string(),
    )
}

/// Reports a disconnect if dropped before the stream finished.
struct DropGuard {
    finished: bool,
    tx: mpsc::UnboundedSender<()>,
}

impl Drop for DropGuard {
    fn drop(&mut self) {
        if !self.finished {
            let _ = self.tx.send(());
        }
    }
}

fn sse(
    deltas: Vec<&'static str>,
    gate_first: bool,
    gate_rest: bool,
    shared: Shared,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let guard = DropGuard {
        finished: false,
        tx: shared.disconnects.clone(),
    };
    let events = stream::unfold(
        (deltas.into_iter().enumerate(), guard, shared.release.clone(), false),
        move |(mut it, mut guard, release, ended)| async move {
            if ended {
                return None;
            }
            match it.next() {
                Some((i, d)) => {
                    if (i == 0 && gate_first) || (i > 0 && gate_rest) {
                        release.notified().await;
                    }
                    Some((chunk(d), (it, guard, release, false)))
                }
                None => {
                    guard.finished = true;
                    Some((Event::default().data("[DONE]"), (it, guard, release, true)))
                }
            }
        },
    );
    events.map(Ok)
}

async fn chat(State(shared): State<Shared>, headers: HeaderMap, Json(body): Json<Value>) -> Response {
    shared.headers.lock().unwrap().push(headers);
    let stream = body["stream"].as_bool().unwrap_or(false);
    let _ = shared.requests.send(body);
    let reply = shared
        .script
        .lock()
        .unwrap()
        .pop_front()
        .unwrap_or(Reply::Text(vec!["Hello", " world"]));
    let (deltas, gate_first, gate_rest) = match reply {
        Reply::Status(code, message, retry_after) => {
            let mut resp = (
                StatusCode::from_u16(code).unwrap(),
                Json(json!({"error": {"message": message, "type": "test"}})),
            )
                .into_response();
            if let Some(s) = retry_after {
                resp.headers_mut().insert("retry-after", s.into());
            }
            return resp;
        }
        Reply::Text(d) => (d, false, false),
        Reply::Gated(d) => (d, false, true),
        Reply::SlowFirst(d) => (d, true, false),
    };
    if stream {
        Sse::new(sse(deltas, gate_first, gate_rest, shared)).into_response()
    } else {
        if gate_first {
            shared.release.notified().await;
        }
        Json(json!({
            "id": "chatcmpl-1", "object": "chat.completion", "model": "fake-model",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": deltas.concat()}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": deltas.len()}
        }))
        .into_response()
    }
}
