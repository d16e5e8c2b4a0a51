//! The records kept in the metadata store.
//!
//! They are stored as JSON in both backends so the broadcaster can add fields without a
//! migration: unknown fields are ignored when reading, and new fields should carry
//! `#[serde(default)]` so records written by an older version still decode.

use serde::{Deserialize, Serialize};

/// The storage ring's membership, versioned so that concurrent broadcasters can
/// compare-and-swap it (see [`crate::MetaStore::put_layout`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RingLayout {
    /// Incremented by every change; the compare-and-swap key.
    pub version: u64,
    /// Storage nodes as `host:port`.
    pub nodes: Vec<String>,
    /// Virtual nodes per storage node.
    pub vnodes: u32,
    /// Copies of each blob, on distinct nodes.
    pub replication: usize,
}

/// A video uploaded through the web UI and transcoded to DASH.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VideoRecord {
    /// The uploaded file name without its extension; the key.
    pub id: String,
    /// One of [`VideoRecord::PROCESSING`], [`VideoRecord::READY`], [`VideoRecord::FAILED`].
    pub status: String,
    /// Creation time, milliseconds since the Unix epoch; lists are ordered by it, newest first.
    pub created_unix_ms: u64,
    /// Playback length once known.
    #[serde(default)]
    pub duration_ms: Option<u64>,
    /// The DASH files on the ring (`manifest.mpd`, `init-0.m4s`, ...).
    #[serde(default)]
    pub files: Vec<String>,
    /// Why processing failed, when it did.
    #[serde(default)]
    pub error: Option<String>,
}

impl VideoRecord {
    /// Uploaded, transcoding not finished.
    pub const PROCESSING: &'static str = "processing";
    /// Playable.
    pub const READY: &'static str = "ready";
    /// Transcoding failed; `error` says why.
    pub const FAILED: &'static str = "failed";
}

/// A raw upload stored on the ring as fixed-size chunks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    /// The upload's name; the key.
    pub name: String,
    /// Total size in bytes.
    pub size: u64,
    /// Hex SHA-256 of the whole upload.
    pub sha256: String,
    /// Bytes per chunk (the last one may be shorter).
    pub chunk_size: u64,
    /// Number of chunks.
    pub chunks: u64,
    /// Distinguishes the chunks of this upload from those of an older upload of the same name,
    /// so replacing a file never mixes chunks of two versions.
    pub upload_id: String,
    /// Creation time, milliseconds since the Unix epoch.
    pub created_unix_ms: u64,
}

/// Newest first, then by id, so the order is total and stable across backends.
pub(crate) fn sort_videos(videos: &mut [VideoRecord]) {
    videos.sort_by(|a, b| {
        b.created_unix_ms
            .cmp(&a.created_unix_ms)
            .then_with(|| a.id.cmp(&b.id))
    });
}

/// By name.
pub(crate) fn sort_files(files: &mut [FileRecord]) {
    files.sort_by(|a, b| a.name.cmp(&b.name));
}

pub(crate) fn to_json<T: Serialize>(value: &T) -> Vec<u8> {
    // Serialising these plain structs cannot fail (no maps with non-string keys, no custom
    // serialisers), so a failure would be a programming error.
    serde_json::to_vec(value).expect("metadata records always serialise")
}

pub(crate) fn from_json<T: for<'de> Deserialize<'de>>(
    what: &str,
    key: &str,
    bytes: &[u8],
) -> Result<T, crate::MetaError> {
    serde_json::from_slice(bytes)
        .map_err(|e| crate::MetaError::Corrupt(format!("{what} {key:?}: {e}")))
}

/// Decodes a record that was just replaced or deleted. The write has already happened, so an
/// undecodable old record is logged rather than turned into an error that would make the
/// caller believe the write failed; the cost is that the old chunks are not cleaned up.
pub(crate) fn previous_file(name: &str, bytes: &[u8]) -> Option<FileRecord> {
    match from_json("file", name, bytes) {
        Ok(f) => Some(f),
        Err(e) => {
            tracing::warn!(error = %e, "replaced file record was unreadable; its chunks are left behind");
            None
        }
    }
}
