//! The dash sink: an upload becomes an adaptive-bitrate MPEG-DASH video on the storage ring.
//!
//! Phase 1 of the stream protocol does the work: the body is staged to a file (ffmpeg cannot read an MP4
//! whose index is at the end from a pipe), probed, and transcoded; each finished DASH file goes onto the ring
//! with R replicas while ffmpeg is still running. The staged report names the files only once all of them are
//! durable. Phase 2 has nothing left to publish (the broadcaster lists the video); an abort deletes every file
//! written. Raw uploads (`x-distributary-video: skip`) are only counted and checksummed.
//!
//! What one upload may cost is bounded ([`SinkLimits`]): `READER_MAX_UPLOAD_BYTES` while the body streams
//! (413), admission of at most `READER_TRANSCODE_CONCURRENCY` + `READER_TRANSCODE_QUEUE` video uploads at once
//! (503 beyond, before any byte is read), and the probe and transcode limits of [`dash::Limits`] (415/422). A
//! failed transcode removes every file it had put on the ring. Clients get [`dash::DashError::public_message`];
//! the detail (paths, ffmpeg's stderr) goes to the log.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use common::durable::StagingWriter;
use common::protocol::{StagedReport, VideoMode, VideoReport};
use futures_util::stream::FuturesUnordered;
use futures_util::{Stream, StreamExt};
use ring_client::nodes::BlobKey;
use ring_client::Cluster;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, DEFAULT_TRANSCODE_QUEUE};
use crate::dash::{self, TranscodeOptions};
use crate::error::ReaderError;

/// DASH files written to the ring at once per video.
const RING_WRITES: usize = 8;

/// A staged upload waiting for commit or abort: the video files already on the ring, if any.
#[derive(Debug)]
struct Pending {
    video: Option<VideoReport>,
    since: Instant,
}

/// What the dash sink lets one upload cost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkLimits {
    /// Largest accepted body in bytes (`READER_MAX_UPLOAD_BYTES`); `None`: no limit.
    pub max_upload_bytes: Option<u64>,
    /// Video uploads admitted beside the running transcodes (`READER_TRANSCODE_QUEUE`): received, probed or
    /// waiting for a slot. One more is refused with 503 before its body is read.
    pub queue: usize,
    /// Probe and transcode limits.
    pub video: dash::Limits,
}

impl Default for SinkLimits {
    fn default() -> Self {
        Self {
            max_upload_bytes: None,
            queue: DEFAULT_TRANSCODE_QUEUE,
            video: dash::Limits::default(),
        }
    }
}

impl SinkLimits {
    /// The limits a reader's configuration sets.
    pub fn from_config(config: &Config) -> Self {
        Self {
            max_upload_bytes: config.max_upload_bytes,
            queue: config.transcode_queue,
            video: config.video_limits.clone(),
        }
    }
}

/// Transcodes uploads onto the ring.
#[derive(Debug)]
pub struct VideoSink {
    staging_dir: PathBuf,
    cluster: Arc<Cluster>,
    /// Transcodes at once.
    concurrency: usize,
    /// Concurrent transcodes; admitted uploads wait here for their turn.
    transcodes: Semaphore,
    /// Video uploads in the sink at all (concurrency + queue): staging, probing, waiting or transcoding.
    admission: Semaphore,
    limits: SinkLimits,
    options: TranscodeOptions,
    buffer_size: usize,
    pending: Mutex<HashMap<String, Pending>>,
    /// Transcodes in flight, so an abort can stop ffmpeg and the broadcaster can ask how far they are.
    running: Mutex<HashMap<String, Running>>,
}

/// A video upload being probed, queued or transcoded.
#[derive(Debug)]
struct Running {
    cancel: CancellationToken,
    progress: Arc<dash::Progress>,
}

/// The client's view of a pipeline error: its status and short reason; the detail goes to the log.
fn video_error(e: &dash::DashError) -> ReaderError {
    let status = e.http_status();
    if status >= 500 {
        tracing::error!(error = %e, "transcode failed");
    } else {
        tracing::info!(error = %e, status, "video refused");
    }
    ReaderError::Video {
        status,
        message: e.public_message(),
    }
}

