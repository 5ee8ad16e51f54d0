//! Durable topic logs, plugin components and plugin state in sled: the only module
//! that imports sled.
//!
//! A topic is a run of *chunks*, each a record batch (the protocol's format) keyed by
//! the offset of its first record and stored in parts of at most 16 KiB; `keys.rs` has
//! the layout and why. All writes go through one writer thread (`writer.rs`) that takes
//! whatever commands queued up during the last flush, applies them atomically (one sled
//! batch, or key by key for one topic's appends), flushes once (group commit) and only
//! then answers. Topics with batched
//! durability are the exception: their appends are answered once applied and flushed
//! within the topic's interval (`flusher.rs`). Readers read sled directly, bounded by
//! each topic's high-water mark.
//!
//! Invariants worth naming:
//! - an offset below a topic's `next` is durable (with batched durability: applied, and
//!   on disk within the topic's interval); nothing at or above it is ever served;
//! - offsets are dense: the writer assigns `next, next + 1, …` and a failed commit
//!   assigns nothing (the stats in memory change only after a successful flush);
//! - everything one command writes (chunks, index entries, stats, routed copies in other
//!   topics, plugin state) lands all or none: in one sled batch, or, when a group commit
//!   holds only appends to one topic, key by key between a marker and its removal
//!   ([`keys::Unfinished`]), which opening uses to take back a commit the log cut short
//!   (sled recovers a prefix of its log);
//! - timestamps never go backwards within a topic, so time lookups can bisect;
//! - a chunk is served only if its bytes match its index entry (length and CRC-32),
//!   so bytes that changed on disk are reported, never served (`read.rs`);
//! - after a failed write nothing more is written until a restart (`writer.rs`).
//!
//! Opening checks what can be checked before sled reads its log (`conf`), turns sled's
//! errors and panics on a damaged log into [`StorageError`]s, takes back a commit cut
//! short, and then checks that every topic's stats agree with its index.

mod flusher;
mod groups;
mod keys;
mod log;
mod plugins;
mod read;
mod receipts;
mod writer;

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::{Bytes, BytesMut};
use quiver_protocol::record::BatchError;
use quiver_protocol::{NewRecord, PublishId, Receipt, Stage, TopicName};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::warn;

use flusher::Flusher;
pub use groups::{GroupRecord, GroupWrite, StoredGroup, StoredLane};
pub use keys::LogStats;
use log::TopicMeta;
pub use log::{TopicLog, TopicSettings, Watch};
pub use plugins::{PluginRecord, PluginVersion, StateWrite};
use read::{LogReader, decode_index};
pub use receipts::{Committed, PublishLayout, ReceiptLayout};
use writer::{Command, Writer};

/// Why a storage operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StorageError {
    /// sled reported an error (IO, or corruption it detected).
    #[error("storage failure: {0}")]
    Sled(#[from] sled::Error),
    /// The data dir holds something Quiver did not write.
    #[error("data dir is corrupt: {0}")]
    Corrupt(String),
    /// A topic with that name exists already.
    #[error("topic `{0}` already exists")]
    TopicExists(TopicName),
    /// The topic was deleted.
    #[error("topic `{0}` does not exist")]
    TopicNotFound(TopicName),
    /// A group with that name exists already.
    #[error("group `{0}` already exists")]
    GroupExists(String),
    /// The storage writer has stopped (the broker is shutting down).
    #[error("storage is closed")]
    Closed,
    /// An earlier write failed (a full disk, an IO error), and sled refuses every
    /// write after one: nothing more is written until the storage is reopened.
    #[error(
        "storage accepts no writes since one failed ({0}); the broker reopens it by itself \
         once its disk has room again (or restart it after fixing the cause)"
    )]
    Halted(String),
}

impl StorageError {
    fn corrupt(what: impl Into<String>) -> Self {
        Self::Corrupt(what.into())
    }

    /// What an operator can do when this error keeps the broker from starting.
    pub fn remedy(&self) -> &'static str {
        use sled::Error as E;
        match self {
            Self::Corrupt(_) | Self::Sled(E::Corruption { .. } | E::ReportableBug(_)) => {
                "the data dir is damaged and Quiver does not repair it: restore it from a \
                 backup, or move it aside to start with an empty one"
            }
            Self::Sled(E::Unsupported(_)) => {
                "the data dir was written with other settings or by an incompatible version: \
                 open it with the version that wrote it, or restore it from a backup"
            }
            Self::Sled(E::Io(e)) if e.to_string().contains("lock") => {
                "another process (a second broker?) has the data dir open: stop it first"
            }
            Self::Sled(_) | Self::Halted(_) => {
                "check that the data dir is readable and writable and that its disk has \
                 space, then start again"
            }
            Self::TopicExists(_) | Self::TopicNotFound(_) | Self::GroupExists(_) | Self::Closed => {
                "start again; if it happens again, report it"
            }
        }
    }
}

