//! What storage keeps for links: the broker's own id, each declared link and its
//! cursors (the source side), and the marks of forwarded origins (the destination
//! side).
//!
//! A *mark* is the origin offset a destination topic expects next from one origin (a
//! topic of another broker, by id). It is written in the same commit as the records it
//! covers, and checked by the writer against the batch's `from`, so a batch sent again
//! after any crash is never stored twice, and a batch whose predecessor was not stored
//! is refused rather than leaving a gap. The writer keeps every mark in memory
//! ([`Marks`]); there is one per destination topic and origin, a few dozen bytes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use quiver_protocol::record::headers;
use quiver_protocol::{Header, NewRecord};
use serde::{Deserialize, Serialize};

use super::StorageError;
use super::keys;
use quiver_protocol::{LinkAuth, LinkDirection, LinkSpec, Stage, StartAt};

/// Which destination topic and which origin a mark is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MarkKey {
    /// The destination topic's id.
    pub topic: u64,
    /// The origin broker's id.
    pub broker: u128,
    /// The origin topic's id on that broker.
    pub origin_topic: u64,
}

/// A mark: the origin offset expected next, and the origin topic's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mark {
    /// The origin offset the destination expects next.
    pub next: u64,
    /// The origin topic's name.
    pub origin_topic: String,
}

/// Every mark, as committed; shared by the writer (which moves them after a commit)
/// and readers.
#[derive(Debug, Clone, Default)]
pub struct Marks(Arc<Mutex<HashMap<MarkKey, Mark>>>);

impl Marks {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<MarkKey, Mark>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The committed mark for `key`.
    pub fn get(&self, key: &MarkKey) -> Option<u64> {
        self.lock().get(key).map(|m| m.next)
    }

    /// The marks a destination topic keeps for origins on `broker`: (origin topic id,
    /// mark).
    pub fn from_broker(&self, topic: u64, broker: u128) -> Vec<(u64, Mark)> {
        self.lock()
            .iter()
            .filter(|(k, _)| k.topic == topic && k.broker == broker)
            .map(|(k, m)| (k.origin_topic, m.clone()))
            .collect()
    }

    pub(super) fn set(&self, key: MarkKey, mark: Mark) {
        self.lock().insert(key, mark);
    }

    /// Forgets a deleted topic's marks.
    pub(super) fn forget_topic(&self, topic: u64) {
        self.lock().retain(|k, _| k.topic != topic);
    }
}

/// A mark to move in a commit, with the records it covers (the commit's first
/// append): refused unless the committed mark is `from` (or there is none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MarkWrite {
    /// Which mark.
    pub key: MarkKey,
    /// The origin topic's name.
    pub origin_topic: String,
    /// Where the batch continues from.
    pub from: u64,
    /// The mark after it.
    pub next: u64,
    /// The original timestamps of the first append's records, in order.
    pub stamps: Vec<u64>,
    /// The provenance headers of the first append's records, when the writer is to
    /// add them as it encodes each record (nothing per record is built before).
    pub provenance: Option<Provenance>,
}

/// The provenance headers of forwarded records (`quiver-origin-*`, `quiver-path`), the
/// same for every record of a batch but the offset and the path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provenance {
    /// The origin broker's id, hex.
    pub broker: Bytes,
    /// The origin topic.
    pub topic: Bytes,
    /// Each record's origin offset, in order.
    pub offsets: Vec<u64>,
    /// Each record's `quiver-path`, if it has one.
    pub paths: Vec<Option<Bytes>>,
}

impl Provenance {
    /// Record `i`'s provenance headers, built (for plugins, which see records whole).
    pub fn headers(&self, i: usize) -> Vec<Header> {
        let mut offset = [0u8; 20];
        self.with(i, &mut offset, |extra| {
            extra
                .iter()
                .map(|(name, value)| Header {
                    name: (*name).to_owned(),
                    value: Bytes::copy_from_slice(value),
                })
                .collect()
        })
    }

