//! The blob store of one node: published blobs under `blobs/{id}/{file}`, blobs being written under
//! `staging/`, and stream-protocol uploads staged until their commit.
//!
//! A blob file is complete the moment its name exists: it is written and fsynced in `staging/` and renamed
//! into place ([`writer`]); its header carries the payload's SHA-256 (the [`format` module](self::format)),
//! checked before any byte is served.

pub mod format;
pub mod group;
pub mod writer;

use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::blob_digest::{BlobDigest, DigestKind};
use common::digest::Sha256Digest;
use common::protocol::StagedReport;
use futures_util::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::error::StoreError;
use format::{FormatError, Header};
use writer::{BlobWriter, StagedBlob};

/// Blob id under which stream-protocol uploads are published: upload `name` becomes blob `raw/{name}`.
pub const RAW_ID: &str = "raw";

/// A validated blob key, `{id}/{file}`: two names, each safe as one path component.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobKey {
    id: String,
    file: String,
}

impl BlobKey {
    /// Validates both segments with the same rules as every user-chosen name.
    pub fn new(id: &str, file: &str) -> Result<Self, StoreError> {
        common::name::validate_name(id).map_err(|e| StoreError::BadKey(format!("id: {e}")))?;
        common::name::validate_name(file).map_err(|e| StoreError::BadKey(format!("file: {e}")))?;
        Ok(Self {
            id: id.to_owned(),
            file: file.to_owned(),
        })
    }

    /// Parses `id/file`.
    pub fn parse(key: &str) -> Result<Self, StoreError> {
        let Some((id, file)) = key.split_once('/') else {
            return Err(StoreError::BadKey(format!(
                "{key:?} is not of the form {{id}}/{{file}}"
            )));
        };
        Self::new(id, file)
    }

    /// The id segment.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The file segment.
    pub fn file(&self) -> &str {
        &self.file
    }
}

impl fmt::Display for BlobKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.id, self.file)
    }
}

/// A stored blob as listed and as answered to a `PUT`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobInfo {
    /// `id/file`.
    pub key: String,
    /// Payload length.
    pub bytes: u64,
    /// Payload digest in its textual form (a plain SHA-256 in hex, or a windowed digest: see
    /// [`common::blob_digest`]); the field keeps its first name on the wire.
    pub sha256: String,
    /// Seconds since the blob was last written, by this node's clock: housekeeping removes only blobs
    /// older than its grace period, whatever the clocks of other machines say.
    #[serde(default)]
    pub age_secs: u64,
}

impl BlobInfo {
    fn new(key: &BlobKey, header: &Header) -> Self {
        Self {
            key: key.to_string(),
            bytes: header.len,
            sha256: header.digest_text(),
            age_secs: 0,
        }
    }
}

