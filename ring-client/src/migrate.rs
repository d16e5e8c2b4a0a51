//! Membership changes, run as a worker that ring writes never wait for.
//!
//! Members are identities: a node proves its id (kept in its data directory) before it joins, and an
//! address that reaches a member already in the ring (`localhost:P` for `127.0.0.1:P`) is refused, so no
//! migration can ever treat one disk as two nodes and delete the "old" copies of its own files.
//!
//! Order, for safety:
//! 1. prepare: the stored layout gains `next` (the new membership); from then on writers place each blob
//!    on its owners under both memberships;
//! 2. copy: every blob whose owners change is copied to its new owners from a copy that matches the digest
//!    recorded when it was written (the receiving node checks the digest again before storing);
//! 3. switch: `next` becomes the membership (compare-and-swap on the version);
//! 4. reconcile: blobs that landed on old owners only (a writer with a stale view) are copied over;
//! 5. cleanup: a copy on a node that no longer owns it is deleted only once every new owner holds a
//!    verified copy.
//!
//! A failure before the switch restores the old membership; copies already made are surplus that repair
//! removes. A broadcaster that dies mid-migration leaves `next` set; writes stay safe (they go to both
//! memberships) and the next maintenance task rolls it back.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use hashring::Ring;
use meta::{Membership, RingLayout};
use serde::Serialize;

use super::nodes::{BlobInfo, BlobKey};
use super::{ring_of, Cluster, RingError};

/// Blob copies in flight at once during a migration.
const COPY_CONCURRENCY: usize = 16;

/// How long a membership change waits for another broadcaster's maintenance to finish.
const LOCK_WAIT: Duration = Duration::from_secs(120);

/// Result of a membership change.
#[derive(Debug, Clone, Serialize)]
pub struct Change {
    /// The node added or removed.
    pub node: String,
    /// Blobs copied to a new owner.
    pub migrated: usize,
    /// Layout version now in force.
    pub version: u64,
}

/// A migration in progress, as `GET /admin/nodes` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Progress {
    /// The node being added or removed.
    pub node: String,
    /// `add` or `remove`.
    pub action: &'static str,
    /// `prepare`, `copy`, `switch`, `reconcile` or `cleanup`.
    pub phase: &'static str,
    /// Blobs to copy in this phase.
    pub total: usize,
    /// Blobs copied so far in this phase.
    pub copied: usize,
    /// Seconds since the migration started.
    pub elapsed_secs: u64,
    #[serde(skip)]
    started: Option<Instant>,
}

/// Who holds a blob, and the digest each holder claims for it.
#[derive(Debug, Default)]
pub(crate) struct Placement {
    pub(crate) holders: Vec<(String, String)>,
}

impl Placement {
    fn good(&self, expected: &str) -> Vec<String> {
        self.holders
            .iter()
            .filter(|(_, sha)| sha.eq_ignore_ascii_case(expected))
            .map(|(n, _)| n.clone())
            .collect()
    }
}

/// One planned copy: a blob, the digest it must have, where to read it, where to write it.
pub(crate) struct Copy {
    pub(crate) key: BlobKey,
    pub(crate) sha: String,
    pub(crate) sources: Vec<String>,
    pub(crate) targets: Vec<String>,
}

impl Cluster {
    /// Adds `node` to the ring and moves to it the blobs it now owns; returns once that is done.
    pub async fn add_node(self: &Arc<Self>, node: &str) -> Result<Change, RingError> {
        hashring::validate_node(node).map_err(|e| RingError::Membership(e.to_string()))?;
        let _admin = self.admin.lock().await;
        // Checked before taking the lock so that a typo is refused at once.
        let id = self.prove_identity(node).await?;
        let me = self.clone();
        let node = node.to_owned();
        // A worker task: the client hanging up must not stop a migration half way.
        tokio::spawn(async move {
            me.with_maintenance("the migration", LOCK_WAIT, me.add_locked(&node, &id))
                .await
        })
        .await
        .map_err(|e| RingError::Membership(format!("migration task failed: {e}")))?
    }

