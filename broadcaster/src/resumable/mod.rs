//! Resumable uploads (DESIGN §7): one upload over many requests, fanned out as it arrives, committed on
//! every target together once it is whole.
//!
//! An upload is a [`ResumableUpload`] record in the metadata store; every target stages it under the
//! upload's id with the stream protocol's appends (`PATCH …?offset=N`), the ring as chunks written from
//! here. A request's body is streamed in segments of at most `BROADCASTER_RESUMABLE_CHECKPOINT_BYTES`; each
//! segment ends with a clean end of body on every target, which fsyncs it and says what it holds, and then
//! a checkpoint: the record's offset and SHA-256 state advance to what the quorum holds. So the offset a
//! client is told never counts a byte that is not durable on enough targets, never goes back, and survives
//! the broadcaster: a restart takes the upload up from the record. A client that vanishes mid-request
//! still gets its last segment checkpointed (the bytes that reached the targets count). A target that falls
//! behind or breaks drops out of the upload for good; the upload goes on while the quorum allows.
//!
//! Once whole, every target still in stages the whole upload (`POST …/finish`, which is when a dash reader
//! transcodes) and reports its SHA-256, checked against the record's; then the usual commit or abort.

pub mod http;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use common::midstate::Sha256State;
use common::protocol::VideoMode;
use futures_util::{Stream, StreamExt};
use meta::{ResumableUpload, UploadLease};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::auth::Principal;
use crate::fanout::{Concluding, Ended, Engine, Failure, Finished, Lane, LaneState, Mode, Msg};
use crate::summary::Summary;

/// States of a record.
pub const OPEN: &str = "open";
/// The upload committed.
pub const COMMITTED: &str = "committed";
/// The upload failed; nothing of it is kept.
pub const FAILED: &str = "failed";

/// Ring chunks protected from the sweep while an upload is open live under this lease id.
fn lease_id(id: &str) -> String {
    format!("resumable-{id}")
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

/// Why a request on a resumable upload was refused; each maps to an HTTP answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResumableError {
    /// 400.
    Bad(String),
    /// 403: another token's upload.
    NotOwner,
    /// 404.
    NotFound,
    /// 409: the append does not start where the upload is; carries the right offset.
    Offset { expected: u64 },
    /// 409: the upload already completed.
    Completed { offset: u64 },
    /// 410: the upload failed or expired; nothing of it is kept.
    Gone(String),
    /// 413.
    TooLarge(u64),
    /// 460: the request's checksum did not match its bytes; nothing of it was kept.
    Checksum,
    /// The fan-out failed (quorum, refused video, …), with the status the one-shot upload would answer.
    Failed { status: u16, message: String },
    /// 503.
    Unavailable(String),
}

impl ResumableError {
    fn meta(e: meta::MetaError) -> Self {
        Self::Unavailable(format!("metadata store: {e}"))
    }
}

/// What a creation asks for.
#[derive(Debug, Clone)]
pub struct Creation {
    /// Validated, normalised name.
    pub name: String,
    /// A video upload.
    pub video: bool,
    /// Announced length, if not deferred.
    pub length: Option<u64>,
}

/// What one append asks for besides its body.
#[derive(Debug, Clone, Default)]
pub struct AppendRequest {
    /// Where the client says the append starts.
    pub offset: u64,
    /// The total length, when announced now (deferred length, or the IETF draft's completion).
    pub length: Option<u64>,
    /// The IETF draft's `Upload-Complete: ?1`: the upload ends with this request.
    pub complete: bool,
    /// The tus checksum extension: SHA-256 of this request's bytes.
    pub checksum: Option<[u8; 32]>,
}

/// How an append ended.
#[derive(Debug)]
pub struct Appended {
    /// The record afterwards.
    pub upload: ResumableUpload,
    /// The upload's summary, if this append completed it.
    pub summary: Option<Summary>,
}

/// One upload's place in this process: appends on it run one at a time, and a new one stops the old.
#[derive(Debug, Default)]
struct Session {
    lock: tokio::sync::Mutex<()>,
    running: Mutex<CancellationToken>,
    /// The running append's client went away; what it sent is being checkpointed.
    settling: AtomicBool,
}

