//! The trait both backends implement.

use async_trait::async_trait;

use std::time::Duration;

use crate::{
    FileRecord, MetaError, ResumableUpload, RingLayout, TokenRecord, UploadLease, VideoRecord,
};

/// The broadcaster's metadata: the ring layout, videos and raw uploads on the ring, and API tokens.
///
/// Every write that can race between broadcasters is either a create-if-absent
/// ([`MetaError::AlreadyExists`]) or a compare-and-swap ([`MetaError::Conflict`]); plain
/// replacements (`put_*`) are for records a single request owns once it created them.
#[async_trait]
pub trait MetaStore: Send + Sync + std::fmt::Debug {
    /// The stored ring layout, `None` before the first one is written.
    async fn get_layout(&self) -> Result<Option<RingLayout>, MetaError>;

    /// Stores `layout` if the stored layout's version is `expected_version` (`None`: no layout
    /// stored yet). Otherwise [`MetaError::Conflict`] and nothing changes.
    async fn put_layout(
        &self,
        expected_version: Option<u64>,
        layout: &RingLayout,
    ) -> Result<(), MetaError>;

    /// Stores a new video; [`MetaError::AlreadyExists`] if the id is taken.
    async fn create_video(&self, video: &VideoRecord) -> Result<(), MetaError>;

    /// Stores `video`, replacing any record with the same id (creating it if absent).
    async fn put_video(&self, video: &VideoRecord) -> Result<(), MetaError>;

    /// The video with this id.
    async fn get_video(&self, id: &str) -> Result<Option<VideoRecord>, MetaError>;

    /// All videos, newest first (`created_unix_ms` descending), then by id.
    async fn list_videos(&self) -> Result<Vec<VideoRecord>, MetaError>;

    /// Deletes the video; whether it existed.
    async fn delete_video(&self, id: &str) -> Result<bool, MetaError>;

    /// Stores `file`, replacing any record with the same name; returns the replaced record so the
    /// caller can delete its chunks (`None` if there was none, or it was identical to `file`).
    async fn put_file(&self, file: &FileRecord) -> Result<Option<FileRecord>, MetaError>;

    /// Stores a new file record; [`MetaError::AlreadyExists`] if the name is taken.
    async fn create_file(&self, file: &FileRecord) -> Result<(), MetaError>;

    /// The file record with this name.
    async fn get_file(&self, name: &str) -> Result<Option<FileRecord>, MetaError>;

    /// All file records, by name.
    async fn list_files(&self) -> Result<Vec<FileRecord>, MetaError>;

    /// Deletes the file record; returns it if it existed.
    async fn delete_file(&self, name: &str) -> Result<Option<FileRecord>, MetaError>;

    /// Creates or renews (replaces) a live upload's lease.
    async fn put_lease(&self, lease: &UploadLease) -> Result<(), MetaError>;

    /// Removes a lease; absent is fine.
    async fn delete_lease(&self, id: &str) -> Result<(), MetaError>;

    /// Every stored lease, lapsed ones included (the caller compares `expires_unix_ms` with its clock).
    async fn list_leases(&self) -> Result<Vec<UploadLease>, MetaError>;

    /// Creates or replaces a resumable upload's record.
    async fn put_resumable(&self, upload: &ResumableUpload) -> Result<(), MetaError>;

    /// Replaces `old` with `new` only if the stored record is still exactly `old` (compare-and-swap);
    /// `Ok(false)` when another writer changed or removed it meanwhile.
    async fn replace_resumable(
        &self,
        old: &ResumableUpload,
        new: &ResumableUpload,
    ) -> Result<bool, MetaError>;

    /// The resumable upload with this id.
    async fn get_resumable(&self, id: &str) -> Result<Option<ResumableUpload>, MetaError>;

    /// Removes a resumable upload's record; absent is fine.
    async fn delete_resumable(&self, id: &str) -> Result<(), MetaError>;

    /// Every resumable upload record, by id.
    async fn list_resumable(&self) -> Result<Vec<ResumableUpload>, MetaError>;

    /// Takes the named lock for `holder` until `ttl` from now when it is free, lapsed, or already held by
    /// `holder` (then it is renewed). `Ok(true)` when `holder` holds it afterwards, `Ok(false)` when
    /// another holder does. Atomic across processes sharing the store (compare-and-swap), so of several
    /// broadcasters racing for it exactly one wins.
    async fn try_lock(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool, MetaError>;

    /// Releases the named lock if `holder` holds it; otherwise does nothing.
    async fn unlock(&self, name: &str, holder: &str) -> Result<(), MetaError>;

    /// Stores a new token; [`MetaError::AlreadyExists`] if its id or its hash is taken (atomic across
    /// processes: of several creates racing for one id or one hash exactly one wins, and a refused
    /// create leaves nothing behind).
    async fn create_token(&self, token: &TokenRecord) -> Result<(), MetaError>;

    /// The token whose secret hashes to `hash` (hex SHA-256), expired ones included (the caller
    /// compares `expires_unix_ms` with its clock).
    async fn get_token_by_hash(&self, hash: &str) -> Result<Option<TokenRecord>, MetaError>;

    /// All tokens, oldest first (`created_unix_ms`), then by id.
    async fn list_tokens(&self) -> Result<Vec<TokenRecord>, MetaError>;

    /// Deletes a token; whether it existed. After this returns, [`MetaStore::get_token_by_hash`] no
    /// longer finds it (on any handle on the same store).
    async fn delete_token(&self, id: &str) -> Result<bool, MetaError>;

    /// Whether the store answers now (for etcd: a quorum read succeeds).
    async fn health(&self) -> Result<(), MetaError>;
}
