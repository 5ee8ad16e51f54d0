//! The publish path: deduplicate, validate, run the topic's ingress plugins, and hand
//! everything the publish produced (records for the topic, routed copies, dead letters,
//! plugin state, the receipt for deduplication) to storage as one atomic append.
//!
//! Invariant: what a publish produced becomes durable together or not at all, and the
//! acknowledgement (a [`Receipt`]) is sent only after that.

use std::collections::BTreeMap;
use std::sync::Arc;

use quiver_protocol::{NewRecord, PublishId, Receipt, TopicName, WireError};

use super::dedup::{Claim, Ticket};
use super::{Broker, BrokerError};
use crate::auth::{Denied, Right};
use crate::plugins::Plugins;
use crate::plugins::pipeline::{DeadLetter, Item, Routed, Sorted};
use crate::storage::{
    Dedup, PendingAppend, ReceiptLayout, StateWrite, TopicLog, TopicRecords, now_ms,
};

/// A publish queued for the next group commit (or already answered, for a retry);
/// await [`PendingPublish::durable`].
#[derive(Debug)]
pub struct PendingPublish(Outcome);

#[derive(Debug)]
enum Outcome {
    /// A retry of a publish already stored: its receipt.
    Duplicate(Receipt),
    Queued {
        pending: PendingAppend,
        layout: ReceiptLayout,
        /// Plugin state in this commit, to settle once it is decided.
        state: Option<(Arc<Plugins>, Vec<StateWrite>)>,
        ticket: Option<Ticket>,
    },
}

impl PendingPublish {
    /// Resolves once everything the publish produced is durable.
    pub async fn durable(self) -> Result<Receipt, BrokerError> {
        let (pending, layout, state, ticket) = match self.0 {
            Outcome::Duplicate(receipt) => return Ok(receipt),
            Outcome::Queued {
                pending,
                layout,
                state,
                ticket,
            } => (pending, layout, state, ticket),
        };
        let result = pending.durable().await;
        if let Some((plugins, state)) = &state {
            plugins.state_settled(state);
        }
        let receipt = layout.receipt(&result?);
        if let Some(ticket) = ticket {
            ticket.done(receipt.clone(), now_ms());
        }
        Ok(receipt)
    }
}

/// The publishes of a `PublishEach` made ready for storage: each checked and
/// deduplicated. Their plugins run, in one call, and they are stored in
/// [`Broker::queue_each`].
#[derive(Debug)]
pub struct PreparedEach {
    log: Arc<TopicLog>,
    slots: Vec<Slot>,
    /// The records of the publishes that store, in order.
    fresh: Vec<NewRecord>,
}

/// The publishes of a `PublishEach` queued for the next group commit; await
/// [`PendingEach::durable`] for one outcome per publish.
#[derive(Debug)]
pub struct PendingEach {
    /// The write of everything the publishes produced, if any stores something.
    pending: Option<PendingAppend>,
    slots: Vec<Slot>,
    /// Plugin state in this commit, to settle once it is decided.
    state: Option<(Arc<Plugins>, Vec<StateWrite>)>,
}

/// What becomes of one publish of a `PublishEach`.
#[derive(Debug)]
enum Slot {
    /// Answered without storing: a retry's first receipt, or why it was refused.
    Answered(Result<Receipt, WireError>),
    /// Stored with the others; its receipt comes from the write's appends.
    Stored {
        layout: ReceiptLayout,
        ticket: Option<Ticket>,
    },
}

impl PendingEach {
    /// Resolves once the stored records are durable: one outcome per publish, in order.
    pub async fn durable(self) -> Vec<Result<Receipt, WireError>> {
        let appended = match self.pending {
            Some(pending) => pending
                .durable()
                .await
                .map_err(|e| WireError::from(&BrokerError::from(e))),
            None => Ok(Vec::new()),
        };
        if let Some((plugins, state)) = &self.state {
            plugins.state_settled(state);
        }
        let now = now_ms();
        self.slots
            .into_iter()
            .map(|slot| match slot {
                Slot::Answered(outcome) => outcome,
                Slot::Stored { layout, ticket } => {
                    let receipt = layout.receipt(appended.as_ref().map_err(Clone::clone)?);
                    if let Some(ticket) = ticket {
                        ticket.done(receipt.clone(), now);
                    }
                    Ok(receipt)
                }
            })
            .collect()
    }
}

