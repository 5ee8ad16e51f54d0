//! Staging a topic's writes: records into chunks (sealed at one part, with their index
//! entry and checksum; what no chunk seals goes to the journal as a piece, see
//! `journal.rs`), and topic creation, deletion and pipeline changes.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use quiver_protocol::record;
use quiver_protocol::{Durability, NewRecord, Retention, TopicName};

use super::{CommitGroup, Writer};
use crate::storage::keys::{self, ChunkMeta, LogStats};
use crate::storage::links::with_provenance;
use crate::storage::log::{AttachedStage, Piece, TailChunk, TopicMeta};
use crate::storage::{Appended, Provenance, StorageError, TopicLog, TopicSettings};
use crate::util::now_ms;

/// A chunk being filled: the topic's unsealed pieces from earlier commits (still in
/// its log, gathered only if the chunk is sealed), then the records of this group.
pub(super) struct OpenChunk {
    base: u64,
    /// The length of the pieces committed before this group: the chunk's first bytes.
    prior_bytes: usize,
    /// This group's records.
    buf: BytesMut,
    meta: ChunkMeta,
    /// The offset of this group's first record in the chunk, and its time.
    piece_base: u64,
    piece_first_ts: u64,
}

impl OpenChunk {
    fn len(&self) -> usize {
        self.prior_bytes + self.buf.len()
    }

    /// This group's records in the chunk, as staged.
    pub(super) fn records(&self) -> &[u8] {
        &self.buf
    }

    /// The buffer this group's records were staged in, emptied: once the journal entry
    /// holds a copy of them, the next group can stage in it.
    pub(super) fn into_buffer(self) -> BytesMut {
        let mut buf = self.buf;
        buf.clear();
        buf
    }
}

/// One topic's state while a group is staged.
pub(super) struct Staged {
    pub(super) log: Arc<TopicLog>,
    /// Its stats in memory, moved by the group's records.
    pub(super) stats: LogStats,
    pub(super) chunk: Option<OpenChunk>,
    /// The chunks sealed in this group, for the log's tail once the commit counts.
    pub(super) sealed: Vec<TailChunk>,
    /// The journal entry of its oldest unsealed piece before the group.
    pub(super) held_since: Option<u64>,
    /// The piece of this group's records that no chunk sealed, once the commit has
    /// made it ([`Staged::journal_piece`]): its bytes are set when the journal entry is
    /// encoded.
    pub(super) piece: Option<Piece>,
}

impl Staged {
    /// The topic as committed: its unsealed pieces open its chunk.
    pub(super) fn new(log: Arc<TopicLog>) -> Self {
        let stats = log.stats();
        let unsealed = log.lock_unsealed();
        let chunk = unsealed.pieces.front().map(|first| OpenChunk {
            base: first.base,
            prior_bytes: usize::try_from(unsealed.bytes).unwrap_or(usize::MAX),
            buf: BytesMut::new(),
            meta: ChunkMeta {
                count: u32::try_from(stats.next - first.base).unwrap_or(u32::MAX),
                bytes: u32::try_from(unsealed.bytes).unwrap_or(u32::MAX),
                first_ts: first.first_ts,
                last_ts: stats.last_ts,
                crc: None,
                sealed: None,
            },
            piece_base: stats.next,
            piece_first_ts: 0,
        });
        let held_since = chunk.as_ref().map(|_| unsealed.first_sequence);
        drop(unsealed);
        Self {
            log,
            stats,
            chunk,
            sealed: Vec::new(),
            held_since,
            piece: None,
        }
    }

    /// Seals the open chunk, if there is one.
    pub(super) fn seal_open(&mut self, sealing: &mut Vec<SealedChunk>) {
        if let Some(chunk) = self.chunk.take() {
            self.sealed.push(seal(sealing, &self.log, chunk));
        }
    }

    /// The piece of this group's records that no chunk sealed, for its journal entry:
    /// its bytes are empty until `journal::encode` copies the records from
    /// [`OpenChunk::records`] into the entry and points the piece there (call last).
    pub(super) fn journal_piece(&self) -> Option<Piece> {
        let chunk = self.chunk.as_ref().filter(|c| !c.buf.is_empty())?;
        Some(Piece {
            base: chunk.piece_base,
            count: u32::try_from(self.stats.next - chunk.piece_base).unwrap_or(u32::MAX),
            first_ts: chunk.piece_first_ts,
            last_ts: chunk.meta.last_ts,
            bytes: Bytes::new(),
        })
    }

