//! Storage tests against real sled data dirs in temp dirs.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Range;

use proptest::prelude::*;
use quiver_protocol::record::decode_batch;
use quiver_protocol::{
    Durability, GroupSettings, OnError, PublishId, Receipt, Retention, Stage, StageLimits,
};

use super::log::TopicMeta;
use super::open::{SEGMENT_BYTES, catch_panic, created_segment_size, next_chunk};
use super::read::decode_index;
use super::writer::CLEANUP_STEP;
use super::*;
use crate::util::now_ms;

fn config(dir: &tempfile::TempDir, chunk_bytes: usize) -> StorageConfig {
    StorageConfig {
        barrier: true,
        path: dir.path().join("db"),
        cache_capacity: 8 << 20,
        chunk_bytes,
        journal_bytes: DEFAULT_JOURNAL_BYTES,
        group_deltas: DEFAULT_GROUP_DELTAS,
    }
}

/// Opens a data dir a closed `Storage` used.
pub(crate) fn reopen(config: &StorageConfig) -> (Storage, Vec<Arc<TopicLog>>) {
    while_locked(
        || Storage::open(config),
        |e| matches!(e, StorageError::Sled(e) if sled_lock(e)),
    )
}

/// Runs `open` until it fails on something other than `locked`. sled releases its
/// directory lock when the last handle inside it drops, and its IO threads may still
/// hold one for a moment after it is closed or dropped: retry on that error alone, a
/// bounded number of times.
fn while_locked<T, E: std::fmt::Debug>(
    mut open: impl FnMut() -> Result<T, E>,
    locked: impl Fn(&E) -> bool,
) -> T {
    for _ in 0..500 {
        match open() {
            Err(e) if locked(&e) => std::thread::sleep(std::time::Duration::from_millis(2)),
            opened => return opened.unwrap(),
        }
    }
    panic!("the data dir stayed locked after its storage was closed")
}

/// sled's error for a data dir another handle still locks.
fn sled_lock(e: &sled::Error) -> bool {
    matches!(e, sled::Error::Io(e) if e.to_string().contains("lock"))
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn name(s: &str) -> TopicName {
    TopicName::parse(s).unwrap()
}

fn payloads(range: std::ops::Range<u32>) -> Vec<NewRecord> {
    range
        .map(|i| NewRecord::new(format!("record-{i}")))
        .collect()
}

/// Every readable record of a topic, read in slices of `step`.
fn read_all(storage: &Storage, log: &TopicLog, step: u32) -> Vec<(u64, Bytes)> {
    let mut out = Vec::new();
    let mut next = 0;
    while let Some(slice) = storage.read(log, next, step, usize::MAX).unwrap() {
        let records = decode_batch(slice.base_offset, &slice.batch).unwrap();
        assert_eq!(records.len(), slice.count as usize);
        assert!(slice.count <= step);
        next = slice.base_offset + u64::from(slice.count);
        out.extend(records.into_iter().map(|r| (r.offset, r.payload)));
    }
    out
}

#[test]
fn appends_are_dense_and_read_back() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let (storage, topics) = Storage::open(&config(&dir, 200)).unwrap();
        assert!(topics.is_empty());
        let log = storage
            .create_topic(name("a.b"), Retention::default())
            .await
            .unwrap();
        let first = storage.append(log.clone(), payloads(0..10)).await.unwrap();
        let second = storage.append(log.clone(), payloads(10..25)).await.unwrap();
        assert_eq!((first.base_offset, first.count), (0, 10));
        assert_eq!((second.base_offset, second.count), (10, 15));
        let all = read_all(&storage, &log, 7);
        assert_eq!(all.len(), 25);
        for (i, (offset, payload)) in all.iter().enumerate() {
            assert_eq!(*offset, i as u64);
            assert_eq!(payload, &format!("record-{i}"));
        }
        let stats = log.stats();
        assert_eq!((stats.first, stats.next, stats.records()), (0, 25, 25));
        assert!(stats.bytes > 25 * 8);
        storage.close().await;
    });
}

#[test]
fn concurrent_appends_share_commits_and_get_unique_offsets() {
    let dir = tempfile::tempdir().unwrap();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let (storage, _) = Storage::open(&config(&dir, 4096)).unwrap();
            let log = storage
                .create_topic(name("t"), Retention::default())
                .await
                .unwrap();
            let tasks: Vec<_> = (0..8)
                .map(|t| {
                    let (storage, log) = (storage.clone(), log.clone());
                    tokio::spawn(async move {
                        let mut offsets = Vec::new();
                        for i in 0..50 {
                            let a = storage
                                .append(log.clone(), payloads(t * 1000 + i..t * 1000 + i + 1))
                                .await
                                .unwrap();
                            offsets.push(a.base_offset);
                        }
                        offsets
                    })
                })
                .collect();
            let mut all = Vec::new();
            for task in tasks {
                let offsets = task.await.unwrap();
                assert!(
                    offsets.windows(2).all(|w| w[0] < w[1]),
                    "one producer's order is kept"
                );
                all.extend(offsets);
            }
            all.sort_unstable();
            assert_eq!(all, (0..400).collect::<Vec<u64>>());
            storage.close().await;
        });
}

#[test]
fn topics_and_records_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    rt.block_on(async {
        let (storage, _) = Storage::open(&config(&dir, 100)).unwrap();
        let retention = Retention {
            max_records: Some(1000),
            ..Retention::default()
        };
        let log = storage
            .create_topic(name("keep.me"), retention)
            .await
            .unwrap();
        storage.append(log, payloads(0..30)).await.unwrap();
        storage.close().await;
    });
    rt.block_on(async {
        let (storage, topics) = reopen(&config(&dir, 100));
        assert_eq!(topics.len(), 1);
        let log = topics[0].clone();
        assert_eq!(log.name().as_str(), "keep.me");
        assert_eq!(log.retention().max_records, Some(1000));
        assert_eq!(log.stats().next, 30);
        let appended = storage.append(log.clone(), payloads(30..31)).await.unwrap();
        assert_eq!(appended.base_offset, 30);
        assert_eq!(read_all(&storage, &log, 1000).len(), 31);
        storage.close().await;
    });
}

#[test]
fn duplicate_and_deleted_topics_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let (storage, _) = Storage::open(&config(&dir, 100)).unwrap();
        let log = storage
            .create_topic(name("x"), Retention::default())
            .await
            .unwrap();
        assert!(matches!(
            storage.create_topic(name("x"), Retention::default()).await,
            Err(StorageError::TopicExists(_))
        ));
        storage.append(log.clone(), payloads(0..50)).await.unwrap();
        storage.delete_topic(log.clone()).await.unwrap();
        assert!(log.is_deleted());
        assert!(matches!(
            storage.append(log.clone(), payloads(0..1)).await,
            Err(StorageError::TopicNotFound(_))
        ));
        assert!(matches!(
            storage.delete_topic(log.clone()).await,
            Err(StorageError::TopicNotFound(_))
        ));
        // The purge removes every chunk, a step at a time.
        let mut removed = 0;
        loop {
            let step = storage.purge(vec![log.id()]).await.unwrap();
            removed += step.removed;
            if !step.more {
                break;
            }
        }
        assert!(removed > 1);
        assert_eq!(count_keys(&storage, keys::SEALED), 0);
        assert_eq!(count_keys(&storage, keys::INDEX), 0);
        // The name can be used again, for a new, empty log.
        let again = storage
            .create_topic(name("x"), Retention::default())
            .await
            .unwrap();
        assert_ne!(again.id(), log.id());
        assert_eq!(again.stats(), LogStats::default());
        storage.close().await;
    });
}

/// What follows a creation or a deletion (the broker's registry) is done by storage as
/// it commits, also when the caller gave up waiting once the command was sent.
#[test]
fn what_follows_a_creation_or_deletion_is_done_when_its_caller_is_gone() {
    use futures::FutureExt;
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let (storage, _) = Storage::open(&config(&dir, 100)).unwrap();
        let (tx, mut done) = tokio::sync::mpsc::unbounded_channel();
        let created = tx.clone();
        let creating = storage.create_topic_then(name("t"), Retention::default(), move |log| {
            let _ = created.send(("created", Arc::clone(log)));
        });
        // Sent on the first poll, then dropped before the answer.
        assert!(creating.now_or_never().is_none());
        storage.sync().await.unwrap();
        let (what, log) = done.try_recv().expect("the creation's follow-up ran");
        assert_eq!((what, log.name().as_str()), ("created", "t"));

        let deleting = storage.delete_topic_then(Arc::clone(&log), move |log| {
            let _ = tx.send(("deleted", Arc::clone(log)));
        });
        assert!(deleting.now_or_never().is_none());
        storage.sync().await.unwrap();
        let (what, deleted) = done.try_recv().expect("the deletion's follow-up ran");
        assert_eq!((what, deleted.id()), ("deleted", log.id()));
        assert!(
            deleted.is_deleted(),
            "it runs after the topic is marked deleted"
        );

        // A refused creation has no follow-up.
        let kept = storage
            .create_topic(name("kept"), Retention::default())
            .await
            .unwrap();
        let refused = storage
            .create_topic_then(name("kept"), Retention::default(), |_| {
                panic!("a refused creation has no follow-up")
            })
            .await;
        assert!(matches!(refused, Err(StorageError::TopicExists(_))));
        assert_eq!(kept.name().as_str(), "kept");
        storage.close().await;
    });
}

#[test]
fn reads_respect_record_and_byte_limits() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let (storage, _) = Storage::open(&config(&dir, 1 << 20)).unwrap();
        let log = storage
            .create_topic(name("t"), Retention::default())
            .await
            .unwrap();
        storage.append(log.clone(), payloads(0..100)).await.unwrap();
        let slice = storage.read(&log, 10, 5, usize::MAX).unwrap().unwrap();
        assert_eq!((slice.base_offset, slice.count), (10, 5));
        // A byte limit smaller than one record still returns that record.
        let slice = storage.read(&log, 42, 100, 1).unwrap().unwrap();
        assert_eq!((slice.base_offset, slice.count), (42, 1));
        let records = decode_batch(42, &slice.batch).unwrap();
        assert_eq!(records[0].payload, "record-42");
        assert!(storage.read(&log, 100, 10, usize::MAX).unwrap().is_none());
        storage.close().await;
    });
}

#[test]
fn time_lookup_finds_the_first_record_at_or_after() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let (storage, _) = Storage::open(&config(&dir, 64)).unwrap();
        let log = storage
            .create_topic(name("t"), Retention::default())
            .await
            .unwrap();
        // Append in separate commits until the records span a few milliseconds.
        storage.append(log.clone(), payloads(0..3)).await.unwrap();
        let first_ts = log.stats().last_ts;
        let mut appended = 3;
        while appended < 30 || (log.stats().last_ts < first_ts + 3 && appended < 30_000) {
            storage
                .append(log.clone(), payloads(appended..appended + 3))
                .await
                .unwrap();
            appended += 3;
        }
        let all: Vec<_> = {
            let mut out = Vec::new();
            let mut next = 0;
            while let Some(s) = storage.read(&log, next, 1000, usize::MAX).unwrap() {
                next = s.base_offset + u64::from(s.count);
                out.extend(decode_batch(s.base_offset, &s.batch).unwrap());
            }
            out
        };
        assert!(all.windows(2).all(|w| w[0].timestamp <= w[1].timestamp));
        let first_ts = all[0].timestamp;
        let last_ts = all[all.len() - 1].timestamp;
        for t in first_ts.saturating_sub(1)..=last_ts + 1 {
            let expected = all
                .iter()
                .find(|r| r.timestamp >= t)
                .map_or(log.stats().next, |r| r.offset);
            assert_eq!(
                storage.offset_for_timestamp(&log, t).unwrap(),
                expected,
                "t = {t}"
            );
        }
        storage.close().await;
    });
}

