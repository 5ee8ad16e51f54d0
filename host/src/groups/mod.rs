//! Durable consumer groups: members compete for a topic's (or pattern's) records, each
//! record goes to one member at a time, and settles with ack, nack, term or
//! in-progress; unsettled records are delivered again until `max_deliveries`, then
//! dead-lettered.
//!
//! - `state`: the pure state machine (lanes, pending records, who holds what);
//! - this module: [`Group`], the state with its topics, members and persistence, and
//!   [`Groups`], the registry.
//!
//! Invariant: every change to a group's state is made through [`Changes`], the group's
//! persist order, which is held until the change's [`GroupWrite`]s (and its dead
//! letters, first) are queued to storage: storage receives one group's changes in the
//! order they were made. That matters because a lane's cursor is written as a value: an
//! older value queued after a newer one would move the stored cursor back (measured:
//! the power-cut harness saw a caught-up group behind again after a clean restart).
//! Changes become durable with the next group commit; a crash keeps a prefix of them
//! (each commit's whole: storage writes them as one delta, `storage/writer/groups.rs`),
//! which only means records are delivered again.
//!
//! Members are served in turns: whichever member's task asks (a settlement came back,
//! a topic grew), every member with room is dealt its share of what is available
//! ([`GroupState::deal`]), the members in the order they were last served (a member
//! served goes to the back of the queue). What is dealt to another member waits in its
//! slot, counted as held, and that member is woken to take it. So the member whose task
//! happens to run first does not take everything, and a member that joins late or
//! settles slowly gets its share of what it has room for.
//!
//! A round looks for new records only in the lanes whose topic grew since it last
//! found them drained ([`GroupState::grew`]): each member's watch of a topic notes the
//! topic before waking the member ([`Group::watch`]), and a new watch notes it too,
//! for what was appended while no member watched. A group over 10,000 topics does not
//! read 10,000 topics' bounds each round.

pub mod state;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use quiver_protocol::{GroupInfo, GroupTopic, TopicPattern};
use tokio::sync::Notify;

use crate::storage::{GroupRecord, GroupWrite, StorageError, StoredGroup, TopicLog, Waiter, Watch};
use crate::util::lock;
use state::{
    Action, Change, DeadLetter, Delivery, GroupState, Lane, MemberId, Pending, Policy, TopicId,
};

/// A durable group, live.
///
/// Lock order: `members` before `state`, and `state` before `topics`, `grown` and a
/// topic's own locks. A round holds `members` while it deals from `state`; whatever
/// else needs both takes them in that order or one after the other, never `members`
/// while holding `state` (two runtime workers, one each way, wait on each other for
/// ever and the broker stops answering).
#[derive(Debug)]
pub struct Group {
    /// What storage keeps of it.
    pub record: GroupRecord,
    pattern: TopicPattern,
    policy: Policy,
    state: Mutex<GroupState>,
    /// Its topics: a snapshot each round reads whole, changed in place when nobody
    /// reads it (topics come and go rarely; rounds are many).
    topics: Mutex<Arc<Topics>>,
    members: Mutex<Members>,
    next_member: AtomicU64,
    deleted: AtomicBool,
    /// Held by [`Changes`].
    persist_order: tokio::sync::Mutex<()>,
    /// The topics that grew since the last round, as the members' watches tell
    /// ([`Group::watch`]): a round opens their lanes ([`GroupState::grew`]) and looks
    /// for new records in those, not in every lane.
    grown: Arc<Grown>,
}

/// The topics that grew since the last round, each noted once however many members
/// watch it (see [`Growth`]).
#[derive(Debug, Default)]
struct Grown(Mutex<Vec<Arc<Growth>>>);

/// Whether one of the group's topics is noted in [`Grown`]. Every member's watch of the
/// topic shares it, so a commit that grows the topic takes the group's lock once, not
/// once per member (with 4 members over 1,000 topics that lock was an eighth of the
/// storage thread).
#[derive(Debug)]
struct Growth {
    topic: TopicId,
    noted: AtomicBool,
}

impl Growth {
    fn new(topic: TopicId) -> Arc<Self> {
        Arc::new(Self {
            topic,
            noted: AtomicBool::new(false),
        })
    }
}

