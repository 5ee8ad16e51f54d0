//! Deduplication of retried publishes: a publish carrying an id seen within the window
//! is answered with the first one's receipt instead of being appended again.
//!
//! The receipts of recent publishes live here, in memory, and in storage (written in
//! the same batch as the records, so a retry after a restart is recognised too). A
//! publish whose id is in flight waits for that first attempt: if it succeeds the retry
//! gets its receipt; if it fails the retry goes ahead on its own.
//!
//! The window is `dedup.window` long but holds at most `dedup.max_entries` publishes:
//! past that the oldest are forgotten first. Memory is what bounds it: an entry takes
//! 56 bytes (about 100 of RSS, measured, with the queues' spare capacity) when its
//! receipt is plain (no plugin routed, dropped or dead-lettered anything), so the
//! receipt is kept compact in that common case.
//! Entries are kept per producer in sequence order rather than in one map of ids: a
//! producer numbers its publishes upwards, so remembering and forgetting are a push
//! and a pop, and a lookup a binary search in memory that is close together.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use quiver_protocol::{PublishId, Receipt};
use tokio::sync::Notify;

/// What to do with a publish that carries an id.
#[derive(Debug)]
pub enum Claim {
    /// Seen before: answer with this receipt.
    Duplicate(Receipt),
    /// New: publish it, and report how it went through the ticket.
    Fresh(Ticket),
}

/// The right to publish an id; dropping it without [`Ticket::done`] lets waiting
/// retries go ahead.
#[derive(Debug)]
pub struct Ticket {
    id: PublishId,
    dedup: Arc<Deduplicator>,
    /// Set by [`Ticket::done`], which ends the attempt itself.
    ended: bool,
}

impl Ticket {
    /// The id this ticket is for.
    pub fn id(&self) -> PublishId {
        self.id
    }

    /// The publish is durable with this receipt.
    pub fn done(mut self, receipt: Receipt, at_ms: u64) {
        let mut inner = self.dedup.lock();
        self.dedup
            .remember_locked(&mut inner, self.id, receipt.into(), at_ms);
        let wake = inner.end_attempt(self.id);
        drop(inner);
        self.ended = true;
        if wake {
            self.dedup.finished.notify_waiters();
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.ended && self.dedup.lock().end_attempt(self.id) {
            self.dedup.finished.notify_waiters();
        }
    }
}

/// A receipt as remembered: most are plain, and 16 bytes hold those.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Remembered {
    Plain { base_offset: u64, count: u32 },
    Full(Box<Receipt>),
}

impl From<Receipt> for Remembered {
    fn from(receipt: Receipt) -> Self {
        let plain =
            receipt.routed.is_empty() && receipt.dead_letter.is_none() && receipt.dropped == 0;
        match plain {
            true => Self::Plain {
                base_offset: receipt.base_offset,
                count: receipt.count,
            },
            false => Self::Full(Box::new(receipt)),
        }
    }
}

impl Remembered {
    fn receipt(&self) -> Receipt {
        match self {
            Self::Plain { base_offset, count } => Receipt {
                base_offset: *base_offset,
                count: *count,
                routed: Vec::new(),
                dead_letter: None,
                dropped: 0,
            },
            Self::Full(receipt) => Receipt::clone(receipt),
        }
    }
}

/// One remembered publish of a producer.
#[derive(Debug)]
struct Entry {
    sequence: u64,
    at_ms: u64,
    receipt: Remembered,
}

/// A producer's remembered publishes, in sequence order. A producer numbers its
/// publishes upwards, so remembering one is nearly always a push at the end and
/// forgetting one a pop at the front: no hashing of ids, and the entries of a
/// producer sit together in memory.
#[derive(Debug, Default)]
struct Producer {
    entries: VecDeque<Entry>,
}

impl Producer {
    /// Where `sequence` is, or would go.
    fn position(&self, sequence: u64) -> Result<usize, usize> {
        // The common cases: newer than everything remembered (a claim, or remembering
        // it), or the oldest (forgetting it).
        match (self.entries.front(), self.entries.back()) {
            (_, Some(last)) if last.sequence < sequence => Err(self.entries.len()),
            (Some(first), _) if first.sequence == sequence => Ok(0),
            (None, _) => Err(0),
            _ => self.entries.binary_search_by_key(&sequence, |e| e.sequence),
        }
    }

    fn get(&self, sequence: u64) -> Option<&Entry> {
        self.position(sequence).ok().map(|i| &self.entries[i])
    }
}

#[derive(Debug, Default)]
struct Inner {
    /// Remembered publishes by producer.
    producers: HashMap<u64, Producer>,
    /// Ids in the order they were remembered, with when, for forgetting the oldest.
    order: VecDeque<(u64, PublishId)>,
    /// Ids being published right now.
    in_flight: HashSet<PublishId>,
    /// Claims waiting for an attempt in flight to end.
    waiting: usize,
}

