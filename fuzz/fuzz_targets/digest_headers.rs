//! `common::digest::expected_sha256`: the client's `Content-Digest` (RFC 9530) and `X-Content-SHA256` headers.
//!
//! Input: one header per line; the first byte picks the name (`c` content-digest, `x` x-content-sha256,
//! anything else an unrelated header), the rest is the value. Values that are not valid header bytes are
//! skipped, as hyper would refuse them.
#![no_main]
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use base64::Engine;
use common::digest::expected_sha256;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut headers = HeaderMap::new();
    for line in distributary_fuzz::lines(data) {
        let Some((&kind, value)) = line.split_first() else {
            continue;
        };
        let name = match kind {
            b'c' | b'C' => HeaderName::from_static("content-digest"),
            b'x' | b'X' => HeaderName::from_static("x-content-sha256"),
            _ => HeaderName::from_static("digest"),
        };
        if let Ok(v) = HeaderValue::from_bytes(value) {
            headers.append(name, v);
        }
    }
    let first = expected_sha256(&headers);
    assert_eq!(first, expected_sha256(&headers), "not deterministic");
    match first {
        Ok(Some(d)) => {
            if let Some(x) = headers.get("x-content-sha256") {
                let text = x
                    .to_str()
                    .expect("accepted a non-ASCII X-Content-SHA256")
                    .trim();
                assert!(
                    text.eq_ignore_ascii_case(&hex::encode(d)),
                    "X-Content-SHA256 {text:?} accepted as {}",
                    hex::encode(d)
                );
            } else {
                let b64 = base64::engine::general_purpose::STANDARD.encode(d);
                assert!(
                    headers
                        .get_all("content-digest")
                        .iter()
                        .any(|v| v.to_str().is_ok_and(|s| s.contains(&b64))),
                    "digest {b64} appears in no Content-Digest"
                );
            }
        }
        Ok(None) => assert!(
            headers.get("x-content-sha256").is_none(),
            "X-Content-SHA256 present but no digest reported"
        ),
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