impl Grown {
    /// Notes that `growth`'s topic grew, unless it is noted already.
    fn note(&self, growth: &Arc<Growth>) {
        // Acquire-release, with the swap that clears the mark: a round that clears it
        // reads the topic's bounds after whatever the notes it absorbed were told of.
        if !growth.noted.swap(true, Ordering::AcqRel) {
            lock(&self.0).push(Arc::clone(growth));
        }
    }

    /// Takes every topic noted, clearing each mark before the topic is handed to
    /// `grew`: growth after that is noted again, growth before it is read by the round.
    fn drain(&self, mut grew: impl FnMut(TopicId)) {
        // Drained in place: the list keeps its room for the next commit's topics.
        for growth in lock(&self.0).drain(..) {
            growth.noted.swap(false, Ordering::AcqRel);
            grew(growth.topic);
        }
    }
}

/// A member's watch of one of its group's topics: notes the topic as grown, then wakes
/// the member's task.
#[derive(Debug)]
struct MemberWaiter {
    grown: Arc<Grown>,
    growth: Arc<Growth>,
    notify: Arc<Notify>,
}

impl Waiter for MemberWaiter {
    fn wake(&self, _topic: u64) {
        self.grown.note(&self.growth);
        self.notify.notify_one();
    }
}

/// The topics a group consumes, by id and by name.
#[derive(Debug, Clone, Default)]
pub struct Topics {
    by_id: HashMap<TopicId, Arc<TopicLog>>,
    by_name: HashMap<String, TopicId>,
    /// Each topic's mark in [`Grown`].
    growth: HashMap<TopicId, Arc<Growth>>,
    /// Moves with every topic added or dropped.
    version: u64,
}

impl Topics {
    fn insert(&mut self, log: &Arc<TopicLog>) {
        self.by_id.insert(log.id(), Arc::clone(log));
        self.by_name.insert(log.name().to_string(), log.id());
        self.growth.insert(log.id(), Growth::new(log.id()));
        self.version += 1;
    }

    fn remove(&mut self, topic: TopicId) {
        if let Some(log) = self.by_id.remove(&topic) {
            self.by_name.remove(log.name().as_str());
            self.growth.remove(&topic);
            self.version += 1;
        }
    }

    /// The log of a topic, by id.
    pub fn get(&self, topic: TopicId) -> Option<&Arc<TopicLog>> {
        self.by_id.get(&topic)
    }

    /// Every topic's log.
    pub fn logs(&self) -> impl Iterator<Item = &Arc<TopicLog>> {
        self.by_id.values()
    }

    /// Moves with every topic added or dropped: equal versions, same topics.
    pub fn version(&self) -> u64 {
        self.version
    }
}

/// The members of a group and their turns.
#[derive(Debug, Default)]
struct Members {
    by_id: HashMap<MemberId, Slot>,
    /// The order members are served in: one served goes to the back.
    queue: VecDeque<MemberId>,
}

/// One member's place in its group.
#[derive(Debug)]
struct Slot {
    /// Wakes the member's task.
    notify: Arc<Notify>,
    /// Records it has room for beyond what it holds, as of its last round.
    want: usize,
    /// Records dealt to it (held) that its task has not taken yet.
    dealt: Vec<Delivery>,
}

/// A settlement of one member, as [`Changes::settle`] applies it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settling {
    /// One record.
    One(TopicId, u64, Action),
    /// Acknowledges every record of the range the member holds.
    Acks(TopicId, Range<u64>),
}

/// The right to change a group's state: held from before a change until its writes
/// are queued to storage ([`Broker::apply_group_changes`](crate::broker::Broker)), so
/// that storage receives them in the order they were made (see the module docs). Every
/// method that changes the state is here.
#[derive(Debug)]
#[must_use = "changes keep their order only while this lives"]
pub struct Changes<'a> {
    group: &'a Group,
    _held: tokio::sync::MutexGuard<'a, ()>,
}