impl VideoSink {
    /// Prepares the sink with the default [`SinkLimits`]; `staging_dir` must exist and be empty of live
    /// uploads.
    pub fn new(
        staging_dir: PathBuf,
        cluster: Arc<Cluster>,
        concurrency: usize,
        options: TranscodeOptions,
        buffer_size: usize,
    ) -> Self {
        let concurrency = concurrency.max(1);
        let limits = SinkLimits::default();
        Self {
            staging_dir,
            cluster,
            concurrency,
            transcodes: Semaphore::new(concurrency),
            admission: Semaphore::new(concurrency + limits.queue),
            limits,
            options,
            buffer_size,
            pending: Mutex::new(HashMap::new()),
            running: Mutex::new(HashMap::new()),
        }
    }

    /// The same sink with `limits` (a reader passes [`SinkLimits::from_config`]).
    pub fn with_limits(mut self, limits: SinkLimits) -> Self {
        self.admission = Semaphore::new(self.concurrency + limits.queue);
        self.limits = limits;
        self
    }

    /// The limits in force.
    pub fn limits(&self) -> &SinkLimits {
        &self.limits
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<String, Pending>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn running(&self) -> std::sync::MutexGuard<'_, HashMap<String, Running>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How far the transcode of upload `id` is: 0 once its body is staged, while it is probed or queued,
    /// then ffmpeg's progress; `None` for an upload this sink is not transcoding.
    pub fn progress(&self, id: &str) -> Option<common::protocol::ProgressReport> {
        let running = self.running();
        let r = running.get(id)?;
        Some(common::protocol::ProgressReport {
            percent: r.progress.percent().unwrap_or(0.0),
        })
    }

    /// Phase 1: stages the body and, for a video upload, transcodes it onto the ring.
    pub async fn stage<S, E>(
        self: &Arc<Self>,
        id: &str,
        name: &str,
        mode: VideoMode,
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
        if self.pending().contains_key(id) || self.running().contains_key(id) {
            return Err(ReaderError::UploadIdTaken(id.to_owned()));
        }
        let report = match mode {
            VideoMode::Skip => {
                let (bytes, xxh3) = drain(body, self.limits.max_upload_bytes).await?;
                StagedReport {
                    bytes,
                    xxh3: Some(common::protocol::xxh3_hex(xxh3)),
                    ..Default::default()
                }
            }
            VideoMode::Required => {
                let video_id = common::name::video_id(name)?;
                // Admission before a byte is read: a full transcoder refuses at once instead of staging
                // bodies it would make wait without bound.
                let _admitted = self.admission.try_acquire().map_err(|_| {
                    tracing::warn!(upload = %id, "transcoder busy: upload refused");
                    ReaderError::Video {
                        status: 503,
                        message: format!(
                            "the transcoder is busy ({} video uploads in progress); try again later",
                            self.concurrency + self.limits.queue
                        ),
                    }
                })?;
                let mut writer =
                    StagingWriter::create(self.staging_dir.join(id), self.buffer_size)?;
                let mut received = 0u64;
                futures_util::pin_mut!(body);
                while let Some(chunk) = body.next().await {
                    let chunk = chunk.map_err(|e| ReaderError::Body(e.to_string()))?;
                    received += chunk.len() as u64;
                    if let Some(max) = self.limits.max_upload_bytes.filter(|&m| received > m) {
                        // The writer's drop removes what was staged.
                        return Err(ReaderError::TooLarge(max));
                    }
                    writer.write(chunk).await?;
                }
                let staged = writer.finish().await?;
                let token = CancellationToken::new();
                let progress = Arc::new(dash::Progress::default());
                self.running().insert(
                    id.to_owned(),
                    Running {
                        cancel: token.clone(),
                        progress: progress.clone(),
                    },
                );
                // If this request is dropped (the broadcaster went away), the guard cancels the transcode,
                // which then cleans up after itself in its own task.
                let _guard = token.clone().drop_guard();
                let me = self.clone();
                let input = staged.path().to_path_buf();
                let work_dir = self.staging_dir.join(format!("{id}.dash"));
                let task = tokio::spawn(async move {
                    let r = me
                        .transcode_to_ring(&video_id, &input, &work_dir, token, progress)
                        .await;
                    let _ = tokio::fs::remove_dir_all(&work_dir).await;
                    let _ = tokio::fs::remove_dir_all(work_dir.with_extension("poster")).await;
                    r
                });
                let result = task
                    .await
                    .map_err(|e| ReaderError::Io(std::io::Error::other(e)));
                self.running().remove(id);
                let video = result??;
                tracing::info!(
                    upload = %id, video = %video.id, files = video.files.len(), bytes = staged.len,
                    "video transcoded onto the ring"
                );
                StagedReport {
                    bytes: staged.len,
                    xxh3: Some(common::protocol::xxh3_hex(staged.xxh3)),
                    video: Some(video),
                    ..Default::default()
                }
            }
        };
        self.pending().insert(
            id.to_owned(),
            Pending {
                video: report.video.clone(),
                since: Instant::now(),
            },
        );
        Ok(report)
    }

    async fn transcode_to_ring(
        &self,
        video_id: &str,
        input: &Path,
        work_dir: &Path,
        cancel: CancellationToken,
        progress: Arc<dash::Progress>,
    ) -> Result<VideoReport, ReaderError> {
        // Refusals (415/422) come before the wait for a slot, so a bad upload never queues.
        let probe = dash::probe_within(input, &self.limits.video)
            .await
            .map_err(|e| video_error(&e))?;
        let ladder = dash::ladder(&probe);
        metrics::gauge!("distributary_transcodes_queued").increment(1.0);
        let permit = tokio::select! {
            p = self.transcodes.acquire() => p.map_err(|_| ReaderError::Ring("transcoder is shutting down".into())),
            _ = cancel.cancelled() => Err(ReaderError::Body("upload aborted while queued".into())),
        };
        metrics::gauge!("distributary_transcodes_queued").decrement(1.0);
        let _permit = permit?;
        metrics::gauge!("distributary_transcodes_active").increment(1.0);
        let started = Instant::now();
        let written: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
        let result = self
            .run_ladder(
                video_id, input, work_dir, &probe, &ladder, &written, cancel, progress,
            )
            .await;
        metrics::gauge!("distributary_transcodes_active").decrement(1.0);
        let outcome = if result.is_ok() { "ok" } else { "error" };
        metrics::histogram!("distributary_transcode_seconds", "outcome" => outcome)
            .record(started.elapsed().as_secs_f64());
        match result {
            Ok(()) => {
                let written = written.lock().unwrap_or_else(|e| e.into_inner()).clone();
                let files = written.iter().map(|(f, _)| f.clone()).collect();
                Ok(VideoReport {
                    id: video_id.to_owned(),
                    duration_ms: probe.duration_ms,
                    width: probe.width,
                    height: probe.height,
                    renditions: ladder.len(),
                    files,
                    digests: written.into_iter().collect(),
                })
            }
            Err(e) => {
                let files: Vec<String> = written
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .iter()
                    .map(|(f, _)| f.clone())
                    .collect();
                self.delete_files(video_id, &files).await;
                Err(e)
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn run_ladder(
        &self,
        video_id: &str,
        input: &Path,
        work_dir: &Path,
        probe: &dash::Probe,
        ladder: &[dash::Rendition],
        written: &Arc<Mutex<Vec<(String, String)>>>,
        cancel: CancellationToken,
        progress: Arc<dash::Progress>,
    ) -> Result<(), ReaderError> {
        let (tx, rx) = tokio::sync::mpsc::channel::<PathBuf>(64);
        let transcode = async {
            let r = dash::transcode(
                input,
                work_dir,
                ladder,
                &self.options,
                &self.limits.video,
                tx,
                cancel.clone(),
                progress,
            )
            .await;
            if r.is_err() {
                // Nothing more goes onto the ring for a video that failed: files still queued are skipped.
                cancel.cancel();
            }
            r
        };
        let uploads = async {
            let mut rx = rx;
            let mut in_flight = FuturesUnordered::new();
            let mut result: Result<(), ReaderError> = Ok(());
            let note = |r: Result<(), ReaderError>, result: &mut Result<(), ReaderError>| {
                if let (Err(e), true) = (r, result.is_ok()) {
                    // Stop ffmpeg: a file that cannot be stored makes the whole video fail.
                    tracing::warn!(error = %e, "ring write failed; stopping the transcode");
                    cancel.cancel();
                    *result = Err(e);
                }
            };
            loop {
                tokio::select! {
                    biased;
                    () = cancel.cancelled() => break,
                    Some(r) = in_flight.next(), if !in_flight.is_empty() => note(r, &mut result),
                    p = rx.recv(), if in_flight.len() < RING_WRITES => match p {
                        Some(path) => in_flight.push(self.put_file(video_id, path, written)),
                        None => break,
                    },
                }
            }
            while let Some(r) = in_flight.next().await {
                note(r, &mut result);
            }
            result
        };
        // The poster is cut alongside the transcode (ffmpeg's output directory must hold only its own files),
        // so it adds nothing to the time until the video is playable.
        let poster_dir = work_dir.with_extension("poster");
        let poster = poster_dir.join(dash::POSTER);
        let thumbnail = async {
            tokio::fs::create_dir_all(&poster_dir).await?;
            dash::thumbnail(input, &poster, probe)
                .await
                .map_err(|e| video_error(&e))
        };
        let (transcoded, uploaded, thumbnailed) = tokio::join!(transcode, uploads, thumbnail);
        uploaded?;
        transcoded.map_err(|e| video_error(&e))?;
        thumbnailed?;
        self.put_file(video_id, poster, written).await
    }

    async fn put_file(
        &self,
        video_id: &str,
        path: PathBuf,
        written: &Arc<Mutex<Vec<(String, String)>>>,
    ) -> Result<(), ReaderError> {
        let file = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| {
                tracing::error!(path = %path.display(), "transcoder output without a file name");
                ReaderError::Ring("the transcoder produced an unnamed file".into())
            })?
            .to_owned();
        let data = Bytes::from(tokio::fs::read(&path).await?);
        let key = BlobKey::new(video_id, file.clone());
        let placed = self
            .cluster
            .put_blob(&key, data)
            .await
            .map_err(|e| ReaderError::Ring(format!("{key}: {e}")))?;
        written
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((file, placed.digest));
        Ok(())
    }

    async fn delete_files(&self, video_id: &str, files: &[String]) {
        let mut in_flight = FuturesUnordered::new();
        for f in files {
            let key = BlobKey::new(video_id, f.clone());
            in_flight.push(async move { self.cluster.delete_blob(&key).await });
            if in_flight.len() >= RING_WRITES {
                in_flight.next().await;
            }
        }
        while in_flight.next().await.is_some() {}
    }

    /// Phase 2: the files are already durable; only the bookkeeping goes.
    pub fn commit(&self, id: &str) -> Result<Option<VideoReport>, ReaderError> {
        if !common::protocol::is_valid_upload_id(id) {
            return Err(ReaderError::BadUploadId);
        }
        let p = self
            .pending()
            .remove(id)
            .ok_or_else(|| ReaderError::UnknownUpload(id.to_owned()))?;
        Ok(p.video)
    }

    /// Stops a transcode in flight, or deletes the files of a staged video.
    pub async fn abort(&self, id: &str) -> Result<bool, ReaderError> {
        if !common::protocol::is_valid_upload_id(id) {
            return Err(ReaderError::BadUploadId);
        }
        if let Some(r) = self.running().get(id) {
            r.cancel.cancel();
        }
        let p = self.pending().remove(id);
        match p {
            Some(Pending { video: Some(v), .. }) => {
                self.delete_files(&v.id, &v.files).await;
                Ok(true)
            }
            Some(_) => Ok(true),
            None => Ok(false),
        }
    }

    /// Forgets staged uploads nobody committed or aborted within `ttl`, deleting their files.
    pub async fn sweep(&self, ttl: std::time::Duration) {
        let expired: Vec<(String, Pending)> = {
            let mut pending = self.pending();
            let ids: Vec<String> = pending
                .iter()
                .filter(|(_, p)| p.since.elapsed() > ttl)
                .map(|(id, _)| id.clone())
                .collect();
            ids.into_iter()
                .filter_map(|id| pending.remove(&id).map(|p| (id, p)))
                .collect()
        };
        for (id, p) in expired {
            tracing::warn!(upload = %id, "staged video expired uncommitted; deleting its files");
            if let Some(v) = p.video {
                self.delete_files(&v.id, &v.files).await;
            }
        }
    }
}

/// Counts and checksums a body nobody keeps, up to `max` bytes.
async fn drain<S, E>(body: S, max: Option<u64>) -> Result<(u64, u128), ReaderError>
where
    S: Stream<Item = Result<Bytes, E>>,
    E: std::fmt::Display,
{
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    let mut len = 0u64;
    futures_util::pin_mut!(body);
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| ReaderError::Body(e.to_string()))?;
        hasher.update(&chunk);
        len += chunk.len() as u64;
        if let Some(max) = max.filter(|&m| len > m) {
            return Err(ReaderError::TooLarge(max));
        }
    }
    Ok((len, hasher.digest128()))
}
