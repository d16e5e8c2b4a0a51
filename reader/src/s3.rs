//! The S3 sink: each streamed upload becomes an S3 multipart upload, completed on commit.
//!
//! Phase 1 (`stage`) creates the multipart upload under `READER_S3_PREFIX` + name, cuts the body into parts
//! and uploads them while the body streams; the parts in flight plus the one being filled never exceed
//! `READER_S3_CONCURRENCY`, and the body is read only as fast as parts leave, so memory stays under
//! concurrency × part size whatever the upload's size.
//! The report (length, XXH3-128) goes out once every part is stored: the bytes are durable in S3 but no
//! object exists yet. Phase 2 (`commit`) completes the multipart upload, which makes the object appear
//! atomically. Everything else (abort, a body that fails, a client that goes away, the staging TTL, shutdown)
//! aborts the multipart upload, so no parts are left behind.
//!
//! S3 allows 10,000 parts per upload. When the request announces its length the part size is chosen to fit;
//! otherwise it starts at `READER_S3_PART_SIZE` and doubles every [`GROW_EVERY`] parts ([`PartPlan`]), which
//! fits S3's largest object (5 TiB) from the smallest allowed part size.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::{Buf, Bytes};
use common::protocol::StagedReport;
use futures_util::stream::FuturesUnordered;
use futures_util::{Stream, StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path as Key;
use object_store::{
    ClientOptions, GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig,
};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

mod resumable;

use crate::config::{S3Config, MAX_S3_PART_SIZE};
use crate::disk::Committed;
use crate::error::ReaderError;

/// Most parts one multipart upload may have.
pub const MAX_PARTS: usize = 10_000;
/// Largest object S3 stores.
pub const MAX_OBJECT_BYTES: u64 = 5 << 40;
/// With no announced length, the part size doubles after this many parts: from 5 MiB parts, 10,000 parts
/// then hold more than 5 TiB (doubling every 1,000 parts would top out at 4.9 TiB).
pub const GROW_EVERY: usize = 900;

/// How long one S3 request may take (a part of the largest size over a slow link included).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(600);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long shutdown waits for aborts still in flight.
const SHUTDOWN_ABORT_WAIT: Duration = Duration::from_secs(20);

/// Sizes of the parts of one upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartPlan {
    base: usize,
    /// Set when the length is known: every part has this size (the last one the rest).
    fixed: Option<usize>,
}

impl PartPlan {
    /// Parts of `base` bytes, growing for long streams; or, for a stream of `len` announced bytes, parts of
    /// one size chosen so that `len` fits in [`MAX_PARTS`].
    pub fn new(base: usize, len: Option<u64>) -> Self {
        let fixed = len.map(|len| {
            let min = len.div_ceil(MAX_PARTS as u64);
            // Rounded up to a MiB: tidy sizes, same count.
            let min = usize::try_from(min.div_ceil(1 << 20) << 20).unwrap_or(MAX_S3_PART_SIZE);
            min.clamp(base, MAX_S3_PART_SIZE.max(base))
        });
        Self { base, fixed }
    }

    /// Size of part `idx` (0-based).
    pub fn size(&self, idx: usize) -> usize {
        match self.fixed {
            Some(size) => size,
            None => {
                let doublings = u32::try_from(idx / GROW_EVERY).unwrap_or(u32::MAX).min(20);
                self.base
                    .saturating_mul(1 << doublings)
                    .min(MAX_S3_PART_SIZE.max(self.base))
            }
        }
    }
}

/// Cuts a stream of chunks into parts of the sizes a [`PartPlan`] gives.
///
/// Each part is one anonymous memory mapping: its pages are touched only as it fills, and the mapping goes
/// back to the OS as soon as the part is uploaded. Large heap blocks would instead stay with the allocator
/// (glibc keeps freed blocks of this size per thread arena), which doubled the resident set in tests.
#[derive(Debug)]
struct Splitter {
    plan: PartPlan,
    /// Index of the part being filled.
    idx: usize,
    buf: Option<memmap2::MmapMut>,
    len: usize,
}

impl Splitter {
    fn new(plan: PartPlan) -> Self {
        Self {
            plan,
            idx: 0,
            buf: None,
            len: 0,
        }
    }

