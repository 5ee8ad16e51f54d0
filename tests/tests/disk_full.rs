//! A full disk, stood in for by the broker's file-size limit (`RLIMIT_FSIZE`, so no
//! root is needed): publishers get a typed `Storage` error and never a receipt for
//! what is not on disk, subscribers keep being served, and once there is room again
//! the broker reopens its storage by itself, with everything acknowledged intact.
//! Meanwhile its HTTP listener says it is alive but not ready.

#![allow(clippy::unwrap_used)] // in tests a failed unwrap is a failed test

use std::time::Duration;

use futures::StreamExt;
use quiver_client::{ErrorCode, Retention, StartAt, SubscribeOptions, Subscription};
use quiver_tests::http::{As, Fetched, get, metrics};
use quiver_tests::{Broker, DataDir, eventually, read_all};

const TOPIC: &str = "filling";
/// The broker may grow no file past this: sled's log reaches it after a few MiB of
/// records.
const LIMIT: u64 = 6 << 20;

/// The payload of publish `i`: distinct, 16 KiB.
fn payload(i: usize) -> Vec<u8> {
    let mut p = format!("publish {i:06} ").into_bytes();
    p.resize(16 << 10, b'a' + (i % 26) as u8);
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_publishes_with_a_storage_error_and_loses_nothing_acked() {
    let data = DataDir::new();
    let broker = Broker::launch_with_file_size_limit(&data, &[], &[], LIMIT);
    let client = broker.client().await;
    client
        .create_topic(TOPIC, Retention::default())
        .await
        .unwrap();
    let mut early = client
        .subscribe(TOPIC, SubscribeOptions::from(StartAt::Earliest))
        .await
        .unwrap();
    assert_eq!(readyz(&broker).status, 200);

    // Publish until the disk is full.
    let mut acked = Vec::new();
    let failure = loop {
        let attempt = payload(acked.len());
        match client.publish(TOPIC, attempt.clone()).await {
            Ok(offset) => {
                assert_eq!(offset, acked.len() as u64, "offsets dense");
                acked.push(attempt);
            }
            Err(e) => break (e, attempt),
        }
        assert!(
            (acked.len() as u64) < 4 * LIMIT / (16 << 10),
            "the file-size limit was never hit"
        );
    };
    let (error, failed) = failure;
    assert_eq!(error.code(), Some(ErrorCode::Storage), "{error}");
    assert!(
        !acked.is_empty(),
        "records were acknowledged before the limit"
    );

    // Later writes fail at once with the same typed error, saying what happens next,
    // as long as there is no room (sled keeps its first error).
    let again = client.publish(TOPIC, "one more").await.unwrap_err();
    assert_eq!(again.code(), Some(ErrorCode::Storage), "{again}");
    assert!(
        again.to_string().contains("reopens it by itself"),
        "{again}"
    );
    let create = client
        .create_topic("another", Retention::default())
        .await
        .unwrap_err();
    assert_eq!(create.code(), Some(ErrorCode::Storage), "{create}");
    // Health checks tell an orchestrator: alive, but not ready.
    assert_eq!(get(&broker, "/healthz", As::default(), false).status, 200);
    let unready = readyz(&broker);
    assert_eq!(unready.status, 503, "{}", unready.body);
    assert!(unready.body.contains("storage halted"), "{}", unready.body);
    let page = metrics(&broker, As::default());
    assert_eq!(page.value("quiver_storage_halted", &[]), Some(1.0));

    // The broker keeps serving: control requests are answered, new connections are
    // accepted, and nothing unacknowledged is visible. Subscribers get acknowledged
    // records byte for byte; one reading where the failed write left sled's tree (a
    // node to split, which sled does while reading) gets a typed Storage error, not
    // wrong or unacknowledged records.
    let info = client.describe_topic(TOPIC).await.unwrap();
    assert_eq!(
        info.records,
        acked.len() as u64,
        "nothing unacknowledged is visible"
    );
    read_acked(&mut early, &acked).await;
    let other = broker.client().await;
    let mut late = other
        .subscribe(TOPIC, SubscribeOptions::from(StartAt::Earliest))
        .await
        .unwrap();
    read_acked(&mut late, &acked).await;

    // Room again: the broker (the same process) reopens its storage by itself and
    // takes publishes again; everything acknowledged is there, intact, and at most the
    // one publish that failed may have reached the disk (a failed publish is not known
    // to be lost).
    broker.set_file_size_limit(None);
    let reopened = || async {
        let client = broker.try_client().await.ok()?;
        let created = client
            .create_topic("after.recovery", Retention::default())
            .await;
        let writable =
            created.is_ok() || created.is_err_and(|e| e.code() == Some(ErrorCode::TopicExists));
        writable.then_some(client)
    };
    eventually(Duration::from_secs(60), "storage reopened", || async {
        reopened().await.is_some()
    })
    .await;
    let client = reopened().await.unwrap();
    let stored = read_all(&client, TOPIC).await;
    assert!(
        stored.len() >= acked.len(),
        "every acknowledged record survives"
    );
    assert!(
        stored.len() <= acked.len() + 1,
        "only publishes that were tried"
    );
    for (i, record) in stored.iter().enumerate() {
        let expected = if i < acked.len() { &acked[i] } else { &failed };
        assert!(record.payload[..] == expected[..], "record {i} intact");
    }
    let next = client.publish(TOPIC, "after the recovery").await.unwrap();
    assert_eq!(next, stored.len() as u64);
    // Ready again, on the same HTTP address.
    assert_eq!(readyz(&broker).status, 200);

    // And it survives a crash right after, like any broker.
    broker.kill9();
    let broker = Broker::start(&data);
    let client = broker.client().await;
    assert_eq!(read_all(&client, TOPIC).await.len(), stored.len() + 1);
}

fn readyz(broker: &Broker) -> Fetched {
    get(broker, "/readyz", As::default(), false)
}

/// Reads `acked.len()` records, each as acknowledged, unless the subscription ends
/// with a `Storage` error first; returns how many it read.
async fn read_acked(sub: &mut Subscription, acked: &[Vec<u8>]) -> usize {
    for (i, expected) in acked.iter().enumerate() {
        let next = tokio::time::timeout(Duration::from_secs(30), sub.next())
            .await
            .unwrap_or_else(|_| panic!("stalled after {i} records"));
        match next.expect("the subscription ends with an error, if at all") {
            Ok(record) => {
                assert_eq!(record.offset, i as u64);
                assert!(record.payload[..] == expected[..], "record {i} intact");
            }
            Err(e) => {
                assert_eq!(e.code(), Some(ErrorCode::Storage), "{e}");
                return i;
            }
        }
    }
    acked.len()
}