/// The resumable uploads of one broadcaster.
#[derive(Debug, Default)]
pub struct Uploads {
    sessions: Mutex<HashMap<String, Arc<Session>>>,
}

impl Uploads {
    fn session(&self, id: &str) -> Arc<Session> {
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(id.to_owned())
            .or_default()
            .clone()
    }

    fn existing(&self, id: &str) -> Option<Arc<Session>> {
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
    }

    fn forget(&self, id: &str) {
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }

    /// Stops whatever runs on upload `id` and waits for its turn; the guard holds the upload.
    async fn take_turn(&self, id: &str) -> (Arc<Session>, CancellationToken) {
        let session = self.session(id);
        let cancel = {
            let mut running = session.running.lock().unwrap_or_else(|e| e.into_inner());
            running.cancel();
            *running = CancellationToken::new();
            running.clone()
        };
        (session, cancel)
    }
}

/// Loads upload `id` for `principal`: absent → 404, someone else's → 403.
async fn load(
    engine: &Engine,
    principal: &Principal,
    id: &str,
) -> Result<ResumableUpload, ResumableError> {
    if !common::protocol::is_valid_upload_id(id) {
        return Err(ResumableError::NotFound);
    }
    let upload = engine
        .cluster()
        .meta()
        .get_resumable(id)
        .await
        .map_err(ResumableError::meta)?
        .ok_or(ResumableError::NotFound)?;
    if upload.owner.as_deref() != Some(principal.id.as_str()) {
        return Err(ResumableError::NotOwner);
    }
    Ok(upload)
}

/// Creates an upload for `principal`.
pub async fn create(
    engine: &Engine,
    principal: &Principal,
    c: Creation,
) -> Result<ResumableUpload, ResumableError> {
    let cfg = engine.config();
    if cfg.targets.is_empty() {
        return Err(ResumableError::Unavailable(
            crate::error::BroadcastError::NoTargets.to_string(),
        ));
    }
    if let (Some(max), Some(len)) = (cfg.max_upload_bytes, c.length) {
        if len > max {
            return Err(ResumableError::TooLarge(max));
        }
    }
    if c.video {
        let id = crate::video::video_id_for(&c.name, Some(principal)).map_err(|(s, m)| {
            ResumableError::Failed {
                status: s.as_u16(),
                message: m,
            }
        })?;
        let existing = engine
            .cluster()
            .meta()
            .get_video(&id)
            .await
            .map_err(ResumableError::meta)?;
        if existing.is_some_and(|v| v.status != meta::VideoRecord::FAILED) {
            return Err(ResumableError::Failed {
                status: 409,
                message: format!("video id `{id}` is taken"),
            });
        }
    }
    let now = now_ms();
    let upload = ResumableUpload {
        id: uuid::Uuid::new_v4().simple().to_string(),
        name: c.name,
        video: c.video,
        owner: Some(principal.id.clone()),
        length: c.length,
        offset: 0,
        sha256_state: Sha256State::new().save(),
        targets: cfg
            .targets
            .iter()
            .map(|t| (t.label.clone(), None))
            .collect(),
        ring_chunks: Vec::new(),
        state: OPEN.to_owned(),
        summary: None,
        created_unix_ms: now,
        expires_unix_ms: now + cfg.resumable_ttl.as_millis() as u64,
    };
    protect(engine, &upload).await?;
    engine
        .cluster()
        .meta()
        .put_resumable(&upload)
        .await
        .map_err(ResumableError::meta)?;
    metrics::counter!("distributary_resumable_created_total").increment(1);
    tracing::info!(upload = %upload.id, name = %upload.name, length = ?upload.length, "resumable upload created");
    Ok(upload)
}

/// Keeps the housekeeping sweep off the upload's ring chunks until it expires.
async fn protect(engine: &Engine, upload: &ResumableUpload) -> Result<(), ResumableError> {
    if !engine.config().targets.iter().any(|t| t.is_ring) {
        return Ok(());
    }
    let lease = UploadLease {
        id: lease_id(&upload.id),
        prefixes: vec![format!("raw.{}", upload.id)],
        holder: "resumable".to_owned(),
        // A little past the expiry, so the expiry sweep (not the orphan sweep) is what removes them.
        expires_unix_ms: upload.expires_unix_ms + 60_000,
    };
    engine
        .cluster()
        .meta()
        .put_lease(&lease)
        .await
        .map_err(ResumableError::meta)
}

