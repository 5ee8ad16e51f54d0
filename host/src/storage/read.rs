//! Reading topic logs: slices for subscribers, time lookups, retention arithmetic.
//!
//! Readers take the tree as it is and bound themselves by the topic's durable stats,
//! so chunks the writer has applied but not yet flushed are never served. A topic's
//! records past its sealed chunks are in memory (its unsealed pieces, see
//! `journal.rs`), and a topic someone reads keeps its newest chunks in memory too
//! (`TopicLog::tail_chunk`), handed over by the writer with the commit that made them
//! count: readers at the head of the log take them from there, and go to sled for
//! anything older. The writer changes memory only after sled, so a record leaving
//! memory is already in sled.
//!
//! A reader that comes back to the same chunk a few records at a time (a group member
//! with prefetch 1 over a backlog) keeps the last chunk it took from sled
//! ([`ChunkCache`]), so that it loads and checks each chunk once.
//!
//! Every chunk read from sled is checked against its index entry before any of it is
//! used: its length always, its CRC-32 when the entry has one (all entries written
//! since checksums exist). A chunk that fails is reported as [`StorageError::Corrupt`]
//! and logged with its topic and offset; its bytes are never served.

use bytes::{Bytes, BytesMut};
use quiver_protocol::record;
use tracing::error;

use super::keys::{self, ChunkMeta, LogStats};
use super::{Slice, StorageError, TopicLog};

/// Read access to the `log` tree.
pub(super) struct LogReader<'a>(pub(super) &'a sled::Tree);

/// The last chunk a reader took from sled, checked, kept for its next read: a reader
/// that takes a chunk's records a few at a time from behind the head of the log (a
/// group member with prefetch 1 over a backlog) loads and checks each chunk once, not
/// once a read. Sealed chunks never change and topic ids are never reused, so a kept
/// chunk stays right; what retention trimmed from it is below the topic's first offset,
/// which every read starts at or after.
#[derive(Debug, Default)]
pub struct ChunkCache(Option<CachedChunk>);

#[derive(Debug)]
struct CachedChunk {
    topic: u64,
    base: u64,
    /// One past its last offset.
    end: u64,
    chunk: Bytes,
}

impl ChunkCache {
    /// The kept chunk, if it is `topic`'s and holds `offset`.
    fn get(&self, topic: u64, offset: u64) -> Option<(u64, Bytes)> {
        self.0
            .as_ref()
            .filter(|kept| kept.topic == topic && (kept.base..kept.end).contains(&offset))
            .map(|kept| (kept.base, kept.chunk.clone()))
    }
}

/// A chunk found for a read: its base offset, its bytes, and its record count when it
/// came from sled (chunks still in memory are not worth keeping).
type Found = (u64, Bytes, Option<u32>);

