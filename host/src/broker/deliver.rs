//! Delivering through plugins: a slice of a topic run through a subscription's (or a
//! link's) own stages before it leaves the broker.

use std::sync::Arc;

use quiver_protocol::record::decode_shared;
use quiver_protocol::{Delivered, NewRecord, Processed};

use super::{Broker, BrokerError};
use crate::plugins::pipeline::Item;
use crate::plugins::stage::StageRunner;
use crate::storage::{Slice, StorageError, TopicLog};

impl Broker {
    /// Runs a slice through a subscription's (or a link's) plugins; dead letters and
    /// plugin state are made durable before the survivors are delivered.
    pub async fn deliver_through(
        self: &Arc<Self>,
        stages: &Arc<[Arc<StageRunner>]>,
        log: &Arc<TopicLog>,
        slice: Slice,
    ) -> Result<Processed, BrokerError> {
        let records = decode_shared(slice.base_offset, &slice.batch).map_err(StorageError::from)?;
        let items = records
            .into_iter()
            .map(|r| Item {
                offset: r.offset,
                timestamp: r.timestamp,
                record: NewRecord {
                    key: r.key,
                    headers: r.headers,
                    payload: r.payload,
                },
                publish: 0,
            })
            .collect();
        let plugins = self.plugins();
        let storer = Arc::clone(self);
        let log_for_dead = Arc::clone(log);
        let sorted = plugins
            .run_then(
                Arc::clone(stages),
                log.name().to_string(),
                items,
                false,
                || {},
                move |sorted| async move {
                    // Dead letters and state are queued here, in the plugins' call order,
                    // and made durable before the survivors are delivered.
                    let mut sorted = sorted?;
                    if sorted.dead.is_empty() && sorted.state.is_empty() {
                        return Ok::<_, BrokerError>((sorted, None));
                    }
                    let mut appends = Vec::new();
                    if !sorted.dead.is_empty() {
                        let dead = std::mem::take(&mut sorted.dead);
                        appends.push(storer.dead_letters(&log_for_dead, dead).await?);
                    }
                    let pending = storer
                        .storage()
                        .submit_append(appends, sorted.state.clone(), Vec::new(), None)
                        .await?;
                    Ok((sorted, Some(pending)))
                },
            )
            .await??;
        let (sorted, pending) = sorted;
        if let Some(pending) = pending {
            let committed = pending.durable().await.map(drop);
            plugins.state_settled(&sorted.state);
            committed?;
        }
        Ok(Processed {
            topic: log.name().to_string(),
            records: sorted
                .passed
                .into_iter()
                .map(|i| Delivered {
                    offset: i.offset,
                    timestamp: i.timestamp,
                    record: i.record,
                })
                .collect(),
        })
    }
}
