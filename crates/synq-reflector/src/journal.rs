//! The per-session journal: an append-only file from which a session is rebuilt after a
//! restart or when it was evicted from memory.
//!
//! Record = tag (1 byte) ‖ length (u32 LE) ‖ CRC-32 of the body (u32 LE) ‖ body. A torn
//! tail (crash in the middle of a write, power loss) fails its length or CRC check and is
//! cut off on load; everything before it is kept.
//!
//! Durability: the session task appends every message of a batch to an in-memory buffer
//! and writes the whole buffer with one `write` *before* any of those messages is sent to
//! a client (group commit). After `write` returns the bytes are in the kernel's page
//! cache, so a crash or `kill -9` of the process cannot lose a broadcast message; with
//! [`Durability::Fsync`] the batch is also `fdatasync`ed, which survives power loss.
//!
//! File descriptors: a journal holds its file open only while its session writes often
//! (a write less than [`KEEP_OPEN`] after the one before), and until [`KEEP_OPEN`] after
//! the last of those writes ([`Journal::open_until`], [`Journal::close_idle`]); and at
//! most [`MAX_KEPT_OPEN`] journals of the process do so at once. Otherwise each write
//! opens the file, appends and closes it. An idle session writes its time once a second
//! at most, so ten thousand idle sessions hold no descriptor for their journals, and the
//! process's open-files limit is left to the connections.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::config::Durability;

const TAG_HEADER: u8 = b'H';
const TAG_MESSAGE: u8 = b'M';
const TAG_SNAPSHOT: u8 = b'S';
const TAG_FALLBACK: u8 = b'F';
const TAG_TIME: u8 = b'T';
const RECORD_HEAD: usize = 9;
const FILE_NAME: &str = "journal";

/// How long a journal keeps its file open after a write that came less than this after
/// the previous one. Longer than a busy session's gaps between batches; shorter than an
/// idle session's (its time record, once a second).
pub const KEEP_OPEN: Duration = Duration::from_millis(500);

/// How many journals of the process may keep their file open between writes. Many
/// sessions starting at once (thousands of clients reconnecting after a restart) each
/// write a few times in quick succession; without a cap their files would take the
/// descriptors that connections need.
pub const MAX_KEPT_OPEN: usize = 64;

/// Journals that keep their file open now (file descriptors are the process's).
static KEPT_OPEN: AtomicUsize = AtomicUsize::new(0);

/// Takes one of the [`MAX_KEPT_OPEN`] places, if one is free.
fn take_place() -> bool {
    KEPT_OPEN
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < MAX_KEPT_OPEN).then_some(n + 1)
        })
        .is_ok()
}

fn give_back_place() {
    KEPT_OPEN.fetch_sub(1, Ordering::AcqRel);
}

/// The session fields fixed when the session was created.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Header {
    pub timeline: String,
    pub tove: Option<String>,
    pub tick_ms: Option<f64>,
    pub delay_ms: Option<f64>,
    pub app_id: Option<String>,
    pub persistent_id: Option<String>,
    pub developer_id: Option<String>,
    /// synq sessions: the verifier of the room key fixed by the creating JOIN (see
    /// `synq_protocol::identity`). Absent in Croquet sessions and older journals.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room_verifier: Option<String>,
    /// The URL of the persistent data an earlier session of the same app saved, as it
    /// was when this session was created: this session starts from it, and every joiner
    /// is told so until the first snapshot (as Croquet's reflector does). Absent when
    /// there was none, and in older journals.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persisted_url: Option<String>,
}

impl Header {
    /// The name of the persistent data of the app and persistent id this session was
    /// created with (Croquet's `persistentId`), as a safe file name; `None` if it has none.
    pub fn persistent_key(&self) -> Option<String> {
        persistent_key(
            self.app_id.as_deref(),
            self.persistent_id.as_deref(),
            self.developer_id.as_deref(),
        )
    }
}

/// The name of the persistent data of an app (Croquet's `appId`, `persistentId` and
/// `developerId`), as a safe file name; `None` without an app id or persistent id.
pub fn persistent_key(
    app_id: Option<&str>,
    persistent_id: Option<&str>,
    developer_id: Option<&str>,
) -> Option<String> {
    let app = app_id?;
    let pid = persistent_id?;
    let dev = developer_id.unwrap_or("unknown_dev_id");
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '~'
                }
            })
            .collect()
    };
    Some(format!("{}.{}.{}", clean(dev), clean(app), clean(pid)))
}

