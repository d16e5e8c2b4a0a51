//! Durable writes: stream into a staging file on the blocking pool, fsync, then rename into place.
//!
//! Writing and hashing happen on blocking threads so the async workers only move `Bytes` handles; the
//! channel between them holds at most [`WRITE_QUEUE_DEPTH`] chunks, which bounds memory. A thread is held
//! only while a batch of chunks is written ([`drain_to`]), never while an upload waits for the network,
//! so a thousand idle uploads cannot exhaust the pool and starve everything else.

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use xxhash_rust::xxh3::Xxh3;

/// Chunks queued between the network task and the writer thread.
pub const WRITE_QUEUE_DEPTH: usize = 4;

/// A file being written in a staging directory. Dropped before [`StagingWriter::finish`], it deletes itself.
#[derive(Debug)]
pub struct StagingWriter {
    tx: Option<mpsc::Sender<Bytes>>,
    thread: Option<JoinHandle<io::Result<(u64, u128)>>>,
    guard: Option<RemoveOnDrop>,
}

/// A staging file that is complete and fsynced, waiting to be committed. Dropped uncommitted, it deletes itself.
#[derive(Debug)]
pub struct Staged {
    guard: RemoveOnDrop,
    /// Length of the staged file in bytes.
    pub len: u64,
    /// XXH3-128 of the staged file (see [`crate::protocol::StagedReport`] for why not SHA-256).
    pub xxh3: u128,
}

/// A file that is deleted when this guard is dropped, unless it was taken out of it.
#[derive(Debug)]
pub struct RemoveOnDrop(Option<PathBuf>);

impl RemoveOnDrop {
    /// Guards `path`.
    pub fn new(path: PathBuf) -> Self {
        Self(Some(path))
    }

    /// The guarded path.
    pub fn path(&self) -> &Path {
        self.0.as_deref().unwrap_or(Path::new(""))
    }
}

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = fs::remove_file(p);
        }
    }
}

/// Feeds the chunks arriving on `rx` to `write` on the blocking pool, a batch (up to
/// [`WRITE_QUEUE_DEPTH`] chunks) at a time, until the channel closes; returns the final state. Waiting for
/// chunks happens on the async side, so no thread is held by an idle upload.
pub async fn drain_to<S, F>(mut state: S, mut rx: mpsc::Receiver<Bytes>, write: F) -> io::Result<S>
where
    S: Send + 'static,
    F: Fn(&mut S, &[u8]) -> io::Result<()> + Send + Copy + 'static,
{
    while let Some(first) = rx.recv().await {
        let mut batch = Vec::with_capacity(WRITE_QUEUE_DEPTH);
        batch.push(first);
        while batch.len() < WRITE_QUEUE_DEPTH {
            match rx.try_recv() {
                Ok(c) => batch.push(c),
                Err(_) => break,
            }
        }
        state = tokio::task::spawn_blocking(move || {
            for c in &batch {
                write(&mut state, c)?;
            }
            Ok::<_, io::Error>(state)
        })
        .await
        .map_err(io::Error::other)??;
    }
    Ok(state)
}

impl StagingWriter {
    /// Creates `path` (which must not exist) and starts its writer with a `buf_size` write buffer.
    pub fn create(path: PathBuf, buf_size: usize) -> io::Result<Self> {
        let file = File::options().write(true).create_new(true).open(&path)?;
        let guard = RemoveOnDrop(Some(path));
        let (tx, rx) = mpsc::channel::<Bytes>(WRITE_QUEUE_DEPTH);
        let thread = tokio::spawn(async move {
            let start = (BufWriter::with_capacity(buf_size, file), Xxh3::new(), 0u64);
            let (out, hasher, len) = drain_to(start, rx, |(out, hasher, len), chunk| {
                hasher.update(chunk);
                out.write_all(chunk)?;
                *len += chunk.len() as u64;
                Ok(())
            })
            .await?;
            tokio::task::spawn_blocking(move || {
                let file = out.into_inner().map_err(|e| e.into_error())?;
                file.sync_all()?;
                Ok((len, hasher.digest128()))
            })
            .await
            .map_err(io::Error::other)?
        });
        Ok(Self {
            tx: Some(tx),
            thread: Some(thread),
            guard: Some(guard),
        })
    }

    /// Queues one chunk; waits while the writer thread is behind.
    pub async fn write(&mut self, chunk: Bytes) -> io::Result<()> {
        let Some(tx) = &self.tx else {
            return Err(io::Error::other("staging writer already closed"));
        };
        if tx.send(chunk).await.is_err() {
            // The thread stopped early: its result carries the I/O error.
            self.tx = None;
            return match self.join().await {
                Err(e) => Err(e),
                Ok(_) => Err(io::Error::other("staging writer stopped")),
            };
        }
        Ok(())
    }

    async fn join(&mut self) -> io::Result<(u64, u128)> {
        let thread = self
            .thread
            .take()
            .ok_or_else(|| io::Error::other("staging writer already finished"))?;
        thread.await.map_err(io::Error::other)?
    }

