//! The storage writer thread: group commit.
//!
//! The thread blocks for one command, then takes whatever else is queued (up to
//! [`MAX_GROUP`]), stages it all, applies it atomically, flushes once, and only then
//! hands the new chunks to their topics' logs (kept for readers at the head, see
//! `log.rs`), publishes the new stats, wakes readers and answers. Publishes that
//! arrive while a flush is running therefore share the next one.
//!
//! A group is applied as one `sled::Batch`, except when it holds only appends to one
//! topic, the usual case at low rates: then it is written key by key behind a marker
//! ([`Writer::write_appends`]), because a sled batch costs a log write and sync of its
//! own on top of the flush's.
//!
//! The one exception: a group holding nothing but appends to topics with batched
//! durability is answered as soon as it is applied, and the flusher thread
//! (`flusher.rs`) flushes it within the shortest interval among those topics.
//!
//! Clean-up commands (trim, purge) run alone between groups: they read the tree, which
//! must not hold half-staged appends of the same topic.
//!
//! A failed write halts the writer: sled 0.34 keeps the first IO error of a write (a
//! full disk, a file-size limit, a failing device) and fails every later write and
//! flush with it, even once the cause is gone; only reopening the data dir clears it.
//! So after one, every command is refused at once with [`StorageError::Halted`] (no
//! publish is ever acknowledged that is not on disk), while readers go on reading
//! what is durable from the same database: most reads succeed, but one that makes sled
//! finish a tree-node split the failed write left behind (sled does that while reading)
//! fails too. Reopening recovers: the server waits until the disk has room, then
//! stops and binds again (`server.rs`); reopening at once would fail while the disk
//! is still full (sled writes while opening) and leave nothing to read from.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use quiver_protocol::record;
use quiver_protocol::{Durability, NewRecord, PublishId, Receipt, Stage, TopicName};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, error, warn};

use super::flusher::Flusher;
use super::keys::{self, ChunkMeta, LogStats};
use super::log::{TailChunk, TopicMeta};
use super::read::{LogReader, decode_index};
use super::{
    Appended, Cleanup, Committed, GroupRecord, GroupWrite, PluginRecord, PublishLayout, StateWrite,
    StorageError, TopicLog, TopicRecords, TopicSettings,
};
use crate::util::now_ms;

/// Commands queued before senders wait.
pub(super) const QUEUE_DEPTH: usize = 4096;
/// The most commands one group commit takes.
const MAX_GROUP: usize = 4096;
/// The most chunks one trim or purge step removes, so appends never wait long.
const CLEANUP_STEP: usize = 256;

type Reply<T> = oneshot::Sender<Result<T, StorageError>>;

pub(super) enum Command {
    Append {
        appends: Vec<TopicRecords>,
        state: Vec<StateWrite>,
        /// The publishes the appends hold: usually one, several for a `PublishEach`.
        publishes: Vec<PublishLayout>,
        reply: Reply<Committed>,
    },
    CreateGroup {
        record: GroupRecord,
        lanes: Vec<(u64, u64)>,
        reply: Reply<()>,
    },
    DeleteGroup {
        name: String,
        id: u64,
        reply: Reply<()>,
    },
    GroupWrites {
        name: String,
        id: u64,
        writes: Vec<GroupWrite>,
    },
    PurgeDedup {
        before_ms: u64,
        reply: Reply<Cleanup>,
    },
    Create {
        name: TopicName,
        settings: TopicSettings,
        reply: Reply<Arc<TopicLog>>,
    },
    Delete {
        log: Arc<TopicLog>,
        reply: Reply<()>,
    },
    SetPipeline {
        log: Arc<TopicLog>,
        pipeline: Vec<Stage>,
        reply: Reply<()>,
    },
    PutPlugin {
        record: PluginRecord,
        wasm: Option<Bytes>,
        reply: Reply<()>,
    },
    RemovePlugin {
        name: String,
        reply: Reply<()>,
    },
    Trim {
        log: Arc<TopicLog>,
        first: u64,
        reply: Reply<Cleanup>,
    },
    Purge {
        id: u64,
        reply: Reply<Cleanup>,
    },
    /// Answered once everything queued before it is durable.
    Sync {
        reply: Reply<()>,
    },
    Shutdown {
        reply: oneshot::Sender<()>,
    },
}

