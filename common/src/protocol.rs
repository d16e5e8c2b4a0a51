//! The stream protocol between the broadcaster and its targets.
//!
//! 1. `PUT /v1/uploads/{id}/{name}`: the body is staged; the target answers [`StagedReport`] once the staged
//!    copy is fsynced.
//! 2. `POST /v1/uploads/{id}/commit`: the staged copy is published under its name.
//! 3. `DELETE /v1/uploads/{id}`: the staged copy is discarded (idempotent; unknown ids are fine).

use serde::{Deserialize, Serialize};

/// Prefix of the stream protocol's routes.
pub const UPLOADS_PATH: &str = "/v1/uploads";

/// What a target reports once it staged a whole body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StagedReport {
    /// Bytes staged.
    pub bytes: u64,
    /// SHA-256 of the staged bytes, lowercase hex.
    pub sha256: String,
}

/// JSON error body used by every service.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What was wrong, safe to show to the client.
    pub error: String,
}

/// Upload ids are 32 lowercase hex digits, so they are safe as file names.
pub fn is_valid_upload_id(id: &str) -> bool {
    id.len() == 32
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upload_ids() {
        assert!(is_valid_upload_id("0123456789abcdef0123456789abcdef"));
        assert!(!is_valid_upload_id("0123456789ABCDEF0123456789abcdef"));
        assert!(!is_valid_upload_id("../../etc/passwd"));
        assert!(!is_valid_upload_id(""));
    }
}
