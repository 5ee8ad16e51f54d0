//! The group state machine against a reference model: random sequences of
//! assignments (one member, or several dealt in turns), settlements (one record, or
//! runs of acks), timeouts, members leaving, appends and restarts from what storage
//! was told (plain runs in the lane, the rest record by record).

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;

const POLICY: Policy = Policy {
    ack_timeout_ms: 100,
    max_deliveries: 3,
};
const TOPIC: TopicId = 7;

/// What the model knows of one offset below the cursor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rec {
    Held {
        member: MemberId,
        deadline: u64,
        deliveries: u32,
        not_before: u64,
    },
    Free {
        deliveries: u32,
        not_before: u64,
    },
    Settled,
}

/// The obvious implementation: every offset's fate in a map, scanned in full.
#[derive(Debug, Default)]
struct Model {
    recs: BTreeMap<u64, Rec>,
    end: u64,
    dead: Vec<(u64, u32)>,
}

impl Model {
    fn cursor(&self) -> u64 {
        self.recs.keys().next_back().map_or(0, |o| o + 1)
    }

    fn assign(&mut self, member: MemberId, max: usize, now: u64) -> Vec<(u64, u32)> {
        let mut out = Vec::new();
        for (&offset, rec) in self.recs.iter_mut() {
            if out.len() == max {
                break;
            }
            if let Rec::Free {
                deliveries,
                not_before,
            } = *rec
                && not_before <= now
            {
                *rec = Rec::Held {
                    member,
                    deadline: now + POLICY.ack_timeout_ms,
                    deliveries: deliveries + 1,
                    not_before,
                };
                out.push((offset, deliveries + 1));
            }
        }
        for offset in self.cursor()..self.end {
            if out.len() == max {
                break;
            }
            self.recs.insert(
                offset,
                Rec::Held {
                    member,
                    deadline: now + POLICY.ack_timeout_ms,
                    deliveries: 1,
                    not_before: 0,
                },
            );
            out.push((offset, 1));
        }
        out
    }

    /// Acks every record of `offsets` `member` holds.
    fn ack_range(&mut self, member: MemberId, offsets: std::ops::Range<u64>) {
        let held: Vec<u64> = self
            .held_by(member)
            .into_iter()
            .filter(|o| offsets.contains(o))
            .collect();
        for offset in held {
            self.recs.insert(offset, Rec::Settled);
        }
    }

    /// Gives a record assign handed out to another member.
    fn give(&mut self, offset: u64, to: MemberId) {
        if let Some(Rec::Held { member, .. }) = self.recs.get_mut(&offset) {
            *member = to;
        }
    }

    fn held_by(&self, member: MemberId) -> Vec<u64> {
        self.recs
            .iter()
            .filter(|(_, r)| matches!(r, Rec::Held { member: m, .. } if *m == member))
            .map(|(o, _)| *o)
            .collect()
    }

    fn settle(&mut self, member: MemberId, offset: u64, action: &Action, now: u64) {
        let Some(Rec::Held {
            member: m,
            deliveries,
            not_before,
            ..
        }) = self.recs.get(&offset).copied()
        else {
            return;
        };
        if m != member {
            return;
        }
        let next = match action {
            Action::Ack => Rec::Settled,
            Action::Term(_) => {
                self.dead.push((offset, deliveries));
                Rec::Settled
            }
            Action::InProgress => Rec::Held {
                member,
                deadline: now + POLICY.ack_timeout_ms,
                deliveries,
                not_before,
            },
            Action::Nack { delay_ms } if deliveries < POLICY.max_deliveries => Rec::Free {
                deliveries,
                not_before: now + delay_ms,
            },
            Action::Nack { .. } => {
                self.dead.push((offset, deliveries));
                Rec::Settled
            }
        };
        self.recs.insert(offset, next);
    }

    fn release(&mut self, now: u64, leaving: Option<MemberId>) {
        for (&offset, rec) in self.recs.iter_mut() {
            if let Rec::Held {
                member,
                deadline,
                deliveries,
                not_before,
            } = *rec
                && (deadline <= now || Some(member) == leaving)
            {
                *rec = if deliveries >= POLICY.max_deliveries {
                    self.dead.push((offset, deliveries));
                    Rec::Settled
                } else {
                    Rec::Free {
                        deliveries,
                        not_before,
                    }
                };
            }
        }
    }

    fn restart(&mut self) {
        for (&offset, rec) in self.recs.iter_mut() {
            if let Rec::Held {
                deliveries,
                not_before,
                ..
            } = *rec
            {
                *rec = if deliveries >= POLICY.max_deliveries {
                    self.dead.push((offset, deliveries));
                    Rec::Settled
                } else {
                    Rec::Free {
                        deliveries,
                        not_before,
                    }
                };
            }
        }
    }
}

