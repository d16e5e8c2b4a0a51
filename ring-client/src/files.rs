//! Raw uploads on the ring: the stream is cut into fixed-size chunks stored as blobs
//! `raw.{upload id}/{index:08}` with R replicas. The upload becomes visible only when its [`FileRecord`] is
//! written to the metadata store (the commit); an abort deletes the chunks. Reading streams the chunks back
//! in order from whichever replica answers.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use common::protocol::StagedReport;
use futures_util::stream::FuturesUnordered;
use futures_util::{Stream, StreamExt};
use meta::FileRecord;

use super::nodes::BlobKey;
use super::read::BlobStream;
use super::{Cluster, RingError};

/// Chunks being written to the ring at once per upload; with the chunk size this bounds the lane's memory.
const CHUNKS_IN_FLIGHT: usize = 2;

/// The blob holding chunk `index` of upload `upload_id`.
pub fn chunk_key(upload_id: &str, index: u64) -> BlobKey {
    BlobKey::new(format!("raw.{upload_id}"), format!("{index:08}"))
}

/// The blob holding the first `len` bytes of chunk `index` of a resumable upload at a checkpoint. Named by
/// its length, so a later checkpoint never overwrites one a record names: a crash between writing a longer
/// tail and recording it leaves the recorded one intact.
pub fn tail_key(upload_id: &str, index: u64, len: u64) -> BlobKey {
    BlobKey::new(format!("raw.{upload_id}"), format!("{index:08}-{len}"))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

/// One chunk being filled, in an anonymous memory mapping of its own: its pages are touched only as it
/// fills, and the whole of it goes back to the system the moment the last copy of the chunk is dropped (after
/// its replicas are written). Multi-MiB heap blocks would instead stay with the allocator (glibc raises its
/// mmap threshold after the first such free and keeps later ones in its arenas), which held the broadcaster
/// at 40 MiB and more during ring uploads.
#[derive(Default)]
struct ChunkBuf {
    map: Option<memmap2::MmapMut>,
    len: usize,
}

impl ChunkBuf {
    fn len(&self) -> usize {
        self.len
    }

    /// Appends `data` (the caller keeps the total within `size`).
    fn extend(&mut self, data: &[u8], size: usize) -> Result<(), RingError> {
        if data.is_empty() {
            return Ok(());
        }
        let map = match &mut self.map {
            Some(m) => m,
            None => self.map.insert(
                memmap2::MmapMut::map_anon(size)
                    .map_err(|e| RingError::Aborted(format!("chunk buffer: {e}")))?,
            ),
        };
        map[self.len..self.len + data.len()].copy_from_slice(data);
        self.len += data.len();
        Ok(())
    }

    fn freeze(self) -> Bytes {
        match self.map {
            Some(map) => Bytes::from_owner(map).slice(..self.len),
            None => Bytes::new(),
        }
    }
}

impl Cluster {
    /// Phase 1 for the ring: stores every chunk of the stream with R replicas.
    pub async fn stage_chunks<S>(
        self: Arc<Self>,
        upload_id: String,
        chunks: S,
    ) -> Result<StagedReport, RingError>
    where
        S: Stream<Item = std::io::Result<Bytes>>,
    {
        let mut hasher = xxhash_rust::xxh3::Xxh3::new();
        let (total, digests) = self
            .write_chunks(&upload_id, 0, BytesMut::new(), chunks, false, &mut |b| {
                hasher.update(b)
            })
            .await?;
        Ok(StagedReport {
            bytes: total,
            sha256: None,
            xxh3: Some(common::protocol::xxh3_hex(hasher.digest128())),
            video: None,
            chunk_sha256: digests,
        })
    }

    /// An append to a resumable upload: `digests` are the chunks written so far, which hold `offset`
    /// bytes; a partial last chunk lives under its [`tail_key`] and is read back, checked, and completed.
    /// Whole chunks go under their [`chunk_key`], a partial one at the end under its tail key. Answers the
    /// bytes now held and every chunk's digest.
    pub async fn append_chunks<S>(
        self: Arc<Self>,
        upload_id: String,
        mut digests: Vec<String>,
        offset: u64,
        chunks: S,
    ) -> Result<(u64, Vec<String>), RingError>
    where
        S: Stream<Item = std::io::Result<Bytes>>,
    {
        let size = self.chunk_size as u64;
        let (full, tail) = (offset / size, offset % size);
        let want = full + u64::from(tail > 0);
        if digests.len() as u64 != want {
            return Err(RingError::Aborted(format!(
                "{} chunk digests recorded for {offset} bytes ({want} chunks)",
                digests.len()
            )));
        }
        let mut prefix = BytesMut::new();
        if tail > 0 {
            let key = tail_key(&upload_id, full, tail);
            let part = self
                .get_verified(&key, digests.get(full as usize).map(String::as_str))
                .await?;
            if part.len() as u64 != tail {
                return Err(RingError::Aborted(format!(
                    "partial chunk {key} holds {} bytes, expected {tail}",
                    part.len()
                )));
            }
            prefix.extend_from_slice(&part);
        }
        let (taken, written) = self
            .write_chunks(&upload_id, full, prefix, chunks, true, &mut |_| {})
            .await?;
        if !written.is_empty() {
            digests.truncate(full as usize);
            digests.extend(written);
        }
        Ok((offset + taken, digests))
    }

    /// Writes the stream as chunks from `index` on, `prefix` being the start of chunk `index` already held;
    /// with `tails`, a partial last chunk goes under its [`tail_key`]. Answers the bytes taken from the
    /// stream and the digest of every chunk written, from `index` on.
    #[allow(clippy::too_many_arguments)]
    async fn write_chunks<S>(
        self: &Arc<Self>,
        upload_id: &str,
        mut index: u64,
        prefix: BytesMut,
        chunks: S,
        tails: bool,
        seen: &mut (dyn FnMut(&[u8]) + Send),
    ) -> Result<(u64, Vec<String>), RingError>
    where
        S: Stream<Item = std::io::Result<Bytes>>,
    {
        let chunk_size = self.chunk_size;
        let first = index;
        let mut buf = ChunkBuf::default();
        buf.extend(&prefix, chunk_size)?;
        let mut total = 0u64;
        let mut in_flight = FuturesUnordered::new();
        // Each chunk's digest, recorded at commit so every read can be checked against it.
        let mut digests: Vec<String> = Vec::new();
        let mut note = |placed: (u64, crate::Placed)| {
            let (i, p) = placed;
            let i = (i - first) as usize;
            if digests.len() <= i {
                digests.resize(i + 1, String::new());
            }
            digests[i] = p.digest;
        };
        futures_util::pin_mut!(chunks);
        let put = |data: Bytes, index: u64| {
            let me = self.clone();
            let key = if tails && data.len() < chunk_size {
                tail_key(upload_id, index, data.len() as u64)
            } else {
                chunk_key(upload_id, index)
            };
            // A task of its own, so a chunk is written while the next one is read (a future in the set
            // below would only move while the set is polled); aborted if the stage is dropped.
            let task = tokio::spawn(async move {
                me.put_blob(&key, data)
                    .await
                    .map(|p| (index, p))
                    .inspect_err(|e| {
                        tracing::warn!(%key, chunk = index, error = %e, "chunk write failed");
                    })
            });
            let task = tokio_util::task::AbortOnDropHandle::new(task);
            async move {
                task.await
                    .map_err(|e| RingError::Aborted(format!("chunk write task: {e}")))?
            }
        };
        while let Some(piece) = chunks.next().await {
            let piece = piece.map_err(|e| RingError::Aborted(e.to_string()))?;
            seen(&piece);
            total += piece.len() as u64;
            let mut rest = &piece[..];
            while !rest.is_empty() {
                let take = rest.len().min(chunk_size - buf.len());
                buf.extend(&rest[..take], chunk_size)?;
                rest = &rest[take..];
                if buf.len() == chunk_size {
                    let data = std::mem::take(&mut buf).freeze();
                    in_flight.push(put(data, index));
                    index += 1;
                    while in_flight.len() >= CHUNKS_IN_FLIGHT {
                        if let Some(r) = in_flight.next().await {
                            note(r?);
                        }
                    }
                }
            }
        }
        if buf.len() > 0 {
            in_flight.push(put(buf.freeze(), index));
        }
        while let Some(r) = in_flight.next().await {
            note(r?);
        }
        Ok((total, digests))
    }

    /// A resumable upload of `size` bytes is whole: its partial last chunk, if any, is copied from its tail
    /// blob (checked against `digests`) to where a file's chunk lives, and the tail blob removed.
    pub async fn seal_chunks(
        &self,
        upload_id: &str,
        size: u64,
        digests: &[String],
    ) -> Result<(), RingError> {
        let chunk = self.chunk_size as u64;
        let (last, tail) = (size / chunk, size % chunk);
        if tail == 0 {
            return Ok(());
        }
        let key = tail_key(upload_id, last, tail);
        let expected = digests.get(last as usize).map(String::as_str);
        let data = self.get_verified(&key, expected).await?;
        let placed = self.put_blob(&chunk_key(upload_id, last), data).await?;
        if Some(placed.digest.as_str()) != expected {
            return Err(RingError::Aborted(format!(
                "the last chunk of {upload_id} changed while it was sealed"
            )));
        }
        self.delete_blob(&key).await;
        Ok(())
    }

    /// Phase 2 for the ring: publishes the upload by writing its record; the chunks of a version it replaces
    /// are deleted afterwards.
    pub async fn commit_file(
        self: &Arc<Self>,
        name: &str,
        upload_id: &str,
        size: u64,
        sha256: &str,
        chunk_sha256: Vec<String>,
    ) -> Result<(), RingError> {
        let chunk_size = self.chunk_size as u64;
        if chunk_sha256.len() as u64 != size.div_ceil(chunk_size)
            || chunk_sha256.iter().any(String::is_empty)
        {
            return Err(RingError::Aborted(format!(
                "{} chunk digests for {} chunks",
                chunk_sha256.len(),
                size.div_ceil(chunk_size)
            )));
        }
        let record = FileRecord {
            name: name.to_owned(),
            size,
            sha256: sha256.to_owned(),
            chunk_size,
            chunks: size.div_ceil(chunk_size),
            upload_id: upload_id.to_owned(),
            created_unix_ms: now_ms(),
            chunk_sha256,
        };
        if let Some(old) = self.meta.put_file(&record).await? {
            if old.upload_id != upload_id {
                let me = self.clone();
                tokio::spawn(async move { me.delete_chunks(&old.upload_id, old.chunks).await });
            }
        }
        Ok(())
    }

    /// Deletes chunks `0..count` of an upload (an abort, or a replaced version).
    pub async fn delete_chunks(&self, upload_id: &str, count: u64) {
        futures_util::stream::iter(0..count)
            .map(|i| async move { self.delete_blob(&chunk_key(upload_id, i)).await })
            .buffer_unordered(8)
            .collect::<Vec<()>>()
            .await;
    }

    /// Streams bytes `start..=end` of a raw upload, chunk after chunk, each through
    /// [`Cluster::stream_blob`]: every window is checked against the chunk's recorded digest before it is
    /// sent, and a replica that fails the check is left for another. The first window is read before this
    /// returns, so a caller answers its status only once it knows the read can start.
    pub async fn open_file(
        self: Arc<Self>,
        record: FileRecord,
        start: u64,
        end: u64,
    ) -> Result<BlobStream, RingError> {
        let cs = record.chunk_size.max(1);
        let first = start / cs;
        let last = end / cs;
        let record = Arc::new(record);
        let piece = move |me: Arc<Self>, record: Arc<FileRecord>, i: u64| async move {
            let key = chunk_key(&record.upload_id, i);
            let expected = record.chunk_sha256.get(i as usize).map(String::as_str);
            let opened = me.open_blob(&key, expected).await?;
            let chunk_start = i * cs;
            let a = start.max(chunk_start) - chunk_start;
            let b = end.min(chunk_start + cs - 1) - chunk_start;
            if b >= opened.len() || a > b {
                return Err(RingError::NoReplica(format!(
                    "chunk {i} of {} is shorter than its record says",
                    record.name
                )));
            }
            me.stream_blob(key, opened, a, b - a + 1).await
        };
        let head = piece(self.clone(), record.clone(), first).await?;
        let rest = futures_util::stream::iter(first + 1..=last)
            .then(move |i| piece(self.clone(), record.clone(), i))
            .flat_map(|opened| match opened {
                Ok(s) => s,
                Err(e) => Box::pin(futures_util::stream::once(async move { Err(e) })),
            });
        Ok(Box::pin(head.chain(rest)))
    }
}
