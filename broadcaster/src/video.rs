//! `POST /upload`: a video from the web form. The upload is fanned out like any other, with every
//! transcoding target told that it must produce a video; the dash reader stages and probes it, so a file
//! that is not a video (415) or is corrupt (422) is refused before anything commits and leaves nothing
//! behind. The video is listed as `processing` from the start. Once the upload commits, the dash reader
//! transcodes it and owns its record: it lists each DASH file as it lands on the ring (viewers can start
//! watching), then says `ready` or `failed`. The form's answer (303) waits for that, as it always has.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{Multipart, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::Json;
use common::protocol::{ErrorBody, VideoMode};
use futures_util::TryStreamExt;
use meta::{MetaError, VideoRecord};

use crate::error::BroadcastError;
use crate::fanout::{Engine, Failure, Finished, UploadRequest};

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

/// Why `POST /upload` failed, said to a browser or a script.
struct UploadError {
    status: StatusCode,
    message: String,
    html: bool,
}

impl IntoResponse for UploadError {
    fn into_response(self) -> Response {
        if self.html {
            let page = format!(
                "<!doctype html><meta charset=utf-8><title>Upload failed</title>\
                 <p>Upload failed ({}): {}</p><p><a href=\"/\">Back</a></p>",
                self.status.as_u16(),
                crate::web::html::escape(&self.message)
            );
            return (self.status, Html(page)).into_response();
        }
        (
            self.status,
            Json(ErrorBody {
                error: self.message,
            }),
        )
            .into_response()
    }
}

/// Handles the web form's upload; 303 to `/` once the video is playable.
pub async fn post_upload(
    State(engine): State<Engine>,
    principal: Option<axum::Extension<crate::auth::Principal>>,
    headers: HeaderMap,
    form: Multipart,
) -> Response {
    let html = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/html"));
    let fail = |status: StatusCode, message: String| {
        UploadError {
            status,
            message,
            html,
        }
        .into_response()
    };
    // The work runs in its own task so that a browser closing the tab mid-upload cannot cancel it halfway:
    // it sees the body fail and cleans up.
    let principal = principal.map(|p| p.0);
    let slot = match engine.admit() {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    let task = tokio::spawn(async move {
        let _slot = slot;
        upload(engine, principal, form).await
    });
    match task.await {
        Ok(Ok(id)) => {
            tracing::info!(%id, "video ready");
            (StatusCode::SEE_OTHER, [(header::LOCATION, "/")]).into_response()
        }
        Ok(Err((status, message))) => fail(status, message),
        Err(e) => fail(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("upload task failed: {e}"),
        ),
    }
}

async fn upload(
    engine: Engine,
    principal: Option<crate::auth::Principal>,
    mut form: Multipart,
) -> Result<String, (StatusCode, String)> {
    let bad = |m: String| (StatusCode::BAD_REQUEST, m);
    let field = loop {
        let field = form
            .next_field()
            .await
            .map_err(|e| bad(format!("malformed multipart body: {}", e.body_text())))?
            .ok_or_else(|| bad("no file: the form has no `file` field".into()))?;
        if field.name() == Some("file") {
            break field;
        }
    };
    let name = field.file_name().unwrap_or_default().to_owned();
    if name.is_empty() {
        return Err(bad("no file was chosen".into()));
    }
    let name =
        common::name::normalize_name(&name).map_err(|e| bad(format!("bad file name: {e}")))?;
    let id = video_id_for(&name, principal.as_ref())?;
    if engine.config().targets.is_empty() {
        return Err((
            StatusCode::SERVICE_UNAVAILABLE,
            BroadcastError::NoTargets.to_string(),
        ));
    }

    let job = VideoJob::begin(&engine, &id).await?;
    let req = UploadRequest {
        name,
        expected_sha256: None,
        declared_len: None,
        video: VideoMode::Required,
    };
    let done = engine.run(req, field.map_err(|e| e.body_text())).await;
    job.end(&done, Ending::WaitReady).await?;
    Ok(id)
}

/// Checks a video upload's name for the caller before anything is written: the video id it makes, and
/// that the caller may upload under it.
pub fn video_id_for(
    name: &str,
    principal: Option<&crate::auth::Principal>,
) -> Result<String, (StatusCode, String)> {
    let bad = |m: String| (StatusCode::BAD_REQUEST, m);
    let id = common::name::video_id(name).map_err(|e| bad(format!("bad video id: {e}")))?;
    if let Some(p) = principal {
        if !p.allows(crate::auth::Scope::Upload, Some(&id)) {
            return Err((
                StatusCode::FORBIDDEN,
                format!("this token may not upload a video named `{id}`"),
            ));
        }
    }
    if id.starts_with("raw.") || id == "raw" {
        // `raw.*` names the ring's chunks of raw uploads.
        return Err(bad("video ids may not start with `raw.`".into()));
    }
    Ok(id)
}

impl std::fmt::Debug for VideoJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VideoJob")
            .field("id", &self.record.id)
            .finish_non_exhaustive()
    }
}

/// A video in the catalogue while its upload is transcoded: `processing` from [`VideoJob::begin`] until
/// [`VideoJob::end`] makes it `ready` (or failed, or gone).
pub struct VideoJob {
    meta: std::sync::Arc<dyn meta::MetaStore>,
    record: VideoRecord,
    /// The transcoder writes the video's files to the ring while this runs; the lease keeps the sweep off
    /// them (and off the `processing` record) until the record says `ready` or the files are gone.
    _lease: ring_client::maintenance::LeaseGuard,
}

