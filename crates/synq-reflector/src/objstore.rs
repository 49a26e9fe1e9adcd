//! Session files in an object store (S3, GCS, Azure Blob, or a local directory through
//! `object_store`): every node of a cluster that names the same store serves the same
//! files, and a node restarted with an empty disk still serves them.
//!
//! Named `objstore` rather than `object_store` so that the module never shadows the
//! `object_store` crate it is built on.

use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{GetOptions, ObjectStore, ObjectStoreScheme, PutMode, PutOptions, PutPayload};
use tokio::io::AsyncReadExt;
use tokio::sync::Semaphore;

use crate::store::{Blob, BlobKey, BlobStore, ByteStream, PutOutcome, StoreError, TmpFile, io_err};

/// Chunk size for spool files and the memory budget's unit.
const CHUNK: usize = 64 * 1024;

/// Bytes of uploads being sent to the store at once, by default (see
/// [`ObjectStoreBlobStore::with_upload_memory`]): more uploads wait for their turn rather than
/// grow the process without bound.
pub const DEFAULT_UPLOAD_MEMORY: u64 = 256 * 1024 * 1024;

/// A [`BlobStore`] over any [`ObjectStore`], under a key prefix.
///
/// An upload is first spooled to a temporary file under `spool_dir` (a local disk), then
/// sent with one conditional `PutMode::Create` request. Why not stream it to the store:
/// only a single-request put can be conditional in every backend (multipart uploads cannot
/// be made write-once portably), and a single put needs its body in memory. Spooling first
/// means that an upload over `max_bytes` or whose body fails never reaches the store, and
/// that memory is only held while the finished file is sent to the store (fast, and
/// bounded in total by [`ObjectStoreBlobStore::with_upload_memory`]), not while a slow
/// client trickles it in.
///
/// `PutMode::Create` fails if the key exists, in every node of a cluster: of concurrent
/// uploads to one key exactly one is stored, and the others are compared with it
/// (`Unchanged` or `Conflict`).
#[derive(Debug)]
pub struct ObjectStoreBlobStore {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    spool_dir: PathBuf,
    /// Bytes under the prefix when opened, plus those this process stored since.
    stored: AtomicU64,
    upload_memory: Semaphore,
    /// The budget of `upload_memory`, in [`CHUNK`]s.
    upload_units: u32,
    name: String,
}

/// Why `--files-store URL` cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("{url:?} is not a URL: {reason}")]
    BadUrl { url: String, reason: String },
    #[error(
        "{0:?}: not a supported file store (file:///abs/dir, s3://bucket/prefix, gs://bucket/prefix, az://container/prefix)"
    )]
    Unsupported(String),
    #[error("cannot set up the file store {url}: {source}")]
    Build {
        url: String,
        #[source]
        source: object_store::Error,
    },
    #[error("cannot create the directory {path}: {source}")]
    Dir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot list the file store: {0}")]
    List(#[from] StoreError),
}

fn remote_err(path: &Path, e: object_store::Error) -> StoreError {
    StoreError::Io {
        path: path.to_string(),
        source: std::io::Error::other(e),
    }
}

