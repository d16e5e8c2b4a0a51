//! The highly available backend: an etcd (v3 API, 3.4 or newer) cluster.
//!
//! Each record is one key holding its JSON; a token has a second key, its hash, holding its id,
//! and both are written and deleted in one transaction. Atomicity comes from etcd transactions:
//! create-if-absent compares the key's `create_revision` with 0 (the key does not exist), and
//! the layout compare-and-swap compares the layout key's `mod_revision` with the one it read,
//! so two broadcasters racing on either are ordered by the cluster and exactly one wins.
//!
//! Every operation is bounded by [`EtcdOptions::request_timeout`]: without a quorum etcd accepts
//! a request and never answers, and a metadata call that hangs would hang an upload with it.
//! Within that bound an operation is retried, each attempt bounded by
//! [`EtcdOptions::attempt_timeout`], because losing a member is not an error to a user: the
//! request may have gone to the dead member, or to a follower whose leader just died (etcd
//! drops such proposals silently), and a second attempt after the re-election succeeds.
//! Only APIs present in etcd 3.4 are used (KV range, put, delete-range, txn).

use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, GetOptions, KvClient, PutOptions,
    Txn, TxnOp, TxnOpResponse, TxnResponse,
};
use tokio::time::Instant;

use crate::record::{
    from_json, previous_file, sort_files, sort_leases, sort_tokens, sort_videos, to_json,
    unix_ms_now, LockRecord,
};
use crate::{
    FileRecord, MetaError, MetaStore, ResumableUpload, RingLayout, TokenRecord, UploadLease,
    VideoRecord,
};

/// How long connecting to an endpoint may take before it counts as down.
pub const DEFAULT_ETCD_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long one metadata operation, retries included, may take before it fails with
/// [`MetaError::Unavailable`].
pub const DEFAULT_ETCD_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one attempt may take before it is retried. Longer than a healthy cluster ever needs
/// (milliseconds), shorter than a leader election after a crash (1-2 s with etcd's defaults) plus
/// a retry, so a member loss costs one retry, not the whole operation.
pub const DEFAULT_ETCD_ATTEMPT_TIMEOUT: Duration = Duration::from_millis(1500);

/// Pause before the first retry; doubled up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_millis(400);

/// How many read-then-compare-and-swap rounds a lock operation makes before giving up. A round is
/// lost only when another writer changed the key in between, and the next read then usually settles
/// it (someone else holds it, or it is gone), so a handful is plenty.
const LOCK_ROUNDS: u32 = 5;

/// How many read-then-delete rounds [`MetaStore::delete_token`] makes. A round is lost only when the
/// token was deleted (or deleted and re-created) between the read and the delete; the next read
/// sees that.
const TOKEN_DELETE_ROUNDS: u32 = 5;

/// Every key lives under this prefix; `v1` is the record format, bumped by an incompatible change.
pub const ETCD_PREFIX: &str = "/distributary/v1/";

/// Connection settings for [`EtcdStore::connect`].
#[derive(Debug, Clone)]
pub struct EtcdOptions {
    /// Per-endpoint connect timeout.
    pub connect_timeout: Duration,
    /// Upper bound on each operation, retries included.
    pub request_timeout: Duration,
    /// Upper bound on one attempt of an operation.
    pub attempt_timeout: Duration,
}

impl Default for EtcdOptions {
    fn default() -> Self {
        EtcdOptions {
            connect_timeout: DEFAULT_ETCD_CONNECT_TIMEOUT,
            request_timeout: DEFAULT_ETCD_REQUEST_TIMEOUT,
            attempt_timeout: DEFAULT_ETCD_ATTEMPT_TIMEOUT,
        }
    }
}

