//! The storage writer thread: group commit.
//!
//! The thread blocks for one command, then takes whatever else is queued (up to
//! [`MAX_GROUP`]), stages it all into one `sled::Batch`, applies it, flushes once, and
//! only then publishes the new stats, wakes readers and answers. Publishes that arrive
//! while a flush is running therefore share the next one.
//!
//! Clean-up commands (trim, purge) run alone between groups: they read the tree, which
//! must not hold half-staged appends of the same topic.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use bytes::BytesMut;
use quiver_protocol::record;
use quiver_protocol::{NewRecord, Retention, TopicName};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, error};

use super::keys::{self, ChunkMeta, LogStats};
use super::read::{LogReader, decode_index};
use super::{Appended, Cleanup, StorageError, TopicLog, TopicMeta, now_ms};

/// Commands queued before senders wait.
pub(super) const QUEUE_DEPTH: usize = 4096;
/// The most commands one group commit takes.
const MAX_GROUP: usize = 4096;
/// The most chunks one trim or purge step removes, so appends never wait long.
const CLEANUP_STEP: usize = 256;

type Reply<T> = oneshot::Sender<Result<T, StorageError>>;

pub(super) enum Command {
    Append {
        log: Arc<TopicLog>,
        records: Vec<NewRecord>,
        reply: Reply<Appended>,
    },
    Create {
        name: TopicName,
        retention: Retention,
        reply: Reply<Arc<TopicLog>>,
    },
    Delete {
        log: Arc<TopicLog>,
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
    Shutdown {
        reply: oneshot::Sender<()>,
    },
}

pub(super) struct Writer {
    db: sled::Db,
    tree: sled::Tree,
    rx: mpsc::Receiver<Command>,
    chunk_bytes: usize,
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
}

/// An answer held back until the group is durable.
enum Done {
    Append(Reply<Appended>, Appended),
    Create(Reply<Arc<TopicLog>>, Arc<TopicLog>),
    Delete(Reply<()>, Arc<TopicLog>),
}

#[derive(Default)]
struct Group {
    batch: sled::Batch,
    staged: HashMap<u64, Staged>,
    created: HashSet<TopicName>,
    deleted: HashSet<u64>,
    done: Vec<Done>,
}

impl Writer {
    pub(super) fn new(
        db: sled::Db,
        tree: sled::Tree,
        rx: mpsc::Receiver<Command>,
        chunk_bytes: usize,
    ) -> Self {
        Self {
            db,
            tree,
            rx,
            chunk_bytes: chunk_bytes.max(1),
        }
    }

