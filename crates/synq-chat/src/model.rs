//! `ChatModel`: the replicated state of a chat room in which an AI takes part.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};
use synq_model::{Cx, Model, Persisted, ViewId};
use synq_relay::{Applied, Candidacy, Elected, Relay, RelayRequest, RelayResponse};

use crate::hygiene;
use crate::prompt::{self, AiRequest, PromptInput, Sampling};
use crate::saved::SavedRoom;

/// The app id under which every chat participant (browser page, `synq chat`) joins: rooms
/// are shared only among participants of the same app id, room name and model schema.
pub const APP_ID: &str = "synq.chat";
/// Entries kept in the history, which every replica holds; older ones go to the room's
/// archive in pages of [`ARCHIVE_PAGE`].
pub const MAX_HISTORY: usize = 100;
/// Entries per archive page: when the history is over [`MAX_HISTORY`], its oldest
/// entries are written to a file of the room (`Cx::write_file`) and leave the history.
pub const ARCHIVE_PAGE: usize = 25;
/// Archive pages the room remembers (the oldest are forgotten past it): 10,000 entries.
pub const MAX_ARCHIVE_PAGES: usize = 400;
/// The AI's name in the room.
pub const AI_NAME: &str = "AI";
/// Longest post accepted, in bytes (longer ones are cut at a character boundary).
pub const MAX_POST_BYTES: usize = 4000;

/// AI requests one participant may cause per minute (posts that ask the AI, and
/// regenerations), counted in reflector time.
pub const AI_REQUESTS_PER_MINUTE: usize = 6;
/// Longest room instructions for the AI, in bytes.
pub const MAX_INSTRUCTIONS_BYTES: usize = 500;
/// Longest status of a pending answer, in bytes.
pub const MAX_STATUS_BYTES: usize = 200;
/// The room's history and settings are persisted for later versions of the chat this
/// long after a change (reflector time): changes in between are saved together.
pub const PERSIST_AFTER_MS: u64 = 3_000;

/// The status an elected view reports while the AI service has `ahead` requests to answer
/// before this one ("AI is answering 2 other requests first"); empty once it is this
/// one's turn.
pub fn queue_status(ahead: u32) -> String {
    match ahead {
        0 => String::new(),
        1 => format!("{AI_NAME} is answering 1 other request first"),
        n => format!("{AI_NAME} is answering {n} other requests first"),
    }
}

/// What a participant declares when it joins.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatViewData {
    /// Display name (views pick a random friendly one).
    pub name: String,
    /// Whether this participant can call the AI, and how much it wants to.
    pub candidacy: Candidacy,
}

/// When the AI answers: a room setting that any participant may change.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum AiMode {
    /// Every post while one person is in the room; with several, only posts that
    /// address the AI ([`addresses_ai`]).
    #[default]
    Auto,
    /// Every post.
    Always,
    /// Only posts that address the AI.
    Addressed,
    /// Never: nothing leaves the room.
    Off,
}

impl AiMode {
    /// The word for it in commands and settings (`/ai auto`).
    pub fn as_str(self) -> &'static str {
        match self {
            AiMode::Auto => "auto",
            AiMode::Always => "always",
            AiMode::Addressed => "addressed",
            AiMode::Off => "off",
        }
    }

    pub fn parse(word: &str) -> Option<AiMode> {
        match word.trim().to_ascii_lowercase().as_str() {
            "auto" => Some(AiMode::Auto),
            "always" | "on" => Some(AiMode::Always),
            "addressed" | "mentions" => Some(AiMode::Addressed),
            "off" | "never" => Some(AiMode::Off),
            _ => None,
        }
    }

    /// How the room is told ("Ann set the AI to answer when addressed").
    pub fn describe(self) -> &'static str {
        match self {
            AiMode::Auto => {
                "answer every post when one person is here, and only when addressed when several are"
            }
            AiMode::Always => "answer every post",
            AiMode::Addressed => "answer when addressed",
            AiMode::Off => "stay silent (nothing is sent to the AI)",
        }
    }
}

