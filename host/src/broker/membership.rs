//! One member of a durable group, whatever carries it: a QUIC member stream
//! (`session/member.rs`) or an MQTT shared subscription (`mqtt/`). It joins, takes
//! records as its room allows, reads them, settles them, and leaves; the carrier only
//! sends records and brings settlements back.
//!
//! Each round ([`Membership::take`]) releases timed-out records, notices new and
//! deleted topics, and assigns up to the member's room. Whatever the member holds when
//! it leaves goes back to the group at once.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Range;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use quiver_protocol::Record;
use quiver_protocol::record::decode_shared;
use tokio::sync::{Notify, broadcast};

use super::{Broker, BrokerError};
use crate::groups::state::{Action, Delivery, MemberId};
use crate::groups::{Group, Settling};
use crate::storage::{ChunkCache, Storage, StorageError, TopicLog, Watch};
use crate::util::now_ms;

/// A joined member of a group.
#[derive(Debug)]
pub struct Membership {
    broker: Arc<Broker>,
    group: Arc<Group>,
    member: MemberId,
    notify: Arc<Notify>,
    watches: BTreeMap<u64, Watch>,
    /// The version of the group's topics `watches` follows.
    watched: Option<u64>,
    created: broadcast::Receiver<Arc<TopicLog>>,
    topics_created: bool,
    /// [`Broker::topic_deletions`] as of the last look for deleted topics.
    deletions: u64,
    /// The last chunk read from sled for this member's deliveries: a member taking a
    /// few records at a time from a backlog reads each chunk once.
    chunks: Arc<Mutex<ChunkCache>>,
}

impl Membership {
    /// Joins `group`; `notify` wakes the member when its topics grow or records are
    /// freed. From now on it counts as a consumer of the group's topics.
    pub async fn join(
        broker: &Arc<Broker>,
        group: Arc<Group>,
        notify: Arc<Notify>,
    ) -> Result<Self, BrokerError> {
        let created = broker.watch_pattern(group.pattern().as_str())?.created;
        let member = group.join(Arc::clone(&notify));
        let changes = group.changes().await;
        let writes = broker.sync_group_topics(&changes);
        broker.persist_group(&group, writes).await;
        drop(changes);
        let mut membership = Self {
            broker: Arc::clone(broker),
            group,
            member,
            notify,
            watches: BTreeMap::new(),
            watched: None,
            created,
            topics_created: false,
            deletions: 0,
            chunks: Arc::default(),
        };
        membership.watch_topics();
        Ok(membership)
    }

    /// The group.
    pub fn group(&self) -> &Arc<Group> {
        &self.group
    }

    /// What wakes this member: its topics grew, or records were freed.
    pub fn notify(&self) -> &Arc<Notify> {
        &self.notify
    }

    /// Bytes of records a carrier encodes before it waits for its client to read
    /// them (`limits.max_buffered_per_subscription`).
    pub fn max_write(&self) -> usize {
        self.broker.limits().max_buffered_per_subscription
    }

    /// This member's id in the group.
    pub fn member(&self) -> MemberId {
        self.member
    }

    /// Records this member holds now and has taken (records dealt to it in another
    /// member's round wait for its next [`take`](Self::take), which returns them).
    pub fn held(&self) -> usize {
        self.group.held(self.member)
    }

    /// One round: releases what timed out, follows topic changes, deals what is
    /// available to every member with room (this one has room for `room` more), and
    /// returns this member's records: up to `room`. Fails once the group is deleted.
    pub async fn take(&mut self, room: usize) -> Result<Vec<Delivery>, BrokerError> {
        if self.group.is_deleted() {
            return Err(BrokerError::GroupNotFound(self.group.name().to_owned()));
        }
        // Creations seen since the last round (a full look at the registry then).
        while let Ok(_) | Err(broadcast::error::TryRecvError::Lagged(_)) = self.created.try_recv() {
            self.topics_created = true;
        }
        let group = Arc::clone(&self.group);
        let changes = group.changes().await;
        // Each looks at every topic of the group: only when one may have come or gone.
        let deletions = self.broker.topic_deletions();
        let mut writes = match std::mem::take(&mut self.topics_created) {
            true => self.broker.sync_group_topics(&changes),
            false if deletions != self.deletions => changes.drop_deleted_topics(),
            false => Vec::new(),
        };
        self.deletions = deletions;
        self.watch_topics();
        let now = now_ms();
        let (dead, released) = changes.release_expired(now);
        writes.extend(released);
        self.broker.apply_group_changes(&group, writes, dead).await;
        if room == 0 {
            return Ok(Vec::new());
        }
        let (deliveries, writes) = changes.assign(self.member, room, now);
        self.broker.persist_group(&group, writes).await;
        Ok(deliveries)
    }

    /// Waits until a topic matching the group is created (the next round follows it).
    pub async fn topic_created(&mut self) {
        let _ = self.created.recv().await;
        self.topics_created = true;
    }

    /// How long until the group has something to release (an ack deadline).
    pub fn next_wakeup(&self) -> Option<Duration> {
        let now = now_ms();
        self.group
            .next_wakeup(now)
            .map(|at| Duration::from_millis(at.saturating_sub(now)))
    }

