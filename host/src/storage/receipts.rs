//! The receipts of the publishes an append holds: how each is read from the append's
//! results ([`ReceiptLayout`]), computed once, by the writer, when the append's offsets
//! are known, and remembered under the publish's id for deduplicating retries (one
//! `d` entry per commit, see `keys.rs`).

use quiver_protocol::{Placement, PublishId, Receipt};

use super::{Appended, Storage, StorageError, keys};

/// A publish among the records of an append: how its receipt is read from the
/// append's results, and its id, remembered with the records if it has one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublishLayout {
    /// How its receipt is read.
    pub layout: ReceiptLayout,
    /// Its id, to deduplicate retries by.
    pub id: Option<PublishId>,
}

/// What a durable append produced: where each topic's records went, and the receipt
/// of each publish it held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    /// One per topic appended to, in the order given.
    pub appended: Vec<Appended>,
    /// One per publish, in the order given.
    pub receipts: Vec<Receipt>,
}

/// How the appends of one publish map to its receipt: the first append is the topic
/// published to; then one per routed topic (named here), then the dead-letter topic's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReceiptLayout {
    /// Topics of the appends after the first.
    pub others: Vec<String>,
    /// Whether the last of them is the dead-letter topic.
    pub dead_letter: bool,
    /// Records the plugins dropped.
    pub dropped: u32,
    /// Set when several publishes share the first append (`PublishEach`): this
    /// publish's records are `start .. start + count` of it.
    pub part: Option<(u32, u32)>,
    /// Where this publish's appends start among those of the write, when several
    /// publishes share one write, each with appends of its own (`PublishEach` through
    /// plugins).
    pub first_append: usize,
}

impl ReceiptLayout {
    /// A publish whose records are `start .. start + count` of the first append.
    pub fn part(start: u32, count: u32) -> Self {
        Self {
            part: Some((start, count)),
            ..Self::default()
        }
    }

    /// The receipt for the appends of one publish.
    pub fn receipt(&self, appended: &[Appended]) -> Receipt {
        let appended = appended.get(self.first_append..).unwrap_or_default();
        let placement = |(topic, a): (&String, &Appended)| Placement {
            topic: topic.clone(),
            base_offset: a.base_offset,
            count: a.count,
        };
        let mut routed: Vec<Placement> = self
            .others
            .iter()
            .zip(appended.iter().skip(1))
            .map(placement)
            .collect();
        let dead_letter = if self.dead_letter { routed.pop() } else { None };
        // The first append, to the topic published to, is always there (maybe empty).
        let mut first = appended.first().copied().unwrap_or(Appended {
            base_offset: 0,
            count: 0,
        });
        if let Some((start, count)) = self.part {
            first.base_offset += u64::from(start);
            first.count = count;
        }
        Receipt {
            base_offset: first.base_offset,
            count: first.count,
            routed,
            dead_letter,
            dropped: self.dropped,
        }
    }
}

impl Storage {
    /// Hands `each` the newest deduplication entries written at or after `since_ms`,
    /// oldest first: the id, when, and the receipt. Reads whole commits, newest first,
    /// until at least `max` ids are in hand, so a restart after a burst of millions of
    /// publishes reads only what the deduplicator would keep. Until they are handed
    /// over, the commits are held as stored (about 20 bytes an id): decoded all at once
    /// into one list, 200,000 ids took 34 MB of a start's peak (docs/performance.md).
    pub fn dedup_entries(
        &self,
        since_ms: u64,
        max: usize,
        mut each: impl FnMut(PublishId, u64, Receipt),
    ) -> Result<(), StorageError> {
        let corrupt = |e: postcard::Error| StorageError::corrupt(format!("dedup entry: {e}"));
        let from = keys::dedup(since_ms, 0);
        let to = keys::dedup(u64::MAX, u64::MAX);
        let mut commits = Vec::new();
        let mut ids = 0;
        for item in self.tree.range(from..=to).rev() {
            if ids >= max {
                break;
            }
            let (key, value) = item?;
            let [at, _] = keys::numbers::<2>(&key)
                .ok_or_else(|| StorageError::corrupt("dedup key of the wrong shape"))?;
            // An entry is a postcard `Vec`, which starts with its length.
            let (len, _) = postcard::take_from_bytes::<usize>(&value).map_err(corrupt)?;
            ids += len;
            // Copied: a value read from sled can share its node's buffer.
            commits.push((at, value.to_vec()));
        }
        for (at, value) in commits.into_iter().rev() {
            let commit: Vec<(PublishId, Receipt)> =
                postcard::from_bytes(&value).map_err(corrupt)?;
            for (id, receipt) in commit {
                each(id, at, receipt);
            }
        }
        Ok(())
    }
}
