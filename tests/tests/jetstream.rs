//! Links whose remote is a real three-server NATS JetStream cluster on loopback
//! (`tests/src/nats.rs`): a backlog forwarded into an R3 stream across `kill -9` of a
//! NATS server and of the Quiver edge, loss of quorum, an `in` link feeding a local
//! topic across a Quiver kill, a link's plugin thinning records before they cross over
//! TLS, and every way the remote can be wrong. Every check of
//! what reached JetStream reads the stream back with a JetStream consumer: 0 lost, 0
//! duplicated, order per topic (docs/scaling.md).

#![allow(clippy::unwrap_used)] // in tests a failed unwrap is a failed test

use std::time::Duration;

use async_nats::jetstream;
use futures::StreamExt;
use quiver_client::{Client, NewRecord, Retention};
use quiver_tests::nats::{Cluster, ClusterOptions};
use quiver_tests::{
    Broker, DataDir, Stop, create_link, describe_link, eventually, example_plugin, read_all,
    read_plugin,
};

/// How long a link may take to catch up in these tests.
const CATCH_UP: Duration = Duration::from_secs(180);

/// Creates a link on `broker` to every server of `cluster` (`--to` for each).
fn create_link_to(broker: &Broker, data: &DataDir, cluster: &Cluster, args: &[&str]) -> String {
    let urls = cluster.urls();
    let mut all = args.to_vec();
    for url in &urls {
        all.extend_from_slice(&["--to", url]);
    }
    create_link(broker, data, &all)
}

/// Publishes `n` numbered records (`prefix-i`, i from `start`) to `topic`.
async fn publish(client: &Client, topic: &str, prefix: &str, start: usize, n: usize) {
    let acks: Vec<_> = (start..start + n)
        .map(|i| client.publish(topic, NewRecord::new(format!("{prefix}-{i}"))))
        .collect();
    for ack in acks {
        ack.await.unwrap();
    }
}

/// The number of messages the stream holds for `subject`.
async fn stored(cluster: &Cluster, stream: &str, subject: &str) -> u64 {
    let js = jetstream::new(cluster.client().await);
    let Ok(mut stream) = js.get_stream(stream).await else {
        return 0;
    };
    let Ok(info) = stream.info().await else {
        return 0;
    };
    if info.state.messages == 0 {
        return 0;
    }
    let Ok(mut subjects) = stream.info_with_subjects(subject).await else {
        return 0;
    };
    while let Some(Ok((name, count))) = subjects.next().await {
        if name == subject {
            return u64::try_from(count).unwrap();
        }
    }
    0
}

/// A header of a JetStream message, as text.
fn nats_header(message: &jetstream::Message, name: &str) -> String {
    message
        .headers
        .as_ref()
        .and_then(|h| h.get(name))
        .unwrap_or_else(|| panic!("header {name} missing"))
        .as_str()
        .to_owned()
}

/// Waits until the stream holds `n` messages for `subject`, then reads them back with
/// a JetStream consumer and checks they are `prefix-0 … prefix-(n-1)` of `topic`, each
/// once and in order, with their origin headers.
async fn arrived_once_in_order(
    cluster: &Cluster,
    stream: &str,
    subject: &str,
    topic: &str,
    prefix: &str,
    n: usize,
) {
    eventually(CATCH_UP, "every record in the stream", || async {
        stored(cluster, stream, subject).await >= n as u64
    })
    .await;
    let messages = cluster.read_stream(stream, subject, n).await;
    assert_eq!(messages.len(), n, "nothing lost, nothing stored twice");
    for (i, message) in messages.iter().enumerate() {
        assert_eq!(
            message.payload,
            format!("{prefix}-{i}").as_bytes(),
            "order kept"
        );
        assert_eq!(nats_header(message, "Quiver-Origin-Offset"), i.to_string());
        assert_eq!(nats_header(message, "Quiver-Origin-Topic"), topic);
        assert_eq!(
            nats_header(message, "Nats-Msg-Id")
                .rsplit(':')
                .next()
                .unwrap(),
            i.to_string()
        );
    }
}

