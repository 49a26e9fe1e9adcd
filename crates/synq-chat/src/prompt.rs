//! The prompt the AI gets for a post: who is in the room, the room's instructions, the
//! recent history (posts, answers, joins and leaves) and the post. A pure function of its
//! input, so that the model, the views and the quality harness (`ai-eval`) build the same.

use serde::{Deserialize, Serialize};

use crate::model::{AI_NAME, AiState, Entry, EntryKind};

/// History entries given to the AI with each request: at most this many, at least
/// `PROMPT_HISTORY - HISTORY_BLOCK + 1` when the room has them (see [`window`]).
pub const PROMPT_HISTORY: usize = 20;

/// The oldest entries leave the prompt in blocks of this many rather than one per post, so
/// that the prompt's start stays the same for several posts: a model that keeps the KV
/// cache of the previous prompt (synq's embedded model, llama.cpp's prompt cache) then reads
/// only the new entries, not the whole transcript again.
pub const HISTORY_BLOCK: usize = 10;

/// The entries of `history` (oldest first, increasing entry ids) that the prompt shows:
/// the last ones from the first entry id that is a multiple of [`HISTORY_BLOCK`] and
/// leaves at most [`PROMPT_HISTORY`]. Never more than the last `PROMPT_HISTORY` entries, as
/// the chat tells its users.
pub fn window(history: &[Entry]) -> &[Entry] {
    if history.len() <= PROMPT_HISTORY {
        return history;
    }
    let first = history[history.len() - PROMPT_HISTORY].id;
    let start_id = first.next_multiple_of(HISTORY_BLOCK as u64);
    &history[history.partition_point(|e| e.id < start_id)..]
}

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
    /// The history before the post, oldest first; the prompt shows its [`window`].
    pub history: &'a [Entry],
    /// The room's instructions for the AI ("answer in French"); may be empty.
    pub instructions: &'a str,
    /// Who posted, and what.
    pub asker: &'a str,
    pub text: &'a str,
}

/// The prompt for `input`.
///
/// Small models imitate what they are shown: given one `user` message per post as
/// `Name: text`, they answer as the next person in the transcript. So the people's
/// messages are one transcript inside a single `user` message, the AI's own earlier
/// answers are in it as `AI: …`, and the request ends by naming who asks and telling the
/// model to write only its own reply.
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
    for e in window(input.history) {
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use synq_model::ViewId;

    fn entry(id: u64, kind: EntryKind) -> Entry {
        Entry { id, at: 0, kind }
    }

    fn post(id: u64, name: &str, text: &str) -> Entry {
        entry(
            id,
            EntryKind::Post {
                from: ViewId::from(name),
                name: name.into(),
                text: text.into(),
                reply_to: None,
            },
        )
    }

    #[test]
    fn the_prompt_names_who_is_here_who_left_the_instructions_and_who_asks() {
        let history = vec![
            entry(1, EntryKind::Joined { name: "Ann".into() }),
            post(2, "Ann", "I'll bring cake"),
            entry(
                3,
                EntryKind::Ai {
                    request: 1,
                    post: 2,
                    text: "Sounds good.".into(),
                    state: AiState::Done,
                    stopped_by: None,
                    regenerated_by: None,
                },
            ),
            entry(4, EntryKind::Left { name: "Ann".into() }),
        ];
        let present = vec!["Bo".to_owned()];
        let r = build(&PromptInput {
            present: &present,
            history: &history,
            instructions: "answer in French",
            asker: "Bo",
            text: "AI, is Ann still here?",
        });
        assert_eq!(r.messages.len(), 2);
        let system = &r.messages[0].content;
        assert!(system.contains("People in the chat now: Bo."), "{system}");
        assert!(system.contains("answer in French"), "{system}");
        let user = &r.messages[1].content;
        assert!(
            user.contains("Ann: I'll bring cake\nAI: Sounds good.\n(Ann left the chat)"),
            "{user}"
        );
        assert!(
            user.contains("Bo now writes: AI, is Ann still here?"),
            "{user}"
        );
        assert!(
            user.ends_with("Write AI's reply to Bo, and nothing else."),
            "{user}"
        );
    }

    #[test]
    fn only_the_last_entries_are_in_the_prompt() {
        let history: Vec<Entry> = (0..50).map(|i| post(i, "Ann", &format!("m{i}"))).collect();
        let present = vec!["Ann".to_owned()];
        let r = build(&PromptInput {
            present: &present,
            history: &history,
            instructions: "",
            asker: "Ann",
            text: "last",
        });
        let user = &r.messages[1].content;
        assert!(!user.contains("m29\n"), "{user}");
        assert!(user.contains("m30\n") && user.contains("m49\n"), "{user}");
        assert!(!r.messages[0].content.contains("instructions"));
    }

    #[test]
    fn the_transcript_loses_its_oldest_entries_in_blocks_so_its_start_stays_put() {
        let history: Vec<Entry> = (0..60).map(|i| post(i, "Ann", &format!("m{i}"))).collect();
        let present = vec!["Ann".to_owned()];
        let prompt_after = |n: usize| {
            build(&PromptInput {
                present: &present,
                history: &history[..n],
                instructions: "",
                asker: "Ann",
                text: "next",
            })
            .messages[1]
                .content
                .clone()
        };
        let mut starts_changed = 0;
        for n in 21..60 {
            let (before, now) = (prompt_after(n - 1), prompt_after(n));
            let shown = now.matches("Ann: m").count();
            assert!(
                (PROMPT_HISTORY + 1 - HISTORY_BLOCK..=PROMPT_HISTORY).contains(&shown),
                "{n} entries: {shown} shown"
            );
            assert!(now.contains(&format!("Ann: m{}\n", n - 1)), "{now}");
            // The previous prompt's transcript (all but its last line and the request) is
            // where the new one starts, except when a block leaves.
            let old_transcript = before.split("\n\n").next().unwrap_or_default();
            if !now.starts_with(old_transcript) {
                starts_changed += 1;
            }
        }
        // 39 posts: the start moved 4 times (once every HISTORY_BLOCK posts), not 39.
        assert_eq!(starts_changed, 4);
    }
}
