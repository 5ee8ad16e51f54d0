//! What storage keeps for durable groups and for deduplicating retried publishes.

use quiver_protocol::{GroupSettings, Placement, PublishId, Receipt};
use serde::{Deserialize, Serialize};

use super::Appended;

/// A group's identity and settings (`g` + name).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupRecord {
    /// Unique for the life of the data dir.
    pub id: u64,
    /// The group's name.
    pub name: String,
    /// Its settings.
    pub settings: GroupSettings,
    /// When it was created (ms since the Unix epoch).
    pub created_ms: u64,
}

/// A group's position in one topic, as stored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoredLane {
    /// The topic's id.
    pub topic: u64,
    /// Every offset below it has been delivered.
    pub cursor: u64,
    /// Redeliveries so far.
    pub redelivered: u64,
    /// Dead letters so far.
    pub dead_lettered: u64,
    /// Pending records: offset, deliveries, not-before (ms).
    pub pending: Vec<(u64, u32, u64)>,
}

/// A group and its lanes, as loaded at start-up.
#[derive(Debug, Clone)]
pub struct StoredGroup {
    /// The group.
    pub record: GroupRecord,
    /// Its lanes.
    pub lanes: Vec<StoredLane>,
}

/// One change to a group's persisted state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupWrite {
    /// A lane's cursor and counters.
    Lane {
        /// The topic.
        topic: u64,
        /// The cursor.
        cursor: u64,
        /// Redeliveries so far.
        redelivered: u64,
        /// Dead letters so far.
        dead_lettered: u64,
    },
    /// A pending record's deliveries and not-before, or its removal (`None`).
    Pending {
        /// The topic.
        topic: u64,
        /// The offset.
        offset: u64,
        /// Deliveries and not-before.
        entry: Option<(u32, u64)>,
    },
    /// A lane and all its pending records are gone (its topic was deleted).
    DropLane {
        /// The topic.
        topic: u64,
    },
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

/// A publish to remember for deduplication, written with its records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dedup {
    /// The publish's id.
    pub id: PublishId,
    /// How its receipt is made from its appends.
    pub layout: ReceiptLayout,
}
