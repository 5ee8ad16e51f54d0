//! What storage keeps for durable groups, and loading it at start-up (the writer
//! stages group writes in `writer/groups.rs`).

use std::collections::{BTreeMap, HashSet};

use quiver_protocol::GroupSettings;
use serde::{Deserialize, Serialize};

use super::keys::{self, KeyWrite};
use super::{Storage, StorageError};

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
    /// Pending records delivered once and never nacked, as runs: (first, count).
    pub plain: Vec<(u64, u64)>,
    /// The other pending records (and, in data dirs written before the runs, every
    /// pending record): offset, deliveries, not-before (ms).
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
    /// A lane's cursor, counters and plain pending records (written whole: one key).
    Lane {
        /// The topic.
        topic: u64,
        /// The cursor.
        cursor: u64,
        /// Redeliveries so far.
        redelivered: u64,
        /// Dead letters so far.
        dead_lettered: u64,
        /// Pending records delivered once and never nacked, as runs: (first, count).
        plain: Vec<(u64, u64)>,
    },
    /// A pending record's deliveries and not-before, or its removal (`None`): for
    /// records not in their lane's plain runs.
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

/// Group keys left behind by a delete, purged later in bounded steps: a sled batch holds
/// a copy of every tree node it changes, so removing a group's keys in the commit that
/// deletes it would take memory in proportion to its pending records. A marker
/// (`G` + ids) remembers the purge across restarts; group and topic ids are never
/// reused, so nothing written since can match what a purge removes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupPurge {
    /// The group.
    pub group: u64,
    /// One lane, whose topic was deleted (its `u` keys), or the whole group (`None`: its
    /// `o` and `u` keys).
    pub topic: Option<u64>,
}

impl GroupPurge {
    pub(super) fn marker(self) -> Vec<u8> {
        keys::group_purge(self.group, self.topic)
    }

    /// The key prefixes it removes.
    pub(super) fn prefixes(self) -> Vec<Vec<u8>> {
        match self.topic {
            None => vec![
                keys::with_id(keys::LANE, self.group).to_vec(),
                keys::with_id(keys::UNACKED, self.group).to_vec(),
            ],
            Some(topic) => vec![keys::with_offset(keys::UNACKED, self.group, topic).to_vec()],
        }
    }

    fn from_marker(key: &[u8]) -> Option<Self> {
        match key.len() {
            9 => keys::numbers::<1>(key).map(|[group]| Self { group, topic: None }),
            17 => keys::numbers::<2>(key).map(|[group, topic]| Self {
                group,
                topic: Some(topic),
            }),
            _ => None,
        }
    }
}

impl Storage {
    /// Deleted groups and dropped lanes whose keys are still to be purged.
    pub fn pending_group_purges(&self) -> Result<Vec<GroupPurge>, StorageError> {
        self.markers(keys::GROUP_PURGE, "group purge", GroupPurge::from_marker)
    }