/// Whether `text` speaks to the AI: `@AI` anywhere, `AI` followed by `,` or `:` at the
/// start, or "hey AI" (any case).
pub fn addresses_ai(text: &str) -> bool {
    let lower = text.trim_start().to_lowercase();
    let ai = AI_NAME.to_lowercase();
    let word_end = |rest: &str| !rest.chars().next().is_some_and(char::is_alphanumeric);
    let mention = format!("@{ai}");
    let mut from = 0;
    while let Some(i) = lower[from..].find(&mention) {
        let end = from + i + mention.len();
        if word_end(&lower[end..]) {
            return true;
        }
        from = end;
    }
    if let Some(rest) = lower.strip_prefix(&ai)
        && matches!(rest.trim_start().chars().next(), Some(',' | ':'))
    {
        return true;
    }
    for greeting in ["hey", "hi", "hello", "ok", "okay"] {
        if let Some(rest) = lower.strip_prefix(greeting) {
            let rest = rest.trim_start_matches([' ', ',']);
            if let Some(after) = rest.strip_prefix(&ai)
                && word_end(after)
            {
                return true;
            }
        }
    }
    false
}

/// One line of the history. Text stays text: rendering and escaping belong to views.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Unique, increasing.
    pub id: u64,
    /// Reflector time, ms.
    pub at: u64,
    pub kind: EntryKind,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryKind {
    /// A person's post, possibly a reply to entry `reply_to`.
    Post {
        from: ViewId,
        name: String,
        text: String,
        reply_to: Option<u64>,
    },
    /// The AI's answer to the post `post` (an entry id), relay request `request`, as far
    /// as it has streamed (after [`crate::hygiene`]).
    Ai {
        request: u64,
        post: u64,
        text: String,
        state: AiState,
        /// Who stopped it, if someone did.
        stopped_by: Option<String>,
        /// Who asked for this answer again, if someone did.
        regenerated_by: Option<String>,
    },
    Joined {
        name: String,
    },
    Left {
        name: String,
    },
    /// The AI was unavailable, the chat was reset, a setting changed.
    Notice {
        text: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AiState {
    /// Asked, nothing streamed yet (or restarted on a newly elected view).
    Waiting,
    Streaming,
    Done,
    /// Stopped by a participant; the text so far stays.
    Stopped,
}

impl AiState {
    /// Whether the answer may still grow.
    pub fn in_progress(self) -> bool {
        matches!(self, AiState::Waiting | AiState::Streaming)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChatInput {
    Post {
        text: String,
        /// The entry this post replies to (a reply to an AI answer addresses the AI).
        reply_to: Option<u64>,
        /// The poster asked the AI explicitly (an "ask the AI" action of a view, such as
        /// `synq chat --say … --wait-answer`): addressed whatever the text says.
        to_ai: bool,
    },
    Reset,
    /// The elected view's answer to a relay request.
    Relay(RelayResponse),
    /// Stop every answer in progress.
    Stop,
    /// Answer the post of AI entry `entry` again (the latest answer when `None`).
    Again {
        entry: Option<u64>,
    },
    SetAiMode(AiMode),
    /// The room's instructions for the AI (cut to [`MAX_INSTRUCTIONS_BYTES`]; empty clears).
    SetInstructions(String),
}

impl ChatInput {
    /// A post that replies to nothing.
    pub fn post(text: impl Into<String>) -> ChatInput {
        ChatInput::Post {
            text: text.into(),
            reply_to: None,
            to_ai: false,
        }
    }

    /// A post that replies to entry `to` (a reply to an AI answer addresses the AI).
    pub fn reply(text: impl Into<String>, to: u64) -> ChatInput {
        ChatInput::Post {
            text: text.into(),
            reply_to: Some(to),
            to_ai: false,
        }
    }

    /// A post that asks the AI, whatever the room's mode short of off.
    pub fn ask(text: impl Into<String>) -> ChatInput {
        ChatInput::Post {
            text: text.into(),
            reply_to: None,
            to_ai: true,
        }
    }
}

/// The chat's timers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChatTimer {
    /// Persist the history and settings ([`PERSIST_AFTER_MS`]).
    Persist,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ChatOutput {
    /// The history, the users or a setting changed: render again.
    Changed,
    /// Ask the AI (only the view named in it acts).
    Request(RelayRequest<AiRequest>),
    /// A new view is elected to relay.
    Elected(ViewId),
}

/// A page of the room's archive: entries that left the history, in a file of the room.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchivePage {
    /// The file's name (`Session::read_file`).
    pub name: String,
    /// The first and last entry ids in it.
    pub first: u64,
    pub last: u64,
}

/// The chat room.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct ChatModel {
    users: BTreeMap<ViewId, String>,
    history: VecDeque<Entry>,
    next_entry: u64,
    elected: Elected,
    relay: Relay<AiRequest>,
    mode: AiMode,
    instructions: String,
    /// Reflector times of each participant's AI requests in the last minute.
    asked: BTreeMap<ViewId, VecDeque<u64>>,
    /// What the elected view says of pending requests that have no text yet (their place
    /// in the AI service's queue), by relay request id.
    statuses: BTreeMap<u64, String>,
    /// A [`ChatTimer::Persist`] is pending.
    persisting: bool,
    /// The archive's pages, oldest first.
    archive: VecDeque<ArchivePage>,
}

impl ChatModel {
    /// The history, oldest first.
    pub fn history(&self) -> impl DoubleEndedIterator<Item = &Entry> + ExactSizeIterator {
        self.history.iter()
    }

    /// Names of the people in the room, in view-id order.
    pub fn users(&self) -> impl Iterator<Item = (&ViewId, &str)> {
        self.users.iter().map(|(v, n)| (v, n.as_str()))
    }

    pub fn name_of(&self, view: &ViewId) -> Option<&str> {
        self.users.get(view).map(String::as_str)
    }

    /// The id of the last entry made (entries removed or archived included).
    pub fn last_entry(&self) -> u64 {
        self.next_entry
    }

    /// The archive's pages, oldest first: what left the history, for views to load
    /// ("load earlier messages").
    pub fn archive(&self) -> impl DoubleEndedIterator<Item = &ArchivePage> + ExactSizeIterator {
        self.archive.iter()
    }

    /// The archive page just before page `name` (the newest page for `None`): what
    /// "load earlier messages" loads next. `None` when there is no earlier page (or
    /// `name` is no longer in the archive).
    pub fn page_before(&self, name: Option<&str>) -> Option<&ArchivePage> {
        match name {
            None => self.archive.back(),
            Some(name) => {
                let i = self.archive.iter().position(|p| p.name == name)?;
                i.checked_sub(1).and_then(|i| self.archive.get(i))
            }
        }
    }

    /// Whether `view` is a relay service rather than a person: it can relay and declared a
    /// preference above 0 in the election (`synq bot` does; browser tabs and `synq chat`
    /// declare 0). A service does not make the room "several people" for the auto mode.
    pub fn is_service(&self, view: &ViewId) -> bool {
        self.elected
            .candidacy(view)
            .is_some_and(|c| c.can_relay && c.preference > 0)
    }

    /// How many people are in the room: participants other than services.
    pub fn people(&self) -> usize {
        self.people_names().count()
    }

    /// The names of the people in the room, in view-id order (services left out).
    fn people_names(&self) -> impl Iterator<Item = &String> {
        self.users
            .iter()
            .filter(|(v, _)| !self.is_service(v))
            .map(|(_, n)| n)
    }

    /// The view that relays AI requests.
    pub fn elected(&self) -> Option<&ViewId> {
        self.elected.elected()
    }

    /// The relay's pending requests.
    pub fn relay(&self) -> &Relay<AiRequest> {
        &self.relay
    }

    /// What the elected view says of the answer to relay request `request` while it has
    /// no text yet (e.g. "AI is answering 2 other requests first"), for views to show on
    /// the waiting AI entry.
    pub fn ai_status(&self, request: u64) -> Option<&str> {
        self.statuses.get(&request).map(String::as_str)
    }

    /// When the AI answers.
    pub fn ai_mode(&self) -> AiMode {
        self.mode
    }

    /// The room's instructions for the AI (empty: none).
    pub fn instructions(&self) -> &str {
        &self.instructions
    }

    /// Whether an answer is in progress (what a Stop would stop).
    pub fn answering(&self) -> bool {
        self.history
            .iter()
            .any(|e| matches!(e.kind, EntryKind::Ai { state, .. } if state.in_progress()))
    }

    /// Whether the AI answers `text` (a reply to `reply_to`; explicitly asked: `to_ai`)
    /// now.
    pub fn answers(&self, text: &str, reply_to: Option<u64>, to_ai: bool) -> bool {
        let replies_to_ai = to_ai
            || reply_to.is_some_and(|id| {
                self.history
                    .iter()
                    .any(|e| e.id == id && matches!(e.kind, EntryKind::Ai { .. }))
            });
        let addressed = replies_to_ai || addresses_ai(text);
        match self.mode {
            AiMode::Always => true,
            AiMode::Off => false,
            AiMode::Addressed => addressed,
            // A bot relaying for the room does not count: with it, one person is still alone.
            AiMode::Auto => self.people() <= 1 || addressed,
        }
    }

    fn push(&mut self, cx: &mut Cx<'_, Self>, kind: EntryKind) -> u64 {
        self.next_entry += 1;
        self.history.push_back(Entry {
            id: self.next_entry,
            at: cx.now(),
            kind,
        });
        if self.history.len() > MAX_HISTORY {
            self.archive_oldest(cx);
        }
        self.next_entry
    }

    /// Moves the oldest [`ARCHIVE_PAGE`] entries of the history to a file of the room.
    fn archive_oldest(&mut self, cx: &mut Cx<'_, Self>) {
        let n = ARCHIVE_PAGE.min(self.history.len());
        let entries: Vec<Entry> = self.history.drain(..n).collect();
        let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
            return;
        };
        // Unique in the room: entry ids never repeat, and the schema tells apart a
        // session of another version running at the same time.
        let name = format!("archive/{}/{}-{}", Self::SCHEMA, first.id, last.id);
        let page = ArchivePage {
            name: name.clone(),
            first: first.id,
            last: last.id,
        };
        // Plain strings and numbers: JSON always takes them.
        if cx
            .write_file(&name, &crate::saved::SavedPage::new(&entries))
            .is_ok()
        {
            self.archive.push_back(page);
            while self.archive.len() > MAX_ARCHIVE_PAGES {
                self.archive.pop_front();
            }
        }
    }

    /// Persists the room [`PERSIST_AFTER_MS`] from now, unless that is already due.
    fn persist_soon(&mut self, cx: &mut Cx<'_, Self>) {
        if !self.persisting {
            self.persisting = true;
            cx.future(PERSIST_AFTER_MS, ChatTimer::Persist);
        }
    }

    fn notice(&mut self, cx: &mut Cx<'_, Self>, text: String) {
        self.push(cx, EntryKind::Notice { text });
    }

    /// Where in the history the answer to relay request `request` is.
    fn ai_index(&self, request: u64) -> Option<usize> {
        self.history
            .iter()
            .rposition(|e| matches!(e.kind, EntryKind::Ai { request: r, .. } if r == request))
    }

    fn ai_entry(&mut self, request: u64) -> Option<&mut Entry> {
        let index = self.ai_index(request)?;
        self.history.get_mut(index)
    }

    /// The post with entry id `post` (what an answer answers): its index, who wrote it
    /// and its text; `None` once it has left the history.
    fn asked_post(&self, post: u64) -> Option<(usize, String, String)> {
        let index = self.history.iter().position(|e| e.id == post)?;
        match &self.history[index].kind {
            EntryKind::Post { name, text, .. } => Some((index, name.clone(), text.clone())),
            _ => None,
        }
    }

    /// The prompt for a post of `text` by `name`: who is in the room, the room's
    /// instructions, the last entries before it ([`prompt::window`]), and the post.
    pub fn prompt(&self, name: &str, text: &str) -> AiRequest {
        self.prompt_before(self.history.len(), name, text)
    }

    /// [`ChatModel::prompt`] with the history before its `end`th entry.
    fn prompt_before(&self, end: usize, name: &str, text: &str) -> AiRequest {
        // The people: a relay service (a bot) is no one to talk to.
        let present: Vec<String> = self.people_names().cloned().collect();
        // The prompt shows at most the last PROMPT_HISTORY entries (prompt::window).
        let start = end.saturating_sub(prompt::PROMPT_HISTORY);
        let history: Vec<Entry> = self.history.range(start..end).cloned().collect();
        prompt::build(&PromptInput {
            present: &present,
            history: &history,
            instructions: &self.instructions,
            asker: name,
            text,
        })
    }

    /// Names an answer must not speak as: the people here and in the recent history.
    fn speaker_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.users.values().cloned().collect();
        for e in self.history.iter().rev().take(prompt::PROMPT_HISTORY * 2) {
            match &e.kind {
                EntryKind::Post { name, .. }
                | EntryKind::Joined { name }
                | EntryKind::Left { name } => names.push(name.clone()),
                _ => {}
            }
        }
        names.sort_unstable();
        names.dedup();
        names
    }

    /// Counts an AI request by `from` against the fair-use limit; `false` (and a notice)
    /// when over it.
    fn fair_use(&mut self, cx: &mut Cx<'_, Self>, from: &ViewId, name: &str) -> bool {
        let now = cx.now();
        let asked = self.asked.entry(from.clone()).or_default();
        while asked
            .front()
            .is_some_and(|t| now.saturating_sub(*t) >= 60_000)
        {
            asked.pop_front();
        }
        if asked.len() >= AI_REQUESTS_PER_MINUTE {
            self.notice(
                cx,
                format!(
                    "{name} asked the {AI_NAME} {AI_REQUESTS_PER_MINUTE} times in the last minute, the most one person may; the {AI_NAME} will answer {name} again in a moment"
                ),
            );
            return false;
        }
        asked.push_back(now);
        true
    }

    /// Asks the AI to answer the post at `post` (an entry id) with `request`.
    fn ask(&mut self, cx: &mut Cx<'_, Self>, post: u64, request: AiRequest) {
        let (id, emit) = self.relay.request(self.elected.elected(), request);
        self.push(
            cx,
            EntryKind::Ai {
                request: id,
                post,
                text: String::new(),
                state: AiState::Waiting,
                stopped_by: None,
                regenerated_by: None,
            },
        );
        if let Some(r) = emit {
            cx.emit(ChatOutput::Request(r));
        }
    }

    /// Streams `all` (the raw answer so far) into its entry through the hygiene filter;
    /// when the model started another speaker's turn, the answer ends there and its
    /// call is stopped. `first_draw`: the request was [`Sampling::Focused`] (not Again,
    /// nor already asked once more after an echo).
    fn stream(
        &mut self,
        cx: &mut Cx<'_, Self>,
        id: u64,
        all: String,
        done: bool,
        first_draw: bool,
    ) {
        let names = self.speaker_names();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let shown = hygiene::shown(&all, &names, done);
        let finished = done || shown.ended;
        self.statuses.remove(&id);
        if shown.ended {
            self.relay.cancel(id);
        }
        let (echoed, may_echo) = if first_draw && self.mode != AiMode::Off {
            let posts = self.posts_before(id);
            if finished {
                (hygiene::repeats_a_post(&shown.text, &posts), false)
            } else {
                (false, hygiene::may_become_echo(&shown.text, &posts))
            }
        } else {
            (false, false)
        };
        if echoed && self.ask_again_after_echo(cx, id) {
            return;
        }
        if let Some(e) = self.ai_entry(id)
            && let EntryKind::Ai { text, state, .. } = &mut e.kind
        {
            if may_echo {
                // Held back while it may still turn out to parrot a post, so that an
                // echo, asked again when complete, is never shown.
                return;
            }
            *text = shown.text;
            *state = if finished {
                AiState::Done
            } else {
                AiState::Streaming
            };
        }
    }

    fn stop(&mut self, name: &str) -> bool {
        let mut stopped = false;
        let mut cancel = Vec::new();
        for e in self.history.iter_mut() {
            if let EntryKind::Ai {
                request,
                state,
                stopped_by,
                ..
            } = &mut e.kind
                && state.in_progress()
            {
                *state = AiState::Stopped;
                *stopped_by = Some(name.to_owned());
                cancel.push(*request);
                stopped = true;
            }
        }
        for id in cancel {
            self.relay.cancel(id);
        }
        stopped
    }

    /// Asks again for the answer in AI entry `entry` (the latest when `None`).
    fn again(&mut self, cx: &mut Cx<'_, Self>, from: &ViewId, name: &str, entry: Option<u64>) {
        let target = self.history.iter().rposition(|e| {
            matches!(e.kind, EntryKind::Ai { .. }) && entry.is_none_or(|id| e.id == id)
        });
        let Some(index) = target else {
            return;
        };
        let EntryKind::Ai { post, request, .. } = self.history[index].kind.clone() else {
            return;
        };
        let Some((post_index, asker, text)) = self.asked_post(post) else {
            self.notice(
                cx,
                format!(
                    "{name} asked for another answer, but its question is no longer in the history"
                ),
            );
            return;
        };
        if self.mode == AiMode::Off {
            return;
        }
        // The fair-use notice may move entries; the answer is found again by its id.
        let entry_id = self.history[index].id;
        if !self.fair_use(cx, from, name) {
            return;
        }
        self.relay.cancel(request);
        self.reask(cx, entry_id, post_index, &asker, &text, Some(name));
    }

    /// Asks for another draw of the answer in entry `entry_id` to the post at
    /// `post_index`, in its place; `by` is who asked (none for the room's own retry).
    fn reask(
        &mut self,
        cx: &mut Cx<'_, Self>,
        entry_id: u64,
        post_index: usize,
        asker: &str,
        post: &str,
        by: Option<&str>,
    ) {
        let mut prompt = self.prompt_before(post_index, asker, post);
        // Asked again: another answer, not the likeliest one once more.
        prompt.sampling = Sampling::Varied;
        let (id, emit) = self.relay.request(self.elected.elected(), prompt);
        if let Some(e) = self.history.iter_mut().find(|e| e.id == entry_id)
            && let EntryKind::Ai {
                request,
                text,
                state,
                stopped_by,
                regenerated_by,
                ..
            } = &mut e.kind
        {
            *request = id;
            text.clear();
            *state = AiState::Waiting;
            *stopped_by = None;
            if let Some(by) = by {
                *regenerated_by = Some(by.to_owned());
            }
        }
        if let Some(r) = emit {
            cx.emit(ChatOutput::Request(r));
        }
    }

    /// The posts the answer to `request` must not parrot: the asked post and the people's
    /// posts that its prompt showed.
    fn posts_before(&self, request: u64) -> Vec<&str> {
        let Some(index) = self.ai_index(request) else {
            return Vec::new();
        };
        let start = index.saturating_sub(prompt::PROMPT_HISTORY + 1);
        self.history
            .range(start..index)
            .filter_map(|e| match &e.kind {
                EntryKind::Post { text, .. } => Some(text.as_str()),
                _ => None,
            })
            .collect()
    }

    /// A first answer that parrots a post (small models echo the question) is not shown:
    /// the same question is asked once more, drawn with [`Sampling::Varied`].
    ///
    /// Whether it was asked (not when the post has left the history).
    fn ask_again_after_echo(&mut self, cx: &mut Cx<'_, Self>, request: u64) -> bool {
        let Some(index) = self.ai_index(request) else {
            return false;
        };
        let entry = &self.history[index];
        let EntryKind::Ai { post, .. } = entry.kind else {
            return false;
        };
        let entry_id = entry.id;
        let Some((post_index, asker, text)) = self.asked_post(post) else {
            return false;
        };
        self.reask(cx, entry_id, post_index, &asker, &text, None);
        true
    }

    fn elected_changed(&mut self, cx: &mut Cx<'_, Self>, elected: Option<ViewId>) {
        let (requests, restarted) = self.relay.reelect(elected.as_ref());
        // Reissued to another view: what the old one said no longer holds.
        for r in &requests {
            self.statuses.remove(&r.id);
        }
        for id in restarted {
            if let Some(e) = self.ai_entry(id)
                && let EntryKind::Ai { text, state, .. } = &mut e.kind
            {
                text.clear();
                *state = AiState::Waiting;
            }
        }
        if let Some(v) = elected {
            cx.emit(ChatOutput::Elected(v));
        }
        for r in requests {
            cx.emit(ChatOutput::Request(r));
        }
    }
}

