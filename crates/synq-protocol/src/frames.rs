//! Building reflector→client frames.
//!
//! Every frame is built once as JSON text and shared by all recipients. Message arrays
//! (`[time, seq, payload, …]`) are kept as text too, so that a SYNC can replay them byte
//! for byte as they were first broadcast.

use std::fmt::Write as _;

use serde_json::value::RawValue;

use crate::CHUNK_SIZE;

/// JSON string literal for a session id (ids are checked to be URL-safe, but escaping once
/// per session costs nothing and keeps the frame valid whatever the id).
pub fn quote(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| String::from("\"\""))
}

/// A message as broadcast: the full `RECV` frame, and where its `[time, seq, …]` array
/// lies inside it (retained for SYNC and for persistence).
#[derive(Debug, Clone)]
pub struct RecvFrame {
    pub frame: String,
    args_start: usize,
}

impl RecvFrame {
    /// `{"id":<id>,"action":"RECV","args":[time,seq,<tail>]}`
    pub fn new(id_json: &str, time: u64, seq: u32, tail: &str) -> RecvFrame {
        let mut frame = String::with_capacity(id_json.len() + tail.len() + 48);
        frame.push_str("{\"id\":");
        frame.push_str(id_json);
        frame.push_str(",\"action\":\"RECV\",\"args\":");
        let args_start = frame.len();
        let _ = write!(frame, "[{time},{seq},");
        frame.push_str(tail);
        frame.push_str("]}");
        RecvFrame { frame, args_start }
    }

    /// Rebuild the frame around a message array retained earlier.
    pub fn from_args(id_json: &str, args: &str) -> RecvFrame {
        let mut frame = String::with_capacity(id_json.len() + args.len() + 32);
        frame.push_str("{\"id\":");
        frame.push_str(id_json);
        frame.push_str(",\"action\":\"RECV\",\"args\":");
        let args_start = frame.len();
        frame.push_str(args);
        frame.push('}');
        RecvFrame { frame, args_start }
    }

    /// The message array `[time, seq, …]`.
    pub fn args(&self) -> &str {
        &self.frame[self.args_start..self.frame.len() - 1]
    }
}

/// `{"id":<id>,"action":"TICK","args":<time>}`
pub fn tick(id_json: &str, time: u64) -> String {
    format!("{{\"id\":{id_json},\"action\":\"TICK\",\"args\":{time}}}")
}

/// `{"id":<id>,"action":"REQU"}` — "please snapshot soon".
pub fn requ(id_json: &str) -> String {
    format!("{{\"id\":{id_json},\"action\":\"REQU\"}}")
}

/// `{"id":<id>,"action":"INFO","args":{"code":…,"msg":…,"options":{"level":…}}}`
pub fn info(id_json: &str, code: &str, msg: &str, level: &str) -> String {
    format!(
        "{{\"id\":{id_json},\"action\":\"INFO\",\"args\":{{\"code\":{},\"msg\":{},\"options\":{{\"level\":{}}}}}}}",
        quote(code),
        quote(msg),
        quote(level)
    )
}

/// `{"action":"PONG","args":<echo>}` — no id, as in Croquet.
pub fn pong(args: Option<&RawValue>) -> String {
    match args {
        Some(a) => format!("{{\"action\":\"PONG\",\"args\":{}}}", a.get()),
        None => String::from("{\"action\":\"PONG\"}"),
    }
}

/// Snapshot pointer carried in a SYNC.
#[derive(Debug, Clone, PartialEq)]
pub struct SnapshotRef<'a> {
    /// Time as the uploading client wrote it (may be fractional).
    pub time_raw: &'a str,
    pub seq: u32,
    pub url: &'a str,
}

/// Everything a SYNC tells a joining client.
#[derive(Debug, Clone)]
pub struct Sync<'a> {
    pub snapshot: Option<SnapshotRef<'a>>,
    /// URL of the persisted data the session started from: the SYNC's `url` (with
    /// `persisted: true`) when there is no snapshot, and, in a fallback that is the
    /// session's start (empty url), the fallback's url (with `persisted: true`).
    pub persisted_url: Option<&'a str>,
    pub time: u64,
    pub seq: u32,
    pub tove: Option<&'a str>,
    pub reflector: &'a str,
    pub timeline: &'a str,
    /// Flags object as JSON text, e.g. `{}` or `{"rawtime":true}`.
    pub flags_json: &'a str,
    /// synq sessions: what to load if the snapshot cannot be (`url` empty: replay every
    /// message from the session's start); the messages then start after it.
    pub fallback: Option<SnapshotRef<'a>>,
}

