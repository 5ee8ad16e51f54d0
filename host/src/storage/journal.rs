//! The journal: where a commit puts the records it appends but does not seal.
//!
//! A topic's records end up in chunks of up to 16 KiB, one sled key each (plus an index
//! entry, and the topic's stats moving). Sealing a chunk at every commit, as the first
//! layouts did, costs those three keys per topic a commit touches, each in a tree node
//! of its own: with one record per topic per commit (a round-robin over 1,000 topics),
//! three sled keys per record, and sled 0.34 holding memory for every node rewritten.
//! So a commit seals only the chunks it fills; the rest of what it appended, to every
//! topic, goes into one *journal entry* (`j` + sequence, in parts), written at the end
//! of the journal's key range, where consecutive commits share tree nodes. A commit's
//! cost then follows its bytes, not the topics it touches.
//!
//! A topic's records past its last sealed chunk are its *unsealed pieces*, one per
//! commit (`log::Unsealed`); memory holds them for readers, the journal for restarts.
//! The chunk a piece belongs to is sealed later, with the commit that fills it, or
//! when the journal outgrows its budget: then the topics holding the oldest entries
//! are sealed (each into a chunk of what it gathered so far; at most
//! `SEALS_PER_COMMIT` a commit, so that no commit stalls on thousands of them), and
//! entries no topic holds a piece of any more are removed. The budget bounds both the
//! memory of the pieces and what opening replays (softly: up to twice the budget while
//! sealing catches up, and a commit's own entry beyond).
//!
//! Opening replays the journal in sequence order onto the stats sled holds (`s` +
//! id, which stop at the sealed end): a piece below a topic's sealed end was sealed
//! after it was journalled and is skipped; any other must continue the topic exactly.
//! A topic deleted since is skipped too. Entries carry a CRC-32, checked before use.
//!
//! Entry format (big-endian): version (u8, 1), piece count (u32), then per piece the
//! topic id (u64), base offset (u64), record count (u32), first and last timestamp
//! (u64 each), length (u32) and the records in the batch format; then the CRC-32 of
//! everything before it.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use tracing::warn;

use super::keys::{self, Reader};
use super::log::Piece;
use super::{StorageError, TopicLog};

/// The journal's default budget: the bytes of live entries beyond which the topics
/// holding the oldest are sealed. With 10,000 topics written in turn, about 3 KiB per
/// topic gathers before it is sealed (a dozen 256-byte records per chunk, not one).
pub const DEFAULT_JOURNAL_BYTES: usize = 32 * 1024 * 1024;

/// The most topics a commit seals because the journal is over its budget (unless it
/// is twice over).
const SEALS_PER_COMMIT: usize = 1024;

const VERSION: u8 = 1;
const PIECE_HEADER: usize = 8 + 8 + 4 + 8 + 8 + 4;

/// A live entry: written, and holding a piece some topic has not sealed yet (or
/// waiting to be removed).
#[derive(Debug)]
struct Entry {
    sequence: u64,
    parts: u32,
    bytes: usize,
}

/// The live entries, and which topics hold pieces in them.
#[derive(Debug)]
pub(super) struct Journal {
    next_sequence: u64,
    entries: VecDeque<Entry>,
    /// The sum of the live entries' lengths.
    bytes: usize,
    budget: usize,
    /// Topics with unsealed pieces, by the entry of their oldest.
    holders: BTreeSet<(u64, u64)>,
    /// The same by topic id.
    held: HashMap<u64, (u64, Arc<TopicLog>)>,
}

/// How a commit changed one topic's pieces, for [`Journal::committed`].
pub(super) struct Held {
    pub(super) log: Arc<TopicLog>,
    /// The entry of its oldest piece before the commit, if it had one.
    pub(super) before: Option<u64>,
    /// And after.
    pub(super) after: Option<u64>,
}

impl Journal {
    /// The sequence the next entry gets.
    pub(super) fn next_sequence(&self) -> u64 {
        self.next_sequence
    }

    /// True when live entries plus `incoming` bytes exceed the budget.
    pub(super) fn over_budget(&self, incoming: usize) -> bool {
        self.bytes + incoming > self.budget
    }

