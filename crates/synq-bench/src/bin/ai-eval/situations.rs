//! The situations file: group-chat situations (who is in the room, what was said before,
//! who asks what) and the checks on the AI's answer to each.

use std::collections::BTreeSet;

use anyhow::{Context, bail};
use regex::{Regex, RegexBuilder};
use serde::Deserialize;
use synq_chat::{AiState, Entry, EntryKind};
use synq_model::ViewId;

/// The situations shipped with the harness (`crates/synq-bench/ai-eval/situations.toml`).
pub const BUNDLED: &str = include_str!("../../../ai-eval/situations.toml");

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    situation: Vec<Situation>,
}

/// One situation, as written in the file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Situation {
    pub name: String,
    pub category: String,
    /// The people in the room when the post is made (the asker among them).
    pub present: Vec<String>,
    /// What happened before, oldest first.
    #[serde(default)]
    pub history: Vec<Happened>,
    /// The room's instructions for the AI ("answer in French"); empty for none.
    #[serde(default)]
    pub instructions: String,
    pub asker: String,
    pub post: String,
    #[serde(default)]
    pub checks: Checks,
}

/// One line of the history: exactly one of `from` (with `text`), `ai`, `joined`, `left`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Happened {
    /// A post by this person…
    pub from: Option<String>,
    /// … saying this.
    pub text: Option<String>,
    /// A finished answer of the AI.
    pub ai: Option<String>,
    /// This person joined the room.
    pub joined: Option<String>,
    /// This person left the room.
    pub left: Option<String>,
}

/// What the shown answer must (not) contain. Each string is a case-insensitive substring,
/// or, written `/…/`, a case-insensitive regular expression.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checks {
    /// At least one of these.
    #[serde(default)]
    pub must_mention_any: Vec<String>,
    /// All of these.
    #[serde(default)]
    pub must_mention_all: Vec<String>,
    /// None of these.
    #[serde(default)]
    pub must_not_say: Vec<String>,
    /// At most this many words (separated by white space).
    pub max_words: Option<usize>,
    /// No Markdown or HTML (on unless `plain_text = false`).
    #[serde(default = "yes")]
    pub plain_text: bool,
}

impl Default for Checks {
    fn default() -> Self {
        Checks {
            must_mention_any: Vec::new(),
            must_mention_all: Vec::new(),
            must_not_say: Vec::new(),
            max_words: None,
            plain_text: true,
        }
    }
}

fn yes() -> bool {
    true
}

/// A `must_*` string, ready to match.
#[derive(Debug, Clone)]
pub struct Pattern {
    /// As written in the file (reported when it decides a check).
    pub source: String,
    regex: Regex,
}

impl Pattern {
    pub fn new(source: &str) -> anyhow::Result<Pattern> {
        let expr = match source.strip_prefix('/').and_then(|s| s.strip_suffix('/')) {
            Some(expr) if !expr.is_empty() => expr.to_owned(),
            _ => regex::escape(source),
        };
        if source.trim().is_empty() {
            bail!("an empty pattern matches everything");
        }
        let regex = RegexBuilder::new(&expr)
            .case_insensitive(true)
            .build()
            .with_context(|| format!("bad pattern {source:?}"))?;
        Ok(Pattern {
            source: source.to_owned(),
            regex,
        })
    }

    pub fn is_match(&self, text: &str) -> bool {
        self.regex.is_match(text)
    }
}

/// A situation with its patterns compiled.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub situation: Situation,
    pub must_mention_any: Vec<Pattern>,
    pub must_mention_all: Vec<Pattern>,
    pub must_not_say: Vec<Pattern>,
}

impl Loaded {
    /// Everyone the situation names: present now, or posting, joining or leaving in the
    /// history. The AI must not speak as any of them.
    pub fn people(&self) -> Vec<String> {
        let s = &self.situation;
        let mut names: BTreeSet<&str> = s.present.iter().map(String::as_str).collect();
        names.insert(&s.asker);
        for h in &s.history {
            for name in [&h.from, &h.joined, &h.left].into_iter().flatten() {
                names.insert(name);
            }
        }
        names.into_iter().map(str::to_owned).collect()
    }

    /// The people's posts: the history's and the one asked about, last.
    pub fn posts(&self) -> Vec<&str> {
        let s = &self.situation;
        s.history
            .iter()
            .filter_map(|h| h.text.as_deref())
            .chain([s.post.as_str()])
            .collect()
    }
}

