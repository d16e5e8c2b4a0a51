//! Streamed, verified reads of ring blobs in constant memory.
//!
//! A blob recorded with a windowed digest (see [`common::blob_digest`]) is read in two steps. Its window
//! table is fetched from a replica and checked against the recorded digest (then kept in a small cache:
//! a table checked once is good on every replica). The payload is then read in [`WINDOW`]-byte windows, a
//! few per `Range` request, and each window is checked against its table entry before any of its bytes is
//! handed on: a damaged or lying replica is caught before a viewer sees its bytes, and that window is read
//! again from another replica.
//!
//! Memory does not grow with the number of viewers: at most [`FETCHES_AT_ONCE`] fetches (of at most 4
//! windows each) are under way in the process, and a checked window goes into a cache shared by every read
//! (a byte budget, least recently used out), so viewers of the same video share one copy of each window and
//! popular content is served without a node round trip or a hash. A viewer holds at most the windows of
//! one fetch.
//!
//! A blob recorded with a plain SHA-256 (written before windows) is read whole and checked, as before.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use common::blob_digest::{self, BlobDigest, WindowDigest, WINDOW};
use futures_util::{Stream, StreamExt};
use meta::VideoRecord;

use super::nodes::{BlobKey, NodeError};
use super::{count_read, Cluster, RingError};

/// Bytes of window tables the cache keeps (a 4 MiB segment's table is 2 KiB).
const TABLE_CACHE_BYTES: usize = 4 << 20;

/// Bytes of checked windows kept by default (see [`Caches::windows`]).
pub const DEFAULT_WINDOW_CACHE_BYTES: usize = 32 << 20;

/// A map that keeps its least recently used entries within a byte budget, each entry weighing what its
/// caller says, behind a lock so that every read of the process shares it. An entry over an eighth of the
/// budget is not kept: one large entry must not empty the cache.
pub(crate) struct BudgetLru<K, V> {
    budget: AtomicUsize,
    inner: Mutex<LruInner<K, V>>,
}

struct LruInner<K, V> {
    entries: hashlink::LruCache<K, (V, usize)>,
    bytes: usize,
}

impl<K, V> std::fmt::Debug for BudgetLru<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        f.debug_struct("BudgetLru")
            .field("entries", &inner.entries.len())
            .field("bytes", &inner.bytes)
            .field("budget", &self.budget.load(Ordering::Relaxed))
            .finish()
    }
}

