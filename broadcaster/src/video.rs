//! `POST /upload`: a video from the web form. The upload is fanned out like any other, with every
//! transcoding target told that it must produce a video; the video is listed as `processing` while that
//! runs and becomes `ready` only once the fan-out committed, that is once every DASH file is durable on the
//! ring. A file that is not a video (415) or is corrupt (422) leaves nothing behind.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{Multipart, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::Json;
use common::protocol::{ErrorBody, VideoMode};
use futures_util::TryStreamExt;
use meta::{MetaError, VideoRecord};
use tokio_util::sync::CancellationToken;

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
    let upload_id = crate::fanout::new_upload_id();
    let watch = job.watch_progress(&engine, &upload_id);
    let done = engine
        .run_as(upload_id, req, field.map_err(|e| e.body_text()))
        .await;
    watch.stop().await;
    job.end(&done).await?;
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

    /// Keeps the record's `progress_percent` up to date with what the transcoder of upload `upload_id`
    /// reports, until [`ProgressWatch::stop`], which must come before [`VideoJob::end`]: only this job writes
    /// the record meanwhile, so a late progress write can never turn a finished video back to processing.
    pub fn watch_progress(&self, engine: &Engine, upload_id: &str) -> ProgressWatch {
        let (meta, record) = (self.meta.clone(), self.record.clone());
        let (engine, upload_id) = (engine.clone(), upload_id.to_owned());
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            let mut last = None;
            loop {
                tokio::select! {
                    () = stopped.cancelled() => break,
                    () = tokio::time::sleep(PROGRESS_EVERY) => {}
                }
                // A question still out when the upload ends is dropped (it only reads), so `stop` never
                // waits for a slow target; a record write, once started, is always finished.
                let asked = tokio::select! {
                    () = stopped.cancelled() => break,
                    p = engine.progress_of(&upload_id) => p,
                };
                let Some(percent) = asked else {
                    continue;
                };
                // 100 is for `end` to say, once every file is stored and the upload committed.
                let percent = (percent.floor() as u8).min(99);
                if last == Some(percent) {
                    continue;
                }
                let update = VideoRecord {
                    progress_percent: Some(percent),
                    ..record.clone()
                };
                match meta.put_video(&update).await {
                    Ok(()) => last = Some(percent),
                    Err(e) => {
                        tracing::debug!(video = %record.id, error = %e, "progress not recorded")
                    }
                }
            }
        });
        ProgressWatch { stop, task }
    }

    /// Records how the upload ended: `ready` with its files, `failed` (ours: the id may be uploaded again),
    /// or nothing at all (the client's fault).
    pub async fn end(self, done: &Finished) -> Result<(), (StatusCode, String)> {
        let (meta, record) = (&self.meta, &self.record);
        match (&done.failure, &done.video) {
            (None, Some(video)) => {
                let ready = VideoRecord {
                    status: meta::VideoRecord::READY.to_owned(),
                    duration_ms: Some(video.duration_ms),
                    files: video.files.clone(),
                    digests: video.digests.clone(),
                    ..record.clone()
                };
                if let Err(e) = meta.put_video(&ready).await {
                    // The files are on the ring but the catalogue could not say so: report, keep it retryable.
                    let _ = mark_failed(meta, record, &e.to_string()).await;
                    return Err(unavailable(e));
                }
                Ok(())
            }
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

/// How often a video upload's transcoder is asked how far it is.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// The task of [`VideoJob::watch_progress`].
#[derive(Debug)]
pub struct ProgressWatch {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl ProgressWatch {
    /// Stops the updates and waits until none can be written any more.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
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