impl VideoJob {
    /// Lists video `id` as `processing` (or refuses: the id is taken, the store is unavailable).
    pub async fn begin(engine: &Engine, id: &str) -> Result<Self, (StatusCode, String)> {
        let meta = engine.cluster().meta().clone();
        let lease = engine
            .cluster()
            .lease(
                &format!("video-{}", uuid::Uuid::new_v4().simple()),
                vec![id.to_owned()],
            )
            .await
            .map_err(|e| {
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("cannot register the upload: {e}"),
                )
            })?;
        let record = VideoRecord {
            id: id.to_owned(),
            status: meta::VideoRecord::PROCESSING.to_owned(),
            created_unix_ms: now_ms(),
            duration_ms: None,
            files: Vec::new(),
            error: None,
            digests: Default::default(),
            progress_percent: None,
            upload: None,
        };
        match meta.create_video(&record).await {
            Ok(()) => {}
            Err(MetaError::AlreadyExists) => {
                // A failed attempt may be retried under the same id; anything else keeps its id.
                let existing = meta.get_video(id).await.map_err(unavailable)?;
                match existing {
                    Some(v) if v.status == meta::VideoRecord::FAILED => {
                        meta.put_video(&record).await.map_err(unavailable)?
                    }
                    _ => return Err((StatusCode::CONFLICT, format!("video id `{id}` is taken"))),
                }
            }
            Err(e) => return Err(unavailable(e)),
        }
        Ok(Self {
            meta,
            record,
            _lease: lease,
        })
    }

    /// Records how the upload ended: committed (the dash reader transcodes it and writes the record from
    /// now on; with [`Ending::WaitReady`] this waits until the record says `ready` or `failed`), `failed`
    /// (ours: the id may be uploaded again), or nothing at all (the client's fault).
    pub async fn end(self, done: &Finished, ending: Ending) -> Result<(), (StatusCode, String)> {
        let (meta, record) = (&self.meta, &self.record);
        match (&done.failure, &done.video) {
            (None, Some(video)) => match ending {
                Ending::Committed => Ok(()),
                Ending::WaitReady => {
                    wait_ready(meta, &record.id, Duration::from_millis(video.duration_ms)).await
                }
            },
            (None, None) => {
                let _ = meta.delete_video(&record.id).await;
                Err((
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the upload committed but no target produced a video".into(),
                ))
            }
            (Some(failure), _) => {
                let status = crate::routes::status_of(StatusCode::OK, &Some(failure.clone()));
                let message = done
                    .summary
                    .error
                    .clone()
                    .unwrap_or_else(|| "upload failed".into());
                match failure {
                    // The client's fault: nothing of it stays, not even its name.
                    Failure::Rejected(_)
                    | Failure::ClientGone
                    | Failure::TooLarge
                    | Failure::DigestMismatch => {
                        let _ = meta.delete_video(&record.id).await;
                    }
                    // Ours: the catalogue says so, and the id can be uploaded again.
                    Failure::Quorum | Failure::NoTranscoder | Failure::Unavailable => {
                        let _ = mark_failed(meta, record, &message).await;
                    }
                }
                Err((status, message))
            }
        }
    }
}

/// What [`VideoJob::end`] waits for once the upload committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Nothing more: a resumable upload's last request answers once the upload is committed.
    Committed,
    /// The video `ready` (or `failed`): the web form's 303 means "playable in every rendition".
    WaitReady,
}

/// How often the record of a committed video is read while `POST /upload` waits for it.
const READY_POLL: Duration = Duration::from_millis(250);

/// How long `POST /upload` waits for a committed video of `duration` to be ready: the dash reader's own
/// transcode limit for it, plus as long again for a turn in its queue. The video goes on being processed
/// past this; the answer then says so.
fn ready_wait(duration: Duration) -> Duration {
    let transcode = Duration::from_secs(60) + duration * 4;
    transcode * 2 + Duration::from_secs(60)
}

/// Waits until video `id`'s record leaves `processing`.
async fn wait_ready(
    meta: &std::sync::Arc<dyn meta::MetaStore>,
    id: &str,
    duration: Duration,
) -> Result<(), (StatusCode, String)> {
    let deadline = tokio::time::Instant::now() + ready_wait(duration);
    loop {
        match meta.get_video(id).await {
            Ok(Some(v)) if v.status == VideoRecord::READY => return Ok(()),
            Ok(Some(v)) if v.status == VideoRecord::FAILED => {
                let why = v.error.unwrap_or_else(|| "the transcode failed".into());
                return Err((
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!("the upload was stored but its transcode failed: {why}"),
                ));
            }
            Ok(Some(_)) => {}
            Ok(None) => {
                return Err((
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the video's record disappeared while it was processed".into(),
                ))
            }
            // The store may come back: the video goes on being processed meanwhile.
            Err(e) => {
                tracing::debug!(video = %id, error = %e, "waiting for a video: store unavailable")
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Err((
                StatusCode::GATEWAY_TIMEOUT,
                "the upload is stored and still being processed; the video appears on the index when it is ready".into(),
            ));
        }
        tokio::time::sleep(READY_POLL).await;
    }
}

async fn mark_failed(
    meta: &std::sync::Arc<dyn meta::MetaStore>,
    record: &VideoRecord,
    why: &str,
) -> Result<(), MetaError> {
    let failed = VideoRecord {
        status: meta::VideoRecord::FAILED.to_owned(),
        error: Some(why.to_owned()),
        ..record.clone()
    };
    meta.put_video(&failed).await
}

fn unavailable(e: MetaError) -> (StatusCode, String) {
    let status = if e.is_unavailable() {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::INTERNAL_SERVER_ERROR
    };
    (status, format!("metadata store: {e}"))
}