impl Sync<'_> {
    /// The SYNC frame; `messages` are retained message arrays as text, in order.
    pub fn frame<'m>(&self, id_json: &str, messages: impl Iterator<Item = &'m str>) -> String {
        let (mut f, tail) = self.parts(id_json);
        for (i, m) in messages.enumerate() {
            if i > 0 {
                f.push(',');
            }
            f.push_str(m);
        }
        f.push_str(&tail);
        f
    }

    /// The SYNC frame's text before and after its message arrays (which go between,
    /// separated by commas): for writing a large SYNC without building it whole.
    pub fn parts(&self, id_json: &str) -> (String, String) {
        let mut f = String::with_capacity(256);
        f.push_str("{\"id\":");
        f.push_str(id_json);
        f.push_str(",\"action\":\"SYNC\",\"args\":{\"url\":");
        let (url, persisted) = match (&self.snapshot, self.persisted_url) {
            (Some(s), _) => (s.url, false),
            (None, Some(p)) => (p, true),
            (None, None) => ("", false),
        };
        f.push_str(&quote(url));
        f.push_str(",\"messages\":[");
        let head = f;
        let mut f = String::with_capacity(256);
        let _ = write!(f, "],\"time\":{},\"seq\":{}", self.time, self.seq);
        if let Some(t) = self.tove {
            f.push_str(",\"tove\":");
            f.push_str(&quote(t));
        }
        f.push_str(",\"reflector\":");
        f.push_str(&quote(self.reflector));
        f.push_str(",\"timeline\":");
        f.push_str(&quote(self.timeline));
        f.push_str(",\"flags\":");
        f.push_str(self.flags_json);
        if let Some(s) = &self.snapshot {
            let _ = write!(
                f,
                ",\"snapshotTime\":{},\"snapshotSeq\":{}",
                s.time_raw, s.seq
            );
        } else if persisted {
            f.push_str(",\"persisted\":true");
        }
        if let Some(fb) = &self.fallback {
            // Replaying from the start of a session that started from persisted data
            // means loading that data first: the fallback names it.
            let (url, persisted) = match (fb.url, self.persisted_url) {
                ("", Some(p)) => (p, true),
                (u, _) => (u, false),
            };
            let _ = write!(
                f,
                ",\"fallback\":{{\"url\":{},\"time\":{},\"seq\":{}",
                quote(url),
                fb.time_raw,
                fb.seq
            );
            f.push_str(if persisted {
                ",\"persisted\":true}"
            } else {
                "}"
            });
        }
        f.push_str("}}");
        (head, f)
    }
}

/// Length of a string as JavaScript counts it (UTF-16 code units), for `_size`.
fn js_len(s: &str) -> usize {
    s.chars().map(char::len_utf16).sum()
}

/// Close an object payload `{…` with `,"_size":n}` where n is the JS length of the object
/// without `_size` (what Croquet's reflector adds; clients tolerate its absence).
fn with_size(mut obj: String) -> String {
    let size = js_len(&obj) + 1;
    let _ = write!(obj, ",\"_size\":{size}}}");
    obj
}

/// Payload of a join/leave announcement:
/// `{"what":"users","active":A,"total":T,"joined":[…],"left":[…],"_size":n}`.
pub fn users_payload(active: usize, total: usize, joined: &[&str], left: &[&str]) -> String {
    let mut p = format!("{{\"what\":\"users\",\"active\":{active},\"total\":{total}");
    for (name, list) in [("joined", joined), ("left", left)] {
        if !list.is_empty() {
            let _ = write!(p, ",\"{name}\":[");
            p.push_str(&list.join(","));
            p.push(']');
        }
    }
    with_size(p)
}

/// Payload of a completed vote:
/// `{"what":"tally","sendTime":…,"tally":{…},"tallyTarget":…,"tuttiKey":…,"missingClients":n,"_size":n}`.
pub fn tally_payload(
    send_time_raw: &str,
    tally: &[(String, u32)],
    tally_target: &str,
    tutti_key: &str,
    missing_clients: i64,
) -> String {
    let mut p = format!("{{\"what\":\"tally\",\"sendTime\":{send_time_raw},\"tally\":{{");
    for (i, (vote, count)) in tally.iter().enumerate() {
        if i > 0 {
            p.push(',');
        }
        p.push_str(&quote(vote));
        let _ = write!(p, ":{count}");
    }
    let _ = write!(
        p,
        "}},\"tallyTarget\":{tally_target},\"tuttiKey\":{},\"missingClients\":{missing_clients}",
        quote(tutti_key)
    );
    with_size(p)
}