/// An accepted snapshot. As a fallback, an empty `url` means "replay from the session's
/// first message" (all of them are retained).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SnapshotPointer {
    /// Time as the uploading client wrote it (may be fractional).
    pub time_raw: String,
    pub time: f64,
    pub seq: u32,
    pub url: String,
}

/// A retained message: its seq, time and `[time, seq, …]` text.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredMessage {
    pub seq: u32,
    pub time: u64,
    pub args: String,
}

/// What a journal holds once replayed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Recovered {
    pub header: Option<Header>,
    pub snapshot: Option<SnapshotPointer>,
    /// What a joiner falls back to when the snapshot cannot be loaded.
    pub fallback: Option<SnapshotPointer>,
    /// Messages after the fallback (or, without one, after the snapshot), in order.
    pub messages: Vec<StoredMessage>,
    /// Last sequence number assigned (`None` if no message was ever sent).
    pub last_seq: Option<u32>,
    /// Latest session time known to the journal.
    pub time: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// This node may no longer write the session: another node appended to its journal
    /// (it owns the session now), or the cluster's log did not acknowledge the batch. The
    /// session must stop without sending the batch.
    #[error("session journal lost: {0}")]
    Lost(String),
}

/// A session's journal as the session's task uses it: the local file ([`Journal`]) or a
/// cluster's replicated log (`synq-cluster`). The task appends each batch and only then
/// sends it, so whatever an implementation acknowledges must survive what it promises to
/// survive (a crash of this process, or of this node).
#[async_trait::async_trait]
pub trait SessionJournal: Send {
    /// Appends `records` (the whole batch, as one unit where the store allows) and clears
    /// them. Returns once they are durable.
    async fn append(&mut self, records: &mut Records, now: Instant) -> Result<(), JournalError>;
    /// Replaces everything journaled so far with `image` (a snapshot's compaction).
    async fn replace(&mut self, image: Vec<u8>) -> Result<(), JournalError>;
    /// Until when the journal holds a resource between appends (`None`: none); the task
    /// calls [`SessionJournal::close_idle`] then.
    fn open_until(&self) -> Option<Instant> {
        None
    }
    /// Releases what is held between appends if nothing was appended for a while.
    fn close_idle(&mut self, _now: Instant) {}
}

/// Splits journal bytes (whole records, as [`Records::bytes`] holds them) into chunks of
/// whole records of at most `max` bytes each (a record longer than `max` is a chunk of
/// its own): a store with a message size limit keeps every record in one message.
pub fn record_chunks(bytes: &[u8], max: usize) -> Vec<&[u8]> {
    let mut chunks = Vec::new();
    let (mut start, mut pos) = (0, 0);
    while bytes.len() - pos >= RECORD_HEAD {
        let end = (pos + RECORD_HEAD + body_len(bytes, pos)).min(bytes.len());
        if end - start > max && pos > start {
            chunks.push(&bytes[start..pos]);
            start = pos;
        }
        pos = end;
    }
    if pos < bytes.len() {
        pos = bytes.len();
    }
    if pos > start {
        chunks.push(&bytes[start..pos]);
    }
    chunks
}

/// Parse `[time,seq,` at the start of a message array without a full JSON parse.
pub fn message_time_seq(args: &str) -> Option<(u64, u32)> {
    let inner = args.strip_prefix('[')?;
    let mut it = inner.splitn(3, ',');
    let time = it.next()?.trim().parse::<u64>().ok()?;
    let seq = it.next()?.trim().parse::<u32>().ok()?;
    Some((time, seq))
}

pub struct Journal {
    dir: PathBuf,
    /// Open between writes while the session writes often (see [`KEEP_OPEN`]), holding
    /// one of the [`MAX_KEPT_OPEN`] places; opened on demand.
    file: Option<File>,
    /// When the last write was made.
    last_write: Option<Instant>,
    /// The file is kept open between writes, in one of the [`MAX_KEPT_OPEN`] places.
    kept: bool,
    /// A compaction replaced the file but the journal could not be reopened: no later
    /// write may append to what was there before.
    broken: bool,
    durability: Durability,
}

