//! The reader's HTTP surface.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Multipart, Path, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use common::protocol::ErrorBody;
use futures_util::TryStreamExt;

use crate::config::Config;
use crate::disk::DiskStore;
use crate::error::ReaderError;

/// Builds the router.
pub fn app(store: Arc<DiskStore>, _config: &Config) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/v1/uploads/{id}/{name}", put(stage))
        .route("/v1/uploads/{id}/commit", post(commit))
        .route("/v1/uploads/{id}", delete(abort))
        .route("/upload", post(seed_upload))
        .route("/files/{name}", get(serve_file).head(serve_file))
        .fallback(not_found)
        // Upload bodies are streamed to disk, never collected, so the whole-body limit is off.
        .layer(DefaultBodyLimit::disable())
        .with_state(store)
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
    State(store): State<Arc<DiskStore>>,
    Path((id, name)): Path<(String, String)>,
    body: Body,
) -> Result<Response, ReaderError> {
    let started = std::time::Instant::now();
    let report = store.stage(&id, &name, body.into_data_stream()).await;
    match &report {
        Ok(r) => {
            tracing::info!(%id, %name, bytes = r.bytes, ms = started.elapsed().as_millis() as u64, "staged")
        }
        Err(e) => tracing::warn!(%id, %name, error = %e, "staging failed"),
    }
    Ok(Json(report?).into_response())
}

async fn commit(
    State(store): State<Arc<DiskStore>>,
    Path(id): Path<String>,
) -> Result<Response, ReaderError> {
    let c = store.commit(&id).await?;
    tracing::info!(%id, name = %c.name, bytes = c.bytes, "committed");
    Ok(Json(c).into_response())
}

async fn abort(
    State(store): State<Arc<DiskStore>>,
    Path(id): Path<String>,
) -> Result<Response, ReaderError> {
    if store.abort(&id)? {
        tracing::info!(%id, "aborted");
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The seed's reader contract: multipart field `file`, named by the part's filename, stored at once.
async fn seed_upload(
    State(store): State<Arc<DiskStore>>,
    mut form: Multipart,
) -> Result<Response, ReaderError> {
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
        let c = store.store(&name, stream).await?;
        tracing::info!(name = %c.name, bytes = c.bytes, "stored (seed upload)");
        return Ok(Json(c).into_response());
    }
    Err(ReaderError::NoFileField)
}

async fn serve_file(
    State(store): State<Arc<DiskStore>>,
    Path(name): Path<String>,
    method: Method,
    headers: HeaderMap,
) -> Result<Response, ReaderError> {
    common::name::validate_name(&name)?;
    Ok(common::serve::serve_file(
        &store.file_path(&name),
        &method,
        &headers,
        "application/octet-stream",
    )
    .await)
}
