//! Writing one blob file in staging, then publishing it by rename.
//!
//! This is `common::durable`'s staging writer extended to the blob format: the header's checksum is known
//! only once the payload has streamed through, so the writer reserves the header, streams and hashes the
//! payload, then goes back and writes the real header before the fsync. Writing and hashing run on one
//! blocking thread per blob; the async side only hands over `Bytes`, at most [`WRITE_QUEUE_DEPTH`] queued.

use std::fs::{self, File};
use std::io::{self, BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use common::blob_digest::{self, BlobDigest, DigestKind, WindowHasher};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::format::{Header, HEADER_LEN};
use super::group::DirSyncs;

/// Chunks queued between the network task and the writer thread: bounds memory per upload.
pub const WRITE_QUEUE_DEPTH: usize = 4;

/// How often publishing retries when a concurrent delete removed the (empty) target directory between
/// creating it and renaming into it.
const PUBLISH_ATTEMPTS: usize = 5;

/// Deletes a file when dropped unless disarmed: partial or abandoned staging never lingers.
#[derive(Debug)]
struct RemoveOnDrop(Option<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = fs::remove_file(p);
        }
    }
}

/// A blob file being written in staging. Dropped before [`BlobWriter::finish`], it deletes itself without
/// paying for an fsync.
#[derive(Debug)]
pub struct BlobWriter {
    /// Chunks for the writer thread; `None` once closed.
    tx: Option<mpsc::Sender<Bytes>>,
    thread: Option<JoinHandle<io::Result<Header>>>,
    /// Tells the writer thread that the end of the channel is the end of the payload, not an abandonment.
    complete: Arc<AtomicBool>,
    guard: RemoveOnDrop,
}

/// A complete, fsynced blob file in staging. Dropped unpublished, it deletes itself.
#[derive(Debug)]
pub struct StagedBlob {
    guard: RemoveOnDrop,
    /// What its header says.
    pub header: Header,
}

impl BlobWriter {
    /// Creates `path` (which must not exist) and starts its writer thread with a `buf_size` write buffer;
    /// `kind` chooses the format (see [`super::format`]).
    pub fn create(path: PathBuf, buf_size: usize, kind: DigestKind) -> io::Result<Self> {
        let file = File::options().write(true).create_new(true).open(&path)?;
        let guard = RemoveOnDrop(Some(path));
        let (tx, rx) = mpsc::channel::<Bytes>(WRITE_QUEUE_DEPTH);
        let complete = Arc::new(AtomicBool::new(false));
        let done = complete.clone();
        // A blocking thread only while a batch is written (see `common::durable::drain_to`): idle PUTs
        // hold none.
        let thread = tokio::spawn(async move {
            let mut out = BufWriter::with_capacity(buf_size, file);
            // Placeholder: the checksum is not known yet (a small write into the buffer, no syscall).
            out.write_all(&[0u8; HEADER_LEN as usize])?;
            let start = (out, Hashing::new(kind), 0u64);
            let (mut out, hasher, len) =
                common::durable::drain_to(start, rx, |(out, hasher, len), chunk| {
                    hasher.update(chunk);
                    out.write_all(chunk)?;
                    *len += chunk.len() as u64;
                    Ok(())
                })
                .await?;
            if !done.load(Ordering::Acquire) {
                return Err(io::Error::other("blob write abandoned"));
            }
            tokio::task::spawn_blocking(move || {
                let digest = match hasher {
                    Hashing::Plain(h) => BlobDigest::Sha256(h.finalize().into()),
                    Hashing::Windows(h) => {
                        let (digest, table) = h.finish();
                        out.write_all(&blob_digest::encode_table(&table))?;
                        digest
                    }
                };
                let mut file = out.into_inner().map_err(|e| e.into_error())?;
                let header = Header { digest, len };
                file.seek(SeekFrom::Start(0))?;
                file.write_all(&header.encode())?;
                file.sync_all()?;
                Ok(header)
            })
            .await
            .map_err(io::Error::other)?
        });
        Ok(Self {
            tx: Some(tx),
            thread: Some(thread),
            complete,
            guard,
        })
    }

    /// Queues one chunk; waits while the writer thread is behind.
    pub async fn write(&mut self, chunk: Bytes) -> io::Result<()> {
        let Some(tx) = &self.tx else {
            return Err(io::Error::other("blob writer already closed"));
        };
        if tx.send(chunk).await.is_err() {
            // The thread stopped early: its result carries the I/O error.
            self.tx = None;
            return match self.join().await {
                Err(e) => Err(e),
                Ok(_) => Err(io::Error::other("blob writer stopped")),
            };
        }
        Ok(())
    }

    async fn join(&mut self) -> io::Result<Header> {
        let thread = self
            .thread
            .take()
            .ok_or_else(|| io::Error::other("blob writer already finished"))?;
        thread.await.map_err(io::Error::other)?
    }

