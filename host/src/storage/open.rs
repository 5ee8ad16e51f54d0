//! Opening a data dir: what can be checked before sled reads its log (the segment size
//! it was created with), sled's errors and panics on a damaged log turned into
//! [`StorageError`]s, the layout stamp, taking back a commit the log cut short,
//! checking every topic's stats against its index, and replaying the journal.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use quiver_protocol::TopicName;
use tracing::warn;

use super::error::open_error;
use super::journal::{self, Journal};
use super::keys::{self, LogStats};
use super::log::TopicMeta;
use super::read::decode_index;
use super::{StorageConfig, StorageError, TopicLog};

/// What opening found.
pub(super) struct Opened {
    pub(super) db: sled::Db,
    pub(super) tree: sled::Tree,
    /// Every live topic.
    pub(super) topics: Vec<Arc<TopicLog>>,
    /// The log's segment size.
    pub(super) segment_bytes: usize,
    /// The journal as replayed.
    pub(super) journal: Journal,
    /// The seal sequence the next chunk gets.
    pub(super) next_chunk: u64,
}

/// Opens (or creates) the data dir and checks it.
pub(super) fn open(config: &StorageConfig) -> Result<Opened, StorageError> {
    // sled cannot change a data dir's segment size: keep what it was created with.
    let segment_bytes = created_segment_size(&config.path)?.unwrap_or(SEGMENT_BYTES);
    catch_panic(|| {
        let db = sled::Config::new()
            .path(&config.path)
            .cache_capacity(config.cache_capacity)
            .flush_every_ms(None) // the writer flushes before every acknowledgement
            .sync_barrier(config.barrier)
            .segment_size(segment_bytes)
            .open()
            .map_err(open_error)?;
        let tree = db.open_tree("log").map_err(open_error)?;
        let version = check_format(&tree, &config.path)?;
        take_back_unfinished(&tree, version)?;
        let topics = recover(&tree)?;
        let journal = journal::replay(&tree, &topics, config.journal_bytes)?;
        let next_chunk = next_chunk(&tree)?;
        Ok(Opened {
            db,
            tree,
            topics,
            segment_bytes,
            journal,
            next_chunk,
        })
    })
}

/// sled's log segment size for new data dirs (sled's default is 512 KiB).
pub(super) const SEGMENT_BYTES: usize = 2 << 20;

/// The segment size an existing data dir was created with, from the `conf` file sled
/// keeps in it (`segment_size: N` on a line of its own); `None` for a data dir whose
/// log is still empty.
///
/// sled itself treats a missing or short `conf` as a new data dir and writes a fresh
/// one with the segment size asked for; if that is not the size the log was written
/// with, sled misreads the log. So a data dir whose log holds data but whose `conf` is
/// missing or unreadable is refused.
pub(super) fn created_segment_size(path: &Path) -> Result<Option<usize>, StorageError> {
    let conf_path = path.join("conf");
    let log_bytes = std::fs::metadata(path.join("db")).map_or(0, |m| m.len());
    let conf = match std::fs::read(&conf_path) {
        Ok(conf) => Some(conf),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(StorageError::Sled(sled::Error::Io(e))),
    };
    let segment_size = conf.as_deref().and_then(|conf| {
        String::from_utf8_lossy(conf)
            .lines()
            .find_map(|line| line.strip_prefix("segment_size: "))
            .and_then(|n| n.trim().parse().ok())
    });
    match (segment_size, log_bytes) {
        (Some(size), _) => Ok(Some(size)),
        (None, 0) => Ok(None),
        (None, _) => Err(StorageError::corrupt(format!(
            "sled's settings file {} is {} while its log holds {log_bytes} bytes: the log's \
             segment size is unknown, and reading it with another would misread it",
            conf_path.display(),
            if conf.is_some() {
                "unreadable"
            } else {
                "missing"
            }
        ))),
    }
}

