//! Storage node errors: [`StoreError`] for the HTTP service (each maps to a status), [`AdminError`] for the
//! admin CLI.

use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use common::protocol::ErrorBody;

/// Header set on the answer for a blob whose stored checksum does not match its bytes, so that a caller can
/// tell "this copy is damaged, read a replica" from other server errors.
pub const CORRUPT_HEADER: &str = "x-blob-corrupt";

/// Everything a storage node request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("bad blob key: {0}")]
    BadKey(String),
    #[error("bad upload id: expected 32 lowercase hex digits")]
    BadUploadId,
    #[error("bad digest header: {0}")]
    DigestHeader(#[from] common::digest::DigestHeaderError),
    #[error("bad digest header: {0}")]
    BlobDigest(#[from] common::blob_digest::BadDigest),
    #[error("content digest mismatch: the client announced {expected}, the body has {actual}")]
    DigestMismatch { expected: String, actual: String },
    #[error("blob exceeds the limit of {0} bytes")]
    TooLarge(u64),
    #[error("request body failed: {0}")]
    Body(String),
    #[error("no blob {0}")]
    NotFound(String),
    /// A conditional delete found the blob written more recently than the caller allowed.
    #[error("blob {0} was written again since it was listed; kept")]
    TooYoung(String),
    /// The blob has a plain digest, so no window table to send.
    #[error("blob {0} has no window table")]
    NoWindows(String),
    #[error("upload id {0} is already in use")]
    UploadIdTaken(String),
    #[error("no staged upload with id {0}")]
    UnknownUpload(String),
    /// The stored checksum does not match the stored bytes (or the header is unreadable).
    #[error("checksum mismatch for {key}: {reason}")]
    Corrupt { key: String, reason: String },
    #[error("storage error: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Protocol(#[from] common::participant::ProtocolError),
}

impl StoreError {
    fn status(&self) -> StatusCode {
        match self {
            Self::BadKey(_)
            | Self::BadUploadId
            | Self::DigestHeader(_)
            | Self::BlobDigest(_)
            | Self::Body(_) => StatusCode::BAD_REQUEST,
            Self::NoWindows(_) => StatusCode::CONFLICT,
            Self::DigestMismatch { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Self::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::NotFound(_) | Self::UnknownUpload(_) => StatusCode::NOT_FOUND,
            Self::UploadIdTaken(_) => StatusCode::CONFLICT,
            Self::TooYoung(_) => StatusCode::PRECONDITION_FAILED,
            Self::Corrupt { .. } | Self::Io(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::Protocol(_) => StatusCode::BAD_REQUEST,
        }
    }
}

impl IntoResponse for StoreError {
    fn into_response(self) -> Response {
        if let Self::Protocol(e) = self {
            return e.into_response();
        }
        let status = self.status();
        let error = if let Self::Io(e) = &self {
            // Paths and OS details stay in the log.
            tracing::error!(error = %e, "storage error");
            "storage error".to_owned()
        } else {
            self.to_string()
        };
        let mut response = (status, Json(ErrorBody { error })).into_response();
        if matches!(self, Self::Corrupt { .. }) {
            response.headers_mut().insert(
                HeaderName::from_static(CORRUPT_HEADER),
                HeaderValue::from_static("1"),
            );
        }
        response
    }
}

/// Why an admin command failed; printed as `Error: {self}`.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("cannot reach broadcaster at {broadcaster}: {detail}")]
    Unreachable { broadcaster: String, detail: String },
    /// The broadcaster refused the request; its message is shown as is.
    #[error("{message}")]
    Refused { status: u16, message: String },
    #[error("unexpected answer from broadcaster at {broadcaster}: {detail}")]
    BadAnswer { broadcaster: String, detail: String },
    #[error("cannot set up the HTTP client: {0}")]
    Client(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corrupt_blobs_are_flagged() {
        let r = StoreError::Corrupt {
            key: "a/b".into(),
            reason: "stored x, computed y".into(),
        }
        .into_response();
        assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(
            r.headers().get(CORRUPT_HEADER).map(|v| v.as_bytes()),
            Some(&b"1"[..])
        );
        let r = StoreError::Io(std::io::Error::other("disk on fire")).into_response();
        assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(r.headers().get(CORRUPT_HEADER).is_none());
    }

    #[test]
    fn statuses() {
        for (e, s) in [
            (StoreError::BadKey("x".into()), 400),
            (StoreError::BadUploadId, 400),
            (
                StoreError::DigestMismatch {
                    expected: "a".into(),
                    actual: "b".into(),
                },
                422,
            ),
            (StoreError::TooLarge(1), 413),
            (StoreError::NotFound("a/b".into()), 404),
            (StoreError::UnknownUpload("x".into()), 404),
            (StoreError::UploadIdTaken("x".into()), 409),
        ] {
            assert_eq!(e.into_response().status().as_u16(), s);
        }
    }
}
