//! The Croquet/Multisynq reflector wire protocol v1 (JSON over WebSocket).
//!
//! Everything here is pure data and text: no I/O. The reflector, clients, tests and the
//! benchmark share these definitions so that the wire format lives in exactly one place.

#![forbid(unsafe_code)]
// Not model code: the wire format, shared by the reflector and clients (clippy.toml's
// determinism rules are for model code).
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

pub mod action;
pub mod client;
pub mod close;
pub mod envelope;
pub mod frames;
pub mod identity;
pub mod origin;
pub mod seq;
pub mod server;

pub use close::CloseCode;
pub use envelope::{Action, ClientEnvelope, EnvelopeError};
pub use server::{FrameError, ServerFrame};

/// Protocol version sent in `JOIN.args.version` by Croquet 2.0.4 clients.
pub const PROTOCOL_VERSION: u64 = 1;

/// The sequence number *before* the first message of a fresh session. A fresh Croquet
/// VM expects the first external message to carry exactly `INITIAL_SEQ + 1`.
pub const INITIAL_SEQ: u32 = 0xFFFF_FFF0;

/// Tick period (ms) used when the session-creating JOIN does not say.
pub const DEFAULT_TICK_MS: f64 = 200.0;

/// Shortest idle tick period (ms) a session may ask for. Croquet's clients ask for
/// 20–1000 ms; shorter periods only cost the reflector CPU.
pub const MIN_TICK_MS: f64 = 20.0;

/// Longest idle tick period (ms) a session may ask for.
pub const MAX_TICK_MS: f64 = 60_000.0;

/// Join/leave announcements are batched over this window (ms).
pub const USERS_INTERVAL_MS: u64 = 200;

/// Maximum time (ms) the reflector waits for the votes of a TUTTI.
pub const TALLY_INTERVAL_MS: u64 = 1000;

/// Votes older than this (ms of session time) are rejected.
pub const MAX_TALLY_AGE_MS: u64 = 60_000;

/// Completed tallies remembered per session (to reject late duplicates).
pub const MAX_COMPLETED_TALLIES: usize = 20;

/// Retained messages at which the reflector starts asking for a snapshot (REQU).
pub const REQU_SNAPSHOT_AT: usize = 60_000;

/// Retained messages past which the reflector refuses further messages.
pub const MAX_MESSAGES: usize = 100_000;

/// Outgoing frames longer than this are split into `_CHUNK` frames.
pub const CHUNK_SIZE: usize = 1_000_000;

/// Largest encoded payload a Croquet client will send (it refuses larger ones itself).
pub const CLIENT_PAYLOAD_LIMIT: usize = 16 * 1024;