impl ObjectStoreBlobStore {
    /// The store named by `url`: `file:///abs/dir`, `s3://bucket/prefix`,
    /// `gs://bucket/prefix` or `az://container/prefix` (and the `https://` forms of those
    /// clouds that `object_store` recognises). Credentials, region and endpoint come from
    /// the clouds' usual environment variables (`AWS_*`, `GOOGLE_*`, `AZURE_*`). Lists the
    /// prefix once, for [`BlobStore::stored_bytes`].
    pub async fn from_url(
        url: &str,
        spool_dir: impl Into<PathBuf>,
    ) -> Result<ObjectStoreBlobStore, OpenError> {
        let parsed = url::Url::parse(url).map_err(|e| OpenError::BadUrl {
            url: url.to_owned(),
            reason: e.to_string(),
        })?;
        // Fails for other schemes (and for an empty segment in the prefix).
        let (scheme, prefix) = ObjectStoreScheme::parse(&parsed)
            .map_err(|_| OpenError::Unsupported(url.to_owned()))?;
        let build = |source| OpenError::Build {
            url: url.to_owned(),
            source,
        };
        let (store, prefix): (Arc<dyn ObjectStore>, Path) = match scheme {
            ObjectStoreScheme::Local => {
                let dir = parsed
                    .to_file_path()
                    .map_err(|()| OpenError::Unsupported(url.to_owned()))?;
                std::fs::create_dir_all(&dir).map_err(|source| OpenError::Dir {
                    path: dir.display().to_string(),
                    source,
                })?;
                let fs =
                    object_store::local::LocalFileSystem::new_with_prefix(&dir).map_err(build)?;
                // The directory is the root: no prefix under it.
                (Arc::new(fs), Path::default())
            }
            ObjectStoreScheme::AmazonS3 => (
                Arc::new(
                    object_store::aws::AmazonS3Builder::from_env()
                        .with_url(url)
                        .build()
                        .map_err(build)?,
                ),
                prefix,
            ),
            ObjectStoreScheme::GoogleCloudStorage => (
                Arc::new(
                    object_store::gcp::GoogleCloudStorageBuilder::from_env()
                        .with_url(url)
                        .build()
                        .map_err(build)?,
                ),
                prefix,
            ),
            ObjectStoreScheme::MicrosoftAzure => (
                Arc::new(
                    object_store::azure::MicrosoftAzureBuilder::from_env()
                        .with_url(url)
                        .build()
                        .map_err(build)?,
                ),
                prefix,
            ),
            // memory:// would lose every file at exit; plain HTTP (WebDAV) cannot refuse
            // to overwrite, so files would not be write-once.
            _ => return Err(OpenError::Unsupported(url.to_owned())),
        };
        let mut opened = ObjectStoreBlobStore::open(store, prefix, spool_dir).await?;
        opened.name = url.to_owned();
        Ok(opened)
    }

    /// A store of the files under `prefix` of `store`; uploads are spooled under
    /// `spool_dir` (emptied now: leftovers of uploads interrupted by a crash). Lists the
    /// prefix once, for [`BlobStore::stored_bytes`].
    pub async fn open(
        store: Arc<dyn ObjectStore>,
        prefix: Path,
        spool_dir: impl Into<PathBuf>,
    ) -> Result<ObjectStoreBlobStore, OpenError> {
        let spool_dir = spool_dir.into();
        let _ = tokio::fs::remove_dir_all(&spool_dir).await;
        tokio::fs::create_dir_all(&spool_dir)
            .await
            .map_err(|source| OpenError::Dir {
                path: spool_dir.display().to_string(),
                source,
            })?;
        let listed = (!prefix.as_ref().is_empty()).then_some(&prefix);
        let stored = store
            .list(listed)
            .try_fold(0u64, |sum, meta| async move {
                Ok::<_, object_store::Error>(sum.saturating_add(meta.size))
            })
            .await
            .map_err(|e| remote_err(&prefix, e))?;
        let name = format!("{store}/{prefix}");
        Ok(ObjectStoreBlobStore {
            store,
            prefix,
            spool_dir,
            stored: AtomicU64::new(stored),
            upload_memory: Semaphore::new(0),
            upload_units: 0,
            name,
        }
        .with_upload_memory(DEFAULT_UPLOAD_MEMORY))
    }

    /// At most `bytes` of finished uploads are held in memory while they are sent to the
    /// store (rounded up to 64 KiB); more uploads wait for their turn. One upload larger
    /// than the budget is still sent, alone.
    pub fn with_upload_memory(mut self, bytes: u64) -> ObjectStoreBlobStore {
        let units = bytes
            .div_ceil(CHUNK as u64)
            .clamp(1, u64::from(u32::MAX >> 3));
        self.upload_units = u32::try_from(units).unwrap_or(u32::MAX >> 3);
        self.upload_memory = Semaphore::new(self.upload_units as usize);
        self
    }

