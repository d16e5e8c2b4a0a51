//! The fan-out engine: one upload streamed to every target through bounded queues of shared chunks, then a
//! two-phase commit.
//!
//! Memory: the client body is cut into `buffer_size` chunks (`Bytes`, cloned by reference count, never
//! copied per target); each target's queue holds at most `queue_depth` of them, and the body is not read
//! while any live target's queue is full. So a slow target paces the client, and memory is bounded by
//! chunk size × queue depth whatever the file size.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use common::digest::Sha256Digest;
use common::protocol::{StagedReport, VideoMode, VideoReport, VIDEO_HEADER};
use futures_util::{Stream, StreamExt};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::SendTimeoutError;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::ring::nodes::{read_body_limited, send_signed};
use crate::ring::{Cluster, RingError};
use crate::summary::{Outcome, Summary, TargetReport, TargetState};
use crate::target::Target;

/// Best-effort aborts give up after this long; readers also expire staging on their own.
const ABORT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why an upload did not commit; each maps to a status code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Fewer targets than the quorum could stage or commit (502).
    Quorum,
    /// The client's digest did not match (422).
    DigestMismatch,
    /// The body exceeded the configured maximum (413).
    TooLarge,
    /// The client went away or its body broke (no one hears the answer; logged).
    ClientGone,
    /// A transcoding target refused the upload as no video (415) or a corrupt one (422).
    Rejected(u16),
    /// A video upload reached no target that transcodes (503).
    NoTranscoder,
    /// Too few targets could take the upload because the metadata store is unavailable (503).
    Unavailable,
}

/// What one upload needs besides its body.
#[derive(Debug, Clone)]
pub struct UploadRequest {
    /// Validated name.
    pub name: String,
    /// Digest the client announced, if any.
    pub expected_sha256: Option<Sha256Digest>,
    /// Content-Length the client announced, if any.
    pub declared_len: Option<u64>,
    /// Whether a transcoding target must turn the upload into a video.
    pub video: VideoMode,
}

/// How an upload ended.
#[derive(Debug)]
pub struct Finished {
    /// The JSON summary.
    pub summary: Summary,
    /// Why the upload was not kept, if it was not.
    pub failure: Option<Failure>,
    /// The video a transcoding target made of it.
    pub video: Option<VideoReport>,
}

/// Why a target's request failed, with the HTTP status it answered if it answered.
#[derive(Debug)]
struct LaneError {
    status: Option<u16>,
    message: String,
}

impl From<String> for LaneError {
    fn from(message: String) -> Self {
        Self {
            status: None,
            message,
        }
    }
}

/// Shared state of the fan-out: configuration and one HTTP client (its pool reuses target connections).
#[derive(Debug, Clone)]
pub struct Engine {
    config: Arc<Config>,
    client: reqwest::Client,
    cluster: Arc<Cluster>,
    /// One permit per upload in progress (`BROADCASTER_MAX_UPLOADS`): each holds buffers and a
    /// connection per target, so beyond the cap new uploads are refused with 503 instead of piling up.
    uploads: Arc<tokio::sync::Semaphore>,
}

/// A message on a target's queue. The stream ends cleanly only on `End`; a queue dropped without it makes
/// the request body fail, so a target can never mistake a cut-off upload for a complete one.
#[derive(Debug)]
enum Msg {
    Data(Bytes),
    End,
}

/// The request body of one target: drains its queue and counts bytes handed to the connection.
struct QueueBody {
    rx: mpsc::Receiver<Msg>,
    sent: Arc<AtomicU64>,
    done: bool,
}

impl Stream for QueueBody {
    type Item = io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        match self.rx.poll_recv(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Msg::Data(b))) => {
                self.sent.fetch_add(b.len() as u64, Ordering::Relaxed);
                Poll::Ready(Some(Ok(b)))
            }
            Poll::Ready(Some(Msg::End)) => {
                self.done = true;
                Poll::Ready(None)
            }
            Poll::Ready(None) => {
                self.done = true;
                Poll::Ready(Some(Err(io::Error::other(
                    "upload aborted by the broadcaster",
                ))))
            }
        }
    }
}