    /// Appends `chunk`, handing each part it completes to `full` with its index.
    fn push(
        &mut self,
        mut chunk: Bytes,
        mut full: impl FnMut(usize, Bytes),
    ) -> std::io::Result<()> {
        while !chunk.is_empty() {
            let size = self.plan.size(self.idx);
            let buf = match &mut self.buf {
                Some(b) => b,
                None => self.buf.insert(memmap2::MmapMut::map_anon(size)?),
            };
            let take = (size - self.len).min(chunk.len());
            buf[self.len..self.len + take].copy_from_slice(&chunk[..take]);
            self.len += take;
            chunk.advance(take);
            if self.len == size {
                full(self.idx, self.take_part());
                self.idx += 1;
            }
        }
        Ok(())
    }

    fn take_part(&mut self) -> Bytes {
        let len = std::mem::take(&mut self.len);
        match self.buf.take() {
            Some(map) => Bytes::from_owner(map).slice(..len),
            None => Bytes::new(),
        }
    }

    /// The last part: what is left, or an empty part when the stream was empty (S3 needs one part).
    fn finish(&mut self) -> Option<(usize, Bytes)> {
        let last = (self.idx == 0 || self.len > 0).then(|| (self.idx, self.take_part()));
        self.idx += 1;
        last
    }
}

/// A multipart upload whose parts are all stored, waiting for commit or abort.
#[derive(Debug)]
struct Staged {
    name: String,
    key: Key,
    upload_id: String,
    parts: Vec<PartId>,
    bytes: u64,
    xxh3: u128,
    since: Instant,
}

#[derive(Debug)]
enum Entry {
    /// The body is still streaming; cancelling the token makes the stage abort its upload.
    Staging {
        generation: u64,
        cancel: CancellationToken,
    },
    Staged(Staged),
}

/// Uploads streamed to an S3 bucket.
#[derive(Debug)]
pub struct S3Sink {
    store: Arc<AmazonS3>,
    prefix: String,
    part_size: usize,
    concurrency: usize,
    max_upload_bytes: Option<u64>,
    staging_ttl: Duration,
    uploads: Mutex<HashMap<String, Entry>>,
    /// Resumable uploads whose confirmed bytes are being sent as parts ahead of their end.
    early: Mutex<HashMap<String, resumable::Slot>>,
    generation: AtomicU64,
    /// Aborts started from `Drop` (a stage whose request went away), awaited at shutdown.
    aborts: TaskTracker,
    /// Cancelled at shutdown: stages still streaming abort their uploads.
    shutdown: CancellationToken,
}

/// Why the start-up check of the bucket failed, worded for an operator: which variable to look at.
fn describe_check_error(cfg: &S3Config, e: &object_store::Error) -> String {
    let detail = error_chain(e);
    let endpoint = cfg.endpoint_label();
    let bucket = &cfg.bucket;
    let has = |needles: &[&str]| needles.iter().any(|n| detail.contains(n));
    if matches!(e, object_store::Error::NotFound { .. }) || has(&["NoSuchBucket"]) {
        format!(
            "S3 bucket check failed: bucket `{bucket}` does not exist at READER_S3_ENDPOINT={endpoint} \
             (check READER_S3_BUCKET, or create the bucket) [{detail}]"
        )
    } else if matches!(
        e,
        object_store::Error::PermissionDenied { .. } | object_store::Error::Unauthenticated { .. }
    ) || has(&[
        "403 Forbidden",
        "401 Unauthorized",
        "SignatureDoesNotMatch",
        "InvalidAccessKeyId",
        "AccessDenied",
    ]) {
        format!(
            "S3 bucket check failed: credentials refused for bucket `{bucket}` at READER_S3_ENDPOINT={endpoint} \
             (check READER_S3_ACCESS_KEY_ID={} and READER_S3_SECRET_ACCESS_KEY) [{detail}]",
            cfg.access_key_id
        )
    } else if has(&["Connect", "connect", "dns error", "timed out"]) {
        format!(
            "S3 bucket check failed: cannot reach READER_S3_ENDPOINT={endpoint} (bucket `{bucket}`) [{detail}]"
        )
    } else {
        format!(
            "S3 bucket check failed: cannot list bucket `{bucket}` (READER_S3_BUCKET) at READER_S3_ENDPOINT={endpoint} [{detail}]"
        )
    }
}

/// An error with its sources, so "connection refused" is not hidden three levels down.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !out.contains(&s_text) {
            out.push_str(": ");
            out.push_str(&s_text);
        }
        source = s.source();
    }
    out
}

