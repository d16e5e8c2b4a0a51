//! Resumable uploads into the bucket: completed parts plus a local tail.
//!
//! Appends land in the reader's spool like everywhere else. Each append starts at an offset the broadcaster
//! has checkpointed, so the spooled bytes below it are final: from then on they leave for the bucket as whole
//! parts of one multipart upload, in the background, while the client keeps sending. What stays only local is
//! the tail past the last whole part below that offset. When the upload is whole the tail goes up as the last
//! parts, the parts' XXH3 (read back from the spool in order) is checked against what arrived, and the upload
//! is staged exactly as a one-shot stage would have left it: committed by completing the multipart upload,
//! aborted by aborting it.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::protocol::StagedReport;
use common::spool::SpoolFile;
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path as Key;
use xxhash_rust::xxh3::Xxh3;

use super::{put_part, s3_error, Entry, S3Sink, Staged, MAX_PARTS};
use crate::error::ReaderError;

/// A resumable upload's multipart upload, filled from the spool as offsets are confirmed.
pub(super) struct Early {
    name: String,
    key: Key,
    upload_id: Option<String>,
    parts: Vec<PartId>,
    /// Bytes in `parts`.
    uploaded: u64,
    /// XXH3 of those bytes, as read back from the spool.
    hasher: Xxh3,
    /// Why sending parts early failed; the upload cannot finish here then.
    failed: Option<String>,
    touched: Instant,
    keep: Duration,
}

impl std::fmt::Debug for Early {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Early")
            .field("key", &self.key)
            .field("uploaded", &self.uploaded)
            .finish_non_exhaustive()
    }
}

pub(super) type Slot = Arc<tokio::sync::Mutex<Early>>;

