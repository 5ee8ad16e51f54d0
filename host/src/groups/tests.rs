//! A live group's rounds over a real topic: whichever member's task asks, every member
//! with room gets its share, and records arriving one at a time go to members in turn.

use quiver_protocol::{NewRecord, Retention, TopicName};

use super::*;
use crate::storage::tests::reopen;
use crate::storage::{Storage, StorageConfig};
use crate::util::now_ms;

/// Members joined to a test's group, each with its watch of the topic.
type Joined = Vec<(MemberId, Watch)>;

/// A group over a topic holding `records`, with `members` joined, each watching the
/// topic as a member's task does.
fn group_with(
    rt: &tokio::runtime::Runtime,
    dir: &tempfile::TempDir,
    records: u32,
    members: usize,
) -> (Storage, Arc<TopicLog>, Arc<Group>, Joined) {
    rt.block_on(async {
        let (storage, _) = Storage::open(&config(dir)).unwrap();
        let log = storage
            .create_topic(TopicName::parse("jobs").unwrap(), Retention::default())
            .await
            .unwrap();
        append(&storage, &log, records).await;
        let settings = quiver_protocol::GroupSettings::new("jobs");
        let record = GroupRecord {
            id: 1,
            name: "queue".into(),
            settings,
            created_ms: 0,
        };
        let pattern = TopicPattern::parse("jobs").unwrap();
        let lane = Lane::new(0, BTreeMap::new(), 0, 0);
        let (group, _) = Group::new(record, pattern, vec![(Arc::clone(&log), lane)]);
        let members = (0..members)
            .map(|_| {
                let notify = Arc::new(Notify::new());
                let watch = group.watch(&log, &notify);
                (group.join(notify), watch)
            })
            .collect();
        (storage, log, group, members)
    })
}

async fn append(storage: &Storage, log: &Arc<TopicLog>, records: u32) {
    let records = (0..records)
        .map(|i| NewRecord::new(format!("job-{i}")))
        .collect();
    storage.append(Arc::clone(log), records).await.unwrap();
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn config(dir: &tempfile::TempDir) -> StorageConfig {
    StorageConfig {
        barrier: false,
        path: dir.path().join("db"),
        cache_capacity: 8 << 20,
        chunk_bytes: 64 << 10,
        journal_bytes: crate::storage::DEFAULT_JOURNAL_BYTES,
        group_deltas: crate::storage::DEFAULT_GROUP_DELTAS,
    }
}

#[test]
fn the_first_member_to_ask_does_not_take_everything() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let (storage, log, group, members) = group_with(&rt, &dir, 0, 4);
    let members: Vec<MemberId> = members.iter().map(|(m, _)| *m).collect();
    rt.block_on(async {
        // Every member waits with room (its task asked, and there was nothing).
        for &member in &members {
            let (none, _) = group.changes().await.assign(member, 256, now_ms());
            assert!(none.is_empty());
        }
        append(&storage, &log, 100).await;
        let changes = group.changes().await;
        let (mine, _) = changes.assign(members[0], 256, now_ms());
        assert_eq!(mine.len(), 25, "its share, not all 100");
        // The others' shares wait for them, counted as held, not yet taken.
        for &other in &members[1..] {
            assert_eq!(group.held(other), 0);
            let (theirs, _) = changes.assign(other, 256, now_ms());
            assert_eq!(theirs.len(), 25);
            assert_eq!(group.held(other), 25);
        }
        drop(changes);
        storage.close().await;
    });
}