#[test]
fn trimming_many_topics_at_once_seals_what_it_must_and_is_exact() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let config = config(&dir, DEFAULT_CHUNK_BYTES);
    rt.block_on(async {
        let (storage, _) = Storage::open(&config).unwrap();
        let mut points = Vec::new();
        for (i, point) in [0u64, 4, 10, 25].into_iter().enumerate() {
            let log = storage
                .create_topic(name(&format!("many.{i}")), Retention::default())
                .await
                .unwrap();
            // Small records in a large chunk: all unsealed, in the journal.
            storage.append(log.clone(), payloads(0..10)).await.unwrap();
            assert_eq!(log.sealed_stats().next, 0);
            points.push((log, point));
        }
        let unfinished = storage.trim_all(points.clone()).await.unwrap();
        assert!(unfinished.is_empty());
        for (log, point) in &points {
            let first = (*point).min(10);
            assert_eq!((log.stats().first, log.stats().next), (first, 10));
            let read = read_all(&storage, log, 100);
            assert_eq!(read.first().map(|r| r.0), (first < 10).then_some(first));
            assert_eq!(read.len() as u64, 10 - first);
            // Only a topic trimmed inside its records needed them sealed.
            let sealed = log.sealed_stats().next;
            assert_eq!(sealed, if first > 0 { 10 } else { 0 }, "{}", log.name());
        }
        // A deleted topic in the list is passed over.
        storage.delete_topic(points[3].0.clone()).await.unwrap();
        let again = storage.trim_all(points.clone()).await.unwrap();
        assert!(again.is_empty());
        storage.close().await;
    });
    rt.block_on(async {
        let (storage, logs) = reopen(&config);
        assert_eq!(logs.len(), 3);
        let mut firsts: Vec<u64> = logs.iter().map(|log| log.stats().first).collect();
        firsts.sort_unstable();
        assert_eq!(firsts, [0, 4, 10], "the trims are durable");
        storage.close().await;
    });
}

#[test]
fn trimming_many_topics_at_once_removes_a_bounded_number_of_chunks() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        // Chunks of one record: 3 topics of 500 records, 1,500 chunks.
        let (storage, _) = Storage::open(&config(&dir, 1)).unwrap();
        let mut points = Vec::new();
        for i in 0..3 {
            let log = storage
                .create_topic(name(&format!("long.{i}")), Retention::default())
                .await
                .unwrap();
            storage.append(log.clone(), payloads(0..500)).await.unwrap();
            points.push((log, 450));
        }
        let unfinished = storage.trim_all(points.clone()).await.unwrap();
        let left = count_keys(&storage, keys::INDEX);
        assert!(left > 150, "not all 1,350 chunks at once: {left} left");
        assert!(!unfinished.is_empty() && unfinished.len() < 3);
        for (log, _) in &points {
            assert_eq!(log.stats().first, 450, "every first offset moved at once");
            assert_eq!(read_all(&storage, log, 1000).len(), 50);
        }
        for (log, first) in unfinished {
            while storage.trim(log.clone(), first).await.unwrap().more {}
        }
        assert_eq!(count_keys(&storage, keys::INDEX), 150);
        assert_eq!(count_keys(&storage, keys::SEALED), 150);
        storage.close().await;
    });
}

#[test]
fn deleted_topics_are_purged_together_in_bounded_steps() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        // Chunks of one record: 300 topics of 2 records and one of 300, deleted; one
        // more of 10 kept.
        let (storage, _) = Storage::open(&config(&dir, 1)).unwrap();
        let mut ids = Vec::new();
        for i in 0..301 {
            let log = storage
                .create_topic(name(&format!("gone.{i}")), Retention::default())
                .await
                .unwrap();
            let records = if i == 150 { 0..300 } else { 0..2 };
            storage
                .append(log.clone(), payloads(records))
                .await
                .unwrap();
            storage.delete_topic(log.clone()).await.unwrap();
            ids.push(log.id());
        }
        let kept = storage
            .create_topic(name("kept"), Retention::default())
            .await
            .unwrap();
        storage.append(kept.clone(), payloads(0..10)).await.unwrap();
        assert_eq!(storage.pending_purges().unwrap().len(), 301);
        assert_eq!(count_keys(&storage, keys::INDEX), 300 * 2 + 300 + 10);

        // A step removes at most its bound of chunks, over as many topics as it can.
        let first = storage.purge(ids.clone()).await.unwrap();
        assert_eq!(first.removed, CLEANUP_STEP);
        assert!(first.more);
        let purged = 301 - storage.pending_purges().unwrap().len();
        assert_eq!(
            purged,
            CLEANUP_STEP / 2,
            "every topic done in the step is unmarked"
        );
        let mut removed = first.removed;
        loop {
            // A topic that is not deleted is never touched, whatever the ids say.
            let mut asked = ids.clone();
            asked.push(kept.id());
            let step = storage.purge(asked).await.unwrap();
            assert!(step.removed <= CLEANUP_STEP);
            removed += step.removed;
            if !step.more {
                break;
            }
        }
        assert_eq!(removed, 900);
        assert!(storage.pending_purges().unwrap().is_empty());
        assert_eq!(count_keys(&storage, keys::INDEX), 10);
        assert_eq!(count_keys(&storage, keys::SEALED), 10);
        assert_eq!(read_all(&storage, &kept, 1000).len(), 10);
        storage.close().await;
    });
}

#[test]
fn retention_by_records_and_bytes_is_exact() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let (storage, _) = Storage::open(&config(&dir, 128)).unwrap();
        let by_count = storage
            .create_topic(
                name("count"),
                Retention {
                    max_records: Some(7),
                    ..Retention::default()
                },
            )
            .await
            .unwrap();
        storage
            .append(by_count.clone(), payloads(0..40))
            .await
            .unwrap();
        let point = storage.retention_point(&by_count, now_ms()).unwrap();
        assert_eq!(point, Some(33));
        storage.trim(by_count.clone(), 33).await.unwrap();
        let kept = read_all(&storage, &by_count, 3);
        assert_eq!(
            kept.iter().map(|r| r.0).collect::<Vec<_>>(),
            (33..40).collect::<Vec<_>>()
        );
        assert_eq!(by_count.stats().bytes, kept_bytes(&storage, &by_count));
        assert_eq!(storage.retention_point(&by_count, now_ms()).unwrap(), None);

        let by_bytes = storage
            .create_topic(
                name("bytes"),
                Retention {
                    max_bytes: Some(500),
                    ..Retention::default()
                },
            )
            .await
            .unwrap();
        storage
            .append(by_bytes.clone(), payloads(0..100))
            .await
            .unwrap();
        let point = storage
            .retention_point(&by_bytes, now_ms())
            .unwrap()
            .unwrap();
        loop {
            if !storage.trim(by_bytes.clone(), point).await.unwrap().more {
                break;
            }
        }
        let stats = by_bytes.stats();
        assert!(stats.bytes <= 500, "{stats:?}");
        assert_eq!(stats.bytes, kept_bytes(&storage, &by_bytes));
        // One more record would have fit under the limit only if it were not needed.
        let one_more = storage.read(&by_bytes, stats.first - 1, 1, usize::MAX);
        assert!(
            one_more.unwrap().is_some(),
            "reads clamp to the first offset"
        );
        // Chunks wholly below the first offset are gone.
        let lo = keys::with_offset(keys::INDEX, by_bytes.id(), 0);
        let hi = keys::with_offset(keys::INDEX, by_bytes.id(), stats.first);
        for item in storage.tree.range(lo..hi) {
            let (k, v) = item.unwrap();
            let (base, meta) = decode_index(&k, &v).unwrap();
            assert!(base + u64::from(meta.count) > stats.first);
        }
        storage.close().await;
    });
}

fn kept_bytes(storage: &Storage, log: &TopicLog) -> u64 {
    let mut total = 0;
    let mut next = 0;
    while let Some(s) = storage.read(log, next, 1000, usize::MAX).unwrap() {
        next = s.base_offset + u64::from(s.count);
        total += s.batch.len() as u64;
    }
    total
}

#[derive(Debug, Clone)]
enum Op {
    /// Append to topic 0 or 1 this many records, each padded to this many bytes (some
    /// span parts).
    Append(bool, u8, u16),
    Trim(bool, u8),
    Reopen,
    /// Reopen a copy of the data dir taken after the last flush, as a `kill -9` would
    /// leave it: no clean close, no snapshot.
    Crash,
    /// Start or stop watching topic 0 (reads then go through its tail).
    Watch,
    /// Delete topic 0 or 1, take one step of the pending purges, and create the topic
    /// again under its name (empty, with a new id).
    Recreate(bool),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (any::<bool>(), 1u8..20, prop_oneof![3 => 0u16..64, 1 => 0u16..10_000])
            .prop_map(|(topic, n, size)| Op::Append(topic, n, size)),
        1 => (any::<bool>(), any::<u8>()).prop_map(|(topic, k)| Op::Trim(topic, k)),
        1 => Just(Op::Reopen),
        1 => Just(Op::Crash),
        1 => Just(Op::Watch),
        1 => any::<bool>().prop_map(Op::Recreate),
    ]
}

/// Closes `storage` and opens it again; with `crash`, opens instead a copy of the data
/// dir taken after the last flush, as a `kill -9` would leave it: no clean close, no
/// snapshot.
fn restart(
    rt: &tokio::runtime::Runtime,
    storage: Storage,
    dir: &mut tempfile::TempDir,
    config: &mut StorageConfig,
    crash: bool,
) -> (Storage, Vec<Arc<TopicLog>>) {
    if crash {
        rt.block_on(storage.sync()).unwrap();
        let copy = tempfile::tempdir().unwrap();
        copy_tree(&config.path, &copy.path().join("db"));
        rt.block_on(storage.close());
        drop(storage);
        *dir = copy;
        config.path = dir.path().join("db");
    } else {
        rt.block_on(storage.close());
        drop(storage);
    }
    reopen(config)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Storage against a `VecDeque` model per topic: appends to two topics, trims,
    /// restarts, crashes, readers coming and going, and topics deleted, purged and
    /// created again, in any order; with chunks sealed as they
    /// fill, by trims, and by a journal budget small enough to be passed often.
    #[test]
    fn storage_matches_a_simple_model(ops in proptest::collection::vec(op(), 1..40)) {
        let mut dir = tempfile::tempdir().unwrap();
        let rt = rt();
        let mut config = StorageConfig { journal_bytes: 300, ..config(&dir, 96) };
        let mut models: [VecDeque<(u64, Vec<u8>)>; 2] = Default::default();
        let mut nexts = [0u64; 2];
        let (mut storage, _) = Storage::open(&config).unwrap();
        let mut logs = Vec::new();
        for topic in ["m0", "m1"] {
            logs.push(rt.block_on(storage.create_topic(name(topic), Retention::default())).unwrap());
        }
        let mut watch = None;
        for op in ops {
            match op {
                Op::Append(topic, n, size) => {
                    let t = usize::from(topic);
                    let next = nexts[t];
                    let payloads: Vec<Vec<u8>> = (0..u64::from(n))
                        .map(|i| {
                            let mut p = format!("{t}:{}-", next + i).into_bytes();
                            p.resize(p.len() + usize::from(size), b'.');
                            p
                        })
                        .collect();
                    let records = payloads.iter().cloned().map(NewRecord::new).collect();
                    let a = rt.block_on(storage.append(logs[t].clone(), records)).unwrap();
                    prop_assert_eq!(a.base_offset, next);
                    for (i, p) in (0..).zip(payloads) {
                        models[t].push_back((next + i, p));
                    }
                    nexts[t] += u64::from(n);
                }
                Op::Trim(topic, k) => {
                    let t = usize::from(topic);
                    let first = logs[t].stats().first + u64::from(k) % 16;
                    rt.block_on(storage.trim(logs[t].clone(), first)).unwrap();
                    while models[t].front().is_some_and(|(o, _)| *o < first) {
                        models[t].pop_front();
                    }
                }
                Op::Reopen | Op::Crash => {
                    let watching = watch.take().is_some();
                    let crash = matches!(op, Op::Crash);
                    let (s, mut topics) = restart(&rt, storage, &mut dir, &mut config, crash);
                    storage = s;
                    topics.sort_by(|a, b| a.name().as_str().cmp(b.name().as_str()));
                    logs = topics;
                    if watching {
                        watch = Some(logs[0].watch(Arc::new(tokio::sync::Notify::new())));
                    }
                }
                Op::Watch => {
                    watch = match watch.take() {
                        Some(_) => None,
                        None => Some(logs[0].watch(Arc::new(tokio::sync::Notify::new()))),
                    };
                }
                Op::Recreate(topic) => {
                    let t = usize::from(topic);
                    rt.block_on(storage.delete_topic(logs[t].clone())).unwrap();
                    let pending = storage.pending_purges().unwrap();
                    rt.block_on(storage.purge(pending)).unwrap();
                    let again = storage.create_topic(name(&format!("m{t}")), Retention::default());
                    logs[t] = rt.block_on(again).unwrap();
                    models[t].clear();
                    nexts[t] = 0;
                    if t == 0 && watch.take().is_some() {
                        watch = Some(logs[0].watch(Arc::new(tokio::sync::Notify::new())));
                    }
                }
            }
            for (log, model) in logs.iter().zip(&models) {
                let stored: Vec<(u64, Vec<u8>)> = read_all(&storage, log, 5)
                    .into_iter()
                    .map(|(o, p)| (o, p.to_vec()))
                    .collect();
                prop_assert_eq!(&stored, &model.iter().cloned().collect::<Vec<_>>());
                prop_assert_eq!(log.stats().records(), model.len() as u64);
                prop_assert_eq!(log.stats().bytes, kept_bytes(&storage, log));
            }
            // What the journal holds on disk stays within its budget and one commit's
            // entry (two pieces of less than a chunk, and their headers).
            let journal: usize = storage
                .tree
                .scan_prefix([keys::JOURNAL])
                .map(|item| item.unwrap().1.len())
                .sum();
            prop_assert!(journal <= 300 + 300, "journal of {} bytes", journal);
        }
        // Purges cut short, by a step's end or a crash, go on to the end, and leave no
        // chunk of a deleted topic behind.
        loop {
            let pending = storage.pending_purges().unwrap();
            if pending.is_empty() {
                break;
            }
            rt.block_on(storage.purge(pending)).unwrap();
        }
        let live: Vec<u64> = logs.iter().map(|log| log.id()).collect();
        let stray = storage
            .tree
            .scan_prefix([keys::INDEX])
            .keys()
            .filter(|key| {
                let id = keys::numbers::<1>(&key.as_ref().unwrap()[..]).unwrap()[0];
                !live.contains(&id)
            })
            .count();
        prop_assert_eq!(stray, 0, "index entries of deleted topics");
        drop(watch);
        rt.block_on(storage.close());
    }
}