/// [`MetaStore`] on an etcd cluster.
#[derive(Clone)]
pub struct EtcdStore {
    /// Balances requests over all endpoints; with the retries in [`EtcdStore::run`], losing a
    /// minority of members is invisible to callers.
    client: Client,
    /// One client per endpoint: a retry goes to the next member by name, so a dead member the balancer
    /// keeps choosing (it does, for a while, after a crash) cannot take every attempt of a request.
    members: Vec<Client>,
    /// The member the last retry reached; retries start there.
    preferred: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    endpoints: Vec<String>,
    options: EtcdOptions,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoints", &self.endpoints)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

fn layout_key() -> String {
    format!("{ETCD_PREFIX}layout")
}
fn videos_prefix() -> String {
    format!("{ETCD_PREFIX}videos/")
}
fn files_prefix() -> String {
    format!("{ETCD_PREFIX}files/")
}
fn video_key(id: &str) -> String {
    format!("{}{id}", videos_prefix())
}
fn file_key(name: &str) -> String {
    format!("{}{name}", files_prefix())
}
fn leases_prefix() -> String {
    format!("{ETCD_PREFIX}leases/")
}
fn lease_key(id: &str) -> String {
    format!("{}{id}", leases_prefix())
}
fn resumable_prefix() -> String {
    format!("{ETCD_PREFIX}resumable/")
}
fn resumable_key(id: &str) -> String {
    format!("{}{id}", resumable_prefix())
}
fn lock_key(name: &str) -> String {
    format!("{ETCD_PREFIX}locks/{name}")
}
fn tokens_prefix() -> String {
    format!("{ETCD_PREFIX}tokens/")
}
fn token_key(id: &str) -> String {
    format!("{}{id}", tokens_prefix())
}
/// Not under `tokens/`, so listing tokens does not list these.
fn token_hash_key(hash: &str) -> String {
    format!("{ETCD_PREFIX}token-hashes/{hash}")
}

impl EtcdStore {
    /// Connects to the cluster and checks that a quorum answers, so a wrong address or a dead
    /// cluster is reported at start rather than at the first upload.
    pub async fn connect(endpoints: &[String], options: EtcdOptions) -> Result<Self, MetaError> {
        if endpoints.is_empty() {
            return Err(MetaError::Config("no etcd endpoints".into()));
        }
        let connect = ConnectOptions::new()
            .with_connect_timeout(options.connect_timeout)
            .with_timeout(options.attempt_timeout)
            // A member cut off from the leader then fails fast ("no leader") instead of
            // holding the request until the attempt times out.
            .with_require_leader(true)
            // Notices a silently dead connection (no RST) between requests.
            .with_keep_alive(Duration::from_secs(5), options.connect_timeout);
        let client = tokio::time::timeout(
            options.connect_timeout + options.request_timeout,
            Client::connect(endpoints, Some(connect.clone())),
        )
        .await
        .map_err(|_| unavailable("connect", endpoints, "no answer in time"))?
        .map_err(|e| unavailable("connect", endpoints, &e.to_string()))?;
        let mut members = Vec::with_capacity(endpoints.len());
        for e in endpoints {
            // Lazy: a member that is down now is connected when a retry first needs it.
            let member = Client::connect([e.as_str()], Some(connect.clone()))
                .await
                .map_err(|err| unavailable("connect", endpoints, &err.to_string()))?;
            members.push(member);
        }
        let store = EtcdStore {
            client,
            members,
            preferred: Default::default(),
            endpoints: endpoints.to_vec(),
            options,
        };
        store.health().await?;
        Ok(store)
    }

