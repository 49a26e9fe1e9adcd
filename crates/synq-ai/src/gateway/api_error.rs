//! Errors answered in OpenAI's shape, and what callers are told of a backend's failure.

use std::time::Duration;

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use synq_openai::ErrorBody;

use super::GatewayState;
use super::guards::{log_safe, until_budget_reset};
use crate::AiError;

/// Most characters of an upstream's error written to the log.
const LOG_ERROR_CHARS: usize = 300;

/// An error answered in OpenAI's shape: `{"error": {"message", "type", "code"}}`.
#[derive(Debug)]
pub(super) struct ApiError {
    pub(super) status: StatusCode,
    kind: &'static str,
    message: String,
    retry_after: Option<Duration>,
}

impl ApiError {
    pub(super) fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            kind,
            message: message.into(),
            retry_after: None,
        }
    }

    pub(super) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }

    pub(super) fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "ai_unavailable", message)
    }

    pub(super) fn unauthorized(kind: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, kind, message)
    }

    pub(super) fn budget_exhausted(message: String) -> Self {
        Self::rate_limited(message, until_budget_reset())
    }

    pub(super) fn rate_limited(message: String, retry_after: Duration) -> Self {
        Self {
            retry_after: Some(retry_after),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_exceeded",
                message,
            )
        }
    }

    pub(super) fn body(&self) -> ErrorBody {
        ErrorBody::new(self.kind, self.message.clone())
    }
}

impl GatewayState {
    /// What the caller is told of a backend error: only what it can act on. The error
    /// itself (which may name the upstream's URL, internal addresses, or echo the
    /// upstream's error body) goes to the server's log, escaped and cut, with the
    /// operator's advice.
    pub(super) fn failed(&self, e: AiError) -> ApiError {
        if !matches!(e, AiError::InvalidRequest(_)) {
            let advice = (self.config.operator_advice)(&e).unwrap_or_default();
            tracing::warn!(
                kind = e.kind(),
                error = %log_safe(&e.to_string(), LOG_ERROR_CHARS),
                advice = %advice,
                "AI backend failed"
            );
        }
        ApiError::from(e)
    }
}

/// What the caller is told of a backend error (see [`GatewayState::failed`], which logs
/// it first).
impl From<AiError> for ApiError {
    fn from(e: AiError) -> Self {
        if let AiError::InvalidRequest(why) = &e {
            // The caller's own request, described by our own code.
            return Self::bad_request(format!("invalid chat request: {why}"));
        }
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
