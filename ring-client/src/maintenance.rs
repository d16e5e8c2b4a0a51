//! Coordination between broadcasters sharing one metadata store.
//!
//! - The maintenance lock: migration, repair and sweep each decide from listings of every node and then
//!   copy or delete; two of them interleaved could delete a copy the other just counted on. One lock in the
//!   metadata store (compare-and-swap, renewed while the work runs) lets one of them run at a time across
//!   every broadcaster.
//! - Upload leases: a live upload's claim on the blobs it writes, renewed while it runs; the sweep never
//!   removes a blob under a live lease, however old the upload.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use meta::UploadLease;
use tokio_util::sync::CancellationToken;

use crate::{Cluster, RingError};

/// Name of the maintenance lock.
pub const MAINTENANCE_LOCK: &str = "ring-maintenance";

/// How long the lock holds without renewal: a broadcaster that died frees it after this.
pub const LOCK_TTL: Duration = Duration::from_secs(30);

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

/// A live upload's lease; dropping it stops the renewal and removes the lease.
#[derive(Debug)]
pub struct LeaseGuard {
    id: String,
    stop: CancellationToken,
    cluster: Arc<Cluster>,
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        self.stop.cancel();
        let (cluster, id) = (self.cluster.clone(), std::mem::take(&mut self.id));
        // Outside a runtime (process exit) the lease simply lapses.
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                if let Err(e) = cluster.meta.delete_lease(&id).await {
                    tracing::warn!(lease = %id, error = %e, "could not remove an upload lease; it lapses");
                }
            });
        }
    }
}

impl Cluster {
    /// Takes a lease on the blob ids in `prefixes` for upload `id`, renewed until the guard is dropped.
    /// Drop it only after the upload's record is written (commit) or its blobs deleted (abort): the sweep
    /// relies on that order.
    pub async fn lease(
        self: &Arc<Self>,
        id: &str,
        prefixes: Vec<String>,
    ) -> Result<LeaseGuard, RingError> {
        let lease = UploadLease {
            id: id.to_owned(),
            prefixes,
            holder: self.holder.clone(),
            expires_unix_ms: now_ms() + self.lease_ttl.as_millis() as u64,
        };
        self.meta.put_lease(&lease).await?;
        let stop = CancellationToken::new();
        let (me, stopped, ttl) = (self.clone(), stop.clone(), self.lease_ttl);
        tokio::spawn(async move {
            let mut lease = lease;
            loop {
                tokio::select! {
                    _ = stopped.cancelled() => break,
                    _ = tokio::time::sleep(ttl / 3) => {
                        lease.expires_unix_ms = now_ms() + ttl.as_millis() as u64;
                        if let Err(e) = me.meta.put_lease(&lease).await {
                            tracing::warn!(lease = %lease.id, error = %e, "could not renew an upload lease");
                        }
                    }
                }
            }
        });
        Ok(LeaseGuard {
            id: id.to_owned(),
            stop,
            cluster: self.clone(),
        })
    }

    /// Runs `work` holding the maintenance lock, waiting up to `wait` for it. The lock is renewed while
    /// `work` runs; if it is lost (the metadata store unreachable for longer than its TTL), `work` is
    /// stopped, since another broadcaster may then start maintenance of its own.
    pub async fn with_maintenance<T, F>(
        &self,
        what: &str,
        wait: Duration,
        work: F,
    ) -> Result<T, RingError>
    where
        F: Future<Output = Result<T, RingError>>,
    {
        // One holder per task, not per process: a sweep in this process must not take over the lock of a
        // migration this process runs (it would then "roll back" a migration that is alive).
        let holder = format!("{}-{}", self.holder, &common::cluster::nonce()[..8]);
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if self
                .meta
                .try_lock(MAINTENANCE_LOCK, &holder, LOCK_TTL)
                .await?
            {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(RingError::Busy(format!(
                    "cannot start {what}: another migration, repair or sweep is running; try again"
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let renew = async {
            loop {
                tokio::time::sleep(LOCK_TTL / 3).await;
                match self
                    .meta
                    .try_lock(MAINTENANCE_LOCK, &holder, LOCK_TTL)
                    .await
                {
                    Ok(true) => {}
                    Ok(false) => return,
                    Err(e) => tracing::warn!(error = %e, "could not renew the maintenance lock"),
                }
            }
        };
        let result = tokio::select! {
            r = work => r,
            _ = renew => Err(RingError::Busy(format!("{what} stopped: the maintenance lock was lost"))),
        };
        if let Err(e) = self.meta.unlock(MAINTENANCE_LOCK, &holder).await {
            tracing::warn!(error = %e, "could not release the maintenance lock; it lapses");
        }
        result
    }
}
