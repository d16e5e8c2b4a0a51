//! Streamed, verified reads of ring blobs in constant memory.
//!
//! A blob recorded with a windowed digest (see [`common::blob_digest`]) is read in two steps. Its window
//! table is fetched from a replica and checked against the recorded digest (then kept in a small cache:
//! a table checked once is good on every replica). The payload then streams from a replica with a `Range`
//! request, one [`WINDOW`]-byte window at a time: each window is checked against its table entry before
//! any of its bytes is handed on, so a damaged or lying replica is caught before a viewer sees its bytes,
//! and the read goes on from the same window on another replica. Memory per read is about one window.
//!
//! A blob recorded with a plain SHA-256 (written before windows) is read whole and checked, as before.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use common::blob_digest::{self, BlobDigest, WindowDigest, WINDOW};
use futures_util::{FutureExt, Stream, StreamExt};
use meta::VideoRecord;

use super::nodes::{BlobKey, NodeError};
use super::{count_read, Cluster, RingError};

/// Bytes of window tables the cache keeps (a 4 MiB segment's table is 2 KiB).
const TABLE_CACHE_BYTES: usize = 4 << 20;

/// How long a video record read for serving its files is reused.
const RECORD_TTL: Duration = Duration::from_secs(1);

/// Approximate bytes of video records the cache keeps.
const RECORD_CACHE_BYTES: usize = 8 << 20;

/// Video records read lately for serving, so that a page asking for hundreds of segments does not read and
/// parse the record (hundreds of digests) once per segment.
#[derive(Debug, Default)]
pub(crate) struct RecordCache {
    inner: Mutex<RecordInner>,
}

struct RecordInner {
    videos: hashlink::LruCache<String, (Instant, Arc<VideoRecord>, usize)>,
    bytes: usize,
}

impl Default for RecordInner {
    fn default() -> Self {
        Self {
            videos: hashlink::LruCache::new_unbounded(),
            bytes: 0,
        }
    }
}

impl std::fmt::Debug for RecordInner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordInner")
            .field("videos", &self.videos.len())
            .field("bytes", &self.bytes)
            .finish()
    }
}

impl RecordCache {
    fn get(&self, id: &str) -> Option<Arc<VideoRecord>> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        match inner.videos.get(id) {
            Some((at, v, _)) if at.elapsed() < RECORD_TTL => Some(v.clone()),
            _ => None,
        }
    }

    fn insert(&self, record: Arc<VideoRecord>) {
        let size = 256
            + record.files.len() * 32
            + record
                .digests
                .iter()
                .map(|(k, v)| k.len() + v.len() + 48)
                .sum::<usize>();
        if size > RECORD_CACHE_BYTES / 8 {
            return;
        }
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, _, old)) = inner
            .videos
            .insert(record.id.clone(), (Instant::now(), record, size))
        {
            inner.bytes -= old;
        }
        inner.bytes += size;
        while inner.bytes > RECORD_CACHE_BYTES {
            match inner.videos.remove_lru() {
                Some((_, (_, _, n))) => inner.bytes -= n,
                None => break,
            }
        }
    }
}

/// How long a streamed range request to a node may stay open, body included. A slow viewer keeps it open
/// while it drains; when it runs out, the read reopens the range from the window it stopped at.
const RANGE_REQUEST_TIMEOUT: Duration = Duration::from_secs(600);

/// Tries without a window going out before a read gives up, per candidate replica.
const ATTEMPTS_PER_CANDIDATE: usize = 2;

/// A window table checked against the digest recorded for its blob.
#[derive(Debug)]
pub struct CheckedTable {
    len: u64,
    windows: Vec<WindowDigest>,
}

/// The window tables checked lately, by recorded digest, least recently used dropped first.
#[derive(Debug, Default)]
pub(crate) struct TableCache {
    inner: Mutex<CacheInner>,
}