/// A publish made ready for storage: validated and deduplicated. Its plugins run,
/// and it is stored, in [`Broker::queue_publish`].
#[derive(Debug)]
pub enum PreparedPublish {
    /// A retry of a publish already stored: its receipt.
    Duplicate(Receipt),
    /// The records to run through the topic's plugins and append.
    Ready {
        log: Arc<TopicLog>,
        records: Vec<NewRecord>,
        ticket: Option<Ticket>,
    },
}

impl Broker {
    /// Validates a publish, runs the topic's ingress plugins, and queues the result for
    /// the next group commit. Publishes queued one after the other are stored in that
    /// order. With an `id` seen within the dedup window, nothing is queued: the
    /// original receipt is the answer.
    pub async fn submit_publish(
        &self,
        topic: &str,
        records: Vec<NewRecord>,
        id: Option<PublishId>,
    ) -> Result<PendingPublish, BrokerError> {
        let prepared = self.prepare_publish(topic, records, id).await?;
        self.queue_publish(prepared).await
    }

    /// Whether publishing to `topic` runs plugins (so preparing it takes a while).
    pub fn has_ingress(&self, topic: &str) -> bool {
        self.topic(topic)
            .is_ok_and(|log| self.plugins.topic_stages(log.id()).is_some())
    }

    /// Everything of a publish before its plugins run: validation and deduplication.
    /// Preparing publishes may overlap; [`queue_publish`] decides their order.
    ///
    /// [`queue_publish`]: Broker::queue_publish
    pub async fn prepare_publish(
        &self,
        topic: &str,
        records: Vec<NewRecord>,
        id: Option<PublishId>,
    ) -> Result<PreparedPublish, BrokerError> {
        let log = self.topic(topic)?;
        self.check_records(&records)?;
        // A window of zero turns deduplication off: nothing to remember.
        let id = id.filter(|_| self.dedup.window_ms() > 0);
        let ticket = match id {
            Some(id) => match self.claim(id).await {
                Ok(ticket) => Some(ticket),
                Err(receipt) => return Ok(PreparedPublish::Duplicate(receipt)),
            },
            None => None,
        };
        Ok(PreparedPublish::Ready {
            log,
            records,
            ticket,
        })
    }

    /// Runs a prepared publish through its topic's ingress plugins and hands the
    /// result to storage for the next group commit: publishes queued one after the
    /// other are stored in that order, and so is the plugin state their calls wrote
    /// (the plugins' [`CallOrder`](crate::plugins::CallOrder) is held from the call
    /// until the result is queued).
    pub async fn queue_publish(
        &self,
        prepared: PreparedPublish,
    ) -> Result<PendingPublish, BrokerError> {
        let (log, records, ticket) = match prepared {
            PreparedPublish::Duplicate(receipt) => {
                return Ok(PendingPublish(Outcome::Duplicate(receipt)));
            }
            PreparedPublish::Ready {
                log,
                records,
                ticket,
            } => (log, records, ticket),
        };
        let Some(stages) = self.plugins.topic_stages(log.id()) else {
            let appends = vec![(log, records)];
            return self
                .queue_appends(appends, ReceiptLayout::default(), Vec::new(), ticket)
                .await;
        };
        let order = self.plugins.call_order(&stages).await;
        let now = now_ms();
        let items = (0..)
            .zip(records)
            .map(|(offset, record)| Item {
                offset,
                timestamp: now,
                record,
                publish: 0,
            })
            .collect();
        let mut sorted = self
            .plugins
            .run(stages, log.name().to_string(), items, true)
            .await?;
        let state = std::mem::take(&mut sorted.state);
        let (appends, layout) = self.sorted_appends(log, sorted).await?;
        let queued = self.queue_appends(appends, layout, state, ticket).await;
        drop(order);
        queued
    }

    /// Hands one publish's appends to storage.
    async fn queue_appends(
        &self,
        appends: Vec<TopicRecords>,
        layout: ReceiptLayout,
        state: Vec<StateWrite>,
        ticket: Option<Ticket>,
    ) -> Result<PendingPublish, BrokerError> {
        let dedup = ticket
            .as_ref()
            .map(|t| Dedup {
                id: t.id(),
                layout: layout.clone(),
            })
            .into_iter()
            .collect();
        let settle = (!state.is_empty()).then(|| (Arc::clone(&self.plugins), state.clone()));
        let pending = self.storage.submit_append(appends, state, dedup).await?;
        Ok(PendingPublish(Outcome::Queued {
            pending,
            layout,
            state: settle,
            ticket,
        }))
    }

