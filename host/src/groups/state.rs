//! The state of a durable group, as a pure state machine: no IO, no clock (time comes
//! in as milliseconds), so it is tested against a reference model.
//!
//! Per topic a group has a *lane*: a cursor (every offset below it has been delivered at
//! least once) and the pending set (delivered, not yet settled, or waiting to be
//! delivered again). A pending record is *held* by one member until its deadline, or
//! *free* (released by a timeout, a nack or a member leaving) once its `not_before`
//! has passed.
//!
//! Invariants worth naming:
//! - a record is held by at most one member at a time;
//! - an acknowledged or terminated record is never delivered again;
//! - a record delivered `max_deliveries` times that is released unsettled goes to the
//!   dead-letter topic instead of being delivered again;
//! - free records are delivered before new ones, oldest first; new ones in offset order;
//! - only the cursor, the counters and each pending record's delivery count and
//!   `not_before` are persisted: holders are not (members do not outlive the broker);
//! - a pending record delivered once and never nacked (`deliveries == 1`,
//!   `not_before == 0`, a *plain* record, nearly all of them) is stored with its lane,
//!   as a run of offsets ([`Lane::plain_runs`]); only the others get an entry of their
//!   own ([`Change::Pending`]), so settling a plain record changes nothing but its lane;
//! - every held record is in the deadline index, every free one in its lane's free set
//!   or the delayed index (until its `not_before`): releasing, waking up and assigning
//!   look at what is due, never at every pending record;
//! - a lane's new records are looked for only while it is *open*: from when it is
//!   loaded, added or reset, or its topic grew ([`GroupState::grew`]), until a pick
//!   finds nothing past its cursor; so a round over many topics looks at those that
//!   grew, not at every lane;
//! - several members asking at once are dealt records in turns ([`GroupState::deal`]):
//!   each gets a contiguous share, equal to the others' unless its room is smaller.

use std::collections::{BTreeMap, BTreeSet, HashMap};

/// A member of a group, for as long as its stream lives.
pub type MemberId = u64;

/// A topic's storage id.
pub type TopicId = u64;

/// How a group treats unsettled records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// How long a member holds a record before it is released.
    pub ack_timeout_ms: u64,
    /// Deliveries after which a released record is dead-lettered.
    pub max_deliveries: u32,
}

/// A delivered record not yet settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pending {
    /// Times it has been delivered.
    pub deliveries: u32,
    /// The member holding it and the time it must settle by; `None` while free.
    pub holder: Option<(MemberId, u64)>,
    /// A free record is not delivered again before this time (a nack's delay).
    pub not_before: u64,
}

impl Pending {
    /// Delivered once, never nacked: stored as part of its lane's plain runs.
    pub fn is_plain(&self) -> bool {
        self.deliveries == 1 && self.not_before == 0
    }

    /// What storage keeps of it when it is not plain.
    fn stored(&self) -> Option<(u32, u64)> {
        (!self.is_plain()).then_some((self.deliveries, self.not_before))
    }
}

/// Where a group stands in one topic.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lane {
    /// Every offset below it has been delivered at least once.
    pub cursor: u64,
    /// Delivered and unsettled, or waiting to be delivered again.
    pub pending: BTreeMap<u64, Pending>,
    /// Deliveries that were redeliveries.
    pub redelivered: u64,
    /// Records sent to the dead-letter topic.
    pub dead_lettered: u64,
    /// Free records whose `not_before` has passed, by offset.
    free: BTreeSet<u64>,
    /// The plain records among the pending ones (see [`Pending::is_plain`]), so that
    /// writing the lane costs what it holds, not every record waiting to be delivered
    /// again (a queue nacking everything with a delay holds all its records pending).
    plain: BTreeSet<u64>,
}

