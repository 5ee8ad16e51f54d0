//! The key layout of the `log` tree and the fixed-size values stored beside chunks.
//!
//! | key                                   | value                         |
//! | ------------------------------------- | ----------------------------- |
//! | `t` name                              | [`TopicMeta`](super::TopicMeta) (postcard) |
//! | `s` topic-id (u64 BE)                 | [`LogStats`] (32 bytes)       |
//! | `i` topic-id base-offset (u64 BE ×2)  | [`ChunkMeta`] (36 bytes; 28 before layout 6, 24 before checksums) |
//! | `C` seal-sequence (u64 BE) part (u32 BE) | up to [`part_bytes`] of a chunk's record batch, chunks of every topic in the order sealed |
//! | `c` topic-id base-offset part (u32 BE) | the same, for chunks sealed before layout 6 (read, trimmed, never written) |
//! | `j` sequence (u64 BE) part (u32 BE)   | up to [`part_bytes`] of a journal entry: the records one commit appended and did not seal (`journal.rs`) |
//! | `p` topic-id                          | the deleted topic's name (purge pending) |
//! | `P` plugin-name                       | [`PluginRecord`](super::PluginRecord) (postcard) |
//! | `W` sha256 (32 bytes) part (u32 BE)   | up to [`part_bytes`] of a plugin component |
//! | `K` name-length (u8) plugin-name key  | a plugin's state value |
//! | `k` plugin-name                       | empty: the removed plugin's state is still to be purged |
//! | `g` group-name                        | [`GroupRecord`](super::GroupRecord) (postcard) |
//! | `o` group-id topic-id                 | a group's cursor and counters in a topic (24 bytes), then its pending records delivered once and never nacked, as runs (varints; none before FORMAT 5) |
//! | `u` group-id topic-id offset          | a pending record not in its lane's runs (delivered again, or nacked; before FORMAT 5, every one): deliveries (u32), not-before (u64) |
//! | `G` group-id [topic-id]               | empty: the `o` and `u` keys of a deleted group (or, with a topic id, the `u` keys of a lane whose topic was deleted) are still to be purged |
//! | `O` sequence (u64 BE)                 | a group delta: the `o`, `u` and `G` keys one commit set or removed, not yet applied to them (postcard; `writer/groups.rs`) |
//! | `d` time (ms) unique-id               | the ids and receipts of one commit's publishes, for deduplicating retries (postcard) |
//! | `m` topic-id broker-id (u128 BE) origin-topic-id | a link mark: the origin offset expected next (u64 BE), the origin topic's name |
//! | `l` link-name                         | [`LinkRecord`](super::LinkRecord) (postcard) |
//! | `L` name-length (u8) link-name topic-id | [`LinkCursor`](super::LinkCursor) (postcard) |
//! | `b`                                   | the broker's id (u128 BE) |
//! | `v`                                   | the layout version, [`FORMAT`] (u32 BE) |
//! | `w`                                   | [`Unfinished`]: the commit being written key by key |
//!
//! Big-endian integers make key order offset order, so "the chunk holding offset N" is
//! the last `i` key at or below N; its entry says where the chunk's parts are.
//!
//! Why chunk parts are keyed by seal order, not by topic (layout 6): a part is a 16 KiB
//! value, and sled rewrites and splits a leaf node whole. Parts keyed by topic and
//! offset land wherever their topic's range is, so with many topics every seal grows
//! and splits a different leaf of 16 KiB values (measured on layout 5 with 1,000
//! topics written in turn: splitting and serializing those leaves was a fifth of the
//! storage thread's time). Keyed by a sequence, every part goes to the end of the `C`
//! range, as one topic's parts always did, and a commit's seals share its last leaves;
//! only the small `i` and `s` entries stay spread over the topics.
//!
//! Everything lives in one tree so that one `apply_batch` updates chunks, index and
//! stats atomically, and so that a commit written key by key (`writer.rs`) is one run
//! of log messages.
//!
//! Why chunks are cut into parts: sled 0.34 writes a leaf node (up to 17 entries) as
//! one log message, and a message over a quarter of a segment goes to a blob file.
//! The page cache sizes blob-backed nodes by their pointer, so it never evicts them
//! and memory grows with every byte written (measured: 1.5 GiB of 256 KiB values held
//! 1.5 GiB of RSS at a 16 MiB cache). With 2 MiB segments (a quarter is 512 KiB) and
//! values of at most 16 KiB, every leaf (17 × 16 KiB) stays inline and memory flat
//! (measured: 3 GiB of 256 KiB records, 205 MiB RSS with a 64 MiB cache).
//! Parts were 4 KiB with sled's default 512 KiB segments; 16 KiB parts mean a quarter
//! of the keys per byte, and publishing 256-byte records got 11 % faster.

