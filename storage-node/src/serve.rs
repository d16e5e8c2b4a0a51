//! Answering `GET`/`HEAD` for a verified blob: one `Range` (206/416), `If-None-Match`, `If-Range`.
//!
//! The validator is the payload's SHA-256 (identical bytes on every replica give the same `ETag`, so a
//! client may resume a range from another replica), and the payload starts after the blob header.

use std::io::SeekFrom;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method};
use axum::response::{IntoResponse, Response};
use common::serve::{prepare, Prepared};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_util::io::ReaderStream;

use crate::error::StoreError;
use crate::store::format::{Header, HEADER_LEN};
use crate::store::VerifiedBlob;

/// Read size when streaming a blob out.
const READ_CHUNK: usize = 64 * 1024;

/// Replies up to this size are read in one go.
const SMALL_READ: u64 = 256 * 1024;

/// Header carrying the payload's digest in its textual form, as on upload.
const SHA256_HEADER: HeaderName = HeaderName::from_static("x-content-sha256");

/// Header carrying the payload length with a window table.
pub const LENGTH_HEADER: HeaderName = HeaderName::from_static("x-blob-length");

/// The answer to `?windows=1`: the window table (32 bytes per window), the digest it hashes to and the
/// payload length, which the reader checks against the digest it recorded before it trusts the table.
pub fn table_response(header: &Header, table: Vec<u8>) -> Response {
    let mut out = HeaderMap::new();
    out.insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if let Ok(v) = HeaderValue::from_str(&header.digest_text()) {
        out.insert(SHA256_HEADER, v);
    }
    out.insert(LENGTH_HEADER, HeaderValue::from(header.len));
    (out, Body::from(table)).into_response()
}

/// Builds the answer for a verified blob.
pub async fn blob_response(
    blob: VerifiedBlob,
    method: &Method,
    headers: &HeaderMap,
) -> Result<Response, StoreError> {
    let VerifiedBlob { mut file, header } = blob;
    let sha = header.digest_text();
    let etag = format!("\"{sha}\"");
    let (status, mut out, start, count) =
        match prepare(headers, &etag, header.len, "application/octet-stream") {
            Prepared::Done(resp) => {
                let mut resp = *resp;
                if let Ok(v) = HeaderValue::from_str(&sha) {
                    resp.headers_mut().insert(SHA256_HEADER, v);
                }
                return Ok(resp);
            }
            Prepared::Send {
                status,
                headers,
                start,
                count,
            } => (status, headers, start, count),
        };
    if let Ok(v) = HeaderValue::from_str(&sha) {
        out.insert(SHA256_HEADER, v);
    }
    if method == Method::HEAD {
        return Ok((status, out).into_response());
    }
    if count <= SMALL_READ {
        // A window, as readers ask for: one positioned read on a blocking thread, instead of a seek and
        // reads that each take a trip through the blocking pool.
        let file = file.into_std().await;
        let data = tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; count as usize];
            std::os::unix::fs::FileExt::read_exact_at(&file, &mut buf, HEADER_LEN + start)
                .map(|()| buf)
        })
        .await
        .map_err(std::io::Error::other)??;
        return Ok((status, out, Body::from(data)).into_response());
    }
    file.seek(SeekFrom::Start(HEADER_LEN + start)).await?;
    let body = Body::from_stream(ReaderStream::with_capacity(file.take(count), READ_CHUNK));
    Ok((status, out, body).into_response())
}
