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
pub(crate) struct LaneError {
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
    /// Resumable uploads in progress in this process.
    resumable: Arc<crate::resumable::Uploads>,
}

/// A message on a target's queue. The stream ends cleanly only on `End`; a queue dropped without it makes
/// the request body fail, so a target can never mistake a cut-off upload for a complete one.
#[derive(Debug)]
pub(crate) enum Msg {
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
pub(crate) enum LaneState {
    Live,
    /// Detached: broken, stalled, or staged a wrong copy.
    Failed(String),
    Staged,
    Committed,
    Aborted(String),
}

/// How a target takes part: over the stream protocol, or as the storage ring written from this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LaneKind {
    Http,
    Ring,
}

/// How a lane stages: the whole body in one request, or an append to a resumable upload.
#[derive(Debug, Clone)]
pub(crate) enum Mode {
    OneShot,
    Append {
        /// Where the append starts: what the quorum holds.
        offset: u64,
        /// How long targets keep the staging untouched.
        keep_secs: u64,
        /// The ring's chunks so far (the last may be partial).
        ring_chunks: Vec<String>,
    },
}

/// What a lane's request answered at the end of its body.
#[derive(Debug)]
pub(crate) enum Reply {
    /// A one-shot stage: the whole staged copy.
    Staged(StagedReport),
    /// An append: the bytes the target now holds (and, for the ring, its chunks).
    Held {
        bytes: u64,
        ring_chunks: Vec<String>,
    },
}

/// Why an upload or a segment of it stopped, if it did.
#[derive(Debug, Default)]
pub(crate) struct Ended {
    pub failure: Option<Failure>,
    pub error: Option<String>,
}

impl Ended {
    /// Records the first failure; later ones are consequences.
    pub fn fail(&mut self, failure: Failure, error: String) {
        if self.failure.is_none() {
            self.failure = Some(failure);
            self.error = Some(error);
        }
    }
}

/// What [`Engine::pump`] streamed.
#[derive(Debug)]
pub(crate) struct Pumped {
    /// Bytes taken from the body and queued to the lanes.
    pub bytes: u64,
    pub end: Ended,
    /// The body ended cleanly (nothing more will come).
    pub body_ended: bool,
}

/// What [`Engine::conclude`] needs of the upload.
#[derive(Debug)]
pub(crate) struct Concluding<'a> {
    pub id: &'a str,
    pub name: &'a str,
    pub video: VideoMode,
    pub size: u64,
    pub digest: Sha256Digest,
    pub started: Instant,
    pub end: Ended,
}

/// One target's side of an upload.
pub(crate) struct Lane {
    pub target: Target,
    kind: LaneKind,
    /// Bounded queue into the target's request body; `None` once detached or ended.
    tx: Option<mpsc::Sender<Msg>>,
    task: Option<JoinHandle<Result<Reply, LaneError>>>,
    /// The target's staged report, once it arrived and matched the upload.
    report: Option<StagedReport>,
    /// What an append left the target holding.
    pub held: Option<(u64, Vec<String>)>,
    /// HTTP status of the target's refusal, if it refused.
    refused: Option<u16>,
    /// Queue occupancy gauge, resolved once so the per-chunk path does no label lookup or allocation.
    queue_gauge: metrics::Gauge,
    sent: Arc<AtomicU64>,
    pub state: LaneState,
}

impl Lane {
    pub(crate) fn is_live(&self) -> bool {
        matches!(self.state, LaneState::Live)
    }

    /// A lane with no request running, ready to be finished (a resumable upload that is whole).
    pub(crate) fn idle(target: &Target) -> Self {
        let mut lane = Self::dropped(target, String::new());
        lane.state = LaneState::Live;
        lane
    }

