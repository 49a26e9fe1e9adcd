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
//! Guards: origin allowlist, per-IP and per-session rate limits, a daily token budget, a
//! cap on `max_tokens` and on the request size. The model is the server's: a client's
//! `model` field is ignored. When the caller goes away, the backend stream is dropped,
//! which cancels the upstream request or the local generation.

mod args;
pub mod guards;

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::{Stream, StreamExt, stream};
use serde_json::{Value, json};

use crate::AiError;
use crate::backend::{ChatBackend, ChatMessage, ChatRequest, Role, TextStream};

pub use args::{API_KEY_ENV, AiArgs, AiConfigError};
use guards::{RateLimiter, TokenBudget, approx_tokens, origin_allowed, until_budget_reset};

/// The header a client may send to be rate-limited per chat session as well as per IP.
pub const SESSION_HEADER: &str = "x-synq-session";

/// What serves the answers, as it is now.
#[derive(Clone)]
pub enum BackendState {
    Ready(Arc<dyn ChatBackend>),
    /// Being prepared (download, load); the text says what is happening.
    Loading(String),
    /// No AI: why, and how to fix it.
    Unavailable(String),
}

/// The gateway's backend, shared with whoever prepares it (e.g. a background model load).
#[derive(Clone)]
pub struct BackendSlot(Arc<RwLock<BackendState>>);

impl BackendSlot {
    pub fn new(state: BackendState) -> Self {
        Self(Arc::new(RwLock::new(state)))
    }

    pub fn set(&self, state: BackendState) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = state;
    }

    pub fn get(&self) -> BackendState {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// The gateway's guards.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// A client's `max_tokens` is clamped to this (and is the default).
    pub max_tokens: u32,
    /// Larger request bodies get 413.
    pub max_body_bytes: usize,
    /// Requests per minute per client IP (0 = unlimited).
    pub rate_per_minute: u32,
    /// Requests per minute per `X-Synq-Session` (0 = unlimited).
    pub session_rate_per_minute: u32,
    /// Generated tokens per UTC day, all clients together (0 = unlimited).
    pub daily_token_budget: u64,
    /// Origins allowed besides the server's own and localhost (`*`: any).
    pub allowed_origins: Vec<String>,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            max_tokens: 1024,
            max_body_bytes: 256 * 1024,
            rate_per_minute: 30,
            session_rate_per_minute: 20,
            daily_token_budget: 1_000_000,
            allowed_origins: Vec::new(),
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
}

impl GatewayState {
    pub fn new(config: GatewayConfig, slot: BackendSlot) -> Arc<Self> {
        Arc::new(Self {
            per_ip: RateLimiter::new(config.rate_per_minute),
            per_session: RateLimiter::new(config.session_rate_per_minute),
            budget: TokenBudget::new(config.daily_token_budget),
            slot,
            config,
        })
    }

    pub fn slot(&self) -> &BackendSlot {
        &self.slot
    }

    pub fn config(&self) -> &GatewayConfig {
        &self.config
    }

    fn backend(&self) -> Result<Arc<dyn ChatBackend>, ApiError> {
        match self.slot.get() {
            BackendState::Ready(b) => Ok(b),
            BackendState::Loading(what) => Err(ApiError::unavailable(format!(
                "the AI is not ready yet: {what}; try again in a moment"
            ))),
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

/// An error answered in OpenAI's shape: `{"error": {"message", "type", "code"}}`.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    kind: &'static str,
    message: String,
    retry_after: Option<Duration>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            kind,
            message: message.into(),
            retry_after: None,
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }

    fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "ai_unavailable", message)
    }

    fn rate_limited(message: String, retry_after: Duration) -> Self {
        Self {
            retry_after: Some(retry_after),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_exceeded",
                message,
            )
        }
    }

    fn body(&self) -> Value {
        json!({"error": {"message": self.message, "type": self.kind, "code": self.kind}})
    }
}

