//! The media store: files keyed by their sha256, on one interface
//! (object_store's `ObjectStore`) with two backends, a local directory
//! (`WAPIPE_MEDIA_DIR`, the embedded default) and any S3-compatible store
//! (`WAPIPE_MEDIA_URL=s3://bucket/prefix`), so several workers can share
//! one store. A file is written under a temporary name while it streams
//! in and is hashed on the way, then renamed to its hash once the hash
//! and size are checked: no reader ever sees a partial or wrong file, and
//! the same file twice is one object.

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{Stream, StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use sha2::{Digest, Sha256};

/// Multipart chunk of the S3 backend: S3's smallest part. The memory one
/// download holds is about two of these, whatever the file's size.
const S3_CHUNK: usize = 5 * 1024 * 1024;
/// Multipart chunk of the local backend (no minimum part size there).
const LOCAL_CHUNK: usize = 1024 * 1024;
/// Parts of one file written at once.
const PARTS_IN_FLIGHT: usize = 2;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("media store: {0}")]
    Backend(#[from] object_store::Error),
    #[error("WAPIPE_MEDIA_URL {url:?}: {reason}")]
    Url { url: String, reason: String },
    #[error("cannot create the media directory {dir}: {source}")]
    Dir { dir: String, source: std::io::Error },
}

/// Why a file was not stored.
#[derive(Debug, thiserror::Error)]
pub enum PutError {
    /// The stream went past the size limit: refused, not retried.
    #[error("the file is larger than {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("sha256 mismatch: Meta announced {expected}, the download has {actual}")]
    Checksum { expected: String, actual: String },
    #[error("size mismatch: Meta announced {expected} bytes, the download has {actual}")]
    Size { expected: u64, actual: u64 },
    /// The source stream failed (a cut download): worth another try.
    #[error("download interrupted: {0}")]
    Source(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<object_store::Error> for PutError {
    fn from(e: object_store::Error) -> Self {
        PutError::Store(StoreError::Backend(e))
    }
}

/// A file as stored: its key and size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub sha256: String,
    pub size: u64,
}

/// What the checks of [`MediaStore::put_stream`] compare against.
#[derive(Debug, Clone, Default)]
pub struct Expect<'a> {
    /// Meta's `sha256` (hex), if it gave one.
    pub sha256: Option<&'a str>,
    /// Meta's `file_size`, if it gave one.
    pub size: Option<u64>,
    /// Refuse past this many bytes.
    pub max: u64,
}

/// Part (or all) of a stored file, streaming.
pub struct Fetched {
    /// The whole file's size.
    pub total: u64,
    /// The bytes this stream carries.
    pub range: Range<u64>,
    pub stream: BoxStream<'static, Result<Bytes, object_store::Error>>,
}

/// The media store (see the module's documentation).
#[derive(Clone)]
pub struct MediaStore {
    inner: Arc<dyn ObjectStore>,
    prefix: Path,
    chunk: usize,
    describe: String,
}

impl std::fmt::Debug for MediaStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe)
    }
}

/// What the query of WAPIPE_MEDIA_URL may set (no credentials).
const URL_OPTIONS: [&str; 5] = [
    "endpoint",
    "region",
    "allow_http",
    "skip_signature",
    "virtual_hosted_style_request",
];

