//! Broadcaster errors that end a request before the fan-out starts, and their HTTP statuses.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use common::protocol::ErrorBody;

/// A request refused at the edge.
#[derive(Debug, thiserror::Error)]
pub enum BroadcastError {
    #[error("bad name: {0}")]
    BadName(#[from] common::name::NameError),
    #[error("bad digest header: {0}")]
    Digest(#[from] common::digest::DigestHeaderError),
    #[error("no targets are configured (BROADCASTER_HOST_LIST is empty)")]
    NoTargets,
    #[error("Content-Length {len} exceeds the limit of {max} bytes")]
    TooLarge { len: u64, max: u64 },
    #[error("bad Content-Length header")]
    BadContentLength,
    #[error("malformed multipart body: {0}")]
    Multipart(String),
    #[error("multipart body has no `file` field with a filename")]
    NoFileField,
    #[error("the broadcaster is at its limit of {0} uploads at once; try again shortly")]
    Busy(usize),
    #[error("internal error")]
    Internal(String),
    #[error(transparent)]
    Ring(#[from] crate::ring::RingError),
}

impl BroadcastError {
    fn status(&self) -> StatusCode {
        match self {
            Self::BadName(_)
            | Self::Digest(_)
            | Self::BadContentLength
            | Self::Multipart(_)
            | Self::NoFileField => StatusCode::BAD_REQUEST,
            Self::NoTargets | Self::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Internal(_) | Self::Ring(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for BroadcastError {
    fn into_response(self) -> Response {
        if let Self::Ring(e) = self {
            return ring_response(e);
        }
        if let Self::Internal(detail) = &self {
            tracing::error!(%detail, "internal error");
        }
        let mut resp = (
            self.status(),
            Json(ErrorBody {
                error: self.to_string(),
            }),
        )
            .into_response();
        if matches!(self, Self::Busy(_)) {
            resp.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("5"),
            );
        }
        resp
    }
}

/// Maps a ring failure to a status: refused membership changes are conflicts, unreachable nodes are a bad
/// gateway, a metadata store without quorum is "unavailable".
fn ring_response(e: crate::ring::RingError) -> Response {
    use crate::ring::RingError;
    let status = match &e {
        RingError::Membership(_)
        | RingError::Duplicate(_)
        | RingError::Conflict
        | RingError::Busy(_)
        | RingError::Empty => StatusCode::CONFLICT,
        RingError::NotANode(_) => StatusCode::BAD_REQUEST,
        RingError::Unreachable(_) | RingError::NoReplica(_) | RingError::Node(_) => {
            StatusCode::BAD_GATEWAY
        }
        RingError::Meta(meta::MetaError::Unavailable(_)) => StatusCode::SERVICE_UNAVAILABLE,
        RingError::Meta(_) => StatusCode::INTERNAL_SERVER_ERROR,
        RingError::Aborted(_) => StatusCode::BAD_REQUEST,
    };
    if status.is_server_error() {
        tracing::warn!(error = %e, "ring request failed");
    }
    (
        status,
        Json(ErrorBody {
            error: e.to_string(),
        }),
    )
        .into_response()
}