impl From<AiError> for ApiError {
    fn from(e: AiError) -> Self {
        let status =
            StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let retry_after = match &e {
            AiError::RateLimited { retry_after, .. } => *retry_after,
            _ => None,
        };
        Self {
            status,
            kind: e.kind(),
            message: e.to_string(),
            retry_after,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, axum::Json(self.body())).into_response();
        if let Some(after) = self.retry_after {
            let secs = after.as_secs_f64().ceil().max(1.0) as u64;
            resp.headers_mut().insert(header::RETRY_AFTER, secs.into());
        }
        resp
    }
}

/// Refuses foreign web origins (403) and answers CORS for the allowed ones, so that a page
/// served elsewhere on localhost (a dev server, the seed app) can call the gateway.
/// Requests without `Origin` (curl, native clients) are not from a browser page: allowed.
async fn cors_and_origin(
    State(state): State<Arc<GatewayState>>,
    req: Request,
    next: Next,
) -> Response {
    let Some(origin) = req.headers().get(header::ORIGIN).cloned() else {
        return next.run(req).await;
    };
    // HTTP/2 carries the host in the URI authority instead of a Host header.
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()));
    let allowed = origin
        .to_str()
        .is_ok_and(|o| origin_allowed(o, host, &state.config.allowed_origins));
    if !allowed {
        tracing::info!(origin = ?origin, path = %req.uri().path(), "AI request from a foreign origin refused");
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "origin_not_allowed",
            format!(
                "web pages from {} may not use this server's AI; the operator can allow it with --ai-allowed-origin",
                origin.to_str().unwrap_or("this origin")
            ),
        )
        .into_response();
    }
    let mut resp = if req.method() == Method::OPTIONS {
        let mut r = StatusCode::NO_CONTENT.into_response();
        let h = r.headers_mut();
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST, OPTIONS"),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("content-type, authorization, x-synq-session"),
        );
        h.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("600"),
        );
        r
    } else {
        next.run(req).await
    };
    let h = resp.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    h.append(header::VARY, HeaderValue::from_static("Origin"));
    resp
}

/// Who is asking: the peer IP, and the session if the client names one.
struct Caller {
    ip: String,
    session: Option<String>,
}

fn caller(req: &Request) -> Caller {
    let ip = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string())
        .unwrap_or_else(|| "unknown".into());
    let session = req
        .headers()
        .get(SESSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.chars().take(128).collect::<String>())
        .filter(|s| !s.is_empty());
    Caller { ip, session }
}

/// The guards every generation request passes, then its parsed JSON body.
async fn admit(state: &GatewayState, req: Request) -> Result<(Caller, Value), ApiError> {
    let who = caller(&req);
    if let Err(wait) = state.per_ip.check(&who.ip) {
        return Err(ApiError::rate_limited(
            format!(
                "too many AI requests from your address (limit: {} per minute); wait and try again",
                state.config.rate_per_minute
            ),
            wait,
        ));
    }
    if let Some(session) = &who.session
        && let Err(wait) = state.per_session.check(session)
    {
        return Err(ApiError::rate_limited(
            format!(
                "too many AI requests in this session (limit: {} per minute); wait and try again",
                state.config.session_rate_per_minute
            ),
            wait,
        ));
    }
    if state.budget.remaining() == 0 {
        return Err(ApiError::rate_limited(
            format!(
                "this server's daily AI budget ({} tokens) is used up; it resets at midnight UTC",
                state.budget.per_day()
            ),
            until_budget_reset(),
        ));
    }
    let limit = state.config.max_body_bytes;
    let bytes = axum::body::to_bytes(req.into_body(), limit)
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "request_too_large",
                format!("the AI request is larger than this server accepts ({limit} bytes); send a shorter conversation"),
            )
        })?;
    let body = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request(format!("the request body is not JSON: {e}")))?;
    Ok((who, body))
}