impl LogReader<'_> {
    /// Reads up to `max_records` records (and about `max_bytes`, at least one record)
    /// starting at `from`, or at the oldest record if `from` has been trimmed.
    /// `None` when no durable record exists at or after `from`. A chunk taken from sled
    /// is kept in `cache`, when there is one, and a read that falls in the chunk kept
    /// there takes it from there.
    pub(super) fn read(
        &self,
        log: &TopicLog,
        from: u64,
        max_records: u32,
        max_bytes: usize,
        mut cache: Option<&mut ChunkCache>,
    ) -> Result<Option<Slice>, StorageError> {
        // A chunk can vanish between the index lookup and the read when retention trims
        // it; the stats have moved on by then, so look again.
        let mut attempts = 0;
        let (stats, base, chunk, from) = loop {
            let stats = log.stats();
            let from = from.max(stats.first);
            if from >= stats.next || max_records == 0 {
                return Ok(None);
            }
            let kept = cache.as_deref().and_then(|cache| cache.get(log.id(), from));
            let found = match kept {
                Some((base, chunk)) => Some((base, chunk, None)),
                None => self.find_chunk(log, from)?,
            };
            if let Some((base, chunk, count)) = found {
                if base >= stats.next {
                    // Everything from `from` was trimmed while we looked, and the next
                    // chunk is one the writer has not committed yet (its commit wakes
                    // the topic's watchers once it counts).
                    return Ok(None);
                }
                if let (Some(cache), Some(count)) = (cache.as_deref_mut(), count) {
                    cache.0 = Some(CachedChunk {
                        topic: log.id(),
                        base,
                        end: base + u64::from(count),
                        chunk: chunk.clone(),
                    });
                }
                break (stats, base, chunk, from.max(base));
            }
            attempts += 1;
            if attempts == 3 {
                return Err(StorageError::corrupt(format!(
                    "topic {}: no chunk holds offset {from}",
                    log.name()
                )));
            }
        };
        let limit = u64::from(max_records).min(stats.next - from);
        let mut start = None;
        let mut end = 0;
        let mut count = 0u32;
        for (offset, entry) in (base..).zip(record::entries(&chunk)) {
            let entry = entry?;
            if offset < from {
                continue;
            }
            let first = *start.get_or_insert(entry.start);
            if count > 0 && entry.start + entry.encoded_len - first > max_bytes {
                break;
            }
            end = entry.start + entry.encoded_len;
            count += 1;
            if u64::from(count) == limit {
                break;
            }
        }
        let Some(start) = start else {
            return Err(StorageError::corrupt(format!(
                "topic {} chunk at {base} ends before offset {from}",
                log.name()
            )));
        };
        let batch = chunk.slice(start..end);
        Ok(Some(Slice {
            base_offset: from,
            count,
            batch,
        }))
    }

    /// The chunk holding `offset`, or failing that the first chunk after it (records
    /// before it were trimmed while we looked), as its base offset and bytes. `None`
    /// when the chunk was removed between reading the index and reading it.
    fn chunk_at(&self, log: &TopicLog, offset: u64) -> Result<Option<(u64, Bytes)>, StorageError> {
        Ok(self
            .find_chunk(log, offset)?
            .map(|(base, chunk, _)| (base, chunk)))
    }

    /// [`chunk_at`](Self::chunk_at), with the record count of a chunk taken from sled.
    fn find_chunk(&self, log: &TopicLog, offset: u64) -> Result<Option<Found>, StorageError> {
        if let Some((base, chunk)) = log.in_memory(offset) {
            return Ok(Some((base, chunk, None)));
        }
        let id = log.id();
        let found = match self.index_at(id, offset)? {
            Some(found) => Some(found),
            None => {
                let at = keys::with_offset(keys::INDEX, id, offset);
                let hi = keys::with_offset(keys::INDEX, id, u64::MAX);
                self.0
                    .range(at..=hi)
                    .next()
                    .transpose()?
                    .map(|(key, value)| decode_index(&key, &value))
                    .transpose()?
            }
        };
        let Some((base, meta)) = found else {
            return Ok(None);
        };
        let Some(chunk) = self.load_chunk(&keys::chunk_parts(id, base, &meta))? else {
            return Ok(None);
        };
        verify(log, base, &meta, &chunk)?;
        Ok(Some((base, chunk, Some(meta.count))))
    }

    /// A chunk's bytes, joined from its parts (`parts`, their prefix: one part unless
    /// it holds a record larger than a part). Unchecked: see [`verify`].
    fn load_chunk(&self, parts: &[u8]) -> Result<Option<Bytes>, StorageError> {
        let mut parts = self.0.scan_prefix(parts);
        let Some((_, first)) = parts.next().transpose()? else {
            return Ok(None);
        };
        let Some((_, second)) = parts.next().transpose()? else {
            return Ok(Some(Bytes::from_owner(first)));
        };
        let mut joined = BytesMut::from(&first[..]);
        joined.extend_from_slice(&second);
        for part in parts {
            joined.extend_from_slice(&part?.1);
        }
        Ok(Some(joined.freeze()))
    }

    /// What the index says of the chunk holding `offset`, or, for an unsealed piece,
    /// the same of the piece (without a CRC).
    fn meta_at(
        &self,
        log: &TopicLog,
        offset: u64,
    ) -> Result<Option<(u64, ChunkMeta)>, StorageError> {
        if let Some(piece) = log.unsealed_piece(offset) {
            let meta = ChunkMeta {
                count: piece.count,
                bytes: u32::try_from(piece.bytes.len()).unwrap_or(u32::MAX),
                first_ts: piece.first_ts,
                last_ts: piece.last_ts,
                crc: None,
                sealed: None,
            };
            return Ok(Some((piece.base, meta)));
        }
        self.index_at(log.id(), offset)
    }

    /// The index entry of the chunk holding `offset`.
    fn index_at(&self, id: u64, offset: u64) -> Result<Option<(u64, ChunkMeta)>, StorageError> {
        let lo = keys::with_offset(keys::INDEX, id, 0);
        let at = keys::with_offset(keys::INDEX, id, offset);
        self.0
            .range(lo..=at)
            .next_back()
            .transpose()?
            .map(|(key, value)| decode_index(&key, &value))
            .transpose()
    }

    /// The first offset whose record was appended at or after `timestamp` (ms), or the
    /// topic's `next` offset if there is none yet.
    pub(super) fn offset_for_timestamp(
        &self,
        log: &TopicLog,
        timestamp: u64,
    ) -> Result<u64, StorageError> {
        let stats = log.stats();
        let (mut lo, mut hi) = (stats.first, stats.next);
        // Invariant: records below `lo` are older than `timestamp`; records at or above
        // `hi` (if any) are not.
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let Some((base, meta)) = self.meta_at(log, mid)? else {
                return Ok(lo);
            };
            let end = base + u64::from(meta.count);
            if meta.last_ts < timestamp {
                lo = end.max(mid + 1);
            } else if meta.first_ts >= timestamp {
                hi = base.max(lo);
            } else {
                // The boundary lies inside this chunk.
                let Some((base, chunk)) = self.chunk_at(log, mid)? else {
                    return Ok(lo);
                };
                for (offset, entry) in (base..).zip(record::entries(&chunk)) {
                    if offset >= lo && entry?.timestamp >= timestamp {
                        return Ok(offset);
                    }
                }
                return Ok(end.min(hi));
            }
        }
        Ok(lo)
    }

    /// The offset retention wants the topic to start at now, if that is past its first.
    pub(super) fn retention_point(
        &self,
        log: &TopicLog,
        now_ms: u64,
    ) -> Result<Option<u64>, StorageError> {
        let retention = log.retention();
        let stats = log.stats();
        let mut first = stats.first;
        if let Some(max) = retention.max_records {
            first = first.max(stats.next.saturating_sub(max));
        }
        if let Some(max_age) = retention.max_age_ms {
            first = first.max(self.offset_for_timestamp(log, now_ms.saturating_sub(max_age))?);
        }
        if let Some(max_bytes) = retention.max_bytes
            && stats.bytes > max_bytes
        {
            first = first.max(self.offset_after_bytes(log, stats, stats.bytes - max_bytes)?);
        }
        Ok((first > stats.first).then_some(first.min(stats.next)))
    }

    /// The smallest offset such that dropping the records before it frees at least
    /// `excess` bytes.
    fn offset_after_bytes(
        &self,
        log: &TopicLog,
        stats: LogStats,
        excess: u64,
    ) -> Result<u64, StorageError> {
        let mut freed = 0u64;
        let mut offset = stats.first;
        while offset < stats.next {
            let Some((base, meta)) = self.meta_at(log, offset)? else {
                break;
            };
            let end = base + u64::from(meta.count);
            if base >= offset && freed + u64::from(meta.bytes) < excess {
                freed += u64::from(meta.bytes);
                offset = end;
                continue;
            }
            // A partial chunk: walk its entries.
            let Some((base, chunk)) = self.chunk_at(log, offset)? else {
                break;
            };
            for (o, entry) in (base..).zip(record::entries(&chunk)) {
                if o < offset {
                    continue;
                }
                freed += entry?.encoded_len as u64;
                if freed >= excess {
                    return Ok(o + 1);
                }
            }
            offset = end.max(offset + 1);
        }
        Ok(offset.min(stats.next))
    }

    /// Bytes taken by records `from..to` of a topic.
    pub(super) fn bytes_between(
        &self,
        log: &TopicLog,
        from: u64,
        to: u64,
    ) -> Result<u64, StorageError> {
        let mut total = 0;
        let mut offset = from;
        while offset < to {
            let Some((base, meta)) = self.meta_at(log, offset)? else {
                break;
            };
            let end = base + u64::from(meta.count);
            if base >= offset && end <= to {
                total += u64::from(meta.bytes);
            } else if let Some((base, chunk)) = self.chunk_at(log, offset)? {
                for (o, entry) in (base..).zip(record::entries(&chunk)) {
                    if (offset..to).contains(&o) {
                        total += entry?.encoded_len as u64;
                    }
                }
            }
            offset = end.max(offset + 1);
        }
        Ok(total)
    }
}

