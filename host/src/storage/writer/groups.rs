//! Staging a durable group's writes: its creation with a lane per topic, its deletion,
//! and the changes members make (cursors, counters, pending records). A lane is one
//! key holding its cursor, counters and plain pending records as runs
//! (`storage/groups.rs`, `encode_lane`); only pending records delivered more than once
//! or nacked have keys of their own (`u`).

use super::{CommitGroup, Writer};
use crate::storage::groups::encode_lane;
use crate::storage::keys;
use crate::storage::{GroupRecord, GroupWrite, StorageError};

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
        for prefix in [
            keys::with_id(keys::LANE, id),
            keys::with_id(keys::UNACKED, id),
        ] {
            for key in self.tree.scan_prefix(prefix).keys() {
                group.batch.remove(key?);
            }
        }
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
        for write in writes {
            match write {
                GroupWrite::Lane {
                    topic,
                    cursor,
                    redelivered,
                    dead_lettered,
                    plain,
                } => group.batch.insert(
                    &keys::with_offset(keys::LANE, id, topic)[..],
                    encode_lane(cursor, redelivered, dead_lettered, &plain),
                ),
                GroupWrite::Pending {
                    topic,
                    offset,
                    entry: Some((deliveries, not_before)),
                } => {
                    let mut value = [0u8; 12];
                    value[..4].copy_from_slice(&deliveries.to_be_bytes());
                    value[4..].copy_from_slice(&not_before.to_be_bytes());
                    group
                        .batch
                        .insert(&keys::unacked(id, topic, offset)[..], &value[..]);
                }
                GroupWrite::Pending {
                    topic,
                    offset,
                    entry: None,
                } => group.batch.remove(&keys::unacked(id, topic, offset)[..]),
                GroupWrite::DropLane { topic } => {
                    group
                        .batch
                        .remove(&keys::with_offset(keys::LANE, id, topic)[..]);
                    for key in self
                        .tree
                        .scan_prefix(keys::with_offset(keys::UNACKED, id, topic))
                        .keys()
                    {
                        group.batch.remove(key?);
                    }
                }
            }
        }
        group.touched = true;
        Ok(())
    }
}