#[test]
fn groups_and_dedup_entries_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let settings = GroupSettings {
        pattern: "jobs.*".into(),
        from: quiver_protocol::StartAt::Earliest,
        ack_timeout_ms: 30_000,
        max_deliveries: 5,
        dead_letter: None,
        prefetch: 10,
    };
    let id = PublishId {
        producer: 7,
        sequence: 3,
    };
    let (group_id, topic) = rt.block_on(async {
        let (storage, _) = Storage::open(&config(&dir, 100)).unwrap();
        let log = storage
            .create_topic(name("jobs.a"), Retention::default())
            .await
            .unwrap();
        let record = GroupRecord {
            id: storage.generate_id().unwrap(),
            name: "workers".into(),
            settings: settings.clone(),
            created_ms: 1,
        };
        storage
            .create_group(record.clone(), vec![(log.id(), 0)])
            .await
            .unwrap();
        let writes = vec![
            GroupWrite::Lane {
                topic: log.id(),
                cursor: 4,
                redelivered: 2,
                dead_lettered: 1,
                plain: vec![(0, 1), (2, 2)],
            },
            GroupWrite::Pending {
                topic: log.id(),
                offset: 1,
                entry: Some((2, 500)),
            },
            GroupWrite::Pending {
                topic: log.id(),
                offset: 3,
                entry: Some((1, 0)),
            },
            GroupWrite::Pending {
                topic: log.id(),
                offset: 3,
                entry: None,
            },
        ];
        storage
            .group_writes(record.name.clone(), record.id, writes)
            .await
            .unwrap();
        // A publish remembered for deduplication, in the same batch as its records.
        let dedup = PublishLayout {
            id: Some(id),
            layout: ReceiptLayout::default(),
        };
        append_durably(
            &storage,
            vec![(log.clone(), payloads(0..5))],
            Vec::new(),
            vec![dedup],
        )
        .await;
        storage.close().await;
        (record.id, log.id())
    });
    rt.block_on(async {
        let (storage, _) = reopen(&config(&dir, 100));
        let groups = storage.groups().unwrap();
        assert_eq!(groups.len(), 1);
        assert_eq!(groups[0].record.settings, settings);
        assert_eq!(
            groups[0].lanes,
            vec![StoredLane {
                topic,
                cursor: 4,
                redelivered: 2,
                dead_lettered: 1,
                plain: vec![(0, 1), (2, 2)],
                pending: vec![(1, 2, 500)],
            }]
        );
        let entries = dedup_entries(&storage, usize::MAX);
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].0, id);
        assert_eq!((entries[0].2.base_offset, entries[0].2.count), (0, 5));
        // Entries older than the horizon are purged; deleting the group removes it.
        let purged = storage.purge_dedup(u64::MAX, usize::MAX).await.unwrap();
        assert_eq!(purged.removed, 1);
        assert!(dedup_entries(&storage, usize::MAX).is_empty());
        storage
            .delete_group("workers".into(), group_id)
            .await
            .unwrap();
        assert!(storage.groups().unwrap().is_empty());
        let again = GroupRecord {
            id: storage.generate_id().unwrap(),
            name: "workers".into(),
            settings,
            created_ms: 2,
        };
        assert_ne!(again.id, group_id, "group ids are never reused");
        storage.create_group(again, Vec::new()).await.unwrap();
        assert!(storage.groups().unwrap()[0].lanes.is_empty());
    });
}

#[test]
fn parts_fit_a_leaf_in_a_quarter_segment() {
    assert_eq!(keys::part_bytes(2 << 20), 16 * 1024);
    assert_eq!(keys::part_bytes(512 << 10), 4 * 1024);
    assert_eq!(keys::part_bytes(1), 1);
}

#[test]
fn a_full_chunk_is_one_part_and_only_a_large_record_spans_parts() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let (storage, _) = Storage::open(&config(&dir, DEFAULT_CHUNK_BYTES)).unwrap();
        let log = storage
            .create_topic(name("parts"), Retention::default())
            .await
            .unwrap();
        // 1,000 records of 256 bytes in one commit: 17 chunks, 16 full ones.
        let records = (0..1000u32)
            .map(|i| NewRecord::new(vec![(i % 251) as u8; 256]))
            .collect();
        storage.append(log.clone(), records).await.unwrap();
        // And one record larger than a part.
        let large = NewRecord::new(vec![9u8; 40_000]);
        storage.append(log.clone(), vec![large]).await.unwrap();

        let parts = parts_of(&storage, log.id());
        assert_eq!(
            count_keys(&storage, keys::SEALED),
            parts.len(),
            "every part keyed by seal order"
        );
        let (small, large): (Vec<_>, Vec<_>) = parts.iter().partition(|(base, ..)| *base < 1000);
        assert!(small.len() > 15, "{small:?}");
        assert!(
            small
                .iter()
                .all(|&(_, part, len)| part == 0 && len <= DEFAULT_CHUNK_BYTES),
            "{small:?}"
        );
        assert_eq!(large.iter().map(|p| p.1).collect::<Vec<_>>(), [0, 1, 2]);
        assert_eq!(read_all(&storage, &log, 5000).len(), 1001);
        storage.close().await;
    });
}

#[test]
fn a_data_dir_created_with_other_segments_still_opens() {
    let dir = tempfile::tempdir().unwrap();
    // Created by sled with its default segment size, as early data dirs were.
    drop(
        sled::Config::new()
            .path(dir.path().join("db"))
            .open()
            .unwrap(),
    );
    assert_eq!(
        created_segment_size(&dir.path().join("db")).unwrap(),
        Some(512 << 10)
    );
    let rt = rt();
    rt.block_on(async {
        // sled's threads may hold the lock a moment after the handle drops.
        let (storage, _) = reopen(&config(&dir, DEFAULT_CHUNK_BYTES));
        let log = storage
            .create_topic(name("old.dir"), Retention::default())
            .await
            .unwrap();
        let big = NewRecord::new(vec![7u8; 40_000]);
        storage.append(log.clone(), vec![big]).await.unwrap();
        let read = read_all(&storage, &log, 1);
        assert_eq!(read.len(), 1);
        assert_eq!(read[0].1.len(), 40_000);
        storage.close().await;
    });
}

#[test]
fn batched_topics_are_answered_before_the_flush_and_kept_by_close() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let batched = TopicSettings {
        // Longer than the test: only `close` (or an fsync topic's commit) flushes.
        durability: Durability::Batched {
            interval_ms: Durability::MAX_INTERVAL_MS,
        },
        ..TopicSettings::default()
    };
    rt.block_on(async {
        let (storage, _) = Storage::open(&config(&dir, 100)).unwrap();
        let log = storage
            .create_topic(name("fast"), batched.clone())
            .await
            .unwrap();
        assert_eq!(log.durability(), batched.durability);
        for i in 0..10 {
            storage
                .append(log.clone(), payloads(i * 10..i * 10 + 10))
                .await
                .unwrap();
        }
        assert_eq!(read_all(&storage, &log, 7).len(), 100, "readable at once");
        storage.close().await;
    });
    rt.block_on(async {
        let (storage, topics) = reopen(&config(&dir, 100));
        assert_eq!(topics[0].durability(), batched.durability);
        let read = read_all(&storage, &topics[0], 1000);
        assert_eq!(read.len(), 100);
        assert_eq!(read[99].1, Bytes::from("record-99"));
        storage.close().await;
    });
}

#[test]
fn topic_records_written_before_durability_existed_still_read() {
    #[derive(serde::Serialize)]
    struct Before {
        id: u64,
        name: String,
        retention: Retention,
        created_ms: u64,
        dead_letter: Option<String>,
        pipeline: Vec<Stage>,
    }
    let before = Before {
        id: 7,
        name: "old.topic".into(),
        retention: Retention::default(),
        created_ms: 1,
        dead_letter: Some("old.dlq".into()),
        pipeline: vec![],
    };
    let meta = TopicMeta::decode(&postcard::to_allocvec(&before).unwrap()).unwrap();
    assert_eq!(meta.durability, Durability::Fsync);
    assert_eq!(meta.dead_letter.as_deref(), Some("old.dlq"));
    let now = TopicMeta {
        durability: Durability::Batched { interval_ms: 5 },
        ..meta
    };
    assert_eq!(
        TopicMeta::decode(&postcard::to_allocvec(&now).unwrap()).unwrap(),
        now
    );
    assert!(TopicMeta::decode(b"\xff\xff").is_err());
}

#[test]
fn pipelines_written_before_stages_recorded_their_attacher_still_read() {
    #[derive(serde::Serialize)]
    struct OldStage {
        plugin: String,
        params: Vec<(String, String)>,
        on_error: OnError,
    }
    #[derive(serde::Serialize)]
    struct Before {
        id: u64,
        name: String,
        retention: Retention,
        created_ms: u64,
        dead_letter: Option<String>,
        pipeline: Vec<OldStage>,
        durability: Durability,
    }
    let before = Before {
        id: 7,
        name: "old.topic".into(),
        retention: Retention::default(),
        created_ms: 1,
        dead_letter: None,
        pipeline: vec![OldStage {
            plugin: "router".into(),
            params: vec![("to".into(), "a".into())],
            on_error: OnError::FailOpen,
        }],
        durability: Durability::Batched { interval_ms: 9 },
    };
    let meta = TopicMeta::decode(&postcard::to_allocvec(&before).unwrap()).unwrap();
    assert_eq!(meta.durability, Durability::Batched { interval_ms: 9 });
    assert_eq!(
        meta.pipeline,
        vec![
            Stage::new("router")
                .param("to", "a")
                .on_error(OnError::FailOpen)
        ]
    );
}

#[test]
fn pipelines_written_before_stages_had_limits_still_read() {
    #[derive(serde::Serialize)]
    struct Before {
        id: u64,
        name: String,
        retention: Retention,
        created_ms: u64,
        dead_letter: Option<String>,
        pipeline: Vec<Stage>,
        durability: Durability,
    }
    // Every `durability` form after a stage: none of them may read as limits.
    for durability in [Durability::Fsync, Durability::Batched { interval_ms: 300 }] {
        let stages = vec![
            Stage::new("router").param("to", "a"),
            Stage::new("filter").on_error(OnError::FailOpen),
        ];
        let before = Before {
            id: 7,
            name: "old.topic".into(),
            retention: Retention::default(),
            created_ms: 1,
            dead_letter: None,
            pipeline: stages.clone(),
            durability,
        };
        let meta = TopicMeta::decode(&postcard::to_allocvec(&before).unwrap()).unwrap();
        assert_eq!(meta.durability, durability);
        let attached = meta.attached();
        assert_eq!(
            attached.iter().map(|a| a.stage.clone()).collect::<Vec<_>>(),
            stages
        );
        assert!(attached.iter().all(|a| a.limits.is_default()));
    }
}

