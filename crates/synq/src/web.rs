//! The chat web app, embedded at build time by `build.rs`: `/` is the page, and its
//! script, wasm module and style sheet are served next to it.

use axum::Router;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

const INDEX: &str = include_str!(concat!(env!("OUT_DIR"), "/web/index.html"));
const STYLE: &str = include_str!(concat!(env!("OUT_DIR"), "/web/style.css"));
const LOADER: &str = include_str!(concat!(env!("OUT_DIR"), "/web/app.js"));
const SCRIPT: &str = include_str!(concat!(env!("OUT_DIR"), "/web/synq_web.js"));
const WASM: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/web/synq_web_bg.wasm"));
const WASM_GZ: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/web/synq_web_bg.wasm.gz"));

fn asset(body: impl IntoResponse, content_type: &'static str) -> Response {
    let mut r = body.into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // The page's secrets live in the URL fragment; no referrer leaks the room name either.
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; style-src 'self'; connect-src 'self'; img-src 'self' data:",
        ),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

/// The wasm module, gzip-compressed at build time for browsers that accept it.
async fn wasm(headers: HeaderMap) -> Response {
    let gzip = headers
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|e| e.trim().starts_with("gzip")));
    if gzip && !WASM_GZ.is_empty() {
        let mut r = asset(WASM_GZ, "application/wasm");
        let h = r.headers_mut();
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        h.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
        r
    } else {
        asset(WASM, "application/wasm")
    }
}

/// Routes for `/` and the app's assets.
pub fn router() -> Router {
    Router::new()
        .route(
            "/",
            get(|| async { asset(INDEX, "text/html; charset=utf-8") }),
        )
        .route(
            "/style.css",
            get(|| async { asset(STYLE, "text/css; charset=utf-8") }),
        )
        .route(
            "/app.js",
            get(|| async { asset(LOADER, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/synq_web.js",
            get(|| async { asset(SCRIPT, "text/javascript; charset=utf-8") }),
        )
        .route("/synq_web_bg.wasm", get(wasm))
}