/// Runs `open` and turns a panic inside it into [`StorageError::Corrupt`]: sled 0.34
/// panics on some damaged logs (measured: a flipped byte in a log without a snapshot
/// can end in "tried to serialize Uninitialized"). The panic's message is kept for the
/// error instead of being printed; the broker then refuses to start.
pub(super) fn catch_panic<T>(
    open: impl FnOnce() -> Result<T, StorageError>,
) -> Result<T, StorageError> {
    let message = Arc::new(Mutex::new(None::<String>));
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new({
        let message = Arc::clone(&message);
        move |info| {
            let text = info.payload_as_str().unwrap_or("(no message)");
            let at = info
                .location()
                .map(|l| format!(" at {l}"))
                .unwrap_or_default();
            *message.lock().unwrap_or_else(PoisonError::into_inner) = Some(format!("{text}{at}"));
        }
    }));
    let result = std::panic::catch_unwind(AssertUnwindSafe(open));
    std::panic::set_hook(previous);
    result.unwrap_or_else(|_| {
        let message = message
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        Err(StorageError::corrupt(format!(
            "sled panicked while reading its log, which is damaged: {}",
            message.as_deref().unwrap_or("(no message)")
        )))
    })
}

/// The file, in sled's directory, that says its log has held Quiver's data: written
/// once the layout stamp is on disk. A log that then yields nothing at all (cut short,
/// or damaged near its start) is refused rather than taken for a new data dir.
const WRITTEN_MARKER: &str = "quiver-written";

/// Stamps a new data dir with the layout version, upgrades the stamp of a data dir of
/// the layout before checksums (its entries read as they are), and refuses any other.
/// An upgraded stamp is made durable by the first commit, before any entry of the new
/// layout. Returns the layout the data dir had.
fn check_format(tree: &sled::Tree, path: &Path) -> Result<u32, StorageError> {
    let stamp = || {
        tree.insert(keys::VERSION, &keys::FORMAT.to_be_bytes())
            .map(drop)
    };
    let marker = path.join(WRITTEN_MARKER);
    let mark = || -> Result<(), StorageError> {
        crate::files::create_durably(&marker).map_err(|e| StorageError::Sled(e.into()))
    };
    let version = tree
        .get(keys::VERSION)?
        .map(|v| <[u8; 4]>::try_from(v.as_ref()).map(u32::from_be_bytes));
    match version {
        None if tree.is_empty() && marker.exists() => Err(StorageError::corrupt(format!(
            "sled recovered nothing from its log, though Quiver has stored data in this data \
             dir ({} exists): the log (`db`) is cut short or damaged near its start",
            marker.display()
        ))),
        None if tree.is_empty() => {
            stamp()?;
            tree.flush()?;
            mark().map(|()| keys::FORMAT)
        }
        Some(Ok(keys::FORMAT)) => mark().map(|()| keys::FORMAT),
        Some(Ok(old @ keys::FORMAT_V1..keys::FORMAT)) => {
            stamp()?;
            mark().map(|()| old)
        }
        Some(Ok(other)) => Err(StorageError::corrupt(format!(
            "the data dir has layout version {other}; this broker reads versions {} to {}",
            keys::FORMAT_V1,
            keys::FORMAT
        ))),
        Some(Err(_)) => Err(StorageError::corrupt("the layout version is unreadable")),
        None => Err(StorageError::corrupt(
            "the layout version is missing from a data dir that holds data",
        )),
    }
}

