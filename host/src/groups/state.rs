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
//!   `not_before` are persisted: holders are not (members do not outlive the broker).

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
}

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
    /// A lane's cursor or counters changed.
    Lane(TopicId),
    /// A pending record changed (`Some`) or is gone (`None`): its delivery count and
    /// `not_before`.
    Pending(TopicId, u64, Option<(u32, u64)>),
}

/// A group's lanes and who holds what.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupState {
    lanes: BTreeMap<TopicId, Lane>,
    held: HashMap<MemberId, usize>,
    /// Round-robin position among lanes.
    turn: usize,
    dirty_lanes: BTreeSet<TopicId>,
    dirty_pending: BTreeSet<(TopicId, u64)>,
}

impl GroupState {
    /// A group as loaded from storage: nothing is held. Records already delivered
    /// `max_deliveries` times whose last delivery the restart cut short are dead
    /// letters, since they may not be delivered again.
    pub fn load(lanes: BTreeMap<TopicId, Lane>, policy: Policy) -> (Self, Vec<DeadLetter>) {
        let mut state = Self {
            lanes,
            ..Self::default()
        };
        let exhausted: Vec<(TopicId, u64, u32)> = state
            .lanes
            .iter()
            .flat_map(|(&topic, lane)| {
                lane.pending
                    .iter()
                    .filter(|(_, p)| p.deliveries >= policy.max_deliveries)
                    .map(move |(&offset, p)| (topic, offset, p.deliveries))
            })
            .collect();
        let dead = exhausted
            .into_iter()
            .map(|(topic, offset, deliveries)| {
                if let Some(lane) = state.lanes.get_mut(&topic) {
                    lane.pending.remove(&offset);
                }
                state.dirty_pending.insert((topic, offset));
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
        self.lanes.insert(
            topic,
            Lane {
                cursor,
                ..Lane::default()
            },
        );
        self.dirty_lanes.insert(topic);
        true
    }

    /// Stops consuming a deleted topic.
    pub fn remove_lane(&mut self, topic: TopicId) {
        if let Some(lane) = self.lanes.remove(&topic) {
            for pending in lane.pending.values() {
                if let Some((member, _)) = pending.holder {
                    self.unhold(member);
                }
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
        let mut out = Vec::new();
        let topics: Vec<TopicId> = self.lanes.keys().copied().collect();
        let n = topics.len();
        // Free records first, in every lane.
        for i in 0..n {
            let topic = topics[(self.turn + i) % n];
            let (first, _) = bounds(topic);
            let Some(lane) = self.lanes.get_mut(&topic) else {
                continue;
            };
            // Records retention removed are gone: nothing left to settle.
            let gone: Vec<u64> = lane.pending.range(..first).map(|(o, _)| *o).collect();
            for offset in gone {
                if let Some(p) = lane.pending.remove(&offset)
                    && let Some((holder, _)) = p.holder
                    && let Some(count) = self.held.get_mut(&holder)
                {
                    *count = count.saturating_sub(1);
                }
                self.dirty_pending.insert((topic, offset));
            }
            for (&offset, pending) in lane.pending.iter_mut() {
                if out.len() >= max {
                    break;
                }
                if pending.holder.is_none() && pending.not_before <= now {
                    pending.deliveries += 1;
                    pending.holder = Some((member, now + policy.ack_timeout_ms));
                    lane.redelivered += 1;
                    out.push(Delivery {
                        topic,
                        offset,
                        deliveries: pending.deliveries,
                    });
                    self.dirty_pending.insert((topic, offset));
                    self.dirty_lanes.insert(topic);
                }
            }
        }
        // Then new records, lane by lane in turn.
        for i in 0..n {
            if out.len() >= max {
                break;
            }
            let topic = topics[(self.turn + i) % n];
            let (first, end) = bounds(topic);
            let Some(lane) = self.lanes.get_mut(&topic) else {
                continue;
            };
            let start = lane.cursor.max(first);
            let take = (end.saturating_sub(start)).min((max - out.len()) as u64);
            for offset in start..start + take {
                lane.pending.insert(
                    offset,
                    Pending {
                        deliveries: 1,
                        holder: Some((member, now + policy.ack_timeout_ms)),
                        not_before: 0,
                    },
                );
                out.push(Delivery {
                    topic,
                    offset,
                    deliveries: 1,
                });
                self.dirty_pending.insert((topic, offset));
            }
            if start + take != lane.cursor {
                lane.cursor = start + take;
                self.dirty_lanes.insert(topic);
            }
        }
        if n > 0 {
            self.turn = (self.turn + 1) % n;
        }
        *self.held.entry(member).or_default() += out.len();
        out
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
        if pending.holder.map(|(m, _)| m) != Some(member) {
            return None;
        }
        let deliveries = pending.deliveries;
        let dead = match action {
            Action::InProgress => {
                pending.holder = Some((member, now + policy.ack_timeout_ms));
                return None;
            }
            Action::Ack => None,
            Action::Term(reason) => Some(reason),
            Action::Nack { delay_ms } => {
                if deliveries < policy.max_deliveries {
                    pending.holder = None;
                    pending.not_before = now.saturating_add(delay_ms);
                    self.dirty_pending.insert((topic, offset));
                    self.unhold(member);
                    return None;
                }
                Some(format!(
                    "nacked after {deliveries} deliveries (max_deliveries)"
                ))
            }
        };
        lane.pending.remove(&offset);
        self.dirty_pending.insert((topic, offset));
        self.unhold(member);
        dead.map(|reason| self.dead_letter(topic, offset, deliveries, reason))
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
    /// `max_deliveries` times.
    pub fn release(
        &mut self,
        now: u64,
        leaving: Option<MemberId>,
        policy: Policy,
    ) -> Vec<DeadLetter> {
        let mut released = Vec::new();
        for (&topic, lane) in &mut self.lanes {
            for (&offset, pending) in &mut lane.pending {
                let Some((holder, deadline)) = pending.holder else {
                    continue;
                };
                if deadline <= now || Some(holder) == leaving {
                    released.push((topic, offset, holder, pending.deliveries));
                }
            }
        }
        let mut dead = Vec::new();
        for (topic, offset, holder, deliveries) in released {
            self.unhold(holder);
            self.dirty_pending.insert((topic, offset));
            let Some(lane) = self.lanes.get_mut(&topic) else {
                continue;
            };
            if deliveries >= policy.max_deliveries {
                lane.pending.remove(&offset);
                let why = match Some(holder) == leaving {
                    true => "its member left",
                    false => "not settled within the ack timeout",
                };
                let reason = format!("delivered {deliveries} times (max_deliveries), {why}");
                dead.push(self.dead_letter(topic, offset, deliveries, reason));
            } else if let Some(pending) = lane.pending.get_mut(&offset) {
                pending.holder = None;
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
        self.lanes
            .values()
            .flat_map(|lane| lane.pending.values())
            .filter_map(|p| match p.holder {
                Some((_, deadline)) => Some(deadline),
                None => (p.not_before > now).then_some(p.not_before),
            })
            .min()
    }

    /// Moves a lane's cursor and forgets its pending records.
    pub fn reset(&mut self, topic: TopicId, cursor: u64) {
        let Some(lane) = self.lanes.get_mut(&topic) else {
            return;
        };
        let held: Vec<MemberId> = lane
            .pending
            .values()
            .filter_map(|p| p.holder.map(|(m, _)| m))
            .collect();
        for offset in lane.pending.keys() {
            self.dirty_pending.insert((topic, *offset));
        }
        lane.pending.clear();
        lane.cursor = cursor;
        self.dirty_lanes.insert(topic);
        for member in held {
            self.unhold(member);
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
                .map(|p| (p.deliveries, p.not_before));
            changes.push(Change::Pending(topic, offset, entry));
        }
        changes
    }
}

#[cfg(test)]
mod tests;
