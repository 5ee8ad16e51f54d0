//! One-record publishes sharing a frame (`PublishEach` to one topic, `PublishAcross` to
//! several): each keeps its own id, receipt and error, whether the SDK merged them or a
//! client sent the frame itself.

#![allow(clippy::unwrap_used)] // in tests a failed unwrap is a failed test

use futures::future::join_all;
use quiver_client::{Error, ErrorCode, NewRecord, Retention, Stage};
use quiver_protocol::{
    ClientFrame, Op, OpReply, PROTOCOL_VERSION, PublishId, Request, ServerFrame, TopicRun,
};
use quiver_tests::raw::RawConnection;
use quiver_tests::{Broker, DataDir, filtered_topic, level_filter, principal, read_all};

/// The outcomes a raw `PublishEach` request got.
async fn publish_each(
    control: &mut quiver_tests::raw::RawStream,
    id: u64,
    topic: &str,
    records: Vec<NewRecord>,
    first_id: PublishId,
) -> Result<Vec<Result<u64, ErrorCode>>, ErrorCode> {
    let op = Op::PublishEach {
        topic: topic.into(),
        records,
        first_id,
    };
    published_each(control, id, op).await
}

/// The outcomes a raw `PublishAcross` request got.
async fn publish_across(
    control: &mut quiver_tests::raw::RawStream,
    id: u64,
    runs: &[(&str, Vec<NewRecord>)],
    first_id: PublishId,
) -> Result<Vec<Result<u64, ErrorCode>>, ErrorCode> {
    let runs = runs
        .iter()
        .map(|(topic, records)| TopicRun {
            topic: (*topic).to_owned(),
            records: records.clone(),
        })
        .collect();
    published_each(control, id, Op::PublishAcross { runs, first_id }).await
}

