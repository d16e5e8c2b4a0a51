//! The disk sink. Bytes stream into `staging/{upload id}`; a commit renames the staged file to
//! `files/{name}` and fsyncs the directory, so a file under `files/` is always complete.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::durable::{self, Staged, StagingWriter};
use common::protocol::StagedReport;
use common::spool::SpoolFile;
use futures_util::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::error::ReaderError;

/// A staged upload waiting for commit or abort.
#[derive(Debug)]
struct Pending {
    name: String,
    staged: Staged,
    since: Instant,
}

/// Committed files and staged uploads of one reader.
#[derive(Debug)]
pub struct DiskStore {
    files_dir: PathBuf,
    staging_dir: PathBuf,
    buffer_size: usize,
    max_upload_bytes: Option<u64>,
    staging_ttl: Duration,
    /// Staged uploads by id; each entry holds an fsynced file that deletes itself when dropped.
    pending: Mutex<HashMap<String, Pending>>,
}

/// What a commit published.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Committed {
    /// The published name.
    pub name: String,
    /// Its length.
    pub bytes: u64,
    /// Its XXH3-128, hex.
    pub xxh3: String,
}

impl DiskStore {
    /// Creates the directories and removes any staging a previous process left behind.
    pub fn open(config: &Config) -> Result<Self, ReaderError> {
        let files_dir = config.data_dir.join("files");
        let staging_dir = config.data_dir.join("staging");
        std::fs::create_dir_all(&files_dir)?;
        let removed = durable::clean_dir(&staging_dir)?;
        if removed > 0 {
            tracing::warn!(removed, dir = %staging_dir.display(), "removed stale staging left by an earlier run");
        }
        Ok(Self {
            files_dir,
            staging_dir,
            buffer_size: config.buffer_size,
            max_upload_bytes: config.max_upload_bytes,
            staging_ttl: config.staging_ttl,
            pending: Mutex::new(HashMap::new()),
        })
    }

