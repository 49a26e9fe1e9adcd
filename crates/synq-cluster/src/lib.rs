//! Many synq reflector nodes as one service, on NATS JetStream.
//!
//! Each session has one owner at a time, the node that holds its lease (a key in a
//! JetStream key-value bucket, see [`lease`]); the owner journals every batch to the
//! session's subject of a JetStream stream before broadcasting it (see [`journal`]), so
//! the node that takes the session over when the owner dies resumes its timeline,
//! sequence numbers and time from the stream. A node that does not own a session forwards
//! its connections to the owner (`synq_reflector`'s cluster listener).
//!
//! [`NatsCluster`] implements [`synq_reflector::cluster::Cluster`].

#![forbid(unsafe_code)]
// Not model code: leases run on the wall clock (clippy.toml's determinism rules are for
// model code).
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

mod journal;
mod lease;
mod names;
#[cfg(feature = "testing")]
pub mod testing;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv, stream};
use bytes::Bytes;
use synq_reflector::cluster::{Claim, Cluster, ClusterError, Placement};

use crate::journal::{OpenError, StreamJournal};
use crate::lease::{Holder, NatsLease};

/// How a node joins its cluster.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// `nats://host:4222` (several, comma-separated, for a NATS cluster).
    pub nats_url: String,
    /// This node's name, in leases and logs.
    pub node: String,
    /// The base URL other nodes reach this node's cluster listener at
    /// (`http://10.0.0.2:9091`).
    pub advertise: String,
    /// The secret forwarded connections carry; the same on every node.
    pub token: String,
    /// A session's lease lapses this long after its owner last renewed it: the longest a
    /// dead owner's sessions wait for another node.
    pub lease_ttl: Duration,
    /// Copies JetStream keeps of journals and leases (1, or 3 on a NATS cluster).
    pub replicas: usize,
    /// Prefix of the stream, bucket and subject names (several synq clusters can share
    /// one NATS).
    pub prefix: String,
    /// How long the apps whose sessions started are remembered for uploads of their
    /// persisted data (`--session-retention-days`; `None`: for good).
    pub retention: Option<Duration>,
    /// The journal stream's size limit in bytes (0: none). When it is full, appends fail
    /// and sessions stop (their clients are asked to reconnect) rather than older journal
    /// messages being dropped: a journal with a hole could not be replayed.
    pub max_bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot connect to NATS at {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: async_nats::ConnectError,
    },
    #[error("cannot set up JetStream ({what}): {message}; is JetStream enabled (nats-server -js)?")]
    JetStream { what: &'static str, message: String },
    #[error("invalid cluster name prefix {0:?}: letters, digits, - and _ only")]
    Prefix(String),
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub renewals: AtomicU64,
    pub leases_lost: AtomicU64,
    pub appends: AtomicU64,
    pub append_micros: AtomicU64,
}

/// A node's view of a synq cluster on NATS JetStream.
pub struct NatsCluster {
    config: ClusterConfig,
    client: async_nats::Client,
    js: jetstream::Context,
    kv: kv::Store,
    /// The (appId, persistentId) pairs of sessions that started, as keys.
    apps: kv::Store,
    /// Apps' persisted data: persistent key → URL.
    persisted: kv::Store,
    stream: stream::Stream,
    /// This process: a restarted node is another holder.
    holder: Holder,
    /// `holder` as the value of the lease keys it creates.
    lease_value: Bytes,
    max_chunk: usize,
    stats: Arc<Stats>,
}