    /// Removes `node` from the ring, first copying what it held to the nodes that now own it. A dead node can
    /// be removed as long as every blob it held has another good replica.
    pub async fn remove_node(self: &Arc<Self>, node: &str) -> Result<Change, RingError> {
        let _admin = self.admin.lock().await;
        let me = self.clone();
        let node = node.to_owned();
        tokio::spawn(async move {
            me.with_maintenance("the migration", LOCK_WAIT, me.remove_locked(&node))
                .await
        })
        .await
        .map_err(|e| RingError::Membership(format!("migration task failed: {e}")))?
    }

    /// The migration this process runs, if any.
    pub fn migration(&self) -> Option<Progress> {
        let guard = self.progress.lock().unwrap_or_else(|e| e.into_inner());
        guard.clone().map(|mut p| {
            p.elapsed_secs = p.started.map(|s| s.elapsed().as_secs()).unwrap_or(0);
            p
        })
    }

    fn set_progress(&self, f: impl FnOnce(&mut Progress)) {
        let mut guard = self.progress.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = guard.as_mut() {
            f(p);
            metrics::gauge!("distributary_migration_blobs_pending")
                .set(p.total.saturating_sub(p.copied) as f64);
        }
    }

    /// The stored layout with the maintenance lock held: a `next` left by a broadcaster that died
    /// mid-migration is rolled back first.
    pub(crate) async fn settled_layout(&self) -> Result<Option<RingLayout>, RingError> {
        self.refresh().await?;
        let Some(record) = self.view().record.clone() else {
            return Ok(None);
        };
        if record.next.is_none() {
            return Ok(Some(record));
        }
        tracing::warn!(
            version = record.version,
            "an unfinished migration was found (its broadcaster stopped); restoring the membership before it"
        );
        let restored = RingLayout {
            version: record.version + 1,
            next: None,
            ..record.clone()
        };
        self.meta
            .put_layout(Some(record.version), &restored)
            .await
            .map_err(conflict)?;
        self.install(restored.clone());
        Ok(Some(restored))
    }

    /// Fills in the ids of members the layout does not know yet (seeded while they were down).
    async fn learn_ids(&self, record: &mut RingLayout) {
        record.ids.resize(record.nodes.len(), String::new());
        for (i, n) in record.nodes.iter().enumerate() {
            if record.ids[i].is_empty() {
                if let Ok(id) = self.prove_identity(n).await {
                    record.ids[i] = id;
                }
            }
        }
    }

    async fn add_locked(&self, node: &str, id: &str) -> Result<Change, RingError> {
        let Some(mut old) = self.settled_layout().await? else {
            let first = RingLayout {
                version: 1,
                nodes: vec![node.to_owned()],
                vnodes: self.vnodes,
                replication: self.replication,
                ids: vec![id.to_owned()],
                next: None,
            };
            self.meta.put_layout(None, &first).await.map_err(conflict)?;
            self.install(first);
            tracing::info!(%node, "ring created");
            return Ok(Change {
                node: node.to_owned(),
                migrated: 0,
                version: 1,
            });
        };
        if old.nodes.iter().any(|n| n == node) {
            return Err(RingError::Duplicate(format!(
                "node {node} is already in the ring"
            )));
        }
        self.learn_ids(&mut old).await;
        if let Some(pos) = old.ids.iter().position(|m| m == id) {
            return Err(RingError::Duplicate(format!(
                "{node} reaches node {} (id {id}), which is already in the ring; \
                 nothing was changed (to move a member to a new address, remove it and add the new one)",
                old.nodes[pos]
            )));
        }
        let mut next = Membership {
            nodes: old.nodes.clone(),
            ids: old.ids.clone(),
        };
        next.nodes.push(node.to_owned());
        next.ids.push(id.to_owned());
        self.migrate(old, next, node, "add", None).await
    }

    async fn remove_locked(&self, node: &str) -> Result<Change, RingError> {
        let Some(mut old) = self.settled_layout().await? else {
            return Err(RingError::Membership(format!(
                "node {node} is not in the ring"
            )));
        };
        let Some(pos) = old.nodes.iter().position(|n| n == node) else {
            return Err(RingError::Membership(format!(
                "node {node} is not in the ring"
            )));
        };
        if old.nodes.len() == 1 {
            return Err(RingError::Membership(format!(
                "node {node} is the last node of the ring and cannot be removed"
            )));
        }
        self.learn_ids(&mut old).await;
        let mut next = Membership {
            nodes: old.nodes.clone(),
            ids: old.ids.clone(),
        };
        next.nodes.remove(pos);
        next.ids.remove(pos);
        self.migrate(old, next, node, "remove", Some(node)).await
    }

