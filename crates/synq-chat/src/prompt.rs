//! The prompt the AI gets for a post: who is in the room, the room's instructions, the
//! recent history (posts, answers, joins and leaves) and the post. A pure function of its
//! input, so that the model, the views and the quality harness (`ai-eval`) build the same.

use serde::{Deserialize, Serialize};

use crate::model::{AI_NAME, AiState, Entry, EntryKind};

/// History entries given to the AI with each request.
pub const PROMPT_HISTORY: usize = 20;

/// Who says a message of the prompt (the OpenAI chat roles; serialized as their wire
/// names, since the browser sends the messages as they are).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PromptRole {
    System,
    User,
    Assistant,
}

impl PromptRole {
    /// The role's name in the OpenAI wire format.
    pub fn as_str(self) -> &'static str {
        match self {
            PromptRole::System => "system",
            PromptRole::User => "user",
            PromptRole::Assistant => "assistant",
        }
    }
}

/// One message of the prompt, in the OpenAI chat shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromptMessage {
    pub role: PromptRole,
    pub content: String,
}

/// What the elected view sends to the AI.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AiRequest {
    pub messages: Vec<PromptMessage>,
}

/// Everything a prompt is made of.
#[derive(Debug, Clone, Copy)]
pub struct PromptInput<'a> {
    /// Names of the people in the room now (not the AI).
    pub present: &'a [String],
    /// The history before the post, oldest first; the last [`PROMPT_HISTORY`] are used.
    pub history: &'a [Entry],
    /// The room's instructions for the AI ("answer in French"); may be empty.
    pub instructions: &'a str,
    /// Who posted, and what.
    pub asker: &'a str,
    pub text: &'a str,
}

/// The prompt for `input`.
pub fn build(input: &PromptInput<'_>) -> AiRequest {
    let mut people: Vec<&str> = input.present.iter().map(String::as_str).collect();
    people.sort_unstable();
    let system = format!(
        "You are {AI_NAME}, a participant in a group chat, among humans. \
         The people in the room are: {}. \
         Each message from a person starts with their name and a colon. \
         Answer the latest message briefly, as one participant among others. \
         Write plain text only: no Markdown, no HTML, no code fences.",
        people.join(", ")
    );
    let mut messages = vec![PromptMessage {
        role: PromptRole::System,
        content: system,
    }];
    let start = input.history.len().saturating_sub(PROMPT_HISTORY);
    for e in &input.history[start..] {
        match &e.kind {
            EntryKind::Post { name, text, .. } => messages.push(PromptMessage {
                role: PromptRole::User,
                content: format!("{name}: {text}"),
            }),
            EntryKind::Ai {
                text,
                state: AiState::Done,
                ..
            } => messages.push(PromptMessage {
                role: PromptRole::Assistant,
                content: text.clone(),
            }),
            _ => {}
        }
    }
    messages.push(PromptMessage {
        role: PromptRole::User,
        content: format!("{}: {}", input.asker, input.text),
    });
    AiRequest { messages }
}