    /// The bytes of this group's unsealed records.
    pub(super) fn piece_len(&self) -> usize {
        self.chunk.as_ref().map_or(0, |c| c.buf.len())
    }

    /// Its stats in sled once the group commits: up to the end of its sealed chunks.
    pub(super) fn sealed_after(&self) -> LogStats {
        match &self.chunk {
            Some(chunk) => LogStats {
                next: chunk.base,
                bytes: self.stats.bytes - chunk.len() as u64,
                ..self.stats
            },
            None => self.stats,
        }
    }
}

impl Writer {
    pub(super) fn stage_records(
        &self,
        group: &mut CommitGroup,
        log: Arc<TopicLog>,
        records: &[NewRecord],
        stamps: &[u64],
        provenance: Option<&Provenance>,
    ) -> Appended {
        let chunk_bytes = self.chunk_bytes;
        group.records += records.len();
        let staged = group
            .staged
            .entry(log.id())
            .or_insert_with(|| Staged::new(log));
        let base_offset = staged.stats.next;
        let now = now_ms();
        let mut digits = [0u8; 20];
        for (i, record) in records.iter().enumerate() {
            // Forwarded records get their provenance headers as they are encoded.
            let len = with_provenance(provenance, i, &mut digits, |extra| {
                record::entry_len_with(record, extra)
            });
            // A chunk is sealed before a record that would take it past `chunk_bytes`,
            // so that it fits one part (a record larger than that gets a chunk of its
            // own, in parts).
            if staged
                .chunk
                .as_ref()
                .is_some_and(|open| open.len() + len > chunk_bytes)
            {
                staged.seal_open(&mut group.chunks);
            }
            // Forwarded records keep their original time, unless the topic already
            // holds a later one: timestamps never go backwards in a topic.
            let ts = stamps
                .get(i)
                .copied()
                .unwrap_or(now)
                .max(staged.stats.last_ts);
            let next = staged.stats.next;
            let chunk = staged.chunk.get_or_insert_with(|| OpenChunk {
                base: next,
                prior_bytes: 0,
                buf: BytesMut::new(),
                meta: ChunkMeta {
                    first_ts: ts,
                    ..ChunkMeta::default()
                },
                piece_base: next,
                piece_first_ts: ts,
            });
            if chunk.buf.is_empty() {
                chunk.piece_first_ts = ts;
            }
            if chunk.buf.capacity() == 0
                && let Some(spare) = group.buffers.pop()
            {
                chunk.buf = spare;
            }
            // Reserved whole: the entry is written field by field.
            chunk.buf.reserve(len);
            let len = with_provenance(provenance, i, &mut digits, |extra| {
                record::append_entry_with(&mut chunk.buf, ts, record, extra)
            });
            chunk.meta.count += 1;
            chunk.meta.bytes += u32::try_from(len).unwrap_or(u32::MAX);
            chunk.meta.last_ts = ts;
            staged.stats.next += 1;
            staged.stats.bytes += len as u64;
            staged.stats.last_ts = ts;
            if chunk.len() >= chunk_bytes {
                staged.seal_open(&mut group.chunks);
            }
        }
        Appended {
            base_offset,
            count: u32::try_from(records.len()).unwrap_or(u32::MAX),
        }
    }

    pub(super) fn stage_create(
        &self,
        group: &mut CommitGroup,
        name: TopicName,
        settings: TopicSettings,
    ) -> Result<Arc<TopicLog>, StorageError> {
        let key = keys::topic(name.as_str());
        if group.created.contains(&name) || self.tree.contains_key(&key)? {
            return Err(StorageError::TopicExists(name));
        }
        let meta = TopicMeta {
            id: self.db.generate_id()?,
            name: name.to_string(),
            retention: settings.retention,
            created_ms: now_ms(),
            dead_letter: settings.dead_letter.as_ref().map(ToString::to_string),
            pipeline: Vec::new(),
            durability: settings.durability,
            stage_limits: Vec::new(),
        };
        let stats = LogStats::default();
        group.batch.insert(key, encode_meta(&meta));
        group
            .batch
            .insert(&keys::with_id(keys::STATS, meta.id), &stats.encode());
        group.created.insert(name.clone());
        Ok(Arc::new(TopicLog::new(
            meta,
            name,
            settings.dead_letter,
            stats,
        )))
    }
}