impl Lane {
    /// A lane as stored: its cursor, counters and pending records (all free).
    pub fn new(
        cursor: u64,
        pending: BTreeMap<u64, Pending>,
        redelivered: u64,
        dead_lettered: u64,
    ) -> Self {
        let plain = pending
            .iter()
            .filter(|(_, p)| p.is_plain())
            .map(|(&offset, _)| offset)
            .collect();
        Self {
            cursor,
            pending,
            redelivered,
            dead_lettered,
            free: BTreeSet::new(),
            plain,
        }
    }

    /// The plain pending records (see [`Pending::is_plain`]) as runs of consecutive
    /// offsets: (first, count), in offset order. Costs the plain records, not every
    /// pending one.
    pub fn plain_runs(&self) -> Vec<(u64, u64)> {
        let mut runs: Vec<(u64, u64)> = Vec::new();
        for &offset in &self.plain {
            match runs.last_mut() {
                Some((first, count)) if *first + *count == offset => *count += 1,
                _ => runs.push((offset, 1)),
            }
        }
        runs
    }
}

/// What storage keeps of a pending record that is not plain: deliveries, not-before.
type Stored = Option<(u32, u64)>;

/// A record handed to a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    /// Its topic.
    pub topic: TopicId,
    /// Its offset.
    pub offset: u64,
    /// This delivery's number (1 the first time).
    pub deliveries: u32,
}

/// A record to send to the dead-letter topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// Its topic.
    pub topic: TopicId,
    /// Its offset.
    pub offset: u64,
    /// Times it was delivered.
    pub deliveries: u32,
    /// Why.
    pub reason: String,
}

/// How a member settles a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Done.
    Ack,
    /// Deliver again, not before `delay_ms` from now.
    Nack {
        /// The delay.
        delay_ms: u64,
    },
    /// Never again: dead-letter it with this reason.
    Term(String),
    /// Restart the ack timeout.
    InProgress,
}

/// What the persisted form of a group must be told after a change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A lane's cursor, counters or plain records changed.
    Lane(TopicId),
    /// A pending record that is not plain changed (`Some`), or is gone or plain again
    /// (`None`): its delivery count and `not_before`.
    Pending(TopicId, u64, Option<(u32, u64)>),
}

/// A group's lanes and who holds what.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupState {
    lanes: BTreeMap<TopicId, Lane>,
    held: HashMap<MemberId, usize>,
    /// Every held record: (deadline, topic, offset).
    deadlines: BTreeSet<(u64, TopicId, u64)>,
    /// Free records not yet in their lane's free set: (not_before, topic, offset).
    delayed: BTreeSet<(u64, TopicId, u64)>,
    /// Round-robin position among lanes: the pick starts at the first lane at or
    /// after this topic id (wrapping round).
    turn: TopicId,
    /// The lanes that may have records past their cursor (see the module docs).
    open: BTreeSet<TopicId>,
    dirty_lanes: BTreeSet<TopicId>,
    dirty_pending: BTreeSet<(TopicId, u64)>,
}

impl GroupState {
    /// A group as loaded from storage: nothing is held. Records already delivered
    /// `max_deliveries` times whose last delivery the restart cut short are dead
    /// letters, since they may not be delivered again.
    pub fn load(lanes: BTreeMap<TopicId, Lane>, policy: Policy) -> (Self, Vec<DeadLetter>) {
        let mut state = Self {
            open: lanes.keys().copied().collect(),
            lanes,
            ..Self::default()
        };
        let mut exhausted = Vec::new();
        for (&topic, lane) in &mut state.lanes {
            lane.free.clear();
            for (&offset, pending) in &mut lane.pending {
                pending.holder = None;
                if pending.deliveries >= policy.max_deliveries {
                    exhausted.push((topic, offset, pending.deliveries, pending.stored()));
                } else {
                    state.delayed.insert((pending.not_before, topic, offset));
                }
            }
        }
        let dead = exhausted
            .into_iter()
            .map(|(topic, offset, deliveries, stored)| {
                if let Some(lane) = state.lanes.get_mut(&topic) {
                    lane.pending.remove(&offset);
                }
                state.forgotten(topic, offset, stored);
                let reason = format!(
                    "delivered {deliveries} times (max_deliveries); the broker restarted before it was settled"
                );
                state.dead_letter(topic, offset, deliveries, reason)
            })
            .collect();
        (state, dead)
    }

