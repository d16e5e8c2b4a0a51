//! Resumable staging: an upload that arrives over many requests is appended to one local file, fsynced at
//! the end of every request, whether the request ended cleanly or was cut off.
//!
//! The stream protocol's `PATCH /v1/uploads/{id}/{name}?offset=N` lands here. `N` is what the broadcaster
//! knows a quorum of targets holds: a spool holding more (bytes of an append the broadcaster never
//! confirmed) is cut back to `N`; a spool holding less cannot take the append and says how much it holds
//! (409), which drops this target from the upload. A new append stops an older one still running on the same
//! upload. SHA-256 and XXH3 of the spooled bytes are kept as the bytes arrive, so finishing costs no second
//! read; only a cut back re-reads the part that stays.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use xxhash_rust::xxh3::Xxh3;

use crate::durable::{drain_to, RemoveOnDrop, Staged, WRITE_QUEUE_DEPTH};
use crate::protocol::VideoMode;

/// Longest a spool may be kept untouched, whatever a broadcaster asks for.
pub const MAX_KEEP: Duration = Duration::from_secs(7 * 24 * 3600);

/// Why an append or a finish was refused.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// The append starts past the spool's end.
    #[error("append at offset {offset}, but {held} bytes are staged")]
    Offset { offset: u64, held: u64 },
    /// No spool for this upload id.
    #[error("no resumable upload with id {0} is staged here")]
    Unknown(String),
    /// The append was stopped by a newer one on the same upload, or by an abort.
    #[error("append stopped by a newer request on the same upload")]
    Superseded,
    /// The body broke part way; what arrived is kept.
    #[error("request body failed after {held} bytes were staged: {why}")]
    Body { held: u64, why: String },
    /// The spool would exceed the participant's limit.
    #[error("upload exceeds the limit of {0} bytes")]
    TooLarge(u64),
    /// The upload was staged under another name.
    #[error("upload {0} is staged under another name")]
    NameMismatch(String),
    #[error("storage error: {0}")]
    Io(#[from] io::Error),
}

impl SpoolError {
    /// The HTTP status the stream protocol answers.
    pub fn status(&self) -> u16 {
        match self {
            Self::Offset { .. } | Self::NameMismatch(_) => 409,
            Self::Unknown(_) => 404,
            Self::Superseded => 409,
            Self::Body { .. } => 400,
            Self::TooLarge(_) => 413,
            Self::Io(_) => 500,
        }
    }
}

/// What an append is for.
#[derive(Debug, Clone)]
pub struct SpoolRequest {
    /// Upload id (already validated).
    pub id: String,
    /// Name (already validated).
    pub name: String,
    /// Whether a transcoding participant must make a video of it.
    pub video: VideoMode,
    /// Where the append starts.
    pub offset: u64,
    /// How long the spool is kept untouched before it is swept.
    pub keep: Duration,
}

/// A finished spool: the whole upload, fsynced, with its digests. Dropped, it deletes its file.
#[derive(Debug)]
pub struct SpoolFile {
    guard: RemoveOnDrop,
    /// Name it was staged under.
    pub name: String,
    /// Video mode it was staged with.
    pub video: VideoMode,
    /// Length.
    pub len: u64,
    /// SHA-256 of the whole upload.
    pub sha256: [u8; 32],
    /// XXH3-128 of the whole upload.
    pub xxh3: u128,
}

impl SpoolFile {
    /// Path of the spooled file.
    pub fn path(&self) -> PathBuf {
        self.guard.path().to_path_buf()
    }

    /// The spooled file as a staged file ready to be committed (renamed) in place.
    pub fn into_staged(self) -> Staged {
        Staged::adopt(self.guard, self.len, self.xxh3)
    }

    /// Streams the spooled bytes in `buf_size` reads; the file is removed once the stream is dropped.
    pub async fn stream(
        self,
        buf_size: usize,
    ) -> io::Result<impl Stream<Item = Result<Bytes, String>> + Send + 'static> {
        let file = tokio::fs::File::open(self.path()).await?;
        let reader = tokio_util::io::ReaderStream::with_capacity(file, buf_size.max(8192));
        // The guard rides along with the stream so the file lives exactly as long as it is read.
        Ok(reader.map(move |r| {
            let _keep = &self.guard;
            r.map_err(|e| e.to_string())
        }))
    }
}

struct Entry {
    guard: RemoveOnDrop,
    name: String,
    video: VideoMode,
    len: u64,
    sha: Sha256,
    xxh3: Xxh3,
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entry")
            .field("name", &self.name)
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct Slot {
    entry: tokio::sync::Mutex<Option<Entry>>,
    /// Durable length, readable while an append holds `entry`.
    held: AtomicU64,
    /// Stops the append in progress.
    running: Mutex<CancellationToken>,
    touched: Mutex<(Instant, Duration)>,
}

impl std::fmt::Debug for Spool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spool").field("dir", &self.dir).finish()
    }
}

