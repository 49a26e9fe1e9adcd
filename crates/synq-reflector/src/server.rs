//! The reflector's HTTP surface: the WebSocket endpoint, the file store, health and metrics.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::cluster::Placement;
use crate::config::ReflectorConfig;
use crate::files::{self, FilesState};
use crate::forward::Forward;
use crate::metrics::Metrics;
use crate::origin;
use crate::quota::{AddressQuota, StoreQuota};
use crate::registry::{Ctx, valid_session_id};
use crate::store::{BlobStore, LocalDirStore, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum ReflectorError {
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot measure the file store: {0}")]
    Store(#[from] StoreError),
}

/// A reflector: build it from a config, mount its [`Reflector::router`] (alone or merged
/// into a larger app), and serve.
pub struct Reflector {
    ctx: Arc<Ctx>,
    store: Arc<dyn BlobStore>,
    store_quota: Arc<StoreQuota>,
}

impl Reflector {
    /// A reflector whose file store is the `files` directory under the data dir.
    pub fn new(config: ReflectorConfig) -> Result<Reflector, ReflectorError> {
        let store = Arc::new(LocalDirStore::new(config.data_dir.join("files")));
        Reflector::with_store(config, store)
    }

    /// A reflector with another file store (e.g. an object store).
    pub fn with_store(
        config: ReflectorConfig,
        store: Arc<dyn BlobStore>,
    ) -> Result<Reflector, ReflectorError> {
        for sub in ["sessions", "files", "persistent"] {
            let path = config.data_dir.join(sub);
            std::fs::create_dir_all(&path).map_err(|source| ReflectorError::DataDir {
                path: path.display().to_string(),
                source,
            })?;
        }
        // Counted once, so that the store quota covers files from earlier runs.
        let stored = store.stored_bytes()?;
        let store_quota = Arc::new(StoreQuota::new(config.files.max_store_bytes, stored));
        if store_quota.limit() != 0 && stored >= store_quota.limit() {
            tracing::warn!(
                stored,
                limit = store_quota.limit(),
                "the file store is full: uploads are refused until files are removed or --max-store-bytes is raised"
            );
        }
        let metrics = Arc::new(Metrics::default());
        Ok(Reflector {
            ctx: Arc::new(Ctx::new(config, metrics)),
            store,
            store_quota,
        })
    }

    /// Starts the reflector's housekeeping in the background: now and every hour, the
    /// journals of sessions unused for longer than `session_retention` are deleted.
    pub fn spawn_housekeeping(&self) {
        let ctx = Arc::clone(&self.ctx);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(std::time::Duration::from_secs(3600));
            loop {
                every.tick().await;
                let local = Arc::clone(&ctx);
                let _ = tokio::task::spawn_blocking(move || local.sweep_journals()).await;
                if let (Some(cluster), Some(retention)) =
                    (&ctx.config.cluster, ctx.config.session_retention)
                {
                    let removed = cluster.0.sweep(retention).await;
                    if removed > 0 {
                        tracing::info!(
                            removed,
                            "deleted the cluster journals of sessions unused for longer than the retention period"
                        );
                    }
                }
            }
        });
    }

    /// Stops serving sessions, for a process that is about to exit: no session starts any
    /// more (JOINs are answered 4003, `/healthz` 503), and each running session journals
    /// and sends what it has received, records its time, gives its lease up (in a
    /// cluster) and closes its connections with 4003, so that Croquet clients reconnect at
    /// once, in a cluster to the node that takes the session over. Returns the number of
    /// sessions that had not ended within `within`.
    pub async fn drain(&self, within: std::time::Duration) -> usize {
        self.ctx.drain(within).await
    }

    pub fn metrics(&self) -> Arc<Metrics> {
        Arc::clone(&self.ctx.metrics)
    }

    pub fn config(&self) -> &ReflectorConfig {
        &self.ctx.config
    }

    /// Whether a session is running now (has clients, or had them moments ago), for
    /// services that serve only the members of live sessions (the AI gateway).
    pub fn session_liveness(
        &self,
    ) -> impl Fn(&str) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send>>
    + Send
    + Sync
    + 'static {
        let ctx = Arc::clone(&self.ctx);
        move |id| {
            let (ctx, id) = (Arc::clone(&ctx), id.to_owned());
            Box::pin(async move {
                if ctx.is_live(&id) {
                    return true;
                }
                // In a cluster, the session may run on another node.
                match &ctx.config.cluster {
                    Some(c) => c.0.is_live(&id).await,
                    None => false,
                }
            })
        }
    }

    /// Routes: `/reflector/<sessionId>` (any prefix before the last segment is accepted,
    /// e.g. `/reflector/v1/<id>`), `/files/…`, `/healthz`, `/metrics`.
    /// Serve it with [`crate::serve_with`] (or with axum's
    /// `into_make_service_with_connect_info::<SocketAddr>`): uploads are counted per peer
    /// address and need `ConnectInfo<SocketAddr>`.
    pub fn router(&self) -> Router {
        let limits = &self.ctx.config.files;
        let files_state = FilesState {
            store: Arc::clone(&self.store),
            metrics: Arc::clone(&self.ctx.metrics),
            ctx: Arc::clone(&self.ctx),
            store_quota: Arc::clone(&self.store_quota),
            address_quota: Arc::new(AddressQuota::new(
                limits.upload_quota_bytes,
                limits.upload_quota_window,
            )),
        };
        // Uploads stream through `files::put`, which enforces the size cap itself.
        let files = Router::new()
            .route(
                "/files/{*path}",
                get(files::get).put(files::put).options(files::preflight),
            )
            .layer(axum::middleware::from_fn_with_state(
                files_state.clone(),
                files::headers,
            ))
            .with_state(files_state);
        let ws = Router::new()
            .route("/reflector/{*path}", get(ws_session))
            .route("/reflector", get(ws_no_session))
            .route("/reflector/", get(ws_no_session))
            .with_state(Arc::clone(&self.ctx));
        let metrics = Arc::clone(&self.ctx.metrics);
        let cluster = self.ctx.config.cluster.clone();
        Router::new()
            .merge(files)
            .merge(ws)
            .route(
                "/healthz",
                get({
                    let cluster = cluster.clone();
                    let ctx = Arc::clone(&self.ctx);
                    move || async move {
                        match cluster {
                            // A balancer stops sending clients here while it drains.
                            _ if ctx.is_draining() => {
                                (StatusCode::SERVICE_UNAVAILABLE, "stopping\n")
                            }
                            Some(c) if !c.0.healthy() => (
                                StatusCode::SERVICE_UNAVAILABLE,
                                "the cluster (NATS) is unreachable\n",
                            ),
                            _ => (StatusCode::OK, "ok\n"),
                        }
                    }
                }),
            )
            .route(
                "/metrics",
                get(move || {
                    let m = Arc::clone(&metrics);
                    let cluster = cluster.clone();
                    async move {
                        let mut text = m.render();
                        if let Some(c) = cluster {
                            text.push_str(&c.0.metrics());
                        }
                        ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
                    }
                }),
            )
    }
}

