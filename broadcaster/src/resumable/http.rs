//! `/uploads`: tus 1.0.0 and the IETF resumable-upload draft (interop version 6) on one endpoint, the way
//! tusd serves both. Which one a request speaks shows in its headers (`Tus-Resumable` or
//! `Upload-Draft-Interop-Version`); answers carry that protocol's headers.

use std::time::{Duration, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Extension, Json, Router};
use base64::Engine as _;
use meta::ResumableUpload;
use serde::{Deserialize, Serialize};

use super::{AppendRequest, Appended, Creation, ResumableError};
use crate::auth::Principal;
use crate::fanout::Engine;

const TUS_VERSION: &str = "1.0.0";
const TUS_EXTENSIONS: &str =
    "creation,creation-with-upload,creation-defer-length,termination,checksum,expiration";
/// The IETF draft's interop version this server speaks (draft-ietf-httpbis-resumable-upload-05, as
/// tus-js-client 4 sends it).
const DRAFT_VERSION: &str = "6";
const OFFSET_OCTET_STREAM: &str = "application/offset+octet-stream";
/// tus checksum extension: "checksum mismatch".
const CHECKSUM_MISMATCH: u16 = 460;

fn h(name: &'static str) -> HeaderName {
    HeaderName::from_static(name)
}

/// The routes.
pub fn routes() -> Router<Engine> {
    Router::new()
        .route("/uploads", post(create).options(options))
        .route(
            "/uploads/{id}",
            axum::routing::head(head)
                .get(get_status)
                .patch(patch)
                .delete(terminate)
                .options(options),
        )
}

/// Which protocol a request speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Tus,
    Draft,
}

/// The protocol a request speaks, as an extractor: a request that speaks neither (or an unsupported
/// version) is answered before the handler runs.
impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Protocol {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Response> {
        protocol(&parts.headers).map_err(|a| a.into_response())
    }
}

/// An answer: status, protocol headers, and a JSON error or summary body.
struct Answer {
    protocol: Protocol,
    status: StatusCode,
    headers: Vec<(HeaderName, String)>,
    body: Option<serde_json::Value>,
}

impl Answer {
    fn new(protocol: Protocol, status: StatusCode) -> Self {
        Self {
            protocol,
            status,
            headers: Vec::new(),
            body: None,
        }
    }

    fn header(mut self, name: &'static str, value: impl ToString) -> Self {
        self.headers.push((h(name), value.to_string()));
        self
    }

    fn error(protocol: Protocol, e: ResumableError) -> Self {
        let (status, message, offset) = match e {
            ResumableError::Bad(m) => (StatusCode::BAD_REQUEST, m, None),
            ResumableError::NotOwner => (
                StatusCode::FORBIDDEN,
                "this upload belongs to another token".into(),
                None,
            ),
            ResumableError::NotFound => (StatusCode::NOT_FOUND, "no such upload".into(), None),
            ResumableError::Offset { expected } => (
                StatusCode::CONFLICT,
                format!("Upload-Offset does not match: the upload is at {expected}"),
                Some(expected),
            ),
            ResumableError::Completed { offset } => (
                StatusCode::CONFLICT,
                "the upload is already complete".into(),
                Some(offset),
            ),
            ResumableError::Gone(m) => (StatusCode::GONE, m, None),
            ResumableError::TooLarge(max) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the upload exceeds the limit of {max} bytes"),
                None,
            ),
            ResumableError::Checksum => (
                StatusCode::from_u16(CHECKSUM_MISMATCH).unwrap_or(StatusCode::BAD_REQUEST),
                "Upload-Checksum does not match the bytes received; none of them were kept".into(),
                None,
            ),
            ResumableError::Failed { status, message } => (
                StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY),
                message,
                None,
            ),
            ResumableError::Unavailable(m) => (StatusCode::SERVICE_UNAVAILABLE, m, None),
        };
        let mut a = Self::new(protocol, status);
        if let Some(o) = offset {
            a = a.header("upload-offset", o);
        }
        a.body = Some(serde_json::json!({ "error": message }));
        a
    }
}