fn s3_error(what: &str, e: &object_store::Error) -> ReaderError {
    ReaderError::S3(format!("{what}: {}", error_chain(e)))
}

fn build_store(cfg: &S3Config, retry: RetryConfig) -> Result<AmazonS3, ReaderError> {
    let mut options = ClientOptions::new()
        .with_timeout(REQUEST_TIMEOUT)
        .with_connect_timeout(CONNECT_TIMEOUT);
    let mut builder = AmazonS3Builder::new()
        .with_bucket_name(&cfg.bucket)
        .with_region(&cfg.region)
        .with_access_key_id(&cfg.access_key_id)
        .with_secret_access_key(&cfg.secret_access_key)
        .with_retry(retry);
    match &cfg.endpoint {
        Some(endpoint) => {
            // S3-compatible servers are addressed path-style: http://host:port/bucket/key.
            options = options.with_allow_http(endpoint.starts_with("http://"));
            builder = builder
                .with_endpoint(endpoint)
                .with_virtual_hosted_style_request(false);
        }
        None => {
            // AWS: virtual-hosted style, except for bucket names with dots (TLS names cannot match them).
            builder = builder.with_virtual_hosted_style_request(!cfg.bucket.contains('.'));
        }
    }
    builder
        .with_client_options(options)
        .build()
        .map_err(|e| ReaderError::S3(format!("S3 client: {e}")))
}

