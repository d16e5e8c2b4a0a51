//! The storage node's HTTP surface: blobs (`/v1/blobs`), the broadcaster's stream protocol (`/v1/uploads`),
//! and `/healthz`.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use common::blob_digest::BlobDigest;
use common::participant::{self, BodyStream, Participant, Stage};
use common::protocol::{ErrorBody, StagedReport};
use common::spool::Spool;
use serde::{Deserialize, Serialize};

use crate::error::StoreError;
use crate::identity::Identity;
use crate::serve::blob_response;
use crate::store::{BlobInfo, BlobKey, BlobStore};

/// Header of a conditional `DELETE`: remove the blob only if it was last written at least this many
/// seconds ago (by this node's clock).
pub const MIN_AGE_HEADER: &str = "x-if-older-than-secs";

/// The storage node's side of the stream protocol: uploads staged as blob `raw/{name}`.
#[derive(Debug)]
pub struct StreamTarget {
    /// Where staged uploads are published.
    pub store: Arc<BlobStore>,
    /// Resumable uploads being appended.
    pub spool: Spool,
}

impl Participant for StreamTarget {
    type Error = StoreError;

    async fn stage(&self, stage: Stage, body: BodyStream) -> Result<StagedReport, StoreError> {
        self.store
            .stage(&stage.id, &stage.name, body, stage.expected_sha256)
            .await
    }

    async fn commit(&self, id: &str) -> Result<serde_json::Value, StoreError> {
        let info = self.store.commit(id).await?;
        Ok(serde_json::to_value(info).unwrap_or_default())
    }

    async fn abort(&self, id: &str) -> Result<bool, StoreError> {
        self.store.abort(id)
    }

    fn spool(&self) -> &Spool {
        &self.spool
    }
}

/// Builds the router.
pub fn app(store: Arc<BlobStore>, identity: Arc<Identity>, spool: Spool) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/v1/identity",
            get(move |q: Query<IdentityQuery>| identify(identity.clone(), q)),
        )
        .route("/v1/blobs", get(list))
        // A catch-all rather than `{id}/{file}` so that malformed keys (an empty or a third segment) get a
        // 400 that says what is wrong instead of a bare 404.
        .route(
            "/v1/blobs/{*key}",
            put(put_blob)
                .get(get_blob)
                .head(get_blob)
                .delete(delete_blob),
        )
        .with_state(store.clone())
        .merge(participant::routes(Arc::new(StreamTarget { store, spool })))
        .fallback(not_found)
        // Bodies are streamed to disk, never collected, so the whole-body limit is off
        // (STORAGE_NODE_MAX_BLOB_BYTES bounds them instead).
        .layer(DefaultBodyLimit::disable())
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

async fn put_blob(
    State(store): State<Arc<BlobStore>>,
    Path(key): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, StoreError> {
    let key = BlobKey::parse(&key)?;
    let expected = expected_digest(&headers)?;
    let info = store
        .put(&key, common::guard::idle(body.into_data_stream()), expected)
        .await;
    count("distributary_blob_puts_total", info.is_ok());
    match &info {
        Ok(i) => tracing::debug!(key = %i.key, bytes = i.bytes, "stored"),
        Err(e) => tracing::warn!(%key, error = %e, "store failed"),
    }
    Ok((StatusCode::CREATED, Json(info?)).into_response())
}

/// The digest a writer announced: a windowed one (`x-content-sha256: w1:…`, what the ring writes) or a
/// plain SHA-256 in either header that the stream protocol accepts.
fn expected_digest(headers: &HeaderMap) -> Result<Option<BlobDigest>, StoreError> {
    let windowed = headers
        .get("x-content-sha256")
        .and_then(|v| v.to_str().ok())
        .filter(|v| v.trim_start().starts_with("w"));
    if let Some(text) = windowed {
        if headers.contains_key("content-digest") {
            return Err(common::digest::DigestHeaderError::Conflict.into());
        }
        return Ok(Some(BlobDigest::parse(text)?));
    }
    Ok(common::digest::expected_sha256(headers)?.map(BlobDigest::Sha256))
}

/// Counts a blob operation by result; a sync helper keeps the metrics temporaries out of async state.
fn count(name: &'static str, ok: bool) {
    let result = if ok { "ok" } else { "error" };
    metrics::counter!(name, "result" => result).increment(1);
}

#[derive(Debug, Deserialize)]
struct GetQuery {
    /// `?windows=1`: the blob's window table instead of its payload.
    #[serde(default)]
    windows: Option<String>,
}

async fn get_blob(
    State(store): State<Arc<BlobStore>>,
    Path(key): Path<String>,
    Query(query): Query<GetQuery>,
    method: Method,
    headers: HeaderMap,
) -> Result<Response, StoreError> {
    let key = BlobKey::parse(&key)?;
    if query.windows.is_some() {
        let (header, table) = store.window_table(&key).await?;
        return Ok(crate::serve::table_response(&header, table));
    }
    // A HEAD sends no payload, so it never hashes one (issue 11): only the header is checked.
    let blob = if method == Method::HEAD {
        store.open_header(&key).await
    } else {
        store.open_verified(&key).await
    };
    if let Err(StoreError::Corrupt { .. }) = &blob {
        metrics::counter!("distributary_blob_corrupt_total").increment(1);
    }
    count("distributary_blob_gets_total", blob.is_ok());
    blob_response(blob?, &method, &headers).await
}

#[derive(Debug, Deserialize)]
struct IdentityQuery {
    nonce: Option<String>,
}

/// `GET /v1/identity?nonce=...`: the node's id and its proof for the caller's nonce.
async fn identify(identity: Arc<Identity>, Query(q): Query<IdentityQuery>) -> Response {
    let nonce = q.nonce.unwrap_or_default();
    if !common::cluster::valid_token(&nonce) {
        return (
            StatusCode::BAD_REQUEST,
            Json(ErrorBody {
                error: format!(
                    "nonce must be 1 to {} letters, digits or '-'",
                    common::cluster::MAX_NONCE_LEN
                ),
            }),
        )
            .into_response();
    }
    Json(identity.prove(&nonce)).into_response()
}

async fn delete_blob(
    State(store): State<Arc<BlobStore>>,
    Path(key): Path<String>,
    headers: HeaderMap,
) -> Result<Response, StoreError> {
    let key = BlobKey::parse(&key)?;
    let min_age = match headers.get(MIN_AGE_HEADER) {
        None => None,
        Some(v) => Some(std::time::Duration::from_secs(
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or_else(|| {
                    StoreError::BadKey(format!("{MIN_AGE_HEADER} must be a number of seconds"))
                })?,
        )),
    };
    store.delete_if_older(&key, min_age).await?;
    tracing::debug!(%key, "deleted");
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    prefix: Option<String>,
    /// `1`: hash every payload before listing it (a scrub); damaged blobs are left out.
    verify: Option<u8>,
}

/// `GET /v1/blobs` answer.
#[derive(Debug, Serialize, Deserialize)]
pub struct Listing {
    /// Blobs sorted by key.
    pub blobs: Vec<BlobInfo>,
}

async fn list(
    State(store): State<Arc<BlobStore>>,
    Query(q): Query<ListQuery>,
) -> Result<Response, StoreError> {
    let blobs = store
        .list_checked(q.prefix.as_deref().unwrap_or(""), q.verify == Some(1))
        .await?;
    Ok(Json(Listing { blobs }).into_response())
}