    /// Whether preparing a publish with these ids would wait for an attempt at one of
    /// them still in flight. A connection must not wait inline for its own earlier
    /// publish: that one ends only once the connection gets on with its replies.
    pub fn would_wait(&self, ids: impl Iterator<Item = PublishId>) -> bool {
        self.dedup.window_ms() > 0 && self.dedup.any_in_flight(ids)
    }

    /// The ids of a `PublishEach` (see [`would_wait`](Broker::would_wait)); none if the
    /// request is invalid, which preparing it reports.
    pub fn each_would_wait(&self, count: usize, first: PublishId) -> bool {
        self.each_ids(count, first)
            .is_ok_and(|ids| self.would_wait(ids))
    }

    /// The right to publish `id`, or the receipt of its first publish.
    async fn claim(&self, id: PublishId) -> Result<Ticket, Receipt> {
        match self.dedup.claim(id, now_ms).await {
            Claim::Fresh(ticket) => Ok(ticket),
            Claim::Duplicate(receipt) => Err(receipt),
        }
    }

    fn check_records(&self, records: &[NewRecord]) -> Result<(), BrokerError> {
        self.check_count(records.len())?;
        for (index, record) in records.iter().enumerate() {
            self.check_size(index, record)?;
        }
        Ok(())
    }

    /// The checks on a publish's record count, also for the records of a `PublishEach`.
    fn check_count(&self, count: usize) -> Result<(), BrokerError> {
        if count == 0 {
            return Err(BrokerError::InvalidArgument(
                "a publish needs at least one record".into(),
            ));
        }
        if count > self.limits.max_batch_records as usize {
            return Err(BrokerError::BatchTooLarge {
                count,
                max: self.limits.max_batch_records,
            });
        }
        Ok(())
    }

    fn check_size(&self, index: usize, record: &NewRecord) -> Result<(), BrokerError> {
        let size = record.size() as u64;
        if size > self.limits.max_record_size {
            return Err(BrokerError::RecordTooLarge {
                index,
                size,
                max: self.limits.max_record_size,
            });
        }
        Ok(())
    }

    /// The ids of a `PublishEach`'s publishes, after checking what applies to all of
    /// them: the record count, and that the sequence does not run past `u64::MAX`.
    fn each_ids(
        &self,
        count: usize,
        first: PublishId,
    ) -> Result<impl Iterator<Item = PublishId> + use<>, BrokerError> {
        self.check_count(count)?;
        if first.sequence.checked_add(count as u64 - 1).is_none() {
            return Err(BrokerError::InvalidArgument(format!(
                "{count} publishes from sequence {} run past the largest sequence",
                first.sequence
            )));
        }
        Ok((0..count as u64).map(move |i| PublishId {
            producer: first.producer,
            sequence: first.sequence + i,
        }))
    }

    /// Prepares the publishes of a `PublishEach` (one record each): each is checked
    /// and deduplicated on its own. [`queue_each`](Broker::queue_each) runs the new
    /// ones through the plugins and stores them.
    pub async fn prepare_each(
        &self,
        topic: &str,
        records: Vec<NewRecord>,
        first_id: PublishId,
    ) -> Result<PreparedEach, BrokerError> {
        let log = self.topic(topic)?;
        let ids = self.each_ids(records.len(), first_id)?;
        let (slots, fresh) = self.claim_each(records, ids).await;
        Ok(PreparedEach { log, slots, fresh })
    }

