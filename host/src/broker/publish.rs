//! The publish path: validate, run the topic's ingress plugins, and hand everything
//! the publish produced (records for the topic, routed copies, dead letters, plugin
//! state) to storage as one atomic append.
//!
//! Invariant: what a publish produced becomes durable together or not at all, and the
//! acknowledgement (a [`Receipt`]) is sent only after that.

use std::collections::BTreeMap;
use std::sync::Arc;

use quiver_protocol::{NewRecord, Placement, Receipt};

use super::{Broker, BrokerError};
use crate::plugins::Plugins;
use crate::plugins::pipeline::{DeadLetter, Item, Sorted};
use crate::storage::{Appended, PendingAppend, StateWrite, TopicLog, TopicRecords, now_ms};

/// A publish queued for the next group commit; await [`PendingPublish::durable`].
#[derive(Debug)]
pub struct PendingPublish {
    pending: PendingAppend,
    /// The topics of the appends after the first (routed copies, then dead letters).
    others: Vec<String>,
    /// Whether the last append is the dead-letter topic's.
    dead_letters: bool,
    dropped: u32,
    /// Plugin state in this commit, to settle once it is decided.
    state: Option<(Arc<Plugins>, Vec<StateWrite>)>,
}

impl PendingPublish {
    /// Resolves once everything the publish produced is durable.
    pub async fn durable(self) -> Result<Receipt, BrokerError> {
        let result = self.pending.durable().await;
        if let Some((plugins, state)) = &self.state {
            plugins.state_settled(state);
        }
        let appended = result?;
        let placement = |(topic, a): (&String, &Appended)| Placement {
            topic: topic.clone(),
            base_offset: a.base_offset,
            count: a.count,
        };
        let mut placements: Vec<Placement> = self
            .others
            .iter()
            .zip(appended.iter().skip(1))
            .map(placement)
            .collect();
        let dead_letter = if self.dead_letters {
            placements.pop()
        } else {
            None
        };
        let first = appended.first().copied().unwrap_or(Appended {
            base_offset: 0,
            count: 0,
        });
        Ok(Receipt {
            base_offset: first.base_offset,
            count: first.count,
            routed: placements,
            dead_letter,
            dropped: self.dropped,
        })
    }
}

impl Broker {
    /// Validates a publish, runs the topic's ingress plugins, and queues the result for
    /// the next group commit. Publishes queued one after the other are stored in that
    /// order.
    pub async fn submit_publish(
        &self,
        topic: &str,
        records: Vec<NewRecord>,
    ) -> Result<PendingPublish, BrokerError> {
        let log = self.topic(topic)?;
        self.check_records(&records)?;
        let Some(stages) = self.plugins.topic_stages(log.id()) else {
            let pending = self
                .storage
                .submit_append(vec![(log, records)], Vec::new())
                .await?;
            return Ok(PendingPublish {
                pending,
                others: Vec::new(),
                dead_letters: false,
                dropped: 0,
                state: None,
            });
        };
        let now = now_ms();
        let items = (0..)
            .zip(records)
            .map(|(offset, record)| Item {
                offset,
                timestamp: now,
                record,
            })
            .collect();
        let sorted = self
            .plugins
            .run(stages, log.name().to_string(), items, true)
            .await?;
        self.submit_sorted(log, sorted).await
    }

    fn check_records(&self, records: &[NewRecord]) -> Result<(), BrokerError> {
        if records.is_empty() {
            return Err(BrokerError::InvalidArgument(
                "a publish needs at least one record".into(),
            ));
        }
        if records.len() > self.limits.max_batch_records as usize {
            return Err(BrokerError::BatchTooLarge {
                count: records.len(),
                max: self.limits.max_batch_records,
            });
        }
        for (index, record) in records.iter().enumerate() {
            let size = record.size() as u64;
            if size > self.limits.max_record_size {
                return Err(BrokerError::RecordTooLarge {
                    index,
                    size,
                    max: self.limits.max_record_size,
                });
            }
        }
        Ok(())
    }

    /// Turns what the ingress pipeline sorted into one atomic append.
    async fn submit_sorted(
        &self,
        log: Arc<TopicLog>,
        sorted: Sorted,
    ) -> Result<PendingPublish, BrokerError> {
        let Sorted {
            passed,
            routed,
            mut dead,
            dropped,
            state,
        } = sorted;
        let mut stored: Vec<NewRecord> = passed.into_iter().map(|i| i.record).collect();
        let mut by_topic: BTreeMap<String, (Arc<TopicLog>, Vec<NewRecord>)> = BTreeMap::new();
        for route in routed {
            if route.topic == log.name().as_str() {
                // Routed to its own topic: stored after the records that passed.
                stored.push(route.item.record);
                continue;
            }
            match self.topic(&route.topic) {
                Ok(target) => {
                    let entry = by_topic
                        .entry(route.topic.clone())
                        .or_insert((target, Vec::new()));
                    entry.1.push(route.item.record);
                }
                Err(e) => {
                    let reason = format!("cannot route to `{}`: {e}", route.topic);
                    dead.push(route.undeliverable(reason));
                }
            }
        }
        let mut others: Vec<String> = by_topic.keys().cloned().collect();
        let mut appends: Vec<TopicRecords> = vec![(Arc::clone(&log), stored)];
        appends.extend(by_topic.into_values());
        let dead_letters = !dead.is_empty();
        if dead_letters {
            let (dlq, records) = self.dead_letters(&log, dead).await?;
            others.push(dlq.name().to_string());
            appends.push((dlq, records));
        }
        let pending = self.storage.submit_append(appends, state.clone()).await?;
        Ok(PendingPublish {
            pending,
            others,
            dead_letters,
            dropped,
            state: Some((Arc::clone(&self.plugins), state)),
        })
    }

    /// The dead-letter topic of `log` and the records to store there.
    pub async fn dead_letters(
        &self,
        log: &TopicLog,
        dead: Vec<DeadLetter>,
    ) -> Result<(Arc<TopicLog>, Vec<NewRecord>), BrokerError> {
        let dlq = self.dead_letter_topic(log).await?;
        let topic = log.name().as_str();
        let records = dead.into_iter().map(|d| d.into_record(topic)).collect();
        Ok((dlq, records))
    }
}