    /// Adds each record's provenance headers to it (records in the order given).
    pub fn apply(&self, records: &mut [NewRecord]) {
        for (i, record) in records.iter_mut().enumerate() {
            record.headers.extend(self.headers(i));
        }
    }

    /// Calls `f` with record `i`'s provenance headers as (name, value) pairs, built on
    /// the stack; `offset` holds the offset's digits.
    pub fn with<T>(
        &self,
        i: usize,
        offset: &mut [u8; 20],
        f: impl FnOnce(&[(&str, &[u8])]) -> T,
    ) -> T {
        let digits = decimal(self.offsets.get(i).copied().unwrap_or_default(), offset);
        let mut extra: [(&str, &[u8]); 4] = [
            (headers::ORIGIN_BROKER, &self.broker),
            (headers::ORIGIN_TOPIC, &self.topic),
            (headers::ORIGIN_OFFSET, digits),
            (headers::PATH, &[]),
        ];
        match self.paths.get(i).and_then(Option::as_ref) {
            Some(path) => {
                extra[3].1 = path;
                f(&extra)
            }
            None => f(&extra[..3]),
        }
    }
}

/// Calls `f` with record `i`'s provenance headers, or with none.
pub(super) fn with_provenance<T>(
    provenance: Option<&Provenance>,
    i: usize,
    digits: &mut [u8; 20],
    f: impl FnOnce(&[(&str, &[u8])]) -> T,
) -> T {
    match provenance {
        Some(provenance) => provenance.with(i, digits, f),
        None => f(&[]),
    }
}

/// `n` in decimal, written into the end of `buf`.
fn decimal(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut at = buf.len();
    loop {
        at -= 1;
        // A decimal digit: `n % 10` is below 10.
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[at..];
        }
    }
}

/// A declared link as stored (`l` + name).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkRecord {
    /// What the link is.
    pub spec: LinkSpec,
    /// Paused by an operator.
    pub paused: bool,
}

impl LinkRecord {
    /// A stored link record, also as written before links could reach JetStream.
    pub(super) fn decode(bytes: &[u8]) -> Result<Self, StorageError> {
        postcard::from_bytes(bytes)
            .or_else(|e| {
                postcard::from_bytes::<LinkRecordBeforeJetStream>(bytes)
                    .map(Self::from)
                    .map_err(|_| e)
            })
            .map_err(|e| StorageError::corrupt(format!("link record: {e}")))
    }
}

/// A [`LinkRecord`] as written before links could reach JetStream (layout 4, without
/// [`LinkSpec::jetstream`]).
#[derive(Deserialize)]
#[cfg_attr(test, derive(Serialize))]
struct LinkRecordBeforeJetStream {
    name: String,
    to: Vec<String>,
    direction: LinkDirection,
    topics: String,
    prefix: String,
    from: StartAt,
    max_rate: Option<u32>,
    ca: Option<String>,
    auth: LinkAuth,
    pipeline: Vec<Stage>,
    paused: bool,
}

impl From<LinkRecordBeforeJetStream> for LinkRecord {
    fn from(old: LinkRecordBeforeJetStream) -> Self {
        Self {
            spec: LinkSpec {
                name: old.name,
                to: old.to,
                direction: old.direction,
                topics: old.topics,
                prefix: old.prefix,
                from: old.from,
                max_rate: old.max_rate,
                ca: old.ca,
                auth: old.auth,
                pipeline: old.pipeline,
                jetstream: None,
            },
            paused: old.paused,
        }
    }
}

/// Where a link is in one source topic (`L` + link + topic id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkCursor {
    /// The source topic's name.
    pub topic: String,
    /// The next source offset to forward.
    pub next: u64,
    /// Records skipped in it (retention removed them first), in all.
    pub skipped: u64,
}

pub(super) fn mark_key(key: &MarkKey) -> [u8; 33] {
    let mut bytes = [0; 33];
    bytes[0] = keys::MARK;
    bytes[1..9].copy_from_slice(&key.topic.to_be_bytes());
    bytes[9..25].copy_from_slice(&key.broker.to_be_bytes());
    bytes[25..].copy_from_slice(&key.origin_topic.to_be_bytes());
    bytes
}

