//! Reading a topic's stored records outside a subscription, a page at a time: the
//! console's browsing and search by key, and the dead letters a re-drive takes.

use quiver_protocol::record::decode_shared;
use quiver_protocol::{Record, StartAt};

use super::{Broker, BrokerError, authorize};
use crate::auth::Access;
use crate::storage::StorageError;

/// Records a search by key reads, at most, per request: a page stops there even
/// when it found fewer than it asked for, and says where it got to.
pub const MAX_SCAN: u64 = 10_000;

/// Records read per storage read.
const READ_RECORDS: u32 = 1_024;
/// Bytes read per storage read, about.
const READ_BYTES: usize = 1 << 20;

/// One page of a topic's records.
#[derive(Debug)]
pub struct Page {
    /// The records, in offset order.
    pub records: Vec<Record>,
    /// Where the next page starts: past the last record read (found or not).
    pub next: u64,
    /// The topic's next offset when the page was read.
    pub end: u64,
}

impl Broker {
    /// Up to `limit` of `topic`'s records from `from`, as `access`'s principal (it
    /// needs the subscribe right). With `key`, only records with that key, reading at
    /// most [`MAX_SCAN`] records.
    pub fn browse(
        &self,
        access: &Access,
        topic: &str,
        from: StartAt,
        limit: usize,
        key: Option<&[u8]>,
    ) -> Result<Page, BrokerError> {
        authorize::subscribe(access, topic)?;
        let log = self.topic(topic)?;
        let end = log.stats().next;
        let mut next = self.start_offset(&log, from)?;
        let stop = match key {
            Some(_) => next.saturating_add(MAX_SCAN).min(end),
            None => end,
        };
        let mut records = Vec::new();
        while records.len() < limit && next < stop {
            let Some(slice) = self.storage.read(&log, next, READ_RECORDS, READ_BYTES)? else {
                break;
            };
            let batch =
                decode_shared(slice.base_offset, &slice.batch).map_err(StorageError::from)?;
            let before = next;
            for record in batch {
                if record.offset >= stop || records.len() == limit {
                    break;
                }
                next = record.offset + 1;
                if key.is_none_or(|key| record.key.as_deref() == Some(key)) {
                    records.push(record);
                }
            }
            if next == before {
                break;
            }
        }
        Ok(Page { records, next, end })
    }
}
