//! What the page shows of a room, as plain data (built natively too, and tested there):
//! the rows of the history with their ids, the people, the AI's mode and instructions,
//! and the texts that depend on them. `app` puts it into the DOM, touching only what
//! changed.

use synq_chat::{AI_NAME, AiMode, AiState, ChatModel, EntryKind};
use synq_model::ViewId;

/// One history entry, ready to show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// The entry's id (the DOM node of an entry is kept while its id stays).
    pub id: u64,
    /// CSS classes: `entry post`, `entry ai` (plus `streaming` or `stopped`), `entry notice`.
    pub class: &'static str,
    /// Empty for notices.
    pub name: String,
    pub text: String,
    /// Whether the row offers "again" (a finished or stopped AI answer, the AI not off).
    pub again: bool,
}

/// A person in the room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Person {
    pub name: String,
    /// This page's own participant.
    pub me: bool,
}

/// Everything the page shows of the room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub welcome: String,
    pub people: Vec<Person>,
    pub mode: AiMode,
    pub instructions: String,
    /// An answer is in progress (what Stop would stop).
    pub answering: bool,
    pub rows: Vec<Row>,
    /// The input's placeholder: whom a post reaches in this mode.
    pub placeholder: String,
    /// The line under the history: what leaves the room for the AI.
    pub privacy: String,
    /// The AI settings' one-line summary.
    pub summary: String,
}

/// The page of `m` for the participant `me` (named `my_name` until the model knows it).
pub fn page(m: &ChatModel, me: &ViewId, my_name: &str) -> Page {
    let my_name = m.name_of(me).unwrap_or(my_name);
    let people: Vec<Person> = m
        .users()
        .map(|(v, n)| Person {
            name: n.to_owned(),
            me: v == me,
        })
        .collect();
    let others: Vec<&str> = people
        .iter()
        .filter(|p| !p.me)
        .map(|p| p.name.as_str())
        .collect();
    let welcome = if others.is_empty() {
        format!("Welcome, {my_name}! {AI_NAME} is here. Share the link to invite others.")
    } else {
        format!(
            "Welcome, {my_name}! {AI_NAME} is here, along with {}.",
            others.join(", ")
        )
    };
    let mode = m.ai_mode();
    let rows = m
        .history()
        .map(|e| match &e.kind {
            EntryKind::Post { name, text, .. } => Row {
                id: e.id,
                class: "entry post",
                name: name.clone(),
                text: text.clone(),
                again: false,
            },
            EntryKind::Ai {
                request,
                text,
                state,
                stopped_by,
                regenerated_by,
                ..
            } => {
                let class = match state {
                    AiState::Done => "entry ai",
                    AiState::Stopped => "entry ai stopped",
                    AiState::Waiting | AiState::Streaming => "entry ai streaming",
                };
                let mut text = if text.is_empty() && state.in_progress() {
                    // The place in the AI's queue, as the elected view reports it.
                    m.ai_status(*request)
                        .map_or_else(|| "…".to_owned(), |status| format!("… ({})", status))
                } else {
                    text.clone()
                };
                if let Some(by) = regenerated_by {
                    text.push_str(&format!(" (answered again at {by}'s request)"));
                }
                if let Some(by) = stopped_by {
                    text.push_str(&format!(" (stopped by {by})"));
                }
                Row {
                    id: e.id,
                    class,
                    name: AI_NAME.to_owned(),
                    text,
                    again: !state.in_progress() && mode != AiMode::Off,
                }
            }
            EntryKind::Joined { name } => notice(e.id, format!("{name} joined")),
            EntryKind::Left { name } => notice(e.id, format!("{name} left")),
            EntryKind::Notice { text } => notice(e.id, text.clone()),
        })
        .collect();
    let several = people.len() > 1;
    let placeholder = match mode {
        AiMode::Off => format!("Message everyone (the {AI_NAME} is off)…"),
        AiMode::Always => format!("Message everyone and the {AI_NAME}…"),
        AiMode::Auto if !several => format!("Message everyone and the {AI_NAME}…"),
        AiMode::Auto | AiMode::Addressed => format!("@{AI_NAME} … to ask the {AI_NAME}"),
    };
    let privacy = if mode == AiMode::Off {
        format!(
            "The {AI_NAME} is off in this room: nothing is sent to the {AI_NAME}. Messages are end-to-end encrypted."
        )
    } else {
        format!(
            "End-to-end encrypted, except what the {AI_NAME} gets: for each post it answers, the names here, the room's instructions, the last 20 messages and the post go in plain text to this server's {AI_NAME} (and its {AI_NAME} provider, if any)."
        )
    };
    let instructions = m.instructions().to_owned();
    let summary = format!(
        "{AI_NAME}: {}{}",
        mode.as_str(),
        if instructions.is_empty() {
            ""
        } else {
            " · with instructions"
        }
    );
    Page {
        welcome,
        people,
        mode,
        instructions,
        answering: m.answering(),
        rows,
        placeholder,
        privacy,
        summary,
    }
}

