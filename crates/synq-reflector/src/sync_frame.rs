//! The SYNC frame a joiner gets, kept as pieces that share the session's retained frames.

use axum::extract::ws::Utf8Bytes;

/// A SYNC as pieces: the text around the message list, and the retained messages, shared
/// with the session (not copied). A SYNC of a large session is written to the socket in
/// `_CHUNK` pieces made one at a time, so no SYNC ever exists as one string: clients that
/// join and stop reading cost a piece each, not a copy of the session.
#[derive(Debug)]
pub(crate) struct SyncFrame {
    pub(crate) head: String,
    /// Each retained RECV frame, and where its `[time, seq, …]` starts.
    pub(crate) messages: Vec<(Utf8Bytes, usize)>,
    pub(crate) tail: String,
}

impl SyncFrame {
    fn args(frame: &Utf8Bytes, start: usize) -> &str {
        let s = frame.as_str();
        &s[start..s.len() - 1]
    }

    fn segments(&self) -> impl Iterator<Item = &str> {
        let messages = self
            .messages
            .iter()
            .enumerate()
            .flat_map(|(i, (f, start))| {
                [if i == 0 { "" } else { "," }, SyncFrame::args(f, *start)]
            });
        std::iter::once(self.head.as_str())
            .chain(messages)
            .chain(std::iter::once(self.tail.as_str()))
    }

    /// Length of the whole frame in bytes.
    pub(crate) fn len(&self) -> usize {
        self.segments().map(str::len).sum()
    }

    /// The frame (of `total` bytes, its [`SyncFrame::len`]) whole if it is at most `size`
    /// bytes, else `_CHUNK<first><last>` pieces of at most `size` bytes of it, split on
    /// character boundaries (as `frames::chunk`).
    pub(crate) fn pieces(&self, total: usize, size: usize) -> impl Iterator<Item = String> + '_ {
        let whole = total <= size;
        let mut segments = self.segments();
        let mut rest = "";
        let mut emitted = 0;
        std::iter::from_fn(move || {
            if emitted >= total {
                return None;
            }
            let prefix = if whole { 0 } else { 8 };
            let mut piece = String::with_capacity(prefix + size.min(total - emitted));
            if !whole {
                piece.push_str("_CHUNK00");
            }
            while piece.len() - prefix < size {
                if rest.is_empty() {
                    match segments.next() {
                        Some(s) => rest = s,
                        None => break,
                    }
                    continue;
                }
                let mut end = (size - (piece.len() - prefix)).min(rest.len());
                while !rest.is_char_boundary(end) {
                    end -= 1;
                }
                if end == 0 {
                    break;
                }
                piece.push_str(&rest[..end]);
                rest = &rest[end..];
            }
            let first = emitted == 0;
            emitted += piece.len() - prefix;
            if !whole {
                let flags = [u8::from(first), u8::from(emitted >= total)].map(|b| b'0' + b);
                piece.replace_range(6..8, std::str::from_utf8(&flags).unwrap_or("00"));
            }
            Some(piece)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_sync_is_written_in_chunks_that_reassemble() {
        let frame = |args: &str| {
            let f = format!("{{\"x\":{args}}}");
            (Utf8Bytes::from(f), 5)
        };
        let sync = SyncFrame {
            head: "{\"messages\":[".into(),
            messages: (0..50).map(|i| frame(&format!("[{i},\"€€ab\"]"))).collect(),
            tail: "]}".into(),
        };
        let whole: String = sync.segments().collect();
        assert_eq!(whole.len(), sync.len());
        assert!(serde_json::from_str::<serde_json::Value>(&whole).is_ok());
        assert_eq!(
            sync.pieces(whole.len(), whole.len()).collect::<Vec<_>>(),
            vec![whole.clone()]
        );
        let pieces: Vec<String> = sync.pieces(whole.len(), 7).collect();
        assert!(pieces.len() > 10);
        assert!(pieces[0].starts_with("_CHUNK10"));
        assert!(pieces.last().is_some_and(|p| p.starts_with("_CHUNK01")));
        assert!(
            pieces[1..pieces.len() - 1]
                .iter()
                .all(|p| p.starts_with("_CHUNK00"))
        );
        assert!(pieces.iter().all(|p| p.len() <= 8 + 7));
        let joined: String = pieces.iter().map(|p| &p[8..]).collect();
        assert_eq!(joined, whole);
    }
}