pub(super) struct Writer {
    db: sled::Db,
    tree: sled::Tree,
    rx: mpsc::Receiver<Command>,
    chunk_bytes: usize,
    /// The largest value under one key (see [`keys::part_bytes`]).
    part_bytes: usize,
    flusher: Flusher,
    /// Why writes stopped, once one failed (see the module docs).
    halted: Option<String>,
    /// Tells [`Storage::halted`](super::Storage::halted) waiters that writes stopped.
    halted_signal: watch::Sender<bool>,
}

/// A chunk being filled during one group.
struct OpenChunk {
    base: u64,
    buf: BytesMut,
    meta: ChunkMeta,
}

/// One topic's state while a group is staged.
struct Staged {
    log: Arc<TopicLog>,
    stats: LogStats,
    chunk: Option<OpenChunk>,
    /// The chunks sealed in this group, for the log's tail once the commit counts.
    sealed: Vec<TailChunk>,
}

impl Staged {
    /// Seals the open chunk, if there is one.
    fn seal_open(&mut self, writes: &mut Vec<(sled::IVec, sled::IVec)>, part_bytes: usize) {
        if let Some(chunk) = self.chunk.take() {
            self.sealed
                .push(seal(writes, self.log.id(), chunk, part_bytes));
        }
    }
}

/// An answer held back until the group is durable: called with `Ok` after the flush
/// (it then also applies the command's in-memory effects), or with the error.
type Done = Box<dyn FnOnce(Result<(), &StorageError>) + Send>;

/// Answers `reply` with `value` once durable, after running `effect`.
fn answer<T: Send + 'static>(
    reply: Reply<T>,
    value: T,
    effect: impl FnOnce() + Send + 'static,
) -> Done {
    Box::new(move |result| {
        let result = result.map(|()| effect()).map_err(Clone::clone);
        let _ = reply.send(result.map(|()| value));
    })
}

/// Answers a refused command at once.
fn refuse<T>(reply: Reply<T>, e: StorageError) {
    let _ = reply.send(Err(e));
}

/// The writes of one group commit: applied in one sled batch (or key by key, see
/// [`Writer::write_appends`]), flushed once.
#[derive(Default)]
struct CommitGroup {
    /// Everything but the chunks, the dedup entry and the stats.
    batch: sled::Batch,
    /// Chunk parts and index entries, in the order sealed.
    chunks: Vec<(sled::IVec, sled::IVec)>,
    /// Something other than appends and their dedup entries is staged (`batch` holds
    /// it), so the group needs `apply_batch`.
    other: bool,
    staged: HashMap<u64, Staged>,
    created: HashSet<TopicName>,
    deleted: HashSet<u64>,
    /// Durable groups deleted in this commit (by id), which later writes must not
    /// bring back.
    deleted_groups: HashSet<u64>,
    /// Components written in this group, which a removal must not take away.
    components: HashSet<[u8; 32]>,
    /// Ids and receipts of the publishes in this commit that carried an id: stored
    /// as one entry (one sled key per commit, not per publish).
    dedup: Vec<(PublishId, Receipt)>,
    /// Writes staged that nobody waits for (group state): commit them anyway.
    touched: bool,
    /// Something staged must be on disk before it is answered: anything but an
    /// append to topics with batched durability.
    must_flush: bool,
    /// The shortest flush interval among the batched topics appended to.
    flush_within: Option<Duration>,
    done: Vec<Done>,
}

impl Writer {
    pub(super) fn new(
        db: sled::Db,
        tree: sled::Tree,
        rx: mpsc::Receiver<Command>,
        chunk_bytes: usize,
        part_bytes: usize,
        flusher: Flusher,
        halted_signal: watch::Sender<bool>,
    ) -> Self {
        Self {
            db,
            tree,
            rx,
            chunk_bytes: chunk_bytes.max(1),
            part_bytes: part_bytes.max(1),
            flusher,
            halted: None,
            halted_signal,
        }
    }