struct CacheInner {
    tables: hashlink::LruCache<String, Arc<CheckedTable>>,
    bytes: usize,
}

impl std::fmt::Debug for CacheInner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheInner")
            .field("tables", &self.tables.len())
            .field("bytes", &self.bytes)
            .finish()
    }
}

impl TableCache {
    fn get(&self, digest: &str) -> Option<Arc<CheckedTable>> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.tables.get(digest).cloned()
    }

    fn insert(&self, digest: String, table: Arc<CheckedTable>) {
        let size = table.windows.len() * 32 + digest.len();
        if size > TABLE_CACHE_BYTES / 8 {
            return;
        }
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = inner.tables.insert(digest.clone(), table) {
            inner.bytes -= old.windows.len() * 32 + digest.len();
        }
        inner.bytes += size;
        while inner.bytes > TABLE_CACHE_BYTES {
            match inner.tables.remove_lru() {
                Some((k, t)) => inner.bytes -= t.windows.len() * 32 + k.len(),
                None => break,
            }
        }
    }
}

impl Default for CacheInner {
    fn default() -> Self {
        Self {
            tables: hashlink::LruCache::new_unbounded(),
            bytes: 0,
        }
    }
}

/// A blob ready to be read: its length is known, and nothing unchecked has been accepted.
#[derive(Debug)]
pub enum Opened {
    /// Streams window by window against a checked table.
    Windowed(Arc<CheckedTable>),
    /// Read whole and checked (a plain recorded digest, or none).
    Whole(Bytes),
}

impl Opened {
    /// The payload length.
    pub fn len(&self) -> u64 {
        match self {
            Self::Windowed(t) => t.len,
            Self::Whole(b) => b.len() as u64,
        }
    }

    /// Whether the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Bytes of a blob, checked before they are yielded.
pub type BlobStream = std::pin::Pin<Box<dyn Stream<Item = Result<Bytes, RingError>> + Send>>;

impl Cluster {
    /// Video `id`'s record for serving its files: one read at most [`RECORD_TTL`] ago, or (with `fresh`,
    /// or none that recent) one read now. A missing record is not remembered.
    pub async fn video_for_reading(
        &self,
        id: &str,
        fresh: bool,
    ) -> Result<Option<Arc<VideoRecord>>, RingError> {
        if !fresh {
            if let Some(v) = self.records.get(id) {
                return Ok(Some(v));
            }
        }
        let Some(record) = self.meta.get_video(id).await? else {
            return Ok(None);
        };
        let record = Arc::new(record);
        self.records.insert(record.clone());
        Ok(Some(record))
    }

    /// Prepares to read `key`, recorded with digest `expected`: for a windowed digest, fetches and checks
    /// its window table (no payload byte is read); otherwise reads and checks the whole blob.
    pub async fn open_blob(
        &self,
        key: &BlobKey,
        expected: Option<&str>,
    ) -> Result<Opened, RingError> {
        let windowed = match expected.map(BlobDigest::parse) {
            Some(Ok(d @ BlobDigest::Windowed(_))) => d,
            _ => return Ok(Opened::Whole(self.get_verified(key, expected).await?)),
        };
        let text = windowed.to_string();
        if let Some(t) = self.tables.get(&text) {
            return Ok(Opened::Windowed(t));
        }
        let candidates = self.view().read_candidates(&key.ring_key());
        if candidates.is_empty() {
            return Err(RingError::Empty);
        }
        let mut all_absent = true;
        for node in &candidates {
            match self.nodes.window_table(node, key).await {
                Ok(got) => match blob_digest::check_table(&windowed, got.len, &got.table) {
                    Ok(windows) => {
                        count_read(node, "ok");
                        let table = Arc::new(CheckedTable {
                            len: got.len,
                            windows,
                        });
                        self.tables.insert(text, table.clone());
                        return Ok(Opened::Windowed(table));
                    }
                    Err(e) => {
                        all_absent = false;
                        corrupt(node, key, &e.to_string());
                    }
                },
                Err(NodeError::NotFound { .. }) => count_read(node, "missing"),
                Err(e) => {
                    all_absent = false;
                    count_read(node, "error");
                    tracing::warn!(%key, error = %e, "window table read failed; trying the next replica");
                }
            }
        }
        Err(if all_absent {
            RingError::Node(NodeError::NotFound {
                node: candidates.join(","),
                key: key.to_string(),
            })
        } else {
            RingError::NoReplica(key.to_string())
        })
    }