impl Inner {
    /// Ends the attempt at `id`; true if a claim waits to hear of it.
    fn end_attempt(&mut self, id: PublishId) -> bool {
        self.in_flight.remove(&id);
        self.waiting > 0
    }
}

/// Recent publish ids and their receipts.
#[derive(Debug)]
pub struct Deduplicator {
    window_ms: u64,
    max_entries: usize,
    inner: Mutex<Inner>,
    /// Notified when an attempt ends while a claim waits for one. Retries of
    /// publishes still in flight are rare, so one shared signal serves them all.
    finished: Notify,
}

impl Deduplicator {
    /// An empty deduplicator.
    pub fn new(window_ms: u64, max_entries: usize) -> Arc<Self> {
        Arc::new(Self {
            window_ms,
            max_entries: max_entries.max(1),
            inner: Mutex::default(),
            finished: Notify::new(),
        })
    }

    /// How far back publishes are remembered.
    pub fn window_ms(&self) -> u64 {
        self.window_ms
    }

    /// How many publishes are remembered at most.
    pub fn max_entries(&self) -> usize {
        self.max_entries
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Decides what a publish with `id` should do, waiting first if the same id is
    /// being published right now.
    pub async fn claim(self: &Arc<Self>, id: PublishId, now_ms: impl Fn() -> u64) -> Claim {
        loop {
            let finished = self.finished.notified();
            tokio::pin!(finished);
            // Registered before looking, so an attempt ending meanwhile still wakes us.
            finished.as_mut().enable();
            {
                let mut inner = self.lock();
                if let Some(claim) = self.try_claim(&mut inner, id, now_ms()) {
                    return claim;
                }
                inner.waiting += 1;
            }
            let _waiting = Waiting(self);
            finished.await;
        }
    }

    /// The claim for `id` at `now_ms`, or `None` while it is in flight.
    fn try_claim(self: &Arc<Self>, inner: &mut Inner, id: PublishId, now_ms: u64) -> Option<Claim> {
        let seen = inner
            .producers
            .get(&id.producer)
            .and_then(|producer| producer.get(id.sequence));
        if let Some(entry) = seen
            && now_ms.saturating_sub(entry.at_ms) < self.window_ms
        {
            return Some(Claim::Duplicate(entry.receipt.receipt()));
        }
        if !inner.in_flight.insert(id) {
            return None;
        }
        Some(Claim::Fresh(Ticket {
            id,
            dedup: Arc::clone(self),
            ended: false,
        }))
    }

    /// Whether any of `ids` is being published right now (so claiming it would wait).
    pub fn any_in_flight(&self, mut ids: impl Iterator<Item = PublishId>) -> bool {
        let inner = self.lock();
        ids.any(|id| inner.in_flight.contains(&id))
    }

    /// Remembers a durable publish (also used to load entries at start-up).
    pub fn remember(&self, id: PublishId, receipt: Receipt, at_ms: u64) {
        let mut inner = self.lock();
        self.remember_locked(&mut inner, id, receipt.into(), at_ms);
    }

    fn remember_locked(&self, inner: &mut Inner, id: PublishId, receipt: Remembered, at_ms: u64) {
        let producer = inner.producers.entry(id.producer).or_default();
        let entry = Entry {
            sequence: id.sequence,
            at_ms,
            receipt,
        };
        match producer.position(id.sequence) {
            Ok(i) => producer.entries[i] = entry,
            Err(i) => producer.entries.insert(i, entry),
        }
        inner.order.push_back((at_ms, id));
        let horizon = at_ms.saturating_sub(self.window_ms);
        while let Some(&(at, oldest)) = inner.order.front() {
            if at >= horizon && inner.order.len() <= self.max_entries {
                break;
            }
            inner.order.pop_front();
            forget(&mut inner.producers, oldest, at);
        }
    }
}

/// A claim waiting for an attempt to end, counted until it stops waiting (also when
/// its future is dropped).
struct Waiting<'a>(&'a Deduplicator);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.lock().waiting -= 1;
    }
}

/// Forgets `id` if it is still the entry remembered at `at` (not remembered again
/// since).
fn forget(producers: &mut HashMap<u64, Producer>, id: PublishId, at: u64) {
    let Some(producer) = producers.get_mut(&id.producer) else {
        return;
    };
    if let Ok(i) = producer.position(id.sequence)
        && producer.entries[i].at_ms == at
    {
        // Nearly always the front: the oldest go first.
        producer.entries.remove(i);
    }
    if producer.entries.is_empty() {
        producers.remove(&id.producer);
    }
}

#[cfg(test)]
mod tests {
    use futures::FutureExt;
    use quiver_protocol::Placement;

    use super::*;