/// The upload as `principal` may see it.
pub async fn status(
    engine: &Engine,
    principal: &Principal,
    id: &str,
) -> Result<ResumableUpload, ResumableError> {
    load(engine, principal, id).await?;
    // A client that reconnects after a cut asks at once, while the cut append is still checkpointing what
    // arrived: wait briefly for it, so the answer counts those bytes instead of sending the client into a
    // 409 round. An append that is still receiving is not waited for beyond this.
    let session = engine.resumable().existing(id);
    if let Some(session) = session.filter(|s| s.settling.load(Ordering::Acquire)) {
        let _ = tokio::time::timeout(HEAD_WAIT, session.lock.lock()).await;
    }
    load(engine, principal, id).await
}

/// Longest `HEAD` waits for an append on the same upload to checkpoint.
const HEAD_WAIT: Duration = Duration::from_secs(2);

/// Appends `body` to upload `id` at `req.offset`, and completes the upload when it is whole.
pub async fn append<S, E>(
    engine: &Engine,
    principal: &Principal,
    id: &str,
    req: AppendRequest,
    body: S,
) -> Result<Appended, ResumableError>
where
    S: Stream<Item = Result<Bytes, E>> + Send,
    E: std::fmt::Display,
{
    // Only the owner of an existing upload may stop what runs on it (and get a session at all).
    load(engine, principal, id).await?;
    let (session, cancel) = engine.resumable().take_turn(id).await;
    let _turn = session.lock.lock().await;
    let mut upload = load(engine, principal, id).await?;
    let mut stored = upload.clone();
    match upload.state.as_str() {
        OPEN => {}
        COMMITTED => {
            return Err(ResumableError::Completed {
                offset: upload.offset,
            })
        }
        _ => return Err(ResumableError::Gone("the upload failed".into())),
    }
    if req.offset != upload.offset {
        return Err(ResumableError::Offset {
            expected: upload.offset,
        });
    }
    if let Some(len) = req.length {
        match upload.length {
            Some(l) if l != len => {
                return Err(ResumableError::Bad(format!(
                    "Upload-Length {len} differs from the {l} announced before"
                )))
            }
            _ if len < upload.offset => {
                return Err(ResumableError::Bad(format!(
                    "Upload-Length {len} is less than the {} bytes received",
                    upload.offset
                )))
            }
            _ => {}
        }
        if let Some(max) = engine.config().max_upload_bytes.filter(|&m| len > m) {
            return Err(ResumableError::TooLarge(max));
        }
        upload.length = Some(len);
    }
    let mut sha = Sha256State::load(&upload.sha256_state)
        .map_err(|e| ResumableError::Unavailable(format!("upload state: {e}")))?;
    let started = Instant::now();
    session.settling.store(false, Ordering::Release);
    let settling = session.clone();
    let _settled = Settled(session.clone());
    let body = common::guard::IdleTimeout::new(Box::pin(body), engine.config().body_idle_timeout)
        .inspect(move |item| {
            if item.is_err() {
                settling.settling.store(true, Ordering::Release);
            }
        })
        .take_until(cancel.clone().cancelled_owned());
    futures_util::pin_mut!(body);
    let mut carry: Option<Bytes> = None;
    // Hashed twice only when the client asked for a checksum of this request.
    let mut request_sha = req.checksum.map(|_| Sha256::new());
    let mut outcome = Ok(());
    loop {
        // With a checksum the request is one segment: its bytes count only once they all checked out.
        let segment = if req.checksum.is_some() {
            u64::MAX
        } else {
            engine.config().resumable_checkpoint
        };
        let room = upload
            .length
            .map_or(u64::MAX, |l| l.saturating_sub(upload.offset));
        let step = run_segment(
            engine,
            &mut upload,
            &mut stored,
            &mut sha,
            &mut request_sha,
            body.as_mut(),
            &mut carry,
            segment.min(room),
            req.checksum,
        )
        .await;
        match step {
            Ok(Step::More) => {
                // A segment ended exactly where the body may end: look before opening another, so a body
                // that ended costs no empty round on every target.
                if carry.is_none() {
                    match body.next().await {
                        None => break,
                        Some(Ok(frame)) => carry = Some(frame),
                        Some(Err(_)) => break,
                    }
                }
                if upload.length == Some(upload.offset) {
                    if carry.as_ref().is_some_and(|b| !b.is_empty()) {
                        outcome = Err(ResumableError::Bad(
                            "the body goes past Upload-Length".into(),
                        ));
                    }
                    break;
                }
                continue;
            }
            Ok(Step::Ended) => break,
            Err(e) => {
                outcome = Err(e);
                break;
            }
        }
    }
    if cancel.is_cancelled() && outcome.is_ok() {
        outcome = Err(ResumableError::Bad(
            "stopped by a newer request on the same upload".into(),
        ));
    }
    outcome?;
    if req.complete {
        upload.length = Some(upload.offset);
    }
    let summary = if upload.length == Some(upload.offset) {
        Some(complete(engine, &mut upload, sha.finish(), started).await?)
    } else {
        None
    };
    Ok(Appended { upload, summary })
}