impl Reflector {
    /// Routes of a cluster node's second listener, for its cluster's private network:
    /// only connections other nodes forward (`/reflector/<sessionId>` with the cluster's
    /// token). Serve it with [`crate::serve_with`] and limits without a per-address cap:
    /// all its connections come from the other nodes.
    pub fn cluster_router(&self) -> Router {
        Router::new()
            .route("/reflector/{*path}", get(ws_forwarded))
            .with_state(Arc::clone(&self.ctx))
    }
}

/// Bytes a WebSocket connection reads at most per read call.
const READ_BUFFER_BYTES: usize = 2 * 1024;

/// Upgrades to a WebSocket for `session`, if the request's Origin may. The connection
/// learns the peer's address (for per-address limits) and the `Host` it asked for
/// (snapshots must be stored there).
fn upgrade(
    ws: WebSocketUpgrade,
    ctx: Arc<Ctx>,
    session: Option<String>,
    addr: SocketAddr,
    headers: &HeaderMap,
) -> Response {
    // The Host too: it must name this server (DNS rebinding).
    if let Err(refusal) = origin::check(headers, &ctx.config.files) {
        return origin::refused(headers, refusal, "WebSocket");
    }
    accept(ws, ctx, session, addr.ip(), host_of(headers))
}

/// The configured limit is enforced on whole messages by the reader, which closes with
/// 4104 after reading the message (closing with unread input would reset the TCP
/// connection and lose the close frame). The transport limit is only a backstop.
fn hard_limit(ctx: &Ctx) -> usize {
    ctx.config.max_frame_bytes.saturating_mul(4).max(1 << 20)
}

