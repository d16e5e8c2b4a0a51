//! The broadcaster's HTTP surface.

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Multipart, Path, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use common::protocol::ErrorBody;
use futures_util::TryStreamExt;

use crate::error::BroadcastError;
use crate::fanout::{Engine, Failure, UploadRequest};
use crate::summary::Summary;
use common::protocol::VideoMode;

/// Builds the router.
pub fn app(engine: Engine) -> Router {
    let auth = std::sync::Arc::new(crate::auth::Auth::new(
        engine.config(),
        engine.cluster().meta().clone(),
        engine.config().server.tls.is_some(),
    ));
    let signin = Router::new()
        .route(
            "/signin",
            get(crate::auth::signin_form).post(crate::auth::signin),
        )
        .route("/signout", post(crate::auth::signout))
        .with_state(auth.clone());
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(common::metrics::render))
        .route("/broadcast/{name}", put(put_broadcast))
        .route(
            "/broadcast/",
            put(|| async { BroadcastError::BadName(common::name::NameError::Empty) }),
        )
        .route("/broadcast", post(post_broadcast))
        .route("/upload", post(crate::video::post_upload))
        .route("/files/{name}", get(get_file).head(get_file))
        .route(
            "/content/{id}/{file}",
            get(crate::content::get_content).head(crate::content::get_content),
        )
        .merge(crate::admin::routes())
        .merge(crate::resumable::http::routes())
        .merge(crate::web::routes(crate::web::Assets::new(
            engine.config().web_dir.clone(),
        )))
        .fallback(not_found)
        // Upload bodies are streamed, never collected, so the whole-body limit is off.
        .layer(DefaultBodyLimit::disable())
        .with_state(engine)
        .merge(signin)
        .layer(axum::middleware::from_fn(common::guard::guard_multipart))
        .layer(axum::Extension(auth.clone()))
        .layer(axum::middleware::from_fn_with_state(
            auth,
            crate::auth::authenticate,
        ))
        .layer(axum::middleware::map_response(crate::web::security_headers))
}

/// `GET /healthz`: 200 `ok`, or 503 while every upload slot is taken (a load balancer should send new
/// uploads elsewhere).
async fn healthz(State(engine): State<Engine>) -> Response {
    let (active, max) = engine.load();
    if active >= max {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("saturated: {active} of {max} upload slots in use\n"),
        )
            .into_response();
    }
    "ok".into_response()
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

fn declared_len(headers: &HeaderMap) -> Result<Option<u64>, BroadcastError> {
    headers
        .get(header::CONTENT_LENGTH)
        .map(|v| {
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or(BroadcastError::BadContentLength)
        })
        .transpose()
}

fn check_ready(engine: &Engine) -> Result<(), BroadcastError> {
    if engine.config().targets.is_empty() {
        return Err(BroadcastError::NoTargets);
    }
    Ok(())
}

