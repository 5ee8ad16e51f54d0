//! What storage keeps for durable groups, and loading it at start-up (the writer
//! stages group writes in `writer/groups.rs`).

use quiver_protocol::GroupSettings;
use serde::{Deserialize, Serialize};

use super::{Storage, StorageError, keys};

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

impl Storage {
    /// Every group with its lanes.
    pub fn groups(&self) -> Result<Vec<StoredGroup>, StorageError> {
        let corrupt =
            |what: &str| StorageError::corrupt(format!("group {what} of the wrong shape"));
        let mut groups = Vec::new();
        for value in self.tree.scan_prefix([keys::GROUP]).values() {
            let record: GroupRecord = postcard::from_bytes(&value?)
                .map_err(|e| StorageError::corrupt(format!("group record: {e}")))?;
            let mut lanes = Vec::new();
            for item in self.tree.scan_prefix(keys::with_id(keys::LANE, record.id)) {
                let (key, value) = item?;
                let [_, topic] = keys::numbers::<2>(&key).ok_or_else(|| corrupt("lane key"))?;
                let n = |i: usize| {
                    value
                        .get(i * 8..i * 8 + 8)
                        .and_then(|b| b.try_into().ok())
                        .map(u64::from_be_bytes)
                        .ok_or_else(|| corrupt("lane"))
                };
                let mut lane = StoredLane {
                    topic,
                    cursor: n(0)?,
                    redelivered: n(1)?,
                    dead_lettered: n(2)?,
                    pending: Vec::new(),
                };
                for item in
                    self.tree
                        .scan_prefix(keys::with_offset(keys::UNACKED, record.id, topic))
                {
                    let (key, value) = item?;
                    let [_, _, offset] =
                        keys::numbers::<3>(&key).ok_or_else(|| corrupt("pending key"))?;
                    if value.len() != 12 {
                        return Err(corrupt("pending record"));
                    }
                    let deliveries =
                        u32::from_be_bytes(value[..4].try_into().map_err(|_| corrupt("pending"))?);
                    let not_before =
                        u64::from_be_bytes(value[4..].try_into().map_err(|_| corrupt("pending"))?);
                    lane.pending.push((offset, deliveries, not_before));
                }
                lanes.push(lane);
            }
            groups.push(StoredGroup { record, lanes });
        }
        Ok(groups)
    }
}