/// The resumable uploads staged by one participant.
pub struct Spool {
    dir: PathBuf,
    buffer_size: usize,
    max_bytes: Option<u64>,
    slots: Mutex<HashMap<String, Arc<Slot>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every critical section here leaves its data whole; a panic elsewhere must not wedge the spool.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Spool {
    /// A spool in `dir`, which is created and emptied (spools do not outlive their process: the broadcaster
    /// learns from the offset a restarted target answers that it holds nothing).
    pub fn open(dir: PathBuf, buffer_size: usize, max_bytes: Option<u64>) -> io::Result<Self> {
        crate::durable::clean_dir(&dir)?;
        Ok(Self {
            dir,
            buffer_size,
            max_bytes,
            slots: Mutex::new(HashMap::new()),
        })
    }

    /// Where the spool of `id` is (or would be). Bytes below the offset an append starts at never change.
    pub fn path(&self, id: &str) -> PathBuf {
        self.dir.join(id)
    }

    /// Bytes durably staged for `id`, if it is spooled here.
    pub fn held(&self, id: &str) -> Option<u64> {
        lock(&self.slots)
            .get(id)
            .map(|s| s.held.load(Ordering::Acquire))
    }

    /// Appends `body` at `req.offset`; answers the bytes durably staged once the body ended cleanly. A body
    /// that breaks keeps what arrived ([`SpoolError::Body`] says how much).
    pub async fn append<S, E>(&self, req: SpoolRequest, body: S) -> Result<u64, SpoolError>
    where
        S: Stream<Item = Result<Bytes, E>> + Send,
        E: std::fmt::Display,
    {
        let slot = {
            let mut slots = lock(&self.slots);
            match slots.get(&req.id) {
                Some(s) => s.clone(),
                None if req.offset == 0 => {
                    let s = Arc::new(Slot {
                        entry: tokio::sync::Mutex::new(None),
                        held: AtomicU64::new(0),
                        running: Mutex::new(CancellationToken::new()),
                        touched: Mutex::new((Instant::now(), req.keep.min(MAX_KEEP))),
                    });
                    slots.insert(req.id.clone(), s.clone());
                    s
                }
                None => {
                    return Err(SpoolError::Offset {
                        offset: req.offset,
                        held: 0,
                    })
                }
            }
        };
        // The newest append wins: the one running now stops at its next chunk and keeps what it wrote.
        let cancel = {
            let mut running = lock(&slot.running);
            running.cancel();
            *running = CancellationToken::new();
            running.clone()
        };
        let mut entry = slot.entry.lock().await;
        if cancel.is_cancelled() {
            return Err(SpoolError::Superseded);
        }
        *lock(&slot.touched) = (Instant::now(), req.keep.min(MAX_KEEP));
        if !lock(&self.slots)
            .get(&req.id)
            .is_some_and(|s| Arc::ptr_eq(s, &slot))
        {
            // Aborted or swept while this append waited.
            return Err(SpoolError::Unknown(req.id));
        }
        let current = match entry.take() {
            Some(e) if e.name != req.name => {
                *entry = Some(e);
                return Err(SpoolError::NameMismatch(req.id));
            }
            Some(e) => e,
            None => {
                let path = self.dir.join(&req.id);
                File::options()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(&path)?;
                Entry {
                    guard: RemoveOnDrop::new(path),
                    name: req.name.clone(),
                    video: req.video,
                    len: 0,
                    sha: Sha256::new(),
                    xxh3: Xxh3::new(),
                }
            }
        };
        if req.offset > current.len {
            let held = current.len;
            *entry = Some(current);
            return Err(SpoolError::Offset {
                offset: req.offset,
                held,
            });
        }
        let current = if req.offset < current.len {
            cut_back(current, req.offset).await?
        } else {
            current
        };
        let (updated, outcome) = self.write(current, body, &cancel).await;
        let updated = updated?;
        slot.held.store(updated.len, Ordering::Release);
        let held = updated.len;
        *entry = Some(updated);
        *lock(&slot.touched) = (Instant::now(), req.keep.min(MAX_KEEP));
        outcome.map(|()| held)
    }

    /// Streams `body` onto the end of `entry`'s file; always fsyncs what was written. The first result is
    /// the entry as it is on disk now, the second whether the body ended cleanly.
    async fn write<S, E>(
        &self,
        entry: Entry,
        body: S,
        cancel: &CancellationToken,
    ) -> (Result<Entry, SpoolError>, Result<(), SpoolError>)
    where
        S: Stream<Item = Result<Bytes, E>> + Send,
        E: std::fmt::Display,
    {
        let start = entry.len;
        let file = match File::options().write(true).open(entry.guard.path()) {
            Ok(mut f) => match f.seek(SeekFrom::Start(entry.len)) {
                Ok(_) => f,
                Err(e) => return (Err(e.into()), Ok(())),
            },
            Err(e) => return (Err(e.into()), Ok(())),
        };
        let (tx, rx) = mpsc::channel::<Bytes>(WRITE_QUEUE_DEPTH);
        let writer = tokio::spawn(drain_to(
            (BufWriter::with_capacity(self.buffer_size, file), entry),
            rx,
            |(out, e), chunk| {
                out.write_all(chunk)?;
                e.sha.update(chunk);
                e.xxh3.update(chunk);
                e.len += chunk.len() as u64;
                Ok(())
            },
        ));
        let mut outcome = Ok(());
        let mut queued = start;
        futures_util::pin_mut!(body);
        loop {
            let next = tokio::select! {
                biased;
                _ = cancel.cancelled() => { outcome = Err(SpoolError::Superseded); break; }
                n = body.next() => n,
            };
            match next {
                None => break,
                Some(Err(e)) => {
                    outcome = Err(SpoolError::Body {
                        held: 0,
                        why: e.to_string(),
                    });
                    break;
                }
                Some(Ok(chunk)) => {
                    // The limit holds as bytes arrive: nothing past it is ever written.
                    queued += chunk.len() as u64;
                    if let Some(max) = self.max_bytes.filter(|&m| queued > m) {
                        outcome = Err(SpoolError::TooLarge(max));
                        break;
                    }
                    if tx.send(chunk).await.is_err() {
                        break;
                    }
                }
            }
        }
        drop(tx);
        let written = match writer.await {
            Ok(Ok(state)) => state,
            Ok(Err(e)) => return (Err(e.into()), Ok(())),
            Err(e) => return (Err(io::Error::other(e).into()), Ok(())),
        };
        let synced = tokio::task::spawn_blocking(move || {
            let (out, entry) = written;
            let file = out.into_inner().map_err(|e| e.into_error())?;
            file.sync_data()?;
            Ok::<_, io::Error>(entry)
        })
        .await
        .map_err(io::Error::other)
        .and_then(|r| r);
        let entry = match synced {
            Ok(e) => e,
            Err(e) => return (Err(e.into()), Ok(())),
        };
        if let Err(SpoolError::Body { held, .. }) = &mut outcome {
            *held = entry.len;
        }
        (Ok(entry), outcome)
    }

    /// Takes the whole spooled upload out of the spool, once no append runs on it.
    pub async fn take(&self, id: &str) -> Result<SpoolFile, SpoolError> {
        let slot = lock(&self.slots)
            .get(id)
            .cloned()
            .ok_or_else(|| SpoolError::Unknown(id.to_owned()))?;
        let mut entry = slot.entry.lock().await;
        let e = entry
            .take()
            .ok_or_else(|| SpoolError::Unknown(id.to_owned()))?;
        lock(&self.slots).remove(id);
        Ok(SpoolFile {
            guard: e.guard,
            name: e.name,
            video: e.video,
            len: e.len,
            sha256: e.sha.finalize().into(),
            xxh3: e.xxh3.digest128(),
        })
    }

    /// Discards the spool of `id`, stopping an append in progress; returns whether there was one.
    pub fn remove(&self, id: &str) -> bool {
        let slot = lock(&self.slots).remove(id);
        match slot {
            Some(s) => {
                lock(&s.running).cancel();
                // The file goes when the entry does: now if no append holds it, else when that append ends.
                if let Ok(mut e) = s.entry.try_lock() {
                    e.take();
                }
                true
            }
            None => false,
        }
    }

    /// Removes spools untouched for longer than they asked to be kept; returns how many.
    pub fn sweep(&self) -> usize {
        let expired: Vec<String> = lock(&self.slots)
            .iter()
            .filter(|(_, s)| {
                let (at, keep) = *lock(&s.touched);
                at.elapsed() > keep
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in &expired {
            tracing::warn!(upload = %id, "resumable staging expired untouched; removed");
            self.remove(id);
        }
        expired.len()
    }

    /// Sweeps every `period` until `shutdown`.
    pub fn spawn_sweeper(self: Arc<Self>, period: Duration, shutdown: CancellationToken) {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tick.tick() => { self.sweep(); }
                }
            }
        });
    }
}