    /// The lanes.
    pub fn lanes(&self) -> &BTreeMap<TopicId, Lane> {
        &self.lanes
    }

    /// Starts consuming a topic at `cursor`, unless it is consumed already.
    pub fn add_lane(&mut self, topic: TopicId, cursor: u64) -> bool {
        if self.lanes.contains_key(&topic) {
            return false;
        }
        self.lanes
            .insert(topic, Lane::new(cursor, BTreeMap::new(), 0, 0));
        self.dirty_lanes.insert(topic);
        self.open.insert(topic);
        true
    }

    /// Notes that a topic grew: the next pick looks for its new records. Until then,
    /// and after a pick found none left past the lane's cursor, its bounds' end is not
    /// read.
    pub fn grew(&mut self, topic: TopicId) {
        if self.lanes.contains_key(&topic) {
            self.open.insert(topic);
        }
    }

    /// Stops consuming a deleted topic.
    pub fn remove_lane(&mut self, topic: TopicId) {
        self.open.remove(&topic);
        if let Some(lane) = self.lanes.remove(&topic) {
            for (&offset, pending) in &lane.pending {
                self.unindex(topic, offset, pending);
            }
        }
    }

    /// Records `member` holds now.
    pub fn held(&self, member: MemberId) -> usize {
        self.held.get(&member).copied().unwrap_or(0)
    }

    fn unhold(&mut self, member: MemberId) {
        if let Some(n) = self.held.get_mut(&member) {
            *n = n.saturating_sub(1);
        }
    }

    /// Takes a pending record out of the indexes (it is gone, or about to change).
    fn unindex(&mut self, topic: TopicId, offset: u64, pending: &Pending) {
        match pending.holder {
            Some((member, deadline)) => {
                self.deadlines.remove(&(deadline, topic, offset));
                self.unhold(member);
            }
            None => {
                if !self.delayed.remove(&(pending.not_before, topic, offset))
                    && let Some(lane) = self.lanes.get_mut(&topic)
                {
                    lane.free.remove(&offset);
                }
            }
        }
    }

    /// Marks a record free: assignable once `now` reaches its `not_before`.
    fn index_free(&mut self, topic: TopicId, offset: u64, not_before: u64, now: u64) {
        if not_before <= now
            && let Some(lane) = self.lanes.get_mut(&topic)
        {
            lane.free.insert(offset);
        } else {
            self.delayed.insert((not_before, topic, offset));
        }
    }

    /// Moves delayed records whose `not_before` has come into their lanes' free sets.
    fn promote(&mut self, now: u64) {
        while let Some(&(not_before, topic, offset)) = self.delayed.first() {
            if not_before > now {
                break;
            }
            self.delayed.pop_first();
            if let Some(lane) = self.lanes.get_mut(&topic) {
                lane.free.insert(offset);
            }
        }
    }

    /// Notes for storage that a pending record changed from `before` (what was stored
    /// of it: `None` when plain or new) to what it is now.
    fn changed(&mut self, topic: TopicId, offset: u64, before: Option<(u32, u64)>) {
        let Some(lane) = self.lanes.get_mut(&topic) else {
            return;
        };
        let now = lane
            .pending
            .get(&offset)
            .map(|p| (p.is_plain(), p.stored()));
        match now {
            Some((true, _)) => lane.plain.insert(offset),
            _ => lane.plain.remove(&offset),
        };
        match now {
            Some((true, _)) => {
                // A plain record lives in its lane's runs.
                self.dirty_lanes.insert(topic);
                if before.is_some() {
                    self.dirty_pending.insert((topic, offset));
                }
            }
            Some((false, stored)) => {
                if stored != before {
                    self.dirty_pending.insert((topic, offset));
                }
                if before.is_none() {
                    // It left the runs (or was never in them).
                    self.dirty_lanes.insert(topic);
                }
            }
            None => self.forgotten(topic, offset, before),
        }
    }

