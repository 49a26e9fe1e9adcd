//! The guarded AI gateway that `synq serve` mounts.
//!
//! Routes:
//! - `POST /ai/v1/chat/completions`: the OpenAI shape; `stream: true` answers with
//!   server-sent `chat.completion.chunk` events ending in `data: [DONE]`, otherwise one
//!   `chat.completion`.
//! - `GET /ai/v1/models`: the one model this server serves.
//! - `POST /ai`: the seed app's Cloudflare-worker shape,
//!   `{"run": {"model", "options": {"messages", "max_tokens"}}}` → `{"response": "…"}`.
//!
//! Guards: a host allowlist (against DNS rebinding) and an origin allowlist; an AI
//! capability (`Authorization: Bearer …`, see [`capability`]) from a participant of a live
//! session unless the operator allows anonymous calls; per-address (IPv6: per /64) and
//! per-session rate limits; daily token budgets, for all callers together and per address,
//! that count prompt and answer tokens; a cap on `max_tokens` and on the request size. The
//! model is the server's: a client's `model` field is ignored. Upstream errors are logged,
//! and the caller is told only what it can act on. When the caller goes away, the backend
//! stream is dropped, which cancels the upstream request or the local generation.
//!
//! While a streamed request waits for the embedded model, its stream carries synq's queue
//! extension (see [`synq_openai::SynqExtension`]): chunks with no choices and
//! `"synq": {"queue": N}`, N the requests ahead of it.

mod admission;
mod api_error;
pub mod capability;
pub mod guards;
mod meter;
mod request;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::HeaderValue;
use axum::middleware;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::{Stream, StreamExt, stream};
use serde_json::{Value, json};
use synq_openai::{ChatCompletionChunk, Delta};

use crate::AiError;
use crate::backend::{ChatBackend, ChatRequest};
use admission::{Caller, admit, cors_and_origin};
use api_error::ApiError;
pub use capability::{Capabilities, CapabilityError};
use guards::{AddressBudgets, RateLimiter, TokenBudget, approx_tokens};
use meter::{Charge, Piece, metered};
use request::chat_request;

/// Whether a session is live right now (asked of the reflector; in a cluster, of the node
/// that runs it, hence a future).
pub type SessionLive = Arc<
    dyn Fn(&str) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send>> + Send + Sync,
>;

/// What serves the answers, as it is now.
#[derive(Clone)]
pub enum BackendState {
    Ready(Arc<dyn ChatBackend>),
    /// The weights are there and being loaded: requests wait for it.
    Loading(String),
    /// The weights are being fetched (a download of minutes): requests get 503 with the
    /// text, which says how far it is.
    Preparing(String),
    /// No AI: why, and how to fix it.
    Unavailable(String),
}

/// The gateway's backend, shared with whoever prepares it (e.g. a background model load).
#[derive(Clone)]
pub struct BackendSlot(Arc<tokio::sync::watch::Sender<BackendState>>);

impl BackendSlot {
    pub fn new(state: BackendState) -> Self {
        Self(Arc::new(tokio::sync::watch::Sender::new(state)))
    }

    pub fn set(&self, state: BackendState) {
        self.0.send_replace(state);
    }

    pub fn get(&self) -> BackendState {
        self.0.borrow().clone()
    }

    /// The state once it is no longer [`BackendState::Loading`], or after `patience`.
    pub async fn settled(&self, patience: Duration) -> BackendState {
        let mut rx = self.0.subscribe();
        let wait = rx.wait_for(|s| !matches!(s, BackendState::Loading(_)));
        match tokio::time::timeout(patience, wait).await {
            Ok(Ok(state)) => state.clone(),
            _ => self.get(),
        }
    }
}