impl S3Sink {
    /// Connects to the bucket and checks it is there and the credentials work (a one-key listing under the
    /// prefix); the error names the variables to fix.
    pub async fn connect(
        cfg: &S3Config,
        max_upload_bytes: Option<u64>,
        staging_ttl: Duration,
    ) -> Result<Self, ReaderError> {
        let quick = RetryConfig {
            max_retries: 1,
            retry_timeout: Duration::from_secs(10),
            ..Default::default()
        };
        let probe = build_store(cfg, quick)?;
        let prefix = Key::parse(cfg.prefix.trim_end_matches('/')).ok();
        let check = async {
            let mut list = probe.list(prefix.as_ref());
            list.next().await.transpose()
        };
        match tokio::time::timeout(Duration::from_secs(30), check).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(ReaderError::S3(describe_check_error(cfg, &e))),
            Err(_) => {
                return Err(ReaderError::S3(format!(
                    "S3 bucket check failed: no answer within 30 s from READER_S3_ENDPOINT={} (READER_S3_BUCKET={})",
                    cfg.endpoint_label(),
                    cfg.bucket
                )))
            }
        }
        let store = build_store(cfg, RetryConfig::default())?;
        tracing::info!(
            bucket = %cfg.bucket, endpoint = %cfg.endpoint_label(), prefix = %cfg.prefix,
            part_size = cfg.part_size, concurrency = cfg.concurrency, "S3 bucket reachable"
        );
        Ok(Self {
            store: Arc::new(store),
            prefix: cfg.prefix.clone(),
            part_size: cfg.part_size,
            concurrency: cfg.concurrency,
            max_upload_bytes,
            staging_ttl,
            uploads: Mutex::new(HashMap::new()),
            early: Mutex::new(HashMap::new()),
            generation: AtomicU64::new(0),
            aborts: TaskTracker::new(),
            shutdown: CancellationToken::new(),
        })
    }

    fn uploads(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        // Entries are inserted and replaced whole, so a panic elsewhere cannot leave one half-written.
        self.uploads.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The object key of `name`.
    pub fn key(&self, name: &str) -> Result<Key, ReaderError> {
        common::name::validate_name(name)?;
        let raw = format!("{}{name}", self.prefix);
        // The prefix and the name were both checked, so this only fails on a combination S3 cannot name.
        Key::parse(&raw)
            .ok()
            .filter(|k| k.as_ref() == raw)
            .ok_or(ReaderError::BadName(common::name::NameError::BadChar(
                "characters S3 keys cannot hold here",
            )))
    }

    /// Phase 1: streams `body` into a new multipart upload and reports its length and XXH3-128 once every
    /// part is stored. `len` is the announced length, if any (it lets the part size fit the upload).
    pub async fn stage<S, E>(
        self: &Arc<Self>,
        id: &str,
        name: &str,
        len: Option<u64>,
        body: S,
    ) -> Result<StagedReport, ReaderError>
    where
        S: Stream<Item = Result<Bytes, E>>,
        E: std::fmt::Display,
    {
        if !common::protocol::is_valid_upload_id(id) {
            return Err(ReaderError::BadUploadId);
        }
        let key = self.key(name)?;
        if let Some(max) = self
            .max_upload_bytes
            .filter(|&m| len.is_some_and(|l| l > m))
        {
            return Err(ReaderError::TooLarge(max));
        }
        if len.is_some_and(|l| l > MAX_OBJECT_BYTES) {
            return Err(ReaderError::TooLarge(MAX_OBJECT_BYTES));
        }
        // Shutdown waits for this stage (and its abort, if it comes to that).
        let _running = self.aborts.token();
        let generation = self.generation.fetch_add(1, Ordering::Relaxed);
        let cancel = self.shutdown.child_token();
        {
            let mut uploads = self.uploads();
            if uploads.contains_key(id) {
                return Err(ReaderError::UploadIdTaken(id.to_owned()));
            }
            uploads.insert(
                id.to_owned(),
                Entry::Staging {
                    generation,
                    cancel: cancel.clone(),
                },
            );
        }
        let mut guard = StageGuard {
            sink: self.clone(),
            id: id.to_owned(),
            generation,
            key: key.clone(),
            upload_id: None,
            create_rx: None,
            in_flight: FuturesUnordered::new(),
            armed: true,
        };
        let result = self
            .stream_parts(&mut guard, &key, len, body, &cancel)
            .await;
        let (upload_id, parts, bytes, xxh3) = match result {
            Ok(r) => r,
            Err(e) => {
                guard.abort().await;
                return Err(e);
            }
        };
        let report = StagedReport {
            bytes,
            xxh3: Some(common::protocol::xxh3_hex(xxh3)),
            ..Default::default()
        };
        let staged = Staged {
            name: name.to_owned(),
            key,
            upload_id,
            parts,
            bytes,
            xxh3,
            since: Instant::now(),
        };
        let kept = {
            let mut uploads = self.uploads();
            match uploads.get(id) {
                Some(Entry::Staging { generation: g, .. }) if *g == generation => {
                    uploads.insert(id.to_owned(), Entry::Staged(staged));
                    true
                }
                // Aborted while the last parts were uploading.
                _ => false,
            }
        };
        if !kept {
            guard.abort().await;
            return Err(ReaderError::Body("upload aborted while staging".into()));
        }
        guard.armed = false;
        count("distributary_reader_bytes_received_total", bytes);
        Ok(report)
    }

    /// Creates the multipart upload and streams the body into it; returns the upload id, the parts, the
    /// length and the XXH3-128.
    async fn stream_parts<S, E>(
        &self,
        guard: &mut StageGuard,
        key: &Key,
        len: Option<u64>,
        body: S,
        cancel: &CancellationToken,
    ) -> Result<(String, Vec<PartId>, u64, u128), ReaderError>
    where
        S: Stream<Item = Result<Bytes, E>>,
        E: std::fmt::Display,
    {
        let aborted = || ReaderError::Body("upload aborted while staging".into());
        // Created in a task of its own, answering through a channel the guard closes when the stage ends
        // early: then either the guard finds the answer and aborts that upload, or the task cannot deliver it
        // and aborts it itself. Either way an upload the server made is never lost.
        let (tx, rx) = tokio::sync::oneshot::channel();
        let (store, task_key) = (self.store.clone(), key.clone());
        self.aborts.spawn(async move {
            let created = store.create_multipart(&task_key).await;
            if let Err(Ok(upload_id)) = tx.send(created) {
                let _ = store.abort_multipart(&task_key, &upload_id).await;
            }
        });
        let rx = guard.create_rx.insert(rx);
        let created = tokio::select! {
            r = rx => r,
            _ = cancel.cancelled() => return Err(aborted()),
        };
        guard.create_rx = None;
        let upload_id = created
            .map_err(|_| ReaderError::S3("the S3 client went away".into()))?
            .map_err(|e| s3_error("cannot start the S3 upload", &e))?;
        guard.upload_id = Some(upload_id.clone());

        let mut splitter = Splitter::new(PartPlan::new(self.part_size, len));
        let mut ready: std::collections::VecDeque<(usize, Bytes)> = Default::default();
        let mut parts: Vec<Option<PartId>> = Vec::new();
        let mut hasher = xxhash_rust::xxh3::Xxh3::new();
        let mut total = 0u64;
        let mut ended = false;
        let limit = self
            .max_upload_bytes
            .unwrap_or(u64::MAX)
            .min(MAX_OBJECT_BYTES);
        futures_util::pin_mut!(body);
        loop {
            while guard.in_flight.len() < self.concurrency {
                let Some((idx, data)) = ready.pop_front() else {
                    break;
                };
                if idx >= MAX_PARTS {
                    // Unreachable with the part plans above; S3 would refuse part 10,001.
                    return Err(ReaderError::TooLarge(MAX_OBJECT_BYTES));
                }
                guard.in_flight.push(tokio::spawn(put_part(
                    self.store.clone(),
                    key.clone(),
                    upload_id.clone(),
                    idx,
                    data,
                )));
            }
            if ended && ready.is_empty() && guard.in_flight.is_empty() {
                break;
            }
            // Read on only while a slot is free for the part being filled: parts in flight plus the one
            // filling never exceed the concurrency, so memory stays under concurrency × part size.
            let want_body = !ended && ready.is_empty() && guard.in_flight.len() < self.concurrency;
            tokio::select! {
                _ = cancel.cancelled() => return Err(aborted()),
                Some(joined) = guard.in_flight.next(), if !guard.in_flight.is_empty() => {
                    let (idx, r) = joined
                        .map_err(|e| ReaderError::S3(format!("S3 part upload task: {e}")))?;
                    let part = r.map_err(|e| s3_error(&format!("S3 part {}", idx + 1), &e))?;
                    if parts.len() <= idx {
                        parts.resize(idx + 1, None);
                    }
                    parts[idx] = Some(part);
                }
                chunk = body.next(), if want_body => match chunk {
                    Some(Ok(chunk)) => {
                        total += chunk.len() as u64;
                        if total > limit {
                            return Err(ReaderError::TooLarge(limit));
                        }
                        hasher.update(&chunk);
                        splitter.push(chunk, |idx, data| ready.push_back((idx, data)))?;
                    }
                    Some(Err(e)) => return Err(ReaderError::Body(e.to_string())),
                    None => {
                        ended = true;
                        ready.extend(splitter.finish());
                    }
                },
            }
        }
        let parts = parts
            .into_iter()
            .collect::<Option<Vec<PartId>>>()
            .ok_or_else(|| ReaderError::S3("a part of the upload is missing".into()))?;
        Ok((upload_id, parts, total, hasher.digest128()))
    }

    /// Phase 2: completes the multipart upload; the object appears under its key.
    pub async fn commit(&self, id: &str) -> Result<Committed, ReaderError> {
        if !common::protocol::is_valid_upload_id(id) {
            return Err(ReaderError::BadUploadId);
        }
        let staged = {
            let mut uploads = self.uploads();
            match uploads.remove(id) {
                Some(Entry::Staged(s)) => s,
                Some(other) => {
                    // Still streaming: not committable; put it back untouched.
                    uploads.insert(id.to_owned(), other);
                    return Err(ReaderError::UnknownUpload(id.to_owned()));
                }
                None => return Err(ReaderError::UnknownUpload(id.to_owned())),
            }
        };
        let result = self
            .store
            .complete_multipart(&staged.key, &staged.upload_id, staged.parts.clone())
            .await;
        if let Err(e) = result {
            tracing::warn!(upload = %id, key = %staged.key, error = %e, "completing the S3 upload failed; aborting it");
            self.abort_upload(&staged.key, &staged.upload_id).await;
            return Err(s3_error("cannot complete the S3 upload", &e));
        }
        count("distributary_reader_commits_total", 1);
        Ok(Committed {
            name: staged.name,
            bytes: staged.bytes,
            xxh3: common::protocol::xxh3_hex(staged.xxh3),
        })
    }

    /// Discards upload `id`: a staged one is aborted now, one still streaming stops and aborts itself.
    /// Returns whether there was one.
    pub async fn abort(&self, id: &str) -> Result<bool, ReaderError> {
        if !common::protocol::is_valid_upload_id(id) {
            return Err(ReaderError::BadUploadId);
        }
        let early = self.abort_early(id).await;
        let entry = self.uploads().remove(id);
        match entry {
            Some(Entry::Staging { cancel, .. }) => {
                cancel.cancel();
                count("distributary_reader_aborts_total", 1);
                Ok(true)
            }
            Some(Entry::Staged(s)) => {
                count("distributary_reader_aborts_total", 1);
                self.abort_upload(&s.key, &s.upload_id).await;
                Ok(true)
            }
            None => Ok(early),
        }
    }

    /// Stages and commits at once: the seed's single-request contract.
    pub async fn store<S, E>(
        self: &Arc<Self>,
        name: &str,
        body: S,
    ) -> Result<Committed, ReaderError>
    where
        S: Stream<Item = Result<Bytes, E>>,
        E: std::fmt::Display,
    {
        let id = uuid::Uuid::new_v4().simple().to_string();
        self.stage(&id, name, None, body).await?;
        self.commit(&id).await
    }

    async fn abort_upload(&self, key: &Key, upload_id: &str) {
        match self.store.abort_multipart(key, &upload_id.to_owned()).await {
            Ok(()) => tracing::debug!(%key, "S3 multipart upload aborted"),
            Err(e) => tracing::warn!(
                %key, upload_id, error = %error_chain(&e),
                "cannot abort the S3 multipart upload; a bucket lifecycle rule (AbortIncompleteMultipartUpload) will remove its parts"
            ),
        }
    }

    /// Aborts staged uploads nobody committed or aborted within the staging TTL.
    pub async fn sweep(&self) {
        self.sweep_early().await;
        let ttl = self.staging_ttl;
        let expired: Vec<Staged> = {
            let mut uploads = self.uploads();
            let ids: Vec<String> = uploads
                .iter()
                .filter(|(_, e)| matches!(e, Entry::Staged(s) if s.since.elapsed() > ttl))
                .map(|(id, _)| id.clone())
                .collect();
            ids.iter()
                .filter_map(|id| match uploads.remove(id) {
                    Some(Entry::Staged(s)) => Some(s),
                    _ => None,
                })
                .collect()
        };
        for s in expired {
            tracing::warn!(name = %s.name, key = %s.key, "staged S3 upload expired uncommitted; aborting it");
            self.abort_upload(&s.key, &s.upload_id).await;
        }
    }

    /// Runs [`Self::sweep`] periodically until `stop`.
    pub fn spawn_sweeper(self: Arc<Self>, stop: CancellationToken) {
        let period =
            (self.staging_ttl / 4).clamp(Duration::from_millis(100), Duration::from_secs(60));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tick.tick() => self.sweep().await,
                }
            }
        });
    }

    /// At process exit: stops stages still streaming and aborts every upload not committed, so nothing is
    /// left in the bucket but committed objects.
    pub async fn shutdown(&self) {
        self.shutdown.cancel();
        for id in self.early_ids() {
            self.abort_early(&id).await;
        }
        let staged: Vec<Staged> = self
            .uploads()
            .drain()
            .filter_map(|(_, e)| match e {
                Entry::Staged(s) => Some(s),
                // Stages still streaming see the cancellation and abort their own uploads.
                Entry::Staging { cancel, .. } => {
                    cancel.cancel();
                    None
                }
            })
            .collect();
        let n = staged.len();
        let aborts = staged
            .iter()
            .map(|s| self.abort_upload(&s.key, &s.upload_id));
        futures_util::future::join_all(aborts).await;
        if n > 0 {
            tracing::info!(aborted = n, "aborted staged S3 uploads at shutdown");
        }
        self.aborts.close();
        if tokio::time::timeout(SHUTDOWN_ABORT_WAIT, self.aborts.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                "S3 aborts still running at exit; a bucket lifecycle rule will remove their parts"
            );
        }
    }

    /// `GET`/`HEAD /files/{name}`: streams a committed object from the bucket (200, 206 for one `Range`,
    /// 304/416 as for disk files, 404 when absent).
    pub async fn serve(&self, name: &str, method: &Method, headers: &HeaderMap) -> Response {
        let key = match self.key(name) {
            Ok(k) => k,
            Err(e) => return e.into_response(),
        };
        let meta = match self.store.head(&key).await {
            Ok(m) => m,
            Err(object_store::Error::NotFound { .. }) => {
                return StatusCode::NOT_FOUND.into_response()
            }
            Err(e) => return s3_error("cannot read the object", &e).into_response(),
        };
        let etag = match meta.e_tag.as_deref() {
            Some(t) if t.starts_with('"') => t.to_owned(),
            Some(t) => format!("\"{t}\""),
            None => format!("\"{:x}-{}\"", meta.size, meta.last_modified.timestamp()),
        };
        let (status, out, start, count) =
            match common::serve::prepare(headers, &etag, meta.size, "application/octet-stream") {
                common::serve::Prepared::Done(resp) => return *resp,
                common::serve::Prepared::Send {
                    status,
                    headers,
                    start,
                    count,
                } => (status, headers, start, count),
            };
        if method == Method::HEAD || count == 0 {
            return (status, out).into_response();
        }
        let options = GetOptions {
            range: Some(GetRange::Bounded(start..start + count)),
            // The object read must be the one measured above.
            if_match: meta.e_tag.clone(),
            ..Default::default()
        };
        let result = match self.store.get_opts(&key, options).await {
            Ok(r) => r,
            Err(object_store::Error::NotFound { .. }) => {
                return StatusCode::NOT_FOUND.into_response()
            }
            Err(e) => return s3_error("cannot read the object", &e).into_response(),
        };
        let stream = result
            .into_stream()
            .map_err(|e| std::io::Error::other(error_chain(&e)));
        (status, out, Body::from_stream(stream)).into_response()
    }
}