/// Reads OpenAI-style messages; `content` may be a string or a list of text parts.
fn parse_messages(v: &Value) -> Result<Vec<ChatMessage>, ApiError> {
    let list = v
        .as_array()
        .ok_or_else(|| ApiError::bad_request("`messages` must be a list of {role, content}"))?;
    list.iter()
        .map(|m| {
            let role = match m.get("role").and_then(Value::as_str) {
                Some("system" | "developer") => Role::System,
                Some("user") => Role::User,
                Some("assistant") => Role::Assistant,
                other => {
                    return Err(ApiError::bad_request(format!(
                        "unsupported message role {other:?}; use system, user or assistant"
                    )));
                }
            };
            let content = match m.get("content") {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Array(parts)) => parts
                    .iter()
                    .filter_map(|p| p.get("text").and_then(Value::as_str))
                    .collect::<Vec<_>>()
                    .join(""),
                Some(Value::Null) | None => String::new(),
                Some(_) => {
                    return Err(ApiError::bad_request(
                        "message `content` must be a string or a list of text parts",
                    ));
                }
            };
            Ok(ChatMessage { role, content })
        })
        .collect()
}

/// Builds the backend request: the client's sampling options, `max_tokens` clamped to the
/// server's cap. A client's `model` is deliberately not read.
fn chat_request(
    state: &GatewayState,
    body: &Value,
    messages: &Value,
) -> Result<ChatRequest, ApiError> {
    let cap = state.config.max_tokens;
    let asked = body
        .get("max_tokens")
        .or_else(|| body.get("max_completion_tokens"))
        .and_then(Value::as_u64);
    let mut request = ChatRequest::new(parse_messages(messages)?);
    request.max_tokens = asked.map_or(cap, |n| n.min(u64::from(cap)) as u32);
    request.temperature = body
        .get("temperature")
        .and_then(Value::as_f64)
        .map(|t| t as f32);
    request.top_p = body.get("top_p").and_then(Value::as_f64).map(|t| t as f32);
    request.seed = body.get("seed").and_then(Value::as_u64);
    request.validate()?;
    Ok(request)
}