    /// Runs the new publishes of a `PublishEach` through the topic's ingress plugins
    /// in one call, sorting what became of each record back to its publish, and hands
    /// them to storage as one write, each remembered under its own id. Without
    /// plugins they share one append, in order. Stored in the order queued, like
    /// [`queue_publish`](Broker::queue_publish).
    pub async fn queue_each(&self, prepared: PreparedEach) -> Result<PendingEach, BrokerError> {
        let PreparedEach {
            log,
            mut slots,
            fresh,
        } = prepared;
        if fresh.is_empty() {
            return Ok(PendingEach {
                pending: None,
                slots,
                state: None,
            });
        }
        let Some(stages) = self.plugins.topic_stages(log.id()) else {
            let layouts = (0..).map(|index| Ok(ReceiptLayout::part(index, 1)));
            set_layouts(&mut slots, layouts);
            return self
                .queue_slots(slots, vec![(log, fresh)], Vec::new())
                .await;
        };
        let order = self.plugins.call_order(&stages).await;
        let count = fresh.len();
        let now = now_ms();
        let items = (0..)
            .zip(fresh)
            .map(|(publish, record)| Item {
                offset: 0, // each record is the first of its publish
                timestamp: now,
                record,
                publish,
            })
            .collect();
        let name = log.name().to_string();
        let mut sorted = match self.plugins.run(stages, name, items, true).await {
            Ok(sorted) => sorted,
            Err(e) => {
                // What a lone publish would have got, for each publish that ran.
                let error = WireError::from(&BrokerError::from(e));
                for slot in &mut slots {
                    if matches!(slot, Slot::Stored { .. }) {
                        *slot = Slot::Answered(Err(error.clone()));
                    }
                }
                return Ok(PendingEach {
                    pending: None,
                    slots,
                    state: None,
                });
            }
        };
        let state = std::mem::take(&mut sorted.state);
        let (appends, layouts) = match sorted.routed.is_empty() && sorted.dead.is_empty() {
            true => runs_in_topic(log, sorted, count),
            false => self.appends_per_publish(log, sorted, count).await,
        };
        set_layouts(&mut slots, layouts);
        let queued = self.queue_slots(slots, appends, state).await;
        drop(order);
        queued
    }

    /// Checks and claims each record of a `PublishEach` as a publish of its own: the
    /// slot of each, and the records to store (in order).
    async fn claim_each(
        &self,
        records: Vec<NewRecord>,
        ids: impl Iterator<Item = PublishId>,
    ) -> (Vec<Slot>, Vec<NewRecord>) {
        let dedup_on = self.dedup.window_ms() > 0;
        let mut slots = Vec::with_capacity(records.len());
        let mut fresh = Vec::with_capacity(records.len());
        for (record, id) in records.into_iter().zip(ids) {
            if let Err(e) = self.check_size(0, &record) {
                slots.push(Slot::Answered(Err(WireError::from(&e))));
                continue;
            }
            let ticket = match dedup_on {
                true => match self.claim(id).await {
                    Ok(ticket) => Some(ticket),
                    Err(receipt) => {
                        slots.push(Slot::Answered(Ok(receipt)));
                        continue;
                    }
                },
                false => None,
            };
            slots.push(Slot::Stored {
                layout: ReceiptLayout::default(),
                ticket,
            });
            fresh.push(record);
        }
        (slots, fresh)
    }

    /// What the plugins made of `count` publishes, routes and dead letters included:
    /// each publish gets appends of its own (its receipt is read from those), all in
    /// one write. A publish whose dead letters find no topic fails alone, as it would
    /// alone.
    async fn appends_per_publish(
        &self,
        log: Arc<TopicLog>,
        sorted: Sorted,
        count: usize,
    ) -> (Vec<TopicRecords>, Vec<Result<ReceiptLayout, WireError>>) {
        let (each, _) = sorted.split(count);
        let mut appends = Vec::new();
        let mut layouts = Vec::with_capacity(count);
        for sorted in each {
            let layout = match self.sorted_appends(Arc::clone(&log), sorted).await {
                Ok((mine, mut layout)) => {
                    layout.first_append = appends.len();
                    appends.extend(mine);
                    Ok(layout)
                }
                Err(e) => Err(WireError::from(&e)),
            };
            layouts.push(layout);
        }
        (appends, layouts)
    }

    /// Hands the publishes of a `PublishEach` to storage as one write, each
    /// remembered under its own id.
    async fn queue_slots(
        &self,
        slots: Vec<Slot>,
        appends: Vec<TopicRecords>,
        state: Vec<StateWrite>,
    ) -> Result<PendingEach, BrokerError> {
        if appends.is_empty() {
            return Ok(PendingEach {
                pending: None,
                slots,
                state: None,
            });
        }
        let dedup = slots
            .iter()
            .filter_map(|slot| match slot {
                Slot::Stored {
                    layout,
                    ticket: Some(ticket),
                } => Some(Dedup {
                    id: ticket.id(),
                    layout: layout.clone(),
                }),
                _ => None,
            })
            .collect();
        let settle = (!state.is_empty()).then(|| (Arc::clone(&self.plugins), state.clone()));
        let pending = self.storage.submit_append(appends, state, dedup).await?;
        Ok(PendingEach {
            pending: Some(pending),
            slots,
            state: settle,
        })
    }

