//! Process-wide counters, rendered in the Prometheus text format at `/metrics`.
//!
//! Plain atomics rather than a metrics framework: the hot path only does relaxed
//! increments, and the set of series is fixed (no labels with unbounded cardinality).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

#[derive(Debug, Default)]
pub struct Metrics {
    pub sessions: AtomicI64,
    pub clients: AtomicI64,
    pub frames_in: AtomicU64,
    pub bytes_in: AtomicU64,
    pub messages_broadcast: AtomicU64,
    pub frames_out: AtomicU64,
    pub bytes_out: AtomicU64,
    pub ticks: AtomicU64,
    pub snapshot_requests: AtomicU64,
    pub snapshots: AtomicU64,
    pub joins: AtomicU64,
    pub clients_rejected: AtomicU64,
    pub messages_refused: AtomicU64,
    pub journal_errors: AtomicU64,
    pub files_stored: AtomicU64,
    pub sessions_refused: AtomicU64,
    pub session_failures: AtomicU64,
    pub snapshots_refused: AtomicU64,
    pub saves_refused: AtomicU64,
    pub stored_bytes: AtomicI64,
    pub syncs_writing: AtomicI64,
    pub syncs_waiting: AtomicI64,
    pub cluster_forwarding: AtomicI64,
    pub cluster_forwards: AtomicU64,
    pub cluster_claims: AtomicU64,
    pub cluster_claims_refused: AtomicU64,
    pub cluster_sessions_lost: AtomicU64,
}

/// One counter in the Prometheus text format (also for series other crates add to
/// `/metrics`).
pub fn write_counter(out: &mut String, name: &str, help: &str, value: u64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
    );
}

impl Metrics {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    pub fn render(&self) -> String {
        let mut out = String::with_capacity(2048);
        let gauges = [
            ("synq_sessions", "Sessions held in memory.", &self.sessions),
            (
                "synq_clients",
                "Connected WebSocket clients.",
                &self.clients,
            ),
            (
                "synq_stored_bytes",
                "Bytes of retained messages in all sessions.",
                &self.stored_bytes,
            ),
            (
                "synq_syncs_writing",
                "Large SYNCs being written (each holds a turn).",
                &self.syncs_writing,
            ),
            (
                "synq_cluster_forwarding",
                "Connections this node relays to the node that owns their session now.",
                &self.cluster_forwarding,
            ),
            (
                "synq_syncs_waiting",
                "Large SYNCs waiting for a turn of their session or address.",
                &self.syncs_waiting,
            ),
        ];
        for (name, help, v) in gauges {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {}",
                v.load(Relaxed)
            );
        }
        let counters = [
            (
                "synq_frames_in_total",
                "Frames received from clients.",
                &self.frames_in,
            ),
            (
                "synq_bytes_in_total",
                "Bytes received from clients.",
                &self.bytes_in,
            ),
            (
                "synq_messages_broadcast_total",
                "Messages sequenced and broadcast.",
                &self.messages_broadcast,
            ),
            (
                "synq_frames_out_total",
                "Frames sent to clients (deliveries, ticks, syncs).",
                &self.frames_out,
            ),
            (
                "synq_bytes_out_total",
                "Bytes sent to clients.",
                &self.bytes_out,
            ),
            ("synq_ticks_total", "Tick frames broadcast.", &self.ticks),
            (
                "synq_snapshot_requests_total",
                "Snapshot requests (REQU) sent.",
                &self.snapshot_requests,
            ),
            (
                "synq_snapshots_total",
                "Snapshots registered (SNAP accepted).",
                &self.snapshots,
            ),
            (
                "synq_joins_total",
                "JOINs answered with a SYNC.",
                &self.joins,
            ),
            (
                "synq_clients_rejected_total",
                "Connections closed for bad input or abuse.",
                &self.clients_rejected,
            ),
            (
                "synq_messages_refused_total",
                "Messages refused because the session needs a snapshot.",
                &self.messages_refused,
            ),
            (
                "synq_journal_errors_total",
                "Failed writes to session journals.",
                &self.journal_errors,
            ),
            (
                "synq_files_stored_total",
                "Files stored by the file store.",
                &self.files_stored,
            ),
            (
                "synq_sessions_refused_total",
                "JOINs refused because the server holds as many sessions as it may.",
                &self.sessions_refused,
            ),
            (
                "synq_session_failures_total",
                "Session tasks that failed (their clients were asked to reconnect).",
                &self.session_failures,
            ),
            (
                "synq_snapshots_refused_total",
                "SNAPs refused (not from a participant, unknown seq, future time, foreign URL, too often).",
                &self.snapshots_refused,
            ),
            (
                "synq_saves_refused_total",
                "SAVEs (persistent data) refused: a URL outside this server's file store for the session's app.",
                &self.saves_refused,
            ),
            (
                "synq_cluster_forwards_total",
                "Connections forwarded to the node that sequences their session.",
                &self.cluster_forwards,
            ),
            (
                "synq_cluster_claims_total",
                "Sessions this node took the lease of (started or took over).",
                &self.cluster_claims,
            ),
            (
                "synq_cluster_claims_refused_total",
                "Claims that found the session owned by another node or the cluster unavailable.",
                &self.cluster_claims_refused,
            ),
            (
                "synq_cluster_sessions_lost_total",
                "Sessions stopped here because the lease lapsed or another node appended to the journal.",
                &self.cluster_sessions_lost,
            ),
        ];
        for (name, help, v) in counters {
            write_counter(&mut out, name, help, v.load(Relaxed));
        }
        out
    }
}

impl Metrics {
    pub fn add_i(gauge: &AtomicI64, n: i64) {
        gauge.fetch_add(n, Relaxed);
    }
}