/// Split a frame longer than [`CHUNK_SIZE`] into `_CHUNK<first><last><body>` frames, on
/// character boundaries (a UTF-8 slice of ≤ N bytes is ≤ N UTF-16 units, the client's limit).
pub fn chunk(frame: &str) -> Vec<String> {
    chunk_with(frame, CHUNK_SIZE)
}

/// [`chunk`] with pieces of at most `size` bytes of the frame (tests use small pieces).
pub fn chunk_with(frame: &str, size: usize) -> Vec<String> {
    if frame.len() <= size {
        return vec![frame.to_owned()];
    }
    let mut parts = Vec::new();
    let mut rest = frame;
    while !rest.is_empty() {
        let mut end = size.min(rest.len());
        while !rest.is_char_boundary(end) {
            end -= 1;
        }
        parts.push(&rest[..end]);
        rest = &rest[end..];
    }
    let n = parts.len();
    parts
        .into_iter()
        .enumerate()
        .map(|(i, body)| format!("_CHUNK{}{}{body}", u8::from(i == 0), u8::from(i + 1 == n)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recv_frame_exposes_its_message_array() {
        let id = quote("sess");
        let r = RecvFrame::new(&id, 1712, 4294967282, "\"enc\",0");
        assert_eq!(
            r.frame,
            r#"{"id":"sess","action":"RECV","args":[1712,4294967282,"enc",0]}"#
        );
        assert_eq!(r.args(), r#"[1712,4294967282,"enc",0]"#);
        assert_eq!(RecvFrame::from_args(&id, r.args()).frame, r.frame);
    }

    #[test]
    fn users_payload_matches_croquet_including_size() {
        // Verified frame from the real reflector: _size 53 for this object.
        let p = users_payload(1, 1, &["\"v1\""], &[]);
        assert_eq!(
            p,
            r#"{"what":"users","active":1,"total":1,"joined":["v1"],"_size":53}"#
        );
    }

    #[test]
    fn sync_of_fresh_session_matches_croquet() {
        let s = Sync {
            snapshot: None,
            persisted_url: None,
            time: 0,
            seq: 4294967280,
            tove: Some("T1"),
            reflector: "local",
            timeline: "30ypym0cclf",
            flags_json: "{}",
            fallback: None,
        };
        assert_eq!(
            s.frame(&quote("sid"), std::iter::empty()),
            r#"{"id":"sid","action":"SYNC","args":{"url":"","messages":[],"time":0,"seq":4294967280,"tove":"T1","reflector":"local","timeline":"30ypym0cclf","flags":{}}}"#
        );
    }

    #[test]
    fn sync_with_snapshot_lists_messages_after_it() {
        let s = Sync {
            snapshot: Some(SnapshotRef {
                time_raw: "7244",
                seq: 4294967284,
                url: "http://h/files/x.snap",
            }),
            persisted_url: None,
            time: 14005,
            seq: 4294967286,
            tove: None,
            reflector: "local",
            timeline: "t",
            flags_json: "{}",
            fallback: None,
        };
        let f = s.frame(&quote("sid"), ["[1,2,\"a\"]", "[3,4,\"b\"]"].into_iter());
        let v: serde_json::Value = serde_json::from_str(&f).unwrap();
        assert_eq!(v["args"]["url"], "http://h/files/x.snap");
        assert_eq!(v["args"]["messages"].as_array().unwrap().len(), 2);
        assert_eq!(v["args"]["snapshotSeq"], 4294967284u64);
        assert!(v["args"].get("persisted").is_none());
    }

    #[test]
    fn tally_payload_is_valid_json() {
        let p = tally_payload(
            "3000",
            &[("\"y\"".into(), 1), ("\"x\"".into(), 1)],
            "[\"handleSnapshotVote\"]",
            "snapshot@3000",
            0,
        );
        assert!(p.starts_with(r#"{"what":"tally","sendTime":3000,"tally":{"\"y\"":1,"\"x\"":1},"tallyTarget":["handleSnapshotVote"],"tuttiKey":"snapshot@3000","missingClients":0,"_size":"#));
        let v: serde_json::Value = serde_json::from_str(&p).unwrap();
        // Croquet's verified frame for this tally had _size 145.
        assert_eq!(v["_size"], 145);
    }

    #[test]
    fn chunks_reassemble_on_char_boundaries() {
        let frame = "ab€cd€€e".repeat(3);
        let parts = chunk_with(&frame, 5);
        assert!(parts.len() > 1);
        assert!(parts[0].starts_with("_CHUNK10"));
        assert!(parts.last().unwrap().starts_with("_CHUNK01"));
        let joined: String = parts.iter().map(|p| &p[8..]).collect();
        assert_eq!(joined, frame);
        assert_eq!(chunk("short"), vec!["short".to_owned()]);
    }
}
