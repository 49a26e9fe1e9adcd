//! What a chat room keeps across versions of the chat ([`synq_model::Cx::persist`]): its
//! history and its settings, in a form of its own, apart from the model's state, so that
//! the model can change shape while every later version still reads this one. Fields
//! are added with `serde(default)`, never renamed or removed.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};
use synq_model::ViewId;

use crate::model::{
    AiMode, AiState, ArchivePage, ChatModel, Entry, EntryKind, MAX_ARCHIVE_PAGES, MAX_HISTORY,
    MAX_INSTRUCTIONS_BYTES, cut,
};

/// A room as it is persisted (first written by `synq-chat/4`).
#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub(crate) struct SavedRoom {
    pub entries: Vec<SavedEntry>,
    /// The next entry gets a higher id than this.
    pub last_entry: u64,
    /// [`AiMode::as_str`].
    pub ai_mode: String,
    pub instructions: String,
    /// The archive's pages, oldest first.
    pub archive: Vec<ArchivePage>,
}

/// A page of the archive, as its file holds it.
#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub(crate) struct SavedPage {
    pub entries: Vec<SavedEntry>,
}

impl SavedPage {
    pub fn new(entries: &[Entry]) -> SavedPage {
        SavedPage {
            entries: entries.iter().map(SavedEntry::from).collect(),
        }
    }
}

/// The entries of an archive page's file (`ChatModel::archive`, read with the client's
/// `read_file`), for views to show; entries of unknown kinds are skipped.
pub fn archived_entries(
    file: &synq_model::Persisted,
) -> Result<Vec<Entry>, synq_model::PersistError> {
    let page: SavedPage = file.decode()?;
    Ok(page
        .entries
        .into_iter()
        .filter_map(SavedEntry::into_entry)
        .collect())
}

/// One history entry. `kind` is `post`, `ai`, `joined`, `left` or `notice`; the other
/// fields are those that kind has.
#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub(crate) struct SavedEntry {
    pub id: u64,
    pub at: u64,
    pub kind: String,
    pub name: String,
    pub text: String,
    /// Posts: the view that posted.
    pub from: String,
    pub reply_to: Option<u64>,
    /// AI answers: the post answered.
    pub post: Option<u64>,
    /// AI answers: whether it was stopped (or cut off by the version change).
    pub stopped: bool,
    pub stopped_by: Option<String>,
    pub regenerated_by: Option<String>,
}

impl SavedRoom {
    pub fn new(room: &ChatModel) -> SavedRoom {
        SavedRoom {
            entries: room.history().map(SavedEntry::from).collect(),
            last_entry: room.last_entry(),
            ai_mode: room.ai_mode().as_str().to_owned(),
            instructions: room.instructions().to_owned(),
            archive: room.archive().cloned().collect(),
        }
    }

    /// The history (the last [`MAX_HISTORY`] entries; unknown kinds skipped), the last
    /// entry id, the mode (auto if unknown) and the instructions (cut to their cap):
    /// what was persisted is read as any other input, with its limits.
    pub fn restore(self) -> (VecDeque<Entry>, u64, AiMode, String, VecDeque<ArchivePage>) {
        let skip = self.entries.len().saturating_sub(MAX_HISTORY);
        let history: VecDeque<Entry> = self
            .entries
            .into_iter()
            .skip(skip)
            .filter_map(SavedEntry::into_entry)
            .collect();
        let last = history
            .iter()
            .map(|e| e.id)
            .max()
            .unwrap_or(0)
            .max(self.last_entry);
        let mode = AiMode::parse(&self.ai_mode).unwrap_or_default();
        let instructions = cut(self.instructions, MAX_INSTRUCTIONS_BYTES);
        let skip = self.archive.len().saturating_sub(MAX_ARCHIVE_PAGES);
        let archive = self.archive.into_iter().skip(skip).collect();
        (history, last, mode, instructions, archive)
    }
}

impl From<&Entry> for SavedEntry {
    fn from(e: &Entry) -> SavedEntry {
        let base = SavedEntry {
            id: e.id,
            at: e.at,
            ..SavedEntry::default()
        };
        match &e.kind {
            EntryKind::Post {
                from,
                name,
                text,
                reply_to,
            } => SavedEntry {
                kind: "post".into(),
                from: from.0.clone(),
                name: name.clone(),
                text: text.clone(),
                reply_to: *reply_to,
                ..base
            },
            EntryKind::Ai {
                post,
                text,
                state,
                stopped_by,
                regenerated_by,
                ..
            } => SavedEntry {
                kind: "ai".into(),
                text: text.clone(),
                post: Some(*post),
                // An answer still streaming stops here: the next version cannot go on
                // with its request.
                stopped: *state != AiState::Done,
                stopped_by: stopped_by.clone(),
                regenerated_by: regenerated_by.clone(),
                ..base
            },
            EntryKind::Joined { name } => SavedEntry {
                kind: "joined".into(),
                name: name.clone(),
                ..base
            },
            EntryKind::Left { name } => SavedEntry {
                kind: "left".into(),
                name: name.clone(),
                ..base
            },
            EntryKind::Notice { text } => SavedEntry {
                kind: "notice".into(),
                text: text.clone(),
                ..base
            },
        }
    }
}

impl SavedEntry {
    fn into_entry(self) -> Option<Entry> {
        let kind = match self.kind.as_str() {
            "post" => EntryKind::Post {
                from: ViewId(self.from),
                name: self.name,
                text: self.text,
                reply_to: self.reply_to,
            },
            "ai" => EntryKind::Ai {
                // Relay requests belong to the session that made them: none is pending.
                request: 0,
                post: self.post.unwrap_or(0),
                text: self.text,
                state: if self.stopped {
                    AiState::Stopped
                } else {
                    AiState::Done
                },
                stopped_by: self.stopped_by,
                regenerated_by: self.regenerated_by,
            },
            "joined" => EntryKind::Joined { name: self.name },
            "left" => EntryKind::Left { name: self.name },
            "notice" => EntryKind::Notice { text: self.text },
            _ => return None,
        };
        Some(Entry {
            id: self.id,
            at: self.at,
            kind,
        })
    }
}
