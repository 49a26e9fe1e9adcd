//! The OpenAI chat-completions wire format, as synq's gateway serves it and synq's clients
//! (the OpenAI-compatible backend, the browser) read it: one place for the JSON shapes and
//! the server-sent-events decoder, so that writer and readers cannot drift apart.
//!
//! - [`ChatCompletionRequest`], [`ChatCompletionChunk`], [`ChatCompletion`],
//!   [`ErrorBody`], [`Usage`]: the JSON bodies.
//! - [`SseDecoder`]: bytes of a `text/event-stream` in, each event's `data` out.
//! - [`parse_event`]: what one event's `data` (or a whole JSON answer) says.
//! - [`SynqExtension`]: synq's extension of a chunk, `"synq": {"queue": N}`, which
//!   tells a caller waiting for the embedded model how many requests are ahead of it.
//!   Standard clients ignore it: it comes in chunks with an empty `choices` list (like
//!   OpenAI's own `usage` chunk) and an unknown top-level field.
//!
//! No I/O: this crate compiles to wasm32.

#![forbid(unsafe_code)]

mod sse;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use sse::SseDecoder;

/// The `data` that ends a stream.
pub const DONE: &str = "[DONE]";

/// One message of a request, in its plain form (`content` a string).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// `system`, `user` or `assistant` (`developer` is read as `system` by the gateway).
    pub role: String,
    pub content: String,
}

/// `stream_options` of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamOptions {
    /// End a streamed answer with a chunk that reports the token count.
    pub include_usage: bool,
}

/// `POST …/chat/completions`, as synq's clients send it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatCompletionRequest {
    pub model: String,
    pub messages: Vec<Message>,
    pub max_tokens: u32,
    pub stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<StreamOptions>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
}

/// Tokens used by a request, as a service reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: u64,
    #[serde(default)]
    pub completion_tokens: u64,
}

/// The text added by one chunk.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Delta {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
}

/// One choice of a chunk (synq's gateway sends one, index 0).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkChoice {
    pub index: u32,
    pub delta: Delta,
    /// `stop`, `length`, …; `null` until the last chunk.
    pub finish_reason: Option<String>,
}

/// synq's extension of a chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SynqExtension {
    /// Requests ahead of this one for the model (the one being answered and those
    /// waiting before it). Sent while the request waits, again whenever it changes, and
    /// repeated every few seconds as a sign of life; `0` once this request reaches the
    /// model.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue: Option<u32>,
}

/// `chat.completion.chunk`: one event of a streamed answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatCompletionChunk {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub model: String,
    pub choices: Vec<ChunkChoice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub synq: Option<SynqExtension>,
}

impl ChatCompletionChunk {
    pub const OBJECT: &str = "chat.completion.chunk";

    /// A chunk of text (`role` on the first one) or, with `finish_reason`, the last one.
    pub fn delta(
        id: &str,
        created: u64,
        model: &str,
        delta: Delta,
        finish_reason: Option<&str>,
    ) -> Self {
        Self {
            id: id.to_owned(),
            object: Self::OBJECT.to_owned(),
            created,
            model: model.to_owned(),
            choices: vec![ChunkChoice {
                index: 0,
                delta,
                finish_reason: finish_reason.map(str::to_owned),
            }],
            usage: None,
            synq: None,
        }
    }

    /// synq's queue position: `ahead` requests before this one (no choices, so that
    /// standard clients see nothing).
    pub fn queue(id: &str, created: u64, model: &str, ahead: u32) -> Self {
        Self {
            choices: Vec::new(),
            synq: Some(SynqExtension { queue: Some(ahead) }),
            ..Self::delta(id, created, model, Delta::default(), None)
        }
    }
}

/// The message of a whole (non-streamed) answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompletionChoice {
    pub index: u32,
    pub message: Message,
    pub finish_reason: Option<String>,
}

/// `chat.completion`: a whole answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatCompletion {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub model: String,
    pub choices: Vec<CompletionChoice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

/// `{"error": {"message", "type", "code"}}`, as an error answer or a stream's event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub message: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub code: String,
}

impl ErrorBody {
    pub fn new(kind: &str, message: impl Into<String>) -> Self {
        Self {
            error: ErrorDetail {
                message: message.into(),
                kind: kind.to_owned(),
                code: kind.to_owned(),
            },
        }
    }
}

/// What the wire says that is not in the OpenAI format.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("event is not JSON: {0}")]
    NotJson(String),
}