    /// Notes for storage that a pending record is gone (`stored`: what was stored of
    /// it apart from the runs).
    fn forgotten(&mut self, topic: TopicId, offset: u64, stored: Option<(u32, u64)>) {
        match stored {
            Some(_) => {
                self.dirty_pending.insert((topic, offset));
            }
            None => {
                if let Some(lane) = self.lanes.get_mut(&topic) {
                    lane.plain.remove(&offset);
                }
                self.dirty_lanes.insert(topic);
            }
        }
    }

    /// Drops pending records retention removed (below the lane's first offset).
    fn drop_trimmed(&mut self, topic: TopicId, first: u64) {
        let Some(lane) = self.lanes.get_mut(&topic) else {
            return;
        };
        if lane
            .pending
            .first_key_value()
            .is_none_or(|(o, _)| *o >= first)
        {
            return;
        }
        let rest = lane.pending.split_off(&first);
        let gone = std::mem::replace(&mut lane.pending, rest);
        for (offset, pending) in gone {
            self.unindex(topic, offset, &pending);
            self.forgotten(topic, offset, pending.stored());
        }
    }

    /// Picks up to `max` records to hand out: free ones first (oldest first, lane by
    /// lane in turn), then new ones from the cursors of the open lanes (in turn).
    /// Picked records are taken out of the free sets; new ones are not yet pending.
    fn pick(
        &mut self,
        max: usize,
        now: u64,
        bounds: &impl Fn(TopicId) -> (u64, u64),
    ) -> Vec<(TopicId, u64, bool)> {
        self.promote(now);
        let mut out = Vec::new();
        let Some(first_lane) = in_turn(&self.lanes, self.turn).next().map(|(&t, _)| t) else {
            return out;
        };
        // Lanes with free records: most lanes of a group over many topics have none
        // (their pending records are held), and are passed over before their topic's
        // bounds are read.
        let free: Vec<TopicId> = in_turn(&self.lanes, self.turn)
            .filter(|(_, lane)| !lane.free.is_empty())
            .map(|(&topic, _)| topic)
            .collect();
        for topic in free {
            if out.len() >= max {
                break;
            }
            let (first, _) = bounds(topic);
            // Records retention removed are gone: nothing left to settle. (Those held
            // go when they are settled or released.)
            self.drop_trimmed(topic, first);
            let Some(lane) = self.lanes.get_mut(&topic) else {
                continue;
            };
            while out.len() < max {
                let Some(offset) = lane.free.pop_first() else {
                    break;
                };
                out.push((topic, offset, false));
            }
        }
        // The next pick starts one lane on, or past the last lane that gave new
        // records: lanes take turns, and those drained are not walked again before
        // the turn comes round.
        let mut next = first_lane.wrapping_add(1);
        let turn = self.turn;
        let open: Vec<TopicId> = (self.open.range(turn..).chain(self.open.range(..turn)))
            .copied()
            .collect();
        for topic in open {
            if out.len() >= max {
                break;
            }
            let (first, end) = bounds(topic);
            let Some(lane) = self.lanes.get_mut(&topic) else {
                self.open.remove(&topic);
                continue;
            };
            let start = lane.cursor.max(first);
            let take = (end.saturating_sub(start)).min((max - out.len()) as u64);
            out.extend((start..start + take).map(|offset| (topic, offset, true)));
            if take > 0 {
                next = topic.wrapping_add(1);
            }
            if start + take >= end {
                // Drained: looked at again once its topic grows.
                self.open.remove(&topic);
            }
            if start + take != lane.cursor {
                lane.cursor = start + take;
                self.dirty_lanes.insert(topic);
            }
        }
        self.turn = next;
        out
    }

