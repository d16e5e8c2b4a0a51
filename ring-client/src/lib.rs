//! The storage ring as its clients (broadcasters, dash readers) see it: the current layout (kept in the
//! metadata store), blob placement with R replicas, verified reads with replica fallback, membership changes
//! with live migration, and the maintenance that keeps every blob at R good copies.
//!
//! # Layout
//! - [`nodes`]: HTTP client of the storage nodes' blob API (bounded replies, no redirects).
//! - [`migrate`]: adding and removing nodes, by identity (copy, verify, switch, delete), as a worker.
//! - [`read`]: streamed reads, each window checked against the recorded digest before it is sent.
//! - [`files`]: raw uploads stored on the ring as fixed-size chunks, and reading them back verified.
//! - [`maintenance`]: the lock that serialises migration, repair and sweep across broadcasters; leases of
//!   live uploads.
//! - [`repair`]: bringing every recorded blob back to R copies that match its recorded digest.
//! - [`sweep`]: removing blobs nothing references and failing videos nothing is processing.
//!
//! Consistency: while a migration runs, the stored layout carries the membership it moves to (`next`), and
//! writers place every blob on the owners under both memberships, so nothing written during the copy is
//! missed and writes never wait for a migration. Reads try the current owners, then the next, then the
//! previous layout's. Every byte read is checked against the digest recorded when the blob was written
//! (in the file or video record), window by window when it streams; a replica that fails the check is
//! skipped.

pub mod files;
pub mod maintenance;
pub mod migrate;
pub mod nodes;
pub mod read;
pub mod repair;
pub mod sweep;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use common::blob_digest::{self, BlobDigest, DigestKind};
use common::cluster::ClusterSecret;
use hashring::{Layout, Ring};
use meta::{MetaError, MetaStore, RingLayout};
use tokio_util::sync::CancellationToken;

use nodes::{BlobKey, NodeClient, NodeError};

/// How often the layout is re-read, so broadcasters sharing one metadata store converge.
const LAYOUT_REFRESH: Duration = Duration::from_secs(2);