    async fn migrate(
        &self,
        old: RingLayout,
        next: Membership,
        node: &str,
        action: &'static str,
        leaving: Option<&str>,
    ) -> Result<Change, RingError> {
        let started = Instant::now();
        *self.progress.lock().unwrap_or_else(|e| e.into_inner()) = Some(Progress {
            node: node.to_owned(),
            action,
            phase: "prepare",
            total: 0,
            copied: 0,
            elapsed_secs: 0,
            started: Some(started),
        });
        metrics::gauge!("distributary_migration_running").set(1.0);
        let _running = MigrationRunning(self);

        // 1. Prepare: writers start placing blobs on both memberships.
        let transition = RingLayout {
            version: old.version + 1,
            next: Some(next.clone()),
            ..old.clone()
        };
        self.meta
            .put_layout(Some(old.version), &transition)
            .await
            .map_err(conflict)?;
        self.install(transition.clone());
        let new_ring = ring_of(&transition, &next.nodes);
        let mut members = old.nodes.clone();
        members.extend(
            next.nodes
                .iter()
                .filter(|n| !old.nodes.contains(n))
                .cloned(),
        );

        // 2. Copy, while the old membership still serves every read.
        self.set_progress(|p| p.phase = "copy");
        let copied = async {
            let recorded = self.recorded_digests().await?;
            let placements = self.inventory(&members, leaving, false).await?;
            // With one copy per blob, what a dead leaving node held is gone; refuse rather than pretend.
            if placements.1 && old.replication < 2 {
                return Err(RingError::Unreachable(format!(
                    "{node} is down and replication is 1: its blobs have no other copy"
                )));
            }
            let plan = plan_copies(&placements.0, &recorded, &new_ring, leaving);
            self.run_copies(plan).await
        }
        .await;
        let migrated = match copied {
            Ok(n) => n,
            Err(e) => {
                self.roll_back(&transition, &old).await;
                return Err(RingError::Membership(format!(
                    "migration stopped, ring unchanged: {e}"
                )));
            }
        };

        // 3. Switch.
        self.set_progress(|p| {
            p.phase = "switch";
            p.total = 0;
            p.copied = 0;
        });
        let switched = RingLayout {
            version: transition.version + 1,
            nodes: next.nodes.clone(),
            ids: next.ids.clone(),
            next: None,
            ..old.clone()
        };
        self.meta
            .put_layout(Some(transition.version), &switched)
            .await
            .map_err(conflict)?;
        self.install(switched.clone());

        // 4 and 5. Reconcile, then delete copies that are now redundant.
        self.set_progress(|p| p.phase = "reconcile");
        let (caught_up, deleted) = match self
            .reconcile_and_clean(&members, &new_ring, leaving)
            .await
        {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "catch-up after the switch failed; old copies are kept for repair");
                (0, 0)
            }
        };
        let total = migrated + caught_up;
        metrics::histogram!("distributary_migration_seconds")
            .record(started.elapsed().as_secs_f64());
        tracing::info!(
            %node, action, version = switched.version, migrated = total, deleted,
            ms = started.elapsed().as_millis() as u64, "ring membership changed"
        );
        Ok(Change {
            node: node.to_owned(),
            migrated: total,
            version: switched.version,
        })
    }

    async fn roll_back(&self, transition: &RingLayout, old: &RingLayout) {
        let restored = RingLayout {
            version: transition.version + 1,
            next: None,
            ..old.clone()
        };
        match self
            .meta
            .put_layout(Some(transition.version), &restored)
            .await
        {
            Ok(()) => self.install(restored),
            Err(e) => tracing::error!(
                error = %e,
                "could not restore the membership after a failed migration; the next maintenance task will"
            ),
        }
    }

    async fn reconcile_and_clean(
        &self,
        members: &[String],
        new_ring: &Ring,
        leaving: Option<&str>,
    ) -> Result<(usize, usize), RingError> {
        let recorded = self.recorded_digests().await?;
        let (placements, _) = self.inventory(members, leaving, false).await?;
        let plan = plan_copies(&placements, &recorded, new_ring, leaving);
        let caught_up = self.run_copies(plan).await?;
        self.set_progress(|p| p.phase = "cleanup");
        // After the copies every new owner holds a good copy; re-list to delete only what is proven.
        let (placements, _) = self.inventory(members, leaving, false).await?;
        let mut deletes = Vec::new();
        for (key, p) in &placements {
            let Some(bk) = BlobKey::parse(key) else {
                continue;
            };
            let expected = expected_digest(key, p, &recorded);
            let good = p.good(&expected);
            let owners = new_ring.owners(key);
            if !owners.iter().all(|o| good.contains(o)) {
                continue;
            }
            for (h, _) in &p.holders {
                if !owners.contains(h) {
                    deletes.push((bk.clone(), h.clone()));
                }
            }
        }
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
        Ok((caught_up, deleted))
    }

    /// Which node holds which blob with which claimed digest, from every member's listing. Every member
    /// must answer except a leaving one; the flag says whether the leaving one was unreachable.
    pub(crate) async fn inventory(
        &self,
        members: &[String],
        leaving: Option<&str>,
        verify: bool,
    ) -> Result<(BTreeMap<String, Placement>, bool), RingError> {
        let lists = futures_util::future::join_all(
            members
                .iter()
                .map(|n| async move { (n, self.nodes.list(n, verify).await) }),
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
                placements
                    .entry(b.key)
                    .or_default()
                    .holders
                    .push((node.clone(), b.sha256));
            }
        }
        Ok((placements, dead_leaving))
    }

    /// Runs planned copies; returns how many blobs were copied. Stops at the first blob that could not be
    /// copied from any good source.
    pub(crate) async fn run_copies(&self, plan: Vec<Copy>) -> Result<usize, RingError> {
        let n = plan.len();
        self.set_progress(|p| {
            p.total = n;
            p.copied = 0;
        });
        let results: Vec<Result<(), RingError>> = futures_util::stream::iter(plan)
            .map(|c| async move {
                let r = self.copy_blob(&c.key, &c.sha, &c.sources, &c.targets).await;
                if r.is_ok() {
                    metrics::counter!("distributary_migration_blobs_copied_total").increment(1);
                    self.set_progress(|p| p.copied += 1);
                }
                r
            })
            .buffer_unordered(COPY_CONCURRENCY)
            .collect()
            .await;
        results.into_iter().find(|r| r.is_err()).unwrap_or(Ok(()))?;
        Ok(n)
    }

    /// Copies `key` from the first source whose bytes hash to `sha` onto every target.
    pub(crate) async fn copy_blob(
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
                    if !common::blob_digest::matches(sha, &f.data) {
                        metrics::counter!("distributary_ring_read_corrupt_total", "node" => src.clone())
                            .increment(1);
                        tracing::error!(%key, node = %src, "copy source does not match the recorded digest; skipped");
                        last = Some(RingError::NoReplica(key.to_string()));
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

/// The digest a blob must have: the one recorded when it was written; for a blob no record names yet (an
/// upload in flight) the digest most holders agree on.
pub(crate) fn expected_digest(
    key: &str,
    p: &Placement,
    recorded: &HashMap<String, String>,
) -> String {
    if let Some(sha) = recorded.get(key) {
        return sha.clone();
    }
    let mut votes: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, sha) in &p.holders {
        *votes.entry(sha.as_str()).or_default() += 1;
    }
    votes
        .into_iter()
        .max_by_key(|(_, n)| *n)
        .map(|(s, _)| s.to_owned())
        .unwrap_or_default()
}

/// The copies that give every blob's owners under `ring` a good copy. Blobs with no good copy anywhere are
/// left out (and logged): nothing can restore them.
pub(crate) fn plan_copies(
    placements: &BTreeMap<String, Placement>,
    recorded: &HashMap<String, String>,
    ring: &Ring,
    leaving: Option<&str>,
) -> Vec<Copy> {
    let mut plan = Vec::new();
    for (key, p) in placements {
        let Some(bk) = BlobKey::parse(key) else {
            continue;
        };
        if bk.id == "raw" {
            // Node-local uploads of the stream protocol, not ring blobs.
            continue;
        }
        let sha = expected_digest(key, p, recorded);
        let good = p.good(&sha);
        let missing: Vec<String> = ring
            .owners(key)
            .into_iter()
            .filter(|n| !good.contains(n))
            .collect();
        if missing.is_empty() {
            continue;
        }
        if good.is_empty() {
            tracing::error!(%key, "no copy matches the recorded digest; it cannot be moved");
            continue;
        }
        // Read from nodes that stay first: a leaving node may be slow or going away.
        let mut sources: Vec<String> = good
            .iter()
            .filter(|h| Some(h.as_str()) != leaving)
            .cloned()
            .collect();
        sources.extend(good.iter().filter(|h| Some(h.as_str()) == leaving).cloned());
        plan.push(Copy {
            key: bk,
            sha,
            sources,
            targets: missing,
        });
    }
    plan
}

/// Clears the migration state however the migration ends.
struct MigrationRunning<'a>(&'a Cluster);