/// The same counters as the disk sink, bumped outside any `.await` (the macros' temporaries are not `Send`).
fn count(name: &'static str, n: u64) {
    metrics::counter!(name).increment(n);
}

/// Uploads part `idx`; resolves to its index and result so parts may finish in any order.
async fn put_part(
    store: Arc<AmazonS3>,
    key: Key,
    upload_id: String,
    idx: usize,
    data: Bytes,
) -> (usize, object_store::Result<PartId>) {
    let r = store
        .put_part(&key, &upload_id, idx, PutPayload::from_bytes(data))
        .await;
    (idx, r)
}

/// A part upload running as its own task, so that it finishes (or fails) as a whole even when the stage
/// that started it goes away: an abort then runs only after it, and no part can land after the abort.
type PartTask = tokio::task::JoinHandle<(usize, object_store::Result<PartId>)>;

/// Aborts the multipart upload of a stage that did not finish, even when its request future is dropped
/// (the client went away): then the abort runs as a task the sink's shutdown waits for.
#[derive(Debug)]
struct StageGuard {
    sink: Arc<S3Sink>,
    id: String,
    generation: u64,
    key: Key,
    upload_id: Option<String>,
    /// The answer of the task creating the multipart upload, while it is awaited.
    create_rx: Option<CreateRx>,
    in_flight: FuturesUnordered<PartTask>,
    armed: bool,
}