/// Records waiting to be written, built without any I/O: the session's rules journal into
/// one of these, and the session's task writes it with [`Journal::write`] (so the rules
/// can be tested without files).
#[derive(Debug, Default)]
pub struct Records {
    buf: Vec<u8>,
    /// The compact journal an accepted snapshot made ([`Records::compact`]).
    compaction: Option<Vec<u8>>,
    /// Nothing is kept (the session has no journal).
    off: bool,
}

impl Records {
    /// Records of a session that has no journal: nothing is kept, no compaction is made.
    pub fn disabled() -> Records {
        Records {
            off: true,
            ..Records::default()
        }
    }

    pub fn header(&mut self, h: &Header) {
        if !self.off
            && let Ok(body) = serde_json::to_vec(h)
        {
            push_record(&mut self.buf, TAG_HEADER, &body);
        }
    }

    pub fn message(&mut self, args: &str) {
        if !self.off {
            push_record(&mut self.buf, TAG_MESSAGE, args.as_bytes());
        }
    }

    pub fn time(&mut self, time: u64) {
        if !self.off {
            push_record(&mut self.buf, TAG_TIME, time.to_string().as_bytes());
        }
    }

    /// Whether records are waiting to be written.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// The bytes of the records waiting to be written.
    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }

    /// Forgets the records waiting (a journal wrote them), keeping the buffer.
    pub fn clear(&mut self) {
        self.buf.clear();
    }

    /// Makes the compact journal that replaces the file ([`Journal::install`]): the header,
    /// the fallback and snapshot pointers, the messages after the fallback and the time.
    /// It is kept for [`Records::take_compaction`]. The records buffered until now are in
    /// it and leave the buffer; those buffered after it belong after it, so install it
    /// before the next [`Journal::write`].
    pub fn compact<'a>(
        &mut self,
        header: &Header,
        fallback: Option<&SnapshotPointer>,
        snapshot: &SnapshotPointer,
        messages: impl Iterator<Item = &'a str>,
        time: u64,
    ) {
        if self.off {
            return;
        }
        let mut out = Vec::with_capacity(64 * 1024);
        if let Ok(body) = serde_json::to_vec(header) {
            push_record(&mut out, TAG_HEADER, &body);
        }
        if let Some(body) = fallback.and_then(|f| serde_json::to_vec(f).ok()) {
            push_record(&mut out, TAG_FALLBACK, &body);
        }
        if let Ok(body) = serde_json::to_vec(snapshot) {
            push_record(&mut out, TAG_SNAPSHOT, &body);
        }
        for m in messages {
            push_record(&mut out, TAG_MESSAGE, m.as_bytes());
        }
        push_record(&mut out, TAG_TIME, time.to_string().as_bytes());
        self.buf.clear();
        self.compaction = Some(out);
    }

    /// The compaction made since the last call, to [`Journal::install`] before the next write.
    pub fn take_compaction(&mut self) -> Option<Vec<u8>> {
        self.compaction.take()
    }
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> JournalError + '_ {
    move |source| JournalError::Io {
        path: path.to_owned(),
        source,
    }
}

fn push_record(buf: &mut Vec<u8>, tag: u8, body: &[u8]) {
    buf.push(tag);
    buf.extend_from_slice(&(body.len() as u32).to_le_bytes());
    buf.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
    buf.extend_from_slice(body);
}