impl Group {
    /// A group over `lanes` (each with its topic's log), as created or loaded. Returns
    /// the dead letters loading produced (records whose last delivery a restart cut
    /// short at `max_deliveries`).
    pub fn new(
        record: GroupRecord,
        pattern: TopicPattern,
        lanes: Vec<(Arc<TopicLog>, Lane)>,
    ) -> (Arc<Self>, Vec<DeadLetter>) {
        let policy = Policy {
            ack_timeout_ms: record.settings.ack_timeout_ms,
            max_deliveries: record.settings.max_deliveries,
        };
        let mut topics = Topics::default();
        for (log, _) in &lanes {
            topics.insert(log);
        }
        let lanes = lanes
            .into_iter()
            .map(|(log, lane)| (log.id(), lane))
            .collect();
        let (state, dead) = GroupState::load(lanes, policy);
        let group = Arc::new(Self {
            record,
            pattern,
            policy,
            state: Mutex::new(state),
            topics: Mutex::new(Arc::new(topics)),
            members: Mutex::default(),
            next_member: AtomicU64::new(1),
            deleted: AtomicBool::new(false),
            persist_order: tokio::sync::Mutex::new(()),
            grown: Arc::default(),
        });
        (group, dead)
    }

    /// The group's name.
    pub fn name(&self) -> &str {
        &self.record.name
    }

    /// The pattern it consumes.
    pub fn pattern(&self) -> &TopicPattern {
        &self.pattern
    }

    /// How it treats unsettled records.
    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// True once deleted.
    pub fn is_deleted(&self) -> bool {
        self.deleted.load(Ordering::Acquire)
    }

    /// Takes the group's persist order: the only way to change its state (see
    /// [`Changes`]). Waits while another change is on its way to storage.
    pub async fn changes(&self) -> Changes<'_> {
        Changes {
            group: self,
            _held: self.persist_order.lock().await,
        }
    }

    fn mark_deleted(&self) {
        self.deleted.store(true, Ordering::Release);
        self.wake_members();
    }

    /// The topics the group consumes, as they are now.
    pub fn topics(&self) -> Arc<Topics> {
        Arc::clone(&lock(&self.topics))
    }

    /// The log of a topic the group consumes.
    pub fn log(&self, topic: TopicId) -> Option<Arc<TopicLog>> {
        lock(&self.topics).get(topic).cloned()
    }

    /// The topic the group consumes under `name`.
    pub fn topic_named(&self, name: &str) -> Option<TopicId> {
        lock(&self.topics).by_name.get(name).copied()
    }

    /// Registers a member; it is woken whenever records may be available to it.
    pub fn join(&self, notify: Arc<Notify>) -> MemberId {
        let member = self.next_member.fetch_add(1, Ordering::Relaxed);
        let mut members = lock(&self.members);
        members.by_id.insert(
            member,
            Slot {
                notify,
                want: 0,
                dealt: Vec::new(),
            },
        );
        members.queue.push_back(member);
        member
    }

    /// Watches one of the group's topics for a member's task (woken by `notify`):
    /// each time the topic grows, the next round looks for its new records.
    pub fn watch(&self, log: &Arc<TopicLog>, notify: &Arc<Notify>) -> Watch {
        // A topic the group no longer consumes gets a mark of its own, which rounds
        // ignore.
        let growth = lock(&self.topics)
            .growth
            .get(&log.id())
            .cloned()
            .unwrap_or_else(|| Growth::new(log.id()));
        let watch = log.watch(Arc::new(MemberWaiter {
            grown: Arc::clone(&self.grown),
            growth: Arc::clone(&growth),
            notify: Arc::clone(notify),
        }));
        // The topic may have grown while nobody watched it (no member was connected):
        // the next round looks. After the watch is in place, so that growth is either
        // seen by that look or told by the watch.
        self.grown.note(&growth);
        watch
    }

    /// Wakes every member (records were freed, or the group changed).
    pub fn wake_members(&self) {
        for slot in lock(&self.members).by_id.values() {
            slot.notify.notify_one();
        }
    }

    /// Members connected now.
    pub fn member_count(&self) -> usize {
        lock(&self.members).by_id.len()
    }

    /// Records `member` holds and has taken (not those dealt to it and waiting).
    pub fn held(&self, member: MemberId) -> usize {
        let waiting = lock(&self.members)
            .by_id
            .get(&member)
            .map_or(0, |slot| slot.dealt.len());
        lock(&self.state).held(member).saturating_sub(waiting)
    }

    /// When the state next changes by itself.
    pub fn next_wakeup(&self, now: u64) -> Option<u64> {
        lock(&self.state).next_wakeup(now)
    }

    /// Storage writes for what changed in `state`.
    fn writes(&self, state: &mut GroupState) -> Vec<GroupWrite> {
        let changes = state.take_changes();
        let lanes = state.lanes();
        changes
            .into_iter()
            .filter_map(|change| match change {
                Change::Lane(topic) => lanes.get(&topic).map(|lane| lane_write(topic, lane)),
                Change::Pending(topic, offset, entry) => Some(GroupWrite::Pending {
                    topic,
                    offset,
                    entry,
                }),
            })
            .collect()
    }

    /// The group as `group describe` shows it.
    pub fn info(&self) -> GroupInfo {
        let consumed = self.topics();
        // Before the state is locked (see the lock order on `Group`).
        let members = u32::try_from(self.member_count()).unwrap_or(u32::MAX);
        let state = lock(&self.state);
        let mut topics: Vec<GroupTopic> = state
            .lanes()
            .iter()
            .filter_map(|(topic, lane)| {
                let log = consumed.get(*topic)?;
                let next = log.stats().next;
                Some(GroupTopic {
                    topic: log.name().to_string(),
                    cursor: lane.cursor,
                    lag: next.saturating_sub(lane.cursor) + lane.pending.len() as u64,
                    pending: lane.pending.len() as u64,
                    redelivered: lane.redelivered,
                    dead_lettered: lane.dead_lettered,
                })
            })
            .collect();
        topics.sort_by(|a, b| a.topic.cmp(&b.topic));
        GroupInfo {
            name: self.record.name.clone(),
            settings: self.record.settings.clone(),
            created_ms: self.record.created_ms,
            members,
            topics,
        }
    }
}