    /// Streams bytes `start..start + count` of an opened blob (the caller keeps the range inside it). The
    /// first window is read and checked before this returns, so a caller answers its status only once it
    /// knows the read can start.
    pub async fn stream_blob(
        self: Arc<Self>,
        key: BlobKey,
        opened: Opened,
        start: u64,
        count: u64,
    ) -> Result<BlobStream, RingError> {
        if count == 0 {
            return Ok(Box::pin(futures_util::stream::empty()));
        }
        let end = start + count - 1;
        let table = match opened {
            Opened::Whole(data) => {
                let piece = data.slice(start as usize..=end as usize);
                return Ok(Box::pin(futures_util::stream::once(
                    async move { Ok(piece) },
                )));
            }
            Opened::Windowed(t) => t,
        };
        let candidates = self.view().read_candidates(&key.ring_key());
        if candidates.is_empty() {
            return Err(RingError::Empty);
        }
        let w = WINDOW as u64;
        let mut reader = WindowReader {
            bad: vec![false; candidates.len()],
            candidates,
            node: 0,
            cluster: self,
            key,
            table,
            next: start / w,
            last: end / w,
            start,
            end,
            body: None,
            pending: Bytes::new(),
        };
        let first = reader.next_window().await?;
        let rest = futures_util::stream::unfold(reader, |mut r| async move {
            match r.next_window().await {
                Ok(Some(b)) => Some((Ok(b), r)),
                Ok(None) => None,
                Err(e) => {
                    // Ends the stream after the error.
                    r.next = r.last + 1;
                    Some((Err(e), r))
                }
            }
        });
        Ok(Box::pin(
            futures_util::stream::iter(first.map(Ok)).chain(rest),
        ))
    }
}

fn corrupt(node: &str, key: &BlobKey, why: &str) {
    count_read(node, "corrupt");
    metrics::counter!("distributary_ring_read_corrupt_total", "node" => node.to_owned())
        .increment(1);
    tracing::error!(%key, %node, why, "replica's bytes do not match the recorded digest; reading another");
}

/// Why one window could not be read from one replica.
enum WindowError {
    /// The replica sent bytes that do not match the table: never ask it again in this read.
    Corrupt(String),
    /// It could not be reached, refused, broke off or stalled: it may be asked again.
    Failed(String),
}

/// The state of one streamed read.
struct WindowReader {
    cluster: Arc<Cluster>,
    key: BlobKey,
    table: Arc<CheckedTable>,
    candidates: Vec<String>,
    /// Candidates that sent a bad copy of the window being read. A damaged sector spoils a window, not a
    /// replica: each window may come from whichever replica has it right.
    bad: Vec<bool>,
    /// The candidate being read.
    node: usize,
    /// The next window to yield, and the last one.
    next: u64,
    last: u64,
    /// The byte range asked for, inclusive.
    start: u64,
    end: u64,
    /// The open range response, positioned at window `next` once `pending` is used up.
    body: Option<reqwest::Response>,
    /// Bytes received past the last window yielded.
    pending: Bytes,
}

impl WindowReader {
    /// The next checked window, trimmed to the range; `None` at the end.
    async fn next_window(&mut self) -> Result<Option<Bytes>, RingError> {
        if self.next > self.last {
            return Ok(None);
        }
        let mut tries = self.candidates.len() * ATTEMPTS_PER_CANDIDATE;
        loop {
            let node = self.candidates[self.node].clone();
            let timeout = self.cluster.nodes.timeout();
            let outcome = match tokio::time::timeout(timeout, self.read_window(&node)).await {
                Ok(r) => r,
                Err(_) => Err(WindowError::Failed(format!(
                    "no window within {}s",
                    timeout.as_secs()
                ))),
            };
            match outcome {
                Ok(window) => {
                    let index = self.next;
                    self.next += 1;
                    self.bad.iter_mut().for_each(|b| *b = false);
                    if self.next > self.last {
                        // Past the last byte the reply announced: one more look lets the client see
                        // its end and pool the connection again.
                        if let Some(mut body) = self.body.take() {
                            let _ = body.chunk().now_or_never();
                        }
                    }
                    return Ok(Some(self.trim(index, window)));
                }
                Err(e) => {
                    self.body = None;
                    self.pending = Bytes::new();
                    match e {
                        WindowError::Corrupt(why) => {
                            corrupt(&node, &self.key, &why);
                            self.bad[self.node] = true;
                        }
                        WindowError::Failed(why) => {
                            count_read(&node, "error");
                            tracing::warn!(key = %self.key, %node, why, "replica read failed; reading another");
                        }
                    }
                    tries = tries.saturating_sub(1);
                    let good = (1..=self.candidates.len())
                        .map(|step| (self.node + step) % self.candidates.len())
                        .find(|&i| !self.bad[i]);
                    match good {
                        Some(i) if tries > 0 => self.node = i,
                        _ => return Err(RingError::NoReplica(self.key.to_string())),
                    }
                    if self.next > 0 {
                        metrics::counter!("distributary_ring_read_fallbacks_total").increment(1);
                    }
                }
            }
        }
    }