fn age_secs(meta: &fs::Metadata) -> u64 {
    meta.modified()
        .ok()
        .and_then(|m| m.elapsed().ok())
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A blob whose checksum was verified, opened for serving. The handle stays valid even if the blob is
/// replaced or deleted meanwhile, so what is served is exactly what was verified.
#[derive(Debug)]
pub struct VerifiedBlob {
    /// The blob file (header included; the payload starts at [`format::HEADER_LEN`]).
    pub file: tokio::fs::File,
    /// Its header.
    pub header: Header,
}

/// A staged stream-protocol upload waiting for commit or abort.
#[derive(Debug)]
struct Pending {
    key: BlobKey,
    staged: StagedBlob,
    since: Instant,
}

/// The blobs and staged uploads of one node.
#[derive(Debug)]
pub struct BlobStore {
    blobs_dir: PathBuf,
    staging_dir: PathBuf,
    buffer_size: usize,
    max_blob_bytes: Option<u64>,
    staging_ttl: Duration,
    /// Staged uploads by upload id; each entry holds an fsynced file that deletes itself when dropped.
    pending: Mutex<HashMap<String, Pending>>,
    /// Directory fsyncs shared by blobs published at once.
    syncs: Arc<group::DirSyncs>,
}

impl BlobStore {
    /// Creates the directories and removes any staging a previous process left behind (a crash mid-write
    /// never publishes anything).
    pub fn open(config: &Config) -> Result<Self, StoreError> {
        let blobs_dir = config.data_dir.join("blobs");
        let staging_dir = config.data_dir.join("staging");
        fs::create_dir_all(&blobs_dir)?;
        let removed = common::durable::clean_dir(&staging_dir)?;
        if removed > 0 {
            tracing::warn!(removed, dir = %staging_dir.display(), "removed stale staging left by an earlier run");
        }
        Ok(Self {
            blobs_dir,
            staging_dir,
            buffer_size: config.buffer_size,
            max_blob_bytes: config.max_blob_bytes,
            staging_ttl: config.staging_ttl,
            pending: Mutex::new(HashMap::new()),
            syncs: Arc::default(),
        })
    }

    /// Where the blob `key` lives.
    pub fn blob_path(&self, key: &BlobKey) -> PathBuf {
        self.blobs_dir.join(&key.id).join(&key.file)
    }

    /// The staging directory.
    pub fn staging_dir(&self) -> &Path {
        &self.staging_dir
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<String, Pending>> {
        // A panic while holding the lock cannot leave the map inconsistent: entries are inserted whole.
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Streams `body` into a new staging file of the `kind` format and fsyncs it. Any error drops the
    /// writer, which deletes the partial file.
    async fn write_staging<S, E>(
        &self,
        body: S,
        kind: DigestKind,
        expected: Option<BlobDigest>,
    ) -> Result<StagedBlob, StoreError>
    where
        S: Stream<Item = Result<Bytes, E>>,
        E: fmt::Display,
    {
        let path = self
            .staging_dir
            .join(uuid::Uuid::new_v4().simple().to_string());
        let mut writer = BlobWriter::create(path, self.buffer_size, kind)?;
        let mut total = 0u64;
        futures_util::pin_mut!(body);
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| StoreError::Body(e.to_string()))?;
            total += chunk.len() as u64;
            if let Some(max) = self.max_blob_bytes {
                if total > max {
                    return Err(StoreError::TooLarge(max));
                }
            }
            writer.write(chunk).await?;
        }
        let staged = writer.finish().await?;
        if let Some(expected) = expected {
            if expected != staged.header.digest {
                // Dropping `staged` deletes it: nothing is stored.
                return Err(StoreError::DigestMismatch {
                    expected: expected.to_string(),
                    actual: staged.header.digest_text(),
                });
            }
        }
        Ok(staged)
    }

    /// Stores `body` as blob `key`, replacing any previous version atomically. Durable when it returns.
    /// The blob gets the kind of digest `expected` is (a plain SHA-256 when none is given); when the body's
    /// digest differs from `expected`, nothing is stored.
    pub async fn put<S, E>(
        &self,
        key: &BlobKey,
        body: S,
        expected: Option<BlobDigest>,
    ) -> Result<BlobInfo, StoreError>
    where
        S: Stream<Item = Result<Bytes, E>>,
        E: fmt::Display,
    {
        let kind = expected.map_or(DigestKind::Sha256, |d| d.kind());
        let staged = self.write_staging(body, kind, expected).await?;
        let info = BlobInfo::new(key, &staged.header);
        staged
            .publish(self.blob_path(key), self.syncs.clone())
            .await?;
        Ok(info)
    }

    /// Opens blob `key` for serving its payload: a windowed blob after a check of its header (the reader
    /// checks every window against the table), a plain one after hashing its payload against the stored
    /// checksum. A damaged blob is [`StoreError::Corrupt`] (and logged): the caller should read a replica.
    pub async fn open_verified(&self, key: &BlobKey) -> Result<VerifiedBlob, StoreError> {
        self.open_checked(key, format::check_for_serving).await
    }

    /// The window table of blob `key` (see [`common::blob_digest`]), with its header; a plain blob has
    /// none and answers [`StoreError::NoWindows`].
    pub async fn window_table(&self, key: &BlobKey) -> Result<(Header, Vec<u8>), StoreError> {
        let blob = self.open_header(key).await?;
        if !blob.header.windowed() {
            return Err(StoreError::NoWindows(key.to_string()));
        }
        let header = blob.header;
        let file = blob.file.into_std().await;
        let table = tokio::task::spawn_blocking(move || format::read_table(&file, &header))
            .await
            .map_err(io::Error::other)??;
        Ok((header, table))
    }

    /// Opens blob `key` checking only its header against the file's size, without hashing the payload:
    /// what a `HEAD` needs (it sends no payload byte). Payloads are checked when they are read, at write,
    /// and by the scrub; a `HEAD` that hashed would cost a whole read of the blob for a few headers.
    pub async fn open_header(&self, key: &BlobKey) -> Result<VerifiedBlob, StoreError> {
        self.open_checked(key, format::read_header).await
    }

    /// Opens blob `key` on a blocking thread and runs `check` on it (header only, or the whole payload).
    async fn open_checked(
        &self,
        key: &BlobKey,
        check: fn(&mut fs::File) -> io::Result<Result<format::Header, FormatError>>,
    ) -> Result<VerifiedBlob, StoreError> {
        let path = self.blob_path(key);
        let checked = tokio::task::spawn_blocking(move || -> io::Result<_> {
            let mut file = match fs::File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(e),
            };
            if !file.metadata()?.is_file() {
                return Ok(None);
            }
            let verdict = check(&mut file)?;
            Ok(Some((file, verdict)))
        })
        .await
        .map_err(io::Error::other)??;
        match checked {
            None => Err(StoreError::NotFound(key.to_string())),
            Some((file, Ok(header))) => Ok(VerifiedBlob {
                file: tokio::fs::File::from_std(file),
                header,
            }),
            Some((_, Err(e))) => Err(self.corrupt(key, e)),
        }
    }

    fn corrupt(&self, key: &BlobKey, e: FormatError) -> StoreError {
        tracing::error!(key = %key, path = %self.blob_path(key).display(), error = %e, "corrupt blob: checksum verification failed");
        StoreError::Corrupt {
            key: key.to_string(),
            reason: e.to_string(),
        }
    }

    /// Deletes blob `key`, and its `{id}` directory when that was the last blob in it. Durable when it
    /// returns.
    pub async fn delete(&self, key: &BlobKey) -> Result<(), StoreError> {
        self.delete_if_older(key, None).await
    }

    /// Deletes blob `key` only if it was last written at least `min_age` ago
    /// ([`StoreError::TooYoung`] otherwise): housekeeping decides from a listing taken earlier, and a blob
    /// written again since then must survive that decision.
    pub async fn delete_if_older(
        &self,
        key: &BlobKey,
        min_age: Option<Duration>,
    ) -> Result<(), StoreError> {
        let path = self.blob_path(key);
        let blobs_dir = self.blobs_dir.clone();
        let found = tokio::task::spawn_blocking(move || -> io::Result<Option<bool>> {
            if let Some(min) = min_age {
                match fs::metadata(&path) {
                    Ok(m) if age_secs(&m) < min.as_secs() => return Ok(None),
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Some(false)),
                    Err(e) => return Err(e),
                }
            }
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Some(false)),
                Err(e) => return Err(e),
            }
            let dir = path.parent().unwrap_or(&blobs_dir);
            // Fails (harmlessly) while other blobs remain; a concurrent put retries its rename if it
            // loses this race.
            if fs::remove_dir(dir).is_ok() {
                common::durable::sync_dir(&blobs_dir)?;
            } else {
                common::durable::sync_dir(dir)?;
            }
            Ok(Some(true))
        })
        .await
        .map_err(io::Error::other)??;
        match found {
            Some(true) => Ok(()),
            Some(false) => Err(StoreError::NotFound(key.to_string())),
            None => Err(StoreError::TooYoung(key.to_string())),
        }
    }

    /// Every blob whose key starts with `prefix`, sorted by key, from the headers (no hashing). Files with
    /// an unreadable header are logged and left out.
    pub async fn list(&self, prefix: &str) -> Result<Vec<BlobInfo>, StoreError> {
        self.list_checked(prefix, false).await
    }

    /// Like [`BlobStore::list`]; with `verify` every payload is hashed against its header first (a scrub)
    /// and a blob that fails is left out, so whoever repairs the ring sees it as missing and rewrites it.
    pub async fn list_checked(
        &self,
        prefix: &str,
        verify: bool,
    ) -> Result<Vec<BlobInfo>, StoreError> {
        let blobs_dir = self.blobs_dir.clone();
        let prefix = prefix.to_owned();
        let (mut found, damaged) =
            tokio::task::spawn_blocking(move || list_blocking(&blobs_dir, &prefix, verify))
                .await
                .map_err(io::Error::other)??;
        for (key, e) in damaged {
            metrics::counter!("distributary_blob_corrupt_total").increment(1);
            tracing::error!(key = %key, error = %e, "corrupt blob left out of the listing");
        }
        found.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(found)
    }

    /// Stream protocol, phase 1: streams `body` into staging under upload `upload_id`, fsyncs it, and keeps
    /// it pending until [`BlobStore::commit`] or [`BlobStore::abort`].
    pub async fn stage<S, E>(
        &self,
        upload_id: &str,
        name: &str,
        body: S,
        expected: Option<Sha256Digest>,
    ) -> Result<StagedReport, StoreError>
    where
        S: Stream<Item = Result<Bytes, E>>,
        E: fmt::Display,
    {
        if !common::protocol::is_valid_upload_id(upload_id) {
            return Err(StoreError::BadUploadId);
        }
        let key = BlobKey::new(RAW_ID, name)?;
        if self.pending().contains_key(upload_id) {
            return Err(StoreError::UploadIdTaken(upload_id.to_owned()));
        }
        // The stream protocol reports the upload's own SHA-256, which the broadcaster compares with its.
        let staged = self
            .write_staging(body, DigestKind::Sha256, expected.map(BlobDigest::Sha256))
            .await?;
        let report = StagedReport {
            bytes: staged.header.len,
            sha256: Some(staged.header.digest_text()),
            xxh3: None,
            video: None,
            chunk_sha256: Vec::new(),
        };
        let mut pending = self.pending();
        // Two stages of one id may race; the first to finish wins and the other's staging is dropped.
        if pending.contains_key(upload_id) {
            return Err(StoreError::UploadIdTaken(upload_id.to_owned()));
        }
        pending.insert(
            upload_id.to_owned(),
            Pending {
                key,
                staged,
                since: Instant::now(),
            },
        );
        Ok(report)
    }

    /// Stream protocol, phase 2: publishes the staged upload as blob `raw/{name}`.
    pub async fn commit(&self, upload_id: &str) -> Result<BlobInfo, StoreError> {
        if !common::protocol::is_valid_upload_id(upload_id) {
            return Err(StoreError::BadUploadId);
        }
        let p = self
            .pending()
            .remove(upload_id)
            .ok_or_else(|| StoreError::UnknownUpload(upload_id.to_owned()))?;
        let info = BlobInfo::new(&p.key, &p.staged.header);
        p.staged
            .publish(self.blob_path(&p.key), self.syncs.clone())
            .await?;
        Ok(info)
    }

    /// Discards the staged upload `upload_id`; returns whether there was one (aborting twice is fine).
    pub fn abort(&self, upload_id: &str) -> Result<bool, StoreError> {
        if !common::protocol::is_valid_upload_id(upload_id) {
            return Err(StoreError::BadUploadId);
        }
        // Dropping the entry deletes its file.
        Ok(self.pending().remove(upload_id).is_some())
    }

    /// Drops staged uploads older than the staging TTL (their broadcaster never came back to commit).
    fn sweep(&self) {
        let ttl = self.staging_ttl;
        let expired: Vec<(String, Pending)> = {
            let mut pending = self.pending();
            let ids: Vec<String> = pending
                .iter()
                .filter(|(_, p)| p.since.elapsed() > ttl)
                .map(|(id, _)| id.clone())
                .collect();
            ids.into_iter()
                .filter_map(|id| pending.remove(&id).map(|p| (id, p)))
                .collect()
        };
        // Files are deleted here, outside the lock.
        for (id, p) in expired {
            tracing::warn!(upload_id = %id, key = %p.key, "staged upload expired uncommitted; removed");
        }
    }

    /// Removes expired staged uploads until `shutdown`.
    pub fn spawn_sweeper(self: Arc<Self>, shutdown: CancellationToken) {
        let period =
            (self.staging_ttl / 4).clamp(Duration::from_millis(100), Duration::from_secs(60));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tick.tick() => self.sweep(),
                }
            }
        });
    }
}