/// Sends request `id` and reads the outcome of each of its one-record publishes: the
/// offset its record got, or its error code.
async fn published_each(
    control: &mut quiver_tests::raw::RawStream,
    id: u64,
    op: Op,
) -> Result<Vec<Result<u64, ErrorCode>>, ErrorCode> {
    control
        .send(&ClientFrame::Request(Request { id, op }))
        .await;
    let reply = match control.recv().await {
        Some(ServerFrame::Reply(reply)) if reply.id == id => reply,
        other => panic!("expected the reply to {id}, got {other:?}"),
    };
    match reply.result {
        Ok(OpReply::PublishedEach(outcomes)) => Ok(outcomes
            .into_iter()
            .map(|o| {
                o.map(|receipt| {
                    assert_eq!(receipt.count, 1, "{receipt:?}");
                    receipt.base_offset
                })
                .map_err(|e| e.code)
            })
            .collect()),
        Ok(other) => panic!("expected PublishedEach, got {other:?}"),
        Err(e) => Err(e.code),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_publish_of_a_shared_frame_is_checked_stored_and_remembered_on_its_own() {
    let data = DataDir::new();
    let broker = Broker::start_with(&data, &[("QUIVER_LIMITS__MAX_RECORD_SIZE", "1 KiB")]);
    let client = broker.client().await;
    client
        .create_topic("t", Retention::default())
        .await
        .unwrap();
    let raw = RawConnection::connect(broker.addr(), broker.cert()).await;
    let (mut control, _) = raw.handshake().await;
    let first = PublishId {
        producer: 7,
        sequence: 100,
    };
    let records = vec![
        NewRecord::new("a"),
        NewRecord::new(vec![0u8; 2000]), // too large: refused alone
        NewRecord::new("c"),
    ];
    let outcomes = publish_each(&mut control, 1, "t", records.clone(), first).await;
    assert_eq!(
        outcomes,
        Ok(vec![Ok(0), Err(ErrorCode::RecordTooLarge), Ok(1)])
    );

    // The same frame again, as a retry would send it: the stored ones answer with
    // their first receipts; nothing is stored twice.
    let again = publish_each(&mut control, 2, "t", records, first).await;
    assert_eq!(
        again,
        Ok(vec![Ok(0), Err(ErrorCode::RecordTooLarge), Ok(1)])
    );
    // Each id is a publish of its own: retrying the third alone finds it too.
    let third = PublishId {
        sequence: 102,
        ..first
    };
    let receipt = client
        .publish_batch_with_id("t", vec![NewRecord::new("c")], third)
        .await
        .unwrap();
    assert_eq!(receipt.offsets(), 1..2);
    let stored: Vec<_> = read_all(&client, "t")
        .await
        .into_iter()
        .map(|r| r.into_stored().payload)
        .collect();
    assert_eq!(stored, ["a", "c"]);

    // What applies to all of them refuses the whole request.
    let nothing = publish_each(&mut control, 3, "t", vec![], first).await;
    assert_eq!(nothing, Err(ErrorCode::InvalidArgument));
    let past_the_end = PublishId {
        producer: 7,
        sequence: u64::MAX,
    };
    let two = vec![NewRecord::new("x"), NewRecord::new("y")];
    let overflow = publish_each(&mut control, 4, "t", two.clone(), past_the_end).await;
    assert_eq!(overflow, Err(ErrorCode::InvalidArgument));
    let unknown = publish_each(&mut control, 5, "nope", two, first).await;
    assert_eq!(unknown, Err(ErrorCode::TopicNotFound));
    assert_eq!(client.describe_topic("t").await.unwrap().records, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_publishes_keep_call_order_and_their_own_outcomes() {
    let data = DataDir::new();
    let broker = Broker::start_with(&data, &[("QUIVER_LIMITS__MAX_RECORD_SIZE", "1 KiB")]);
    let client = broker.client().await;
    client
        .create_topic("t", Retention::default())
        .await
        .unwrap();
    const N: usize = 3000;
    const TOO_LARGE: usize = 1234;
    // All queued before any is awaited, so the SDK merges them into shared frames.
    let publishes: Vec<_> = (0..N)
        .map(|i| {
            let payload = match i {
                TOO_LARGE => vec![b'x'; 2000],
                _ => i.to_string().into_bytes(),
            };
            client.publish("t", payload)
        })
        .collect();
    let outcomes = join_all(publishes).await;
    for (i, outcome) in outcomes.into_iter().enumerate() {
        match (i, outcome) {
            (TOO_LARGE, Err(Error::Server(e))) => assert_eq!(e.code, ErrorCode::RecordTooLarge),
            (TOO_LARGE, other) => panic!("the oversized record got {other:?}"),
            (i, outcome) => {
                let expected = if i < TOO_LARGE { i } else { i - 1 } as u64;
                assert_eq!(outcome.unwrap(), expected, "publish {i}");
            }
        }
    }
    let stored = read_all(&client, "t").await;
    assert_eq!(stored.len(), N - 1);
    let expected = (0..N).filter(|&i| i != TOO_LARGE).map(|i| i.to_string());
    for (record, want) in stored.iter().zip(expected) {
        assert_eq!(record.payload, want.as_bytes());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_publishes_through_an_ingress_filter_each_get_their_fate() {
    let data = DataDir::new();
    let broker = Broker::start(&data);
    let client = broker.client().await;
    let filter = level_filter();
    filtered_topic(&client, "logs", filter).await;

    // Every third is kept, every third dropped, every third dead-lettered.
    let payload = |i: usize| match i % 3 {
        0 => format!(r#"{{"level":"warn","i":{i}}}"#),
        1 => format!(r#"{{"level":"info","i":{i}}}"#),
        _ => format!("not json {i}"),
    };
    let before = client.next_publish_id();
    let publishes: Vec<_> = (0..300)
        .map(|i| client.publish("logs", payload(i)))
        .collect();
    let outcomes = join_all(publishes).await;
    let mut dead_letters = Vec::new();
    for (i, outcome) in outcomes.into_iter().enumerate() {
        match (i % 3, outcome) {
            (0, Ok(offset)) => assert_eq!(offset, (i / 3) as u64, "publish {i}"),
            (1, Err(Error::Transformed(r))) => assert_eq!((r.count, r.dropped), (0, 1)),
            (2, Err(Error::Transformed(r))) => {
                let dead = r.dead_letter.clone().expect("dead-lettered");
                assert_eq!((r.count, dead.topic.as_str()), (0, "dlq.logs"));
                assert_eq!((dead.base_offset, dead.count), ((i / 3) as u64, 1));
                dead_letters.push(r);
            }
            (_, other) => panic!("publish {i} got {other:?}"),
        }
    }
    // Each is remembered with its own receipt: a retry of one gets it back.
    let last = PublishId {
        sequence: before.sequence + 300,
        ..before
    };
    let retried = client
        .publish_batch_with_id("logs", vec![NewRecord::new(payload(299))], last)
        .await
        .unwrap();
    assert_eq!(Some(&retried), dead_letters.last().map(|r| &**r));
    let kept: Vec<_> = read_all(&client, "logs")
        .await
        .into_iter()
        .map(|r| String::from_utf8(r.payload.to_vec()).unwrap())
        .collect();
    let expected: Vec<_> = (0..300).step_by(3).map(payload).collect();
    assert_eq!(kept, expected);
    let dead = read_all(&client, "dlq.logs").await;
    assert_eq!(dead.len(), 100);
    for record in dead {
        // Each was the first (and only) record of its publish.
        let offset = record
            .headers
            .iter()
            .find(|h| h.name == "quiver-dlq-offset");
        assert_eq!(offset.map(|h| &h.value[..]), Some(&b"0"[..]));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_publishes_a_filter_only_keeps_or_drops_each_get_their_fate() {
    let data = DataDir::new();
    let broker = Broker::start(&data);
    let client = broker.client().await;
    let filter = Stage::new("json-filter")
        .param("where", "n >= 10")
        .param("invalid", "drop");
    filtered_topic(&client, "quiet", filter).await;

    // Kept when n >= 10; dropped when smaller or not JSON at all.
    let payload = |i: usize| match i % 4 {
        0 => "not json".to_string(),
        _ => format!(r#"{{"n":{}}}"#, i % 20),
    };
    let kept = |i: usize| !i.is_multiple_of(4) && i % 20 >= 10;
    let publishes: Vec<_> = (0..400)
        .map(|i| client.publish("quiet", payload(i)))
        .collect();
    let outcomes = join_all(publishes).await;
    let mut next = 0;
    for (i, outcome) in outcomes.into_iter().enumerate() {
        match outcome {
            Ok(offset) if kept(i) => {
                assert_eq!(offset, next, "publish {i}");
                next += 1;
            }
            Err(Error::Transformed(r)) if !kept(i) => {
                assert_eq!((r.count, r.dropped, r.dead_letter), (0, 1, None), "{i}");
            }
            other => panic!("publish {i} got {other:?}"),
        }
    }
    let stored: Vec<_> = read_all(&client, "quiet")
        .await
        .into_iter()
        .map(|r| String::from_utf8(r.payload.to_vec()).unwrap())
        .collect();
    let expected: Vec<_> = (0..400).filter(|&i| kept(i)).map(payload).collect();
    assert_eq!(stored, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_publish_across_topics_is_checked_stored_and_remembered_on_its_own() {
    let data = DataDir::new();
    let broker = Broker::start_with(&data, &[("QUIVER_LIMITS__MAX_RECORD_SIZE", "1 KiB")]);
    let client = broker.client().await;
    for topic in ["a", "b"] {
        client
            .create_topic(topic, Retention::default())
            .await
            .unwrap();
    }
    let raw = RawConnection::connect(broker.addr(), broker.cert()).await;
    let (mut control, hello) = raw.handshake().await;
    assert_eq!(hello.version, PROTOCOL_VERSION);
    let first = PublishId {
        producer: 7,
        sequence: 100,
    };
    let record = |s: &str| NewRecord::new(s.to_owned());
    let runs = [
        ("a", vec![record("a0"), record("a1")]),
        ("b", vec![record("b0")]),
        ("nope", vec![record("lost")]), // no such topic: refused alone
        ("a", vec![record("a2"), NewRecord::new(vec![0u8; 2000])]), // too large: alone
        ("b", vec![record("b1")]),
    ];
    let expected = Ok(vec![
        Ok(0),
        Ok(1),
        Ok(0),
        Err(ErrorCode::TopicNotFound),
        Ok(2),
        Err(ErrorCode::RecordTooLarge),
        Ok(1),
    ]);
    assert_eq!(
        publish_across(&mut control, 1, &runs, first).await,
        expected
    );
    // The same frame again, as a retry would send it: the stored ones answer with
    // their first receipts; nothing is stored twice.
    assert_eq!(
        publish_across(&mut control, 2, &runs, first).await,
        expected
    );
    // Each id is a publish of its own, counted through the runs: `a2` is the fifth.
    let a2 = PublishId {
        sequence: 104,
        ..first
    };
    let receipt = client
        .publish_batch_with_id("a", vec![record("a2")], a2)
        .await
        .unwrap();
    assert_eq!(receipt.offsets(), 2..3);
    for (topic, want) in [("a", ["a0", "a1", "a2"].as_slice()), ("b", &["b0", "b1"])] {
        let stored: Vec<_> = read_all(&client, topic)
            .await
            .into_iter()
            .map(|r| r.into_stored().payload)
            .collect();
        assert_eq!(stored, want, "{topic}");
    }

    // What applies to all of them refuses the whole request.
    let nothing = publish_across(&mut control, 3, &[("a", vec![])], first).await;
    assert_eq!(nothing, Err(ErrorCode::InvalidArgument));
    let past_the_end = PublishId {
        producer: 7,
        sequence: u64::MAX,
    };
    let two = [("a", vec![record("x")]), ("b", vec![record("y")])];
    let overflow = publish_across(&mut control, 4, &two, past_the_end).await;
    assert_eq!(overflow, Err(ErrorCode::InvalidArgument));
    // Ending right at the largest sequence is fine.
    let last_two = PublishId {
        producer: 7,
        sequence: u64::MAX - 1,
    };
    let at_the_end = publish_across(&mut control, 5, &two, last_two).await;
    assert_eq!(at_the_end, Ok(vec![Ok(3), Ok(2)]));
    assert_eq!(client.describe_topic("a").await.unwrap().records, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_publishes_to_many_topics_keep_their_order_rights_and_plugins() {
    let data = DataDir::new();
    let ops = principal(&data, "ops", &["admin:>", "publish:>", "subscribe:>"]);
    let writer = principal(&data, "writer", &["publish:ok.>", "subscribe:>"]);
    let broker = Broker::start(&data);
    let ops = broker.client_as(&ops).await;
    for topic in ["ok.1", "ok.2", "secret"] {
        ops.create_topic(topic, Retention::default()).await.unwrap();
    }
    // One topic keeps only warnings: a run to it takes its plugin's way.
    let filter = level_filter();
    filtered_topic(&ops, "ok.logs", filter).await;
    let writer = broker.client_as(&writer).await;

    // Round robin over five topics, all queued before any is awaited, so the SDK
    // merges them into frames across topics.
    let topics = ["ok.1", "ok.2", "secret", "ok.missing", "ok.logs"];
    const N: usize = 3000;
    let level = |i: usize| if i.is_multiple_of(2) { "warn" } else { "info" };
    let publishes: Vec<_> = (0..N)
        .map(|i| {
            let topic = topics[i % topics.len()];
            let payload = match topic {
                "ok.logs" => format!(r#"{{"level":"{}","i":{i}}}"#, level(i / 5)),
                _ => i.to_string(),
            };
            writer.publish(topic, payload)
        })
        .collect();
    let outcomes = join_all(publishes).await;
    for (i, outcome) in outcomes.into_iter().enumerate() {
        let round = (i / topics.len()) as u64;
        match (topics[i % topics.len()], outcome) {
            ("ok.1" | "ok.2", Ok(offset)) => assert_eq!(offset, round, "publish {i}"),
            ("secret", Err(e)) => assert_eq!(e.code(), Some(ErrorCode::Forbidden), "{e}"),
            ("ok.missing", Err(e)) => {
                assert_eq!(e.code(), Some(ErrorCode::TopicNotFound), "{e}");
            }
            ("ok.logs", Ok(offset)) if level(i / 5) == "warn" => {
                assert_eq!(offset, round / 2, "publish {i}");
            }
            ("ok.logs", Err(Error::Transformed(r))) if level(i / 5) == "info" => {
                assert_eq!((r.count, r.dropped), (0, 1), "publish {i}");
            }
            (topic, other) => panic!("publish {i} to {topic} got {other:?}"),
        }
    }
    for topic in ["ok.1", "ok.2"] {
        let start = topics.iter().position(|t| *t == topic).unwrap();
        let stored: Vec<_> = read_all(&ops, topic)
            .await
            .into_iter()
            .map(|r| String::from_utf8(r.payload.to_vec()).unwrap())
            .collect();
        let expected: Vec<_> = (start..N)
            .step_by(topics.len())
            .map(|i| i.to_string())
            .collect();
        assert_eq!(stored, expected, "{topic}");
    }
    assert!(read_all(&ops, "secret").await.is_empty());
    assert_eq!(read_all(&ops, "ok.logs").await.len(), N / topics.len() / 2);
}