impl Journal {
    /// Open (creating if needed) the journal in `dir` and replay it.
    pub fn open(dir: &Path, durability: Durability) -> Result<(Journal, Recovered), JournalError> {
        std::fs::create_dir_all(dir).map_err(io_at(dir))?;
        let path = dir.join(FILE_NAME);
        let mut bytes = Vec::new();
        match File::open(&path) {
            Ok(mut f) => {
                f.read_to_end(&mut bytes).map_err(io_at(&path))?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_at(&path)(e)),
        }
        let (recovered, good_len) = replay(&bytes);
        // Created now, as before, so that a session on disk always has its file; the
        // descriptor is not kept (the first write opens it again).
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io_at(&path))?;
        if good_len < bytes.len() {
            tracing::warn!(
                journal = %path.display(),
                kept = good_len,
                dropped = bytes.len() - good_len,
                "journal has a torn tail (crash during a write); cutting it off"
            );
            file.set_len(good_len as u64).map_err(io_at(&path))?;
        }
        Ok((
            Journal {
                dir: dir.to_owned(),
                file: None,
                last_write: None,
                kept: false,
                broken: false,
                durability,
            },
            recovered,
        ))
    }

    /// Write `records` (one `write`), sync them if so configured, and clear them (keeping
    /// their buffer for the next batch). `now` decides whether the file stays open: only
    /// if this write came less than [`KEEP_OPEN`] after the previous one.
    pub fn write(&mut self, records: &mut Records, now: Instant) -> Result<(), JournalError> {
        if records.buf.is_empty() {
            return Ok(());
        }
        let path = self.dir.join(FILE_NAME);
        if self.broken {
            records.buf.clear();
            return Err(io_at(&path)(io::Error::other("journal is closed")));
        }
        let file = match &mut self.file {
            Some(f) => f,
            None => match OpenOptions::new().append(true).open(&path) {
                Ok(f) => self.file.insert(f),
                Err(e) => {
                    records.buf.clear();
                    return Err(io_at(&path)(e));
                }
            },
        };
        let result = file.write_all(&records.buf).and_then(|()| {
            if self.durability == Durability::Fsync {
                file.sync_data()
            } else {
                Ok(())
            }
        });
        records.buf.clear();
        let busy = self
            .last_write
            .is_some_and(|t| now.saturating_duration_since(t) < KEEP_OPEN);
        self.last_write = Some(now);
        let keep = busy && result.is_ok() && (self.kept || take_place());
        if !keep {
            self.close();
        }
        self.kept = keep;
        result.map_err(io_at(&path))
    }

    /// Closes the file, giving back its place if it held one.
    fn close(&mut self) {
        self.file = None;
        if std::mem::take(&mut self.kept) {
            give_back_place();
        }
    }

    /// Until when the file is kept open (`None`: it is closed). The session's task closes
    /// it then with [`Journal::close_idle`].
    pub fn open_until(&self) -> Option<Instant> {
        if !self.kept {
            return None;
        }
        self.last_write.map(|t| t + KEEP_OPEN)
    }

    /// Closes the file if nothing was written for [`KEEP_OPEN`].
    pub fn close_idle(&mut self, now: Instant) {
        if self.open_until().is_some_and(|t| t <= now) {
            self.close();
        }
    }

    /// Whether the journal holds its file open.
    pub fn is_open(&self) -> bool {
        self.file.is_some()
    }

    /// Replace the journal file with `image` (write a temporary file, sync it if so
    /// configured, rename it over the journal). Blocking file I/O of up to the session's
    /// byte cap: the session runs it on a blocking thread.
    pub fn install(&mut self, image: &[u8]) -> Result<(), JournalError> {
        self.close();
        // The next write opens the new file.
        let done = write_image(&self.dir, image, self.durability);
        self.installed(done)
    }

    /// A failed rename may have left no journal to append to: later writes must fail.
    fn installed(&mut self, done: Result<(), ImageError>) -> Result<(), JournalError> {
        let path = self.dir.join(FILE_NAME);
        match done {
            Ok(()) => Ok(()),
            Err(ImageError::Written(e)) => Err(io_at(&path)(e)),
            Err(ImageError::Renamed(e)) => {
                self.broken = true;
                Err(io_at(&path)(e))
            }
        }
    }
}

#[async_trait::async_trait]
impl SessionJournal for Journal {
    async fn append(&mut self, records: &mut Records, now: Instant) -> Result<(), JournalError> {
        // One `write` of a few KiB into the page cache: not worth a blocking thread.
        self.write(records, now)
    }

    /// On a blocking thread (up to the session's byte cap of file I/O): this session
    /// waits, the others and the HTTP server go on.
    async fn replace(&mut self, image: Vec<u8>) -> Result<(), JournalError> {
        self.close();
        let (dir, durability) = (self.dir.clone(), self.durability);
        let done = tokio::task::spawn_blocking(move || write_image(&dir, &image, durability))
            .await
            .unwrap_or_else(|e| Err(ImageError::Written(io::Error::other(e))));
        self.installed(done)
    }

    fn open_until(&self) -> Option<Instant> {
        Journal::open_until(self)
    }

    fn close_idle(&mut self, now: Instant) {
        Journal::close_idle(self, now);
    }
}

/// Why a compaction was not installed: before the rename the old journal is intact;
/// after a failed rename it may not be.
enum ImageError {
    Written(io::Error),
    Renamed(io::Error),
}