pub(super) const TOPIC: u8 = b't';
pub(super) const STATS: u8 = b's';
pub(super) const INDEX: u8 = b'i';
/// Chunk parts of layouts before 6, keyed by topic and base offset.
pub(super) const CHUNK: u8 = b'c';
/// Chunk parts keyed by seal sequence (layout 6).
pub(super) const SEALED: u8 = b'C';
pub(super) const JOURNAL: u8 = b'j';
pub(super) const PURGE: u8 = b'p';
pub(super) const PLUGIN: u8 = b'P';
pub(super) const WASM: u8 = b'W';
pub(super) const STATE: u8 = b'K';
pub(super) const STATE_PURGE: u8 = b'k';
pub(super) const GROUP: u8 = b'g';
pub(super) const LANE: u8 = b'o';
pub(super) const UNACKED: u8 = b'u';
pub(super) const GROUP_PURGE: u8 = b'G';
pub(super) const GROUP_DELTA: u8 = b'O';
pub(super) const DEDUP: u8 = b'd';
pub(super) const MARK: u8 = b'm';
pub(super) const LINK: u8 = b'l';
pub(super) const LINK_CURSOR: u8 = b'L';
/// What the MQTT listener keeps (`q`, a kind byte, then the kind's own key):
/// retained messages, persistent sessions.
pub(super) const MQTT: u8 = b'q';
pub(super) const BROKER: &[u8] = b"b";
pub(super) const VERSION: &[u8] = b"v";
/// Written and removed at every key-by-key commit, so it sorts last, in a leaf of small
/// values: sled logs a whole leaf now and then as it changes, and beside the chunk
/// parts (`a`, say) that leaf would hold 16 KiB values (measured: 14 % more bytes
/// written to the log).
pub(super) const UNFINISHED: &[u8] = b"w";

/// The layout this code writes; a data dir of another is refused, except the versions
/// from [`FORMAT_V1`] on, which open as they are and are stamped [`FORMAT`].
pub(super) const FORMAT: u32 = 8;

/// The first layout, before index entries carried a checksum. It reads as it is (its
/// entries decode without one). Version 2 added the checksums, version 3 the `w` key,
/// version 4 the broker id and links (`b`, `l`, `L`, `m`), version 5 the journal (`j`),
/// a commit's unsealed records, the marker of a commit of several topics (an older
/// marker names one topic: [`Unfinished::decode_v4`] reads it), and a group's pending
/// records delivered once as runs in its lane's value (older `u` entries are folded
/// into them at start-up), version 6 chunk parts keyed by seal sequence (`C`; the
/// older `c` parts are read where their index entries, 28 bytes or 24, say), version 7
/// plain keys (plugin state, link marks and cursors, MQTT state) written key by key
/// behind the marker, which carries their earlier values (a marker of layout 6 reads
/// as one without them), version 8 group deltas (`O`): group state written as one
/// key per commit and applied to the `o` and `u` keys later (a broker of layout 7
/// would read the group state without them).
/// Opening an older data dir stamps it [`FORMAT`], so that a broker too old to read
/// what this one writes refuses the data dir instead of misreading it.
pub(super) const FORMAT_V1: u32 = 1;

pub(super) fn plugin(name: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + name.len());
    key.push(PLUGIN);
    key.extend_from_slice(name.as_bytes());
    key
}

/// The prefix of a component's parts.
pub(super) fn wasm(sha256: &[u8; 32]) -> [u8; 33] {
    let mut key = [0; 33];
    key[0] = WASM;
    key[1..].copy_from_slice(sha256);
    key
}

pub(super) fn wasm_part(sha256: &[u8; 32], part: u32) -> [u8; 37] {
    let mut key = [0; 37];
    key[..33].copy_from_slice(&wasm(sha256));
    key[33..].copy_from_slice(&part.to_be_bytes());
    key
}