    /// The endpoints given at connect.
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// Runs one KV operation, retrying failed or slow attempts until the request timeout.
    ///
    /// `op` gets the attempt number (0 first), so non-idempotent operations can recognise on a
    /// retry that an earlier attempt did take effect and only its answer was lost.
    ///
    /// Every error etcd or the transport returns means "the cluster did not do it (or did not
    /// say so)": no quorum, no leader, connection refused, deadline. This module builds no
    /// malformed requests, so none of them is the caller's fault and all end as `Unavailable`.
    async fn run<T, F, Fut>(&self, what: &str, mut op: F) -> Result<T, MetaError>
    where
        F: FnMut(KvClient, u32) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let deadline = Instant::now() + self.options.request_timeout;
        let mut backoff = FIRST_BACKOFF;
        let mut attempt = 0;
        loop {
            let budget = deadline
                .saturating_duration_since(Instant::now())
                .min(self.options.attempt_timeout);
            // The first attempt goes through the balancer; each retry to the next member in turn.
            let member = (attempt > 0).then(|| {
                (self.preferred.load(std::sync::atomic::Ordering::Relaxed) + attempt as usize - 1)
                    % self.members.len()
            });
            let kv = match member {
                Some(i) => self.members[i].kv_client(),
                None => self.client.kv_client(),
            };
            let last = match tokio::time::timeout(budget, op(kv, attempt)).await {
                Ok(Ok(v)) => {
                    if let Some(i) = member {
                        self.preferred
                            .store(i, std::sync::atomic::Ordering::Relaxed);
                    }
                    return Ok(v);
                }
                Ok(Err(e)) => e.to_string(),
                Err(_) => format!("no answer within {budget:?}"),
            };
            attempt += 1;
            if Instant::now() + backoff >= deadline {
                return Err(unavailable(
                    what,
                    &self.endpoints,
                    &format!("{last} (after {attempt} attempts; is a quorum of members up?)"),
                ));
            }
            tracing::debug!(what, attempt, error = %last, "etcd attempt failed, retrying");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Runs `txn` (whose `or_else` must read `key`); `Ok(true)` if its comparison held.
    ///
    /// A retried transaction whose comparison fails while `key` holds exactly `ours` is our
    /// own earlier attempt having committed, so it counts as success. On a first attempt the
    /// same sight is another writer's record and the comparison's failure stands.
    async fn txn_once(&self, what: &str, txn: Txn, ours: &[u8]) -> Result<bool, MetaError> {
        let resp = self
            .run(what, |mut kv, attempt| {
                let txn = txn.clone();
                async move { kv.txn(txn).await.map(|r| (r, attempt)) }
            })
            .await?;
        let (resp, attempt) = resp;
        if resp.succeeded() {
            return Ok(true);
        }
        Ok(attempt > 0 && txn_read_value(&resp).as_deref() == Some(ours))
    }

    /// Puts `json` at `key` only if the key does not exist.
    async fn create(&self, what: &str, key: String, json: Vec<u8>) -> Result<(), MetaError> {
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key.clone(), json.clone(), None)])
            .or_else([TxnOp::get(key, None)]);
        if self.txn_once(what, txn, &json).await? {
            Ok(())
        } else {
            Err(MetaError::AlreadyExists)
        }
    }

    async fn get_one(&self, what: &str, key: String) -> Result<Option<Vec<u8>>, MetaError> {
        let mut resp = self
            .run(what, |mut kv, _| {
                let key = key.clone();
                async move { kv.get(key, None).await }
            })
            .await?;
        Ok(resp
            .take_kvs()
            .into_iter()
            .next()
            .map(|kv| kv.into_key_value().1))
    }

    /// The value at `key` and the revision it was last written at, the compare-and-swap key.
    async fn get_versioned(
        &self,
        what: &str,
        key: &str,
    ) -> Result<Option<(Vec<u8>, i64)>, MetaError> {
        let mut resp = self
            .run(what, |mut kv, _| {
                let key = key.to_string();
                async move { kv.get(key, None).await }
            })
            .await?;
        Ok(resp.take_kvs().into_iter().next().map(|kv| {
            let revision = kv.mod_revision();
            (kv.into_key_value().1, revision)
        }))
    }

    /// The lock stored at `key` and the revision it was last written at, the compare-and-swap key.
    async fn read_lock(
        &self,
        key: &str,
        name: &str,
    ) -> Result<Option<(LockRecord, i64)>, MetaError> {
        self.get_versioned("read lock", key)
            .await?
            .map(|(value, revision)| Ok((from_json("lock", name, &value)?, revision)))
            .transpose()
    }

    async fn list<T>(&self, what: &str, prefix: String) -> Result<Vec<T>, MetaError>
    where
        T: for<'de> serde::Deserialize<'de>,
    {
        let strip = prefix.len();
        let mut resp = self
            .run(what, |mut kv, _| {
                let prefix = prefix.clone();
                async move { kv.get(prefix, Some(GetOptions::new().with_prefix())).await }
            })
            .await?;
        resp.take_kvs()
            .into_iter()
            .map(|kv| {
                let (key, value) = kv.into_key_value();
                let name = String::from_utf8_lossy(&key[strip.min(key.len())..]).into_owned();
                from_json(what, &name, &value)
            })
            .collect()
    }
}