/// The gateway's guards.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// A client's `max_tokens` is clamped to this (and is the default).
    pub max_tokens: u32,
    /// Larger request bodies get 413.
    pub max_body_bytes: usize,
    /// Requests per minute per client address (IPv6: per /64; 0 = unlimited).
    pub rate_per_minute: u32,
    /// Requests per minute per session (the session of the caller's AI capability; 0 =
    /// unlimited).
    pub session_rate_per_minute: u32,
    /// Prompt and answer tokens per UTC day, all clients together (0 = unlimited).
    pub daily_token_budget: u64,
    /// Prompt and answer tokens per UTC day per client address (IPv6: per /64; 0 =
    /// unlimited).
    pub address_daily_token_budget: u64,
    /// Origins allowed besides the server's own and localhost (`*`: any).
    pub allowed_origins: Vec<String>,
    /// Host names (the `Host` header) allowed besides IP literals and `localhost` (`*`: any).
    pub allowed_hosts: Vec<String>,
    /// Accept calls without an AI capability (anyone who can reach the server may then
    /// spend the budget, within the per-address limits).
    pub allow_anonymous: bool,
    /// How long a request that comes while the model loads waits for it.
    pub load_patience: Duration,
    /// What the operator can do about a backend's error, written to the log with it
    /// (the program's own advice, e.g. which flag to fix; callers never see it).
    pub operator_advice: fn(&AiError) -> Option<String>,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            max_tokens: 1024,
            max_body_bytes: 256 * 1024,
            rate_per_minute: 30,
            session_rate_per_minute: 20,
            daily_token_budget: 1_000_000,
            address_daily_token_budget: 200_000,
            allowed_origins: Vec::new(),
            allowed_hosts: Vec::new(),
            allow_anonymous: false,
            load_patience: Duration::from_secs(120),
            operator_advice: |_| None,
        }
    }
}

/// Everything the gateway's handlers share.
pub struct GatewayState {
    slot: BackendSlot,
    config: GatewayConfig,
    per_ip: RateLimiter,
    per_session: RateLimiter,
    budget: TokenBudget,
    per_address_budget: AddressBudgets,
    /// How AI capabilities are checked; `None`: none are issued, so only anonymous calls
    /// (if allowed) get through.
    access: Option<(Arc<Capabilities>, SessionLive)>,
}

impl GatewayState {
    /// A gateway that accepts no AI capabilities (anonymous calls only, if the config
    /// allows them): for tests and benchmarks of the gateway alone.
    pub fn new(config: GatewayConfig, slot: BackendSlot) -> Arc<Self> {
        Arc::new(Self::build(config, slot, None))
    }

    /// A gateway that accepts the capabilities of `caps` for sessions that `live` says
    /// are running.
    pub fn with_capabilities(
        config: GatewayConfig,
        slot: BackendSlot,
        caps: Arc<Capabilities>,
        live: SessionLive,
    ) -> Arc<Self> {
        Arc::new(Self::build(config, slot, Some((caps, live))))
    }

    fn build(
        config: GatewayConfig,
        slot: BackendSlot,
        access: Option<(Arc<Capabilities>, SessionLive)>,
    ) -> Self {
        Self {
            per_ip: RateLimiter::new(config.rate_per_minute),
            per_session: RateLimiter::new(config.session_rate_per_minute),
            budget: TokenBudget::new(config.daily_token_budget),
            per_address_budget: AddressBudgets::new(config.address_daily_token_budget),
            access,
            slot,
            config,
        }
    }

    pub fn slot(&self) -> &BackendSlot {
        &self.slot
    }

    pub fn config(&self) -> &GatewayConfig {
        &self.config
    }

    /// The backend; a request that comes while the model loads waits for it (up to the
    /// first-token timeout), one that comes while it downloads is told how far it is.
    async fn backend(&self) -> Result<Arc<dyn ChatBackend>, ApiError> {
        if let BackendState::Loading(what) = self.slot.get() {
            tracing::info!("a request waits while {what}");
        }
        match self.slot.settled(self.config.load_patience).await {
            BackendState::Ready(b) => Ok(b),
            BackendState::Loading(what) | BackendState::Preparing(what) => {
                Err(ApiError::unavailable(format!(
                    "the AI is not ready yet: {what}; try again in a moment"
                )))
            }
            BackendState::Unavailable(why) => Err(ApiError::unavailable(why)),
        }
    }
}

/// The gateway's routes, to merge into the server's router.
pub fn router(state: Arc<GatewayState>) -> Router {
    Router::new()
        .route("/ai/v1/chat/completions", post(chat_completions))
        .route("/ai/v1/models", get(models))
        .route("/ai", post(seed_worker))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            cors_and_origin,
        ))
        .with_state(state)
}

/// Starts the answer: counts the prompt against the budgets, asks the backend, and
/// returns the model and the metered answer.
async fn start(
    state: &Arc<GatewayState>,
    request: ChatRequest,
    who: &Caller,
    stream: bool,
) -> Result<(String, impl Stream<Item = Piece> + Send + use<>), ApiError> {
    let backend = state.backend().await?;
    let charge = Charge::reserve(state, who, &request)?;
    tracing::info!(
        client = %who.addr,
        session = who.session.as_deref().unwrap_or("-"),
        stream,
        max_tokens = request.max_tokens,
        messages = request.messages.len(),
        prompt_tokens = charge.tokens,
        "AI request"
    );
    let model = backend.model();
    // On failure the prompt stays counted: the upstream may have read it.
    let (s, usage) = backend
        .stream_events(request)
        .await
        .map_err(|e| state.failed(e))?;
    Ok((model, metered(s, usage, charge)))
}

