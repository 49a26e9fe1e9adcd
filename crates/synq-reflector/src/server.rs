//! The reflector's HTTP surface: the WebSocket endpoint, the file store, health and metrics.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;

use crate::config::ReflectorConfig;
use crate::files::{self, FilesState};
use crate::metrics::Metrics;
use crate::registry::{Ctx, valid_session_id};
use crate::store::{BlobStore, LocalDirStore};

#[derive(Debug, thiserror::Error)]
pub enum ReflectorError {
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// A reflector: build it from a config, mount its [`Reflector::router`] (alone or merged
/// into a larger app), and serve.
pub struct Reflector {
    ctx: Arc<Ctx>,
    store: Arc<dyn BlobStore>,
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
        let metrics = Arc::new(Metrics::default());
        Ok(Reflector {
            ctx: Arc::new(Ctx::new(config, metrics)),
            store,
        })
    }

    pub fn metrics(&self) -> Arc<Metrics> {
        Arc::clone(&self.ctx.metrics)
    }

    pub fn config(&self) -> &ReflectorConfig {
        &self.ctx.config
    }

    /// Whether a session is running now (has clients, or had them moments ago), for
    /// services that serve only the members of live sessions (the AI gateway).
    pub fn session_liveness(&self) -> impl Fn(&str) -> bool + Send + Sync + 'static {
        let ctx = Arc::clone(&self.ctx);
        move |id| ctx.is_live(id)
    }

    /// Routes: `/reflector/<sessionId>` (any prefix before the last segment is accepted,
    /// e.g. `/reflector/v1/<id>`), `/files/…`, `/healthz`, `/metrics`.
    pub fn router(&self) -> Router {
        let files_state = FilesState {
            store: Arc::clone(&self.store),
            metrics: Arc::clone(&self.ctx.metrics),
        };
        let files = Router::new()
            .route(
                "/files/{*path}",
                get(files::get).put(files::put).options(files::preflight),
            )
            .layer(DefaultBodyLimit::max(self.ctx.config.max_file_bytes))
            .layer(axum::middleware::map_response(files::cors))
            .with_state(files_state);
        let ws = Router::new()
            .route("/reflector/{*path}", get(ws_session))
            .route("/reflector", get(ws_no_session))
            .route("/reflector/", get(ws_no_session))
            .with_state(Arc::clone(&self.ctx));
        let metrics = Arc::clone(&self.ctx.metrics);
        Router::new()
            .merge(files)
            .merge(ws)
            .route("/healthz", get(|| async { "ok\n" }))
            .route(
                "/metrics",
                get(move || {
                    let m = Arc::clone(&metrics);
                    async move {
                        (
                            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                            m.render(),
                        )
                    }
                }),
            )
    }
}

fn upgrade(ws: WebSocketUpgrade, ctx: Arc<Ctx>, session: Option<String>) -> Response {
    // The configured limit is enforced on whole messages by the reader, which closes with
    // 4104 after reading the message (closing with unread input would reset the TCP
    // connection and lose the close frame). The transport limit is only a backstop.
    let hard_limit = ctx.config.max_frame_bytes.saturating_mul(4).max(1 << 20);
    ws.max_message_size(hard_limit)
        .max_frame_size(hard_limit)
        .on_upgrade(move |socket| crate::connection::run(socket, session, ctx))
        .into_response()
}

async fn ws_session(
    State(ctx): State<Arc<Ctx>>,
    Path(path): Path<String>,
    ws: WebSocketUpgrade,
) -> Response {
    // Croquet: the session id is the last path segment; anything before it is accepted.
    let id = path.rsplit('/').next().unwrap_or("");
    let id = id.split('?').next().unwrap_or("");
    let session = if valid_session_id(id) {
        Some(id.to_owned())
    } else {
        if !id.is_empty() {
            tracing::warn!(path, "refusing WebSocket with an invalid session id");
        }
        None
    };
    upgrade(ws, ctx, session)
}

async fn ws_no_session(State(ctx): State<Arc<Ctx>>, ws: WebSocketUpgrade) -> Response {
    upgrade(ws, ctx, None)
}

/// Serve `router` on `listener` until the process ends.
pub async fn serve(listener: TcpListener, router: Router) -> std::io::Result<()> {
    use axum::serve::ListenerExt;
    // Frames are small and latency-sensitive, and the writer already coalesces them:
    // Nagle's algorithm would hold a frame until the client's next packet ACKs the
    // previous one (measured: +1 send interval, up to 40 ms, with two senders).
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!("cannot set TCP_NODELAY: {e}");
        }
    });
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await
}
