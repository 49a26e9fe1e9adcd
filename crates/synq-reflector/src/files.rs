//! `/files/…`: the HTTP file store Croquet clients upload snapshots and persistent data
//! to (PUT) and download them from (GET), as croquet-in-a-box's file server does.
//!
//! Everything here is reachable by anyone who can reach the server, so: files stream
//! through (memory does not grow with file size), uploads must name a session this
//! reflector holds, name this server as their host, come from an allowed web origin, and
//! fit the per-file cap, the store quota and the uploader's address quota; a stalled
//! upload is cut off; and files are served so that a browser never runs them (`nosniff`,
//! `attachment`, `CSP: sandbox`).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;

use crate::metrics::Metrics;
use crate::origin;
use crate::quota::{AddressQuota, StoreQuota};
use crate::registry::Ctx;
use crate::store::{BlobKey, BlobStore, ByteStream, Owner, PutOutcome, StoreError, owner};

#[derive(Clone)]
pub(crate) struct FilesState {
    pub store: Arc<dyn BlobStore>,
    pub metrics: Arc<Metrics>,
    pub ctx: Arc<Ctx>,
    pub store_quota: Arc<StoreQuota>,
    pub address_quota: Arc<AddressQuota>,
}

const ALLOWED_HEADERS: &str = "DNT,User-Agent,X-Requested-With,If-Modified-Since,Cache-Control,Content-Type,Range,X-Croquet-App,X-Croquet-Id,X-Croquet-Session,X-Croquet-Version,X-Croquet-Path";

/// CORS and safety headers on every file-store response. Reads are open to any origin
/// (files are encrypted by the clients and named by content hash); uploads and their
/// preflights only get CORS approval for allowed origins, so a browser refuses to upload
/// from other sites before sending anything.
pub(crate) async fn headers(State(st): State<FilesState>, req: Request, next: Next) -> Response {
    let read = matches!(*req.method(), Method::GET | Method::HEAD);
    let origin = req.headers().get(header::ORIGIN).cloned();
    let allowed = origin::check(req.headers(), &st.ctx.config.files).is_ok();
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    match origin {
        Some(o) if !read && allowed => {
            h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, o);
            h.append(header::VARY, HeaderValue::from_static("Origin"));
        }
        Some(_) if !read => {}
        _ => {
            h.insert(
                header::ACCESS_CONTROL_ALLOW_ORIGIN,
                HeaderValue::from_static("*"),
            );
        }
    }
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, PUT, OPTIONS"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static(ALLOWED_HEADERS),
    );
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("86400"),
    );
    // An uploaded file must never act as a page or script of this origin (the chat's):
    // no type sniffing, a download rather than a page, and a sandbox even if opened.
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_static("attachment"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("sandbox; default-src 'none'"),
    );
    res
}

pub(crate) async fn preflight() -> StatusCode {
    StatusCode::NO_CONTENT
}

fn bad_key(path: &str, e: impl std::fmt::Display) -> Response {
    tracing::warn!(path = %short(path), "file store: refused path: {e}");
    (StatusCode::BAD_REQUEST, format!("bad file path: {e}\n")).into_response()
}

/// A client-supplied string cut and escaped for a log line.
fn short(s: &str) -> String {
    s.chars()
        .take(200)
        .collect::<String>()
        .escape_debug()
        .to_string()
}

pub(crate) async fn get(State(st): State<FilesState>, Path(path): Path<String>) -> Response {
    let key = match BlobKey::parse(&path) {
        Ok(k) => k,
        Err(e) => return bad_key(&path, e),
    };
    match st.store.get(&key).await {
        Ok(Some(blob)) => (
            [
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/octet-stream"),
                ),
                (header::CONTENT_LENGTH, HeaderValue::from(blob.len)),
            ],
            Body::from_stream(blob.body),
        )
            .into_response(),
        Ok(None) => (StatusCode::NOT_FOUND, "no such file\n").into_response(),
        Err(e) => {
            tracing::error!(path = %short(&path), error = %e, "file store read failed");
            (StatusCode::INTERNAL_SERVER_ERROR, "storage error\n").into_response()
        }
    }
}

/// Which (appId, persistentId) pairs have sessions here. The pairs of JOINs are remembered
/// as they arrive (the clients that upload a room's persisted data and files have just
/// joined it); others, of sessions on disk, are found by reading every session's journal
/// header, found pairs are remembered, and such a search runs at most once per
/// [`AppIndex::RESCAN`] (an attacker's made-up pairs cost one scan a second, not one per
/// request).
#[derive(Default)]
pub(crate) struct AppIndex {
    known: Mutex<HashSet<(String, String)>>,
    last_scan: Mutex<Option<Instant>>,
}

