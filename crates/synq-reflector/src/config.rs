//! Reflector configuration: limits and durability settings.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// How hard the reflector works to keep broadcast messages across crashes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// Every message is written to the session journal (the OS page cache) *before* it is
    /// broadcast: survives a crash or `kill -9` of the process, not a power loss.
    #[default]
    Write,
    /// Additionally `fdatasync` the journal before broadcasting (group commit: one sync
    /// per batch of messages). Survives power loss; costs throughput.
    Fsync,
}

/// Limits and settings of a reflector.
#[derive(Debug, Clone)]
pub struct ReflectorConfig {
    /// Session journals and the file store live here.
    pub data_dir: PathBuf,
    pub durability: Durability,
    /// Label sent as `reflector` in SYNC (Croquet clients only log it).
    pub label: String,
    /// Retained messages at which the reflector asks clients for a snapshot (REQU).
    pub snapshot_request_at: usize,
    /// Retained messages past which further messages are refused until a snapshot arrives.
    pub max_messages: usize,
    /// Largest incoming WebSocket message (bytes). Croquet clients never send a payload
    /// above 16 KiB (about 22 KiB once encrypted and framed).
    pub max_frame_bytes: usize,
    /// Sustained messages per second a client may send (0 = unlimited).
    pub client_rate_limit: u32,
    /// Burst allowance on top of the sustained rate.
    pub client_burst: u32,
    /// Frames a slow client may fall behind before it is disconnected.
    pub client_backlog: usize,
    /// A client that cannot take a write for this long is disconnected.
    pub write_timeout: Duration,
    /// Clients per session.
    pub max_clients_per_session: usize,
    /// Time allowed between connecting and JOIN.
    pub join_timeout: Duration,
    /// A joined client that sends nothing (not even PULSE) for this long is disconnected.
    pub inactivity_timeout: Duration,
    /// How long a session stays in memory after its last client left.
    pub idle_grace: Duration,
    /// Largest file accepted by the file store.
    pub max_file_bytes: usize,
    /// Issues the AI capability handed to each participant of a synq session after its
    /// SYNC: given the session id, the `args` JSON of an `AICAP` frame. `None`: no AI
    /// capabilities (e.g. `synq serve --no-ai`).
    pub ai_capability: Option<AiCapabilityIssuer>,
}

/// See [`ReflectorConfig::ai_capability`].
#[derive(Clone)]
pub struct AiCapabilityIssuer(pub Arc<dyn Fn(&str) -> String + Send + Sync>);

impl std::fmt::Debug for AiCapabilityIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AiCapabilityIssuer")
    }
}

impl ReflectorConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> ReflectorConfig {
        ReflectorConfig {
            data_dir: data_dir.into(),
            durability: Durability::Write,
            label: "synq".into(),
            snapshot_request_at: synq_protocol::REQU_SNAPSHOT_AT,
            max_messages: synq_protocol::MAX_MESSAGES,
            max_frame_bytes: 64 * 1024,
            client_rate_limit: 100,
            client_burst: 200,
            client_backlog: 4096,
            write_timeout: Duration::from_secs(10),
            max_clients_per_session: 1000,
            join_timeout: Duration::from_secs(35),
            inactivity_timeout: Duration::from_secs(60),
            idle_grace: Duration::from_secs(10),
            max_file_bytes: 64 * 1024 * 1024,
            ai_capability: None,
        }
    }
}
