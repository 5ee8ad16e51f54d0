//! Links between real brokers on loopback: an edge forwarding to a hub across outages
//! and `kill -9` of either side, a hub's commands pulled to an edge, loops between two
//! brokers, retention overtaking a backlog, two edges fanning into one hub topic, a
//! lossy and partitioned network (a UDP relay), and links refused by the remote's
//! grants (docs/links.md).

#![allow(clippy::unwrap_used)] // in tests a failed unwrap is a failed test

use std::collections::BTreeMap;
use std::time::Duration;

use quiver_client::{Client, NewRecord, Retention, Stage, headers};
use quiver_tests::relay::Relay;
use quiver_tests::{
    Broker, DataDir, Stop, create_link, describe_link, eventually, example_plugin, principal,
    read_all, read_plugin,
};

/// How long a link may take to catch up in these tests.
const CATCH_UP: Duration = Duration::from_secs(120);

/// Records a topic holds now (0 if it does not exist yet).
async fn count(client: &Client, topic: &str) -> u64 {
    client.describe_topic(topic).await.map_or(0, |t| t.records)
}

/// The value of a header as text.
fn header(record: &quiver_client::Record, name: &str) -> String {
    String::from_utf8(record.header(name).unwrap().to_vec()).unwrap()
}

/// Publishes `n` numbered records (`prefix-i`) to `topic`, all in flight at once.
async fn publish(client: &Client, topic: &str, prefix: &str, n: usize) {
    let acks: Vec<_> = (0..n)
        .map(|i| client.publish(topic, NewRecord::new(format!("{prefix}-{i}"))))
        .collect();
    for ack in acks {
        ack.await.unwrap();
    }
}

/// A hub that has started once (so its address and certificate are known) and is
/// down: its data dir, address and certificate path.
fn hub_down() -> (DataDir, String, String) {
    let data = DataDir::new();
    let hub = Broker::start(&data);
    let addr = hub.addr().to_owned();
    let cert = hub.cert().to_str().unwrap().to_owned();
    assert!(hub.stop().success());
    (data, addr, cert)
}

