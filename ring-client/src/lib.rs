//! The storage ring as its clients (broadcasters, dash readers) see it: the current layout (kept in the metadata store), blob
//! placement with R replicas, reads with replica fallback, and membership changes with live migration.
//!
//! # Layout
//! - [`nodes`]: HTTP client of the storage nodes' blob API.
//! - [`migrate`]: adding and removing nodes (copy, verify, switch, delete).
//! - [`files`]: raw uploads stored on the ring as fixed-size chunks, and reading them back.
//!
//! Concurrency: blob writes hold `gate` shared and a migration holds it exclusively, so no blob is written
//! under a layout that is being replaced (writes wait; reads never do). Reads try the current owners first
//! and then the owners under the previous layout, so they keep working while blobs move.

pub mod files;
pub mod migrate;
pub mod nodes;

use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
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
    #[error("{0}")]
    Meta(#[from] MetaError),
    #[error("upload aborted: {0}")]
    Aborted(String),
    #[error("{0}")]
    Node(#[from] NodeError),
    #[error("no live replica of {0}")]
    NoReplica(String),
    #[error("{0}")]
    Membership(String),
    #[error("node {0} is unreachable")]
    Unreachable(String),
    #[error("the layout changed concurrently; try again")]
    Conflict,
}

/// The layout in force and the one before it (for reads during and right after a migration).
#[derive(Debug)]
pub struct View {
    /// The stored layout, if any.
    pub layout: Option<Layout>,
    ring: Option<Ring>,
    previous: Option<Ring>,
}

/// Shared handle on the ring.
#[derive(Debug)]
pub struct Cluster {
    meta: Arc<dyn MetaStore>,
    nodes: NodeClient,
    view: RwLock<Arc<View>>,
    /// Blob writes hold this shared; a migration holds it exclusively.
    gate: tokio::sync::RwLock<()>,
    /// One membership change at a time.
    admin: tokio::sync::Mutex<()>,
    replication: usize,
    vnodes: u32,
    chunk_size: usize,
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
}

fn to_layout(r: &RingLayout) -> Layout {
    Layout {
        version: r.version,
        nodes: r.nodes.clone(),
        vnodes: r.vnodes,
        replication: r.replication,
    }
}

fn to_record(l: &Layout) -> RingLayout {
    RingLayout {
        version: l.version,
        nodes: l.nodes.clone(),
        vnodes: l.vnodes,
        replication: l.replication,
    }
}

impl Cluster {
    /// Loads the layout, seeding it from `initial_nodes` when the store has none.
    pub async fn open(
        meta: Arc<dyn MetaStore>,
        settings: &RingSettings,
    ) -> Result<Arc<Self>, RingError> {
        let nodes = NodeClient::new(settings.connect_timeout, settings.request_timeout)
            .map_err(|e| RingError::Membership(format!("cannot build HTTP client: {e}")))?;
        let mut layout = meta.get_layout().await?.map(|r| to_layout(&r));
        if layout.is_none() && !settings.initial_nodes.is_empty() {
            let seeded = Layout {
                version: 1,
                nodes: settings.initial_nodes.clone(),
                vnodes: settings.vnodes,
                replication: settings.replication,
            };
            match meta.put_layout(None, &to_record(&seeded)).await {
                Ok(()) => {
                    tracing::info!(nodes = ?seeded.nodes, "ring layout seeded from BROADCASTER_STORAGE_NODES");
                    layout = Some(seeded);
                }
                // Another broadcaster seeded it first: use theirs.
                Err(MetaError::Conflict) | Err(MetaError::AlreadyExists) => {
                    layout = meta.get_layout().await?.map(|r| to_layout(&r));
                }
                Err(e) => return Err(e.into()),
            }
        }
        let cluster = Arc::new(Self {
            meta,
            nodes,
            view: RwLock::new(Arc::new(View {
                ring: layout.as_ref().map(Ring::new),
                layout,
                previous: None,
            })),
            gate: tokio::sync::RwLock::new(()),
            admin: tokio::sync::Mutex::new(()),
            replication: settings.replication,
            vnodes: settings.vnodes,
            chunk_size: settings.chunk_size,
        });
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
        let stored = self.meta.get_layout().await?.map(|r| to_layout(&r));
        let current = self.view();
        let newer = match (&stored, &current.layout) {
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

    fn install(&self, layout: Layout) {
        let mut guard = self.view.write().unwrap_or_else(|e| e.into_inner());
        let previous = guard.ring.clone();
        *guard = Arc::new(View {
            ring: Some(Ring::new(&layout)),
            layout: Some(layout),
            previous,
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

    /// Nodes that should hold `key`, primary first.
    pub fn owners(&self, key: &BlobKey) -> Result<Vec<String>, RingError> {
        let view = self.view();
        let ring = view.ring.as_ref().ok_or(RingError::Empty)?;
        let owners = ring.owners(&key.ring_key());
        if owners.is_empty() {
            return Err(RingError::Empty);
        }
        Ok(owners)
    }

    /// Stores `data` under `key` on every owner; fails unless all of them hold a verified copy.
    ///
    /// A membership change in another process may switch the layout while this write runs; the layout is
    /// re-read afterwards and the blob placed again on any owner the new layout adds, so a migration never
    /// misses it.
    pub async fn put_blob(&self, key: &BlobKey, data: Bytes) -> Result<Vec<String>, RingError> {
        let _shared = self.gate.read().await;
        let sha = {
            use sha2::Digest;
            hex::encode(sha2::Sha256::digest(&data))
        };
        let mut written: Vec<String> = Vec::new();
        for _ in 0..3 {
            let version = self.view().layout.as_ref().map(|l| l.version);
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
            if self.view().layout.as_ref().map(|l| l.version) == version {
                return Ok(owners);
            }
        }
        Err(RingError::Conflict)
    }

    /// Reads `key` (or an inclusive byte range of it) from the first owner that has a good copy.
    pub async fn get_blob(
        &self,
        key: &BlobKey,
        range: Option<(u64, u64)>,
    ) -> Result<nodes::Fetched, RingError> {
        let view = self.view();
        let ring = view.ring.as_ref().ok_or(RingError::Empty)?;
        let mut candidates = ring.owners(&key.ring_key());
        if let Some(prev) = &view.previous {
            for n in prev.owners(&key.ring_key()) {
                if !candidates.contains(&n) {
                    candidates.push(n);
                }
            }
        }
        let mut all_absent = true;
        for (i, node) in candidates.iter().enumerate() {
            let result = self.nodes.get(node, key, range).await;
            let label = match &result {
                Ok(_) => "ok",
                Err(NodeError::NotFound { .. }) => "missing",
                Err(_) => "error",
            };
            metrics::counter!("distributary_ring_reads_total", "node" => node.clone(), "result" => label).increment(1);
            match result {
                Ok(f) => {
                    if i > 0 {
                        metrics::counter!("distributary_ring_read_fallbacks_total").increment(1);
                        tracing::info!(%key, %node, "read served by a fallback replica");
                    }
                    return Ok(f);
                }
                Err(NodeError::NotFound { .. }) => {}
                Err(e) => {
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

    /// Deletes `key` from its owners (and previous owners); best effort.
    pub async fn delete_blob(&self, key: &BlobKey) {
        let view = self.view();
        let mut nodes: Vec<String> = view
            .ring
            .as_ref()
            .map(|r| r.owners(&key.ring_key()))
            .unwrap_or_default();
        if let Some(prev) = &view.previous {
            for n in prev.owners(&key.ring_key()) {
                if !nodes.contains(&n) {
                    nodes.push(n);
                }
            }
        }
        for n in nodes {
            if let Err(e) = self.nodes.delete(&n, key).await {
                tracing::warn!(%key, error = %e, "delete failed; the blob stays until the next cleanup");
            }
        }
    }
}

/// Counts one replica write; a sync helper keeps the metrics temporaries out of async state.
fn count_write(node: &str, ok: bool) {
    let result = if ok { "ok" } else { "error" };
    metrics::counter!("distributary_ring_writes_total", "node" => node.to_owned(), "result" => result).increment(1);
}