    /// Every group with its lanes: the `o` and `u` keys as stored, with the group
    /// deltas not yet applied to them laid over.
    pub fn groups(&self) -> Result<Vec<StoredGroup>, StorageError> {
        let corrupt =
            |what: &str| StorageError::corrupt(format!("group {what} of the wrong shape"));
        let records = group_records(&self.tree)?;
        let ids: HashSet<u64> = records.iter().map(|r| r.id).collect();
        let deltas = read_deltas(&self.tree, |id| ids.contains(&id))?;
        let mut groups = Vec::new();
        for record in records {
            // The group's keys as they read once every delta is applied.
            let mut stored = BTreeMap::new();
            for kind in [keys::LANE, keys::UNACKED] {
                let prefix = keys::with_id(kind, record.id);
                for item in self.tree.scan_prefix(prefix) {
                    let (key, value) = item?;
                    stored.insert(key.to_vec(), value.to_vec());
                }
                for (key, value) in with_prefix(&deltas.writes, &prefix) {
                    match value {
                        Some(value) => stored.insert(key.clone(), value.clone()),
                        None => stored.remove(key),
                    };
                }
            }
            let mut lanes = Vec::new();
            for (key, value) in with_prefix(&stored, &keys::with_id(keys::LANE, record.id)) {
                let [_, topic] = keys::numbers::<2>(key).ok_or_else(|| corrupt("lane key"))?;
                let n = |i: usize| {
                    value
                        .get(i * 8..i * 8 + 8)
                        .and_then(|b| b.try_into().ok())
                        .map(u64::from_be_bytes)
                        .ok_or_else(|| corrupt("lane"))
                };
                let cursor = n(0)?;
                let plain = decode_runs(value.get(24..).unwrap_or_default(), cursor)
                    .ok_or_else(|| corrupt("lane's pending runs"))?;
                let mut lane = StoredLane {
                    topic,
                    cursor,
                    redelivered: n(1)?,
                    dead_lettered: n(2)?,
                    plain,
                    pending: Vec::new(),
                };
                let pending = keys::with_offset(keys::UNACKED, record.id, topic);
                for (key, value) in with_prefix(&stored, &pending) {
                    let [_, _, offset] =
                        keys::numbers::<3>(key).ok_or_else(|| corrupt("pending key"))?;
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

/// The entries of `map` whose keys start with `prefix`, in key order.
fn with_prefix<'a, V>(
    map: &'a BTreeMap<Vec<u8>, V>,
    prefix: &'a [u8],
) -> impl Iterator<Item = (&'a Vec<u8>, &'a V)> {
    map.range(prefix.to_vec()..)
        .take_while(move |(key, _)| key.starts_with(prefix))
}

/// The group deltas on disk (`O` + sequence), merged: each key's last write.
#[derive(Debug, Default)]
pub(super) struct StoredDeltas {
    /// The last write of each key, of the groups kept (`None`: removed).
    pub(super) writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// The sequence of the oldest delta on disk.
    pub(super) first: u64,
    /// The sequence after the newest (0 when there are none).
    pub(super) next: u64,
}

/// One commit's group writes as a delta's value.
pub(super) fn encode_delta(writes: &[KeyWrite]) -> Vec<u8> {
    // Invariant: byte strings and options of them always encode.
    postcard::to_allocvec(writes).expect("key writes always encode")
}

/// Reads every group delta in the order written, keeping the writes of the groups
/// whose id `keep` accepts (a deleted group's deltas stay on disk until the next
/// apply removes them; its keys must not come back).
pub(super) fn read_deltas(
    tree: &sled::Tree,
    keep: impl Fn(u64) -> bool,
) -> Result<StoredDeltas, StorageError> {
    let mut deltas = StoredDeltas::default();
    for item in tree.scan_prefix([keys::GROUP_DELTA]) {
        let (key, value) = item?;
        let [sequence] = keys::numbers::<1>(&key)
            .ok_or_else(|| StorageError::corrupt("a group delta's key of the wrong shape"))?;
        let writes: Vec<KeyWrite> = postcard::from_bytes(&value).map_err(|e| {
            StorageError::corrupt(format!("group delta {sequence} is unreadable: {e}"))
        })?;
        if deltas.next == 0 {
            deltas.first = sequence;
        }
        // Sequences start at 0 and go up by one; a key at the very end is damage, not
        // a reason to overflow.
        deltas.next = sequence.saturating_add(1);
        for (key, value) in writes {
            if keys::numbers::<1>(&key).is_some_and(|[id]| keep(id)) {
                deltas.writes.insert(key, value);
            }
        }
    }
    Ok(deltas)
}

/// The ids of the groups that exist.
pub(super) fn group_ids(tree: &sled::Tree) -> Result<HashSet<u64>, StorageError> {
    Ok(group_records(tree)?.iter().map(|r| r.id).collect())
}

/// Every group's record (`g` keys).
fn group_records(tree: &sled::Tree) -> Result<Vec<GroupRecord>, StorageError> {
    tree.scan_prefix([keys::GROUP])
        .values()
        .map(|value| {
            postcard::from_bytes(&value?)
                .map_err(|e| StorageError::corrupt(format!("group record: {e}")))
        })
        .collect()
}

/// A lane's value: cursor, redeliveries and dead letters (u64 BE each), then its plain
/// pending runs, each as two LEB128 varints: the gap since the previous run's end (the
/// first run's offset itself), and the count. A value of 24 bytes has no runs (and is
/// all a lane was before runs were stored).
pub(super) fn encode_lane(
    cursor: u64,
    redelivered: u64,
    dead_lettered: u64,
    plain: &[(u64, u64)],
) -> Vec<u8> {
    let mut value = Vec::with_capacity(24 + plain.len() * 4);
    for n in [cursor, redelivered, dead_lettered] {
        value.extend_from_slice(&n.to_be_bytes());
    }
    let mut end = 0u64;
    for &(first, count) in plain {
        varint(&mut value, first.saturating_sub(end));
        varint(&mut value, count);
        end = first.saturating_add(count);
    }
    value
}

fn varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// Reads the runs [`encode_lane`] wrote after the 24 bytes; `None` when they are cut
/// short, overlong, empty, or reach past the cursor (every plain record was delivered,
/// so it lies below it).
pub(super) fn decode_runs(mut bytes: &[u8], cursor: u64) -> Option<Vec<(u64, u64)>> {
    fn next(bytes: &mut &[u8]) -> Option<u64> {
        let mut n = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = bytes.split_first()?;
            *bytes = rest;
            n |= u64::from(byte & 0x7f).checked_shl(shift)?;
            if byte & 0x80 == 0 {
                return Some(n);
            }
        }
        None
    }
    let mut runs = Vec::new();
    let mut end = 0u64;
    while !bytes.is_empty() {
        let first = end.checked_add(next(&mut bytes)?)?;
        let count = next(&mut bytes)?;
        end = first.checked_add(count)?;
        if count == 0 || end > cursor {
            return None;
        }
        runs.push((first, count));
    }
    Some(runs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lane_runs_round_trip() {
        let runs = vec![(0, 1), (2, 300), (1 << 40, 5)];
        let value = encode_lane(u64::MAX, 7, 8, &runs);
        assert_eq!(&value[..8], &u64::MAX.to_be_bytes());
        assert_eq!(decode_runs(&value[24..], u64::MAX), Some(runs));
        assert_eq!(encode_lane(5, 0, 0, &[]).len(), 24, "no runs: the old form");
        assert_eq!(decode_runs(&[], 0), Some(Vec::new()));
    }

    #[test]
    fn bad_runs_are_refused() {
        let value = encode_lane(100, 0, 0, &[(10, 5)]);
        assert_eq!(decode_runs(&value[24..], 14), None, "past the cursor");
        assert_eq!(
            decode_runs(&value[24..value.len() - 1], 100),
            None,
            "cut short"
        );
        assert_eq!(decode_runs(&[3, 0], 100), None, "an empty run");
        assert_eq!(
            decode_runs(&[0xff; 11], u64::MAX),
            None,
            "an overlong varint"
        );
        let overflow = encode_lane(u64::MAX, 0, 0, &[(u64::MAX - 1, 1)]);
        let mut twice = overflow[24..].to_vec();
        twice.extend_from_slice(&overflow[24..]);
        assert_eq!(decode_runs(&twice, u64::MAX), None, "an end past u64");
    }
}