impl NatsCluster {
    /// Connects to NATS and creates the stream and bucket if they do not exist yet.
    pub async fn connect(config: ClusterConfig) -> Result<NatsCluster, ConnectError> {
        let prefix = &config.prefix;
        if prefix.is_empty()
            || !prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
        {
            return Err(ConnectError::Prefix(prefix.clone()));
        }
        // Answers slower than a lease are no use: a session must stop sending before its
        // lease could lapse, and a client waiting to be placed should hear soon.
        let patience = config
            .lease_ttl
            .clamp(Duration::from_secs(1), Duration::from_secs(5));
        let client = async_nats::ConnectOptions::new()
            .name(format!("synq {}", config.node))
            .request_timeout(Some(patience))
            .connect(config.nats_url.as_str())
            .await
            .map_err(|source| ConnectError::Connect {
                url: redacted(&config.nats_url),
                source,
            })?;
        // Headroom for the headers of a journal message.
        let max_chunk = client
            .server_info()
            .max_payload
            .saturating_sub(4096)
            .max(64 * 1024);
        let js = jetstream::ContextBuilder::new()
            .timeout(patience)
            .build(client.clone());
        let stream = js
            .get_or_create_stream(stream::Config {
                name: format!("{prefix}-journal"),
                subjects: vec![format!("{prefix}.journal.>")],
                storage: stream::StorageType::File,
                num_replicas: config.replicas,
                max_bytes: stream_max_bytes(config.max_bytes),
                discard: stream::DiscardPolicy::New,
                ..Default::default()
            })
            .await
            .map_err(|e| ConnectError::JetStream {
                what: "the journal stream",
                message: e.to_string(),
            })?;
        let wanted = stream_max_bytes(config.max_bytes);
        let has = stream.cached_info().config.max_bytes;
        if has != wanted {
            tracing::warn!(stream = %stream.cached_info().config.name, limit = has, asked = wanted, "the journal stream exists with another size limit and keeps it (change it with the nats CLI: nats stream edit)");
        }
        let bucket = format!("{prefix}-owners");
        let jetstream = |what, e: &dyn std::fmt::Display| ConnectError::JetStream {
            what,
            message: e.to_string(),
        };
        let kv = bucket_of(
            &js,
            &bucket,
            "synq session leases: which node sequences each session",
            Some(config.lease_ttl),
            config.replicas,
        )
        .await
        .map_err(|e| jetstream("the lease bucket", &e))?;
        let apps = bucket_of(
            &js,
            &format!("{prefix}-apps"),
            "synq: the Croquet apps (appId.persistentId) whose sessions started",
            config.retention,
            config.replicas,
        )
        .await
        .map_err(|e| jetstream("the apps bucket", &e))?;
        let persisted = bucket_of(
            &js,
            &format!("{prefix}-persisted"),
            "synq: where each app's persisted data is (the URL its last SAVE named)",
            None,
            config.replicas,
        )
        .await
        .map_err(|e| jetstream("the persisted-data bucket", &e))?;
        let mut config = config;
        let ttl = kv
            .status()
            .await
            .map_err(|e| jetstream("the lease bucket's status", &e))?
            .max_age();
        // It may exist with another lease time: the bucket's own time to live is the one
        // that counts, for every node.
        if ttl != config.lease_ttl {
            tracing::warn!(bucket = %bucket, configured = ?config.lease_ttl, bucket_ttl = ?ttl, "the lease bucket exists with another time to live; using the bucket's (delete the bucket to change it)");
            config.lease_ttl = ttl;
        }
        if ttl.is_zero() {
            return Err(ConnectError::JetStream {
                what: "the lease bucket",
                message: format!("{bucket} has no max_age: leases would never lapse"),
            });
        }
        let instance: u64 = rand::random();
        let holder = Holder {
            node: config.node.clone(),
            instance: format!("{instance:016x}"),
            url: config.advertise.clone(),
        };
        let lease_value = serde_json::to_vec(&holder)
            .map(Bytes::from)
            .map_err(|e| jetstream("the lease value", &e))?;
        tracing::info!(node = %config.node, nats = %redacted(&config.nats_url), advertise = %config.advertise, lease_ttl = ?config.lease_ttl, replicas = config.replicas, "joined the synq cluster");
        Ok(NatsCluster {
            config,
            client,
            js,
            kv,
            apps,
            persisted,
            stream,
            holder,
            lease_value,
            max_chunk,
            stats: Arc::default(),
        })
    }

    fn subject(&self, session: &str) -> String {
        format!(
            "{}.journal.{}",
            self.config.prefix,
            names::session_token(session)
        )
    }

    /// The holder of `key`'s lease, if anyone holds it.
    async fn holder(&self, key: &str) -> Result<Option<(Holder, u64)>, ClusterError> {
        let entry = self.kv.entry(key).await.map_err(unavailable)?;
        Ok(entry
            .filter(|e| e.operation == kv::Operation::Put)
            .and_then(|e| {
                let holder = serde_json::from_slice::<Holder>(&e.value).ok()?;
                Some((holder, e.revision))
            }))
    }

