//! The one error type of synq-ai. Every message says what went wrong; advice about the
//! command line of a program that uses this crate is that program's to add (the `synq`
//! binary does), since these messages can reach a chat room.

use std::time::Duration;

/// What can go wrong when asking a backend for a chat completion.
#[derive(Debug, thiserror::Error)]
pub enum AiError {
    /// The upstream could not be reached at all (DNS, refused connection, TLS).
    #[error("the AI service at {url} is unreachable ({reason})")]
    Unreachable { url: String, reason: String },

    /// The upstream refused the API key.
    #[error("the AI service at {url} refused the API key (HTTP {status})")]
    Unauthorized { url: String, status: u16 },

    /// The upstream does not serve the configured model.
    #[error(
        "the AI service at {url} does not serve the model {model:?} (it lists its models at {url}/models)"
    )]
    UnknownModel { url: String, model: String },

    /// Too many requests: the upstream's rate limit, or one of the gateway's guards.
    #[error("{what} is rate limited{}; wait and try again", retry_hint(*retry_after))]
    RateLimited {
        what: String,
        retry_after: Option<Duration>,
    },

    /// The model cannot be used: weights missing, corrupt, not downloadable, unsupported.
    #[error("the AI model is unavailable: {reason}. To fix: {fix}")]
    ModelUnavailable { reason: String, fix: String },

    /// No answer (or no next token) within the configured time.
    #[error(
        "the AI service at {url} sent nothing for {after:?}; it may be overloaded or loading the model, try again"
    )]
    Timeout { url: String, after: Duration },

    /// Any other error status from the upstream.
    #[error("the AI service at {url} answered HTTP {status}: {message}")]
    Upstream {
        url: String,
        status: u16,
        message: String,
    },

    /// The upstream's answer was not in the OpenAI format.
    #[error("the AI service at {url} sent an answer that is not OpenAI-compatible ({reason})")]
    Protocol { url: String, reason: String },

    /// The request itself is not acceptable (empty messages, …).
    #[error("invalid chat request: {0}")]
    InvalidRequest(String),

    /// The embedded model failed while generating.
    #[error("the local model failed while generating: {0}")]
    Generation(String),
}

fn retry_hint(after: Option<Duration>) -> String {
    match after {
        Some(d) => format!(" (retry after {}s)", d.as_secs().max(1)),
        None => String::new(),
    }
}

impl AiError {
    /// The HTTP status the gateway answers with for this error.
    pub fn http_status(&self) -> u16 {
        match self {
            AiError::InvalidRequest(_) => 400,
            AiError::RateLimited { .. } => 429,
            AiError::ModelUnavailable { .. } => 503,
            AiError::Timeout { .. } => 504,
            AiError::Unreachable { .. }
            | AiError::Unauthorized { .. }
            | AiError::UnknownModel { .. }
            | AiError::Upstream { .. }
            | AiError::Protocol { .. } => 502,
            AiError::Generation(_) => 500,
        }
    }

    /// A short machine-readable kind, used as the OpenAI error `type`/`code`.
    pub fn kind(&self) -> &'static str {
        match self {
            AiError::Unreachable { .. } => "upstream_unreachable",
            AiError::Unauthorized { .. } => "upstream_unauthorized",
            AiError::UnknownModel { .. } => "model_not_found",
            AiError::RateLimited { .. } => "rate_limit_exceeded",
            AiError::ModelUnavailable { .. } => "model_unavailable",
            AiError::Timeout { .. } => "upstream_timeout",
            AiError::Upstream { .. } => "upstream_error",
            AiError::Protocol { .. } => "upstream_protocol_error",
            AiError::InvalidRequest(_) => "invalid_request_error",
            AiError::Generation(_) => "generation_error",
        }
    }
}
