//! Room links, one format for the browser and `synq chat`:
//! `http://HOST:PORT/?q=ROOM#pw=PASSWORD`. The room's name is in the query (the server
//! serves the page whatever it is); the password is in the fragment, which a browser never
//! sends to the server.

use std::fmt;

/// Where a room is and how to open it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Room {
    /// `http://HOST:PORT` (or `https://…`), without a trailing slash.
    pub server: String,
    pub name: String,
    /// `None` when the link has no `#pw=…` (it may come from `--password` instead).
    pub password: Option<String>,
}

/// Why a text is not a room link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkError(String);

impl fmt::Display for LinkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for LinkError {}

/// The path and fragment that open `name` with `password` on the server of the page:
/// `/?q=ROOM#pw=PASSWORD`.
pub fn room_path(name: &str, password: &str) -> String {
    format!(
        "/?q={}#pw={}",
        percent_encode(name),
        percent_encode(password)
    )
}

/// The link that opens `name` with `password` on `server`, in a browser or `synq chat`.
pub fn room_link(server: &str, name: &str, password: &str) -> String {
    format!("{server}{}", room_path(name, password))
}

/// Escapes all but `encodeURIComponent`'s unreserved characters.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.!~*'()".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Parses a room link. The query may hold other parameters; `q` names the room, and the
/// fragment's `pw` is its password.
pub fn parse_link(link: &str) -> Result<Room, LinkError> {
    let link = link.trim();
    let err = |what: String| Err(LinkError(what));
    let scheme_end = if link.starts_with("http://") {
        "http://".len()
    } else if link.starts_with("https://") {
        "https://".len()
    } else {
        return err(format!(
            "not a room link: {link:?} (expected http://HOST:PORT/?q=ROOM#pw=PASSWORD)"
        ));
    };
    let (before_hash, fragment) = link.split_once('#').unwrap_or((link, ""));
    let (before_query, query) = before_hash.split_once('?').unwrap_or((before_hash, ""));
    // The room lives at the server's root; a path would be another app.
    let (origin, path) = match before_query[scheme_end..].find('/') {
        Some(i) => before_query.split_at(scheme_end + i),
        None => (before_query, ""),
    };
    if origin.len() == scheme_end {
        return err(format!("the room link {link:?} has no host"));
    }
    if !path.is_empty() && path != "/" {
        return err(format!(
            "the room link {link:?} has a path ({path}); a room link looks like http://HOST:PORT/?q=ROOM#pw=PASSWORD"
        ));
    }
    let unreadable = |e: LinkError| LinkError(format!("cannot read the room link {link:?}: {e}"));
    let Some(name) = param(query, "q").map_err(unreadable)? else {
        return err(format!(
            "the link {link:?} names no room (its ?q=ROOM is missing)"
        ));
    };
    let password = param(fragment, "pw").map_err(unreadable)?;
    Ok(Room {
        server: origin.to_owned(),
        name,
        password,
    })
}

/// The room's name and password from a page's `location.search` (`?q=…`) and
/// `location.hash` (`#pw=…`), each `None` when missing or empty. A value that does not
/// decode is taken as written, as the page always did: it names some room all the same.
pub fn from_location(search: &str, hash: &str) -> (Option<String>, Option<String>) {
    let get = |s: &str, key: &str| {
        raw_param(s.trim_start_matches(['?', '#']), key)
            .map(|v| percent_decode(v).unwrap_or_else(|_| v.to_owned()))
    };
    (get(search, "q"), get(hash, "pw"))
}

/// The first non-empty value of `key` in `a=1&b=2`, as written.
fn raw_param<'a>(s: &'a str, key: &str) -> Option<&'a str> {
    s.split('&')
        .filter_map(|kv| kv.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
        .find(|v| !v.is_empty())
}

/// The first non-empty value of `key` in `a=1&b=2`, percent-decoded.
fn param(s: &str, key: &str) -> Result<Option<String>, LinkError> {
    raw_param(s, key).map(percent_decode).transpose()
}

/// `%xx` escapes, as `decodeURIComponent` reads them: a `+` stays a `+` (the browser's
/// page reads its own address so, and a link must name the same room in both).
fn percent_decode(s: &str) -> Result<String, LinkError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| LinkError(format!("bad %-escape in {s:?}")))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| LinkError(format!("{s:?} is not UTF-8 once decoded")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room(server: &str, name: &str, password: Option<&str>) -> Room {
        Room {
            server: server.into(),
            name: name.into(),
            password: password.map(Into::into),
        }
    }

    #[test]
    fn a_browser_link() {
        assert_eq!(
            parse_link("http://127.0.0.1:8080/?q=room1#pw=secret"),
            Ok(room("http://127.0.0.1:8080", "room1", Some("secret")))
        );
        assert_eq!(
            parse_link(" https://chat.example.org?q=a%20b&x=1#pw=p%26w "),
            Ok(room("https://chat.example.org", "a b", Some("p&w")))
        );
    }

    #[test]
    fn the_password_may_come_from_elsewhere() {
        assert_eq!(
            parse_link("http://h:1/?q=r"),
            Ok(room("http://h:1", "r", None))
        );
        assert_eq!(
            parse_link("http://h:1/?q=r#pw="),
            Ok(room("http://h:1", "r", None))
        );
    }

    #[test]
    fn made_links_parse_back_in_the_terminal_and_the_page() {
        for (name, pw) in [
            ("room1", "secret"),
            ("a b&c", "p#w=%+ü"),
            ("0123456789abcdefghjkmnpqrs", "tvwxyz0123456789abcdefghjk"),
        ] {
            let link = room_link("http://h:1", name, pw);
            assert_eq!(
                parse_link(&link),
                Ok(room("http://h:1", name, Some(pw))),
                "{link}"
            );
            let path = room_path(name, pw);
            assert!(link.ends_with(&path));
            let (search, hash) = path[1..].split_once('#').expect("a fragment");
            assert_eq!(
                from_location(search, &format!("#{hash}")),
                (Some(name.to_owned()), Some(pw.to_owned())),
                "{path}"
            );
        }
        assert_eq!(room_link("http://h:1", "r", "p"), "http://h:1/?q=r#pw=p");
    }

    #[test]
    fn the_page_and_the_terminal_read_a_link_alike() {
        // `+` is a plus in both (decodeURIComponent's reading).
        assert_eq!(
            parse_link("http://h:1/?q=a+b#pw=x").map(|r| r.name),
            Ok("a+b".to_owned())
        );
        assert_eq!(
            from_location("?q=a+b", "#pw=x"),
            (Some("a+b".into()), Some("x".into()))
        );
        assert_eq!(from_location("", ""), (None, None));
        assert_eq!(from_location("?x=1&q=", "#pw="), (None, None));
        // What the page cannot decode it takes as written.
        assert_eq!(from_location("?q=%zz", ""), (Some("%zz".into()), None));
    }

    #[test]
    fn bad_links_say_what_is_wrong() {
        let err = |l: &str| parse_link(l).expect_err(l).to_string();
        assert!(err("127.0.0.1:8080/?q=r").contains("not a room link"));
        assert!(err("http:///?q=r").contains("no host"));
        assert!(err("http://h:1/#pw=x").contains("names no room"));
        assert!(err("http://h:1/other?q=r").contains("has a path"));
        assert!(err("http://h:1/?q=%zz").contains("bad %-escape"));
        assert!(err("http://h:1/?q=%ff").contains("not UTF-8"));
    }
}