/// The prefix of a plugin's state keys. Plugin names are at most 255 bytes (they
/// follow the topic-name grammar), so the length fits a byte and no plugin's prefix is
/// another's.
pub(super) fn state_prefix(plugin: &str) -> Vec<u8> {
    let len = u8::try_from(plugin.len()).unwrap_or(u8::MAX);
    let mut key = Vec::with_capacity(2 + plugin.len());
    key.push(STATE);
    key.push(len);
    key.extend_from_slice(plugin.as_bytes());
    key
}

/// The marker of a removed plugin whose state is still to be purged.
pub(super) fn state_purge(plugin: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + plugin.len());
    key.push(STATE_PURGE);
    key.extend_from_slice(plugin.as_bytes());
    key
}

pub(super) fn state(plugin: &str, state_key: &[u8]) -> Vec<u8> {
    let mut key = state_prefix(plugin);
    key.extend_from_slice(state_key);
    key
}

/// An MQTT state entry's key: `q`, its kind, its key.
pub(super) fn mqtt(kind: u8, key: &[u8]) -> Vec<u8> {
    let mut full = Vec::with_capacity(2 + key.len());
    full.extend_from_slice(&[MQTT, kind]);
    full.extend_from_slice(key);
    full
}

pub(super) fn group(name: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + name.len());
    key.push(GROUP);
    key.extend_from_slice(name.as_bytes());
    key
}

/// The marker of a deleted group (no topic), or of a lane dropped with its topic, whose
/// keys are still to be purged.
pub(super) fn group_purge(group: u64, topic: Option<u64>) -> Vec<u8> {
    match topic {
        None => with_id(GROUP_PURGE, group).to_vec(),
        Some(topic) => with_offset(GROUP_PURGE, group, topic).to_vec(),
    }
}

pub(super) fn unacked(group: u64, topic: u64, offset: u64) -> [u8; 25] {
    let mut key = [0; 25];
    key[..17].copy_from_slice(&with_offset(UNACKED, group, topic));
    key[17..].copy_from_slice(&offset.to_be_bytes());
    key
}

/// One commit's dedup entries: keyed by time so that old ones are purged in key
/// order, and by a unique id so that commits in the same millisecond differ.
pub(super) fn dedup(at_ms: u64, unique: u64) -> [u8; 17] {
    with_offset(DEDUP, at_ms, unique)
}

/// A key's write: its value, or `None` for its removal.
pub(super) type KeyWrite = (Vec<u8>, Option<Vec<u8>>);

/// Stages key writes into a batch (the last write of a key wins).
pub(super) fn stage_writes(batch: &mut sled::Batch, writes: impl IntoIterator<Item = KeyWrite>) {
    for (key, value) in writes {
        match value {
            Some(value) => batch.insert(key, value),
            None => batch.remove(key),
        }
    }
}

/// Writes keys one by one, in the order given.
pub(super) fn write(
    tree: &sled::Tree,
    writes: impl IntoIterator<Item = KeyWrite>,
) -> sled::Result<()> {
    for (key, value) in writes {
        match value {
            Some(value) => tree.insert(key, value)?,
            None => tree.remove(key)?,
        };
    }
    Ok(())
}

/// A commit being written key by key (appends, plain keys and group state, see
/// `writer/mod.rs`; the group state comes after the marker's removal and needs no
/// taking back): written first and removed last, so that a log cut short inside the
/// commit still holds it (sled recovers a prefix of its log). Opening then takes back
/// everything the commit wrote: the chunks it sealed (their parts from its first seal
/// sequence on, and each topic's index entries at or above its old `next`, whose old
/// stats are written back), its journal entry, its dedup entry, and the plain keys it
/// set (plugin state, link marks and cursors, MQTT state), whose earlier values it
/// carries. Nothing of it was acknowledged: that waits for the flush after the
/// marker's removal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Unfinished {
    /// The topics whose sealed end the commit moves, with their stats before it.
    pub(super) topics: Vec<(u64, LogStats)>,
    /// The journal entry it writes, if it writes one.
    pub(super) journal: Option<u64>,
    /// The commit's deduplication entry, if it has one.
    pub(super) dedup: Option<[u8; 17]>,
    /// The seal sequence of the first chunk it seals, if it seals one: the parts at
    /// and above it are its own (layout 6; a layout-5 marker has none, its chunks'
    /// parts are keyed by topic).
    pub(super) chunks: Option<u64>,
    /// The plain keys it sets or removes, each with the value it held before (`None`:
    /// absent), which taking the commit back restores (layout 7).
    pub(super) earlier: Vec<KeyWrite>,
}

