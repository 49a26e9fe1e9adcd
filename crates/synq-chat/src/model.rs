//! `ChatModel`: the replicated state of a chat room in which an AI takes part.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};
use synq_model::{Cx, Model, ViewId};
use synq_relay::{Applied, Candidacy, Elected, Relay, RelayRequest, RelayResponse};

use crate::prompt::{self, AiRequest, PromptInput};

/// The app id under which every chat participant (browser page, `synq chat`) joins: rooms
/// are shared only among participants of the same app id, room name and model schema.
pub const APP_ID: &str = "synq.chat";
/// Entries kept in the history; older ones are dropped.
pub const MAX_HISTORY: usize = 100;
/// The AI's name in the room.
pub const AI_NAME: &str = "AI";
/// Longest post accepted, in bytes (longer ones are cut at a character boundary).
pub const MAX_POST_BYTES: usize = 4000;

/// What a participant declares when it joins.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatViewData {
    /// Display name (views pick a random friendly one).
    pub name: String,
    /// Whether this participant can call the AI, and how much it wants to.
    pub candidacy: Candidacy,
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
    /// A person's post.
    Post {
        from: ViewId,
        name: String,
        text: String,
    },
    /// The AI's answer to relay request `request`, as far as it has streamed.
    Ai {
        request: u64,
        text: String,
        state: AiState,
    },
    /// Someone joined or left, the AI was unavailable, the chat was reset.
    Notice { text: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AiState {
    /// Asked, nothing streamed yet (or restarted on a newly elected view).
    Waiting,
    Streaming,
    Done,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChatInput {
    Post {
        text: String,
    },
    Reset,
    /// The elected view's answer to a relay request.
    Relay(RelayResponse),
}

#[derive(Debug, Clone, PartialEq)]
pub enum ChatOutput {
    /// The history or the users changed: render again.
    Changed,
    /// Ask the AI (only the view named in it acts).
    Request(RelayRequest<AiRequest>),
    /// A new view is elected to relay.
    Elected(ViewId),
}

/// The chat room.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct ChatModel {
    users: BTreeMap<ViewId, String>,
    history: VecDeque<Entry>,
    next_entry: u64,
    elected: Elected,
    relay: Relay<AiRequest>,
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

    /// The view that relays AI requests.
    pub fn elected(&self) -> Option<&ViewId> {
        self.elected.elected()
    }

    /// The relay's pending requests.
    pub fn relay(&self) -> &Relay<AiRequest> {
        &self.relay
    }

    fn push(&mut self, cx: &mut Cx<'_, Self>, kind: EntryKind) {
        self.next_entry += 1;
        self.history.push_back(Entry {
            id: self.next_entry,
            at: cx.now(),
            kind,
        });
        while self.history.len() > MAX_HISTORY {
            self.history.pop_front();
        }
    }

    fn notice(&mut self, cx: &mut Cx<'_, Self>, text: String) {
        self.push(cx, EntryKind::Notice { text });
    }

    fn ai_entry(&mut self, request: u64) -> Option<&mut Entry> {
        self.history
            .iter_mut()
            .rev()
            .find(|e| matches!(e.kind, EntryKind::Ai { request: r, .. } if r == request))
    }

    /// The prompt for a post of `text` by `name`: who is in the room, the last
    /// [`prompt::PROMPT_HISTORY`] entries before it, and the post.
    pub fn prompt(&self, name: &str, text: &str) -> AiRequest {
        let present: Vec<String> = self.users.values().cloned().collect();
        let history: Vec<Entry> = self.history.iter().cloned().collect();
        prompt::build(&PromptInput {
            present: &present,
            history: &history,
            instructions: "",
            asker: name,
            text,
        })
    }

    fn elected_changed(&mut self, cx: &mut Cx<'_, Self>, elected: Option<ViewId>) {
        let (requests, restarted) = self.relay.reelect(elected.as_ref());
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
fn cut(mut text: String, max: usize) -> String {
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
    type Timer = ();
    type ViewData = ChatViewData;
    const SCHEMA: &'static str = "synq-chat/1";

    fn init(_: &mut Cx<'_, Self>) -> Self {
        ChatModel::default()
    }

    fn input(&mut self, cx: &mut Cx<'_, Self>, from: &ViewId, input: ChatInput) {
        // Only people in the room take part (the runtime already drops unknown views).
        let Some(name) = self.users.get(from).cloned() else {
            return;
        };
        match input {
            ChatInput::Post { text } => {
                let text = cut(text, MAX_POST_BYTES);
                if text.trim().is_empty() {
                    return;
                }
                let request = self.prompt(&name, &text);
                self.push(
                    cx,
                    EntryKind::Post {
                        from: from.clone(),
                        name,
                        text,
                    },
                );
                let (id, emit) = self.relay.request(self.elected.elected(), request);
                self.push(
                    cx,
                    EntryKind::Ai {
                        request: id,
                        text: String::new(),
                        state: AiState::Waiting,
                    },
                );
                if let Some(r) = emit {
                    cx.emit(ChatOutput::Request(r));
                }
            }
            ChatInput::Reset => {
                self.history.clear();
                self.relay.clear();
                self.notice(cx, format!("{name} reset the chat"));
            }
            ChatInput::Relay(response) => {
                match self.relay.respond(from, self.elected.elected(), response) {
                    Some(Applied::Streaming { id, text: all }) => {
                        if let Some(e) = self.ai_entry(id)
                            && let EntryKind::Ai { text, state, .. } = &mut e.kind
                        {
                            *text = all;
                            *state = AiState::Streaming;
                        }
                    }
                    Some(Applied::Done { id, text: all }) => {
                        if let Some(e) = self.ai_entry(id)
                            && let EntryKind::Ai { text, state, .. } = &mut e.kind
                        {
                            *text = all;
                            *state = AiState::Done;
                        }
                    }
                    Some(Applied::Failed { id, reason }) => {
                        let reason = cut(reason, 200);
                        if let Some(e) = self.ai_entry(id) {
                            e.kind = EntryKind::Notice {
                                text: format!("{AI_NAME} could not answer: {reason}"),
                            };
                        }
                    }
                    None => return,
                }
            }
        }
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
        self.notice(cx, format!("{name} joined"));
        let changed = self.elected.join(view, data.candidacy);
        if changed.is_some() {
            self.elected_changed(cx, changed);
        }
        cx.emit(ChatOutput::Changed);
    }

    fn view_exit(&mut self, cx: &mut Cx<'_, Self>, view: &ViewId) {
        let name = self.users.remove(view).unwrap_or_else(|| "Guest".into());
        self.notice(cx, format!("{name} left"));
        let was_elected = self.elected.elected() == Some(view);
        let changed = self.elected.exit(view);
        if was_elected {
            self.elected_changed(cx, changed);
        }
        cx.emit(ChatOutput::Changed);
    }
}
