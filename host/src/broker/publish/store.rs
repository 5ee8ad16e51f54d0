//! A publish's turn: its records through the topic's ingress plugins, what the plugins
//! made of each publish sorted back to it (records kept, routed copies, dead letters),
//! and everything handed to storage as one atomic append; then each publish's receipt.

use std::collections::BTreeMap;
use std::sync::Arc;

use quiver_protocol::{ErrorCode, NewRecord, PublishId, Receipt, TopicName, WireError};

use super::order::Turn;
use super::prepare::{Claimed, Slot};
use crate::auth::{Denied, Right};
use crate::broker::{Broker, BrokerError};
use crate::plugins::Plugins;
use crate::plugins::pipeline::{DeadLetter, Item, Routed, Sorted};
use crate::plugins::stage::StageRunner;
use crate::storage::{
    MarkWrite, PendingAppend, PublishLayout, ReceiptLayout, StateWrite, TopicLog, TopicRecords,
};
use crate::util::now_ms;

/// Publishes handed to storage; await [`Queued::durable`] for one outcome each.
#[derive(Debug)]
pub(super) struct Queued {
    /// The write, if any publish stores something.
    pending: Option<PendingAppend>,
    /// One per publish: those still `Storing` are in the write, in order.
    slots: Vec<Slot>,
    /// Plugin state in the write, to settle once it is decided.
    state: Option<(Arc<Plugins>, Vec<StateWrite>)>,
}

/// What the appends of the storing publishes are, and how each publish's receipt is
/// read from them (or why it does not store after all).
struct Write {
    appends: Vec<TopicRecords>,
    layouts: Vec<Result<ReceiptLayout, WireError>>,
    state: Vec<StateWrite>,
    /// For forwarded records: the mark to move, with the original timestamps of the
    /// first append's records.
    mark: Option<MarkWrite>,
    /// After plugins: the times of the records that passed (the first append's
    /// leading records), for a forwarded write's mark.
    stamps: Vec<u64>,
}

impl Queued {
    /// Nothing was queued: every publish is answered already.
    fn answered(slots: Vec<Slot>) -> Self {
        Self {
            pending: None,
            slots,
            state: None,
        }
    }

    /// Resolves once the stored records are durable: one outcome per publish, in order.
    pub(super) async fn durable(self) -> Vec<Result<Receipt, WireError>> {
        // Every publish still `Storing` is in the write, which answers a receipt for
        // each, in order.
        let receipts = match self.pending {
            Some(pending) => pending
                .durable()
                .await
                .map(|committed| committed.receipts)
                .map_err(|e| WireError::from(&BrokerError::from(e))),
            None => Ok(Vec::new()),
        };
        if let Some((plugins, state)) = &self.state {
            plugins.state_settled(state);
        }
        let mut receipts = receipts.map(Vec::into_iter);
        let now = now_ms();
        self.slots
            .into_iter()
            .map(|slot| match slot {
                Slot::Answered(outcome) => outcome,
                Slot::Storing { ticket } => {
                    let receipt = match &mut receipts {
                        Ok(receipts) => receipts.next().ok_or_else(|| {
                            WireError::new(
                                ErrorCode::Internal,
                                "storage answered fewer receipts than publishes",
                            )
                        })?,
                        Err(e) => return Err(e.clone()),
                    };
                    if let Some(ticket) = ticket {
                        ticket.done(receipt.clone(), now);
                    }
                    Ok(receipt)
                }
            })
            .collect()
    }
}

impl Broker {
    /// Queues publishes whose topic has no ingress plugins: their records go to the
    /// topic as one append, each publish's a run of it, in order.
    pub(super) async fn queue_plain(&self, claimed: Claimed) -> Result<Queued, BrokerError> {
        let Claimed {
            log,
            slots,
            fresh,
            storing,
            mark,
        } = claimed;
        if storing == 0 {
            return Ok(Queued::answered(slots));
        }
        let mut counts = vec![0u32; storing];
        for f in &fresh {
            counts[f.publish as usize] += 1;
        }
        let layouts = runs(counts.into_iter().map(|kept| (kept, 0)));
        let records = fresh.into_iter().map(|f| f.record).collect();
        let write = Write {
            appends: vec![(log, records)],
            layouts,
            state: Vec::new(),
            mark,
            stamps: Vec::new(),
        };
        self.queue_write(write, slots).await
    }