impl IntoResponse for Answer {
    fn into_response(self) -> Response {
        let mut resp = match self.body {
            Some(b) => (self.status, Json(b)).into_response(),
            None => self.status.into_response(),
        };
        let hs = resp.headers_mut();
        match self.protocol {
            Protocol::Tus => {
                hs.insert(h("tus-resumable"), HeaderValue::from_static(TUS_VERSION));
            }
            Protocol::Draft => {
                hs.insert(
                    h("upload-draft-interop-version"),
                    HeaderValue::from_static(DRAFT_VERSION),
                );
            }
        }
        // Offsets change under the client's feet: no cache may keep one.
        hs.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        for (name, value) in self.headers {
            if let Ok(v) = HeaderValue::from_str(&value) {
                hs.insert(name, v);
            }
        }
        resp
    }
}

fn text<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

/// The protocol a request speaks; an unsupported version of either is refused.
fn protocol(headers: &HeaderMap) -> Result<Protocol, Box<Answer>> {
    if let Some(v) = text(headers, "upload-draft-interop-version") {
        if v == DRAFT_VERSION {
            return Ok(Protocol::Draft);
        }
        let mut a = Answer::error(
            Protocol::Draft,
            ResumableError::Bad(format!(
                "Upload-Draft-Interop-Version {v} is not supported; this server speaks {DRAFT_VERSION}"
            )),
        );
        a.status = StatusCode::BAD_REQUEST;
        return Err(Box::new(a));
    }
    match text(headers, "tus-resumable") {
        Some(TUS_VERSION) => Ok(Protocol::Tus),
        other => {
            let mut a = Answer::error(
                Protocol::Tus,
                ResumableError::Bad(match other {
                    Some(v) => format!(
                        "Tus-Resumable {v} is not supported; this server speaks {TUS_VERSION}"
                    ),
                    None => {
                        "Tus-Resumable: 1.0.0 or Upload-Draft-Interop-Version: 6 is required".into()
                    }
                }),
            );
            a.status = StatusCode::PRECONDITION_FAILED;
            Err(Box::new(a.header("tus-version", TUS_VERSION)))
        }
    }
}

/// A non-negative integer header; `None` when absent.
fn number(headers: &HeaderMap, name: &'static str) -> Result<Option<u64>, ResumableError> {
    match text(headers, name) {
        None => Ok(None),
        Some(v) if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) => v
            .parse()
            .map(Some)
            .map_err(|_| ResumableError::Bad(format!("{name} is out of range"))),
        Some(_) => Err(ResumableError::Bad(format!(
            "{name} must be a non-negative integer"
        ))),
    }
}

/// A structured-field boolean (`?1` / `?0`).
fn boolean(headers: &HeaderMap, name: &'static str) -> Result<Option<bool>, ResumableError> {
    match text(headers, name) {
        None => Ok(None),
        Some("?1") => Ok(Some(true)),
        Some("?0") => Ok(Some(false)),
        Some(_) => Err(ResumableError::Bad(format!("{name} must be ?1 or ?0"))),
    }
}

/// `Upload-Metadata`: comma-separated `key base64value` pairs (the value may be absent).
fn metadata(headers: &HeaderMap) -> Result<Vec<(String, Vec<u8>)>, ResumableError> {
    let Some(raw) = text(headers, "upload-metadata") else {
        return Ok(Vec::new());
    };
    let bad = |m: &str| ResumableError::Bad(format!("Upload-Metadata: {m}"));
    let mut out: Vec<(String, Vec<u8>)> = Vec::new();
    for pair in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let mut it = pair.split(' ').filter(|s| !s.is_empty());
        let key = it.next().ok_or_else(|| bad("empty key"))?;
        if !key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(bad("keys must be printable ASCII"));
        }
        let value = match it.next() {
            None => Vec::new(),
            Some(v) => base64::engine::general_purpose::STANDARD
                .decode(v)
                .map_err(|_| bad(&format!("the value of `{key}` is not base64")))?,
        };
        if it.next().is_some() {
            return Err(bad(&format!("`{key}` has more than one value")));
        }
        if out.iter().any(|(k, _)| k == key) {
            return Err(bad(&format!("`{key}` is given twice")));
        }
        out.push((key.to_owned(), value));
    }
    Ok(out)
}