    /// Stops all writes after `cause` (a failed sled write), once.
    fn halt(&mut self, cause: &StorageError) {
        if self.halted.is_none() {
            error!(
                cause = %cause,
                "a storage write failed: refusing every write from now on, serving reads \
                 as sled allows, until the disk has room to reopen storage (fix the cause: \
                 free disk space?)"
            );
            self.halted = Some(cause.to_string());
            self.halted_signal.send_replace(true);
        }
    }

    /// Applies a clean-up batch (flushed by the next commit), halting on failure.
    fn apply(&mut self, batch: sled::Batch) -> Result<(), StorageError> {
        self.tree.apply_batch(batch).map_err(|e| {
            let e = StorageError::from(e);
            self.halt(&e);
            e
        })
    }

    /// Answers a command at once with [`StorageError::Halted`].
    fn refuse_halted(&self, command: Command, cause: &str) {
        let halted = || StorageError::Halted(cause.to_owned());
        match command {
            Command::Append { reply, .. } => refuse(reply, halted()),
            Command::CreateGroup { reply, .. }
            | Command::DeleteGroup { reply, .. }
            | Command::Delete { reply, .. }
            | Command::SetPipeline { reply, .. }
            | Command::PutPlugin { reply, .. }
            | Command::RemovePlugin { reply, .. }
            | Command::Sync { reply } => refuse(reply, halted()),
            Command::Create { reply, .. } => refuse(reply, halted()),
            Command::Trim { reply, .. }
            | Command::Purge { reply, .. }
            | Command::PurgeDedup { reply, .. } => refuse(reply, halted()),
            Command::GroupWrites { name, .. } => {
                debug!(group = %name, "group state not written: storage is halted");
            }
            Command::Shutdown { .. } => unreachable!("run() handles shutdown itself"),
        }
    }

    pub(super) fn run(mut self) {
        while let Some(first) = self.rx.blocking_recv() {
            let mut group = CommitGroup::default();
            let mut next = Some(first);
            let mut taken = 0;
            while let Some(command) = next.take() {
                taken += 1;
                match command {
                    Command::Shutdown { reply } => {
                        self.commit(group);
                        // What batched topics have not flushed yet (nothing can be,
                        // once halted).
                        if self.halted.is_none()
                            && let Err(e) = self.db.flush()
                        {
                            error!(cause = %e, "final flush failed");
                        }
                        debug!("storage writer stopped");
                        let _ = reply.send(());
                        return;
                    }
                    command if self.halted.is_some() => {
                        let cause = self.halted.clone().unwrap_or_default();
                        self.refuse_halted(command, &cause);
                    }
                    Command::Trim { log, first, reply } => {
                        self.commit(std::mem::take(&mut group));
                        let trimmed = self.trim(&log, first);
                        let _ = reply.send(trimmed);
                    }
                    Command::Purge { id, reply } => {
                        self.commit(std::mem::take(&mut group));
                        let purged = self.purge(id);
                        let _ = reply.send(purged);
                    }
                    Command::PurgeDedup { before_ms, reply } => {
                        self.commit(std::mem::take(&mut group));
                        let purged = self.purge_dedup(before_ms);
                        let _ = reply.send(purged);
                    }
                    staged => self.stage(&mut group, staged),
                }
                if taken < MAX_GROUP {
                    next = self.rx.try_recv().ok();
                }
            }
            self.commit(group);
        }
    }

