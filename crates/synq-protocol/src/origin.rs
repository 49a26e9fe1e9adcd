//! Which browser pages and host names a synq server answers: the one policy of the
//! reflector's WebSocket upgrades, the file store's uploads and the AI gateway. Pure
//! string logic; the servers read the `Host` and `Origin` headers and call these.
//!
//! - **Host** (DNS rebinding): a hostile page can make its own name resolve to this
//!   server; the browser then treats the server as the page's own origin and sends
//!   `Host: evil.example` with `Origin: http://evil.example`. So a request must name this
//!   server: an IP literal (a page can only be served from an IP literal by that very
//!   address, so rebinding needs a name), `localhost`, or a name the operator listed
//!   (`*` for any).
//! - **Origin**: requests without `Origin` are not made by a browser page on someone's
//!   behalf (native clients, Croquet's Node client, curl) and pass; a browser page must
//!   come from this server's own origin (same `Host`), from localhost, or from an origin
//!   the operator listed (`*` for any). This stops other web sites from making their
//!   visitors' browsers use the server.

use std::net::IpAddr;

/// The host name of an HTTP authority (`name:port`, `[v6]:port`, `1.2.3.4`), lowercased,
/// without a trailing dot; IPv6 literals keep their brackets.
pub fn host_name(authority: &str) -> String {
    let authority = authority.trim();
    let name = if let Some(rest) = authority.strip_prefix('[') {
        format!("[{}]", rest.split(']').next().unwrap_or(""))
    } else {
        authority.split(':').next().unwrap_or("").to_string()
    };
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// Whether a request that names `host` (its `Host` header) is for this server: an IP
/// literal, `localhost`, or one of the names in `extra` (`*` allows any).
pub fn host_allowed(host: &str, extra: &[String]) -> bool {
    let name = host_name(host);
    if name == "localhost" {
        return true;
    }
    let bare = name.trim_start_matches('[').trim_end_matches(']');
    if bare.parse::<IpAddr>().is_ok() {
        return true;
    }
    extra.iter().any(|h| {
        let h = h.trim();
        h == "*" || host_name(h) == name
    })
}

/// Whether a browser page at `origin` may use a server reached as `host`: the server's
/// own origin (same `Host`), `http(s)://localhost`, `127.0.0.1` and `[::1]` on any port,
/// and every origin of `extra` (exact match; `*` allows any origin).
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_host_localhost_and_listed_origins_are_allowed_others_not() {
        let host = Some("chat.example.org:8080");
        let none: Vec<String> = vec![];
        assert!(origin_allowed("http://chat.example.org:8080", host, &none));
        assert!(origin_allowed("https://CHAT.example.org:8080", host, &none));
        assert!(origin_allowed("http://localhost:5173", host, &none));
        assert!(origin_allowed("https://127.0.0.1", host, &none));
        assert!(origin_allowed("http://[::1]:3000", host, &none));
        assert!(!origin_allowed("http://chat.example.org", host, &none));
        assert!(!origin_allowed("https://evil.example", host, &none));
        assert!(!origin_allowed(
            "http://localhost.evil.example",
            host,
            &none
        ));
        assert!(!origin_allowed("null", host, &none));
        assert!(!origin_allowed("file://localhost", host, &none));
        assert!(!origin_allowed("https://evil.example", None, &none));
        let listed = vec!["https://app.example.com/".to_string()];
        assert!(origin_allowed("https://app.example.com", host, &listed));
        assert!(origin_allowed("https://app.example.com/", host, &listed));
        assert!(origin_allowed(
            "https://any.where",
            host,
            &["*".to_string()]
        ));
    }

    #[test]
    fn hosts_allowed_are_ip_literals_localhost_and_listed_names() {
        let none: Vec<String> = vec![];
        for ok in [
            "127.0.0.1:8080",
            "localhost:8080",
            "LOCALHOST",
            "localhost.",
            "[::1]:80",
            "192.168.1.5",
            "[2001:db8::1]",
        ] {
            assert!(host_allowed(ok, &none), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:8080",
            "localhost.evil.example",
            "127.0.0.1.evil.example",
            "",
        ] {
            assert!(!host_allowed(bad, &none), "{bad}");
        }
        let listed = vec!["Chat.Example.org".to_string()];
        assert!(host_allowed("chat.example.org:443", &listed));
        assert!(host_allowed("chat.example.org.", &listed));
        assert!(!host_allowed("example.org", &listed));
        assert!(host_allowed("any.where", &["*".to_string()]));
    }

    #[test]
    fn host_names_drop_the_port_and_keep_ipv6_brackets() {
        assert_eq!(host_name("Chat.Example.ORG:8080"), "chat.example.org");
        assert_eq!(host_name("[::1]:8080"), "[::1]");
        assert_eq!(host_name(" 1.2.3.4 "), "1.2.3.4");
        assert_eq!(host_name("example.org."), "example.org");
    }
}