/// The first byte of an [`Unfinished`] marker of layouts 5 to 7 (6 and 7 added a flag
/// each). A marker of layout 3 or 4 starts with a topic id, whose first byte is 0 (ids
/// are counted up from 0).
const UNFINISHED_V5: u8 = 0xF5;

impl Unfinished {
    pub(super) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(32 + 40 * self.topics.len());
        let flags = u8::from(self.journal.is_some())
            | (u8::from(self.dedup.is_some()) << 1)
            | (u8::from(self.chunks.is_some()) << 2)
            | (u8::from(!self.earlier.is_empty()) << 3);
        out.extend_from_slice(&[UNFINISHED_V5, flags]);
        if let Some(sequence) = self.journal {
            out.extend_from_slice(&sequence.to_be_bytes());
        }
        if let Some(dedup) = &self.dedup {
            out.extend_from_slice(dedup);
        }
        if let Some(sequence) = self.chunks {
            out.extend_from_slice(&sequence.to_be_bytes());
        }
        let count = u32::try_from(self.topics.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&count.to_be_bytes());
        for (id, stats) in &self.topics {
            out.extend_from_slice(&id.to_be_bytes());
            out.extend_from_slice(&stats.encode());
        }
        if !self.earlier.is_empty() {
            let len = |bytes: &[u8]| u32::try_from(bytes.len()).unwrap_or(u32::MAX).to_be_bytes();
            out.extend_from_slice(
                &u32::try_from(self.earlier.len())
                    .unwrap_or(u32::MAX)
                    .to_be_bytes(),
            );
            for (key, value) in &self.earlier {
                out.extend_from_slice(&len(key));
                out.extend_from_slice(key);
                match value {
                    Some(value) => {
                        out.push(1);
                        out.extend_from_slice(&len(value));
                        out.extend_from_slice(value);
                    }
                    None => out.push(0),
                }
            }
        }
        out
    }

    /// Decodes a marker of this layout; `None` for anything else (see
    /// [`Unfinished::decode_v4`]).
    pub(super) fn decode(bytes: &[u8]) -> Option<Self> {
        let mut reader = Reader(bytes);
        let [tag, flags] = reader.take()?;
        if tag != UNFINISHED_V5 || flags > 15 {
            return None;
        }
        let journal = match flags & 1 {
            1 => Some(u64::from_be_bytes(reader.take()?)),
            _ => None,
        };
        let dedup = match flags & 2 {
            2 => Some(reader.take()?),
            _ => None,
        };
        let chunks = match flags & 4 {
            4 => Some(u64::from_be_bytes(reader.take()?)),
            _ => None,
        };
        let count = u32::from_be_bytes(reader.take()?);
        let topics = (0..count)
            .map(|_| {
                let id = u64::from_be_bytes(reader.take()?);
                let stats = LogStats::decode(&reader.take::<32>()?)?;
                Some((id, stats))
            })
            .collect::<Option<Vec<_>>>()?;
        let earlier = match flags & 8 {
            8 => {
                let count = u32::from_be_bytes(reader.take()?);
                (0..count)
                    .map(|_| {
                        let key = reader.bytes()?.to_vec();
                        let value = match reader.take::<1>()? {
                            [0] => None,
                            [1] => Some(reader.bytes()?.to_vec()),
                            _ => return None,
                        };
                        Some((key, value))
                    })
                    .collect::<Option<Vec<_>>>()?
            }
            _ => Vec::new(),
        };
        reader.0.is_empty().then_some(Self {
            topics,
            journal,
            dedup,
            chunks,
            earlier,
        })
    }

    /// Decodes the marker of layouts 3 and 4, one topic's appends: the topic, its `next`
    /// before the commit, the commit's dedup entry. That commit counted once its stats
    /// were written (they moved `next`).
    pub(super) fn decode_v4(bytes: &[u8]) -> Option<(u64, u64, Option<[u8; 17]>)> {
        let mut reader = Reader(bytes);
        let topic = u64::from_be_bytes(reader.take()?);
        let next = u64::from_be_bytes(reader.take()?);
        let dedup = match bytes.len() {
            16 => None,
            33 => Some(reader.take()?),
            _ => return None,
        };
        Some((topic, next, dedup))
    }
}