/// Parses and checks a situations file.
pub fn parse(text: &str) -> anyhow::Result<Vec<Loaded>> {
    let file: File = toml::from_str(text).context("the situations file is not valid")?;
    let mut seen = BTreeSet::new();
    let mut out = Vec::with_capacity(file.situation.len());
    for s in file.situation {
        let name = s.name.clone();
        if !seen.insert(name.clone()) {
            bail!("two situations are named {name:?}");
        }
        out.push(load(s).with_context(|| format!("situation {name:?}"))?);
    }
    if out.is_empty() {
        bail!("the situations file has no [[situation]]");
    }
    Ok(out)
}

fn load(s: Situation) -> anyhow::Result<Loaded> {
    if s.name.trim().is_empty() || s.category.trim().is_empty() {
        bail!("name and category must not be empty");
    }
    if !s.present.contains(&s.asker) {
        bail!(
            "the asker {:?} is not among the present people {:?}",
            s.asker,
            s.present
        );
    }
    to_entries(&s.history)?;
    let compile = |list: &[String]| -> anyhow::Result<Vec<Pattern>> {
        list.iter().map(|p| Pattern::new(p)).collect()
    };
    Ok(Loaded {
        must_mention_any: compile(&s.checks.must_mention_any)?,
        must_mention_all: compile(&s.checks.must_mention_all)?,
        must_not_say: compile(&s.checks.must_not_say)?,
        situation: s,
    })
}

/// The situation's history as the chat's entries, oldest first, one minute apart. An AI
/// answer answers the post before it.
pub fn to_entries(history: &[Happened]) -> anyhow::Result<Vec<Entry>> {
    let mut last_post = 0;
    history
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let id = i as u64 + 1;
            let kind = match h {
                Happened {
                    from: Some(name),
                    text: Some(text),
                    ai: None,
                    joined: None,
                    left: None,
                } => {
                    last_post = id;
                    EntryKind::Post {
                        from: ViewId::new(format!("view-{name}")),
                        name: name.clone(),
                        text: text.clone(),
                        reply_to: None,
                    }
                }
                Happened {
                    from: None,
                    text: None,
                    ai: Some(text),
                    joined: None,
                    left: None,
                } => EntryKind::Ai {
                    request: id,
                    post: last_post,
                    text: text.clone(),
                    state: AiState::Done,
                    stopped_by: None,
                    regenerated_by: None,
                },
                Happened {
                    from: None,
                    text: None,
                    ai: None,
                    joined: Some(name),
                    left: None,
                } => EntryKind::Joined { name: name.clone() },
                Happened {
                    from: None,
                    text: None,
                    ai: None,
                    joined: None,
                    left: Some(name),
                } => EntryKind::Left { name: name.clone() },
                _ => bail!(
                    "history line {} must be exactly one of {{from, text}}, {{ai}}, {{joined}}, {{left}}",
                    i + 1
                ),
            };
            Ok(Entry {
                id,
                at: id * 60_000,
                kind,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bundled_situations_load() {
        let all = parse(BUNDLED).unwrap();
        assert!(all.len() >= 24, "{} situations", all.len());
        for category in [
            "addressed-to-human",
            "who-is-here",
            "who-left",
            "memory",
            "format",
            "persona",
        ] {
            assert!(
                all.iter().any(|s| s.situation.category == category),
                "no {category} situation"
            );
        }
    }

    #[test]
    fn a_history_line_is_one_thing() {
        let both = Happened {
            from: Some("Ann".into()),
            text: Some("hi".into()),
            left: Some("Ann".into()),
            ..Happened::default()
        };
        assert!(to_entries(&[both]).is_err());
        let text_alone = Happened {
            text: Some("hi".into()),
            ..Happened::default()
        };
        assert!(to_entries(&[text_alone]).is_err());
    }

    #[test]
    fn patterns_are_substrings_or_regexes() {
        let sub = Pattern::new("I'll be there").unwrap();
        assert!(sub.is_match("ok, i'll be there!"));
        assert!(!sub.is_match("I will be there"));
        let dot = Pattern::new("7.45").unwrap();
        assert!(!dot.is_match("7:45"), "a substring's dot is a dot");
        let re = Pattern::new(r"/\b8\b/").unwrap();
        assert!(re.is_match("8."));
        assert!(!re.is_match("18"));
        assert!(Pattern::new("/(/").is_err());
        assert!(Pattern::new(" ").is_err());
    }

    #[test]
    fn the_asker_must_be_present() {
        let text = r#"
            [[situation]]
            name = "x"
            category = "c"
            present = ["Ann"]
            asker = "Bo"
            post = "hi"
        "#;
        let err = format!("{:#}", parse(text).unwrap_err());
        assert!(err.contains("asker"), "{err}");
    }
}
