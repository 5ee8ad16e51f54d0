//! Records and the record batch format, shared by the wire and the broker's storage.
//!
//! A batch is a run of entries, each `len: u32 BE | timestamp: u64 BE | body`, where
//! `len` counts the timestamp and the body, and the body is a postcard-encoded
//! [`NewRecord`]. Offsets are not stored in entries: a batch travels with the offset of
//! its first entry. The broker stores batches as they are and serves slices of them on
//! subscription streams without re-encoding.
//!
//! Invariant: [`Entries`] never reads past the batch it is given; a truncated or
//! corrupt batch yields [`BatchError`], never a panic.

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use crate::frame::BufFlavor;

/// Headers the broker itself sets. Names starting `quiver-` are reserved for these.
pub mod headers {
    /// On a request: the token its reply must name.
    pub const REPLY_TO: &str = "quiver-reply-to";
    /// On a dead letter: the topic it was stored in.
    pub const DLQ_TOPIC: &str = "quiver-dlq-topic";
    /// On a dead letter: its offset in that topic.
    pub const DLQ_OFFSET: &str = "quiver-dlq-offset";
    /// On a dead letter: why it was given up on.
    pub const DLQ_REASON: &str = "quiver-dlq-reason";
    /// On a dead letter from a plugin: the plugin's name.
    pub const DLQ_PLUGIN: &str = "quiver-dlq-plugin";
    /// On a dead letter from a plugin: the plugin's version.
    pub const DLQ_VERSION: &str = "quiver-dlq-version";
    /// On a dead letter from a group: the group's name.
    pub const DLQ_GROUP: &str = "quiver-dlq-group";
    /// On a dead letter from a group: how many times it was delivered.
    pub const DLQ_DELIVERIES: &str = "quiver-dlq-deliveries";

    /// On a record forwarded over a link: the id of the broker it came from (32 hex
    /// digits).
    pub const ORIGIN_BROKER: &str = "quiver-origin-broker";
    /// On a record forwarded over a link: the topic it came from.
    pub const ORIGIN_TOPIC: &str = "quiver-origin-topic";
    /// On a record forwarded over a link: its offset in that topic.
    pub const ORIGIN_OFFSET: &str = "quiver-origin-offset";
    /// On a record forwarded over links more than once: the ids of the brokers it was
    /// stored on before the one it came from (`ORIGIN_BROKER`), oldest first,
    /// comma-separated.
    pub const PATH: &str = "quiver-path";

    /// The first of `headers` named `name`.
    pub fn find<'h>(headers: &'h [super::Header], name: &str) -> Option<&'h bytes::Bytes> {
        headers.iter().find(|h| h.name == name).map(|h| &h.value)
    }
}

/// Bytes in an entry's fixed header: the length prefix and the timestamp.
pub const ENTRY_HEADER_LEN: usize = 4 + 8;

/// A record header: a name and a byte value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// The header's name.
    pub name: String,
    /// The header's value.
    pub value: Bytes,
}

/// A record as a producer publishes it: the broker assigns offset and timestamp.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewRecord {
    /// Optional key (for example, what a consumer groups or deduplicates by).
    pub key: Option<Bytes>,
    /// Headers, in the order given.
    pub headers: Vec<Header>,
    /// The payload.
    pub payload: Bytes,
}

impl NewRecord {
    /// A record with just a payload.
    pub fn new(payload: impl Into<Bytes>) -> Self {
        Self {
            key: None,
            headers: Vec::new(),
            payload: payload.into(),
        }
    }

    /// Sets the key.
    pub fn with_key(mut self, key: impl Into<Bytes>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Adds a header.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<Bytes>) -> Self {
        self.headers.push(Header {
            name: name.into(),
            value: value.into(),
        });
        self
    }

    /// The first header with this name, if any.
    pub fn header(&self, name: &str) -> Option<&Bytes> {
        headers::find(&self.headers, name)
    }

    /// The record's size as limits count it: payload, key, header names and values.
    pub fn size(&self) -> usize {
        self.payload.len()
            + self.key.as_ref().map_or(0, Bytes::len)
            + self
                .headers
                .iter()
                .map(|h| h.name.len() + h.value.len())
                .sum::<usize>()
    }
}

macro_rules! payload_into_record {
    ($($t:ty),*) => {$(
        impl From<$t> for NewRecord {
            /// A record with this payload and no key or headers.
            fn from(payload: $t) -> Self {
                Self::new(payload)
            }
        }
    )*};
}

payload_into_record!(Bytes, Vec<u8>, String, &'static str, &'static [u8]);