    /// Takes the lease of `key`: creates it, or takes it back from an earlier lease of
    /// this process. Returns its revision and when the request was sent.
    async fn take_lease(&self, key: &str) -> Result<(u64, Instant), ClusterError> {
        let value = &self.lease_value;
        let sent = Instant::now();
        match self.kv.create(key, value.clone()).await {
            Ok(rev) => return Ok((rev, sent)),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {}
            Err(e) => return Err(unavailable(e)),
        }
        match self.holder(key).await? {
            Some((h, rev)) if h.instance == self.holder.instance => {
                let sent = Instant::now();
                let rev = self
                    .kv
                    .update(key, value.clone(), rev)
                    .await
                    .map_err(|_| ClusterError::OwnedElsewhere)?;
                Ok((rev, sent))
            }
            _ => Err(ClusterError::OwnedElsewhere),
        }
    }
}

impl NatsCluster {
    /// Purges the subjects of sessions that nobody holds the lease of and whose last
    /// message is older than `older_than`. A session revived at that very moment loses
    /// its old history (its owner's next append fails, and its clients start it afresh),
    /// as it would have a moment later.
    async fn sweep_journals(&self, older_than: Duration) -> Result<usize, ClusterError> {
        use futures_util::StreamExt as _;
        let prefix = format!("{}.journal.", self.config.prefix);
        let mut subjects = Vec::new();
        let mut listed = self
            .stream
            .info_with_subjects(format!("{prefix}>"))
            .await
            .map_err(unavailable)?;
        while let Some(entry) = listed.next().await {
            subjects.push(entry.map_err(unavailable)?.0);
        }
        let now = time::OffsetDateTime::now_utc();
        let mut removed = 0;
        for subject in subjects {
            let Some(token) = subject.strip_prefix(&prefix) else {
                continue;
            };
            let Ok(last) = self.stream.get_last_raw_message_by_subject(&subject).await else {
                continue;
            };
            let age = now - last.time;
            if age < older_than || self.holder(token).await?.is_some() {
                continue;
            }
            self.stream
                .purge()
                .filter(&subject)
                .await
                .map_err(unavailable)?;
            removed += 1;
        }
        Ok(removed)
    }
}

/// A key-value bucket's stream, made as the NATS clients make it, but with the stream API
/// that NATS 2.9 and later answer alike (async-nats's own bucket creation asks for account
/// details that 2.9 words differently). `ttl`: how long a key lives after its last write.
async fn bucket_of(
    js: &jetstream::Context,
    bucket: &str,
    description: &str,
    ttl: Option<Duration>,
    replicas: usize,
) -> Result<kv::Store, String> {
    let ttl = ttl.unwrap_or_default();
    js.get_or_create_stream(stream::Config {
        name: format!("KV_{bucket}"),
        description: Some(description.into()),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: 1,
        max_age: ttl,
        // At most the time to live (the server refuses more), and NATS's default 2 min.
        duplicate_window: if ttl.is_zero() {
            Duration::from_secs(120)
        } else {
            ttl.min(Duration::from_secs(120))
        },
        storage: stream::StorageType::File,
        num_replicas: replicas,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: stream::DiscardPolicy::New,
        ..Default::default()
    })
    .await
    .map_err(|e| e.to_string())?;
    js.get_key_value(bucket).await.map_err(|e| e.to_string())
}

/// A byte limit as JetStream says it (-1: none).
fn stream_max_bytes(limit: u64) -> i64 {
    match limit {
        0 => -1,
        n => i64::try_from(n).unwrap_or(i64::MAX),
    }
}

fn app_key(app_id: &str, persistent_id: &str) -> String {
    format!(
        "{}.{}",
        names::session_token(app_id),
        names::session_token(persistent_id)
    )
}

