//! Room links as the browser shows them: `http://HOST:PORT/?q=ROOM#pw=PASSWORD`.

use anyhow::{Context as _, bail};

/// Where a room is and how to open it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Room {
    /// `http://HOST:PORT` (or `https://…`), without a trailing slash.
    pub server: String,
    pub name: String,
    /// `None` when the link has no `#pw=…` (it may come from `--password` instead).
    pub password: Option<String>,
}

/// The link that opens `name` with `password` on `server`, in a browser or `synq chat`.
pub fn room_link(server: &str, name: &str, password: &str) -> String {
    format!(
        "{server}/?q={}#pw={}",
        percent_encode(name),
        percent_encode(password)
    )
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
/// fragment's `pw` is its password (never sent to the server by a browser).
pub fn parse_link(link: &str) -> anyhow::Result<Room> {
    let link = link.trim();
    let scheme_end = if link.starts_with("http://") {
        "http://".len()
    } else if link.starts_with("https://") {
        "https://".len()
    } else {
        bail!("not a room link: {link:?} (expected http://HOST:PORT/?q=ROOM#pw=PASSWORD)");
    };
    let (before_hash, fragment) = link.split_once('#').unwrap_or((link, ""));
    let (before_query, query) = before_hash.split_once('?').unwrap_or((before_hash, ""));
    // The room lives at the server's root; a path would be another app.
    let (origin, path) = match before_query[scheme_end..].find('/') {
        Some(i) => before_query.split_at(scheme_end + i),
        None => (before_query, ""),
    };
    if origin.len() == scheme_end {
        bail!("the room link {link:?} has no host");
    }
    if !path.is_empty() && path != "/" {
        bail!(
            "the room link {link:?} has a path ({path}); a room link looks like http://HOST:PORT/?q=ROOM#pw=PASSWORD"
        );
    }
    let name = param(query, "q")
        .with_context(|| format!("cannot read the room link {link:?}"))?
        .with_context(|| format!("the link {link:?} names no room (its ?q=ROOM is missing)"))?;
    let password =
        param(fragment, "pw").with_context(|| format!("cannot read the room link {link:?}"))?;
    Ok(Room {
        server: origin.to_owned(),
        name,
        password,
    })
}

/// The first non-empty value of `key` in `a=1&b=2`, percent-decoded.
fn param(s: &str, key: &str) -> anyhow::Result<Option<String>> {
    for kv in s.split('&') {
        if let Some(v) = kv.strip_prefix(key).and_then(|v| v.strip_prefix('='))
            && !v.is_empty()
        {
            return percent_decode(v).map(Some);
        }
    }
    Ok(None)
}

/// `%xx` escapes (as `encodeURIComponent` makes them) and `+` for a space.
fn percent_decode(s: &str) -> anyhow::Result<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .with_context(|| format!("bad %-escape in {s:?}"))?;
                out.push(hex);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).with_context(|| format!("{s:?} is not UTF-8 once decoded"))
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
            parse_link("http://127.0.0.1:8080/?q=room1#pw=secret").ok(),
            Some(room("http://127.0.0.1:8080", "room1", Some("secret")))
        );
        assert_eq!(
            parse_link(" https://chat.example.org?q=a%20b&x=1#pw=p%26w ").ok(),
            Some(room("https://chat.example.org", "a b", Some("p&w")))
        );
    }

    #[test]
    fn the_password_may_come_from_elsewhere() {
        assert_eq!(
            parse_link("http://h:1/?q=r").ok(),
            Some(room("http://h:1", "r", None))
        );
        assert_eq!(
            parse_link("http://h:1/?q=r#pw=").ok(),
            Some(room("http://h:1", "r", None))
        );
    }

    #[test]
    fn made_links_parse_back() {
        for (name, pw) in [("room1", "secret"), ("a b&c", "p#w=%+ü")] {
            let link = room_link("http://h:1", name, pw);
            assert_eq!(
                parse_link(&link).ok(),
                Some(room("http://h:1", name, Some(pw))),
                "{link}"
            );
        }
        assert_eq!(room_link("http://h:1", "r", "p"), "http://h:1/?q=r#pw=p");
    }

    #[test]
    fn bad_links_say_what_is_wrong() {
        let err = |l: &str| format!("{:#}", parse_link(l).expect_err(l));
        assert!(err("127.0.0.1:8080/?q=r").contains("not a room link"));
        assert!(err("http:///?q=r").contains("no host"));
        assert!(err("http://h:1/#pw=x").contains("names no room"));
        assert!(err("http://h:1/other?q=r").contains("has a path"));
        assert!(err("http://h:1/?q=%zz").contains("bad %-escape"));
        assert!(err("http://h:1/?q=%ff").contains("not UTF-8"));
    }
}