/// Cuts `text` to at most `max` bytes at a character boundary.
pub(crate) fn cut(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

impl Model for ChatModel {
    type Input = ChatInput;
    type Output = ChatOutput;
    type Timer = ChatTimer;
    type ViewData = ChatViewData;
    // 3: the prompt (held in the relay's replicated requests) became chat turns, and the
    // relay's statuses (`RelayResponse::Status`, `ChatModel::statuses`) were added.
    // 4: the room persists its history and settings (`ChatTimer`, `crate::saved`); from
    // here on, a room keeps them when this changes. Also in 4: a relay service (synq
    // bot, preference above 0) takes the election over and is not a person for `auto`.
    // 5: requests say how to draw the answer (`Sampling`), and a first answer that
    // parrots a post is held back and asked once more.
    const SCHEMA: &'static str = "synq-chat/5";

    fn init(_: &mut Cx<'_, Self>) -> Self {
        ChatModel::default()
    }

    /// The history and settings an earlier version of the chat persisted in this room
    /// (written as [`SavedRoom`] since `synq-chat/4`), with a notice that says so.
    fn init_persisted(cx: &mut Cx<'_, Self>, from: &Persisted) -> Self {
        let mut room = ChatModel::default();
        match from.decode::<SavedRoom>() {
            Ok(saved) => {
                let (history, last, mode, instructions, archive) = saved.restore();
                room.history = history;
                room.archive = archive;
                room.next_entry = last;
                room.mode = mode;
                room.instructions = instructions;
                room.notice(
                    cx,
                    "The history above was kept from an earlier version of the chat".into(),
                );
            }
            Err(e) => room.notice(
                cx,
                format!(
                    "The history of an earlier version of the chat ({}) could not be read: {e}",
                    from.schema()
                ),
            ),
        }
        room
    }

    fn timer(&mut self, cx: &mut Cx<'_, Self>, timer: ChatTimer) {
        match timer {
            ChatTimer::Persist => {
                self.persisting = false;
                let saved = SavedRoom::new(self);
                // Plain structs of strings and numbers: JSON always takes them.
                let _ = cx.persist(&saved);
            }
        }
    }

    fn input(&mut self, cx: &mut Cx<'_, Self>, from: &ViewId, input: ChatInput) {
        // Only people in the room take part (the runtime already drops unknown views).
        let Some(name) = self.users.get(from).cloned() else {
            return;
        };
        match input {
            ChatInput::Post {
                text,
                reply_to,
                to_ai,
            } => {
                let text = cut(text, MAX_POST_BYTES);
                if text.trim().is_empty() {
                    return;
                }
                let reply_to = reply_to.filter(|id| self.history.iter().any(|e| e.id == *id));
                let answer = self.answers(&text, reply_to, to_ai);
                let request = answer.then(|| self.prompt(&name, &text));
                let post = self.push(
                    cx,
                    EntryKind::Post {
                        from: from.clone(),
                        name: name.clone(),
                        text,
                        reply_to,
                    },
                );
                if let Some(request) = request
                    && self.fair_use(cx, from, &name)
                {
                    self.ask(cx, post, request);
                }
            }
            ChatInput::Reset => {
                self.history.clear();
                self.archive.clear();
                self.relay.clear();
                self.notice(cx, format!("{name} reset the chat"));
            }
            ChatInput::Stop => {
                if !self.stop(&name) {
                    return;
                }
            }
            ChatInput::Again { entry } => self.again(cx, from, &name, entry),
            ChatInput::SetAiMode(mode) => {
                if mode == self.mode {
                    return;
                }
                self.mode = mode;
                if mode == AiMode::Off {
                    self.stop(&name);
                }
                self.notice(
                    cx,
                    format!("{name} set the {AI_NAME} to {}", mode.describe()),
                );
            }
            ChatInput::SetInstructions(text) => {
                let text = cut(text.trim().to_owned(), MAX_INSTRUCTIONS_BYTES);
                if text == self.instructions {
                    return;
                }
                let notice = if text.is_empty() {
                    format!("{name} cleared the room's instructions for the {AI_NAME}")
                } else {
                    format!("{name} set the room's instructions for the {AI_NAME}: {text}")
                };
                self.instructions = text;
                self.notice(cx, notice);
            }
            ChatInput::Relay(response) => {
                // Read before `respond`, which forgets a request once it is done.
                let first_draw = self
                    .relay
                    .get(response.id())
                    .is_some_and(|r| r.sampling == Sampling::Focused);
                match self.relay.respond(from, self.elected.elected(), response) {
                    Some(Applied::Streaming { id, text }) => {
                        self.stream(cx, id, text, false, first_draw)
                    }
                    Some(Applied::Done { id, text }) => self.stream(cx, id, text, true, first_draw),
                    Some(Applied::Failed { id, reason }) => {
                        let reason = cut(reason, 200);
                        if let Some(e) = self.ai_entry(id) {
                            e.kind = EntryKind::Notice {
                                text: format!("{AI_NAME} could not answer: {reason}"),
                            };
                        }
                    }
                    Some(Applied::Status { id, status }) => {
                        let waiting = self.ai_entry(id).is_some_and(|e| {
                            matches!(
                                e.kind,
                                EntryKind::Ai {
                                    state: AiState::Waiting,
                                    ..
                                }
                            )
                        });
                        if !waiting {
                            return;
                        }
                        let status = cut(status, MAX_STATUS_BYTES);
                        if status.is_empty() {
                            self.statuses.remove(&id);
                        } else {
                            self.statuses.insert(id, status);
                        }
                    }
                    None => return,
                }
            }
        }
        // Statuses of requests no longer pending (answered, failed, stopped, reset).
        let relay = &self.relay;
        self.statuses.retain(|id, _| relay.is_pending(*id));
        self.persist_soon(cx);
        cx.emit(ChatOutput::Changed);
    }

    fn view_join(&mut self, cx: &mut Cx<'_, Self>, view: &ViewId, data: &ChatViewData) {
        let name = cut(data.name.trim().to_owned(), 60);
        let name = if name.is_empty() {
            "Guest".to_owned()
        } else {
            name
        };
        self.users.insert(view.clone(), name.clone());
        self.push(cx, EntryKind::Joined { name });
        let changed = self.elected.join(view, data.candidacy);
        if changed.is_some() {
            self.elected_changed(cx, changed);
        }
        self.persist_soon(cx);
        cx.emit(ChatOutput::Changed);
    }

    fn view_exit(&mut self, cx: &mut Cx<'_, Self>, view: &ViewId) {
        let name = self.users.remove(view).unwrap_or_else(|| "Guest".into());
        self.asked.remove(view);
        self.push(cx, EntryKind::Left { name });
        let was_elected = self.elected.elected() == Some(view);
        let changed = self.elected.exit(view);
        if was_elected {
            self.elected_changed(cx, changed);
        }
        self.persist_soon(cx);
        cx.emit(ChatOutput::Changed);
    }
}