/// Cuts the spool back to `offset` and rebuilds its digests from the bytes that stay.
async fn cut_back(entry: Entry, offset: u64) -> io::Result<Entry> {
    tokio::task::spawn_blocking(move || {
        let mut e = entry;
        let file = File::options()
            .read(true)
            .write(true)
            .open(e.guard.path())?;
        file.set_len(offset)?;
        file.sync_data()?;
        let (mut sha, mut xxh3) = (Sha256::new(), Xxh3::new());
        let mut reader = io::BufReader::with_capacity(1 << 20, file);
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = reader.read(&mut buf)?;
            if n == 0 {
                break;
            }
            sha.update(&buf[..n]);
            xxh3.update(&buf[..n]);
        }
        e.len = offset;
        e.sha = sha;
        e.xxh3 = xxh3;
        Ok(e)
    })
    .await
    .map_err(io::Error::other)?
}

/// Files left in a spool directory are never taken up again; this removes one directory's worth.
pub fn clear(dir: &std::path::Path) -> io::Result<usize> {
    if !dir.exists() {
        return Ok(0);
    }
    let n = fs::read_dir(dir)?.count();
    crate::durable::clean_dir(dir)?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(id: &str, offset: u64) -> SpoolRequest {
        SpoolRequest {
            id: id.into(),
            name: "f.bin".into(),
            video: VideoMode::Skip,
            offset,
            keep: Duration::from_secs(60),
        }
    }

    fn body(parts: &[&'static [u8]]) -> impl Stream<Item = Result<Bytes, String>> + Send {
        futures_util::stream::iter(
            parts
                .iter()
                .map(|p| Ok(Bytes::from_static(p)))
                .collect::<Vec<_>>(),
        )
    }

    #[tokio::test]
    async fn appends_cut_backs_and_broken_bodies() {
        let dir = tempfile::tempdir().expect("tmp");
        let spool = Spool::open(dir.path().join("spool"), 8, None).expect("open");
        assert_eq!(
            spool
                .append(req("a", 0), body(&[b"hello "]))
                .await
                .expect("1"),
            6
        );
        // A body that breaks keeps what arrived.
        let broken = futures_util::stream::iter(vec![
            Ok(Bytes::from_static(b"wor")),
            Err("reset".to_string()),
        ]);
        match spool.append(req("a", 6), broken).await {
            Err(SpoolError::Body { held: 9, .. }) => {}
            other => panic!("expected a broken body holding 9 bytes, got {other:?}"),
        }
        assert_eq!(spool.held("a"), Some(9));
        // Past the end: refused with what is held.
        assert!(matches!(
            spool.append(req("a", 10), body(&[b"x"])).await,
            Err(SpoolError::Offset { held: 9, .. })
        ));
        // Before the end: cut back, and the digests follow.
        assert_eq!(
            spool
                .append(req("a", 6), body(&[b"world"]))
                .await
                .expect("2"),
            11
        );
        let f = spool.take("a").await.expect("take");
        assert_eq!(f.len, 11);
        assert_eq!(f.sha256, <[u8; 32]>::from(Sha256::digest(b"hello world")));
        assert_eq!(f.xxh3, xxhash_rust::xxh3::xxh3_128(b"hello world"));
        assert_eq!(fs::read(f.path()).expect("read"), b"hello world");
        let path = f.path();
        drop(f);
        assert!(
            !path.exists(),
            "a finished spool removes its file when dropped"
        );
        assert!(matches!(
            spool.append(req("b", 5), body(&[b"x"])).await,
            Err(SpoolError::Offset { held: 0, .. })
        ));
    }

    #[tokio::test]
    async fn the_size_limit_fires_before_anything_past_it_is_written() {
        let dir = tempfile::tempdir().expect("tmp");
        let spool = Spool::open(dir.path().join("spool"), 8, Some(10)).expect("open");
        spool
            .append(req("a", 0), body(&[b"123456"]))
            .await
            .expect("a");
        assert!(matches!(
            spool
                .append(req("a", 6), body(&[b"78", b"9abc", b"def"]))
                .await,
            Err(SpoolError::TooLarge(10))
        ));
        let held = spool.held("a").expect("held");
        assert!(held <= 10, "{held} bytes kept past a limit of 10");
        assert!(fs::metadata(spool.path("a")).expect("file").len() <= 10);
    }

    #[tokio::test]
    async fn remove_and_sweep_delete_files() {
        let dir = tempfile::tempdir().expect("tmp");
        let sdir = dir.path().join("spool");
        let spool = Spool::open(sdir.clone(), 8, None).expect("open");
        spool.append(req("a", 0), body(&[b"abc"])).await.expect("a");
        assert!(spool.remove("a"));
        assert_eq!(fs::read_dir(&sdir).expect("ls").count(), 0);
        let mut r = req("b", 0);
        r.keep = Duration::ZERO;
        spool.append(r, body(&[b"abc"])).await.expect("b");
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(spool.sweep(), 1);
        assert_eq!(fs::read_dir(&sdir).expect("ls").count(), 0);
        assert_eq!(spool.held("b"), None);
    }
}
