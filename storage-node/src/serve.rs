//! Answering `GET`/`HEAD` for a verified blob: one `Range` (206/416), `If-None-Match`, `If-Range`.
//!
//! Like `common::serve`, but the validator is the payload's SHA-256 (identical bytes on every replica give
//! the same `ETag`, so a client may resume a range from another replica) and the payload starts after the
//! blob header.

use std::io::SeekFrom;

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_util::io::ReaderStream;

use crate::error::StoreError;
use crate::store::format::HEADER_LEN;
use crate::store::VerifiedBlob;

/// Read size when streaming a blob out.
const READ_CHUNK: usize = 64 * 1024;

/// Header carrying the payload's SHA-256 in hex, as on upload.
const SHA256_HEADER: HeaderName = HeaderName::from_static("x-content-sha256");

/// What to send for a request.
#[derive(Debug, PartialEq, Eq)]
enum Plan {
    NotModified,
    Full,
    /// Inclusive byte range of the payload.
    Partial(u64, u64),
    Unsatisfiable,
}

fn plan(headers: &HeaderMap, etag: &str, len: u64) -> Plan {
    if let Some(inm) = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
    {
        if inm.split(',').any(|t| t.trim() == etag || t.trim() == "*") {
            return Plan::NotModified;
        }
    }
    let Some(range) = headers.get(header::RANGE).and_then(|v| v.to_str().ok()) else {
        return Plan::Full;
    };
    // A stale If-Range means the client's partial copy is of other content: send it all.
    if let Some(if_range) = headers.get(header::IF_RANGE).and_then(|v| v.to_str().ok()) {
        if if_range.trim() != etag {
            return Plan::Full;
        }
    }
    match http_range_header::parse_range_header(range) {
        Ok(parsed) => match parsed.validate(len) {
            Ok(ranges) => match ranges.as_slice() {
                [one] => Plan::Partial(*one.start(), *one.end()),
                // Several ranges would need multipart/byteranges; sending the whole blob is allowed.
                _ => Plan::Full,
            },
            Err(_) => Plan::Unsatisfiable,
        },
        // RFC 9110 §14.2: a Range header that does not parse is ignored.
        Err(_) => Plan::Full,
    }
}

/// Builds the answer for a verified blob.
pub async fn blob_response(
    blob: VerifiedBlob,
    method: &Method,
    headers: &HeaderMap,
) -> Result<Response, StoreError> {
    let VerifiedBlob { mut file, header } = blob;
    let len = header.len;
    let sha = header.sha256_hex();
    let etag = format!("\"{sha}\"");
    let mut out = HeaderMap::new();
    out.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if let Ok(v) = HeaderValue::from_str(&etag) {
        out.insert(header::ETAG, v);
    }
    if let Ok(v) = HeaderValue::from_str(&sha) {
        out.insert(SHA256_HEADER, v);
    }
    let (status, start, count) = match plan(headers, &etag, len) {
        Plan::NotModified => return Ok((StatusCode::NOT_MODIFIED, out).into_response()),
        Plan::Unsatisfiable => {
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                out.insert(header::CONTENT_RANGE, v);
            }
            return Ok((StatusCode::RANGE_NOT_SATISFIABLE, out).into_response());
        }
        Plan::Full => (StatusCode::OK, 0, len),
        Plan::Partial(s, e) => (StatusCode::PARTIAL_CONTENT, s, e - s + 1),
    };
    out.insert(header::CONTENT_LENGTH, HeaderValue::from(count));
    out.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if status == StatusCode::PARTIAL_CONTENT {
        if let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{}/{len}", start + count - 1))
        {
            out.insert(header::CONTENT_RANGE, v);
        }
    }
    if method == Method::HEAD {
        return Ok((status, out).into_response());
    }
    file.seek(SeekFrom::Start(HEADER_LEN + start)).await?;
    let body = Body::from_stream(ReaderStream::with_capacity(file.take(count), READ_CHUNK));
    Ok((status, out, body).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.insert(*k, HeaderValue::from_str(v).expect("value"));
        }
        m
    }

    #[test]
    fn plans() {
        let e = "\"abc\"";
        assert_eq!(plan(&h(&[]), e, 10), Plan::Full);
        assert_eq!(
            plan(&h(&[("range", "bytes=2-4")]), e, 10),
            Plan::Partial(2, 4)
        );
        assert_eq!(
            plan(&h(&[("range", "bytes=-3")]), e, 10),
            Plan::Partial(7, 9)
        );
        assert_eq!(
            plan(&h(&[("range", "bytes=8-")]), e, 10),
            Plan::Partial(8, 9)
        );
        assert_eq!(
            plan(&h(&[("range", "bytes=10-")]), e, 10),
            Plan::Unsatisfiable
        );
        assert_eq!(plan(&h(&[("range", "lines=1-2")]), e, 10), Plan::Full);
        assert_eq!(plan(&h(&[("range", "bytes=0-1,4-5")]), e, 10), Plan::Full);
        assert_eq!(plan(&h(&[("if-none-match", e)]), e, 10), Plan::NotModified);
        assert_eq!(
            plan(
                &h(&[("range", "bytes=2-4"), ("if-range", "\"old\"")]),
                e,
                10
            ),
            Plan::Full
        );
        assert_eq!(
            plan(&h(&[("range", "bytes=2-4"), ("if-range", e)]), e, 10),
            Plan::Partial(2, 4)
        );
    }
}
