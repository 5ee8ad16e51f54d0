//! Durable groups as work queues, against the real binary: members share fairly (also
//! while a producer publishes, and when one joins late), prefetch 1 is a strict work
//! queue, acknowledgements sent as runs apply (and bad runs are refused), and acked
//! records stay acked across `kill -9`.

#![allow(clippy::unwrap_used)] // in tests a failed unwrap is a failed test

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use quiver_client::{Client, ErrorCode, GroupSettings, Retention};
use quiver_tests::raw::RawConnection;
use quiver_tests::{Broker, DataDir, deliveries, eventually, next_delivery};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Publishes `range` to `topic`, pipelined.
async fn publish(client: &Client, topic: &str, range: std::ops::Range<u64>) {
    let pending: Vec<_> = range
        .map(|i| client.publish(topic, format!("job-{i}")))
        .collect();
    for p in pending {
        p.await.unwrap();
    }
}

/// A member on a connection of its own that acks every delivery at once and counts
/// them, until `done`; returns its count.
fn worker(
    client: Client,
    prefetch: u32,
    acked: Arc<AtomicU64>,
    done: CancellationToken,
) -> JoinHandle<u64> {
    tokio::spawn(async move {
        let mut member = client.join("queue", Some(prefetch)).await.unwrap();
        let mut mine = 0;
        loop {
            let delivery = tokio::select! {
                delivery = member.next() => delivery,
                () = done.cancelled() => break,
            };
            let delivery = delivery.expect("the membership is open").unwrap();
            assert_eq!(delivery.deliveries, 1, "nothing is delivered twice");
            delivery.ack().unwrap();
            mine += 1;
            acked.fetch_add(1, Ordering::AcqRel);
        }
        member.leave().await.unwrap();
        client.close().await;
        mine
    })
}

/// A broker with an empty topic `jobs` and group `queue` over it.
async fn queue(prefetch: u32) -> (Broker, DataDir, Client) {
    let data = DataDir::new();
    let broker = Broker::start(&data);
    let client = broker.client().await;
    client
        .create_topic("jobs", Retention::default())
        .await
        .unwrap();
    let settings = GroupSettings {
        prefetch,
        ..GroupSettings::new("jobs")
    };
    client.create_group("queue", settings).await.unwrap();
    (broker, data, client)
}

/// Waits until the group has delivered `records` and has nothing pending, then stops
/// the workers and returns their counts.
async fn drained(
    client: &Client,
    records: u64,
    done: CancellationToken,
    workers: Vec<JoinHandle<u64>>,
) -> Vec<u64> {
    eventually(
        Duration::from_secs(120),
        "every record is acked",
        || async {
            let lane = &client.describe_group("queue").await.unwrap().topics[0];
            lane.cursor == records && lane.pending == 0
        },
    )
    .await;
    done.cancel();
    let mut counts = Vec::new();
    for worker in workers {
        counts.push(worker.await.unwrap());
    }
    counts
}

fn assert_fair(counts: &[u64], of: u64) {
    let fair = of as f64 / counts.len() as f64;
    for &count in counts {
        assert!(
            (count as f64 - fair).abs() <= fair * 0.2,
            "each of {counts:?} within 20 % of {fair}"
        );
    }
}

/// A producer publishes (256 in flight) while four members drain (prefetch 256): each
/// round shares what arrived among every member with room, in turns, rather than the
/// member whose task runs first taking it all (4 members took 163,925 / 380 / 23,718 /
/// 11,977 records of 200,000 in `quiver bench group` before).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn equal_members_share_a_queue_fairly_while_a_producer_publishes() {
    const RECORDS: u64 = 20_000;
    let (broker, _data, client) = queue(256).await;
    let acked = Arc::new(AtomicU64::new(0));
    let done = CancellationToken::new();
    let mut workers = Vec::new();
    for _ in 0..4 {
        let member = broker.client().await;
        workers.push(worker(member, 256, Arc::clone(&acked), done.clone()));
    }
    eventually(Duration::from_secs(30), "every member joined", || async {
        client.describe_group("queue").await.unwrap().members == 4
    })
    .await;
    let producer = broker.client().await;
    for chunk in (0..RECORDS).step_by(256) {
        publish(&producer, "jobs", chunk..(chunk + 256).min(RECORDS)).await;
    }
    let counts = drained(&client, RECORDS, done, workers).await;
    assert_eq!(counts.iter().sum::<u64>(), RECORDS, "none lost, none twice");
    assert_fair(&counts, RECORDS);
}