/// The value read by a transaction's single `get` in its `or_else` branch.
fn txn_read_value(resp: &TxnResponse) -> Option<Vec<u8>> {
    resp.op_responses().into_iter().find_map(|r| match r {
        TxnOpResponse::Get(get) => get.kvs().first().map(|kv| kv.value().to_vec()),
        _ => None,
    })
}

fn unavailable(what: &str, endpoints: &[String], why: &str) -> MetaError {
    MetaError::Unavailable(format!("etcd {what} via {}: {why}", endpoints.join(",")))
}

#[async_trait]
impl MetaStore for EtcdStore {
    async fn get_layout(&self) -> Result<Option<RingLayout>, MetaError> {
        self.get_one("get layout", layout_key())
            .await?
            .map(|v| from_json("layout", "layout", &v))
            .transpose()
    }

    async fn put_layout(
        &self,
        expected_version: Option<u64>,
        layout: &RingLayout,
    ) -> Result<(), MetaError> {
        let key = layout_key();
        let json = to_json(layout);
        let compare = match expected_version {
            None => Compare::create_revision(key.clone(), CompareOp::Equal, 0),
            Some(expected) => {
                let mut resp = self
                    .run("read layout", |mut kv, _| {
                        let key = key.clone();
                        async move { kv.get(key, None).await }
                    })
                    .await?;
                let Some(current) = resp.take_kvs().into_iter().next() else {
                    return Err(MetaError::Conflict);
                };
                let stored: RingLayout = from_json("layout", "layout", current.value())?;
                if stored.version != expected {
                    return Err(MetaError::Conflict);
                }
                // The version matched at this revision; the write succeeds only if nobody
                // wrote the key since, which makes read + write one compare-and-swap.
                Compare::mod_revision(key.clone(), CompareOp::Equal, current.mod_revision())
            }
        };
        let txn = Txn::new()
            .when([compare])
            .and_then([TxnOp::put(key.clone(), json.clone(), None)])
            .or_else([TxnOp::get(key, None)]);
        if self.txn_once("put layout", txn, &json).await? {
            Ok(())
        } else {
            Err(MetaError::Conflict)
        }
    }

    async fn create_video(&self, video: &VideoRecord) -> Result<(), MetaError> {
        self.create("create video", video_key(&video.id), to_json(video))
            .await
    }

    async fn put_video(&self, video: &VideoRecord) -> Result<(), MetaError> {
        let (key, json) = (video_key(&video.id), to_json(video));
        self.run("put video", |mut kv, _| {
            let (key, json) = (key.clone(), json.clone());
            async move { kv.put(key, json, None).await }
        })
        .await?;
        Ok(())
    }

    async fn get_video(&self, id: &str) -> Result<Option<VideoRecord>, MetaError> {
        self.get_one("get video", video_key(id))
            .await?
            .map(|v| from_json("video", id, &v))
            .transpose()
    }

    async fn list_videos(&self) -> Result<Vec<VideoRecord>, MetaError> {
        let mut videos = self.list("video", videos_prefix()).await?;
        sort_videos(&mut videos);
        Ok(videos)
    }