/// A NATS URL without its password (`nats://user:***@host`), for logs.
fn redacted(url: &str) -> String {
    url.split(',')
        .map(|u| match (u.find("://"), u.rfind('@')) {
            (Some(scheme), Some(at)) if at > scheme => {
                // `user:password@`, or a token alone (`token@`), which is all secret.
                let shown = match u[scheme + 3..at].split_once(':') {
                    Some((user, _)) => format!("{user}:***"),
                    None => "***".into(),
                };
                format!("{}{shown}{}", &u[..scheme + 3], &u[at..])
            }
            _ => u.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn unavailable(e: impl std::fmt::Display) -> ClusterError {
    ClusterError::Unavailable(e.to_string())
}

#[async_trait::async_trait]
impl Cluster for NatsCluster {
    /// A session nobody holds is taken here and now (the lease key is created, and the
    /// session's claim adopts it): clients of a new session that arrive at several nodes at
    /// once all end up at the one node whose create won, instead of all but one being
    /// asked to reconnect. A lease taken for a client that never joins lapses by itself.
    async fn placement(&self, session: &str) -> Result<Placement, ClusterError> {
        let key = names::session_token(session);
        let elsewhere = |h: Holder| {
            (h.instance != self.holder.instance).then_some(Placement::Owner { url: h.url })
        };
        if let Some((h, _)) = self.holder(&key).await? {
            return Ok(elsewhere(h).unwrap_or(Placement::Here));
        }
        match self.kv.create(&key, self.lease_value.clone()).await {
            Ok(_) => Ok(Placement::Here),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                Ok(match self.holder(&key).await? {
                    Some((h, _)) => elsewhere(h).unwrap_or(Placement::Here),
                    None => Placement::Here,
                })
            }
            Err(e) => Err(unavailable(e)),
        }
    }

    async fn claim(&self, session: &str) -> Result<Claim, ClusterError> {
        let key = names::session_token(session);
        let (revision, sent) = self.take_lease(&key).await?;
        let lease = NatsLease::start(
            self.kv.clone(),
            key,
            self.lease_value.clone(),
            revision,
            sent,
            self.config.lease_ttl,
            Arc::clone(&self.stats),
        );
        let fence = format!("{} {}", self.holder.node, self.holder.instance);
        let opened = StreamJournal::open(
            self.js.clone(),
            self.stream.clone(),
            self.subject(session),
            self.max_chunk,
            &fence,
            Arc::clone(&self.stats),
        )
        .await;
        // On failure the lease is dropped here: released for the next claim.
        let (journal, recovered) = opened.map_err(|e| match e {
            OpenError::Fenced => ClusterError::OwnedElsewhere,
            OpenError::Nats(m) => ClusterError::Unavailable(m),
        })?;
        Ok(Claim {
            lease: Box::new(lease),
            journal: Box::new(journal),
            recovered,
        })
    }

    async fn knows(&self, session: &str) -> bool {
        self.stream
            .get_last_raw_message_by_subject(&self.subject(session))
            .await
            .is_ok()
    }

    async fn is_live(&self, session: &str) -> bool {
        matches!(
            self.holder(&names::session_token(session)).await,
            Ok(Some(_))
        )
    }

    async fn save_persisted(&self, key: &str, url: &str) -> Result<(), ClusterError> {
        self.persisted
            .put(
                names::session_token(key),
                Bytes::copy_from_slice(url.as_bytes()),
            )
            .await
            .map(|_| ())
            .map_err(unavailable)
    }

    async fn read_persisted(&self, key: &str) -> Option<String> {
        let value = self.persisted.get(names::session_token(key)).await.ok()??;
        String::from_utf8(value.to_vec()).ok()
    }

    async fn remember_app(&self, app_id: &str, persistent_id: &str) {
        let key = app_key(app_id, persistent_id);
        if let Err(e) = self.apps.put(&key, Bytes::new()).await {
            tracing::warn!(key = %key, error = %e, "cannot record an app's session in the cluster");
        }
    }

    async fn knows_app(&self, app_id: &str, persistent_id: &str) -> bool {
        matches!(
            self.apps.entry(app_key(app_id, persistent_id)).await,
            Ok(Some(e)) if e.operation == kv::Operation::Put
        )
    }

    async fn sweep(&self, older_than: Duration) -> usize {
        match self.sweep_journals(older_than).await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "cannot sweep old session journals");
                0
            }
        }
    }

    fn healthy(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    fn token(&self) -> &str {
        &self.config.token
    }

    fn metrics(&self) -> String {
        let s = &self.stats;
        let mut out = String::new();
        for (name, help, v) in [
            (
                "synq_cluster_lease_renewals_total",
                "Session leases renewed by this node.",
                &s.renewals,
            ),
            (
                "synq_cluster_leases_lost_total",
                "Session leases this node found taken or lapsed at renewal.",
                &s.leases_lost,
            ),
            (
                "synq_cluster_journal_appends_total",
                "Messages this node appended to session journals in JetStream.",
                &s.appends,
            ),
            (
                "synq_cluster_journal_append_microseconds_total",
                "Time spent waiting for JetStream to acknowledge those appends.",
                &s.append_micros,
            ),
        ] {
            synq_reflector::metrics::write_counter(&mut out, name, help, v.load(Ordering::Relaxed));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_stay_out_of_logs() {
        assert_eq!(
            super::redacted("nats://synq:s3cret@a:4222,tls://b:4222"),
            "nats://synq:***@a:4222,tls://b:4222"
        );
        assert_eq!(
            super::redacted("nats://127.0.0.1:4222"),
            "nats://127.0.0.1:4222"
        );
    }
}