#[test]
fn stage_limits_are_durable_and_kept_by_plugin() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let limits = StageLimits {
        memory: Some(192 << 20),
        call_timeout_ms: Some(750),
    };
    let pipeline = vec![
        AttachedStage::from(Stage::new("first")),
        AttachedStage {
            stage: Stage::new("second").param("k", "v"),
            limits,
        },
    ];
    rt.block_on(async {
        let (storage, _) = Storage::open(&config(&dir, 100)).unwrap();
        let log = storage
            .create_topic(name("sized"), Retention::default())
            .await
            .unwrap();
        storage
            .set_pipeline(log.clone(), pipeline.clone())
            .await
            .unwrap();
        assert_eq!(log.pipeline(), pipeline);
        storage.close().await;
    });
    rt.block_on(async {
        let (storage, topics) = reopen(&config(&dir, 100));
        assert_eq!(topics[0].pipeline(), pipeline, "limits survive a reopen");
        assert_eq!(topics[0].stages().len(), 2);
        // Detaching the sized stage forgets its limits with it.
        storage
            .set_pipeline(topics[0].clone(), pipeline[..1].to_vec())
            .await
            .unwrap();
        storage.close().await;
    });
    rt.block_on(async {
        let (storage, topics) = reopen(&config(&dir, 100));
        assert_eq!(topics[0].pipeline(), pipeline[..1].to_vec());
        storage.close().await;
    });
}

/// Appends a record for each of `sequences`, as publishes 9/`sequence`, in one commit, and
/// waits until it is durable.
async fn append_with_ids(storage: &Storage, log: &Arc<TopicLog>, sequences: Range<u64>) {
    let publishes = sequences
        .clone()
        .map(|sequence| PublishLayout {
            id: Some(PublishId {
                producer: 9,
                sequence,
            }),
            layout: ReceiptLayout::default(),
        })
        .collect();
    let records = u32::try_from(sequences.start).unwrap()..u32::try_from(sequences.end).unwrap();
    append_durably(
        storage,
        vec![(log.clone(), payloads(records))],
        Vec::new(),
        publishes,
    )
    .await;
}

/// Appends with plugin state and publish ids, and waits until durable.
async fn append_durably(
    storage: &Storage,
    appends: Vec<TopicRecords>,
    state: Vec<StateWrite>,
    publishes: Vec<PublishLayout>,
) -> Committed {
    storage
        .submit_append(appends, state, publishes, None)
        .await
        .unwrap()
        .durable()
        .await
        .unwrap()
}

/// Storage opened on `dir` (chunks of 100 bytes) with one topic, `topic`.
async fn open_with_topic(dir: &tempfile::TempDir, topic: &str) -> (Storage, Arc<TopicLog>) {
    let (storage, _) = Storage::open(&config(dir, 100)).unwrap();
    let log = storage
        .create_topic(name(topic), Retention::default())
        .await
        .unwrap();
    (storage, log)
}

/// The dedup entries a restart reads (at least `max`, in whole commits), oldest first.
fn dedup_entries(storage: &Storage, max: usize) -> Vec<(PublishId, u64, Receipt)> {
    let mut entries = Vec::new();
    storage
        .dedup_entries(0, max, |id, at, receipt| entries.push((id, at, receipt)))
        .unwrap();
    entries
}

/// The sequences of the ids a restart reads (at most `max`), oldest first.
fn remembered(storage: &Storage, max: usize) -> Vec<u64> {
    let entries = dedup_entries(storage, max);
    entries.iter().map(|(id, _, _)| id.sequence).collect()
}

#[test]
fn a_restart_reads_only_the_newest_dedup_entries_it_keeps() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    rt.block_on(async {
        let (storage, log) = open_with_topic(&dir, "ids").await;
        // Three commits (each awaited before the next), one id each.
        for sequence in 0..3 {
            append_with_ids(&storage, &log, sequence..sequence + 1).await;
        }
        assert_eq!(remembered(&storage, usize::MAX), [0, 1, 2], "oldest first");
        assert_eq!(
            remembered(&storage, 2),
            [1, 2],
            "the newest, still oldest first"
        );
        assert_eq!(remembered(&storage, 0), Vec::<u64>::new());
        storage.close().await;
    });
}

#[test]
fn dedup_entries_past_the_newest_kept_ids_are_purged() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    rt.block_on(async {
        let (storage, log) = open_with_topic(&dir, "ids").await;
        // Three commits of three, one and two ids.
        for ids in [0..3, 3..4, 4..6] {
            append_with_ids(&storage, &log, ids).await;
        }
        let purged = storage.purge_dedup(0, usize::MAX).await.unwrap();
        assert_eq!(
            purged.removed, 0,
            "nothing past the window, nor past the count"
        );
        // The newest three ids are in the last two commits: the first goes.
        let purged = storage.purge_dedup(0, 3).await.unwrap();
        assert_eq!((purged.removed, purged.more), (1, false));
        assert_eq!(remembered(&storage, usize::MAX), [3, 4, 5]);
        // A commit is kept whole: two ids asked for, two in the newest commit.
        storage.purge_dedup(0, 2).await.unwrap();
        assert_eq!(remembered(&storage, usize::MAX), [4, 5]);
        // The window still applies whatever the count.
        storage.purge_dedup(u64::MAX, usize::MAX).await.unwrap();
        assert_eq!(remembered(&storage, usize::MAX), Vec::<u64>::new());
        storage.close().await;
    });
}

/// Replaces the value under `key` with what `change` makes of it (the tree directly, as
/// damage on disk would).
/// The key of part `part` of topic `id`'s chunk at `base`, where its index entry
/// places it.
fn part_key(storage: &Storage, id: u64, base: u64, part: u32) -> Vec<u8> {
    let index = keys::with_offset(keys::INDEX, id, base);
    let entry = storage.tree.get(index).unwrap().expect("an index entry");
    let meta = keys::ChunkMeta::decode(&entry).unwrap();
    let mut key = keys::chunk_parts(id, base, &meta);
    key.extend_from_slice(&part.to_be_bytes());
    key
}

/// Every part of topic `id`'s chunks: the chunk's base offset, the part, its length.
fn parts_of(storage: &Storage, id: u64) -> Vec<(u64, u32, usize)> {
    let mut parts = Vec::new();
    for entry in storage.tree.scan_prefix(keys::with_id(keys::INDEX, id)) {
        let (key, value) = entry.unwrap();
        let (base, meta) = decode_index(&key, &value).unwrap();
        for part in storage.tree.scan_prefix(keys::chunk_parts(id, base, &meta)) {
            let (key, value) = part.unwrap();
            let number = u32::from_be_bytes(key[key.len() - 4..].try_into().unwrap());
            parts.push((base, number, value.len()));
        }
    }
    parts
}

/// Moves topic `id`'s chunks to the layout before 6: parts keyed by topic and base
/// offset, index entries `entry_len` bytes long (28, or 24 before checksums). Returns
/// how many chunks it moved.
fn to_parts_by_topic(storage: &Storage, id: u64, entry_len: usize) -> usize {
    let tree = &storage.tree;
    let mut moved = 0;
    for entry in tree.scan_prefix(keys::with_id(keys::INDEX, id)) {
        let (key, value) = entry.unwrap();
        let (base, meta) = decode_index(&key, &value).unwrap();
        let parts: Vec<_> = tree
            .scan_prefix(keys::chunk_parts(id, base, &meta))
            .map(Result::unwrap)
            .collect();
        for (number, (part, bytes)) in (0u32..).zip(parts) {
            tree.remove(part).unwrap();
            tree.insert(keys::chunk_part(id, base, number), bytes)
                .unwrap();
        }
        tree.insert(key, &meta.encode()[..entry_len]).unwrap();
        moved += 1;
    }
    moved
}

fn tamper(storage: &Storage, key: &[u8], change: impl FnOnce(&mut Vec<u8>)) {
    let mut value = storage.tree.get(key).unwrap().unwrap().to_vec();
    change(&mut value);
    storage.tree.insert(key, value).unwrap();
}

#[test]
fn a_watched_topic_serves_its_newest_chunks_from_memory() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let (storage, _) = Storage::open(&config(&dir, ten_records())).unwrap();
        let log = storage
            .create_topic(name("tailed"), Retention::default())
            .await
            .unwrap();
        // Nobody reads it: nothing is kept (the second append seals both chunks).
        storage.append(log.clone(), payloads(0..10)).await.unwrap();
        storage.append(log.clone(), payloads(10..20)).await.unwrap();
        assert_eq!(log.sealed_stats().next, 20);
        assert!(log.tail_chunk(0).is_none() && log.tail_chunk(10).is_none());

        let watch = log.watch(Arc::new(tokio::sync::Notify::new()));
        storage.append(log.clone(), payloads(20..30)).await.unwrap();
        let (base, kept) = log.tail_chunk(25).expect("the newest chunk is kept");
        assert_eq!(base, 20);
        assert!(log.tail_chunk(19).is_none() && log.tail_chunk(30).is_none());

        // The kept chunk is what is served: damage to its copy in sled is not seen.
        flip_last_byte(&storage, &part_key(&storage, log.id(), 20, 0));
        let slice = storage.read(&log, 22, 100, usize::MAX).unwrap().unwrap();
        assert_eq!((slice.base_offset, slice.count), (22, 8));
        let records = decode_batch(22, &slice.batch).unwrap();
        assert_eq!(records[0].payload, "record-22");
        assert_eq!(records[7].payload, "record-29");
        assert!(
            kept.as_ptr_range().contains(&slice.batch.as_ptr()),
            "served from the kept chunk's memory"
        );
        // Older chunks still come from sled.
        let old = storage.read(&log, 3, 100, usize::MAX).unwrap().unwrap();
        assert_eq!((old.base_offset, old.count), (3, 7));
        flip_last_byte(&storage, &part_key(&storage, log.id(), 20, 0));

        // The newest are kept within a budget (see `log::tests`), and every record
        // still reads back.
        let big = |i: u32| NewRecord::new(vec![b'x'; 4000 + i as usize]);
        for i in 0..100 {
            storage.append(log.clone(), vec![big(i)]).await.unwrap();
        }
        assert!(
            log.tail_chunk(20).is_none(),
            "the oldest kept chunk was dropped"
        );
        assert!(log.tail_chunk(129).is_some());
        let all = read_all(&storage, &log, 1000);
        assert_eq!(all.len(), 130);

        // The last reader gone, nothing is kept: damage now shows.
        flip_last_byte(&storage, &part_key(&storage, log.id(), 129, 0));
        assert!(storage.read(&log, 129, 1, usize::MAX).is_ok());
        drop(watch);
        assert!(log.tail_chunk(129).is_none());
        let e = storage.read(&log, 129, 1, usize::MAX).unwrap_err();
        assert!(matches!(e, StorageError::Corrupt(_)), "{e}");
        storage.close().await;
    });
}

/// A chunk size that seals `payloads(i * 10..i * 10 + 10)` as one chunk for i ≥ 1, and
/// `payloads(0..10)` (shorter records) with the next append.
fn ten_records() -> usize {
    10 * quiver_protocol::record::entry_len(&payloads(10..11)[0])
}

/// A topic of ten-record chunks (open storage with [`ten_records`]) holding three:
/// three commits, at offsets 0, 10 and 20.
async fn three_chunks(storage: &Storage, topic: &str) -> Arc<TopicLog> {
    let log = storage
        .create_topic(name(topic), Retention::default())
        .await
        .unwrap();
    for i in 0..3 {
        storage
            .append(log.clone(), payloads(i * 10..i * 10 + 10))
            .await
            .unwrap();
    }
    log
}

/// Changes one byte of a stored value (its last), or changes it back.
fn flip_last_byte(storage: &Storage, key: &[u8]) {
    tamper(storage, key, |v| {
        let last = v.len() - 1;
        v[last] ^= 0x20;
    });
}

