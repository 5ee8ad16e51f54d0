//! Staging what links write: the link records and their cursors (the source side), and
//! the marks of forwarded records (the destination side), checked against the commit's
//! own earlier marks first, then the committed ones.

use super::{CommitGroup, Writer};
use crate::storage::links::{self, Mark, MarkWrite};
use crate::storage::{LinkCursor, LinkRecord, Provenance, StorageError};

impl Writer {
    /// Whether a forwarded batch continues at its origin's mark: the mark this commit
    /// already moved, else the committed one; a first batch (no mark) may start
    /// anywhere.
    pub(super) fn check_mark(
        &self,
        group: &CommitGroup,
        write: &MarkWrite,
    ) -> Result<(), StorageError> {
        let current = match group.marks.get(&write.key) {
            Some(mark) => Some(mark.next),
            None => self.marks.get(&write.key),
        };
        match current {
            Some(expected) if expected != write.from => Err(StorageError::OutOfOrder {
                expected,
                from: write.from,
            }),
            _ => Ok(()),
        }
    }

    pub(super) fn stage_put_link(
        &self,
        group: &mut CommitGroup,
        record: &LinkRecord,
        create: bool,
    ) -> Result<(), StorageError> {
        let key = links::link(&record.spec.name);
        if create && self.tree.contains_key(&key)? {
            return Err(StorageError::LinkExists(record.spec.name.clone()));
        }
        group.batch.insert(key, links::encode(record));
        Ok(())
    }

    pub(super) fn stage_delete_link(
        &self,
        group: &mut CommitGroup,
        name: &str,
    ) -> Result<(), StorageError> {
        let key = links::link(name);
        if !self.tree.contains_key(&key)? {
            return Err(StorageError::LinkNotFound(name.to_owned()));
        }
        group.batch.remove(key);
        for cursor in self.tree.scan_prefix(links::cursor_prefix(name)).keys() {
            group.batch.remove(cursor?);
        }
        Ok(())
    }
}

/// Stages a mark's move, and returns the original timestamps of the records it covers
/// and their provenance headers.
pub(super) fn stage_mark(
    group: &mut CommitGroup,
    write: MarkWrite,
) -> (Vec<u64>, Option<Provenance>) {
    let mark = Mark {
        next: write.next,
        origin_topic: write.origin_topic,
    };
    group.put(links::mark_key(&write.key), Some(links::mark_value(&mark)));
    group.marks.insert(write.key, mark);
    group.must_flush = true;
    (write.stamps, write.provenance)
}

/// Stages a link's cursors; nobody waits for them.
pub(super) fn stage_link_cursors(
    group: &mut CommitGroup,
    link: &str,
    cursors: Vec<(u64, LinkCursor)>,
) {
    for (topic, cursor) in cursors {
        group.put(links::cursor(link, topic), Some(links::encode(&cursor)));
    }
    group.touched = true;
}