impl Changes<'_> {
    /// The group being changed.
    pub fn group(&self) -> &Group {
        self.group
    }

    /// Starts consuming `log` at `cursor` if the pattern matches and it is new.
    /// Returns whether it was added.
    pub fn add_topic(&self, log: &Arc<TopicLog>, cursor: u64) -> Option<Vec<GroupWrite>> {
        if !self.group.pattern.matches(log.name()) || log.is_deleted() {
            return None;
        }
        let mut state = lock(&self.group.state);
        if !state.add_lane(log.id(), cursor) {
            return None;
        }
        Arc::make_mut(&mut lock(&self.group.topics)).insert(log);
        Some(self.group.writes(&mut state))
    }

    /// Forgets topics that were deleted.
    pub fn drop_deleted_topics(&self) -> Vec<GroupWrite> {
        let gone: Vec<TopicId> = self
            .group
            .topics()
            .logs()
            .filter(|log| log.is_deleted())
            .map(|log| log.id())
            .collect();
        if gone.is_empty() {
            return Vec::new();
        }
        let writes = {
            let mut state = lock(&self.group.state);
            let mut topics = lock(&self.group.topics);
            let topics = Arc::make_mut(&mut topics);
            let mut writes = self.group.writes(&mut state);
            for topic in gone {
                state.remove_lane(topic);
                topics.remove(topic);
                writes.push(GroupWrite::DropLane { topic });
            }
            writes
        };
        // What members held of those topics is let go: they have room again, which a
        // round that started with none would not use.
        self.group.wake_members();
        writes
    }

    /// Unregisters a member and releases what it held.
    pub fn leave(&self, member: MemberId, now: u64) -> (Vec<DeadLetter>, Vec<GroupWrite>) {
        let mut members = lock(&self.group.members);
        members.by_id.remove(&member);
        members.queue.retain(|m| *m != member);
        drop(members);
        let mut state = lock(&self.group.state);
        let dead = state.release(now, Some(member), self.group.policy);
        let writes = self.group.writes(&mut state);
        drop(state);
        self.group.wake_members();
        (dead, writes)
    }

    /// Releases records whose ack timeout passed.
    pub fn release_expired(&self, now: u64) -> (Vec<DeadLetter>, Vec<GroupWrite>) {
        let mut state = lock(&self.group.state);
        let dead = state.release(now, None, self.group.policy);
        let writes = self.group.writes(&mut state);
        (dead, writes)
    }

    /// A round for `member`, which has room for `room` more records (not counting
    /// those dealt to it and waiting): every member with room is dealt its share of
    /// what is available, in turns (see the module docs), and the others that got
    /// records are woken. Returns what `member` takes now: what was dealt to it before
    /// and its share of this round.
    pub fn assign(
        &self,
        member: MemberId,
        room: usize,
        now: u64,
    ) -> (Vec<Delivery>, Vec<GroupWrite>) {
        let topics = self.group.topics();
        let bounds = |topic: TopicId| {
            topics.get(topic).map_or((0, 0), |log| {
                let stats = log.stats();
                (stats.first, stats.next)
            })
        };
        let mut members = lock(&self.group.members);
        let Members { by_id, queue } = &mut *members;
        let Some(slot) = by_id.get_mut(&member) else {
            return (Vec::new(), Vec::new());
        };
        slot.want = room.saturating_sub(slot.dealt.len());
        let wants: Vec<(MemberId, usize)> = queue
            .iter()
            .filter_map(|m| by_id.get(m).map(|slot| (*m, slot.want)))
            .filter(|(_, want)| *want > 0)
            .collect();
        let mut state = lock(&self.group.state);
        self.group.grown.drain(|topic| state.grew(topic));
        let dealt = state.deal(&wants, now, self.group.policy, bounds);
        let writes = self.group.writes(&mut state);
        drop(state);
        let mut served = Vec::new();
        for ((m, _), deliveries) in wants.into_iter().zip(dealt) {
            if deliveries.is_empty() {
                continue;
            }
            served.push(m);
            if let Some(slot) = by_id.get_mut(&m) {
                slot.want = slot.want.saturating_sub(deliveries.len());
                slot.dealt.extend(deliveries);
                if m != member {
                    slot.notify.notify_one();
                }
            }
        }
        if !served.is_empty() {
            queue.retain(|m| !served.contains(m));
            queue.extend(served);
        }
        // Within its room (a carrier's room may shrink between rounds).
        let mine = by_id
            .get_mut(&member)
            .map(|slot| {
                let n = slot.dealt.len().min(room);
                slot.dealt.drain(..n).collect()
            })
            .unwrap_or_default();
        (mine, writes)
    }

    /// Applies a member's settlements, in order. Wakes the members when a record was
    /// freed for them (a nack).
    pub fn settle(
        &self,
        member: MemberId,
        settlements: impl IntoIterator<Item = Settling>,
        now: u64,
    ) -> (Vec<DeadLetter>, Vec<GroupWrite>) {
        let mut state = lock(&self.group.state);
        let mut dead = Vec::new();
        let mut freed = false;
        for settling in settlements {
            match settling {
                Settling::One(topic, offset, action) => {
                    freed |= matches!(action, Action::Nack { .. });
                    dead.extend(state.settle(
                        member,
                        topic,
                        offset,
                        action,
                        now,
                        self.group.policy,
                    ));
                }
                Settling::Acks(topic, offsets) => {
                    state.ack_range(member, topic, offsets);
                }
            }
        }
        let writes = self.group.writes(&mut state);
        drop(state);
        if freed {
            self.group.wake_members();
        }
        (dead, writes)
    }

    /// Moves every lane's cursor to `cursor(topic)` and forgets pending records.
    pub fn reset(
        &self,
        cursor: impl Fn(&TopicLog) -> Result<u64, StorageError>,
    ) -> Result<Vec<GroupWrite>, StorageError> {
        // Looked up before the state is locked: a cursor by timestamp reads storage.
        let cursors = self
            .group
            .topics()
            .logs()
            .map(|log| Ok((log.id(), cursor(log)?)))
            .collect::<Result<Vec<_>, StorageError>>()?;
        let mut state = lock(&self.group.state);
        for (topic, cursor) in cursors {
            state.reset(topic, cursor);
        }
        let writes = self.group.writes(&mut state);
        drop(state);
        self.group.wake_members();
        Ok(writes)
    }
}

