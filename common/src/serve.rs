//! Serving a committed file: `GET`/`HEAD`, one `Range` (206/416), `ETag` with `If-None-Match` and `If-Range`.

use std::path::Path;
use std::time::UNIX_EPOCH;

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_util::io::ReaderStream;

/// Read size when streaming a file out.
const READ_CHUNK: usize = 64 * 1024;

/// Serves `path`; a missing file is 404.
pub async fn serve_file(
    path: &Path,
    method: &Method,
    headers: &HeaderMap,
    content_type: &str,
) -> Response {
    let mut file = match tokio::fs::File::open(path).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return StatusCode::NOT_FOUND.into_response()
        }
        Err(e) => {
            tracing::error!(path = %path.display(), error = %e, "cannot open file");
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        }
    };
    let meta = match file.metadata().await {
        Ok(m) if m.is_file() => m,
        Ok(_) => return StatusCode::NOT_FOUND.into_response(),
        Err(e) => {
            tracing::error!(path = %path.display(), error = %e, "cannot stat file");
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        }
    };
    let len = meta.len();
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let etag = format!("\"{len:x}-{mtime:x}\"");

    let (status, out, start, count) = match prepare(headers, &etag, len, content_type) {
        Prepared::Done(resp) => return *resp,
        Prepared::Send {
            status,
            headers,
            start,
            count,
        } => (status, headers, start, count),
    };
    if method == Method::HEAD {
        return (status, out).into_response();
    }
    if start > 0 {
        if let Err(e) = file.seek(std::io::SeekFrom::Start(start)).await {
            tracing::error!(path = %path.display(), error = %e, "cannot seek");
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        }
    }
    let body = Body::from_stream(ReaderStream::with_capacity(file.take(count), READ_CHUNK));
    (status, out, body).into_response()
}

/// What to answer to a (possibly conditional, possibly ranged) read of a representation.
#[derive(Debug)]
pub enum Prepared {
    /// Answer this and send no body (304, 416).
    Done(Box<Response>),
    /// Send `count` bytes from offset `start` with these status and headers.
    Send {
        status: StatusCode,
        headers: HeaderMap,
        start: u64,
        count: u64,
    },
}

/// Applies `If-None-Match`, `Range` and `If-Range` to a representation of `len` bytes tagged `etag`
/// (quoted), and builds the response headers.
pub fn prepare(headers: &HeaderMap, etag: &str, len: u64, content_type: &str) -> Prepared {
    let (status, start, count) = match plan_range(headers, etag, len) {
        RangePlan::NotModified => {
            let resp =
                (StatusCode::NOT_MODIFIED, [(header::ETAG, etag.to_owned())]).into_response();
            return Prepared::Done(Box::new(resp));
        }
        RangePlan::Unsatisfiable => {
            let resp = (
                StatusCode::RANGE_NOT_SATISFIABLE,
                [(header::CONTENT_RANGE, format!("bytes */{len}"))],
            )
                .into_response();
            return Prepared::Done(Box::new(resp));
        }
        RangePlan::Full => (StatusCode::OK, 0, len),
        RangePlan::Partial(s, e) => (StatusCode::PARTIAL_CONTENT, s, e - s + 1),
    };
    let mut out = HeaderMap::new();
    out.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    out.insert(header::CONTENT_LENGTH, HeaderValue::from(count));
    if let Ok(v) = HeaderValue::from_str(etag) {
        out.insert(header::ETAG, v);
    }
    if let Ok(v) = HeaderValue::from_str(content_type) {
        out.insert(header::CONTENT_TYPE, v);
    }
    if status == StatusCode::PARTIAL_CONTENT {
        if let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{}/{len}", start + count - 1))
        {
            out.insert(header::CONTENT_RANGE, v);
        }
    }
    Prepared::Send {
        status,
        headers: out,
        start,
        count,
    }
}

enum RangePlan {
    NotModified,
    Unsatisfiable,
    Full,
    /// Inclusive byte range.
    Partial(u64, u64),
}

fn plan_range(headers: &HeaderMap, etag: &str, len: u64) -> RangePlan {
    if let Some(inm) = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
    {
        if inm.split(',').any(|t| t.trim() == etag || t.trim() == "*") {
            return RangePlan::NotModified;
        }
    }
    let Some(range) = headers.get(header::RANGE).and_then(|v| v.to_str().ok()) else {
        return RangePlan::Full;
    };
    // A stale If-Range means the client's partial copy is of another version: send it all.
    if let Some(if_range) = headers.get(header::IF_RANGE).and_then(|v| v.to_str().ok()) {
        if if_range.trim() != etag {
            return RangePlan::Full;
        }
    }
    // An empty representation has no byte to satisfy any range with (RFC 9110 §14.1.1); the parser's
    // arithmetic would otherwise compute a last byte of -1 (found by fuzzing).
    if len == 0 {
        return match http_range_header::parse_range_header(range) {
            Ok(_) => RangePlan::Unsatisfiable,
            Err(_) => RangePlan::Full,
        };
    }
    let ranges = match http_range_header::parse_range_header(range) {
        Ok(parsed) => match parsed.validate(len) {
            Ok(r) => r,
            Err(_) => return RangePlan::Unsatisfiable,
        },
        // RFC 9110 §14.2: a Range header that does not parse is ignored.
        Err(_) => return RangePlan::Full,
    };
    match ranges.as_slice() {
        [one] if one.start() <= one.end() && *one.end() < len => {
            RangePlan::Partial(*one.start(), *one.end())
        }
        [_] => RangePlan::Unsatisfiable,
        // Several ranges would need multipart/byteranges; serving the whole file is allowed instead.
        _ => RangePlan::Full,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(range: &str, len: u64) -> Option<(StatusCode, u64, u64)> {
        let mut h = HeaderMap::new();
        h.insert(header::RANGE, HeaderValue::from_str(range).expect("header"));
        match prepare(&h, "\"e\"", len, "application/octet-stream") {
            Prepared::Done(resp) => Some((resp.status(), 0, 0)),
            Prepared::Send {
                status,
                start,
                count,
                ..
            } => Some((status, start, count)),
        }
    }

    /// Regressions found by the `range` fuzz target: a range of an empty file.
    #[test]
    fn ranges_of_an_empty_file_are_unsatisfiable() {
        for r in ["bytes=0-0", "bytes=0-99", "bytes=0-", "bytes=-5"] {
            let (status, _, _) = plan(r, 0).expect("plan");
            assert_eq!(status, StatusCode::RANGE_NOT_SATISFIABLE, "{r}");
        }
        assert_eq!(plan("not a range", 0).expect("plan").0, StatusCode::OK);
    }

    #[test]
    fn ranges_stay_within_the_file() {
        assert_eq!(
            plan("bytes=2-5", 10),
            Some((StatusCode::PARTIAL_CONTENT, 2, 4))
        );
        assert_eq!(
            plan("bytes=5-", 10),
            Some((StatusCode::PARTIAL_CONTENT, 5, 5))
        );
        assert_eq!(
            plan("bytes=10-12", 10).expect("plan").0,
            StatusCode::RANGE_NOT_SATISFIABLE
        );
    }
}