/// What one event's `data`, or a whole JSON answer, says. The parse is lenient, as
/// OpenAI-compatible servers differ: it reads only the fields synq uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// `[DONE]`: the end of the stream.
    Done,
    /// An error event (`{"error": …}`), with its message.
    Error(String),
    Chunk {
        /// Text of `choices[0].delta.content` (or `message.content` of a whole answer);
        /// `None` when empty.
        text: Option<String>,
        usage: Option<Usage>,
        /// synq's queue position ([`SynqExtension::queue`]).
        queue: Option<u32>,
    },
}

/// Reads one event's `data` (or a whole JSON answer).
pub fn parse_event(data: &str) -> Result<Event, WireError> {
    if data.trim() == DONE {
        return Ok(Event::Done);
    }
    let v: Value = serde_json::from_str(data).map_err(|e| WireError::NotJson(e.to_string()))?;
    if let Some(err) = v.get("error") {
        return Ok(Event::Error(error_message(&err.to_string())));
    }
    let text = v
        .pointer("/choices/0/delta/content")
        .or_else(|| v.pointer("/choices/0/message/content"))
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
        .map(str::to_owned);
    let usage = v.get("usage").and_then(|u| Usage::deserialize(u).ok());
    let queue = v
        .pointer("/synq/queue")
        .and_then(Value::as_u64)
        .map(|n| u32::try_from(n).unwrap_or(u32::MAX));
    Ok(Event::Chunk { text, usage, queue })
}

/// Longest error message kept from a service's error body, in bytes.
const MAX_ERROR_MESSAGE: usize = 500;

/// The human-readable message of an OpenAI-style error body (`error.message`, `error`,
/// `message`, or the body itself), cut to 500 bytes.
pub fn error_message(body: &str) -> String {
    let parsed: Option<Value> = serde_json::from_str(body).ok();
    let msg = parsed.as_ref().and_then(|v| {
        v.pointer("/error/message")
            .or_else(|| v.get("error"))
            .or_else(|| v.get("message"))
            .and_then(Value::as_str)
            .map(str::to_string)
    });
    let mut msg = msg.unwrap_or_else(|| body.trim().to_string());
    if msg.len() > MAX_ERROR_MESSAGE {
        let mut cut = MAX_ERROR_MESSAGE;
        while !msg.is_char_boundary(cut) {
            cut -= 1;
        }
        msg.truncate(cut);
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_deltas_errors_usage_and_done_are_read() {
        let chunk = ChatCompletionChunk::delta(
            "c",
            1,
            "m",
            Delta {
                role: Some("assistant".into()),
                content: Some("Hi".into()),
            },
            None,
        );
        let data = serde_json::to_string(&chunk).expect("json");
        assert!(!data.contains("synq"), "no extension unless queued: {data}");
        assert_eq!(
            parse_event(&data),
            Ok(Event::Chunk {
                text: Some("Hi".into()),
                usage: None,
                queue: None
            })
        );
        assert_eq!(parse_event(" [DONE] "), Ok(Event::Done));
        let err = serde_json::to_string(&ErrorBody::new("x", "budget")).expect("json");
        assert_eq!(parse_event(&err), Ok(Event::Error("budget".into())));
        assert_eq!(
            parse_event(r#"{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4}}"#),
            Ok(Event::Chunk {
                text: None,
                usage: Some(Usage {
                    prompt_tokens: 3,
                    completion_tokens: 4
                }),
                queue: None
            })
        );
        assert_eq!(
            parse_event(r#"{"choices":[{"message":{"role":"assistant","content":"all"}}]}"#),
            Ok(Event::Chunk {
                text: Some("all".into()),
                usage: None,
                queue: None
            })
        );
        assert!(matches!(parse_event("nope"), Err(WireError::NotJson(_))));
    }

    #[test]
    fn the_queue_extension_has_no_choices_and_round_trips() {
        let data =
            serde_json::to_string(&ChatCompletionChunk::queue("c", 1, "m", 2)).expect("json");
        let v: Value = serde_json::from_str(&data).expect("json");
        assert_eq!(v["choices"], serde_json::json!([]));
        assert_eq!(v["synq"], serde_json::json!({"queue": 2}));
        assert_eq!(v["object"], "chat.completion.chunk");
        assert_eq!(
            parse_event(&data),
            Ok(Event::Chunk {
                text: None,
                usage: None,
                queue: Some(2)
            })
        );
    }

    #[test]
    fn error_messages_are_found_and_cut() {
        assert_eq!(error_message(r#"{"error":{"message":"no"}}"#), "no");
        assert_eq!(error_message(r#"{"error":"flat"}"#), "flat");
        assert_eq!(error_message(" plain "), "plain");
        assert_eq!(error_message(&"é".repeat(300)).len(), 500);
    }
}