/// What the metered answer stream yields.
enum Piece {
    Delta(String),
    /// The end, with OpenAI's `finish_reason`.
    End(&'static str),
    Error(AiError),
}

/// Wraps a backend stream: counts tokens against the daily budget and ends the answer
/// (dropping the backend stream, so cancelling it) when the budget runs out.
fn metered(inner: TextStream, state: Arc<GatewayState>) -> impl Stream<Item = Piece> + Send {
    struct Meter {
        inner: Option<TextStream>,
        state: Arc<GatewayState>,
        ended: bool,
        tokens: u64,
        started: Instant,
    }
    impl Meter {
        fn end(mut self, piece: Piece) -> Option<(Piece, Meter)> {
            self.inner = None;
            self.ended = true;
            let outcome = match &piece {
                Piece::End(finish) => *finish,
                _ => "error",
            };
            tracing::info!(
                tokens = self.tokens,
                ms = self.started.elapsed().as_millis() as u64,
                outcome,
                "AI answer ended"
            );
            Some((piece, self))
        }
    }
    impl Drop for Meter {
        fn drop(&mut self) {
            if !self.ended {
                tracing::info!(
                    tokens = self.tokens,
                    ms = self.started.elapsed().as_millis() as u64,
                    "AI answer cancelled: the caller went away"
                );
            }
        }
    }
    let meter = Meter {
        inner: Some(inner),
        state,
        ended: false,
        tokens: 0,
        started: Instant::now(),
    };
    stream::unfold(meter, |mut m| async move {
        if m.ended {
            return None;
        }
        let Some(s) = m.inner.as_mut() else {
            return m.end(Piece::End("length"));
        };
        loop {
            match s.next().await {
                Some(Ok(d)) if d.is_empty() => continue,
                Some(Ok(d)) => {
                    let tokens = approx_tokens(&d);
                    m.tokens += tokens;
                    if m.state.budget.spend(tokens) == 0 {
                        tracing::warn!("daily AI token budget used up; ending the answer");
                        m.inner = None; // cancels the backend now
                    }
                    return Some((Piece::Delta(d), m));
                }
                None => return m.end(Piece::End("stop")),
                Some(Err(e)) => return m.end(Piece::Error(e)),
            }
        }
    })
}

/// Starts the answer: guards, backend, first response from it.
async fn start(
    state: &Arc<GatewayState>,
    request: ChatRequest,
    who: &Caller,
    stream: bool,
) -> Result<(String, TextStream), ApiError> {
    let backend = state.backend()?;
    tracing::info!(
        client = %who.ip,
        session = who.session.as_deref().unwrap_or("-"),
        stream,
        max_tokens = request.max_tokens,
        messages = request.messages.len(),
        "AI request"
    );
    let model = backend.model();
    let s = backend.stream_chat(request).await.map_err(|e| {
        tracing::warn!(error = %e, "AI backend failed");
        ApiError::from(e)
    })?;
    Ok((model, s))
}

/// Collects a metered answer: (text, finish_reason).
async fn collect(pieces: impl Stream<Item = Piece>) -> Result<(String, &'static str), ApiError> {
    let mut pieces = std::pin::pin!(pieces);
    let mut text = String::new();
    while let Some(p) = pieces.next().await {
        match p {
            Piece::Delta(d) => text.push_str(&d),
            Piece::End(finish) => return Ok((text, finish)),
            Piece::Error(e) => return Err(e.into()),
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
    let (model, s) = start(&state, request, &who, streaming).await?;
    let pieces = metered(s, state.clone());
    let id = completion_id();
    let created = unix_now();
    if !streaming {
        let (text, finish) = collect(pieces).await?;
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
    let chunk = move |delta: Value, finish: Option<&str>| {
        Event::default().data(
            json!({
                "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            })
            .to_string(),
        )
    };
    let mut first = true;
    let events = pieces.flat_map(move |p| {
        let events = match p {
            Piece::Delta(d) => {
                let delta = if first {
                    json!({"role": "assistant", "content": d})
                } else {
                    json!({"content": d})
                };
                first = false;
                vec![chunk(delta, None)]
            }
            Piece::End(finish) => vec![
                chunk(json!({}), Some(finish)),
                Event::default().data("[DONE]"),
            ],
            Piece::Error(e) => {
                tracing::warn!(error = %e, "AI answer broke off");
                vec![Event::default().data(ApiError::from(e).body().to_string())]
            }
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

async fn models(State(state): State<Arc<GatewayState>>) -> Response {
    match state.backend() {
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
        let (_, s) = start(&state, request, &who, false).await?;
        let (text, _) = collect(metered(s, state.clone())).await?;
        Ok::<_, ApiError>(axum::Json(json!({"response": text})).into_response())
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_accept_text_parts_and_the_developer_role_and_refuse_unknown_roles() {
        let m = parse_messages(&json!([
            {"role": "developer", "content": "rules"},
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
            {"role": "assistant", "content": null},
        ]))
        .expect("valid");
        assert_eq!(
            m,
            [
                ChatMessage::system("rules"),
                ChatMessage::user("ab"),
                ChatMessage::assistant("")
            ]
        );
        let err = parse_messages(&json!([{"role": "tool", "content": "x"}])).expect_err("tool");
        assert_eq!(err.status, StatusCode::BAD_REQUEST);
        assert!(parse_messages(&json!("hi")).is_err());
    }

    #[test]
    fn max_tokens_is_clamped_defaulted_and_the_model_never_read() {
        let state = GatewayState::new(
            GatewayConfig {
                max_tokens: 100,
                ..GatewayConfig::default()
            },
            BackendSlot::new(BackendState::Unavailable("test".into())),
        );
        let msgs = json!([{"role": "user", "content": "hi"}]);
        let r = |body: Value| chat_request(&state, &body, &msgs);
        assert_eq!(r(json!({"max_tokens": 5000})).expect("ok").max_tokens, 100);
        assert_eq!(
            r(json!({"max_completion_tokens": 7}))
                .expect("ok")
                .max_tokens,
            7
        );
        assert_eq!(r(json!({})).expect("ok").max_tokens, 100);
        assert!(r(json!({"max_tokens": 0})).is_err());
        let with_options =
            r(json!({"temperature": 0.5, "top_p": 0.9, "seed": 7, "model": "x"})).expect("ok");
        assert_eq!(with_options.temperature, Some(0.5));
        assert_eq!(with_options.seed, Some(7));
    }
}