/// A stored record as a reader sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The record's position in its topic.
    pub offset: u64,
    /// When the broker appended it, in milliseconds since the Unix epoch.
    pub timestamp: u64,
    /// Optional key.
    pub key: Option<Bytes>,
    /// Headers, in the order published.
    pub headers: Vec<Header>,
    /// The payload.
    pub payload: Bytes,
}

impl Record {
    /// The first header with this name, if any.
    pub fn header(&self, name: &str) -> Option<&Bytes> {
        headers::find(&self.headers, name)
    }
}

/// Why a batch could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// An entry runs past the end of the batch.
    #[error("record batch truncated at byte {at}")]
    Truncated {
        /// Where the incomplete entry starts.
        at: usize,
    },
    /// An entry's body is not a valid record.
    #[error("record at byte {at} is malformed: {reason}")]
    Malformed {
        /// Where the entry starts.
        at: usize,
        /// What the decoder said.
        reason: String,
    },
    /// An entry's offset would be past `u64::MAX`: the batch does not fit its base
    /// offset.
    #[error("record at byte {at} would have an offset past the largest one")]
    OffsetOverflow {
        /// Where the entry starts.
        at: usize,
    },
}

/// Appends one entry to a batch and returns the number of bytes it takes.
///
/// Panics if the encoded record exceeds 4 GiB; callers enforce a record-size limit
/// far below that first (the broker's default is 1 MiB).
pub fn append_entry(dst: &mut BytesMut, timestamp: u64, record: &NewRecord) -> usize {
    let start = dst.len();
    dst.put_u32(0); // patched below, once the body's length is known
    dst.put_u64(timestamp);
    // Invariant: a `NewRecord` has no map or unsized sequence, and `BufFlavor` grows
    // the buffer, so postcard cannot fail here.
    postcard::serialize_with_flavor(record, BufFlavor(&mut *dst))
        .expect("a NewRecord always serializes");
    let len = dst.len() - start;
    let body_len = u32::try_from(len - 4).expect("record size limits keep entries below 4 GiB");
    dst[start..start + 4].copy_from_slice(&body_len.to_be_bytes());
    len
}

/// Appends one entry for `record` with `extra` headers after its own, as
/// [`append_entry`] would for a record that carried them all, without building that
/// record (the broker adds the provenance of forwarded records this way).
pub fn append_entry_with(
    dst: &mut BytesMut,
    timestamp: u64,
    record: &NewRecord,
    extra: &[(&str, &[u8])],
) -> usize {
    fn put_varint(dst: &mut BytesMut, mut n: usize) {
        while n >= 0x80 {
            // The low seven bits, with the continuation bit.
            dst.put_u8((n & 0x7f) as u8 | 0x80);
            n >>= 7;
        }
        dst.put_u8((n & 0x7f) as u8);
    }
    fn put_bytes(dst: &mut BytesMut, bytes: &[u8]) {
        put_varint(dst, bytes.len());
        dst.put_slice(bytes);
    }
    let start = dst.len();
    dst.put_u32(0); // patched below
    dst.put_u64(timestamp);
    // postcard's encoding of a `NewRecord`: the key as an `Option` (a tag byte, then
    // its bytes), the headers as a sequence (a varint count, then each name and
    // value), the payload; every length a varint.
    match &record.key {
        None => dst.put_u8(0),
        Some(key) => {
            dst.put_u8(1);
            put_bytes(dst, key);
        }
    }
    put_varint(dst, record.headers.len() + extra.len());
    for header in &record.headers {
        put_bytes(dst, header.name.as_bytes());
        put_bytes(dst, &header.value);
    }
    for (name, value) in extra {
        put_bytes(dst, name.as_bytes());
        put_bytes(dst, value);
    }
    put_bytes(dst, &record.payload);
    let len = dst.len() - start;
    let body_len = u32::try_from(len - 4).expect("record size limits keep entries below 4 GiB");
    dst[start..start + 4].copy_from_slice(&body_len.to_be_bytes());
    len
}

/// postcard's length of a varint.
fn varint_len(n: usize) -> usize {
    (usize::BITS - n.leading_zeros()).max(1).div_ceil(7) as usize
}

/// postcard's length of a byte string or `str`.
fn bytes_len(len: usize) -> usize {
    varint_len(len) + len
}

/// The bytes [`append_entry`] takes for `record`, without encoding it.
pub fn entry_len(record: &NewRecord) -> usize {
    entry_len_with(record, &[])
}

