//! What of a model's answer is shown: the AI speaks only for itself, in plain text.
//!
//! Small models continue the transcript they were shown: after their answer they write
//! the next person's line ("Bo: Yes, I'll be there."), or they start with a speaker label
//! ("AI: …", "Ann: …"). The model of the room applies these rules to every streamed
//! delta, on every replica alike:
//! - a leading label (`AI:`, a person's name and a colon) is removed;
//! - the answer ends before the first later line that starts with a speaker label (a
//!   present or recent person, the AI, `User`, `Human`, `Assistant`, `System`), and the
//!   call is stopped there;
//! - Markdown emphasis, headings and code fences are removed (the chat shows plain text).

use crate::model::AI_NAME;

/// Labels that start another turn besides the people's names.
const ROLE_LABELS: &[&str] = &["User", "Human", "Assistant", "System"];

/// An answer as shown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shown {
    pub text: String,
    /// The model started another speaker's turn: the answer ends here.
    pub ended: bool,
}

/// The answer as shown when it is complete, for `names` (the people present and
/// recently present).
pub fn clean(answer: &str, names: &[&str]) -> String {
    shown(answer, names, true).text
}

/// The answer `raw` as shown so far. While it streams (`done == false`), a last line
/// that may still become a speaker label is held back, so that it never flickers.
pub fn shown(raw: &str, names: &[&str], done: bool) -> Shown {
    let mut labels: Vec<&str> = names
        .iter()
        .copied()
        .chain([AI_NAME])
        .chain(ROLE_LABELS.iter().copied())
        .filter(|n| !n.trim().is_empty())
        .collect();
    // Longest first: "Ann Lee" before "Ann".
    labels.sort_by_key(|n| std::cmp::Reverse(n.len()));

    let mut text = raw.trim_start();
    // A leading label, possibly twice ("AI: Ann: …").
    for _ in 0..2 {
        match label_len(text, &labels) {
            Some(n) => text = text[n..].trim_start(),
            None => break,
        }
    }
    let mut lines: Vec<&str> = Vec::new();
    let mut ended = false;
    let mut rest = text;
    loop {
        let (line, next) = match rest.find('\n') {
            Some(i) => (&rest[..i], Some(&rest[i + 1..])),
            None => (rest, None),
        };
        if !lines.is_empty() && label_len(line, &labels).is_some() {
            ended = true;
            break;
        }
        match next {
            Some(next) => {
                lines.push(line);
                rest = next;
            }
            None => {
                let pending = !done && !lines.is_empty() && may_become_label(line, &labels);
                let first_pending = !done && lines.is_empty() && may_become_label(line, &labels);
                if !(pending || first_pending) {
                    lines.push(line);
                }
                break;
            }
        }
    }
    let text = plain(&lines);
    Shown { text, ended }
}

/// Sentences of a post with fewer words may be repeated (a "Yes, thanks." is no echo).
pub const MIN_ECHOED_WORDS: usize = 4;

/// Whether `answer` repeats, as a sentence of its own, a sentence of at least
/// [`MIN_ECHOED_WORDS`] words of one of `posts`, word for word (case, punctuation and the
/// word "AI" aside): a small model echoing the question, or speaking a person's line
/// without a label. A sentence that only contains a post's words, as a summary's does,
/// is fine.
pub fn repeats_a_post(answer: &str, posts: &[&str]) -> bool {
    let answer = sentences(answer);
    posts.iter().any(|post| {
        sentences(post)
            .iter()
            .any(|p| p.split(' ').count() >= MIN_ECHOED_WORDS && answer.contains(p))
    })
}

/// Whether `partial`, an answer still streaming, may yet become a repeat of one of
/// `posts`: its words so far are how one of the posts goes on from the start of one of
/// its sentences (the last word may be unfinished).
pub fn may_become_echo(partial: &str, posts: &[&str]) -> bool {
    let so_far = words(partial);
    !so_far.is_empty()
        && posts.iter().any(|post| {
            let s = sentences(post);
            (0..s.len()).any(|i| s[i..].join(" ").starts_with(&so_far))
        })
}

/// The sentences of `text` (ended by `.`, `!`, `?` or a new line), as [`words`].
fn sentences(text: &str) -> Vec<String> {
    text.split(['.', '!', '?', '\n'])
        .map(words)
        .filter(|s| !s.is_empty())
        .collect()
}

/// The words of `text`, lowercase, without punctuation, apostrophes or the word "AI", one
/// space apart ("I'd" is "id"). ASCII rules only, so that every replica (whatever its
/// Rust's Unicode tables) splits alike; other characters belong to words.
fn words(text: &str) -> String {
    let kept: String = text
        .chars()
        .filter(|c| !matches!(c, '\'' | '\u{2019}'))
        .map(|c| {
            let typographic = matches!(
                c,
                '\u{a0}'
                    | '\u{a1}'
                    | '\u{bf}'
                    | '\u{2013}'
                    | '\u{2014}'
                    | '\u{2018}'
                    | '\u{201c}'
                    | '\u{201d}'
                    | '\u{2026}'
            );
            if typographic || (c.is_ascii() && !c.is_ascii_alphanumeric()) {
                ' '
            } else {
                c.to_ascii_lowercase()
            }
        })
        .collect();
    kept.split_whitespace()
        .filter(|w| *w != "ai")
        .collect::<Vec<_>>()
        .join(" ")
}

