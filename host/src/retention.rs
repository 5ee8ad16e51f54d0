//! Background clean-up: enforces retention limits and releases deleted topics' storage.
//!
//! Every `interval` each topic with limits is asked for its retention point, the first
//! offset the limits allow, and trimmed to it; then deleted topics are purged, the
//! lanes and pending records of deleted groups (and of lanes whose topic was deleted),
//! and the state of removed plugins whose purge a restart cut short. A delete wakes
//! the clean-up early for the purges alone, a changed retention for a whole pass
//! ([`Wake`]): looking at every topic after each of thousands of deletions took most
//! of a core. All go through the storage writer in bounded steps, so publishes never
//! wait behind a large clean-up.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::broker::Broker;
use crate::storage::{Cleanup, Storage, StorageError};
use crate::util::now_ms;

/// How the broker wakes the clean-up before its interval is up.
#[derive(Debug, Default)]
pub struct Wake {
    notify: Notify,
    /// A topic's retention changed: the next pass applies every topic's.
    retention: AtomicBool,
}

impl Wake {
    /// Something was deleted: purge what it left, soon.
    pub fn purge(&self) {
        self.notify.notify_one();
    }

    /// A topic's retention changed: apply retention soon.
    pub fn retention(&self) {
        self.retention.store(true, Ordering::Release);
        self.notify.notify_one();
    }
}

/// Runs until `shutdown`.
pub async fn run(broker: Arc<Broker>, interval: Duration, shutdown: CancellationToken) {
    let mut due = Instant::now();
    loop {
        let started = Instant::now();
        let asked = broker.cleanup.retention.swap(false, Ordering::AcqRel);
        let whole = asked || started >= due;
        // The topics a whole pass looked at; none for the purges alone.
        let done = match whole {
            true => sweep(&broker, &shutdown).await.map(Some),
            false => purge(broker.storage(), &shutdown).await.map(|()| None),
        };
        match done {
            Ok(Some(topics)) => debug!(
                topics,
                ms = started.elapsed().as_millis(),
                "retention sweep done"
            ),
            Ok(None) => {}
            Err(e) => warn!(cause = %e, "retention sweep failed; retrying next interval"),
        }
        if whole {
            due = started + interval;
        }
        tokio::select! {
            () = tokio::time::sleep_until(due) => {}
            () = broker.cleanup.notify.notified() => {}
            () = shutdown.cancelled() => return,
        }
    }
}

/// Topics trimmed, or deleted topics purged, by one storage command: their records to
/// seal first share one commit, their purges one batch, and the command stays short.
const TOPICS_PER_STEP: usize = 256;

/// One pass over every topic and pending purge; returns the topics looked at.
async fn sweep(broker: &Broker, shutdown: &CancellationToken) -> Result<usize, StorageError> {
    let storage = broker.storage();
    let topics = broker.topics();
    let count = topics.len();
    let limited: Vec<_> = topics
        .into_iter()
        .filter(|log| !log.retention().is_unlimited())
        .collect();
    for batch in limited.chunks(TOPICS_PER_STEP) {
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
    purge(storage, shutdown).await?;
    let dedup = broker.dedup();
    let horizon = now_ms().saturating_sub(dedup.window_ms());
    until_done(shutdown, || {
        storage.purge_dedup(horizon, dedup.max_entries())
    })
    .await?;
    Ok(count)
}

/// Purges what deletions left: deleted topics' chunks, deleted groups' state, removed
/// plugins' state.
async fn purge(storage: &Storage, shutdown: &CancellationToken) -> Result<(), StorageError> {
    for ids in storage.pending_purges()?.chunks(TOPICS_PER_STEP) {
        let removed = until_done(shutdown, || storage.purge(ids.to_vec())).await?;
        debug!(
            topics = ids.len(),
            chunks = removed,
            "deleted topics purged"
        );
    }
    for purge in storage.pending_group_purges()? {
        let removed = until_done(shutdown, || storage.purge_group(purge)).await?;
        debug!(group = purge.group, topic = ?purge.topic, keys = removed, "deleted group state purged");
    }
    for plugin in storage.pending_state_purges()? {
        let removed = until_done(shutdown, || storage.purge_state(plugin.clone())).await?;
        debug!(plugin = %plugin, keys = removed, "removed plugin's state purged");
    }
    Ok(())
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
