//! Staging a durable group's writes: its creation with a lane per topic, its deletion,
//! and the changes members make (cursors, counters, pending records). A lane is one
//! key holding its cursor, counters and plain pending records as runs
//! (`storage/groups.rs`, `encode_lane`); only pending records delivered more than once
//! or nacked have keys of their own (`u`).
//!
//! The changes members make are written as deltas ([`GroupDeltas`]): each commit's as
//! one key (`O` + sequence) after its appends, applied to the lane and pending keys
//! every so many commits. A member's round touches a lane per topic it took from or
//! settled in, so over many topics a commit changed hundreds of lanes, each a sled
//! insert of its own; a lane changed by many commits between two applies is now
//! written once.

use std::collections::{BTreeMap, HashSet};

use super::{CommitGroup, Writer};
use crate::storage::groups::{StoredDeltas, encode_delta, encode_lane};
use crate::storage::keys;
use crate::storage::{GroupPurge, GroupRecord, GroupWrite, StorageError};

impl Writer {
    /// Stages a new group with a lane per topic (topic id, cursor), refusing a name
    /// taken.
    pub(super) fn stage_create_group(
        &self,
        group: &mut CommitGroup,
        record: &GroupRecord,
        lanes: Vec<(u64, u64)>,
    ) -> Result<(), StorageError> {
        let key = keys::group(&record.name);
        if self.tree.contains_key(&key)? {
            return Err(StorageError::GroupExists(record.name.clone()));
        }
        for (topic, cursor) in lanes {
            group.batch.insert(
                &keys::with_offset(keys::LANE, record.id, topic)[..],
                encode_lane(cursor, 0, 0, &[]),
            );
        }
        // Invariant: a GroupRecord holds only strings, integers and options.
        let value = postcard::to_allocvec(record).expect("group records always encode");
        group.batch.insert(key, value);
        Ok(())
    }

    /// Whether `name` still names the durable group with this id (not deleted, not
    /// recreated).
    fn is_group(&self, group: &CommitGroup, name: &str, id: u64) -> Result<bool, StorageError> {
        if group.deleted_groups.contains(&id) {
            return Ok(false);
        }
        let Some(value) = self.tree.get(keys::group(name))? else {
            return Ok(false);
        };
        let record: GroupRecord = postcard::from_bytes(&value)
            .map_err(|e| StorageError::corrupt(format!("group record `{name}`: {e}")))?;
        Ok(record.id == id)
    }

    pub(super) fn stage_delete_group(
        &self,
        group: &mut CommitGroup,
        name: &str,
        id: u64,
    ) -> Result<(), StorageError> {
        if !self.is_group(group, name, id)? {
            return Ok(());
        }
        group.deleted_groups.insert(id);
        group.batch.remove(keys::group(name));
        // Its lanes and pending records go later, in steps (see `GroupPurge`).
        let purge = GroupPurge {
            group: id,
            topic: None,
        };
        group.batch.insert(purge.marker(), &[]);
        group.touched = true;
        Ok(())
    }

    pub(super) fn stage_group_writes(
        &self,
        group: &mut CommitGroup,
        name: &str,
        id: u64,
        writes: Vec<GroupWrite>,
    ) -> Result<(), StorageError> {
        // Writes racing a delete must not bring the group's keys back.
        if !self.is_group(group, name, id)? {
            return Ok(());
        }
        let state = &mut group.group_keys;
        for write in writes {
            match write {
                GroupWrite::Lane {
                    topic,
                    cursor,
                    redelivered,
                    dead_lettered,
                    plain,
                } => state.set(
                    &keys::with_offset(keys::LANE, id, topic),
                    Some(encode_lane(cursor, redelivered, dead_lettered, &plain)),
                ),
                GroupWrite::Pending {
                    topic,
                    offset,
                    entry: Some((deliveries, not_before)),
                } => {
                    let mut value = [0u8; 12];
                    value[..4].copy_from_slice(&deliveries.to_be_bytes());
                    value[4..].copy_from_slice(&not_before.to_be_bytes());
                    state.set(&keys::unacked(id, topic, offset), Some(value.to_vec()));
                }
                GroupWrite::Pending {
                    topic,
                    offset,
                    entry: None,
                } => state.set(&keys::unacked(id, topic, offset), None),
                GroupWrite::DropLane { topic } => {
                    state.set(&keys::with_offset(keys::LANE, id, topic), None);
                    // Its pending records go later, in steps (see `GroupPurge`): those
                    // stored, and any this commit writes before the drop.
                    let purge = GroupPurge {
                        group: id,
                        topic: Some(topic),
                    };
                    state.set(&purge.marker(), Some(Vec::new()));
                }
            }
        }
        group.touched = true;
        Ok(())
    }
}