#[test]
fn a_chunk_whose_bytes_changed_is_reported_never_served() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let (storage, _) = Storage::open(&config(&dir, ten_records())).unwrap();
        let log = three_chunks(&storage, "guarded").await;
        // One byte of a payload in the middle chunk changes.
        flip_last_byte(&storage, &part_key(&storage, log.id(), 10, 0));
        for from in [10, 15, 19] {
            let e = storage.read(&log, from, 100, usize::MAX).unwrap_err();
            assert!(
                matches!(&e, StorageError::Corrupt(m) if m.contains("offsets 10..=19")
                    && m.contains("checksum")),
                "{e}"
            );
        }
        // The intact chunks around it are still served, and only they.
        let first = storage.read(&log, 0, 100, usize::MAX).unwrap().unwrap();
        assert_eq!((first.base_offset, first.count), (0, 10));
        let last = storage.read(&log, 20, 100, usize::MAX).unwrap().unwrap();
        assert_eq!((last.base_offset, last.count), (20, 10));

        // A part too many (say, left over from elsewhere) changes the length.
        flip_last_byte(&storage, &part_key(&storage, log.id(), 10, 0));
        assert!(storage.read(&log, 10, 100, usize::MAX).is_ok(), "restored");
        storage
            .tree
            .insert(part_key(&storage, log.id(), 10, 1), &b"stale"[..])
            .unwrap();
        let e = storage.read(&log, 12, 100, usize::MAX).unwrap_err();
        assert!(
            matches!(&e, StorageError::Corrupt(m) if m.contains("bytes long")),
            "{e}"
        );
        storage.close().await;
    });
}

/// One record of `log` at `from`, read through `cache`: (offset, payload).
fn read_one(storage: &Storage, log: &TopicLog, from: u64, cache: &mut ChunkCache) -> (u64, Bytes) {
    let slice = storage
        .read_cached(log, from, 1, usize::MAX, cache)
        .unwrap()
        .unwrap();
    let record = decode_batch(slice.base_offset, &slice.batch)
        .unwrap()
        .remove(0);
    (record.offset, record.payload)
}

fn record(offset: u64) -> (u64, Bytes) {
    (offset, Bytes::from(format!("record-{offset}")))
}

#[test]
fn a_reader_that_keeps_its_chunk_takes_it_from_sled_once() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let (storage, _) = Storage::open(&config(&dir, ten_records())).unwrap();
        let a = &three_chunks(&storage, "kept.a").await;
        let b = &three_chunks(&storage, "kept.b").await;
        let mut cache = ChunkCache::default();
        assert_eq!(read_one(&storage, a, 10, &mut cache), record(10));
        // The chunk's bytes change on disk: the kept copy, checked when it was read,
        // serves the rest of the chunk, so sled was not read again; a reader without
        // it is refused.
        flip_last_byte(&storage, &part_key(&storage, a.id(), 10, 0));
        for from in 11..20 {
            assert_eq!(read_one(&storage, a, from, &mut cache), record(from));
        }
        assert!(matches!(
            storage.read(a, 15, 1, usize::MAX),
            Err(StorageError::Corrupt(_))
        ));
        // Another topic's chunk at the same offsets is its own, and takes the place:
        // `a`'s chunk at 10 is read from sled again, and refused.
        assert_eq!(read_one(&storage, b, 12, &mut cache), record(12));
        assert!(matches!(
            storage.read_cached(a, 13, 1, usize::MAX, &mut cache),
            Err(StorageError::Corrupt(_))
        ));
        assert_eq!(read_one(&storage, a, 20, &mut cache), record(20));
        // Records trimmed from the kept chunk are not served from it.
        assert_eq!(read_one(&storage, b, 3, &mut cache), record(3));
        storage.trim(Arc::clone(b), 5).await.unwrap();
        assert_eq!(read_one(&storage, b, 3, &mut cache), record(5));
        storage.close().await;
    });
}

#[test]
fn chunks_indexed_before_checksums_still_read_and_the_stamp_moves_on() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    rt.block_on(async {
        let (storage, _) = Storage::open(&config(&dir, 200)).unwrap();
        let log = storage
            .create_topic(name("old.layout"), Retention::default())
            .await
            .unwrap();
        storage.append(log.clone(), payloads(0..40)).await.unwrap();
        // Make it a data dir of the first layout: 24-byte index entries, version 1.
        let moved = to_parts_by_topic(&storage, log.id(), 24);
        assert!(moved > 1, "several chunks");
        storage
            .tree
            .insert(keys::VERSION, &keys::FORMAT_V1.to_be_bytes())
            .unwrap();
        storage.sync().await.unwrap();
        storage.close().await;
    });
    rt.block_on(async {
        let (storage, topics) = reopen(&config(&dir, 200));
        let log = topics[0].clone();
        let all = read_all(&storage, &log, 7);
        assert_eq!(all.len(), 40);
        assert_eq!(all[39], (39, Bytes::from("record-39")));
        assert_eq!(
            storage.tree.get(keys::VERSION).unwrap().unwrap().as_ref(),
            keys::FORMAT.to_be_bytes(),
            "opening upgrades the stamp, so older brokers refuse the data dir"
        );
        storage.append(log.clone(), payloads(40..50)).await.unwrap();
        assert_eq!(read_all(&storage, &log, 1000).len(), 50);
        // Retention takes old chunks and new alike, each from where its entry says.
        let by_topic = || storage.tree.scan_prefix([keys::CHUNK]).count();
        assert!(by_topic() > 1 && count_keys(&storage, keys::SEALED) > 0);
        while storage.trim(log.clone(), 45).await.unwrap().more {}
        assert_eq!(by_topic(), 0, "every old chunk is below 45");
        let left = read_all(&storage, &log, 1000);
        assert_eq!(left.first(), Some(&(45, Bytes::from("record-45"))));
        storage.delete_topic(log.clone()).await.unwrap();
        while storage.purge(vec![log.id()]).await.unwrap().more {}
        assert_eq!(count_keys(&storage, keys::SEALED), 0);
        assert_eq!(count_keys(&storage, keys::INDEX), 0);
        storage.close().await;
    });
}

#[test]
fn a_data_dir_of_an_unknown_layout_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let unknown = keys::FORMAT + 1;
    rt.block_on(async {
        let (storage, _) = Storage::open(&config(&dir, 200)).unwrap();
        storage
            .tree
            .insert(keys::VERSION, &unknown.to_be_bytes())
            .unwrap();
        storage.sync().await.unwrap();
        storage.close().await;
    });
    let e = while_locked(
        || match Storage::open(&config(&dir, 200)) {
            Ok(_) => panic!("a data dir of layout {unknown} opened"),
            Err(StorageError::Sled(e)) if sled_lock(&e) => Err(e),
            Err(e) => Ok(e),
        },
        sled_lock,
    );
    assert!(
        e.to_string().contains(&format!("layout version {unknown}")),
        "{e}"
    );
    assert!(e.remedy().contains("backup"), "{}", e.remedy());
}

#[test]
fn a_missing_conf_is_refused_once_the_log_holds_data() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(&dir, 200);
    // A new data dir opens whether or not sled has written its conf yet.
    assert_eq!(created_segment_size(&config.path).unwrap(), None);
    rt().block_on(async {
        let (storage, _) = Storage::open(&config).unwrap();
        let log = storage
            .create_topic(name("t"), Retention::default())
            .await
            .unwrap();
        storage.append(log, payloads(0..5)).await.unwrap();
        storage.close().await;
    });
    assert_eq!(
        created_segment_size(&config.path).unwrap(),
        Some(SEGMENT_BYTES)
    );
    std::fs::remove_file(config.path.join("conf")).unwrap();
    let e = Storage::open(&config).unwrap_err();
    assert!(
        matches!(&e, StorageError::Corrupt(m) if m.contains("conf") && m.contains("missing")),
        "{e}"
    );
    std::fs::write(config.path.join("conf"), b"\xff\xfe not sled's settings").unwrap();
    let e = Storage::open(&config).unwrap_err();
    assert!(e.to_string().contains("unreadable"), "{e}");
}

#[test]
fn a_panic_while_opening_becomes_an_error() {
    let e = catch_panic::<()>(|| panic!("tried to serialize Uninitialized")).unwrap_err();
    assert!(
        matches!(&e, StorageError::Corrupt(m) if m.contains("tried to serialize Uninitialized")),
        "{e}"
    );
    // The hook is restored: a later panic is not swallowed by this one's.
    assert_eq!(catch_panic(|| Ok(7)).unwrap(), 7);
}

/// Writes, straight into the tree, what a commit of records `base` and `base + 1`
/// writes key by key: the marker, record `base` sealed in a chunk, record `base + 1` in
/// a journal entry, a dedup entry and the topic's stats, and, if `finished`, the
/// marker's removal that makes it count. Returns the chunk's seal sequence: the next
/// one, which the writer gives again unless the data dir is reopened.
fn write_commit(storage: &Storage, log: &TopicLog, base: u64, finished: bool) -> u64 {
    let tree = &storage.tree;
    let id = log.id();
    let dedup = keys::dedup(now_ms(), u64::MAX);
    let sequence = 1000 + base;
    let sealed = next_chunk(tree).unwrap();
    let marker = keys::Unfinished {
        topics: vec![(id, log.sealed_stats())],
        journal: Some(sequence),
        dedup: Some(dedup),
        chunks: Some(sealed),
        earlier: Vec::new(),
    };
    tree.insert(keys::UNFINISHED, marker.encode()).unwrap();
    let ts = log.stats().last_ts;
    let batch = |offset: u64| {
        quiver_protocol::record::encode_batch(ts, [&NewRecord::new(format!("record-{offset}"))])
    };
    let chunk = batch(base);
    let meta = keys::ChunkMeta {
        count: 1,
        bytes: u32::try_from(chunk.len()).unwrap(),
        first_ts: ts,
        last_ts: ts,
        crc: Some(crc32fast::hash(&chunk)),
        sealed: Some(sealed),
    };
    tree.insert(keys::sealed_part(sealed, 0), &chunk[..])
        .unwrap();
    tree.insert(keys::with_offset(keys::INDEX, id, base), &meta.encode()[..])
        .unwrap();
    let records = batch(base + 1);
    let mut piece = log::Piece {
        base: base + 1,
        count: 1,
        first_ts: ts,
        last_ts: ts,
        bytes: Bytes::new(),
    };
    let entry = journal::encode(&mut [journal::Encoding {
        topic: id,
        piece: &mut piece,
        records: &records,
    }]);
    tree.insert(keys::journal_part(sequence, 0), &entry[..])
        .unwrap();
    let receipt = Receipt {
        base_offset: base,
        count: 2,
        routed: Vec::new(),
        dead_letter: None,
        dropped: 0,
    };
    let id_of = PublishId {
        producer: 9,
        sequence: 99,
    };
    let entry = postcard::to_allocvec(&vec![(id_of, receipt)]).unwrap();
    tree.insert(dedup, entry).unwrap();
    let stats = LogStats {
        next: base + 1,
        bytes: log.stats().bytes + chunk.len() as u64,
        ..log.stats()
    };
    tree.insert(keys::with_id(keys::STATS, id), &stats.encode())
        .unwrap();
    if finished {
        tree.remove(keys::UNFINISHED).unwrap();
    }
    sealed
}