pub(super) fn decode_index(key: &[u8], value: &[u8]) -> Result<(u64, ChunkMeta), StorageError> {
    let base = keys::offset_of(key)
        .ok_or_else(|| StorageError::corrupt("index key of the wrong shape"))?;
    let meta = ChunkMeta::decode(value)
        .ok_or_else(|| StorageError::corrupt("index entry of the wrong size"))?;
    Ok((base, meta))
}

/// Checks a chunk read from sled against its index entry: its length, and its CRC-32
/// when the entry has one. A mismatch means the stored bytes are not the ones written.
fn verify(log: &TopicLog, base: u64, meta: &ChunkMeta, chunk: &[u8]) -> Result<(), StorageError> {
    let problem = if chunk.len() != meta.bytes as usize {
        format!(
            "is {} bytes long, its index entry says {}",
            chunk.len(),
            meta.bytes
        )
    } else {
        match meta.crc {
            Some(crc) if crc32fast::hash(chunk) != crc => {
                "fails its checksum: its bytes changed after they were written".to_owned()
            }
            _ => return Ok(()),
        }
    };
    let last = base + u64::from(meta.count).saturating_sub(1);
    error!(
        topic = %log.name(),
        offset = base,
        records = meta.count,
        "stored records are corrupt and will not be served: the chunk {problem}"
    );
    Err(StorageError::corrupt(format!(
        "topic `{}`: the records at offsets {base}..={last} are damaged on disk and cannot \
         be served (the chunk {problem})",
        log.name()
    )))
}