    /// Whether a plugin on `log`'s pipeline may route to the topic it named: every
    /// stage of that plugin must have been attached by a principal that may publish
    /// there (a routing plugin is no way around the publish grants).
    fn may_route(&self, log: &TopicLog, route: &Routed) -> Result<(), Denied> {
        if !self.auth.is_required() {
            return Ok(());
        }
        let Ok(target) = TopicName::parse(&route.topic) else {
            return Ok(()); // routing to it fails with the name's own error
        };
        for stage in log.pipeline().iter().filter(|s| s.plugin == route.plugin) {
            self.auth
                .access_of(stage.attached_by.clone())
                .check_topic(Right::Publish, &target)?;
        }
        Ok(())
    }

    /// Turns what the ingress pipeline sorted for one publish into its appends (the
    /// topic's first, maybe empty) and how its receipt is read from them. The state
    /// the plugins wrote is the caller's.
    async fn sorted_appends(
        &self,
        log: Arc<TopicLog>,
        sorted: Sorted,
    ) -> Result<(Vec<TopicRecords>, ReceiptLayout), BrokerError> {
        let Sorted {
            passed,
            routed,
            mut dead,
            dropped,
            state: _,
        } = sorted;
        let mut stored: Vec<NewRecord> = passed.into_iter().map(|i| i.record).collect();
        let mut by_topic: BTreeMap<String, (Arc<TopicLog>, Vec<NewRecord>)> = BTreeMap::new();
        for route in routed {
            if route.topic == log.name().as_str() {
                // Routed to its own topic: stored after the records that passed.
                stored.push(route.item.record);
                continue;
            }
            if let Err(denied) = self.may_route(&log, &route) {
                let reason = format!("cannot route to `{}`: {denied}", route.topic);
                dead.push(route.undeliverable(reason));
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
        let mut layout = ReceiptLayout {
            others: by_topic.keys().cloned().collect(),
            dead_letter: !dead.is_empty(),
            dropped: u32::try_from(dropped.len()).unwrap_or(u32::MAX),
            ..ReceiptLayout::default()
        };
        let mut appends: Vec<TopicRecords> = vec![(Arc::clone(&log), stored)];
        appends.extend(by_topic.into_values());
        if layout.dead_letter {
            let (dlq, records) = self.dead_letters(&log, dead).await?;
            layout.others.push(dlq.name().to_string());
            appends.push((dlq, records));
        }
        Ok((appends, layout))
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

/// What the plugins made of `count` publishes when they only kept, replaced or
/// dropped records: everything goes to the topic as one append, each publish's
/// records a run of it (the pipeline keeps their order).
fn runs_in_topic(
    log: Arc<TopicLog>,
    sorted: Sorted,
    count: usize,
) -> (Vec<TopicRecords>, Vec<Result<ReceiptLayout, WireError>>) {
    let mut counts = vec![(0u32, 0u32); count];
    for item in &sorted.passed {
        if let Some((kept, _)) = counts.get_mut(item.publish as usize) {
            *kept += 1;
        }
    }
    for &publish in &sorted.dropped {
        if let Some((_, dropped)) = counts.get_mut(publish as usize) {
            *dropped += 1;
        }
    }
    let mut start = 0;
    let layouts = counts
        .into_iter()
        .map(|(kept, dropped)| {
            let layout = ReceiptLayout {
                dropped,
                ..ReceiptLayout::part(start, kept)
            };
            start += kept;
            Ok(layout)
        })
        .collect();
    let records = sorted.passed.into_iter().map(|item| item.record).collect();
    (vec![(log, records)], layouts)
}

/// Gives the publishes that store, in order, their receipt layouts, or the error
/// that stops one from storing.
fn set_layouts(
    slots: &mut [Slot],
    layouts: impl IntoIterator<Item = Result<ReceiptLayout, WireError>>,
) {
    let stored = slots
        .iter_mut()
        .filter(|slot| matches!(slot, Slot::Stored { .. }));
    for (slot, outcome) in stored.zip(layouts) {
        match (outcome, &mut *slot) {
            (Ok(layout), Slot::Stored { layout: mine, .. }) => *mine = layout,
            (Err(error), _) => *slot = Slot::Answered(Err(error)),
            (Ok(_), Slot::Answered(_)) => {}
        }
    }
}