/// What storage keeps of a lane: its cursor, counters and plain pending runs.
fn lane_write(topic: TopicId, lane: &Lane) -> GroupWrite {
    GroupWrite::Lane {
        topic,
        cursor: lane.cursor,
        redelivered: lane.redelivered,
        dead_lettered: lane.dead_lettered,
        plain: lane.plain_runs(),
    }
}

/// A group as loaded at start-up, with what loading it produced.
#[derive(Debug)]
pub struct Loaded {
    /// The group.
    pub group: Arc<Group>,
    /// Records loading gave up on (see [`GroupState::load`]).
    pub dead: Vec<DeadLetter>,
    /// State changes loading made.
    pub writes: Vec<GroupWrite>,
}

/// The groups by name.
#[derive(Debug, Default)]
pub struct Groups {
    by_name: RwLock<BTreeMap<String, Arc<Group>>>,
}

impl Groups {
    /// Loads stored groups over the live topics; lanes of topics deleted meanwhile are
    /// dropped. Returns each group with the writes and dead letters loading produced.
    pub fn load(stored: Vec<StoredGroup>, topics: &[Arc<TopicLog>]) -> (Self, Vec<Loaded>) {
        let by_id: HashMap<u64, &Arc<TopicLog>> =
            topics.iter().map(|log| (log.id(), log)).collect();
        let groups = Self::default();
        let mut loaded = Vec::new();
        for StoredGroup { record, lanes } in stored {
            let Ok(pattern) = TopicPattern::parse(&record.settings.pattern) else {
                tracing::error!(group = %record.name, "stored group has an invalid pattern; skipped");
                continue;
            };
            let mut live = Vec::new();
            let mut writes = Vec::new();
            let mut converted = Vec::new();
            for stored in lanes {
                let Some(log) = by_id.get(&stored.topic) else {
                    writes.push(GroupWrite::DropLane {
                        topic: stored.topic,
                    });
                    continue;
                };
                let pending = stored
                    .pending
                    .iter()
                    .map(|&(offset, deliveries, not_before)| {
                        (
                            offset,
                            Pending {
                                deliveries,
                                holder: None,
                                not_before,
                            },
                        )
                    })
                    .collect();
                // Data dirs from before plain runs have a key per pending record: the
                // plain ones move into their lane's runs (their keys are removed in
                // the same commit as the lane is written with them).
                let mut pending: BTreeMap<u64, Pending> = pending;
                for &(first, count) in &stored.plain {
                    for offset in first..first.saturating_add(count) {
                        pending.entry(offset).or_insert(Pending {
                            deliveries: 1,
                            holder: None,
                            not_before: 0,
                        });
                    }
                }
                let keyed_plain: Vec<u64> = stored
                    .pending
                    .iter()
                    .filter(|&&(_, deliveries, not_before)| deliveries == 1 && not_before == 0)
                    .map(|&(offset, _, _)| offset)
                    .collect();
                if !keyed_plain.is_empty() {
                    converted.push(stored.topic);
                    writes.extend(keyed_plain.into_iter().map(|offset| GroupWrite::Pending {
                        topic: stored.topic,
                        offset,
                        entry: None,
                    }));
                }
                let lane = Lane::new(
                    stored.cursor,
                    pending,
                    stored.redelivered,
                    stored.dead_lettered,
                );
                live.push((Arc::clone(log), lane));
            }
            let (group, dead) = Group::new(record, pattern, live);
            let mut state = lock(&group.state);
            for topic in converted {
                if let Some(lane) = state.lanes().get(&topic) {
                    writes.push(lane_write(topic, lane));
                }
            }
            writes.extend(group.writes(&mut state));
            drop(state);
            groups.insert(Arc::clone(&group));
            loaded.push(Loaded {
                group,
                dead,
                writes,
            });
        }
        (groups, loaded)
    }

    /// Adds a group.
    pub fn insert(&self, group: Arc<Group>) {
        self.by_name
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(group.name().to_owned(), group);
    }

    /// A group by name.
    pub fn get(&self, name: &str) -> Option<Arc<Group>> {
        self.by_name
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .cloned()
    }

    /// Every group, by name.
    pub fn all(&self) -> Vec<Arc<Group>> {
        self.by_name
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect()
    }

    /// Removes a group; its members end.
    pub fn remove(&self, name: &str) -> Option<Arc<Group>> {
        let group = self
            .by_name
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(name)?;
        group.mark_deleted();
        Some(group)
    }
}

#[cfg(test)]
mod tests;
