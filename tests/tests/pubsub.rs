//! Publishing and subscribing through the real broker: round trips, pipelining,
//! patterns, catch-up into live tail, start positions.

#![allow(clippy::unwrap_used)] // in tests a failed unwrap is a failed test

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use quiver_client::{Client, NewRecord, Record, Retention, StartAt, SubscribeOptions};
use quiver_tests::{Broker, DataDir, take};

async fn create(client: &Client, name: &str) {
    client
        .create_topic(name, Retention::default())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_and_subscribe_round_trip() {
    let data = DataDir::new();
    let broker = Broker::start(&data);
    let client = broker.client().await;
    create(&client, "orders.created").await;
    let mut sub = client
        .subscribe("orders.created", SubscribeOptions::from(StartAt::Earliest))
        .await
        .unwrap();
    let record = NewRecord::new("first order")
        .with_key("customer-7")
        .with_header("content-type", "text/plain");
    assert_eq!(client.publish("orders.created", record).await.unwrap(), 0);
    let range = client
        .publish_batch(
            "orders.created",
            vec![NewRecord::new("second"), NewRecord::new(vec![0u8, 255])],
        )
        .await
        .unwrap();
    assert_eq!(range.offsets(), 1..3);

    let got = take(&mut sub, 3).await;
    assert_eq!(&*got[0].topic, "orders.created");
    assert_eq!(got[0].offset, 0);
    assert_eq!(got[0].payload, "first order");
    assert_eq!(got[0].key.as_deref(), Some(&b"customer-7"[..]));
    assert_eq!(
        got[0].header("content-type").map(|v| &v[..]),
        Some(&b"text/plain"[..])
    );
    assert_eq!((got[1].offset, &got[1].payload[..]), (1, &b"second"[..]));
    assert_eq!((got[2].offset, &got[2].payload[..]), (2, &[0u8, 255][..]));
    assert!(got[0].timestamp > 0 && got[0].timestamp <= got[2].timestamp);

    let info = client.describe_topic("orders.created").await.unwrap();
    assert_eq!(
        (info.records, info.first_offset, info.last_offset()),
        (3, 0, Some(2))
    );
    assert!(info.bytes > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_pipelined_publishes_from_several_tasks() {
    let data = DataDir::new();
    let broker = Broker::start(&data);
    let client = broker.client().await;
    create(&client, "load").await;
    const TASKS: usize = 8;
    const PER_TASK: usize = 1250;
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let client = client.clone();
            tokio::spawn(async move {
                // Every publish of this task in flight at once on the shared connection.
                let mut inflight: FuturesUnordered<_> = (0..PER_TASK)
                    .map(|i| {
                        let client = client.clone();
                        async move {
                            let payload = format!("{t}-{i}");
                            let offset = client.publish("load", payload.clone()).await.unwrap();
                            (offset, payload)
                        }
                    })
                    .collect();
                let mut acked = Vec::new();
                while let Some(ack) = inflight.next().await {
                    acked.push(ack);
                }
                acked
            })
        })
        .collect();
    let mut by_offset = BTreeMap::new();
    for task in tasks {
        for (offset, payload) in task.await.unwrap() {
            assert!(
                by_offset.insert(offset, payload).is_none(),
                "offset {offset} acked twice"
            );
        }
    }
    assert_eq!(by_offset.len(), TASKS * PER_TASK);
    assert_eq!(
        by_offset.keys().copied().collect::<Vec<_>>(),
        (0..(TASKS * PER_TASK) as u64).collect::<Vec<_>>(),
        "offsets are dense"
    );
    // What was acked at each offset is what is stored there.
    let mut sub = client
        .subscribe("load", SubscribeOptions::from(StartAt::Earliest))
        .await
        .unwrap();
    for record in take(&mut sub, TASKS * PER_TASK).await {
        assert_eq!(record.payload, by_offset[&record.offset].as_bytes());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcard_subscriptions_pick_up_topics_created_later() {
    let data = DataDir::new();
    let broker = Broker::start(&data);
    let client = broker.client().await;
    create(&client, "sensors.eu.temp").await;
    let everything = SubscribeOptions::from(StartAt::Earliest);
    let mut rest = client
        .subscribe("sensors.>", everything.clone())
        .await
        .unwrap();
    let mut temps = client
        .subscribe("sensors.*.temp", everything)
        .await
        .unwrap();
    // Created after both subscriptions started.
    for topic in ["sensors.us.temp", "sensors.eu.humidity", "factory.line1"] {
        create(&client, topic).await;
    }
    for topic in [
        "sensors.eu.temp",
        "sensors.us.temp",
        "sensors.eu.humidity",
        "factory.line1",
    ] {
        client
            .publish(topic, format!("from {topic}"))
            .await
            .unwrap();
    }
    let topics = |records: Vec<Record>| -> HashSet<String> {
        records
            .iter()
            .map(|r| {
                assert_eq!(r.payload, format!("from {}", r.topic).as_bytes());
                r.topic.to_string()
            })
            .collect()
    };
    assert_eq!(
        topics(take(&mut rest, 3).await),
        HashSet::from(
            ["sensors.eu.temp", "sensors.us.temp", "sensors.eu.humidity"].map(String::from)
        )
    );
    assert_eq!(
        topics(take(&mut temps, 2).await),
        HashSet::from(["sensors.eu.temp", "sensors.us.temp"].map(String::from))
    );
    // Nothing else arrives: a marker published last is the next record each sees.
    client
        .publish("sensors.eu.temp", "from sensors.eu.temp")
        .await
        .unwrap();
    assert_eq!(take(&mut temps, 1).await[0].offset, 1);
    assert_eq!(take(&mut rest, 1).await[0].offset, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catch_up_then_live_tail_has_no_gap_or_duplicate() {
    let data = DataDir::new();
    let broker = Broker::start(&data);
    let client = broker.client().await;
    create(&client, "events").await;
    const STORED: u64 = 3000;
    const LIVE: u64 = 3000;
    for chunk in (0..STORED).collect::<Vec<_>>().chunks(500) {
        let batch = chunk
            .iter()
            .map(|i| NewRecord::new(i.to_string()))
            .collect();
        client.publish_batch("events", batch).await.unwrap();
    }
    // A small window makes the subscriber catch up in many credit rounds while the
    // producer keeps appending.
    let options = SubscribeOptions {
        from: StartAt::Earliest,
        window: 64,
        ..SubscribeOptions::default()
    };
    let mut sub = client.subscribe("events", options).await.unwrap();
    let producer = {
        let client = client.clone();
        tokio::spawn(async move {
            for i in STORED..STORED + LIVE {
                client.publish("events", i.to_string()).await.unwrap();
            }
        })
    };
    let records = take(&mut sub, (STORED + LIVE) as usize).await;
    producer.await.unwrap();
    for (expected, record) in (0..).zip(&records) {
        assert_eq!(
            record.offset, expected,
            "offsets arrive in order, each once"
        );
        assert_eq!(record.payload, expected.to_string().as_bytes());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_start_where_asked() {
    let data = DataDir::new();
    let broker = Broker::start(&data);
    let client = broker.client().await;
    create(&client, "log").await;
    client
        .publish_batch(
            "log",
            (0..10).map(|i| NewRecord::new(format!("r{i}"))).collect(),
        )
        .await
        .unwrap();
    let from = |at| SubscribeOptions::from(at);

    let mut at_offset = client
        .subscribe("log", from(StartAt::Offset(7)))
        .await
        .unwrap();
    assert_eq!(take(&mut at_offset, 1).await[0].offset, 7);

    let mut latest = client
        .subscribe("log", from(StartAt::Latest))
        .await
        .unwrap();
    let mut earliest = client
        .subscribe("log", from(StartAt::Earliest))
        .await
        .unwrap();
    assert_eq!(take(&mut earliest, 1).await[0].offset, 0);

    // A timestamp between two records: wait until the clock has moved past the
    // first ten, then publish more.
    let stamp = take(&mut earliest, 9).await[8].timestamp;
    let after = loop {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        if now > stamp {
            break now;
        }
        tokio::task::yield_now().await;
    };
    client.publish("log", "r10").await.unwrap();
    assert_eq!(
        take(&mut latest, 1).await[0].offset,
        10,
        "latest sees only new records"
    );
    let mut by_time = client
        .subscribe("log", from(StartAt::Timestamp(after)))
        .await
        .unwrap();
    let first = take(&mut by_time, 1).await.remove(0);
    assert_eq!((first.offset, &first.payload[..]), (10, &b"r10"[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_admin_lists_describes_and_deletes() {
    let data = DataDir::new();
    let broker = Broker::start(&data);
    let client = broker.client().await;
    let retention = Retention {
        max_age_ms: Some(86_400_000),
        max_bytes: Some(1 << 30),
        max_records: Some(1_000_000),
    };
    let created = client.create_topic("b.topic", retention).await.unwrap();
    assert_eq!(created.retention, retention);
    assert_eq!((created.records, created.next_offset), (0, 0));
    create(&client, "a.topic").await;
    client.publish("b.topic", "x").await.unwrap();
    let names: Vec<_> = client
        .list_topics()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert_eq!(names, ["a.topic", "b.topic"]);

    // A subscriber of a deleted topic stops receiving it; a new topic of the same
    // name starts empty.
    let mut sub = client
        .subscribe("b.>", SubscribeOptions::default())
        .await
        .unwrap();
    client.delete_topic("b.topic").await.unwrap();
    assert_eq!(
        client.describe_topic("b.topic").await.unwrap_err().code(),
        Some(quiver_client::ErrorCode::TopicNotFound)
    );
    create(&client, "b.topic").await;
    assert_eq!(client.describe_topic("b.topic").await.unwrap().records, 0);
    assert_eq!(client.publish("b.topic", "fresh").await.unwrap(), 0);
    let fresh = take(&mut sub, 1).await.remove(0);
    assert_eq!((fresh.offset, &fresh.payload[..]), (0, &b"fresh"[..]));
}

/// Creations arriving together share commits now; each still happens once, a name
/// created twice at once is refused once, and every topic created is there after a
/// restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_created_at_once_each_exist_once() {
    let data = DataDir::new();
    let broker = Broker::start(&data);
    let client = broker.client().await;
    let names: Vec<String> = (0..64)
        .map(|i| format!("burst.{i}"))
        .chain((0..8).map(|_| "burst.same".to_owned()))
        .collect();
    let creations = names.iter().map(|name| {
        let client = client.clone();
        let name = name.clone();
        tokio::spawn(async move { client.create_topic(&name, Retention::default()).await })
    });
    let mut same = 0;
    for (name, outcome) in names.iter().zip(futures::future::join_all(creations).await) {
        match (name.as_str(), outcome.unwrap()) {
            (_, Ok(info)) => {
                assert_eq!(&info.name, name);
                same += usize::from(name == "burst.same");
            }
            ("burst.same", Err(e)) => {
                assert_eq!(e.code(), Some(quiver_client::ErrorCode::TopicExists), "{e}");
                // Refused because it exists: then it is there to use.
                client.describe_topic(name).await.unwrap();
            }
            (_, Err(e)) => panic!("creating `{name}` failed: {e}"),
        }
    }
    assert_eq!(same, 1, "one of the eight creations of one name made it");
    // Each is usable at once, and they are different topics.
    for i in 0..64u64 {
        let topic = format!("burst.{i}");
        for _ in 0..=i % 3 {
            client.publish(&topic, NewRecord::new("x")).await.unwrap();
        }
    }
    let broker = broker.restart(&data, quiver_tests::Stop::Term, &[]);
    let client = broker.client().await;
    let topics: BTreeMap<String, u64> = client
        .list_topics()
        .await
        .unwrap()
        .into_iter()
        .filter(|t| t.name.starts_with("burst."))
        .map(|t| (t.name, t.next_offset))
        .collect();
    assert_eq!(topics.len(), 65, "{topics:?}");
    for i in 0..64u64 {
        assert_eq!(topics[&format!("burst.{i}")], i % 3 + 1, "burst.{i}");
    }
    assert_eq!(topics["burst.same"], 0);
}

/// Waits until retention has trimmed `topic` (100 records) to its last 10.
async fn trimmed_to_the_last_ten(client: &Client, topic: &str) {
    quiver_tests::eventually(
        Duration::from_secs(30),
        "retention trims to 10 records",
        || async { client.describe_topic(topic).await.unwrap().records == 10 },
    )
    .await;
    let info = client.describe_topic(topic).await.unwrap();
    assert_eq!((info.first_offset, info.next_offset), (90, 100));
}

/// Tightening a live topic's retention wakes the sweep: it applies at once, not at the
/// next interval (an hour here). Deletes wake it too, for their purges alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tightened_retention_applies_without_waiting_for_the_interval() {
    let data = DataDir::new();
    let broker = Broker::start_with(&data, &[("QUIVER_RETENTION_INTERVAL", "1h")]);
    let client = broker.client().await;
    for topic in ["bounded", "doomed"] {
        client
            .create_topic(topic, Retention::default())
            .await
            .unwrap();
        let records = (0..100).map(|i| NewRecord::new(format!("{i}"))).collect();
        client.publish_batch(topic, records).await.unwrap();
    }
    // A delete's purge, woken first, must not stand in for the retention pass.
    client.delete_topic("doomed").await.unwrap();
    let keep_ten = Retention {
        max_records: Some(10),
        ..Retention::default()
    };
    client
        .alter_topic("bounded", Some(keep_ten), None)
        .await
        .unwrap();
    trimmed_to_the_last_ten(&client, "bounded").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_trims_the_oldest_records_in_the_background() {
    let data = DataDir::new();
    let broker = Broker::start_with(&data, &[("QUIVER_RETENTION_INTERVAL", "50ms")]);
    let client = broker.client().await;
    let keep_ten = Retention {
        max_records: Some(10),
        ..Retention::default()
    };
    client.create_topic("bounded", keep_ten).await.unwrap();
    client
        .publish_batch(
            "bounded",
            (0..100).map(|i| NewRecord::new(format!("{i}"))).collect(),
        )
        .await
        .unwrap();
    trimmed_to_the_last_ten(&client, "bounded").await;
    let mut sub = client
        .subscribe("bounded", SubscribeOptions::from(StartAt::Earliest))
        .await
        .unwrap();
    let kept = take(&mut sub, 10).await;
    assert_eq!(kept[0].offset, 90);
    assert_eq!(kept[9].payload, "99");
}
