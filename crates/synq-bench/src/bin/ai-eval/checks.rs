//! The checks on an answer as shown. Each failed check is reported by its name (the keys
//! of the situations file, plus the universal `spoke_as_human`, `repeated_a_person` and
//! `not_empty`) and a note
//! saying what decided it.

use std::sync::LazyLock;

use regex::Regex;

use crate::situations::Loaded;

/// Names that always mark another speaker's turn, besides the people of the situation.
const GENERIC_SPEAKERS: [&str; 2] = ["User", "Human"];

/// What the checks found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Names of the failed checks, in the order they were run.
    pub failed: Vec<&'static str>,
    /// One line per failed check: what decided it.
    pub notes: Vec<String>,
}

impl Outcome {
    fn fail(&mut self, check: &'static str, note: String) {
        if !self.failed.contains(&check) {
            self.failed.push(check);
        }
        self.notes.push(format!("{check}: {note}"));
    }

    pub fn pass(&self) -> bool {
        self.failed.is_empty()
    }
}

/// Runs every check of `s` on the answer as shown.
pub fn run(s: &Loaded, shown: &str) -> Outcome {
    let mut out = Outcome::default();
    // Models write ’ for ' and “” for ": the patterns are written with the plain ones.
    let text = normalize_quotes(shown);
    if let Some(line) = speaks_as_human(&text, &s.people()) {
        out.fail("spoke_as_human", format!("{line:?}"));
    }
    if let Some(post) = repeated_post(&text, s) {
        out.fail("repeated_a_person", format!("{post:?}"));
    }
    if text.trim().is_empty() {
        out.fail("not_empty", "the answer is empty".into());
    }
    if !s.must_mention_any.is_empty() && !s.must_mention_any.iter().any(|p| p.is_match(&text)) {
        let all: Vec<&str> = s
            .must_mention_any
            .iter()
            .map(|p| p.source.as_str())
            .collect();
        out.fail("must_mention_any", format!("none of {all:?}"));
    }
    for p in &s.must_mention_all {
        if !p.is_match(&text) {
            out.fail("must_mention_all", format!("missing {:?}", p.source));
        }
    }
    for p in &s.must_not_say {
        if p.is_match(&text) {
            out.fail("must_not_say", format!("said {:?}", p.source));
        }
    }
    if let Some(max) = s.situation.checks.max_words {
        let words = text.split_whitespace().count();
        if words > max {
            out.fail("max_words", format!("{words} words, at most {max}"));
        }
    }
    if s.situation.checks.plain_text
        && let Some(marker) = markup(&text)
    {
        out.fail("plain_text", marker);
    }
    out
}

fn normalize_quotes(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '\u{2018}' | '\u{2019}' | '\u{02BC}' => '\'',
            '\u{201C}' | '\u{201D}' => '"',
            c => c,
        })
        .collect()
}

/// The first line of `text` that starts another speaker's turn: "Name:" for one of
/// `people` or a generic speaker ("User:", "Human:"), case-insensitive, also when
/// decorated as Markdown ("**Bo**:", "> Bo:").
pub fn speaks_as_human(text: &str, people: &[String]) -> Option<String> {
    let names = people
        .iter()
        .map(String::as_str)
        .chain(GENERIC_SPEAKERS)
        .filter(|n| !n.trim().is_empty());
    let names: Vec<&str> = names.collect();
    text.lines()
        .find(|line| {
            let line = line.trim_start_matches(|c: char| c.is_whitespace() || "*_>#-".contains(c));
            names.iter().any(|name| {
                line.get(..name.len())
                    .is_some_and(|head| head.eq_ignore_ascii_case(name))
                    && line[name.len()..]
                        .trim_start_matches(['*', '_', ' '])
                        .starts_with(':')
            })
        })
        .map(|line| line.trim().to_owned())
}

/// Sentences this short (in words, "AI" not counted) may be repeated by a fair answer.
/// A person's post (the one asked about, or one of the history) that the answer parrots
/// ([`synq_chat::hygiene::repeats_a_post`]: the chat asks once more when a first answer
/// does).
fn repeated_post<'a>(text: &str, s: &'a Loaded) -> Option<&'a str> {
    s.posts()
        .into_iter()
        .rev()
        .find(|post| synq_chat::hygiene::repeats_a_post(text, &[post]))
}

static HTML_TAG: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"</?[A-Za-z][A-Za-z0-9-]*(\s[^<>]*)?/?>").expect("a valid regular expression")
});
static HEADING: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^#{1,6}\s").expect("a valid regular expression"));