#[test]
fn records_arriving_one_at_a_time_go_to_members_in_turn() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let (storage, log, group, members) = group_with(&rt, &dir, 0, 3);
    let members: Vec<MemberId> = members.iter().map(|(m, _)| *m).collect();
    rt.block_on(async {
        let mut got = Vec::new();
        for _ in 0..6 {
            append(&storage, &log, 1).await;
            // The first member's task always asks first (as the first watcher woken).
            let changes = group.changes().await;
            let (mine, _) = changes.assign(members[0], 256, now_ms());
            let mut holder = None;
            if !mine.is_empty() {
                holder = Some(0);
            }
            for (i, &other) in members.iter().enumerate().skip(1) {
                let (theirs, _) = changes.assign(other, 256, now_ms());
                if !theirs.is_empty() {
                    holder = Some(i);
                }
            }
            got.push(holder.expect("someone got the record"));
        }
        assert_eq!(got, [0, 1, 2, 0, 1, 2]);
        storage.close().await;
    });
}

#[test]
fn records_appended_while_nobody_watched_reach_the_next_member() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let (storage, log, group, mut members) = group_with(&rt, &dir, 3, 1);
    rt.block_on(async {
        let (first, _) = members.pop().unwrap();
        let (taken, _) = group.changes().await.assign(first, 256, now_ms());
        assert_eq!(taken.len(), 3, "the lane is drained");
        group.changes().await.leave(first, now_ms());
        // With no member connected, no watch tells the group the topic grew.
        append(&storage, &log, 4).await;
        let notify = Arc::new(Notify::new());
        let _watch = group.watch(&log, &notify);
        let next = group.join(notify);
        let (taken, _) = group.changes().await.assign(next, 256, now_ms());
        let offsets: Vec<u64> = taken.iter().map(|d| d.offset).collect();
        assert_eq!(
            offsets,
            [0, 1, 2, 3, 4, 5, 6],
            "the three left unsettled, and the four new"
        );
        storage.close().await;
    });
}

#[test]
fn a_topic_is_noted_once_per_round_however_many_members_watch_it() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let (storage, log, group, members) = group_with(&rt, &dir, 0, 3);
    rt.block_on(async {
        let noted = || lock(&group.grown.0).len();
        let (first, _) = members[0];
        // Joining noted the topic once, for all three watches.
        assert_eq!(noted(), 1);
        group.changes().await.assign(first, 256, now_ms());
        assert_eq!(noted(), 0, "a round takes what was noted");
        for round in 1..=3u64 {
            append(&storage, &log, 2).await;
            append(&storage, &log, 2).await;
            assert_eq!(noted(), 1, "two commits, three watches: one note");
            let (taken, _) = group.changes().await.assign(first, 256, now_ms());
            let offsets: Vec<u64> = taken.iter().map(|d| d.offset).collect();
            let from = (round - 1) * 4;
            assert_eq!(
                offsets,
                (from..from + 4).collect::<Vec<_>>(),
                "the mark was cleared, so round {round} sees the topic grow again"
            );
        }
        storage.close().await;
    });
}

/// `group describe` reads a group while its members' rounds run, on other threads: the
/// two take the group's locks in the same order, so neither waits on the other for
/// ever. (`Group::info` used to hold the state while it counted the members, the
/// reverse of a round's order: with one runtime worker in each, the broker stopped
/// answering anyone.)
#[test]
fn describing_a_group_while_its_members_take_rounds_does_not_deadlock() {
    const ROUNDS: usize = 20_000;
    let runtime = rt();
    let dir = tempfile::tempdir().unwrap();
    let (storage, _log, group, members) = group_with(&runtime, &dir, 100, 2);
    let (done, finished) = std::sync::mpsc::channel();
    let describer = {
        let (group, done) = (Arc::clone(&group), done.clone());
        std::thread::spawn(move || {
            let described = (0..ROUNDS).filter(|_| group.info().members == 2).count();
            let _ = done.send(());
            described
        })
    };
    let member = members[0].0;
    let rounds = {
        let group = Arc::clone(&group);
        std::thread::spawn(move || {
            rt().block_on(async {
                for _ in 0..ROUNDS {
                    group.changes().await.assign(member, 1, now_ms());
                }
            });
            let _ = done.send(());
        })
    };
    // A deadlock never ends: wait for each side for a bounded while instead of joining.
    for _ in 0..2 {
        if let Err(e) = finished.recv_timeout(std::time::Duration::from_secs(60)) {
            panic!("describing the group and a member's rounds wait on each other: {e}");
        }
    }
    let described = describer.join().unwrap();
    rounds.join().unwrap();
    assert_eq!(described, ROUNDS, "every description counted both members");
    assert_eq!(
        group.held(member),
        100,
        "the rounds ran: the member holds every record"
    );
    runtime.block_on(storage.close());
}

