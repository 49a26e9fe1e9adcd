//! The storage interface for session files (snapshots, persisted data) and its local
//! directory implementation. An object store (S3-compatible) implements the same trait.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;

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
    Created,
    /// The same bytes were already stored under that key.
    Unchanged,
}

/// Where session files live. Files are write-once: Croquet names snapshots and persisted
/// data by their content hash, so a second, different upload to the same key can only be
/// a mistake or an attack on other clients, and is refused.
#[async_trait]
pub trait BlobStore: Send + Sync + 'static {
    async fn put(&self, key: &BlobKey, data: Bytes) -> Result<PutOutcome, StoreError>;
    async fn get(&self, key: &BlobKey) -> Result<Option<Bytes>, StoreError>;
}

/// Files under a local directory; each put is written to a temporary file and renamed
/// into place, so readers never see a partial file.
#[derive(Debug, Clone)]
pub struct LocalDirStore {
    root: PathBuf,
}

impl LocalDirStore {
    pub fn new(root: impl Into<PathBuf>) -> LocalDirStore {
        LocalDirStore { root: root.into() }
    }

    fn path(&self, key: &BlobKey) -> PathBuf {
        self.root.join(key.as_str())
    }
}

fn io_err(path: &Path, source: std::io::Error) -> StoreError {
    StoreError::Io {
        path: path.display().to_string(),
        source,
    }
}

#[async_trait]
impl BlobStore for LocalDirStore {
    async fn put(&self, key: &BlobKey, data: Bytes) -> Result<PutOutcome, StoreError> {
        let path = self.path(key);
        match tokio::fs::read(&path).await {
            Ok(existing) if existing == data.as_ref() => return Ok(PutOutcome::Unchanged),
            Ok(_) => return Err(StoreError::Conflict(key.as_str().to_owned())),
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&path, e)),
        }
        let dir = path.parent().unwrap_or(&self.root).to_owned();
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| io_err(&dir, e))?;
        let tmp = dir.join(format!(
            ".tmp-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        tokio::fs::write(&tmp, &data)
            .await
            .map_err(|e| io_err(&tmp, e))?;
        tokio::fs::rename(&tmp, &path)
            .await
            .map_err(|e| io_err(&path, e))?;
        Ok(PutOutcome::Created)
    }

    async fn get(&self, key: &BlobKey) -> Result<Option<Bytes>, StoreError> {
        let path = self.path(key);
        match tokio::fs::read(&path).await {
            Ok(b) => Ok(Some(Bytes::from(b))),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(&path, e)),
        }
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

    #[tokio::test]
    async fn files_are_write_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalDirStore::new(dir.path());
        let key = BlobKey::parse("snapshots/s/1.snap").unwrap();
        assert_eq!(
            store.put(&key, Bytes::from_static(b"one")).await.unwrap(),
            PutOutcome::Created
        );
        assert_eq!(
            store.put(&key, Bytes::from_static(b"one")).await.unwrap(),
            PutOutcome::Unchanged
        );
        assert!(matches!(
            store.put(&key, Bytes::from_static(b"two")).await,
            Err(StoreError::Conflict(_))
        ));
        assert_eq!(
            store.get(&key).await.unwrap().unwrap(),
            Bytes::from_static(b"one")
        );
        let missing = BlobKey::parse("nope").unwrap();
        assert!(store.get(&missing).await.unwrap().is_none());
    }
}