    /// Stages one command into the group, or refuses it at once.
    fn stage(&self, group: &mut CommitGroup, command: Command) {
        let gone = |log: &TopicLog, group: &CommitGroup| {
            log.is_deleted() || group.deleted.contains(&log.id())
        };
        let not_found = |log: &TopicLog| StorageError::TopicNotFound(log.name().clone());
        if !matches!(command, Command::Append { .. }) {
            group.must_flush = true;
            group.other = true;
        }
        match command {
            Command::Append {
                appends,
                state,
                publishes,
                reply,
            } => {
                // All or nothing: refuse the whole command if any topic is gone.
                if let Some((log, _)) = appends.iter().find(|(log, _)| gone(log, group)) {
                    return refuse(reply, not_found(log));
                }
                for (log, _) in &appends {
                    match log.durability() {
                        Durability::Fsync => group.must_flush = true,
                        Durability::Batched { interval_ms } => {
                            let interval = Duration::from_millis(interval_ms.into());
                            group.flush_within =
                                Some(group.flush_within.map_or(interval, |d| d.min(interval)));
                        }
                    }
                }
                let appended: Vec<Appended> = appends
                    .into_iter()
                    .map(|(log, records)| self.stage_records(group, log, &records))
                    .collect();
                group.other |= !state.is_empty();
                for write in state {
                    let key = keys::state(&write.plugin, &write.key);
                    match write.value {
                        Some(value) => group.batch.insert(key, value),
                        None => group.batch.remove(key),
                    }
                }
                let receipts: Vec<Receipt> = publishes
                    .iter()
                    .map(|p| p.layout.receipt(&appended))
                    .collect();
                for (publish, receipt) in publishes.iter().zip(&receipts) {
                    if let Some(id) = publish.id {
                        group.dedup.push((id, receipt.clone()));
                    }
                }
                let committed = Committed { appended, receipts };
                group.done.push(answer(reply, committed, || {}));
            }
            Command::CreateGroup {
                record,
                lanes,
                reply,
            } => {
                let key = keys::group(&record.name);
                match self.tree.contains_key(&key) {
                    Ok(false) => {}
                    Ok(true) => return refuse(reply, StorageError::GroupExists(record.name)),
                    Err(e) => return refuse(reply, e.into()),
                }
                for (topic, cursor) in lanes {
                    group.batch.insert(
                        &keys::with_offset(keys::LANE, record.id, topic)[..],
                        &lane_value(cursor, 0, 0)[..],
                    );
                }
                // Invariant: a GroupRecord holds only strings, integers and options.
                let value = postcard::to_allocvec(&record).expect("group records always encode");
                group.batch.insert(key, value);
                group.done.push(answer(reply, (), || {}));
            }
            Command::DeleteGroup { name, id, reply } => {
                match self.stage_delete_group(group, &name, id) {
                    Ok(()) => group.done.push(answer(reply, (), || {})),
                    Err(e) => refuse(reply, e),
                }
            }
            Command::Sync { reply } => group.done.push(answer(reply, (), || {})),
            Command::GroupWrites { name, id, writes } => {
                if let Err(e) = self.stage_group_writes(group, &name, id, writes) {
                    error!(group = %name, cause = %e, "group state not written");
                }
            }
            Command::Create {
                name,
                settings,
                reply,
            } => match self.stage_create(group, name, settings) {
                Ok(log) => group.done.push(answer(reply, log, || {})),
                Err(e) => refuse(reply, e),
            },
            Command::Delete { log, reply } => {
                if gone(&log, group) {
                    return refuse(reply, not_found(&log));
                }
                group.deleted.insert(log.id());
                group.batch.remove(keys::topic(log.name().as_str()));
                group.batch.remove(&keys::with_id(keys::STATS, log.id()));
                group.batch.insert(
                    &keys::with_id(keys::PURGE, log.id()),
                    log.name().as_str().as_bytes(),
                );
                group.done.push(answer(reply, (), move || {
                    log.mark_deleted();
                    log.wake();
                }));
            }
            Command::SetPipeline {
                log,
                pipeline,
                reply,
            } => {
                if gone(&log, group) {
                    return refuse(reply, not_found(&log));
                }
                group.batch.insert(
                    keys::topic(log.name().as_str()),
                    encode_meta(&log.meta(pipeline.clone())),
                );
                group
                    .done
                    .push(answer(reply, (), move || log.set_pipeline(pipeline)));
            }
            Command::PutPlugin {
                record,
                wasm,
                reply,
            } => {
                if let (Some(wasm), Some(version)) = (wasm, record.current()) {
                    for (part, bytes) in (0u32..).zip(wasm.chunks(self.part_bytes)) {
                        group
                            .batch
                            .insert(&keys::wasm_part(&version.sha256, part)[..], bytes);
                    }
                    group.components.insert(version.sha256);
                }
                // Invariant: a PluginRecord holds only strings, integers and byte
                // arrays, which postcard always encodes.
                let encoded = postcard::to_allocvec(&record).expect("plugin records always encode");
                group.batch.insert(keys::plugin(&record.name), encoded);
                group.done.push(answer(reply, (), || {}));
            }
            Command::RemovePlugin { name, reply } => match self.stage_remove_plugin(group, &name) {
                Ok(()) => group.done.push(answer(reply, (), || {})),
                Err(e) => refuse(reply, e),
            },
            Command::Trim { .. }
            | Command::Purge { .. }
            | Command::PurgeDedup { .. }
            | Command::Shutdown { .. } => {
                unreachable!("run() handles clean-up and shutdown itself")
            }
        }
    }