/// An error sled returned while opening the data dir, in words an operator can act on.
fn open_error(e: sled::Error) -> StorageError {
    match e {
        sled::Error::Corruption { at, .. } => StorageError::corrupt(match at {
            Some(at) => format!("sled's log is damaged: a message at {at:?} fails its checksum"),
            None => "sled's log is damaged: its snapshot or a message fails its checksum, \
                     or the log ends before the snapshot says it does"
                .to_owned(),
        }),
        sled::Error::ReportableBug(what) => {
            StorageError::corrupt(format!("sled failed while recovering its log: {what}"))
        }
        other => StorageError::Sled(other),
    }
}

/// Runs `open` and turns a panic inside it into [`StorageError::Corrupt`]: sled 0.34
/// panics on some damaged logs (measured: a flipped byte in a log without a snapshot
/// can end in "tried to serialize Uninitialized"). The panic's message is kept for the
/// error instead of being printed; the broker then refuses to start.
fn catch_panic<T>(open: impl FnOnce() -> Result<T, StorageError>) -> Result<T, StorageError> {
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

impl From<BatchError> for StorageError {
    fn from(e: BatchError) -> Self {
        Self::Corrupt(format!("stored chunk unreadable: {e}"))
    }
}

/// The size a chunk is sealed at: one part, so that reads of small records are a
/// single sled value, served without copying.
pub const DEFAULT_CHUNK_BYTES: usize = 16 * 1024;

/// sled's log segment size for new data dirs (sled's default is 512 KiB).
const SEGMENT_BYTES: usize = 2 << 20;

/// The segment size an existing data dir was created with, from the `conf` file sled
/// keeps in it (`segment_size: N` on a line of its own); `None` for a data dir whose
/// log is still empty.
///
/// sled itself treats a missing or short `conf` as a new data dir and writes a fresh
/// one with the segment size asked for; if that is not the size the log was written
/// with, sled misreads the log. So a data dir whose log holds data but whose `conf` is
/// missing or unreadable is refused.
fn created_segment_size(path: &Path) -> Result<Option<usize>, StorageError> {
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

/// How to open storage.
#[derive(Debug, Clone)]
pub struct StorageConfig {
    /// The sled directory.
    pub path: PathBuf,
    /// sled's page cache, in bytes.
    pub cache_capacity: u64,
    /// A chunk holds at most this many bytes, unless one record alone is larger
    /// (normally [`DEFAULT_CHUNK_BYTES`], one part; tests use less to exercise many
    /// chunks).
    pub chunk_bytes: usize,
    /// Whether every flush ends with `fdatasync`, so that what it acknowledges
    /// survives a power cut. Always, except in the test that shows the power-cut
    /// harness catches its absence (`quiver serve --unsafe-skip-barrier`).
    pub barrier: bool,
}

/// Where a successful append put one topic's records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// The first record's offset.
    pub base_offset: u64,
    /// How many records were appended.
    pub count: u32,
}

/// Consecutive records read from a log.
#[derive(Debug, Clone)]
pub struct Slice {
    /// The first record's offset.
    pub base_offset: u64,
    /// How many records `batch` holds.
    pub count: u32,
    /// The records, in the protocol's batch format.
    pub batch: Bytes,
}

/// How a background clean-up step went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cleanup {
    /// What this step removed: chunks, or deduplication entries.
    pub removed: usize,
    /// True when more remains to be removed (call again).
    pub more: bool,
}

/// Records for one topic, in one atomic append.
pub type TopicRecords = (Arc<TopicLog>, Vec<NewRecord>);

/// An append queued for the next group commit; await [`PendingAppend::durable`].
#[derive(Debug)]
pub struct PendingAppend(oneshot::Receiver<Result<Committed, StorageError>>);

