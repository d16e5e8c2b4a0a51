//! SHA-256 is computed while the bytes stream; clients may send the digest they expect.

use axum::http::HeaderMap;
use base64::Engine;

/// A SHA-256 digest.
pub type Sha256Digest = [u8; 32];

/// Why a client's digest header was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DigestHeaderError {
    #[error("Content-Digest is not a valid RFC 9530 dictionary: {0}")]
    Malformed(String),
    #[error("Content-Digest names no sha-256 digest (only sha-256 is supported)")]
    NoSha256,
    #[error("X-Content-SHA256 must be 64 hex digits")]
    BadHex,
    #[error("Content-Digest and X-Content-SHA256 disagree")]
    Conflict,
}

/// The SHA-256 a client announced in `Content-Digest: sha-256=:…:` or `X-Content-SHA256: <hex>`, if any.
pub fn expected_sha256(headers: &HeaderMap) -> Result<Option<Sha256Digest>, DigestHeaderError> {
    let mut found = None;
    for value in headers.get_all("content-digest") {
        let text = value
            .to_str()
            .map_err(|_| DigestHeaderError::Malformed("not ASCII".into()))?;
        if let Some(d) = parse_content_digest(text)? {
            found = Some(d);
        }
    }
    if let Some(value) = headers.get("x-content-sha256") {
        let text = value
            .to_str()
            .map_err(|_| DigestHeaderError::BadHex)?
            .trim();
        let mut d = [0u8; 32];
        hex::decode_to_slice(text, &mut d).map_err(|_| DigestHeaderError::BadHex)?;
        if found.is_some_and(|f| f != d) {
            return Err(DigestHeaderError::Conflict);
        }
        found = Some(d);
    }
    Ok(found)
}

/// Parses the dictionary of RFC 9530 §2; other algorithms are skipped, but a header with no sha-256 is an
/// error because a client that sent one expects it to be checked.
fn parse_content_digest(text: &str) -> Result<Option<Sha256Digest>, DigestHeaderError> {
    let mut sha = None;
    let mut any = false;
    for member in text.split(',') {
        let member = member.trim();
        if member.is_empty() {
            continue;
        }
        let (key, value) = member
            .split_once('=')
            .ok_or_else(|| DigestHeaderError::Malformed(format!("`{member}` has no value")))?;
        let key = key.trim().to_ascii_lowercase();
        let value = value.trim();
        // Parameters (`;…`) are allowed by structured fields and carry nothing for us.
        let value = value.split(';').next().unwrap_or_default();
        let b64 = value
            .strip_prefix(':')
            .and_then(|v| v.strip_suffix(':'))
            .ok_or_else(|| {
                DigestHeaderError::Malformed(format!("`{key}` is not a byte sequence `:…:`"))
            })?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| DigestHeaderError::Malformed(format!("`{key}`: {e}")))?;
        any = true;
        if key == "sha-256" {
            let d: Sha256Digest = bytes.try_into().map_err(|_| {
                DigestHeaderError::Malformed("sha-256 digest is not 32 bytes".into())
            })?;
            sha = Some(d);
        }
    }
    match (any, sha) {
        (_, Some(d)) => Ok(Some(d)),
        (true, None) => Err(DigestHeaderError::NoSha256),
        (false, None) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;
    use sha2::{Digest, Sha256};

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).expect("header"));
        }
        h
    }

    #[test]
    fn parses_both_forms() {
        let d: Sha256Digest = Sha256::digest(b"hello").into();
        let b64 = base64::engine::general_purpose::STANDARD.encode(d);
        let h = headers(&[(
            "content-digest",
            &format!("sha-512=:AAAA:, sha-256=:{b64}:"),
        )]);
        assert_eq!(expected_sha256(&h), Ok(Some(d)));
        let h = headers(&[("x-content-sha256", &hex::encode(d))]);
        assert_eq!(expected_sha256(&h), Ok(Some(d)));
        assert_eq!(expected_sha256(&HeaderMap::new()), Ok(None));
    }

    #[test]
    fn refuses_bad_headers() {
        let h = headers(&[("content-digest", "sha-256=abc")]);
        assert!(matches!(
            expected_sha256(&h),
            Err(DigestHeaderError::Malformed(_))
        ));
        let h = headers(&[("content-digest", "sha-512=:AAAA:")]);
        assert_eq!(expected_sha256(&h), Err(DigestHeaderError::NoSha256));
        let h = headers(&[("x-content-sha256", "xyz")]);
        assert_eq!(expected_sha256(&h), Err(DigestHeaderError::BadHex));
        let h = headers(&[("content-digest", "sha-256=:AAAA:")]);
        assert!(matches!(
            expected_sha256(&h),
            Err(DigestHeaderError::Malformed(_))
        ));
    }
}
