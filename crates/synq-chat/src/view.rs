//! What a view shows of a room, as plain data with the exact texts the browser page and
//! `synq chat` show: the welcome line, the people, the rows of the history (an AI answer
//! with "(stopped by Ann)" and the like, a reply with the line it quotes), the AI's
//! settings, the connection's status and the errors. The views only draw it: the page
//! into the DOM, the terminal with ratatui (after making control characters harmless).

use std::collections::BTreeMap;

use synq_client::{ClientError, SessionEvent};
use synq_model::ViewId;

use crate::model::{AI_NAME, AiMode, AiState, ChatModel, ChatOutput, Entry, EntryKind};

/// What kind of entry a row shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowKind {
    /// A person's post; `mine` if this view's participant wrote it.
    Post { mine: bool },
    /// An AI answer.
    Ai { state: AiState },
    /// Joins, leaves, setting changes, failures.
    Notice,
}

/// One history entry, ready to show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// The entry's id (a view keeps an entry's node while its id stays).
    pub id: u64,
    pub kind: RowKind,
    /// Empty for notices.
    pub name: String,
    /// The text, with an answer's "(answered again at …'s request)", "(stopped by …)".
    pub text: String,
    /// Whether the row offers "again" (a finished or stopped AI answer, the AI not off).
    pub again: bool,
    /// For a reply: the line that shows what it replies to ("↪ Ann: where is the…").
    pub quote: Option<String>,
    /// The row's first words, as a reply to it quotes them.
    pub gist: String,
}

impl Row {
    /// Whether one may reply to the row (posts and answers; notices are the room's).
    pub fn repliable(&self) -> bool {
        !matches!(self.kind, RowKind::Notice)
    }

    /// What the input shows while a reply to this row is being written.
    pub fn replying(&self) -> String {
        format!("Replying to {}", self.who_said())
    }

    /// "Ann: first words", or the first words of a notice: how a reply quotes the row.
    pub fn who_said(&self) -> String {
        if self.name.is_empty() {
            self.gist.clone()
        } else {
            format!("{}: {}", self.name, self.gist)
        }
    }
}

/// A person in the room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Person {
    pub name: String,
    /// This view's own participant.
    pub me: bool,
}

/// Everything a view shows of the room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub welcome: String,
    pub people: Vec<Person>,
    pub mode: AiMode,
    pub instructions: String,
    /// An answer is in progress (what Stop would stop).
    pub answering: bool,
    /// This view is the one calling the AI for the room.
    pub relaying: bool,
    pub rows: Vec<Row>,
    /// The input's placeholder: whom a post reaches in this mode.
    pub placeholder: String,
    /// What leaves the room for the AI.
    pub privacy: String,
    /// The AI settings' one-line summary.
    pub summary: String,
    /// The newest archive page (what "load earlier messages" loads first), if the room
    /// has one.
    pub newest_page: Option<String>,
}

/// What the button that loads the archive says.
pub const LOAD_EARLIER: &str = "Load earlier messages";

impl Page {
    /// The rows one may reply to, newest first (`/reply N` counts them from 1).
    pub fn repliable(&self) -> impl Iterator<Item = &Row> {
        self.rows.iter().rev().filter(|r| r.repliable())
    }

    /// The row of entry `id`, if it is still in the history.
    pub fn row(&self, id: u64) -> Option<&Row> {
        self.rows.iter().find(|r| r.id == id)
    }
}

/// Words a quote keeps of the entry it quotes, and characters at most.
const GIST_WORDS: usize = 8;
const GIST_CHARS: usize = 60;

/// The first words of `text` on one line, with "…" when there is more.
pub fn gist(text: &str) -> String {
    let words: Vec<&str> = text.split_whitespace().collect();
    let mut out = String::new();
    let mut cut = words.len() > GIST_WORDS;
    for w in words.iter().take(GIST_WORDS) {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(w);
    }
    if out.chars().count() > GIST_CHARS {
        out = out
            .chars()
            .take(GIST_CHARS)
            .collect::<String>()
            .trim_end()
            .to_owned();
        cut = true;
    }
    if cut {
        out.push('…');
    }
    out
}