/// The group state a commit writes: the last write of each lane, pending and purge
/// key, as a sled batch would keep it.
#[derive(Default)]
pub(super) struct GroupKeys(BTreeMap<Vec<u8>, Option<Vec<u8>>>);

impl GroupKeys {
    fn set(&mut self, key: &[u8], value: Option<Vec<u8>>) {
        self.0.insert(key.to_vec(), value);
    }

    /// Leaves out the writes of these groups (deleted: their keys are purged).
    fn forget(&mut self, deleted: &HashSet<u64>) {
        // Lane, pending and purge keys all start with the group's id.
        self.0
            .retain(|key, _| keys::numbers::<1>(key).is_none_or(|[id]| !deleted.contains(&id)));
    }
}

/// Deltas between two applies, at most (unless [`StorageConfig::group_deltas`] says
/// otherwise).
///
/// [`StorageConfig::group_deltas`]: crate::storage::StorageConfig::group_deltas
pub const DEFAULT_GROUP_DELTAS: u64 = 256;

/// Keys the deltas may hold before they are applied, whatever their count: what the
/// writer keeps in memory of them.
const HELD_KEYS: usize = 16_384;

/// Group state written as deltas: each commit's group writes are one key, `O` + a
/// sequence (the writes themselves, key and value, as postcard), and the writer keeps
/// each key's last write in memory. (A commit writing a single key that no delta
/// holds writes it as it is: that is as atomic, and no delta can undo it.) Every
/// [`StorageConfig::group_deltas`] commits (or once [`HELD_KEYS`] keys are held), and
/// at a clean stop, it applies them: writes each key's last value, then removes the
/// deltas, oldest first, all before the commit's flush.
///
/// Any prefix of that reads the same: until a delta is removed, every key it wrote
/// has either its value or a newer one, and reading lays the deltas left over the keys
/// (`Storage::groups`, in the order written, last write winning), which gives the
/// newest values either way. A delta is one sled insert, so a commit's group writes
/// land all or none. The writes of a deleted group leave the held keys at once and
/// are skipped when read (the group has no record), so an apply never brings back a
/// key its purge removed.
///
/// [`StorageConfig::group_deltas`]: crate::storage::StorageConfig::group_deltas
pub(in crate::storage) struct GroupDeltas {
    /// The last write of each key the deltas on disk hold.
    held: GroupKeys,
    /// The sequence of the oldest delta on disk.
    first: u64,
    /// The sequence the next delta gets.
    next: u64,
    /// Deltas between two applies.
    every: u64,
}

impl GroupDeltas {
    /// The deltas a data dir holds, as read at opening.
    pub(in crate::storage) fn new(stored: StoredDeltas, every: u64) -> Self {
        Self {
            held: GroupKeys(stored.writes),
            first: stored.first,
            next: stored.next.max(stored.first),
            every: every.max(1),
        }
    }

