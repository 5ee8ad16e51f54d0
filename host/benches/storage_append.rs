//! The cost of appending through the real storage (sled in a temporary dir on the
//! machine's disk, its writer thread and group commit), records of a 256-byte payload,
//! for each topic durability:
//! - `fsync` (the default): an append is answered after the flush (fsync) that makes it
//!   durable; "with flush";
//! - `batched_100ms`: answered once applied, flushed within 100 ms by the flusher
//!   thread; "without flush".
//!
//! For each: `append_1`, one append of 1 record awaited until answered (with `fsync`,
//! each pays a flush); `concurrent_64`, 64 appends of 1 record submitted at once and
//! then all awaited (they share group commits); `append_64`, one append of 64 records.
//! Throughput is in records. The data dir (in the system temp dir, removed at the end)
//! grows to about 2 GB while the bench runs, about 45 s.
//!
//! `cargo bench -p quiver-host --bench storage_append`

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use quiver_host::storage::{
    DEFAULT_CHUNK_BYTES, DEFAULT_GROUP_DELTAS, DEFAULT_JOURNAL_BYTES, Storage, StorageConfig,
    TopicLog, TopicRecords, TopicSettings,
};
use quiver_protocol::{Durability, NewRecord, TopicName};
use tokio::runtime::Runtime;

fn record(i: usize) -> NewRecord {
    NewRecord::new((0..256).map(|b| (b + i) as u8).collect::<Vec<u8>>())
}

/// Runs `iters` rounds of `round` (which appends through `storage` to `log`) and
/// returns the time they took.
fn timed<F, Fut>(
    runtime: &Runtime,
    storage: &Storage,
    log: &Arc<TopicLog>,
    iters: u64,
    round: F,
) -> Duration
where
    F: Fn(Storage, Arc<TopicLog>) -> Fut,
    Fut: Future<Output = ()>,
{
    runtime.block_on(async {
        let start = Instant::now();
        for _ in 0..iters {
            round(storage.clone(), Arc::clone(log)).await;
        }
        start.elapsed()
    })
}

fn bench_durability(
    c: &mut Criterion,
    runtime: &Runtime,
    storage: &Storage,
    label: &str,
    durability: Durability,
) {
    let name = TopicName::parse(&format!("bench.{label}")).expect("a valid topic name");
    let settings = TopicSettings {
        durability,
        ..TopicSettings::default()
    };
    let log = runtime
        .block_on(storage.create_topic(name, settings))
        .expect("the topic is created");
    let one = vec![record(0)];
    let batch: Vec<NewRecord> = (0..64).map(record).collect();

    let mut group = c.benchmark_group(format!("storage_append/{label}"));
    // Each `fsync` append waits for a flush (milliseconds); each `batched` one writes
    // to disk through sled's buffers, and the data dir grows with every iteration.
    group
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));

    for (name, records) in [("append_1", &one), ("append_64", &batch)] {
        group.throughput(Throughput::Elements(records.len() as u64));
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                timed(runtime, storage, &log, iters, |storage, log| {
                    let records = records.clone();
                    async move {
                        storage
                            .append(log, records)
                            .await
                            .expect("the append succeeds");
                    }
                })
            });
        });
    }

    group.throughput(Throughput::Elements(64));
    group.bench_function("concurrent_64", |b| {
        b.iter_custom(|iters| {
            timed(runtime, storage, &log, iters, |storage, log| {
                let one = &one;
                async move {
                    let mut pending = Vec::with_capacity(64);
                    for _ in 0..64 {
                        let append: TopicRecords = (Arc::clone(&log), one.clone());
                        pending.push(
                            storage
                                .submit_append(vec![append], Vec::new(), Vec::new(), None)
                                .await
                                .expect("the append is queued"),
                        );
                    }
                    for append in pending {
                        append.durable().await.expect("the append succeeds");
                    }
                }
            })
        });
    });
    group.finish();
}

fn bench(c: &mut Criterion) {
    // Storage needs a runtime only to await its answers: the writer and the flusher
    // are threads of their own.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("the runtime starts");
    let dir = tempfile::TempDir::new().expect("a temporary dir");
    let config = StorageConfig {
        barrier: true,
        path: dir.path().join("data"),
        cache_capacity: 64 << 20,
        chunk_bytes: DEFAULT_CHUNK_BYTES,
        journal_bytes: DEFAULT_JOURNAL_BYTES,
        group_deltas: DEFAULT_GROUP_DELTAS,
    };
    let (storage, _topics) = Storage::open(&config).expect("the storage opens");
    bench_durability(c, &runtime, &storage, "fsync", Durability::Fsync);
    bench_durability(
        c,
        &runtime,
        &storage,
        "batched_100ms",
        Durability::Batched { interval_ms: 100 },
    );
    runtime.block_on(storage.close());
}

criterion_group!(benches, bench);
criterion_main!(benches);