#[test]
fn a_commit_the_log_cut_short_is_taken_back_and_a_whole_one_kept() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let sequences = |storage: &Storage| -> Vec<u64> {
        let entries = dedup_entries(storage, usize::MAX);
        entries.iter().map(|(id, _, _)| id.sequence).collect()
    };
    // Chunks of one record: every commit seals its records, as a full chunk would.
    let config = config(&dir, 1);
    let sealed = rt.block_on(async {
        let (storage, _) = Storage::open(&config).unwrap();
        let log = storage
            .create_topic(name("cut"), Retention::default())
            .await
            .unwrap();
        for sequence in 0..3 {
            append_with_ids(&storage, &log, sequence..sequence + 1).await;
            assert_eq!(
                storage.tree.get(keys::UNFINISHED).unwrap(),
                None,
                "a finished commit leaves no marker"
            );
        }
        let sealed = write_commit(&storage, &log, 3, false);
        assert_eq!(sequences(&storage), [0, 1, 2, 99]);
        storage.sync().await.unwrap();
        storage.close().await;
        sealed
    });
    rt.block_on(async {
        let (storage, topics) = reopen(&config);
        let log = topics[0].clone();
        assert_eq!(log.stats().next, 3, "the cut-short commit does not count");
        assert_eq!(log.sealed_stats().next, 3, "its stats were written back");
        assert_eq!(
            sequences(&storage),
            [0, 1, 2],
            "and its dedup entry is gone"
        );
        assert_eq!(storage.tree.get(keys::UNFINISHED).unwrap(), None);
        assert_eq!(
            storage.tree.scan_prefix([keys::JOURNAL]).count(),
            0,
            "and its journal entry"
        );
        let index = keys::with_offset(keys::INDEX, log.id(), 3);
        assert_eq!(
            storage.tree.get(index).unwrap(),
            None,
            "nothing at offset 3"
        );
        assert_eq!(
            storage
                .tree
                .scan_prefix(keys::with_id(keys::SEALED, sealed))
                .count(),
            0,
            "nor its chunk's parts"
        );
        // Offset 3 is free again: the next record takes it and reads back whole.
        let appended = storage.append(log.clone(), payloads(3..4)).await.unwrap();
        assert_eq!(appended.base_offset, 3);
        let all = read_all(&storage, &log, 10);
        assert_eq!(all.len(), 4);
        assert_eq!(all[3], (3, Bytes::from("record-3")));
        // A commit whose marker went counts whole: its sealed chunk and its journal
        // entry, replayed.
        write_commit(&storage, &log, 4, true);
        storage.sync().await.unwrap();
        storage.close().await;
    });
    rt.block_on(async {
        let (storage, topics) = reopen(&config);
        let log = topics[0].clone();
        assert_eq!(log.stats().next, 6);
        assert_eq!(log.sealed_stats().next, 5);
        assert_eq!(sequences(&storage), [0, 1, 2, 99]);
        assert_eq!(storage.tree.get(keys::UNFINISHED).unwrap(), None);
        let all = read_all(&storage, &log, 10);
        assert_eq!(all.len(), 6);
        assert_eq!(all[5], (5, Bytes::from("record-5")));
        storage.close().await;
    });
}

#[test]
fn a_read_that_loses_its_chunks_to_a_trim_never_serves_an_uncommitted_one() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        // Chunks of one record, so that every record is sealed.
        let (storage, _) = Storage::open(&config(&dir, 1)).unwrap();
        let log = storage
            .create_topic(name("racing"), Retention::default())
            .await
            .unwrap();
        for i in 0..3 {
            storage
                .append(log.clone(), payloads(i..i + 1))
                .await
                .unwrap();
        }
        // A commit of offset 3 under way (its chunk written, its marker not removed),
        // and a trim that removed the chunks of 0..3 after the reader took the stats.
        write_commit(&storage, &log, 3, false);
        for base in 0..3 {
            storage
                .tree
                .remove(keys::with_offset(keys::INDEX, log.id(), base))
                .unwrap();
        }
        assert_eq!(log.stats().next, 3);
        let read = storage.read(&log, 0, 100, usize::MAX).unwrap();
        assert!(
            read.is_none(),
            "nothing at or above `next` is served: {:?}",
            read.map(|slice| slice.base_offset)
        );
        storage.close().await;
    });
}

/// Appends `count` forwarded records covering origin offsets `from .. next`.
async fn forward(
    storage: &Storage,
    log: &Arc<TopicLog>,
    key: MarkKey,
    (from, next): (u64, u64),
    count: u32,
) -> Result<Committed, StorageError> {
    let mark = MarkWrite {
        key,
        origin_topic: "origin".into(),
        from,
        next,
        stamps: (0..u64::from(count)).map(|i| 1_000 + i).collect(),
        provenance: None,
    };
    storage
        .submit_append(
            vec![(log.clone(), payloads(0..count))],
            Vec::new(),
            Vec::new(),
            Some(mark),
        )
        .await?
        .durable()
        .await
}

#[test]
fn marks_move_with_their_records_refuse_gaps_and_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(&dir, 1 << 14);
    let key = |topic| MarkKey {
        topic,
        broker: 0xabc,
        origin_topic: 3,
    };
    let (broker_id, topic_id) = rt().block_on(async {
        let (storage, _) = Storage::open(&config).unwrap();
        let log = storage
            .create_topic(name("hub.a"), Retention::default())
            .await
            .unwrap();
        let key = key(log.id());
        // A first batch may start anywhere; the next must continue at its mark.
        forward(&storage, &log, key, (10, 14), 4).await.unwrap();
        assert_eq!(storage.marks().get(&key), Some(14));
        let gap = forward(&storage, &log, key, (20, 22), 2).await.unwrap_err();
        assert!(
            matches!(
                gap,
                StorageError::OutOfOrder {
                    expected: 14,
                    from: 20
                }
            ),
            "{gap}"
        );
        // Two batches queued together: the second continues where the first ends.
        let (a, b) = tokio::join!(
            forward(&storage, &log, key, (14, 16), 2),
            forward(&storage, &log, key, (16, 20), 4)
        );
        a.unwrap();
        b.unwrap();
        assert_eq!(storage.marks().get(&key), Some(20));
        assert_eq!(
            log.stats().next,
            10,
            "4 + 2 + 4 records, nothing of the refused one"
        );
        // Original timestamps are kept (never going backwards in the topic).
        let slice = storage.read(&log, 0, 4, usize::MAX).unwrap().unwrap();
        let first = decode_batch(0, &slice.batch).unwrap();
        assert_eq!(first[0].timestamp, 1_000);
        let (id, topic) = (storage.broker_id(), log.id());
        storage.close().await;
        (id, topic)
    });
    let (storage, _) = reopen(&config);
    assert_eq!(storage.broker_id(), broker_id, "the broker keeps its id");
    assert_eq!(storage.marks().get(&key(topic_id)), Some(20));
    assert_eq!(
        storage.marks().from_broker(topic_id, 0xabc)[0]
            .1
            .origin_topic,
        "origin"
    );
}

/// Copies a directory, as the files are at this moment.
fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        match entry.file_type().unwrap().is_dir() {
            true => copy_tree(&entry.path(), &target),
            false => drop(std::fs::copy(entry.path(), target).unwrap()),
        }
    }
}

/// The sled keys under `prefix`.
fn count_keys(storage: &Storage, prefix: u8) -> usize {
    storage.tree.scan_prefix([prefix]).count()
}

#[test]
fn a_commit_to_many_topics_writes_one_journal_entry_and_opening_replays_it() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let config = config(&dir, DEFAULT_CHUNK_BYTES);
    let topics: Vec<TopicName> = (0..200).map(|i| name(&format!("many.{i}"))).collect();
    rt.block_on(async {
        let (storage, _) = Storage::open(&config).unwrap();
        let mut logs = Vec::new();
        for topic in &topics {
            logs.push(
                storage
                    .create_topic(topic.clone(), Retention::default())
                    .await
                    .unwrap(),
            );
        }
        let before = [keys::SEALED, keys::INDEX, keys::STATS].map(|p| count_keys(&storage, p));
        // One record to every topic, in one command: one commit.
        let appends = logs
            .iter()
            .map(|log| (log.clone(), payloads(0..1)))
            .collect();
        append_durably(&storage, appends, Vec::new(), Vec::new()).await;
        let after = [keys::SEALED, keys::INDEX, keys::STATS].map(|p| count_keys(&storage, p));
        assert_eq!(
            before, after,
            "no chunk, index entry or stats written per topic"
        );
        assert_eq!(count_keys(&storage, keys::JOURNAL), 1, "one journal entry");
        // Deleting half the topics: their pieces no longer hold the entry, the others do.
        for log in &logs[..100] {
            storage.delete_topic(log.clone()).await.unwrap();
        }
        storage.close().await;
    });
    rt.block_on(async {
        let (storage, logs) = reopen(&config);
        assert_eq!(logs.len(), 100);
        for log in &logs {
            assert_eq!(log.stats().next, 1, "{}", log.name());
            assert_eq!(log.sealed_stats().next, 0);
            assert_eq!(read_all(&storage, log, 10), [(0, Bytes::from("record-0"))]);
        }
        // Records that fill a chunk seal it, with the journalled one first; deleted
        // topics hold nothing either.
        let big = NewRecord::new(vec![b'x'; DEFAULT_CHUNK_BYTES]);
        for log in &logs[..50] {
            storage
                .append(log.clone(), vec![big.clone()])
                .await
                .unwrap();
            assert_eq!(log.sealed_stats().next, 2, "{}", log.name());
        }
        for log in &logs[50..] {
            storage.delete_topic(log.clone()).await.unwrap();
        }
        assert_eq!(
            count_keys(&storage, keys::JOURNAL),
            0,
            "no topic holds the entry"
        );
        storage.close().await;
    });
    rt.block_on(async {
        let (storage, logs) = reopen(&config);
        assert_eq!(logs.len(), 50);
        for log in &logs {
            let all = read_all(&storage, log, 10);
            assert_eq!(all.len(), 2);
            assert_eq!(all[0], (0, Bytes::from("record-0")));
        }
        storage.close().await;
    });
}

#[test]
fn a_layout_4_commit_cut_short_is_taken_back_and_the_stamp_moves_on() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let config = config(&dir, 1);
    rt.block_on(async {
        let (storage, _) = Storage::open(&config).unwrap();
        let log = storage
            .create_topic(name("old"), Retention::default())
            .await
            .unwrap();
        storage.append(log.clone(), payloads(0..3)).await.unwrap();
        // What a layout-4 broker left: its stamp, and its marker of a one-topic commit
        // at offset 3 whose chunk was written and whose stats were not.
        to_parts_by_topic(&storage, log.id(), 28);
        let tree = &storage.tree;
        tree.insert(keys::VERSION, &4u32.to_be_bytes()).unwrap();
        let marker = [log.id().to_be_bytes(), 3u64.to_be_bytes()].concat();
        tree.insert(keys::UNFINISHED, marker).unwrap();
        let part = tree.get(keys::chunk_part(log.id(), 2, 0)).unwrap().unwrap();
        tree.insert(keys::chunk_part(log.id(), 3, 0), part).unwrap();
        let meta = tree
            .get(keys::with_offset(keys::INDEX, log.id(), 2))
            .unwrap()
            .unwrap();
        tree.insert(keys::with_offset(keys::INDEX, log.id(), 3), meta)
            .unwrap();
        storage.sync().await.unwrap();
        storage.close().await;
    });
    rt.block_on(async {
        let (storage, topics) = reopen(&config);
        let log = &topics[0];
        assert_eq!(log.stats().next, 3);
        assert_eq!(
            storage
                .tree
                .scan_prefix(keys::with_offset(keys::CHUNK, log.id(), 3))
                .count(),
            0
        );
        assert_eq!(storage.tree.get(keys::UNFINISHED).unwrap(), None);
        let version = storage.tree.get(keys::VERSION).unwrap().unwrap();
        assert_eq!(version.as_ref(), keys::FORMAT.to_be_bytes());
        assert_eq!(read_all(&storage, log, 10).len(), 3);
        storage.close().await;
    });
}

#[test]
fn plain_keys_are_written_with_their_commit_and_taken_back_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(&dir, DEFAULT_CHUNK_BYTES);
    let rt = rt();
    let set = |key: &str, value: Option<&str>| StateWrite {
        plugin: "p".into(),
        key: key.as_bytes().to_vec(),
        value: value.map(|v| v.as_bytes().to_vec()),
    };
    let state = |storage: &Storage, key: &str| {
        storage
            .state_get("p", key.as_bytes())
            .unwrap()
            .map(|v| String::from_utf8(v).unwrap())
    };
    let mqtt = |storage: &Storage| storage.mqtt_entries(b'r').unwrap();
    rt.block_on(async {
        let (storage, _) = Storage::open(&config).unwrap();
        let log = storage
            .create_topic(name("t"), Retention::default())
            .await
            .unwrap();
        // State is written only for a deployed plugin.
        let record = PluginRecord {
            name: "p".into(),
            versions: Vec::new(),
        };
        storage.put_plugin(record, None).await.unwrap();
        for (records, writes) in [
            (0..2, vec![set("seen", Some("1")), set("gone", Some("x"))]),
            (2..3, vec![set("seen", Some("2")), set("gone", None)]),
        ] {
            append_durably(
                &storage,
                vec![(log.clone(), payloads(records))],
                writes,
                Vec::new(),
            )
            .await;
            assert_eq!(storage.tree.get(keys::UNFINISHED).unwrap(), None);
        }
        storage
            .put_mqtt(b'r', vec![(b"status".to_vec(), Some(b"up".to_vec()))])
            .await
            .unwrap();
        assert_eq!(state(&storage, "seen").as_deref(), Some("2"));
        assert_eq!(state(&storage, "gone"), None);
        assert_eq!(mqtt(&storage), [(b"status".to_vec(), b"up".to_vec())]);
        // A commit the log cut short after writing its plain keys: its marker holds
        // the values they had before.
        let marker = keys::Unfinished {
            topics: Vec::new(),
            journal: None,
            dedup: None,
            chunks: None,
            earlier: vec![
                (keys::state("p", b"seen"), Some(b"2".to_vec())),
                (keys::state("p", b"gone"), None),
                (keys::mqtt(b'r', b"status"), Some(b"up".to_vec())),
            ],
        };
        let tree = &storage.tree;
        tree.insert(keys::UNFINISHED, marker.encode()).unwrap();
        tree.insert(keys::state("p", b"seen"), &b"3"[..]).unwrap();
        tree.insert(keys::state("p", b"gone"), &b"y"[..]).unwrap();
        tree.remove(keys::mqtt(b'r', b"status")).unwrap();
        storage.sync().await.unwrap();
        storage.close().await;
    });
    rt.block_on(async {
        let (storage, topics) = reopen(&config);
        assert_eq!(storage.tree.get(keys::UNFINISHED).unwrap(), None);
        assert_eq!(state(&storage, "seen").as_deref(), Some("2"), "set back");
        assert_eq!(state(&storage, "gone"), None, "removed again");
        assert_eq!(
            mqtt(&storage),
            [(b"status".to_vec(), b"up".to_vec())],
            "restored"
        );
        assert_eq!(topics[0].stats().next, 3, "the commits before it count");
        storage.close().await;
    });
}

