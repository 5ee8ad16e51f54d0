//! A topic's log as the rest of the broker sees it: identity, settings, live stats,
//! a way to be woken when records arrive, its newest chunks for those woken, and the
//! records it holds in the journal, not yet sealed into a chunk of their own.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use quiver_protocol::{Durability, OnError, Retention, Stage, StageLimits, TopicName};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use super::keys::LogStats;

/// What is persisted of a topic besides its records (`t` + name).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct TopicMeta {
    pub(super) id: u64,
    pub(super) name: String,
    pub(super) retention: Retention,
    pub(super) created_ms: u64,
    pub(super) dead_letter: Option<String>,
    pub(super) pipeline: Vec<Stage>,
    /// Added after the first layout: records written before it lack the field (see
    /// [`TopicMeta::decode`]).
    pub(super) durability: Durability,
    /// The sandbox each stage asked for, by plugin, where it asked for one. Last, so
    /// that a record of an earlier layout never reads as this one: it ends before.
    pub(super) stage_limits: Vec<(String, StageLimits)>,
}

/// A stage of a topic's ingress pipeline with the sandbox it asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachedStage {
    /// The plugin and how to run it.
    pub stage: Stage,
    /// Its memory cap and call deadline, where not the defaults.
    pub limits: StageLimits,
}

impl From<Stage> for AttachedStage {
    fn from(stage: Stage) -> Self {
        Self {
            stage,
            limits: StageLimits::default(),
        }
    }
}

/// A [`TopicMeta`] as written before stages had limits of their own.
#[derive(Deserialize)]
struct TopicMetaWithoutLimits {
    id: u64,
    name: String,
    retention: Retention,
    created_ms: u64,
    dead_letter: Option<String>,
    pipeline: Vec<Stage>,
    durability: Durability,
}

/// A [`TopicMeta`] as written before stages recorded who attached them.
#[derive(Deserialize)]
struct TopicMetaWithoutAttachers {
    id: u64,
    name: String,
    retention: Retention,
    created_ms: u64,
    dead_letter: Option<String>,
    pipeline: Vec<StageWithoutAttacher>,
    durability: Durability,
}

/// A [`TopicMeta`] as written before topics had a durability setting.
#[derive(Deserialize)]
struct TopicMetaWithoutDurability {
    id: u64,
    name: String,
    retention: Retention,
    created_ms: u64,
    dead_letter: Option<String>,
    pipeline: Vec<StageWithoutAttacher>,
}

/// A [`Stage`] as written before it recorded who attached it.
#[derive(Deserialize)]
struct StageWithoutAttacher {
    plugin: String,
    params: Vec<(String, String)>,
    on_error: OnError,
}

impl From<StageWithoutAttacher> for Stage {
    fn from(old: StageWithoutAttacher) -> Self {
        Self {
            plugin: old.plugin,
            params: old.params,
            on_error: old.on_error,
            attached_by: None,
        }
    }
}

impl From<TopicMetaWithoutDurability> for TopicMetaWithoutAttachers {
    fn from(old: TopicMetaWithoutDurability) -> Self {
        Self {
            id: old.id,
            name: old.name,
            retention: old.retention,
            created_ms: old.created_ms,
            dead_letter: old.dead_letter,
            pipeline: old.pipeline,
            durability: Durability::Fsync,
        }
    }
}

impl From<TopicMetaWithoutAttachers> for TopicMetaWithoutLimits {
    fn from(old: TopicMetaWithoutAttachers) -> Self {
        Self {
            id: old.id,
            name: old.name,
            retention: old.retention,
            created_ms: old.created_ms,
            dead_letter: old.dead_letter,
            pipeline: old.pipeline.into_iter().map(Stage::from).collect(),
            durability: old.durability,
        }
    }
}

impl From<TopicMetaWithoutLimits> for TopicMeta {
    fn from(old: TopicMetaWithoutLimits) -> Self {
        Self {
            id: old.id,
            name: old.name,
            retention: old.retention,
            created_ms: old.created_ms,
            dead_letter: old.dead_letter,
            pipeline: old.pipeline,
            durability: old.durability,
            stage_limits: Vec::new(),
        }
    }
}