/// Clears a session's `settling` however the append ends.
struct Settled(Arc<Session>);

impl Drop for Settled {
    fn drop(&mut self) {
        self.0.settling.store(false, Ordering::Release);
    }
}

enum Step {
    /// The segment is full; the body may have more.
    More,
    /// The body ended.
    Ended,
}

/// Streams one segment of the body to every target still in the upload, ends it cleanly, and checkpoints
/// what the quorum holds.
#[allow(clippy::too_many_arguments)]
async fn run_segment<S, E>(
    engine: &Engine,
    upload: &mut ResumableUpload,
    stored: &mut ResumableUpload,
    sha: &mut Sha256State,
    request_sha: &mut Option<Sha256>,
    body: std::pin::Pin<&mut S>,
    carry: &mut Option<Bytes>,
    limit: u64,
    checksum: Option<[u8; 32]>,
) -> Result<Step, ResumableError>
where
    S: Stream<Item = Result<Bytes, E>> + ?Sized,
    E: std::fmt::Display,
{
    let cfg = engine.config();
    let mode = Mode::Append {
        offset: upload.offset,
        keep_secs: cfg.resumable_ttl.as_secs() + 3600,
        ring_chunks: upload.ring_chunks.clone(),
    };
    let mut lanes = lanes_for(engine, upload, &mode);
    let mut next = sha.clone();
    let pumped = engine
        .pump(
            &mut lanes,
            body,
            carry,
            upload.offset,
            limit,
            &mut |b: &[u8]| {
                next.update(b);
                if let Some(r) = request_sha.as_mut() {
                    r.update(b);
                }
            },
        )
        .await;
    let end_offset = upload.offset + pumped.bytes;
    let too_large = matches!(pumped.end.failure, Some(Failure::TooLarge));
    // Everything received so far ends cleanly, even when the client broke off: it counts (unless the
    // request is refused below, and then it is rewound).
    engine.dispatch(&mut lanes, Msg::End).await;
    engine.collect_staged(&mut lanes, 0, "", None).await;
    // Who holds exactly what was sent stays in the upload; anyone else drops out of it for good.
    let mut ring_chunks = None;
    for lane in lanes.iter() {
        let Some(entry) = upload
            .targets
            .iter_mut()
            .find(|(label, why)| *label == lane.target.label && why.is_none())
        else {
            continue;
        };
        if too_large {
            continue;
        }
        match (&lane.state, &lane.held) {
            (LaneState::Staged, Some((held, chunks))) if *held == end_offset => {
                if lane.target.is_ring {
                    ring_chunks = Some(chunks.clone());
                }
            }
            (LaneState::Staged, Some((held, _))) => {
                entry.1 = Some(format!("holds {held} bytes, expected {end_offset}"));
            }
            (LaneState::Failed(why), _) => entry.1 = Some(why.clone()),
            (state, _) => entry.1 = Some(format!("append ended {state:?}")),
        }
        if let Some(why) = &entry.1 {
            tracing::warn!(upload = %upload.id, target = %lane.target.label, offset = upload.offset, %why, "target dropped out of the upload");
        }
    }
    let live = upload.targets.iter().filter(|t| t.1.is_none()).count();
    if too_large {
        rewind(engine, upload, end_offset).await;
        let max = cfg.max_upload_bytes.unwrap_or_default();
        return Err(ResumableError::TooLarge(max));
    }
    if live < cfg.min_success {
        let why = format!(
            "only {live} of {} targets still hold the upload; {} required",
            upload.targets.len(),
            cfg.min_success
        );
        fail(engine, upload, &why).await;
        return Err(ResumableError::Failed {
            status: 502,
            message: why,
        });
    }
    let checksum_ok = match (checksum, pumped.end.failure.is_none()) {
        (Some(want), true) => request_sha
            .clone()
            .is_some_and(|r| <[u8; 32]>::from(r.finalize()) == want),
        (Some(_), false) => false,
        (None, _) => true,
    };
    if checksum_ok {
        if let Some(chunks) = ring_chunks {
            upload.ring_chunks = chunks;
        }
        upload.offset = end_offset;
        *sha = next;
        upload.sha256_state = sha.save();
    }
    upload.expires_unix_ms = now_ms() + cfg.resumable_ttl.as_millis() as u64;
    // Compare-and-swap against the record as this append last wrote it: another broadcaster appending to
    // the same upload meanwhile makes this checkpoint fail instead of overwriting its progress.
    let meta = engine.cluster().meta();
    if !meta
        .replace_resumable(stored, upload)
        .await
        .map_err(ResumableError::meta)?
    {
        let now = meta
            .get_resumable(&upload.id)
            .await
            .map_err(ResumableError::meta)?
            .ok_or(ResumableError::NotFound)?;
        tracing::warn!(upload = %upload.id, "another request changed the upload during this append; it stops");
        return Err(ResumableError::Offset {
            expected: now.offset,
        });
    }
    *stored = upload.clone();
    protect(engine, upload).await?;
    metrics::counter!("distributary_resumable_checkpoints_total").increment(1);
    tracing::debug!(upload = %upload.id, offset = upload.offset, live, "checkpoint");
    if !checksum_ok {
        rewind(engine, upload, end_offset).await;
        return Err(ResumableError::Checksum);
    }
    if let Some(f) = pumped.end.failure {
        let why = pumped.end.error.unwrap_or_default();
        return Err(match f {
            Failure::ClientGone => ResumableError::Bad(why),
            _ => ResumableError::Failed {
                status: 502,
                message: why,
            },
        });
    }
    Ok(if pumped.body_ended {
        Step::Ended
    } else {
        Step::More
    })
}

