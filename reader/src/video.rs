//! The dash sink: an upload becomes an adaptive-bitrate MPEG-DASH video on the storage ring.
//!
//! Phase 1 of the stream protocol stages the body to a file (ffmpeg cannot read an MP4 whose index is at
//! the end from a pipe), fsyncs it and probes it: a file that is not a video (415) or is damaged or over the
//! limits (422) is refused before anything commits, and leaves nothing behind. Phase 2 (commit) makes the
//! transcode durable — a job file and the source beside it in `transcode/`, and a lease that keeps the
//! housekeeping sweep off the video — and answers at once; the transcode then runs as the video's
//! processing. This sink owns the video's record from then on:
//!
//! - first it puts a provisional static manifest on the ring ([`dash::provisional_manifest`]), so a viewer
//!   can start watching from the beginning while the rest is encoded;
//! - each finished DASH file goes onto the ring with R replicas while ffmpeg still runs, and the record lists
//!   it, with its digest, within [`RECORD_GAP`], and ffmpeg's progress every [`RECORD_EVERY`];
//! - ffmpeg's exact manifest and the poster come last, then the record says `ready`; a transcode that fails
//!   removes every file it wrote and says `failed`, with the reason a client may see.
//!
//! A reader that stops or crashes mid-transcode resumes every job whose source it still holds when it starts
//! again. Raw uploads (`x-distributary-video: skip`) are only counted and checksummed.
//!
//! What one upload may cost is bounded ([`SinkLimits`]): `READER_MAX_UPLOAD_BYTES` while the body streams
//! (413), admission of at most `READER_TRANSCODE_CONCURRENCY` + `READER_TRANSCODE_QUEUE` video uploads at once
//! (staged, committed and waiting, or transcoding; 503 beyond, before any byte is read), and the probe and
//! transcode limits of [`dash::Limits`] (415/422). Clients get [`dash::DashError::public_message`]; the detail
//! (paths, ffmpeg's stderr) goes to the log.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::durable::{Staged, StagingWriter};
use common::protocol::{StagedReport, VideoMode, VideoReport};
use futures_util::stream::FuturesUnordered;
use futures_util::{Stream, StreamExt};
use meta::VideoRecord;
use ring_client::maintenance::LeaseGuard;
use ring_client::nodes::BlobKey;
use ring_client::Cluster;
use serde::{Deserialize, Serialize};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, DEFAULT_TRANSCODE_QUEUE};
use crate::dash::{self, TranscodeOptions};
use crate::error::ReaderError;

/// DASH files written to the ring at once per video.
const RING_WRITES: usize = 8;

/// How often a running transcode's record is brought up to date with ffmpeg's progress.
pub const RECORD_EVERY: Duration = Duration::from_secs(1);

/// Shortest time between two writes of a running transcode's record: a file that lands is listed within
/// this, so a viewer waiting for it is not held up by the progress period.
pub const RECORD_GAP: Duration = Duration::from_millis(200);

/// Largest job file read back at start; a job is a few hundred bytes.
const MAX_JOB_FILE: u64 = 64 << 10;

/// A staged upload waiting for commit or abort.
#[derive(Debug)]
struct Pending {
    video: Option<VideoReport>,
    since: Instant,
    /// A probed video source: its transcode starts at commit.
    source: Option<Source>,
}

/// A staged, probed video source and its place in the admission queue.
#[derive(Debug)]
struct Source {
    staged: Staged,
    job: Job,
    admitted: OwnedSemaphorePermit,
}

/// A committed video's transcode, as kept in `transcode/{upload}.json` so a restart resumes it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Job {
    /// The upload id (the stream protocol's).
    upload: String,
    /// The video id: the ring prefix of its files and the key of its record.
    video: String,
    probe: dash::Probe,
}