impl PendingAppend {
    /// Resolves once everything is flushed to disk (or the commit failed), with one
    /// [`Appended`] per topic and one receipt per publish, in the order given.
    pub async fn durable(self) -> Result<Committed, StorageError> {
        self.0.await.unwrap_or(Err(StorageError::Closed))
    }
}

/// Handle to the data dir. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Storage {
    db: sled::Db,
    tree: sled::Tree,
    commands: mpsc::Sender<Command>,
    writer: Arc<Mutex<Option<std::thread::JoinHandle<()>>>>,
    /// Turns true when a failed write halts the writer.
    halted: watch::Receiver<bool>,
}

impl Storage {
    /// Opens (or creates) the data dir, checks it, starts the writer thread, and
    /// returns every live topic.
    pub fn open(config: &StorageConfig) -> Result<(Self, Vec<Arc<TopicLog>>), StorageError> {
        // sled cannot change a data dir's segment size: keep what it was created with.
        let segment_bytes = created_segment_size(&config.path)?.unwrap_or(SEGMENT_BYTES);
        let (db, tree, topics) = catch_panic(|| {
            let db = sled::Config::new()
                .path(&config.path)
                .cache_capacity(config.cache_capacity)
                .flush_every_ms(None) // the writer flushes before every acknowledgement
                .sync_barrier(config.barrier)
                .segment_size(segment_bytes)
                .open()
                .map_err(open_error)?;
            let tree = db.open_tree("log").map_err(open_error)?;
            check_format(&tree, &config.path)?;
            take_back_unfinished(&tree)?;
            let topics = recover(&tree)?;
            Ok((db, tree, topics))
        })?;
        let (commands, rx) = mpsc::channel(writer::QUEUE_DEPTH);
        let flusher = Flusher::start({
            let db = db.clone();
            move || db.flush().map(drop)
        })
        .map_err(|e| StorageError::Sled(e.into()))?;
        let (halted_signal, halted) = watch::channel(false);
        let writer = Writer::new(
            db.clone(),
            tree.clone(),
            rx,
            config.chunk_bytes,
            keys::part_bytes(segment_bytes),
            flusher,
            halted_signal,
        );
        let handle = std::thread::Builder::new()
            .name("quiver-storage".into())
            .spawn(move || writer.run())
            .map_err(|e| StorageError::Sled(sled::Error::Io(e)))?;
        let storage = Self {
            db,
            tree,
            commands,
            writer: Arc::new(Mutex::new(Some(handle))),
            halted,
        };
        Ok((storage, topics))
    }

    /// Resolves once a failed write has halted all writes (see `writer`'s module
    /// docs); never, if that does not happen.
    pub async fn halted(&self) {
        let mut halted = self.halted.clone();
        if halted.wait_for(|halted| *halted).await.is_err() {
            // The writer is gone (storage closed) without halting.
            std::future::pending::<()>().await;
        }
    }