#[derive(Debug, Clone)]
enum Op {
    Append(u8),
    Assign(MemberId, u8),
    Deal(Vec<(MemberId, u8)>),
    AckRange(MemberId, u8, u8),
    Settle(MemberId, u8, u8),
    Advance(u8),
    Leave(MemberId),
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (1u8..6).prop_map(Op::Append),
        3 => (0u64..3, 1u8..4).prop_map(|(m, n)| Op::Assign(m, n)),
        3 => proptest::collection::vec((0u64..3, 0u8..6), 1..4).prop_map(|mut wants| {
            // A member asks once per round.
            wants.sort_by_key(|(m, _)| *m);
            wants.dedup_by_key(|(m, _)| *m);
            Op::Deal(wants)
        }),
        2 => (0u64..3, any::<u8>(), 0u8..8).prop_map(|(m, first, n)| Op::AckRange(m, first, n)),
        4 => (0u64..3, any::<u8>(), 0u8..5).prop_map(|(m, i, a)| Op::Settle(m, i, a)),
        2 => (0u8..80).prop_map(Op::Advance),
        1 => (0u64..3).prop_map(Op::Leave),
        1 => Just(Op::Restart),
    ]
}

/// Applies storage changes to a "disk" and rebuilds the lanes from it, as a restart
/// does.
fn persist(
    state: &mut GroupState,
    disk: &mut BTreeMap<u64, (u32, u64)>,
    cursor: &mut u64,
    counters: &mut (u64, u64),
    plain: &mut Vec<(u64, u64)>,
) {
    for change in state.take_changes() {
        match change {
            Change::Lane(_) => {
                let lane = &state.lanes()[&TOPIC];
                *cursor = lane.cursor;
                *counters = (lane.redelivered, lane.dead_lettered);
                *plain = lane.plain_runs();
            }
            Change::Pending(_, offset, Some(entry)) => {
                disk.insert(offset, entry);
            }
            Change::Pending(_, offset, None) => {
                disk.remove(&offset);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn the_state_machine_matches_the_model(ops in proptest::collection::vec(op(), 1..80)) {
        let mut model = Model::default();
        let mut state = GroupState::default();
        state.add_lane(TOPIC, 0);
        let mut disk = BTreeMap::new();
        let mut cursor = 0;
        let mut counters = (0, 0);
        let mut plain = Vec::new();
        let mut now = 0u64;
        let mut dead = Vec::new();
        for op in ops {
            match op {
                Op::Append(n) => {
                    model.end += u64::from(n);
                    state.grew(TOPIC);
                }
                Op::Assign(member, max) => {
                    let end = model.end;
                    let got: Vec<(u64, u32)> = state
                        .assign(member, max.into(), now, POLICY, |_| (0, end))
                        .into_iter()
                        .map(|d| (d.offset, d.deliveries))
                        .collect();
                    prop_assert_eq!(got, model.assign(member, max.into(), now));
                }
                Op::Deal(wants) => {
                    let end = model.end;
                    let wants: Vec<(MemberId, usize)> =
                        wants.into_iter().map(|(m, n)| (m, usize::from(n))).collect();
                    let total = wants.iter().map(|(_, n)| n).sum();
                    let dealt = state.deal(&wants, now, POLICY, |_| (0, end));
                    // The records are those one member with all the room would get, in
                    // contiguous slices, in the order of the members.
                    let all: Vec<(u64, u32)> = dealt
                        .iter()
                        .flatten()
                        .map(|d| (d.offset, d.deliveries))
                        .collect();
                    prop_assert_eq!(&all, &model.assign(u64::MAX, total, now));
                    for ((member, want), got) in wants.iter().zip(&dealt) {
                        prop_assert!(got.len() <= *want);
                        for d in got {
                            model.give(d.offset, *member);
                        }
                    }
                    // In turns: no member got two more than another that had room.
                    for ((_, want_a), a) in wants.iter().zip(&dealt) {
                        for ((_, want_b), b) in wants.iter().zip(&dealt) {
                            if b.len() < *want_b && *want_a > 0 {
                                prop_assert!(a.len() <= b.len() + 1, "unfair: {:?}", dealt);
                            }
                        }
                    }
                }
                Op::AckRange(member, first, n) => {
                    let offsets = u64::from(first) % 32..u64::from(first) % 32 + u64::from(n);
                    model.ack_range(member, offsets.clone());
                    state.ack_range(member, TOPIC, offsets);
                }
                Op::Settle(member, pick, action) => {
                    let held = model.held_by(member);
                    let offset = match held.len() {
                        0 => u64::from(pick), // settling what one does not hold: ignored
                        n => held[usize::from(pick) % n],
                    };
                    let action = match action {
                        0 | 1 => Action::Ack,
                        2 => Action::Nack { delay_ms: u64::from(pick % 50) },
                        3 => Action::Term("bad".into()),
                        _ => Action::InProgress,
                    };
                    model.settle(member, offset, &action, now);
                    if let Some(d) = state.settle(member, TOPIC, offset, action, now, POLICY) {
                        dead.push((d.offset, d.deliveries));
                    }
                }
                Op::Advance(ms) => {
                    now += u64::from(ms);
                    model.release(now, None);
                    dead.extend(state.release(now, None, POLICY).into_iter().map(|d| (d.offset, d.deliveries)));
                }
                Op::Leave(member) => {
                    model.release(now, Some(member));
                    dead.extend(state.release(now, Some(member), POLICY).into_iter().map(|d| (d.offset, d.deliveries)));
                }
                Op::Restart => {
                    persist(&mut state, &mut disk, &mut cursor, &mut counters, &mut plain);
                    let mut pending: BTreeMap<u64, Pending> = disk
                        .iter()
                        .map(|(&o, &(deliveries, not_before))| (o, Pending { deliveries, holder: None, not_before }))
                        .collect();
                    for &(first, count) in &plain {
                        for o in first..first + count {
                            prop_assert!(!disk.contains_key(&o), "offset {} stored twice", o);
                            pending.insert(o, Pending { deliveries: 1, holder: None, not_before: 0 });
                        }
                    }
                    let lane = Lane::new(cursor, pending, counters.0, counters.1);
                    let (reloaded, exhausted) = GroupState::load(BTreeMap::from([(TOPIC, lane)]), POLICY);
                    state = reloaded;
                    dead.extend(exhausted.into_iter().map(|d| (d.offset, d.deliveries)));
                    model.restart();
                }
            }
            // Same records held, free and settled; same dead letters.
            let lane = &state.lanes()[&TOPIC];
            prop_assert_eq!(lane.cursor, model.cursor());
            for (&offset, rec) in &model.recs {
                match (rec, lane.pending.get(&offset)) {
                    (Rec::Settled, None) => {}
                    (Rec::Held { member, deadline, deliveries, .. }, Some(p)) => {
                        prop_assert_eq!(p.holder, Some((*member, *deadline)));
                        prop_assert_eq!(p.deliveries, *deliveries);
                    }
                    (Rec::Free { deliveries, not_before }, Some(p)) => {
                        prop_assert_eq!(p.holder, None);
                        prop_assert_eq!((p.deliveries, p.not_before), (*deliveries, *not_before));
                    }
                    (rec, pending) => prop_assert!(false, "offset {}: model {:?}, state {:?}", offset, rec, pending),
                }
            }
            prop_assert!(lane.pending.keys().all(|o| model.recs.contains_key(o)));
            // The plain records' index agrees with the pending records it indexes.
            let mut runs: Vec<(u64, u64)> = Vec::new();
            for (&offset, _) in lane.pending.iter().filter(|(_, p)| p.is_plain()) {
                match runs.last_mut() {
                    Some((first, count)) if *first + *count == offset => *count += 1,
                    _ => runs.push((offset, 1)),
                }
            }
            prop_assert_eq!(lane.plain_runs(), runs);
            prop_assert_eq!(&dead, &model.dead);
            for member in 0..3 {
                prop_assert_eq!(state.held(member), model.held_by(member).len());
            }
            prop_assert_eq!(lane.dead_lettered, model.dead.len() as u64);
        }
    }
}

#[test]
fn records_trimmed_away_leave_the_pending_set() {
    let mut state = GroupState::default();
    state.add_lane(TOPIC, 0);
    let first = state.assign(1, 5, 0, POLICY, |_| (0, 5));
    assert_eq!(first.len(), 5);
    state.release(0, Some(1), POLICY);
    // Retention removed offsets 0..3 meanwhile: only 3 and 4 are delivered again.
    let again = state.assign(2, 5, 0, POLICY, |_| (3, 5));
    assert_eq!(again.iter().map(|d| d.offset).collect::<Vec<_>>(), [3, 4]);
    assert_eq!(state.held(2), 2);
    // Delivered twice now, so no plain record is left to store with the lane.
    assert_eq!(state.lanes()[&TOPIC].plain_runs(), []);
}

#[test]
fn lanes_take_turns() {
    let mut state = GroupState::default();
    state.add_lane(1, 0);
    state.add_lane(2, 0);
    let a = state.assign(1, 1, 0, POLICY, |_| (0, 10));
    let b = state.assign(1, 1, 0, POLICY, |_| (0, 10));
    assert_ne!(
        a[0].topic, b[0].topic,
        "one busy topic does not starve another"
    );
}

#[test]
fn a_pick_goes_on_past_the_last_lane_it_took_from() {
    let mut state = GroupState::default();
    for topic in 1..=3 {
        state.add_lane(topic, 0);
    }
    let taken = |got: Vec<Delivery>| got.iter().map(|d| (d.topic, d.offset)).collect::<Vec<_>>();
    // Lane 1 whole and two of lane 2's five records.
    let first = taken(state.assign(1, 7, 0, POLICY, |_| (0, 5)));
    assert_eq!(
        first[..],
        [(1, 0), (1, 1), (1, 2), (1, 3), (1, 4), (2, 0), (2, 1)]
    );
    // Lane 3, which had none yet, comes before the rest of lane 2; then lane 2.
    assert_eq!(taken(state.assign(1, 1, 0, POLICY, |_| (0, 5))), [(3, 0)]);
    assert_eq!(taken(state.assign(1, 1, 0, POLICY, |_| (0, 5))), [(2, 2)]);
}

#[test]
fn new_records_are_looked_for_in_lanes_whose_topic_grew() {
    let mut state = GroupState::default();
    for topic in 1..=3 {
        state.add_lane(topic, 0);
    }
    let looked = std::cell::RefCell::new(Vec::new());
    let pick = |state: &mut GroupState, end: u64| {
        looked.borrow_mut().clear();
        let got = state.assign(1, 100, 0, POLICY, |topic| {
            looked.borrow_mut().push(topic);
            (0, end)
        });
        got.iter().map(|d| (d.topic, d.offset)).collect::<Vec<_>>()
    };
    assert_eq!(pick(&mut state, 1), [(1, 0), (2, 0), (3, 0)], "added: open");
    // Every lane drained. Records appended to all three topics are not looked for
    // until a topic says it grew.
    assert_eq!(pick(&mut state, 2), []);
    assert_eq!(*looked.borrow(), [] as [TopicId; 0]);
    state.grew(2);
    state.grew(99); // not a lane of the group: ignored
    assert_eq!(pick(&mut state, 2), [(2, 1)]);
    assert_eq!(*looked.borrow(), [2]);
    // A reset opens its lane again.
    state.reset(1, 0);
    assert_eq!(pick(&mut state, 2), [(1, 0), (1, 1)]);
}

#[test]
fn plain_records_are_stored_with_their_lane_only() {
    let mut state = GroupState::default();
    state.add_lane(TOPIC, 0);
    state.take_changes();
    assert_eq!(state.assign(1, 100, 0, POLICY, |_| (0, 1000)).len(), 100);
    assert_eq!(state.take_changes(), [Change::Lane(TOPIC)]);
    assert_eq!(state.lanes()[&TOPIC].plain_runs(), [(0, 100)]);
    assert_eq!(state.ack_range(1, TOPIC, 0..50), 50);
    assert_eq!(state.ack_range(2, TOPIC, 50..100), 0, "held by another");
    assert_eq!(state.take_changes(), [Change::Lane(TOPIC)]);
    assert_eq!(state.lanes()[&TOPIC].plain_runs(), [(50, 50)]);
    // A redelivery gets an entry of its own, and leaves the runs.
    state.release(0, Some(1), POLICY);
    let again = state.assign(2, 1, 0, POLICY, |_| (0, 1000));
    assert_eq!((again[0].offset, again[0].deliveries), (50, 2));
    assert_eq!(
        state.take_changes(),
        [
            Change::Lane(TOPIC),
            Change::Pending(TOPIC, 50, Some((2, 0)))
        ]
    );
    assert_eq!(state.lanes()[&TOPIC].plain_runs(), [(51, 49)]);
}

#[test]
fn a_round_deals_equal_contiguous_shares_within_each_room() {
    let mut state = GroupState::default();
    state.add_lane(TOPIC, 0);
    let wants = [(1, 256), (2, 256), (3, 256), (4, 256)];
    let dealt = state.deal(&wants, 0, POLICY, |_| (0, 102));
    let counts: Vec<usize> = dealt.iter().map(Vec::len).collect();
    assert_eq!(counts, [26, 26, 25, 25]);
    for share in &dealt {
        assert!(share.windows(2).all(|w| w[1].offset == w[0].offset + 1));
    }
    // A member with less room gets all it has room for; the rest goes to the others.
    state.grew(TOPIC);
    let dealt = state.deal(&[(5, 3), (6, 256)], 0, POLICY, |_| (0, 202));
    assert_eq!(dealt.iter().map(Vec::len).collect::<Vec<_>>(), [3, 97]);
    assert_eq!(state.held(5), 3);
    assert_eq!(state.held(1), 26);
}