    fn stage_records(
        &self,
        group: &mut CommitGroup,
        log: Arc<TopicLog>,
        records: &[NewRecord],
    ) -> Appended {
        let chunk_bytes = self.chunk_bytes;
        let staged = group.staged.entry(log.id()).or_insert_with(|| Staged {
            stats: log.stats(),
            log,
            chunk: None,
            sealed: Vec::new(),
        });
        let base_offset = staged.stats.next;
        let now = now_ms();
        for record in records {
            // A chunk is sealed before a record that would take it past `chunk_bytes`,
            // so that it fits one part (a record larger than that gets a chunk of its
            // own, in parts).
            if staged
                .chunk
                .as_ref()
                .is_some_and(|open| open.buf.len() + record::entry_len(record) > chunk_bytes)
            {
                staged.seal_open(&mut group.chunks, self.part_bytes);
            }
            let ts = now.max(staged.stats.last_ts);
            let chunk = staged.chunk.get_or_insert_with(|| OpenChunk {
                base: staged.stats.next,
                buf: BytesMut::with_capacity(chunk_bytes.min(64 * 1024)),
                meta: ChunkMeta {
                    first_ts: ts,
                    ..ChunkMeta::default()
                },
            });
            let len = record::append_entry(&mut chunk.buf, ts, record);
            chunk.meta.count += 1;
            chunk.meta.bytes += u32::try_from(len).unwrap_or(u32::MAX);
            chunk.meta.last_ts = ts;
            staged.stats.next += 1;
            staged.stats.bytes += len as u64;
            staged.stats.last_ts = ts;
            if chunk.buf.len() >= chunk_bytes {
                staged.seal_open(&mut group.chunks, self.part_bytes);
            }
        }
        Appended {
            base_offset,
            count: u32::try_from(records.len()).unwrap_or(u32::MAX),
        }
    }

