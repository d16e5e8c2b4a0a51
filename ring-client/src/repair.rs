//! Repair: every blob a committed file or video references is brought back to R copies, on its current
//! owners, that match the digest recorded when it was written. Copies a node lost, or that fail the node's
//! scrub (every payload hashed against its header) or the recorded digest, are rewritten from a good
//! replica; copies on nodes that do not own the blob are removed once every owner holds a good one.
//! Blobs nothing references are the sweep's business, not repair's.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use serde::Serialize;

use crate::migrate::{Copy, Placement};
use crate::nodes::BlobKey;
use crate::{ring_of, Cluster, RingError};

/// How long a repair waits for another broadcaster's maintenance to finish.
const LOCK_WAIT: Duration = Duration::from_secs(120);

/// What a repair did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RepairReport {
    /// Recorded blobs checked.
    pub checked: usize,
    /// Copies written to owners that lacked a good one.
    pub copies_made: usize,
    /// Copies removed from nodes that do not own their blob.
    pub surplus_removed: usize,
    /// Blobs with no good copy on any node that answered.
    pub unrecoverable: Vec<String>,
    /// Members that did not answer (their copies were neither checked nor repaired).
    pub unreachable: Vec<String>,
}

impl Cluster {
    /// Runs a repair as a worker holding the maintenance lock. With `scrub`, nodes hash every payload
    /// before listing it, so silent corruption on disk is found too.
    pub async fn repair(self: &Arc<Self>, scrub: bool) -> Result<RepairReport, RingError> {
        let me = self.clone();
        tokio::spawn(async move {
            me.with_maintenance("the repair", LOCK_WAIT, me.repair_locked(scrub))
                .await
        })
        .await
        .map_err(|e| RingError::Membership(format!("repair task failed: {e}")))?
    }

    async fn repair_locked(&self, scrub: bool) -> Result<RepairReport, RingError> {
        let mut report = RepairReport::default();
        let Some(layout) = self.settled_layout().await? else {
            return Ok(report);
        };
        let ring = ring_of(&layout, &layout.nodes);
        let recorded = self.recorded_digests().await?;
        let lists = futures_util::future::join_all(
            layout
                .nodes
                .iter()
                .map(|n| async move { (n.clone(), self.nodes.list(n, scrub).await) }),
        )
        .await;
        let mut placements: BTreeMap<String, Placement> = BTreeMap::new();
        for (node, list) in lists {
            match list {
                Ok(blobs) => {
                    for b in blobs {
                        placements
                            .entry(b.key)
                            .or_default()
                            .holders
                            .push((node.clone(), b.sha256));
                    }
                }
                Err(e) => {
                    tracing::warn!(%node, error = %e, "node unreachable; repair skips its copies");
                    report.unreachable.push(node);
                }
            }
        }
        let empty = Placement::default();
        let mut plan = Vec::new();
        let mut settled = Vec::new();
        for (key, sha) in &recorded {
            let Some(bk) = BlobKey::parse(key) else {
                continue;
            };
            report.checked += 1;
            let p = placements.get(key).unwrap_or(&empty);
            let good: Vec<String> = p
                .holders
                .iter()
                .filter(|(_, s)| s.eq_ignore_ascii_case(sha))
                .map(|(n, _)| n.clone())
                .collect();
            let owners = ring.owners(key);
            let missing: Vec<String> = owners
                .iter()
                .filter(|o| !good.contains(o) && !report.unreachable.contains(o))
                .cloned()
                .collect();
            if good.is_empty() {
                if report.unreachable.is_empty() {
                    tracing::error!(%key, "no node holds a copy matching the recorded digest");
                    report.unrecoverable.push(key.clone());
                }
                continue;
            }
            let surplus: Vec<String> = p
                .holders
                .iter()
                .map(|(n, _)| n.clone())
                .filter(|n| !owners.contains(n))
                .collect();
            if !missing.is_empty() {
                plan.push(Copy {
                    key: bk.clone(),
                    sha: sha.clone(),
                    sources: good,
                    targets: missing,
                });
            }
            if !surplus.is_empty() && owners.iter().all(|o| !report.unreachable.contains(o)) {
                settled.push((bk, surplus));
            }
        }
        let copies: Vec<(String, usize, bool)> = futures_util::stream::iter(plan)
            .map(|c| async move {
                let ok = self
                    .copy_blob(&c.key, &c.sha, &c.sources, &c.targets)
                    .await
                    .inspect_err(
                        |e| tracing::error!(key = %c.key, error = %e, "repair copy failed"),
                    )
                    .is_ok();
                (c.key.to_string(), c.targets.len(), ok)
            })
            .buffer_unordered(16)
            .collect()
            .await;
        let mut failed = Vec::new();
        for (key, n, ok) in copies {
            if ok {
                report.copies_made += n;
                metrics::counter!("distributary_repair_copies_total").increment(n as u64);
            } else {
                failed.push(key);
            }
        }
        // Surplus copies go only where every owner now holds a good copy.
        for (key, surplus) in settled {
            if failed.contains(&key.to_string()) {
                continue;
            }
            for n in surplus {
                match self.nodes.delete(&n, &key).await {
                    Ok(()) => report.surplus_removed += 1,
                    Err(e) => {
                        tracing::warn!(%key, node = %n, error = %e, "could not remove a surplus copy")
                    }
                }
            }
        }
        tracing::info!(
            checked = report.checked,
            copies = report.copies_made,
            surplus = report.surplus_removed,
            unrecoverable = report.unrecoverable.len(),
            "ring repaired"
        );
        Ok(report)
    }
}
