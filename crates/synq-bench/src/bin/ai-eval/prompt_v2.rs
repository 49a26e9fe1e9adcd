//! The prompt of the second milestone (`synq_chat::prompt::build` at commit f75f796),
//! reproduced for comparison: the system message, then the whole history as one
//! transcript inside a single `user` message that ends with "Ann now writes: …" and asks
//! for the AI's reply. Small models repeated the post back (`ai-eval --prompt v2`).

use synq_chat::prompt::{self, AiRequest, PromptInput, PromptMessage, PromptRole};
use synq_chat::{AI_NAME, AiState, EntryKind};

pub fn build(input: &PromptInput<'_>) -> AiRequest {
    let mut people: Vec<&str> = input.present.iter().map(String::as_str).collect();
    people.sort_unstable();
    people.dedup();
    let mut system = format!(
        "You are {AI_NAME}, the assistant in a group chat with several people. \
         People in the chat now: {}. \
         You write only your own messages, as {AI_NAME}: never write a line for anyone \
         else, never start with a name and a colon, and never answer a question meant \
         for another person in their place. \
         Reply briefly (one to three sentences unless asked for more) in plain text: \
         no Markdown, no lists, no code fences.",
        if people.is_empty() {
            "nobody else".to_owned()
        } else {
            people.join(", ")
        }
    );
    let instructions = input.instructions.trim();
    if !instructions.is_empty() {
        system.push_str(&format!(
            "\nThe people set these instructions for you: {instructions}"
        ));
    }
    let mut transcript = String::new();
    for e in prompt::window(input.history) {
        let line = match &e.kind {
            EntryKind::Post { name, text, .. } => format!("{name}: {text}"),
            EntryKind::Ai { text, state, .. } if *state != AiState::Waiting => {
                if text.is_empty() {
                    continue;
                }
                format!("{AI_NAME}: {text}")
            }
            EntryKind::Joined { name } => format!("({name} joined the chat)"),
            EntryKind::Left { name } => format!("({name} left the chat)"),
            _ => continue,
        };
        transcript.push_str(&line);
        transcript.push('\n');
    }
    let mut request = String::new();
    if !transcript.is_empty() {
        request.push_str("The chat so far:\n");
        request.push_str(&transcript);
        request.push('\n');
    }
    request.push_str(&format!(
        "{} now writes: {}\n\nWrite {AI_NAME}'s reply to {}, and nothing else.",
        input.asker, input.text, input.asker
    ));
    AiRequest {
        messages: vec![
            PromptMessage {
                role: PromptRole::System,
                content: system,
            },
            PromptMessage {
                role: PromptRole::User,
                content: request,
            },
        ],
        sampling: Default::default(),
    }
}