/// Takes back a commit that the log cut short while the writer wrote it key by key
/// (see [`keys::Unfinished`]): the chunks it sealed go and their topics' stats are
/// written back, its journal and dedup entries go, and the plain keys it set get their
/// earlier values back. Nothing of it was acknowledged: that waits for the flush after
/// it. A data dir of an older layout (`version`) has the older marker, of one topic's
/// appends.
fn take_back_unfinished(tree: &sled::Tree, version: u32) -> Result<(), StorageError> {
    let Some(value) = tree.get(keys::UNFINISHED)? else {
        return Ok(());
    };
    let unreadable = || StorageError::corrupt("the unfinished-commit marker is unreadable");
    let unfinished = match version {
        5.. => keys::Unfinished::decode(&value).ok_or_else(unreadable)?,
        _ => {
            let (topic, next, dedup) =
                keys::Unfinished::decode_v4(&value).ok_or_else(unreadable)?;
            // That commit counted once its stats were written: they moved `next`.
            let stats = tree
                .get(keys::with_id(keys::STATS, topic))?
                .and_then(|v| LogStats::decode(&v));
            match stats {
                Some(stats) if stats.next == next => keys::Unfinished {
                    topics: vec![(topic, stats)],
                    journal: None,
                    dedup,
                    chunks: None,
                    earlier: Vec::new(),
                },
                _ => keys::Unfinished {
                    topics: Vec::new(),
                    journal: None,
                    dedup: None,
                    chunks: None,
                    earlier: Vec::new(),
                },
            }
        }
    };
    let mut batch = sled::Batch::default();
    for &(id, stats) in &unfinished.topics {
        for prefix in [keys::INDEX, keys::CHUNK] {
            let topic = keys::with_id(prefix, id);
            for key in tree
                .range(keys::with_offset(prefix, id, stats.next)..)
                .keys()
            {
                let key = key?;
                if !key.starts_with(&topic) {
                    break;
                }
                batch.remove(key);
            }
        }
        // A topic deleted since has no stats to restore.
        if tree.contains_key(keys::with_id(keys::STATS, id))? {
            batch.insert(&keys::with_id(keys::STATS, id), &stats.encode());
        }
    }
    if let Some(first) = unfinished.chunks {
        for key in tree.range(keys::with_id(keys::SEALED, first)..).keys() {
            let key = key?;
            if key.first() != Some(&keys::SEALED) {
                break;
            }
            batch.remove(key);
        }
    }
    if let Some(sequence) = unfinished.journal {
        for key in tree
            .scan_prefix(keys::with_id(keys::JOURNAL, sequence))
            .keys()
        {
            batch.remove(key?);
        }
    }
    if let Some(dedup) = unfinished.dedup {
        batch.remove(&dedup[..]);
    }
    let plain = unfinished.earlier.len();
    keys::stage_writes(&mut batch, unfinished.earlier);
    if !unfinished.topics.is_empty() || unfinished.journal.is_some() || plain > 0 {
        warn!(
            topics = unfinished.topics.len(),
            plain_keys = plain,
            "took back a commit the log cut short (it was never acknowledged)"
        );
    }
    batch.remove(keys::UNFINISHED);
    tree.apply_batch(batch)?;
    tree.flush()?;
    Ok(())
}

/// The seal sequence after the last chunk's (0 if there is none). Sequences freed by
/// retention at the end of the range may be given again: nothing refers to them.
pub(super) fn next_chunk(tree: &sled::Tree) -> Result<u64, StorageError> {
    match tree
        .scan_prefix([keys::SEALED])
        .keys()
        .next_back()
        .transpose()?
    {
        Some(key) => keys::numbers::<1>(&key)
            .map(|[sequence]| sequence + 1)
            .ok_or_else(|| StorageError::corrupt("a chunk part's key of the wrong shape")),
        None => Ok(0),
    }
}

/// Reads every topic and checks that its stats agree with its index.
fn recover(tree: &sled::Tree) -> Result<Vec<Arc<TopicLog>>, StorageError> {
    // Every topic's stats in one pass over their key range: with 100,000 topics, a
    // lookup per topic took a sixth of start-up.
    let mut all_stats = HashMap::new();
    for item in tree.scan_prefix([keys::STATS]) {
        let (key, value) = item?;
        if let Some([id]) = keys::numbers(&key) {
            all_stats.insert(id, value);
        }
    }
    let mut topics = Vec::new();
    for item in tree.scan_prefix([keys::TOPIC]) {
        let (key, value) = item?;
        let meta = TopicMeta::decode(&value).map_err(|e| {
            StorageError::corrupt(format!(
                "topic record {:?}: {e}",
                String::from_utf8_lossy(&key[1..])
            ))
        })?;
        let parse = |name: &str| {
            TopicName::parse(name)
                .map_err(|e| StorageError::corrupt(format!("stored topic name {name:?}: {e}")))
        };
        let name = parse(&meta.name)?;
        let dead_letter = meta.dead_letter.as_deref().map(parse).transpose()?;
        let stats = all_stats
            .remove(&meta.id)
            .and_then(|v| LogStats::decode(&v))
            .ok_or_else(|| {
                StorageError::corrupt(format!("topic `{name}` has no readable stats"))
            })?;
        let last = tree
            .range(
                keys::with_offset(keys::INDEX, meta.id, 0)
                    ..=keys::with_offset(keys::INDEX, meta.id, u64::MAX),
            )
            .next_back()
            .transpose()?
            .map(|(k, v)| decode_index(&k, &v))
            .transpose()?;
        let indexed_next = last.map_or(stats.first, |(base, m)| base + u64::from(m.count));
        if indexed_next != stats.next || stats.first > stats.next {
            return Err(StorageError::corrupt(format!(
                "topic `{name}`: stats say offsets {}..{} but the index ends at {indexed_next}",
                stats.first, stats.next
            )));
        }
        topics.push(Arc::new(TopicLog::new(meta, name, dead_letter, stats)));
    }
    Ok(topics)
}
