//! Which web pages may open a WebSocket to the reflector or upload to the file store.
//!
//! The same default policy as the AI gateway (`synq_ai::gateway::guards::origin_allowed`):
//! requests without `Origin` are not made by a browser page on someone's behalf (native
//! clients, Croquet's Node client, curl) and are allowed; a browser page must come from
//! this server's own origin (same `Host`), from localhost, or from an origin the operator
//! allowed (`--allowed-origin`, `*` for any). This stops other web sites from making their
//! visitors' browsers use this server (storage, sessions) without the operator's consent.

use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// Whether a browser page at `origin` may use a server reached as `host`.
pub fn origin_allowed(origin: &str, host: Option<&str>, extra: &[String]) -> bool {
    let origin = origin.trim().trim_end_matches('/');
    if extra
        .iter()
        .any(|o| o == "*" || o.trim_end_matches('/').eq_ignore_ascii_case(origin))
    {
        return true;
    }
    let Some((scheme, authority)) = origin.split_once("://") else {
        return false; // includes the opaque origin "null" (sandboxed frames, file://)
    };
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return false;
    }
    if host.is_some_and(|h| h.eq_ignore_ascii_case(authority)) {
        return true;
    }
    let hostname = if let Some(rest) = authority.strip_prefix('[') {
        rest.split(']').next().map(|h| format!("[{h}]"))
    } else {
        authority.split(':').next().map(str::to_string)
    };
    matches!(
        hostname.map(|h| h.to_ascii_lowercase()).as_deref(),
        Some("localhost" | "127.0.0.1" | "[::1]")
    )
}

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
    fn own_host_localhost_and_listed_origins_are_allowed_others_not() {
        let host = Some("chat.example.org:8080");
        let none: Vec<String> = vec![];
        assert!(origin_allowed("http://chat.example.org:8080", host, &none));
        assert!(origin_allowed("http://localhost:5173", host, &none));
        assert!(origin_allowed("http://[::1]:3000", host, &none));
        assert!(!origin_allowed("http://chat.example.org", host, &none));
        assert!(!origin_allowed("https://evil.example", host, &none));
        assert!(!origin_allowed("null", host, &none));
        let listed = vec!["https://app.example.com".to_string()];
        assert!(origin_allowed("https://app.example.com/", host, &listed));
        assert!(origin_allowed("https://any.example", host, &["*".into()]));
    }

    #[test]
    fn requests_without_origin_are_allowed() {
        assert!(request_allowed(&HeaderMap::new(), &[]));
        let mut h = HeaderMap::new();
        h.insert(header::ORIGIN, "https://evil.example".parse().unwrap());
        h.insert(header::HOST, "chat.example.org".parse().unwrap());
        assert!(!request_allowed(&h, &[]));
    }
}