/// The first Markdown or HTML marker in `text`: a code fence, bold, a heading, a list
/// bullet or an HTML tag.
pub fn markup(text: &str) -> Option<String> {
    if text.contains("```") {
        return Some("a code fence (```)".into());
    }
    if text.contains("**") {
        return Some("bold (**)".into());
    }
    for line in text.lines() {
        let line = line.trim_start();
        if HEADING.is_match(line) {
            return Some(format!("a heading: {line:?}"));
        }
        if ["- ", "* ", "+ ", "• "].iter().any(|b| line.starts_with(b)) {
            return Some(format!("a list bullet: {line:?}"));
        }
    }
    HTML_TAG
        .find(text)
        .map(|m| format!("an HTML tag: {:?}", m.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::situations::parse;

    fn people() -> Vec<String> {
        vec!["Ann".into(), "Bo".into()]
    }

    #[test]
    fn speaking_as_a_human_is_found_at_any_line_start() {
        let p = people();
        assert_eq!(
            speaks_as_human("Bo: I'll be there", &p).as_deref(),
            Some("Bo: I'll be there")
        );
        assert!(speaks_as_human("Sure.\n  ann : see you", &p).is_some());
        assert!(speaks_as_human("**Bo**: yes", &p).is_some());
        assert!(speaks_as_human("User: hi", &p).is_some());
        assert!(speaks_as_human("Human: hi", &p).is_some());
        assert!(speaks_as_human("Bo will tell you: ask him.", &p).is_none());
        assert!(speaks_as_human("Anne: not a person here", &p).is_none());
        assert!(speaks_as_human("I think Bo: maybe", &p).is_none());
        assert!(speaks_as_human("AI: hello", &p).is_none());
        assert!(speaks_as_human("é", &["Ann".into()]).is_none());
    }

    #[test]
    fn markup_is_found() {
        assert!(markup("Plain text, with a - dash and 3 * 4 = 12.").is_none());
        assert!(markup("a < b and c > d").is_none());
        for marked in [
            "```\ncode\n```",
            "this is **bold**",
            "# Title",
            "Tips:\n- sleep\n- eat",
            "* one",
            "a <b>tag</b>",
            "line<br/>break",
        ] {
            assert!(markup(marked).is_some(), "{marked:?}");
        }
    }

    #[test]
    fn every_check_can_fail_and_pass() {
        let s = &parse(
            r#"
            [[situation]]
            name = "x"
            category = "c"
            present = ["Ann", "Bo"]
            asker = "Ann"
            post = "Bo, are you coming?"
            [situation.checks]
            must_mention_any = ["Bo", "him"]
            must_mention_all = ["tonight"]
            must_not_say = ["I'll be there"]
            max_words = 8
        "#,
        )
        .unwrap()[0];
        let good = run(s, "Bo can tell you about tonight himself.");
        assert!(good.pass(), "{good:?}");
        // A curly apostrophe is still the forbidden phrase.
        let bad = run(
            s,
            "Bo: I\u{2019}ll be there, tonight **for sure**, count on me",
        );
        assert_eq!(
            bad.failed,
            vec!["spoke_as_human", "must_not_say", "max_words", "plain_text"]
        );
        let off = run(s, "Maybe.");
        assert_eq!(off.failed, vec!["must_mention_any", "must_mention_all"]);
        let empty = run(s, " ");
        assert!(empty.failed.contains(&"not_empty"), "{empty:?}");
    }

    #[test]
    fn repeating_a_persons_post_fails() {
        let s = &parse(
            r#"
            [[situation]]
            name = "x"
            category = "c"
            present = ["Ann", "Bo"]
            history = [
              { from = "Bo", text = "I'd rather have sushi." },
              { from = "Ann", text = "Sushi is healthier" },
              { from = "Bo", text = "Fine. The place by the lake, then." },
            ]
            asker = "Ann"
            post = "AI, what did Bo want to eat tonight?"
        "#,
        )
        .unwrap()[0];
        for echo in [
            "AI, what did Bo want to eat tonight?",
            "what did Bo want to eat tonight? Sushi.",
            "I\u{2019}d rather have sushi!",
            "Sure.\nThe place by the lake then",
        ] {
            assert_eq!(run(s, echo).failed, vec!["repeated_a_person"], "{echo:?}");
        }
        // Short posts may be quoted; a fair answer passes.
        for fair in [
            "Bo said sushi is healthier.",
            "Bo would rather have sushi.",
            "Bo wanted to eat sushi tonight.",
            "Sushi, at the place by the lake.",
        ] {
            assert!(run(s, fair).pass(), "{fair:?}");
        }
    }
}
