//! Publishes across topics (`PublishAcross`): one-record publishes to several topics
//! in one request, as a client sends them when it writes to many topics in turn. Each
//! is checked, deduplicated and answered on its own, as if it had come alone; a topic
//! that does not exist, or that the client may not publish to, refuses its own
//! publishes and no other.
//!
//! When none of the topics has ingress plugins, the whole request is one write: one
//! append per topic (its records in the order they came), each publish's receipt read
//! from its own topic's append. Otherwise each run goes its topic's own way
//! ([`Broker::publish`], with its plugins and its turn), run after run, so the
//! connection's order holds either way.

use std::collections::HashMap;
use std::sync::Arc;

use futures::future::{BoxFuture, FutureExt, join_all};
use quiver_protocol::{NewRecord, PublishId, WireError};

use super::prepare::Slot;
use super::{Outcomes, PublishOrder, Publishes};
use crate::broker::{Broker, BrokerError};
use crate::storage::{ReceiptLayout, TopicLog, TopicRecords};

/// A run of a `PublishAcross`: consecutive one-record publishes to one topic.
#[derive(Debug)]
pub struct Run {
    /// The topic's name.
    pub topic: String,
    /// One record per publish.
    pub records: Vec<NewRecord>,
    /// Why the session refuses the run (its client may not publish to the topic).
    pub refused: Option<BrokerError>,
}

/// A run with its topic looked up and the id of its first publish.
#[derive(Debug)]
struct Resolved {
    topic: String,
    target: Result<Arc<TopicLog>, BrokerError>,
    records: Vec<NewRecord>,
    first: PublishId,
}

/// The publishes of a request across topics without plugins, checked and claimed.
#[derive(Debug, Default)]
struct Claimed {
    /// One per publish, in order.
    slots: Vec<Slot>,
    /// One per topic with a publish that stores, in the order first seen.
    appends: Vec<TopicRecords>,
    /// One per storing publish, in order: its record's place in its topic's append.
    layouts: Vec<Result<ReceiptLayout, WireError>>,
}