/// A data dir written before plain runs: a 24-byte lane and a `u` key for every
/// pending record. It loads as it was, and its plain records move into the lane's runs
/// (their keys removed in the same commit).
#[test]
fn a_group_stored_record_by_record_loads_and_moves_into_runs() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let config = config(&dir);
    let record = GroupRecord {
        id: 9,
        name: "queue".into(),
        settings: quiver_protocol::GroupSettings::new("jobs"),
        created_ms: 0,
    };
    rt.block_on(async {
        let (storage, _) = Storage::open(&config).unwrap();
        let log = storage
            .create_topic(TopicName::parse("jobs").unwrap(), Retention::default())
            .await
            .unwrap();
        append(&storage, &log, 10).await;
        // What the old writer wrote: the lane (24 bytes, no runs) and a key per
        // pending record, plain ones included.
        storage
            .create_group(record.clone(), vec![(log.id(), 0)])
            .await
            .unwrap();
        let topic = log.id();
        let old = vec![
            GroupWrite::Lane {
                topic,
                cursor: 6,
                redelivered: 1,
                dead_lettered: 0,
                plain: Vec::new(),
            },
            GroupWrite::Pending {
                topic,
                offset: 1,
                entry: Some((1, 0)),
            },
            GroupWrite::Pending {
                topic,
                offset: 2,
                entry: Some((2, 0)),
            },
            GroupWrite::Pending {
                topic,
                offset: 4,
                entry: Some((1, 0)),
            },
            GroupWrite::Pending {
                topic,
                offset: 5,
                entry: Some((1, 0)),
            },
        ];
        storage.group_writes("queue".into(), 9, old).await.unwrap();
        storage.close().await;
    });
    let (storage, topics) = reopen(&config);
    let stored = storage.groups().unwrap();
    assert!(stored[0].lanes[0].plain.is_empty(), "the old form");
    let (groups, loaded) = Groups::load(stored, &topics);
    let group = groups.get("queue").unwrap();
    let topic = topics[0].id();
    let lane = lock(&group.state).lanes()[&topic].clone();
    let pending: Vec<(u64, u32)> = lane
        .pending
        .iter()
        .map(|(o, p)| (*o, p.deliveries))
        .collect();
    assert_eq!(pending, [(1, 1), (2, 2), (4, 1), (5, 1)], "as it was");
    let writes = loaded[0].writes.clone();
    for offset in [1, 4, 5] {
        assert!(writes.contains(&GroupWrite::Pending {
            topic,
            offset,
            entry: None
        }));
    }
    assert!(writes.contains(&GroupWrite::Lane {
        topic,
        cursor: 6,
        redelivered: 1,
        dead_lettered: 0,
        plain: vec![(1, 1), (4, 2)],
    }));
    rt.block_on(async {
        storage
            .group_writes("queue".into(), 9, writes)
            .await
            .unwrap();
        storage.close().await;
    });
    drop((groups, loaded, group, topics, storage));
    let (storage, _) = reopen(&config);
    let lane = storage.groups().unwrap()[0].lanes[0].clone();
    assert_eq!(lane.plain, [(1, 1), (4, 2)]);
    assert_eq!(
        lane.pending,
        [(2, 2, 0)],
        "only the redelivered one keeps its key"
    );
    rt.block_on(storage.close());
}