    /// Ends the payload: writes the header and fsyncs. The blob stays in staging until published.
    pub async fn finish(mut self) -> io::Result<StagedBlob> {
        self.complete.store(true, Ordering::Release);
        self.tx = None;
        let header = self.join().await?;
        let guard = RemoveOnDrop(self.guard.0.take());
        Ok(StagedBlob { guard, header })
    }
}

/// The digest being computed as the payload streams through.
enum Hashing {
    Plain(Sha256),
    Windows(WindowHasher),
}

impl Hashing {
    fn new(kind: DigestKind) -> Self {
        match kind {
            DigestKind::Sha256 => Self::Plain(Sha256::new()),
            DigestKind::Windowed => Self::Windows(WindowHasher::new()),
        }
    }

    fn update(&mut self, data: &[u8]) {
        match self {
            Self::Plain(h) => h.update(data),
            Self::Windows(h) => h.update(data),
        }
    }
}

impl StagedBlob {
    /// Path of the staged file.
    pub fn path(&self) -> &Path {
        self.guard.0.as_deref().unwrap_or(Path::new(""))
    }

    /// Renames the staged file to `dest` (replacing any blob there atomically) and fsyncs the directories
    /// involved, so the blob survives a crash once this returns.
    pub async fn publish(mut self, dest: PathBuf, syncs: Arc<DirSyncs>) -> io::Result<()> {
        let Some(src) = self.guard.0.take() else {
            return Err(io::Error::other("already published"));
        };
        tokio::task::spawn_blocking(move || {
            let r = publish(&src, &dest, &syncs);
            if r.is_err() {
                let _ = fs::remove_file(&src);
            }
            r
        })
        .await
        .map_err(io::Error::other)?
    }
}

/// Renames `src` to `dest`, creating `dest`'s directory (one level) if needed.
fn publish(src: &Path, dest: &Path, syncs: &DirSyncs) -> io::Result<()> {
    let dir = dest
        .parent()
        .ok_or_else(|| io::Error::other("blob path has no directory"))?;
    let mut attempt = 0;
    loop {
        attempt += 1;
        match fs::create_dir(dir) {
            // A new directory is an entry in its parent: make that durable too.
            Ok(()) => common::durable::sync_dir(dir.parent().unwrap_or(Path::new(".")))?,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        match fs::rename(src, dest) {
            Ok(()) => break,
            // A delete of the directory's last blob removed it between our mkdir and rename; go again.
            Err(e) if e.kind() == io::ErrorKind::NotFound && attempt < PUBLISH_ATTEMPTS => {}
            Err(e) => return Err(e),
        }
    }
    syncs.after_rename(dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::format;

    #[tokio::test]
    async fn writes_header_and_payload() {
        let dir = tempfile::tempdir().expect("tempdir");
        let staging = dir.path().join("s1");
        let mut w = BlobWriter::create(staging.clone(), 4096, DigestKind::Sha256).expect("create");
        w.write(Bytes::from_static(b"hello ")).await.expect("write");
        w.write(Bytes::from_static(b"world")).await.expect("write");
        let staged = w.finish().await.expect("finish");
        assert_eq!(staged.header.len, 11);
        assert_eq!(
            staged.header.digest,
            BlobDigest::Sha256(Sha256::digest(b"hello world").into())
        );
        assert_eq!(staged.path(), staging.as_path());
        let dest = dir.path().join("blobs").join("id").join("f");
        fs::create_dir(dir.path().join("blobs")).expect("mkdir");
        staged
            .publish(dest.clone(), Arc::default())
            .await
            .expect("publish");
        assert!(!staging.exists());
        let bytes = fs::read(&dest).expect("read");
        assert_eq!(&bytes[..8], format::MAGIC);
        assert_eq!(&bytes[HEADER_LEN as usize..], b"hello world");
        let mut f = File::open(&dest).expect("open");
        assert_eq!(format::verify(&mut f).expect("io").expect("valid").len, 11);
    }

    #[tokio::test]
    async fn abandoned_writes_leave_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let staging = dir.path().join("s2");
        let mut w =
            BlobWriter::create(staging.clone(), 4096, DigestKind::Windowed).expect("create");
        w.write(Bytes::from_static(b"partial"))
            .await
            .expect("write");
        drop(w);
        assert!(!staging.exists(), "an abandoned writer removes its file");

        let staging = dir.path().join("s3");
        let w = BlobWriter::create(staging.clone(), 4096, DigestKind::Windowed).expect("create");
        let staged = w.finish().await.expect("finish");
        assert_eq!(staged.header.len, 0);
        drop(staged);
        assert!(!staging.exists(), "an unpublished blob removes itself");
    }
}