    /// Gives a picked record to `member` until `deadline`.
    fn hold(
        &mut self,
        member: MemberId,
        (topic, offset, new): (TopicId, u64, bool),
        deadline: u64,
    ) -> Option<Delivery> {
        let lane = self.lanes.get_mut(&topic)?;
        let before;
        let deliveries;
        if new {
            lane.pending.insert(
                offset,
                Pending {
                    deliveries: 1,
                    holder: Some((member, deadline)),
                    not_before: 0,
                },
            );
            lane.plain.insert(offset);
            before = None;
            deliveries = 1;
        } else {
            let pending = lane.pending.get_mut(&offset)?;
            before = pending.stored();
            pending.deliveries += 1;
            pending.holder = Some((member, deadline));
            lane.redelivered += 1;
            deliveries = pending.deliveries;
            self.dirty_lanes.insert(topic);
        }
        self.deadlines.insert((deadline, topic, offset));
        *self.held.entry(member).or_default() += 1;
        if new {
            self.dirty_lanes.insert(topic);
        } else {
            self.changed(topic, offset, before);
        }
        Some(Delivery {
            topic,
            offset,
            deliveries,
        })
    }

    /// Hands `member` up to `max` records: free ones first (oldest first), then new
    /// ones from each lane's cursor. `bounds(topic)` gives the offsets that exist: the
    /// first still stored and the next to be appended.
    pub fn assign(
        &mut self,
        member: MemberId,
        max: usize,
        now: u64,
        policy: Policy,
        bounds: impl Fn(TopicId) -> (u64, u64),
    ) -> Vec<Delivery> {
        self.deal(&[(member, max)], now, policy, bounds)
            .pop()
            .unwrap_or_default()
    }

    /// Deals records to several members at once, in turns: `wants` lists each member
    /// with its room, in the order they are served. What is available (picked as
    /// [`assign`](Self::assign) picks) is shared out equally: every member gets as many
    /// as the others (the first ones one more when it does not divide), or all its room
    /// when that is less, and each member's share is a contiguous slice of the picked
    /// records, so its deliveries keep their order. Returns each member's deliveries,
    /// in the order of `wants`.
    pub fn deal(
        &mut self,
        wants: &[(MemberId, usize)],
        now: u64,
        policy: Policy,
        bounds: impl Fn(TopicId) -> (u64, u64),
    ) -> Vec<Vec<Delivery>> {
        let total = wants.iter().map(|(_, n)| n).sum();
        let picked = self.pick(total, now, &bounds);
        let shares = shares(wants.iter().map(|(_, n)| *n), picked.len());
        let mut picked = picked.into_iter();
        let deadline = now.saturating_add(policy.ack_timeout_ms);
        wants
            .iter()
            .zip(shares)
            .map(|(&(member, _), share)| {
                let mut deliveries = Vec::with_capacity(share);
                deliveries.extend(
                    picked
                        .by_ref()
                        .take(share)
                        .filter_map(|record| self.hold(member, record, deadline)),
                );
                deliveries
            })
            .collect()
    }