/// Takes fixed-size fields off the front of a value.
pub(super) struct Reader<'a>(pub(super) &'a [u8]);

impl Reader<'_> {
    pub(super) fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, rest) = self.0.split_first_chunk::<N>()?;
        self.0 = rest;
        Some(*head)
    }

    pub(super) fn take_slice(&mut self, len: usize) -> Option<&[u8]> {
        let (head, rest) = self.0.split_at_checked(len)?;
        self.0 = rest;
        Some(head)
    }

    /// Bytes after their length (u32).
    pub(super) fn bytes(&mut self) -> Option<&[u8]> {
        let len = u32::from_be_bytes(self.take()?);
        self.take_slice(usize::try_from(len).ok()?)
    }
}

/// The big-endian u64s after a key's prefix byte.
pub(super) fn numbers<const N: usize>(key: &[u8]) -> Option<[u64; N]> {
    let mut out = [0; N];
    for (i, n) in out.iter_mut().enumerate() {
        *n = u64::from_be_bytes(key.get(1 + i * 8..9 + i * 8)?.try_into().ok()?);
    }
    Some(out)
}

pub(super) fn topic(name: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + name.len());
    key.push(TOPIC);
    key.extend_from_slice(name.as_bytes());
    key
}

pub(super) fn with_id(prefix: u8, id: u64) -> [u8; 9] {
    let mut key = [0; 9];
    key[0] = prefix;
    key[1..].copy_from_slice(&id.to_be_bytes());
    key
}

/// Entries in a sled leaf node, at most.
const LEAF_ENTRIES: usize = 17;

/// The largest value to store under one `c` or `W` key with sled log segments of
/// `segment_bytes`: a full leaf of such values stays under a quarter of a segment, so
/// it is written inline, never to a blob (see the module docs). A power of two: 16 KiB
/// for the 2 MiB segments of new data dirs, 4 KiB for sled's default 512 KiB.
pub(super) fn part_bytes(segment_bytes: usize) -> usize {
    let largest = (segment_bytes / 4 / LEAF_ENTRIES).max(1);
    1 << largest.ilog2()
}

/// The key of part `part` of the chunk at `base` in layouts before 6 (tests build such
/// data dirs).
#[cfg(test)]
pub(super) fn chunk_part(id: u64, base: u64, part: u32) -> [u8; 21] {
    let mut key = [0; 21];
    key[..17].copy_from_slice(&with_offset(CHUNK, id, base));
    key[17..].copy_from_slice(&part.to_be_bytes());
    key
}

/// The key of part `part` of the chunk sealed `sequence`th.
pub(super) fn sealed_part(sequence: u64, part: u32) -> [u8; 13] {
    let mut key = [0; 13];
    key[..9].copy_from_slice(&with_id(SEALED, sequence));
    key[9..].copy_from_slice(&part.to_be_bytes());
    key
}

/// The prefix of the parts of the chunk of topic `id` at `base`, as its index entry
/// `meta` places them.
pub(super) fn chunk_parts(id: u64, base: u64, meta: &ChunkMeta) -> Vec<u8> {
    match meta.sealed {
        Some(sequence) => with_id(SEALED, sequence).to_vec(),
        None => with_offset(CHUNK, id, base).to_vec(),
    }
}

/// The key of part `part` of journal entry `sequence`.
pub(super) fn journal_part(sequence: u64, part: u32) -> [u8; 13] {
    let mut key = [0; 13];
    key[..9].copy_from_slice(&with_id(JOURNAL, sequence));
    key[9..].copy_from_slice(&part.to_be_bytes());
    key
}

pub(super) fn with_offset(prefix: u8, id: u64, offset: u64) -> [u8; 17] {
    let mut key = [0; 17];
    key[0] = prefix;
    key[1..9].copy_from_slice(&id.to_be_bytes());
    key[9..].copy_from_slice(&offset.to_be_bytes());
    key
}

