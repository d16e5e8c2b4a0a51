//! The reader's HTTP surface.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Multipart, Path, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use common::participant::{self, BodyStream, Participant, Stage};
use common::protocol::{ErrorBody, StagedReport};
use common::spool::{Spool, SpoolFile};
use futures_util::TryStreamExt;

use crate::disk::DiskStore;
use crate::error::ReaderError;
use crate::s3::S3Sink;
use crate::video::VideoSink;

/// What the handlers share.
#[derive(Debug, Clone)]
pub struct AppState {
    /// Committed files and staged raw uploads.
    pub disk: Arc<DiskStore>,
    /// Present when `READER_SINK=dash`: the stream protocol goes to the transcoder instead.
    pub video: Option<Arc<VideoSink>>,
    /// Present when `READER_SINK=s3`: uploads go to the bucket, `GET /files/{name}` reads from it.
    pub s3: Option<Arc<S3Sink>>,
    /// Resumable uploads being appended, whichever the sink.
    pub spool: Arc<Spool>,
}

/// Builds the router.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/upload", post(seed_upload))
        .route("/files/{name}", get(serve_file).head(serve_file))
        .with_state(state.clone())
        .merge(participant::routes(Arc::new(state)))
        .fallback(not_found)
        // Upload bodies are streamed to disk, never collected, so the whole-body limit is off; multipart
        // part headers are capped instead.
        .layer(DefaultBodyLimit::disable())
        .layer(axum::middleware::from_fn(common::guard::guard_multipart))
}

async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(ErrorBody {
            error: "no such route".into(),
        }),
    )
        .into_response()
}

/// The reader's side of the stream protocol: the sink in use stages and commits; resumable uploads are
/// spooled, then staged by the sink when whole (a disk reader publishes the spooled file itself).
impl Participant for AppState {
    type Error = ReaderError;

    async fn stage(&self, stage: Stage, body: BodyStream) -> Result<StagedReport, ReaderError> {
        match (&self.video, &self.s3) {
            (Some(video), _) => video.stage(&stage.id, &stage.name, stage.video, body).await,
            (None, Some(s3)) => s3.stage(&stage.id, &stage.name, stage.len, body).await,
            (None, None) => self.disk.stage(&stage.id, &stage.name, body).await,
        }
    }

    async fn commit(&self, id: &str) -> Result<serde_json::Value, ReaderError> {
        if let Some(video) = &self.video {
            let v = video.commit(id).await?;
            return Ok(serde_json::json!({ "video": v }));
        }
        let c = match &self.s3 {
            Some(s3) => s3.commit(id).await?,
            None => self.disk.commit(id).await?,
        };
        Ok(serde_json::to_value(c).unwrap_or_default())
    }

    async fn abort(&self, id: &str) -> Result<bool, ReaderError> {
        match (&self.video, &self.s3) {
            (Some(video), _) => video.abort(id).await,
            (None, Some(s3)) => s3.abort(id).await,
            (None, None) => self.disk.abort(id),
        }
    }

    fn spool(&self) -> &Spool {
        &self.spool
    }

    fn confirmed(&self, id: &str, name: &str, offset: u64, path: &std::path::Path, keep: Duration) {
        if let (None, Some(s3)) = (&self.video, &self.s3) {
            s3.confirmed(id, name, offset, path, keep);
        }
    }

    fn progress(&self, id: &str) -> Option<common::protocol::ProgressReport> {
        self.video.as_ref()?.progress(id)
    }

    async fn finish(&self, id: &str, file: SpoolFile) -> Result<StagedReport, ReaderError> {
        match (&self.video, &self.s3) {
            (Some(_), _) => return participant::replay(self, id, file).await,
            (None, Some(s3)) => return s3.finish_spooled(id, file).await,
            (None, None) => {}
        }
        self.disk.adopt(id, file)
    }
}

/// The seed's reader contract: multipart field `file`, named by the part's filename, stored at once.
async fn seed_upload(
    State(state): State<AppState>,
    mut form: Multipart,
) -> Result<Response, ReaderError> {
    let store = &state.disk;
    while let Some(field) = form
        .next_field()
        .await
        .map_err(|e| ReaderError::Multipart(e.body_text()))?
    {
        if field.name() != Some("file") {
            continue;
        }
        let name = field.file_name().unwrap_or_default().to_owned();
        let stream = field.map_err(|e| e.body_text());
        let c = match &state.s3 {
            Some(s3) => s3.store(&name, stream).await?,
            None => store.store(&name, stream).await?,
        };
        tracing::info!(name = %c.name, bytes = c.bytes, "stored (seed upload)");
        return Ok(Json(c).into_response());
    }
    Err(ReaderError::NoFileField)
}

async fn serve_file(
    State(state): State<AppState>,
    Path(name): Path<String>,
    method: Method,
    headers: HeaderMap,
) -> Result<Response, ReaderError> {
    common::name::validate_name(&name)?;
    if let Some(s3) = &state.s3 {
        return Ok(s3.serve(&name, &method, &headers).await);
    }
    Ok(common::serve::serve_file(
        &state.disk.file_path(&name),
        &method,
        &headers,
        "application/octet-stream",
    )
    .await)
}
