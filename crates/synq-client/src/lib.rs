//! Joining a synq session through a reflector.
//!
//! [`join`] (native, tokio) connects to the reflector, derives the session key from the
//! password, loads the latest snapshot and replays what followed, and returns a
//! [`Session`] once the replica is synced. Inputs are encrypted and bundled, snapshots are
//! voted on (divergence is reported with both hashes) and uploaded encrypted, and a
//! dropped connection is rejoined with the same view id, without losing or duplicating an
//! input.
//!
//! The protocol logic is [`Controller`], a state machine without I/O. One driver
//! ([`join_with`]) runs it over a [`transport::Transport`]: `native::TokioTransport`
//! (tokio, tungstenite, reqwest) or `browser::BrowserTransport` in wasm32 (the browser's
//! WebSocket, fetch and timers). `join` picks the one for the target.
//!
//! Security model (see `synq_protocol::identity` for the sender stamping):
//! - the reflector and the file store see only ciphertext (payloads, view data, snapshots,
//!   the session check value) and keyed hashes (snapshot votes);
//! - the session id is derived from app id, session name and the model's schema, never
//!   from the password;
//! - every JOIN carries the room key, derived from the password apart from the encryption
//!   key: the reflector lets in only those whose key matches the session creator's, so
//!   nobody without the password can join, send or register a snapshot;
//! - a wrong password fails the join with [`ClientError::WrongPassword`] (the reflector
//!   refuses the room key, or the session check value does not open) before anything is
//!   applied; a message that does not authenticate, claims another sender than the one the
//!   reflector stamped, or does not decode is dropped by every replica alike and reported
//!   as [`SessionEvent::Rejected`].

#![forbid(unsafe_code)]

#[cfg(target_arch = "wasm32")]
pub mod browser;
pub mod controller;
pub mod crypto;
mod driver;
mod error;
#[cfg(not(target_arch = "wasm32"))]
pub mod native;
pub mod transport;
mod wire;

#[cfg(target_arch = "wasm32")]
pub use browser::join;
pub use controller::{ClientConfig, Controller, Effect, SessionEvent};
pub use crypto::{MasterKey, PBKDF2_ROUNDS, derive_master, kdf_salt};
pub use driver::{Session, SessionHandle, join_with};
pub use error::ClientError;
#[cfg(not(target_arch = "wasm32"))]
pub use native::join;
pub use wire::{room_id, session_id};
