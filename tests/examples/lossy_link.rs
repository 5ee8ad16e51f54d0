//! Catch-up of an `out` link through a lossy network: an edge and a hub (the real
//! `quiver` binary), the hub reached only through the test harness's UDP relay, which
//! drops a share of datagrams each way. Runs without loss and with it in turn, each
//! round on fresh brokers, and prints the catch-up rate of each (docs/performance.md).
//!
//! ```sh
//! cargo build --release -p quiver-host
//! cargo run --release -p quiver-tests --example lossy_link -- 300000 0.01 2
//! ```
//!
//! Arguments: records in the backlog (default 300,000), the share of datagrams lost
//! (default 0.01), rounds of each (default 2).

use std::time::{Duration, Instant};

use futures::StreamExt;
use quiver_client::{
    Client, LinkAuth, LinkDirection, LinkSpec, Retention, StartAt, SubscribeOptions,
};
use quiver_tests::relay::Relay;
use quiver_tests::{Broker, DataDir, backlog};

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let records: u64 = args
        .next()
        .map_or(300_000, |a| a.parse().expect("a record count"));
    let loss: f64 = args
        .next()
        .map_or(0.01, |a| a.parse().expect("a share, 0 to 1"));
    let rounds: usize = args
        .next()
        .map_or(2, |a| a.parse().expect("a number of rounds"));
    for round in 1..=rounds {
        for share in [0.0, loss] {
            let (elapsed, dropped) = catch_up(records, share).await;
            println!(
                "round {round}, loss {:.1} %: {records} records caught up in {:.2} s: {:.0} msgs/s ({dropped} datagrams dropped)",
                share * 100.0,
                elapsed.as_secs_f64(),
                records as f64 / elapsed.as_secs_f64(),
            );
        }
    }
}

/// One edge's backlog of `records` forwarded through a relay losing `loss` of the
/// datagrams: how long from creating the link to the hub holding everything.
async fn catch_up(records: u64, loss: f64) -> (Duration, u64) {
    let (hub_data, edge_data) = (DataDir::new(), DataDir::new());
    let hub = Broker::start(&hub_data);
    let edge = Broker::start(&edge_data);
    let relay = Relay::start_seeded(hub.addr().parse().expect("an address"), 1);
    relay.set_loss(loss);
    let client = edge.client().await;
    backlog(&client, "backlog", records).await;
    let spec = LinkSpec {
        name: "up".into(),
        to: vec![relay.addr().to_string()],
        direction: LinkDirection::Out,
        topics: "backlog".into(),
        prefix: String::new(),
        from: StartAt::Earliest,
        max_rate: None,
        ca: Some(std::fs::read_to_string(hub.cert()).expect("the hub's certificate")),
        auth: LinkAuth::Anonymous,
        pipeline: Vec::new(),
        jetstream: None,
    };
    // Counted as the hub receives them: the catch-up ends with the last record.
    let watcher: Client = hub.client().await;
    let options = SubscribeOptions {
        from: StartAt::Earliest,
        window: 8192,
        ..SubscribeOptions::default()
    };
    watcher
        .create_topic("backlog", Retention::default())
        .await
        .expect("created at the hub");
    let mut received = watcher
        .subscribe("backlog", options)
        .await
        .expect("subscribed at the hub");
    let started = Instant::now();
    client.create_link(spec).await.expect("link created");
    for _ in 0..records {
        let record = tokio::time::timeout(Duration::from_secs(600), received.next())
            .await
            .expect("catch-up stalled");
        record.expect("the subscription goes on").expect("a record");
    }
    (started.elapsed(), relay.counts().1)
}