fn notice(id: u64, text: String) -> Row {
    Row {
        id,
        class: "entry notice",
        name: String::new(),
        text,
        again: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use synq_chat::{ChatInput, ChatOutput, ChatViewData};
    use synq_model::{Event, Replica};
    use synq_relay::{Candidacy, RelayResponse};

    struct Room {
        r: Replica<ChatModel>,
        time: u64,
        n: u64,
        requests: Vec<u64>,
    }

    impl Room {
        fn new() -> Room {
            Room {
                r: Replica::new(b"view-test", 0).0,
                time: 0,
                n: 0,
                requests: Vec::new(),
            }
        }

        fn apply(&mut self, e: Event<ChatModel>) {
            self.time += 10;
            for o in self.r.apply(self.time, e).outputs {
                if let ChatOutput::Request(r) = o {
                    self.requests.push(r.id);
                }
            }
        }

        fn join(&mut self, who: &str) {
            let data = ChatViewData {
                name: who.to_uppercase(),
                candidacy: Candidacy {
                    can_relay: true,
                    preference: 0,
                },
            };
            self.apply(Event::Join {
                view: ViewId::from(who),
                data,
            });
        }

        fn input(&mut self, who: &str, input: ChatInput) {
            self.n += 1;
            let n = self.n;
            self.apply(Event::Input {
                from: ViewId::from(who),
                n,
                input,
            });
        }

        fn page(&self, me: &str) -> Page {
            page(self.r.model(), &ViewId::from(me), "?")
        }
    }

    #[test]
    fn people_welcome_and_rows_keep_their_ids() {
        let mut room = Room::new();
        room.join("ann");
        let alone = room.page("ann");
        assert_eq!(
            alone.welcome,
            "Welcome, ANN! AI is here. Share the link to invite others."
        );
        assert_eq!(alone.placeholder, "Message everyone and the AI…");
        room.join("bob");
        room.input("bob", ChatInput::post("hi all"));
        let p = room.page("ann");
        assert_eq!(
            p.people,
            [
                Person {
                    name: "ANN".into(),
                    me: true
                },
                Person {
                    name: "BOB".into(),
                    me: false
                }
            ]
        );
        assert_eq!(p.welcome, "Welcome, ANN! AI is here, along with BOB.");
        assert_eq!(
            p.placeholder, "@AI … to ask the AI",
            "with two people, auto answers only posts to @AI"
        );
        let texts: Vec<(&str, &str)> = p.rows.iter().map(|r| (r.class, r.text.as_str())).collect();
        assert_eq!(
            texts,
            [
                ("entry notice", "ANN joined"),
                ("entry notice", "BOB joined"),
                ("entry post", "hi all")
            ]
        );
        let ids: Vec<u64> = p.rows.iter().map(|r| r.id).collect();
        room.input("ann", ChatInput::post("hello"));
        let later: Vec<u64> = room.page("ann").rows.iter().map(|r| r.id).collect();
        assert_eq!(later[..3], ids[..], "earlier rows keep their ids");
        assert_eq!(later.len(), 4);
    }

    #[test]
    fn answers_stream_stop_and_offer_again() {
        let mut room = Room::new();
        room.join("ann");
        room.join("bob");
        room.input("bob", ChatInput::post("@AI tell a story"));
        let id = room.requests[0];
        let p = room.page("ann");
        assert!(p.answering);
        let ai = p.rows.last().cloned().expect("an AI row");
        assert_eq!(
            (ai.class, ai.text.as_str(), ai.again),
            ("entry ai streaming", "…", false)
        );
        room.input(
            "ann",
            ChatInput::Relay(RelayResponse::Delta {
                id,
                text: "Once upon".into(),
            }),
        );
        let streaming = room.page("bob").rows.last().cloned().expect("an AI row");
        assert_eq!(streaming.id, ai.id, "the same row grows");
        assert_eq!(streaming.text, "Once upon");
        room.input("bob", ChatInput::Stop);
        let p = room.page("ann");
        assert!(!p.answering);
        let stopped = p.rows.iter().find(|r| r.id == ai.id).expect("still there");
        assert_eq!(stopped.class, "entry ai stopped");
        assert_eq!(stopped.text, "Once upon (stopped by BOB)");
        assert!(stopped.again);
        room.input("ann", ChatInput::Again { entry: Some(ai.id) });
        let again = room.page("bob");
        let row = again.rows.iter().find(|r| r.id == ai.id).expect("in place");
        assert_eq!(row.text, "… (answered again at ANN's request)");
        assert_eq!(row.class, "entry ai streaming");
        assert!(again.answering);
    }

    #[test]
    fn the_mode_and_the_instructions_show() {
        let mut room = Room::new();
        room.join("ann");
        let p = room.page("ann");
        assert_eq!((p.mode, p.summary.as_str()), (AiMode::Auto, "AI: auto"));
        assert!(
            p.privacy.contains("except what the AI gets"),
            "{}",
            p.privacy
        );
        room.input("ann", ChatInput::SetInstructions("Be brief.".into()));
        room.input("ann", ChatInput::SetAiMode(AiMode::Off));
        let p = room.page("ann");
        assert_eq!(p.instructions, "Be brief.");
        assert_eq!(p.summary, "AI: off · with instructions");
        assert!(
            p.privacy.contains("nothing is sent to the AI"),
            "{}",
            p.privacy
        );
        assert_eq!(p.placeholder, "Message everyone (the AI is off)…");
        room.input("ann", ChatInput::post("hello?"));
        let p = room.page("ann");
        assert!(
            p.rows.iter().all(|r| !r.class.contains("ai")),
            "no answer while off"
        );
        assert!(room.requests.is_empty());
    }
}