#[derive(Debug)]
enum LaneState {
    Live,
    /// Detached: broken, stalled, or staged a wrong copy.
    Failed(String),
    Staged,
    Committed,
    Aborted(String),
}

/// One target's side of an upload.
struct Lane {
    target: Target,
    /// Bounded queue into the target's request body; `None` once detached or ended.
    tx: Option<mpsc::Sender<Msg>>,
    task: Option<JoinHandle<Result<StagedReport, LaneError>>>,
    /// The target's staged report, once it arrived and matched the upload.
    report: Option<StagedReport>,
    /// HTTP status of the target's refusal, if it refused.
    refused: Option<u16>,
    /// Queue occupancy gauge, resolved once so the per-chunk path does no label lookup or allocation.
    queue_gauge: metrics::Gauge,
    sent: Arc<AtomicU64>,
    state: LaneState,
}

impl Lane {
    fn is_live(&self) -> bool {
        matches!(self.state, LaneState::Live)
    }

    /// Detaches a lane that stopped making progress: its connection is dropped.
    fn detach(&mut self, why: String) {
        self.tx = None;
        if let Some(task) = self.task.take() {
            task.abort();
        }
        self.state = LaneState::Failed(why);
    }

    /// The target's request ended early (connection refused, reset, error status): record why.
    async fn fail_from_task(&mut self) {
        self.tx = None;
        let why = match self.task.take() {
            Some(task) => match tokio::time::timeout(ABORT_TIMEOUT, task).await {
                Ok(Ok(Err(e))) => {
                    self.refused = e.status;
                    e.message
                }
                Ok(Ok(Ok(_))) => "target answered before the upload ended".to_owned(),
                Ok(Err(e)) => format!("target task failed: {e}"),
                Err(_) => "target stopped reading".to_owned(),
            },
            None => "target task missing".to_owned(),
        };
        self.state = LaneState::Failed(why);
    }
}

/// Largest staged report or error a target may send: reports are a few hundred bytes, a video's names a
/// few KiB per minute of video.
const MAX_REPLY_BYTES: u64 = 4 << 20;