impl TopicMeta {
    /// Decodes a stored topic record, of any of its layouts, newest first.
    pub(super) fn decode(bytes: &[u8]) -> Result<Self, postcard::Error> {
        postcard::from_bytes(bytes).or_else(|e| {
            let old = postcard::from_bytes::<TopicMetaWithoutLimits>(bytes)
                .or_else(|_| {
                    postcard::from_bytes::<TopicMetaWithoutAttachers>(bytes)
                        .or_else(|_| {
                            postcard::from_bytes::<TopicMetaWithoutDurability>(bytes)
                                .map(TopicMetaWithoutAttachers::from)
                        })
                        .map(TopicMetaWithoutLimits::from)
                })
                .map_err(|_| e)?;
            Ok(old.into())
        })
    }

    /// The pipeline with each stage's limits.
    pub(super) fn attached(&self) -> Vec<AttachedStage> {
        self.pipeline
            .iter()
            .map(|stage| AttachedStage {
                stage: stage.clone(),
                limits: self
                    .stage_limits
                    .iter()
                    .find(|(plugin, _)| *plugin == stage.plugin)
                    .map(|(_, limits)| *limits)
                    .unwrap_or_default(),
            })
            .collect()
    }

    /// Sets the pipeline and each stage's limits.
    pub(super) fn set_attached(&mut self, pipeline: &[AttachedStage]) {
        self.pipeline = pipeline.iter().map(|a| a.stage.clone()).collect();
        self.stage_limits = pipeline
            .iter()
            .filter(|a| !a.limits.is_default())
            .map(|a| (a.stage.plugin.clone(), a.limits))
            .collect();
    }
}

/// Settings chosen when a topic is created.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TopicSettings {
    /// Retention limits.
    pub retention: Retention,
    /// Where records go that its plugins fail on; `None` for the default name.
    pub dead_letter: Option<TopicName>,
    /// When its appends are answered.
    pub durability: Durability,
}

impl From<Retention> for TopicSettings {
    fn from(retention: Retention) -> Self {
        Self {
            retention,
            ..Self::default()
        }
    }
}

/// At most this much memory holds a topic's newest chunks, and only while
/// someone reads the topic: a subscriber at the head of the log takes the chunk the
/// writer just committed from here instead of from sled (an index lookup, a scan for
/// the chunk's parts and a checksum, once per subscriber). Sixteen full chunks, about
/// one producer window of 256-byte records: under `quiver bench fanout` more than 99 %
/// of reads were served from here, against about half with a quarter of this. As much
/// as one subscription's write buffer, once per topic whatever its subscriber count.
const TAIL_BYTES: usize = 256 * 1024;

/// A committed chunk, whole: records `base..base + count`.
#[derive(Debug)]
pub(super) struct TailChunk {
    pub(super) base: u64,
    pub(super) count: u32,
    pub(super) bytes: Bytes,
    /// The memory `bytes` holds on to: its buffer's capacity, which a commit of a few
    /// records leaves mostly empty.
    pub(super) footprint: usize,
}

/// Records committed through the journal (`journal.rs`) and not yet sealed into a
/// chunk: one piece per commit that appended to the topic, contiguous, from the end of
/// its sealed chunks to its `next`. Sled holds them only inside journal entries, so
/// readers always take them from here.
#[derive(Debug, Clone)]
pub(super) struct Piece {
    pub(super) base: u64,
    pub(super) count: u32,
    pub(super) first_ts: u64,
    pub(super) last_ts: u64,
    /// The records, in the batch format.
    pub(super) bytes: Bytes,
}

impl Piece {
    pub(super) fn end(&self) -> u64 {
        self.base + u64::from(self.count)
    }
}

/// A topic's unsealed pieces.
#[derive(Debug, Default)]
pub(super) struct Unsealed {
    pub(super) pieces: VecDeque<Piece>,
    /// The sum of their lengths.
    pub(super) bytes: u64,
    /// The journal entry holding the oldest piece.
    pub(super) first_sequence: u64,
}

/// The newest committed chunks of a watched topic, oldest first, contiguous.
#[derive(Debug, Default)]
struct Tail {
    chunks: VecDeque<TailChunk>,
    /// The sum of their footprints.
    footprint: usize,
}

impl Tail {
    fn clear(&mut self) {
        self.chunks.clear();
        self.footprint = 0;
    }
}

