//! Which web pages may open a WebSocket to the reflector or upload to the file store.
//!
//! The policy is the AI gateway's, `synq_protocol::origin::origin_allowed`:
//! requests without `Origin` are not made by a browser page on someone's behalf (native
//! clients, Croquet's Node client, curl) and are allowed; a browser page must come from
//! this server's own origin (same `Host`), from localhost, or from an origin the operator
//! allowed (`--allowed-origin`, `*` for any). This stops other web sites from making their
//! visitors' browsers use this server (storage, sessions) without the operator's consent.

use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use synq_protocol::origin::origin_allowed;

/// Checks the request's `Origin` (if any) against `Host` and the allowlist.
pub fn request_allowed(headers: &HeaderMap, extra: &[String]) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    origin
        .to_str()
        .is_ok_and(|o| origin_allowed(o, host, extra))
}

/// The 403 a foreign origin gets.
pub fn refused(headers: &HeaderMap, what: &str) -> Response {
    let origin = headers
        .get(header::ORIGIN)
        .and_then(|o| o.to_str().ok())
        .unwrap_or("?");
    tracing::info!(origin = %origin.escape_debug().to_string().chars().take(200).collect::<String>(), "{what} from a foreign web origin refused");
    (
        StatusCode::FORBIDDEN,
        "web pages from this origin may not use this server; the operator can allow it with --allowed-origin\n",
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_without_origin_are_allowed() {
        assert!(request_allowed(&HeaderMap::new(), &[]));
        let mut h = HeaderMap::new();
        h.insert(header::ORIGIN, "https://evil.example".parse().unwrap());
        h.insert(header::HOST, "chat.example.org".parse().unwrap());
        assert!(!request_allowed(&h, &[]));
    }
}