/// What the dash sink lets one upload cost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkLimits {
    /// Largest accepted body in bytes (`READER_MAX_UPLOAD_BYTES`); `None`: no limit.
    pub max_upload_bytes: Option<u64>,
    /// Video uploads admitted beside the running transcodes (`READER_TRANSCODE_QUEUE`): received, probed,
    /// committed and waiting for a slot. One more is refused with 503 before its body is read.
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
    /// Committed transcodes: `{upload}.json` and `{upload}.source`.
    jobs_dir: PathBuf,
    cluster: Arc<Cluster>,
    /// Transcodes at once.
    concurrency: usize,
    /// Concurrent transcodes; committed uploads wait here for their turn.
    transcodes: Arc<Semaphore>,
    /// Video uploads in the sink at all (concurrency + queue): staging, probing, waiting or transcoding.
    admission: Arc<Semaphore>,
    limits: SinkLimits,
    options: TranscodeOptions,
    buffer_size: usize,
    pending: Mutex<HashMap<String, Pending>>,
    /// Committed transcodes in flight, so the broadcaster can ask how far they are.
    running: Mutex<HashMap<String, Arc<dash::Progress>>>,
    /// The reader is stopping: transcodes stop where they are and keep their jobs for the next start.
    shutdown: CancellationToken,
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

/// What a viewer may read about a failed transcode: never a path or a node's address.
fn public_reason(e: &ReaderError) -> String {
    match e {
        ReaderError::Video { message, .. } => message.clone(),
        ReaderError::Ring(_) => "the storage ring could not store the video".into(),
        _ => "the transcoder failed".into(),
    }
}

impl VideoSink {
    /// Prepares the sink with the default [`SinkLimits`]; `staging_dir` must exist and be empty of live
    /// uploads. Committed transcodes are kept in `transcode/` beside it: call [`VideoSink::resume`].
    pub fn new(
        staging_dir: PathBuf,
        cluster: Arc<Cluster>,
        concurrency: usize,
        options: TranscodeOptions,
        buffer_size: usize,
    ) -> Self {
        let concurrency = concurrency.max(1);
        let limits = SinkLimits::default();
        let jobs_dir = staging_dir
            .parent()
            .map(|p| p.join("transcode"))
            .unwrap_or_else(|| staging_dir.join("transcode"));
        Self {
            staging_dir,
            jobs_dir,
            cluster,
            concurrency,
            transcodes: Arc::new(Semaphore::new(concurrency)),
            admission: Arc::new(Semaphore::new(concurrency + limits.queue)),
            limits,
            options,
            buffer_size,
            pending: Mutex::new(HashMap::new()),
            running: Mutex::new(HashMap::new()),
            shutdown: CancellationToken::new(),
        }
    }

    /// The same sink with `limits` (a reader passes [`SinkLimits::from_config`]).
    pub fn with_limits(mut self, limits: SinkLimits) -> Self {
        self.admission = Arc::new(Semaphore::new(self.concurrency + limits.queue));
        self.limits = limits;
        self
    }

    /// The same sink, stopping its transcodes (jobs kept) when `shutdown` fires.
    pub fn with_shutdown(mut self, shutdown: CancellationToken) -> Self {
        self.shutdown = shutdown;
        self
    }

    /// The ring (and metadata store) the videos go to.
    pub fn cluster(&self) -> &Arc<Cluster> {
        &self.cluster
    }