impl Broker {
    /// Starts the publishes of a `PublishAcross` from a connection whose publishes
    /// keep `order`; the returned future resolves to one outcome per publish, in
    /// order, once they are durable. Like [`Broker::publish`], a request needing no
    /// turn is queued to storage before this returns.
    pub async fn publish_across(
        self: &Arc<Self>,
        order: &mut PublishOrder,
        runs: Vec<Run>,
        first: PublishId,
    ) -> BoxFuture<'static, Outcomes> {
        let resolved = match self.resolve(runs, first) {
            Ok(resolved) => resolved,
            Err(e) => return std::future::ready(Err(e)).boxed(),
        };
        let through_plugins = resolved.iter().any(|run| {
            run.target
                .as_ref()
                .is_ok_and(|log| self.plugins.topic_stages(log.id()).is_some())
        });
        if through_plugins {
            return self.publish_runs(order, resolved).await;
        }
        let ids = resolved
            .iter()
            .flat_map(|run| ids(run.first, run.records.len()));
        if !self.would_wait(ids) && order.idle() {
            let claimed = self.claim_across(resolved).await;
            return match self
                .queue_appends(claimed.appends, claimed.layouts, claimed.slots)
                .await
            {
                Ok(queued) => queued.durable().map(Ok).boxed(),
                Err(e) => std::future::ready(Err(e)).boxed(),
            };
        }
        let mut turn = order.turn(Arc::new([]));
        let broker = Arc::clone(self);
        async move {
            let claimed = broker.claim_across(resolved).await;
            turn.queue_after_previous().await;
            let queued = broker
                .queue_appends(claimed.appends, claimed.layouts, claimed.slots)
                .await;
            // The next publish of this connection may go to storage now.
            drop(turn);
            Ok(queued?.durable().await)
        }
        .boxed()
    }

    /// The checks on the whole request (records in all, ids in range), and each run's
    /// topic looked up.
    fn resolve(&self, runs: Vec<Run>, first: PublishId) -> Result<Vec<Resolved>, BrokerError> {
        let records: usize = runs.iter().map(|run| run.records.len()).sum();
        self.check_count(records, Some(first), false)?;
        let mut next = first;
        Ok(runs
            .into_iter()
            .map(|run| {
                let target = match run.refused {
                    Some(refused) => Err(refused),
                    None => self.topic(&run.topic),
                };
                let resolved = Resolved {
                    topic: run.topic,
                    target,
                    first: next,
                    records: run.records,
                };
                // In range (checked above), but the last run may end right at the
                // largest sequence.
                next.sequence = next.sequence.saturating_add(resolved.records.len() as u64);
                resolved
            })
            .collect())
    }

    /// Checks and claims each publish; those that store are sorted into one append
    /// per topic.
    async fn claim_across(&self, runs: Vec<Resolved>) -> Claimed {
        let dedup_on = self.dedup.window_ms() > 0;
        let mut claimed = Claimed::default();
        // Which append each topic's records go to.
        let mut appends_of: HashMap<u64, usize> = HashMap::new();
        for run in runs {
            let log = match run.target {
                Ok(log) => log,
                Err(e) => {
                    let error = WireError::from(&e);
                    let refused = run
                        .records
                        .iter()
                        .map(|_| Slot::Answered(Err(error.clone())));
                    claimed.slots.extend(refused);
                    continue;
                }
            };
            for (record, id) in run.records.into_iter().zip(ids(run.first, usize::MAX)) {
                let records = std::slice::from_ref(&record);
                let ticket = match self.claim_one(records, Some(id), dedup_on).await {
                    Ok(ticket) => ticket,
                    Err(answered) => {
                        claimed.slots.push(answered);
                        continue;
                    }
                };
                let append = *appends_of.entry(log.id()).or_insert_with(|| {
                    claimed.appends.push((Arc::clone(&log), Vec::new()));
                    claimed.appends.len() - 1
                });
                let records = &mut claimed.appends[append].1;
                let start = u32::try_from(records.len()).unwrap_or(u32::MAX);
                records.push(record);
                claimed.layouts.push(Ok(ReceiptLayout {
                    first_append: append,
                    ..ReceiptLayout::part(start, 1)
                }));
                claimed.slots.push(Slot::Storing { ticket });
            }
        }
        claimed
    }

    /// Each run its topic's own way, in order (some topic has ingress plugins).
    async fn publish_runs(
        self: &Arc<Self>,
        order: &mut PublishOrder,
        runs: Vec<Resolved>,
    ) -> BoxFuture<'static, Outcomes> {
        let mut parts = Vec::with_capacity(runs.len());
        for run in runs {
            let count = run.records.len();
            let part = match run.target {
                Ok(_) => {
                    let publishes = Publishes::Each {
                        records: run.records,
                        first: run.first,
                    };
                    self.publish(order, &run.topic, publishes).await
                }
                Err(e) => std::future::ready(Err(e)).boxed(),
            };
            parts.push(part.map(move |outcomes| (count, outcomes)));
        }
        async move {
            let mut all = Vec::new();
            for (count, outcomes) in join_all(parts).await {
                match outcomes {
                    Ok(outcomes) => all.extend(outcomes),
                    // What refuses a run refuses each of its publishes.
                    Err(e) => {
                        let error = WireError::from(&e);
                        all.extend(std::iter::repeat_n(Err(error), count));
                    }
                }
            }
            Ok(all)
        }
        .boxed()
    }
}

/// The ids of `count` publishes from `first` on (stopping at the largest sequence).
fn ids(first: PublishId, count: usize) -> impl Iterator<Item = PublishId> {
    (first.sequence..=u64::MAX)
        .take(count)
        .map(move |sequence| PublishId {
            producer: first.producer,
            sequence,
        })
}