/// The length of a speaker label at the start of `line` (`Name:`, `**Name**:`, with the
/// spaces after it), if it has one.
fn label_len(line: &str, labels: &[&str]) -> Option<usize> {
    let t = line.trim_start().trim_start_matches(['*', '_']);
    for label in labels {
        let Some(head) = t.get(..label.len()) else {
            continue;
        };
        if !head.eq_ignore_ascii_case(label) {
            continue;
        }
        let after = t[label.len()..].trim_start_matches(['*', '_', ' ']);
        if let Some(body) = after.strip_prefix(':') {
            let body = body.trim_start_matches(['*', '_']);
            return Some(line.len() - body.len());
        }
    }
    None
}

/// Whether the unfinished `line` could still turn into a speaker label.
fn may_become_label(line: &str, labels: &[&str]) -> bool {
    let t = line.trim_start().trim_start_matches(['*', '_']);
    if t.is_empty() {
        return !line.is_empty();
    }
    labels.iter().any(|label| {
        let candidate = format!("{label}:");
        candidate.len() > t.len()
            && candidate
                .get(..t.len())
                .is_some_and(|head| head.eq_ignore_ascii_case(t))
    })
}

/// The lines as plain text: no code fences, heading marks or emphasis markers.
fn plain(lines: &[&str]) -> String {
    let mut out: Vec<String> = Vec::with_capacity(lines.len());
    for line in lines {
        let t = line.trim_end();
        if t.trim_start().starts_with("```") {
            continue;
        }
        let t = match t.trim_start().strip_prefix('#') {
            Some(h) => h.trim_start_matches('#').trim_start(),
            None => t,
        };
        out.push(t.replace("**", "").replace("__", ""));
    }
    out.join("\n").trim().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAMES: &[&str] = &["Ann", "Bo", "Eager Falcon"];

    #[test]
    fn a_leading_label_is_removed() {
        assert_eq!(clean("AI: Paris.", NAMES), "Paris.");
        assert_eq!(
            clean(
                "Eager Falcon: Hi AI, the capital of France is Paris.",
                NAMES
            ),
            "Hi AI, the capital of France is Paris."
        );
        assert_eq!(clean("**AI:** 42", NAMES), "42");
        assert_eq!(clean("ai: Ann: hello", NAMES), "hello");
    }

    #[test]
    fn the_answer_ends_where_another_speakers_turn_starts() {
        let s = shown(
            "Sure, see you there!\nBo: Yes, I'll be there.",
            NAMES,
            false,
        );
        assert_eq!(s.text, "Sure, see you there!");
        assert!(s.ended);
        let s = shown("It is 4.\n\nUser: and 3+3?\nAI: 6", NAMES, false);
        assert_eq!(s.text, "It is 4.");
        assert!(s.ended);
        // A name inside a sentence is not a turn.
        let s = shown("Ann said: hello.\nBo likes tea: lots.", &["Bob"], true);
        assert!(!s.ended);
    }

    #[test]
    fn a_line_that_may_become_a_label_is_held_back_while_streaming() {
        assert_eq!(shown("Hello!\nB", NAMES, false).text, "Hello!");
        assert_eq!(shown("Hello!\nBo", NAMES, false).text, "Hello!");
        assert_eq!(shown("Hello!\nBo", NAMES, true).text, "Hello!\nBo");
        assert_eq!(
            shown("Hello!\nBonjour", NAMES, false).text,
            "Hello!\nBonjour"
        );
        // At the start too: "A" may be "AI:".
        assert_eq!(shown("A", NAMES, false).text, "");
        assert_eq!(shown("AI: Par", NAMES, false).text, "Par");
    }

    #[test]
    fn markdown_becomes_plain_text() {
        assert_eq!(
            clean("# Title\n**bold** and __this__\n```\ncode\n```", NAMES),
            "Title\nbold and this\ncode"
        );
    }

    #[test]
    fn an_answer_that_parrots_a_post_is_told_from_one_that_uses_its_words() {
        let posts = [
            "Picnic on Saturday, who brings what?",
            "AI, who said they would bring the drinks?",
        ];
        // The question echoed, with or without the "AI," and in other case and quotes.
        assert!(repeats_a_post(
            "AI, who said they would bring the drinks?",
            &posts
        ));
        assert!(repeats_a_post(
            "\u{201c}Who said they\u{2019}d bring the drinks\u{201d}... who said they would bring the DRINKS!",
            &posts
        ));
        // A sentence of its own that contains the post's words is an answer.
        assert!(!repeats_a_post(
            "Eli said they would bring the drinks.",
            &posts
        ));
        // Short sentences may be repeated.
        assert!(!repeats_a_post("Yes, thanks.", &["Yes, thanks."]));
        assert!(!repeats_a_post("", &posts));
    }

    #[test]
    fn a_streaming_answer_may_become_an_echo_until_it_departs_from_every_post() {
        let posts = [
            "Great, thanks. Who brings what?",
            "AI, who said they would bring the drinks?",
        ];
        assert!(may_become_echo("AI, who sa", &posts));
        assert!(may_become_echo("Who said they would", &posts));
        assert!(
            may_become_echo("who brings", &posts),
            "a later sentence's start"
        );
        assert!(!may_become_echo("Eli said", &posts));
        assert!(!may_become_echo("Who said they would not", &posts));
        assert!(!may_become_echo("", &posts), "nothing to hold back");
    }
}