/// The bytes [`append_entry_with`] takes for `record` and `extra`.
pub fn entry_len_with(record: &NewRecord, extra: &[(&str, &[u8])]) -> usize {
    // postcard: lengths as varints, an `Option` as a tag byte and its value.
    let key = 1 + record.key.as_ref().map_or(0, |k| bytes_len(k.len()));
    let headers = varint_len(record.headers.len() + extra.len())
        + record
            .headers
            .iter()
            .map(|h| bytes_len(h.name.len()) + bytes_len(h.value.len()))
            .sum::<usize>()
        + extra
            .iter()
            .map(|(name, value)| bytes_len(name.len()) + bytes_len(value.len()))
            .sum::<usize>();
    ENTRY_HEADER_LEN + key + headers + bytes_len(record.payload.len())
}

/// One entry of a batch, not yet decoded.
#[derive(Debug, Clone, Copy)]
pub struct RawEntry<'a> {
    /// When the record was appended (ms since the Unix epoch).
    pub timestamp: u64,
    /// The encoded record body.
    pub body: &'a [u8],
    /// Where this entry starts in the batch.
    pub start: usize,
    /// The bytes this entry takes in the batch, header included.
    pub encoded_len: usize,
}

/// A record body as it lies in a batch: the same encoding as [`NewRecord`], read
/// without copying its bytes.
#[derive(Deserialize)]
struct BorrowedRecord<'a> {
    #[serde(borrow)]
    key: Option<&'a [u8]>,
    #[serde(borrow)]
    headers: Vec<BorrowedHeader<'a>>,
    #[serde(borrow)]
    payload: &'a [u8],
}

#[derive(Deserialize)]
struct BorrowedHeader<'a> {
    #[serde(borrow)]
    name: &'a str,
    #[serde(borrow)]
    value: &'a [u8],
}

impl RawEntry<'_> {
    /// Decodes the entry into a [`Record`] at `offset` whose bytes (payload, key,
    /// header values) are slices of `batch`, the batch the entry was read from.
    fn decode_in(&self, batch: &Bytes, offset: u64) -> Result<Record, BatchError> {
        let malformed = |reason: String| BatchError::Malformed {
            at: self.start,
            reason,
        };
        let (record, rest): (BorrowedRecord<'_>, _) =
            postcard::take_from_bytes(self.body).map_err(|e| malformed(e.to_string()))?;
        if !rest.is_empty() {
            return Err(malformed(format!("{} trailing bytes", rest.len())));
        }
        Ok(Record {
            offset,
            timestamp: self.timestamp,
            key: record.key.map(|key| batch.slice_ref(key)),
            headers: record
                .headers
                .into_iter()
                .map(|h| Header {
                    name: h.name.to_owned(),
                    value: batch.slice_ref(h.value),
                })
                .collect(),
            payload: batch.slice_ref(record.payload),
        })
    }
}

/// Iterates the entries of a batch.
#[derive(Debug, Clone)]
pub struct Entries<'a> {
    batch: &'a [u8],
    pos: usize,
}

/// Iterates the entries of `batch` without decoding their bodies.
pub fn entries(batch: &[u8]) -> Entries<'_> {
    Entries { batch, pos: 0 }
}

impl<'a> Iterator for Entries<'a> {
    type Item = Result<RawEntry<'a>, BatchError>;

    fn next(&mut self) -> Option<Self::Item> {
        let rest = &self.batch[self.pos..];
        if rest.is_empty() {
            return None;
        }
        let start = self.pos;
        let truncated = BatchError::Truncated { at: start };
        let parsed = (|| {
            let len = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
            let entry = rest.get(4..4usize.checked_add(len)?)?;
            let timestamp = u64::from_be_bytes(entry.get(..8)?.try_into().ok()?);
            Some(RawEntry {
                timestamp,
                body: &entry[8..],
                start,
                encoded_len: 4 + len,
            })
        })();
        match parsed {
            Some(entry) => {
                self.pos += entry.encoded_len;
                Some(Ok(entry))
            }
            None => {
                self.pos = self.batch.len(); // stop after reporting the error once
                Some(Err(truncated))
            }
        }
    }
}

/// Decodes every record of a batch whose first entry has offset `base_offset`,
/// copying the batch once; see [`decode_shared`] to avoid even that.
pub fn decode_batch(base_offset: u64, batch: &[u8]) -> Result<Vec<Record>, BatchError> {
    decode_shared(base_offset, &Bytes::copy_from_slice(batch))
}

/// Decodes every record of a batch whose first entry has offset `base_offset`,
/// without copying: each record's payload, key and header values are slices of
/// `batch` (only header names and the record list are allocated). A record kept
/// therefore keeps the whole batch's memory alive; copy its payload to hold it apart.
pub fn decode_shared(base_offset: u64, batch: &Bytes) -> Result<Vec<Record>, BatchError> {
    let mut offset = Some(base_offset);
    entries(batch)
        .map(|entry| {
            let entry = entry?;
            let this = offset.ok_or(BatchError::OffsetOverflow { at: entry.start })?;
            offset = this.checked_add(1);
            entry.decode_in(batch, this)
        })
        .collect()
}