    /// Flushes and fsyncs the file; returns its length and digest, still staged.
    pub async fn finish(mut self) -> io::Result<Staged> {
        self.tx = None;
        let (len, xxh3) = self.join().await?;
        let guard = self
            .guard
            .take()
            .ok_or_else(|| io::Error::other("staging writer already finished"))?;
        Ok(Staged { guard, len, xxh3 })
    }
}

impl Staged {
    /// A complete, fsynced file written elsewhere (a resumable spool), to be committed like a staged one.
    pub fn adopt(guard: RemoveOnDrop, len: u64, xxh3: u128) -> Self {
        Self { guard, len, xxh3 }
    }

    /// Path of the staged file.
    pub fn path(&self) -> &Path {
        self.guard.0.as_deref().unwrap_or(Path::new(""))
    }

    /// Renames the staged file to `dest` and fsyncs `dest`'s directory, so the commit survives a crash.
    pub async fn commit(mut self, dest: PathBuf) -> io::Result<()> {
        let src = self
            .guard
            .0
            .take()
            .ok_or_else(|| io::Error::other("already committed"))?;
        let res = tokio::task::spawn_blocking(move || {
            let r = publish(&src, &dest);
            if r.is_err() {
                let _ = fs::remove_file(&src);
            }
            r
        })
        .await
        .map_err(io::Error::other)?;
        res
    }
}

/// Renames `src` onto `dest` and fsyncs the destination directory.
pub fn publish(src: &Path, dest: &Path) -> io::Result<()> {
    fs::rename(src, dest)?;
    sync_dir(dest.parent().unwrap_or(Path::new(".")))
}

/// Fsyncs a directory so renames and unlinks in it are durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Creates `dir` if needed and removes everything in it: staging left by a crash is never committed.
pub fn clean_dir(dir: &Path) -> io::Result<usize> {
    fs::create_dir_all(dir)?;
    let mut removed = 0;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            fs::remove_dir_all(&path)?;
        } else {
            fs::remove_file(&path)?;
        }
        removed += 1;
    }
    sync_dir(dir)?;
    Ok(removed)
}

/// Removes files in `dir` last modified more than `ttl` ago; returns how many were removed.
pub fn sweep_older_than(dir: &Path, ttl: Duration) -> io::Result<usize> {
    let now = SystemTime::now();
    let mut removed = 0;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let modified = entry.metadata()?.modified()?;
        if now.duration_since(modified).unwrap_or_default() > ttl
            && fs::remove_file(entry.path()).is_ok()
        {
            removed += 1;
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleaning_staging_never_follows_a_symlink() {
        let dir = tempfile::tempdir().expect("tempdir");
        let outside = dir.path().join("precious");
        fs::create_dir_all(outside.join("sub")).expect("outside dir");
        fs::write(outside.join("keep.txt"), b"keep").expect("outside file");
        let staging = dir.path().join("staging");
        fs::create_dir_all(&staging).expect("staging");
        std::os::unix::fs::symlink(&outside, staging.join("link-to-dir")).expect("dir link");
        std::os::unix::fs::symlink(outside.join("keep.txt"), staging.join("link-to-file"))
            .expect("file link");
        assert_eq!(clean_dir(&staging).expect("clean"), 2);
        assert_eq!(
            sweep_older_than(&staging, Duration::ZERO).expect("sweep"),
            0
        );
        assert!(outside.join("keep.txt").exists() && outside.join("sub").exists());
        assert!(fs::read_dir(&staging).expect("read").next().is_none());
    }

    #[tokio::test]
    async fn stage_commit_and_drop() {
        let dir = tempfile::tempdir().expect("tempdir");
        let staging = dir.path().join("s1");
        let mut w = StagingWriter::create(staging.clone(), 8).expect("create");
        w.write(Bytes::from_static(b"hello ")).await.expect("write");
        w.write(Bytes::from_static(b"world")).await.expect("write");
        let staged = w.finish().await.expect("finish");
        assert_eq!(staged.len, 11);
        assert_eq!(staged.xxh3, xxhash_rust::xxh3::xxh3_128(b"hello world"));
        let dest = dir.path().join("out");
        staged.commit(dest.clone()).await.expect("commit");
        assert_eq!(fs::read(&dest).expect("read"), b"hello world");
        assert!(!staging.exists());

        let staging2 = dir.path().join("s2");
        let mut w = StagingWriter::create(staging2.clone(), 8).expect("create");
        w.write(Bytes::from_static(b"partial"))
            .await
            .expect("write");
        drop(w);
        assert!(!staging2.exists(), "an abandoned writer removes its file");

        let staging3 = dir.path().join("s3");
        let w = StagingWriter::create(staging3.clone(), 8).expect("create");
        let staged = w.finish().await.expect("finish");
        assert_eq!(staged.len, 0);
        drop(staged);
        assert!(
            !staging3.exists(),
            "an uncommitted staged file removes itself"
        );
    }

    #[test]
    fn clean_dir_empties() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = dir.path().join("staging");
        fs::create_dir_all(s.join("sub")).expect("mkdir");
        fs::write(s.join("a"), b"x").expect("write");
        assert_eq!(clean_dir(&s).expect("clean"), 2);
        assert_eq!(fs::read_dir(&s).expect("ls").count(), 0);
    }
}
