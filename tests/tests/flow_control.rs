//! Credit-based flow control: a subscriber that stops reading holds only its window,
//! the broker's memory for it stays bounded, and other subscribers are not slowed.

#![allow(clippy::unwrap_used)] // in tests a failed unwrap is a failed test

use std::time::Duration;

use futures::StreamExt;
use quiver_client::{NewRecord, Retention, StartAt, SubscribeOptions};
use quiver_tests::{Broker, DataDir};

const RECORD: usize = 64 * 1024;
const BATCH: usize = 16; // 1 MiB per publish
const PUBLISHES: usize = 160; // 160 MiB in all

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_subscriber_does_not_grow_broker_memory() {
    let data = DataDir::new();
    let broker = Broker::start_with(&data, &[("QUIVER_STORAGE__CACHE_CAPACITY", "16 MiB")]);
    let client = broker.client().await;
    client
        .create_topic("firehose", Retention::default())
        .await
        .unwrap();
    let options = SubscribeOptions {
        from: StartAt::Earliest,
        window: 8,
        ..SubscribeOptions::default()
    };
    // Subscribed, then never read until the end.
    let mut stalled = client.subscribe("firehose", options.clone()).await.unwrap();
    // A second subscriber on its own connection reads everything as it comes.
    let reader_client = broker.client().await;
    let mut live = reader_client
        .subscribe("firehose", options.clone())
        .await
        .unwrap();
    let reader = tokio::spawn(async move {
        let mut next = 0u64;
        while next < (BATCH * PUBLISHES) as u64 {
            let record = tokio::time::timeout(Duration::from_secs(60), live.next())
                .await
                .expect("the live subscriber is not held back")
                .unwrap()
                .unwrap();
            assert_eq!(record.offset, next);
            next += 1;
        }
    });

    let baseline = broker.rss_kib();
    let mut peak = baseline;
    for i in 0..PUBLISHES {
        let batch = (0..BATCH)
            .map(|j| NewRecord::new(vec![(i + j) as u8; RECORD]))
            .collect();
        client.publish_batch("firehose", batch).await.unwrap();
        peak = peak.max(broker.rss_kib());
    }
    reader.await.unwrap();
    let published_kib = (RECORD * BATCH * PUBLISHES / 1024) as u64;
    let growth = peak.saturating_sub(baseline);
    eprintln!(
        "broker RSS {baseline} KiB -> peak {peak} KiB while {published_kib} KiB went past a stalled subscriber"
    );
    // Buffering for the stalled subscriber would take the whole 160 MiB; sled's cache,
    // write buffers and the reader's in-flight window take a few tens of MiB.
    assert!(
        growth < published_kib / 2,
        "broker memory grew by {growth} KiB for {published_kib} KiB published"
    );

    // The stalled subscriber resumes exactly where it was.
    for expected in 0..40u64 {
        let record = stalled.next().await.unwrap().unwrap();
        assert_eq!(record.offset, expected);
        assert_eq!(record.payload.len(), RECORD);
    }
}