/// The base offset in an `i` or `c` key, if the key has that shape.
pub(super) fn offset_of(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.get(9..17)?.try_into().ok()?))
}

/// A topic's position and size, updated with every commit that touches it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogStats {
    /// The oldest record still readable.
    pub first: u64,
    /// The offset the next record gets; every offset below it is durable.
    pub next: u64,
    /// Bytes taken by records `first..next` (entry headers included).
    pub bytes: u64,
    /// The newest record's timestamp; timestamps never go backwards within a topic.
    pub last_ts: u64,
}

impl LogStats {
    pub(super) fn encode(&self) -> [u8; 32] {
        let mut out = [0; 32];
        for (i, n) in [self.first, self.next, self.bytes, self.last_ts]
            .into_iter()
            .enumerate()
        {
            out[i * 8..(i + 1) * 8].copy_from_slice(&n.to_be_bytes());
        }
        out
    }

    pub(super) fn decode(bytes: &[u8]) -> Option<Self> {
        let n = |i: usize| {
            Some(u64::from_be_bytes(
                bytes.get(i * 8..(i + 1) * 8)?.try_into().ok()?,
            ))
        };
        (bytes.len() == 32).then_some(())?;
        Some(Self {
            first: n(0)?,
            next: n(1)?,
            bytes: n(2)?,
            last_ts: n(3)?,
        })
    }

    /// Records currently held.
    pub fn records(&self) -> u64 {
        self.next - self.first
    }
}

/// What the index says of one chunk, so retention and time lookups need not read it,
/// so a read can tell whether the chunk's bytes are the ones written, and where they
/// are.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct ChunkMeta {
    pub(super) count: u32,
    /// The chunk's length: the sum of its entries' encoded lengths.
    pub(super) bytes: u32,
    pub(super) first_ts: u64,
    pub(super) last_ts: u64,
    /// CRC-32 (IEEE) of the whole chunk, all parts joined. `None` for entries written
    /// before checksums existed (24 bytes long), whose chunks are checked by length only.
    pub(super) crc: Option<u32>,
    /// The chunk's seal sequence: its parts are at `C` + sequence. `None` for chunks
    /// sealed before layout 6 (entries of 28 or 24 bytes), whose parts are at `c` +
    /// topic id + base offset.
    pub(super) sealed: Option<u64>,
}

impl ChunkMeta {
    /// The 36-byte form: count, bytes, first and last timestamp, CRC, seal sequence
    /// (all big-endian). Only chunks with a seal sequence and a CRC are written; an
    /// entry without a CRC encodes a CRC of 0 that will not match, which is the safe
    /// failure.
    pub(super) fn encode(&self) -> [u8; 36] {
        let mut out = [0; 36];
        out[..4].copy_from_slice(&self.count.to_be_bytes());
        out[4..8].copy_from_slice(&self.bytes.to_be_bytes());
        out[8..16].copy_from_slice(&self.first_ts.to_be_bytes());
        out[16..24].copy_from_slice(&self.last_ts.to_be_bytes());
        out[24..28].copy_from_slice(&self.crc.unwrap_or(0).to_be_bytes());
        out[28..].copy_from_slice(&self.sealed.unwrap_or(u64::MAX).to_be_bytes());
        out
    }

