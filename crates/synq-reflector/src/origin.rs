//! Which requests may open a WebSocket to the reflector or upload to the file store: the
//! server's one Host and Origin policy (`synq_protocol::origin`, shared with the AI
//! gateway), read from the request's headers.
//!
//! A request must name this server in `Host` (an IP address, `localhost`, or a name
//! listed with `--allowed-host`): a DNS-rebinding page, whose own name resolves to this
//! server, sends its own name and would otherwise count as this server's origin. A
//! browser page (a request with `Origin`) must come from this server's own origin, from
//! localhost, or from an origin listed with `--allowed-origin`; requests without `Origin`
//! (native clients, Croquet's Node client, curl) are not made by a page on someone's
//! behalf. This stops other web sites from making their visitors' browsers use this
//! server (storage, sessions) without the operator's consent.

use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use synq_protocol::origin::{host_allowed, origin_allowed};

use crate::config::FileLimits;

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `Host` names a host this server does not answer for.
    Host,
    /// `Origin` is a web page that may not use this server.
    Origin,
}

/// Checks the request's `Host` and `Origin` (if any) against the allowlists.
pub fn check(headers: &HeaderMap, limits: &FileLimits) -> Result<(), Refusal> {
    // As in the AI gateway: a request without a (readable) host name cannot come from a
    // browser page, which always sends one, so it cannot be a rebinding attack.
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    if host.is_some_and(|h| !host_allowed(h, &limits.allowed_hosts)) {
        return Err(Refusal::Host);
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    if origin
        .to_str()
        .is_ok_and(|o| origin_allowed(o, host, &limits.allowed_origins))
    {
        Ok(())
    } else {
        Err(Refusal::Origin)
    }
}

/// The 403 a refused request gets, saying which flag the operator can use.
pub fn refused(headers: &HeaderMap, refusal: Refusal, what: &str) -> Response {
    let header_text = |name| {
        let text = headers
            .get(name)
            .and_then(|o| o.to_str().ok())
            .unwrap_or("?");
        text.escape_debug()
            .to_string()
            .chars()
            .take(200)
            .collect::<String>()
    };
    let text = match refusal {
        Refusal::Host => {
            tracing::info!(host = %header_text(header::HOST), "{what} for a foreign host name refused");
            "this server does not answer for this host name; the operator can allow it with --allowed-host\n"
        }
        Refusal::Origin => {
            tracing::info!(origin = %header_text(header::ORIGIN), "{what} from a foreign web origin refused");
            "web pages from this origin may not use this server; the operator can allow it with --allowed-origin\n"
        }
    };
    (StatusCode::FORBIDDEN, text).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.insert(name, value.parse().expect("header value"));
        }
        h
    }

    #[test]
    fn host_and_origin_are_both_checked_and_requests_without_origin_pass() {
        let limits = FileLimits::default();
        assert_eq!(check(&HeaderMap::new(), &limits), Ok(()));
        assert_eq!(
            check(&headers(&[(header::HOST, "127.0.0.1:8080")]), &limits),
            Ok(())
        );
        // DNS rebinding: the page's origin is "its own", but the name is not this server.
        let rebinding = headers(&[
            (header::HOST, "evil.example:8080"),
            (header::ORIGIN, "http://evil.example:8080"),
        ]);
        assert_eq!(check(&rebinding, &limits), Err(Refusal::Host));
        let foreign = headers(&[
            (header::HOST, "127.0.0.1:8080"),
            (header::ORIGIN, "https://evil.example"),
        ]);
        assert_eq!(check(&foreign, &limits), Err(Refusal::Origin));
        let listed = FileLimits {
            allowed_hosts: vec!["chat.example.org".into()],
            ..FileLimits::default()
        };
        let proxied = headers(&[
            (header::HOST, "chat.example.org"),
            (header::ORIGIN, "https://chat.example.org"),
        ]);
        assert_eq!(check(&proxied, &limits), Err(Refusal::Host));
        assert_eq!(check(&proxied, &listed), Ok(()));
    }
}
