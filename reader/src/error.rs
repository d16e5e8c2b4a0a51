//! Reader errors and their HTTP statuses.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use common::protocol::ErrorBody;

/// Everything a reader request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ReaderError {
    #[error("bad name: {0}")]
    BadName(#[from] common::name::NameError),
    #[error("bad upload id: expected 32 lowercase hex digits")]
    BadUploadId,
    #[error("upload id {0} is already in use")]
    UploadIdTaken(String),
    #[error("no staged upload with id {0}")]
    UnknownUpload(String),
    #[error("upload exceeds the limit of {0} bytes")]
    TooLarge(u64),
    #[error("request body failed: {0}")]
    Body(String),
    #[error("malformed multipart body: {0}")]
    Multipart(String),
    #[error("multipart body has no `file` field")]
    NoFileField,
    #[error("storage error: {0}")]
    Io(#[from] std::io::Error),
    #[error("{message}")]
    Video { status: u16, message: String },
    #[error("storage ring: {0}")]
    Ring(String),
    #[error("bad {0} header")]
    BadHeader(&'static str),
    #[error("{0}")]
    S3(String),
    #[error(transparent)]
    Protocol(#[from] common::participant::ProtocolError),
}

impl ReaderError {
    fn status(&self) -> StatusCode {
        match self {
            Self::BadName(_)
            | Self::BadUploadId
            | Self::Body(_)
            | Self::Multipart(_)
            | Self::NoFileField => StatusCode::BAD_REQUEST,
            Self::UploadIdTaken(_) => StatusCode::CONFLICT,
            Self::UnknownUpload(_) => StatusCode::NOT_FOUND,
            Self::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Io(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::Video { status, .. } => {
                StatusCode::from_u16(*status).unwrap_or(StatusCode::UNPROCESSABLE_ENTITY)
            }
            Self::Ring(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::BadHeader(_) => StatusCode::BAD_REQUEST,
            Self::S3(_) => StatusCode::BAD_GATEWAY,
            Self::Protocol(_) => StatusCode::BAD_REQUEST,
        }
    }
}

impl IntoResponse for ReaderError {
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
        (status, Json(ErrorBody { error })).into_response()
    }
}