/// Removes from every target what a refused request sent past the upload's offset (it keeps nothing of
/// it): readers and nodes cut their spools back with an empty append at the offset, and the ring's chunks
/// past the record are deleted (the record's own never are: a partial last chunk lives under its tail key).
async fn rewind(engine: &Engine, upload: &ResumableUpload, end: u64) {
    let mode = Mode::Append {
        offset: upload.offset,
        keep_secs: engine.config().resumable_ttl.as_secs() + 3600,
        ring_chunks: upload.ring_chunks.clone(),
    };
    let mut lanes = lanes_for(engine, upload, &mode);
    engine.dispatch(&mut lanes, Msg::End).await;
    engine.collect_staged(&mut lanes, 0, "", None).await;
    if !engine.config().targets.iter().any(|t| t.is_ring) || end == upload.offset {
        return;
    }
    let cluster = engine.cluster();
    let size = cluster.chunk_size() as u64;
    for i in upload.offset / size..=end / size {
        cluster
            .delete_blob(&ring_client::files::chunk_key(&upload.id, i))
            .await;
    }
    if !end.is_multiple_of(size) {
        cluster
            .delete_blob(&ring_client::files::tail_key(
                &upload.id,
                end / size,
                end % size,
            ))
            .await;
    }
    tracing::info!(upload = %upload.id, offset = upload.offset, "refused append rewound on every target");
}