    /// Queues publishes to topics without ingress plugins whose records are sorted
    /// into appends already (`across.rs`): `layouts` has one entry per storing
    /// publish, in order.
    pub(super) async fn queue_appends(
        &self,
        appends: Vec<TopicRecords>,
        layouts: Vec<Result<ReceiptLayout, WireError>>,
        slots: Vec<Slot>,
    ) -> Result<Queued, BrokerError> {
        let write = Write {
            appends,
            layouts,
            state: Vec::new(),
            mark: None,
            stamps: Vec::new(),
        };
        self.queue_write(write, slots).await
    }

    /// Queues a write that calls no plugin.
    async fn queue_write(&self, write: Write, slots: Vec<Slot>) -> Result<Queued, BrokerError> {
        let ids = ids_of(&slots);
        let (pending, slots) = self.submit(write, ids, slots).await?;
        Ok(Queued {
            pending,
            slots,
            state: None,
        })
    }

    /// Runs the storing publishes through `stages` in one call and queues what the
    /// plugins made of them, on the plugin thread, in the plugins' call order
    /// (`Plugins::run_then`): plugin state reaches storage in the order the calls ran.
    /// `turn` is told once the call is dispatched.
    pub(super) async fn queue_through(
        self: &Arc<Self>,
        claimed: Claimed,
        stages: Arc<[Arc<StageRunner>]>,
        turn: &Turn,
    ) -> Result<Queued, BrokerError> {
        if claimed.storing == 0 {
            return Ok(Queued::answered(claimed.slots));
        }
        let ids = ids_of(&claimed.slots);
        let Claimed {
            log,
            slots,
            mut fresh,
            storing,
            mut mark,
        } = claimed;
        // Plugins see forwarded records whole: with their provenance headers (left to
        // the storage writer when the topic had no plugin as the forward was checked).
        if let Some(provenance) = mark.as_mut().and_then(|m| m.provenance.take()) {
            for (i, f) in fresh.iter_mut().enumerate() {
                f.record.headers.extend(provenance.headers(i));
            }
        }
        let now = now_ms();
        // Plugins see a forwarded record's original time.
        let stamps = mark.as_ref().map_or(&[][..], |m| &m.stamps[..]);
        let items = fresh
            .into_iter()
            .enumerate()
            .map(|(i, f)| Item {
                offset: f.index,
                timestamp: stamps.get(i).copied().unwrap_or(now),
                record: f.record,
                publish: f.publish,
            })
            .collect();
        let broker = Arc::clone(self);
        let topic = log.name().to_string();
        let queued = self
            .plugins
            .run_then(
                stages,
                topic,
                items,
                true,
                || turn.dispatched(),
                move |sorted| async move {
                    match sorted {
                        Ok(sorted) => {
                            let mut write = broker.sorted_write(log, sorted, storing).await;
                            write.mark = mark.map(|mark| MarkWrite {
                                stamps: std::mem::take(&mut write.stamps),
                                ..mark
                            });
                            let state = write.state.clone();
                            let (pending, slots) = broker.submit(write, ids, slots).await?;
                            Ok((pending, slots, state))
                        }
                        // What a lone publish would have got, for each publish that ran.
                        Err(e) => {
                            let error = WireError::from(&BrokerError::from(e));
                            Ok((None, fail_storing(slots, error), Vec::new()))
                        }
                    }
                },
            )
            .await
            .unwrap_or_else(|e| Err(BrokerError::from(e)));
        let (pending, slots, state) = queued?;
        let settle = (!state.is_empty()).then(|| (Arc::clone(&self.plugins), state));
        Ok(Queued {
            pending,
            slots,
            state: settle,
        })
    }