    /// Reads window `next` from `node`, opening a range request from it if none is open, and checks it.
    async fn read_window(&mut self, node: &str) -> Result<Bytes, WindowError> {
        let w = WINDOW as u64;
        let len = self.table.len;
        if self.body.is_none() {
            let from = self.next * w;
            let to = ((self.last + 1) * w).min(len) - 1;
            let resp = self
                .cluster
                .nodes
                .get_range(node, &self.key, from, to, RANGE_REQUEST_TIMEOUT)
                .await
                .map_err(|e| WindowError::Failed(e.to_string()))?;
            self.body = Some(resp);
            self.pending = Bytes::new();
            count_read(node, "ok");
        }
        let want = blob_digest::window_len(len, self.next);
        let window = if self.pending.len() >= want {
            // The whole window arrived in one piece: no copy.
            self.pending.split_to(want)
        } else {
            let mut buf = BytesMut::with_capacity(want);
            buf.extend_from_slice(&std::mem::take(&mut self.pending));
            let body = self.body.as_mut().expect("opened above");
            while buf.len() < want {
                let piece = body
                    .chunk()
                    .await
                    .map_err(|e| WindowError::Failed(format!("the reply broke off: {e}")))?
                    .ok_or_else(|| WindowError::Failed("the reply ended early".into()))?;
                let take = piece.len().min(want - buf.len());
                buf.extend_from_slice(&piece[..take]);
                if take < piece.len() {
                    self.pending = piece.slice(take..);
                }
            }
            buf.freeze()
        };
        let expected = &self.table.windows[self.next as usize];
        if blob_digest::window_digest(&window) != *expected {
            return Err(WindowError::Corrupt(format!(
                "window {} does not match its table entry",
                self.next
            )));
        }
        Ok(window)
    }

    /// The part of window `index` inside the range asked for.
    fn trim(&self, index: u64, window: Bytes) -> Bytes {
        let w = WINDOW as u64;
        let first = index * w;
        let a = self.start.saturating_sub(first) as usize;
        let b = ((self.end + 1).min(first + window.len() as u64) - first) as usize;
        window.slice(a..b)
    }
}