    /// Sends a command and waits for its answer.
    async fn ask<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<Result<T, StorageError>>) -> Command,
    ) -> Result<T, StorageError> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(command(reply))
            .await
            .map_err(|_| StorageError::Closed)?;
        rx.await.unwrap_or(Err(StorageError::Closed))
    }

    /// Creates a topic, durable when this returns.
    pub async fn create_topic(
        &self,
        name: TopicName,
        settings: impl Into<TopicSettings>,
    ) -> Result<Arc<TopicLog>, StorageError> {
        let settings = settings.into();
        self.ask(|reply| Command::Create {
            name,
            settings,
            reply,
        })
        .await
    }

    /// Deletes a topic: it disappears at once (durably); its records are removed in the
    /// background by [`Storage::purge`].
    pub async fn delete_topic(&self, log: Arc<TopicLog>) -> Result<(), StorageError> {
        self.ask(|reply| Command::Delete { log, reply }).await
    }

    /// Replaces a topic's ingress pipeline, durable when this returns.
    pub async fn set_pipeline(
        &self,
        log: Arc<TopicLog>,
        pipeline: Vec<Stage>,
    ) -> Result<(), StorageError> {
        self.ask(|reply| Command::SetPipeline {
            log,
            pipeline,
            reply,
        })
        .await
    }

    /// Queues records for one or more topics, and plugin state changes, for the next
    /// group commit: all of it lands together or none of it does. Appends queued one
    /// after the other get increasing offsets; the returned handle resolves once they
    /// are durable.
    ///
    /// The writer computes the receipt of each of `publishes` from the appends'
    /// results; those of the publishes with an id are stored in the same commit, so a
    /// retry of one can be answered after a restart.
    pub async fn submit_append(
        &self,
        appends: Vec<TopicRecords>,
        state: Vec<StateWrite>,
        publishes: Vec<PublishLayout>,
    ) -> Result<PendingAppend, StorageError> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command::Append {
                appends,
                state,
                publishes,
                reply,
            })
            .await
            .map_err(|_| StorageError::Closed)?;
        Ok(PendingAppend(rx))
    }

    /// Appends records to one topic and waits until they are durable.
    pub async fn append(
        &self,
        log: Arc<TopicLog>,
        records: Vec<NewRecord>,
    ) -> Result<Appended, StorageError> {
        let appended = self
            .submit_append(vec![(log, records)], Vec::new(), Vec::new())
            .await?
            .durable()
            .await?
            .appended;
        appended
            .into_iter()
            .next()
            .ok_or_else(|| StorageError::corrupt("an append answered without its offsets"))
    }

    /// Hides records below `first` and removes the chunks that then hold nothing
    /// visible (a bounded number per call: see [`Cleanup::more`]).
    pub async fn trim(&self, log: Arc<TopicLog>, first: u64) -> Result<Cleanup, StorageError> {
        self.ask(|reply| Command::Trim { log, first, reply }).await
    }

    /// Removes a bounded number of a deleted topic's chunks.
    pub async fn purge(&self, id: u64) -> Result<Cleanup, StorageError> {
        self.ask(|reply| Command::Purge { id, reply }).await
    }

    /// Stores a plugin record and, when given, a component (kept under its sha256),
    /// durable when this returns.
    pub async fn put_plugin(
        &self,
        record: PluginRecord,
        wasm: Option<Bytes>,
    ) -> Result<(), StorageError> {
        self.ask(|reply| Command::PutPlugin {
            record,
            wasm,
            reply,
        })
        .await
    }

    /// Removes a plugin: its record, its state, and its components unless another
    /// plugin uses the same bytes.
    pub async fn remove_plugin(&self, name: String) -> Result<(), StorageError> {
        self.ask(|reply| Command::RemovePlugin { name, reply })
            .await
    }

    /// Creates a group with a lane per topic (topic id, cursor), durable when this
    /// returns.
    pub async fn create_group(
        &self,
        record: GroupRecord,
        lanes: Vec<(u64, u64)>,
    ) -> Result<(), StorageError> {
        self.ask(|reply| Command::CreateGroup {
            record,
            lanes,
            reply,
        })
        .await
    }

    /// Deletes a group with its lanes and pending records, durable when this returns.
    pub async fn delete_group(&self, name: String, id: u64) -> Result<(), StorageError> {
        self.ask(|reply| Command::DeleteGroup { name, id, reply })
            .await
    }

    /// Queues changes to a group's state; they become durable with the next group
    /// commit. (A lost change means a record is delivered again: at least once.)
    pub async fn group_writes(
        &self,
        name: String,
        id: u64,
        writes: Vec<GroupWrite>,
    ) -> Result<(), StorageError> {
        if writes.is_empty() {
            return Ok(());
        }
        self.commands
            .send(Command::GroupWrites { name, id, writes })
            .await
            .map_err(|_| StorageError::Closed)
    }

    /// Resolves once every write queued before it (group state included) is durable.
    pub async fn sync(&self) -> Result<(), StorageError> {
        self.ask(|reply| Command::Sync { reply }).await
    }

    /// Forgets deduplication entries older than `before_ms` (a bounded number per
    /// call: see [`Cleanup::more`]).
    pub async fn purge_dedup(&self, before_ms: u64) -> Result<Cleanup, StorageError> {
        self.ask(|reply| Command::PurgeDedup { before_ms, reply })
            .await
    }

    /// Every group with its lanes.
    pub fn groups(&self) -> Result<Vec<StoredGroup>, StorageError> {
        let corrupt =
            |what: &str| StorageError::corrupt(format!("group {what} of the wrong shape"));
        let mut groups = Vec::new();
        for value in self.tree.scan_prefix([keys::GROUP]).values() {
            let record: GroupRecord = postcard::from_bytes(&value?)
                .map_err(|e| StorageError::corrupt(format!("group record: {e}")))?;
            let mut lanes = Vec::new();
            for item in self.tree.scan_prefix(keys::with_id(keys::LANE, record.id)) {
                let (key, value) = item?;
                let [_, topic] = keys::numbers::<2>(&key).ok_or_else(|| corrupt("lane key"))?;
                let n = |i: usize| {
                    value
                        .get(i * 8..i * 8 + 8)
                        .and_then(|b| b.try_into().ok())
                        .map(u64::from_be_bytes)
                        .ok_or_else(|| corrupt("lane"))
                };
                let mut lane = StoredLane {
                    topic,
                    cursor: n(0)?,
                    redelivered: n(1)?,
                    dead_lettered: n(2)?,
                    pending: Vec::new(),
                };
                for item in
                    self.tree
                        .scan_prefix(keys::with_offset(keys::UNACKED, record.id, topic))
                {
                    let (key, value) = item?;
                    let [_, _, offset] =
                        keys::numbers::<3>(&key).ok_or_else(|| corrupt("pending key"))?;
                    if value.len() != 12 {
                        return Err(corrupt("pending record"));
                    }
                    let deliveries =
                        u32::from_be_bytes(value[..4].try_into().map_err(|_| corrupt("pending"))?);
                    let not_before =
                        u64::from_be_bytes(value[4..].try_into().map_err(|_| corrupt("pending"))?);
                    lane.pending.push((offset, deliveries, not_before));
                }
                lanes.push(lane);
            }
            groups.push(StoredGroup { record, lanes });
        }
        Ok(groups)
    }

    /// The newest deduplication entries written at or after `since_ms`, oldest first:
    /// the id, when, and the receipt. Reads whole commits, newest first, until at least
    /// `max` ids are in hand, so a restart after a burst of millions of publishes reads
    /// only what the deduplicator would keep.
    pub fn dedup_entries(
        &self,
        since_ms: u64,
        max: usize,
    ) -> Result<Vec<(PublishId, u64, Receipt)>, StorageError> {
        let from = keys::dedup(since_ms, 0);
        let to = keys::dedup(u64::MAX, u64::MAX);
        let mut commits = Vec::new();
        let mut ids = 0;
        for item in self.tree.range(from..=to).rev() {
            if ids >= max {
                break;
            }
            let (key, value) = item?;
            let [at, _] = keys::numbers::<2>(&key)
                .ok_or_else(|| StorageError::corrupt("dedup key of the wrong shape"))?;
            let commit: Vec<(PublishId, Receipt)> = postcard::from_bytes(&value)
                .map_err(|e| StorageError::corrupt(format!("dedup entry: {e}")))?;
            ids += commit.len();
            commits.push((at, commit));
        }
        Ok(commits
            .into_iter()
            .rev()
            .flat_map(|(at, commit)| commit.into_iter().map(move |(id, r)| (id, at, r)))
            .collect())
    }

    /// Commits what is queued, flushes, and stops the writer thread. Later calls fail
    /// with [`StorageError::Closed`].
    pub async fn close(&self) {
        let (reply, rx) = oneshot::channel();
        if self
            .commands
            .send(Command::Shutdown { reply })
            .await
            .is_ok()
        {
            let _ = rx.await;
        }
        let handle = self
            .writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(handle) = handle {
            // The writer has answered the shutdown; joining only waits for it to return.
            let _ = tokio::task::spawn_blocking(move || handle.join()).await;
        }
    }

    /// Reads up to `max_records` records (and about `max_bytes`, at least one record)
    /// starting at `from`, or at the oldest record if `from` has been trimmed.
    /// `None` when no durable record exists at or after `from`.
    pub fn read(
        &self,
        log: &TopicLog,
        from: u64,
        max_records: u32,
        max_bytes: usize,
    ) -> Result<Option<Slice>, StorageError> {
        LogReader(&self.tree).read(log, from, max_records, max_bytes)
    }

    /// The first offset whose record was appended at or after `timestamp` (ms), or the
    /// topic's `next` offset if there is none yet.
    pub fn offset_for_timestamp(
        &self,
        log: &TopicLog,
        timestamp: u64,
    ) -> Result<u64, StorageError> {
        LogReader(&self.tree).offset_for_timestamp(log, timestamp)
    }

    /// The offset retention wants the topic to start at now, if that is past its first.
    pub fn retention_point(
        &self,
        log: &TopicLog,
        now_ms: u64,
    ) -> Result<Option<u64>, StorageError> {
        LogReader(&self.tree).retention_point(log, now_ms)
    }

    /// Ids of deleted topics whose records are still to be removed.
    pub fn pending_purges(&self) -> Result<Vec<u64>, StorageError> {
        self.tree
            .scan_prefix([keys::PURGE])
            .keys()
            .map(|key| {
                key?.get(1..9)
                    .and_then(|b| b.try_into().ok())
                    .map(u64::from_be_bytes)
                    .ok_or_else(|| StorageError::corrupt("purge marker of the wrong shape"))
            })
            .collect()
    }

    /// Every deployed plugin.
    pub fn plugins(&self) -> Result<Vec<PluginRecord>, StorageError> {
        self.tree
            .scan_prefix([keys::PLUGIN])
            .values()
            .map(|value| {
                postcard::from_bytes(&value?)
                    .map_err(|e| StorageError::corrupt(format!("plugin record: {e}")))
            })
            .collect()
    }

    /// A stored component by its sha256.
    pub fn plugin_wasm(&self, sha256: &[u8; 32]) -> Result<Option<Bytes>, StorageError> {
        let mut wasm = BytesMut::new();
        for part in self.tree.scan_prefix(keys::wasm(sha256)).values() {
            wasm.extend_from_slice(&part?);
        }
        Ok((!wasm.is_empty()).then(|| wasm.freeze()))
    }

    /// A plugin's durable state under `key`.
    pub fn state_get(&self, plugin: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.tree.get(keys::state(plugin, key))?.map(|v| v.to_vec()))
    }

    /// A number never handed out before in this data dir (for group ids).
    pub fn generate_id(&self) -> Result<u64, StorageError> {
        Ok(self.db.generate_id()?)
    }

    /// Bytes the data dir takes on disk.
    pub fn size_on_disk(&self) -> Result<u64, StorageError> {
        Ok(self.db.size_on_disk()?)
    }
}

