//! The synq AI chat: [`ChatModel`], the replicated room (users, a capped history of posts,
//! AI answers and notices, an elected AI relay), and everything its views share: the room
//! link ([`link`]), random names ([`names`]), what a view shows ([`view`]) and the relay
//! loop ([`relay`]). The browser page (synq-web) and `synq chat` only draw and move bytes;
//! the native participant is [`native::Participant`].

#![forbid(unsafe_code)]

pub mod hygiene;
pub mod link;
pub mod model;
pub mod names;
#[cfg(not(target_arch = "wasm32"))]
pub mod native;
pub mod prompt;
pub mod relay;
mod saved;
pub mod view;

pub use model::{
    AI_NAME, AI_REQUESTS_PER_MINUTE, APP_ID, ARCHIVE_PAGE, AiMode, AiState, ArchivePage, ChatInput,
    ChatModel, ChatOutput, ChatTimer, ChatViewData, Entry, EntryKind, MAX_ARCHIVE_PAGES,
    MAX_HISTORY, MAX_INSTRUCTIONS_BYTES, MAX_STATUS_BYTES, PERSIST_AFTER_MS, addresses_ai,
    queue_status,
};
pub use prompt::{AiRequest, PROMPT_HISTORY, PromptMessage, PromptRole, Sampling};
pub use relay::MAX_ANSWER_TOKENS;
pub use saved::archived_entries;
