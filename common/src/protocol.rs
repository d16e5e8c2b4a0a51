//! The stream protocol between the broadcaster and its targets.
//!
//! 1. `PUT /v1/uploads/{id}/{name}`: the body is staged; the target answers [`StagedReport`] once the staged
//!    copy is fsynced.
//! 2. `POST /v1/uploads/{id}/commit`: the staged copy is published under its name.
//! 3. `DELETE /v1/uploads/{id}`: the staged copy is discarded (idempotent; unknown ids are fine).

use serde::{Deserialize, Serialize};

/// Prefix of the stream protocol's routes.
pub const UPLOADS_PATH: &str = "/v1/uploads";

/// How far a target's stage of an upload is (`GET /v1/uploads/{id}/progress`): the dash reader's transcode.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ProgressReport {
    /// Percent of the source processed so far, 0 to 100.
    pub percent: f64,
}

/// What a target reports once it staged a whole body: its length and at least one checksum, which the
/// broadcaster compares with its own before it commits anything.
///
/// Readers report XXH3-128: it proves the staged bytes equal the streamed ones as well as SHA-256 would
/// against accidental damage (truncation, a lost or repeated chunk, a flipped bit) at a twentieth of the CPU,
/// and the CPU is what bounds fan-out on a small machine. Targets that keep SHA-256 anyway (storage nodes)
/// report that.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct StagedReport {
    /// Bytes staged.
    pub bytes: u64,
    /// SHA-256 of the staged bytes, lowercase hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// XXH3-128 of the staged bytes, 32 lowercase hex digits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xxh3: Option<String>,
    /// What a transcoding target made of the upload, once every file of it is durable on the ring.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub video: Option<VideoReport>,
    /// The ring lane only: each chunk's SHA-256, hex, recorded with the file so reads can be verified.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chunk_sha256: Vec<String>,
}

/// A video transcoded to DASH and stored on the ring under `{id}/{file}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VideoReport {
    /// The video id (the upload's name without its extension).
    pub id: String,
    /// Duration of the source.
    pub duration_ms: u64,
    /// Source width and height.
    pub width: u32,
    /// Source height.
    pub height: u32,
    /// Video representations in the ladder.
    pub renditions: usize,
    /// Every file written to the ring (manifest, init and media segments, poster).
    pub files: Vec<String>,
    /// SHA-256 (hex) of each file in `files`, recorded with the video so every read can be verified.
    #[serde(default)]
    pub digests: std::collections::BTreeMap<String, String>,
}

/// Header on stage requests telling a transcoding target what the broadcaster expects of it.
pub const VIDEO_HEADER: &str = "x-distributary-video";

/// Value of [`VIDEO_HEADER`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VideoMode {
    /// A raw upload: a transcoding target takes the bytes and makes nothing of them.
    Skip,
    /// A video upload (`POST /upload`): the target must transcode it, or refuse it (415/422).
    Required,
}

impl VideoMode {
    /// The header value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Skip => "skip",
            Self::Required => "required",
        }
    }

    /// Parses the header value; absent means [`VideoMode::Skip`].
    pub fn parse(v: Option<&str>) -> Option<Self> {
        match v.map(str::trim) {
            None | Some("skip") => Some(Self::Skip),
            Some("required") => Some(Self::Required),
            Some(_) => None,
        }
    }
}

impl StagedReport {
    /// Checks the report against the upload: same length, and every checksum it carries matches.
    pub fn verify(&self, bytes: u64, sha256: &str, xxh3: &str) -> Result<(), String> {
        if self.sha256.is_none() && self.xxh3.is_none() {
            return Err("staged report carries no checksum".into());
        }
        let sha_ok = self.sha256.as_deref().is_none_or(|s| s == sha256);
        let xxh_ok = self.xxh3.as_deref().is_none_or(|x| x == xxh3);
        if self.bytes == bytes && sha_ok && xxh_ok {
            return Ok(());
        }
        Err(format!(
            "staged copy differs: {} bytes (sha-256 {}, xxh3 {}), expected {bytes} bytes (sha-256 {sha256}, xxh3 {xxh3})",
            self.bytes,
            self.sha256.as_deref().unwrap_or("-"),
            self.xxh3.as_deref().unwrap_or("-"),
        ))
    }
}

impl StagedReport {
    /// Checks a report that must carry the SHA-256 of the whole upload (a resumable one, whose XXH3 no
    /// single process saw whole).
    pub fn verify_sha256(&self, bytes: u64, sha256: &str) -> Result<(), String> {
        match self.sha256.as_deref() {
            Some(s) if s == sha256 && self.bytes == bytes => Ok(()),
            Some(s) => Err(format!(
                "staged copy differs: {} bytes (sha-256 {s}), expected {bytes} bytes (sha-256 {sha256})",
                self.bytes
            )),
            None => Err("staged report carries no sha-256".into()),
        }
    }
}

/// XXH3-128 as the stream protocol writes it.
pub fn xxh3_hex(v: u128) -> String {
    format!("{v:032x}")
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
    fn verify_reports() {
        let r = StagedReport {
            bytes: 3,
            xxh3: Some("ab".into()),
            ..Default::default()
        };
        assert!(r.verify(3, "s", "ab").is_ok());
        assert!(r.verify(4, "s", "ab").is_err());
        assert!(r.verify(3, "s", "cd").is_err());
        assert!(StagedReport {
            bytes: 3,
            ..Default::default()
        }
        .verify(3, "s", "ab")
        .is_err());
        let r = StagedReport {
            bytes: 3,
            sha256: Some("s".into()),
            ..Default::default()
        };
        assert!(r.verify(3, "s", "x").is_ok());
        assert!(r.verify(3, "t", "x").is_err());
    }

    #[test]
    fn upload_ids() {
        assert!(is_valid_upload_id("0123456789abcdef0123456789abcdef"));
        assert!(!is_valid_upload_id("0123456789ABCDEF0123456789abcdef"));
        assert!(!is_valid_upload_id("../../etc/passwd"));
        assert!(!is_valid_upload_id(""));
    }
}
