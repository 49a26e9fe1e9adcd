//! The synq AI chat: [`ChatModel`], the replicated room (users, a capped history of posts,
//! AI answers and notices, an elected AI relay), and its participants: native
//! ([`native::Participant`]) and, in the browser, the web view.

#![forbid(unsafe_code)]

pub mod hygiene;
pub mod model;
#[cfg(not(target_arch = "wasm32"))]
pub mod native;
pub mod prompt;

pub use model::{
    AI_NAME, AI_REQUESTS_PER_MINUTE, APP_ID, AiMode, AiState, ChatInput, ChatModel, ChatOutput,
    ChatViewData, Entry, EntryKind, MAX_HISTORY, MAX_INSTRUCTIONS_BYTES, MAX_STATUS_BYTES,
    addresses_ai, queue_status,
};
pub use prompt::{AiRequest, PROMPT_HISTORY, PromptMessage, PromptRole};
