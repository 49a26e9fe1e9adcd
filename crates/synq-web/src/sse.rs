//! Reading the text deltas out of an OpenAI-style server-sent event stream.

/// Accumulates bytes and yields complete `data:` payloads.
#[derive(Default)]
pub struct SseLines {
    buf: String,
}

/// One event of the stream.
#[derive(Debug, PartialEq)]
pub enum SseEvent {
    /// Text of `choices[0].delta.content`.
    Delta(String),
    /// An error event from the server (`{"error": {"message": …}}`).
    Error(String),
    Done,
}

impl SseLines {
    /// Feeds decoded text; returns the events completed by it.
    pub fn push(&mut self, text: &str) -> Vec<SseEvent> {
        self.buf.push_str(text);
        let mut out = Vec::new();
        while let Some(end) = self.buf.find('\n') {
            let line: String = self.buf.drain(..=end).collect();
            let line = line.trim_end_matches(['\r', '\n']);
            let Some(data) = line.strip_prefix("data:") else {
                continue;
            };
            let data = data.trim_start();
            if data == "[DONE]" {
                out.push(SseEvent::Done);
                continue;
            }
            let Ok(v) = serde_json::from_str::<serde_json::Value>(data) else {
                continue;
            };
            if let Some(msg) = v.pointer("/error/message").and_then(|m| m.as_str()) {
                out.push(SseEvent::Error(msg.to_owned()));
            } else if let Some(t) = v
                .pointer("/choices/0/delta/content")
                .and_then(|c| c.as_str())
                .filter(|t| !t.is_empty())
            {
                out.push(SseEvent::Delta(t.to_owned()));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deltas_split_across_chunks_are_reassembled() {
        let mut s = SseLines::default();
        assert!(
            s.push("data: {\"choices\":[{\"delta\":{\"content\":\"Hel")
                .is_empty()
        );
        assert_eq!(
            s.push("lo\"}}]}\n\ndata: [DONE]\n\n"),
            [SseEvent::Delta("Hello".into()), SseEvent::Done]
        );
        assert_eq!(
            s.push("data: {\"error\":{\"message\":\"budget\"}}\n"),
            [SseEvent::Error("budget".into())]
        );
    }
}
