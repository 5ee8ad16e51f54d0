//! Durable topic logs, plugin components and plugin state in sled: the only module
//! that imports sled.
//!
//! A topic is a run of *chunks*, each a record batch (the protocol's format) keyed by
//! the offset of its first record and stored in parts of at most 16 KiB; `keys.rs` has
//! the layout and why. A commit seals only the chunks it fills: the rest of what it
//! appended, to every topic, is one journal entry (`journal.rs`), and a topic's records
//! past its last chunk are its unsealed pieces, held in memory for readers. All writes
//! go through one writer thread (`writer/`) that takes
//! whatever commands queued up during the last flush, applies them atomically (key by
//! key, or one sled batch for rarer commands), flushes once with a barrier
//! (`fdatasync`; group commit) and only then answers. Topics with batched durability
//! are the exception: their appends are answered once applied and flushed within the
//! topic's interval (`flusher.rs`). Readers read sled directly, bounded by each topic's
//! high-water mark.
//!
//! Where things are: this module is the [`Storage`] handle and its API; `error.rs`
//! why an operation failed; `open.rs` opening and recovery; `writer/` the commit loop
//! and what each command stages; `journal.rs` the unsealed records; `log.rs` a topic's
//! live side; `read.rs` reads and
//! retention math; `groups.rs`, `plugins.rs` and `receipts.rs` what is stored for
//! groups, plugins and publishes (and loading it).
//!
//! Invariants worth naming:
//! - an offset below a topic's `next` is durable (with batched durability: applied, and
//!   on disk within the topic's interval); nothing at or above it is ever served;
//! - offsets are dense: the writer assigns `next, next + 1, …` and a failed commit
//!   assigns nothing (the stats in memory change only after a successful flush);
//! - everything one command writes (chunks, journal entry, index entries, stats, routed
//!   copies in other topics, plugin state, link marks, MQTT state) lands all or none: key
//!   by key between a marker and its removal ([`keys::Unfinished`]), which opening uses
//!   to take back a commit the log cut short (sled recovers a prefix of its log), or, when
//!   the group holds a rarer command (a topic, group, plugin or link created, changed or
//!   removed), in one sled batch. Group state is the exception:
//!   it follows the marker's removal as one key, a delta applied to the group's keys
//!   later, so that a crash keeps a prefix of a group's commits, each whole
//!   (`writer/groups.rs`);
//! - timestamps never go backwards within a topic, so time lookups can bisect;
//! - a chunk is served only if its bytes match its index entry (length and CRC-32),
//!   so bytes that changed on disk are reported, never served (`read.rs`);
//! - after a failed write nothing more is written until a restart (`writer/`).

mod error;
mod flusher;
mod groups;
mod journal;
mod keys;
mod links;
mod log;
mod metrics;
mod open;
mod plugins;
mod read;
mod receipts;
mod writer;

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::{Bytes, BytesMut};
use quiver_protocol::{Durability, NewRecord, Retention, TopicName};
use tokio::sync::{mpsc, oneshot, watch};

pub use error::StorageError;
use flusher::Flusher;
pub use groups::{GroupPurge, GroupRecord, GroupWrite, StoredGroup, StoredLane};
pub use journal::DEFAULT_JOURNAL_BYTES;
pub use keys::LogStats;
pub use links::{LinkCursor, LinkRecord, Mark, MarkKey, MarkWrite, Marks, Provenance};
pub use log::{AttachedStage, TopicLog, TopicSettings, Waiter, Watch};
pub use metrics::StorageMetrics;
pub use plugins::{PluginRecord, PluginVersion, StateWrite};
pub use read::ChunkCache;
use read::LogReader;
pub use receipts::{Committed, PublishLayout, ReceiptLayout};
pub use writer::DEFAULT_GROUP_DELTAS;
use writer::{Command, Writer};

/// The size a chunk is sealed at: one part, so that reads of small records are a
/// single sled value, served without copying.
pub const DEFAULT_CHUNK_BYTES: usize = 16 * 1024;

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
    /// The journal's budget (normally [`DEFAULT_JOURNAL_BYTES`]): beyond it, the
    /// topics holding the oldest unsealed records are sealed.
    pub journal_bytes: usize,
    /// Commits whose group state is written as deltas before the deltas are applied
    /// to the group's keys (normally [`DEFAULT_GROUP_DELTAS`]; tests use 1, to apply
    /// at every commit, or more than they write, to read everything from deltas).
    pub group_deltas: u64,
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

/// One entry of the MQTT listener's state: its key (within its kind) and value.
pub type MqttEntry = (Vec<u8>, Vec<u8>);

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
    /// Why writes stopped, once a failed write halts the writer.
    halted: watch::Receiver<Option<String>>,
    /// Timings the writer observes, for `/metrics`.
    metrics: StorageMetrics,
    /// This broker's id, made with its data dir.
    broker_id: u128,
    /// The marks of origins forwarded here, as committed.
    marks: Marks,
}

