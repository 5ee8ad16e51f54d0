//! The background clean-up's writes, each a bounded step run alone between group
//! commits: trimming a topic to its retention, purging a deleted topic's chunks, a
//! removed plugin's state and a deleted group's keys.

use std::sync::Arc;

use super::Writer;
use crate::storage::keys::{self, ChunkMeta};
use crate::storage::read::{LogReader, decode_index};
use crate::storage::{Cleanup, GroupPurge, StorageError, TopicLog};

/// The most chunks (or dedup entries) one clean-up step removes, so appends never wait
/// long.
pub(in crate::storage) const CLEANUP_STEP: usize = 256;

/// The most chunks one trim of many topics removes (a few per topic, usually).
const TRIM_ALL_STEP: usize = 4 * CLEANUP_STEP;

/// The most keys one purge of a removed plugin's state or a deleted group's keys
/// removes: a step is one sled batch, and sled holds a copy of every tree node a batch
/// changes until the batch is done (measured: removing a plugin with 200,000 state keys
/// in one batch took the broker from 86 to 744–775 MiB; docs/performance.md, "A
/// plugin's state removed in steps").
const KEY_PURGE_STEP: usize = 4096;

impl Writer {
    /// Moves a topic's first offset up to `first` and removes up to [`CLEANUP_STEP`]
    /// chunks below it. Records still in unsealed pieces are sealed first, so that only
    /// chunks are ever removed.
    pub(super) fn trim(
        &mut self,
        log: &Arc<TopicLog>,
        first: u64,
    ) -> Result<Cleanup, StorageError> {
        self.trim_step(log, first, CLEANUP_STEP)
    }

    /// [`Writer::trim`], removing at most `most` chunks (none: the first offset moves
    /// all the same).
    fn trim_step(
        &mut self,
        log: &Arc<TopicLog>,
        first: u64,
        most: usize,
    ) -> Result<Cleanup, StorageError> {
        if log.is_deleted() {
            return Ok(Cleanup {
                removed: 0,
                more: false,
            });
        }
        if must_seal_to_trim(log, first) {
            self.seal_now([Arc::clone(log)])?;
        }
        let first = first.min(log.stats().next);
        let mut stats = log.stats();
        let mut sealed = log.sealed_stats();
        let mut batch = sled::Batch::default();
        if first > stats.first {
            let freed = LogReader(&self.tree).bytes_between(log, stats.first, first)?;
            for stats in [&mut stats, &mut sealed] {
                stats.bytes = stats.bytes.saturating_sub(freed);
                stats.first = first;
            }
            batch.insert(&keys::with_id(keys::STATS, log.id()), &sealed.encode());
        }
        let mut removed = 0;
        let mut more = false;
        let lo = keys::with_offset(keys::INDEX, log.id(), 0);
        let hi = keys::with_offset(keys::INDEX, log.id(), stats.first);
        for item in self.tree.range(lo..hi) {
            let (key, value) = item?;
            let (base, meta) = decode_index(&key, &value)?;
            if base + u64::from(meta.count) > stats.first {
                break;
            }
            if removed == most {
                more = true;
                break;
            }
            remove_chunk(&self.tree, &mut batch, log.id(), base, &meta)?;
            removed += 1;
        }
        self.apply(batch)?;
        log.set_stats(stats);
        Ok(Cleanup { removed, more })
    }

    /// Trims each topic to its point, having sealed first, in one commit, the topics
    /// whose point lies past their sealed end (each would otherwise be sealed by a
    /// commit and a flush of its own). Every first offset moves; at most
    /// [`TRIM_ALL_STEP`] chunks are removed in all. Returns the topics with chunks left
    /// to remove.
    pub(super) fn trim_all(
        &mut self,
        points: Vec<(Arc<TopicLog>, u64)>,
    ) -> Result<Vec<(Arc<TopicLog>, u64)>, StorageError> {
        let unsealed: Vec<Arc<TopicLog>> = points
            .iter()
            .filter(|(log, first)| !log.is_deleted() && must_seal_to_trim(log, *first))
            .map(|(log, _)| Arc::clone(log))
            .collect();
        if !unsealed.is_empty() {
            self.seal_now(unsealed)?;
        }
        let mut unfinished = Vec::new();
        let mut budget = TRIM_ALL_STEP;
        for (log, first) in points {
            let step = self.trim_step(&log, first, budget)?;
            budget -= step.removed;
            if step.more {
                unfinished.push((log, first));
            }
        }
        Ok(unfinished)
    }