impl Drop for MigrationRunning<'_> {
    fn drop(&mut self) {
        *self.0.progress.lock().unwrap_or_else(|e| e.into_inner()) = None;
        metrics::gauge!("distributary_migration_running").set(0.0);
        metrics::gauge!("distributary_migration_blobs_pending").set(0.0);
    }
}

pub(crate) fn conflict(e: meta::MetaError) -> RingError {
    match e {
        meta::MetaError::Conflict | meta::MetaError::AlreadyExists => RingError::Conflict,
        other => RingError::Meta(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(nodes: &[&str]) -> Ring {
        Ring::new(&hashring::Layout {
            version: 1,
            nodes: nodes.iter().map(|n| n.to_string()).collect(),
            vnodes: 64,
            replication: 2,
        })
    }

    fn placement(holders: &[(&str, &str)]) -> Placement {
        Placement {
            holders: holders
                .iter()
                .map(|(n, s)| (n.to_string(), s.to_string()))
                .collect(),
        }
    }

    #[test]
    fn the_recorded_digest_wins_over_what_nodes_claim() {
        let p = placement(&[("a:1", "bad"), ("b:1", "bad"), ("c:1", "good")]);
        let mut recorded = HashMap::new();
        assert_eq!(expected_digest("v/f", &p, &recorded), "bad");
        recorded.insert("v/f".to_owned(), "good".to_owned());
        assert_eq!(expected_digest("v/f", &p, &recorded), "good");
    }

    #[test]
    fn copies_come_only_from_good_holders_and_go_to_every_owner_without_one() {
        let r = ring(&["a:1", "b:1", "c:1", "d:1"]);
        let key = "vid/chunk-0-00001.m4s";
        let owners = r.owners(key);
        // One owner holds a tampered copy, a non-owner holds the good one.
        let outsider = ["a:1", "b:1", "c:1", "d:1"]
            .into_iter()
            .find(|n| !owners.iter().any(|o| o == n))
            .expect("a non-owner");
        let mut placements = BTreeMap::new();
        placements.insert(
            key.to_owned(),
            placement(&[(owners[0].as_str(), "evil"), (outsider, "good")]),
        );
        let recorded: HashMap<String, String> = [(key.to_owned(), "good".to_owned())].into();
        let plan = plan_copies(&placements, &recorded, &r, None);
        assert_eq!(plan.len(), 1);
        assert_eq!(plan[0].sources, vec![outsider.to_owned()]);
        let mut targets = plan[0].targets.clone();
        targets.sort();
        let mut want = owners.clone();
        want.sort();
        assert_eq!(targets, want, "the tampered owner is rewritten too");
        assert_eq!(plan[0].sha, "good");
    }

    #[test]
    fn nothing_is_planned_without_a_good_copy_or_for_node_local_uploads() {
        let r = ring(&["a:1", "b:1"]);
        let mut placements = BTreeMap::new();
        placements.insert("v/f".to_owned(), placement(&[("a:1", "evil")]));
        placements.insert("raw/upload.iso".to_owned(), placement(&[("a:1", "x")]));
        let recorded: HashMap<String, String> = [("v/f".to_owned(), "good".to_owned())].into();
        assert!(plan_copies(&placements, &recorded, &r, None).is_empty());
    }
}