/// Errors of ring operations.
#[derive(Debug, thiserror::Error)]
pub enum RingError {
    #[error("the storage ring has no nodes")]
    Empty,
    #[error(transparent)]
    Meta(#[from] MetaError),
    #[error("upload aborted: {0}")]
    Aborted(String),
    #[error(transparent)]
    Node(#[from] NodeError),
    #[error("no live replica of {0} matches its recorded digest")]
    NoReplica(String),
    /// A membership change refused; the ring is unchanged.
    #[error("{0}")]
    Membership(String),
    /// The address reaches a node that is already a member.
    #[error("{0}")]
    Duplicate(String),
    /// The address does not reach a storage node of this cluster.
    #[error("{0}")]
    NotANode(String),
    #[error("node {0} is unreachable")]
    Unreachable(String),
    #[error("the layout changed concurrently; try again")]
    Conflict,
    /// Another broadcaster runs a migration, repair or sweep.
    #[error("{0}")]
    Busy(String),
}

/// The layout in force, the membership a migration moves to, and the layout before (for reads during and
/// right after a migration).
#[derive(Debug)]
pub struct View {
    /// The stored layout, if any.
    pub record: Option<RingLayout>,
    /// Placement of `record` (membership and parameters), if any.
    pub layout: Option<Layout>,
    ring: Option<Ring>,
    next: Option<Ring>,
    previous: Option<Ring>,
}

impl View {
    /// Owners of `key` under the layout in force, then owners under the membership being migrated to.
    pub fn write_owners(&self, key: &str) -> Vec<String> {
        let mut owners = self
            .ring
            .as_ref()
            .map(|r| r.owners(key))
            .unwrap_or_default();
        if let Some(next) = &self.next {
            for n in next.owners(key) {
                if !owners.contains(&n) {
                    owners.push(n);
                }
            }
        }
        owners
    }

    /// Where a read may find `key`, best first.
    pub fn read_candidates(&self, key: &str) -> Vec<String> {
        let mut candidates = self.write_owners(key);
        if let Some(prev) = &self.previous {
            for n in prev.owners(key) {
                if !candidates.contains(&n) {
                    candidates.push(n);
                }
            }
        }
        candidates
    }
}

/// Shared handle on the ring.
#[derive(Debug)]
pub struct Cluster {
    meta: Arc<dyn MetaStore>,
    nodes: NodeClient,
    view: RwLock<Arc<View>>,
    /// One membership change at a time in this process (across processes: the maintenance lock).
    admin: tokio::sync::Mutex<()>,
    replication: usize,
    vnodes: u32,
    chunk_size: usize,
    secret: Option<ClusterSecret>,
    lease_ttl: Duration,
    /// Names this process in leases and locks.
    holder: String,
    /// The migration this process runs, for `GET /admin/nodes`.
    progress: Mutex<Option<migrate::Progress>>,
    /// Windows, window tables and video records that reads share (see [`read`]).
    caches: read::Caches,
    /// Window fetches under way (see [`read`]).
    fetches: tokio::sync::Semaphore,
}

/// Settings of the ring from the broadcaster's configuration.
#[derive(Debug, Clone)]
pub struct RingSettings {
    /// Members to start with when the metadata store holds no layout yet.
    pub initial_nodes: Vec<String>,
    /// Copies per blob.
    pub replication: usize,
    /// Virtual nodes per member.
    pub vnodes: u32,
    /// Size of the chunks a raw upload is cut into.
    pub chunk_size: usize,
    /// Connect timeout to nodes.
    pub connect_timeout: Duration,
    /// Per-request timeout to nodes.
    pub request_timeout: Duration,
    /// The cluster secret: it signs every request to nodes, and nodes prove their identity with it;
    /// without it any node answering the identity protocol is taken at its word.
    pub secret: Option<ClusterSecret>,
    /// How long an upload's lease holds without renewal (see [`maintenance`]).
    pub lease_ttl: Duration,
}

fn to_layout(r: &RingLayout) -> Layout {
    Layout {
        version: r.version,
        nodes: r.nodes.clone(),
        vnodes: r.vnodes,
        replication: r.replication,
    }
}

fn ring_of(r: &RingLayout, nodes: &[String]) -> Ring {
    Ring::new(&Layout {
        version: r.version,
        nodes: nodes.to_vec(),
        vnodes: r.vnodes,
        replication: r.replication,
    })
}

/// Where a blob was placed and what it hashed to.
#[derive(Debug, Clone)]
pub struct Placed {
    /// The nodes that hold a verified copy.
    pub owners: Vec<String>,
    /// The blob's windowed digest (see [`common::blob_digest`]): record it, so reads can be checked
    /// against it window by window.
    pub digest: String,
}

impl Cluster {
    /// Loads the layout, seeding it from `initial_nodes` when the store has none.
    pub async fn open(
        meta: Arc<dyn MetaStore>,
        settings: &RingSettings,
    ) -> Result<Arc<Self>, RingError> {
        let nodes = NodeClient::new(
            settings.connect_timeout,
            settings.request_timeout,
            settings.secret.clone(),
        )
        .map_err(|e| RingError::Membership(format!("cannot build HTTP client: {e}")))?;
        let cluster = Arc::new(Self {
            meta,
            nodes,
            view: RwLock::new(Arc::new(View {
                record: None,
                layout: None,
                ring: None,
                next: None,
                previous: None,
            })),
            admin: tokio::sync::Mutex::new(()),
            replication: settings.replication,
            vnodes: settings.vnodes,
            chunk_size: settings.chunk_size,
            secret: settings.secret.clone(),
            lease_ttl: settings.lease_ttl,
            holder: format!("{}-{}", std::process::id(), &common::cluster::nonce()[..12]),
            progress: Mutex::new(None),
            caches: read::Caches::default(),
            fetches: tokio::sync::Semaphore::new(read::FETCHES_AT_ONCE),
        });
        let mut record = cluster.meta.get_layout().await?;
        if record.is_none() && !settings.initial_nodes.is_empty() {
            // Identities of the seed nodes that answer now; the others are learnt later.
            let mut ids = Vec::new();
            for n in &settings.initial_nodes {
                ids.push(cluster.prove_identity(n).await.unwrap_or_default());
            }
            let seeded = RingLayout {
                version: 1,
                nodes: settings.initial_nodes.clone(),
                vnodes: settings.vnodes,
                replication: settings.replication,
                ids,
                next: None,
            };
            match cluster.meta.put_layout(None, &seeded).await {
                Ok(()) => {
                    tracing::info!(nodes = ?seeded.nodes, "ring layout seeded from BROADCASTER_STORAGE_NODES");
                    record = Some(seeded);
                }
                // Another broadcaster seeded it first: use theirs.
                Err(MetaError::Conflict) | Err(MetaError::AlreadyExists) => {
                    record = cluster.meta.get_layout().await?;
                }
                Err(e) => return Err(e.into()),
            }
        }
        if let Some(r) = record {
            cluster.install(r);
        }
        Ok(cluster)
    }

    /// Re-reads the layout periodically until `shutdown`.
    pub fn spawn_refresh(self: &Arc<Self>, shutdown: CancellationToken) {
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(LAYOUT_REFRESH);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tick.tick() => {
                        if let Err(e) = me.refresh().await {
                            tracing::debug!(error = %e, "layout refresh failed");
                        }
                    }
                }
            }
        });
    }

    /// Loads the stored layout if it is newer than the one in memory.
    pub async fn refresh(&self) -> Result<(), RingError> {
        let stored = self.meta.get_layout().await?;
        let current = self.view();
        let newer = match (&stored, &current.record) {
            (Some(s), Some(c)) => s.version > c.version,
            (Some(_), None) => true,
            _ => false,
        };
        if newer {
            if let Some(l) = stored {
                self.install(l);
            }
        }
        Ok(())
    }

    fn install(&self, record: RingLayout) {
        let mut guard = self.view.write().unwrap_or_else(|e| e.into_inner());
        // The previous ring is the one reads may still find blobs on: the old membership when this record
        // ends a migration, else whatever was in force before.
        let previous = guard.ring.clone();
        let next = record.next.as_ref().map(|m| ring_of(&record, &m.nodes));
        *guard = Arc::new(View {
            ring: Some(ring_of(&record, &record.nodes)),
            layout: Some(to_layout(&record)),
            next,
            previous,
            record: Some(record),
        });
    }

    /// The layout in force.
    pub fn view(&self) -> Arc<View> {
        self.view.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The metadata store.
    pub fn meta(&self) -> &Arc<dyn MetaStore> {
        &self.meta
    }

    /// Node client.
    pub fn nodes(&self) -> &NodeClient {
        &self.nodes
    }

    /// Chunk size of raw uploads.
    pub fn chunk_size(&self) -> usize {
        self.chunk_size
    }

    /// Nodes that should hold `key` now: the owners under the layout in force and, during a migration,
    /// under the membership it moves to.
    pub fn owners(&self, key: &BlobKey) -> Result<Vec<String>, RingError> {
        let owners = self.view().write_owners(&key.ring_key());
        if owners.is_empty() {
            return Err(RingError::Empty);
        }
        Ok(owners)
    }

    /// Asks `node` who it is and checks its proof; returns its id. A host that does not speak the identity
    /// protocol, or (with a cluster secret) cannot prove membership, is [`RingError::NotANode`].
    pub async fn prove_identity(&self, node: &str) -> Result<String, RingError> {
        let nonce = common::cluster::nonce();
        let answer = match self.nodes.identity(node, &nonce).await {
            Ok(a) => a,
            Err(NodeError::Unreachable { .. }) => {
                return Err(RingError::Unreachable(node.to_owned()))
            }
            Err(_) => {
                return Err(RingError::NotANode(format!(
                    "{node} is not a storage node: it does not answer the identity protocol"
                )))
            }
        };
        if let Some(secret) = &self.secret {
            if !secret.verify_identity(&nonce, &answer.node_id, &answer.proof) {
                return Err(RingError::NotANode(format!(
                    "{node} is not a storage node of this cluster: its identity proof does not match \
                     the cluster secret"
                )));
            }
        }
        Ok(answer.node_id)
    }

    /// Stores `data` under `key` on every owner; fails unless all of them hold a verified copy.
    ///
    /// A membership change in another process may switch the layout while this write runs; the layout is
    /// re-read afterwards and the blob placed again on any owner the new layout adds, so a migration never
    /// misses it.
    pub async fn put_blob(&self, key: &BlobKey, data: Bytes) -> Result<Placed, RingError> {
        let sha = BlobDigest::compute(DigestKind::Windowed, &data).to_string();
        let mut written: Vec<String> = Vec::new();
        for _ in 0..5 {
            let version = self.view().record.as_ref().map(|l| l.version);
            let owners = self.owners(key)?;
            let todo: Vec<&String> = owners.iter().filter(|o| !written.contains(o)).collect();
            let puts = todo.iter().map(|n| {
                let (data, sha) = (data.clone(), &sha);
                async move {
                    let r = self.nodes.put(n, key, data, sha).await;
                    count_write(n, r.is_ok());
                    r
                }
            });
            for r in futures_util::future::join_all(puts).await {
                r?;
            }
            written.extend(todo.into_iter().cloned());
            self.refresh().await?;
            if self.view().record.as_ref().map(|l| l.version) == version {
                return Ok(Placed {
                    owners,
                    digest: sha,
                });
            }
        }
        Err(RingError::Conflict)
    }

    /// Reads the whole of `key` from the first candidate whose copy hashes to `expected` (the digest
    /// recorded at write time, of either kind). Without a recorded digest (records older than digests), the node's own
    /// claim is checked instead, which still catches a copy damaged on disk.
    pub async fn get_verified(
        &self,
        key: &BlobKey,
        expected: Option<&str>,
    ) -> Result<Bytes, RingError> {
        let view = self.view();
        let candidates = view.read_candidates(&key.ring_key());
        if candidates.is_empty() {
            return Err(RingError::Empty);
        }
        let mut all_absent = true;
        for (i, node) in candidates.iter().enumerate() {
            let result = self.nodes.get(node, key, None).await;
            let result = match result {
                Ok(f) => match expected.or(f.sha256.as_deref()) {
                    Some(w) if blob_digest::matches(w, &f.data) => Ok(f.data),
                    _ => Err(None),
                },
                Err(e) => Err(Some(e)),
            };
            let label = match &result {
                Ok(_) => "ok",
                Err(None) => "corrupt",
                Err(Some(NodeError::NotFound { .. })) => "missing",
                Err(Some(_)) => "error",
            };
            count_read(node, label);
            match result {
                Ok(data) => {
                    if i > 0 {
                        metrics::counter!("distributary_ring_read_fallbacks_total").increment(1);
                        tracing::info!(%key, %node, "read served by a fallback replica");
                    }
                    return Ok(data);
                }
                Err(Some(NodeError::NotFound { .. })) => {}
                Err(None) => {
                    all_absent = false;
                    metrics::counter!("distributary_ring_read_corrupt_total", "node" => node.clone())
                        .increment(1);
                    tracing::error!(%key, %node, "replica's bytes do not match the recorded digest; skipped");
                }
                Err(Some(e)) => {
                    all_absent = false;
                    tracing::warn!(%key, error = %e, "replica read failed; trying the next one");
                }
            }
        }
        if all_absent {
            Err(RingError::Node(NodeError::NotFound {
                node: candidates.join(","),
                key: key.to_string(),
            }))
        } else {
            Err(RingError::NoReplica(key.to_string()))
        }
    }

    /// Deletes `key` from every node that may hold it; best effort (the sweep removes what is left).
    pub async fn delete_blob(&self, key: &BlobKey) {
        let nodes = self.view().read_candidates(&key.ring_key());
        for n in nodes {
            if let Err(e) = self.nodes.delete(&n, key).await {
                tracing::warn!(%key, error = %e, "delete failed; the blob stays until the next sweep");
            }
        }
    }

    /// The SHA-256 recorded for every blob a committed file or a video references, by blob key.
    pub async fn recorded_digests(&self) -> Result<HashMap<String, String>, RingError> {
        let mut out = HashMap::new();
        for f in self.meta.list_files().await? {
            for (i, sha) in f.chunk_sha256.iter().enumerate() {
                out.insert(
                    files::chunk_key(&f.upload_id, i as u64).ring_key(),
                    sha.clone(),
                );
            }
        }
        for v in self.meta.list_videos().await? {
            if v.status == meta::VideoRecord::FAILED {
                continue;
            }
            for (file, sha) in &v.digests {
                out.insert(format!("{}/{file}", v.id), sha.clone());
            }
        }
        Ok(out)
    }
}

/// Counts one replica write; a sync helper keeps the metrics temporaries out of async state.
fn count_write(node: &str, ok: bool) {
    let result = if ok { "ok" } else { "error" };
    metrics::counter!("distributary_ring_writes_total", "node" => node.to_owned(), "result" => result).increment(1);
}

fn count_read(node: &str, result: &'static str) {
    metrics::counter!("distributary_ring_reads_total", "node" => node.to_owned(), "result" => result)
        .increment(1);
}