pub(super) fn mark_value(mark: &Mark) -> Vec<u8> {
    let mut value = mark.next.to_be_bytes().to_vec();
    value.extend_from_slice(mark.origin_topic.as_bytes());
    value
}

/// Every stored mark.
pub(super) fn load_marks(tree: &sled::Tree) -> Result<Marks, StorageError> {
    let marks = Marks::default();
    for item in tree.scan_prefix([keys::MARK]) {
        let (key, value) = item?;
        let decoded = (|| {
            let topic = u64::from_be_bytes(key.get(1..9)?.try_into().ok()?);
            let broker = u128::from_be_bytes(key.get(9..25)?.try_into().ok()?);
            let origin_topic = u64::from_be_bytes(key.get(25..33)?.try_into().ok()?);
            let next = u64::from_be_bytes(value.get(..8)?.try_into().ok()?);
            let name = String::from_utf8(value.get(8..)?.to_vec()).ok()?;
            Some((
                MarkKey {
                    topic,
                    broker,
                    origin_topic,
                },
                Mark {
                    next,
                    origin_topic: name,
                },
            ))
        })();
        let (key, mark) =
            decoded.ok_or_else(|| StorageError::corrupt("a link mark of the wrong shape"))?;
        marks.set(key, mark);
    }
    Ok(marks)
}

pub(super) fn link(name: &str) -> Vec<u8> {
    let mut key = vec![keys::LINK];
    key.extend_from_slice(name.as_bytes());
    key
}

/// The prefix of a link's cursors. Link names are at most 255 bytes (the topic-name
/// grammar), so no link's prefix is another's.
pub(super) fn cursor_prefix(link: &str) -> Vec<u8> {
    let mut key = vec![
        keys::LINK_CURSOR,
        u8::try_from(link.len()).unwrap_or(u8::MAX),
    ];
    key.extend_from_slice(link.as_bytes());
    key
}

pub(super) fn cursor(link: &str, topic: u64) -> Vec<u8> {
    let mut key = cursor_prefix(link);
    key.extend_from_slice(&topic.to_be_bytes());
    key
}

pub(super) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Invariant: link records and cursors hold only strings, integers, options and
    // vectors of those, which postcard always encodes.
    postcard::to_allocvec(value).expect("link records always encode")
}

/// The broker's id: made at random the first time, then kept (`b`).
pub(super) fn broker_id(tree: &sled::Tree) -> Result<u128, StorageError> {
    if let Some(value) = tree.get(keys::BROKER)? {
        let bytes: [u8; 16] = value
            .as_ref()
            .try_into()
            .map_err(|_| StorageError::corrupt("the broker id is unreadable"))?;
        return Ok(u128::from_be_bytes(bytes));
    }
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes)
        .map_err(|e| StorageError::Sled(std::io::Error::other(e.to_string()).into()))?;
    tree.insert(keys::BROKER, &bytes[..])?;
    tree.flush()?;
    Ok(u128::from_be_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_records_written_before_jetstream_links_still_load() {
        for paused in [false, true] {
            let old = LinkRecordBeforeJetStream {
                name: "up".into(),
                to: vec!["hub:7400".into()],
                direction: LinkDirection::Out,
                topics: "sensors.>".into(),
                prefix: "edge1.".into(),
                from: StartAt::Earliest,
                max_rate: Some(100),
                ca: None,
                auth: LinkAuth::Token("t".into()),
                pipeline: Vec::new(),
                paused,
            };
            let record = LinkRecord::decode(&encode(&old)).unwrap();
            assert_eq!(record.spec.name, "up");
            assert_eq!(record.spec.prefix, "edge1.");
            assert_eq!(record.spec.max_rate, Some(100));
            assert_eq!(record.spec.jetstream, None);
            assert_eq!(record.paused, paused);
            // And the current shape round-trips.
            assert_eq!(LinkRecord::decode(&encode(&record)).unwrap(), record);
        }
    }
}