/// Upgrades to a WebSocket of this node for `session`, from `peer`.
fn accept(
    ws: WebSocketUpgrade,
    ctx: Arc<Ctx>,
    session: Option<String>,
    peer: std::net::IpAddr,
    host: Option<String>,
) -> Response {
    let hard_limit = hard_limit(&ctx);
    ws.max_message_size(hard_limit)
        .max_frame_size(hard_limit)
        // tungstenite zero-fills its read buffer up to this size before every read
        // attempt, also the many that find nothing (each wake-up of a connection to write
        // polls its socket too): at the default 128 KiB that memset was a third of the
        // reflector's CPU (perf, 1 session x 50 clients), at 8 KiB still 7 % when idle
        // ticking. A large frame takes more reads of 2 KiB; clients send small ones.
        .read_buffer_size(READ_BUFFER_BYTES)
        .on_upgrade(move |socket| crate::connection::run(socket, session, peer, host, ctx))
        .into_response()
}

/// Croquet: the session id is the last path segment; anything before it is accepted.
fn session_of(path: &str) -> Option<String> {
    let id = path.rsplit('/').next().unwrap_or("");
    let id = id.split('?').next().unwrap_or("");
    if valid_session_id(id) {
        Some(id.to_owned())
    } else {
        if !id.is_empty() {
            tracing::warn!(path = ?path.get(..path.floor_char_boundary(200)), "refusing WebSocket with an invalid session id");
        }
        None
    }
}

async fn ws_session(
    State(ctx): State<Arc<Ctx>>,
    Path(path): Path<String>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    uri: Uri,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let session = session_of(&path);
    // Checked first: a refused request costs the cluster nothing.
    if let Err(refusal) = origin::check(&headers, &ctx.config.files) {
        return origin::refused(&headers, refusal, "WebSocket");
    }
    // In a cluster, a session that is not running here may be sequenced by another node:
    // the connection goes there.
    if let (Some(cluster), Some(id)) = (&ctx.config.cluster, &session)
        && !ctx.is_live(id)
    {
        match cluster.0.placement(id).await {
            Ok(Placement::Here) => {}
            Ok(Placement::Owner { url }) => {
                let target = format!(
                    "{}{}",
                    url.replacen("http", "ws", 1).trim_end_matches('/'),
                    uri.path_and_query().map_or(uri.path(), |p| p.as_str())
                );
                let fwd = Forward {
                    url: target,
                    peer: addr.ip(),
                    host: host_of(&headers),
                    token: cluster.0.token().to_owned(),
                    max_message: hard_limit(&ctx),
                    write_timeout: ctx.config.write_timeout,
                };
                let metrics = Arc::clone(&ctx.metrics);
                return ws
                    .max_message_size(fwd.max_message)
                    .max_frame_size(fwd.max_message)
                    .on_upgrade(move |socket| crate::forward::run(socket, fwd, metrics))
                    .into_response();
            }
            Err(e) => {
                tracing::warn!(session = %id, error = %e, "cannot place the session");
                return (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the cluster is unavailable\n",
                )
                    .into_response();
            }
        }
    }
    accept(ws, ctx, session, addr.ip(), host_of(&headers))
}

/// A connection another node of the cluster forwarded here (its cluster listener): it
/// carries the cluster's token, the client's address and the `Host` it asked for. The
/// forwarding node checked the request's origin; this node sequences the session (or,
/// if another node took it meanwhile, asks the client to reconnect).
async fn ws_forwarded(
    State(ctx): State<Arc<Ctx>>,
    Path(path): Path<String>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let Some(cluster) = &ctx.config.cluster else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let token = headers
        .get(crate::forward::TOKEN_HEADER)
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    if !same_secret(token, cluster.0.token().as_bytes()) {
        tracing::warn!("refusing a forwarded connection without the cluster's token");
        return StatusCode::FORBIDDEN.into_response();
    }
    let Some(peer) = headers
        .get(crate::forward::FOR_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<std::net::IpAddr>().ok())
    else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let host = headers
        .get(crate::forward::HOST_HEADER)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned);
    let session = session_of(&path);
    accept(ws, ctx, session, peer, host)
}

/// Compares secrets in time independent of where they differ.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn host_of(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
}

async fn ws_no_session(
    State(ctx): State<Arc<Ctx>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    upgrade(ws, ctx, None, addr, &headers)
}
