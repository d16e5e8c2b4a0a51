//! Background workers: the housekeeping sweep every `BROADCASTER_GC_INTERVAL_SECS` and a repair (with a
//! scrub of every node) every `BROADCASTER_REPAIR_INTERVAL_SECS`. Both take the ring's maintenance lock,
//! so with several broadcasters on one metadata store one of them works at a time and the others skip.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::ring::{Cluster, RingError};

/// Starts the workers on `tracker`; they stop when `shutdown` fires.
pub fn spawn(
    cluster: Arc<Cluster>,
    config: &Config,
    shutdown: CancellationToken,
    tracker: &TaskTracker,
) {
    let (gc_every, grace) = (config.gc_interval, config.orphan_grace);
    let (c, stop) = (cluster.clone(), shutdown.clone());
    tracker.spawn(every(gc_every, stop, move || {
        let c = c.clone();
        async move {
            match c.sweep(grace).await {
                Ok(_) | Err(RingError::Busy(_)) => {}
                Err(e) => tracing::warn!(error = %e, "housekeeping sweep failed"),
            }
        }
    }));
    if !config.repair_interval.is_zero() {
        let c = cluster;
        tracker.spawn(every(config.repair_interval, shutdown, move || {
            let c = c.clone();
            async move {
                match c.repair(true).await {
                    Ok(r) if r.copies_made > 0 || !r.unrecoverable.is_empty() => tracing::warn!(
                        copies = r.copies_made,
                        unrecoverable = r.unrecoverable.len(),
                        "background repair restored copies"
                    ),
                    Ok(_) | Err(RingError::Busy(_)) => {}
                    Err(e) => tracing::warn!(error = %e, "background repair failed"),
                }
            }
        }));
    }
}

/// Runs `work` every `period` (first after one period) until `stop`.
async fn every<F, Fut>(period: Duration, stop: CancellationToken, work: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(period) => {}
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = work() => {}
        }
    }
}