    pub(super) fn run(mut self) {
        while let Some(first) = self.rx.blocking_recv() {
            let mut group = Group::default();
            let mut next = Some(first);
            let mut taken = 0;
            while let Some(command) = next.take() {
                taken += 1;
                match command {
                    Command::Shutdown { reply } => {
                        self.commit(group);
                        debug!("storage writer stopped");
                        let _ = reply.send(());
                        return;
                    }
                    Command::Trim { log, first, reply } => {
                        self.commit(std::mem::take(&mut group));
                        let _ = reply.send(self.trim(&log, first));
                    }
                    Command::Purge { id, reply } => {
                        self.commit(std::mem::take(&mut group));
                        let _ = reply.send(self.purge(id));
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

    fn stage(&self, group: &mut Group, command: Command) {
        match command {
            Command::Append {
                log,
                records,
                reply,
            } => {
                if log.is_deleted() || group.deleted.contains(&log.id) {
                    let _ = reply.send(Err(StorageError::TopicNotFound(log.name.clone())));
                    return;
                }
                let appended = self.stage_append(group, log, &records);
                group.done.push(Done::Append(reply, appended));
            }
            Command::Create {
                name,
                retention,
                reply,
            } => match self.stage_create(group, name, retention) {
                Ok(log) => group.done.push(Done::Create(reply, log)),
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            },
            Command::Delete { log, reply } => {
                if log.is_deleted() || !group.deleted.insert(log.id) {
                    let _ = reply.send(Err(StorageError::TopicNotFound(log.name.clone())));
                    return;
                }
                group.batch.remove(keys::topic(log.name.as_str()));
                group.batch.remove(&keys::with_id(keys::STATS, log.id));
                group.batch.insert(
                    &keys::with_id(keys::PURGE, log.id),
                    log.name.as_str().as_bytes(),
                );
                group.done.push(Done::Delete(reply, log));
            }
            Command::Trim { .. } | Command::Purge { .. } | Command::Shutdown { .. } => {
                unreachable!("run() handles clean-up and shutdown itself")
            }
        }
    }

    fn stage_append(
        &self,
        group: &mut Group,
        log: Arc<TopicLog>,
        records: &[NewRecord],
    ) -> Appended {
        let chunk_bytes = self.chunk_bytes;
        let staged = group.staged.entry(log.id).or_insert_with(|| Staged {
            stats: log.stats(),
            log,
            chunk: None,
        });
        let base_offset = staged.stats.next;
        let now = now_ms();
        for record in records {
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
                let full = staged.chunk.take().expect("the chunk was just filled");
                seal(&mut group.batch, staged.log.id, full);
            }
        }
        Appended {
            base_offset,
            count: u32::try_from(records.len()).unwrap_or(u32::MAX),
        }
    }

    fn stage_create(
        &self,
        group: &mut Group,
        name: TopicName,
        retention: Retention,
    ) -> Result<Arc<TopicLog>, StorageError> {
        let key = keys::topic(name.as_str());
        if group.created.contains(&name) || self.tree.contains_key(&key)? {
            return Err(StorageError::TopicExists(name));
        }
        let meta = TopicMeta {
            id: self.db.generate_id()?,
            name: name.to_string(),
            retention,
            created_ms: now_ms(),
        };
        let encoded = postcard::to_allocvec(&meta)
            .map_err(|e| StorageError::corrupt(format!("encoding topic metadata: {e}")))?;
        let stats = LogStats::default();
        group.batch.insert(key, encoded);
        group
            .batch
            .insert(&keys::with_id(keys::STATS, meta.id), &stats.encode());
        group.created.insert(name.clone());
        Ok(Arc::new(TopicLog::new(meta, name, stats)))
    }

    /// Applies and flushes a group, then publishes its effects and answers.
    fn commit(&self, mut group: Group) {
        if group.done.is_empty() {
            return;
        }
        for (id, staged) in &mut group.staged {
            if let Some(chunk) = staged.chunk.take() {
                seal(&mut group.batch, *id, chunk);
            }
            if !group.deleted.contains(id) {
                group
                    .batch
                    .insert(&keys::with_id(keys::STATS, *id), &staged.stats.encode());
            }
        }
        let result = self
            .tree
            .apply_batch(group.batch)
            .and_then(|()| self.db.flush().map(drop));
        match result {
            Ok(()) => {
                for staged in group.staged.values() {
                    staged.log.set_stats(staged.stats);
                    staged.log.wake();
                }
                for done in group.done {
                    match done {
                        Done::Append(reply, appended) => {
                            let _ = reply.send(Ok(appended));
                        }
                        Done::Create(reply, log) => {
                            let _ = reply.send(Ok(log));
                        }
                        Done::Delete(reply, log) => {
                            log.mark_deleted();
                            log.wake();
                            let _ = reply.send(Ok(()));
                        }
                    }
                }
            }
            Err(e) => {
                // Nothing was acknowledged and no in-memory stats moved, so the offsets
                // staged here will be assigned again by the next successful commit.
                error!(cause = %e, "group commit failed");
                let fail = || StorageError::Sled(e.clone());
                for done in group.done {
                    match done {
                        Done::Append(reply, _) => drop(reply.send(Err(fail()))),
                        Done::Create(reply, _) => drop(reply.send(Err(fail()))),
                        Done::Delete(reply, _) => drop(reply.send(Err(fail()))),
                    }
                }
            }
        }
    }

    /// Moves a topic's first offset up to `first` and removes chunks below it.
    fn trim(&self, log: &TopicLog, first: u64) -> Result<Cleanup, StorageError> {
        if log.is_deleted() {
            return Ok(Cleanup {
                chunks_removed: 0,
                more: false,
            });
        }
        let mut stats = log.stats();
        let mut batch = sled::Batch::default();
        let first = first.min(stats.next);
        if first > stats.first {
            let freed = LogReader(&self.tree).bytes_between(log.id, stats.first, first)?;
            stats.bytes = stats.bytes.saturating_sub(freed);
            stats.first = first;
            batch.insert(&keys::with_id(keys::STATS, log.id), &stats.encode());
        }
        let mut chunks_removed = 0;
        let mut more = false;
        let lo = keys::with_offset(keys::INDEX, log.id, 0);
        let hi = keys::with_offset(keys::INDEX, log.id, stats.first);
        for item in self.tree.range(lo..hi) {
            let (key, value) = item?;
            let (base, meta) = decode_index(&key, &value)?;
            if base + u64::from(meta.count) > stats.first {
                break;
            }
            if chunks_removed == CLEANUP_STEP {
                more = true;
                break;
            }
            remove_chunk(&self.tree, &mut batch, log.id, base)?;
            chunks_removed += 1;
        }
        self.tree.apply_batch(batch)?;
        log.set_stats(stats);
        Ok(Cleanup {
            chunks_removed,
            more,
        })
    }

    /// Removes up to [`CLEANUP_STEP`] chunks of a deleted topic; the purge marker goes
    /// with the last of them.
    fn purge(&self, id: u64) -> Result<Cleanup, StorageError> {
        let mut batch = sled::Batch::default();
        let lo = keys::with_offset(keys::INDEX, id, 0);
        let hi = keys::with_offset(keys::INDEX, id, u64::MAX);
        let mut chunks_removed = 0;
        for key in self.tree.range(lo..=hi).keys().take(CLEANUP_STEP) {
            let key = key?;
            let base = keys::offset_of(&key)
                .ok_or_else(|| StorageError::corrupt("index key of the wrong shape"))?;
            remove_chunk(&self.tree, &mut batch, id, base)?;
            chunks_removed += 1;
        }
        let more = chunks_removed == CLEANUP_STEP;
        if !more {
            batch.remove(&keys::with_id(keys::PURGE, id));
        }
        self.tree.apply_batch(batch)?;
        Ok(Cleanup {
            chunks_removed,
            more,
        })
    }
}

fn seal(batch: &mut sled::Batch, id: u64, chunk: OpenChunk) {
    for (part, bytes) in (0u32..).zip(chunk.buf.chunks(keys::PART_BYTES)) {
        batch.insert(&keys::chunk_part(id, chunk.base, part), bytes);
    }
    batch.insert(
        &keys::with_offset(keys::INDEX, id, chunk.base),
        &chunk.meta.encode(),
    );
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