    /// The one key a commit writes for its group state (`None` when it changed none),
    /// leaving out and forgetting the writes of the groups it deleted: its delta, or
    /// its only write when that is to a key no delta holds (a group over one topic
    /// changes one lane a commit: written as it is, it costs one sled write, not a
    /// delta's write and its removal).
    pub(super) fn stage(
        &mut self,
        mut commit: GroupKeys,
        deleted: &HashSet<u64>,
    ) -> Option<keys::KeyWrite> {
        if !deleted.is_empty() {
            self.held.forget(deleted);
            commit.forget(deleted);
        }
        if commit.0.len() == 1
            && let Some((key, _)) = commit.0.first_key_value()
            && !self.held.0.contains_key(key)
        {
            // No delta on disk holds the key, so none read after it can undo it.
            return commit.0.pop_first();
        }
        if commit.0.is_empty() {
            return None;
        }
        let writes: Vec<keys::KeyWrite> = commit.0.into_iter().collect();
        let value = encode_delta(&writes);
        self.held.0.extend(writes);
        let key = keys::with_id(keys::GROUP_DELTA, self.next);
        self.next += 1;
        Some((key.to_vec(), Some(value)))
    }

    /// Whether the deltas are due to be applied.
    pub(super) fn due(&self) -> bool {
        self.next - self.first >= self.every || self.held.0.len() >= HELD_KEYS
    }

    /// Writes each held key's last value, in key order, then removes the deltas.
    pub(super) fn apply(&mut self, tree: &sled::Tree) -> sled::Result<()> {
        keys::write(tree, self.steps())
    }