impl S3Sink {
    fn early(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, Slot>> {
        self.early.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn new_early(&self, name: &str, keep: Duration) -> Result<Early, ReaderError> {
        Ok(Early {
            name: name.to_owned(),
            key: self.key(name)?,
            upload_id: None,
            parts: Vec::new(),
            uploaded: 0,
            hasher: Xxh3::new(),
            failed: None,
            touched: Instant::now(),
            keep,
        })
    }

    /// Bytes of resumable upload `id` below `offset` are final: whole parts of them leave in the background.
    pub fn confirmed(
        self: &Arc<Self>,
        id: &str,
        name: &str,
        offset: u64,
        path: &Path,
        keep: Duration,
    ) {
        if offset < self.part_size as u64 {
            return;
        }
        let slot = {
            let mut early = self.early();
            match early.get(id) {
                Some(s) => s.clone(),
                None => match self.new_early(name, keep) {
                    Ok(e) => {
                        let s = Arc::new(tokio::sync::Mutex::new(e));
                        early.insert(id.to_owned(), s.clone());
                        s
                    }
                    // The append itself reports a bad name.
                    Err(_) => return,
                },
            }
        };
        let (me, path) = (self.clone(), path.to_path_buf());
        let _running = self.aborts.token();
        tokio::spawn(async move {
            let _running = _running;
            let mut e = slot.lock().await;
            e.touched = Instant::now();
            e.keep = keep;
            if let Err(err) = me.send_parts(&mut e, &path, offset, false).await {
                tracing::warn!(key = %e.key, error = %err, "sending parts of a resumable upload failed");
                e.failed = Some(err.to_string());
            }
        });
    }

    /// Uploads whole parts of the spool from what is already sent up to `upto`; with `last`, the rest too.
    async fn send_parts(
        &self,
        e: &mut Early,
        path: &Path,
        upto: u64,
        last: bool,
    ) -> Result<(), ReaderError> {
        if let Some(why) = &e.failed {
            return Err(ReaderError::S3(why.clone()));
        }
        let size = self.part_size as u64;
        loop {
            let end = if e.uploaded + size <= upto {
                e.uploaded + size
            } else if last && (e.uploaded < upto || e.parts.is_empty()) {
                // The tail; an empty upload still needs one (empty) part.
                upto
            } else {
                return Ok(());
            };
            if e.parts.len() >= MAX_PARTS {
                return Err(ReaderError::TooLarge(MAX_PARTS as u64 * size));
            }
            let upload_id = match &e.upload_id {
                Some(u) => u.clone(),
                None => {
                    let u = self
                        .store
                        .create_multipart(&e.key)
                        .await
                        .map_err(|err| s3_error("cannot start the S3 upload", &err))?;
                    e.upload_id = Some(u.clone());
                    u
                }
            };
            let data = read_range(path.to_path_buf(), e.uploaded, end).await?;
            e.hasher.update(&data);
            let idx = e.parts.len();
            let (_, part) = put_part(self.store.clone(), e.key.clone(), upload_id, idx, data).await;
            let part = part.map_err(|err| s3_error(&format!("S3 part {}", idx + 1), &err))?;
            e.parts.push(part);
            e.uploaded = end;
            if end == upto && last {
                return Ok(());
            }
        }
    }

    /// A resumable upload is whole: the tail goes up, the parts are checked against what arrived, and the
    /// upload is staged for commit.
    pub async fn finish_spooled(
        self: &Arc<Self>,
        id: &str,
        file: SpoolFile,
    ) -> Result<StagedReport, ReaderError> {
        let slot = match self.early().remove(id) {
            Some(s) => s,
            None => Arc::new(tokio::sync::Mutex::new(
                self.new_early(&file.name, Duration::ZERO)?,
            )),
        };
        // A background send may still hold it: its part lands before the tail goes up.
        let mut e = slot.lock().await;
        let sent = self.send_parts(&mut e, &file.path(), file.len, true).await;
        let checked = sent.and_then(|()| {
            if e.name == file.name && e.uploaded == file.len && e.hasher.digest128() == file.xxh3 {
                Ok(())
            } else {
                Err(ReaderError::S3(
                    "the parts sent differ from the bytes that arrived".into(),
                ))
            }
        });
        let upload_id = e.upload_id.clone();
        if let Err(err) = checked {
            if let Some(u) = &upload_id {
                self.abort_upload(&e.key, u).await;
            }
            return Err(err);
        }
        let upload_id =
            upload_id.ok_or_else(|| ReaderError::S3("no multipart upload was made".into()))?;
        let staged = Staged {
            name: file.name.clone(),
            key: e.key.clone(),
            upload_id,
            parts: e.parts.clone(),
            bytes: file.len,
            xxh3: file.xxh3,
            since: Instant::now(),
        };
        let refused = {
            let mut uploads = self.uploads();
            if uploads.contains_key(id) {
                Some(staged)
            } else {
                uploads.insert(id.to_owned(), Entry::Staged(staged));
                None
            }
        };
        if let Some(staged) = refused {
            self.abort_upload(&staged.key, &staged.upload_id).await;
            return Err(ReaderError::UploadIdTaken(id.to_owned()));
        }
        super::count("distributary_reader_bytes_received_total", file.len);
        Ok(StagedReport {
            bytes: file.len,
            sha256: Some(hex::encode(file.sha256)),
            xxh3: Some(common::protocol::xxh3_hex(file.xxh3)),
            ..Default::default()
        })
    }

    /// Drops the parts a resumable upload sent early; returns whether it had any.
    pub(super) async fn abort_early(&self, id: &str) -> bool {
        let slot = self.early().remove(id);
        let Some(slot) = slot else { return false };
        // Waits for a part in flight: none may land after the abort.
        let e = slot.lock().await;
        if let Some(u) = &e.upload_id {
            self.abort_upload(&e.key, u).await;
        }
        true
    }

    /// Aborts early parts of uploads nobody touched for as long as they asked to be kept.
    pub(super) async fn sweep_early(&self) {
        let stale: Vec<String> = self
            .early()
            .iter()
            .filter(|(_, s)| {
                s.try_lock()
                    .is_ok_and(|e| e.touched.elapsed() > e.keep.max(self.staging_ttl))
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in stale {
            tracing::warn!(upload = %id, "resumable S3 upload untouched past its keep time; aborting its parts");
            self.abort_early(&id).await;
        }
    }

    /// Every resumable upload's early parts (shutdown).
    pub(super) fn early_ids(&self) -> Vec<String> {
        self.early().keys().cloned().collect()
    }
}

/// Reads bytes `start..end` of a spool file.
async fn read_range(path: PathBuf, start: u64, end: u64) -> Result<Bytes, ReaderError> {
    tokio::task::spawn_blocking(move || {
        let mut f = std::fs::File::open(&path)?;
        f.seek(SeekFrom::Start(start))?;
        let mut buf = vec![0u8; (end - start) as usize];
        f.read_exact(&mut buf)?;
        Ok::<_, std::io::Error>(Bytes::from(buf))
    })
    .await
    .map_err(std::io::Error::other)?
    .map_err(ReaderError::Io)
}