    /// The records of `deliveries`, read as they are iterated.
    pub fn read(&self, deliveries: &[Delivery]) -> DeliveryReader {
        let mut by_topic: BTreeMap<u64, Vec<Delivery>> = BTreeMap::new();
        for delivery in deliveries {
            by_topic.entry(delivery.topic).or_default().push(*delivery);
        }
        let mut runs = VecDeque::new();
        for (topic, mut deliveries) in by_topic {
            let Some(log) = self.group.log(topic) else {
                continue;
            };
            deliveries.sort_by_key(|d| d.offset);
            for run in deliveries.chunk_by(|a, b| b.offset == a.offset + 1) {
                runs.push_back(Run {
                    log: Arc::clone(&log),
                    next: run[0].offset,
                    deliveries: run.to_vec(),
                });
            }
        }
        DeliveryReader {
            storage: self.broker.storage().clone(),
            chunks: Arc::clone(&self.chunks),
            max_bytes: self.broker.limits().max_buffered_per_subscription,
            runs,
            ready: VecDeque::new(),
        }
    }

    /// Settles records this member holds (`topic` by name), in order; what
    /// dead-letters is queued to storage before the group forgets it. Settlements of
    /// topics the group does not consume are ignored.
    pub async fn settle<T: AsRef<str>>(&self, settlements: impl IntoIterator<Item = (T, Settle)>) {
        // Names resolved once per run of one topic (settlements come grouped).
        let mut last: Option<(String, Option<u64>)> = None;
        let mut settlings = Vec::new();
        for (topic, settle) in settlements {
            let name = topic.as_ref();
            let id = match &last {
                Some((known, id)) if known == name => *id,
                _ => {
                    let id = self.group.topic_named(name);
                    last = Some((name.to_owned(), id));
                    id
                }
            };
            let Some(topic) = id else {
                continue;
            };
            settlings.push(match settle {
                Settle::One(offset, action) => Settling::One(topic, offset, action),
                Settle::Acks(offsets) => Settling::Acks(topic, offsets),
            });
        }
        if settlings.is_empty() {
            return;
        }
        let changes = self.group.changes().await;
        let (dead, writes) = changes.settle(self.member, settlings, now_ms());
        self.broker
            .apply_group_changes(&self.group, writes, dead)
            .await;
    }

    /// Leaves the group: whatever this member held is free for the others now.
    pub async fn leave(self) {
        let changes = self.group.changes().await;
        let (dead, writes) = changes.leave(self.member, now_ms());
        self.broker
            .apply_group_changes(&self.group, writes, dead)
            .await;
    }

    /// Watches every topic of the group, so new records wake this member (a look at
    /// each only when the group's topics changed).
    fn watch_topics(&mut self) {
        let topics = self.group.topics();
        if self.watched == Some(topics.version()) {
            return;
        }
        for log in topics.logs() {
            self.watches
                .entry(log.id())
                .or_insert_with(|| self.group.watch(log, &self.notify));
        }
        self.watches.retain(|id, _| topics.get(*id).is_some());
        self.watched = Some(topics.version());
    }
}

/// One settlement of a record (or of a range of them) in a topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settle {
    /// One record.
    One(u64, Action),
    /// Acknowledges the records of the range this member holds.
    Acks(Range<u64>),
}

/// Consecutive offsets of one topic to read.
#[derive(Debug)]
struct Run {
    log: Arc<TopicLog>,
    next: u64,
    deliveries: Vec<Delivery>,
}

/// An assigned record, read: its topic, the record, and which delivery this is.
#[derive(Debug)]
pub struct Assignment {
    /// The record's topic.
    pub log: Arc<TopicLog>,
    /// The record.
    pub record: Record,
    /// This delivery's number (1 the first time).
    pub deliveries: u32,
}

/// Reads assigned records from storage a slice at a time, so a carrier can send each
/// and flush as it goes without holding them all. A record retention removed is
/// skipped (the group drops it when it notices).
#[derive(Debug)]
pub struct DeliveryReader {
    storage: Storage,
    /// The member's kept chunk ([`Membership`]'s `chunks`).
    chunks: Arc<Mutex<ChunkCache>>,
    max_bytes: usize,
    runs: VecDeque<Run>,
    ready: VecDeque<Assignment>,
}

impl Iterator for DeliveryReader {
    type Item = Result<Assignment, StorageError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(ready) = self.ready.pop_front() {
                return Some(Ok(ready));
            }
            let run = self.runs.front_mut()?;
            let first = run.deliveries[0].offset;
            let end = first + run.deliveries.len() as u64;
            if run.next >= end {
                self.runs.pop_front();
                continue;
            }
            let count = u32::try_from(end - run.next).unwrap_or(u32::MAX);
            let mut chunks = self.chunks.lock().unwrap_or_else(PoisonError::into_inner);
            let read =
                self.storage
                    .read_cached(&run.log, run.next, count, self.max_bytes, &mut chunks);
            drop(chunks);
            let slice = match read {
                Ok(Some(slice)) => slice,
                Ok(None) => {
                    self.runs.pop_front();
                    continue;
                }
                Err(e) => {
                    self.runs.pop_front();
                    return Some(Err(e));
                }
            };
            run.next = slice.base_offset + u64::from(slice.count);
            let records = match decode_shared(slice.base_offset, &slice.batch) {
                Ok(records) => records,
                Err(e) => {
                    self.runs.pop_front();
                    return Some(Err(e.into()));
                }
            };
            for record in records {
                // The run is consecutive offsets: a record's delivery is found by its
                // distance from the run's start.
                let index = record
                    .offset
                    .checked_sub(first)
                    .and_then(|i| usize::try_from(i).ok());
                let Some(delivery) = index.and_then(|i| run.deliveries.get(i)) else {
                    continue;
                };
                self.ready.push_back(Assignment {
                    log: Arc::clone(&run.log),
                    deliveries: delivery.deliveries,
                    record,
                });
            }
        }
    }
}