    /// Where a committed file lives.
    pub fn file_path(&self, name: &str) -> PathBuf {
        self.files_dir.join(name)
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<String, Pending>> {
        // A panic while holding the lock cannot leave the map inconsistent: entries are inserted whole.
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Phase 1: streams `body` into staging under `id`, fsyncs it, and keeps it pending.
    pub async fn stage<S, E>(
        &self,
        id: &str,
        name: &str,
        body: S,
    ) -> Result<StagedReport, ReaderError>
    where
        S: Stream<Item = Result<Bytes, E>>,
        E: std::fmt::Display,
    {
        if !common::protocol::is_valid_upload_id(id) {
            return Err(ReaderError::BadUploadId);
        }
        common::name::validate_name(name)?;
        if self.pending().contains_key(id) {
            return Err(ReaderError::UploadIdTaken(id.to_owned()));
        }
        let staged = self.write_staging(id, body).await?;
        let report = StagedReport {
            bytes: staged.len,
            sha256: None,
            xxh3: Some(common::protocol::xxh3_hex(staged.xxh3)),
            video: None,
            chunk_sha256: Vec::new(),
        };
        let mut pending = self.pending();
        if pending.contains_key(id) {
            return Err(ReaderError::UploadIdTaken(id.to_owned()));
        }
        pending.insert(
            id.to_owned(),
            Pending {
                name: name.to_owned(),
                staged,
                since: Instant::now(),
            },
        );
        Ok(report)
    }

    async fn write_staging<S, E>(&self, id: &str, body: S) -> Result<Staged, ReaderError>
    where
        S: Stream<Item = Result<Bytes, E>>,
        E: std::fmt::Display,
    {
        let path = self.staging_dir.join(id);
        let mut writer = StagingWriter::create(path, self.buffer_size).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                ReaderError::UploadIdTaken(id.to_owned())
            } else {
                ReaderError::Io(e)
            }
        })?;
        let mut total = 0u64;
        futures_util::pin_mut!(body);
        // Any early return drops `writer`, which deletes the partial staging file.
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| ReaderError::Body(e.to_string()))?;
            total += chunk.len() as u64;
            if let Some(max) = self.max_upload_bytes {
                if total > max {
                    return Err(ReaderError::TooLarge(max));
                }
            }
            writer.write(chunk).await?;
        }
        count_received(total);
        Ok(writer.finish().await?)
    }

    /// A resumable upload spooled whole: its file becomes the staged copy as it is, without a second write.
    pub fn adopt(&self, id: &str, file: SpoolFile) -> Result<StagedReport, ReaderError> {
        let report = StagedReport {
            bytes: file.len,
            sha256: Some(hex::encode(file.sha256)),
            xxh3: Some(common::protocol::xxh3_hex(file.xxh3)),
            ..Default::default()
        };
        let mut pending = self.pending();
        if pending.contains_key(id) {
            return Err(ReaderError::UploadIdTaken(id.to_owned()));
        }
        pending.insert(
            id.to_owned(),
            Pending {
                name: file.name.clone(),
                staged: file.into_staged(),
                since: Instant::now(),
            },
        );
        Ok(report)
    }

    /// Phase 2: publishes the staged upload `id` under its name.
    pub async fn commit(&self, id: &str) -> Result<Committed, ReaderError> {
        if !common::protocol::is_valid_upload_id(id) {
            return Err(ReaderError::BadUploadId);
        }
        let p = self
            .pending()
            .remove(id)
            .ok_or_else(|| ReaderError::UnknownUpload(id.to_owned()))?;
        let committed = Committed {
            bytes: p.staged.len,
            xxh3: common::protocol::xxh3_hex(p.staged.xxh3),
            name: p.name,
        };
        p.staged.commit(self.file_path(&committed.name)).await?;
        metrics::counter!("distributary_reader_commits_total").increment(1);
        Ok(committed)
    }

    /// Discards the staged upload `id`; returns whether there was one.
    pub fn abort(&self, id: &str) -> Result<bool, ReaderError> {
        if !common::protocol::is_valid_upload_id(id) {
            return Err(ReaderError::BadUploadId);
        }
        // Dropping the entry deletes its file.
        let had = self.pending().remove(id).is_some();
        if had {
            metrics::counter!("distributary_reader_aborts_total").increment(1);
        }
        Ok(had)
    }

    /// Stages and commits at once: the seed's single-request contract.
    pub async fn store<S, E>(&self, name: &str, body: S) -> Result<Committed, ReaderError>
    where
        S: Stream<Item = Result<Bytes, E>>,
        E: std::fmt::Display,
    {
        common::name::validate_name(name)?;
        let id = uuid::Uuid::new_v4().simple().to_string();
        let staged = self.write_staging(&id, body).await?;
        let committed = Committed {
            name: name.to_owned(),
            bytes: staged.len,
            xxh3: common::protocol::xxh3_hex(staged.xxh3),
        };
        staged.commit(self.file_path(name)).await?;
        Ok(committed)
    }

    fn sweep(&self) {
        let ttl = self.staging_ttl;
        let expired: Vec<Pending> = {
            let mut pending = self.pending();
            let ids: Vec<String> = pending
                .iter()
                .filter(|(_, p)| p.since.elapsed() > ttl)
                .map(|(id, _)| id.clone())
                .collect();
            ids.iter().filter_map(|id| pending.remove(id)).collect()
        };
        for p in expired {
            tracing::warn!(name = %p.name, path = %p.staged.path().display(), "staged upload expired uncommitted; removed");
        }
    }

    /// Removes staged uploads older than the staging TTL, until `shutdown`.
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

    /// The staging directory (for diagnostics and tests).
    pub fn staging_dir(&self) -> &Path {
        &self.staging_dir
    }
}

/// Counted once per upload, outside the async loop (the metrics macros' temporaries are not `Send`).
fn count_received(bytes: u64) {
    metrics::counter!("distributary_reader_bytes_received_total").increment(bytes);
}
