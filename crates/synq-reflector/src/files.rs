//! `/files/…`: the HTTP file store Croquet clients upload snapshots and persistent data
//! to (PUT) and download them from (GET), as croquet-in-a-box's file server does,
//! including the CORS answers a browser app served from another origin needs.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::metrics::Metrics;
use crate::store::{BlobKey, BlobStore, PutOutcome, StoreError};

#[derive(Clone)]
pub(crate) struct FilesState {
    pub store: Arc<dyn BlobStore>,
    pub metrics: Arc<Metrics>,
}

const ALLOWED_HEADERS: &str = "DNT,User-Agent,X-Requested-With,If-Modified-Since,Cache-Control,Content-Type,Range,X-Croquet-App,X-Croquet-Id,X-Croquet-Session,X-Croquet-Version,X-Croquet-Path";

/// CORS headers on every file-store response (files are encrypted by the clients and
/// named by content hash; any origin may read and upload, as with Croquet's own server).
pub(crate) async fn cors(mut res: Response) -> Response {
    let h = res.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
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
    res
}

pub(crate) async fn preflight() -> StatusCode {
    StatusCode::NO_CONTENT
}

fn bad_key(path: &str, e: impl std::fmt::Display) -> Response {
    tracing::warn!(path, "file store: refused path: {e}");
    (StatusCode::BAD_REQUEST, format!("bad file path: {e}\n")).into_response()
}

pub(crate) async fn get(State(st): State<FilesState>, Path(path): Path<String>) -> Response {
    let key = match BlobKey::parse(&path) {
        Ok(k) => k,
        Err(e) => return bad_key(&path, e),
    };
    match st.store.get(&key).await {
        Ok(Some(bytes)) => {
            ([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response()
        }
        Ok(None) => (StatusCode::NOT_FOUND, "no such file\n").into_response(),
        Err(e) => {
            tracing::error!(path, error = %e, "file store read failed");
            (StatusCode::INTERNAL_SERVER_ERROR, "storage error\n").into_response()
        }
    }
}

pub(crate) async fn put(
    State(st): State<FilesState>,
    Path(path): Path<String>,
    body: Bytes,
) -> Response {
    let key = match BlobKey::parse(&path) {
        Ok(k) => k,
        Err(e) => return bad_key(&path, e),
    };
    let len = body.len();
    match st.store.put(&key, body).await {
        Ok(PutOutcome::Created) => {
            Metrics::add(&st.metrics.files_stored, 1);
            tracing::debug!(path, bytes = len, "file stored");
            StatusCode::CREATED.into_response()
        }
        Ok(PutOutcome::Unchanged) => StatusCode::OK.into_response(),
        Err(StoreError::Conflict(k)) => {
            tracing::warn!(
                path = k,
                "file store: refused to overwrite a file with different content"
            );
            (
                StatusCode::CONFLICT,
                "file exists with different content (files are write-once)\n",
            )
                .into_response()
        }
        Err(e) => {
            tracing::error!(path, error = %e, "file store write failed");
            (StatusCode::INTERNAL_SERVER_ERROR, "storage error\n").into_response()
        }
    }
}
