//! A Croquet/Multisynq-compatible reflector.
//!
//! The reflector keeps no application state. It gives every event of a session a session
//! time and a sequence number, sends the same ordered stream to every client of the
//! session with idle ticks in between, announces joins and leaves, tallies votes,
//! tracks the latest snapshot so that late joiners start from it, and keeps a journal so
//! that sessions survive a restart. Payloads are end-to-end encrypted by the clients and
//! never looked at.
//!
//! ```no_run
//! # async fn run() -> anyhow::Result<()> {
//! use synq_reflector::{Reflector, ReflectorConfig, serve};
//! let reflector = Reflector::new(ReflectorConfig::new("./synq-data"))?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! serve(listener, reflector.router()).await?;
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]
// Not model code: the reflector orders events and never runs a model; it uses wall-clock
// time and hash maps freely (clippy.toml's determinism rules are for model code).
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

pub mod cluster;
pub mod config;
mod connection;
mod files;
mod forward;
mod handle;
mod http;
mod island;
pub mod journal;
pub mod metrics;
pub mod objstore;
pub mod origin;
pub mod peer;
pub mod quota;
mod registry;
mod server;
mod session;
pub mod store;
mod sync_frame;
mod sync_gate;

pub use config::{AiCapabilityIssuer, Durability, FileLimits, ReflectorConfig};
pub use http::{HttpLimits, serve, serve_with};
pub use registry::valid_session_id;
pub use server::{Reflector, ReflectorError};