    /// Decodes an entry of any layout (36 bytes, 28 before seal sequences, 24 before
    /// checksums).
    pub(super) fn decode(bytes: &[u8]) -> Option<Self> {
        let mut reader = Reader(bytes);
        let count = u32::from_be_bytes(reader.take()?);
        let chunk_bytes = u32::from_be_bytes(reader.take()?);
        let first_ts = u64::from_be_bytes(reader.take()?);
        let last_ts = u64::from_be_bytes(reader.take()?);
        let crc = reader.take().map(u32::from_be_bytes);
        let sealed = reader.take().map(u64::from_be_bytes);
        let whole = match (crc, sealed) {
            (None, _) => bytes.len() == 24,
            (Some(_), None) => bytes.len() == 28,
            (Some(_), Some(_)) => reader.0.is_empty(),
        };
        whole.then_some(Self {
            count,
            bytes: chunk_bytes,
            first_ts,
            last_ts,
            crc,
            sealed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_order_is_offset_order() {
        let a = with_offset(CHUNK, 7, 255);
        let b = with_offset(CHUNK, 7, 256);
        let c = with_offset(CHUNK, 8, 0);
        assert!(a < b && b < c);
        assert_eq!(offset_of(&b), Some(256));
        assert!(chunk_part(7, 255, u32::MAX) < chunk_part(7, 256, 0));
        assert!(chunk_part(7, 256, 0).starts_with(&b));
        assert_eq!(offset_of(&chunk_part(7, 256, 3)), Some(256));
    }

    #[test]
    fn state_prefixes_do_not_overlap() {
        // "ab" + key "c…" must not share a prefix with plugin "abc".
        assert!(!state("ab", b"c").starts_with(&state_prefix("abc")));
        assert!(state("abc", b"k").starts_with(&state_prefix("abc")));
        assert!(wasm_part(&[7; 32], 0).starts_with(&wasm(&[7; 32])));
    }

    #[test]
    fn values_round_trip() {
        let stats = LogStats {
            first: 1,
            next: 2,
            bytes: 3,
            last_ts: 4,
        };
        assert_eq!(LogStats::decode(&stats.encode()), Some(stats));
        assert_eq!(LogStats::decode(&[0; 31]), None);
        let meta = ChunkMeta {
            count: 5,
            bytes: 6,
            first_ts: 7,
            last_ts: 8,
            crc: Some(9),
            sealed: Some(10),
        };
        assert_eq!(ChunkMeta::decode(&meta.encode()), Some(meta));
        for len in [0, 23, 25, 27, 29, 35, 37] {
            let mut bytes = meta.encode().to_vec();
            bytes.resize(len, 0);
            assert_eq!(ChunkMeta::decode(&bytes), None, "{len} bytes");
        }
        // An entry of layouts 2 to 5: the first 28 bytes, parts keyed by topic.
        let old = ChunkMeta::decode(&meta.encode()[..28]).unwrap();
        assert_eq!(
            old,
            ChunkMeta {
                sealed: None,
                ..meta
            }
        );
        // An entry written before checksums: the first 24 bytes, no CRC.
        let old = ChunkMeta::decode(&meta.encode()[..24]).unwrap();
        assert_eq!(
            old,
            ChunkMeta {
                crc: None,
                sealed: None,
                ..meta
            }
        );
        assert_eq!(chunk_parts(3, 4, &meta), with_id(SEALED, 10));
        assert_eq!(chunk_parts(3, 4, &old), with_offset(CHUNK, 3, 4));
        assert!(sealed_part(10, 7).starts_with(&chunk_parts(3, 4, &meta)));
        let earlier = vec![
            (state("p", b"seen"), Some(b"earlier".to_vec())),
            (b"q-absent".to_vec(), None),
            (Vec::new(), Some(Vec::new())),
        ];
        let cases = [
            (None, None, None, Vec::new()),
            (Some(12), Some(dedup(10, 11)), Some(13), Vec::new()),
            (None, None, None, earlier.clone()),
            (Some(12), Some(dedup(10, 11)), Some(13), earlier),
        ];
        for (journal, dedup, chunks, earlier) in cases {
            let unfinished = Unfinished {
                topics: vec![(8, stats), (9, LogStats::default())],
                journal,
                dedup,
                chunks,
                earlier,
            };
            let encoded = unfinished.encode();
            assert_eq!(Unfinished::decode(&encoded), Some(unfinished));
            // Cut short anywhere, or followed by anything, it is refused.
            for end in 0..encoded.len() {
                assert_eq!(Unfinished::decode(&encoded[..end]), None, "{end} bytes");
            }
            assert_eq!(Unfinished::decode(&[&encoded[..], &[0]].concat()), None);
        }
        assert_eq!(Unfinished::decode(&[0; 17]), None);
        // A marker of layout 4: topic 8, next 9, and a dedup entry or none.
        let mut old = [8u64.to_be_bytes(), 9u64.to_be_bytes()].concat();
        assert_eq!(Unfinished::decode_v4(&old), Some((8, 9, None)));
        assert_eq!(Unfinished::decode(&old), None);
        old.extend_from_slice(&dedup(10, 11));
        assert_eq!(
            Unfinished::decode_v4(&old),
            Some((8, 9, Some(dedup(10, 11))))
        );
        assert_eq!(Unfinished::decode_v4(&old[..20]), None);
    }
}
