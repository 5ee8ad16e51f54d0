//! What storage keeps for durable groups.

use quiver_protocol::GroupSettings;
use serde::{Deserialize, Serialize};

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
