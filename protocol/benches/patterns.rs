//! What the broker pays in pattern matching when a topic is created: every live
//! subscription (and group) checks the new topic's name against its pattern. Measured as
//! one topic name (`sensors.eu-west.dev-0007.temp`) against 1, 100, 1,000 and 10,000
//! parsed `TopicPattern`s, counting the matches.
//!
//! The patterns are a fixed mix over four families (`sensors`, `orders`, `logs`,
//! `metrics`, so about a quarter share the topic's first token and are compared
//! further): 60% exact names, 20% with a `*` token, 20% ending in `>`.
//!
//! `cargo bench -p quiver-protocol --bench patterns`

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use quiver_protocol::{TopicName, TopicPattern};

const REGIONS: [&str; 4] = ["eu-west", "eu-central", "us-east", "ap-south"];

/// The `i`-th subscription pattern of the mix.
fn pattern(i: usize) -> String {
    let region = REGIONS[(i / 4) % REGIONS.len()];
    let id = i / 16;
    // 0..6: exact, 6..8: `*`, 8..10: `>`.
    let kind = (i / 4) % 10;
    match (i % 4, kind) {
        (0, 0..6) => format!("sensors.{region}.dev-{:04}.temp", id % 10_000),
        (0, 6) => format!("sensors.{region}.*.temp"),
        (0, 7) => format!("sensors.*.dev-{:04}.temp", id % 10_000),
        (0, _) => format!("sensors.{region}.>"),
        (1, 0..6) => format!("orders.tenant-{id}.created"),
        (1, 6 | 7) => "orders.*.created".to_owned(),
        (1, _) => format!("orders.tenant-{id}.>"),
        (2, 0..6) => format!("logs.svc-{id}.error"),
        (2, 6 | 7) => format!("logs.*.{}", ["error", "warn"][id % 2]),
        (2, _) => "logs.>".to_owned(),
        (_, 0..6) => format!("metrics.host-{id}.cpu"),
        (_, 6 | 7) => format!("metrics.host-{id}.*"),
        (_, _) => format!("metrics.host-{id}.>"),
    }
}

fn bench(c: &mut Criterion) {
    let topic = TopicName::parse("sensors.eu-west.dev-0007.temp").expect("a valid topic name");
    let mut group = c.benchmark_group("topic_created");
    for n in [1usize, 100, 1_000, 10_000] {
        let patterns: Vec<TopicPattern> = (0..n)
            .map(|i| TopicPattern::parse(&pattern(i)).expect("the mix holds valid patterns"))
            .collect();
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(
            BenchmarkId::new("match_patterns", n),
            &patterns,
            |b, patterns| {
                b.iter(|| {
                    let topic = black_box(&topic);
                    patterns.iter().filter(|p| p.matches(topic)).count()
                });
            },
        );
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