/// Blobs found by a listing, and damaged files with why.
type Listing = (Vec<BlobInfo>, Vec<(String, FormatError)>);

fn list_blocking(blobs_dir: &Path, prefix: &str, verify: bool) -> io::Result<Listing> {
    let mut found = Vec::new();
    let mut damaged = Vec::new();
    for dir in fs::read_dir(blobs_dir)? {
        let dir = dir?;
        let Some(id) = dir.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        // Skip whole directories that cannot hold a matching key: `id/` must be a prefix of the wanted
        // prefix, or the other way round.
        let id_slash = format!("{id}/");
        if !(id_slash.starts_with(prefix) || prefix.starts_with(&id_slash)) {
            continue;
        }
        if !dir.file_type()?.is_dir() {
            continue;
        }
        let entries = match fs::read_dir(dir.path()) {
            Ok(e) => e,
            // Removed by a concurrent delete of its last blob.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let Some(file) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            let key = format!("{id}/{file}");
            if !key.starts_with(prefix) {
                continue;
            }
            let mut f = match fs::File::open(entry.path()) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            let meta = f.metadata()?;
            if !meta.is_file() {
                continue;
            }
            let checked = if verify {
                format::verify(&mut f)?
            } else {
                format::read_header(&mut f)?
            };
            match checked {
                Ok(header) => found.push(BlobInfo {
                    key,
                    bytes: header.len,
                    sha256: header.digest_text(),
                    age_secs: age_secs(&meta),
                }),
                Err(e) => damaged.push((key, e)),
            }
        }
    }
    Ok((found, damaged))
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use sha2::{Digest, Sha256};
    use tokio::io::{AsyncReadExt, AsyncSeekExt};

    use super::*;
    use crate::store::format::HEADER_LEN;

    fn store(dir: &Path) -> BlobStore {
        let config = Config::from_vars([(
            "STORAGE_NODE_DATA_DIR".to_string(),
            dir.display().to_string(),
        )])
        .expect("config");
        BlobStore::open(&config).expect("open")
    }

    fn body(parts: &[&'static [u8]]) -> impl Stream<Item = Result<Bytes, Infallible>> {
        let parts: Vec<Result<Bytes, Infallible>> =
            parts.iter().map(|p| Ok(Bytes::from_static(p))).collect();
        futures_util::stream::iter(parts)
    }

    fn key(k: &str) -> BlobKey {
        BlobKey::parse(k).expect("key")
    }

    async fn payload(store: &BlobStore, k: &str) -> Vec<u8> {
        let mut blob = store.open_verified(&key(k)).await.expect("verified");
        // Verification leaves the handle at the end of the file.
        blob.file
            .seek(std::io::SeekFrom::Start(HEADER_LEN))
            .await
            .expect("seek");
        let mut payload = Vec::new();
        blob.file.read_to_end(&mut payload).await.expect("read");
        assert_eq!(payload.len() as u64, blob.header.len);
        payload
    }

    #[test]
    fn keys() {
        assert_eq!(
            key("v1/chunk-0-00001.m4s").to_string(),
            "v1/chunk-0-00001.m4s"
        );
        for bad in ["", "a", "/a", "a/", "../a", "a/..", "a/b/c", "./a"] {
            assert!(
                matches!(BlobKey::parse(bad), Err(StoreError::BadKey(_))),
                "{bad:?}"
            );
        }
        assert!(BlobKey::new(&"x".repeat(256), "f").is_err());
    }

    #[tokio::test]
    async fn put_get_replace_delete() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = store(dir.path());
        let info = s
            .put(&key("v/a"), body(&[b"hello ", b"world"]), None)
            .await
            .expect("put");
        assert_eq!(info.key, "v/a");
        assert_eq!(info.bytes, 11);
        assert_eq!(info.sha256, hex::encode(Sha256::digest(b"hello world")));
        assert_eq!(payload(&s, "v/a").await, b"hello world");

        s.put(&key("v/a"), body(&[b"bye"]), None)
            .await
            .expect("replace");
        assert_eq!(payload(&s, "v/a").await, b"bye");
        s.put(&key("v/b"), body(&[]), None)
            .await
            .expect("empty blob");
        assert_eq!(payload(&s, "v/b").await, b"");

        s.delete(&key("v/a")).await.expect("delete");
        assert!(matches!(
            s.delete(&key("v/a")).await,
            Err(StoreError::NotFound(_))
        ));
        assert!(matches!(
            s.open_verified(&key("v/a")).await,
            Err(StoreError::NotFound(_))
        ));
        assert!(dir.path().join("blobs/v").is_dir(), "v/b is still there");
        s.delete(&key("v/b")).await.expect("delete");
        assert!(
            !dir.path().join("blobs/v").exists(),
            "the empty id directory is removed"
        );
        assert_eq!(fs::read_dir(s.staging_dir()).expect("ls").count(), 0);
    }

    #[tokio::test]
    async fn digest_mismatch_and_limits_store_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = store(dir.path());
        let r = s
            .put(
                &key("v/a"),
                body(&[b"abc"]),
                Some(BlobDigest::Sha256([0; 32])),
            )
            .await;
        assert!(matches!(r, Err(StoreError::DigestMismatch { .. })), "{r:?}");
        let r = s
            .put(
                &key("v/a"),
                body(&[b"abc"]),
                Some(BlobDigest::Windowed([0; 32])),
            )
            .await;
        assert!(matches!(r, Err(StoreError::DigestMismatch { .. })), "{r:?}");
        let good = BlobDigest::Sha256(Sha256::digest(b"abc").into());
        s.put(&key("v/b"), body(&[b"abc"]), Some(good))
            .await
            .expect("matching digest");
        let windowed = BlobDigest::compute(DigestKind::Windowed, b"abc");
        let info = s
            .put(&key("v/w"), body(&[b"a", b"bc"]), Some(windowed))
            .await
            .expect("matching windowed digest");
        assert_eq!(info.sha256, windowed.to_string());
        let (header, table) = s.window_table(&key("v/w")).await.expect("table");
        assert_eq!(header.len, 3);
        assert_eq!(table.len(), 32);
        assert!(matches!(
            s.window_table(&key("v/b")).await,
            Err(StoreError::NoWindows(_))
        ));
        assert!(!s.blob_path(&key("v/a")).exists());
        assert_eq!(fs::read_dir(s.staging_dir()).expect("ls").count(), 0);

        let config = Config::from_vars([
            (
                "STORAGE_NODE_DATA_DIR".to_string(),
                dir.path().display().to_string(),
            ),
            ("STORAGE_NODE_MAX_BLOB_BYTES".to_string(), "4".to_string()),
        ])
        .expect("config");
        let small = BlobStore::open(&config).expect("open");
        let r = small.put(&key("v/c"), body(&[b"abc", b"de"]), None).await;
        assert!(matches!(r, Err(StoreError::TooLarge(4))), "{r:?}");
        assert!(!small.blob_path(&key("v/c")).exists());
        assert_eq!(fs::read_dir(small.staging_dir()).expect("ls").count(), 0);
    }

    #[tokio::test]
    async fn corruption_is_detected() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = store(dir.path());
        s.put(&key("v/a"), body(&[b"hello world"]), None)
            .await
            .expect("put");
        let path = s.blob_path(&key("v/a"));
        let mut bytes = fs::read(&path).expect("read");
        bytes[HEADER_LEN as usize + 3] ^= 0x20;
        fs::write(&path, &bytes).expect("write");
        let r = s.open_verified(&key("v/a")).await;
        assert!(
            matches!(&r, Err(StoreError::Corrupt { key, reason }) if key == "v/a" && reason.contains("computed")),
            "{r:?}"
        );
        // The header is intact, so the listing still names it (listing does not hash).
        assert_eq!(s.list("").await.expect("list").len(), 1);
        fs::write(&path, b"garbage").expect("write");
        assert!(s.list("").await.expect("list").is_empty());
        assert!(matches!(
            s.open_verified(&key("v/a")).await,
            Err(StoreError::Corrupt { .. })
        ));
    }

    #[tokio::test]
    async fn listing_by_prefix() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = store(dir.path());
        for k in ["b/2", "a/1", "ab/1", "a/2", "b/1"] {
            s.put(&key(k), body(&[b"x"]), None).await.expect("put");
        }
        let keys = |v: Vec<BlobInfo>| v.into_iter().map(|b| b.key).collect::<Vec<_>>();
        assert_eq!(
            keys(s.list("").await.expect("list")),
            ["a/1", "a/2", "ab/1", "b/1", "b/2"]
        );
        assert_eq!(
            keys(s.list("a").await.expect("list")),
            ["a/1", "a/2", "ab/1"]
        );
        assert_eq!(keys(s.list("a/").await.expect("list")), ["a/1", "a/2"]);
        assert_eq!(keys(s.list("b/2").await.expect("list")), ["b/2"]);
        assert!(s.list("c").await.expect("list").is_empty());
        let one = &s.list("a/1").await.expect("list")[0];
        assert_eq!(one.bytes, 1);
        assert_eq!(one.sha256, hex::encode(Sha256::digest(b"x")));
    }

    #[tokio::test]
    async fn stream_protocol() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Arc::new(store(dir.path()));
        let id = "0123456789abcdef0123456789abcdef";
        let report = s
            .stage(id, "movie.iso", body(&[b"abc"]), None)
            .await
            .expect("stage");
        assert_eq!(report.bytes, 3);
        assert!(matches!(
            s.stage(id, "other", body(&[b"x"]), None).await,
            Err(StoreError::UploadIdTaken(_))
        ));
        assert!(
            !s.blob_path(&key("raw/movie.iso")).exists(),
            "not visible before commit"
        );
        let info = s.commit(id).await.expect("commit");
        assert_eq!(info.key, "raw/movie.iso");
        assert_eq!(payload(&s, "raw/movie.iso").await, b"abc");
        assert!(matches!(
            s.commit(id).await,
            Err(StoreError::UnknownUpload(_))
        ));

        let id2 = "fedcba9876543210fedcba9876543210";
        s.stage(id2, "gone", body(&[b"abc"]), None)
            .await
            .expect("stage");
        assert!(s.abort(id2).expect("abort"));
        assert!(!s.abort(id2).expect("abort twice"));
        assert!(matches!(
            s.commit(id2).await,
            Err(StoreError::UnknownUpload(_))
        ));
        assert_eq!(fs::read_dir(s.staging_dir()).expect("ls").count(), 0);

        assert!(matches!(
            s.stage("nope", "x", body(&[]), None).await,
            Err(StoreError::BadUploadId)
        ));
        assert!(matches!(
            s.stage(id2, "..", body(&[]), None).await,
            Err(StoreError::BadKey(_))
        ));
        assert!(matches!(s.abort("../x"), Err(StoreError::BadUploadId)));
    }

    #[tokio::test]
    async fn expired_uploads_are_swept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = Config::from_vars([
            (
                "STORAGE_NODE_DATA_DIR".to_string(),
                dir.path().display().to_string(),
            ),
            ("STORAGE_NODE_STAGING_TTL_SECS".to_string(), "1".to_string()),
        ])
        .expect("config");
        let s = BlobStore::open(&config).expect("open");
        let id = "0123456789abcdef0123456789abcdef";
        s.stage(id, "x", body(&[b"abc"]), None)
            .await
            .expect("stage");
        s.sweep();
        assert_eq!(
            fs::read_dir(s.staging_dir()).expect("ls").count(),
            1,
            "not yet expired"
        );
        tokio::time::sleep(Duration::from_millis(1100)).await;
        s.sweep();
        assert_eq!(fs::read_dir(s.staging_dir()).expect("ls").count(), 0);
        assert!(matches!(
            s.commit(id).await,
            Err(StoreError::UnknownUpload(_))
        ));
    }

    #[tokio::test]
    async fn open_cleans_stale_staging() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::create_dir_all(dir.path().join("staging")).expect("mkdir");
        fs::write(dir.path().join("staging/leftover"), b"partial").expect("write");
        let s = store(dir.path());
        assert_eq!(fs::read_dir(s.staging_dir()).expect("ls").count(), 0);
    }
}