    /// Hands a write to storage. Publishes whose layout is an error are answered with
    /// it and left out; the others stay `Storing`, their receipts read in order from
    /// what storage answers.
    async fn submit(
        &self,
        write: Write,
        ids: Vec<Option<PublishId>>,
        mut slots: Vec<Slot>,
    ) -> Result<(Option<PendingAppend>, Vec<Slot>), BrokerError> {
        let Write {
            appends,
            layouts,
            state,
            mark,
            stamps: _,
        } = write;
        let mut publishes = Vec::with_capacity(layouts.len());
        let storing = slots
            .iter_mut()
            .filter(|slot| matches!(slot, Slot::Storing { .. }));
        for ((slot, layout), id) in storing.zip(layouts).zip(ids) {
            match layout {
                Ok(layout) => publishes.push(PublishLayout { layout, id }),
                Err(error) => *slot = Slot::Answered(Err(error)),
            }
        }
        if publishes.is_empty() && state.is_empty() && mark.is_none() {
            return Ok((None, slots));
        }
        let pending = self
            .storage
            .submit_append(appends, state, publishes, mark)
            .await?;
        Ok((Some(pending), slots))
    }

    /// What the plugins made of `storing` publishes as a write: when they only kept,
    /// replaced or dropped records, everything goes to the topic as one append, each
    /// publish's records a run of it (the pipeline keeps their order); with routes or
    /// dead letters, each publish gets appends of its own (its receipt is read from
    /// those), all in one write, and a publish whose dead letters find no topic fails
    /// alone, as it would alone.
    async fn sorted_write(&self, log: Arc<TopicLog>, mut sorted: Sorted, storing: usize) -> Write {
        let state = std::mem::take(&mut sorted.state);
        // The first append starts with the records that passed, in order: a
        // forwarded write keeps their (original) times.
        let stamps = sorted.passed.iter().map(|item| item.timestamp).collect();
        if sorted.routed.is_empty() && sorted.dead.is_empty() {
            let mut counts = vec![(0u32, 0u32); storing];
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
            let records = sorted.passed.into_iter().map(|item| item.record).collect();
            return Write {
                appends: vec![(log, records)],
                layouts: runs(counts),
                state,
                mark: None,
                stamps,
            };
        }
        let (each, _) = sorted.split(storing);
        let mut appends = Vec::new();
        let mut layouts = Vec::with_capacity(storing);
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
        Write {
            appends,
            layouts,
            state,
            mark: None,
            stamps,
        }
    }

    /// Turns what the ingress pipeline sorted for one publish into its appends (the
    /// topic's first, maybe empty) and how its receipt is read from them.
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
        for stage in log.stages().iter().filter(|s| s.plugin == route.plugin) {
            self.auth
                .access_of(stage.attached_by.clone())
                .check_topic(Right::Publish, &target)?;
        }
        Ok(())
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

/// The layouts of publishes stored as consecutive runs of one append, given how many
/// records each kept and how many the plugins dropped.
fn runs(counts: impl IntoIterator<Item = (u32, u32)>) -> Vec<Result<ReceiptLayout, WireError>> {
    let mut start = 0;
    counts
        .into_iter()
        .map(|(kept, dropped)| {
            let layout = ReceiptLayout {
                dropped,
                ..ReceiptLayout::part(start, kept)
            };
            start += kept;
            Ok(layout)
        })
        .collect()
}

/// The ids of the storing publishes, in order.
fn ids_of(slots: &[Slot]) -> Vec<Option<PublishId>> {
    slots
        .iter()
        .filter_map(|slot| match slot {
            Slot::Storing { ticket } => Some(ticket.as_ref().map(|t| t.id())),
            Slot::Answered(_) => None,
        })
        .collect()
}

/// Answers every storing publish with `error` (its tickets are dropped: a retry may
/// go ahead).
fn fail_storing(slots: Vec<Slot>, error: WireError) -> Vec<Slot> {
    slots
        .into_iter()
        .map(|slot| match slot {
            Slot::Storing { .. } => Slot::Answered(Err(error.clone())),
            answered => answered,
        })
        .collect()
}
