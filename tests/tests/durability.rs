//! What survives: a clean restart keeps everything; SIGKILL right after acks keeps
//! every acknowledged record; SIGTERM answers in-flight publishes before exiting;
//! topics with batched durability are flushed by a stop and by any later fsync; a disk
//! that stalls its syncs holds back only the publishes waiting on them.

#![allow(clippy::unwrap_used)] // in tests a failed unwrap is a failed test

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use quiver_client::{Client, Durability, ErrorCode, Retention, SubscribeOptions, TopicConfig};
use quiver_tests::disk::Disk;
use quiver_tests::{Broker, DataDir};

/// Every record of a topic, as offset -> payload.
async fn read_all(client: &Client, topic: &str) -> BTreeMap<u64, Vec<u8>> {
    quiver_tests::read_all(client, topic)
        .await
        .into_iter()
        .map(|r| (r.offset, r.payload.to_vec()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_topics_settings_records_and_offsets() {
    let data = DataDir::new();
    let retention = Retention {
        max_age_ms: Some(3_600_000),
        max_bytes: None,
        max_records: Some(500),
    };
    let before = {
        let broker = Broker::start(&data);
        let client = broker.client().await;
        client.create_topic("kept.a", retention).await.unwrap();
        client
            .create_topic("kept.b", Retention::default())
            .await
            .unwrap();
        for i in 0..20 {
            client.publish("kept.a", format!("a{i}")).await.unwrap();
        }
        client.publish("kept.b", "b0").await.unwrap();
        let topics = client.list_topics().await.unwrap();
        client.close().await;
        assert!(broker.stop().success(), "a clean stop exits 0");
        topics
    };
    let broker = Broker::start(&data);
    let client = broker.client().await;
    let after = client.list_topics().await.unwrap();
    assert_eq!(
        after, before,
        "names, retention, counts, offsets and sizes all survive"
    );
    assert_eq!(after[0].retention, retention);
    let records = read_all(&client, "kept.a").await;
    assert_eq!(records.len(), 20);
    assert_eq!(records[&19], b"a19");
    assert_eq!(
        client.publish("kept.a", "a20").await.unwrap(),
        20,
        "offsets continue"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_right_after_acks_keeps_every_acked_record() {
    let data = DataDir::new();
    let broker = Broker::start(&data);
    // A short idle timeout and no reconnection: after the kill, in-flight publishes
    // fail within seconds.
    let client = Client::builder()
        .ca_file(broker.cert())
        .unwrap()
        .idle_timeout(Duration::from_secs(2))
        .reconnect(quiver_client::Reconnect::Never)
        .connect(broker.addr())
        .await
        .unwrap();
    client
        .create_topic("crash", Retention::default())
        .await
        .unwrap();
    // Keep publishing from several tasks; kill the broker the moment 2,000 acks are in,
    // with hundreds more in flight.
    let (acks, mut acked) = tokio::sync::mpsc::unbounded_channel();
    let producers: Vec<_> = (0..4)
        .map(|p| {
            let (client, acks) = (client.clone(), acks.clone());
            tokio::spawn(async move {
                let mut inflight = FuturesUnordered::new();
                for i in 0..100_000u32 {
                    let client = client.clone();
                    let payload = format!("{p}-{i}");
                    inflight.push(async move {
                        (client.publish("crash", payload.clone()).await, payload)
                    });
                    while inflight.len() >= 128 {
                        match inflight.next().await {
                            Some((Ok(offset), payload)) => {
                                if acks.send((offset, payload)).is_err() {
                                    return;
                                }
                            }
                            _ => return, // the broker is gone
                        }
                    }
                }
            })
        })
        .collect();
    drop(acks);
    let mut confirmed = BTreeMap::new();
    while confirmed.len() < 2000 {
        let (offset, payload) = acked.recv().await.expect("acks arrive");
        confirmed.insert(offset, payload);
    }
    broker.kill9();
    // Acks that raced the kill are acknowledged too: collect them all.
    while let Some((offset, payload)) = acked.recv().await {
        confirmed.insert(offset, payload);
    }
    for producer in producers {
        producer.await.unwrap();
    }

    let broker = Broker::start(&data);
    let client = broker.client().await;
    let info = client.describe_topic("crash").await.unwrap();
    let stored = read_all(&client, "crash").await;
    assert_eq!(
        stored.len() as u64,
        info.next_offset,
        "offsets are dense after recovery"
    );
    for (offset, payload) in &confirmed {
        assert_eq!(
            stored.get(offset).map(Vec::as_slice),
            Some(payload.as_bytes()),
            "acked record at offset {offset} survived"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_answers_in_flight_publishes_then_exits() {
    let data = DataDir::new();
    let broker = Broker::start(&data);
    // What the broker answers before it goes, not what a reconnecting client retries.
    let client = broker.client_without_reconnection().await;
    client
        .create_topic("drain", Retention::default())
        .await
        .unwrap();
    let mut inflight = FuturesUnordered::new();
    for i in 0..2000u32 {
        let client = client.clone();
        inflight.push(async move { (client.publish("drain", format!("{i}")).await, i) });
    }
    // Let a few complete so the broker is mid-stream, then ask it to stop.
    let mut acked = BTreeMap::new();
    while acked.len() < 50 {
        let (result, i) = inflight.next().await.unwrap();
        acked.insert(result.unwrap(), i);
    }
    broker.terminate();
    while let Some((result, i)) = inflight.next().await {
        match result {
            Ok(offset) => {
                acked.insert(offset, i);
            }
            Err(e) => assert!(
                e.code() == Some(ErrorCode::ShuttingDown)
                    || matches!(e, quiver_client::Error::ConnectionLost(_)),
                "unacked publishes fail cleanly: {e}"
            ),
        }
    }
    assert!(broker.wait().success(), "graceful shutdown exits 0");

    let broker = Broker::start(&data);
    let client = broker.client().await;
    let stored = read_all(&client, "drain").await;
    for (offset, i) in acked {
        assert_eq!(stored[&offset], i.to_string().as_bytes());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_are_told_when_the_broker_shuts_down() {
    let data = DataDir::new();
    let broker = Broker::start(&data);
    // A client that reconnects would resume the subscription instead (reconnect.rs).
    let client = broker.client_without_reconnection().await;
    client
        .create_topic("t", Retention::default())
        .await
        .unwrap();
    let mut sub = client
        .subscribe("t", SubscribeOptions::default())
        .await
        .unwrap();
    broker.terminate();
    let end = tokio::time::timeout(Duration::from_secs(30), sub.next())
        .await
        .expect("the subscription ends promptly");
    let error = end.expect("an error, not a silent end").unwrap_err();
    // The stream's `ShuttingDown`, or the connection's close if it came first.
    assert!(
        error.code() == Some(ErrorCode::ShuttingDown)
            || error.to_string().contains("the broker is shutting down"),
        "{error}"
    );
    assert!(broker.wait().success());
}

/// Batched durability: acknowledged before the flush, on disk after a clean stop, and
/// on disk once any fsync topic commits after it (one flush covers everything before
/// it), even when the broker is then killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_topics_are_flushed_by_stops_and_by_later_fsyncs() {
    let data = DataDir::new();
    let broker = Broker::start(&data);
    let client = broker.client().await;
    // An interval longer than the test: only the stop and the fsync flush it.
    let batched = TopicConfig {
        durability: Durability::Batched {
            interval_ms: Durability::MAX_INTERVAL_MS,
        },
        ..TopicConfig::default()
    };
    let info = client.create_topic("fast", batched.clone()).await.unwrap();
    assert_eq!(info.durability, batched.durability);
    client
        .create_topic("safe", Retention::default())
        .await
        .unwrap();
    for i in 0..100u32 {
        client.publish("fast", format!("a{i}")).await.unwrap();
    }
    broker.terminate();
    assert!(broker.wait().success());

    let broker = Broker::start(&data);
    let client = broker.client().await;
    let info = client.describe_topic("fast").await.unwrap();
    assert_eq!(info.durability, batched.durability, "kept across restarts");
    for i in 0..100u32 {
        client.publish("fast", format!("b{i}")).await.unwrap();
    }
    client.publish("safe", "flush").await.unwrap();
    broker.kill9();

    let broker = Broker::start(&data);
    let client = broker.client().await;
    let stored = read_all(&client, "fast").await;
    assert_eq!(stored.len(), 200);
    assert_eq!(stored[&0], b"a0");
    assert_eq!(stored[&199], b"b99");

    let zero = TopicConfig {
        durability: Durability::Batched { interval_ms: 0 },
        ..TopicConfig::default()
    };
    let refused = client.create_topic("never", zero).await.unwrap_err();
    assert_eq!(
        refused.code(),
        Some(ErrorCode::InvalidArgument),
        "{refused}"
    );
    assert!(refused.to_string().contains("flush interval"), "{refused}");
}

/// A disk that stalls holds back what waits on it, publishes, and nothing else: while a
/// sync is held, another client connects, lists and reads what is durable, and the
/// stalled publish is neither acknowledged nor readable; once the disk answers it
/// completes at its offset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_disk_holds_back_publishes_and_nothing_else() {
    let data = DataDir::new();
    let disk = Arc::new(Disk::mount_data_dir(&data));
    let broker = Broker::start(&data);
    let client = broker.client().await;
    client
        .create_topic("slow", Retention::default())
        .await
        .unwrap();
    for i in 0..10 {
        client.publish("slow", format!("r{i}")).await.unwrap();
    }

    disk.hold_syncs();
    let stalled = tokio::spawn(client.publish("slow", "stalled"));
    let waiting = Arc::clone(&disk);
    let held = tokio::task::spawn_blocking(move || {
        waiting.wait_for_held_syncs(1, Duration::from_secs(30))
    })
    .await
    .unwrap();
    assert!(held >= 1, "the publish's commit waits on the disk");

    let limit = Duration::from_secs(30);
    let other = tokio::time::timeout(limit, broker.client())
        .await
        .expect("a new client connects while the disk stalls");
    let topics = tokio::time::timeout(limit, other.list_topics())
        .await
        .expect("listing does not wait on the disk")
        .unwrap();
    assert_eq!(topics.len(), 1);
    assert_eq!(topics[0].records, 10, "the stalled record is not counted");
    let durable = tokio::time::timeout(limit, read_all(&other, "slow"))
        .await
        .expect("reading what is durable does not wait on the disk");
    let expected: Vec<Vec<u8>> = (0..10).map(|i| format!("r{i}").into_bytes()).collect();
    assert_eq!(durable.into_values().collect::<Vec<_>>(), expected);
    assert!(!stalled.is_finished(), "not acknowledged before its sync");

    assert!(disk.release_syncs() >= 1);
    assert_eq!(stalled.await.unwrap().unwrap(), 10, "done at its offset");
    assert_eq!(read_all(&other, "slow").await.len(), 11);
}