    /// Applies a member's settlement. Settlements of records the member no longer
    /// holds (it timed out and someone else has it, or it was reset) are ignored.
    pub fn settle(
        &mut self,
        member: MemberId,
        topic: TopicId,
        offset: u64,
        action: Action,
        now: u64,
        policy: Policy,
    ) -> Option<DeadLetter> {
        let lane = self.lanes.get_mut(&topic)?;
        let pending = lane.pending.get_mut(&offset)?;
        let (holder, deadline) = pending.holder?;
        if holder != member {
            return None;
        }
        let deliveries = pending.deliveries;
        let before = pending.stored();
        let dead = match action {
            Action::InProgress => {
                let later = now.saturating_add(policy.ack_timeout_ms);
                pending.holder = Some((member, later));
                self.deadlines.remove(&(deadline, topic, offset));
                self.deadlines.insert((later, topic, offset));
                return None;
            }
            Action::Ack => None,
            Action::Term(reason) => Some(reason),
            Action::Nack { delay_ms } => {
                if deliveries < policy.max_deliveries {
                    pending.holder = None;
                    pending.not_before = now.saturating_add(delay_ms);
                    let not_before = pending.not_before;
                    self.deadlines.remove(&(deadline, topic, offset));
                    self.unhold(member);
                    self.index_free(topic, offset, not_before, now);
                    self.changed(topic, offset, before);
                    return None;
                }
                Some(format!(
                    "nacked after {deliveries} deliveries (max_deliveries)"
                ))
            }
        };
        lane.pending.remove(&offset);
        self.deadlines.remove(&(deadline, topic, offset));
        self.unhold(member);
        self.forgotten(topic, offset, before);
        dead.map(|reason| self.dead_letter(topic, offset, deliveries, reason))
    }

    /// Acknowledges every record in `offsets` of `topic` that `member` holds; others
    /// are ignored, as [`settle`](Self::settle) ignores them. Costs the records the
    /// range holds, however long it is. Returns how many were acknowledged.
    pub fn ack_range(
        &mut self,
        member: MemberId,
        topic: TopicId,
        offsets: std::ops::Range<u64>,
    ) -> usize {
        let Some(lane) = self.lanes.get_mut(&topic) else {
            return 0;
        };
        let mine: Vec<(u64, u64, Stored)> = lane
            .pending
            .range(offsets)
            .filter_map(|(&offset, p)| match p.holder {
                Some((m, deadline)) if m == member => Some((offset, deadline, p.stored())),
                _ => None,
            })
            .collect();
        for &(offset, _, _) in &mine {
            lane.pending.remove(&offset);
        }
        for &(offset, deadline, stored) in &mine {
            self.deadlines.remove(&(deadline, topic, offset));
            self.forgotten(topic, offset, stored);
        }
        if let Some(n) = self.held.get_mut(&member) {
            *n = n.saturating_sub(mine.len());
        }
        mine.len()
    }

    fn dead_letter(
        &mut self,
        topic: TopicId,
        offset: u64,
        deliveries: u32,
        reason: String,
    ) -> DeadLetter {
        if let Some(lane) = self.lanes.get_mut(&topic) {
            lane.dead_lettered += 1;
            self.dirty_lanes.insert(topic);
        }
        DeadLetter {
            topic,
            offset,
            deliveries,
            reason,
        }
    }