/// `PUT /broadcast/{name}`: the raw body (`curl -T`), sized or chunked.
async fn put_broadcast(
    State(engine): State<Engine>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, BroadcastError> {
    let name = common::name::normalize_name(&name)?;
    check_ready(&engine)?;
    let expected_sha256 = common::digest::expected_sha256(&headers)?;
    let declared_len = declared_len(&headers)?;
    if let (Some(max), Some(len)) = (engine.config().max_upload_bytes, declared_len) {
        if len > max {
            return Err(BroadcastError::TooLarge { len, max });
        }
    }
    let req = UploadRequest {
        name,
        expected_sha256,
        declared_len,
        video: VideoMode::Skip,
    };
    // The fan-out runs in its own task so that a client hanging up cannot cancel it halfway: it sees the
    // body fail and aborts every target cleanly.
    let slot = engine.admit()?;
    let task = tokio::spawn(async move {
        let _slot = slot;
        engine.run(req, body.into_data_stream()).await
    });
    let done = task
        .await
        .map_err(|e| BroadcastError::Internal(e.to_string()))?;
    Ok(respond(StatusCode::CREATED, done.summary, done.failure))
}

/// `POST /broadcast`: multipart field `file`, named by the part's filename (the seed's client contract).
/// `X-Content-SHA256` names the file's digest; `Content-Digest` would describe the multipart body, not the file.
async fn post_broadcast(
    State(engine): State<Engine>,
    principal: Option<axum::Extension<crate::auth::Principal>>,
    headers: HeaderMap,
    form: Multipart,
) -> Result<Response, BroadcastError> {
    check_ready(&engine)?;
    let mut only_hex = HeaderMap::new();
    if let Some(v) = headers.get("x-content-sha256") {
        only_hex.insert("x-content-sha256", v.clone());
    }
    let expected_sha256 = common::digest::expected_sha256(&only_hex)?;
    let slot = engine.admit()?;
    let task = tokio::spawn(async move {
        let _slot = slot;
        let mut form = form;
        while let Some(field) = form
            .next_field()
            .await
            .map_err(|e| BroadcastError::Multipart(e.body_text()))?
        {
            if field.name() != Some("file") {
                continue;
            }
            let name = field.file_name().ok_or(BroadcastError::NoFileField)?;
            let name = common::name::normalize_name(name)?;
            if let Some(axum::Extension(p)) = &principal {
                if let Err(denied) = p.check(crate::auth::Scope::Upload, Some(&name)) {
                    return Ok(Err(denied.into_response()));
                }
            }
            let req = UploadRequest {
                name,
                expected_sha256,
                declared_len: None,
                video: VideoMode::Skip,
            };
            return Ok(Ok(engine.run(req, field.map_err(|e| e.body_text())).await));
        }
        Err(BroadcastError::NoFileField)
    });
    let done = match task
        .await
        .map_err(|e| BroadcastError::Internal(e.to_string()))??
    {
        Ok(done) => done,
        Err(refused) => return Ok(refused),
    };
    Ok(respond(StatusCode::OK, done.summary, done.failure))
}

/// The status an upload answers with.
pub fn status_of(ok: StatusCode, failure: &Option<Failure>) -> StatusCode {
    match failure {
        None => ok,
        Some(Failure::Quorum) => StatusCode::BAD_GATEWAY,
        Some(Failure::DigestMismatch) => StatusCode::UNPROCESSABLE_ENTITY,
        Some(Failure::TooLarge) => StatusCode::PAYLOAD_TOO_LARGE,
        // Nobody is listening any more; the status only shows in logs.
        Some(Failure::ClientGone) => StatusCode::BAD_REQUEST,
        Some(Failure::Rejected(code)) => {
            StatusCode::from_u16(*code).unwrap_or(StatusCode::UNPROCESSABLE_ENTITY)
        }
        Some(Failure::NoTranscoder) | Some(Failure::Unavailable) => StatusCode::SERVICE_UNAVAILABLE,
    }
}

fn respond(ok: StatusCode, summary: Summary, failure: Option<Failure>) -> Response {
    (status_of(ok, &failure), Json(summary)).into_response()
}

/// `GET /files/{name}`: a raw upload stored on the ring, streamed back from live replicas.
async fn get_file(
    State(engine): State<Engine>,
    Path(name): Path<String>,
    method: Method,
    headers: HeaderMap,
) -> Result<Response, BroadcastError> {
    common::name::validate_name(&name)?;
    let cluster = engine.cluster().clone();
    let record = cluster
        .meta()
        .get_file(&name)
        .await
        .map_err(crate::ring::RingError::from)?;
    let Some(record) = record else {
        return Ok(not_found().await);
    };
    let etag = format!("\"{}\"", record.sha256);
    let forbid_rendering = (
        header::CONTENT_SECURITY_POLICY,
        axum::http::HeaderValue::from_static("default-src 'none'; sandbox"),
    );
    let (status, out, start, count) =
        match common::serve::prepare(&headers, &etag, record.size, "application/octet-stream") {
            common::serve::Prepared::Done(resp) => return Ok(*resp),
            common::serve::Prepared::Send {
                status,
                headers,
                start,
                count,
            } => (status, headers, start, count),
        };
    let mut out = out;
    // Whatever the bytes are, a browser never runs them as a page of this origin.
    out.insert(forbid_rendering.0, forbid_rendering.1);
    if method == Method::HEAD || count == 0 {
        return Ok((status, out).into_response());
    }
    // The first chunk is fetched and verified before the status goes out: a file whose chunks are gone
    // answers an error, not a 200 that breaks off.
    let stream = cluster
        .open_file(record, start, start + count - 1)
        .await?
        .map_err(|e| std::io::Error::other(e.to_string()));
    Ok((status, out, Body::from_stream(stream)).into_response())
}