    /// The writes an apply makes, in order, leaving nothing held.
    pub(in crate::storage) fn steps(&mut self) -> Vec<keys::KeyWrite> {
        let mut steps: Vec<keys::KeyWrite> = std::mem::take(&mut self.held).0.into_iter().collect();
        steps.extend(
            (self.first..self.next)
                .map(|sequence| (keys::with_id(keys::GROUP_DELTA, sequence).to_vec(), None)),
        );
        self.first = self.next;
        steps
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lane(group: u64, topic: u64) -> Vec<u8> {
        keys::with_offset(keys::LANE, group, topic).to_vec()
    }

    fn value(cursor: u64) -> Option<Vec<u8>> {
        Some(encode_lane(cursor, 0, 0, &[]))
    }

    fn commit(writes: &[(Vec<u8>, Option<Vec<u8>>)]) -> GroupKeys {
        let mut keys = GroupKeys::default();
        for (key, value) in writes {
            keys.set(key, value.clone());
        }
        keys
    }

    fn deltas_on_disk(tree: &sled::Tree) -> usize {
        tree.scan_prefix([keys::GROUP_DELTA]).count()
    }

    /// A delta's key and value, as staged.
    fn delta(write: Option<keys::KeyWrite>) -> (Vec<u8>, Vec<keys::KeyWrite>) {
        let (key, value) = write.expect("a commit with group writes writes a key");
        let value = value.expect("a delta is set, never removed");
        (key, postcard::from_bytes(&value).unwrap())
    }

    #[test]
    fn each_commit_is_one_delta_and_every_so_many_are_applied() {
        let tree = sled::Config::new().temporary(true).open().unwrap();
        let tree = tree.open_tree("log").unwrap();
        let mut deltas = GroupDeltas::new(StoredDeltas::default(), 3);
        let pending = keys::unacked(7, 1, 5).to_vec();
        let commits = [
            vec![(lane(7, 1), value(1)), (lane(7, 2), value(1))],
            vec![(lane(7, 1), value(2)), (pending.clone(), Some(vec![0; 12]))],
            vec![(lane(7, 1), value(3)), (pending.clone(), None)],
        ];
        for (i, writes) in commits.iter().enumerate() {
            let staged = deltas.stage(commit(writes), &HashSet::new());
            let (key, decoded) = delta(staged.clone());
            assert_eq!(key, keys::with_id(keys::GROUP_DELTA, i as u64));
            assert_eq!(&decoded, writes, "the commit's writes, in key order");
            keys::write(&tree, staged).unwrap();
            assert_eq!(deltas.due(), i == 2, "due after the third");
        }
        assert!(tree.get(lane(7, 1)).unwrap().is_none(), "not applied yet");
        deltas.apply(&tree).unwrap();
        assert_eq!(deltas_on_disk(&tree), 0);
        assert_eq!(tree.get(lane(7, 1)).unwrap().map(|v| v.to_vec()), value(3));
        assert_eq!(tree.get(lane(7, 2)).unwrap().map(|v| v.to_vec()), value(1));
        assert!(
            tree.get(&pending).unwrap().is_none(),
            "written, then removed"
        );
        assert!(!deltas.due());
        assert!(
            deltas
                .stage(GroupKeys::default(), &HashSet::new())
                .is_none()
        );
        let two = commit(&[(lane(7, 1), value(4)), (lane(7, 3), value(4))]);
        let (key, _) = delta(deltas.stage(two, &HashSet::new()));
        assert_eq!(key, keys::with_id(keys::GROUP_DELTA, 3), "sequences go on");
    }

    #[test]
    fn a_lone_write_to_a_key_no_delta_holds_is_written_as_it_is() {
        let mut deltas = GroupDeltas::new(StoredDeltas::default(), 100);
        let write = (lane(7, 1), value(1));
        assert_eq!(
            deltas.stage(commit(std::slice::from_ref(&write)), &HashSet::new()),
            Some(write)
        );
        // Once a delta holds the key, a later lone write of it is a delta too: the
        // held one must not be applied over it.
        delta(deltas.stage(
            commit(&[(lane(7, 1), value(2)), (lane(7, 2), value(2))]),
            &HashSet::new(),
        ));
        let (key, writes) = delta(deltas.stage(commit(&[(lane(7, 1), value(3))]), &HashSet::new()));
        assert_eq!(key, keys::with_id(keys::GROUP_DELTA, 1));
        assert_eq!(writes, [(lane(7, 1), value(3))]);
        assert_eq!(deltas.steps()[0], (lane(7, 1), value(3)), "applied last");
    }

    #[test]
    fn a_deleted_group_s_writes_leave_the_deltas() {
        let tree = sled::Config::new().temporary(true).open().unwrap();
        let tree = tree.open_tree("log").unwrap();
        let mut deltas = GroupDeltas::new(StoredDeltas::default(), 100);
        let group7 = commit(&[(lane(7, 1), value(1)), (lane(7, 3), value(1))]);
        delta(deltas.stage(group7, &HashSet::new()));
        let purge = GroupPurge {
            group: 7,
            topic: Some(2),
        };
        let (_, decoded) = delta(deltas.stage(
            commit(&[
                (lane(8, 1), value(2)),
                (lane(8, 2), value(2)),
                (lane(7, 2), None),
                (purge.marker(), Some(Vec::new())),
            ]),
            &HashSet::from([7]),
        ));
        assert_eq!(decoded, [(lane(8, 1), value(2)), (lane(8, 2), value(2))]);
        deltas.apply(&tree).unwrap();
        let written: Vec<Vec<u8>> = tree.iter().keys().map(|k| k.unwrap().to_vec()).collect();
        assert_eq!(written, [lane(8, 1), lane(8, 2)], "nothing of group 7");
    }

    #[test]
    fn many_keys_are_applied_before_the_count_is_reached() {
        let mut deltas = GroupDeltas::new(StoredDeltas::default(), u64::MAX);
        let writes: Vec<_> = (0..HELD_KEYS as u64)
            .map(|topic| (lane(7, topic), value(1)))
            .collect();
        deltas.stage(commit(&writes[2..]), &HashSet::new());
        assert!(!deltas.due());
        deltas.stage(commit(&writes[..2]), &HashSet::new());
        assert!(deltas.due(), "{HELD_KEYS} keys held");
    }
}