/// `Upload-Checksum: sha256 <base64>` (the only algorithm offered).
fn checksum(headers: &HeaderMap) -> Result<Option<[u8; 32]>, ResumableError> {
    let Some(raw) = text(headers, "upload-checksum") else {
        return Ok(None);
    };
    let (algo, value) = raw
        .split_once(' ')
        .ok_or_else(|| ResumableError::Bad("Upload-Checksum must be `sha256 <base64>`".into()))?;
    if !algo.eq_ignore_ascii_case("sha256") {
        return Err(ResumableError::Bad(format!(
            "Upload-Checksum algorithm `{algo}` is not supported; use sha256"
        )));
    }
    base64::engine::general_purpose::STANDARD
        .decode(value.trim())
        .ok()
        .and_then(|v| <[u8; 32]>::try_from(v).ok())
        .map(Some)
        .ok_or_else(|| ResumableError::Bad("Upload-Checksum value is not a base64 SHA-256".into()))
}

fn has_body(headers: &HeaderMap) -> bool {
    match number(headers, "content-length") {
        Ok(Some(n)) => n > 0,
        _ => headers.contains_key(header::TRANSFER_ENCODING),
    }
}

fn expires(upload: &ResumableUpload) -> String {
    httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_millis(upload.expires_unix_ms))
}

/// Headers every answer about an upload carries.
fn describe(mut a: Answer, upload: &ResumableUpload, engine: &Engine) -> Answer {
    a = a.header("upload-offset", upload.offset);
    if let Some(l) = upload.length {
        a = a.header("upload-length", l);
    } else if a.protocol == Protocol::Tus {
        a = a.header("upload-defer-length", 1);
    }
    if upload.state == super::OPEN {
        a = a.header("upload-expires", expires(upload));
    }
    if a.protocol == Protocol::Draft {
        let complete = upload.state != super::OPEN;
        a = a.header("upload-complete", if complete { "?1" } else { "?0" });
        a = a.header("upload-limit", limit(engine));
    }
    a
}

/// The IETF draft's `Upload-Limit`: the largest upload taken, and how long an idle one is kept.
fn limit(engine: &Engine) -> String {
    let cfg = engine.config();
    let mut parts = vec![format!("expires={}", cfg.resumable_ttl.as_secs())];
    if let Some(max) = cfg.max_upload_bytes {
        parts.insert(0, format!("max-size={max}"));
    }
    parts.join(", ")
}

/// `OPTIONS /uploads`: what this server offers.
async fn options(State(engine): State<Engine>) -> Response {
    let mut a = Answer::new(Protocol::Tus, StatusCode::NO_CONTENT)
        .header("tus-version", TUS_VERSION)
        .header("tus-extension", TUS_EXTENSIONS)
        .header("tus-checksum-algorithm", "sha256")
        .header("upload-limit", limit(&engine));
    if let Some(max) = engine.config().max_upload_bytes {
        a = a.header("tus-max-size", max);
    }
    a.into_response()
}

#[derive(Debug, Deserialize)]
struct CreateQuery {
    name: Option<String>,
}

