//! Session ids as NATS names. A session id (`synq_reflector::valid_session_id`) may hold
//! `.` and `~`: `.` separates subject tokens and `~` is not allowed in key-value keys. Ids
//! of letters, digits, `-` and `_` only (every Croquet id, every synq room) are used as
//! they are; any other is `=` and its bytes in hex, which no plain id can start with.

/// The subject token and key-value key of a session.
pub(crate) fn session_token(id: &str) -> String {
    let plain = id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'));
    if plain && !id.is_empty() {
        return id.to_owned();
    }
    let mut out = String::with_capacity(1 + 2 * id.len());
    out.push('=');
    for b in id.bytes() {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_become_valid_names_and_stay_apart() {
        assert_eq!(session_token("Ab3-_x"), "Ab3-_x");
        assert_eq!(session_token("a.b"), "=612e62");
        assert_eq!(session_token("a~"), "=617e");
        // A plain id that looks like an escaped one cannot exist: `=` is not in ids.
        assert_ne!(session_token("a.b"), session_token("612e62"));
    }
}
