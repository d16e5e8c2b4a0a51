//! Housekeeping: what crashes leave behind. A broadcaster killed mid-upload leaves chunks no record
//! references; a dash reader killed mid-transcode leaves segments; a video whose upload died stays
//! `processing` and holds its name. The sweep removes such blobs and fails such videos, and never touches
//! what a live upload (one holding a lease) writes.
//!
//! Why it cannot remove live data: nodes are listed first, then leases, then records. A blob in the
//! listing was written before it; its upload took its lease before writing and drops it only after its
//! record is written (commit) or its blobs deleted (abort), so the blob is either under a lease read
//! afterwards, or referenced by a record read after that, or garbage. Deletes are conditional on the
//! blob's age by the node's own clock, so a blob written again after the listing survives.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use meta::VideoRecord;
use serde::Serialize;

use crate::maintenance::now_ms;
use crate::nodes::BlobKey;
use crate::{files, Cluster, RingError};

/// What one sweep did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SweepReport {
    /// Blob copies removed because nothing references them.
    pub orphans_removed: usize,
    /// Videos turned from `processing` to `failed` because nothing processes them any more.
    pub videos_failed: usize,
    /// Unreferenced copies kept because they are younger than the grace period.
    pub kept_young: usize,
}

impl Cluster {
    /// One sweep, if no other maintenance runs now ([`RingError::Busy`] otherwise). Nothing younger than
    /// `grace` is removed or failed.
    pub async fn sweep(self: &Arc<Self>, grace: Duration) -> Result<SweepReport, RingError> {
        let me = self.clone();
        tokio::spawn(async move {
            me.with_maintenance("the sweep", Duration::from_secs(2), me.sweep_locked(grace))
                .await
        })
        .await
        .map_err(|e| RingError::Membership(format!("sweep task failed: {e}")))?
    }

    /// Leases live now, by the prefixes they protect. A lease counts as live for `grace` after its expiry,
    /// which absorbs clock skew between the broadcasters.
    async fn live_prefixes(&self, grace: Duration) -> Result<HashSet<String>, RingError> {
        let now = now_ms();
        Ok(self
            .meta
            .list_leases()
            .await?
            .into_iter()
            .filter(|l| l.expires_unix_ms + grace.as_millis() as u64 > now)
            .flat_map(|l| l.prefixes)
            .collect())
    }

    async fn sweep_locked(&self, grace: Duration) -> Result<SweepReport, RingError> {
        let mut report = SweepReport::default();
        let Some(layout) = self.settled_layout().await? else {
            return Ok(report);
        };
        // 1. Listings, 2. leases, 3. records: in this order (see the module docs).
        let mut listings = Vec::new();
        for node in &layout.nodes {
            match self.nodes.list(node, false).await {
                Ok(blobs) => listings.push((node.clone(), blobs)),
                Err(e) => {
                    tracing::warn!(%node, error = %e, "node unreachable; its orphans wait for the next sweep")
                }
            }
        }
        let live = self.live_prefixes(grace).await?;
        let files = self.meta.list_files().await?;
        let videos = self.meta.list_videos().await?;

        let now = now_ms();
        let mut referenced: HashSet<String> = HashSet::new();
        for f in &files {
            for i in 0..f.chunks {
                referenced.insert(files::chunk_key(&f.upload_id, i).ring_key());
            }
        }
        for v in &videos {
            if v.status == VideoRecord::FAILED {
                continue;
            }
            for f in v.files.iter().chain(v.digests.keys()) {
                referenced.insert(format!("{}/{f}", v.id));
            }
        }

        // Videos nothing processes any more: failed, which frees the name and unreferences their files.
        let stuck: Vec<&VideoRecord> = videos
            .iter()
            .filter(|v| v.status == VideoRecord::PROCESSING)
            .filter(|v| !live.contains(&v.id))
            .filter(|v| v.created_unix_ms + (grace.as_millis() as u64) <= now)
            .collect();
        if !stuck.is_empty() {
            // Re-read: an upload of the same id may have started since.
            let live_now = self.live_prefixes(grace).await?;
            for v in stuck {
                if live_now.contains(&v.id) {
                    continue;
                }
                let failed = VideoRecord {
                    status: VideoRecord::FAILED.to_owned(),
                    error: Some(
                        "processing stopped: the broadcaster or transcoder handling the upload went away"
                            .into(),
                    ),
                    files: Vec::new(),
                    digests: Default::default(),
                    progress_percent: None,
                    ..v.clone()
                };
                self.meta.put_video(&failed).await?;
                tracing::warn!(video = %v.id, "video stuck in processing marked failed");
                report.videos_failed += 1;
                for f in v.files.iter().chain(v.digests.keys()) {
                    referenced.remove(&format!("{}/{f}", v.id));
                }
            }
        }

        for (node, blobs) in listings {
            for b in blobs {
                let Some(key) = BlobKey::parse(&b.key) else {
                    continue;
                };
                // `raw/...` are node-local uploads of the stream protocol, not ring blobs.
                if key.id == "raw" || referenced.contains(&b.key) || live.contains(&key.id) {
                    continue;
                }
                if b.age_secs < grace.as_secs() {
                    report.kept_young += 1;
                    continue;
                }
                match self.nodes.delete_if_older(&node, &key, Some(grace)).await {
                    Ok(true) => {
                        report.orphans_removed += 1;
                        tracing::info!(key = %b.key, %node, "orphan blob removed");
                    }
                    Ok(false) => report.kept_young += 1,
                    Err(e) => {
                        tracing::warn!(key = %b.key, %node, error = %e, "could not remove an orphan blob")
                    }
                }
            }
        }
        metrics::counter!("distributary_gc_orphans_removed_total")
            .increment(report.orphans_removed as u64);
        metrics::counter!("distributary_gc_videos_failed_total")
            .increment(report.videos_failed as u64);
        if report.orphans_removed + report.videos_failed > 0 {
            tracing::info!(
                orphans = report.orphans_removed,
                videos_failed = report.videos_failed,
                "housekeeping sweep"
            );
        }
        Ok(report)
    }
}
