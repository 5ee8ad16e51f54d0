//! What a publish needs before its turn: the checks on the request, and each publish
//! checked and claimed on its own (deduplication), so that a retry is answered with
//! its first receipt and stores nothing.

use std::sync::Arc;

use quiver_protocol::{NewRecord, PublishId, Receipt, WireError};

use super::Publishes;
use crate::broker::dedup::{Claim, Ticket};
use crate::broker::{Broker, BrokerError};
use crate::storage::{MarkWrite, TopicLog};
use crate::util::now_ms;

/// The publishes of one request, checked and claimed: nothing is stored yet.
#[derive(Debug)]
pub(super) struct Claimed {
    pub(super) log: Arc<TopicLog>,
    /// One per publish, in order.
    pub(super) slots: Vec<Slot>,
    /// The records of the publishes that store, in order, each with its place in its
    /// publish and which of those publishes (numbered from 0) it belongs to.
    pub(super) fresh: Vec<Fresh>,
    /// How many publishes store.
    pub(super) storing: usize,
    /// For forwarded records: the mark their write moves.
    pub(super) mark: Option<MarkWrite>,
}

/// A record of a publish that stores.
#[derive(Debug)]
pub(super) struct Fresh {
    /// Which of the storing publishes it belongs to.
    pub(super) publish: u32,
    /// Its place in that publish.
    pub(super) index: u64,
    pub(super) record: NewRecord,
}

/// What becomes of one publish.
#[derive(Debug)]
pub(super) enum Slot {
    /// Answered without storing: a retry's first receipt, or why it was refused.
    Answered(Result<Receipt, WireError>),
    /// Stores; its receipt comes from the write.
    Storing { ticket: Option<Ticket> },
}

impl Broker {
    /// The checks on a whole request: how many records it carries, and that the ids of
    /// a `PublishEach` do not run past the largest sequence.
    pub(super) fn check_request(&self, publishes: &Publishes) -> Result<(), BrokerError> {
        let (first, may_be_empty) = match publishes {
            Publishes::Each { first, .. } => (Some(*first), false),
            Publishes::One { .. } => (None, false),
            // An empty forward moves only its origin's mark.
            Publishes::Forwarded { .. } => (None, true),
        };
        self.check_count(publishes.records(), first, may_be_empty)
    }

    /// The checks on a request of `records` records: at least one (unless
    /// `may_be_empty`), at most `max_batch_records`, and, when each is a publish of its
    /// own with ids counting up from `first`, ids that do not run past the largest
    /// sequence.
    pub(super) fn check_count(
        &self,
        records: usize,
        first: Option<PublishId>,
        may_be_empty: bool,
    ) -> Result<(), BrokerError> {
        if records == 0 && !may_be_empty {
            return Err(BrokerError::InvalidArgument(
                "a publish needs at least one record".into(),
            ));
        }
        if records > self.limits.max_batch_records as usize {
            return Err(BrokerError::BatchTooLarge {
                count: records,
                max: self.limits.max_batch_records,
            });
        }
        if let Some(first) = first
            && records > 0
            && first.sequence.checked_add(records as u64 - 1).is_none()
        {
            return Err(BrokerError::InvalidArgument(format!(
                "{records} publishes from sequence {} run past the largest sequence",
                first.sequence
            )));
        }
        Ok(())
    }

    /// Whether claiming these publishes would wait for an attempt at one of their ids
    /// still in flight. A connection must not wait inline for its own earlier
    /// publish: that one ends only once the connection gets on with its replies.
    pub(super) fn would_wait(&self, ids: impl Iterator<Item = PublishId>) -> bool {
        self.dedup.window_ms() > 0 && self.dedup.any_in_flight(ids)
    }

    /// Checks each publish's records and claims its id (a retry of a stored publish is
    /// answered with the first receipt).
    pub(super) async fn claim(&self, log: Arc<TopicLog>, publishes: Publishes) -> Claimed {
        // A window of zero turns deduplication off: nothing to remember.
        let dedup_on = self.dedup.window_ms() > 0;
        let mark = match &publishes {
            Publishes::Forwarded { mark, .. } => Some(mark.clone()),
            _ => None,
        };
        let mut claimed = Claimed {
            log,
            slots: Vec::new(),
            fresh: Vec::new(),
            storing: 0,
            mark,
        };
        for (records, id) in publishes.into_each() {
            let ticket = match self.claim_one(&records, id, dedup_on).await {
                Ok(ticket) => ticket,
                Err(answered) => {
                    claimed.slots.push(answered);
                    continue;
                }
            };
            let publish = u32::try_from(claimed.storing).unwrap_or(u32::MAX);
            claimed
                .fresh
                .extend((0..).zip(records).map(|(index, record)| Fresh {
                    publish,
                    index,
                    record,
                }));
            claimed.slots.push(Slot::Storing { ticket });
            claimed.storing += 1;
        }
        claimed
    }

    /// Checks one publish's records and claims its id: the ticket to report its
    /// outcome through if it stores (none without an id, or with deduplication off),
    /// or how it is answered without storing.
    pub(super) async fn claim_one(
        &self,
        records: &[NewRecord],
        id: Option<PublishId>,
        dedup_on: bool,
    ) -> Result<Option<Ticket>, Slot> {
        if let Err(e) = self.check_sizes(records) {
            return Err(Slot::Answered(Err(WireError::from(&e))));
        }
        match id.filter(|_| dedup_on) {
            Some(id) => match self.dedup.claim(id, now_ms).await {
                Claim::Fresh(ticket) => Ok(Some(ticket)),
                Claim::Duplicate(receipt) => Err(Slot::Answered(Ok(receipt))),
            },
            None => Ok(None),
        }
    }

    fn check_sizes(&self, records: &[NewRecord]) -> Result<(), BrokerError> {
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
}
