//! The backend trait and the request types shared by every backend.

use std::pin::Pin;
use std::sync::{Arc, Mutex};

use futures_util::{Stream, StreamExt};
use serde::{Deserialize, Serialize};

use crate::AiError;

/// Who wrote a chat message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
}

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: Role,
    pub content: String,
}

impl ChatMessage {
    pub fn system(content: impl Into<String>) -> Self {
        Self {
            role: Role::System,
            content: content.into(),
        }
    }
    pub fn user(content: impl Into<String>) -> Self {
        Self {
            role: Role::User,
            content: content.into(),
        }
    }
    pub fn assistant(content: impl Into<String>) -> Self {
        Self {
            role: Role::Assistant,
            content: content.into(),
        }
    }
}

/// A chat completion request. The model is not part of it: each backend serves the model
/// it was configured with.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatRequest {
    pub messages: Vec<ChatMessage>,
    /// Upper bound on generated tokens.
    pub max_tokens: u32,
    /// 0 means greedy. `None`: the backend's default.
    pub temperature: Option<f32>,
    /// Nucleus sampling. `None`: the backend's default.
    pub top_p: Option<f32>,
    /// Same seed, same prompt, same model → same text (local backend; upstreams may honour it).
    pub seed: Option<u64>,
    /// A bearer token for this request only, instead of the backend's configured key: the
    /// AI capability a chat participant presents to its server's gateway.
    pub bearer: Option<Bearer>,
}

/// A secret sent as `Authorization: Bearer …`; never printed by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct Bearer(pub String);

impl std::fmt::Debug for Bearer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Bearer(…)")
    }
}

/// Tokens used by one request, as the service reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

/// Where a backend puts the service's own token count once the answer has ended (empty
/// if the service does not report one).
#[derive(Debug, Clone, Default)]
pub struct UsageReport(Arc<Mutex<Option<Usage>>>);

impl UsageReport {
    pub fn set(&self, usage: Usage) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(usage);
    }

    pub fn get(&self) -> Option<Usage> {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl ChatRequest {
    pub fn new(messages: Vec<ChatMessage>) -> Self {
        Self {
            messages,
            max_tokens: 256,
            temperature: None,
            top_p: None,
            seed: None,
            bearer: None,
        }
    }

    pub fn max_tokens(mut self, n: u32) -> Self {
        self.max_tokens = n;
        self
    }

    pub fn temperature(mut self, t: f32) -> Self {
        self.temperature = Some(t);
        self
    }

    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Checks what every backend needs: at least one message, a positive token limit.
    pub fn validate(&self) -> Result<(), AiError> {
        if self.messages.is_empty() {
            return Err(AiError::InvalidRequest("no messages".into()));
        }
        if self.max_tokens == 0 {
            return Err(AiError::InvalidRequest(
                "max_tokens must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

/// The answer as it is generated: text deltas in order. An `Err` item ends the stream.
/// Dropping the stream cancels the generation.
pub type TextStream = Pin<Box<dyn Stream<Item = Result<String, AiError>> + Send + 'static>>;

/// What an answer stream says besides its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AiEvent {
    /// More text of the answer.
    Text(String),
    /// The request waits for the model: `ahead` requests come before it (the one being
    /// answered and those waiting before it). Sent when the position changes and repeated
    /// while it waits ([`QUEUE_HEARTBEAT`]); `0` once the request reaches the model.
    Queued { ahead: u32 },
}

/// How often a waiting request's position is repeated even if it has not changed: a
/// sign of life, so that callers do not count the wait in line as silence.
pub const QUEUE_HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(10);

/// [`AiEvent`]s in order. An `Err` item ends the stream. Dropping the stream cancels the
/// generation, or leaves the queue at once if it still waits.
pub type EventStream = Pin<Box<dyn Stream<Item = Result<AiEvent, AiError>> + Send + 'static>>;

/// A chat-completion service: an OpenAI-compatible upstream or the embedded model.
#[async_trait::async_trait]
pub trait ChatBackend: Send + Sync + 'static {
    /// The model this backend serves (reported by the gateway's `/v1/models`).
    fn model(&self) -> String;

    /// Starts a completion. Errors known before the request is sent (unreachable,
    /// unauthorized, unknown model, rate limited, model unavailable) are returned here;
    /// later ones are items of the stream. The [`UsageReport`] gets the service's own
    /// token count, when it gives one, once the stream has ended.
    async fn stream_events(
        &self,
        request: ChatRequest,
    ) -> Result<(EventStream, UsageReport), AiError>;

    /// The text of [`ChatBackend::stream_events`] alone.
    async fn stream_chat(&self, request: ChatRequest) -> Result<TextStream, AiError> {
        let (events, _) = self.stream_events(request).await?;
        Ok(text_only(events))
    }

    /// The whole answer at once. The default collects [`ChatBackend::stream_chat`].
    async fn complete(&self, request: ChatRequest) -> Result<String, AiError> {
        let stream = self.stream_chat(request).await?;
        collect_text(stream).await
    }
}

/// The text of an [`EventStream`].
pub fn text_only(events: EventStream) -> TextStream {
    Box::pin(events.filter_map(|e| {
        std::future::ready(match e {
            Ok(AiEvent::Text(t)) => Some(Ok(t)),
            Ok(AiEvent::Queued { .. }) => None,
            Err(e) => Some(Err(e)),
        })
    }))
}

/// Concatenates a [`TextStream`], stopping at the first error.
pub async fn collect_text(mut stream: TextStream) -> Result<String, AiError> {
    let mut text = String::new();
    while let Some(delta) = stream.next().await {
        text.push_str(&delta?);
    }
    Ok(text)
}