/// `POST /uploads`: creation, with or without the first bytes.
async fn create(
    State(engine): State<Engine>,
    Extension(principal): Extension<Principal>,
    Query(q): Query<CreateQuery>,
    protocol: Protocol,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match creation(&engine, &principal, protocol, q, &headers) {
        Ok((c, complete)) => {
            let with_body = has_body(&headers);
            if with_body
                && protocol == Protocol::Tus
                && text(&headers, "content-type") != Some(OFFSET_OCTET_STREAM)
            {
                return Answer::error(
                    protocol,
                    ResumableError::Bad(format!(
                        "creation-with-upload needs Content-Type: {OFFSET_OCTET_STREAM}"
                    )),
                )
                .with_status(StatusCode::UNSUPPORTED_MEDIA_TYPE)
                .into_response();
            }
            let slot = match engine.admit() {
                Ok(s) => s,
                Err(e) => return e.into_response(),
            };
            let checksum = match checksum(&headers) {
                Ok(c) => c,
                Err(e) => return Answer::error(protocol, e).into_response(),
            };
            let run = {
                let engine = engine.clone();
                async move {
                    let _slot = slot;
                    let upload = super::create(&engine, &principal, c)
                        .await
                        .map_err(|e| (None, e))?;
                    // A zero-length upload is whole at once; a body or a completion runs the first append.
                    if !(with_body || complete || upload.length == Some(0)) {
                        return Ok(Appended {
                            upload,
                            summary: None,
                        });
                    }
                    let req = AppendRequest {
                        offset: 0,
                        length: None,
                        complete,
                        checksum,
                    };
                    let id = upload.id.clone();
                    // On failure the upload exists still; the client resumes it from what HEAD says.
                    let mut body = body.into_data_stream();
                    let done = super::append(&engine, &principal, &id, req, &mut body).await;
                    if done.is_err() {
                        drain(&mut body).await;
                    }
                    done.map_err(|e| (Some(id), e))
                }
            };
            match tokio::spawn(run).await {
                Ok(Ok(done)) => created(&engine, protocol, done),
                Ok(Err((id, e))) => {
                    let mut a = Answer::error(protocol, e);
                    if let Some(id) = id {
                        a = a.header("location", format!("/uploads/{id}"));
                    }
                    a.into_response()
                }
                Err(e) => Answer::error(
                    protocol,
                    ResumableError::Unavailable(format!("upload task failed: {e}")),
                )
                .into_response(),
            }
        }
        Err(e) => Answer::error(protocol, e).into_response(),
    }
}

impl Answer {
    fn with_status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }
}

/// What a creation request asks for, checked: name, video, length, and whether it completes the upload.
fn creation(
    engine: &Engine,
    principal: &Principal,
    protocol: Protocol,
    q: CreateQuery,
    headers: &HeaderMap,
) -> Result<(Creation, bool), ResumableError> {
    let meta = metadata(headers)?;
    let filename = meta
        .iter()
        .find(|(k, _)| k == "filename")
        .map(|(_, v)| {
            String::from_utf8(v.clone())
                .map_err(|_| ResumableError::Bad("the filename metadata is not UTF-8".into()))
        })
        .transpose()?;
    let name = filename.or(q.name).ok_or_else(|| {
        ResumableError::Bad(
            "the upload needs a name: Upload-Metadata `filename`, or ?name= on the URL".into(),
        )
    })?;
    let name = common::name::normalize_name(&name)
        .map_err(|e| ResumableError::Bad(format!("bad name: {e}")))?;
    let video = meta.iter().any(|(k, _)| k == "video");
    if video {
        crate::video::video_id_for(&name, Some(principal)).map_err(|(s, m)| {
            ResumableError::Failed {
                status: s.as_u16(),
                message: m,
            }
        })?;
    } else if !principal.allows(crate::auth::Scope::Upload, Some(&name)) {
        return Err(ResumableError::Failed {
            status: 403,
            message: format!("this token may not upload a file named {name:?}"),
        });
    }
    let length = number(headers, "upload-length")?;
    let deferred = text(headers, "upload-defer-length");
    let complete = match protocol {
        Protocol::Tus => {
            match (length, deferred) {
                (Some(_), Some(_)) => {
                    return Err(ResumableError::Bad(
                        "give Upload-Length or Upload-Defer-Length, not both".into(),
                    ))
                }
                (None, None) => {
                    return Err(ResumableError::Bad(
                        "Upload-Length or Upload-Defer-Length: 1 is required".into(),
                    ))
                }
                (None, Some(v)) if v != "1" => {
                    return Err(ResumableError::Bad("Upload-Defer-Length must be 1".into()))
                }
                _ => {}
            }
            false
        }
        Protocol::Draft => boolean(headers, "upload-complete")?
            .ok_or_else(|| ResumableError::Bad("Upload-Complete is required (?0 or ?1)".into()))?,
    };
    if let Some(max) = engine.config().max_upload_bytes {
        if length.is_some_and(|l| l > max) {
            return Err(ResumableError::TooLarge(max));
        }
    }
    Ok((
        Creation {
            name,
            video,
            length,
        },
        complete,
    ))
}