/// Waits until the hub's `topic` holds `n` records, then checks they are
/// `prefix-0 … prefix-(n-1)`, each once and in order.
async fn arrived_once_in_order(
    watcher: &Client,
    topic: &str,
    prefix: &str,
    n: usize,
) -> Vec<quiver_client::Record> {
    eventually(CATCH_UP, "every record at the hub", || async {
        count(watcher, topic).await >= n as u64
    })
    .await;
    let records = read_all(watcher, topic).await;
    assert_eq!(records.len(), n, "nothing stored twice");
    for (i, record) in records.iter().enumerate() {
        assert_eq!(
            record.payload,
            format!("{prefix}-{i}").as_bytes(),
            "order kept"
        );
    }
    records
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_written_while_the_hub_is_down_arrives_once_in_order_across_kills() {
    const RECORDS: usize = 20_000;
    let (hub_data, hub_addr, hub_cert) = hub_down();

    let edge_data = DataDir::new();
    let mut edge = Broker::start(&edge_data);
    let client = edge.client().await;
    client
        .create_topic("sensors.a", Retention::default())
        .await
        .unwrap();
    // The hub is down: the link backs off, and the backlog grows.
    create_link(
        &edge,
        &edge_data,
        &[
            "up",
            "--to",
            &hub_addr,
            "--topics",
            "sensors.>",
            "--prefix",
            "edge1.",
            "--ca",
            &hub_cert,
            "--max-rate",
            "4000",
        ],
    );
    publish(&client, "sensors.a", "reading", RECORDS).await;
    eventually(
        CATCH_UP,
        "the link backing off while the hub is down",
        || async { describe_link(&edge, &edge_data, "up")["state"] == "backing_off" },
    )
    .await;

    // The hub comes back; both sides are killed during the catch-up.
    let mut hub = Broker::start_at(&hub_data, &hub_addr, &[]);
    let watcher = hub.client().await;
    let topic = "edge1.sensors.a";
    for (at, victim) in [
        (3_000, "hub"),
        (7_000, "edge"),
        (11_000, "hub"),
        (15_000, "edge"),
    ] {
        eventually(CATCH_UP, "the hub catching up", || async {
            count(&watcher, topic).await >= at
        })
        .await;
        if victim == "hub" {
            hub = hub.restart(&hub_data, Stop::Kill, &[]);
        } else {
            edge = edge.restart(&edge_data, Stop::Kill, &[]);
        }
    }
    // Once each, in order, with their provenance.
    let records = arrived_once_in_order(&watcher, topic, "reading", RECORDS).await;
    for (i, record) in records.iter().enumerate() {
        assert_eq!(header(record, headers::ORIGIN_OFFSET), i.to_string());
        assert_eq!(header(record, headers::ORIGIN_TOPIC), "sensors.a");
    }
    let described = describe_link(&edge, &edge_data, "up");
    assert_eq!(described["state"], "connected", "{described}");
    assert_eq!(described["lag"], 0, "{described}");
    assert_eq!(described["skipped"], 0, "{described}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_link_brings_hub_commands_to_the_edge_and_topics_that_appear_later() {
    let hub_data = DataDir::new();
    let hub = Broker::start(&hub_data);
    let hub_client = hub.client().await;
    hub_client
        .create_topic("commands.edge1", Retention::default())
        .await
        .unwrap();
    publish(&hub_client, "commands.edge1", "cmd", 100).await;

    let edge_data = DataDir::new();
    let edge = Broker::start(&edge_data);
    create_link(
        &edge,
        &edge_data,
        &[
            "down",
            "--direction",
            "in",
            "--to",
            hub.addr(),
            "--topics",
            "commands.>",
            "--ca",
            hub.cert().to_str().unwrap(),
        ],
    );
    let edge_client = edge.client().await;
    eventually(CATCH_UP, "the commands at the edge", || async {
        count(&edge_client, "commands.edge1").await >= 100
    })
    .await;
    // A topic created on the hub later is picked up.
    hub_client
        .create_topic("commands.all", Retention::default())
        .await
        .unwrap();
    publish(&hub_client, "commands.all", "all", 10).await;
    publish(&hub_client, "commands.edge1", "cmd-late", 5).await;
    eventually(CATCH_UP, "the later commands at the edge", || async {
        count(&edge_client, "commands.all").await >= 10
            && count(&edge_client, "commands.edge1").await >= 105
    })
    .await;
    let records = read_all(&edge_client, "commands.edge1").await;
    assert_eq!(records.len(), 105);
    let hub_id = hub_client.describe_broker().await.unwrap().id;
    for (i, record) in records.iter().enumerate() {
        let want = if i < 100 {
            format!("cmd-{i}")
        } else {
            format!("cmd-late-{}", i - 100)
        };
        assert_eq!(record.payload, want.as_bytes());
        assert_eq!(
            header(record, headers::ORIGIN_BROKER),
            quiver_client::broker_id_hex(hub_id)
        );
        assert_eq!(header(record, headers::ORIGIN_OFFSET), i.to_string());
    }
    assert_eq!(read_all(&edge_client, "commands.all").await.len(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_both_ways_never_send_a_record_back() {
    let (a_data, b_data) = (DataDir::new(), DataDir::new());
    let (a, b) = (Broker::start(&a_data), Broker::start(&b_data));
    let (a_client, b_client) = (a.client().await, b.client().await);
    for client in [&a_client, &b_client] {
        client
            .create_topic("t.x", Retention::default())
            .await
            .unwrap();
    }
    create_link(
        &a,
        &a_data,
        &[
            "ab",
            "--to",
            b.addr(),
            "--topics",
            "t.>",
            "--ca",
            b.cert().to_str().unwrap(),
        ],
    );
    create_link(
        &b,
        &b_data,
        &[
            "ba",
            "--to",
            a.addr(),
            "--topics",
            "t.>",
            "--ca",
            a.cert().to_str().unwrap(),
        ],
    );
    publish(&a_client, "t.x", "from-a", 50).await;
    publish(&b_client, "t.x", "from-b", 50).await;
    // Each side holds its own 50 and the other's 50; what came over a link is
    // counted as looped by the link that would send it back.
    eventually(CATCH_UP, "both links settled", || async {
        let ab = describe_link(&a, &a_data, "ab");
        let ba = describe_link(&b, &b_data, "ba");
        ab["looped"] == 50 && ba["looped"] == 50 && ab["lag"] == 0 && ba["lag"] == 0
    })
    .await;
    for client in [&a_client, &b_client] {
        let records = read_all(client, "t.x").await;
        assert_eq!(records.len(), 100, "no record came back a second time");
        let mut by_origin: BTreeMap<String, usize> = BTreeMap::new();
        for record in &records {
            let text = String::from_utf8(record.payload.to_vec()).unwrap();
            *by_origin
                .entry(text.split('-').take(2).collect::<Vec<_>>().join("-"))
                .or_default() += 1;
        }
        assert_eq!(by_origin.get("from-a"), Some(&50), "{by_origin:?}");
        assert_eq!(by_origin.get("from-b"), Some(&50), "{by_origin:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_overtaking_a_backlog_is_reported_with_the_right_count() {
    const RECORDS: u64 = 1_000;
    let (hub_data, hub_addr, hub_cert) = hub_down();

    let edge_data = DataDir::new();
    let edge = Broker::start_with(&edge_data, &[("QUIVER_RETENTION_INTERVAL", "50ms")]);
    let client = edge.client().await;
    let keep_100 = Retention {
        max_records: Some(100),
        ..Retention::default()
    };
    client.create_topic("logs", keep_100).await.unwrap();
    create_link(
        &edge,
        &edge_data,
        &[
            "up", "--to", &hub_addr, "--topics", "logs", "--ca", &hub_cert,
        ],
    );
    publish(&client, "logs", "line", RECORDS as usize).await;
    eventually(CATCH_UP, "retention trimming the backlog", || async {
        client.describe_topic("logs").await.unwrap().first_offset >= RECORDS - 100
    })
    .await;
    let first = client.describe_topic("logs").await.unwrap().first_offset;

    let hub = Broker::start_at(&hub_data, &hub_addr, &[]);
    let watcher = hub.client().await;
    eventually(CATCH_UP, "the rest forwarded", || async {
        count(&watcher, "logs").await >= RECORDS - first
    })
    .await;
    let described = describe_link(&edge, &edge_data, "up");
    assert_eq!(described["skipped"], first, "{described}");
    let skip = &described["skips"][0];
    assert_eq!(
        (skip["from"].as_u64(), skip["to"].as_u64()),
        (Some(0), Some(first))
    );
    let records = read_all(&watcher, "logs").await;
    assert_eq!(records.len() as u64, RECORDS - first);
    assert_eq!(
        header(&records[0], headers::ORIGIN_OFFSET),
        first.to_string()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_link_declarations_get_clear_errors() {
    let data = DataDir::new();
    let broker = Broker::start(&data);
    let bad = |args: &[&str]| {
        let mut all = vec!["link", "create"];
        all.extend_from_slice(args);
        let out = broker.cli(&data, &all, "");
        assert!(!out.status.success(), "{args:?} was accepted");
        String::from_utf8(out.stderr).unwrap()
    };
    assert!(
        bad(&["bad name!", "--to", "127.0.0.1:1", "--topics", "a"]).contains("invalid link name")
    );
    assert!(bad(&["l", "--to", "nowhere", "--topics", "a"]).contains("HOST:PORT"));
    assert!(bad(&["l", "--to", "127.0.0.1:1", "--topics", "a..b"]).contains("invalid pattern"));
    assert!(
        bad(&[
            "l",
            "--to",
            "127.0.0.1:1",
            "--topics",
            "a",
            "--direction",
            "in",
            "--plugin",
            "p"
        ])
        .contains("on an `in` link")
    );
    // A link to a broker that is not there backs off and says why; names are unique.
    create_link(
        &broker,
        &data,
        &["l", "--to", "127.0.0.1:1", "--topics", "a"],
    );
    assert!(bad(&["l", "--to", "127.0.0.1:1", "--topics", "a"]).contains("already exists"));
    let client = broker.client().await;
    eventually(CATCH_UP, "the link backing off", || async {
        matches!(
            client.describe_link("l").await.unwrap().state,
            quiver_client::LinkState::BackingOff { .. }
        )
    })
    .await;
    client.pause_link("l").await.unwrap();
    assert_eq!(
        client.describe_link("l").await.unwrap().state,
        quiver_client::LinkState::Paused
    );
    client.delete_link("l").await.unwrap();
    let e = client.describe_link("l").await.unwrap_err();
    assert_eq!(e.code(), Some(quiver_client::ErrorCode::LinkNotFound));
    assert_eq!(
        client
            .publish("a.b", NewRecord::new("x"))
            .await
            .unwrap_err()
            .code(),
        Some(quiver_client::ErrorCode::TopicNotFound)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catch_up_rides_through_packet_loss_and_a_partition() {
    const RECORDS: usize = 10_000;
    let hub_data = DataDir::new();
    let hub = Broker::start(&hub_data);
    // The edge reaches the hub only through the relay: 1 % of datagrams lost each way.
    let relay = Relay::start_seeded(hub.addr().parse().unwrap(), 7);
    relay.set_loss(0.01);
    let edge_data = DataDir::new();
    let edge = Broker::start(&edge_data);
    let client = edge.client().await;
    client
        .create_topic("sensors.a", Retention::default())
        .await
        .unwrap();
    publish(&client, "sensors.a", "reading", RECORDS).await;
    create_link(
        &edge,
        &edge_data,
        &[
            "up",
            "--to",
            &relay.addr().to_string(),
            "--topics",
            "sensors.>",
            "--ca",
            hub.cert().to_str().unwrap(),
            "--max-rate",
            "5000",
        ],
    );
    let watcher = hub.client().await;
    let topic = "sensors.a";
    eventually(CATCH_UP, "catch-up under way", || async {
        count(&watcher, topic).await >= 2_000
    })
    .await;
    // A partition in the middle of the catch-up: nothing gets through for a while.
    relay.partition();
    let dropped = relay.counts().1;
    eventually(
        CATCH_UP,
        "the partition dropping the link's packets",
        || async { relay.counts().1 >= dropped + 20 },
    )
    .await;
    relay.heal();
    arrived_once_in_order(&watcher, topic, "reading", RECORDS).await;
    assert!(
        relay.counts().1 > dropped + 20,
        "the relay did drop packets"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_edges_fan_into_one_hub_topic_each_once_and_in_order() {
    const RECORDS: usize = 3_000;
    let hub_data = DataDir::new();
    let mut hub = Broker::start(&hub_data);
    let hub_addr = hub.addr().to_owned();
    let hub_cert = hub.cert().to_str().unwrap().to_owned();
    let edges: Vec<(DataDir, Broker)> = (0..2)
        .map(|_| {
            let data = DataDir::new();
            let broker = Broker::start(&data);
            (data, broker)
        })
        .collect();
    let mut ids = Vec::new();
    for (i, (data, edge)) in edges.iter().enumerate() {
        let client = edge.client().await;
        ids.push(quiver_client::broker_id_hex(
            client.describe_broker().await.unwrap().id,
        ));
        client
            .create_topic("sensors.a", Retention::default())
            .await
            .unwrap();
        publish(&client, "sensors.a", &format!("edge{i}"), RECORDS).await;
        // Both into the same hub topic: `all.sensors.a`.
        create_link(
            edge,
            data,
            &[
                "up",
                "--to",
                &hub_addr,
                "--topics",
                "sensors.>",
                "--prefix",
                "all.",
                "--ca",
                &hub_cert,
                "--max-rate",
                "3000",
            ],
        );
    }
    let watcher = hub.client().await;
    let topic = "all.sensors.a";
    eventually(CATCH_UP, "both edges under way", || async {
        count(&watcher, topic).await >= RECORDS as u64
    })
    .await;
    hub = hub.restart(&hub_data, Stop::Kill, &[]);
    let watcher = hub.client().await;
    eventually(CATCH_UP, "every record of both edges", || async {
        count(&watcher, topic).await >= 2 * RECORDS as u64
    })
    .await;
    let records = read_all(&watcher, topic).await;
    assert_eq!(records.len(), 2 * RECORDS, "nothing stored twice");
    // Each edge's records in its order, with its id.
    let mut next = [0usize; 2];
    for record in &records {
        let text = String::from_utf8(record.payload.to_vec()).unwrap();
        let (edge, i) = text.split_once('-').unwrap();
        let edge: usize = edge.trim_start_matches("edge").parse().unwrap();
        assert_eq!(
            i.parse::<usize>().unwrap(),
            next[edge],
            "edge {edge} in order"
        );
        assert_eq!(header(record, headers::ORIGIN_BROKER), ids[edge]);
        next[edge] += 1;
    }
    assert_eq!(next, [RECORDS, RECORDS]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_without_the_grants_is_refused_and_says_so() {
    let hub_data = DataDir::new();
    let ops = principal(&hub_data, "ops", &["admin:>", "publish:>", "subscribe:>"]);
    let edge_token = principal(
        &hub_data,
        "edge1",
        &["admin:edge1.>", "publish:edge1.>", "subscribe:commands.>"],
    );
    let hub = Broker::start(&hub_data);
    let edge_data = DataDir::new();
    let edge = Broker::start(&edge_data);
    let client = edge.client().await;
    client
        .create_topic("sensors.a", Retention::default())
        .await
        .unwrap();
    publish(&client, "sensors.a", "reading", 10).await;
    let cert = hub.cert().to_str().unwrap().to_owned();
    let link = |name: &str, prefix: &str, token: Option<&str>| {
        let mut args = vec![
            name,
            "--to",
            hub.addr(),
            "--topics",
            "sensors.>",
            "--prefix",
            prefix,
            "--ca",
            &cert,
        ];
        if let Some(token) = token {
            args.extend_from_slice(&["--token", token]);
        }
        create_link(&edge, &edge_data, &args);
    };
    link("granted", "edge1.", Some(&edge_token));
    link("forbidden", "other.", Some(&edge_token));
    link("anonymous", "edge1.anon.", None);
    // Pulling needs the subscribe right on the remote's topics.
    create_link(
        &edge,
        &edge_data,
        &[
            "secrets",
            "--direction",
            "in",
            "--to",
            hub.addr(),
            "--topics",
            "secrets.>",
            "--ca",
            &cert,
            "--token",
            &edge_token,
        ],
    );
    for (name, says) in [
        ("forbidden", "Forbidden"),
        ("anonymous", "Unauthenticated"),
        ("secrets", "Forbidden"),
    ] {
        eventually(CATCH_UP, "the refused link reporting why", || async {
            let described = describe_link(&edge, &edge_data, name);
            described["state"] == "backing_off"
                && described["error"]
                    .as_str()
                    .is_some_and(|e| e.contains(says))
        })
        .await;
    }
    let watcher = hub.client_as(&ops).await;
    eventually(CATCH_UP, "the granted link forwarding", || async {
        count(&watcher, "edge1.sensors.a").await >= 10
    })
    .await;
    assert_eq!(count(&watcher, "other.sensors.a").await, 0);
    assert_eq!(
        describe_link(&edge, &edge_data, "granted")["state"],
        "connected"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_authenticates_with_a_client_certificate() {
    let hub_data = DataDir::new();
    let certs = tempfile::tempdir().unwrap();
    let (client_ca, cert, key) = quiver_tests::client_certificate(certs.path(), "edge1");
    let ops = principal(&hub_data, "ops", &["admin:>", "subscribe:>"]);
    quiver_tests::auth(
        &hub_data,
        &[
            "principal",
            "add",
            "edge1",
            "--grant",
            "admin:edge1.>",
            "--grant",
            "publish:edge1.>",
            "--cert-name",
            "edge1",
        ],
    );
    let hub = Broker::launch(
        &hub_data,
        &["--client-ca", client_ca.to_str().unwrap()],
        &[],
    );
    let edge_data = DataDir::new();
    let edge = Broker::start(&edge_data);
    let client = edge.client().await;
    client
        .create_topic("sensors.a", Retention::default())
        .await
        .unwrap();
    publish(&client, "sensors.a", "reading", 10).await;
    create_link(
        &edge,
        &edge_data,
        &[
            "up",
            "--to",
            hub.addr(),
            "--topics",
            "sensors.>",
            "--prefix",
            "edge1.",
            "--ca",
            hub.cert().to_str().unwrap(),
            "--cert",
            cert.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
        ],
    );
    let watcher = hub.client_as(&ops).await;
    arrived_once_in_order(&watcher, "edge1.sensors.a", "reading", 10).await;
    assert_eq!(describe_link(&edge, &edge_data, "up")["state"], "connected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_backlog_is_forwarded_with_many_batches_in_flight_and_no_refusal() {
    const RECORDS: usize = 60_000;
    let hub_data = DataDir::new();
    let hub = Broker::start(&hub_data);
    let edge_data = DataDir::new();
    let edge = Broker::start(&edge_data);
    let client = edge.client().await;
    client
        .create_topic("bulk", Retention::default())
        .await
        .unwrap();
    publish(&client, "bulk", "r", RECORDS).await;
    // No rate limit: the link keeps several forwards in flight, each continuing where
    // the one before it (not yet stored) ends.
    create_link(
        &edge,
        &edge_data,
        &[
            "up",
            "--to",
            hub.addr(),
            "--topics",
            "bulk",
            "--ca",
            hub.cert().to_str().unwrap(),
        ],
    );
    let watcher = hub.client().await;
    eventually(CATCH_UP, "the backlog at the hub", || async {
        count(&watcher, "bulk").await >= RECORDS as u64
    })
    .await;
    let described = describe_link(&edge, &edge_data, "up");
    assert_eq!(described["failures"], 0, "{described}");
    assert_eq!(described["forwarded"], RECORDS as u64, "{described}");
    assert_eq!(count(&watcher, "bulk").await, RECORDS as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_thin_records_at_the_edge_and_filter_them_at_the_hub() {
    let levels = ["debug", "info", "warn", "error"];
    let filter = |at_least: &str| {
        Stage::new("json-filter")
            .param("where", format!("level >= {at_least}"))
            .param("order", "debug,info,warn,error")
    };
    let (hub_data, edge_data) = (DataDir::new(), DataDir::new());
    let (hub, edge) = (Broker::start(&hub_data), Broker::start(&edge_data));
    let (hub_client, edge_client) = (hub.client().await, edge.client().await);
    let wasm = read_plugin(&example_plugin("json-filter"));
    for client in [&hub_client, &edge_client] {
        client
            .deploy_plugin("json-filter", wasm.clone(), None)
            .await
            .unwrap();
    }
    // The hub keeps warnings and errors of what arrives.
    hub_client
        .create_topic("edge1.logs", Retention::default())
        .await
        .unwrap();
    hub_client
        .attach_plugin("edge1.logs", filter("warn"))
        .await
        .unwrap();
    edge_client
        .create_topic("logs", Retention::default())
        .await
        .unwrap();
    for i in 0..20 {
        let level = levels[i % 4];
        edge_client
            .publish(
                "logs",
                NewRecord::new(format!(r#"{{"level":"{level}","n":{i}}}"#)),
            )
            .await
            .unwrap();
    }
    // The edge's link leaves debug records behind.
    create_link(
        &edge,
        &edge_data,
        &[
            "up",
            "--to",
            hub.addr(),
            "--topics",
            "logs",
            "--prefix",
            "edge1.",
            "--ca",
            hub.cert().to_str().unwrap(),
            "--plugin",
            "json-filter",
            "--param",
            "where=level >= info",
            "--param",
            "order=debug,info,warn,error",
        ],
    );
    eventually(CATCH_UP, "the link caught up", || async {
        let described = describe_link(&edge, &edge_data, "up");
        described["lag"] == 0 && described["state"] == "connected"
    })
    .await;
    eventually(
        CATCH_UP,
        "the hub holding the warnings and errors",
        || async { count(&hub_client, "edge1.logs").await >= 10 },
    )
    .await;
    let records = read_all(&hub_client, "edge1.logs").await;
    let offsets: Vec<String> = records
        .iter()
        .map(|r| header(r, headers::ORIGIN_OFFSET))
        .collect();
    let want: Vec<String> = (0..20)
        .filter(|i| i % 4 >= 2)
        .map(|i| i.to_string())
        .collect();
    assert_eq!(
        offsets, want,
        "warn and error records, with their origin offsets"
    );
    for record in &records {
        assert_eq!(header(record, headers::ORIGIN_TOPIC), "logs");
    }
    let described = describe_link(&edge, &edge_data, "up");
    assert_eq!(described["failures"], 0, "{described}");
}
