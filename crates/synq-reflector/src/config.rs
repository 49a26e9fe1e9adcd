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
    /// Participants (connections that joined with a user) per session.
    pub max_clients_per_session: usize,
    /// Connections that joined without a user (observers) per session: counted apart, so
    /// that silent connections cannot fill a room.
    pub max_observers_per_session: usize,
    /// Large SYNCs (over one 1 MB `_CHUNK`) written at once per session; more joiners
    /// wait for a turn. 0: unlimited.
    pub max_syncs_per_session: usize,
    /// Large SYNCs written at once to one address (IPv6: one /64). 0: unlimited.
    pub max_syncs_per_address: usize,
    /// Sessions in memory at once; a JOIN that would start another is refused (4108).
    /// 0: unlimited.
    pub max_sessions: usize,
    /// Sessions in memory started by one address (IPv6: one /64). 0: unlimited.
    pub max_sessions_per_address: usize,
    /// Bytes of retained messages one session may hold before it refuses messages until
    /// a snapshot arrives (the message-count limit applies as well).
    pub max_session_bytes: usize,
    /// Bytes of retained messages all sessions together may hold.
    pub max_stored_bytes: usize,
    /// Shortest idle tick period a session may ask for (longer ones are capped at 60 s).
    pub min_tick: Duration,
    /// A session accepts at most one snapshot (SNAP) per this interval.
    pub snapshot_min_interval: Duration,
    /// `debounce` message ids remembered per session.
    pub max_debounce_ids: usize,
    /// Journals of sessions that nobody joined for this long are deleted (`None`: kept).
    pub session_retention: Option<Duration>,
    /// Time allowed between connecting and JOIN.
    pub join_timeout: Duration,
    /// A joined client that sends nothing (not even PULSE) for this long is disconnected.
    pub inactivity_timeout: Duration,
    /// How long a session stays in memory after its last client left.
    pub idle_grace: Duration,
    /// Largest file accepted by the file store.
    pub max_file_bytes: usize,
    /// File store and origin limits (see docs/security.md, "File store").
    pub files: FileLimits,
    /// Issues the AI capability handed to each participant of a synq session after its
    /// SYNC: given the session id, the `args` JSON of an `AICAP` frame. `None`: no AI
    /// capabilities (e.g. `synq serve --no-ai`).
    pub ai_capability: Option<AiCapabilityIssuer>,
    /// The cluster this node is part of (`None`: a node of its own, journals in `data_dir`).
    pub cluster: Option<crate::cluster::ClusterHandle>,
}

/// Limits of the file store and of which web pages may use the server.
#[derive(Debug, Clone)]
pub struct FileLimits {
    /// Web origins allowed to open WebSockets and upload, besides the server's own and
    /// localhost (`*`: any). Requests without `Origin` (native clients) are always allowed.
    pub allowed_origins: Vec<String>,
    /// Host names (the `Host` header) WebSocket upgrades and uploads may name, besides IP
    /// addresses and `localhost` (`*`: any): others are refused (DNS rebinding). `synq
    /// serve` gives its AI gateway the same list.
    pub allowed_hosts: Vec<String>,
    /// Bytes the file store may hold in total (0 = unlimited).
    pub max_store_bytes: u64,
    /// Bytes one address (IPv6: one /64) may upload per `upload_quota_window` (0 = unlimited).
    pub upload_quota_bytes: u64,
    pub upload_quota_window: Duration,
    /// An upload that sends nothing for this long is cut off.
    pub body_timeout: Duration,
}

impl Default for FileLimits {
    fn default() -> FileLimits {
        FileLimits {
            allowed_origins: Vec::new(),
            allowed_hosts: Vec::new(),
            max_store_bytes: 10 << 30,
            upload_quota_bytes: 512 << 20,
            upload_quota_window: Duration::from_secs(3600),
            body_timeout: Duration::from_secs(30),
        }
    }
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
            max_observers_per_session: 100,
            max_syncs_per_session: 32,
            max_syncs_per_address: 4,
            max_sessions: 1000,
            max_sessions_per_address: 100,
            max_session_bytes: 32 * 1024 * 1024,
            max_stored_bytes: 1024 * 1024 * 1024,
            min_tick: Duration::from_millis(synq_protocol::MIN_TICK_MS as u64),
            snapshot_min_interval: Duration::from_secs(2),
            max_debounce_ids: 1000,
            session_retention: Some(Duration::from_secs(30 * 24 * 3600)),
            join_timeout: Duration::from_secs(35),
            inactivity_timeout: Duration::from_secs(60),
            idle_grace: Duration::from_secs(10),
            max_file_bytes: 64 * 1024 * 1024,
            files: FileLimits::default(),
            ai_capability: None,
            cluster: None,
        }
    }
}
