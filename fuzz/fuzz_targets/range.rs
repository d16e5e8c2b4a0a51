//! `common::serve::prepare`: `Range`, `If-Range` and `If-None-Match` against a representation of `len` bytes.
//!
//! Input lines: `len` (decimal; anything else uses the line's length), then the values of `Range`, `If-Range`
//! and `If-None-Match`; a missing line means the header is not sent. The ETag is the one `serve_file` makes
//! for that length and an mtime of 1 ns (`"<len hex>-1"`), so a fuzzer can match it.
#![no_main]
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use common::serve::{prepare, Prepared};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let lines = distributary_fuzz::lines(data);
    let len: u64 = match lines.first() {
        Some(l) => std::str::from_utf8(l)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(l.len() as u64),
        None => 0,
    };
    let etag = format!("\"{len:x}-1\"");
    let mut headers = HeaderMap::new();
    for (line, name) in
        lines
            .iter()
            .skip(1)
            .zip([header::RANGE, header::IF_RANGE, header::IF_NONE_MATCH])
    {
        if let Ok(v) = HeaderValue::from_bytes(line) {
            headers.insert(name, v);
        }
    }
    match prepare(&headers, &etag, len, "application/octet-stream") {
        Prepared::Done(resp) => {
            let s = resp.status();
            assert!(
                s == StatusCode::NOT_MODIFIED || s == StatusCode::RANGE_NOT_SATISFIABLE,
                "unexpected bodiless status {s}"
            );
            if s == StatusCode::RANGE_NOT_SATISFIABLE {
                assert!(headers.contains_key(header::RANGE), "416 without a Range");
            }
        }
        Prepared::Send {
            status,
            headers: out,
            start,
            count,
        } => {
            let end = start.checked_add(count).expect("start + count overflows");
            assert!(end <= len, "bytes {start}+{count} past the end of {len}");
            let content_length = out
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            assert_eq!(
                content_length,
                Some(count),
                "Content-Length disagrees with count"
            );
            if status == StatusCode::OK {
                assert_eq!(
                    (start, count),
                    (0, len),
                    "200 that is not the whole representation"
                );
                assert!(!out.contains_key(header::CONTENT_RANGE));
            } else {
                assert_eq!(status, StatusCode::PARTIAL_CONTENT);
                assert!(count >= 1, "empty 206");
                let cr = out
                    .get(header::CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .expect("206 without Content-Range");
                assert_eq!(cr, format!("bytes {start}-{}/{len}", end - 1));
            }
        }
    }
});