/// A name on one line (a name with a newline would break the line it is in).
fn one_line(name: &str) -> String {
    name.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The page of `m` for the participant `me` (named `my_name` until the model knows it).
/// `invite`: the room's link, for a view that has no address bar to share it from.
pub fn page(m: &ChatModel, me: &ViewId, my_name: &str, invite: Option<&str>) -> Page {
    let my_name = one_line(m.name_of(me).unwrap_or(my_name));
    let people: Vec<Person> = m
        .users()
        .map(|(v, n)| Person {
            name: one_line(n),
            me: v == me,
        })
        .collect();
    let others: Vec<&str> = people
        .iter()
        .filter(|p| !p.me)
        .map(|p| p.name.as_str())
        .collect();
    let welcome = match (others.is_empty(), invite) {
        (true, None) => {
            format!("Welcome, {my_name}! {AI_NAME} is here. Share the link to invite others.")
        }
        (true, Some(link)) => format!(
            "Welcome, {my_name}! {AI_NAME} is here. Share the link to invite others: {link}"
        ),
        (false, _) => format!(
            "Welcome, {my_name}! {AI_NAME} is here, along with {}.",
            others.join(", ")
        ),
    };
    let mode = m.ai_mode();
    let entries: Vec<&Entry> = m.history().collect();
    let rows = rows(&entries, me, |id| m.ai_status(id), mode != AiMode::Off);
    // As the model counts them for the auto mode (a bot is not a person).
    let several = m.people() > 1;
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
        relaying: m.elected() == Some(me),
        rows,
        placeholder,
        privacy,
        summary,
        newest_page: m.archive().next_back().map(|p| p.name.clone()),
    }
}

/// The rows of entries loaded from the archive (`synq_chat::archived_entries`), to show
/// above the history: finished, so without "again".
pub fn archived_rows(entries: &[Entry], me: &ViewId) -> Vec<Row> {
    let entries: Vec<&Entry> = entries.iter().collect();
    rows(&entries, me, |_| None, false)
}

/// The rows of `entries`: `status` gives a waiting answer's status, `again` whether
/// finished answers offer "again".
fn rows<'a>(
    entries: &[&Entry],
    me: &ViewId,
    status: impl Fn(u64) -> Option<&'a str>,
    again: bool,
) -> Vec<Row> {
    let mut rows: Vec<Row> = entries
        .iter()
        .map(|e| match &e.kind {
            EntryKind::Post {
                from, name, text, ..
            } => Row {
                id: e.id,
                kind: RowKind::Post { mine: from == me },
                name: one_line(name),
                text: text.clone(),
                again: false,
                quote: None,
                gist: gist(text),
            },
            EntryKind::Ai {
                request,
                text,
                state,
                stopped_by,
                regenerated_by,
                ..
            } => {
                let gist = if text.trim().is_empty() {
                    "…".to_owned()
                } else {
                    gist(text)
                };
                let mut text = if text.is_empty() && state.in_progress() {
                    // The place in the AI's line, as the elected view reports it.
                    status(*request)
                        .map_or_else(|| "…".to_owned(), |status| format!("… ({status})"))
                } else {
                    text.clone()
                };
                if let Some(by) = regenerated_by {
                    text.push_str(&format!(" (answered again at {}'s request)", one_line(by)));
                }
                if let Some(by) = stopped_by {
                    text.push_str(&format!(" (stopped by {})", one_line(by)));
                }
                Row {
                    id: e.id,
                    kind: RowKind::Ai { state: *state },
                    name: AI_NAME.to_owned(),
                    text,
                    again: !state.in_progress() && again,
                    quote: None,
                    gist,
                }
            }
            EntryKind::Joined { name } => notice(e.id, format!("{} joined", one_line(name))),
            EntryKind::Left { name } => notice(e.id, format!("{} left", one_line(name))),
            EntryKind::Notice { text } => notice(e.id, text.clone()),
        })
        .collect();
    // Replies quote their entry: by now every row's words are known.
    let said: BTreeMap<u64, String> = rows.iter().map(|r| (r.id, r.who_said())).collect();
    for (row, e) in rows.iter_mut().zip(entries.iter()) {
        if let EntryKind::Post {
            reply_to: Some(to), ..
        } = &e.kind
        {
            row.quote = Some(match said.get(to) {
                Some(said) => format!("↪ {said}"),
                None => "↪ a message no longer in the history".to_owned(),
            });
        }
    }
    rows
}

fn notice(id: u64, text: String) -> Row {
    Row {
        id,
        kind: RowKind::Notice,
        name: String::new(),
        gist: gist(&text),
        text,
        again: false,
        quote: None,
    }
}

/// The connection as a view shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    Connecting,
    Connected,
    Reconnecting,
    /// This replica computed something else than the others: it must join again.
    Diverged,
    /// The session ended for good; the text says why ([`client_error`]).
    Failed(String),
}