#[test]
fn a_removed_plugins_state_is_purged_in_steps_that_outlive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    // What `open_with_topic` opens.
    let config = config(&dir, 100);
    let rt = rt();
    let set = |plugin: &str, key: u32| StateWrite {
        plugin: plugin.into(),
        key: key.to_be_bytes().to_vec(),
        value: Some(b"seen".to_vec()),
    };
    let has = |storage: &Storage, plugin: &str, key: u32| {
        storage
            .state_get(plugin, &key.to_be_bytes())
            .unwrap()
            .is_some()
    };
    const KEYS: u32 = 10_000;
    rt.block_on(async {
        let (storage, log) = open_with_topic(&dir, "t").await;
        for plugin in ["p", "q"] {
            let record = PluginRecord {
                name: plugin.into(),
                versions: Vec::new(),
            };
            storage.put_plugin(record, None).await.unwrap();
        }
        let mut writes: Vec<StateWrite> = (0..KEYS).map(|key| set("p", key)).collect();
        writes.push(set("q", 7));
        append_durably(&storage, vec![(log, payloads(0..1))], writes, Vec::new()).await;

        // The removal itself leaves the state, behind a marker.
        storage.remove_plugin("p".into()).await.unwrap();
        assert!(has(&storage, "p", 0) && has(&storage, "p", KEYS - 1));
        assert_eq!(storage.pending_state_purges().unwrap(), ["p"]);
        let step = storage.purge_state("p".into()).await.unwrap();
        assert!(step.more && 0 < step.removed && step.removed < KEYS as usize);
        storage.close().await;
        drop(storage);

        // A restart keeps the marker: the purge goes on where it stopped.
        let (storage, topics) = reopen(&config);
        assert_eq!(storage.pending_state_purges().unwrap(), ["p"]);
        let rest = storage.purge_all_state("p").await.unwrap();
        assert_eq!(step.removed + rest, KEYS as usize);
        assert!(storage.pending_state_purges().unwrap().is_empty());
        assert!((0..KEYS).all(|key| !has(&storage, "p", key)));
        assert!(has(&storage, "q", 7), "another plugin's state stays");

        // A call that ran before the removal and commits after it writes no state:
        // it would outlive the purge.
        let log = topics[0].clone();
        let late = vec![(log.clone(), payloads(1..2))];
        append_durably(&storage, late, vec![set("p", 1)], Vec::new()).await;
        assert!(
            !has(&storage, "p", 1),
            "a removed plugin's late state is dropped"
        );

        // Without a marker a purge touches nothing: state written since belongs to a
        // plugin deployed under the name again.
        let record = PluginRecord {
            name: "p".into(),
            versions: Vec::new(),
        };
        storage.put_plugin(record, None).await.unwrap();
        let again = vec![(log, payloads(2..3))];
        append_durably(&storage, again, vec![set("p", 1)], Vec::new()).await;
        let step = storage.purge_state("p".into()).await.unwrap();
        assert_eq!((step.removed, step.more), (0, false));
        assert!(has(&storage, "p", 1));
        storage.close().await;
    });
}

#[test]
fn a_deleted_groups_keys_are_purged_in_steps_that_outlive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    // Group deltas applied at every commit: the purge reads the keys they write.
    let config = StorageConfig {
        group_deltas: 1,
        ..config(&dir, 100)
    };
    let rt = rt();
    const PENDING: u64 = 10_000;
    let keys_of = |storage: &Storage, prefix: &[u8]| storage.tree.scan_prefix(prefix).count();
    rt.block_on(async {
        let (storage, _) = Storage::open(&config).unwrap();
        let log = storage
            .create_topic(name("t"), Retention::default())
            .await
            .unwrap();
        let other = storage
            .create_topic(name("u"), Retention::default())
            .await
            .unwrap();
        let mut ids = Vec::new();
        for group in ["deleted", "kept"] {
            let record = GroupRecord {
                id: storage.generate_id().unwrap(),
                name: group.into(),
                settings: GroupSettings::new("*"),
                created_ms: 1,
            };
            let lanes = vec![(log.id(), PENDING), (other.id(), PENDING)];
            storage.create_group(record.clone(), lanes).await.unwrap();
            // Every record of both lanes nacked: a key of its own each.
            let writes = [log.id(), other.id()]
                .into_iter()
                .flat_map(|topic| {
                    (0..PENDING).map(move |offset| GroupWrite::Pending {
                        topic,
                        offset,
                        entry: Some((1, u64::MAX)),
                    })
                })
                .collect();
            storage
                .group_writes(group.into(), record.id, writes)
                .await
                .unwrap();
            ids.push(record.id);
        }
        storage.sync().await.unwrap();
        let [deleted, kept] = ids[..] else {
            unreachable!()
        };

        // The deletion itself leaves the keys, behind a marker.
        storage
            .delete_group("deleted".into(), deleted)
            .await
            .unwrap();
        assert_eq!(storage.groups().unwrap().len(), 1);
        let whole = GroupPurge {
            group: deleted,
            topic: None,
        };
        assert_eq!(storage.pending_group_purges().unwrap(), [whole]);
        let unacked = keys::with_id(keys::UNACKED, deleted);
        assert_eq!(keys_of(&storage, &unacked), 2 * PENDING as usize);
        let step = storage.purge_group(whole).await.unwrap();
        assert!(step.more && 0 < step.removed && step.removed < PENDING as usize);
        storage.close().await;
        drop(storage);

        // A restart keeps the marker: the purge goes on where it stopped.
        let (storage, _) = reopen(&config);
        assert_eq!(storage.pending_group_purges().unwrap(), [whole]);
        // Two lanes and their pending records.
        let rest = purge_group_to_the_end(&storage, whole).await;
        assert_eq!(step.removed + rest, 2 + 2 * PENDING as usize);
        assert!(storage.pending_group_purges().unwrap().is_empty());
        assert_eq!(keys_of(&storage, &keys::with_id(keys::LANE, deleted)), 0);
        assert_eq!(keys_of(&storage, &unacked), 0);

        // The other group is whole. Dropping one of its lanes (its topic deleted)
        // leaves that lane's pending records to a purge of their own, with one the
        // same commit writes just before the drop.
        let lanes = &storage.groups().unwrap()[0].lanes;
        assert_eq!(lanes.len(), 2);
        assert!(
            lanes
                .iter()
                .all(|lane| lane.pending.len() == PENDING as usize)
        );
        let drop = vec![
            GroupWrite::Pending {
                topic: other.id(),
                offset: PENDING,
                entry: Some((1, u64::MAX)),
            },
            GroupWrite::DropLane { topic: other.id() },
        ];
        storage
            .group_writes("kept".into(), kept, drop)
            .await
            .unwrap();
        storage.sync().await.unwrap();
        let lane = GroupPurge {
            group: kept,
            topic: Some(other.id()),
        };
        assert_eq!(storage.pending_group_purges().unwrap(), [lane]);
        let lanes = &storage.groups().unwrap()[0].lanes;
        assert_eq!((lanes.len(), lanes[0].topic), (1, log.id()));
        assert_eq!(
            purge_group_to_the_end(&storage, lane).await,
            PENDING as usize + 1
        );
        assert!(storage.pending_group_purges().unwrap().is_empty());
        let unacked = keys::with_id(keys::UNACKED, kept);
        assert_eq!(
            keys_of(&storage, &unacked),
            PENDING as usize,
            "the other lane's stay"
        );
        // A lane with nothing stored, whose only pending key the dropping commit
        // writes, still leaves a marker for it.
        let fresh = vec![
            GroupWrite::Pending {
                topic: 999,
                offset: 0,
                entry: Some((2, 0)),
            },
            GroupWrite::DropLane { topic: 999 },
        ];
        storage
            .group_writes("kept".into(), kept, fresh)
            .await
            .unwrap();
        storage.sync().await.unwrap();
        let lane = GroupPurge {
            group: kept,
            topic: Some(999),
        };
        assert_eq!(storage.pending_group_purges().unwrap(), [lane]);
        assert_eq!(purge_group_to_the_end(&storage, lane).await, 1);

        // Without a marker a purge touches nothing.
        let unmarked = GroupPurge {
            group: kept,
            topic: Some(log.id()),
        };
        let step = storage.purge_group(unmarked).await.unwrap();
        assert_eq!((step.removed, step.more), (0, false));
        assert_eq!(keys_of(&storage, &unacked), PENDING as usize);
        storage.close().await;
    });
}

/// Runs a group purge's steps until none is left; returns the keys removed.
async fn purge_group_to_the_end(storage: &Storage, purge: GroupPurge) -> usize {
    let mut removed = 0;
    loop {
        let step = storage.purge_group(purge).await.unwrap();
        removed += step.removed;
        if !step.more {
            return removed;
        }
    }
}

#[derive(Debug, Clone)]
enum GroupOp {
    /// A lane of group 0 or 1 moves in topic 1 to 3: its cursor (+ 10), its counters,
    /// and its first half plain pending or not.
    Lane(bool, u8, u8, bool),
    /// A pending record's own key set (with deliveries − 1) or removed.
    Pending(bool, u8, u8, Option<u8>),
    /// Topic 1 to 3 deleted: both groups drop its lane.
    Drop(u8),
    /// The group deleted and created again under its name: a new id, lanes at 0.
    Recreate(bool),
    Reopen,
    /// Reopen a copy of the data dir taken after the last flush.
    Crash,
}

fn group_op() -> impl Strategy<Value = GroupOp> {
    let topic = || 1u8..4;
    prop_oneof![
        6 => (any::<bool>(), topic(), any::<u8>(), any::<bool>())
            .prop_map(|(g, t, c, plain)| GroupOp::Lane(g, t, c, plain)),
        6 => (any::<bool>(), topic(), 0u8..8, proptest::option::of(0u8..4))
            .prop_map(|(g, t, o, d)| GroupOp::Pending(g, t, o, d)),
        1 => topic().prop_map(GroupOp::Drop),
        1 => any::<bool>().prop_map(GroupOp::Recreate),
        1 => Just(GroupOp::Reopen),
        1 => Just(GroupOp::Crash),
    ]
}

/// What `Storage::groups` should read for one group: its lanes by topic, each with its
/// pending keys by offset.
type GroupModel = BTreeMap<u64, (StoredLane, BTreeMap<u64, (u32, u64)>)>;

