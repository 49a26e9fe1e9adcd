//! `synq serve`'s cluster flags: a node of many that serve as one (docs/cluster.md).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context as _, bail};
use synq_cluster::{ClusterConfig, NatsCluster};

#[derive(clap::Args)]
pub struct ClusterArgs {
    /// Serve as a node of a cluster whose sessions, leases and journals live in NATS
    /// JetStream at this URL (`nats://HOST:4222`; comma-separate several servers). Without
    /// it, this process is a cluster of one with its journals in --data-dir.
    #[arg(long, env = "SYNQ_CLUSTER", value_name = "NATS_URL")]
    pub cluster: Option<String>,
    /// Where this node takes connections other nodes forward to it (their clients'
    /// sessions run here). Keep it on the cluster's private network.
    #[arg(long, env = "SYNQ_CLUSTER_LISTEN", default_value = "127.0.0.1:9091")]
    pub cluster_listen: SocketAddr,
    /// The URL other nodes reach --cluster-listen at [default: http://<cluster-listen>,
    /// which must then be a specific address].
    #[arg(long, env = "SYNQ_CLUSTER_ADVERTISE", value_name = "URL")]
    pub cluster_advertise: Option<String>,
    /// The cluster's shared secret (at least 16 characters, the same on every node):
    /// forwarded connections carry it. Prefer the environment variable.
    #[arg(long, env = "SYNQ_CLUSTER_TOKEN", hide_env_values = true)]
    pub cluster_token: Option<String>,
    /// This node's name in leases and logs [default: $HOSTNAME, or "synq"].
    #[arg(long, env = "SYNQ_NODE")]
    pub node: Option<String>,
    /// A dead node's sessions are taken over this many milliseconds after its last lease
    /// renewal at most (renewals go out every quarter of it).
    #[arg(long, default_value_t = 1500)]
    pub cluster_lease_ms: u64,
    /// Copies JetStream keeps of journals and leases: 1 on a single NATS server, 3 on a
    /// NATS cluster (a node of NATS may then fail too).
    #[arg(long, default_value_t = 1)]
    pub cluster_replicas: usize,
    /// Bytes the journal stream may hold in all (0 = unlimited). When it is full, sessions
    /// stop and their clients are asked to reconnect (no journal loses its oldest part).
    /// Set when the stream is created; an existing stream keeps its limit.
    #[arg(long, default_value_t = 10 << 30)]
    pub cluster_max_bytes: u64,
    /// Prefix of the JetStream stream, bucket and subjects (several synq clusters may
    /// share one NATS).
    #[arg(long, default_value = "synq")]
    pub cluster_prefix: String,
}

/// A cluster node's connection to NATS and its cluster listener, bound.
pub struct Joined {
    pub cluster: std::sync::Arc<NatsCluster>,
    pub listener: tokio::net::TcpListener,
}

impl ClusterArgs {
    /// Binds the cluster listener and joins the cluster (`None`: no --cluster).
    /// `retention`: --session-retention-days (`None`: kept for good).
    pub async fn join(&self, retention: Option<Duration>) -> anyhow::Result<Option<Joined>> {
        let Some(url) = &self.cluster else {
            return Ok(None);
        };
        let token = self
            .cluster_token
            .clone()
            .context("--cluster needs --cluster-token (or SYNQ_CLUSTER_TOKEN), the same secret on every node")?;
        if token.len() < 16 {
            bail!("--cluster-token must be at least 16 characters");
        }
        if self.cluster_lease_ms < 300 {
            bail!("--cluster-lease-ms must be at least 300");
        }
        let listener = tokio::net::TcpListener::bind(self.cluster_listen)
            .await
            .with_context(|| {
                format!(
                    "cannot listen on {} (--cluster-listen)",
                    self.cluster_listen
                )
            })?;
        let bound = listener.local_addr()?;
        let advertise = match &self.cluster_advertise {
            Some(url) => url.trim_end_matches('/').to_owned(),
            None if bound.ip().is_unspecified() => bail!(
                "--cluster-listen {bound} is every address: say which one other nodes use with --cluster-advertise"
            ),
            None => format!("http://{bound}"),
        };
        if !(advertise.starts_with("http://") || advertise.starts_with("https://")) {
            bail!("--cluster-advertise must be an http:// or https:// URL");
        }
        let node = self
            .node
            .clone()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_else(|| "synq".into());
        let cluster = NatsCluster::connect(ClusterConfig {
            nats_url: url.clone(),
            node,
            advertise,
            token,
            lease_ttl: Duration::from_millis(self.cluster_lease_ms),
            replicas: self.cluster_replicas.max(1),
            prefix: self.cluster_prefix.clone(),
            retention,
            max_bytes: self.cluster_max_bytes,
        })
        .await?;
        Ok(Some(Joined {
            cluster: std::sync::Arc::new(cluster),
            listener,
        }))
    }
}
