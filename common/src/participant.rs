//! The participant side of the stream protocol, written once: every target (disk, S3 and dash readers, the
//! storage node) implements [`Participant`] and serves [`routes`].
//!
//! | request | meaning |
//! |---|---|
//! | `PUT /v1/uploads/{id}/{name}` | one-shot stage of the whole body → [`StagedReport`] |
//! | `PATCH /v1/uploads/{id}/{name}?offset=N` | resumable append at `N` → [`Held`] (409 + [`Held`] on a wrong offset) |
//! | `GET /v1/uploads/{id}` | bytes of a resumable upload durably staged → [`Held`] |
//! | `GET /v1/uploads/{id}/progress` | how far a stage that takes a while is → [`ProgressReport`] (404: nothing to report) |
//! | `POST /v1/uploads/{id}/finish` | a resumable upload is whole: stage it → [`StagedReport`] |
//! | `POST /v1/uploads/{id}/commit` | publish the staged upload |
//! | `DELETE /v1/uploads/{id}` | discard it, whichever phase it is in |

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use bytes::Bytes;
use futures_util::Stream;
use serde::{Deserialize, Serialize};

use crate::digest::Sha256Digest;
use crate::protocol::{
    is_valid_upload_id, ErrorBody, ProgressReport, StagedReport, VideoMode, VIDEO_HEADER,
};
use crate::spool::{Spool, SpoolError, SpoolFile, SpoolRequest};

/// Header of an append: how long the target keeps the resumable staging untouched (seconds).
pub const KEEP_HEADER: &str = "x-distributary-keep-secs";

/// A request body as participants take it.
pub type BodyStream = Pin<Box<dyn Stream<Item = Result<Bytes, String>> + Send>>;

/// What a stage is for.
#[derive(Debug, Clone)]
pub struct Stage {
    /// Upload id, validated.
    pub id: String,
    /// Name, validated.
    pub name: String,
    /// What a transcoding target must make of it.
    pub video: VideoMode,
    /// Announced body length, if any.
    pub len: Option<u64>,
    /// SHA-256 the sender announced, if any.
    pub expected_sha256: Option<Sha256Digest>,
}

/// Bytes of a resumable upload a participant holds durably.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Held {
    /// Bytes durably staged.
    pub bytes: u64,
}