    /// The store, for logs (the URL it was opened with, or the backend and prefix).
    pub fn name(&self) -> &str {
        &self.name
    }

    fn location(&self, key: &BlobKey) -> Result<Path, StoreError> {
        let joined = if self.prefix.as_ref().is_empty() {
            key.as_str().to_owned()
        } else {
            format!("{}/{}", self.prefix, key.as_str())
        };
        // A BlobKey has no empty, `.` or `..` segment, so this only fails on a bad prefix.
        Path::parse(&joined).map_err(|e| StoreError::Io {
            path: joined.clone(),
            source: std::io::Error::other(e),
        })
    }

    /// Streams `body` to a new spool file; `max_bytes` and body errors end it before
    /// anything reaches the store.
    async fn spool(&self, body: ByteStream, max_bytes: u64) -> Result<(TmpFile, u64), StoreError> {
        let spool = TmpFile::in_dir(&self.spool_dir);
        let len = crate::store::write_new_file(&spool.0, body, max_bytes).await?;
        Ok((spool, len))
    }

    /// The spooled file as a payload, in [`CHUNK`]s.
    async fn payload(spool: &FsPath, len: u64) -> Result<PutPayload, StoreError> {
        let mut file = tokio::fs::File::open(spool)
            .await
            .map_err(|e| io_err(spool, e))?;
        let mut chunks = Vec::with_capacity(usize::try_from(len).unwrap_or(0) / CHUNK + 1);
        loop {
            let mut buf = vec![0u8; CHUNK];
            let mut filled = 0;
            while filled < CHUNK {
                let n = file
                    .read(&mut buf[filled..])
                    .await
                    .map_err(|e| io_err(spool, e))?;
                if n == 0 {
                    break;
                }
                filled += n;
            }
            if filled == 0 {
                break;
            }
            buf.truncate(filled);
            chunks.push(Bytes::from(buf));
            if filled < CHUNK {
                break;
            }
        }
        Ok(chunks.into_iter().collect())
    }

    /// Whether the stored object at `location` holds the spooled bytes, read chunk by
    /// chunk; `None` if there is no object there.
    async fn same_as_stored(
        &self,
        location: &Path,
        spool: &FsPath,
        len: u64,
    ) -> Result<Option<bool>, StoreError> {
        let stored = match self.store.get_opts(location, GetOptions::default()).await {
            Ok(stored) => stored,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(remote_err(location, e)),
        };
        if stored.meta.size != len {
            return Ok(Some(false));
        }
        let mut file = tokio::fs::File::open(spool)
            .await
            .map_err(|e| io_err(spool, e))?;
        let mut remote = stored.into_stream();
        let mut mine = Vec::new();
        while let Some(chunk) = remote.next().await {
            let chunk = chunk.map_err(|e| remote_err(location, e))?;
            mine.resize(chunk.len(), 0);
            if let Err(e) = file.read_exact(&mut mine).await {
                // The stored object is longer than it said: not ours.
                if e.kind() == std::io::ErrorKind::UnexpectedEof {
                    return Ok(Some(false));
                }
                return Err(io_err(spool, e));
            }
            if mine[..] != chunk[..] {
                return Ok(Some(false));
            }
        }
        Ok(Some(true))
    }
}

