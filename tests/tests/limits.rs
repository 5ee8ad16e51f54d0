//! Resource limits through the real broker: each refused with a typed error naming
//! its setting once reached, freed when released, and never at the cost of other
//! clients. (Record and batch sizes are in bad_input.rs; a stalled subscriber's
//! memory in flow_control.rs.)

#![allow(clippy::unwrap_used)] // in tests a failed unwrap is a failed test

use std::time::Duration;

use quiver_client::{
    Client, Error, ErrorCode, NewRecord, PublishId, Retention, StartAt, SubscribeOptions,
};
use quiver_protocol::{ClientFrame, Op, Request, ServerFrame};
use quiver_tests::raw::RawConnection;
use quiver_tests::{Broker, DataDir, eventually, example_plugin, read_plugin, take};

fn limit_reached<T: std::fmt::Debug>(result: Result<T, Error>, setting: &str) {
    let error = result.unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::LimitReached), "{error}");
    assert!(error.to_string().contains(setting), "{error}");
}

/// A client of `broker` still gets its work done.
async fn still_serving(broker: &Broker, topic: &str) {
    let client = broker.client().await;
    client
        .publish(topic, NewRecord::new("still here"))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_limit_are_closed_with_the_reason() {
    let data = DataDir::new();
    let broker = Broker::start_with(&data, &[("QUIVER_LIMITS__MAX_CONNECTIONS", "2")]);
    let first = broker.client().await;
    first.create_topic("t", Retention::default()).await.unwrap();
    let second = broker.client().await;

    let refused = Client::builder()
        .ca_file(broker.cert())
        .unwrap()
        .connect(broker.addr())
        .await
        .unwrap_err();
    assert!(
        refused.to_string().contains("limits.max_connections"),
        "{refused}"
    );
    // The two admitted connections are untouched.
    first.publish("t", NewRecord::new("1")).await.unwrap();
    second.publish("t", NewRecord::new("2")).await.unwrap();

    // A connection that leaves frees its slot.
    drop(second);
    eventually(
        Duration::from_secs(20),
        "a freed connection slot",
        || async {
            Client::builder()
                .ca_file(broker.cert())
                .unwrap()
                .connect(broker.addr())
                .await
                .is_ok()
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_per_connection_are_limited_and_freed_when_they_end() {
    let data = DataDir::new();
    let broker = Broker::start_with(
        &data,
        &[("QUIVER_LIMITS__MAX_SUBSCRIPTIONS_PER_CONNECTION", "2")],
    );
    let client = broker.client().await;
    client
        .create_topic("t", Retention::default())
        .await
        .unwrap();
    let options = || SubscribeOptions::from(StartAt::Earliest);
    let first = client.subscribe("t", options()).await.unwrap();
    let _second = client.subscribe("t", options()).await.unwrap();
    limit_reached(
        client.subscribe("t", options()).await,
        "limits.max_subscriptions_per_connection",
    );
    client
        .create_group("g", quiver_client::GroupSettings::new("t"))
        .await
        .unwrap();
    limit_reached(
        client.join("g", None).await,
        "limits.max_subscriptions_per_connection",
    );

    // Another connection has its own share.
    let other = broker.client().await;
    let mut theirs = other.subscribe("t", options()).await.unwrap();
    client.publish("t", NewRecord::new("x")).await.unwrap();
    assert_eq!(take(&mut theirs, 1).await[0].payload, "x");

    drop(first);
    eventually(
        Duration::from_secs(20),
        "a freed subscription slot",
        || async { client.subscribe("t", options()).await.is_ok() },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_past_the_limit_are_not_granted_by_quic() {
    let data = DataDir::new();
    let broker = Broker::start_with(&data, &[("QUIVER_LIMITS__MAX_STREAMS_PER_CONNECTION", "3")]);
    let raw = RawConnection::connect(broker.addr(), broker.cert()).await;
    let (_control, _) = raw.handshake().await;
    let held: Vec<_> = (0..2)
        .map(|_| raw.try_open().expect("within the limit"))
        .collect();
    assert!(raw.try_open().is_none(), "a fourth stream was granted");
    drop(held);
    still_serving_anywhere(&broker).await;
}

async fn still_serving_anywhere(broker: &Broker) {
    let client = broker.client().await;
    client
        .create_topic("elsewhere", Retention::default())
        .await
        .unwrap();
    still_serving(broker, "elsewhere").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_past_the_limit_are_refused() {
    let data = DataDir::new();
    let broker = Broker::start_with(&data, &[("QUIVER_LIMITS__MAX_TOPICS", "3")]);
    let client = broker.client().await;
    for topic in ["a", "b", "c"] {
        client
            .create_topic(topic, Retention::default())
            .await
            .unwrap();
    }
    limit_reached(
        client.create_topic("d", Retention::default()).await,
        "limits.max_topics",
    );
    client.delete_topic("c").await.unwrap();
    // Creations racing for the last place: exactly one gets it.
    let racing = (0..8).map(|i| {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .create_topic(&format!("race.{i}"), Retention::default())
                .await
        })
    });
    let mut created = 0;
    for outcome in futures::future::join_all(racing).await {
        match outcome.unwrap() {
            Ok(_) => created += 1,
            Err(e) => assert_eq!(e.code(), Some(ErrorCode::LimitReached), "{e}"),
        }
    }
    assert_eq!(created, 1, "one topic fits under the limit");
    let topics = client.list_topics().await.unwrap();
    let winner = topics.iter().find(|t| t.name.starts_with("race.")).unwrap();
    client.delete_topic(&winner.name).await.unwrap();
    client
        .create_topic("d", Retention::default())
        .await
        .unwrap();
    still_serving(&broker, "d").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_past_the_limit_are_refused() {
    let data = DataDir::new();
    let broker = Broker::start_with(&data, &[("QUIVER_LIMITS__MAX_PLUGINS", "1")]);
    let client = broker.client().await;
    let wasm = |name| read_plugin(&example_plugin(name));
    client
        .deploy_plugin("json-filter", wasm("json-filter"), None)
        .await
        .unwrap();
    limit_reached(
        client
            .deploy_plugin("redactor", wasm("redactor"), None)
            .await,
        "limits.max_plugins",
    );
    client.remove_plugin("json-filter").await.unwrap();
    client
        .deploy_plugin("redactor", wasm("redactor"), None)
        .await
        .unwrap();
}

/// A client that sends thousands of pipelined publishes without reading a reply is
/// worked through `limits.max_inflight_publishes` at a time while another client
/// publishes as usual; every publish is answered exactly once in the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_connection_does_not_hold_up_others() {
    const FLOOD: u64 = 2_000;
    let data = DataDir::new();
    let broker = Broker::start_with(&data, &[("QUIVER_LIMITS__MAX_INFLIGHT_PUBLISHES", "4")]);
    let client = broker.client().await;
    client
        .create_topic("flood", Retention::default())
        .await
        .unwrap();
    client
        .create_topic("calm", Retention::default())
        .await
        .unwrap();

    let raw = RawConnection::connect(broker.addr(), broker.cert()).await;
    let (mut control, _) = raw.handshake().await;
    for id in 0..FLOOD {
        control
            .send(&ClientFrame::Request(Request {
                id,
                op: Op::Publish {
                    topic: "flood".into(),
                    records: vec![NewRecord::new(vec![0u8; 512])],
                    id: Some(PublishId {
                        producer: 7,
                        sequence: id,
                    }),
                },
            }))
            .await;
    }
    // Meanwhile another client is served as usual.
    for i in 0..50 {
        client
            .publish("calm", NewRecord::new(format!("{i}")))
            .await
            .unwrap();
    }
    // The flooder reads its replies at last: every publish is answered, once.
    let mut answered = std::collections::BTreeSet::new();
    while answered.len() < FLOOD as usize {
        match control.recv().await {
            Some(ServerFrame::Reply(reply)) => {
                reply.result.unwrap();
                assert!(answered.insert(reply.id), "reply {} twice", reply.id);
            }
            other => panic!("expected replies, got {other:?}"),
        }
    }
    assert_eq!(client.describe_topic("flood").await.unwrap().records, FLOOD);
}