fn lanes_of(model: &GroupModel) -> Vec<StoredLane> {
    model
        .values()
        .map(|(lane, pending)| StoredLane {
            pending: pending.iter().map(|(&o, &(d, n))| (o, d, n)).collect(),
            ..lane.clone()
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    /// Group state against a model: lanes moving, pending keys set and removed, lanes
    /// dropped, groups deleted and created again, restarts and crashes, with the
    /// deltas applied at every commit, every few, or never in the run.
    #[test]
    fn group_state_matches_a_simple_model(
        every in prop_oneof![Just(1u64), Just(2), Just(5), Just(1000)],
        ops in proptest::collection::vec(group_op(), 1..60),
    ) {
        let mut dir = tempfile::tempdir().unwrap();
        let rt = rt();
        let mut config = StorageConfig { group_deltas: every, ..config(&dir, 100) };
        let (mut storage, _) = Storage::open(&config).unwrap();
        let names = ["g0", "g1"];
        let mut live: Vec<u64> = vec![1, 2, 3];
        let mut ids = [0u64; 2];
        let mut models: [GroupModel; 2] = Default::default();
        let create = |storage: &Storage, name: &str, live: &[u64]| {
            let record = GroupRecord {
                id: storage.generate_id().unwrap(),
                name: name.into(),
                settings: GroupSettings::new("*"),
                created_ms: 1,
            };
            let lanes = live.iter().map(|&t| (t, 0)).collect();
            rt.block_on(storage.create_group(record.clone(), lanes)).unwrap();
            let model: GroupModel = live
                .iter()
                .map(|&topic| (topic, (StoredLane { topic, ..StoredLane::default() }, BTreeMap::new())))
                .collect();
            (record.id, model)
        };
        for g in 0..2 {
            (ids[g], models[g]) = create(&storage, names[g], &live);
        }
        for op in ops {
            let write = |storage: &Storage, g: usize, writes: Vec<GroupWrite>| {
                rt.block_on(storage.group_writes(names[g].into(), ids[g], writes)).unwrap();
            };
            match op {
                GroupOp::Lane(g, t, c, plain) => {
                    let (g, topic) = (usize::from(g), u64::from(t));
                    if let Some((lane, _)) = models[g].get_mut(&topic) {
                        let cursor = u64::from(c) + 10;
                        lane.cursor = cursor;
                        lane.redelivered = u64::from(c);
                        lane.dead_lettered = u64::from(c / 3);
                        lane.plain = if plain { vec![(0, cursor / 2)] } else { Vec::new() };
                        let write_lane = GroupWrite::Lane {
                            topic,
                            cursor,
                            redelivered: lane.redelivered,
                            dead_lettered: lane.dead_lettered,
                            plain: lane.plain.clone(),
                        };
                        write(&storage, g, vec![write_lane]);
                    }
                }
                GroupOp::Pending(g, t, offset, deliveries) => {
                    let (g, topic, offset) = (usize::from(g), u64::from(t), u64::from(offset));
                    if let Some((_, pending)) = models[g].get_mut(&topic) {
                        let entry = deliveries.map(|d| (u32::from(d) + 1, u64::from(d) * 100));
                        match entry {
                            Some(entry) => pending.insert(offset, entry),
                            None => pending.remove(&offset),
                        };
                        write(&storage, g, vec![GroupWrite::Pending { topic, offset, entry }]);
                    }
                }
                GroupOp::Drop(t) => {
                    let topic = u64::from(t);
                    if live.contains(&topic) {
                        live.retain(|&l| l != topic);
                        for (g, model) in models.iter_mut().enumerate() {
                            model.remove(&topic);
                            write(&storage, g, vec![GroupWrite::DropLane { topic }]);
                        }
                    }
                }
                GroupOp::Recreate(g) => {
                    let g = usize::from(g);
                    rt.block_on(storage.delete_group(names[g].into(), ids[g])).unwrap();
                    (ids[g], models[g]) = create(&storage, names[g], &live);
                }
                GroupOp::Reopen | GroupOp::Crash => {
                    let crash = matches!(op, GroupOp::Crash);
                    storage = restart(&rt, storage, &mut dir, &mut config, crash).0;
                    if !crash {
                        let left = storage.tree.scan_prefix([keys::GROUP_DELTA]).count();
                        prop_assert_eq!(left, 0, "a clean stop applies the deltas");
                    }
                }
            }
            rt.block_on(storage.sync()).unwrap();
            let mut stored = storage.groups().unwrap();
            stored.sort_by(|a, b| a.record.name.cmp(&b.record.name));
            prop_assert_eq!(stored.len(), 2);
            for g in 0..2 {
                prop_assert_eq!(stored[g].record.id, ids[g]);
                prop_assert_eq!(&stored[g].lanes, &lanes_of(&models[g]));
            }
            // Deltas on disk: fewer than `every` (unless the keys they hold were many).
            let deltas = storage.tree.scan_prefix([keys::GROUP_DELTA]).count() as u64;
            prop_assert!(deltas < every, "{} deltas on disk, applied every {}", deltas, every);
        }
        rt.block_on(storage.close());
    }
}

/// An apply of the group deltas writes each key's last value, then removes the
/// deltas oldest first; a power cut keeps a prefix of that. Every prefix reads as the
/// whole: the deltas left lay the newest values over whatever was written.
#[test]
fn every_prefix_of_an_apply_reads_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    // Never applied in the run: the test applies them itself, a step at a time.
    let config = StorageConfig {
        group_deltas: u64::MAX,
        ..config(&dir, 100)
    };
    let (storage, _) = Storage::open(&config).unwrap();
    let mut ids = Vec::new();
    for name in ["kept", "deleted"] {
        let record = GroupRecord {
            id: storage.generate_id().unwrap(),
            name: name.into(),
            settings: GroupSettings::new("*"),
            created_ms: 1,
        };
        rt.block_on(storage.create_group(record.clone(), vec![(1, 0), (2, 0)]))
            .unwrap();
        ids.push(record.id);
    }
    let lane = |topic, cursor| GroupWrite::Lane {
        topic,
        cursor,
        redelivered: 0,
        dead_lettered: 0,
        plain: vec![(0, 1)],
    };
    let pending = |offset, entry| GroupWrite::Pending {
        topic: 1,
        offset,
        entry,
    };
    let commits = [
        vec![lane(1, 5), pending(3, Some((2, 0)))],
        vec![lane(2, 7), pending(4, Some((2, 9)))],
        vec![lane(1, 9), pending(3, None)],
        vec![GroupWrite::DropLane { topic: 2 }],
    ];
    for (name, id) in [("kept", ids[0]), ("deleted", ids[1])] {
        for writes in commits.clone() {
            rt.block_on(storage.group_writes(name.into(), id, writes))
                .unwrap();
            rt.block_on(storage.sync()).unwrap();
        }
    }
    rt.block_on(storage.delete_group("deleted".into(), ids[1]))
        .unwrap();
    rt.block_on(storage.sync()).unwrap();
    let whole = storage.groups().unwrap();
    assert_eq!(whole.len(), 1);
    assert_eq!(
        whole[0].lanes,
        [StoredLane {
            topic: 1,
            cursor: 9,
            plain: vec![(0, 1)],
            pending: vec![(4, 2, 9)],
            ..StoredLane::default()
        }]
    );
    // The apply's steps, as the writer would take them after a restart.
    let deltas = super::groups::read_deltas(&storage.tree, |id| id == ids[0]).unwrap();
    assert_eq!((deltas.first, deltas.next), (0, 8), "a delta per commit");
    let steps = writer::groups::GroupDeltas::new(deltas, 1).steps();
    for (i, (key, value)) in steps.into_iter().enumerate() {
        keys::write(&storage.tree, [(key, value)]).unwrap();
        assert_eq!(
            storage.groups().unwrap()[0].lanes,
            whole[0].lanes,
            "after step {i}"
        );
    }
    assert_eq!(storage.tree.scan_prefix([keys::GROUP_DELTA]).count(), 0);
    assert_eq!(
        storage
            .tree
            .scan_prefix(keys::with_id(keys::LANE, ids[1]))
            .count(),
        2,
        "the deleted group's lanes as created, left to its purge"
    );
    rt.block_on(storage.close());
}

/// A change to a sled tree in [`sled_keeps_appended_and_scattered_keys`].
#[derive(Debug, Clone)]
enum TreeOp {
    /// Appends this many keys after the last appended, with values of this size.
    Append(u8, u16),
    /// Sets a key before (`false`) or after (`true`) the appended ones.
    Set(bool, u16, u16),
    /// Removes this many of the oldest appended keys.
    RemoveOldest(u8),
    /// Removes a key set before or after the appended ones, if it is there.
    Remove(bool, u16),
    /// Closes the tree and opens it again.
    Reopen,
    /// Flushes, and opens a copy of the files as they are then, as after `kill -9`.
    Crash,
}

fn tree_op() -> impl Strategy<Value = TreeOp> {
    let size = || prop_oneof![3 => 0u16..64, 1 => 0u16..16_384];
    prop_oneof![
        6 => (1u8..40, size()).prop_map(|(n, size)| TreeOp::Append(n, size)),
        3 => (any::<bool>(), 0u16..64, size())
            .prop_map(|(after, k, size)| TreeOp::Set(after, k, size)),
        2 => (1u8..40).prop_map(TreeOp::RemoveOldest),
        1 => (any::<bool>(), 0u16..64).prop_map(|(after, k)| TreeOp::Remove(after, k)),
        1 => Just(TreeOp::Reopen),
        1 => Just(TreeOp::Crash),
    ]
}

/// A sled tree configured as storage opens one (`open.rs`), with a small cache so that
/// leaves are evicted and read back from disk with their changes; opened as
/// [`reopen`] opens, since a dropped `Db` can hold its lock for a moment.
fn open_tree(path: &std::path::Path) -> sled::Db {
    let config = sled::Config::new()
        .path(path)
        .segment_size(SEGMENT_BYTES)
        .cache_capacity(1 << 20)
        .flush_every_ms(None);
    while_locked(|| config.open(), sled_lock)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    /// sled patch 8 (vendor/sled/QUIVER.md) splits a leaf that keys are appended to
    /// where the appends go, and lets it take more changes before it is rewritten
    /// whole. Against a `BTreeMap`: runs of appends (as the journal's and the chunks'
    /// keys are), with keys before and after them that can share their leaves, values
    /// up to a chunk part's size, the oldest appends removed (merging leaves), and
    /// reopening, cleanly or after a crash.
    #[test]
    fn sled_keeps_appended_and_scattered_keys(ops in proptest::collection::vec(tree_op(), 1..60)) {
        let mut dir = tempfile::tempdir().unwrap();
        let mut db = open_tree(dir.path());
        let mut model = BTreeMap::<Vec<u8>, Vec<u8>>::new();
        let (mut oldest, mut next) = (0u64, 0u64);
        let appended = |seq: u64| [&b"j"[..], &seq.to_be_bytes()].concat();
        let scattered = |after: bool, k: u16| {
            let prefix = if after { b'k' } else { b'a' };
            [&[prefix][..], &k.to_be_bytes()].concat()
        };
        let value = |key: &[u8], size: u16| {
            let seed = key.iter().fold(7u8, |h, b| h.wrapping_mul(31).wrapping_add(*b));
            vec![seed; usize::from(size)]
        };
        for op in ops {
            match op {
                TreeOp::Append(n, size) => {
                    for _ in 0..n {
                        let key = appended(next);
                        next += 1;
                        let value = value(&key, size);
                        db.insert(&key, &value[..]).unwrap();
                        model.insert(key, value);
                    }
                }
                TreeOp::Set(after, k, size) => {
                    let key = scattered(after, k);
                    let value = value(&key, size);
                    db.insert(&key, &value[..]).unwrap();
                    model.insert(key, value);
                }
                TreeOp::RemoveOldest(n) => {
                    for _ in 0..n {
                        if oldest < next {
                            let key = appended(oldest);
                            oldest += 1;
                            db.remove(&key).unwrap();
                            model.remove(&key);
                        }
                    }
                }
                TreeOp::Remove(after, k) => {
                    let key = scattered(after, k);
                    db.remove(&key).unwrap();
                    model.remove(&key);
                }
                TreeOp::Reopen => {
                    db.flush().unwrap();
                    drop(db);
                    db = open_tree(dir.path());
                }
                TreeOp::Crash => {
                    db.flush().unwrap();
                    let copy = tempfile::tempdir().unwrap();
                    copy_tree(dir.path(), copy.path());
                    drop(db);
                    dir = copy;
                    db = open_tree(dir.path());
                }
            }
        }
        let stored: BTreeMap<Vec<u8>, Vec<u8>> = db
            .iter()
            .map(|entry| entry.map(|(k, v)| (k.to_vec(), v.to_vec())))
            .collect::<Result<_, _>>()
            .unwrap();
        prop_assert_eq!(stored.len(), model.len());
        prop_assert!(stored == model, "sled's keys differ from the model's");
    }
}
