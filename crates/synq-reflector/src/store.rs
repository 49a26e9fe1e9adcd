//! The storage interface for session files (snapshots, persisted data) and its local
//! directory implementation. [`ObjectStoreBlobStore`] (S3, GCS, Azure, a local directory)
//! implements the same trait.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use std::pin::Pin;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio_util::io::ReaderStream;

pub use crate::objstore::ObjectStoreBlobStore;

/// A validated relative path inside the store: `/`-separated segments of URL-safe
/// characters, none of them `.` or `..`, so it can never escape the store's root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobKey(String);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("empty path")]
    Empty,
    #[error("path longer than {0} bytes")]
    TooLong(usize),
    #[error("path segment {0:?} is not allowed")]
    BadSegment(String),
}

const MAX_KEY_LEN: usize = 1024;

impl BlobKey {
    pub fn parse(path: &str) -> Result<BlobKey, KeyError> {
        let path = path.trim_start_matches('/');
        if path.is_empty() {
            return Err(KeyError::Empty);
        }
        if path.len() > MAX_KEY_LEN {
            return Err(KeyError::TooLong(MAX_KEY_LEN));
        }
        for seg in path.split('/') {
            let ok_chars = seg.bytes().all(|b| {
                b.is_ascii_alphanumeric()
                    || matches!(b, b'-' | b'_' | b'.' | b'=' | b'+' | b'~' | b'@')
            });
            if seg.is_empty() || seg.starts_with('.') || !ok_chars {
                return Err(KeyError::BadSegment(seg.to_owned()));
            }
        }
        Ok(BlobKey(path.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0} already exists with different content (files are write-once)")]
    Conflict(String),
    #[error("file larger than {0} bytes")]
    TooLarge(u64),
    /// Reading the upload failed (the client went away, a timeout, a quota of the
    /// caller's stream): nothing was stored.
    #[error("upload body: {0}")]
    Body(#[source] std::io::Error),
    #[error("storage I/O error on {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Outcome of a successful put.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    /// Stored; the file holds this many bytes.
    Created(u64),
    /// The same bytes were already stored under that key.
    Unchanged,
}

/// An upload or download, chunk by chunk: files are never held in memory whole.
pub type ByteStream = Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>>;

/// A stored file being read.
pub struct Blob {
    pub len: u64,
    pub body: ByteStream,
}

/// Where session files live. Files are write-once: Croquet names snapshots and persisted
/// data by their content hash, so a second, different upload to the same key can only be
/// a mistake or an attack on other clients, and is refused.
#[async_trait]
pub trait BlobStore: Send + Sync + 'static {
    /// Stores `body` under `key` unless it holds more than `max_bytes`
    /// ([`StoreError::TooLarge`], nothing stored). Concurrent puts to one new key store
    /// exactly one of them; the others get `Unchanged` (same bytes) or `Conflict`.
    async fn put(
        &self,
        key: &BlobKey,
        body: ByteStream,
        max_bytes: u64,
    ) -> Result<PutOutcome, StoreError>;
    async fn get(&self, key: &BlobKey) -> Result<Option<Blob>, StoreError>;
    /// Bytes stored, counted once at start-up for the store quota.
    fn stored_bytes(&self) -> Result<u64, StoreError>;
}

/// Files under a local directory. An upload is streamed to a temporary file under
/// `.tmp/` (no key can name it: key segments never start with `.`) and published with
/// `link(2)`, which fails if the key exists: readers never see a partial file, and of
/// concurrent uploads to one key exactly one is stored.
#[derive(Debug, Clone)]
pub struct LocalDirStore {
    root: PathBuf,
}

const TMP_DIR: &str = ".tmp";
const CHUNK: usize = 64 * 1024;

impl LocalDirStore {
    /// A store under `root`; leftovers of uploads interrupted by a crash are removed.
    pub fn new(root: impl Into<PathBuf>) -> LocalDirStore {
        let root = root.into();
        let _ = std::fs::remove_dir_all(root.join(TMP_DIR));
        LocalDirStore { root }
    }

    fn path(&self, key: &BlobKey) -> PathBuf {
        self.root.join(key.as_str())
    }
}

pub(crate) fn io_err(path: &Path, source: std::io::Error) -> StoreError {
    StoreError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Streams `body` into a new file at `path` (never over an existing one), refusing it
/// once it holds more than `max_bytes`; returns its length. The caller removes the file
/// however this ends.
pub(crate) async fn write_new_file(
    path: &Path,
    mut body: ByteStream,
    max_bytes: u64,
) -> Result<u64, StoreError> {
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .await
        .map_err(|e| io_err(path, e))?;
    let mut len = 0u64;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(StoreError::Body)?;
        len = len.saturating_add(chunk.len() as u64);
        if len > max_bytes {
            return Err(StoreError::TooLarge(max_bytes));
        }
        file.write_all(&chunk).await.map_err(|e| io_err(path, e))?;
    }
    file.flush().await.map_err(|e| io_err(path, e))?;
    Ok(len)
}

/// A new file's path, removed however the upload ends.
pub(crate) struct TmpFile(pub(crate) PathBuf);

impl TmpFile {
    /// A random name under `dir`.
    pub(crate) fn in_dir(dir: &Path) -> TmpFile {
        TmpFile(dir.join(format!("{:016x}", rand::random::<u64>())))
    }
}

impl Drop for TmpFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Whether two files hold the same bytes, read in chunks.
fn same_content(a: &Path, b: &Path) -> std::io::Result<bool> {
    use std::io::Read;
    let (mut fa, mut fb) = (std::fs::File::open(a)?, std::fs::File::open(b)?);
    if fa.metadata()?.len() != fb.metadata()?.len() {
        return Ok(false);
    }
    let (mut ba, mut bb) = (vec![0u8; CHUNK], vec![0u8; CHUNK]);
    loop {
        let n = fa.read(&mut ba)?;
        if n == 0 {
            return Ok(true);
        }
        fb.read_exact(&mut bb[..n])?;
        if ba[..n] != bb[..n] {
            return Ok(false);
        }
    }
}

fn dir_bytes(dir: &Path) -> std::io::Result<u64> {
    let mut total = 0u64;
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let entries = match std::fs::read_dir(&d) {
            Ok(e) => e,
            Err(e) if e.kind() == ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let ty = entry.file_type()?;
            if ty.is_dir() {
                stack.push(entry.path());
            } else if ty.is_file() {
                total = total.saturating_add(entry.metadata()?.len());
            }
        }
    }
    Ok(total)
}

#[async_trait]
impl BlobStore for LocalDirStore {
    async fn put(
        &self,
        key: &BlobKey,
        body: ByteStream,
        max_bytes: u64,
    ) -> Result<PutOutcome, StoreError> {
        let path = self.path(key);
        let tmp_dir = self.root.join(TMP_DIR);
        tokio::fs::create_dir_all(&tmp_dir)
            .await
            .map_err(|e| io_err(&tmp_dir, e))?;
        let tmp = TmpFile::in_dir(&tmp_dir);
        let len = write_new_file(&tmp.0, body, max_bytes).await?;
        let dir = path.parent().unwrap_or(&self.root).to_owned();
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| io_err(&dir, e))?;
        match tokio::fs::hard_link(&tmp.0, &path).await {
            Ok(()) => Ok(PutOutcome::Created(len)),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                let (a, b) = (tmp.0.clone(), path.clone());
                let same = tokio::task::spawn_blocking(move || same_content(&a, &b))
                    .await
                    .map_err(|e| io_err(&path, std::io::Error::other(e)))?
                    .map_err(|e| io_err(&path, e))?;
                if same {
                    Ok(PutOutcome::Unchanged)
                } else {
                    Err(StoreError::Conflict(key.as_str().to_owned()))
                }
            }
            Err(e) => Err(io_err(&path, e)),
        }
    }

    async fn get(&self, key: &BlobKey) -> Result<Option<Blob>, StoreError> {
        let path = self.path(key);
        let file = match tokio::fs::File::open(&path).await {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(&path, e)),
        };
        let meta = file.metadata().await.map_err(|e| io_err(&path, e))?;
        if !meta.is_file() {
            return Ok(None);
        }
        Ok(Some(Blob {
            len: meta.len(),
            body: Box::pin(ReaderStream::with_capacity(file, CHUNK)),
        }))
    }

    fn stored_bytes(&self) -> Result<u64, StoreError> {
        dir_bytes(&self.root).map_err(|e| io_err(&self.root, e))
    }
}

