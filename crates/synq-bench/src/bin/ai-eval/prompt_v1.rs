//! The milestone's original prompt (`ChatModel::prompt` at commit e078000), reproduced for
//! the baseline: a system line naming the people, each history post as a `user` message
//! "Name: text", each finished AI answer as `assistant`, then the post. It knew no room
//! instructions, joins or leaves (notices were left out).

use synq_chat::prompt::{AiRequest, PromptMessage, PromptRole};
use synq_chat::{AiState, Entry, EntryKind};

/// The values of e078000, fixed here so that the baseline stays the baseline.
const AI_NAME: &str = "AI";
const PROMPT_HISTORY: usize = 20;

pub fn build(present: &[String], history: &[Entry], name: &str, text: &str) -> AiRequest {
    let mut people: Vec<&str> = present.iter().map(String::as_str).collect();
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
    let recent: Vec<&Entry> = history.iter().rev().take(PROMPT_HISTORY).collect();
    for e in recent.into_iter().rev() {
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
        content: format!("{name}: {text}"),
    });
    AiRequest {
        messages,
        sampling: Default::default(),
    }
}