    /// The topics to seal so that the live entries shrink to three quarters of the
    /// budget (with `incoming` bytes about to be written): those holding the oldest
    /// entries, at most [`SEALS_PER_COMMIT`] unless the journal is twice its budget.
    /// Sealing a topic writes three keys in nodes of their own: sealing thousands in
    /// one commit would hold that commit up for most of a second.
    pub(super) fn to_seal(&self, incoming: usize) -> Vec<Arc<TopicLog>> {
        let target = self.budget / 4 * 3;
        let mut remaining = self.bytes + incoming;
        let most = match remaining > 2 * self.budget {
            true => usize::MAX,
            false => SEALS_PER_COMMIT,
        };
        let mut chosen = Vec::new();
        let mut holders = self.holders.iter().peekable();
        for entry in &self.entries {
            if remaining <= target || chosen.len() >= most {
                break;
            }
            while let Some(&&(first, id)) = holders.peek() {
                if first > entry.sequence || chosen.len() >= most {
                    break;
                }
                holders.next();
                if let Some((_, log)) = self.held.get(&id) {
                    chosen.push(Arc::clone(log));
                }
            }
            remaining = remaining.saturating_sub(entry.bytes);
        }
        chosen
    }

    /// Records a commit: the entry it wrote (`parts` parts, `bytes` long; none if
    /// `parts` is 0) and how it changed each topic's pieces.
    pub(super) fn committed(&mut self, parts: u32, bytes: usize, held: Vec<Held>) {
        let sequence = self.next_sequence;
        if parts > 0 {
            self.entries.push_back(Entry {
                sequence,
                parts,
                bytes,
            });
            self.bytes += bytes;
            self.next_sequence += 1;
        }
        for Held { log, before, after } in held {
            if before == after {
                continue;
            }
            let id = log.id();
            if let Some(first) = before {
                self.holders.remove(&(first, id));
            }
            match after {
                Some(first) => {
                    self.holders.insert((first, id));
                    self.held.insert(id, (first, log));
                }
                None => {
                    self.held.remove(&id);
                }
            }
        }
    }

    /// Forgets a deleted topic's pieces: entries no longer wait for it.
    pub(super) fn forget(&mut self, id: u64) {
        if let Some((first, _)) = self.held.remove(&id) {
            self.holders.remove(&(first, id));
        }
    }

    /// Removes the entries no topic holds a piece of (not flushed: a removal the log
    /// loses leaves an entry whose pieces replay skips).
    pub(super) fn truncate(&mut self, tree: &sled::Tree) -> sled::Result<()> {
        let oldest_held = self.holders.first().map_or(u64::MAX, |&(first, _)| first);
        while let Some(entry) = self.entries.front() {
            if entry.sequence >= oldest_held {
                break;
            }
            for part in 0..entry.parts {
                tree.remove(keys::journal_part(entry.sequence, part))?;
            }
            self.bytes -= entry.bytes;
            self.entries.pop_front();
        }
        Ok(())
    }
}

/// A piece as a commit hands it to [`encode`]: its topic, its fields, and its records,
/// which stay in the buffer they were staged in until `encode` copies them.
pub(super) struct Encoding<'a> {
    pub(super) topic: u64,
    pub(super) piece: &'a mut Piece,
    pub(super) records: &'a [u8],
}