/// Why a protocol request was refused before it reached the participant.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("bad upload id: expected 32 lowercase hex digits")]
    BadUploadId,
    #[error("bad name: {0}")]
    BadName(#[from] crate::name::NameError),
    #[error("bad {0} header")]
    BadHeader(&'static str),
    #[error("bad digest header: {0}")]
    BadDigest(#[from] crate::digest::DigestHeaderError),
    #[error(transparent)]
    Spool(#[from] SpoolError),
}

impl IntoResponse for ProtocolError {
    fn into_response(self) -> Response {
        let status = match &self {
            Self::Spool(e) => StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_REQUEST),
            _ => StatusCode::BAD_REQUEST,
        };
        let error = match &self {
            Self::Spool(SpoolError::Io(e)) => {
                tracing::error!(error = %e, "resumable staging failed");
                "storage error".to_owned()
            }
            other => other.to_string(),
        };
        if let Self::Spool(SpoolError::Offset { held, .. }) = &self {
            return (
                status,
                Json(serde_json::json!({ "error": error, "bytes": held })),
            )
                .into_response();
        }
        (status, Json(ErrorBody { error })).into_response()
    }
}

/// A target of the stream protocol.
pub trait Participant: Send + Sync + 'static {
    /// The participant's errors, as HTTP answers.
    type Error: IntoResponse + From<ProtocolError> + std::fmt::Display + Send;

    /// Stages a whole body (phase 1) and reports what was staged.
    fn stage(
        &self,
        stage: Stage,
        body: BodyStream,
    ) -> impl Future<Output = Result<StagedReport, Self::Error>> + Send;

    /// Publishes a staged upload (phase 2); answers what the participant wants to tell.
    fn commit(
        &self,
        id: &str,
    ) -> impl Future<Output = Result<serde_json::Value, Self::Error>> + Send;

    /// Discards a staged upload; answers whether there was one.
    fn abort(&self, id: &str) -> impl Future<Output = Result<bool, Self::Error>> + Send;

    /// Where resumable uploads are appended.
    fn spool(&self) -> &Spool;

    /// The broadcaster starts an append to resumable upload `id` at `offset`: the spooled bytes below it
    /// (at `path`) are final and will never be cut back. A participant that can send them on early (S3 parts)
    /// starts doing so here, without holding up the append.
    fn confirmed(&self, id: &str, name: &str, offset: u64, path: &std::path::Path, keep: Duration) {
        let _ = (id, name, offset, path, keep);
    }

    /// How far the stage of upload `id` is, for a participant whose stage takes a while (the dash reader's
    /// transcode); `None`: nothing to report.
    fn progress(&self, id: &str) -> Option<ProgressReport> {
        let _ = id;
        None
    }

    /// Largest chunk read from the spool when a finished upload is staged.
    fn read_buffer(&self) -> usize {
        1 << 20
    }

    /// A resumable upload is whole: stage it as [`Participant::stage`] would have staged it in one piece.
    /// The default replays the spooled file ([`replay`]); a participant that can take the file as it is
    /// overrides this.
    fn finish(
        &self,
        id: &str,
        file: SpoolFile,
    ) -> impl Future<Output = Result<StagedReport, Self::Error>> + Send {
        replay(self, id, file)
    }
}

/// Stages a finished spool through [`Participant::stage`], reading the file back.
pub async fn replay<P: Participant + ?Sized>(
    p: &P,
    id: &str,
    file: SpoolFile,
) -> Result<StagedReport, P::Error> {
    let stage = Stage {
        id: id.to_owned(),
        name: file.name.clone(),
        video: file.video,
        len: Some(file.len),
        expected_sha256: Some(file.sha256),
    };
    let (sha256, xxh3) = (hex::encode(file.sha256), file.xxh3);
    let body = file
        .stream(p.read_buffer())
        .await
        .map_err(|e| ProtocolError::Spool(e.into()))?;
    let mut report = p.stage(stage, Box::pin(body)).await?;
    spooled_report(&mut report, sha256, xxh3)?;
    Ok(report)
}

/// Checks what a participant staged from its spool against the spool's own digests (the bytes read back are
/// the bytes that arrived), and carries the spool's SHA-256, which the broadcaster checks against the SHA-256
/// of the whole upload it kept across requests.
pub fn spooled_report(
    report: &mut StagedReport,
    sha256: String,
    xxh3: u128,
) -> Result<(), ProtocolError> {
    let xxh3 = crate::protocol::xxh3_hex(xxh3);
    if report.xxh3.as_deref().is_some_and(|x| x != xxh3)
        || report.sha256.as_deref().is_some_and(|s| s != sha256)
    {
        return Err(ProtocolError::Spool(SpoolError::Io(std::io::Error::other(
            "the spooled upload read back differs from what arrived",
        ))));
    }
    report.sha256 = Some(sha256);
    report.xxh3 = Some(xxh3);
    Ok(())
}

/// The stream protocol's routes for participant `p`.
pub fn routes<P: Participant>(p: Arc<P>) -> Router {
    Router::new()
        .route(
            "/v1/uploads/{id}/{name}",
            put(stage::<P>).patch(append::<P>),
        )
        .route("/v1/uploads/{id}/commit", post(commit::<P>))
        .route("/v1/uploads/{id}/finish", post(finish::<P>))
        .route("/v1/uploads/{id}/progress", get(progress::<P>))
        .route("/v1/uploads/{id}", get(held::<P>).delete(abort::<P>))
        .with_state(p)
}

fn check(id: &str, name: Option<&str>) -> Result<(), ProtocolError> {
    if !is_valid_upload_id(id) {
        return Err(ProtocolError::BadUploadId);
    }
    if let Some(name) = name {
        crate::name::validate_name(name)?;
    }
    Ok(())
}

fn video_mode(headers: &HeaderMap) -> Result<VideoMode, ProtocolError> {
    VideoMode::parse(headers.get(VIDEO_HEADER).and_then(|v| v.to_str().ok()))
        .ok_or(ProtocolError::BadHeader(VIDEO_HEADER))
}

fn body_stream(body: Body) -> BodyStream {
    use futures_util::TryStreamExt;
    Box::pin(crate::guard::idle(body.into_data_stream()).map_err(|e| e.to_string()))
}

async fn stage<P: Participant>(
    State(p): State<Arc<P>>,
    Path((id, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, P::Error> {
    check(&id, Some(&name))?;
    let started = std::time::Instant::now();
    let stage = Stage {
        video: video_mode(&headers)?,
        len: headers
            .get(axum::http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok()),
        expected_sha256: crate::digest::expected_sha256(&headers).map_err(ProtocolError::from)?,
        id: id.clone(),
        name: name.clone(),
    };
    let report = p.stage(stage, body_stream(body)).await;
    match &report {
        Ok(r) => {
            tracing::info!(%id, %name, bytes = r.bytes, ms = started.elapsed().as_millis() as u64, "staged")
        }
        Err(e) => tracing::warn!(%id, %name, error = %e, "staging failed"),
    }
    Ok(Json(report?).into_response())
}

#[derive(Debug, Deserialize)]
struct AppendQuery {
    offset: u64,
}

async fn append<P: Participant>(
    State(p): State<Arc<P>>,
    Path((id, name)): Path<(String, String)>,
    Query(q): Query<AppendQuery>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, P::Error> {
    check(&id, Some(&name))?;
    let keep = match headers.get(KEEP_HEADER) {
        None => Duration::from_secs(24 * 3600),
        Some(v) => Duration::from_secs(
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .ok_or(ProtocolError::BadHeader(KEEP_HEADER))?,
        ),
    };
    if let Some(held) = p.spool().held(&id) {
        p.confirmed(&id, &name, q.offset.min(held), &p.spool().path(&id), keep);
    }
    let req = SpoolRequest {
        video: video_mode(&headers)?,
        offset: q.offset,
        keep,
        id: id.clone(),
        name,
    };
    let held = p
        .spool()
        .append(req, body_stream(body))
        .await
        .map_err(ProtocolError::from)?;
    tracing::debug!(%id, held, "appended");
    Ok(Json(Held { bytes: held }).into_response())
}

async fn held<P: Participant>(
    State(p): State<Arc<P>>,
    Path(id): Path<String>,
) -> Result<Response, P::Error> {
    check(&id, None)?;
    let bytes = p
        .spool()
        .held(&id)
        .ok_or_else(|| ProtocolError::Spool(SpoolError::Unknown(id.clone())))?;
    Ok(Json(Held { bytes }).into_response())
}

async fn progress<P: Participant>(
    State(p): State<Arc<P>>,
    Path(id): Path<String>,
) -> Result<Response, P::Error> {
    check(&id, None)?;
    Ok(match p.progress(&id) {
        Some(report) => Json(report).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(ErrorBody {
                error: "no stage of this upload is in progress here".into(),
            }),
        )
            .into_response(),
    })
}

async fn finish<P: Participant>(
    State(p): State<Arc<P>>,
    Path(id): Path<String>,
) -> Result<Response, P::Error> {
    check(&id, None)?;
    let started = std::time::Instant::now();
    let file = p.spool().take(&id).await.map_err(ProtocolError::from)?;
    let report = p.finish(&id, file).await;
    match &report {
        Ok(r) => {
            tracing::info!(%id, bytes = r.bytes, ms = started.elapsed().as_millis() as u64, "resumable upload staged")
        }
        Err(e) => tracing::warn!(%id, error = %e, "finishing a resumable upload failed"),
    }
    Ok(Json(report?).into_response())
}

async fn commit<P: Participant>(
    State(p): State<Arc<P>>,
    Path(id): Path<String>,
) -> Result<Response, P::Error> {
    check(&id, None)?;
    let answer = p.commit(&id).await?;
    tracing::info!(%id, "committed");
    Ok(Json(answer).into_response())
}

async fn abort<P: Participant>(
    State(p): State<Arc<P>>,
    Path(id): Path<String>,
) -> Result<Response, P::Error> {
    check(&id, None)?;
    let spooled = p.spool().remove(&id);
    let staged = p.abort(&id).await?;
    if spooled || staged {
        tracing::info!(%id, "aborted");
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}