/// Writes `image` to a temporary file (synced if so configured) and renames it over the
/// journal in `dir`.
fn write_image(dir: &Path, image: &[u8], durability: Durability) -> Result<(), ImageError> {
    let tmp = dir.join("journal.tmp");
    let mut f = File::create(&tmp).map_err(ImageError::Written)?;
    f.write_all(image).map_err(ImageError::Written)?;
    if durability == Durability::Fsync {
        f.sync_data().map_err(ImageError::Written)?;
    }
    drop(f);
    std::fs::rename(&tmp, dir.join(FILE_NAME)).map_err(ImageError::Renamed)
}

impl Drop for Journal {
    fn drop(&mut self) {
        self.close();
    }
}

/// When the journal in `dir` was last written (`None` if there is none).
pub fn last_written(dir: &Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(dir.join(FILE_NAME))
        .and_then(|m| m.modified())
        .ok()
}

/// The header of the journal in `dir` if it is its first record (as every journal
/// writes it), without reading the rest: a cheap look at a session on disk.
pub fn read_header(dir: &Path) -> Option<Header> {
    let mut f = File::open(dir.join(FILE_NAME)).ok()?;
    let mut head = [0u8; RECORD_HEAD];
    f.read_exact(&mut head).ok()?;
    let len = u32::from_le_bytes([head[1], head[2], head[3], head[4]]) as usize;
    let crc = u32::from_le_bytes([head[5], head[6], head[7], head[8]]);
    if head[0] != TAG_HEADER || len > 64 * 1024 {
        return None;
    }
    let mut body = vec![0u8; len];
    f.read_exact(&mut body).ok()?;
    if crc32fast::hash(&body) != crc {
        return None;
    }
    serde_json::from_slice(&body).ok()
}

/// The body length in the head of the record at `pos` (`RECORD_HEAD` bytes are there).
fn body_len(bytes: &[u8], pos: usize) -> usize {
    u32::from_le_bytes([
        bytes[pos + 1],
        bytes[pos + 2],
        bytes[pos + 3],
        bytes[pos + 4],
    ]) as usize
}

/// Replay records; returns what they say and the length of the valid prefix.
pub fn replay(bytes: &[u8]) -> (Recovered, usize) {
    let mut r = Recovered::default();
    let mut pos = 0;
    while bytes.len() - pos >= RECORD_HEAD {
        let tag = bytes[pos];
        let len = body_len(bytes, pos);
        let crc = u32::from_le_bytes([
            bytes[pos + 5],
            bytes[pos + 6],
            bytes[pos + 7],
            bytes[pos + 8],
        ]);
        let start = pos + RECORD_HEAD;
        let Some(body) = bytes.get(start..start + len) else {
            break;
        };
        if crc32fast::hash(body) != crc {
            break;
        }
        apply(&mut r, tag, body);
        pos = start + len;
    }
    (r, pos)
}

