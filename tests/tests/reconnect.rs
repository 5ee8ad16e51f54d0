//! Clients that survive: the SDK and the CLI ride through broker restarts (SIGTERM and
//! SIGKILL) and a change of local address, with nothing lost and nothing doubled.
//! Every broker here is the real binary, restarted on the same data dir and port.

#![allow(clippy::unwrap_used)] // in tests a failed unwrap is a failed test

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use futures::future::join_all;
use quiver_client::{
    Backoff, Client, ConnectionState, Error, NewRecord, Reconnect, Retention, StartAt,
    SubscribeOptions,
};
use quiver_tests::live::{Lines, LiveCli, numbered_lines};
use quiver_tests::{Broker, DataDir, Stop, read_all, succeeded, take};

/// How long a CLI process may take for a whole test's work.
const CLI_LIMIT: Duration = Duration::from_secs(300);

fn broker_env(broker: &Broker) -> [(&'static str, String); 1] {
    [("QUIVER_SERVER", broker.addr().to_owned())]
}

/// Lines of stderr that say the CLI lost its connection, and that it was back.
fn reconnections(stderr: &Lines) -> (usize, usize) {
    let lines = stderr.snapshot();
    let lost = lines.iter().filter(|l| l.contains("reconnecting")).count();
    let back = lines
        .iter()
        .filter(|l| l.contains("reconnected to"))
        .count();
    (lost, back)
}

#[test]
fn quiver_pub_and_sub_keep_every_line_once_in_order_across_three_restarts() {
    const LINES: usize = 300_000;
    let data = DataDir::new();
    let mut broker = Broker::start(&data);
    succeeded(broker.cli(&data, &["topic", "create", "lines"], ""));
    let env = broker_env(&broker);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();

    let sub = LiveCli::spawn(
        data.root(),
        &[
            "sub",
            "lines",
            "--from",
            "earliest",
            "--count",
            &LINES.to_string(),
        ],
        &env,
        Lines::default(),
        None,
    );
    let feed = numbered_lines("line", LINES);
    let publisher = LiveCli::spawn(
        data.root(),
        &["pub", "lines"],
        &env,
        Lines::default(),
        Some(feed),
    );

    // Restart under load, each time once the publisher has that many acknowledgements
    // (and the subscriber is reading).
    for (acknowledged, stop) in [
        (75_000, Stop::Kill),
        (150_000, Stop::Term),
        (225_000, Stop::Kill),
    ] {
        publisher.stdout.wait_for(acknowledged, CLI_LIMIT);
        sub.stdout.wait_for(1, CLI_LIMIT);
        broker = broker.restart(&data, stop, &[]);
    }

    let (offsets, pub_err) = publisher.succeed(CLI_LIMIT);
    assert_eq!(offsets.len(), LINES, "one offset printed per line");
    for (i, offset) in offsets.iter().enumerate() {
        assert_eq!(offset, &i.to_string(), "line {i} stored once, in order");
    }
    assert_eq!(reconnections(&pub_err), (3, 3), "{:?}", pub_err.snapshot());

    let (received, sub_err) = sub.succeed(CLI_LIMIT);
    assert_eq!(received.len(), LINES);
    for (i, line) in received.iter().enumerate() {
        assert_eq!(
            line,
            &format!("line-{i}"),
            "record {i} printed once, in order"
        );
    }
    // A restart that comes while the subscriber is still reconnecting from the last is
    // one outage to it.
    let (lost, back) = reconnections(&sub_err);
    assert!(lost >= 1 && lost == back, "{:?}", sub_err.snapshot());

    let described = succeeded(broker.cli(&data, &["topic", "describe", "lines", "--json"], ""));
    let described: serde_json::Value = serde_json::from_str(&described).unwrap();
    assert_eq!(
        described["records"], LINES,
        "nothing stored twice: {described}"
    );
}

#[test]
fn group_members_lose_nothing_across_restarts_and_count_redeliveries() {
    const RECORDS: usize = 20_000;
    let data = DataDir::new();
    let mut broker = Broker::start(&data);
    succeeded(broker.cli(&data, &["topic", "create", "jobs"], ""));
    succeeded(broker.cli(
        &data,
        &[
            "group",
            "create",
            "workers",
            "--topic",
            "jobs",
            "--prefetch",
            "64",
        ],
        "",
    ));
    let env = broker_env(&broker);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();

    // Two members printing into one list, in the order they print; each printed
    // record is acknowledged.
    let printed = Lines::default();
    let member = || {
        LiveCli::spawn(
            data.root(),
            &["sub", "--group", "workers", "--json"],
            &env,
            printed.clone(),
            None,
        )
    };
    let members = [member(), member()];
    let feed = numbered_lines("job", RECORDS);
    let publisher = LiveCli::spawn(
        data.root(),
        &["pub", "jobs"],
        &env,
        Lines::default(),
        Some(feed),
    );

    // Where the output stood once the kill had taken effect.
    let mut killed_at = 0;
    for (consumed, stop) in [(5_000, Stop::Kill), (12_000, Stop::Term)] {
        printed.wait_for(consumed, CLI_LIMIT);
        broker = broker.restart(&data, stop, &[]);
        if stop == Stop::Kill {
            killed_at = printed.len();
        }
    }
    let offset_of = |line: &String| -> u64 {
        let json: serde_json::Value = serde_json::from_str(line).unwrap();
        json["offset"].as_u64().unwrap()
    };
    printed.wait_until("every job printed", CLI_LIMIT, |lines| {
        let seen: std::collections::HashSet<u64> = lines.iter().map(offset_of).collect();
        seen.len() == RECORDS
    });
    publisher.succeed(CLI_LIMIT);

    // Each record printed at least once, every repeat reported as a redelivery.
    // Each record's prints: where in the output, and as which delivery.
    let mut prints: BTreeMap<u64, Vec<(usize, u64)>> = BTreeMap::new();
    for (at, line) in printed.snapshot().iter().enumerate() {
        let json: serde_json::Value = serde_json::from_str(line).unwrap();
        let offset = json["offset"].as_u64().unwrap();
        assert_eq!(json["payload"], format!("job-{offset}"), "{line}");
        let count = json["deliveries"].as_u64().unwrap();
        prints.entry(offset).or_default().push((at, count));
    }
    assert_eq!(prints.len(), RECORDS, "nothing lost");
    assert_eq!(prints.keys().next_back(), Some(&(RECORDS as u64 - 1)));
    // A repeat comes with a count of its own, except a delivery that the kill -9 caught
    // before its assignment was written down (docs/semantics.md): that one comes again
    // as a first delivery. The clean stop forgets nothing. (Two members print into one
    // list, so the order of their lines is not the order of delivery: counts are
    // compared as a set.)
    let (mut redelivered, mut forgotten) = (0, 0);
    for (offset, printed) in &prints {
        redelivered += printed.len() - 1;
        let mut by_count: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
        for (at, count) in printed {
            by_count.entry(*count).or_default().push(*at);
        }
        for (count, ats) in by_count.iter().filter(|(_, ats)| ats.len() > 1) {
            forgotten += ats.len() - 1;
            assert!(
                ats.iter().filter(|at| **at < killed_at).count() >= ats.len() - 1,
                "record {offset} delivered as delivery {count} again after the kill \
                 (at {killed_at}): {printed:?}"
            );
        }
    }
    for member in members {
        let stderr = member.stderr.clone();
        member.kill();
        // One outage or two: the second restart may come while a member is still
        // reconnecting from the first (the other member took the records meanwhile).
        let (lost, back) = reconnections(&stderr);
        assert!(lost >= 1 && lost == back, "{:?}", stderr.snapshot());
    }
    eprintln!(
        "{redelivered} repeats across two restarts, {forgotten} of them forgotten by the kill"
    );
    let described = succeeded(broker.cli(&data, &["group", "describe", "workers", "--json"], ""));
    let described: serde_json::Value = serde_json::from_str(&described).unwrap();
    let lane = &described["topics"][0];
    assert_eq!(lane["lag"], 0, "everything settled: {described}");
}

/// Asserts that publish `i` of `n` got offset `i`: each stored once, in order.
fn assert_offsets_in_order(offsets: &[u64], n: usize) {
    assert_eq!(offsets.len(), n);
    if let Some((i, offset)) = (0u64..).zip(offsets).find(|(i, offset)| i != *offset) {
        panic!(
            "publish {i} got offset {offset}; around it: {:?}",
            &offsets[i.saturating_sub(3) as usize..][..6.min(n - i as usize + 3)]
        );
    }
}

/// A broker on a fresh data dir, a client of it (reconnecting, as by default) and
/// `topic` created.
async fn started(topic: &str) -> (DataDir, Broker, Client) {
    let data = DataDir::new();
    let broker = Broker::start(&data);
    let client = broker.client().await;
    client
        .create_topic(topic, Retention::default())
        .await
        .unwrap();
    (data, broker, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_in_flight_across_a_kill_each_complete_once_with_their_offset() {
    const PUBLISHES: usize = 20 * 1024;
    const IN_FLIGHT: usize = 1024;
    let (data, mut broker, client) = started("orders").await;

    let mut offsets = Vec::with_capacity(PUBLISHES);
    let mut killed = false;
    for start in (0..PUBLISHES).step_by(IN_FLIGHT) {
        // Queued in order now: `publish` queues when called.
        let window: Vec<_> = (start..start + IN_FLIGHT)
            .map(|i| client.publish("orders", format!("order-{i}")))
            .collect();
        if !killed && start >= PUBLISHES / 2 {
            // The whole window is in flight or queued: kill the broker under it.
            broker = tokio::task::block_in_place(|| broker.restart(&data, Stop::Kill, &[]));
            killed = true;
        }
        for outcome in join_all(window).await {
            offsets.push(outcome.expect("each publish completes with its offset"));
        }
    }
    assert_offsets_in_order(&offsets, PUBLISHES);
    let stored = read_all(&client, "orders").await;
    assert_eq!(stored.len(), PUBLISHES);
    for (i, record) in stored.iter().enumerate() {
        assert_eq!(
            record.payload,
            format!("order-{i}").as_bytes(),
            "offset {i}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pattern_subscription_resumes_every_topic_where_the_application_is() {
    let (data, mut broker, client) = started("sensors.a").await;
    client
        .create_topic("sensors.b", Retention::default())
        .await
        .unwrap();
    let publish = |client: &Client, topic: &str, from: usize, to: usize| {
        let client = client.clone();
        let topic = topic.to_owned();
        async move {
            let records = (from..to)
                .map(|i| NewRecord::new(format!("{topic}-{i}")))
                .collect();
            client.publish_batch(&topic, records).await.unwrap();
        }
    };
    publish(&client, "sensors.a", 0, 50).await;
    // From latest: the 50 records above are not for this subscriber, in either topic,
    // before the restart or after it. A small window leaves records buffered and more
    // on the wire when the broker goes.
    let options = SubscribeOptions {
        from: StartAt::Latest,
        window: 16,
        ..SubscribeOptions::default()
    };
    let mut sub = client.subscribe("sensors.>", options).await.unwrap();
    publish(&client, "sensors.a", 50, 250).await;
    publish(&client, "sensors.b", 0, 200).await;
    let before = take(&mut sub, 100).await;

    for stop in [Stop::Term, Stop::Kill] {
        broker = tokio::task::block_in_place(|| broker.restart(&data, stop, &[]));
    }
    // Published after the restarts, and a topic that is new.
    publish(&client, "sensors.a", 250, 300).await;
    client
        .create_topic("sensors.c", Retention::default())
        .await
        .unwrap();
    publish(&client, "sensors.c", 0, 30).await;

    let after = take(&mut sub, 200 + 200 + 50 + 30 - 100).await;
    let mut per_topic: BTreeMap<String, Vec<(u64, String)>> = BTreeMap::new();
    for record in before.iter().chain(&after) {
        let payload = String::from_utf8(record.payload.to_vec()).unwrap();
        per_topic
            .entry(record.topic.to_string())
            .or_default()
            .push((record.offset, payload));
    }
    let expect = |topic: &str, offsets: std::ops::Range<u64>, first_payload: u64| {
        offsets
            .enumerate()
            .map(|(n, offset)| (offset, format!("{topic}-{}", first_payload + n as u64)))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        per_topic["sensors.a"],
        expect("sensors.a", 50..300, 50),
        "no gap, no repeat"
    );
    assert_eq!(per_topic["sensors.b"], expect("sensors.b", 0..200, 0));
    assert_eq!(per_topic["sensors.c"], expect("sensors.c", 0..30, 0));
    let extra = tokio::time::timeout(Duration::from_millis(300), sub.next()).await;
    assert!(extra.is_err(), "nothing more: {extra:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_in_flight_fails_with_connection_lost_and_is_not_sent_again() {
    let (data, mut broker, client) = started("rpc").await;
    // A responder that never answers, so the request is in flight at the restart.
    let mut responder = client
        .subscribe("rpc", SubscribeOptions::from(StartAt::Latest))
        .await
        .unwrap();
    let request = tokio::spawn({
        let client = client.clone();
        async move { client.request("rpc", "ping", Duration::from_secs(60)).await }
    });
    let asked = take(&mut responder, 1).await;
    assert_eq!(asked[0].payload, "ping");

    broker = tokio::task::block_in_place(|| broker.restart(&data, Stop::Term, &[]));
    let outcome = tokio::time::timeout(Duration::from_secs(30), request)
        .await
        .expect("the request ends with the connection, not its 60 s timeout")
        .unwrap();
    assert!(
        matches!(outcome, Err(Error::ConnectionLost(_))),
        "{outcome:?}"
    );
    // Not retried: the topic holds the one request.
    let describe = client.describe_topic("rpc").await.unwrap();
    assert_eq!(describe.records, 1);
    // The client carries on: the responder resumes (it gets a record published now)
    // and answers a new request.
    client.publish("rpc", "not a request").await.unwrap();
    let resumed = take(&mut responder, 1).await;
    assert_eq!(resumed[0].offset, 1, "resumed after the request it had");
    let answer = tokio::spawn({
        let client = client.clone();
        async move {
            let asked = take(&mut responder, 1).await;
            client.reply(&asked[0], "pong").await.unwrap();
        }
    });
    let reply = client
        .request("rpc", "ping again", Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(reply.payload, "pong");
    answer.await.unwrap();
    drop(broker);
}

/// Sends `signal` to the broker process.
fn signal(broker: &Broker, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([signal, &broker.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill {signal}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_maximum_outage_sent_publishes_are_unknown_and_later_ones_lost() {
    let data = DataDir::new();
    let broker = Broker::start(&data);
    let client = Client::builder()
        .ca_file(broker.cert())
        .unwrap()
        .idle_timeout(Duration::from_secs(1))
        .reconnect(Reconnect::Backoff(Backoff {
            max_outage: Duration::from_secs(2),
            attempt_timeout: Duration::from_millis(500),
            ..Backoff::default()
        }))
        .connect(broker.addr())
        .await
        .unwrap();
    client
        .create_topic("orders", Retention::default())
        .await
        .unwrap();
    let mut state = client.state();

    // A frozen broker takes the packets and never answers: the publish is sent, its
    // outcome unknowable.
    signal(&broker, "-STOP");
    let sent = client.publish("orders", "lost in the dark");
    let outcome = tokio::time::timeout(Duration::from_secs(30), sent)
        .await
        .expect("given up within the idle timeout and the maximum outage");
    assert!(
        matches!(outcome, Err(Error::OutcomeUnknown(_))),
        "{outcome:?}"
    );
    state
        .wait_for(|s| matches!(s, ConnectionState::Closed { .. }))
        .await
        .unwrap();
    let later = client.publish("orders", "never sent").await;
    assert!(matches!(later, Err(Error::ConnectionLost(_))), "{later:?}");

    signal(&broker, "-CONT");
    drop(broker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_reconnection_a_lost_connection_ends_everything() {
    let data = DataDir::new();
    let broker = Broker::start(&data);
    let client = broker.client_without_reconnection().await;
    client
        .create_topic("orders", Retention::default())
        .await
        .unwrap();
    let mut sub = client
        .subscribe("orders", SubscribeOptions::from(StartAt::Earliest))
        .await
        .unwrap();
    let broker = tokio::task::block_in_place(|| broker.restart(&data, Stop::Term, &[]));

    let ended = tokio::time::timeout(Duration::from_secs(30), sub.next())
        .await
        .unwrap();
    // The stream's own error, or the connection's close if it came first: both say
    // why.
    let Some(Err(error)) = ended else {
        panic!("the subscription ends with an error: {ended:?}");
    };
    assert!(error.to_string().contains("shutting down"), "{error}");
    let mut state = client.state();
    state
        .wait_for(|s| matches!(s, ConnectionState::Closed { .. }))
        .await
        .unwrap();
    let publish = client.publish("orders", "after").await;
    assert!(
        matches!(publish, Err(Error::ConnectionLost(_))),
        "{publish:?}"
    );
    drop(broker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_local_address_keeps_the_connection_without_reconnecting() {
    const RECORDS: usize = 4_000;
    let (_data, _broker, client) = started("moving").await;
    let mut sub = client
        .subscribe("moving", SubscribeOptions::from(StartAt::Earliest))
        .await
        .unwrap();
    let state = client.state();

    let mut offsets = Vec::new();
    for half in [0..RECORDS / 2, RECORDS / 2..RECORDS] {
        let publishes: Vec<_> = half
            .map(|i| client.publish("moving", format!("m-{i}")))
            .collect();
        if offsets.is_empty() {
            // Mid-stream: publishes in flight, records on their way to the subscriber.
            client.rebind().unwrap();
        }
        for outcome in join_all(publishes).await {
            offsets.push(outcome.unwrap());
        }
    }
    assert_offsets_in_order(&offsets, RECORDS);
    let received = take(&mut sub, RECORDS).await;
    for (i, record) in received.iter().enumerate() {
        assert_eq!(record.offset, i as u64);
        assert_eq!(record.payload, format!("m-{i}").as_bytes());
    }
    assert!(
        !state.has_changed().unwrap(),
        "still the first connection: {:?}",
        *state.borrow()
    );
    assert!(matches!(
        &*state.borrow(),
        ConnectionState::Connected { .. }
    ));
}
