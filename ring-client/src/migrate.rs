//! Membership changes. Order matters for safety: copy every blob whose owners change to its new owners
//! (each copy checked against the blob's SHA-256 by the receiving node), then switch the stored layout
//! (compare-and-swap on its version), then delete the copies that are no longer owned. A failure before the
//! switch leaves the ring unchanged; reads work throughout because the old owners keep their copies until
//! the new owners hold verified ones.

use std::collections::BTreeMap;

use futures_util::StreamExt;
use hashring::{Layout, Ring};

use super::nodes::{BlobInfo, BlobKey};
use super::{to_record, Cluster, RingError};

/// Blob copies in flight at once during a migration.
const COPY_CONCURRENCY: usize = 16;

/// Result of a membership change.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Change {
    /// The node added or removed.
    pub node: String,
    /// Blobs copied to a new owner.
    pub migrated: usize,
    /// Layout version now in force.
    pub version: u64,
}

struct Placement {
    sha256: String,
    holders: Vec<String>,
}

impl Cluster {
    /// Adds `node` to the ring and moves to it the blobs it now owns.
    pub async fn add_node(&self, node: &str) -> Result<Change, RingError> {
        let _admin = self.admin.lock().await;
        self.refresh().await?;
        let old = self.view().layout.clone();
        let new = match &old {
            Some(l) => l
                .with_node(node)
                .map_err(|e| RingError::Membership(e.to_string()))?,
            None => Layout {
                version: 1,
                nodes: vec![node.to_owned()],
                vnodes: self.vnodes,
                replication: self.replication,
            },
        };
        hashring::validate_node(node).map_err(|e| RingError::Membership(e.to_string()))?;
        if let Err(e) = self.nodes.healthy(node).await {
            return Err(RingError::Unreachable(format!("{node} ({e})")));
        }
        self.change(old, new, node, None).await
    }

    /// Removes `node` from the ring, first copying what it held to the nodes that now own it. A dead node can
    /// be removed as long as every blob it held has another live replica.
    pub async fn remove_node(&self, node: &str) -> Result<Change, RingError> {
        let _admin = self.admin.lock().await;
        self.refresh().await?;
        let old = self
            .view()
            .layout
            .clone()
            .ok_or_else(|| RingError::Membership(format!("node {node} is not in the ring")))?;
        let new = old
            .without_node(node)
            .map_err(|e| RingError::Membership(e.to_string()))?;
        self.change(Some(old), new, node, Some(node)).await
    }