impl<K: std::hash::Hash + Eq, V: Clone> BudgetLru<K, V> {
    pub(crate) fn new(budget: usize) -> Self {
        Self {
            budget: AtomicUsize::new(budget),
            inner: Mutex::new(LruInner {
                entries: hashlink::LruCache::new_unbounded(),
                bytes: 0,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LruInner<K, V>> {
        // Entries go in and out whole: a panic while the lock is held leaves nothing half done.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Changes the budget; entries beyond it go as others come.
    fn set_budget(&self, bytes: usize) {
        self.budget.store(bytes, Ordering::Relaxed);
    }

    fn get<Q>(&self, key: &Q) -> Option<V>
    where
        K: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        self.lock().entries.get(key).map(|(v, _)| v.clone())
    }

    fn insert(&self, key: K, value: V, size: usize) {
        let budget = self.budget.load(Ordering::Relaxed);
        if size > budget / 8 {
            return;
        }
        let mut inner = self.lock();
        if let Some((_, old)) = inner.entries.insert(key, (value, size)) {
            inner.bytes -= old;
        }
        inner.bytes += size;
        while inner.bytes > budget {
            match inner.entries.remove_lru() {
                Some((_, (_, n))) => inner.bytes -= n,
                None => break,
            }
        }
    }
}

/// What reads of a process share.
#[derive(Debug)]
pub(crate) struct Caches {
    /// Windows checked lately: a window that matched its table entry is good for as long as the digest it
    /// belongs to, so the popular part of a site (the videos being watched) is served from memory, without
    /// a node round trip or a hash, and every viewer of it shares one copy instead of holding its own.
    windows: BudgetLru<(BlobDigest, u64), Bytes>,
    /// Window tables checked against their recorded digest, by that digest.
    tables: BudgetLru<BlobDigest, Arc<CheckedTable>>,
    /// Video records read lately for serving, with when, so that a page asking for hundreds of segments
    /// does not read and parse the record (hundreds of digests) once per segment.
    records: BudgetLru<String, (Instant, Arc<VideoRecord>)>,
}

impl Default for Caches {
    fn default() -> Self {
        Self {
            windows: BudgetLru::new(DEFAULT_WINDOW_CACHE_BYTES),
            tables: BudgetLru::new(TABLE_CACHE_BYTES),
            records: BudgetLru::new(RECORD_CACHE_BYTES),
        }
    }
}

/// How long a video record read for serving its files is reused.
const RECORD_TTL: Duration = Duration::from_secs(1);

/// Approximate bytes of video records the cache keeps.
const RECORD_CACHE_BYTES: usize = 8 << 20;

/// How long one window's range request may take, body included.
const RANGE_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Window fetches from nodes under way at once in a process (see [`WindowReader::fetch_windows`]).
pub const FETCHES_AT_ONCE: usize = 32;

/// Windows one fetch asks a node for: a 256 KiB range, so a typical segment is one or a few round trips
/// while a viewer holds at most this much beyond what the cache shares.
const WINDOWS_PER_FETCH: u64 = 4;

/// Tries without a window going out before a read gives up, per candidate replica.
const ATTEMPTS_PER_CANDIDATE: usize = 2;

/// A window table checked against the digest recorded for its blob.
#[derive(Debug)]
pub struct CheckedTable {
    digest: BlobDigest,
    len: u64,
    windows: Vec<WindowDigest>,
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
    /// Sets the byte budget of the cache of checked windows (0 turns it off); what is kept beyond it is
    /// dropped as windows come and go.
    pub fn set_window_cache_bytes(&self, bytes: usize) {
        self.caches.windows.set_budget(bytes);
    }

    /// Video `id`'s record for serving its files: one read at most [`RECORD_TTL`] ago, or (with `fresh`,
    /// or none that recent) one read now. A missing record is not remembered.
    pub async fn video_for_reading(
        &self,
        id: &str,
        fresh: bool,
    ) -> Result<Option<Arc<VideoRecord>>, RingError> {
        if !fresh {
            match self.caches.records.get(id) {
                Some((at, v)) if at.elapsed() < RECORD_TTL => return Ok(Some(v)),
                _ => {}
            }
        }
        let Some(record) = self.meta.get_video(id).await? else {
            return Ok(None);
        };
        let record = Arc::new(record);
        let size = 256
            + record.files.len() * 32
            + record
                .digests
                .iter()
                .map(|(k, v)| k.len() + v.len() + 48)
                .sum::<usize>();
        self.caches
            .records
            .insert(id.to_owned(), (Instant::now(), record.clone()), size);
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
        if let Some(t) = self.caches.tables.get(&windowed) {
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
                            digest: windowed,
                            len: got.len,
                            windows,
                        });
                        let size = table.windows.len() * 32 + 64;
                        self.caches.tables.insert(windowed, table.clone(), size);
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
            ready: std::collections::VecDeque::new(),
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
    /// The replica sent bytes that do not match the table: not asked for this window again.
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
    /// Windows fetched and checked ahead, from `next` on.
    ready: std::collections::VecDeque<Bytes>,
}

impl WindowReader {
    /// The next checked window, trimmed to the range; `None` at the end.
    async fn next_window(&mut self) -> Result<Option<Bytes>, RingError> {
        if self.next > self.last {
            return Ok(None);
        }
        let index = self.next;
        let digest = self.table.digest;
        if let Some(window) = self
            .ready
            .pop_front()
            .or_else(|| self.cluster.caches.windows.get(&(digest, index)))
        {
            self.next += 1;
            return Ok(Some(self.trim(index, window)));
        }
        let mut tries = self.candidates.len() * ATTEMPTS_PER_CANDIDATE;
        loop {
            let node = self.candidates[self.node].clone();
            // The wait for a turn is not the node's time: only the fetch itself is bounded.
            let cluster = self.cluster.clone();
            let _turn = cluster
                .fetches
                .acquire()
                .await
                .map_err(|_| RingError::Aborted("the process is shutting down".into()))?;
            let timeout = self.cluster.nodes.timeout();
            let outcome = match tokio::time::timeout(timeout, self.fetch_windows(&node)).await {
                Ok(r) => r,
                Err(_) => Err(WindowError::Failed(format!(
                    "no window within {}s",
                    timeout.as_secs()
                ))),
            };
            match outcome {
                Ok(windows) => {
                    self.bad.iter_mut().for_each(|b| *b = false);
                    for (i, w) in windows.iter().enumerate() {
                        let at = (digest, index + i as u64);
                        self.cluster.caches.windows.insert(at, w.clone(), w.len());
                    }
                    let mut windows = windows.into_iter();
                    if let Some(window) = windows.next() {
                        self.ready.extend(windows);
                        self.next += 1;
                        return Ok(Some(self.trim(index, window)));
                    }
                }
                Err(WindowError::Corrupt(why)) => {
                    corrupt(&node, &self.key, &why);
                    self.bad[self.node] = true;
                }
                Err(WindowError::Failed(why)) => {
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
            metrics::counter!("distributary_ring_read_fallbacks_total").increment(1);
        }
    }

    /// Reads windows from `next` on from `node` with one range request (up to [`WINDOWS_PER_FETCH`], and
    /// not past a window the cache holds), and checks each; answers at least one. The caller holds one of
    /// the [`FETCHES_AT_ONCE`] turns of the process; each fetch reads into buffers of its own, and the
    /// connection goes back to the pool before a viewer drains what it was sent: memory does not grow with
    /// the number of viewers.
    async fn fetch_windows(&mut self, node: &str) -> Result<Vec<Bytes>, WindowError> {
        let index = self.next;
        // Another read may have fetched it while this one waited: viewers of one video ask for the same
        // windows at about the same time.
        if let Some(window) = self.cluster.caches.windows.get(&(self.table.digest, index)) {
            return Ok(vec![window]);
        }
        let mut last = index;
        while last < self.last
            && last + 1 - index < WINDOWS_PER_FETCH
            && self
                .cluster
                .caches
                .windows
                .get(&(self.table.digest, last + 1))
                .is_none()
        {
            last += 1;
        }
        let len = self.table.len;
        let from = index * WINDOW as u64;
        let to = ((last + 1) * WINDOW as u64).min(len) - 1;
        let mut resp = self
            .cluster
            .nodes
            .get_range(node, &self.key, from, to, RANGE_REQUEST_TIMEOUT)
            .await
            .map_err(|e| WindowError::Failed(e.to_string()))?;
        count_read(node, "ok");
        let mut windows = Vec::new();
        // Buffers of the windows' own: a slice of the client's read buffer would pin all of it for as long
        // as a window waits for its viewer or stays in the cache.
        let mut current = index;
        let mut buf = BytesMut::with_capacity(blob_digest::window_len(len, current));
        while let Some(mut piece) = resp
            .chunk()
            .await
            .map_err(|e| WindowError::Failed(format!("the reply broke off: {e}")))?
        {
            while !piece.is_empty() {
                if current > last {
                    return Err(WindowError::Failed(
                        "the reply is longer than the range".into(),
                    ));
                }
                let want = blob_digest::window_len(len, current);
                let take = piece.len().min(want - buf.len());
                buf.extend_from_slice(&piece.split_to(take));
                if buf.len() == want {
                    let window = std::mem::take(&mut buf).freeze();
                    if blob_digest::window_digest(&window) != self.table.windows[current as usize] {
                        let why = format!("window {current} does not match its table entry");
                        // The windows before it are good: keep them, and ask again from this one.
                        return if windows.is_empty() {
                            Err(WindowError::Corrupt(why))
                        } else {
                            Ok(windows)
                        };
                    }
                    windows.push(window);
                    current += 1;
                    buf = BytesMut::with_capacity(blob_digest::window_len(len, current));
                }
            }
        }
        if current <= last {
            return Err(WindowError::Failed("the reply ended early".into()));
        }
        Ok(windows)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_lru_keeps_the_recently_used_within_its_budget() {
        let lru: BudgetLru<u32, u32> = BudgetLru::new(800);
        for k in 0..8 {
            lru.insert(k, k * 10, 100);
        }
        assert_eq!(lru.get(&0), Some(0));
        // Over budget: the least recently used (1, since 0 was just read) goes first.
        lru.insert(8, 80, 100);
        assert_eq!(lru.get(&1), None);
        assert_eq!(lru.get(&0), Some(0));
        assert_eq!(lru.get(&8), Some(80));
        // Replacing an entry does not count it twice.
        lru.insert(8, 81, 100);
        assert_eq!(lru.lock().bytes, 800);
        // An entry over an eighth of the budget is not kept.
        lru.insert(9, 90, 101);
        assert_eq!(lru.get(&9), None);
        // A smaller budget sheds entries as others come; zero keeps nothing.
        lru.set_budget(200);
        lru.insert(10, 100, 25);
        assert!(lru.lock().bytes <= 200);
        assert_eq!(lru.get(&10), Some(100));
        lru.set_budget(0);
        lru.insert(11, 110, 1);
        assert_eq!(lru.get(&11), None);
    }
}
