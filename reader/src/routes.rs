//! The reader's HTTP surface.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Multipart, Path, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use common::protocol::{ErrorBody, VideoMode, VIDEO_HEADER};
use futures_util::TryStreamExt;

use crate::disk::DiskStore;
use crate::error::ReaderError;
use crate::s3::S3Sink;
use crate::video::VideoSink;

/// Builds the router.
/// What the handlers share.
#[derive(Debug, Clone)]
pub struct AppState {
    /// Committed files and staged raw uploads.
    pub disk: Arc<DiskStore>,
    /// Present when `READER_SINK=dash`: the stream protocol goes to the transcoder instead.
    pub video: Option<Arc<VideoSink>>,
    /// Present when `READER_SINK=s3`: uploads go to the bucket, `GET /files/{name}` reads from it.
    pub s3: Option<Arc<S3Sink>>,
}

/// Builds the router.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/v1/uploads/{id}/{name}", put(stage))
        .route("/v1/uploads/{id}/commit", post(commit))
        .route("/v1/uploads/{id}", delete(abort))
        .route("/upload", post(seed_upload))
        .route("/files/{name}", get(serve_file).head(serve_file))
        .fallback(not_found)
        // Upload bodies are streamed to disk, never collected, so the whole-body limit is off; multipart
        // part headers are capped instead.
        .layer(DefaultBodyLimit::disable())
        .layer(axum::middleware::from_fn(common::guard::guard_multipart))
        .with_state(state)
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

async fn stage(
    State(state): State<AppState>,
    Path((id, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ReaderError> {
    let started = std::time::Instant::now();
    let mode = VideoMode::parse(headers.get(VIDEO_HEADER).and_then(|v| v.to_str().ok()))
        .ok_or(ReaderError::BadHeader(VIDEO_HEADER))?;
    let report = match (&state.video, &state.s3) {
        (Some(video), _) => {
            video
                .stage(
                    &id,
                    &name,
                    mode,
                    common::guard::idle(body.into_data_stream()),
                )
                .await
        }
        (None, Some(s3)) => {
            let len = headers
                .get(axum::http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
            s3.stage(
                &id,
                &name,
                len,
                common::guard::idle(body.into_data_stream()),
            )
            .await
        }
        (None, None) => {
            state
                .disk
                .stage(&id, &name, common::guard::idle(body.into_data_stream()))
                .await
        }
    };
    match &report {
        Ok(r) => {
            tracing::info!(%id, %name, bytes = r.bytes, ms = started.elapsed().as_millis() as u64, "staged")
        }
        Err(e) => tracing::warn!(%id, %name, error = %e, "staging failed"),
    }
    Ok(Json(report?).into_response())
}

async fn commit(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ReaderError> {
    if let Some(video) = &state.video {
        let v = video.commit(&id)?;
        tracing::info!(%id, video = v.as_ref().map(|v| v.id.as_str()).unwrap_or("-"), "committed");
        return Ok(Json(serde_json::json!({ "video": v })).into_response());
    }
    let c = match &state.s3 {
        Some(s3) => s3.commit(&id).await?,
        None => state.disk.commit(&id).await?,
    };
    tracing::info!(%id, name = %c.name, bytes = c.bytes, "committed");
    Ok(Json(c).into_response())
}

async fn abort(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ReaderError> {
    let had = match (&state.video, &state.s3) {
        (Some(video), _) => video.abort(&id).await?,
        (None, Some(s3)) => s3.abort(&id).await?,
        (None, None) => state.disk.abort(&id)?,
    };
    if had {
        tracing::info!(%id, "aborted");
    }
    Ok(StatusCode::NO_CONTENT.into_response())
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