    async fn change(
        &self,
        old: Option<Layout>,
        new: Layout,
        node: &str,
        leaving: Option<&str>,
    ) -> Result<Change, RingError> {
        // Writers wait from here until the new layout is in force, so no blob lands under the old one unseen.
        let _exclusive = self.gate.write().await;
        let Some(old) = old else {
            self.meta
                .put_layout(None, &to_record(&new))
                .await
                .map_err(conflict)?;
            self.install(new.clone());
            tracing::info!(%node, version = new.version, "ring created");
            return Ok(Change {
                node: node.to_owned(),
                migrated: 0,
                version: new.version,
            });
        };
        let new_ring = Ring::new(&new);
        let started = std::time::Instant::now();
        metrics::gauge!("distributary_migration_running").set(1.0);
        let _running = MigrationRunning;
        let mut members = old.nodes.clone();
        members.extend(new.nodes.iter().filter(|n| !old.nodes.contains(n)).cloned());

        // Copy phase: the new owners get verified copies while the old layout still serves every read.
        let placements = self.inventory(&members, old.replication, leaving).await?;
        let migrated = self
            .copy_missing(&placements, &new_ring, leaving)
            .await
            .map_err(|e| {
                RingError::Membership(format!("migration stopped, ring unchanged: {e}"))
            })?;

        // Switch.
        self.meta
            .put_layout(Some(old.version), &to_record(&new))
            .await
            .map_err(conflict)?;
        self.install(new.clone());

        // Reconcile: blobs written under the old layout by other processes while we copied are caught up
        // here (writers that finish later see the new version and place their blob again), then copies
        // that are no longer owned are deleted; only now are they redundant.
        let reconciled = match self.inventory(&members, old.replication, leaving).await {
            Ok(p) => self
                .copy_missing(&p, &new_ring, leaving)
                .await
                .map(|n| (p, n)),
            Err(e) => Err(e),
        };
        let (placements, caught_up) = match reconciled {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "catch-up copy failed; old copies are kept");
                return Ok(Change {
                    node: node.to_owned(),
                    migrated,
                    version: new.version,
                });
            }
        };
        let deletes: Vec<(BlobKey, String)> = placements
            .iter()
            .filter_map(|(key, p)| BlobKey::parse(key).map(|bk| (bk, key, p)))
            .flat_map(|(bk, key, p)| {
                let owners = new_ring.owners(key);
                p.holders
                    .iter()
                    .filter(|h| !owners.contains(h))
                    .map(|h| (bk.clone(), h.clone()))
                    .collect::<Vec<_>>()
            })
            .collect();
        let deleted = deletes.len();
        futures_util::stream::iter(deletes)
            .map(|(key, n)| async move {
                if let Err(e) = self.nodes.delete(&n, &key).await {
                    tracing::warn!(%key, node = %n, error = %e, "could not delete a migrated blob's old copy");
                }
            })
            .buffer_unordered(COPY_CONCURRENCY)
            .collect::<Vec<()>>()
            .await;
        let total = migrated + caught_up;
        metrics::histogram!("distributary_migration_seconds")
            .record(started.elapsed().as_secs_f64());
        tracing::info!(
            %node, version = new.version, migrated = total, deleted, ms = started.elapsed().as_millis() as u64,
            "ring membership changed"
        );
        Ok(Change {
            node: node.to_owned(),
            migrated: total,
            version: new.version,
        })
    }

    /// Which node holds which blob, from every member's listing. Every member must answer, except a leaving
    /// one (its blobs must then be found on another replica).
    async fn inventory(
        &self,
        members: &[String],
        replication: usize,
        leaving: Option<&str>,
    ) -> Result<BTreeMap<String, Placement>, RingError> {
        let lists = futures_util::future::join_all(
            members
                .iter()
                .map(|n| async move { (n, self.nodes.list(n).await) }),
        )
        .await;
        let mut placements: BTreeMap<String, Placement> = BTreeMap::new();
        let mut dead_leaving = false;
        for (node, list) in lists {
            let list: Vec<BlobInfo> = match list {
                Ok(l) => l,
                Err(e) if Some(node.as_str()) == leaving => {
                    tracing::warn!(%node, error = %e, "leaving node is unreachable; using other replicas");
                    dead_leaving = true;
                    continue;
                }
                Err(e) => return Err(RingError::Unreachable(format!("{node} ({e})"))),
            };
            for b in list {
                let p = placements
                    .entry(b.key.clone())
                    .or_insert_with(|| Placement {
                        sha256: b.sha256.clone(),
                        holders: Vec::new(),
                    });
                p.holders.push(node.clone());
            }
        }
        if dead_leaving && replication < 2 {
            // With one copy per blob, what the dead node held is gone; refuse rather than pretend.
            return Err(RingError::Unreachable(format!(
                "{} is down and replication is 1: its blobs have no other copy",
                leaving.unwrap_or_default()
            )));
        }
        Ok(placements)
    }

    /// Copies every blob to those of its owners under `ring` that lack it; returns how many blobs moved.
    async fn copy_missing(
        &self,
        placements: &BTreeMap<String, Placement>,
        ring: &Ring,
        leaving: Option<&str>,
    ) -> Result<usize, RingError> {
        let mut copies = Vec::new();
        for (key, p) in placements {
            let Some(bk) = BlobKey::parse(key) else {
                continue;
            };
            let missing: Vec<String> = ring
                .owners(key)
                .into_iter()
                .filter(|n| !p.holders.contains(n))
                .collect();
            if missing.is_empty() {
                continue;
            }
            let live: Vec<String> = p
                .holders
                .iter()
                .filter(|h| Some(h.as_str()) != leaving)
                .cloned()
                .collect();
            let sources = if live.is_empty() {
                p.holders.clone()
            } else {
                live
            };
            copies.push((bk, p.sha256.clone(), sources, missing));
        }
        let n = copies.len();
        metrics::gauge!("distributary_migration_blobs_pending").set(n as f64);
        let results: Vec<Result<(), RingError>> = futures_util::stream::iter(copies)
            .map(|(key, sha, sources, targets)| async move {
                let r = self.copy_blob(&key, &sha, &sources, &targets).await;
                metrics::gauge!("distributary_migration_blobs_pending").decrement(1.0);
                if r.is_ok() {
                    metrics::counter!("distributary_migration_blobs_copied_total").increment(1);
                }
                r
            })
            .buffer_unordered(COPY_CONCURRENCY)
            .collect()
            .await;
        results.into_iter().find(|r| r.is_err()).unwrap_or(Ok(()))?;
        Ok(n)
    }

    async fn copy_blob(
        &self,
        key: &BlobKey,
        sha: &str,
        sources: &[String],
        targets: &[String],
    ) -> Result<(), RingError> {
        let mut last = None;
        for src in sources {
            match self.nodes.get(src, key, None).await {
                Ok(f) => {
                    let got = {
                        use sha2::Digest;
                        hex::encode(sha2::Sha256::digest(&f.data))
                    };
                    if got != sha {
                        last = Some(RingError::Membership(format!(
                            "{key} on {src} does not match its checksum"
                        )));
                        continue;
                    }
                    for t in targets {
                        self.nodes.put(t, key, f.data.clone(), sha).await?;
                    }
                    return Ok(());
                }
                Err(e) => last = Some(e.into()),
            }
        }
        Err(last.unwrap_or_else(|| RingError::NoReplica(key.to_string())))
    }
}

/// Clears the migration gauge however the migration ends.
struct MigrationRunning;

impl Drop for MigrationRunning {
    fn drop(&mut self) {
        metrics::gauge!("distributary_migration_running").set(0.0);
        metrics::gauge!("distributary_migration_blobs_pending").set(0.0);
    }
}

fn conflict(e: meta::MetaError) -> RingError {
    match e {
        meta::MetaError::Conflict | meta::MetaError::AlreadyExists => RingError::Conflict,
        other => RingError::Meta(other),
    }
}
