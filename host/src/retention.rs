//! Background clean-up: enforces retention limits and releases deleted topics' storage.
//!
//! Every `interval` (or at once after a delete) each topic with limits is asked for
//! its retention point, the first offset the limits allow, and trimmed to it; then
//! deleted topics are purged, the lanes and pending records of deleted groups (and of
//! lanes whose topic was deleted), and the state of removed plugins whose purge a
//! restart cut short. All go through the storage writer in bounded steps, so publishes
//! never wait behind a large clean-up.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::broker::Broker;
use crate::storage::{Cleanup, StorageError};
use crate::util::now_ms;

/// Runs until `shutdown`.
pub async fn run(broker: Arc<Broker>, interval: Duration, shutdown: CancellationToken) {
    loop {
        let started = std::time::Instant::now();
        match sweep(&broker, &shutdown).await {
            Ok(topics) => debug!(
                topics,
                ms = started.elapsed().as_millis(),
                "retention sweep done"
            ),
            Err(e) => warn!(cause = %e, "retention sweep failed; retrying next interval"),
        }
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = broker.cleanup.notified() => {}
            () = shutdown.cancelled() => return,
        }
    }
}

/// Topics trimmed by one storage command: their records to seal first share one
/// commit, and the command stays short.
const TRIMS_PER_STEP: usize = 256;

/// One pass over every topic and pending purge; returns the topics looked at.
async fn sweep(broker: &Broker, shutdown: &CancellationToken) -> Result<usize, StorageError> {
    let storage = broker.storage();
    let topics = broker.topics();
    let count = topics.len();
    let limited: Vec<_> = topics
        .into_iter()
        .filter(|log| !log.retention().is_unlimited())
        .collect();
    for batch in limited.chunks(TRIMS_PER_STEP) {
        if shutdown.is_cancelled() {
            break;
        }
        let mut points = Vec::new();
        for log in batch {
            if let Some(first) = storage.retention_point(log, now_ms())? {
                points.push((Arc::clone(log), first));
            }
        }
        if points.is_empty() {
            continue;
        }
        debug!(topics = points.len(), "retention applied");
        for (log, first) in storage.trim_all(points).await? {
            let removed = until_done(shutdown, || storage.trim(Arc::clone(&log), first)).await?;
            debug!(topic = %log.name(), first, chunks = removed, "retention applied to a long backlog");
        }
    }
    for id in storage.pending_purges()? {
        let removed = until_done(shutdown, || storage.purge(id)).await?;
        debug!(id, chunks = removed, "deleted topic purged");
    }
    for purge in storage.pending_group_purges()? {
        let removed = until_done(shutdown, || storage.purge_group(purge)).await?;
        debug!(group = purge.group, topic = ?purge.topic, keys = removed, "deleted group state purged");
    }
    for plugin in storage.pending_state_purges()? {
        let removed = until_done(shutdown, || storage.purge_state(plugin.clone())).await?;
        debug!(plugin = %plugin, keys = removed, "removed plugin's state purged");
    }
    let dedup = broker.dedup();
    let horizon = now_ms().saturating_sub(dedup.window_ms());
    until_done(shutdown, || {
        storage.purge_dedup(horizon, dedup.max_entries())
    })
    .await?;
    Ok(count)
}

/// Repeats a bounded clean-up step until nothing is left (or shutdown); returns the
/// chunks removed.
async fn until_done<F, Fut>(
    shutdown: &CancellationToken,
    mut step: F,
) -> Result<usize, StorageError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Cleanup, StorageError>>,
{
    let mut removed = 0;
    loop {
        let done = step().await?;
        removed += done.removed;
        if !done.more || shutdown.is_cancelled() {
            return Ok(removed);
        }
        tokio::task::yield_now().await;
    }
}