/// Collects a metered answer: (text, finish_reason).
async fn collect(
    state: &GatewayState,
    pieces: impl Stream<Item = Piece>,
) -> Result<(String, &'static str), ApiError> {
    let mut pieces = std::pin::pin!(pieces);
    let mut text = String::new();
    while let Some(p) = pieces.next().await {
        match p {
            Piece::Delta(d) => text.push_str(&d),
            Piece::Queued(_) => {}
            Piece::End(finish) => return Ok((text, finish)),
            Piece::Error(e) => return Err(state.failed(e)),
        }
    }
    Ok((text, "stop"))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn completion_id() -> String {
    format!("chatcmpl-{:016x}", rand::random::<u64>())
}

async fn chat_completions(State(state): State<Arc<GatewayState>>, req: Request) -> Response {
    match chat_completions_inner(state, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn chat_completions_inner(
    state: Arc<GatewayState>,
    req: Request,
) -> Result<Response, ApiError> {
    let (who, body) = admit(&state, req).await?;
    let messages = body.get("messages").cloned().unwrap_or(Value::Null);
    let request = chat_request(&state, &body, &messages)?;
    let streaming = body.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let (model, pieces) = start(&state, request, &who, streaming).await?;
    let id = completion_id();
    let created = unix_now();
    if !streaming {
        let (text, finish) = collect(&state, pieces).await?;
        let tokens = if text.is_empty() {
            0
        } else {
            approx_tokens(&text)
        };
        return Ok(axum::Json(json!({
            "id": id, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}],
            "usage": {"completion_tokens": tokens},
        }))
        .into_response());
    }
    let mut first = true;
    let events = pieces.flat_map(move |p| {
        let chunk = |delta: Delta, finish: Option<&str>| {
            sse_data(&ChatCompletionChunk::delta(
                &id, created, &model, delta, finish,
            ))
        };
        let events = match p {
            Piece::Delta(d) => {
                let role = first.then(|| "assistant".to_owned());
                first = false;
                vec![chunk(
                    Delta {
                        role,
                        content: Some(d),
                    },
                    None,
                )]
            }
            Piece::Queued(ahead) => vec![sse_data(&ChatCompletionChunk::queue(
                &id, created, &model, ahead,
            ))],
            Piece::End(finish) => vec![
                chunk(Delta::default(), Some(finish)),
                Event::default().data(synq_openai::DONE),
            ],
            // Logged; the caller gets the safe message.
            Piece::Error(e) => vec![sse_data(&state.failed(e).body())],
        };
        stream::iter(events.into_iter().map(Ok::<_, std::convert::Infallible>))
    });
    let mut resp = Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response();
    // Reverse proxies (nginx) would otherwise buffer the stream and deliver it at the end.
    resp.headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(resp)
}

/// One server-sent event with `value` as JSON.
fn sse_data(value: &impl serde::Serialize) -> Event {
    // Our own wire types: serialising them cannot fail.
    Event::default().data(serde_json::to_string(value).unwrap_or_default())
}

async fn models(State(state): State<Arc<GatewayState>>) -> Response {
    match state.backend().await {
        Ok(b) => axum::Json(json!({
            "object": "list",
            "data": [{"id": b.model(), "object": "model", "created": 0, "owned_by": "synq"}],
        }))
        .into_response(),
        Err(e) => e.into_response(),
    }
}

/// The seed app's Cloudflare-worker shape.
async fn seed_worker(State(state): State<Arc<GatewayState>>, req: Request) -> Response {
    let result = async {
        let (who, body) = admit(&state, req).await?;
        let run = body.get("run").unwrap_or(&body);
        let options = run.get("options").unwrap_or(run);
        let messages = options.get("messages").cloned().unwrap_or(Value::Null);
        let request = chat_request(&state, options, &messages)?;
        let (_, pieces) = start(&state, request, &who, false).await?;
        let (text, _) = collect(&state, pieces).await?;
        Ok::<_, ApiError>(axum::Json(json!({"response": text})).into_response())
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}