/// A member that joins a queue another is draining gets its share of what is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_joins_late_gets_its_share() {
    const RECORDS: u64 = 3000;
    let (broker, _data, client) = queue(32).await;
    publish(&client, "jobs", 0..RECORDS).await;
    let acked = Arc::new(AtomicU64::new(0));
    let done = CancellationToken::new();
    let first = worker(broker.client().await, 32, Arc::clone(&acked), done.clone());
    eventually(
        Duration::from_secs(30),
        "the first member is at work",
        || async { acked.load(Ordering::Acquire) >= 200 },
    )
    .await;
    let late = worker(broker.client().await, 32, Arc::clone(&acked), done.clone());
    eventually(
        Duration::from_secs(30),
        "the late member joined",
        || async { client.describe_group("queue").await.unwrap().members == 2 },
    )
    .await;
    // What is left once the late one has joined: at most this.
    let left = RECORDS - acked.load(Ordering::Acquire);
    let counts = drained(&client, RECORDS, done, vec![first, late]).await;
    assert_eq!(counts.iter().sum::<u64>(), RECORDS, "none lost, none twice");
    // Half of what was left, within 20 %, as far as "left" is known.
    assert!(
        counts[1] as f64 >= left as f64 / 2.0 * 0.8,
        "the late member took {} of at most {left} left",
        counts[1]
    );
}

/// With prefetch 1, members take turns, one record each, the next one only after they
/// settled the previous.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetch_one_members_take_one_record_at_a_time_in_turns() {
    const RECORDS: u64 = 600;
    let (broker, _data, client) = queue(1).await;
    // Two members that do not settle hold one record each, no more.
    let holders = [broker.client().await, broker.client().await];
    let mut held = Vec::new();
    for holder in &holders {
        held.push(holder.join("queue", None).await.unwrap());
    }
    publish(&client, "jobs", 0..RECORDS).await;
    let mut first = Vec::new();
    for member in &mut held {
        first.push(next_delivery(member).await);
    }
    let lane = &client.describe_group("queue").await.unwrap().topics[0];
    assert_eq!((lane.cursor, lane.pending), (2, 2), "one record each");
    // Settling one brings the next.
    let mut a = held.remove(0);
    first.remove(0).ack().unwrap();
    assert_eq!(next_delivery(&mut a).await.record.offset, 2);
    drop((a, held, first));
    eventually(Duration::from_secs(30), "the holders left", || async {
        let info = client.describe_group("queue").await.unwrap();
        info.members == 0 && info.topics[0].pending == 2
    })
    .await;

    // Three equally fast members at prefetch 1 share the rest in turns.
    let acked = Arc::new(AtomicU64::new(0));
    let done = CancellationToken::new();
    let mut workers = Vec::new();
    for _ in 0..3 {
        let member = broker.client().await;
        let acked = Arc::clone(&acked);
        let done = done.clone();
        workers.push(tokio::spawn(async move {
            let mut member = member.join("queue", None).await.unwrap();
            let mut mine = 0;
            loop {
                let delivery = tokio::select! {
                    delivery = member.next() => delivery,
                    () = done.cancelled() => break,
                };
                delivery
                    .expect("the membership is open")
                    .unwrap()
                    .ack()
                    .unwrap();
                mine += 1;
                acked.fetch_add(1, Ordering::AcqRel);
            }
            member.leave().await.unwrap();
            mine
        }));
    }
    let counts = drained(&client, RECORDS, done, workers).await;
    assert_eq!(
        counts.iter().sum::<u64>(),
        RECORDS - 1,
        "all but the one acked"
    );
    assert_fair(&counts, RECORDS - 1);
}

/// Acks sent together travel as runs and apply: a member that acks a thousand records
/// at once leaves nothing pending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_sent_as_runs_apply() {
    let (broker, _data, client) = queue(1000).await;
    publish(&client, "jobs", 0..1000).await;
    let member_client = broker.client().await;
    let mut member = member_client.join("queue", None).await.unwrap();
    let got = deliveries(&mut member, 1000).await;
    // Every other one first (500 runs of one), then the rest (filling the gaps).
    let (even, odd): (Vec<_>, Vec<_>) = got.into_iter().partition(|d| d.record.offset % 2 == 0);
    for delivery in even {
        delivery.ack().unwrap();
    }
    eventually(Duration::from_secs(30), "the even acks are in", || async {
        client.describe_group("queue").await.unwrap().topics[0].pending == 500
    })
    .await;
    for delivery in odd {
        delivery.ack().unwrap();
    }
    eventually(Duration::from_secs(30), "every ack is in", || async {
        client.describe_group("queue").await.unwrap().topics[0].pending == 0
    })
    .await;
    member.leave().await.unwrap();
    let lane = &client.describe_group("queue").await.unwrap().topics[0];
    assert_eq!((lane.cursor, lane.redelivered), (1000, 0));
}

