//! What a cluster of reflectors gives each node (implemented over NATS JetStream by
//! `synq-cluster`): where a session is sequenced, the lease that lets this node sequence
//! it, and the session's journal in a log every node can read.
//!
//! One rule makes a cluster safe: a session has one sequencer at a time. A node sequences
//! a session only while it holds the session's lease ([`Lease::valid_until`]), and the
//! journal a claim opens is fenced: once another node has appended to it, this node's
//! appends fail ([`crate::journal::JournalError::Lost`]) and the session stops before
//! anything of the batch is sent.

use std::sync::Arc;
use std::time::Instant;

use crate::journal::{Recovered, SessionJournal};

/// Where a session is sequenced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// Here: nobody holds its lease, or this node does.
    Here,
    /// On another node, reached at this base URL of its cluster listener
    /// (`http://10.0.0.2:9091`).
    Owner { url: String },
}

/// What a node needs to sequence a session: its lease and its journal, replayed.
pub struct Claim {
    pub lease: Box<dyn Lease>,
    pub journal: Box<dyn SessionJournal>,
    pub recovered: Recovered,
}

/// A session's lease, held by this node and renewed in the background until dropped
/// (dropping it releases the session to the next node that claims it).
pub trait Lease: Send + Sync {
    /// Until when this node may sequence the session. Renewals move it on; once it has
    /// passed, another node may have taken the session over.
    fn valid_until(&self) -> Instant;

    /// Gives the session up now and waits until the cluster has taken the release (or
    /// could not), so that a node that stops can still tell the cluster before it exits.
    /// Without it, a dropped lease is released in the background.
    fn release(self: Box<Self>) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> {
        drop(self);
        Box::pin(async {})
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("another node sequences this session")]
    OwnedElsewhere,
    #[error("the cluster is unavailable: {0}")]
    Unavailable(String),
}

/// A cluster as one node sees it.
#[async_trait::async_trait]
pub trait Cluster: Send + Sync + 'static {
    /// Where `session` is sequenced now.
    async fn placement(&self, session: &str) -> Result<Placement, ClusterError>;
    /// Takes `session`'s lease and opens its journal.
    async fn claim(&self, session: &str) -> Result<Claim, ClusterError>;
    /// Whether `session` exists in the cluster (it has a journal), wherever it runs.
    async fn knows(&self, session: &str) -> bool;
    /// Whether `session` runs now, on any node (someone holds its lease).
    async fn is_live(&self, session: &str) -> bool;
    /// Records where an app's persisted data is (`key`: the app's persistent key), for the
    /// sessions of its later code versions, wherever they start.
    async fn save_persisted(&self, key: &str, url: &str) -> Result<(), ClusterError>;
    /// The URL recorded under `key`.
    async fn read_persisted(&self, key: &str) -> Option<String>;
    /// A session of Croquet app `app_id` with `persistent_id` started on this node: any node
    /// takes uploads of that app's persisted data from now on.
    async fn remember_app(&self, _app_id: &str, _persistent_id: &str) {}
    /// Whether a session of `app_id` with `persistent_id` started on any node.
    async fn knows_app(&self, _app_id: &str, _persistent_id: &str) -> bool {
        false
    }
    /// Deletes the journals of sessions that no node runs and nobody wrote for longer than
    /// `older_than` (`--session-retention-days`); returns how many. Every node sweeps.
    async fn sweep(&self, _older_than: std::time::Duration) -> usize {
        0
    }
    /// Whether this node can reach the cluster (for `/healthz`).
    fn healthy(&self) -> bool {
        true
    }
    /// The secret a forwarded connection carries to the owner's cluster listener: only
    /// with it does the owner take the client address the connection names.
    fn token(&self) -> &str;
    /// Extra lines for `/metrics` (Prometheus text format).
    fn metrics(&self) -> String {
        String::new()
    }
}

/// A cluster in a [`crate::ReflectorConfig`].
#[derive(Clone)]
pub struct ClusterHandle(pub Arc<dyn Cluster>);

impl std::fmt::Debug for ClusterHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterHandle")
    }
}
