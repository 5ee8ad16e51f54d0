//! The receipts of an append's publishes, and the deduplication entries that remember
//! them: one `d` key per commit, keyed by time so that the clean-up purges the oldest
//! first (past the window, or past the newest `dedup.max_entries` ids).

use quiver_protocol::{PublishId, Receipt};
use tracing::warn;

use super::cleanup::CLEANUP_STEP;
use super::{CommitGroup, Writer};
use crate::storage::keys;
use crate::storage::{Appended, Cleanup, PublishLayout, StorageError};
use crate::util::now_ms;

/// How many ids a dedup entry holds, read without decoding it: postcard writes a
/// sequence's length first, as a varint.
fn ids_in(entry: &[u8]) -> Result<usize, StorageError> {
    postcard::take_from_bytes::<usize>(entry)
        .map(|(ids, _)| ids)
        .map_err(|e| StorageError::corrupt(format!("dedup entry: {e}")))
}

/// The receipt of each publish of an append, read from where its records went; those
/// of publishes with an id are remembered in the commit's dedup entry.
pub(super) fn stage_receipts(
    group: &mut CommitGroup,
    publishes: &[PublishLayout],
    appended: &[Appended],
) -> Vec<Receipt> {
    let receipts: Vec<Receipt> = publishes
        .iter()
        .map(|p| p.layout.receipt(appended))
        .collect();
    for (publish, receipt) in publishes.iter().zip(&receipts) {
        if let Some(id) = publish.id {
            group.dedup.push((id, receipt.clone()));
        }
    }
    receipts
}

impl Writer {
    /// The key and value remembering the ids and receipts of a commit's publishes.
    pub(super) fn dedup_entry(
        &self,
        dedup: &[(PublishId, Receipt)],
    ) -> Option<([u8; 17], Vec<u8>)> {
        if dedup.is_empty() {
            return None;
        }
        match self.db.generate_id() {
            // Invariant: receipts and ids hold only strings, integers and options.
            Ok(unique) => Some((
                keys::dedup(now_ms(), unique),
                postcard::to_allocvec(dedup).expect("receipts always encode"),
            )),
            Err(e) => {
                warn!(cause = %e, "publish ids not remembered; retries of these publishes may be stored twice");
                None
            }
        }
    }

    /// Removes up to [`CLEANUP_STEP`] deduplication entries a restart would not read:
    /// those older than `before_ms`, and those older than the newest `keep` ids (the
    /// deduplicator remembers no more). Without the second bound, a producer publishing
    /// fast keeps a whole window of ids on disk: at 200,000 publishes a second and the
    /// default two minutes, gigabytes that nothing reads.
    pub(super) fn purge_dedup(
        &mut self,
        before_ms: u64,
        keep: usize,
    ) -> Result<Cleanup, StorageError> {
        let lo = keys::dedup(0, 0);
        let mut hi = keys::dedup(before_ms, 0);
        let newest = keys::dedup(u64::MAX, u64::MAX);
        let mut ids = 0;
        for item in self.tree.range(hi..=newest).rev() {
            let (key, value) = item?;
            ids += ids_in(&value)?;
            if ids >= keep {
                // The oldest entry a restart reads: every older one goes.
                hi = key
                    .as_ref()
                    .try_into()
                    .map_err(|_| StorageError::corrupt("dedup key of the wrong shape"))?;
                break;
            }
        }
        let mut batch = sled::Batch::default();
        let mut removed = 0;
        for key in self.tree.range(lo..hi).keys().take(CLEANUP_STEP) {
            batch.remove(key?);
            removed += 1;
        }
        self.apply(batch)?;
        Ok(Cleanup {
            removed,
            more: removed == CLEANUP_STEP,
        })
    }
}