/// A lane per configured target: appending ones for targets still in the upload, placeholders for the
/// ones that dropped out.
fn lanes_for(engine: &Engine, upload: &ResumableUpload, mode: &Mode) -> Vec<Lane> {
    let video = if upload.video {
        VideoMode::Required
    } else {
        VideoMode::Skip
    };
    lanes(engine, upload, |t| {
        engine.open_lane(t, &upload.id, &upload.name, video, mode)
    })
}

/// A lane per configured target: `open` for the ones still in the upload, placeholders for the others.
fn lanes(
    engine: &Engine,
    upload: &ResumableUpload,
    open: impl Fn(&crate::target::Target) -> Lane,
) -> Vec<Lane> {
    engine
        .config()
        .targets
        .iter()
        .map(
            |t| match upload.targets.iter().find(|(label, _)| *label == t.label) {
                Some((_, None)) => open(t),
                Some((_, Some(why))) => Lane::dropped(t, why.clone()),
                None => Lane::dropped(t, "not a target when the upload began".into()),
            },
        )
        .collect()
}

/// The upload is whole: every target still in stages all of it, then all commit or none does.
async fn complete(
    engine: &Engine,
    upload: &mut ResumableUpload,
    digest: [u8; 32],
    started: Instant,
) -> Result<Summary, ResumableError> {
    let sha_hex = hex::encode(digest);
    let mut lanes = lanes(engine, upload, Lane::idle);
    let job = if upload.video {
        let begun = match crate::video::video_id_for(&upload.name, None) {
            Ok(id) => crate::video::VideoJob::begin(engine, &id).await,
            Err(e) => Err(e),
        };
        match begun {
            Ok(job) => Some(job),
            Err((status, message)) => {
                // The upload cannot become a video (its id was taken meanwhile, the store is down): it
                // fails as a whole rather than wait for a retry that cannot succeed.
                fail(engine, upload, &message).await;
                return Err(ResumableError::Failed {
                    status: status.as_u16(),
                    message,
                });
            }
        }
    } else {
        None
    };
    // The dash reader probes the whole upload when it stages it (`finish`) and transcodes it once committed.
    engine
        .finish_lanes(
            &mut lanes,
            &upload.id,
            upload.offset,
            &sha_hex,
            &upload.ring_chunks,
        )
        .await;
    let done: Finished = engine
        .conclude(
            lanes,
            Concluding {
                id: &upload.id,
                name: &upload.name,
                video: if upload.video {
                    VideoMode::Required
                } else {
                    VideoMode::Skip
                },
                size: upload.offset,
                digest,
                started,
                end: Ended::default(),
            },
        )
        .await;
    let video_result = match job {
        Some(job) => job.end(&done, crate::video::Ending::Committed).await,
        None => Ok(()),
    };
    let committed = done.failure.is_none();
    upload.state = if committed { COMMITTED } else { FAILED }.to_owned();
    upload.summary = serde_json::to_string(&done.summary).ok();
    if !committed {
        // Targets that dropped out earlier may still hold staging.
        purge(engine, upload).await;
    } else if upload
        .targets
        .iter()
        .any(|(l, why)| l == "ring" && why.is_some())
    {
        purge_ring(engine, upload).await;
    }
    let _ = engine
        .cluster()
        .meta()
        .delete_lease(&lease_id(&upload.id))
        .await;
    engine
        .cluster()
        .meta()
        .put_resumable(upload)
        .await
        .map_err(ResumableError::meta)?;
    metrics::counter!("distributary_resumable_completed_total", "outcome" => if committed { "committed" } else { "failed" }).increment(1);
    if let Err((status, message)) = video_result {
        return Err(ResumableError::Failed {
            status: status.as_u16(),
            message,
        });
    }
    match done.failure {
        None => Ok(done.summary),
        Some(f) => Err(ResumableError::Failed {
            status: crate::routes::status_of(axum::http::StatusCode::OK, &Some(f)).as_u16(),
            message: done.summary.error.clone().unwrap_or_default(),
        }),
    }
}