type CreateRx = tokio::sync::oneshot::Receiver<object_store::Result<String>>;

impl StageGuard {
    /// Stops waiting for the upload's creation; an upload id that arrived meanwhile is kept for the abort.
    fn close_create(&mut self) {
        if let Some(mut rx) = self.create_rx.take() {
            rx.close();
            if let Ok(Ok(upload_id)) = rx.try_recv() {
                self.upload_id = Some(upload_id);
            }
        }
    }

    fn forget_entry(&self) {
        let mut uploads = self.sink.uploads();
        if matches!(uploads.get(&self.id), Some(Entry::Staging { generation, .. }) if *generation == self.generation)
        {
            uploads.remove(&self.id);
        }
    }

    async fn abort(&mut self) {
        self.armed = false;
        self.close_create();
        self.forget_entry();
        let in_flight = std::mem::take(&mut self.in_flight);
        if let Some(upload_id) = self.upload_id.take() {
            drain_then_abort(&self.sink, &self.key, &upload_id, in_flight).await;
        }
    }
}

/// Waits for the parts still uploading, then aborts the multipart upload.
async fn drain_then_abort(
    sink: &S3Sink,
    key: &Key,
    upload_id: &str,
    mut in_flight: FuturesUnordered<PartTask>,
) {
    while in_flight.next().await.is_some() {}
    sink.abort_upload(key, upload_id).await;
}

