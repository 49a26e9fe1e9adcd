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

mod args;
pub mod capability;
pub mod guards;

use std::net::SocketAddr;
use std::sync::Arc;
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
use crate::backend::{ChatBackend, ChatMessage, ChatRequest, Role, TextStream, Usage, UsageReport};

pub use args::{API_KEY_ENV, AiArgs, AiConfigError};
pub use capability::{Capabilities, CapabilityError};
use guards::{
    AddressBudgets, RateLimiter, TokenBudget, address_key, approx_prompt_tokens, approx_tokens,
    log_safe, until_budget_reset,
};
use synq_protocol::origin::{host_allowed, origin_allowed};

/// Whether a session is live right now (asked of the reflector).
pub type SessionLive = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// Most characters of an upstream's error written to the log.
const LOG_ERROR_CHARS: usize = 300;

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

    fn unauthorized(kind: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, kind, message)
    }

    fn budget_exhausted(message: String) -> Self {
        Self::rate_limited(message, until_budget_reset())
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

/// What the caller is told of a backend error: only what it can act on. The error itself
/// (which may name the upstream's URL, internal addresses, or echo the upstream's error
/// body) goes to the server's log, escaped and cut.
impl From<AiError> for ApiError {
    fn from(e: AiError) -> Self {
        if let AiError::InvalidRequest(why) = &e {
            // The caller's own request, described by our own code.
            return Self::bad_request(format!("invalid chat request: {why}"));
        }
        tracing::warn!(
            kind = e.kind(),
            error = %log_safe(&e.to_string(), LOG_ERROR_CHARS),
            "AI backend failed"
        );
        match e {
            AiError::RateLimited { retry_after, .. } => Self::rate_limited(
                "the AI service is busy; wait and try again".into(),
                retry_after
                    .unwrap_or(Duration::from_secs(10))
                    .min(Duration::from_secs(300)),
            ),
            AiError::Timeout { .. } => Self::new(
                StatusCode::GATEWAY_TIMEOUT,
                "ai_timeout",
                "the AI service did not answer in time; try again later",
            ),
            AiError::ModelUnavailable { .. } | AiError::Generation(_) => {
                Self::unavailable("the AI is unavailable right now; try again later")
            }
            _ => Self::new(
                StatusCode::BAD_GATEWAY,
                "ai_unavailable",
                "the AI service is unavailable right now; try again later (the server's log says why)",
            ),
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

/// Refuses requests for host names that are not this server's (403: DNS rebinding) and
/// foreign web origins (403), and answers CORS for the allowed ones, so that a page served
/// elsewhere on localhost (a dev server, the seed app) can call the gateway. Requests
/// without `Origin` (curl, native clients) are not from a browser page; they still need
/// an AI capability (see [`admit`]).
async fn cors_and_origin(
    State(state): State<Arc<GatewayState>>,
    req: Request,
    next: Next,
) -> Response {
    // HTTP/2 carries the host in the URI authority instead of a Host header.
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))
        .map(str::to_owned);
    // A request without any host name cannot come from a browser page (browsers always
    // send one), so it cannot be a rebinding attack.
    if let Some(h) = &host
        && !host_allowed(h, &state.config.allowed_hosts)
    {
        tracing::info!(host = %log_safe(h, 100), path = %req.uri().path(), "AI request for a foreign host name refused");
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "host_not_allowed",
            "this server does not answer AI requests for this host name; the operator can allow it with --allowed-host",
        )
        .into_response();
    }
    let host = host.as_deref();
    let Some(origin) = req.headers().get(header::ORIGIN).cloned() else {
        return next.run(req).await;
    };
    let allowed = origin
        .to_str()
        .is_ok_and(|o| origin_allowed(o, host, &state.config.allowed_origins));
    if !allowed {
        tracing::info!(origin = %log_safe(origin.to_str().unwrap_or("?"), 100), path = %req.uri().path(), "AI request from a foreign origin refused");
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
            HeaderValue::from_static("content-type, authorization"),
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

/// Who is asking: the peer's address key (IPv6: its /64), and the session of its AI
/// capability (`None` for an anonymous call).
struct Caller {
    addr: String,
    session: Option<String>,
}

/// The token of an `Authorization: Bearer …` header.
fn bearer(req: &Request) -> Option<&str> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// The session whose AI capability the request presents, or `None` for an anonymous
/// call the operator allows.
fn authorize(state: &GatewayState, req: &Request, addr: &str) -> Result<Option<String>, ApiError> {
    let Some(token) = bearer(req) else {
        if state.config.allow_anonymous {
            return Ok(None);
        }
        return Err(ApiError::unauthorized(
            "ai_capability_missing",
            "this server's AI answers the participants of its chat rooms only: join a room to get an AI capability and send it as `Authorization: Bearer …` (operators can allow anonymous calls with --ai-allow-anonymous)",
        ));
    };
    let refused = |kind, why: &str| {
        tracing::info!(client = %addr, why, "AI request with an unusable capability refused");
        Err(ApiError::unauthorized(
            kind,
            format!("{why}; rejoin the room to get a new one"),
        ))
    };
    let Some((caps, live)) = &state.access else {
        return refused(
            "ai_capability_invalid",
            "this server issues no AI capabilities",
        );
    };
    let session = match caps.verify(token) {
        Ok(session) => session,
        Err(CapabilityError::Expired) => {
            return refused("ai_capability_expired", "the AI capability has expired");
        }
        Err(e) => return refused("ai_capability_invalid", &e.to_string()),
    };
    if !live(&session) {
        return refused(
            "session_not_live",
            "the AI capability is for a session that is not running now",
        );
    }
    Ok(Some(session))
}

/// The guards every generation request passes, then its parsed JSON body.
async fn admit(state: &GatewayState, req: Request) -> Result<(Caller, Value), ApiError> {
    let addr = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| address_key(c.0.ip()))
        .unwrap_or_else(|| "unknown".into());
    // Before the capability check: failed attempts count too.
    if let Err(wait) = state.per_ip.check(&addr) {
        return Err(ApiError::rate_limited(
            format!(
                "too many AI requests from your address (limit: {} per minute); wait and try again",
                state.config.rate_per_minute
            ),
            wait,
        ));
    }
    let session = authorize(state, &req, &addr)?;
    let who = Caller { addr, session };
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
        return Err(ApiError::budget_exhausted(format!(
            "this server's daily AI budget ({} tokens) is used up; it resets at midnight UTC",
            state.budget.per_day()
        )));
    }
    if state.per_address_budget.remaining(&who.addr) == 0 {
        return Err(ApiError::budget_exhausted(format!(
            "your address's daily AI budget ({} tokens) is used up; it resets at midnight UTC",
            state.per_address_budget.per_day()
        )));
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

/// What one request has cost so far, counted against both daily budgets.
struct Charge {
    state: Arc<GatewayState>,
    addr: String,
    /// The prompt's estimate plus the answer's tokens so far.
    tokens: u64,
}

impl Charge {
    /// Counts the prompt before anything is sent upstream, or refuses the request (429)
    /// if it would take either budget past its limit: a huge prompt costs the operator
    /// even if the answer is cut at once.
    fn reserve(
        state: &Arc<GatewayState>,
        who: &Caller,
        request: &ChatRequest,
    ) -> Result<Charge, ApiError> {
        let prompt = approx_prompt_tokens(request.messages.iter().map(|m| m.content.as_str()));
        let too_big = |left: u64, whose: &str, per_day: u64| {
            ApiError::budget_exhausted(format!(
                "this request needs about {prompt} tokens but only {left} are left today of {whose} daily AI budget ({per_day} tokens); send a shorter conversation, or wait until midnight UTC"
            ))
        };
        state
            .per_address_budget
            .try_spend(&who.addr, prompt)
            .map_err(|left| too_big(left, "your address's", state.per_address_budget.per_day()))?;
        if let Err(left) = state.budget.try_spend(prompt) {
            state.per_address_budget.refund(&who.addr, prompt);
            return Err(too_big(left, "this server's", state.budget.per_day()));
        }
        Ok(Charge {
            state: state.clone(),
            addr: who.addr.clone(),
            tokens: prompt,
        })
    }

    /// Counts answer tokens; `false` once either budget is used up.
    fn spend(&mut self, tokens: u64) -> bool {
        self.tokens += tokens;
        let server = self.state.budget.spend(tokens);
        let address = self.state.per_address_budget.spend(&self.addr, tokens);
        server > 0 && address > 0
    }

    /// Replaces the estimate with the service's own count.
    fn settle(&mut self, usage: Usage) {
        let actual = usage.prompt_tokens.saturating_add(usage.completion_tokens);
        if actual > self.tokens {
            let more = actual - self.tokens;
            self.state.budget.spend(more);
            self.state.per_address_budget.spend(&self.addr, more);
        } else {
            let less = self.tokens - actual;
            self.state.budget.refund(less);
            self.state.per_address_budget.refund(&self.addr, less);
        }
        self.tokens = actual;
    }
}

/// Wraps a backend stream: counts tokens against the daily budgets and ends the answer
/// (dropping the backend stream, so cancelling it) when one runs out; at the end, uses
/// the service's own count if it reported one.
fn metered(
    inner: TextStream,
    usage: UsageReport,
    charge: Charge,
) -> impl Stream<Item = Piece> + Send {
    struct Meter {
        inner: Option<TextStream>,
        usage: UsageReport,
        charge: Charge,
        ended: bool,
        answer_tokens: u64,
        started: Instant,
    }
    impl Meter {
        fn end(mut self, piece: Piece) -> Option<(Piece, Meter)> {
            self.inner = None;
            self.ended = true;
            let reported = self.usage.get();
            if let Some(u) = reported {
                self.charge.settle(u);
            }
            let outcome = match &piece {
                Piece::End(finish) => *finish,
                _ => "error",
            };
            tracing::info!(
                tokens = self.charge.tokens,
                answer_tokens = self.answer_tokens,
                reported = reported.is_some(),
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
                    tokens = self.charge.tokens,
                    ms = self.started.elapsed().as_millis() as u64,
                    "AI answer cancelled: the caller went away"
                );
            }
        }
    }
    let meter = Meter {
        inner: Some(inner),
        usage,
        charge,
        ended: false,
        answer_tokens: 0,
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
                    m.answer_tokens += tokens;
                    if !m.charge.spend(tokens) {
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
    let (s, usage) = backend.stream_chat_with_usage(request).await?;
    Ok((model, metered(s, usage, charge)))
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
    let (model, pieces) = start(&state, request, &who, streaming).await?;
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
            // Logged by the conversion; the caller gets the safe message.
            Piece::Error(e) => vec![Event::default().data(ApiError::from(e).body().to_string())],
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
        let (text, _) = collect(pieces).await?;
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
