//! A subscriber's place in every topic it reads: a cursor per matching topic, read in
//! turn (round robin, so one busy topic cannot starve the others), each watching its
//! topic so the subscriber wakes when records become durable. QUIC subscriptions
//! (`session/subscription.rs`) and MQTT subscriptions (`mqtt/`) both read through it.

use std::sync::Arc;

use quiver_protocol::Position;
use tokio::sync::Notify;

use crate::storage::{Slice, Storage, StorageError, TopicLog, Watch};

/// The most records in one slice (a `Records` frame).
const MAX_FRAME_RECORDS: u32 = 4096;

/// One topic a subscription reads.
#[derive(Debug)]
struct Cursor {
    log: Arc<TopicLog>,
    next: u64,
    _watch: Watch,
}

/// The cursors of one subscription, read in turn.
#[derive(Debug)]
pub struct Cursors {
    cursors: Vec<Cursor>,
    turn: usize,
    /// Notified when a watched topic gets records.
    pub notify: Arc<Notify>,
}

impl Default for Cursors {
    fn default() -> Self {
        Self::with_notify(Arc::new(Notify::new()))
    }
}

impl Cursors {
    /// No cursor yet; a new topic with records wakes its own `notify`.
    pub fn new() -> Self {
        Self::default()
    }

    /// No cursor yet; a watched topic with new records wakes `notify` (shared with
    /// other cursors the same task reads).
    pub fn with_notify(notify: Arc<Notify>) -> Self {
        Self {
            cursors: Vec::new(),
            turn: 0,
            notify,
        }
    }

    /// Starts reading `log` at `next`, unless it is read already; returns where it
    /// starts when it is new.
    pub fn add(&mut self, log: Arc<TopicLog>, next: u64) -> Option<Position> {
        if self.cursors.iter().any(|c| c.log.id() == log.id()) {
            return None;
        }
        let position = Position {
            topic: log.name().to_string(),
            topic_id: log.id(),
            next,
        };
        let watch = log.watch(Arc::clone(&self.notify));
        self.cursors.push(Cursor {
            log,
            next,
            _watch: watch,
        });
        Some(position)
    }

    /// Where each topic is read now.
    pub fn positions(&self) -> Vec<Position> {
        self.cursors
            .iter()
            .map(|c| Position {
                topic: c.log.name().to_string(),
                topic_id: c.log.id(),
                next: c.next,
            })
            .collect()
    }

    /// Forgets deleted topics.
    pub fn drop_deleted(&mut self) {
        self.cursors.retain(|c| !c.log.is_deleted());
    }

    /// The next slice to send, taking topics in turn; advances that topic's cursor.
    pub fn next_slice(
        &mut self,
        storage: &Storage,
        credit: u32,
        max_bytes: usize,
    ) -> Result<Option<(Arc<TopicLog>, Slice)>, StorageError> {
        let n = self.cursors.len();
        for i in 0..n {
            let index = (self.turn + i) % n;
            let cursor = &mut self.cursors[index];
            let max = credit.min(MAX_FRAME_RECORDS);
            if let Some(slice) = storage.read(&cursor.log, cursor.next, max, max_bytes)? {
                cursor.next = slice.base_offset + u64::from(slice.count);
                self.turn = (index + 1) % n;
                return Ok(Some((Arc::clone(&cursor.log), slice)));
            }
        }
        Ok(None)
    }
}