    /// Releases records whose holder's deadline has passed (or every record `member`
    /// holds, when it leaves): they become free, or dead letters once delivered
    /// `max_deliveries` times. Looks only at what is due (and, for a member leaving,
    /// at what is held).
    pub fn release(
        &mut self,
        now: u64,
        leaving: Option<MemberId>,
        policy: Policy,
    ) -> Vec<DeadLetter> {
        self.promote(now);
        let mut released: Vec<(u64, TopicId, u64)> = self
            .deadlines
            .iter()
            .take_while(|(deadline, _, _)| *deadline <= now)
            .copied()
            .collect();
        if let Some(member) = leaving
            && self.held(member) > 0
        {
            for &(deadline, topic, offset) in self.deadlines.range((now.saturating_add(1), 0, 0)..)
            {
                let holder = self
                    .lanes
                    .get(&topic)
                    .and_then(|lane| lane.pending.get(&offset))
                    .and_then(|p| p.holder);
                if holder == Some((member, deadline)) {
                    released.push((deadline, topic, offset));
                }
            }
        }
        // In offset order, as the dead letters are reported.
        released.sort_by_key(|&(_, topic, offset)| (topic, offset));
        let mut dead = Vec::new();
        for (deadline, topic, offset) in released {
            self.deadlines.remove(&(deadline, topic, offset));
            let Some(pending) = self
                .lanes
                .get_mut(&topic)
                .and_then(|lane| lane.pending.get_mut(&offset))
            else {
                continue;
            };
            let Some((holder, _)) = pending.holder.take() else {
                continue;
            };
            let (deliveries, not_before, before) =
                (pending.deliveries, pending.not_before, pending.stored());
            self.unhold(holder);
            if deliveries >= policy.max_deliveries {
                if let Some(lane) = self.lanes.get_mut(&topic) {
                    lane.pending.remove(&offset);
                }
                self.forgotten(topic, offset, before);
                let why = match Some(holder) == leaving {
                    true => "its member left",
                    false => "not settled within the ack timeout",
                };
                let reason = format!("delivered {deliveries} times (max_deliveries), {why}");
                dead.push(self.dead_letter(topic, offset, deliveries, reason));
            } else {
                self.index_free(topic, offset, not_before, now);
            }
        }
        if let Some(member) = leaving {
            self.held.remove(&member);
        }
        dead
    }

    /// When something next changes by itself: the earliest deadline of a held record,
    /// or the earliest `not_before` of a free one still in the future.
    pub fn next_wakeup(&self, now: u64) -> Option<u64> {
        let deadline = self.deadlines.first().map(|(d, _, _)| *d);
        let delayed = self
            .delayed
            .range((now.saturating_add(1), 0, 0)..)
            .next()
            .map(|(t, _, _)| *t);
        match (deadline, delayed) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Moves a lane's cursor and forgets its pending records.
    pub fn reset(&mut self, topic: TopicId, cursor: u64) {
        let Some(lane) = self.lanes.get_mut(&topic) else {
            return;
        };
        let pending = std::mem::take(&mut lane.pending);
        lane.free.clear();
        lane.cursor = cursor;
        self.dirty_lanes.insert(topic);
        self.open.insert(topic);
        for (offset, p) in pending {
            self.unindex(topic, offset, &p);
            self.forgotten(topic, offset, p.stored());
        }
    }

    /// What changed since the last call, for storage.
    pub fn take_changes(&mut self) -> Vec<Change> {
        let mut changes: Vec<Change> = std::mem::take(&mut self.dirty_lanes)
            .into_iter()
            .filter(|t| self.lanes.contains_key(t))
            .map(Change::Lane)
            .collect();
        for (topic, offset) in std::mem::take(&mut self.dirty_pending) {
            let entry = self
                .lanes
                .get(&topic)
                .and_then(|lane| lane.pending.get(&offset))
                .and_then(Pending::stored);
            changes.push(Change::Pending(topic, offset, entry));
        }
        changes
    }
}

/// The entries of `map` in turn: from the first key at or after `turn`, wrapping round.
fn in_turn<K: Ord + Copy, V>(map: &BTreeMap<K, V>, turn: K) -> impl Iterator<Item = (&K, &V)> {
    map.range(turn..).chain(map.range(..turn))
}

/// Splits `available` records among members with room `rooms`, in turns: equal
/// shares (the first ones one more when it does not divide), none above its room.
fn shares(rooms: impl Iterator<Item = usize>, available: usize) -> Vec<usize> {
    let rooms: Vec<usize> = rooms.collect();
    let mut given = vec![0; rooms.len()];
    let mut left = available;
    loop {
        let open: Vec<usize> = (0..rooms.len()).filter(|&i| given[i] < rooms[i]).collect();
        if left == 0 || open.is_empty() {
            return given;
        }
        let each = (left / open.len()).max(1);
        for i in open {
            let n = each.min(rooms[i] - given[i]).min(left);
            given[i] += n;
            left -= n;
        }
    }
}

#[cfg(test)]
mod tests;