/// The file, in sled's directory, that says its log has held Quiver's data: written
/// once the layout stamp is on disk. A log that then yields nothing at all (cut short,
/// or damaged near its start) is refused rather than taken for a new data dir.
const WRITTEN_MARKER: &str = "quiver-written";

/// Stamps a new data dir with the layout version, upgrades the stamp of a data dir of
/// the layout before checksums (its entries read as they are), and refuses any other.
/// An upgraded stamp is made durable by the first commit, before any entry of the new
/// layout.
fn check_format(tree: &sled::Tree, path: &Path) -> Result<(), StorageError> {
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
            mark()
        }
        Some(Ok(keys::FORMAT)) => mark(),
        Some(Ok(keys::FORMAT_V1..keys::FORMAT)) => {
            stamp()?;
            mark()
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
/// (see [`keys::Unfinished`]): if its topic's stats were not written, its chunks and its
/// dedup entry go. Nothing of it was acknowledged: that waits for the flush after it.
fn take_back_unfinished(tree: &sled::Tree) -> Result<(), StorageError> {
    let Some(value) = tree.get(keys::UNFINISHED)? else {
        return Ok(());
    };
    let unfinished = keys::Unfinished::decode(&value)
        .ok_or_else(|| StorageError::corrupt("the unfinished-commit marker is unreadable"))?;
    let stats = tree
        .get(keys::with_id(keys::STATS, unfinished.topic))?
        .and_then(|v| LogStats::decode(&v));
    let mut batch = sled::Batch::default();
    if stats.is_some_and(|stats| stats.next == unfinished.next) {
        let id = unfinished.topic;
        for prefix in [keys::INDEX, keys::CHUNK] {
            let topic = keys::with_id(prefix, id);
            for key in tree
                .range(keys::with_offset(prefix, id, unfinished.next)..)
                .keys()
            {
                let key = key?;
                if !key.starts_with(&topic) {
                    break;
                }
                batch.remove(key);
            }
        }
        if let Some(dedup) = unfinished.dedup {
            batch.remove(&dedup[..]);
        }
        warn!(
            topic = id,
            from = unfinished.next,
            "took back a commit the log cut short (it was never acknowledged)"
        );
    }
    batch.remove(keys::UNFINISHED);
    tree.apply_batch(batch)?;
    tree.flush()?;
    Ok(())
}

/// Reads every topic and checks that its stats agree with its index.
fn recover(tree: &sled::Tree) -> Result<Vec<Arc<TopicLog>>, StorageError> {
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
        let stats = tree
            .get(keys::with_id(keys::STATS, meta.id))?
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

#[cfg(test)]
mod tests;