/// Stages a topic's deletion: its record and stats go, and a purge marker names it
/// until the clean-up has removed its chunks.
pub(super) fn stage_delete(group: &mut CommitGroup, log: &TopicLog) {
    group.deleted.insert(log.id());
    group.batch.remove(keys::topic(log.name().as_str()));
    group.batch.remove(&keys::with_id(keys::STATS, log.id()));
    group.batch.insert(
        &keys::with_id(keys::PURGE, log.id()),
        log.name().as_str().as_bytes(),
    );
}

/// Stages a topic's new ingress pipeline.
pub(super) fn stage_pipeline(group: &mut CommitGroup, log: &TopicLog, pipeline: &[AttachedStage]) {
    stage_meta(group, log, |meta| meta.set_attached(pipeline));
}

/// Stages a topic's new retention and durability.
pub(super) fn stage_settings(
    group: &mut CommitGroup,
    log: &TopicLog,
    retention: Retention,
    durability: Durability,
) {
    stage_meta(group, log, |meta| {
        meta.retention = retention;
        meta.durability = durability;
    });
}

/// Stages a change of a topic's metadata, on top of the changes this group staged
/// before it (a pipeline change and a settings change in one group both count).
fn stage_meta(group: &mut CommitGroup, log: &TopicLog, change: impl FnOnce(&mut TopicMeta)) {
    let meta = group
        .metas
        .entry(log.id())
        .or_insert_with(|| log.meta(&log.pipeline()));
    change(meta);
    let encoded = encode_meta(meta);
    group
        .batch
        .insert(keys::topic(log.name().as_str()), encoded);
}

fn encode_meta(meta: &TopicMeta) -> Vec<u8> {
    // Invariant: a TopicMeta holds only strings, integers and options, which postcard
    // always encodes.
    postcard::to_allocvec(meta).expect("topic metadata always encodes")
}

/// A chunk sealed in a group: its parts are keyed by seal sequence, which the commit
/// gives ([`SealedChunk::write`]).
pub(super) struct SealedChunk {
    id: u64,
    base: u64,
    meta: ChunkMeta,
    bytes: Bytes,
}

impl SealedChunk {
    /// Stages its parts and then its index entry, as chunk `sequence`.
    pub(super) fn write(
        self,
        sequence: u64,
        part_bytes: usize,
        writes: &mut Vec<(sled::IVec, sled::IVec)>,
    ) {
        for (part, piece) in (0u32..).zip(self.bytes.chunks(part_bytes)) {
            writes.push((keys::sealed_part(sequence, part)[..].into(), piece.into()));
        }
        let meta = ChunkMeta {
            sealed: Some(sequence),
            ..self.meta
        };
        writes.push((
            keys::with_offset(keys::INDEX, self.id, self.base)[..].into(),
            meta.encode()[..].into(),
        ));
    }
}

/// Seals a chunk with the checksum of its bytes (joined with the topic's unsealed
/// pieces it starts with); returns it whole.
fn seal(sealing: &mut Vec<SealedChunk>, log: &TopicLog, mut chunk: OpenChunk) -> TailChunk {
    let (bytes, footprint) = match chunk.prior_bytes {
        0 => {
            let footprint = chunk.buf.capacity();
            (chunk.buf.freeze(), footprint)
        }
        _ => {
            let mut joined = BytesMut::with_capacity(chunk.len());
            for piece in &log.lock_unsealed().pieces {
                joined.extend_from_slice(&piece.bytes);
            }
            joined.extend_from_slice(&chunk.buf);
            (joined.freeze(), chunk.len())
        }
    };
    chunk.meta.crc = Some(crc32fast::hash(&bytes));
    sealing.push(SealedChunk {
        id: log.id(),
        base: chunk.base,
        meta: chunk.meta,
        bytes: bytes.clone(),
    });
    TailChunk {
        base: chunk.base,
        count: chunk.meta.count,
        bytes,
        footprint,
    }
}
