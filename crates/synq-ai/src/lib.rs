//! synq's AI: chat-completion backends behind one trait, and the guarded AI gateway that
//! `synq serve` mounts.
//!
//! - [`ChatBackend`]: messages in, a stream of text deltas out. Dropping the stream cancels
//!   the generation (the upstream HTTP request is closed, the local generation loop stops).
//! - [`openai::OpenAiBackend`]: any OpenAI-compatible server (OpenAI, Ollama, llama.cpp
//!   server, vLLM, LM Studio, OpenRouter, …).
//! - [`local::LocalBackend`]: an embedded quantized GGUF model run with candle.
//! - [`gateway`] (feature `gateway`): the HTTP routes (`/ai/v1/chat/completions`,
//!   `/ai/v1/models`, `/ai`) with their guards, configured by [`gateway::GatewayConfig`]
//!   (the `synq serve` flags that fill it are the `synq` binary's).

// Unsafe code is allowed only where it is: setting candle's thread count in the
// environment, glibc's malloc_trim after loading a model, and the Q8_0 SIMD kernel
// (`local::q8`).
#![deny(unsafe_code)]
// Not model code: AI backends and the HTTP gateway, called by one elected view (clippy.toml's
// determinism rules are for model code).
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

pub mod backend;
pub mod error;
#[cfg(feature = "gateway")]
pub mod gateway;
#[cfg(feature = "local")]
pub mod local;
pub mod openai;
#[cfg(feature = "testing")]
pub mod testing;

pub use backend::{
    AiEvent, Bearer, ChatBackend, ChatMessage, ChatRequest, EventStream, QUEUE_HEARTBEAT, Role,
    TextStream, Usage, UsageReport, collect_text, text_only,
};
pub use error::AiError;