#[async_trait]
impl BlobStore for ObjectStoreBlobStore {
    async fn put(
        &self,
        key: &BlobKey,
        body: ByteStream,
        max_bytes: u64,
    ) -> Result<PutOutcome, StoreError> {
        let location = self.location(key)?;
        let (spool, len) = self.spool(body, max_bytes).await?;
        let units = u32::try_from(usize::try_from(len).unwrap_or(usize::MAX).div_ceil(CHUNK))
            .unwrap_or(u32::MAX)
            .clamp(1, self.upload_units);
        let _memory = self
            .upload_memory
            .acquire_many(units)
            .await
            .map_err(|e| io_err(&spool.0, std::io::Error::other(e)))?;
        let payload = Self::payload(&spool.0, len).await?;
        // S3 answers a create that races another one still in flight with 409 (to
        // object_store: the key exists) although there may be no object yet: then the
        // create is tried again, a few times.
        for _ in 0..3 {
            let put = self
                .store
                .put_opts(
                    &location,
                    payload.clone(),
                    PutOptions::from(PutMode::Create),
                )
                .await;
            match put {
                Ok(_) => {
                    self.stored.fetch_add(len, Ordering::Relaxed);
                    return Ok(PutOutcome::Created(len));
                }
                Err(
                    object_store::Error::AlreadyExists { .. }
                    | object_store::Error::Precondition { .. },
                ) => match self.same_as_stored(&location, &spool.0, len).await? {
                    Some(true) => return Ok(PutOutcome::Unchanged),
                    Some(false) => return Err(StoreError::Conflict(key.as_str().to_owned())),
                    None => continue,
                },
                Err(e) => return Err(remote_err(&location, e)),
            }
        }
        Err(StoreError::Io {
            path: location.to_string(),
            source: std::io::Error::other(
                "the store kept refusing the create but holds no object there (racing uploads)",
            ),
        })
    }

    async fn get(&self, key: &BlobKey) -> Result<Option<Blob>, StoreError> {
        let location = self.location(key)?;
        match self.store.get_opts(&location, GetOptions::default()).await {
            Ok(found) => Ok(Some(Blob {
                len: found.meta.size,
                body: Box::pin(found.into_stream().map_err(std::io::Error::other)),
            })),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(remote_err(&location, e)),
        }
    }