/// 201 with the upload's location; when the creation completed the upload, its summary too.
fn created(engine: &Engine, protocol: Protocol, done: Appended) -> Response {
    let mut a = describe(
        Answer::new(protocol, StatusCode::CREATED),
        &done.upload,
        engine,
    )
    .header("location", format!("/uploads/{}", done.upload.id));
    if let Some(summary) = done.summary {
        a.body = serde_json::to_value(summary).ok();
    }
    a.into_response()
}

/// `HEAD /uploads/{id}`: the offset to resume from.
async fn head(
    State(engine): State<Engine>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
    protocol: Protocol,
) -> Response {
    match super::status(&engine, &principal, &id).await {
        Ok(u) if u.state == super::FAILED => Answer::error(
            protocol,
            ResumableError::Gone("the upload failed; nothing of it is kept".into()),
        )
        .into_response(),
        Ok(u) => {
            let status = match protocol {
                Protocol::Tus => StatusCode::OK,
                Protocol::Draft => StatusCode::NO_CONTENT,
            };
            describe(Answer::new(protocol, status), &u, &engine).into_response()
        }
        Err(e) => Answer::error(protocol, e).into_response(),
    }
}

/// `PATCH /uploads/{id}`: an append.
async fn patch(
    State(engine): State<Engine>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
    protocol: Protocol,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if protocol == Protocol::Tus && text(&headers, "content-type") != Some(OFFSET_OCTET_STREAM) {
        return Answer::error(
            protocol,
            ResumableError::Bad(format!("PATCH needs Content-Type: {OFFSET_OCTET_STREAM}")),
        )
        .with_status(StatusCode::UNSUPPORTED_MEDIA_TYPE)
        .into_response();
    }
    let req = match append_request(protocol, &headers) {
        Ok(r) => r,
        Err(e) => return Answer::error(protocol, e).into_response(),
    };
    let slot = match engine.admit() {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    // The append runs in its own task: a client that goes away mid-request must not cancel the checkpoint
    // of what it sent.
    let task = {
        let engine = engine.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let mut body = body.into_data_stream();
            let done = super::append(&engine, &principal, &id, req, &mut body).await;
            if done.is_err() {
                drain(&mut body).await;
            }
            done
        })
    };
    match task.await {
        Ok(Ok(done)) => {
            let completed = done.summary.is_some();
            let status = match (protocol, completed) {
                (Protocol::Draft, true) => StatusCode::OK,
                _ => StatusCode::NO_CONTENT,
            };
            let mut a = describe(Answer::new(protocol, status), &done.upload, &engine);
            if status == StatusCode::OK {
                a.body = done.summary.and_then(|s| serde_json::to_value(s).ok());
            }
            a.into_response()
        }
        Ok(Err(e)) => Answer::error(protocol, e).into_response(),
        Err(e) => Answer::error(
            protocol,
            ResumableError::Unavailable(format!("upload task failed: {e}")),
        )
        .into_response(),
    }
}

fn append_request(
    protocol: Protocol,
    headers: &HeaderMap,
) -> Result<AppendRequest, ResumableError> {
    let offset = number(headers, "upload-offset")?
        .ok_or_else(|| ResumableError::Bad("Upload-Offset is required".into()))?;
    let length = number(headers, "upload-length")?;
    let complete = match protocol {
        Protocol::Tus => false,
        Protocol::Draft => boolean(headers, "upload-complete")?.unwrap_or(false),
    };
    Ok(AppendRequest {
        offset,
        length,
        complete,
        checksum: checksum(headers)?,
    })
}

/// Most of a refused request's body read (and dropped) before the answer goes out.
const DRAIN_BYTES: u64 = 16 << 20;
/// Longest a refused request's body is read before the answer goes out.
const DRAIN_TIME: Duration = Duration::from_secs(2);