impl Engine {
    /// Sends a request to a target, signed with the cluster secret when there is one.
    async fn send(
        &self,
        req: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, reqwest::Error> {
        send_signed(&self.client, self.config.cluster_secret.as_ref(), req).await
    }

    /// Builds the engine and its HTTP client.
    pub fn new(config: Arc<Config>, cluster: Arc<Cluster>) -> Result<Self, reqwest::Error> {
        let builder = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .tcp_nodelay(true)
            // HTTP/1.1: one connection per upload stream, no HTTP/2 flow-control window capping throughput.
            .http1_only()
            // Below the targets' keep-alive timeout: the pool drops a connection before the target does.
            .pool_idle_timeout(Duration::from_secs(30))
            // A target answering 3xx must not send the upload, or the broadcaster, anywhere else.
            .redirect(reqwest::redirect::Policy::none());
        // `https://` targets are verified against `DISTRIBUTARY_TLS_CA_FILE` when it is set.
        let client = common::tls::trust(builder, config.tls_ca.as_ref()).build()?;
        Ok(Self {
            uploads: Arc::new(tokio::sync::Semaphore::new(config.max_uploads)),
            config,
            client,
            cluster,
        })
    }

    /// A slot for one upload, or [`crate::error::BroadcastError::Busy`] when every slot is taken.
    pub fn admit(&self) -> Result<tokio::sync::OwnedSemaphorePermit, crate::error::BroadcastError> {
        self.uploads.clone().try_acquire_owned().map_err(|_| {
            metrics::counter!("distributary_uploads_refused_busy_total").increment(1);
            crate::error::BroadcastError::Busy(self.config.max_uploads)
        })
    }

    /// Uploads in progress, and the most allowed at once.
    pub fn load(&self) -> (usize, usize) {
        let max = self.config.max_uploads;
        (max - self.uploads.available_permits(), max)
    }

    /// The storage ring.
    pub fn cluster(&self) -> &Arc<Cluster> {
        &self.cluster
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Streams `body` to every target and commits or aborts. Never fails as a whole: the summary says what
    /// happened and the optional [`Failure`] why the upload was not kept.
    pub async fn run<S, E>(&self, req: UploadRequest, body: S) -> Finished
    where
        S: Stream<Item = Result<Bytes, E>> + Send,
        E: std::fmt::Display,
    {
        let started = Instant::now();
        let cfg = &self.config;
        metrics::gauge!("distributary_uploads_active").increment(1.0);
        let _active = ActiveUpload;
        let id = uuid::Uuid::new_v4().simple().to_string();
        let mut failure = None;
        let mut error = None;
        // The ring's chunks of this upload are protected from the housekeeping sweep by a lease, held until
        // they are committed (recorded) or deleted.
        let _lease = if cfg.targets.iter().any(|t| t.is_ring) {
            match self.cluster.lease(&id, vec![format!("raw.{id}")]).await {
                Ok(guard) => Some(guard),
                Err(e) => {
                    failure = Some(Failure::Unavailable);
                    error = Some(format!("cannot register the upload: {e}"));
                    None
                }
            }
        } else {
            None
        };
        let mut lanes: Vec<Lane> = cfg
            .targets
            .iter()
            .map(|t| self.open_lane(t, &id, &req.name, req.video))
            .collect();

        let mut hasher = Sha256::new();
        let mut quick = xxhash_rust::xxh3::Xxh3::new();
        let mut total = 0u64;
        let mut buf = BytesMut::with_capacity(cfg.buffer_size);

        // A client that stops sending for this long is gone: its slot and its targets' staging are freed.
        let body = common::guard::IdleTimeout::new(Box::pin(body), cfg.body_idle_timeout);
        futures_util::pin_mut!(body);
        while failure.is_none() {
            let frame = match body.next().await {
                None => break,
                Some(Ok(frame)) => frame,
                Some(Err(e)) => {
                    failure = Some(Failure::ClientGone);
                    error = Some(format!("client body failed: {e}"));
                    break;
                }
            };
            total += frame.len() as u64;
            metrics::counter!("distributary_upload_bytes_received_total")
                .increment(frame.len() as u64);
            if let Some(max) = cfg.max_upload_bytes {
                if total > max {
                    failure = Some(Failure::TooLarge);
                    error = Some(format!("body exceeds the limit of {max} bytes"));
                    break;
                }
            }
            hasher.update(&frame);
            quick.update(&frame);
            let mut rest = &frame[..];
            while !rest.is_empty() {
                let take = rest.len().min(cfg.buffer_size - buf.len());
                buf.extend_from_slice(&rest[..take]);
                rest = &rest[take..];
                if buf.len() == cfg.buffer_size {
                    let chunk =
                        std::mem::replace(&mut buf, BytesMut::with_capacity(cfg.buffer_size))
                            .freeze();
                    self.dispatch(&mut lanes, Msg::Data(chunk)).await;
                }
            }
            if live(&lanes) < cfg.min_success {
                failure = Some(Failure::Quorum);
                error = Some(quorum_error(&lanes, cfg.min_success));
            }
        }
        if failure.is_none() && !buf.is_empty() {
            self.dispatch(&mut lanes, Msg::Data(buf.split().freeze()))
                .await;
        }
        let digest: Sha256Digest = hasher.finalize().into();
        let xxh3 = common::protocol::xxh3_hex(quick.digest128());

        if failure.is_none() {
            if let Some(len) = req.declared_len.filter(|&l| l != total) {
                failure = Some(Failure::ClientGone);
                error = Some(format!("body ended after {total} of {len} announced bytes"));
            }
        }
        if failure.is_none() {
            if let Some(expected) = req.expected_sha256.filter(|e| *e != digest) {
                failure = Some(Failure::DigestMismatch);
                error = Some(format!(
                    "digest mismatch: client announced sha-256 {}, received {}",
                    hex::encode(expected),
                    hex::encode(digest)
                ));
            }
        }

        if failure.is_none() {
            // Phase 1 ends: every live target gets a clean end of body and reports its staged copy.
            self.dispatch(&mut lanes, Msg::End).await;
            self.collect_staged(&mut lanes, total, &digest, &xxh3).await;
            let refused = lanes
                .iter()
                .find_map(|l| l.refused.filter(|s| *s == 415 || *s == 422));
            let video = lanes
                .iter()
                .find_map(|l| l.report.as_ref().and_then(|r| r.video.clone()));
            if let (VideoMode::Required, Some(status)) = (req.video, refused) {
                failure = Some(Failure::Rejected(status));
                error = lanes
                    .iter()
                    .find(|l| l.refused == Some(status))
                    .and_then(|l| match &l.state {
                        LaneState::Failed(e) => Some(e.clone()),
                        _ => None,
                    });
            } else if req.video == VideoMode::Required && video.is_none() {
                failure = Some(Failure::NoTranscoder);
                error = Some(
                    "no target transcoded the video: is a dash reader in BROADCASTER_HOST_LIST?"
                        .into(),
                );
            } else if staged(&lanes) < cfg.min_success {
                failure = Some(Failure::Quorum);
                error = Some(quorum_error(&lanes, cfg.min_success));
            }
        }

        if failure == Some(Failure::Quorum) {
            if let Some(lane) = lanes.iter().find(|l| l.refused == Some(503)) {
                failure = Some(Failure::Unavailable);
                if let LaneState::Failed(e) = &lane.state {
                    error = Some(format!("{}: {e}", lane.target));
                }
            }
        }
        if failure.is_none() {
            // Phase 2.
            self.commit_all(&mut lanes, &id, &req.name, total, &digest)
                .await;
            let committed = count(&lanes, |s| matches!(s, LaneState::Committed));
            if committed < cfg.min_success {
                // Commits that did happen cannot be taken back; they hold complete, verified copies.
                tracing::error!(name = %req.name, committed, required = cfg.min_success, "quorum lost during commit");
                failure = Some(Failure::Quorum);
                error = Some(quorum_error(&lanes, cfg.min_success));
            }
        } else {
            let why = error.clone().unwrap_or_default();
            self.abort_all(&mut lanes, &id, &why).await;
        }
        self.abort_failed(&lanes, &id);

        let summary = Summary {
            name: req.name.clone(),
            size: total,
            sha256: hex::encode(digest),
            outcome: if failure.is_none() {
                Outcome::Committed
            } else {
                Outcome::Failed
            },
            committed: count(&lanes, |s| matches!(s, LaneState::Committed)),
            required: cfg.min_success,
            duration_ms: started.elapsed().as_millis() as u64,
            error,
            targets: lanes.iter().map(report).collect(),
        };
        log_summary(&summary, started.elapsed());
        record_metrics(&summary, &failure, started.elapsed());
        let video = if summary.outcome == Outcome::Committed {
            lanes
                .iter()
                .find_map(|l| l.report.as_ref().and_then(|r| r.video.clone()))
        } else {
            None
        };
        Finished {
            summary,
            failure,
            video,
        }
    }

    fn open_lane(&self, target: &Target, id: &str, name: &str, video: VideoMode) -> Lane {
        let (tx, rx) = mpsc::channel(self.config.queue_depth);
        let sent = Arc::new(AtomicU64::new(0));
        let body = QueueBody {
            rx,
            sent: sent.clone(),
            done: false,
        };
        if target.is_ring {
            let task = tokio::spawn(self.cluster.clone().stage_chunks(id.to_owned(), body));
            let task = tokio::spawn(async move {
                task.await
                    .map_err(|e| LaneError::from(format!("ring task: {e}")))?
                    .map_err(|e| LaneError {
                        // The metadata store without quorum is "unavailable", not a bad gateway.
                        status: matches!(&e, RingError::Meta(m) if m.is_unavailable())
                            .then_some(503),
                        message: e.to_string(),
                    })
            });
            return Lane {
                target: target.clone(),
                tx: Some(tx),
                task: Some(task),
                sent,
                state: LaneState::Live,
                report: None,
                refused: None,
                queue_gauge: queue_gauge(target),
            };
        }
        let request = self
            .client
            .put(target.stage_url(id, name))
            .header(VIDEO_HEADER, video.as_str())
            .body(reqwest::Body::wrap_stream(body));
        let (client, secret) = (self.client.clone(), self.config.cluster_secret.clone());
        let task = tokio::spawn(async move {
            let resp = send_signed(&client, secret.as_ref(), request)
                .await
                .map_err(|e| LaneError::from(describe(&e)))?;
            let status = resp.status();
            if !status.is_success() {
                let body = read_body_limited(resp, MAX_REPLY_BYTES)
                    .await
                    .unwrap_or_default();
                // Targets answer `{"error": "…"}`; only that message is passed on, shortened, never
                // whatever else a target sends.
                let text = serde_json::from_slice::<common::protocol::ErrorBody>(&body)
                    .map(|b| b.error.chars().take(300).collect::<String>())
                    .unwrap_or_else(|_| "no error message".into());
                return Err(LaneError {
                    status: Some(status.as_u16()),
                    message: format!("target answered {status}: {}", text.trim()),
                });
            }
            let body = read_body_limited(resp, MAX_REPLY_BYTES)
                .await
                .map_err(|e| LaneError::from(format!("bad staged report: {e}")))?;
            serde_json::from_slice::<StagedReport>(&body)
                .map_err(|e| LaneError::from(format!("bad staged report: {e}")))
        });
        Lane {
            target: target.clone(),
            tx: Some(tx),
            task: Some(task),
            sent,
            state: LaneState::Live,
            report: None,
            refused: None,
            queue_gauge: queue_gauge(target),
        }
    }

    /// Hands one message to every live target, detaching any whose queue stays full past the stall timeout.
    async fn dispatch(&self, lanes: &mut [Lane], msg: Msg) {
        let stall = self.config.stall_timeout;
        for lane in lanes.iter_mut().filter(|l| l.is_live()) {
            let Some(tx) = &lane.tx else { continue };
            let m = match &msg {
                Msg::Data(b) => Msg::Data(b.clone()),
                Msg::End => Msg::End,
            };
            match tx.send_timeout(m, stall).await {
                Ok(()) => {
                    lane.queue_gauge
                        .set((tx.max_capacity() - tx.capacity()) as f64);
                }
                Err(SendTimeoutError::Timeout(_)) => {
                    lane.detach(format!("stalled: no progress for {} ms", stall.as_millis()));
                    metrics::counter!("distributary_target_detached_total", "target" => lane.target.label.clone(), "reason" => "stall").increment(1);
                    tracing::warn!(target = %lane.target, "target stalled; detached");
                }
                Err(SendTimeoutError::Closed(_)) => {
                    lane.fail_from_task().await;
                    metrics::counter!("distributary_target_detached_total", "target" => lane.target.label.clone(), "reason" => "failure").increment(1);
                    tracing::warn!(target = %lane.target, state = ?lane.state, "target failed; detached");
                }
            }
        }
    }

    /// Waits for each live target's staged report and checks it against what the client sent.
    async fn collect_staged(
        &self,
        lanes: &mut [Lane],
        total: u64,
        digest: &Sha256Digest,
        xxh3: &str,
    ) {
        let timeout = self.config.stage_timeout;
        let want = &hex::encode(digest);
        let waits = lanes
            .iter_mut()
            .filter(|l| l.is_live())
            .map(|lane| async move {
                lane.tx = None;
                let Some(task) = lane.task.take() else { return };
                lane.state = match tokio::time::timeout(timeout, task).await {
                    Err(_) => LaneState::Failed(format!(
                        "no staged report within {} ms",
                        timeout.as_millis()
                    )),
                    Ok(Err(e)) => LaneState::Failed(format!("target task failed: {e}")),
                    Ok(Ok(Err(e))) => {
                        lane.refused = e.status;
                        LaneState::Failed(e.message)
                    }
                    Ok(Ok(Ok(r))) => match r.verify(total, want, xxh3) {
                        Ok(()) => {
                            lane.report = Some(r);
                            LaneState::Staged
                        }
                        Err(e) => LaneState::Failed(e),
                    },
                };
            });
        futures_util::future::join_all(waits).await;
    }

    async fn commit_all(
        &self,
        lanes: &mut [Lane],
        id: &str,
        name: &str,
        size: u64,
        digest: &Sha256Digest,
    ) {
        let timeout = self.config.stage_timeout;
        let client = &self.client;
        let sha = &hex::encode(digest);
        let commits = lanes
            .iter_mut()
            .filter(|l| matches!(l.state, LaneState::Staged))
            .map(|lane| async move {
                if lane.target.is_ring {
                    let chunks = lane
                        .report
                        .as_ref()
                        .map(|r| r.chunk_sha256.clone())
                        .unwrap_or_default();
                    lane.state = match self.cluster.commit_file(name, id, size, sha, chunks).await {
                        Ok(()) => LaneState::Committed,
                        Err(e) => LaneState::Failed(format!("commit failed: {e}")),
                    };
                    return;
                }
                let url = lane.target.commit_url(id);
                let res = self.send(client.post(url).timeout(timeout)).await;
                lane.state = match res {
                    Ok(r) if r.status().is_success() => LaneState::Committed,
                    Ok(r) => LaneState::Failed(format!("commit answered {}", r.status())),
                    Err(e) => LaneState::Failed(format!("commit failed: {}", describe(&e))),
                };
            });
        futures_util::future::join_all(commits).await;
    }

    /// Tells every target still in the upload to discard it, and waits (briefly) until they did.
    async fn abort_all(&self, lanes: &mut [Lane], id: &str, why: &str) {
        let client = &self.client;
        let aborts = lanes
            .iter_mut()
            .filter(|l| matches!(l.state, LaneState::Live | LaneState::Staged))
            .map(|lane| async move {
                // Dropping the queue without `End` makes the target's body fail, so it stages nothing.
                lane.tx = None;
                if let Some(task) = lane.task.take() {
                    if tokio::time::timeout(ABORT_TIMEOUT, task).await.is_err() {
                        tracing::warn!(target = %lane.target, "target did not notice the abort in time");
                    }
                }
                if lane.target.is_ring {
                    self.cluster.delete_chunks(id, ring_chunks(&self.cluster, lane)).await;
                } else {
                    let _ = self
                        .send(client.delete(lane.target.abort_url(id)).timeout(ABORT_TIMEOUT))
                        .await;
                }
                lane.state = LaneState::Aborted(why.to_owned());
            });
        futures_util::future::join_all(aborts).await;
    }

    /// Detached targets may still hold staging; tell them to drop it without making the client wait.
    fn abort_failed(&self, lanes: &[Lane], id: &str) {
        for lane in lanes
            .iter()
            .filter(|l| matches!(l.state, LaneState::Failed(_)))
        {
            if lane.target.is_ring {
                let cluster = self.cluster.clone();
                let (id, n) = (id.to_owned(), ring_chunks(&self.cluster, lane));
                tokio::spawn(async move { cluster.delete_chunks(&id, n).await });
                continue;
            }
            let req = self
                .client
                .delete(lane.target.abort_url(id))
                .timeout(ABORT_TIMEOUT);
            let (client, secret) = (self.client.clone(), self.config.cluster_secret.clone());
            tokio::spawn(async move {
                let _ = send_signed(&client, secret.as_ref(), req).await;
            });
        }
    }
}

/// Chunks a ring lane may have written: every chunk it received bytes for.
fn ring_chunks(cluster: &Cluster, lane: &Lane) -> u64 {
    lane.sent
        .load(Ordering::Relaxed)
        .div_ceil(cluster.chunk_size() as u64)
        + 1
}

fn live(lanes: &[Lane]) -> usize {
    count(lanes, |s| matches!(s, LaneState::Live))
}

fn staged(lanes: &[Lane]) -> usize {
    count(lanes, |s| matches!(s, LaneState::Staged))
}

fn count(lanes: &[Lane], f: impl Fn(&LaneState) -> bool) -> usize {
    lanes.iter().filter(|l| f(&l.state)).count()
}

fn quorum_error(lanes: &[Lane], required: usize) -> String {
    let ok = count(lanes, |s| {
        matches!(
            s,
            LaneState::Live | LaneState::Staged | LaneState::Committed
        )
    });
    format!(
        "only {ok} of {} targets could take the upload; {required} required",
        lanes.len()
    )
}

fn report(lane: &Lane) -> TargetReport {
    let (state, error) = match &lane.state {
        LaneState::Committed => (TargetState::Committed, None),
        LaneState::Failed(e) => (TargetState::Failed, Some(e.clone())),
        LaneState::Aborted(e) => (TargetState::Aborted, Some(e.clone())),
        // Unreachable once an upload finished; reported honestly if it ever happens.
        LaneState::Live | LaneState::Staged => (
            TargetState::Aborted,
            Some("upload ended before commit".into()),
        ),
    };
    TargetReport {
        target: lane.target.label.clone(),
        state,
        bytes: lane.sent.load(Ordering::Relaxed),
        error,
    }
}

/// reqwest's Display hides the cause ("error sending request"); the chain says what happened.
fn describe(e: &reqwest::Error) -> String {
    use std::error::Error;
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(cause) = src {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        src = cause.source();
    }
    // reqwest names the URL in its messages; a target's credentials must not reach summaries or logs.
    if let Some(url) = e.url() {
        if !url.username().is_empty() || url.password().is_some() {
            let mut shown = url.clone();
            let _ = shown.set_username("");
            let _ = shown.set_password(None);
            s = s.replace(url.as_str(), shown.as_str());
        }
    }
    s
}

fn queue_gauge(target: &Target) -> metrics::Gauge {
    metrics::gauge!("distributary_target_queue_occupancy", "target" => target.label.clone())
}

/// Decrements the active-uploads gauge however the upload ends.
struct ActiveUpload;

impl Drop for ActiveUpload {
    fn drop(&mut self) {
        metrics::gauge!("distributary_uploads_active").decrement(1.0);
    }
}

fn record_metrics(s: &Summary, failure: &Option<Failure>, elapsed: Duration) {
    let reason = match failure {
        None => "none",
        Some(Failure::Quorum) => "quorum",
        Some(Failure::DigestMismatch) => "digest",
        Some(Failure::TooLarge) => "too_large",
        Some(Failure::ClientGone) => "client_gone",
        Some(Failure::Rejected(_)) => "rejected",
        Some(Failure::NoTranscoder) => "no_transcoder",
        Some(Failure::Unavailable) => "unavailable",
    };
    let outcome = match s.outcome {
        Outcome::Committed => "committed",
        Outcome::Failed => "failed",
    };
    metrics::counter!("distributary_uploads_total", "outcome" => outcome, "reason" => reason)
        .increment(1);
    metrics::histogram!("distributary_upload_seconds", "outcome" => outcome)
        .record(elapsed.as_secs_f64());
    for t in &s.targets {
        let state = match t.state {
            TargetState::Committed => "committed",
            TargetState::Failed => "failed",
            TargetState::Aborted => "aborted",
        };
        metrics::counter!("distributary_target_bytes_sent_total", "target" => t.target.clone())
            .increment(t.bytes);
        metrics::counter!("distributary_target_outcomes_total", "target" => t.target.clone(), "state" => state)
            .increment(1);
        metrics::gauge!("distributary_target_queue_occupancy", "target" => t.target.clone())
            .set(0.0);
    }
}

fn log_summary(s: &Summary, elapsed: Duration) {
    let mbps = s.size as f64 / 1e6 / elapsed.as_secs_f64().max(1e-9);
    for t in &s.targets {
        match t.state {
            TargetState::Committed => {
                tracing::info!(name = %s.name, target = %t.target, bytes = t.bytes, "target committed")
            }
            _ => {
                tracing::warn!(name = %s.name, target = %t.target, state = ?t.state, bytes = t.bytes, error = t.error.as_deref().unwrap_or(""), "target did not commit")
            }
        }
    }
    match s.outcome {
        Outcome::Committed => tracing::info!(
            name = %s.name, size = s.size, sha256 = %s.sha256, committed = s.committed, required = s.required,
            ms = s.duration_ms, mbps = format!("{mbps:.1}"), "upload committed"
        ),
        Outcome::Failed => tracing::warn!(
            name = %s.name, size = s.size, committed = s.committed, required = s.required, ms = s.duration_ms,
            error = s.error.as_deref().unwrap_or(""), "upload failed"
        ),
    }
}