/// Encodes one commit's pieces as a journal entry, and points each piece's bytes into
/// it: a commit's pieces share the entry's one allocation, as replayed ones do
/// ([`replay`]), and it goes once the last of them is sealed. (Held each in a buffer of
/// its own, the pieces of a commit over many topics were as many small allocations,
/// freed one by one as their topics sealed, far apart: with 1,000 topics, a third of the
/// 27 % of the storage thread's time spent in the allocator. See performance.md, "A
/// commit's pieces share its journal entry".) The buffers the records were staged in
/// are the caller's, to use again.
pub(super) fn encode(pieces: &mut [Encoding<'_>]) -> Bytes {
    let len: usize = pieces.iter().map(|p| PIECE_HEADER + p.records.len()).sum();
    let mut out = Vec::with_capacity(1 + 4 + len + 4);
    out.push(VERSION);
    out.extend_from_slice(
        &u32::try_from(pieces.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    let mut at = Vec::with_capacity(pieces.len());
    for Encoding {
        topic,
        piece,
        records,
    } in pieces.iter()
    {
        out.extend_from_slice(&topic.to_be_bytes());
        out.extend_from_slice(&piece.base.to_be_bytes());
        out.extend_from_slice(&piece.count.to_be_bytes());
        out.extend_from_slice(&piece.first_ts.to_be_bytes());
        out.extend_from_slice(&piece.last_ts.to_be_bytes());
        let bytes = u32::try_from(records.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&bytes.to_be_bytes());
        at.push(out.len());
        out.extend_from_slice(records);
    }
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_be_bytes());
    let entry = Bytes::from(out);
    for (encoding, at) in pieces.iter_mut().zip(at) {
        encoding.piece.bytes = entry.slice(at..at + encoding.records.len());
    }
    entry
}

/// Decodes a journal entry; `None` if it is not one, or fails its checksum.
fn decode(entry: &Bytes) -> Option<Vec<(u64, Piece)>> {
    let (body, crc) = entry.split_last_chunk::<4>()?;
    if crc32fast::hash(body) != u32::from_be_bytes(*crc) {
        return None;
    }
    let mut reader = Reader(body);
    let [version] = reader.take()?;
    if version != VERSION {
        return None;
    }
    let count = u32::from_be_bytes(reader.take()?);
    let mut pieces = Vec::with_capacity(count.min(1 << 16) as usize);
    for _ in 0..count {
        let id = u64::from_be_bytes(reader.take()?);
        let base = u64::from_be_bytes(reader.take()?);
        let records = u32::from_be_bytes(reader.take()?);
        let first_ts = u64::from_be_bytes(reader.take()?);
        let last_ts = u64::from_be_bytes(reader.take()?);
        let len = u32::from_be_bytes(reader.take()?) as usize;
        let at = body.len() - reader.0.len();
        reader.take_slice(len)?;
        pieces.push((
            id,
            Piece {
                base,
                count: records,
                first_ts,
                last_ts,
                bytes: entry.slice(at..at + len),
            },
        ));
    }
    reader.0.is_empty().then_some(pieces)
}

/// Replays the journal onto the topics as sled holds them (stats up to their sealed
/// ends): gives each its unsealed pieces and moves its stats past them.
pub(super) fn replay(
    tree: &sled::Tree,
    topics: &[Arc<TopicLog>],
    budget: usize,
) -> Result<Journal, StorageError> {
    let by_id: HashMap<u64, &Arc<TopicLog>> = topics.iter().map(|t| (t.id(), t)).collect();
    let mut journal = Journal {
        next_sequence: 0,
        entries: VecDeque::new(),
        bytes: 0,
        budget: budget.max(1),
        holders: BTreeSet::new(),
        held: HashMap::new(),
    };
    let mut parts = tree.scan_prefix([keys::JOURNAL]).peekable();
    while let Some(first) = parts.next() {
        let (key, value) = first?;
        let [sequence] = keys::numbers::<1>(&key)
            .ok_or_else(|| StorageError::corrupt("a journal key of the wrong shape"))?;
        let prefix = keys::with_id(keys::JOURNAL, sequence);
        let mut keys_of_entry = vec![key.clone()];
        let mut values = vec![value];
        while let Some(Ok((key, _))) = parts.peek()
            && key.starts_with(&prefix)
        {
            let (key, value) = parts.next().transpose()?.unwrap_or_default();
            values.push(value);
            keys_of_entry.push(key);
        }
        let part_of = |key: &sled::IVec| -> Option<u32> {
            Some(u32::from_be_bytes(
                key.get(prefix.len()..)?.try_into().ok()?,
            ))
        };
        if part_of(&keys_of_entry[0]) != Some(0) {
            // `truncate` removes an entry's parts in order: what lacks part 0 is the
            // rest of an entry being removed, whose pieces were all sealed.
            for key in keys_of_entry {
                tree.remove(key)?;
            }
            continue;
        }
        if !keys_of_entry
            .iter()
            .map(part_of)
            .eq((0u32..).take(keys_of_entry.len()).map(Some))
        {
            return Err(StorageError::corrupt(format!(
                "journal entry {sequence} lacks some of its parts"
            )));
        }
        let count = u32::try_from(keys_of_entry.len()).unwrap_or(u32::MAX);
        // Joined in one allocation of the entry's exact length: its unsealed pieces
        // hold on to all of it until the last of them is sealed.
        let bytes = Bytes::from(values.concat());
        let pieces = decode(&bytes).ok_or_else(|| {
            StorageError::corrupt(format!(
                "journal entry {sequence} is damaged: acknowledged records in it cannot be read"
            ))
        })?;
        for (id, piece) in pieces {
            let Some(log) = by_id.get(&id) else {
                continue; // its topic was deleted
            };
            let mut stats = log.stats();
            if piece.end() <= stats.next {
                continue; // sealed since
            }
            if piece.base != stats.next {
                return Err(StorageError::corrupt(format!(
                    "journal entry {sequence}: topic `{}` has offsets {}..{} there, but its \
                     records end at {}",
                    log.name(),
                    piece.base,
                    piece.end(),
                    stats.next
                )));
            }
            stats.next = piece.end();
            stats.bytes += piece.bytes.len() as u64;
            stats.last_ts = stats.last_ts.max(piece.last_ts);
            log.set_stats(stats);
            let mut unsealed = log.lock_unsealed();
            if unsealed.pieces.is_empty() {
                unsealed.first_sequence = sequence;
                journal.holders.insert((sequence, id));
                journal.held.insert(id, (sequence, Arc::clone(log)));
            }
            unsealed.bytes += piece.bytes.len() as u64;
            unsealed.pieces.push_back(piece);
        }
        journal.entries.push_back(Entry {
            sequence,
            parts: count,
            bytes: bytes.len(),
        });
        journal.bytes += bytes.len();
        journal.next_sequence = sequence + 1;
    }
    if journal.bytes > journal.budget {
        warn!(
            bytes = journal.bytes,
            budget = journal.budget,
            "the journal is larger than its budget; the next commits seal its oldest topics"
        );
    }
    Ok(journal)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn piece(base: u64, bytes: &'static [u8]) -> Piece {
        Piece {
            base,
            count: 2,
            first_ts: 10,
            last_ts: 11,
            bytes: Bytes::from_static(bytes),
        }
    }

    #[test]
    fn entries_round_trip_and_damage_is_caught() {
        let pieces = vec![(7, piece(3, b"abc")), (9, piece(0, b""))];
        // The pieces as staged: fields set, bytes still in the staging buffers.
        let mut encoded: Vec<(u64, Piece)> = pieces
            .iter()
            .map(|(id, p)| {
                let bytes = Bytes::new();
                (*id, Piece { bytes, ..p.clone() })
            })
            .collect();
        let mut refs: Vec<Encoding<'_>> = encoded
            .iter_mut()
            .zip(&pieces)
            .map(|((topic, piece), (_, staged))| Encoding {
                topic: *topic,
                piece,
                records: &staged.bytes,
            })
            .collect();
        let entry = encode(&mut refs);
        // The pieces now point into the entry, with the bytes they had.
        for ((_, a), (_, b)) in encoded.iter().zip(&pieces) {
            assert_eq!(a.bytes, b.bytes);
            if !a.bytes.is_empty() {
                let start = a.bytes.as_ptr() as usize - entry.as_ptr() as usize;
                assert_eq!(&entry[start..start + a.bytes.len()], &a.bytes[..]);
                assert!(start + a.bytes.len() <= entry.len());
            }
        }
        let decoded = decode(&entry).unwrap();
        assert_eq!(decoded.len(), 2);
        for ((id, a), (want_id, b)) in decoded.iter().zip(&pieces) {
            assert_eq!(id, want_id);
            assert_eq!(
                (a.base, a.count, a.first_ts, a.last_ts, &a.bytes),
                (b.base, b.count, b.first_ts, b.last_ts, &b.bytes)
            );
        }
        for at in 0..entry.len() {
            let mut bad = entry.to_vec();
            bad[at] ^= 0x40;
            assert!(
                decode(&Bytes::from(bad)).is_none(),
                "a flipped byte at {at}"
            );
        }
        assert!(decode(&entry.slice(..entry.len() - 1)).is_none());
        assert!(decode(&Bytes::new()).is_none());
    }
}