    async fn delete_video(&self, id: &str) -> Result<bool, MetaError> {
        // A retry after a lost answer reports `false` for a video the first attempt deleted;
        // the video is gone either way, which is what the caller asked for.
        let key = video_key(id);
        let resp = self
            .run("delete video", |mut kv, _| {
                let key = key.clone();
                async move { kv.delete(key, None).await }
            })
            .await?;
        Ok(resp.deleted() > 0)
    }

    async fn put_file(&self, file: &FileRecord) -> Result<Option<FileRecord>, MetaError> {
        let (key, json) = (file_key(&file.name), to_json(file));
        // prev_kv returns the replaced value from the same atomic put, so no other writer can
        // slip in between reading the old record and replacing it.
        let mut resp = self
            .run("put file", |mut kv, _| {
                let (key, json) = (key.clone(), json.clone());
                async move {
                    kv.put(key, json, Some(PutOptions::new().with_prev_key()))
                        .await
                }
            })
            .await?;
        Ok(resp
            .take_prev_key()
            // Re-putting the identical record replaced nothing the caller should clean up; this
            // is also what a retry sees when its first attempt landed.
            .filter(|kv| kv.value() != json.as_slice())
            .and_then(|kv| previous_file(&file.name, kv.value())))
    }

    async fn create_file(&self, file: &FileRecord) -> Result<(), MetaError> {
        self.create("create file", file_key(&file.name), to_json(file))
            .await
    }

    async fn get_file(&self, name: &str) -> Result<Option<FileRecord>, MetaError> {
        self.get_one("get file", file_key(name))
            .await?
            .map(|v| from_json("file", name, &v))
            .transpose()
    }

    async fn list_files(&self) -> Result<Vec<FileRecord>, MetaError> {
        let mut files = self.list("file", files_prefix()).await?;
        sort_files(&mut files);
        Ok(files)
    }

    async fn delete_file(&self, name: &str) -> Result<Option<FileRecord>, MetaError> {
        // As with videos, a retry after a lost answer returns `None`; the record is gone.
        let key = file_key(name);
        let mut resp = self
            .run("delete file", |mut kv, _| {
                let key = key.clone();
                async move {
                    kv.delete(key, Some(DeleteOptions::new().with_prev_key()))
                        .await
                }
            })
            .await?;
        Ok(resp
            .take_prev_kvs()
            .into_iter()
            .next()
            .and_then(|kv| previous_file(name, kv.value())))
    }

    async fn put_lease(&self, lease: &UploadLease) -> Result<(), MetaError> {
        let (key, json) = (lease_key(&lease.id), to_json(lease));
        self.run("put lease", |mut kv, _| {
            let (key, json) = (key.clone(), json.clone());
            async move { kv.put(key, json, None).await }
        })
        .await?;
        Ok(())
    }

    async fn delete_lease(&self, id: &str) -> Result<(), MetaError> {
        let key = lease_key(id);
        self.run("delete lease", |mut kv, _| {
            let key = key.clone();
            async move { kv.delete(key, None).await }
        })
        .await?;
        Ok(())
    }

    async fn list_leases(&self) -> Result<Vec<UploadLease>, MetaError> {
        let mut leases = self.list("lease", leases_prefix()).await?;
        sort_leases(&mut leases);
        Ok(leases)
    }

    async fn put_resumable(&self, upload: &ResumableUpload) -> Result<(), MetaError> {
        let (key, json) = (resumable_key(&upload.id), to_json(upload));
        self.run("put resumable upload", |mut kv, _| {
            let (key, json) = (key.clone(), json.clone());
            async move { kv.put(key, json, None).await }
        })
        .await?;
        Ok(())
    }