/// Which server of the cluster the link is connected to, once it is.
async fn connected_server(broker: &Broker, data: &DataDir, link: &str) -> usize {
    let mut server = None;
    eventually(CATCH_UP, "the link connected", || {
        let info = describe_link(broker, data, link);
        server = info["connected_to"]
            .as_str()
            .and_then(|addr| addr.strip_prefix('n'))
            .and_then(|rest| rest.split(' ').next())
            .and_then(|n| n.parse::<usize>().ok());
        async move { server.is_some() }
    })
    .await;
    server.unwrap() - 1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_reaches_an_r3_stream_once_in_order_across_server_and_edge_kills() {
    const RECORDS: usize = 12_000;
    let mut cluster = Cluster::start(3);
    cluster.wait_jetstream_ready().await;

    let data = DataDir::new();
    let mut edge = Broker::start(&data);
    let client = edge.client().await;
    client
        .create_topic("sensors.a", Retention::default())
        .await
        .unwrap();
    publish(&client, "sensors.a", "reading", 0, RECORDS).await;

    let args = [
        "hub",
        "--stream",
        "EDGES",
        "--create-stream",
        "--replicas",
        "3",
        "--subject-prefix",
        "edge1",
        "--topics",
        "sensors.>",
        "--max-rate",
        "1000",
    ];
    let created = create_link_to(&edge, &data, &cluster, &args);
    assert!(created.contains("created link hub"), "{created}");

    // The NATS server the link uses is killed during the catch-up, then the edge
    // twice; the link goes on with the others, and from where the stream ends.
    let subject = "edge1.sensors.a";
    for (at, victim) in [(2_000, "nats"), (5_000, "edge"), (8_000, "edge")] {
        eventually(CATCH_UP, "the stream catching up", || async {
            stored(&cluster, "EDGES", subject).await >= at
        })
        .await;
        if victim == "nats" {
            let server = connected_server(&edge, &data, "hub").await;
            cluster.kill9(server);
            // `link describe` names the server the link reconnected to.
            let killed = format!("n{} ", server + 1);
            eventually(CATCH_UP, "the link on another server", || async {
                describe_link(&edge, &data, "hub")["connected_to"]
                    .as_str()
                    .is_some_and(|addr| !addr.starts_with(&killed))
            })
            .await;
            eventually(
                CATCH_UP,
                "the link going on with the other servers",
                || async { stored(&cluster, "EDGES", subject).await >= at + 1_000 },
            )
            .await;
            cluster.restart(server);
        } else {
            edge = edge.restart(&data, Stop::Kill, &[]);
        }
    }
    arrived_once_in_order(&cluster, "EDGES", subject, "sensors.a", "reading", RECORDS).await;

    let info = describe_link(&edge, &data, "hub");
    assert_eq!(info["stream"], "EDGES");
    assert_eq!(info["per_topic"][0]["next"], RECORDS as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_without_quorum_waits_and_then_completes() {
    const RECORDS: usize = 4_000;
    let mut cluster = Cluster::start(3);
    cluster.wait_jetstream_ready().await;

    let data = DataDir::new();
    let edge = Broker::start(&data);
    let client = edge.client().await;
    client
        .create_topic("orders", Retention::default())
        .await
        .unwrap();
    let args = [
        "hub",
        "--stream",
        "ORDERS",
        "--create-stream",
        "--replicas",
        "3",
        "--topics",
        "orders",
    ];
    create_link_to(&edge, &data, &cluster, &args);
    publish(&client, "orders", "order", 0, 1_000).await;
    eventually(CATCH_UP, "the first records in the stream", || async {
        stored(&cluster, "ORDERS", "orders").await >= 1_000
    })
    .await;

    // Two of three servers down: no quorum. The link waits and says why; records
    // stay at the edge.
    cluster.kill9(1);
    cluster.kill9(2);
    publish(&client, "orders", "order", 1_000, RECORDS - 1_000).await;
    // The error is taken from the same description: the link tries again at once
    // after its delay, and a later description may show the new attempt.
    let mut error = String::new();
    eventually(CATCH_UP, "the link reporting the outage", || {
        let info = describe_link(&edge, &data, "hub");
        let waiting = info["state"] == "backing_off" && info["lag"].as_u64().unwrap() > 0;
        if waiting {
            error = info["error"].as_str().unwrap().to_owned();
        }
        async move { waiting }
    })
    .await;
    assert!(!error.is_empty(), "the link says why it waits");

    cluster.restart(1);
    cluster.restart(2);
    arrived_once_in_order(&cluster, "ORDERS", "orders", "orders", "order", RECORDS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_link_feeds_a_local_topic_once_in_order_across_a_quiver_kill() {
    const MESSAGES: usize = 6_000;
    let cluster = Cluster::start(3);
    cluster.wait_jetstream_ready().await;
    cluster.create_stream("COMMANDS", &["cmd.>"], 3).await;
    let js = jetstream::new(cluster.client().await);
    let send = |from: usize, n: usize| {
        let js = js.clone();
        async move {
            let mut acks = Vec::new();
            for i in from..from + n {
                acks.push(
                    js.publish("cmd.edge1", format!("command-{i}").into())
                        .await
                        .unwrap(),
                );
            }
            for ack in acks {
                ack.await.unwrap();
            }
        }
    };
    cluster
        .publish_first(&js, "cmd.edge1", "command-0".to_owned())
        .await;
    send(1, MESSAGES / 2 - 1).await;

    let data = DataDir::new();
    let mut edge = Broker::start(&data);
    let args = [
        "commands",
        "--direction",
        "in",
        "--stream",
        "COMMANDS",
        "--subject-prefix",
        "cmd",
        "--topics",
        "edge1",
        "--prefix",
        "from-hub.",
    ];
    create_link_to(&edge, &data, &cluster, &args);
    let mut client = edge.client().await;
    eventually(CATCH_UP, "the first commands at the edge", || async {
        client
            .describe_topic("from-hub.edge1")
            .await
            .is_ok_and(|t| t.records >= 1_000)
    })
    .await;
    edge = edge.restart(&data, Stop::Kill, &[]);
    send(MESSAGES / 2, MESSAGES / 2).await;
    client = edge.client().await;
    eventually(CATCH_UP, "every command at the edge", || async {
        client
            .describe_topic("from-hub.edge1")
            .await
            .is_ok_and(|t| t.records >= MESSAGES as u64)
    })
    .await;
    let records = read_all(&client, "from-hub.edge1").await;
    assert_eq!(records.len(), MESSAGES, "nothing stored twice");
    for (i, record) in records.iter().enumerate() {
        assert_eq!(
            record.payload,
            format!("command-{i}").as_bytes(),
            "order kept"
        );
        assert_eq!(
            record.header("quiver-origin-offset").unwrap(),
            (i + 1).to_string().as_bytes(),
            "the stream sequence is the origin offset"
        );
    }
    // Everything stored was acknowledged to JetStream.
    let stream = js.get_stream("COMMANDS").await.unwrap();
    eventually(CATCH_UP, "every message acknowledged", || async {
        stream
            .consumer_info("quiver-commands")
            .await
            .is_ok_and(|c| c.num_ack_pending == 0 && c.num_pending == 0)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_that_is_wrong_is_reported_in_words() {
    let data = DataDir::new();
    let edge = Broker::start(&data);
    let client = edge.client().await;
    client
        .create_topic("metrics", Retention::default())
        .await
        .unwrap();
    publish(&client, "metrics", "m", 0, 10).await;
    let state_error = |link: &str| {
        let info = describe_link(&edge, &data, link);
        info["error"].as_str().unwrap_or_default().to_owned()
    };
    let wait_for = |link: &'static str, words: &'static str| {
        let state_error = &state_error;
        async move {
            eventually(CATCH_UP, words, || async {
                state_error(link).contains(words)
            })
            .await;
        }
    };

    // No JetStream at all.
    let plain = ClusterOptions::new(1).without_jetstream().start();
    create_link(
        &edge,
        &data,
        &[
            "plain",
            "--to",
            &plain.url(0),
            "--stream",
            "S",
            "--topics",
            "metrics",
        ],
    );
    wait_for("plain", "has no JetStream").await;

    // A stream that is missing, one whose subjects do not cover the link's, one that
    // does not allow atomic batches.
    let cluster = Cluster::start(1);
    cluster.wait_jetstream_ready().await;
    cluster.create_stream("OTHER", &["other.>"], 1).await;
    let url = cluster.url(0);
    create_link(
        &edge,
        &data,
        &[
            "missing", "--to", &url, "--stream", "NOPE", "--topics", "metrics",
        ],
    );
    wait_for("missing", "does not exist").await;
    create_link(
        &edge,
        &data,
        &[
            "uncovered",
            "--to",
            &url,
            "--stream",
            "OTHER",
            "--topics",
            "metrics",
        ],
    );
    wait_for("uncovered", "do not cover").await;
    create_link(
        &edge,
        &data,
        &[
            "plainstream",
            "--to",
            &url,
            "--stream",
            "OTHER",
            "--subject-prefix",
            "other",
            "--topics",
            "metrics",
        ],
    );
    wait_for("plainstream", "atomic").await;

    // Bad arguments are refused before anything runs.
    let refused = edge.cli(
        &data,
        &[
            "link",
            "create",
            "bad",
            "--to",
            "127.0.0.1:4222",
            "--stream",
            "S",
            "--topics",
            "x",
        ],
        "",
    );
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("not a NATS server URL"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permissions_and_oversized_records_are_reported_and_the_link_goes_on() {
    // A server whose max payload is 4 KiB, with a user that may publish only under
    // `allowed.>` (and use JetStream's API).
    let cluster = ClusterOptions::new(1)
        .config(
            r#"max_payload: 4096
authorization {
  users = [
    { user: admin, password: admin }
    { user: edge, password: edge, permissions: {
        publish: { allow: ["allowed.>", "$JS.API.>", "$JS.ACK.>"] }
        subscribe: { allow: ["_INBOX.>"] }
    } }
    { user: puller, password: puller, permissions: {
        publish: { allow: ["$JS.API.>", "$JS.ACK.>"], deny: ["$JS.API.CONSUMER.MSG.NEXT.>"] }
        subscribe: { allow: ["_INBOX.>"] }
    } }
  ]
}"#,
        )
        .user("admin", "admin")
        .start();
    cluster.wait_jetstream_ready().await;

    let data = DataDir::new();
    let edge = Broker::start(&data);
    let client = edge.client().await;
    for topic in ["metrics", "big"] {
        client
            .create_topic(topic, Retention::default())
            .await
            .unwrap();
    }
    publish(&client, "metrics", "m", 0, 10).await;
    let url = cluster.url(0);

    // Denied: the stream is created (the API is allowed), publishing to it is not.
    create_link(
        &edge,
        &data,
        &[
            "denied",
            "--to",
            &url,
            "--user",
            "edge",
            "--password",
            "edge",
            "--stream",
            "DENIED",
            "--create-stream",
            "--subject-prefix",
            "denied",
            "--topics",
            "metrics",
        ],
    );
    eventually(CATCH_UP, "the refusal reported", || async {
        let info = describe_link(&edge, &data, "denied");
        info["error"]
            .as_str()
            .is_some_and(|e| e.contains("Permissions Violation"))
    })
    .await;
    assert_eq!(stored(&cluster, "DENIED", "denied.metrics").await, 0);

    // An `in` link whose user may not pull: refused, and said so (not a silent wait).
    cluster.create_stream("PULLED", &["pulled.>"], 1).await;
    create_link(
        &edge,
        &data,
        &[
            "pull",
            "--direction",
            "in",
            "--to",
            &url,
            "--user",
            "puller",
            "--password",
            "puller",
            "--stream",
            "PULLED",
            "--subject-prefix",
            "pulled",
            "--topics",
            ">",
        ],
    );
    eventually(CATCH_UP, "the refused pull reported", || async {
        let info = describe_link(&edge, &data, "pull");
        info["state"] == "backing_off"
            && info["error"]
                .as_str()
                .is_some_and(|e| e.contains("Permissions Violation"))
    })
    .await;

    // Allowed, with one record too large for the server: it is dead-lettered at the
    // edge with the reason, and the records around it are forwarded.
    publish(&client, "big", "small", 0, 3).await;
    client
        .publish("big", NewRecord::new(vec![b'x'; 8192]))
        .await
        .unwrap();
    publish(&client, "big", "small", 3, 3).await;
    create_link(
        &edge,
        &data,
        &[
            "allowed",
            "--to",
            &url,
            "--user",
            "edge",
            "--password",
            "edge",
            "--stream",
            "ALLOWED",
            "--create-stream",
            "--subject-prefix",
            "allowed",
            "--topics",
            "big",
        ],
    );
    eventually(CATCH_UP, "the small records in the stream", || async {
        stored(&cluster, "ALLOWED", "allowed.big").await >= 6
    })
    .await;
    let messages = cluster.read_stream("ALLOWED", "allowed.big", 6).await;
    let payloads: Vec<_> = messages.iter().map(|m| m.payload.to_vec()).collect();
    let expected: Vec<_> = (0..6).map(|i| format!("small-{i}").into_bytes()).collect();
    assert_eq!(payloads, expected);
    let dead = read_all(&client, "dlq.big").await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].payload.len(), 8192);
    let reason = String::from_utf8(dead[0].header("quiver-dlq-reason").unwrap().to_vec()).unwrap();
    assert!(reason.contains("max payload of 4096"), "{reason}");
    assert_eq!(
        describe_link(&edge, &data, "allowed")["per_topic"][0]["dead_lettered"],
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_thins_records_before_they_cross_over_tls() {
    // A server that offers TLS with a certificate for 127.0.0.1 (the harness's own
    // clients may still connect in plain text).
    let certs = tempfile::tempdir().unwrap();
    let (ca, cert, key) = quiver_tests::issue_certificate(certs.path(), "127.0.0.1");
    let cluster = ClusterOptions::new(1)
        .config(&format!(
            "tls {{\n  cert_file: {:?}\n  key_file: {:?}\n}}\nallow_non_tls: true\n",
            cert.to_str().unwrap(),
            key.to_str().unwrap()
        ))
        .start();
    cluster.wait_jetstream_ready().await;

    let data = DataDir::new();
    let edge = Broker::start(&data);
    let client = edge.client().await;
    client
        .deploy_plugin(
            "json-filter",
            read_plugin(&example_plugin("json-filter")),
            None,
        )
        .await
        .unwrap();
    client
        .create_topic("logs", Retention::default())
        .await
        .unwrap();
    let levels = ["debug", "info", "warn", "error"];
    for i in 0..40 {
        let level = levels[i % 4];
        client
            .publish(
                "logs",
                NewRecord::new(format!(r#"{{"level":"{level}","n":{i}}}"#)),
            )
            .await
            .unwrap();
    }
    // Only warnings and errors cross, over TLS.
    let url = cluster.url(0);
    create_link(
        &edge,
        &data,
        &[
            "logs",
            "--to",
            &url,
            "--tls-ca",
            ca.to_str().unwrap(),
            "--stream",
            "LOGS",
            "--create-stream",
            "--subject-prefix",
            "edge1",
            "--topics",
            "logs",
            "--plugin",
            "json-filter",
            "--param",
            "where=level >= warn",
            "--param",
            "order=debug,info,warn,error",
        ],
    );
    eventually(CATCH_UP, "the link through its topic", || async {
        describe_link(&edge, &data, "logs")["per_topic"][0]["next"] == 40
    })
    .await;
    let messages = cluster.read_stream("LOGS", "edge1.logs", 20).await;
    let offsets: Vec<u64> = messages
        .iter()
        .map(|m| nats_header(m, "Quiver-Origin-Offset").parse().unwrap())
        .collect();
    let expected: Vec<u64> = (0..40).filter(|i| i % 4 >= 2).collect();
    assert_eq!(
        offsets, expected,
        "warnings and errors, in order, each once"
    );

    // A CA the server's certificate does not chain to is refused, and said so.
    let other = tempfile::tempdir().unwrap();
    let (wrong_ca, _, _) = quiver_tests::issue_certificate(other.path(), "127.0.0.1");
    create_link(
        &edge,
        &data,
        &[
            "untrusted",
            "--to",
            &url,
            "--tls-ca",
            wrong_ca.to_str().unwrap(),
            "--stream",
            "LOGS",
            "--subject-prefix",
            "edge1",
            "--topics",
            "logs",
        ],
    );
    eventually(CATCH_UP, "the untrusted server reported", || async {
        describe_link(&edge, &data, "untrusted")["error"]
            .as_str()
            .is_some_and(|e| e.contains("cannot connect"))
    })
    .await;
}
