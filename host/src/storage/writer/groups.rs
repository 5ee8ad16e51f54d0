//! Staging a durable group's writes: its creation with a lane per topic, its deletion,
//! and the changes members make (cursors, counters, pending records). A lane is one
//! key holding its cursor, counters and plain pending records as runs
//! (`storage/groups.rs`, `encode_lane`); only pending records delivered more than once
//! or nacked have keys of their own (`u`).
//!
//! The changes members make are written key by key after the commit's appends, not in
//! a sled batch (which costs a log write and sync of its own, see `mod.rs`), so a
//! crash can keep any prefix of them: [`GroupKeys::ordered`] puts them in an order
//! where every prefix still holds every record not settled.

use std::collections::{HashMap, HashSet};

use super::{CommitGroup, Writer};
use crate::storage::groups::encode_lane;
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

/// The group state a commit writes: the last write of each lane and pending key, as a
/// sled batch would keep it.
#[derive(Default)]
pub(super) struct GroupKeys(HashMap<Vec<u8>, Option<Vec<u8>>>);

impl GroupKeys {
    fn set(&mut self, key: &[u8], value: Option<Vec<u8>>) {
        self.0.insert(key.to_vec(), value);
    }

    /// The writes in the order they are applied, leaving out those of groups deleted
    /// in the commit (whose keys the deletion removes):
    ///
    /// 1. pending records' keys written: a record nacked or delivered again gets its
    ///    key before its lane's runs let go of it;
    /// 2. lanes written (cursors, counters, runs);
    /// 3. pending records' keys removed (settled, or moved into their lane's runs by
    ///    the lane written before);
    /// 4. lanes removed.
    ///
    /// So a crash that keeps any prefix loses no record still to settle: at worst a
    /// record is held by its lane's runs and its own key both (which loading reads as
    /// one pending record, the key's), or a settled one is still pending and comes
    /// again, as after any crash (docs/semantics.md).
    pub(super) fn ordered(self, deleted: &HashSet<u64>) -> Vec<keys::KeyWrite> {
        let phase = |key: &[u8], value: &Option<Vec<u8>>| match (key.first(), value) {
            (Some(&keys::UNACKED), Some(_)) => 0,
            (_, Some(_)) => 1,
            (Some(&keys::UNACKED), None) => 2,
            (_, None) => 3,
        };
        // Lane and pending keys both start with the group's id.
        let mut writes: Vec<_> = self
            .0
            .into_iter()
            .filter(|(key, _)| keys::numbers::<1>(key).is_none_or(|[id]| !deleted.contains(&id)))
            .collect();
        writes.sort_by(|(a, va), (b, vb)| (phase(a, va), a).cmp(&(phase(b, vb), b)));
        writes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain_lane(cursor: u64, plain: &[(u64, u64)]) -> Option<Vec<u8>> {
        Some(encode_lane(cursor, 0, 0, plain))
    }

    #[test]
    fn a_record_leaving_its_lane_s_runs_gets_its_key_first() {
        // Record 5 of topic 1 in group 7 is nacked: the lane's runs let go of it and
        // it gets a key of its own, whichever order the changes came in.
        let lane = keys::with_offset(keys::LANE, 7, 1).to_vec();
        let pending = keys::unacked(7, 1, 5).to_vec();
        for lane_first in [true, false] {
            let mut state = GroupKeys::default();
            let writes = [
                (lane.clone(), plain_lane(10, &[(6, 4)])),
                (pending.clone(), Some(vec![0; 12])),
            ];
            for (key, value) in match lane_first {
                true => [writes[0].clone(), writes[1].clone()],
                false => [writes[1].clone(), writes[0].clone()],
            } {
                state.set(&key, value);
            }
            let keys: Vec<Vec<u8>> = state
                .ordered(&HashSet::new())
                .into_iter()
                .map(|(key, _)| key)
                .collect();
            assert_eq!(keys, [pending.clone(), lane.clone()]);
        }
    }

    #[test]
    fn each_key_keeps_its_last_write_and_removals_come_last() {
        let lane = keys::with_offset(keys::LANE, 7, 1).to_vec();
        let settled = keys::unacked(7, 1, 3).to_vec();
        let again = keys::unacked(7, 1, 4).to_vec();
        let mut state = GroupKeys::default();
        // Record 3: written, then settled. Record 4: removed (moved into the runs
        // at load), then nacked in the same commit. The lane: written twice.
        state.set(&settled, Some(vec![1; 12]));
        state.set(&again, None);
        state.set(&lane, plain_lane(5, &[(0, 3)]));
        state.set(&settled, None);
        state.set(&again, Some(vec![2; 12]));
        state.set(&lane, plain_lane(9, &[(0, 3)]));
        let ordered = state.ordered(&HashSet::new());
        assert_eq!(
            ordered,
            [
                (again, Some(vec![2; 12])),
                (lane, plain_lane(9, &[(0, 3)])),
                (settled, None),
            ]
        );
    }

    #[test]
    fn a_group_deleted_in_the_commit_writes_nothing() {
        let mut state = GroupKeys::default();
        state.set(&keys::with_offset(keys::LANE, 7, 1), plain_lane(1, &[]));
        state.set(&keys::unacked(7, 1, 0), Some(vec![0; 12]));
        state.set(&keys::with_offset(keys::LANE, 8, 1), plain_lane(2, &[]));
        let ordered = state.ordered(&HashSet::from([7]));
        assert_eq!(
            ordered,
            [(
                keys::with_offset(keys::LANE, 8, 1).to_vec(),
                plain_lane(2, &[])
            )]
        );
    }
}