    fn stored_bytes(&self) -> Result<u64, StoreError> {
        Ok(self.stored.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::ObjectStoreExt;
    use object_store::local::LocalFileSystem;
    use object_store::memory::InMemory;

    fn body(bytes: &'static [u8]) -> ByteStream {
        Box::pin(futures_util::stream::iter(
            bytes.chunks(2).map(|c| Ok(Bytes::from_static(c))),
        ))
    }

    /// A body that sends some bytes, then fails (the client went away).
    fn failing_body() -> ByteStream {
        Box::pin(futures_util::stream::iter([
            Ok(Bytes::from_static(b"partial")),
            Err(std::io::Error::other("client went away")),
        ]))
    }

    async fn read(store: &ObjectStoreBlobStore, key: &BlobKey) -> Option<Vec<u8>> {
        let blob = store.get(key).await.unwrap()?;
        let chunks: Vec<_> = blob.body.collect().await;
        let bytes: Vec<u8> = chunks.into_iter().flat_map(|c| c.unwrap()).collect();
        assert_eq!(
            bytes.len() as u64,
            blob.len,
            "the announced length is the body's"
        );
        Some(bytes)
    }

    /// The two backends every test runs against: a local directory and memory. Returns
    /// the tempdirs too (the store's directory and the spool), kept alive by the caller.
    async fn backends() -> Vec<(
        &'static str,
        Arc<dyn ObjectStore>,
        ObjectStoreBlobStore,
        tempfile::TempDir,
    )> {
        let mut out = Vec::new();
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("store")).unwrap();
        let fs: Arc<dyn ObjectStore> =
            Arc::new(LocalFileSystem::new_with_prefix(dir.path().join("store")).unwrap());
        let store = ObjectStoreBlobStore::open(
            Arc::clone(&fs),
            Path::parse("synq/files").unwrap(),
            dir.path().join("spool"),
        )
        .await
        .unwrap();
        out.push(("local", fs, store, dir));
        let dir = tempfile::tempdir().unwrap();
        let mem: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let store = ObjectStoreBlobStore::open(
            Arc::clone(&mem),
            Path::parse("synq/files").unwrap(),
            dir.path().join("spool"),
        )
        .await
        .unwrap();
        out.push(("memory", mem, store, dir));
        out
    }

    fn spool_is_empty(dir: &tempfile::TempDir) -> bool {
        std::fs::read_dir(dir.path().join("spool"))
            .unwrap()
            .next()
            .is_none()
    }

    async fn objects(store: &Arc<dyn ObjectStore>) -> Vec<String> {
        let mut all: Vec<String> = store
            .list(None)
            .map(|m| m.unwrap().location.to_string())
            .collect()
            .await;
        all.sort();
        all
    }

    #[tokio::test]
    async fn files_are_write_once() {
        for (name, raw, store, dir) in backends().await {
            let key = BlobKey::parse("snapshots/s/1.snap").unwrap();
            assert_eq!(
                store.put(&key, body(b"one"), 10).await.unwrap(),
                PutOutcome::Created(3),
                "{name}"
            );
            assert_eq!(
                store.put(&key, body(b"one"), 10).await.unwrap(),
                PutOutcome::Unchanged,
                "{name}"
            );
            assert!(
                matches!(
                    store.put(&key, body(b"two"), 10).await,
                    Err(StoreError::Conflict(_))
                ),
                "{name}"
            );
            assert!(
                matches!(
                    store.put(&key, body(b"one and more"), 20).await,
                    Err(StoreError::Conflict(_))
                ),
                "{name}: a longer file with the same start is different"
            );
            assert_eq!(read(&store, &key).await.unwrap(), b"one", "{name}");
            let missing = BlobKey::parse("nope").unwrap();
            assert!(store.get(&missing).await.unwrap().is_none(), "{name}");
            assert_eq!(store.stored_bytes().unwrap(), 3, "{name}");
            assert_eq!(
                objects(&raw).await,
                ["synq/files/snapshots/s/1.snap"],
                "{name}: under the prefix"
            );
            assert!(spool_is_empty(&dir), "{name}: no spool file is left");
            // Every character a key may hold round-trips.
            let odd = BlobKey::parse("apps/a=b/x+y~z@w/save/h-1_2.3").unwrap();
            assert_eq!(
                store.put(&odd, body(b"odd"), 10).await.unwrap(),
                PutOutcome::Created(3),
                "{name}"
            );
            assert_eq!(read(&store, &odd).await.unwrap(), b"odd", "{name}");
        }
    }

    #[tokio::test]
    async fn an_oversized_upload_stores_nothing() {
        for (name, raw, store, dir) in backends().await {
            let key = BlobKey::parse("big").unwrap();
            assert!(
                matches!(
                    store.put(&key, body(b"0123456789"), 5).await,
                    Err(StoreError::TooLarge(5))
                ),
                "{name}"
            );
            assert!(store.get(&key).await.unwrap().is_none(), "{name}");
            assert_eq!(store.stored_bytes().unwrap(), 0, "{name}");
            assert!(objects(&raw).await.is_empty(), "{name}");
            assert!(spool_is_empty(&dir), "{name}");
        }
    }

    #[tokio::test]
    async fn a_failed_body_stores_nothing() {
        for (name, raw, store, dir) in backends().await {
            let key = BlobKey::parse("snapshots/s/broken").unwrap();
            assert!(
                matches!(
                    store.put(&key, failing_body(), 100).await,
                    Err(StoreError::Body(_))
                ),
                "{name}"
            );
            assert!(store.get(&key).await.unwrap().is_none(), "{name}");
            assert!(objects(&raw).await.is_empty(), "{name}");
            assert!(spool_is_empty(&dir), "{name}");
            // The key is still free.
            assert_eq!(
                store.put(&key, body(b"whole"), 100).await.unwrap(),
                PutOutcome::Created(5),
                "{name}"
            );
        }
    }

    #[tokio::test]
    async fn of_concurrent_puts_to_one_key_exactly_one_is_stored() {
        const N: u8 = 8;
        const LEN: usize = 200 * 1024; // several chunks
        for (name, _raw, store, _dir) in backends().await {
            let store = Arc::new(store);
            let key = BlobKey::parse("snapshots/race/1.snap").unwrap();
            // Two uploaders send the same bytes (k = 0 and N), the others their own.
            let puts = (0..=N).map(|k| {
                let (store, key) = (Arc::clone(&store), key.clone());
                tokio::spawn(async move {
                    let fill = k % N;
                    let body: ByteStream = Box::pin(futures_util::stream::iter(
                        vec![fill; LEN]
                            .chunks(10_000)
                            .map(|c| Ok(Bytes::copy_from_slice(c)))
                            .collect::<Vec<_>>(),
                    ));
                    (fill, store.put(&key, body, LEN as u64).await)
                })
            });
            let mut results = Vec::new();
            for p in puts {
                results.push(p.await.unwrap());
            }
            let created: Vec<u8> = results
                .iter()
                .filter(|(_, r)| matches!(r, Ok(PutOutcome::Created(_))))
                .map(|(fill, _)| *fill)
                .collect();
            assert_eq!(created.len(), 1, "{name}: {results:?}");
            let winner = created[0];
            for (fill, r) in &results {
                match r {
                    Ok(PutOutcome::Created(n)) => assert_eq!(*n, LEN as u64),
                    Ok(PutOutcome::Unchanged) => assert_eq!(*fill, winner, "{name}"),
                    Err(StoreError::Conflict(_)) => assert_ne!(*fill, winner, "{name}"),
                    other => panic!("{name}: {other:?}"),
                }
            }
            let stored = read(&store, &key).await.unwrap();
            assert_eq!(stored, vec![winner; LEN], "{name}: one upload, whole");
            assert_eq!(store.stored_bytes().unwrap(), LEN as u64, "{name}");
        }
    }

    /// InMemory, except that its first create answers as S3 does when another create of
    /// the key is still in flight: 409 (to object_store, `AlreadyExists`), with no object.
    #[derive(Debug)]
    struct RacingCreate {
        inner: InMemory,
        refused: std::sync::atomic::AtomicBool,
    }

    impl std::fmt::Display for RacingCreate {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "RacingCreate")
        }
    }

    #[async_trait]
    impl ObjectStore for RacingCreate {
        async fn put_opts(
            &self,
            location: &Path,
            payload: PutPayload,
            opts: PutOptions,
        ) -> object_store::Result<object_store::PutResult> {
            if !self.refused.swap(true, Ordering::SeqCst) {
                return Err(object_store::Error::AlreadyExists {
                    path: location.to_string(),
                    source: "409 ConditionalRequestConflict".into(),
                });
            }
            self.inner.put_opts(location, payload, opts).await
        }
        async fn put_multipart_opts(
            &self,
            location: &Path,
            opts: object_store::PutMultipartOptions,
        ) -> object_store::Result<Box<dyn object_store::MultipartUpload>> {
            self.inner.put_multipart_opts(location, opts).await
        }
        async fn get_opts(
            &self,
            location: &Path,
            options: GetOptions,
        ) -> object_store::Result<object_store::GetResult> {
            self.inner.get_opts(location, options).await
        }
        fn delete_stream(
            &self,
            locations: futures_util::stream::BoxStream<'static, object_store::Result<Path>>,
        ) -> futures_util::stream::BoxStream<'static, object_store::Result<Path>> {
            self.inner.delete_stream(locations)
        }
        fn list(
            &self,
            prefix: Option<&Path>,
        ) -> futures_util::stream::BoxStream<'static, object_store::Result<object_store::ObjectMeta>>
        {
            self.inner.list(prefix)
        }
        async fn list_with_delimiter(
            &self,
            prefix: Option<&Path>,
        ) -> object_store::Result<object_store::ListResult> {
            self.inner.list_with_delimiter(prefix).await
        }
        async fn copy_opts(
            &self,
            from: &Path,
            to: &Path,
            options: object_store::CopyOptions,
        ) -> object_store::Result<()> {
            self.inner.copy_opts(from, to, options).await
        }
    }

    #[tokio::test]
    async fn a_create_refused_while_no_object_exists_is_tried_again() {
        let dir = tempfile::tempdir().unwrap();
        let racing: Arc<dyn ObjectStore> = Arc::new(RacingCreate {
            inner: InMemory::new(),
            refused: Default::default(),
        });
        let store = ObjectStoreBlobStore::open(racing, Path::default(), dir.path().join("spool"))
            .await
            .unwrap();
        let key = BlobKey::parse("snapshots/s/1.snap").unwrap();
        assert_eq!(
            store.put(&key, body(b"one"), 10).await.unwrap(),
            PutOutcome::Created(3)
        );
        assert_eq!(read(&store, &key).await.unwrap(), b"one");
    }

    #[tokio::test]
    async fn an_upload_larger_than_the_memory_budget_is_sent_alone_not_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mem: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let store = ObjectStoreBlobStore::open(mem, Path::default(), dir.path().join("spool"))
            .await
            .unwrap()
            .with_upload_memory(1);
        assert_eq!(
            store.upload_units, 1,
            "the budget rounds up to one 64 KiB unit"
        );
        const LEN: usize = 3 * CHUNK + 5;
        let big: &'static [u8] = Box::leak(vec![7u8; LEN].into_boxed_slice());
        let key = BlobKey::parse("files/big.bin").unwrap();
        let put = store.put(&key, body(big), LEN as u64);
        let outcome = tokio::time::timeout(std::time::Duration::from_secs(30), put)
            .await
            .expect("the upload waited for memory that the budget never has")
            .unwrap();
        assert_eq!(outcome, PutOutcome::Created(LEN as u64));
        assert_eq!(
            store.upload_memory.available_permits(),
            1,
            "the budget is back"
        );
    }

    #[tokio::test]
    async fn stored_bytes_counts_what_is_under_the_prefix_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let mem: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        mem.put(
            &Path::parse("synq/a").unwrap(),
            PutPayload::from_static(b"12345"),
        )
        .await
        .unwrap();
        mem.put(
            &Path::parse("synq/b/c").unwrap(),
            PutPayload::from_static(b"678"),
        )
        .await
        .unwrap();
        mem.put(
            &Path::parse("other/d").unwrap(),
            PutPayload::from_static(b"not ours"),
        )
        .await
        .unwrap();
        let store = ObjectStoreBlobStore::open(
            Arc::clone(&mem),
            Path::parse("synq").unwrap(),
            dir.path().join("spool"),
        )
        .await
        .unwrap();
        assert_eq!(store.stored_bytes().unwrap(), 8);
        assert_eq!(
            read(&store, &BlobKey::parse("b/c").unwrap()).await.unwrap(),
            b"678",
            "files stored by an earlier run (or another node) are served"
        );
    }

    #[tokio::test]
    async fn file_urls_open_a_directory_and_other_schemes_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("shared");
        let url = format!("file://{}", root.display());
        let key = BlobKey::parse("snapshots/s/1.snap").unwrap();
        {
            let a = ObjectStoreBlobStore::from_url(&url, dir.path().join("spool-a"))
                .await
                .unwrap();
            assert_eq!(a.name(), url);
            assert_eq!(
                a.put(&key, body(b"shared"), 10).await.unwrap(),
                PutOutcome::Created(6)
            );
        }
        assert_eq!(
            std::fs::read(root.join("snapshots/s/1.snap")).unwrap(),
            b"shared"
        );
        let b = ObjectStoreBlobStore::from_url(&url, dir.path().join("spool-b"))
            .await
            .unwrap();
        assert_eq!(b.stored_bytes().unwrap(), 6);
        assert_eq!(read(&b, &key).await.unwrap(), b"shared");
        for bad in [
            "memory:///",
            "ftp://host/x",
            "not a url",
            "https://example.com/x",
        ] {
            assert!(
                ObjectStoreBlobStore::from_url(bad, dir.path().join("spool-x"))
                    .await
                    .is_err(),
                "{bad}"
            );
        }
    }
}