impl Storage {
    /// Opens (or creates) the data dir, checks it, starts the writer thread, and
    /// returns every live topic.
    pub fn open(config: &StorageConfig) -> Result<(Self, Vec<Arc<TopicLog>>), StorageError> {
        let open::Opened {
            db,
            tree,
            topics,
            segment_bytes,
            journal,
            next_chunk,
        } = open::open(config)?;
        let broker_id = links::broker_id(&tree)?;
        let marks = links::load_marks(&tree)?;
        let ids = groups::group_ids(&tree)?;
        let group_deltas = groups::read_deltas(&tree, |id| ids.contains(&id))?;
        let (commands, rx) = mpsc::channel(writer::QUEUE_DEPTH);
        let flusher = Flusher::start({
            let db = db.clone();
            move || db.flush().map(drop)
        })
        .map_err(|e| StorageError::Sled(e.into()))?;
        let (halted_signal, halted) = watch::channel(None);
        let metrics = StorageMetrics::default();
        let writer = Writer::new(
            db.clone(),
            tree.clone(),
            rx,
            config.chunk_bytes,
            keys::part_bytes(segment_bytes),
            flusher,
            halted_signal,
            marks.clone(),
            journal,
            next_chunk,
            (group_deltas, config.group_deltas),
            metrics.clone(),
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
            metrics,
            broker_id,
            marks,
        };
        Ok((storage, topics))
    }

    /// Resolves once a failed write has halted all writes (see `writer`'s module
    /// docs); never, if that does not happen.
    pub async fn halted(&self) {
        let mut halted = self.halted.clone();
        if halted.wait_for(Option::is_some).await.is_err() {
            // The writer is gone (storage closed) without halting.
            std::future::pending::<()>().await;
        }
    }

    /// Why writes are refused, once a failed write has halted them.
    pub fn halted_cause(&self) -> Option<String> {
        self.halted.borrow().clone()
    }

    /// Storage's timings (commit sizes, flush times).
    pub fn metrics(&self) -> &StorageMetrics {
        &self.metrics
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
        self.create_topic_then(name, settings, |_| {}).await
    }

    /// Creates a topic, durable when this returns; `then` runs once it is durable,
    /// before the answer, whether or not the caller still waits for it.
    pub async fn create_topic_then(
        &self,
        name: TopicName,
        settings: impl Into<TopicSettings>,
        then: impl FnOnce(&Arc<TopicLog>) + Send + 'static,
    ) -> Result<Arc<TopicLog>, StorageError> {
        let settings = settings.into();
        self.ask(|reply| Command::Create {
            name,
            settings,
            then: Box::new(then),
            reply,
        })
        .await
    }

    /// Deletes a topic: it disappears at once (durably); its records are removed in the
    /// background by [`Storage::purge`].
    pub async fn delete_topic(&self, log: Arc<TopicLog>) -> Result<(), StorageError> {
        self.delete_topic_then(log, |_| {}).await
    }

    /// Deletes a topic as [`Storage::delete_topic`] does; `then` runs once the deletion
    /// is durable, before the answer, whether or not the caller still waits for it.
    pub async fn delete_topic_then(
        &self,
        log: Arc<TopicLog>,
        then: impl FnOnce(&Arc<TopicLog>) + Send + 'static,
    ) -> Result<(), StorageError> {
        self.ask(|reply| Command::Delete {
            log,
            then: Box::new(then),
            reply,
        })
        .await
    }

    /// Replaces a topic's ingress pipeline, durable when this returns.
    pub async fn set_pipeline(
        &self,
        log: Arc<TopicLog>,
        pipeline: Vec<AttachedStage>,
    ) -> Result<(), StorageError> {
        self.ask(|reply| Command::SetPipeline {
            log,
            pipeline,
            reply,
        })
        .await
    }