impl Drop for StageGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        self.close_create();
        self.forget_entry();
        if let Some(upload_id) = self.upload_id.take() {
            let sink = self.sink.clone();
            let key = self.key.clone();
            let in_flight = std::mem::take(&mut self.in_flight);
            tracing::info!(upload = %self.id, %key, "stage request dropped; aborting its S3 upload");
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                let task =
                    async move { drain_then_abort(&sink, &key, &upload_id, in_flight).await };
                self.sink.aborts.spawn_on(task, &handle);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MIN_S3_PART_SIZE;

    /// Walks a plan over a stream of `total` bytes: returns the part sizes.
    fn parts_for(plan: PartPlan, total: u64) -> Vec<u64> {
        let mut sizes = Vec::new();
        let mut left = total;
        while left > 0 {
            let size = (plan.size(sizes.len()) as u64).min(left);
            sizes.push(size);
            left -= size;
        }
        sizes
    }

    #[test]
    fn five_tib_of_unknown_length_fits_in_ten_thousand_parts() {
        for base in [
            MIN_S3_PART_SIZE,
            MIN_S3_PART_SIZE + 12_345,
            8 << 20,
            64 << 20,
            MAX_S3_PART_SIZE,
        ] {
            let plan = PartPlan::new(base, None);
            let sizes = parts_for(plan, MAX_OBJECT_BYTES);
            assert!(
                sizes.len() <= MAX_PARTS,
                "base {base}: {} parts for 5 TiB",
                sizes.len()
            );
            let (last, rest) = sizes.split_last().expect("parts");
            assert!(*last > 0);
            for s in rest {
                assert!(
                    *s >= MIN_S3_PART_SIZE as u64,
                    "base {base}: part of {s} bytes"
                );
                assert!(
                    *s <= MAX_S3_PART_SIZE as u64,
                    "base {base}: part of {s} bytes"
                );
            }
            assert_eq!(sizes.iter().sum::<u64>(), MAX_OBJECT_BYTES);
        }
        // The default plan: 1 GiB is 128 parts of 8 MiB; growth only starts after 900 parts (7 GiB).
        let plan = PartPlan::new(8 << 20, None);
        assert_eq!(parts_for(plan, 1 << 30).len(), 128);
        assert_eq!(plan.size(GROW_EVERY - 1), 8 << 20);
        assert_eq!(plan.size(GROW_EVERY), 16 << 20);
    }

    #[test]
    fn announced_lengths_get_one_part_size_that_fits() {
        for len in [0, 1, 5 << 20, 1 << 30, 100 << 30, 1 << 40, MAX_OBJECT_BYTES] {
            let plan = PartPlan::new(MIN_S3_PART_SIZE, Some(len));
            let sizes = parts_for(plan, len);
            assert!(sizes.len() <= MAX_PARTS, "{len}: {} parts", sizes.len());
            assert!(sizes
                .iter()
                .rev()
                .skip(1)
                .all(|&s| s == plan.size(0) as u64));
            assert!(plan.size(0) >= MIN_S3_PART_SIZE && plan.size(0) <= MAX_S3_PART_SIZE);
        }
        // Small announced sizes keep the configured part size (memory stays as configured).
        assert_eq!(PartPlan::new(8 << 20, Some(1 << 30)).size(0), 8 << 20);
        // 100 GiB: 11 MiB parts instead of growing ones.
        assert_eq!(PartPlan::new(8 << 20, Some(100 << 30)).size(0), 11 << 20);
    }

    #[test]
    fn splitter_cuts_exact_parts_in_order() {
        let plan = PartPlan {
            base: 10,
            fixed: None,
        };
        let mut s = Splitter::new(plan);
        let mut out: Vec<(usize, Bytes)> = Vec::new();
        let data: Vec<u8> = (0..=255u8).cycle().take(95).collect();
        for chunk in data.chunks(7) {
            s.push(Bytes::copy_from_slice(chunk), |i, b| out.push((i, b)))
                .expect("map part");
        }
        out.extend(s.finish());
        assert_eq!(out.len(), 10);
        assert!(out.iter().enumerate().all(|(i, (idx, _))| i == *idx));
        assert!(out[..9].iter().all(|(_, b)| b.len() == 10));
        assert_eq!(out[9].1.len(), 5);
        let joined: Vec<u8> = out.iter().flat_map(|(_, b)| b.iter().copied()).collect();
        assert_eq!(joined, data);
        // A chunk larger than several parts, and a stream ending on a part boundary.
        let mut s = Splitter::new(plan);
        let mut out: Vec<(usize, Bytes)> = Vec::new();
        s.push(Bytes::from(vec![1u8; 30]), |i, b| out.push((i, b)))
            .expect("map part");
        assert_eq!(out.len(), 3);
        assert!(s.finish().is_none());
        // An empty stream still makes one (empty) part.
        let mut s = Splitter::new(plan);
        let last = s.finish().expect("one part");
        assert_eq!((last.0, last.1.len()), (0, 0));
    }
}