/// A topic's log.
#[derive(Debug)]
pub struct TopicLog {
    id: u64,
    name: TopicName,
    /// Retention and durability: changed by `topic alter` (by the writer, once the
    /// change is durable).
    settings: Mutex<(Retention, Durability)>,
    created_ms: u64,
    dead_letter: Option<TopicName>,
    pipeline: Mutex<Vec<AttachedStage>>,
    stats: Mutex<LogStats>,
    /// Bytes of records appended since the broker started (`/metrics`).
    bytes_in: AtomicU64,
    deleted: AtomicBool,
    waiters: Mutex<HashMap<u64, Arc<dyn Waiter>>>,
    /// Locked before `waiters` when both are.
    tail: Mutex<Tail>,
    /// Changed only by the storage writer (and by opening, before it starts).
    unsealed: Mutex<Unsealed>,
}

impl TopicLog {
    pub(super) fn new(
        meta: TopicMeta,
        name: TopicName,
        dead_letter: Option<TopicName>,
        stats: LogStats,
    ) -> Self {
        Self {
            id: meta.id,
            name,
            settings: Mutex::new((meta.retention, meta.durability)),
            created_ms: meta.created_ms,
            dead_letter,
            pipeline: Mutex::new(meta.attached()),
            stats: Mutex::new(stats),
            bytes_in: AtomicU64::new(0),
            deleted: AtomicBool::new(false),
            waiters: Mutex::default(),
            tail: Mutex::default(),
            unsealed: Mutex::default(),
        }
    }

    /// What is persisted for this log, with `pipeline` as its pipeline.
    pub(super) fn meta(&self, pipeline: &[AttachedStage]) -> TopicMeta {
        let (retention, durability) = self.settings();
        let mut meta = TopicMeta {
            id: self.id,
            name: self.name.to_string(),
            retention,
            created_ms: self.created_ms,
            dead_letter: self.dead_letter.as_ref().map(ToString::to_string),
            pipeline: Vec::new(),
            durability,
            stage_limits: Vec::new(),
        };
        meta.set_attached(pipeline);
        meta
    }

    /// The topic's storage id: unique for the life of the data dir, never reused.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The topic's name.
    pub fn name(&self) -> &TopicName {
        &self.name
    }

    /// The topic's retention limits.
    pub fn retention(&self) -> Retention {
        self.settings().0
    }

    /// When the topic's appends are answered.
    pub fn durability(&self) -> Durability {
        self.settings().1
    }