/// Reads what is left of a refused request's body, up to a bound: a client still sending when the answer
/// comes would otherwise see its connection reset (the server closes with its body unread) instead of the
/// answer, and learn nothing of why.
async fn drain(body: &mut axum::body::BodyDataStream) {
    use futures_util::StreamExt;
    let mut read = 0u64;
    let _ = tokio::time::timeout(DRAIN_TIME, async {
        while let Some(Ok(chunk)) = body.next().await {
            read += chunk.len() as u64;
            if read > DRAIN_BYTES {
                break;
            }
        }
    })
    .await;
}

/// `DELETE /uploads/{id}`: termination; everything staged anywhere is removed.
async fn terminate(
    State(engine): State<Engine>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
    protocol: Protocol,
) -> Response {
    match super::terminate(&engine, &principal, &id).await {
        Ok(()) => Answer::new(protocol, StatusCode::NO_CONTENT).into_response(),
        Err(e) => Answer::error(protocol, e).into_response(),
    }
}

/// `GET /uploads/{id}`: the upload as JSON (a project extension, for scripts and tests).
#[derive(Debug, Serialize)]
struct StatusBody {
    id: String,
    name: String,
    offset: u64,
    length: Option<u64>,
    state: String,
    expires_unix_ms: u64,
    summary: Option<serde_json::Value>,
}

async fn get_status(
    State(engine): State<Engine>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Response {
    match super::status(&engine, &principal, &id).await {
        Ok(u) => Json(StatusBody {
            summary: u
                .summary
                .as_deref()
                .and_then(|s| serde_json::from_str(s).ok()),
            id: u.id,
            name: u.name,
            offset: u.offset,
            length: u.length,
            state: u.state,
            expires_unix_ms: u.expires_unix_ms,
        })
        .into_response(),
        Err(e) => Answer::error(Protocol::Tus, e).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).expect("value"));
        }
        h
    }

    #[test]
    fn metadata_is_parsed_strictly() {
        let m = metadata(&headers(&[("upload-metadata", "filename YS5iaW4=,video")])).expect("ok");
        assert_eq!(m[0], ("filename".to_owned(), b"a.bin".to_vec()));
        assert_eq!(m[1], ("video".to_owned(), Vec::new()));
        for bad in [
            "filename !!notbase64",
            "filename YQ== YQ==",
            "filename YQ==,filename YQ==",
        ] {
            assert!(
                metadata(&headers(&[("upload-metadata", bad)])).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn offsets_and_checksums() {
        assert_eq!(
            number(&headers(&[("upload-offset", "42")]), "upload-offset"),
            Ok(Some(42))
        );
        for bad in ["-1", "4 2", "0x10", "", "99999999999999999999999"] {
            assert!(
                number(&headers(&[("upload-offset", bad)]), "upload-offset").is_err(),
                "{bad}"
            );
        }
        let sum = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        assert_eq!(
            checksum(&headers(&[("upload-checksum", &format!("sha256 {sum}"))])),
            Ok(Some([7u8; 32]))
        );
        assert!(checksum(&headers(&[("upload-checksum", &format!("md5 {sum}"))])).is_err());
        assert!(checksum(&headers(&[("upload-checksum", "sha256 YQ==")])).is_err());
        assert_eq!(
            boolean(&headers(&[("upload-complete", "?1")]), "upload-complete"),
            Ok(Some(true))
        );
        assert!(boolean(&headers(&[("upload-complete", "1")]), "upload-complete").is_err());
    }

    #[test]
    fn protocols() {
        assert_eq!(
            protocol(&headers(&[("tus-resumable", "1.0.0")])).ok(),
            Some(Protocol::Tus)
        );
        assert_eq!(
            protocol(&headers(&[("upload-draft-interop-version", "6")])).ok(),
            Some(Protocol::Draft)
        );
        let refused =
            protocol(&headers(&[("tus-resumable", "0.2.2")])).expect_err("old tus refused");
        assert_eq!(refused.status, StatusCode::PRECONDITION_FAILED);
        assert!(protocol(&headers(&[("upload-draft-interop-version", "3")])).is_err());
        assert!(protocol(&HeaderMap::new()).is_err());
    }
}