    fn receipt(base_offset: u64) -> Receipt {
        Receipt {
            base_offset,
            count: 1,
            routed: vec![],
            dead_letter: None,
            dropped: 0,
        }
    }

    const ID: PublishId = PublishId {
        producer: 1,
        sequence: 2,
    };

    fn claim_now(dedup: &Arc<Deduplicator>, id: PublishId, now: u64) -> Option<Claim> {
        dedup.claim(id, || now).now_or_never()
    }

    #[test]
    fn a_retry_gets_the_first_receipt_within_the_window() {
        let dedup = Deduplicator::new(1000, 10);
        let Some(Claim::Fresh(ticket)) = claim_now(&dedup, ID, 0) else {
            panic!("new id")
        };
        assert!(
            claim_now(&dedup, ID, 1).is_none(),
            "in flight: the retry waits"
        );
        ticket.done(receipt(7), 5);
        assert!(
            matches!(claim_now(&dedup, ID, 900), Some(Claim::Duplicate(r)) if r.base_offset == 7)
        );
        assert!(
            matches!(claim_now(&dedup, ID, 2000), Some(Claim::Fresh(_))),
            "past the window"
        );
    }

    #[tokio::test]
    async fn a_retry_waits_for_the_attempt_in_flight() {
        let dedup = Deduplicator::new(1000, 10);
        let Some(Claim::Fresh(ticket)) = claim_now(&dedup, ID, 0) else {
            panic!("new id")
        };
        let waiting = tokio::spawn({
            let dedup = Arc::clone(&dedup);
            async move { dedup.claim(ID, || 1).await }
        });
        tokio::task::yield_now().await;
        ticket.done(receipt(7), 1);
        let claim = waiting.await.unwrap();
        assert!(matches!(claim, Claim::Duplicate(r) if r.base_offset == 7));
    }

    #[test]
    fn a_failed_attempt_lets_the_retry_go_ahead() {
        let dedup = Deduplicator::new(1000, 10);
        let Some(Claim::Fresh(ticket)) = claim_now(&dedup, ID, 0) else {
            panic!("new id")
        };
        drop(ticket);
        assert!(matches!(claim_now(&dedup, ID, 0), Some(Claim::Fresh(_))));
    }

    #[test]
    fn receipts_come_back_as_they_were_given() {
        let dedup = Deduplicator::new(1000, 10);
        let full = Receipt {
            routed: vec![Placement {
                topic: "elsewhere".into(),
                base_offset: 3,
                count: 1,
            }],
            dropped: 2,
            ..receipt(9)
        };
        dedup.remember(ID, full.clone(), 0);
        assert!(matches!(claim_now(&dedup, ID, 1), Some(Claim::Duplicate(r)) if r == full));
    }

    #[test]
    fn the_oldest_are_forgotten_beyond_the_entry_limit() {
        let dedup = Deduplicator::new(u64::MAX, 2);
        let id = |sequence| PublishId {
            producer: 1,
            sequence,
        };
        for sequence in 0..3 {
            dedup.remember(id(sequence), receipt(sequence), 0);
        }
        assert!(matches!(claim_now(&dedup, id(0), 0), Some(Claim::Fresh(_))));
        assert!(matches!(
            claim_now(&dedup, id(2), 0),
            Some(Claim::Duplicate(_))
        ));
    }

    #[test]
    fn publishes_remembered_out_of_order_are_found_and_forgotten_oldest_first() {
        let dedup = Deduplicator::new(u64::MAX, 4);
        let id = |producer, sequence| PublishId { producer, sequence };
        // Completions need not come in sequence order, and producers interleave.
        for (n, (producer, sequence)) in [(1, 5), (1, 3), (2, 9), (1, 4)].into_iter().enumerate() {
            dedup.remember(id(producer, sequence), receipt(sequence), n as u64);
        }
        for (producer, sequence) in [(1, 3), (1, 4), (1, 5), (2, 9)] {
            let claim = claim_now(&dedup, id(producer, sequence), 10);
            assert!(
                matches!(claim, Some(Claim::Duplicate(r)) if r.base_offset == sequence),
                "{producer}/{sequence}"
            );
        }
        assert!(matches!(
            claim_now(&dedup, id(1, 6), 10),
            Some(Claim::Fresh(_))
        ));
        // A fifth entry makes room by forgetting the first remembered, (1, 5), which is
        // not at the front of its producer's sequence.
        dedup.remember(id(2, 10), receipt(10), 20);
        assert!(matches!(
            claim_now(&dedup, id(1, 5), 21),
            Some(Claim::Fresh(_))
        ));
        assert!(matches!(
            claim_now(&dedup, id(1, 3), 21),
            Some(Claim::Duplicate(_))
        ));
        assert!(matches!(
            claim_now(&dedup, id(2, 10), 21),
            Some(Claim::Duplicate(_))
        ));
    }
}