fn apply(r: &mut Recovered, tag: u8, body: &[u8]) {
    match tag {
        TAG_HEADER => r.header = serde_json::from_slice(body).ok(),
        TAG_MESSAGE => {
            let Ok(args) = std::str::from_utf8(body) else {
                return;
            };
            let Some((time, seq)) = message_time_seq(args) else {
                return;
            };
            r.time = r.time.max(time);
            r.last_seq = Some(seq);
            r.messages.push(StoredMessage {
                seq,
                time,
                args: args.to_owned(),
            });
        }
        TAG_SNAPSHOT => {
            let Ok(s) = serde_json::from_slice::<SnapshotPointer>(body) else {
                return;
            };
            let covered =
                synq_protocol::seq::covered_by_snapshot(s.seq, r.messages.iter().map(|m| m.seq));
            r.messages.drain(..covered);
            if r.last_seq.is_none() {
                r.last_seq = Some(s.seq);
            }
            r.time = r.time.max(s.time.ceil() as u64);
            r.snapshot = Some(s);
        }
        TAG_FALLBACK => r.fallback = serde_json::from_slice(body).ok(),
        TAG_TIME => {
            if let Some(t) = std::str::from_utf8(body)
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
            {
                r.time = r.time.max(t);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> Header {
        Header {
            timeline: "tl".into(),
            tove: Some("tove".into()),
            room_verifier: Some("verifier".into()),
            tick_ms: Some(50.0),
            delay_ms: None,
            app_id: None,
            persistent_id: None,
            developer_id: None,
            persisted_url: None,
        }
    }

    #[test]
    fn chunks_hold_whole_records_up_to_the_limit() {
        let mut r = Records::default();
        for (k, len) in [10, 30, 5, 200, 1, 40].into_iter().enumerate() {
            r.message(&format!("[{k},{k},\"{}\"]", "x".repeat(len)));
        }
        let bytes = r.bytes().to_vec();
        let chunks = record_chunks(&bytes, 64);
        assert_eq!(chunks.concat(), bytes, "nothing lost, nothing reordered");
        let mut seqs = Vec::new();
        for c in &chunks {
            // Each chunk replays on its own: it holds whole records.
            let (rec, good) = replay(c);
            assert_eq!(good, c.len());
            seqs.extend(rec.messages.iter().map(|m| m.seq));
            // Over the limit only when one record alone is.
            assert!(
                c.len() <= 64 || rec.messages.len() == 1,
                "{} bytes",
                c.len()
            );
        }
        assert_eq!(seqs, [0, 1, 2, 3, 4, 5]);
    }

    #[test]
    fn replays_header_messages_and_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut j, r) = Journal::open(dir.path(), Durability::Write).unwrap();
            assert_eq!(r, Recovered::default());
            let mut rec = Records::default();
            rec.header(&header());
            rec.message("[10,4294967281,\"a\",0]");
            rec.message("[20,4294967282,\"b\",0]");
            j.write(&mut rec, Instant::now()).unwrap();
        }
        let (_, r) = Journal::open(dir.path(), Durability::Write).unwrap();
        assert_eq!(r.header, Some(header()));
        assert_eq!(read_header(dir.path()), Some(header()));
        assert_eq!(r.messages.len(), 2);
        assert_eq!(r.last_seq, Some(4294967282));
        assert_eq!(r.time, 20);
    }

    #[test]
    fn the_persisted_url_is_kept_and_older_headers_still_load() {
        let old = r#"{"timeline":"tl","tove":null,"tick_ms":50.0,"delay_ms":null,"app_id":"a","persistent_id":"p","developer_id":null}"#;
        let h: Header = serde_json::from_str(old).unwrap();
        assert_eq!(h.persisted_url, None);
        assert_eq!(h.persistent_key().as_deref(), Some("unknown_dev_id.a.p"));
        let without = serde_json::to_string(&header()).unwrap();
        assert!(!without.contains("persisted_url"), "{without}");
        let dir = tempfile::tempdir().unwrap();
        let with = Header {
            persisted_url: Some("http://h/files/apps/a/p/save/x".into()),
            ..header()
        };
        {
            let (mut j, _) = Journal::open(dir.path(), Durability::Write).unwrap();
            let mut rec = Records::default();
            rec.header(&with);
            j.write(&mut rec, Instant::now()).unwrap();
        }
        let (_, r) = Journal::open(dir.path(), Durability::Write).unwrap();
        assert_eq!(r.header, Some(with));
    }

    /// Descriptors of this process open on `path`.
    fn descriptors_on(path: &Path) -> usize {
        std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .filter(|target| target == path)
            .count()
    }

    #[test]
    fn a_journal_written_rarely_holds_no_file_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().canonicalize().unwrap().join(FILE_NAME);
        let t0 = Instant::now();
        let (mut j, _) = Journal::open(dir.path(), Durability::Fsync).unwrap();
        assert_eq!(descriptors_on(&path), 0, "not after opening");
        let mut rec = Records::default();
        rec.header(&header());
        rec.message("[10,4294967281,\"a\",0]");
        j.write(&mut rec, t0).unwrap();
        // An idle session: its time once a second.
        for s in 1..=3 {
            rec.time(1000 * s);
            j.write(&mut rec, t0 + Duration::from_secs(s)).unwrap();
            assert_eq!(descriptors_on(&path), 0, "after the write at {s} s");
            assert_eq!(j.open_until(), None);
        }
        let (_, r) = Journal::open(dir.path(), Durability::Write).unwrap();
        assert_eq!(r.header, Some(header()));
        assert_eq!(r.messages.len(), 1);
        assert_eq!(r.time, 3000);
    }

    #[test]
    fn a_busy_journal_keeps_its_file_open_until_it_falls_quiet() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().canonicalize().unwrap().join(FILE_NAME);
        let t0 = Instant::now();
        let (mut j, _) = Journal::open(dir.path(), Durability::Write).unwrap();
        let mut rec = Records::default();
        for (k, seq) in (4294967281u32..4294967291).enumerate() {
            rec.message(&format!("[{k},{seq},\"m\",0]"));
            j.write(&mut rec, t0 + Duration::from_millis(10 * k as u64))
                .unwrap();
        }
        let last = t0 + Duration::from_millis(90);
        assert_eq!(descriptors_on(&path), 1, "kept open while busy");
        assert_eq!(j.open_until(), Some(last + KEEP_OPEN));
        j.close_idle(last + KEEP_OPEN - Duration::from_millis(1));
        assert!(j.is_open(), "not yet quiet long enough");
        j.close_idle(last + KEEP_OPEN);
        assert_eq!(descriptors_on(&path), 0, "closed once quiet");
        assert!(!j.is_open());
        assert_eq!(j.open_until(), None);
        // The next write opens it again and appends.
        rec.message("[100,4294967291,\"late\",0]");
        j.write(&mut rec, last + Duration::from_secs(5)).unwrap();
        let (_, r) = Journal::open(dir.path(), Durability::Write).unwrap();
        assert_eq!(r.messages.len(), 11);
        assert_eq!(r.last_seq, Some(4294967291));
    }

    #[test]
    fn torn_tail_is_cut_and_the_rest_kept() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut j, _) = Journal::open(dir.path(), Durability::Write).unwrap();
            let mut rec = Records::default();
            rec.message("[10,4294967281,\"a\",0]");
            rec.message("[20,4294967282,\"b\",0]");
            j.write(&mut rec, Instant::now()).unwrap();
        }
        let path = dir.path().join(FILE_NAME);
        let len = std::fs::metadata(&path).unwrap().len();
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(len - 3).unwrap();
        drop(f);
        let (mut j, r) = Journal::open(dir.path(), Durability::Write).unwrap();
        assert_eq!(r.messages.len(), 1);
        let mut rec = Records::default();
        rec.message("[30,4294967282,\"c\",0]");
        j.write(&mut rec, Instant::now()).unwrap();
        let (_, r) = Journal::open(dir.path(), Durability::Write).unwrap();
        assert_eq!(
            r.messages.iter().map(|m| m.time).collect::<Vec<_>>(),
            vec![10, 30]
        );
    }

    #[test]
    fn rewrite_keeps_only_messages_after_the_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let snap = SnapshotPointer {
            time_raw: "15".into(),
            time: 15.0,
            seq: 4294967281,
            url: "u".into(),
        };
        {
            let (mut j, _) = Journal::open(dir.path(), Durability::Fsync).unwrap();
            let mut rec = Records::default();
            rec.message("[10,4294967281,\"a\",0]");
            j.write(&mut rec, Instant::now()).unwrap();
            rec.compact(
                &header(),
                None,
                &snap,
                ["[20,4294967282,\"b\",0]"].into_iter(),
                25,
            );
            let image = rec.take_compaction().unwrap();
            j.install(&image).unwrap();
            rec.message("[30,4294967283,\"c\",0]");
            j.write(&mut rec, Instant::now()).unwrap();
        }
        let (_, r) = Journal::open(dir.path(), Durability::Write).unwrap();
        assert_eq!(r.snapshot, Some(snap));
        assert_eq!(
            r.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
            vec![4294967282, 4294967283]
        );
        assert_eq!(r.time, 30);
    }

    #[test]
    fn a_rewrite_keeps_the_fallback_and_the_messages_since_it() {
        let dir = tempfile::tempdir().unwrap();
        let pointer = |seq: u32, url: &str| SnapshotPointer {
            time_raw: seq.to_string(),
            time: 1.0,
            seq,
            url: url.into(),
        };
        let replay = pointer(0, "");
        let snap = pointer(4294967282, "u");
        {
            let (mut j, _) = Journal::open(dir.path(), Durability::Write).unwrap();
            let messages = ["[10,4294967281,\"a\",0]", "[20,4294967282,\"b\",0]"];
            let mut rec = Records::default();
            rec.compact(&header(), Some(&replay), &snap, messages.into_iter(), 25);
            let image = rec.take_compaction().unwrap();
            j.install(&image).unwrap();
        }
        let (_, r) = Journal::open(dir.path(), Durability::Write).unwrap();
        assert_eq!(r.fallback, Some(replay));
        assert_eq!(r.snapshot, Some(snap));
        assert_eq!(
            r.messages.len(),
            2,
            "messages covered by the snapshot are kept"
        );
    }
}