    fn settings(&self) -> (Retention, Durability) {
        *self.settings.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// When the topic was created (ms since the Unix epoch).
    pub fn created_ms(&self) -> u64 {
        self.created_ms
    }

    /// The dead-letter topic chosen at creation, if one was.
    pub fn dead_letter(&self) -> Option<&TopicName> {
        self.dead_letter.as_ref()
    }

    /// The ingress pipeline as last made durable.
    pub fn pipeline(&self) -> Vec<AttachedStage> {
        self.pipeline
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The ingress pipeline's stages, without their limits.
    pub fn stages(&self) -> Vec<Stage> {
        self.pipeline
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|a| a.stage.clone())
            .collect()
    }

    /// The durable state of the log right now.
    pub fn stats(&self) -> LogStats {
        *self.stats.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// True once the topic has been deleted.
    pub fn is_deleted(&self) -> bool {
        self.deleted.load(Ordering::Acquire)
    }

    /// Wakes `waiter` whenever records become durable or the topic is deleted, until
    /// the returned guard is dropped.
    pub fn watch(self: &Arc<Self>, waiter: Arc<impl Waiter + 'static>) -> Watch {
        static NEXT_WATCH: AtomicU64 = AtomicU64::new(0);
        let key = NEXT_WATCH.fetch_add(1, Ordering::Relaxed);
        self.waiters
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key, waiter);
        Watch {
            log: Arc::clone(self),
            key,
        }
    }

    /// How many subscriptions and group members are reading the topic now.
    pub fn watchers(&self) -> usize {
        self.waiters
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    pub(super) fn set_stats(&self, stats: LogStats) {
        *self.stats.lock().unwrap_or_else(PoisonError::into_inner) = stats;
    }

    /// Bytes of records appended since the broker started, as stored (entry headers
    /// included); a commit counts them as it makes them durable.
    pub fn bytes_in(&self) -> u64 {
        self.bytes_in.load(Ordering::Relaxed)
    }

    /// Moves the stats to `stats`, a commit's: its appends count as bytes in.
    pub(super) fn commit_stats(&self, stats: LogStats) {
        let mut current = self.stats.lock().unwrap_or_else(PoisonError::into_inner);
        let appended = stats.bytes.saturating_sub(current.bytes);
        self.bytes_in.fetch_add(appended, Ordering::Relaxed);
        *current = stats;
    }

    pub(super) fn set_settings(&self, retention: Retention, durability: Durability) {
        *self.settings.lock().unwrap_or_else(PoisonError::into_inner) = (retention, durability);
    }

    pub(super) fn set_pipeline(&self, pipeline: Vec<AttachedStage>) {
        *self.pipeline.lock().unwrap_or_else(PoisonError::into_inner) = pipeline;
    }

    pub(super) fn mark_deleted(&self) {
        self.deleted.store(true, Ordering::Release);
        self.lock_tail().clear();
        *self.lock_unsealed() = Unsealed::default();
    }

    pub(super) fn lock_unsealed(&self) -> std::sync::MutexGuard<'_, Unsealed> {
        self.unsealed.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The stats as sled holds them (`s` + id): up to the end of the sealed chunks,
    /// without the unsealed pieces.
    pub(super) fn sealed_stats(&self) -> LogStats {
        let stats = self.stats();
        let unsealed = self.lock_unsealed();
        match unsealed.pieces.front() {
            Some(first) => LogStats {
                next: first.base,
                bytes: stats.bytes.saturating_sub(unsealed.bytes),
                ..stats
            },
            None => stats,
        }
    }

    /// Moves the unsealed pieces with a commit: none are left if it sealed the
    /// topic's chunk, and its own piece (in journal entry `sequence`) follows. Returns
    /// the entry of the oldest piece now held.
    pub(super) fn commit_pieces(
        &self,
        sealed: bool,
        piece: Option<Piece>,
        sequence: u64,
    ) -> Option<u64> {
        let mut unsealed = self.lock_unsealed();
        if sealed {
            *unsealed = Unsealed::default();
        }
        if let Some(piece) = piece {
            if unsealed.pieces.is_empty() {
                unsealed.first_sequence = sequence;
            }
            unsealed.bytes += piece.bytes.len() as u64;
            unsealed.pieces.push_back(piece);
        }
        (!unsealed.pieces.is_empty()).then_some(unsealed.first_sequence)
    }

    /// The unsealed piece holding `offset`.
    pub(super) fn unsealed_piece(&self, offset: u64) -> Option<Piece> {
        let unsealed = self.lock_unsealed();
        let pieces = &unsealed.pieces;
        let at = pieces.partition_point(|p| p.end() <= offset);
        pieces.get(at).filter(|p| p.base <= offset).cloned()
    }

    /// The chunk or piece holding `offset` that memory holds: an unsealed piece, or
    /// one of the newest chunks kept for readers.
    pub(super) fn in_memory(&self, offset: u64) -> Option<(u64, Bytes)> {
        self.unsealed_piece(offset)
            .map(|piece| (piece.base, piece.bytes))
            .or_else(|| self.tail_chunk(offset))
    }

    fn lock_tail(&self) -> std::sync::MutexGuard<'_, Tail> {
        self.tail.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Keeps `chunks`, just committed and following what the tail holds, for the
    /// topic's readers; drops the oldest beyond [`TAIL_BYTES`]. Nothing is kept while
    /// nobody watches the topic.
    pub(super) fn keep_in_tail(&self, chunks: Vec<TailChunk>) {
        if chunks.is_empty() {
            return;
        }
        let mut tail = self.lock_tail();
        if self.watchers() == 0 || self.is_deleted() {
            tail.clear();
            return;
        }
        for chunk in chunks {
            let follows = tail
                .chunks
                .back()
                .is_none_or(|last| last.base + u64::from(last.count) == chunk.base);
            if !follows || chunk.footprint > TAIL_BYTES {
                // What is kept stays contiguous: after a gap, or a chunk too large to
                // keep, it starts afresh.
                tail.clear();
            }
            if chunk.footprint <= TAIL_BYTES {
                tail.footprint += chunk.footprint;
                tail.chunks.push_back(chunk);
            }
        }
        while tail.footprint > TAIL_BYTES
            && let Some(oldest) = tail.chunks.pop_front()
        {
            tail.footprint -= oldest.footprint;
        }
    }

    /// The kept chunk holding `offset`, as its base offset and bytes.
    pub(super) fn tail_chunk(&self, offset: u64) -> Option<(u64, Bytes)> {
        self.lock_tail()
            .chunks
            .iter()
            .rev()
            .find(|c| c.base <= offset)
            .filter(|c| offset < c.base + u64::from(c.count))
            .map(|c| (c.base, c.bytes.clone()))
    }

    pub(super) fn wake(&self) {
        for waiter in self
            .waiters
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
        {
            waiter.wake(self.id);
        }
    }
}

/// What a [`Watch`] wakes: told the topic's id each time its records become durable
/// or it is deleted. A waiter must not block: it is called by the storage writer, with
/// the topic's waiters locked, so the only locks it may take are ones under which
/// nothing else is locked (a group member's `Grown`).
pub trait Waiter: Send + Sync + std::fmt::Debug {
    /// The topic with this id grew or was deleted.
    fn wake(&self, topic: u64);
}

impl Waiter for Notify {
    fn wake(&self, _topic: u64) {
        self.notify_one();
    }
}

/// Keeps a waiter registered with a topic; unregisters on drop.
#[derive(Debug)]
pub struct Watch {
    log: Arc<TopicLog>,
    key: u64,
}

impl Drop for Watch {
    fn drop(&mut self) {
        let mut waiters = self
            .log
            .waiters
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        waiters.remove(&self.key);
        let nobody = waiters.is_empty();
        drop(waiters);
        if nobody {
            // The last reader left: nobody needs the newest chunks at hand.
            self.log.lock_tail().clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log() -> Arc<TopicLog> {
        let name = TopicName::parse("tailed").unwrap();
        let meta = TopicMeta {
            id: 1,
            name: name.to_string(),
            retention: Retention::default(),
            created_ms: 0,
            dead_letter: None,
            pipeline: Vec::new(),
            durability: Durability::Fsync,
            stage_limits: Vec::new(),
        };
        Arc::new(TopicLog::new(meta, name, None, LogStats::default()))
    }

    /// Ten records from `base`, in a buffer of `footprint` bytes.
    fn chunk(base: u64, footprint: usize) -> TailChunk {
        TailChunk {
            base,
            count: 10,
            bytes: Bytes::from(vec![0; 100]),
            footprint,
        }
    }

    fn kept(log: &TopicLog) -> Vec<u64> {
        log.lock_tail().chunks.iter().map(|c| c.base).collect()
    }

    #[test]
    fn the_tail_keeps_the_newest_contiguous_chunks_within_its_budget() {
        let log = log();
        log.keep_in_tail(vec![chunk(0, 1024)]);
        assert!(kept(&log).is_empty(), "nobody reads the topic");

        let watch = log.watch(Arc::new(Notify::new()));
        let quarter = TAIL_BYTES / 4;
        log.keep_in_tail((1..=5).map(|i| chunk(i * 10, quarter)).collect());
        assert_eq!(kept(&log), [20, 30, 40, 50], "the oldest went over budget");
        assert_eq!(log.lock_tail().footprint, TAIL_BYTES);
        assert_eq!(log.tail_chunk(45).map(|(base, _)| base), Some(40));
        assert_eq!(log.tail_chunk(59).map(|(base, _)| base), Some(50));
        assert!(log.tail_chunk(19).is_none() && log.tail_chunk(60).is_none());

        // A chunk that does not follow the last one kept starts afresh.
        log.keep_in_tail(vec![chunk(100, 1024)]);
        assert_eq!(kept(&log), [100]);
        // One larger than the budget is not kept, nor what came before it.
        log.keep_in_tail(vec![chunk(110, TAIL_BYTES + 1)]);
        assert!(kept(&log).is_empty());
        log.keep_in_tail(vec![chunk(120, 1024), chunk(130, 1024)]);
        assert_eq!(kept(&log), [120, 130]);

        drop(watch);
        assert!(kept(&log).is_empty(), "the last reader left");
        let watch = log.watch(Arc::new(Notify::new()));
        log.keep_in_tail(vec![chunk(140, 1024)]);
        log.mark_deleted();
        assert!(kept(&log).is_empty(), "the topic was deleted");
        drop(watch);
    }
}