impl Status {
    pub fn text(&self) -> String {
        match self {
            Status::Connecting => "Connecting…".into(),
            Status::Connected => "Connected".into(),
            Status::Reconnecting => "Reconnecting…".into(),
            Status::Diverged => "Out of sync with the others: leave and join the room again".into(),
            Status::Failed(why) => why.clone(),
        }
    }

    /// The status after `event` of the session with the room `room` on `server`; `None`
    /// for events that do not change it.
    pub fn after(event: &SessionEvent<ChatOutput>, room: &str, server: &str) -> Option<Status> {
        match event {
            SessionEvent::Synced => Some(Status::Connected),
            SessionEvent::Reconnecting(_) => Some(Status::Reconnecting),
            SessionEvent::Failed(e) => Some(Status::Failed(client_error(e, room, server))),
            SessionEvent::Diverged { .. } => Some(Status::Diverged),
            _ => None,
        }
    }

    /// Whether all is well, for views that colour it.
    pub fn ok(&self) -> bool {
        *self == Status::Connected
    }

    /// Whether the session is over (the view should say how to join again).
    pub fn failed(&self) -> bool {
        matches!(self, Status::Diverged | Status::Failed(_))
    }
}

/// What to tell a person whose session with the room `room` on `server` failed with `e`.
pub fn client_error(e: &ClientError, room: &str, server: &str) -> String {
    match e {
        ClientError::WrongPassword => format!(
            "Wrong password: the room {room:?} on {server} was created with a different password. Check that the link was copied whole, including the part after #."
        ),
        ClientError::Unreachable { reason, .. } => {
            format!("Cannot reach the synq server at {server} ({reason}). Is it running?")
        }
        other => format!("The chat stopped: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ChatInput, ChatOutput, ChatViewData};
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

        fn reply(&mut self, who: &str, to: u64, text: &str) {
            self.input(
                who,
                ChatInput::Post {
                    text: text.into(),
                    reply_to: Some(to),
                    to_ai: false,
                },
            );
        }

        fn page(&self, me: &str) -> Page {
            page(self.r.model(), &ViewId::from(me), "?", None)
        }
    }

    fn texts(p: &Page) -> Vec<(RowKind, &str)> {
        p.rows.iter().map(|r| (r.kind, r.text.as_str())).collect()
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
        let terminal = page(
            room.r.model(),
            &ViewId::from("ann"),
            "?",
            Some("http://h/?q=r"),
        );
        assert_eq!(
            terminal.welcome,
            "Welcome, ANN! AI is here. Share the link to invite others: http://h/?q=r",
            "a view without an address bar shows the link"
        );
        assert_eq!(alone.placeholder, "Message everyone and the AI…");
        assert!(alone.relaying, "the only one here relays");
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
        assert_eq!(
            texts(&p),
            [
                (RowKind::Notice, "ANN joined"),
                (RowKind::Notice, "BOB joined"),
                (RowKind::Post { mine: false }, "hi all")
            ]
        );
        assert_eq!(
            room.page("bob").rows[2].kind,
            RowKind::Post { mine: true },
            "Bob's own post"
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
            (ai.kind, ai.text.as_str(), ai.again),
            (
                RowKind::Ai {
                    state: AiState::Waiting
                },
                "…",
                false
            )
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
        let stopped = p.row(ai.id).expect("still there");
        assert_eq!(
            stopped.kind,
            RowKind::Ai {
                state: AiState::Stopped
            }
        );
        assert_eq!(stopped.text, "Once upon (stopped by BOB)");
        assert_eq!(stopped.gist, "Once upon", "a quote leaves the suffix out");
        assert!(stopped.again);
        room.input("ann", ChatInput::Again { entry: Some(ai.id) });
        let again = room.page("bob");
        let row = again.row(ai.id).expect("in place");
        assert_eq!(row.text, "… (answered again at ANN's request)");
        assert!(matches!(row.kind, RowKind::Ai { state } if state.in_progress()));
        assert!(again.answering);
    }

    #[test]
    fn replies_quote_the_first_words_of_what_they_answer() {
        let mut room = Room::new();
        room.join("ann");
        room.join("bob");
        room.input(
            "ann",
            ChatInput::post(
                "where shall we meet for lunch tomorrow, near the station or the park?",
            ),
        );
        let post = room.page("bob").rows.last().cloned().expect("Ann's post");
        assert_eq!(post.gist, "where shall we meet for lunch tomorrow, near…");
        assert_eq!(
            post.replying(),
            "Replying to ANN: where shall we meet for lunch tomorrow, near…"
        );
        room.reply("bob", post.id, "the park");
        let p = room.page("ann");
        let reply = p.rows.last().expect("Bob's reply");
        assert_eq!(reply.text, "the park");
        assert_eq!(
            reply.quote.as_deref(),
            Some("↪ ANN: where shall we meet for lunch tomorrow, near…")
        );
        assert!(
            room.requests.is_empty(),
            "a reply to a person is for people"
        );

        // A reply to the AI's answer addresses the AI, even with two people here.
        room.input("ann", ChatInput::post("@AI a joke?"));
        let id = room.requests[0];
        room.input(
            "ann",
            ChatInput::Relay(RelayResponse::Delta {
                id,
                text: "Why did\nthe chicken".into(),
            }),
        );
        room.input("ann", ChatInput::Relay(RelayResponse::Done { id }));
        let answer = room.page("bob").rows.last().cloned().expect("the answer");
        assert_eq!(answer.replying(), "Replying to AI: Why did the chicken");
        room.reply("bob", answer.id, "why?");
        assert_eq!(room.requests.len(), 2, "the reply was put to the AI");
        let p = room.page("ann");
        let reply = p.rows.iter().rev().nth(1).expect("Bob's reply");
        assert_eq!(reply.quote.as_deref(), Some("↪ AI: Why did the chicken"));

        // Newest first, notices left out: what `/reply N` counts.
        let repliable: Vec<&str> = p.repliable().map(|r| r.text.as_str()).collect();
        assert_eq!(repliable[..3], ["…", "why?", "Why did\nthe chicken"]);

        // The quoted entry gone (a reset), the reply says so.
        room.input("ann", ChatInput::Reset);
        let gone = room
            .page("ann")
            .rows
            .last()
            .map(|r| r.id)
            .expect("the notice");
        room.reply("bob", gone, "ok");
        let p = room.page("ann");
        assert_eq!(
            p.rows.last().and_then(|r| r.quote.as_deref()),
            Some("↪ ANN reset the chat"),
            "a notice is quoted without a name"
        );
    }

    #[test]
    fn gists_are_one_short_line() {
        assert_eq!(gist("  hello\n  there "), "hello there");
        assert_eq!(gist(""), "");
        let long = "a".repeat(100);
        assert_eq!(gist(&long), format!("{}…", "a".repeat(60)));
        assert_eq!(gist("1 2 3 4 5 6 7 8"), "1 2 3 4 5 6 7 8");
        assert_eq!(gist("1 2 3 4 5 6 7 8 9"), "1 2 3 4 5 6 7 8…");
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
            p.rows.iter().all(|r| !matches!(r.kind, RowKind::Ai { .. })),
            "no answer while off"
        );
        assert!(room.requests.is_empty());
    }

    #[test]
    fn names_stay_on_one_line() {
        let mut room = Room::new();
        room.join("ann");
        room.apply(Event::Join {
            view: ViewId::from("eve"),
            data: ChatViewData {
                name: "Eve\nthe\tgreat".into(),
                candidacy: Candidacy::default(),
            },
        });
        let p = room.page("ann");
        assert_eq!(
            p.welcome,
            "Welcome, ANN! AI is here, along with Eve the great."
        );
        assert_eq!(p.rows[1].text, "Eve the great joined");
    }

    #[test]
    fn status_and_error_texts() {
        assert_eq!(Status::Connected.text(), "Connected");
        assert_eq!(Status::Reconnecting.text(), "Reconnecting…");
        assert!(Status::Connected.ok() && !Status::Connecting.ok());
        assert!(
            Status::Diverged.failed() && Status::Diverged.text().contains("join the room again")
        );
        let wrong = client_error(&ClientError::WrongPassword, "r1", "http://h:1");
        assert!(
            wrong.starts_with("Wrong password: the room \"r1\" on http://h:1"),
            "{wrong}"
        );
        assert!(wrong.contains("the part after #"), "{wrong}");
        let down = client_error(
            &ClientError::Unreachable {
                url: "ws://h:1/".into(),
                reason: "connection refused".into(),
            },
            "r1",
            "http://h:1",
        );
        assert_eq!(
            down,
            "Cannot reach the synq server at http://h:1 (connection refused). Is it running?"
        );
        assert_eq!(
            client_error(&ClientError::Ended, "r1", "http://h:1"),
            "The chat stopped: the session has ended"
        );
    }
}
