//! The records kept in the metadata store.
//!
//! They are stored as JSON in both backends so the broadcaster can add fields without a
//! migration: unknown fields are ignored when reading, and new fields should carry
//! `#[serde(default)]` so records written by an older version still decode.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

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
    /// Each member's identity (parallel to `nodes`): the id a storage node keeps in its data directory
    /// and proves on request. Placement hashes the identity, so an address can change without moving
    /// data. Empty only in layouts written before identities existed.
    #[serde(default)]
    pub ids: Vec<String>,
    /// The membership a migration in progress is moving to: while it is set, writers place blobs on the
    /// owners under both memberships, so nothing written during the copy is missed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<Membership>,
}

/// A set of ring members: addresses and identities, in parallel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    /// Storage nodes as `host:port` or `https://host:port`.
    pub nodes: Vec<String>,
    /// Their identities, same order.
    pub ids: Vec<String>,
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
    /// The digest of every file in `files` (see `common::blob_digest`: windowed since issue 11, a plain
    /// SHA-256 before), recorded when the upload committed; every read from the ring is checked against
    /// it, so no storage node can alter what a viewer receives.
    #[serde(default)]
    pub digests: BTreeMap<String, String>,
    /// While `processing`: percent of the source transcoded so far, as the transcoder last reported it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress_percent: Option<u8>,
    /// The upload whose transcode writes this record, once the dash reader took it over at commit: a
    /// transcode resumed after a restart goes on only while the record is still its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload: Option<String>,
}

impl VideoRecord {
    /// Uploaded, transcoding not finished.
    pub const PROCESSING: &'static str = "processing";
    /// Playable.
    pub const READY: &'static str = "ready";
    /// Transcoding failed; `error` says why.
    pub const FAILED: &'static str = "failed";

    /// Whether a player can start on it: `ready`, or still `processing` with its manifest, an init segment
    /// and a first media segment stored (the rest is waited for as it is transcoded).
    pub fn is_watchable(&self) -> bool {
        let has = |prefix: &str| self.files.iter().any(|f| f.starts_with(prefix));
        self.status == Self::READY
            || (self.status == Self::PROCESSING
                && self.files.iter().any(|f| f == "manifest.mpd")
                && has("init-")
                && has("chunk-"))
    }
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
    /// The digest of each chunk (see `common::blob_digest`), recorded at commit; every chunk read back is
    /// checked against it.
    #[serde(default)]
    pub chunk_sha256: Vec<String>,
}

/// A live upload's claim on the ring blobs it is writing: the housekeeping sweep never removes a blob
/// under one of `prefixes` (blob ids: `raw.{upload id}`, a video id) while the lease is live. The holder
/// renews it while the upload runs; a holder that died stops renewing and the lease lapses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadLease {
    /// The upload id; the key.
    pub id: String,
    /// Blob ids (the part of a blob key before `/`) this upload writes.
    pub prefixes: Vec<String>,
    /// Which broadcaster process holds it (for logs).
    pub holder: String,
    /// Until when the lease holds, milliseconds since the Unix epoch, by the holder's clock.
    pub expires_unix_ms: u64,
}

/// A resumable upload (tus / IETF draft) between its creation and its end: everything a broadcaster needs to
/// take it up again after a restart. `offset` only grows, and only once the bytes below it are durably
/// staged on enough targets to meet the quorum.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResumableUpload {
    /// 32 lowercase hex digits; the key, and the stream-protocol upload id on every target.
    pub id: String,
    /// The validated name the upload commits under.
    pub name: String,
    /// Whether a transcoding target must make a video of it.
    pub video: bool,
    /// The token that created it (its id), if auth is on; only it may touch the upload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Announced total length; `None` while deferred.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub length: Option<u64>,
    /// Bytes durably staged on a quorum of targets.
    pub offset: u64,
    /// SHA-256 state of the bytes below `offset` (see the broadcaster's resumable digest), hex.
    pub sha256_state: String,
    /// Per target (by label): `None` while it holds every byte below `offset`, else why it dropped out.
    pub targets: Vec<(String, Option<String>)>,
    /// The ring's progress: each written chunk's SHA-256; the last one may be a partial chunk.
    #[serde(default)]
    pub ring_chunks: Vec<String>,
    /// `open`, `committed` or `failed`.
    pub state: String,
    /// The JSON summary once the upload ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    /// Creation time, milliseconds since the Unix epoch.
    pub created_unix_ms: u64,
    /// When the upload and everything it staged is removed, milliseconds since the Unix epoch.
    pub expires_unix_ms: u64,
}

/// An API token: only the SHA-256 of its secret is stored, so the store never holds a usable token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// Public id (shown in listings, used to revoke). The key.
    pub id: String,
    /// Who or what it is for.
    pub name: String,
    /// Hex SHA-256 of the token's secret; unique.
    pub hash: String,
    /// Rights: any of "read", "upload", "delete", "admin".
    pub scopes: Vec<String>,
    /// If set, the token only covers names (and video ids) starting with this.
    #[serde(default)]
    pub prefix: Option<String>,
    /// Creation time, ms since the Unix epoch.
    pub created_unix_ms: u64,
    /// Expiry, ms since the Unix epoch; None = never.
    #[serde(default)]
    pub expires_unix_ms: Option<u64>,
}

/// A named lock's stored value (see [`crate::MetaStore::try_lock`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct LockRecord {
    pub holder: String,
    /// Milliseconds since the Unix epoch, by the clock of the process that took or renewed it.
    pub expires_unix_ms: u64,
}

impl LockRecord {
    pub(crate) fn new(holder: &str, now_unix_ms: u64, ttl: Duration) -> Self {
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        LockRecord {
            holder: holder.to_string(),
            expires_unix_ms: now_unix_ms.saturating_add(ttl_ms),
        }
    }

    /// Whether this lock keeps `holder` out at `now_unix_ms`: held by someone else and not lapsed.
    pub(crate) fn bars(&self, holder: &str, now_unix_ms: u64) -> bool {
        self.holder != holder && self.expires_unix_ms > now_unix_ms
    }
}

/// This process's wall clock in milliseconds since the Unix epoch; a clock set before 1970 reads
/// as 0, which only makes every stored lock look live until it is corrected.
pub(crate) fn unix_ms_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
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

/// By id.
pub(crate) fn sort_leases(leases: &mut [UploadLease]) {
    leases.sort_by(|a, b| a.id.cmp(&b.id));
}

/// Oldest first, then by id.
pub(crate) fn sort_tokens(tokens: &mut [TokenRecord]) {
    tokens.sort_by(|a, b| {
        a.created_unix_ms
            .cmp(&b.created_unix_ms)
            .then_with(|| a.id.cmp(&b.id))
    });
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