/// The upload failed: nothing of it stays anywhere, and the record says so.
async fn fail(engine: &Engine, upload: &mut ResumableUpload, why: &str) {
    tracing::warn!(upload = %upload.id, name = %upload.name, error = why, "resumable upload failed");
    purge(engine, upload).await;
    upload.state = FAILED.to_owned();
    let _ = engine
        .cluster()
        .meta()
        .delete_lease(&lease_id(&upload.id))
        .await;
    if let Err(e) = engine.cluster().meta().put_resumable(upload).await {
        tracing::warn!(upload = %upload.id, error = %e, "could not record a failed upload");
    }
    metrics::counter!("distributary_resumable_completed_total", "outcome" => "failed").increment(1);
}

/// Removes everything the upload staged, on every target (dropped ones too).
async fn purge(engine: &Engine, upload: &ResumableUpload) {
    let targets = engine.config().targets.clone();
    let discards = targets.iter().map(|t| async move {
        if t.is_ring {
            purge_ring(engine, upload).await;
        } else {
            engine
                .discard(crate::fanout::LaneKind::Http, t, 0, &upload.id)
                .await;
        }
    });
    futures_util::future::join_all(discards).await;
}

/// Removes the upload's ring chunks: every one recorded, and every one an unrecorded segment can have
/// written past them.
async fn purge_ring(engine: &Engine, upload: &ResumableUpload) {
    let cluster = engine.cluster();
    let beyond = engine.config().resumable_checkpoint / cluster.chunk_size() as u64 + 2;
    cluster
        .delete_chunks(&upload.id, upload.ring_chunks.len() as u64 + beyond)
        .await;
    let size = cluster.chunk_size() as u64;
    if !upload.offset.is_multiple_of(size) {
        cluster
            .delete_blob(&ring_client::files::tail_key(
                &upload.id,
                upload.offset / size,
                upload.offset % size,
            ))
            .await;
    }
}

/// Cancels upload `id` (tus termination, IETF cancellation): everything it staged is removed.
pub async fn terminate(
    engine: &Engine,
    principal: &Principal,
    id: &str,
) -> Result<(), ResumableError> {
    load(engine, principal, id).await?;
    let (session, _cancel) = engine.resumable().take_turn(id).await;
    let _turn = session.lock.lock().await;
    let upload = load(engine, principal, id).await?;
    remove(engine, &upload).await?;
    tracing::info!(upload = %id, name = %upload.name, "resumable upload terminated");
    Ok(())
}

/// Removes an upload and, while it is incomplete, everything it staged.
async fn remove(engine: &Engine, upload: &ResumableUpload) -> Result<(), ResumableError> {
    if upload.state == OPEN {
        purge(engine, upload).await;
    }
    let meta = engine.cluster().meta();
    let _ = meta.delete_lease(&lease_id(&upload.id)).await;
    meta.delete_resumable(&upload.id)
        .await
        .map_err(ResumableError::meta)?;
    engine.resumable().forget(&upload.id);
    Ok(())
}

/// Removes every upload past its expiry (incomplete ones with all they staged, ended ones' records);
/// returns how many.
pub async fn expire(engine: &Engine) -> Result<usize, meta::MetaError> {
    let now = now_ms();
    let mut removed = 0;
    for upload in engine.cluster().meta().list_resumable().await? {
        if upload.expires_unix_ms > now {
            continue;
        }
        let session = engine.resumable().session(&upload.id);
        // An append in progress renews the expiry when it checkpoints; never pull its staging away.
        let Ok(_turn) = session.lock.try_lock() else {
            continue;
        };
        if upload.state == OPEN {
            tracing::warn!(upload = %upload.id, name = %upload.name, offset = upload.offset, "resumable upload expired; removing what it staged");
        }
        if remove(engine, &upload).await.is_ok() {
            removed += 1;
            metrics::counter!("distributary_resumable_expired_total").increment(1);
        }
    }
    Ok(removed)
}

/// Runs [`expire`] every `max(1 s, ttl / 4)` (at most every minute) until `shutdown`.
pub fn spawn_expiry(engine: Engine, shutdown: CancellationToken) {
    let period =
        (engine.config().resumable_ttl / 4).clamp(Duration::from_secs(1), Duration::from_secs(60));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {
                    if let Err(e) = expire(&engine).await {
                        tracing::warn!(error = %e, "resumable expiry sweep failed");
                    }
                }
            }
        }
    });
}