    /// A lane that takes no part (a target an earlier segment dropped), shown in the summary as failed.
    pub(crate) fn dropped(target: &Target, why: String) -> Self {
        Self {
            target: target.clone(),
            kind: if target.is_ring {
                LaneKind::Ring
            } else {
                LaneKind::Http
            },
            tx: None,
            task: None,
            report: None,
            held: None,
            refused: None,
            queue_gauge: queue_gauge(target),
            sent: Arc::new(AtomicU64::new(0)),
            state: LaneState::Failed(why),
        }
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

/// Reads a target's answer: its body when it succeeded, else its `{"error"}` message (shortened, never
/// whatever else a target sends) with its status.
async fn answer(resp: reqwest::Response) -> Result<Bytes, LaneError> {
    let status = resp.status();
    if !status.is_success() {
        let body = read_body_limited(resp, MAX_REPLY_BYTES)
            .await
            .unwrap_or_default();
        let text = serde_json::from_slice::<common::protocol::ErrorBody>(&body)
            .map(|b| b.error.chars().take(300).collect::<String>())
            .unwrap_or_else(|_| "no error message".into());
        return Err(LaneError {
            status: Some(status.as_u16()),
            message: format!("target answered {status}: {}", text.trim()),
        });
    }
    read_body_limited(resp, MAX_REPLY_BYTES)
        .await
        .map_err(|e| LaneError::from(format!("bad answer: {e}")))
}

fn ring_error(e: RingError) -> LaneError {
    LaneError {
        // The metadata store without quorum is "unavailable", not a bad gateway.
        status: matches!(&e, RingError::Meta(m) if m.is_unavailable()).then_some(503),
        message: e.to_string(),
    }
}

/// Largest staged report or error a target may send: reports are a few hundred bytes, a video's names a
/// few KiB per minute of video.
const MAX_REPLY_BYTES: u64 = 4 << 20;

/// A fresh upload id (what the stream protocol and the ring key an upload by).
pub fn new_upload_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

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
            resumable: Arc::default(),
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

    /// Resumable uploads in progress in this process.
    pub fn resumable(&self) -> &crate::resumable::Uploads {
        &self.resumable
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
        self.run_as(new_upload_id(), req, body).await
    }

    /// [`Engine::run`] under upload id `id` (from [`new_upload_id`]).
    pub async fn run_as<S, E>(&self, id: String, req: UploadRequest, body: S) -> Finished
    where
        S: Stream<Item = Result<Bytes, E>> + Send,
        E: std::fmt::Display,
    {
        let started = Instant::now();
        metrics::gauge!("distributary_uploads_active").increment(1.0);
        let _active = ActiveUpload;
        let mut end = Ended::default();
        // The ring's chunks of this upload are protected from the housekeeping sweep by a lease, held until
        // they are committed (recorded) or deleted.
        let _lease = if self.config.targets.iter().any(|t| t.is_ring) {
            match self.cluster.lease(&id, vec![format!("raw.{id}")]).await {
                Ok(guard) => Some(guard),
                Err(e) => {
                    end.fail(
                        Failure::Unavailable,
                        format!("cannot register the upload: {e}"),
                    );
                    None
                }
            }
        } else {
            None
        };
        let mut lanes: Vec<Lane> = self
            .config
            .targets
            .iter()
            .map(|t| self.open_lane(t, &id, &req.name, req.video, &Mode::OneShot))
            .collect();

        let mut hasher = Sha256::new();
        let mut quick = xxhash_rust::xxh3::Xxh3::new();
        // A client that stops sending for this long is gone: its slot and its targets' staging are freed.
        let body = common::guard::IdleTimeout::new(Box::pin(body), self.config.body_idle_timeout);
        futures_util::pin_mut!(body);
        let mut carry = None;
        let total = if end.failure.is_none() {
            let pumped = self
                .pump(&mut lanes, body, &mut carry, 0, u64::MAX, &mut |b| {
                    hasher.update(b);
                    quick.update(b);
                })
                .await;
            end = pumped.end;
            pumped.bytes
        } else {
            0
        };
        let digest: Sha256Digest = hasher.finalize().into();
        let xxh3 = common::protocol::xxh3_hex(quick.digest128());

        if end.failure.is_none() {
            if let Some(len) = req.declared_len.filter(|&l| l != total) {
                end.fail(
                    Failure::ClientGone,
                    format!("body ended after {total} of {len} announced bytes"),
                );
            }
        }
        if end.failure.is_none() {
            if let Some(expected) = req.expected_sha256.filter(|e| *e != digest) {
                end.fail(
                    Failure::DigestMismatch,
                    format!(
                        "digest mismatch: client announced sha-256 {}, received {}",
                        hex::encode(expected),
                        hex::encode(digest)
                    ),
                );
            }
        }
        if end.failure.is_none() {
            // Phase 1 ends: every live target gets a clean end of body and reports its staged copy.
            self.dispatch(&mut lanes, Msg::End).await;
            self.collect_staged(&mut lanes, total, &hex::encode(digest), Some(&xxh3))
                .await;
        }
        self.conclude(
            lanes,
            Concluding {
                id: &id,
                name: &req.name,
                video: req.video,
                size: total,
                digest,
                started,
                end,
            },
        )
        .await
    }

    /// Phase 2 once every lane staged or failed: checks the quorum and what a transcoding target made of a
    /// video, then commits on every staged target or aborts on all of them, and sums up.
    pub(crate) async fn conclude(&self, mut lanes: Vec<Lane>, c: Concluding<'_>) -> Finished {
        let cfg = &self.config;
        let Concluding {
            id,
            name,
            video: mode,
            size,
            digest,
            started,
            mut end,
        } = c;
        if end.failure.is_none() {
            let refused = lanes
                .iter()
                .find_map(|l| l.refused.filter(|s| *s == 415 || *s == 422));
            let video = lanes
                .iter()
                .find_map(|l| l.report.as_ref().and_then(|r| r.video.clone()));
            if let (VideoMode::Required, Some(status)) = (mode, refused) {
                let why = lanes
                    .iter()
                    .find(|l| l.refused == Some(status))
                    .and_then(|l| match &l.state {
                        LaneState::Failed(e) => Some(e.clone()),
                        _ => None,
                    })
                    .unwrap_or_default();
                end.fail(Failure::Rejected(status), why);
            } else if mode == VideoMode::Required && video.is_none() {
                end.fail(
                    Failure::NoTranscoder,
                    "no target transcoded the video: is a dash reader in BROADCASTER_HOST_LIST?"
                        .into(),
                );
            } else if staged(&lanes) < cfg.min_success {
                end.fail(Failure::Quorum, quorum_error(&lanes, cfg.min_success));
            }
        }

        if end.failure == Some(Failure::Quorum) {
            if let Some(lane) = lanes.iter().find(|l| l.refused == Some(503)) {
                end.failure = Some(Failure::Unavailable);
                if let LaneState::Failed(e) = &lane.state {
                    end.error = Some(format!("{}: {e}", lane.target));
                }
            }
        }
        if end.failure.is_none() {
            // Phase 2.
            self.commit_all(&mut lanes, id, name, size, &digest).await;
            let committed = count(&lanes, |s| matches!(s, LaneState::Committed));
            if committed < cfg.min_success {
                // Commits that did happen cannot be taken back; they hold complete, verified copies.
                tracing::error!(%name, committed, required = cfg.min_success, "quorum lost during commit");
                end.fail(Failure::Quorum, quorum_error(&lanes, cfg.min_success));
            }
        } else {
            let why = end.error.clone().unwrap_or_default();
            self.abort_all(&mut lanes, id, &why).await;
        }
        self.abort_failed(&lanes, id);

        let summary = Summary {
            name: name.to_owned(),
            size,
            sha256: hex::encode(digest),
            outcome: if end.failure.is_none() {
                Outcome::Committed
            } else {
                Outcome::Failed
            },
            committed: count(&lanes, |s| matches!(s, LaneState::Committed)),
            required: cfg.min_success,
            duration_ms: started.elapsed().as_millis() as u64,
            error: end.error,
            targets: lanes.iter().map(report).collect(),
        };
        log_summary(&summary, started.elapsed());
        record_metrics(&summary, &end.failure, started.elapsed());
        let video = if summary.outcome == Outcome::Committed {
            lanes
                .iter()
                .find_map(|l| l.report.as_ref().and_then(|r| r.video.clone()))
        } else {
            None
        };
        Finished {
            summary,
            failure: end.failure,
            video,
        }
    }

    /// Streams the body into every live lane until it ends, breaks, or `limit` bytes went; bytes of a frame
    /// past `limit` are left in `carry` for the next call. `base` is what earlier calls streamed (for the
    /// size limit). Every byte is shown to `seen` before it is queued.
    pub(crate) async fn pump<S, E>(
        &self,
        lanes: &mut [Lane],
        mut body: Pin<&mut S>,
        carry: &mut Option<Bytes>,
        base: u64,
        limit: u64,
        seen: &mut (dyn FnMut(&[u8]) + Send),
    ) -> Pumped
    where
        S: Stream<Item = Result<Bytes, E>> + ?Sized,
        E: std::fmt::Display,
    {
        let cfg = &self.config;
        let mut end = Ended::default();
        let mut total = 0u64;
        let mut finished = false;
        let mut buf = BytesMut::with_capacity(cfg.buffer_size);
        while end.failure.is_none() && total < limit {
            let mut frame = match carry.take() {
                Some(f) => f,
                None => match body.next().await {
                    None => {
                        finished = true;
                        break;
                    }
                    Some(Ok(frame)) => {
                        metrics::counter!("distributary_upload_bytes_received_total")
                            .increment(frame.len() as u64);
                        frame
                    }
                    Some(Err(e)) => {
                        end.fail(Failure::ClientGone, format!("client body failed: {e}"));
                        break;
                    }
                },
            };
            let room = (limit - total).min(usize::MAX as u64) as usize;
            if frame.len() > room {
                *carry = Some(frame.split_off(room));
            }
            total += frame.len() as u64;
            if let Some(max) = cfg.max_upload_bytes {
                if base + total > max {
                    end.fail(
                        Failure::TooLarge,
                        format!("body exceeds the limit of {max} bytes"),
                    );
                    break;
                }
            }
            seen(&frame);
            let mut rest = &frame[..];
            while !rest.is_empty() {
                let take = rest.len().min(cfg.buffer_size - buf.len());
                buf.extend_from_slice(&rest[..take]);
                rest = &rest[take..];
                if buf.len() == cfg.buffer_size {
                    let chunk =
                        std::mem::replace(&mut buf, BytesMut::with_capacity(cfg.buffer_size))
                            .freeze();
                    self.dispatch(lanes, Msg::Data(chunk)).await;
                }
            }
            if live(lanes) < cfg.min_success {
                end.fail(Failure::Quorum, quorum_error(lanes, cfg.min_success));
            }
        }
        // What was received is handed on even when the client broke off: a resumable upload keeps it.
        if !buf.is_empty() && !matches!(end.failure, Some(Failure::TooLarge)) {
            self.dispatch(lanes, Msg::Data(buf.split().freeze())).await;
        }
        if total >= limit && carry.is_none() && end.failure.is_none() {
            // The segment is full; whether the body has more shows on the next call.
            finished = false;
        }
        Pumped {
            bytes: total,
            end,
            body_ended: finished,
        }
    }

    /// Opens one lane for `target`.
    pub(crate) fn open_lane(
        &self,
        target: &Target,
        id: &str,
        name: &str,
        video: VideoMode,
        mode: &Mode,
    ) -> Lane {
        let (tx, rx) = mpsc::channel(self.config.queue_depth);
        let sent = Arc::new(AtomicU64::new(0));
        let body = QueueBody {
            rx,
            sent: sent.clone(),
            done: false,
        };
        let kind = if target.is_ring {
            LaneKind::Ring
        } else {
            LaneKind::Http
        };
        let task = match (&kind, mode) {
            (LaneKind::Ring, Mode::OneShot) => {
                let task = self.cluster.clone().stage_chunks(id.to_owned(), body);
                tokio::spawn(async move { task.await.map(Reply::Staged).map_err(ring_error) })
            }
            (
                LaneKind::Ring,
                Mode::Append {
                    offset,
                    ring_chunks,
                    ..
                },
            ) => {
                let task = self.cluster.clone().append_chunks(
                    id.to_owned(),
                    ring_chunks.clone(),
                    *offset,
                    body,
                );
                tokio::spawn(async move {
                    task.await
                        .map(|(bytes, chunks)| Reply::Held {
                            bytes,
                            ring_chunks: chunks,
                        })
                        .map_err(ring_error)
                })
            }
            (LaneKind::Http, mode) => {
                let request = match mode {
                    Mode::OneShot => self.client.put(target.stage_url(id, name)),
                    Mode::Append {
                        offset, keep_secs, ..
                    } => self
                        .client
                        .patch(format!("{}?offset={offset}", target.stage_url(id, name)))
                        .header(common::participant::KEEP_HEADER, keep_secs.to_string()),
                }
                .header(VIDEO_HEADER, video.as_str())
                .body(reqwest::Body::wrap_stream(body));
                let (client, secret) = (self.client.clone(), self.config.cluster_secret.clone());
                let one_shot = matches!(mode, Mode::OneShot);
                tokio::spawn(async move {
                    let resp = send_signed(&client, secret.as_ref(), request)
                        .await
                        .map_err(|e| LaneError::from(describe(&e)))?;
                    let body = answer(resp).await?;
                    if one_shot {
                        serde_json::from_slice::<StagedReport>(&body)
                            .map(Reply::Staged)
                            .map_err(|e| LaneError::from(format!("bad staged report: {e}")))
                    } else {
                        serde_json::from_slice::<common::participant::Held>(&body)
                            .map(|h| Reply::Held {
                                bytes: h.bytes,
                                ring_chunks: Vec::new(),
                            })
                            .map_err(|e| LaneError::from(format!("bad append report: {e}")))
                    }
                })
            }
        };
        Lane {
            target: target.clone(),
            kind,
            tx: Some(tx),
            task: Some(task),
            sent,
            state: LaneState::Live,
            report: None,
            held: None,
            refused: None,
            queue_gauge: queue_gauge(target),
        }
    }

    /// Hands one message to every live target, detaching any whose queue stays full past the stall timeout.
    pub(crate) async fn dispatch(&self, lanes: &mut [Lane], msg: Msg) {
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

    /// Waits for every live lane's answer to the end of its body: a staged report (checked against what
    /// the client sent) or, for an append, the bytes it now holds.
    pub(crate) async fn collect_staged(
        &self,
        lanes: &mut [Lane],
        total: u64,
        sha256: &str,
        xxh3: Option<&str>,
    ) {
        let timeout = self.config.stage_timeout;
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
                    Ok(Ok(Ok(Reply::Held { bytes, ring_chunks }))) => {
                        lane.held = Some((bytes, ring_chunks));
                        LaneState::Staged
                    }
                    Ok(Ok(Ok(Reply::Staged(r)))) => {
                        let checked = match xxh3 {
                            Some(x) => r.verify(total, sha256, x),
                            None => r.verify_sha256(total, sha256),
                        };
                        match checked {
                            Ok(()) => {
                                lane.report = Some(r);
                                LaneState::Staged
                            }
                            Err(e) => LaneState::Failed(e),
                        }
                    }
                };
            });
        futures_util::future::join_all(waits).await;
    }

    /// A resumable upload is whole: every lane still in it stages the whole of it and reports, checked
    /// against the SHA-256 of the whole upload. The ring's lane reports the chunks already written.
    pub(crate) async fn finish_lanes(
        &self,
        lanes: &mut [Lane],
        id: &str,
        total: u64,
        sha256: &str,
        ring_chunks: &[String],
    ) {
        let timeout = self.config.stage_timeout;
        let finishes = lanes
            .iter_mut()
            .filter(|l| matches!(l.state, LaneState::Staged | LaneState::Live))
            .map(|lane| async move {
                lane.state = LaneState::Live;
                let reply = match lane.kind {
                    LaneKind::Ring => {
                        match self.cluster.seal_chunks(id, total, ring_chunks).await {
                            Ok(()) => Ok(StagedReport {
                                bytes: total,
                                sha256: Some(sha256.to_owned()),
                                chunk_sha256: ring_chunks.to_vec(),
                                ..Default::default()
                            }),
                            Err(e) => Err(ring_error(e)),
                        }
                    }
                    LaneKind::Http => {
                        let url = format!("{}/finish", lane.target.abort_url(id));
                        match self.send(self.client.post(url).timeout(timeout)).await {
                            Ok(resp) => match answer(resp).await {
                                Ok(body) => {
                                    serde_json::from_slice::<StagedReport>(&body).map_err(|e| {
                                        LaneError::from(format!("bad staged report: {e}"))
                                    })
                                }
                                Err(e) => Err(e),
                            },
                            Err(e) => Err(LaneError::from(describe(&e))),
                        }
                    }
                };
                lane.state = match reply {
                    Err(e) => {
                        lane.refused = e.status;
                        LaneState::Failed(e.message)
                    }
                    Ok(r) => match r.verify_sha256(total, sha256) {
                        Ok(()) => {
                            lane.sent.store(total, Ordering::Relaxed);
                            lane.report = Some(r);
                            LaneState::Staged
                        }
                        Err(e) => LaneState::Failed(e),
                    },
                };
            });
        futures_util::future::join_all(finishes).await;
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
                lane.state = match lane.kind {
                    LaneKind::Ring => {
                        let chunks = lane
                            .report
                            .as_ref()
                            .map(|r| r.chunk_sha256.clone())
                            .unwrap_or_default();
                        match self.cluster.commit_file(name, id, size, sha, chunks).await {
                            Ok(()) => LaneState::Committed,
                            Err(e) => LaneState::Failed(format!("commit failed: {e}")),
                        }
                    }
                    LaneKind::Http => {
                        let url = lane.target.commit_url(id);
                        match self.send(client.post(url).timeout(timeout)).await {
                            Ok(r) if r.status().is_success() => LaneState::Committed,
                            Ok(r) => LaneState::Failed(format!("commit answered {}", r.status())),
                            Err(e) => LaneState::Failed(format!("commit failed: {}", describe(&e))),
                        }
                    }
                };
            });
        futures_util::future::join_all(commits).await;
    }

    /// Tells every target still in the upload to discard it, and waits (briefly) until they did.
    pub(crate) async fn abort_all(&self, lanes: &mut [Lane], id: &str, why: &str) {
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
                self.discard(lane.kind, &lane.target, lane.sent.load(Ordering::Relaxed), id)
                    .await;
                lane.state = LaneState::Aborted(why.to_owned());
            });
        futures_util::future::join_all(aborts).await;
    }

    /// Removes whatever a target staged of upload `id` (`sent`: bytes handed to it).
    pub(crate) async fn discard(&self, kind: LaneKind, target: &Target, sent: u64, id: &str) {
        match kind {
            LaneKind::Ring => {
                self.cluster
                    .delete_chunks(id, ring_chunks(&self.cluster, sent))
                    .await
            }
            LaneKind::Http => {
                let _ = self
                    .send(
                        self.client
                            .delete(target.abort_url(id))
                            .timeout(ABORT_TIMEOUT),
                    )
                    .await;
            }
        }
    }

    /// Detached targets may still hold staging; tell them to drop it without making the client wait.
    pub(crate) fn abort_failed(&self, lanes: &[Lane], id: &str) {
        for lane in lanes
            .iter()
            .filter(|l| matches!(l.state, LaneState::Failed(_)))
        {
            let (me, id) = (self.clone(), id.to_owned());
            let (kind, target, sent) = (
                lane.kind,
                lane.target.clone(),
                lane.sent.load(Ordering::Relaxed),
            );
            tokio::spawn(async move { me.discard(kind, &target, sent, &id).await });
        }
    }
}

/// Chunks a ring lane may have written: every chunk it received bytes for.
pub(crate) fn ring_chunks(cluster: &Cluster, sent: u64) -> u64 {
    sent.div_ceil(cluster.chunk_size() as u64) + 1
}

pub(crate) fn live(lanes: &[Lane]) -> usize {
    count(lanes, |s| matches!(s, LaneState::Live))
}

fn staged(lanes: &[Lane]) -> usize {
    count(lanes, |s| matches!(s, LaneState::Staged))
}

fn count(lanes: &[Lane], f: impl Fn(&LaneState) -> bool) -> usize {
    lanes.iter().filter(|l| f(&l.state)).count()
}

pub(crate) fn quorum_error(lanes: &[Lane], required: usize) -> String {
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