    async fn replace_resumable(
        &self,
        old: &ResumableUpload,
        new: &ResumableUpload,
    ) -> Result<bool, MetaError> {
        let key = resumable_key(&new.id);
        let (old, new) = (to_json(old), to_json(new));
        let txn = Txn::new()
            .when([Compare::value(key.clone(), CompareOp::Equal, old)])
            .and_then([TxnOp::put(key.clone(), new.clone(), None)])
            .or_else([TxnOp::get(key, None)]);
        // A retry that finds our own value in place is our earlier attempt having committed.
        self.txn_once("replace resumable upload", txn, &new).await
    }

    async fn get_resumable(&self, id: &str) -> Result<Option<ResumableUpload>, MetaError> {
        self.get_one("get resumable upload", resumable_key(id))
            .await?
            .map(|v| from_json("resumable upload", id, &v))
            .transpose()
    }

    async fn delete_resumable(&self, id: &str) -> Result<(), MetaError> {
        let key = resumable_key(id);
        self.run("delete resumable upload", |mut kv, _| {
            let key = key.clone();
            async move { kv.delete(key, None).await }
        })
        .await?;
        Ok(())
    }

    async fn list_resumable(&self) -> Result<Vec<ResumableUpload>, MetaError> {
        let mut out: Vec<ResumableUpload> =
            self.list("resumable upload", resumable_prefix()).await?;
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    async fn try_lock(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool, MetaError> {
        let key = lock_key(name);
        for _ in 0..LOCK_ROUNDS {
            let compare = match self.read_lock(&key, name).await? {
                None => Compare::create_revision(key.clone(), CompareOp::Equal, 0),
                Some((held, revision)) => {
                    if held.bars(holder, unix_ms_now()) {
                        return Ok(false);
                    }
                    // Free to take at this revision; the write lands only if nobody wrote the key
                    // since, so of several takers of a lapsed lock exactly one wins.
                    Compare::mod_revision(key.clone(), CompareOp::Equal, revision)
                }
            };
            let json = to_json(&LockRecord::new(holder, unix_ms_now(), ttl));
            let txn = Txn::new()
                .when([compare])
                .and_then([TxnOp::put(key.clone(), json.clone(), None)])
                .or_else([TxnOp::get(key.clone(), None)]);
            if self.txn_once("take lock", txn, &json).await? {
                return Ok(true);
            }
        }
        // Every round lost to another writer of this key: the lock is contended and not ours now.
        // Saying so is safe (the caller tries again later); claiming it would not be.
        tracing::debug!(
            name,
            holder,
            "lock still contended after {LOCK_ROUNDS} rounds"
        );
        Ok(false)
    }

    async fn unlock(&self, name: &str, holder: &str) -> Result<(), MetaError> {
        let key = lock_key(name);
        for _ in 0..LOCK_ROUNDS {
            let Some((held, revision)) = self.read_lock(&key, name).await? else {
                return Ok(());
            };
            if held.holder != holder {
                return Ok(());
            }
            // Deleting only at the revision read keeps us from releasing a lock someone else took
            // over (after ours lapsed) between the read and the delete.
            let txn = Txn::new()
                .when([Compare::mod_revision(
                    key.clone(),
                    CompareOp::Equal,
                    revision,
                )])
                .and_then([TxnOp::delete(key.clone(), None)]);
            // A lost answer to a delete that landed looks like a failed comparison; the next
            // round's read finds the key gone, so no special case is needed.
            let resp = self
                .run("release lock", |mut kv, _| {
                    let txn = txn.clone();
                    async move { kv.txn(txn).await }
                })
                .await?;
            if resp.succeeded() {
                return Ok(());
            }
        }
        // Our own renewals kept racing the release; the lock lapses at its expiry anyway.
        tracing::warn!(
            name,
            holder,
            "lock not released after {LOCK_ROUNDS} rounds; it will lapse"
        );
        Ok(())
    }

    async fn create_token(&self, token: &TokenRecord) -> Result<(), MetaError> {
        let (key, hash_key, json) = (
            token_key(&token.id),
            token_hash_key(&token.hash),
            to_json(token),
        );
        // Both keys or neither, and only if both are free: neither an id nor a hash is ever taken
        // twice, and a refused create leaves no half of itself behind. The `or_else` read lets a
        // retry recognise its own landed attempt by the record's exact JSON.
        let txn = Txn::new()
            .when([
                Compare::create_revision(key.clone(), CompareOp::Equal, 0),
                Compare::create_revision(hash_key.clone(), CompareOp::Equal, 0),
            ])
            .and_then([
                TxnOp::put(key.clone(), json.clone(), None),
                TxnOp::put(hash_key, token.id.clone(), None),
            ])
            .or_else([TxnOp::get(key, None)]);
        if self.txn_once("create token", txn, &json).await? {
            Ok(())
        } else {
            Err(MetaError::AlreadyExists)
        }
    }

    async fn get_token_by_hash(&self, hash: &str) -> Result<Option<TokenRecord>, MetaError> {
        let Some(id) = self.get_one("get token hash", token_hash_key(hash)).await? else {
            return Ok(None);
        };
        let id = String::from_utf8(id)
            .map_err(|_| MetaError::Corrupt(format!("token hash {hash:?}: id is not UTF-8")))?;
        // Absent: deleted between the two reads.
        let Some(json) = self.get_one("get token", token_key(&id)).await? else {
            return Ok(None);
        };
        let token: TokenRecord = from_json("token", &id, &json)?;
        // The record is the authority: a hash key that does not lead back to a record with this
        // hash (left behind by deleting an unreadable record) grants nothing.
        Ok((token.hash == hash).then_some(token))
    }

    async fn list_tokens(&self) -> Result<Vec<TokenRecord>, MetaError> {
        let mut tokens = self.list("token", tokens_prefix()).await?;
        sort_tokens(&mut tokens);
        Ok(tokens)
    }

    async fn delete_token(&self, id: &str) -> Result<bool, MetaError> {
        let key = token_key(id);
        for _ in 0..TOKEN_DELETE_ROUNDS {
            let Some((json, revision)) = self.get_versioned("read token", &key).await? else {
                // As with videos, a retry after a lost answer lands here for a token the first
                // attempt deleted; the token is gone either way.
                return Ok(false);
            };
            let mut deletes = vec![TxnOp::delete(key.clone(), None)];
            match from_json::<TokenRecord>("token", id, &json) {
                Ok(token) => deletes.push(TxnOp::delete(token_hash_key(&token.hash), None)),
                // Revoking must not depend on the record being readable. The hash key left behind
                // leads to no record, so it authenticates nothing.
                Err(e) => tracing::warn!(
                    error = %e,
                    "deleting an unreadable token record; its hash key is left behind"
                ),
            }
            // Deleting only at the revision read makes sure the hash key removed is that of the
            // record removed, should the id be deleted and re-created in between.
            let txn = Txn::new()
                .when([Compare::mod_revision(
                    key.clone(),
                    CompareOp::Equal,
                    revision,
                )])
                .and_then(deletes);
            let resp = self
                .run("delete token", |mut kv, _| {
                    let txn = txn.clone();
                    async move { kv.txn(txn).await }
                })
                .await?;
            if resp.succeeded() {
                return Ok(true);
            }
        }
        // Only a token deleted and re-created over and over under this id gets here.
        Err(MetaError::Unavailable(format!(
            "etcd delete token {id:?}: the record kept changing during {TOKEN_DELETE_ROUNDS} rounds"
        )))
    }

    async fn health(&self) -> Result<(), MetaError> {
        // A linearizable read goes through the leader's read index, so it succeeds only while
        // a quorum is up: exactly the condition under which writes work.
        let key = layout_key();
        self.run("health check", |mut kv, _| {
            let key = key.clone();
            async move { kv.get(key, Some(GetOptions::new().with_count_only())).await }
        })
        .await?;
        Ok(())
    }
}