/// Whether `s` is a sha256 in lower-case hex (a key we may build a path of).
pub fn is_sha256(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl MediaStore {
    /// The store of the settings: S3 when `media_url` is set, else the
    /// local directory.
    pub fn from_settings(s: &wapipe_shared::config::Settings) -> Result<Self, StoreError> {
        match s
            .media_url
            .as_deref()
            .map(str::trim)
            .filter(|u| !u.is_empty())
        {
            Some(url) => Self::s3(url, &[]),
            None => Self::local(&s.media_dir),
        }
    }

    /// Files under `dir` (created if missing).
    pub fn local(dir: &std::path::Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Dir {
            dir: dir.display().to_string(),
            source,
        })?;
        let fs = object_store::local::LocalFileSystem::new_with_prefix(dir)?;
        Ok(Self {
            inner: Arc::new(fs),
            prefix: Path::default(),
            chunk: LOCAL_CHUNK,
            describe: format!("directory {}", dir.display()),
        })
    }

    /// Objects under `s3://bucket/prefix`, configured by the AWS_*
    /// environment variables, then by the URL's query (`?endpoint=…&region=…
    /// &allow_http=true&skip_signature=true&virtual_hosted_style_request=…`:
    /// never credentials, which stay in the environment), then by
    /// `options` (object_store's names: `aws_endpoint`, ...), which win.
    pub fn s3(url: &str, options: &[(&str, &str)]) -> Result<Self, StoreError> {
        let bad = |reason: String| StoreError::Url {
            url: wapipe_shared::config::redact_url(url),
            reason,
        };
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| bad("expected s3://bucket/prefix".into()))?;
        let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(bad("no bucket".into()));
        }
        // object_store's client is reqwest with rustls and no provider of
        // its own; the binary installs ring, a store built alone must not
        // panic.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut builder = object_store::aws::AmazonS3Builder::from_env().with_bucket_name(bucket);
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, "true"));
            if !URL_OPTIONS.contains(&k) {
                return Err(bad(format!(
                    "unknown option {k:?} (known: {}; credentials go in AWS_* variables)",
                    URL_OPTIONS.join(", ")
                )));
            }
            let key = format!("aws_{k}")
                .parse()
                .map_err(|e: object_store::Error| bad(format!("option {k}: {e}")))?;
            builder = builder.with_config(key, v);
        }
        for (k, v) in options {
            let key = k
                .parse()
                .map_err(|e: object_store::Error| bad(format!("option {k}: {e}")))?;
            builder = builder.with_config(key, *v);
        }
        let s3 = builder.build()?;
        let prefix = Path::parse(prefix.trim_matches('/')).map_err(|e| bad(e.to_string()))?;
        Ok(Self {
            inner: Arc::new(s3),
            describe: format!("s3://{bucket}/{prefix}"),
            prefix,
            chunk: S3_CHUNK,
        })
    }

    /// Where the files are, for logs (no credentials).
    pub fn describe(&self) -> &str {
        &self.describe
    }

    /// `prefix/ab/abcdef…`: two levels so no directory holds millions.
    fn key(&self, sha256: &str) -> Path {
        self.prefix.clone().join(&sha256[..2]).join(sha256)
    }

    /// The size of the stored file `sha256`, or `None` when there is none.
    pub async fn size_of(&self, sha256: &str) -> Result<Option<u64>, StoreError> {
        if !is_sha256(sha256) {
            return Ok(None);
        }
        match self.inner.head(&self.key(sha256)).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Streams `source` in under a temporary name, hashing as it goes;
    /// refuses it past `expect.max` bytes, checks Meta's size and sha256,
    /// then names it by its hash. Memory stays at a chunk or two whatever
    /// the file's size.
    pub async fn put_stream<S, E>(&self, source: S, expect: Expect<'_>) -> Result<Stored, PutError>
    where
        S: Stream<Item = Result<Bytes, E>> + Send,
        E: std::fmt::Display,
    {
        let tmp = self
            .prefix
            .clone()
            .join("tmp")
            .join(uuid::Uuid::now_v7().simple().to_string());
        let upload = self.inner.put_multipart(&tmp).await?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, self.chunk);
        let written = self.write_all(source, &mut writer, &expect).await;
        let (sha256, size) = match written {
            Ok(done) => done,
            Err(e) => {
                let _ = writer.abort().await;
                return Err(e);
            }
        };
        writer.finish().await?;
        let checked = match (expect.size, expect.sha256) {
            (Some(expected), _) if expected != size => Err(PutError::Size {
                expected,
                actual: size,
            }),
            (_, Some(expected)) if !expected.eq_ignore_ascii_case(&sha256) => {
                Err(PutError::Checksum {
                    expected: expected.to_owned(),
                    actual: sha256.clone(),
                })
            }
            _ => Ok(()),
        };
        if let Err(e) = checked {
            let _ = self.inner.delete(&tmp).await;
            return Err(e);
        }
        // Two workers storing the same file rename the same bytes onto one
        // name: whichever lands last, the object is the same.
        if let Err(e) = self.inner.rename(&tmp, &self.key(&sha256)).await {
            let _ = self.inner.delete(&tmp).await;
            return Err(e.into());
        }
        Ok(Stored { sha256, size })
    }

    async fn write_all<S, E>(
        &self,
        source: S,
        writer: &mut WriteMultipart,
        expect: &Expect<'_>,
    ) -> Result<(String, u64), PutError>
    where
        S: Stream<Item = Result<Bytes, E>> + Send,
        E: std::fmt::Display,
    {
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let mut source = std::pin::pin!(source);
        while let Some(chunk) = source.next().await {
            let chunk = chunk.map_err(|e| PutError::Source(e.to_string()))?;
            size += chunk.len() as u64;
            if size > expect.max {
                return Err(PutError::TooLarge { limit: expect.max });
            }
            hasher.update(&chunk);
            writer.wait_for_capacity(PARTS_IN_FLIGHT).await?;
            writer.put(chunk);
        }
        Ok((hex(&hasher.finalize()), size))
    }

    /// Stores small bytes already in memory (a thumbnail) under their hash.
    pub async fn put_bytes(&self, bytes: Bytes) -> Result<Stored, StoreError> {
        let sha256 = hex(&Sha256::digest(&bytes));
        let size = bytes.len() as u64;
        self.inner
            .put(&self.key(&sha256), PutPayload::from(bytes))
            .await?;
        Ok(Stored { sha256, size })
    }

    /// The stored file `sha256` (the `range` of it when given, which the
    /// caller checked against [`Self::size_of`]), or `None` when absent.
    pub async fn get(
        &self,
        sha256: &str,
        range: Option<Range<u64>>,
    ) -> Result<Option<Fetched>, StoreError> {
        if !is_sha256(sha256) {
            return Ok(None);
        }
        let options = GetOptions {
            range: range.map(GetRange::Bounded),
            ..Default::default()
        };
        match self.inner.get_opts(&self.key(sha256), options).await {
            Ok(got) => Ok(Some(Fetched {
                total: got.meta.size,
                range: got.range.clone(),
                stream: got.into_stream(),
            })),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The whole file in memory, if it is at most `max` bytes (thumbnails
    /// of images: Meta caps them at 5 MB).
    pub async fn read_small(&self, sha256: &str, max: u64) -> Result<Option<Bytes>, StoreError> {
        match self.size_of(sha256).await? {
            Some(size) if size <= max => {}
            _ => return Ok(None),
        }
        match self.get(sha256, None).await? {
            Some(f) => Ok(Some(
                f.stream
                    .try_fold(bytes::BytesMut::new(), |mut acc, b| async move {
                        acc.extend_from_slice(&b);
                        Ok(acc)
                    })
                    .await?
                    .freeze(),
            )),
            None => Ok(None),
        }
    }

    /// The keys (sha256) of every stored object, temporaries left out.
    pub async fn list(&self) -> Result<Vec<String>, StoreError> {
        let prefix = (!self.prefix.as_ref().is_empty()).then_some(&self.prefix);
        let metas: Vec<object_store::ObjectMeta> = self.inner.list(prefix).try_collect().await?;
        let mut keys: Vec<String> = metas
            .into_iter()
            .filter_map(|m| m.location.filename().map(str::to_owned))
            .filter(|name| is_sha256(name))
            .collect();
        keys.sort();
        Ok(keys)
    }

    /// Removes the file `sha256`; a missing one is not an error.
    pub async fn delete(&self, sha256: &str) -> Result<(), StoreError> {
        if !is_sha256(sha256) {
            return Ok(());
        }
        match self.inner.delete(&self.key(sha256)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(parts: &[&'static str]) -> impl Stream<Item = Result<Bytes, std::io::Error>> + use<> {
        let parts: Vec<Result<Bytes, std::io::Error>> = parts
            .iter()
            .map(|p| Ok(Bytes::from_static(p.as_bytes())))
            .collect();
        futures::stream::iter(parts)
    }

    fn sha(b: &[u8]) -> String {
        hex(&Sha256::digest(b))
    }

    fn expect(sha256: Option<&str>, size: Option<u64>, max: u64) -> Expect<'_> {
        Expect { sha256, size, max }
    }

    #[tokio::test]
    async fn local_store_checks_names_and_serves_ranges() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = MediaStore::local(dir.path()).expect("store");
        let body = "hello media world";
        let good = sha(body.as_bytes());
        let stored = store
            .put_stream(
                chunks(&["hello ", "media ", "world"]),
                expect(Some(&good), Some(17), 1024),
            )
            .await
            .expect("stored");
        assert_eq!(stored.sha256, good);
        assert_eq!(store.size_of(&good).await.expect("head"), Some(17));
        let part = store
            .get(&good, Some(6..11))
            .await
            .expect("get")
            .expect("some");
        assert_eq!(part.total, 17);
        let got: Vec<Bytes> = part.stream.try_collect().await.expect("read");
        assert_eq!(got.concat(), b"media");

        let wrong = "0".repeat(64);
        let err = store
            .put_stream(chunks(&[body]), expect(Some(&wrong), Some(17), 1024))
            .await
            .expect_err("checksum");
        assert!(matches!(err, PutError::Checksum { .. }), "{err}");
        let err = store
            .put_stream(chunks(&[body, body]), expect(None, None, 20))
            .await
            .expect_err("too large");
        assert!(matches!(err, PutError::TooLarge { limit: 20 }), "{err}");
        // Nothing but the one good file is left behind, temporaries included.
        let files: Vec<_> = walk(dir.path());
        assert_eq!(files.len(), 1, "{files:?}");
        assert_eq!(store.list().await.expect("list"), vec![good.clone()]);
        store.delete(&good).await.expect("delete");
        assert_eq!(store.size_of(&good).await.expect("head"), None);
        assert!(store.get(&good, None).await.expect("get").is_none());
    }

    fn walk(p: &std::path::Path) -> Vec<std::path::PathBuf> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(p).expect("dir").flatten() {
            if e.path().is_dir() {
                out.extend(walk(&e.path()));
            } else {
                out.push(e.path());
            }
        }
        out
    }

    #[test]
    fn only_hex_hashes_are_keys() {
        assert!(is_sha256(&"a".repeat(64)));
        assert!(!is_sha256(&"A".repeat(64)));
        assert!(!is_sha256("../../etc/passwd"));
        assert!(MediaStore::s3("http://x", &[]).is_err());
        assert!(MediaStore::s3("s3:///p", &[]).is_err());
        assert!(MediaStore::s3("s3://b/p?aws_secret_access_key=x", &[]).is_err());
        assert!(
            MediaStore::s3("s3://b/p?endpoint=http://127.0.0.1:1&allow_http=true", &[]).is_ok()
        );
    }
}