    fn stage_create(
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

    /// Removes a plugin's record and state, and each of its components that no other
    /// plugin uses.
    fn stage_remove_plugin(&self, group: &mut CommitGroup, name: &str) -> Result<(), StorageError> {
        let Some(value) = self.tree.get(keys::plugin(name))? else {
            return Ok(());
        };
        let record: PluginRecord = postcard::from_bytes(&value)
            .map_err(|e| StorageError::corrupt(format!("plugin record `{name}`: {e}")))?;
        let mut in_use = group.components.clone();
        for other in self.tree.scan_prefix([keys::PLUGIN]).values() {
            let other: PluginRecord = postcard::from_bytes(&other?)
                .map_err(|e| StorageError::corrupt(format!("plugin record: {e}")))?;
            if other.name != name {
                in_use.extend(other.versions.iter().map(|v| v.sha256));
            }
        }
        for version in &record.versions {
            if !in_use.contains(&version.sha256) {
                for part in self.tree.scan_prefix(keys::wasm(&version.sha256)).keys() {
                    group.batch.remove(part?);
                }
            }
        }
        for key in self.tree.scan_prefix(keys::state_prefix(name)).keys() {
            group.batch.remove(key?);
        }
        group.batch.remove(keys::plugin(name));
        Ok(())
    }

    /// Whether `name` still names the durable group with this id (not deleted, not
    /// recreated).
    fn is_group(&self, group: &CommitGroup, name: &str, id: u64) -> Result<bool, StorageError> {
        if group.deleted_groups.contains(&id) {
            return Ok(false);
        }
        let Some(value) = self.tree.get(keys::group(name))? else {
            return Ok(false);
        };
        let record: GroupRecord = postcard::from_bytes(&value)
            .map_err(|e| StorageError::corrupt(format!("group record `{name}`: {e}")))?;
        Ok(record.id == id)
    }

    fn stage_delete_group(
        &self,
        group: &mut CommitGroup,
        name: &str,
        id: u64,
    ) -> Result<(), StorageError> {
        if !self.is_group(group, name, id)? {
            return Ok(());
        }
        group.deleted_groups.insert(id);
        group.batch.remove(keys::group(name));
        for prefix in [
            keys::with_id(keys::LANE, id),
            keys::with_id(keys::UNACKED, id),
        ] {
            for key in self.tree.scan_prefix(prefix).keys() {
                group.batch.remove(key?);
            }
        }
        group.touched = true;
        Ok(())
    }

    fn stage_group_writes(
        &self,
        group: &mut CommitGroup,
        name: &str,
        id: u64,
        writes: Vec<GroupWrite>,
    ) -> Result<(), StorageError> {
        // Writes racing a delete must not bring the group's keys back.
        if !self.is_group(group, name, id)? {
            return Ok(());
        }
        for write in writes {
            match write {
                GroupWrite::Lane {
                    topic,
                    cursor,
                    redelivered,
                    dead_lettered,
                } => group.batch.insert(
                    &keys::with_offset(keys::LANE, id, topic)[..],
                    &lane_value(cursor, redelivered, dead_lettered)[..],
                ),
                GroupWrite::Pending {
                    topic,
                    offset,
                    entry: Some((deliveries, not_before)),
                } => {
                    let mut value = [0u8; 12];
                    value[..4].copy_from_slice(&deliveries.to_be_bytes());
                    value[4..].copy_from_slice(&not_before.to_be_bytes());
                    group
                        .batch
                        .insert(&keys::unacked(id, topic, offset)[..], &value[..]);
                }
                GroupWrite::Pending {
                    topic,
                    offset,
                    entry: None,
                } => group.batch.remove(&keys::unacked(id, topic, offset)[..]),
                GroupWrite::DropLane { topic } => {
                    group
                        .batch
                        .remove(&keys::with_offset(keys::LANE, id, topic)[..]);
                    for key in self
                        .tree
                        .scan_prefix(keys::with_offset(keys::UNACKED, id, topic))
                        .keys()
                    {
                        group.batch.remove(key?);
                    }
                }
            }
        }
        group.touched = true;
        Ok(())
    }

    /// Removes up to [`CLEANUP_STEP`] deduplication entries older than `before_ms`.
    fn purge_dedup(&mut self, before_ms: u64) -> Result<Cleanup, StorageError> {
        let mut batch = sled::Batch::default();
        let lo = keys::dedup(0, 0);
        let hi = keys::dedup(before_ms, 0);
        let mut removed = 0;
        for key in self.tree.range(lo..hi).keys().take(CLEANUP_STEP) {
            batch.remove(key?);
            removed += 1;
        }
        self.apply(batch)?;
        Ok(Cleanup {
            removed,
            more: removed == CLEANUP_STEP,
        })
    }

    /// Applies and flushes a group (or schedules its flush, see the module docs), then
    /// publishes its effects and answers.
    fn commit(&mut self, mut group: CommitGroup) {
        if group.done.is_empty() && !group.touched {
            return;
        }
        for staged in group.staged.values_mut() {
            staged.seal_open(&mut group.chunks, self.part_bytes);
        }
        let dedup = self.dedup_entry(&group.dedup);
        let mut stats: Vec<([u8; 9], [u8; 32])> = group
            .staged
            .iter()
            .filter(|(id, _)| !group.deleted.contains(id))
            .map(|(id, staged)| (keys::with_id(keys::STATS, *id), staged.stats.encode()))
            .collect();
        // Key by key only when the stats show whether the commit counts: one topic,
        // whose `next` it moves.
        let unfinished = match (group.other, group.staged.values().next()) {
            (false, Some(staged)) if group.staged.len() == 1 => {
                let next = staged.log.stats().next;
                (staged.stats.next > next).then(|| keys::Unfinished {
                    topic: staged.log.id(),
                    next,
                    dedup: dedup.as_ref().map(|(key, _)| *key),
                })
            }
            _ => None,
        };
        let written = match unfinished {
            Some(unfinished) => self.write_appends(unfinished, group.chunks, dedup, stats.pop()),
            None => {
                let mut batch = group.batch;
                for (key, value) in group.chunks {
                    batch.insert(key, value);
                }
                if let Some((key, value)) = dedup {
                    batch.insert(&key[..], value);
                }
                for (key, value) in &stats {
                    batch.insert(&key[..], &value[..]);
                }
                self.tree.apply_batch(batch)
            }
        };
        let result = written
            .and_then(|()| {
                if group.must_flush {
                    self.db.flush()?;
                    self.flusher.flushed();
                } else if let Some(within) = group.flush_within {
                    self.flusher.schedule(within);
                }
                Ok(())
            })
            .map_err(StorageError::from);
        if let Err(e) = &result {
            // Nothing was acknowledged and no in-memory stats moved. The writes may be
            // applied in memory, though, so nothing more is written: see the module docs.
            error!(cause = %e, "group commit failed");
            self.halt(e);
        } else {
            for staged in group.staged.into_values() {
                staged.log.keep_in_tail(staged.sealed);
                staged.log.set_stats(staged.stats);
                staged.log.wake();
            }
        }
        for done in group.done {
            done(result.as_ref().map(|_| ()));
        }
    }

    /// The key and value remembering the ids and receipts of a commit's publishes.
    fn dedup_entry(&self, dedup: &[(PublishId, Receipt)]) -> Option<([u8; 17], Vec<u8>)> {
        if dedup.is_empty() {
            return None;
        }
        match self.db.generate_id() {
            // Invariant: receipts and ids hold only strings, integers and options.
            Ok(unique) => Some((
                keys::dedup(now_ms(), unique),
                postcard::to_allocvec(dedup).expect("receipts always encode"),
            )),
            Err(e) => {
                warn!(cause = %e, "publish ids not remembered; retries of these publishes may be stored twice");
                None
            }
        }
    }

    /// Writes one topic's appends key by key rather than as a batch: sled's
    /// `apply_batch` writes its batch marker to the log as a write of its own, so a
    /// commit that is then flushed costs two log writes and syncs instead of one
    /// (measured: 265 against 150 µs for a lone record). The keys go in an order where
    /// every prefix of the commit can be told apart and taken back ([`keys::Unfinished`]):
    /// the marker, the chunks (parts before their index entry), the dedup entry, the
    /// stats that make it all count, and the marker's removal.
    fn write_appends(
        &self,
        unfinished: keys::Unfinished,
        chunks: Vec<(sled::IVec, sled::IVec)>,
        dedup: Option<([u8; 17], Vec<u8>)>,
        stats: Option<([u8; 9], [u8; 32])>,
    ) -> sled::Result<()> {
        self.tree.insert(keys::UNFINISHED, unfinished.encode())?;
        for (key, value) in chunks {
            self.tree.insert(key, value)?;
        }
        if let Some((key, value)) = dedup {
            self.tree.insert(key, value)?;
        }
        if let Some((key, value)) = stats {
            self.tree.insert(key, &value[..])?;
        }
        self.tree.remove(keys::UNFINISHED)?;
        Ok(())
    }

    /// Moves a topic's first offset up to `first` and removes chunks below it.
    fn trim(&mut self, log: &TopicLog, first: u64) -> Result<Cleanup, StorageError> {
        if log.is_deleted() {
            return Ok(Cleanup {
                removed: 0,
                more: false,
            });
        }
        let mut stats = log.stats();
        let mut batch = sled::Batch::default();
        let first = first.min(stats.next);
        if first > stats.first {
            let freed = LogReader(&self.tree).bytes_between(log, stats.first, first)?;
            stats.bytes = stats.bytes.saturating_sub(freed);
            stats.first = first;
            batch.insert(&keys::with_id(keys::STATS, log.id()), &stats.encode());
        }
        let mut removed = 0;
        let mut more = false;
        let lo = keys::with_offset(keys::INDEX, log.id(), 0);
        let hi = keys::with_offset(keys::INDEX, log.id(), stats.first);
        for item in self.tree.range(lo..hi) {
            let (key, value) = item?;
            let (base, meta) = decode_index(&key, &value)?;
            if base + u64::from(meta.count) > stats.first {
                break;
            }
            if removed == CLEANUP_STEP {
                more = true;
                break;
            }
            remove_chunk(&self.tree, &mut batch, log.id(), base)?;
            removed += 1;
        }
        self.apply(batch)?;
        log.set_stats(stats);
        Ok(Cleanup { removed, more })
    }

    /// Removes up to [`CLEANUP_STEP`] chunks of a deleted topic; the purge marker goes
    /// with the last of them.
    fn purge(&mut self, id: u64) -> Result<Cleanup, StorageError> {
        let mut batch = sled::Batch::default();
        let lo = keys::with_offset(keys::INDEX, id, 0);
        let hi = keys::with_offset(keys::INDEX, id, u64::MAX);
        let mut removed = 0;
        for key in self.tree.range(lo..=hi).keys().take(CLEANUP_STEP) {
            let key = key?;
            let base = keys::offset_of(&key)
                .ok_or_else(|| StorageError::corrupt("index key of the wrong shape"))?;
            remove_chunk(&self.tree, &mut batch, id, base)?;
            removed += 1;
        }
        let more = removed == CLEANUP_STEP;
        if !more {
            batch.remove(&keys::with_id(keys::PURGE, id));
        }
        self.apply(batch)?;
        Ok(Cleanup { removed, more })
    }
}

fn lane_value(cursor: u64, redelivered: u64, dead_lettered: u64) -> [u8; 24] {
    let mut value = [0u8; 24];
    for (i, n) in [cursor, redelivered, dead_lettered].into_iter().enumerate() {
        value[i * 8..i * 8 + 8].copy_from_slice(&n.to_be_bytes());
    }
    value
}

fn encode_meta(meta: &TopicMeta) -> Vec<u8> {
    // Invariant: a TopicMeta holds only strings, integers and options, which postcard
    // always encodes.
    postcard::to_allocvec(meta).expect("topic metadata always encodes")
}

/// Stages a chunk's parts and then its index entry, with the checksum of its bytes;
/// returns the chunk whole.
fn seal(
    writes: &mut Vec<(sled::IVec, sled::IVec)>,
    id: u64,
    mut chunk: OpenChunk,
    part_bytes: usize,
) -> TailChunk {
    chunk.meta.crc = Some(crc32fast::hash(&chunk.buf));
    let footprint = chunk.buf.capacity();
    let bytes = chunk.buf.freeze();
    for (part, piece) in (0u32..).zip(bytes.chunks(part_bytes)) {
        writes.push((
            keys::chunk_part(id, chunk.base, part)[..].into(),
            piece.into(),
        ));
    }
    writes.push((
        keys::with_offset(keys::INDEX, id, chunk.base)[..].into(),
        chunk.meta.encode()[..].into(),
    ));
    TailChunk {
        base: chunk.base,
        count: chunk.meta.count,
        bytes,
        footprint,
    }
}

/// Queues the removal of a chunk: its index entry and every part.
fn remove_chunk(
    tree: &sled::Tree,
    batch: &mut sled::Batch,
    id: u64,
    base: u64,
) -> Result<(), StorageError> {
    batch.remove(&keys::with_offset(keys::INDEX, id, base));
    for part in tree
        .scan_prefix(keys::with_offset(keys::CHUNK, id, base))
        .keys()
    {
        batch.remove(part?);
    }
    Ok(())
}
