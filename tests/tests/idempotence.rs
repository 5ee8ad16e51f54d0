//! Idempotent publish: a retried publish (same producer id and sequence) is answered
//! with the first one's receipt and stored once, also across restarts and crashes.

#![allow(clippy::unwrap_used)] // in tests a failed unwrap is a failed test

use quiver_client::{Client, ErrorCode, NewRecord, PublishId, Retention};
use quiver_protocol::{ClientFrame, Op, Request, ServerFrame, TopicConfig};
use quiver_tests::raw::RawConnection;
use quiver_tests::{Broker, DataDir, Env};

/// A broker started with `env`, a client, and the topic `orders`.
async fn with_orders(env: Env<'_>) -> (DataDir, Broker, Client) {
    let data = DataDir::new();
    let broker = Broker::start_with(&data, env);
    let client = broker.client().await;
    client
        .create_topic("orders", Retention::default())
        .await
        .unwrap();
    (data, broker, client)
}

async fn records(client: &Client, topic: &str) -> u64 {
    client.describe_topic(topic).await.unwrap().records
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_publish_is_stored_once() {
    let (_data, broker, client) = with_orders(&[]).await;
    client.publish("orders", "before").await.unwrap();

    let id = client.next_publish_id();
    let batch = vec![NewRecord::new("a"), NewRecord::new("b")];
    let first = client
        .publish_batch_with_id("orders", batch.clone(), id)
        .await
        .unwrap();
    assert_eq!((first.base_offset, first.count), (1, 2));
    // The same publish again, as a retry after a lost reply would send it, from this
    // connection and from another (a producer that reconnected).
    let again = client
        .publish_batch_with_id("orders", batch.clone(), id)
        .await
        .unwrap();
    assert_eq!(again, first, "the retry gets the original receipt");
    let other = broker.client().await;
    let from_elsewhere = other
        .publish_batch_with_id("orders", batch, id)
        .await
        .unwrap();
    assert_eq!(from_elsewhere, first);
    assert_eq!(
        records(&client, "orders").await,
        3,
        "nothing appended twice"
    );

    // Ids are per producer: another producer's same sequence number is a new publish.
    let stranger = PublishId {
        producer: id.producer.wrapping_add(1),
        sequence: id.sequence,
    };
    let new = client
        .publish_batch_with_id("orders", vec![NewRecord::new("c")], stranger)
        .await
        .unwrap();
    assert_eq!(new.base_offset, 3);
    // And plain publishes, each with a fresh id, are never mistaken for retries.
    assert_eq!(client.publish("orders", "d").await.unwrap(), 4);
    assert_eq!(client.publish("orders", "d").await.unwrap(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_retried_across_a_restart_or_a_crash_is_stored_once() {
    let (data, broker, client) = with_orders(&[]).await;
    let before_stop = client.next_publish_id();
    let stopped = client
        .publish_batch_with_id("orders", vec![NewRecord::new("x")], before_stop)
        .await
        .unwrap();
    let before_kill = client.next_publish_id();
    client.close().await;
    assert!(broker.stop().success());

    let broker = Broker::start(&data);
    let client = broker.client().await;
    let retried = client
        .publish_batch_with_id("orders", vec![NewRecord::new("x")], before_stop)
        .await
        .unwrap();
    assert_eq!(retried, stopped, "recognised after a clean restart");
    // Acknowledged, then the broker is killed before anything else happens.
    let killed = client
        .publish_batch_with_id("orders", vec![NewRecord::new("y")], before_kill)
        .await
        .unwrap();
    broker.kill9();

    let broker = Broker::start(&data);
    let client = broker.client().await;
    let retried = client
        .publish_batch_with_id("orders", vec![NewRecord::new("y")], before_kill)
        .await
        .unwrap();
    assert_eq!(retried, killed, "recognised after kill -9");
    assert_eq!(records(&client, "orders").await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_the_dedup_window_is_a_new_publish() {
    // A window of zero: nothing is remembered.
    let (_data, _broker, client) = with_orders(&[("QUIVER_DEDUP__WINDOW", "0s")]).await;
    let id = client.next_publish_id();
    let batch = vec![NewRecord::new("x")];
    let first = client
        .publish_batch_with_id("orders", batch.clone(), id)
        .await
        .unwrap();
    let second = client
        .publish_batch_with_id("orders", batch, id)
        .await
        .unwrap();
    assert_eq!((first.base_offset, second.base_offset), (0, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_sent_while_the_first_attempt_is_in_flight_gets_its_receipt() {
    let (_data, _broker, client) = with_orders(&[]).await;
    // The same id twice on one connection, the second sent before the first is
    // answered (an application retrying after its own timeout): both get the first
    // receipt, and neither waits forever on the other.
    let id = client.next_publish_id();
    let batch = vec![NewRecord::new("a"), NewRecord::new("b")];
    let first = client.publish_batch_with_id("orders", batch.clone(), id);
    let again = client.publish_batch_with_id("orders", batch, id);
    let both = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        tokio::join!(first, again)
    })
    .await
    .expect("the connection answers both");
    let (first, again) = (both.0.unwrap(), both.1.unwrap());
    assert_eq!(first, again);
    assert_eq!(first.offsets(), 0..2);
    assert_eq!(records(&client, "orders").await, 2);
}

/// Requests in flight when their client goes away still run to their end: a publish
/// stored is remembered (a producer that reconnects and retries it gets its receipt,
/// and nothing is stored twice), and a topic created is in the broker's registry as
/// well as in storage. The connection's requests were once dropped as soon as a reply
/// could not be written, while storage went on to commit them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_cut_off_by_a_lost_connection_still_complete() {
    const PUBLISHES: u64 = 2_000;
    const CREATIONS: u64 = 64;
    let (_data, broker, client) = with_orders(&[]).await;
    let producer = client.next_publish_id().producer.wrapping_add(1);
    let id = |sequence| PublishId { producer, sequence };
    let record = |sequence: u64| NewRecord::new(format!("order {sequence}"));
    let name = |n: u64| format!("cut.t{n}");

    let raw = RawConnection::connect(broker.addr(), broker.cert()).await;
    let (mut control, _) = raw.handshake().await;
    for sequence in 0..PUBLISHES {
        let op = Op::Publish {
            topic: "orders".into(),
            records: vec![record(sequence)],
            id: Some(id(sequence)),
        };
        control
            .send(&ClientFrame::Request(Request { id: sequence, op }))
            .await;
        // Creations among the last publishes, so that some are in flight at the cut.
        if sequence >= PUBLISHES - CREATIONS {
            let n = sequence - (PUBLISHES - CREATIONS);
            let op = Op::CreateTopic {
                name: name(n),
                config: TopicConfig::default(),
            };
            let request = Request {
                id: PUBLISHES + n,
                op,
            };
            control.send(&ClientFrame::Request(request)).await;
        }
    }
    // The broker is answering: the rest are being stored. Then the client is gone.
    assert!(matches!(control.recv().await, Some(ServerFrame::Reply(_))));
    raw.close();

    // The producer reconnects and sends every publish again: each gets one offset of
    // its own, whichever attempt stored it.
    let mut offsets = Vec::new();
    for sequence in 0..PUBLISHES {
        let receipt = client
            .publish_batch_with_id("orders", vec![record(sequence)], id(sequence))
            .await
            .unwrap();
        assert_eq!(receipt.count, 1);
        offsets.push(receipt.base_offset);
    }
    offsets.sort_unstable();
    assert_eq!(
        offsets,
        (0..PUBLISHES).collect::<Vec<_>>(),
        "one offset each"
    );
    assert_eq!(
        records(&client, "orders").await,
        PUBLISHES,
        "each publish stored once"
    );

    // Each topic is either created (then the broker knows it) or was never sent.
    for n in 0..CREATIONS {
        match client.create_topic(&name(n), Retention::default()).await {
            Ok(_) => {}
            Err(e) => assert_eq!(e.code(), Some(ErrorCode::TopicExists), "{e}"),
        }
        client
            .describe_topic(&name(n))
            .await
            .unwrap_or_else(|e| panic!("{} is stored but not served: {e}", name(n)));
    }
}