    /// The limits in force.
    pub fn limits(&self) -> &SinkLimits {
        &self.limits
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<String, Pending>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn running(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<dash::Progress>>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How far the transcode of upload `id` is: 0 while it waits for a slot, then ffmpeg's progress;
    /// `None` for an upload this sink is not transcoding.
    pub fn progress(&self, id: &str) -> Option<common::protocol::ProgressReport> {
        let running = self.running();
        let p = running.get(id)?;
        Some(common::protocol::ProgressReport {
            percent: p.percent().unwrap_or(0.0),
        })
    }

    /// Phase 1: stages the body and, for a video upload, probes it.
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
        let (report, source) = match mode {
            VideoMode::Skip => {
                let (bytes, xxh3) = drain(body, self.limits.max_upload_bytes).await?;
                let report = StagedReport {
                    bytes,
                    xxh3: Some(common::protocol::xxh3_hex(xxh3)),
                    ..Default::default()
                };
                (report, None)
            }
            VideoMode::Required => {
                let video_id = common::name::video_id(name)?;
                // Admission before a byte is read: a full transcoder refuses at once instead of staging
                // bodies it would make wait without bound. The permit stays with the upload until its
                // transcode ends.
                let admitted = self.admission.clone().try_acquire_owned().map_err(|_| {
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
                // Refusals (415/422) come now, before anything commits; the staged file goes with them.
                let probe = dash::probe_within(staged.path(), &self.limits.video)
                    .await
                    .map_err(|e| video_error(&e))?;
                let ladder = dash::ladder(&probe);
                let video = VideoReport {
                    id: video_id.clone(),
                    duration_ms: probe.duration_ms,
                    width: probe.width,
                    height: probe.height,
                    renditions: ladder.len(),
                    files: Vec::new(),
                    digests: Default::default(),
                };
                tracing::info!(
                    upload = %id, video = %video_id, bytes = staged.len, duration_ms = probe.duration_ms,
                    "video staged and probed"
                );
                let report = StagedReport {
                    bytes: staged.len,
                    xxh3: Some(common::protocol::xxh3_hex(staged.xxh3)),
                    video: Some(video),
                    ..Default::default()
                };
                let job = Job {
                    upload: id.to_owned(),
                    video: video_id,
                    probe,
                };
                (
                    report,
                    Some(Source {
                        staged,
                        job,
                        admitted,
                    }),
                )
            }
        };
        self.pending().insert(
            id.to_owned(),
            Pending {
                video: report.video.clone(),
                since: Instant::now(),
                source,
            },
        );
        Ok(report)
    }

    /// Phase 2: a raw upload only leaves the books; a video's transcode is made durable and started, and
    /// runs on after this returns.
    pub async fn commit(self: &Arc<Self>, id: &str) -> Result<Option<VideoReport>, ReaderError> {
        if !common::protocol::is_valid_upload_id(id) {
            return Err(ReaderError::BadUploadId);
        }
        let p = self
            .pending()
            .remove(id)
            .ok_or_else(|| ReaderError::UnknownUpload(id.to_owned()))?;
        let Some(source) = p.source else {
            return Ok(p.video);
        };
        let lease = match self.lease(&source.job).await {
            Ok(l) => l,
            Err(e) => {
                // Refused with nothing changed: the broadcaster may commit again, or abort.
                tracing::warn!(upload = %id, error = %e, "commit refused: no lease on the video");
                self.pending().insert(
                    id.to_owned(),
                    Pending {
                        video: p.video,
                        since: p.since,
                        source: Some(source),
                    },
                );
                return Err(ReaderError::Ring(format!(
                    "cannot register the transcode: {e}"
                )));
            }
        };
        // Durable before the commit is acknowledged: the job, then its source beside it. A restart resumes
        // every job whose source is there.
        let Source {
            staged,
            job,
            admitted,
        } = source;
        write_job(&self.jobs_dir, &job).await?;
        if let Err(e) = staged.commit(self.source_path(id)).await {
            let _ = std::fs::remove_file(self.job_path(id));
            return Err(e.into());
        }
        tracing::info!(upload = %id, video = %job.video, "video committed; transcoding");
        self.running()
            .insert(id.to_owned(), Arc::new(dash::Progress::default()));
        tokio::spawn(self.clone().process(job, lease, Some(admitted)));
        Ok(p.video)
    }

    fn job_path(&self, upload: &str) -> PathBuf {
        self.jobs_dir.join(format!("{upload}.json"))
    }

    fn source_path(&self, upload: &str) -> PathBuf {
        self.jobs_dir.join(format!("{upload}.source"))
    }

    async fn lease(self: &Arc<Self>, job: &Job) -> Result<LeaseGuard, ring_client::RingError> {
        self.cluster
            .lease(
                &format!("transcode-{}", job.upload),
                vec![job.video.clone()],
            )
            .await
    }

    /// Starts again every transcode a previous run of this reader committed and did not finish, and
    /// removes what is not a whole job. Call once, after [`VideoSink::new`].
    pub fn resume(self: &Arc<Self>) -> Result<usize, ReaderError> {
        std::fs::create_dir_all(&self.jobs_dir)?;
        let mut jobs = Vec::new();
        for entry in std::fs::read_dir(&self.jobs_dir)? {
            let path = entry?.path();
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_owned();
            let job = name
                .strip_suffix(".json")
                .filter(|id| common::protocol::is_valid_upload_id(id))
                .and_then(|id| read_job(&path, id));
            match job {
                Some(job) if self.source_path(&job.upload).is_file() => jobs.push(job),
                // A source whose job is listed; its job decides.
                _ if name.ends_with(".source")
                    && self.job_path(name.trim_end_matches(".source")).is_file() => {}
                _ => {
                    tracing::warn!(file = %name, "removing an incomplete transcode job");
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        let n = jobs.len();
        for job in jobs {
            tracing::info!(upload = %job.upload, video = %job.video, "resuming a committed transcode");
            self.running()
                .insert(job.upload.clone(), Arc::new(dash::Progress::default()));
            let me = self.clone();
            tokio::spawn(async move {
                // The metadata store may not answer yet at boot: the lease is retried until it does.
                let lease = loop {
                    match me.lease(&job).await {
                        Ok(l) => break l,
                        Err(e) => {
                            tracing::warn!(upload = %job.upload, error = %e, "no lease yet for a resumed transcode");
                            tokio::select! {
                                () = me.shutdown.cancelled() => return,
                                () = tokio::time::sleep(Duration::from_secs(2)) => {}
                            }
                        }
                    }
                };
                if !me.still_ours(&job).await {
                    if me.shutdown.is_cancelled() {
                        return;
                    }
                    tracing::warn!(
                        upload = %job.upload, video = %job.video,
                        "dropping a committed transcode: its video was failed or taken over while this reader was away"
                    );
                    me.running().remove(&job.upload);
                    let _ = std::fs::remove_file(me.job_path(&job.upload));
                    let _ = std::fs::remove_file(me.source_path(&job.upload));
                    return;
                }
                let admitted = me.admission.clone().try_acquire_owned().ok();
                me.process(job, lease, admitted).await
            });
        }
        Ok(n)
    }

    /// Whether a job found at start may resume: its video still `processing` under this upload (or under
    /// none, if the reader stopped before it took the record over). A video the sweep failed meanwhile
    /// (this reader was away longer than its lease), or that another upload now owns, is left alone. A
    /// record that cannot be read keeps the job for the next start.
    async fn still_ours(&self, job: &Job) -> bool {
        loop {
            match self.cluster.meta().get_video(&job.video).await {
                Ok(Some(r)) => {
                    return r.status == VideoRecord::PROCESSING
                        && r.upload.as_deref().is_none_or(|u| u == job.upload)
                }
                Ok(None) => return false,
                Err(e) => {
                    tracing::warn!(upload = %job.upload, error = %e, "cannot read the video of a resumed transcode yet");
                    tokio::select! {
                        () = self.shutdown.cancelled() => return false,
                        () = tokio::time::sleep(Duration::from_secs(2)) => {}
                    }
                }
            }
        }
    }

    /// Runs a committed transcode to its end: `ready` or `failed` in the record, then the job is removed.
    /// On shutdown it stops with the job kept.
    async fn process(
        self: Arc<Self>,
        job: Job,
        lease: LeaseGuard,
        admitted: Option<OwnedSemaphorePermit>,
    ) {
        let progress = self.running().get(&job.upload).cloned().unwrap_or_default();
        let result = self.transcode_job(&job, progress).await;
        self.running().remove(&job.upload);
        if self.shutdown.is_cancelled() {
            tracing::info!(upload = %job.upload, "transcode stopped by shutdown; it resumes at the next start");
            return;
        }
        let record = match &result {
            Ok(record) => record.clone(),
            Err(e) => VideoRecord {
                status: VideoRecord::FAILED.to_owned(),
                error: Some(public_reason(e)),
                files: Vec::new(),
                digests: Default::default(),
                progress_percent: None,
                ..self.base_record(&job).await
            },
        };
        if self.put_final(&record).await {
            let _ = tokio::fs::remove_file(self.job_path(&job.upload)).await;
            let _ = tokio::fs::remove_file(self.source_path(&job.upload)).await;
        }
        match result {
            Ok(r) => tracing::info!(
                upload = %job.upload, video = %job.video, files = r.files.len(), "video ready"
            ),
            Err(e) => {
                tracing::warn!(upload = %job.upload, video = %job.video, error = %e, "video failed")
            }
        }
        // The lease goes only once the record says how the video ended (or, if that could not be written,
        // the sweep may fail it: the job stays for the next start).
        drop(lease);
        drop(admitted);
    }

    /// Writes a video's last record, retrying a while: `false` if the metadata store never took it.
    async fn put_final(&self, record: &VideoRecord) -> bool {
        let mut wait = Duration::from_millis(250);
        for attempt in 0..8 {
            match self.cluster.meta().put_video(record).await {
                Ok(()) => return true,
                Err(e) => {
                    tracing::warn!(video = %record.id, attempt, error = %e, "could not record how the video ended")
                }
            }
            tokio::select! {
                () = self.shutdown.cancelled() => return false,
                () = tokio::time::sleep(wait) => {}
            }
            wait = (wait * 2).min(Duration::from_secs(10));
        }
        false
    }

    /// The video's record as the broadcaster created it (keeping its creation time), or a new one.
    async fn base_record(&self, job: &Job) -> VideoRecord {
        let existing = self
            .cluster
            .meta()
            .get_video(&job.video)
            .await
            .ok()
            .flatten();
        existing.unwrap_or_else(|| VideoRecord {
            id: job.video.clone(),
            status: VideoRecord::PROCESSING.to_owned(),
            created_unix_ms: ring_client::maintenance::now_ms(),
            duration_ms: None,
            files: Vec::new(),
            error: None,
            digests: Default::default(),
            progress_percent: None,
            upload: None,
        })
    }

    /// The transcode proper, with the record kept up to date: the `ready` record on success.
    async fn transcode_job(
        &self,
        job: &Job,
        progress: Arc<dash::Progress>,
    ) -> Result<VideoRecord, ReaderError> {
        let cancel = self.shutdown.child_token();
        let base = VideoRecord {
            status: VideoRecord::PROCESSING.to_owned(),
            duration_ms: Some(job.probe.duration_ms),
            error: None,
            files: Vec::new(),
            digests: Default::default(),
            progress_percent: Some(0),
            upload: Some(job.upload.clone()),
            ..self.base_record(job).await
        };
        // Listed while it waits for a slot (a resumed job's old file list goes: it is written again).
        if let Err(e) = self.cluster.meta().put_video(&base).await {
            tracing::warn!(video = %job.video, error = %e, "could not list a committed video yet");
        }
        metrics::gauge!("distributary_transcodes_queued").increment(1.0);
        let permit = tokio::select! {
            p = self.transcodes.clone().acquire_owned() => p.map_err(|_| ReaderError::Ring("transcoder is shutting down".into())),
            () = cancel.cancelled() => Err(ReaderError::Body("the reader is shutting down".into())),
        };
        metrics::gauge!("distributary_transcodes_queued").decrement(1.0);
        let _permit = permit?;
        let ladder = dash::ladder(&job.probe);
        let written: Written = Arc::default();
        // The provisional manifest first, so the video can be watched from its first segment on.
        let manifest = dash::provisional_manifest(&job.probe, &ladder, self.options.segment_secs);
        self.put_bytes(&job.video, dash::MANIFEST, Bytes::from(manifest), &written)
            .await?;
        let recorder = Recorder::start(
            self.cluster.meta().clone(),
            base.clone(),
            written.clone(),
            progress.clone(),
        );
        let input = self.source_path(&job.upload);
        // A fresh directory per attempt: an ffmpeg left running by a reader that was killed (it is not our
        // child any more) must not write into the directory of the resumed transcode.
        let work_dir = self.staging_dir.join(format!(
            "{}.{}.dash",
            job.upload,
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        ));
        let result = self
            .transcode_to_ring(job, &ladder, &input, &work_dir, &written, cancel, progress)
            .await;
        // Stopped (and its last write finished) before the final record, which it must never overwrite.
        recorder.stop().await;
        let _ = tokio::fs::remove_dir_all(&work_dir).await;
        let _ = tokio::fs::remove_dir_all(work_dir.with_extension("poster")).await;
        result?;
        let digests = written.snapshot();
        Ok(VideoRecord {
            status: VideoRecord::READY.to_owned(),
            files: digests.keys().cloned().collect(),
            digests,
            progress_percent: None,
            ..base
        })
    }

    #[allow(clippy::too_many_arguments)]
    async fn transcode_to_ring(
        &self,
        job: &Job,
        ladder: &[dash::Rendition],
        input: &Path,
        work_dir: &Path,
        written: &Written,
        cancel: CancellationToken,
        progress: Arc<dash::Progress>,
    ) -> Result<(), ReaderError> {
        metrics::gauge!("distributary_transcodes_active").increment(1.0);
        let started = Instant::now();
        let result = self
            .run_ladder(
                &job.video, input, work_dir, &job.probe, ladder, written, cancel, progress,
            )
            .await;
        metrics::gauge!("distributary_transcodes_active").decrement(1.0);
        let outcome = if result.is_ok() { "ok" } else { "error" };
        metrics::histogram!("distributary_transcode_seconds", "outcome" => outcome)
            .record(started.elapsed().as_secs_f64());
        if result.is_err() && !self.shutdown.is_cancelled() {
            // A failed video keeps nothing on the ring. (A stopped one is written again when it resumes.)
            let files: Vec<String> = written.snapshot().into_keys().collect();
            self.delete_files(&job.video, &files).await;
        }
        result
    }

    #[allow(clippy::too_many_arguments)]
    async fn run_ladder(
        &self,
        video_id: &str,
        input: &Path,
        work_dir: &Path,
        probe: &dash::Probe,
        ladder: &[dash::Rendition],
        written: &Written,
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
        // The poster is cut alongside the transcode (ffmpeg's output directory must hold only its own files).
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
        written: &Written,
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
        self.put_bytes(video_id, &file, data, written).await
    }

    /// Puts one file on the ring; only then is it listed (with its digest) for the record.
    async fn put_bytes(
        &self,
        video_id: &str,
        file: &str,
        data: Bytes,
        written: &Written,
    ) -> Result<(), ReaderError> {
        let key = BlobKey::new(video_id, file.to_owned());
        let placed = self
            .cluster
            .put_blob(&key, data)
            .await
            .map_err(|e| ReaderError::Ring(format!("{key}: {e}")))?;
        written.insert(file.to_owned(), placed.digest);
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

    /// Drops a staged upload (and its staged source). A committed transcode is not stopped by an abort.
    pub async fn abort(&self, id: &str) -> Result<bool, ReaderError> {
        if !common::protocol::is_valid_upload_id(id) {
            return Err(ReaderError::BadUploadId);
        }
        Ok(self.pending().remove(id).is_some())
    }

    /// Forgets staged uploads nobody committed or aborted within `ttl`, with their staged sources.
    pub async fn sweep(&self, ttl: Duration) {
        let mut pending = self.pending();
        let before = pending.len();
        pending.retain(|id, p| {
            let keep = p.since.elapsed() <= ttl;
            if !keep {
                tracing::warn!(upload = %id, "staged video expired uncommitted; dropped");
            }
            keep
        });
        let dropped = before - pending.len();
        if dropped > 0 {
            tracing::debug!(dropped, "staging sweep");
        }
    }
}

/// The files of a transcode on the ring so far, with their digests; the recorder is woken when one lands.
#[derive(Debug, Default)]
struct Stored {
    files: Mutex<BTreeMap<String, String>>,
    landed: tokio::sync::Notify,
}

type Written = Arc<Stored>;

impl Stored {
    fn insert(&self, file: String, digest: String) {
        self.files
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(file, digest);
        self.landed.notify_one();
    }

    fn snapshot(&self) -> BTreeMap<String, String> {
        self.files.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Keeps a running transcode's record up to date: files as they are stored, and progress.
struct Recorder {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Recorder {
    fn start(
        meta: Arc<dyn meta::MetaStore>,
        base: VideoRecord,
        written: Written,
        progress: Arc<dash::Progress>,
    ) -> Self {
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            let mut last: Option<VideoRecord> = None;
            loop {
                let digests = written.snapshot();
                // 100 is for the `ready` record to say.
                let percent = progress
                    .percent()
                    .map(|p| (p.floor() as u8).min(99))
                    .unwrap_or(0);
                let record = VideoRecord {
                    files: digests.keys().cloned().collect(),
                    digests,
                    progress_percent: Some(percent),
                    ..base.clone()
                };
                if last.as_ref() != Some(&record) {
                    // A write once started is always finished: `stop` waits for it.
                    match meta.put_video(&record).await {
                        Ok(()) => last = Some(record),
                        Err(e) => {
                            tracing::debug!(video = %base.id, error = %e, "transcode progress not recorded")
                        }
                    }
                }
                // A new file is listed at once (a viewer may be waiting for it), but the record is not
                // rewritten more often than every RECORD_GAP; progress alone waits for RECORD_EVERY.
                let wrote = tokio::time::Instant::now();
                tokio::select! {
                    () = stopped.cancelled() => break,
                    () = written.landed.notified() => {
                        tokio::select! {
                            () = stopped.cancelled() => break,
                            () = tokio::time::sleep_until(wrote + RECORD_GAP) => {}
                        }
                    }
                    () = tokio::time::sleep(RECORD_EVERY) => {}
                }
            }
        });
        Self { stop, task }
    }

    /// Stops the updates and waits until none can be written any more.
    async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// Writes `job` to `dir/{upload}.json` durably (temporary file, fsync, rename, directory fsync).
async fn write_job(dir: &Path, job: &Job) -> Result<(), ReaderError> {
    let (dir, job) = (dir.to_path_buf(), job.clone());
    tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        use std::io::Write as _;
        std::fs::create_dir_all(&dir)?;
        let tmp = dir.join(format!("{}.json.tmp", job.upload));
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&serde_json::to_vec(&job).map_err(std::io::Error::other)?)?;
        f.sync_all()?;
        common::durable::publish(&tmp, &dir.join(format!("{}.json", job.upload)))
    })
    .await
    .map_err(|e| ReaderError::Io(std::io::Error::other(e)))??;
    Ok(())
}

/// A job file written by [`write_job`] for upload `id`, or `None` if it is not one.
fn read_job(path: &Path, id: &str) -> Option<Job> {
    use std::io::Read as _;
    let mut buf = Vec::new();
    std::fs::File::open(path)
        .ok()?
        .take(MAX_JOB_FILE)
        .read_to_end(&mut buf)
        .ok()?;
    let job: Job = serde_json::from_slice(&buf).ok()?;
    (job.upload == id && common::name::validate_name(&job.video).is_ok()).then_some(job)
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
