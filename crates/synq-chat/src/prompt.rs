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
    /// How the answer is drawn: the likeliest one, or (for a regeneration) another.
    #[serde(default)]
    pub sampling: Sampling,
}

/// How an answer is drawn from the model.
///
/// Why a first answer is greedy: measured with `ai-eval` on Qwen2.5-Coder-0.5B (the
/// stand-in for the embedded default of that time), the same prompt passed 21 of 31 situations greedy,
/// 20–21 at temperature 0.2, and only 11–16 at 0.7, the embedded model's default that the
/// chat used to get (three seeds each). Greedy also makes the quality harness measure
/// exactly what the chat does. A regeneration asks for a different answer, so it samples.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Sampling {
    /// The likeliest answer (temperature 0).
    #[default]
    Focused,
    /// A fresh draw (temperature [`Sampling::VARIED_TEMPERATURE`], a random seed).
    Varied,
}

impl Sampling {
    /// The temperature of a regeneration: the usual default of chat models.
    pub const VARIED_TEMPERATURE: f32 = 0.7;

    /// The temperature to ask the backend for.
    pub fn temperature(self) -> f32 {
        match self {
            Sampling::Focused => 0.0,
            Sampling::Varied => Self::VARIED_TEMPERATURE,
        }
    }
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

/// The prompt for `input`: a system message (who the AI is, who is here, the rules, the
/// room's instructions), then the conversation as chat turns: each post a `user` message
/// "Name: text", each finished AI answer an `assistant` message, joins and leaves `user`
/// messages "(Ann left the chat)", and last the post.
///
/// Why turns: measured with `ai-eval` (Qwen2.5-Coder-0.5B, greedy), the whole transcript
/// inside one `user` message made the model repeat the post back (8 of 31 situations
/// passed); the same history as turns, which the chat template keeps apart from the
/// model's own turn, passed 21. The model still often starts its turn with a "Name:" label
/// copied from the user turns: the answer hygiene ([`crate::hygiene`]) removes it and ends
/// the answer where the model writes another person's line.
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
    let mut messages = vec![PromptMessage {
        role: PromptRole::System,
        content: system,
    }];
    for e in window(input.history) {
        let (role, content) = match &e.kind {
            EntryKind::Post { name, text, .. } => (PromptRole::User, format!("{name}: {text}")),
            EntryKind::Ai { text, state, .. } if *state != AiState::Waiting => {
                if text.is_empty() {
                    continue;
                }
                (PromptRole::Assistant, text.clone())
            }
            EntryKind::Joined { name } => (PromptRole::User, format!("({name} joined the chat)")),
            EntryKind::Left { name } => (PromptRole::User, format!("({name} left the chat)")),
            _ => continue,
        };
        messages.push(PromptMessage { role, content });
    }
    messages.push(PromptMessage {
        role: PromptRole::User,
        content: format!("{}: {}", input.asker, input.text),
    });
    AiRequest {
        messages,
        sampling: Sampling::Focused,
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
        let turns: Vec<(PromptRole, &str)> = r
            .messages
            .iter()
            .skip(1)
            .map(|m| (m.role, m.content.as_str()))
            .collect();
        assert_eq!(
            turns,
            [
                (PromptRole::User, "(Ann joined the chat)"),
                (PromptRole::User, "Ann: I'll bring cake"),
                (PromptRole::Assistant, "Sounds good."),
                (PromptRole::User, "(Ann left the chat)"),
                (PromptRole::User, "Bo: AI, is Ann still here?"),
            ]
        );
        let system = &r.messages[0];
        assert_eq!(system.role, PromptRole::System);
        assert!(
            system.content.contains("People in the chat now: Bo."),
            "{system:?}"
        );
        assert!(system.content.contains("answer in French"), "{system:?}");
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
        let texts: Vec<&str> = r.messages.iter().map(|m| m.content.as_str()).collect();
        assert!(!texts.contains(&"Ann: m29"), "{texts:?}");
        assert!(
            texts.contains(&"Ann: m30") && texts.contains(&"Ann: m49"),
            "{texts:?}"
        );
        assert_eq!(texts.last(), Some(&"Ann: last"));
        assert!(!r.messages[0].content.contains("instructions"));
    }

    #[test]
    fn the_history_loses_its_oldest_entries_in_blocks_so_the_prompt_start_stays_put() {
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
            .messages
        };
        let mut starts_changed = 0;
        for n in 21..60 {
            let (before, now) = (prompt_after(n - 1), prompt_after(n));
            let shown = now
                .iter()
                .filter(|m| m.content.starts_with("Ann: m"))
                .count();
            assert!(
                (PROMPT_HISTORY + 1 - HISTORY_BLOCK..=PROMPT_HISTORY).contains(&shown),
                "{n} entries: {shown} shown"
            );
            assert_eq!(now[now.len() - 2].content, format!("Ann: m{}", n - 1));
            // The previous prompt without its post is where the new one starts, except
            // when a block leaves.
            let old_start = &before[..before.len() - 1];
            if !now.starts_with(old_start) {
                starts_changed += 1;
            }
        }
        // 39 posts: the start moved 4 times (once every HISTORY_BLOCK posts), not 39.
        assert_eq!(starts_changed, 4);
    }
}