/// What a file belongs to, read from the paths Croquet and synq clients upload to (see
/// docs/protocol.md, "Snapshots and the message buffer", and docs/security.md, "File store"):
/// - `snapshots/<sessionId>/<T>_<seq>-<hash>.snap` (no apiKey; synq's client too),
/// - `apps/<appId>/snap/<codeHash>/<persistentId>.<sessionId>/<T>_<seq>.<hash>` (apiKey),
/// - `apps/<appId>/<persistentId>/save/<hash>` (persisted data) and
///   `apps/<appId>/<persistentId>/data/<hash>` (Data API): no session id; they belong to
///   the sessions of that app and persistent id.
#[derive(Debug, PartialEq)]
pub(crate) enum Owner<'a> {
    Session(&'a str),
    App {
        app_id: &'a str,
        persistent_id: &'a str,
    },
}

pub(crate) fn owner(key: &BlobKey) -> Option<Owner<'_>> {
    let segs: Vec<&str> = key.as_str().split('/').collect();
    match *segs.as_slice() {
        ["snapshots", sid, _] => Some(Owner::Session(sid)),
        ["apps", _, "snap", _, pid_sid, _] => {
            pid_sid.split_once('.').map(|(_, sid)| Owner::Session(sid))
        }
        ["apps", app_id, persistent_id, "save" | "data", _] => Some(Owner::App {
            app_id,
            persistent_id,
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_cannot_escape_the_root() {
        assert!(BlobKey::parse("snapshots/abc/0000007244_4294967284-c7Sz.snap").is_ok());
        for bad in [
            "",
            "../etc/passwd",
            "a/../b",
            "a//b",
            "a/./b",
            ".hidden",
            "a\\b",
            "a b",
            "a/%2e%2e",
        ] {
            assert!(BlobKey::parse(bad).is_err(), "{bad:?} must be refused");
        }
    }

    fn body(bytes: &'static [u8]) -> ByteStream {
        Box::pin(futures_util::stream::iter(
            bytes.chunks(2).map(|c| Ok(Bytes::from_static(c))),
        ))
    }

    async fn read(store: &LocalDirStore, key: &BlobKey) -> Option<Vec<u8>> {
        let blob = store.get(key).await.unwrap()?;
        let chunks: Vec<_> = blob.body.collect().await;
        Some(chunks.into_iter().flat_map(|c| c.unwrap()).collect())
    }

    #[tokio::test]
    async fn files_are_write_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalDirStore::new(dir.path());
        let key = BlobKey::parse("snapshots/s/1.snap").unwrap();
        assert_eq!(
            store.put(&key, body(b"one"), 10).await.unwrap(),
            PutOutcome::Created(3)
        );
        assert_eq!(
            store.put(&key, body(b"one"), 10).await.unwrap(),
            PutOutcome::Unchanged
        );
        assert!(matches!(
            store.put(&key, body(b"two"), 10).await,
            Err(StoreError::Conflict(_))
        ));
        assert_eq!(read(&store, &key).await.unwrap(), b"one");
        let missing = BlobKey::parse("nope").unwrap();
        assert!(store.get(&missing).await.unwrap().is_none());
        assert_eq!(
            store.stored_bytes().unwrap(),
            3,
            "no temporary file is left"
        );
    }

    #[tokio::test]
    async fn an_oversized_upload_stores_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalDirStore::new(dir.path());
        let key = BlobKey::parse("big").unwrap();
        assert!(matches!(
            store.put(&key, body(b"0123456789"), 5).await,
            Err(StoreError::TooLarge(5))
        ));
        assert!(store.get(&key).await.unwrap().is_none());
        assert_eq!(store.stored_bytes().unwrap(), 0);
    }
}