impl AppIndex {
    const RESCAN: Duration = Duration::from_secs(1);
    const MAX_KNOWN: usize = 10_000;

    async fn contains(&self, ctx: &Arc<Ctx>, app_id: &str, persistent_id: &str) -> bool {
        let pair = (app_id.to_owned(), persistent_id.to_owned());
        if self.lock_known().contains(&pair) {
            return true;
        }
        {
            let mut last = self.last_scan.lock().unwrap_or_else(|e| e.into_inner());
            if last.is_some_and(|t| t.elapsed() < Self::RESCAN) {
                return false;
            }
            *last = Some(Instant::now());
        }
        let found = match &ctx.config.cluster {
            // In a cluster the session may have started on another node.
            Some(cluster) => cluster.0.knows_app(app_id, persistent_id).await,
            None => {
                let ctx = Arc::clone(ctx);
                let (a, p) = pair.clone();
                tokio::task::spawn_blocking(move || ctx.knows_persistent_id(&a, &p))
                    .await
                    .unwrap_or(false)
            }
        };
        if found {
            let mut known = self.lock_known();
            if known.len() >= Self::MAX_KNOWN {
                known.clear();
            }
            known.insert(pair);
        }
        found
    }

    /// A JOIN named this pair.
    pub(crate) fn remember(&self, app_id: &str, persistent_id: &str) {
        let pair = (app_id.to_owned(), persistent_id.to_owned());
        let mut known = self.lock_known();
        if !known.contains(&pair) {
            if known.len() >= Self::MAX_KNOWN {
                known.clear();
            }
            known.insert(pair);
        }
    }

    fn lock_known(&self) -> std::sync::MutexGuard<'_, HashSet<(String, String)>> {
        self.known.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Why an upload's body was cut off (carried inside the stream's `io::Error`).
#[derive(Debug, thiserror::Error)]
enum Cutoff {
    #[error("nothing received for {0:?}")]
    Stalled(Duration),
    #[error("the file store is full")]
    StoreFull,
    #[error("upload quota of this address used up")]
    AddressQuota(Duration),
}

fn refuse(status: StatusCode, msg: &str) -> Response {
    (status, format!("{msg}\n")).into_response()
}

/// The upload body as a stream that charges the quotas as bytes arrive and ends with an
/// error if the client stalls. `reserved` counts the store-quota bytes taken.
fn limited_body(
    body: Body,
    st: &FilesState,
    peer: SocketAddr,
    reserved: Arc<AtomicU64>,
) -> ByteStream {
    let timeout = st.ctx.config.files.body_timeout;
    let store_quota = Arc::clone(&st.store_quota);
    let address_quota = Arc::clone(&st.address_quota);
    let inner = body.into_data_stream();
    Box::pin(futures_util::stream::unfold(Some(inner), move |inner| {
        let store_quota = Arc::clone(&store_quota);
        let address_quota = Arc::clone(&address_quota);
        let reserved = Arc::clone(&reserved);
        async move {
            let mut inner = inner?;
            let cut = |c: Cutoff| Some((Err(std::io::Error::other(c)), None));
            let chunk = match tokio::time::timeout(timeout, inner.next()).await {
                Err(_) => return cut(Cutoff::Stalled(timeout)),
                Ok(None) => return None,
                Ok(Some(Err(e))) => return Some((Err(std::io::Error::other(e)), None)),
                Ok(Some(Ok(chunk))) => chunk,
            };
            let n = chunk.len() as u64;
            if let Err(wait) = address_quota.take(peer.ip(), n) {
                return cut(Cutoff::AddressQuota(wait));
            }
            if !store_quota.reserve(n) {
                return cut(Cutoff::StoreFull);
            }
            reserved.fetch_add(n, Ordering::Relaxed);
            Some((Ok(chunk), Some(inner)))
        }
    }))
}