    /// Removes deleted topics' chunks, topic after topic, up to [`CLEANUP_STEP`] in
    /// all, in one batch: a topic whose last chunk goes loses its link marks and its
    /// purge marker with it. Topics without a marker (purged already) are skipped.
    /// `more`: the step ran out before the last topic was done.
    pub(super) fn purge(&mut self, ids: &[u64]) -> Result<Cleanup, StorageError> {
        let mut batch = sled::Batch::default();
        let mut removed = 0;
        let mut more = false;
        for &id in ids {
            let marker = keys::with_id(keys::PURGE, id);
            if !self.tree.contains_key(marker)? {
                continue;
            }
            let lo = keys::with_offset(keys::INDEX, id, 0);
            let hi = keys::with_offset(keys::INDEX, id, u64::MAX);
            for item in self.tree.range(lo..=hi) {
                if removed == CLEANUP_STEP {
                    more = true;
                    break;
                }
                let (key, value) = item?;
                let (base, meta) = decode_index(&key, &value)?;
                remove_chunk(&self.tree, &mut batch, id, base, &meta)?;
                removed += 1;
            }
            if more {
                break;
            }
            // The marks of origins forwarded to it (a handful per link).
            for key in self.tree.scan_prefix(keys::with_id(keys::MARK, id)).keys() {
                batch.remove(key?);
            }
            batch.remove(&marker);
        }
        self.apply(batch)?;
        Ok(Cleanup { removed, more })
    }

    /// Removes up to [`KEY_PURGE_STEP`] state keys of a removed plugin; its purge
    /// marker goes with the last of them. Without a marker it does nothing: the state
    /// is that of a plugin deployed since (a deploy finishes the purge first).
    pub(super) fn purge_state(&mut self, plugin: &str) -> Result<Cleanup, StorageError> {
        self.purge_marked(&keys::state_purge(plugin), &[keys::state_prefix(plugin)])
    }

    /// Removes up to [`KEY_PURGE_STEP`] keys of a deleted group, or of a lane dropped
    /// with its topic; the marker goes with the last of them.
    pub(super) fn purge_group(&mut self, purge: GroupPurge) -> Result<Cleanup, StorageError> {
        self.purge_marked(&purge.marker(), &purge.prefixes())
    }

    /// Removes up to [`KEY_PURGE_STEP`] keys under `prefixes`, and `marker` with the
    /// last of them; nothing if there is no `marker`. Applied, not flushed: the next
    /// commit's flush covers it, and a step the log loses leaves the marker, so the
    /// purge goes on.
    fn purge_marked(
        &mut self,
        marker: &[u8],
        prefixes: &[Vec<u8>],
    ) -> Result<Cleanup, StorageError> {
        if !self.tree.contains_key(marker)? {
            return Ok(Cleanup {
                removed: 0,
                more: false,
            });
        }
        let mut batch = sled::Batch::default();
        let mut removed = 0;
        let keys = prefixes
            .iter()
            .flat_map(|prefix| self.tree.scan_prefix(prefix).keys())
            .take(KEY_PURGE_STEP);
        for key in keys {
            batch.remove(key?);
            removed += 1;
        }
        let more = removed == KEY_PURGE_STEP;
        if !more {
            batch.remove(marker);
        }
        self.apply(batch)?;
        Ok(Cleanup { removed, more })
    }
}

/// True when trimming `log` to `first` moves its first offset past its sealed end:
/// the records in between must be sealed first, so that only chunks are removed.
fn must_seal_to_trim(log: &TopicLog, first: u64) -> bool {
    first.min(log.stats().next) > log.sealed_stats().next
}

/// Queues the removal of a chunk: its index entry (`meta`) and every part.
fn remove_chunk(
    tree: &sled::Tree,
    batch: &mut sled::Batch,
    id: u64,
    base: u64,
    meta: &ChunkMeta,
) -> Result<(), StorageError> {
    batch.remove(&keys::with_offset(keys::INDEX, id, base));
    for part in tree.scan_prefix(keys::chunk_parts(id, base, meta)).keys() {
        batch.remove(part?);
    }
    Ok(())
}
