//! The answer may not begin in a person's name.
//!
//! A group chat's prompt shows each person's message as a user turn "Ann: text". Small
//! models often open their own turn with such a label, and then speak as that person: the
//! 0.5B model's stand-in answered Dee's "Cy, did you bring the cake?" with
//! "Cy: Dee, I brought the cake." Removing the label afterwards (as the chat's hygiene does)
//! leaves the person's words in the AI's mouth. So when the conversation is such a group
//! chat, the embedded model holds back the answer's first words while they may still become
//! a label (one to three words and a colon), and when they do, draws the answer again
//! without the first token it chose: the model's next likeliest start. Any label-shaped
//! start is refused, not only the names of the prompt: refused "Cy:", the test model wrote
//! "Cyr:".
//!
//! Measured with `ai-eval` (31 situations, greedy): see `crates/synq-bench/README.md`.

use crate::{ChatMessage, Role};

/// Labels longer than this are not names.
const MAX_LABEL_CHARS: usize = 40;
/// Nor are labels of more words ("Eager Falcon" has two).
const MAX_LABEL_WORDS: usize = 3;
/// A start is drawn again at most this many times; after that, the answer stands (and the
/// chat's hygiene removes a label of a name it knows).
pub const MAX_REDRAWS: usize = 8;

/// Whether the conversation is a group chat's: a user message begins with a person's label
/// ("Ann: text"). Only then is the answer's start watched.
pub fn is_group_chat(messages: &[ChatMessage]) -> bool {
    messages.iter().filter(|m| m.role == Role::User).any(|m| {
        m.content.split_once(": ").is_some_and(|(name, _)| {
            let name = name.trim();
            !name.is_empty()
                && name.chars().count() <= MAX_LABEL_CHARS
                && name.split_whitespace().count() <= MAX_LABEL_WORDS
                && !name.contains(['\n', '(', ')'])
        })
    })
}

/// What to do with the text generated so far.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// It may still become a label: send nothing yet.
    Hold,
    /// Send this text; everything after it is sent as it comes.
    Release(String),
    /// It begins with a label: draw the answer again.
    Redraw,
}

/// Watches the start of one answer.
#[derive(Debug)]
pub struct StartGuard {
    held: String,
    released: bool,
}

impl StartGuard {
    /// A guard for one answer; outside a group chat ([`is_group_chat`]) nothing is held.
    pub fn new(group_chat: bool) -> Self {
        Self {
            released: !group_chat,
            held: String::new(),
        }
    }

    /// Whether the start is decided, so text goes out as it comes.
    pub fn released(&self) -> bool {
        self.released
    }

    /// The next piece of the answer's text (only while not [`Self::released`]).
    pub fn push(&mut self, text: &str) -> Verdict {
        self.held.push_str(text);
        match label_shape(&self.held) {
            Shape::Label => Verdict::Redraw,
            Shape::MayBecome => Verdict::Hold,
            Shape::Not => {
                self.released = true;
                Verdict::Release(std::mem::take(&mut self.held))
            }
        }
    }

    /// Forgets the held text, for a new draw.
    pub fn restart(&mut self) {
        self.held.clear();
    }

    /// Text still held when the answer ends (it never became a label).
    pub fn finish(&mut self) -> Option<String> {
        self.released = true;
        Some(std::mem::take(&mut self.held)).filter(|s| !s.is_empty())
    }
}

enum Shape {
    /// One to three words and a colon: "Cy:", "Eager Falcon:".
    Label,
    /// Not yet, but it may become one ("Eager Fal").
    MayBecome,
    Not,
}

/// Whether `text` begins with a label. Words begin with a letter ("7:45" is no label) and
/// hold letters, digits, `'`, `-` and `_`.
fn label_shape(text: &str) -> Shape {
    let mut words = 0;
    let mut in_word = false;
    for c in text.trim_start().chars() {
        if c.is_alphanumeric() || matches!(c, '\'' | '-' | '_') {
            if !in_word {
                if !c.is_alphabetic() || words == MAX_LABEL_WORDS {
                    return Shape::Not;
                }
                words += 1;
                in_word = true;
            }
        } else if c == ' ' {
            in_word = false;
        } else if c == ':' && in_word {
            return Shape::Label;
        } else {
            return Shape::Not;
        }
    }
    Shape::MayBecome
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_group_chat_is_one_whose_user_messages_begin_with_names() {
        let group = [
            ChatMessage::system("You are AI. People: Ann, Bo."),
            ChatMessage::user("(Cy joined the chat)"),
            ChatMessage::user("Eager Falcon: hello"),
        ];
        assert!(is_group_chat(&group));
        let alone = [
            ChatMessage::system("Be brief."),
            ChatMessage::assistant("Bo: not a user message"),
            ChatMessage::user("A whole sentence that goes on and on: then a colon"),
            ChatMessage::user("no label here"),
        ];
        assert!(!is_group_chat(&alone));
    }

    #[test]
    fn a_start_that_becomes_a_label_is_drawn_again_and_one_that_departs_is_sent() {
        let mut g = StartGuard::new(true);
        assert_eq!(g.push("Cy"), Verdict::Hold);
        assert_eq!(g.push(":"), Verdict::Redraw);
        g.restart();
        assert_eq!(g.push("Cyr"), Verdict::Hold);
        assert_eq!(g.push(":"), Verdict::Redraw, "not only the prompt's names");
        g.restart();
        assert_eq!(g.push(" Eager"), Verdict::Hold);
        assert_eq!(g.push(" Falcon"), Verdict::Hold);
        assert_eq!(g.push(":"), Verdict::Redraw);
        g.restart();
        assert_eq!(g.push("The capital"), Verdict::Hold);
        assert_eq!(g.push(" of"), Verdict::Hold);
        assert_eq!(
            g.push(" Japan"),
            Verdict::Release("The capital of Japan".into()),
            "four words are no label"
        );
        assert!(g.released());

        for (text, sent) in [("Cy, you", "Cy,"), ("7:45", "7"), ("Sure!", "Sure!")] {
            let mut g = StartGuard::new(true);
            let mut verdict = Verdict::Hold;
            for c in text.chars() {
                verdict = g.push(&c.to_string());
                if verdict != Verdict::Hold {
                    break;
                }
            }
            assert_eq!(verdict, Verdict::Release(sent.into()), "{text}");
        }

        let mut g = StartGuard::new(true);
        assert_eq!(g.push("Blue"), Verdict::Hold);
        assert_eq!(g.finish(), Some("Blue".into()), "a one-word answer is sent");

        let mut g = StartGuard::new(false);
        assert!(g.released(), "outside a group chat nothing is held");
        assert_eq!(g.finish(), None);
    }
}