/// Encodes records into a fresh batch, all with the same timestamp (used by tests and
/// tools; the broker builds batches entry by entry).
pub fn encode_batch<'r>(timestamp: u64, records: impl IntoIterator<Item = &'r NewRecord>) -> Bytes {
    let mut buf = BytesMut::new();
    for record in records {
        append_entry(&mut buf, timestamp, record);
    }
    buf.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample(i: u8) -> NewRecord {
        NewRecord::new(vec![i; i as usize])
            .with_key(vec![i])
            .with_header("h", "v")
    }

    #[test]
    fn batch_round_trips() {
        let records: Vec<_> = (0..5).map(sample).collect();
        let batch = encode_batch(77, &records);
        let decoded = decode_batch(10, &batch).unwrap();
        assert_eq!(decoded.len(), 5);
        for (i, (got, want)) in decoded.iter().zip(&records).enumerate() {
            assert_eq!(got.offset, 10 + i as u64);
            assert_eq!(got.timestamp, 77);
            assert_eq!(got.payload, want.payload);
            assert_eq!(got.key, want.key);
            assert_eq!(got.headers, want.headers);
        }
    }

    #[test]
    fn entry_lengths_add_up() {
        let records: Vec<_> = (0..3).map(sample).collect();
        let batch = encode_batch(1, &records);
        let total: usize = entries(&batch).map(|e| e.unwrap().encoded_len).sum();
        assert_eq!(total, batch.len());
    }

    #[test]
    fn truncated_batch_is_an_error() {
        let batch = encode_batch(1, &[sample(9)]);
        for cut in 1..batch.len() {
            let result = decode_batch(0, &batch[..cut]);
            assert_eq!(result, Err(BatchError::Truncated { at: 0 }), "cut at {cut}");
        }
    }

    #[test]
    fn entry_len_is_what_append_entry_takes() {
        let long = |n: usize| Bytes::from(vec![7u8; n]);
        let mut records = vec![NewRecord::default(), sample(0), sample(200)];
        for n in [127, 128, 16_383, 16_384, 2_097_151, 2_097_152] {
            records.push(NewRecord::new(long(n)));
            records.push(
                NewRecord::new("p")
                    .with_key(long(n))
                    .with_header("x".repeat(n % 300), long(n)),
            );
        }
        records.push((0..200).fold(NewRecord::new("many"), |r, i| {
            r.with_header(format!("h{i}"), "v")
        }));
        for record in &records {
            let mut buf = BytesMut::new();
            assert_eq!(entry_len(record), append_entry(&mut buf, u64::MAX, record));
        }
    }

    #[test]
    fn extra_headers_encode_as_if_the_record_carried_them() {
        let long = |n: usize| Bytes::from(vec![7u8; n]);
        let extra_value = long(300);
        let extra: [(&str, &[u8]); 2] = [("quiver-origin-offset", b"42"), ("x", &extra_value)];
        let mut records = vec![NewRecord::default(), sample(0), sample(200)];
        records.push(NewRecord::new(long(20_000)).with_key(long(130)));
        records.push((0..126).fold(NewRecord::new("many"), |r, i| {
            r.with_header(format!("h{i}"), "v")
        }));
        for record in &records {
            let mut carried = record.clone();
            for (name, value) in extra {
                carried = carried.with_header(name, Bytes::copy_from_slice(value));
            }
            let (mut want, mut got) = (BytesMut::new(), BytesMut::new());
            let len = append_entry(&mut want, 9, &carried);
            assert_eq!(append_entry_with(&mut got, 9, record, &extra), len);
            assert_eq!(got, want);
            assert_eq!(entry_len_with(record, &extra), len);
            let mut plain = BytesMut::new();
            append_entry_with(&mut plain, 9, record, &[]);
            let mut postcard = BytesMut::new();
            append_entry(&mut postcard, 9, record);
            assert_eq!(plain, postcard);
        }
    }

    #[test]
    fn size_counts_key_headers_and_payload() {
        let r = NewRecord::new("12345")
            .with_key("ab")
            .with_header("xy", "z");
        assert_eq!(r.size(), 5 + 2 + 3);
    }

    proptest! {
        #[test]
        fn arbitrary_batches_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_batch(0, &bytes);
            for entry in entries(&bytes).flatten() {
                prop_assert!(entry.start + entry.encoded_len <= bytes.len());
            }
        }
    }
}