/// A run of no offsets, or one past the end of u64, ends the membership with a typed
/// error; what it held goes back to the group, and the broker goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_ack_run_gets_a_typed_error() {
    use quiver_protocol::{AckRun, ClientFrame, Join, ServerFrame, TopicSettlements};
    let (broker, _data, client) = queue(10).await;
    publish(&client, "jobs", 0..3).await;
    let raw = RawConnection::connect(broker.addr(), broker.cert()).await;
    let _control = raw.handshake().await;
    for bad in [
        AckRun { first: 0, count: 0 },
        AckRun {
            first: u64::MAX,
            count: 2,
        },
    ] {
        let mut member = raw.open().await;
        member
            .send(&ClientFrame::Join(Join {
                group: "queue".into(),
                prefetch: 10,
            }))
            .await;
        assert_eq!(member.recv().await, Some(ServerFrame::Joined));
        let Some(ServerFrame::Assigned(assigned)) = member.recv().await else {
            panic!("records are assigned")
        };
        assert_eq!(assigned.records.len(), 3);
        // A good run and a bad one in the same frame: refused whole.
        member
            .send(&ClientFrame::SettleRuns(vec![TopicSettlements {
                topic: "jobs".into(),
                acks: vec![AckRun { first: 0, count: 1 }, bad],
                others: Vec::new(),
            }]))
            .await;
        match member.recv().await {
            Some(ServerFrame::Error(e)) => assert_eq!(e.code, ErrorCode::Malformed, "{e}"),
            other => panic!("expected an error, got {other:?}"),
        }
    }
    let member_client = broker.client().await;
    let mut member = member_client.join("queue", None).await.unwrap();
    let again = deliveries(&mut member, 3).await;
    assert_eq!(
        again
            .iter()
            .map(|d| (d.record.offset, d.deliveries))
            .collect::<Vec<_>>(),
        [(0, 3), (1, 3), (2, 3)],
        "not acked, not lost"
    );
}

/// After `kill -9`, records acked in runs stay acked and the others come back, each
/// once, with its count: the lane's runs (records delivered once) and the records'
/// own entries (delivered twice, or nacked) agree with what was settled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_runs_survive_kill_9_and_only_the_rest_comes_back() {
    const RECORDS: u64 = 2000;
    let data = DataDir::new();
    {
        let broker = Broker::start(&data);
        let client = broker.client().await;
        client
            .create_topic("jobs", Retention::default())
            .await
            .unwrap();
        let settings = GroupSettings {
            prefetch: 2000,
            ..GroupSettings::new("jobs")
        };
        client.create_group("queue", settings).await.unwrap();
        publish(&client, "jobs", 0..1000).await;
        // A member acks its thousand records but every seventh (left unsettled) and
        // offset 5 (nacked for an hour), then leaves.
        let first = broker.client().await;
        let mut member = first.join("queue", Some(1000)).await.unwrap();
        let mut unsettled = Vec::new();
        for delivery in deliveries(&mut member, 1000).await {
            match delivery.record.offset {
                5 => delivery.nack(Duration::from_secs(3600)).unwrap(),
                o if o % 7 == 0 => unsettled.push(delivery),
                _ => delivery.ack().unwrap(),
            }
        }
        eventually(
            Duration::from_secs(30),
            "the settlements are in",
            || async { client.describe_group("queue").await.unwrap().topics[0].pending == 144 },
        )
        .await;
        member.leave().await.unwrap();
        drop(unsettled);
        // Another member holds those again, and the next thousand.
        publish(&client, "jobs", 1000..RECORDS).await;
        let mut holder = client.join("queue", None).await.unwrap();
        let held = deliveries(&mut holder, 1143).await;
        assert_eq!((held[0].record.offset, held[0].deliveries), (0, 2));
        eventually(
            Duration::from_secs(30),
            "the assignments are in",
            || async {
                let lane = &client.describe_group("queue").await.unwrap().topics[0];
                lane.cursor == RECORDS && lane.pending == 1144
            },
        )
        .await;
        broker.kill9();
    }
    let broker = Broker::start(&data);
    let client = broker.client().await;
    let lane = &client.describe_group("queue").await.unwrap().topics[0];
    assert_eq!((lane.cursor, lane.pending), (RECORDS, 1144));
    let mut member = client.join("queue", None).await.unwrap();
    let again = deliveries(&mut member, 1143).await;
    let got: Vec<(u64, u32)> = again
        .iter()
        .map(|d| (d.record.offset, d.deliveries))
        .collect();
    let expected: Vec<(u64, u32)> = (0..1000)
        .filter(|o| o % 7 == 0)
        .map(|o| (o, 3))
        .chain((1000..RECORDS).map(|o| (o, 2)))
        .collect();
    assert_eq!(got, expected, "exactly the unsettled records, oldest first");
    for delivery in again {
        delivery.ack().unwrap();
    }
    eventually(Duration::from_secs(30), "the acks are in", || async {
        client.describe_group("queue").await.unwrap().topics[0].pending == 1
    })
    .await;
}