    /// Replaces a topic's retention and durability, durable when this returns.
    pub async fn set_settings(
        &self,
        log: Arc<TopicLog>,
        retention: Retention,
        durability: Durability,
    ) -> Result<(), StorageError> {
        self.ask(|reply| Command::SetSettings {
            log,
            retention,
            durability,
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
    ///
    /// With a `mark` (records forwarded over a link), the commit also moves that mark,
    /// and the first append's records keep their original timestamps; the append is
    /// refused with [`StorageError::OutOfOrder`] unless the committed mark is where
    /// the batch continues from.
    pub async fn submit_append(
        &self,
        appends: Vec<TopicRecords>,
        state: Vec<StateWrite>,
        publishes: Vec<PublishLayout>,
        mark: Option<MarkWrite>,
    ) -> Result<PendingAppend, StorageError> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command::Append {
                appends,
                state,
                publishes,
                mark,
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
            .submit_append(vec![(log, records)], Vec::new(), Vec::new(), None)
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

    /// Trims several topics, each to its point: every first offset moves at once, a
    /// bounded number of chunks is removed in all (see [`Storage::trim`]); returns the
    /// topics with chunks left to remove. The records a trim point lies among must
    /// first be sealed into a chunk: the topics that need it are sealed together, in
    /// one commit, where trimming them one by one would pay a flush each.
    pub async fn trim_all(
        &self,
        points: Vec<(Arc<TopicLog>, u64)>,
    ) -> Result<Vec<(Arc<TopicLog>, u64)>, StorageError> {
        self.ask(|reply| Command::TrimAll { points, reply }).await
    }

    /// Removes a bounded number of deleted topics' chunks (of `ids`, in order), and
    /// the purge marker of each topic left without any.
    pub async fn purge(&self, ids: Vec<u64>) -> Result<Cleanup, StorageError> {
        self.ask(|reply| Command::Purge { ids, reply }).await
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

    /// Removes a plugin: its record, and its components unless another plugin uses
    /// the same bytes. Its state is left for [`Storage::purge_state`] (a marker
    /// remembers it across restarts: [`Storage::pending_state_purges`]).
    pub async fn remove_plugin(&self, name: String) -> Result<(), StorageError> {
        self.ask(|reply| Command::RemovePlugin { name, reply })
            .await
    }

    /// Removes a bounded number of a removed plugin's state keys.
    pub async fn purge_state(&self, plugin: String) -> Result<Cleanup, StorageError> {
        self.ask(|reply| Command::PurgeState { plugin, reply })
            .await
    }

    /// Removes all that is left of a removed plugin's state, a bounded step at a time
    /// (nothing if there is none); returns the keys removed.
    pub async fn purge_all_state(&self, plugin: &str) -> Result<usize, StorageError> {
        let mut removed = 0;
        loop {
            let step = self.purge_state(plugin.to_owned()).await?;
            removed += step.removed;
            if !step.more {
                return Ok(removed);
            }
        }
    }

    /// Removed plugins whose state is still to be purged.
    pub fn pending_state_purges(&self) -> Result<Vec<String>, StorageError> {
        self.markers(keys::STATE_PURGE, "state purge", |key| {
            String::from_utf8(key[1..].to_vec()).ok()
        })
    }

    /// Every marker of a clean-up still to do (keys of `kind`), each as `decode`
    /// reads it from its key.
    fn markers<T>(
        &self,
        kind: u8,
        what: &str,
        decode: impl Fn(&[u8]) -> Option<T>,
    ) -> Result<Vec<T>, StorageError> {
        self.tree
            .scan_prefix([kind])
            .keys()
            .map(|key| {
                decode(&key?).ok_or_else(|| {
                    StorageError::corrupt(format!("{what} marker of the wrong shape"))
                })
            })
            .collect()
    }

    /// Creates a group with a lane per topic (topic id, cursor), durable when this
    /// returns.
    pub async fn create_group(
        &self,
        record: GroupRecord,
        lanes: Vec<(u64, u64)>,
    ) -> Result<(), StorageError> {
        self.create_group_then(record, lanes, || {}).await
    }

    /// Creates a group as [`Storage::create_group`] does; `then` runs once it is
    /// durable, before the answer, whether or not the caller still waits for it.
    pub async fn create_group_then(
        &self,
        record: GroupRecord,
        lanes: Vec<(u64, u64)>,
        then: impl FnOnce() + Send + 'static,
    ) -> Result<(), StorageError> {
        self.ask(|reply| Command::CreateGroup {
            record,
            lanes,
            then: Box::new(then),
            reply,
        })
        .await
    }

    /// Deletes a group, durable when this returns. Its lanes and pending records are
    /// left for [`Storage::purge_group`] (a marker remembers them across restarts:
    /// [`Storage::pending_group_purges`]).
    pub async fn delete_group(&self, name: String, id: u64) -> Result<(), StorageError> {
        self.delete_group_then(name, id, || {}).await
    }

    /// Deletes a group as [`Storage::delete_group`] does; `then` runs once the
    /// deletion is durable, before the answer, whether or not the caller still waits.
    pub async fn delete_group_then(
        &self,
        name: String,
        id: u64,
        then: impl FnOnce() + Send + 'static,
    ) -> Result<(), StorageError> {
        self.ask(|reply| Command::DeleteGroup {
            name,
            id,
            then: Box::new(then),
            reply,
        })
        .await
    }

    /// Removes a bounded number of a deleted group's keys, or of a dropped lane's.
    pub async fn purge_group(&self, purge: GroupPurge) -> Result<Cleanup, StorageError> {
        self.ask(|reply| Command::PurgeGroup { purge, reply }).await
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

    /// Stores a link (new, or changed), durable when this returns; `create` refuses a
    /// name in use.
    pub async fn put_link(&self, record: LinkRecord, create: bool) -> Result<(), StorageError> {
        self.ask(|reply| Command::PutLink {
            record,
            create,
            reply,
        })
        .await
    }

    /// Forgets a link and its cursors, durable when this returns.
    pub async fn delete_link(&self, name: String) -> Result<(), StorageError> {
        self.ask(|reply| Command::DeleteLink { name, reply }).await
    }

    /// Queues a link's cursors (source topic id, cursor); durable with the next group
    /// commit. A lost cursor only means records are forwarded again, which the
    /// destination's mark turns away.
    pub async fn link_cursors(
        &self,
        link: String,
        cursors: Vec<(u64, LinkCursor)>,
    ) -> Result<(), StorageError> {
        if cursors.is_empty() {
            return Ok(());
        }
        self.commands
            .send(Command::LinkCursors { link, cursors })
            .await
            .map_err(|_| StorageError::Closed)
    }

    /// Sets (`Some`) or removes (`None`) entries of the MQTT listener's state of one
    /// `kind`, all in one commit, durable when this returns.
    pub async fn put_mqtt(
        &self,
        kind: u8,
        entries: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    ) -> Result<(), StorageError> {
        let entries = entries
            .into_iter()
            .map(|(key, value)| (keys::mqtt(kind, &key), value))
            .collect();
        self.ask(|reply| Command::PutMqtt { entries, reply }).await
    }

    /// Every entry of the MQTT listener's state of one `kind`: key and value.
    pub fn mqtt_entries(&self, kind: u8) -> Result<Vec<MqttEntry>, StorageError> {
        let prefix = keys::mqtt(kind, &[]);
        self.tree
            .scan_prefix(&prefix)
            .map(|item| {
                let (key, value) = item?;
                Ok((key[prefix.len()..].to_vec(), value.to_vec()))
            })
            .collect()
    }

    /// Every declared link.
    pub fn links(&self) -> Result<Vec<LinkRecord>, StorageError> {
        self.tree
            .scan_prefix([keys::LINK])
            .values()
            .map(|value| LinkRecord::decode(&value?))
            .collect()
    }

    /// A link's cursors, by source topic id.
    pub fn link_cursors_of(&self, link: &str) -> Result<Vec<(u64, LinkCursor)>, StorageError> {
        let prefix = links::cursor_prefix(link);
        self.tree
            .scan_prefix(&prefix)
            .map(|item| {
                let (key, value) = item?;
                let id = key
                    .get(prefix.len()..)
                    .and_then(|b| b.try_into().ok())
                    .map(u64::from_be_bytes)
                    .ok_or_else(|| StorageError::corrupt("link cursor key of the wrong shape"))?;
                let cursor = postcard::from_bytes(&value)
                    .map_err(|e| StorageError::corrupt(format!("link cursor: {e}")))?;
                Ok((id, cursor))
            })
            .collect()
    }

    /// This broker's id: random, made with the data dir, kept for its life.
    pub fn broker_id(&self) -> u128 {
        self.broker_id
    }

    /// The marks of origins forwarded to this broker, as committed.
    pub fn marks(&self) -> &Marks {
        &self.marks
    }

    /// Resolves once every write queued before it (group state included) is durable.
    pub async fn sync(&self) -> Result<(), StorageError> {
        self.ask(|reply| Command::Sync { reply }).await
    }

    /// Forgets the deduplication entries a restart would not read
    /// ([`Storage::dedup_entries`]): those older than `before_ms`, and those older
    /// than the newest `keep` ids (a bounded number per call: see [`Cleanup::more`]).
    pub async fn purge_dedup(&self, before_ms: u64, keep: usize) -> Result<Cleanup, StorageError> {
        self.ask(|reply| Command::PurgeDedup {
            before_ms,
            keep,
            reply,
        })
        .await
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
        LogReader(&self.tree).read(log, from, max_records, max_bytes, None)
    }

    /// [`read`](Self::read) for a reader that comes back to the same chunk: the last
    /// chunk taken from sled is kept in `cache` (see [`ChunkCache`]).
    pub fn read_cached(
        &self,
        log: &TopicLog,
        from: u64,
        max_records: u32,
        max_bytes: usize,
        cache: &mut ChunkCache,
    ) -> Result<Option<Slice>, StorageError> {
        LogReader(&self.tree).read(log, from, max_records, max_bytes, Some(cache))
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
        self.markers(keys::PURGE, "purge", |key| {
            keys::numbers::<1>(key).map(|[id]| id)
        })
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

#[cfg(test)]
pub(crate) mod tests;
