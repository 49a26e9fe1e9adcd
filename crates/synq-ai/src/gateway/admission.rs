//! Who may call: the host and origin allowlists (with CORS), AI capabilities, the rate
//! limits and budgets checked before a request is read, and the body-size cap.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use synq_protocol::origin::{host_allowed, origin_allowed};

use super::GatewayState;
use super::api_error::ApiError;
use super::capability::CapabilityError;
use super::guards::{address_key, log_safe};

/// Refuses requests for host names that are not this server's (403: DNS rebinding) and
/// foreign web origins (403), and answers CORS for the allowed ones, so that a page served
/// elsewhere on localhost (a dev server, the seed app) can call the gateway. Requests
/// without `Origin` (curl, native clients) are not from a browser page; they still need
/// an AI capability (see [`admit`]).
pub(super) async fn cors_and_origin(
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
            "this server does not answer AI requests for this host name; its operator can allow it",
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
                "web pages from {} may not use this server's AI; its operator can allow them",
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
pub(super) struct Caller {
    pub(super) addr: String,
    pub(super) session: Option<String>,
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
async fn authorize(
    state: &GatewayState,
    token: Option<String>,
    addr: &str,
) -> Result<Option<String>, ApiError> {
    let Some(token) = token else {
        if state.config.allow_anonymous {
            return Ok(None);
        }
        return Err(ApiError::unauthorized(
            "ai_capability_missing",
            "this server's AI answers the participants of its chat rooms only: join a room to get an AI capability and send it as `Authorization: Bearer …` (its operator can allow anonymous calls)",
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
    let session = match caps.verify(&token) {
        Ok(session) => session,
        Err(CapabilityError::Expired) => {
            return refused("ai_capability_expired", "the AI capability has expired");
        }
        Err(e) => return refused("ai_capability_invalid", &e.to_string()),
    };
    if !live(&session).await {
        return refused(
            "session_not_live",
            "the AI capability is for a session that is not running now",
        );
    }
    Ok(Some(session))
}

/// The guards every generation request passes, then its parsed JSON body.
pub(super) async fn admit(state: &GatewayState, req: Request) -> Result<(Caller, Value), ApiError> {
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
    // Owned: the request's body may not be held across the liveness check.
    let token = bearer(&req).map(str::to_owned);
    let session = authorize(state, token, &addr).await?;
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