pub(crate) async fn put(
    State(st): State<FilesState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(path): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if let Err(refusal) = origin::check(&headers, &st.ctx.config.files) {
        return origin::refused(&headers, refusal, "upload");
    }
    let key = match BlobKey::parse(&path) {
        Ok(k) => k,
        Err(e) => return bad_key(&path, e),
    };
    let known = match owner(&key) {
        Some(Owner::Session(id)) => st.ctx.knows_session_anywhere(id).await,
        Some(Owner::App {
            app_id,
            persistent_id,
        }) => st.ctx.apps.contains(&st.ctx, app_id, persistent_id).await,
        None => false,
    };
    if !known {
        tracing::info!(path = %short(&path), %peer, "upload refused: the path names no session of this reflector");
        return refuse(
            StatusCode::FORBIDDEN,
            "uploads must go to a session of this reflector (snapshots/<sessionId>/…)",
        );
    }
    let max = st.ctx.config.max_file_bytes as u64;
    let announced = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > max) {
        return refuse(StatusCode::PAYLOAD_TOO_LARGE, "file too large");
    }
    let quota = &st.store_quota;
    if quota.limit() != 0
        && announced.is_some_and(|n| quota.used().saturating_add(n) > quota.limit())
    {
        return store_full();
    }
    let reserved = Arc::new(AtomicU64::new(0));
    let stream = limited_body(body, &st, peer, Arc::clone(&reserved));
    let outcome = st.store.put(&key, stream, max).await;
    if !matches!(outcome, Ok(PutOutcome::Created(_))) {
        st.store_quota.release(reserved.load(Ordering::Relaxed));
    }
    match outcome {
        Ok(PutOutcome::Created(len)) => {
            Metrics::add(&st.metrics.files_stored, 1);
            tracing::debug!(path = %short(&path), bytes = len, "file stored");
            StatusCode::CREATED.into_response()
        }
        Ok(PutOutcome::Unchanged) => StatusCode::OK.into_response(),
        Err(StoreError::Conflict(_)) => {
            tracing::warn!(path = %short(&path), %peer, "file store: refused to overwrite a file with different content");
            refuse(
                StatusCode::CONFLICT,
                "file exists with different content (files are write-once)",
            )
        }
        Err(StoreError::TooLarge(_)) => refuse(StatusCode::PAYLOAD_TOO_LARGE, "file too large"),
        Err(StoreError::Body(e)) => match e.get_ref().and_then(|e| e.downcast_ref::<Cutoff>()) {
            Some(Cutoff::Stalled(_)) => {
                tracing::info!(%peer, "upload cut off: the client stopped sending");
                refuse(StatusCode::REQUEST_TIMEOUT, "upload stalled")
            }
            Some(Cutoff::StoreFull) => store_full(),
            Some(Cutoff::AddressQuota(wait)) => {
                tracing::info!(%peer, "upload refused: address upload quota used up");
                (
                    StatusCode::TOO_MANY_REQUESTS,
                    [(header::RETRY_AFTER, wait.as_secs().max(1).to_string())],
                    "upload quota of this address used up; try again later\n",
                )
                    .into_response()
            }
            None => {
                tracing::debug!(%peer, "upload body failed: {e}");
                refuse(StatusCode::BAD_REQUEST, "upload body failed")
            }
        },
        Err(e) => {
            tracing::error!(path = %short(&path), error = %e, "file store write failed");
            refuse(StatusCode::INTERNAL_SERVER_ERROR, "storage error")
        }
    }
}

fn store_full() -> Response {
    tracing::warn!("upload refused: the file store is full (--max-store-bytes)");
    refuse(StatusCode::INSUFFICIENT_STORAGE, "the file store is full")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner_of(path: &str) -> Option<String> {
        let key = BlobKey::parse(path).unwrap();
        owner(&key).map(|o| format!("{o:?}"))
    }

    #[test]
    fn upload_paths_name_their_session_or_app() {
        assert_eq!(
            owner_of("snapshots/qrop/0000007244_4294967284-c7Sz.snap").as_deref(),
            Some("Session(\"qrop\")")
        );
        assert_eq!(
            owner_of("apps/com.example.app/snap/code/pid.sid/0000007244_1.hash").as_deref(),
            Some("Session(\"sid\")")
        );
        assert_eq!(
            owner_of("apps/com.example.app/pid/save/hash").as_deref(),
            Some("App { app_id: \"com.example.app\", persistent_id: \"pid\" }")
        );
        assert_eq!(
            owner_of("apps/a/pid/data/hash").as_deref(),
            Some("App { app_id: \"a\", persistent_id: \"pid\" }")
        );
        for other in [
            "once",
            "snapshots/sid",
            "snapshots/sid/a/b",
            "apps/a/snap/c/nodot/f",
            "x/y/z",
        ] {
            assert_eq!(owner_of(other), None, "{other}");
        }
    }
}
