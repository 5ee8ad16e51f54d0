//! The `quiver` CLI against a real broker: topic admin, pub from arguments and stdin,
//! sub as text and JSON, exit codes and messages, configuration files and operator
//! certificates.

#![allow(clippy::unwrap_used)] // in tests a failed unwrap is a failed test

use std::process::Output;

use quiver_client::{Client, NewRecord, Retention};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use std::time::Duration;

use quiver_tests::live::{Lines, LiveCli, numbered_lines};
use quiver_tests::{Broker, DataDir, cli, eventually, succeeded};
use serde_json::Value;

fn stderr(output: &Output) -> String {
    String::from_utf8(output.stderr.clone()).unwrap()
}

fn quiver(broker: &Broker, data: &DataDir, args: &[&str], stdin: &str) -> Output {
    broker.cli(data, args, stdin)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_commands_manage_topics() {
    let data = DataDir::new();
    let broker = Broker::start(&data);
    let out = succeeded(quiver(
        &broker,
        &data,
        &[
            "topic",
            "create",
            "sensors.eu.temp",
            "--max-records",
            "100",
            "--max-age",
            "1h",
        ],
        "",
    ));
    assert_eq!(out.trim(), "created sensors.eu.temp");
    succeeded(quiver(
        &broker,
        &data,
        &[
            "topic",
            "create",
            "logs.app",
            "--durability",
            "batched",
            "--flush-interval",
            "20ms",
        ],
        "",
    ));

    let table = succeeded(quiver(&broker, &data, &["topic", "list"], ""));
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("NAME"), "{table}");
    assert!(
        lines[1].starts_with("logs.app") && lines[1].contains("unlimited"),
        "{table}"
    );
    assert!(lines[2].starts_with("sensors.eu.temp"), "{table}");
    assert!(
        lines[2].contains("age 1h") && lines[2].contains("records 100"),
        "{table}"
    );

    let json = succeeded(quiver(&broker, &data, &["topic", "list", "--json"], ""));
    let topics: Vec<Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(topics.len(), 2);
    assert_eq!(topics[1]["name"], "sensors.eu.temp");
    assert_eq!(topics[1]["retention"]["max_records"], 100);
    assert_eq!(topics[1]["retention"]["max_age_ms"], 3_600_000);
    assert_eq!(topics[1]["last_offset"], Value::Null);
    assert_eq!(topics[1]["durability"]["mode"], "fsync");
    assert_eq!(topics[0]["durability"]["mode"], "batched");
    assert_eq!(topics[0]["durability"]["flush_interval_ms"], 20);

    let described = succeeded(quiver(
        &broker,
        &data,
        &["topic", "describe", "sensors.eu.temp"],
        "",
    ));
    assert!(described.contains("records:      0"), "{described}");
    assert!(described.contains("durability:   fsync"), "{described}");

    assert_eq!(
        succeeded(quiver(&broker, &data, &["topic", "delete", "logs.app"], "")).trim(),
        "deleted logs.app"
    );
    let failed = quiver(&broker, &data, &["topic", "describe", "logs.app"], "");
    assert!(!failed.status.success());
    assert!(stderr(&failed).contains("topic `logs.app` does not exist"));
}

/// `quiver topic list | head -0`: the reader is gone before the CLI writes. The CLI
/// ends (by SIGPIPE, like other command-line tools) without panicking.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_into_a_closed_pipe_ends_quietly() {
    let data = DataDir::new();
    let broker = Broker::start(&data);
    succeeded(quiver(&broker, &data, &["topic", "create", "t"], ""));
    let mut child = std::process::Command::new(quiver_tests::quiver_bin())
        .args(["topic", "list"])
        .current_dir(data.root())
        .env("QUIVER_SERVER", broker.addr())
        .env_remove("QUIVER_CA")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take()); // closes the only reading end
    let output = child.wait_with_output().unwrap();
    let stderr = stderr(&output);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.is_empty(), "nothing to say about it: {stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pub_and_sub_move_records() {
    let data = DataDir::new();
    let broker = Broker::start(&data);
    succeeded(quiver(
        &broker,
        &data,
        &["topic", "create", "app.events"],
        "",
    ));

    let offsets = succeeded(quiver(
        &broker,
        &data,
        &["pub", "app.events"],
        "first line\nsecond line\n\nfourth line\n",
    ));
    assert_eq!(
        offsets, "0\n1\n2\n3\n",
        "one offset per stdin line, in order"
    );
    let offset = succeeded(quiver(
        &broker,
        &data,
        &[
            "pub",
            "app.events",
            "with metadata",
            "--key",
            "user-1",
            "--header",
            "source=cli",
            "--header",
            "trace=a=b",
        ],
        "",
    ));
    assert_eq!(offset.trim(), "4");
    // A binary payload through the SDK, to see it base64-encoded.
    let client = Client::builder()
        .ca_file(broker.cert())
        .unwrap()
        .connect(broker.addr())
        .await
        .unwrap();
    client
        .publish("app.events", NewRecord::new(vec![0xff, 0x00]))
        .await
        .unwrap();

    let text = succeeded(quiver(
        &broker,
        &data,
        &["sub", "app.events", "--from", "earliest", "--count", "5"],
        "",
    ));
    assert_eq!(
        text,
        "first line\nsecond line\n\nfourth line\nwith metadata\n"
    );

    let json = succeeded(quiver(
        &broker,
        &data,
        &["sub", "app.>", "--from", "4", "--count", "2", "--json"],
        "",
    ));
    let records: Vec<Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records[0]["topic"], "app.events");
    assert_eq!(records[0]["offset"], 4);
    assert!(records[0]["timestamp"].as_u64().unwrap() > 0);
    assert_eq!(records[0]["key"], "user-1");
    assert_eq!(records[0]["headers"]["source"], "cli");
    assert_eq!(records[0]["headers"]["trace"], "a=b");
    assert_eq!(records[0]["payload"], "with metadata");
    assert_eq!(records[1]["payload_base64"], "/wA=");
    assert!(records[1].get("payload").is_none());

    // Many stdin lines, pipelined: stored in input order.
    succeeded(quiver(&broker, &data, &["topic", "create", "ordered"], ""));
    let lines: String = (0..3000).map(|i| format!("line {i}\n")).collect();
    let offsets = succeeded(quiver(&broker, &data, &["pub", "ordered"], &lines));
    let offsets: Vec<u64> = offsets.lines().map(|o| o.parse().unwrap()).collect();
    let misplaced = offsets.iter().zip(0..).find(|(got, want)| **got != *want);
    assert_eq!(offsets.len(), 3000);
    assert_eq!(misplaced, None, "line N is stored at offset N");
    let echoed = succeeded(quiver(
        &broker,
        &data,
        &["sub", "ordered", "--from", "earliest", "--count", "3000"],
        "",
    ));
    assert!(echoed == lines, "the records read back in stdin's order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_exit_non_zero_with_a_message() {
    let data = DataDir::new();
    let broker = Broker::start(&data);
    // Each with its exit status: 3 not found, 2 usage (`quiver --help` lists them).
    let failures: [(&[&str], &str, i32); 5] = [
        (
            &["pub", "missing.topic", "x"],
            "topic `missing.topic` does not exist",
            3,
        ),
        (&["topic", "create", "bad name"], "invalid topic name", 2),
        (&["sub", "a.>.b", "--count", "1"], "invalid pattern", 2),
        (
            &["sub", "x", "--from", "yesterday"],
            "not earliest, latest",
            2,
        ),
        (
            &["pub", "t", "x", "--header", "novalue"],
            "is not NAME=VALUE",
            2,
        ),
    ];
    for (args, message, status) in failures {
        let output = quiver(&broker, &data, args, "");
        assert_eq!(
            output.status.code(),
            Some(status),
            "{args:?}: {}",
            stderr(&output)
        );
        assert!(
            stderr(&output).contains(message),
            "{args:?}: expected {message:?} in {}",
            stderr(&output)
        );
    }

    // Away from the data dir there is no certificate to find.
    let elsewhere = tempfile::tempdir().unwrap();
    let output = cli(
        elsewhere.path(),
        &["topic", "list"],
        &[("QUIVER_SERVER", broker.addr())],
        "",
    );
    assert!(!output.status.success());
    assert!(stderr(&output).contains("--ca"), "{}", stderr(&output));
    // QUIVER_CA points at it from anywhere.
    let cert = broker.cert().to_str().unwrap();
    let output = cli(
        elsewhere.path(),
        &["topic", "list"],
        &[("QUIVER_SERVER", broker.addr()), ("QUIVER_CA", cert)],
        "",
    );
    assert!(output.status.success(), "{}", stderr(&output));

    // Nothing listening.
    let output = cli(
        data.root(),
        &[
            "topic",
            "list",
            "--server",
            "127.0.0.1:9",
            "--connect-timeout",
            "1s",
        ],
        &[],
        "",
    );
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("cannot connect to 127.0.0.1:9: no answer within 1s"),
        "{}",
        stderr(&output)
    );

    // Several addresses are tried in turn: the first that answers serves the command;
    // when none does, the error names each and why.
    let servers = format!("127.0.0.1:9,{}", broker.addr());
    let listed = cli(
        data.root(),
        &[
            "topic",
            "list",
            "--server",
            &servers,
            "--connect-timeout",
            "1s",
        ],
        &[],
        "",
    );
    assert!(listed.status.success(), "{}", stderr(&listed));
    let output = cli(
        data.root(),
        &["topic", "list", "--connect-timeout", "1s"],
        &[("QUIVER_SERVER", "127.0.0.1:9,127.0.0.1:10")],
        "",
    );
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains(
            "cannot connect to 127.0.0.1:9, 127.0.0.1:10: 127.0.0.1:9: no answer within 1s; \
             127.0.0.1:10: no answer within 1s"
        ),
        "{}",
        stderr(&output)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_reads_a_config_file_and_flags_override_it() {
    let data = DataDir::new();
    let config = data.root().join("quiver.toml");
    std::fs::write(
        &config,
        "listen = \"127.0.0.1:1\"\n[limits]\nmax_record_size = \"2 KiB\"\nmax_batch_records = 5\n",
    )
    .unwrap();
    // --listen on the command line wins over the file's port 1.
    let broker = Broker::launch(&data, &["--config", config.to_str().unwrap()], &[]);
    let client = broker.client().await;
    assert_eq!(client.limits().max_record_size, 2048);
    assert_eq!(client.limits().max_batch_records, 5);

    let bad = data.root().join("bad.toml");
    std::fs::write(&bad, "[limits]\nmax_record_sise = 5\n").unwrap();
    let output = cli(
        data.root(),
        &[
            "serve",
            "--config",
            bad.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ],
        &[],
        "",
    );
    assert!(!output.status.success(), "a typo in the config is refused");
    assert!(
        stderr(&output).contains("max_record_sise"),
        "{}",
        stderr(&output)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_can_bring_their_own_certificate() {
    let data = DataDir::new();
    let (ca_pem, cert, key) = quiver_tests::issue_certificate(data.root(), "localhost");
    let broker = Broker::launch(
        &data,
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(
        broker.cert(),
        cert,
        "the ready line names the configured certificate"
    );
    assert!(!data.cert().exists(), "no self-signed pair is made");
    let client = Client::builder()
        .ca_file(&ca_pem)
        .unwrap()
        .server_name("localhost")
        .connect(broker.addr())
        .await
        .unwrap();
    client
        .create_topic("secure", Retention::default())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribing_to_a_topic_that_does_not_exist_says_it_waits_for_it() {
    let data = DataDir::new();
    let broker = Broker::start(&data);
    let env = [("QUIVER_SERVER", broker.addr())];
    let mut subs = Vec::new();
    for (pattern, note) in [
        ("orders.>", "no topic matches `orders.>` yet"),
        ("orders.new", "topic `orders.new` does not exist (yet)"),
    ] {
        let args = ["sub", pattern, "--from", "earliest", "--count", "1"];
        let sub = LiveCli::spawn(data.root(), &args, &env, Lines::default(), None);
        sub.stderr
            .wait_until("the note", Duration::from_secs(30), |lines| {
                lines.iter().any(|l| l.contains(note))
            });
        subs.push(sub);
    }
    // They do wait: a topic created later is read.
    succeeded(quiver(
        &broker,
        &data,
        &["topic", "create", "orders.new"],
        "",
    ));
    succeeded(quiver(&broker, &data, &["pub", "orders.new", "first"], ""));
    for sub in subs {
        let (stdout, _) = sub.succeed(Duration::from_secs(30));
        assert_eq!(stdout, ["first"]);
    }
    // An existing topic gets no note.
    let out = quiver(
        &broker,
        &data,
        &["sub", "orders.new", "--from", "earliest", "--count", "1"],
        "",
    );
    assert!(!stderr(&out).contains("note:"), "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_during_a_stdin_publish_reports_what_was_stored() {
    const LINES: usize = 2_000_000;
    let data = DataDir::new();
    let broker = Broker::start(&data);
    succeeded(quiver(&broker, &data, &["topic", "create", "lines"], ""));
    let client = broker.client().await;
    let env = [("QUIVER_SERVER", broker.addr())];
    let publisher = LiveCli::spawn(
        data.root(),
        &["pub", "lines"],
        &env,
        Lines::default(),
        Some(numbered_lines("line", LINES)),
    );
    eventually(Duration::from_secs(60), "records stored", || async {
        client.describe_topic("lines").await.unwrap().records >= 1000
    })
    .await;
    publisher.interrupt();
    let stdout = publisher.stdout.clone();
    let stderr = publisher.stderr.clone();
    let status = publisher.wait(Duration::from_secs(60));
    assert_eq!(status.code(), Some(130), "{:?}", stderr.snapshot());
    let stored = client.describe_topic("lines").await.unwrap().records;
    assert!(stored < LINES as u64, "stopped before the end of stdin");
    // Every stored record was reported, and the summary says how many and where.
    let printed = stdout.snapshot();
    assert_eq!(printed.len() as u64, stored);
    assert_eq!(
        printed.last().map(String::as_str),
        Some(&*(stored - 1).to_string())
    );
    let summary = stderr.snapshot().join("\n");
    assert!(
        summary.contains(&format!(
            "{stored} stored, the last at offset {}",
            stored - 1
        )) && summary.contains("0 failed"),
        "{summary}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_self_signed_certificate_names_what_clients_dial_and_shows_its_fingerprint() {
    let data = DataDir::new();
    let names = ["--tls-name", "edge1.example", "--tls-name", "10.1.2.3"];
    let broker = Broker::launch(&data, &names, &[]);
    let dir = data.path().to_str().unwrap();
    let shown = succeeded(cli(data.root(), &["cert", "show", "--data", dir], &[], ""));
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    for name in [
        "localhost",
        "127.0.0.1",
        "::1",
        "edge1.example",
        "10.1.2.3",
        host.trim(),
    ] {
        assert!(shown.contains(name), "{name} in {shown}");
    }
    // The fingerprint to pin is the SHA-256 of the certificate as it goes on the wire.
    let pem = std::fs::read(broker.cert()).unwrap();
    let der = CertificateDer::pem_slice_iter(&pem)
        .next()
        .unwrap()
        .unwrap();
    let fingerprint = shown
        .lines()
        .find_map(|l| l.strip_prefix("sha256"))
        .unwrap()
        .trim()
        .replace(':', "")
        .to_lowercase();
    let der_file = data.root().join("cert.der");
    std::fs::write(&der_file, der.as_ref()).unwrap();
    let digest = std::process::Command::new("sha256sum")
        .arg(&der_file)
        .output()
        .unwrap();
    let digest = String::from_utf8(digest.stdout).unwrap();
    assert_eq!(Some(fingerprint.as_str()), digest.split_whitespace().next());

    // A client dialing 127.0.0.1 under one of those names is let through.
    let client = Client::builder()
        .ca_file(broker.cert())
        .unwrap()
        .server_name("edge1.example")
        .connect(broker.addr())
        .await
        .unwrap();
    client.list_topics().await.unwrap();
    // One it does not hold is refused, saying which name and what to do.
    let error = Client::builder()
        .ca_file(broker.cert())
        .unwrap()
        .server_name("other.example")
        .connect(broker.addr())
        .await
        .unwrap_err();
    assert!(
        error.to_string().contains("does not name `other.example`"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn day_two_commands_get_records_create_idempotently_and_complete_shells() {
    let data = DataDir::new();
    let broker = Broker::start(&data);
    let run = |args: &[&str]| quiver(&broker, &data, args, "");

    // Creating what exists fails, unless --if-not-exists says that is fine.
    succeeded(run(&["topic", "create", "orders"]));
    let again = run(&["topic", "create", "orders"]);
    assert_eq!(again.status.code(), Some(1), "{}", stderr(&again));
    let fine = succeeded(run(&["topic", "create", "orders", "--if-not-exists"]));
    assert_eq!(fine.trim(), "orders exists already");
    let group = ["group", "create", "billing", "--topic", "orders"];
    succeeded(run(&group));
    let fine = succeeded(run(&[&group[..], &["--if-not-exists"]].concat()));
    assert_eq!(fine.trim(), "billing exists already");

    // One record by its offset: the payload, or the whole record as JSON.
    for i in 0..3 {
        succeeded(run(&["pub", "orders", &format!("order {i}"), "--key", "k"]));
    }
    assert_eq!(
        succeeded(run(&["topic", "get", "orders", "1"])).trim(),
        "order 1"
    );
    let json: Value =
        serde_json::from_str(&succeeded(run(&["topic", "get", "orders", "2", "--json"]))).unwrap();
    assert_eq!(json["offset"], 2);
    assert_eq!(json["payload"], "order 2");
    assert_eq!(json["key"], "k");
    let missing = run(&["topic", "get", "orders", "3"]);
    assert_eq!(missing.status.code(), Some(3));
    assert!(
        stderr(&missing).contains("does not exist yet: the next record gets 3"),
        "{}",
        stderr(&missing)
    );

    // How the broker runs.
    let info = succeeded(run(&["info"]));
    let http = broker.http_url().split("://").nth(1).unwrap();
    for expected in [
        "version      quiver/".to_owned(),
        format!("quic {}", broker.addr()),
        format!("http {http}"),
        format!("data dir     {}", data.path().display()),
        "holds        1 topics, 1 groups, 0 plugins, 0 links".to_owned(),
    ] {
        assert!(info.contains(&expected), "{expected} in {info}");
    }
    let json: Value = serde_json::from_str(&succeeded(run(&["info", "--json"]))).unwrap();
    assert_eq!(json["topics"], 1);
    assert!(json["disk_bytes"].as_u64().unwrap() > 0);
    assert!(json["uptime_ms"].as_u64().is_some());

    // Completion scripts for each shell, from the same definitions as --help.
    for (shell, marker) in [
        ("bash", "_quiver()"),
        ("zsh", "#compdef quiver"),
        ("fish", "complete -c quiver"),
    ] {
        let script = succeeded(run(&["completions", shell]));
        assert!(script.contains(marker), "{shell}");
        assert!(script.contains("if-not-exists"), "{shell}: every flag");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_redriven_once_with_their_history() {
    use quiver_tests::{filtered_topic, level_filter, read_all};
    let data = DataDir::new();
    let broker = Broker::start(&data);
    let client = broker.client().await;
    filtered_topic(&client, "logs", level_filter()).await;
    // What is not JSON is dead-lettered into dlq.logs.
    client.publish("logs", r#"{"level":"warn"}"#).await.unwrap();
    for i in 0..2 {
        let record = NewRecord::new(format!("not json {i}"))
            .with_key("k")
            .with_header("trace", "t1");
        client.publish_batch("logs", vec![record]).await.unwrap();
    }
    let before = read_all(&client, "logs").await.len();
    assert_eq!(read_all(&client, "dlq.logs").await.len(), 2);
    // The cause fixed: the filter goes.
    client.detach_plugin("logs", "json-filter").await.unwrap();
    let run = |args: &[&str]| quiver(&broker, &data, args, "");

    // A dry run and a filter that matches nothing publish nothing.
    let dry = succeeded(run(&["dlq", "redrive", "dlq.logs", "--dry-run"]));
    assert_eq!(dry.lines().count(), 2, "{dry}");
    let none = run(&["dlq", "redrive", "dlq.logs", "--filter", "plugin=other"]);
    assert!(none.status.success());
    assert!(stderr(&none).contains("redrove 0"), "{}", stderr(&none));
    assert_eq!(read_all(&client, "logs").await.len(), before);

    let out = run(&[
        "dlq",
        "redrive",
        "dlq.logs",
        "--filter",
        "plugin=json-filter",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("redrove 2"), "{}", stderr(&out));
    assert!(stderr(&out).contains("--from 2"), "{}", stderr(&out));
    let logs = read_all(&client, "logs").await;
    assert_eq!(logs.len(), before + 2);
    let again = &logs[before];
    assert_eq!(&again.payload[..], b"not json 0");
    assert_eq!(again.key.as_deref(), Some(&b"k"[..]));
    assert_eq!(again.header("trace").map(|v| &v[..]), Some(&b"t1"[..]));
    assert_eq!(
        again.header("quiver-redrive-from").map(|v| &v[..]),
        Some(&b"dlq.logs:0"[..])
    );
    assert_eq!(
        again.header("quiver-redrive-plugin").map(|v| &v[..]),
        Some(&b"json-filter"[..])
    );
    assert!(
        again.header("quiver-dlq-reason").is_none(),
        "history, not a dead letter"
    );

    // Run again (a run cut short and retried): nothing is stored twice.
    succeeded(run(&["dlq", "redrive", "dlq.logs"]));
    assert_eq!(read_all(&client, "logs").await.len(), before + 2);
    // The dead letters stay; --to sends them elsewhere.
    assert_eq!(read_all(&client, "dlq.logs").await.len(), 2);
    client
        .create_topic("retry", Retention::default())
        .await
        .unwrap();
    succeeded(run(&[
        "dlq", "redrive", "dlq.logs", "--to", "retry", "--from", "1",
    ]));
    let retry = read_all(&client, "retry").await;
    assert_eq!(retry.len(), 1);
    assert_eq!(&retry[0].payload[..], b"not json 1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_redriven_through_a_chosen_plugin_version() {
    use quiver_tests::{example_plugin, read_all, read_plugin};
    let data = DataDir::new();
    let broker = Broker::start(&data);
    let client = broker.client().await;
    let filter = read_plugin(&example_plugin("json-filter"));
    let tagger = read_plugin(&example_plugin("template"));
    // `gate` 1 rejects what is not JSON; 2 tags every record instead; 3, running now,
    // is 1 again.
    client
        .deploy_plugin("gate", filter.clone(), None)
        .await
        .unwrap();
    client
        .create_topic("orders", Retention::default())
        .await
        .unwrap();
    let stage = quiver_client::Stage::new("gate").param("where", "amount > 0");
    client.attach_plugin("orders", stage).await.unwrap();
    for i in 0..2 {
        let record = NewRecord::new(format!("not json {i}")).with_header("trace", "t1");
        client.publish_batch("orders", vec![record]).await.unwrap();
    }
    client.upgrade_plugin("gate", tagger, None).await.unwrap();
    client.upgrade_plugin("gate", filter, None).await.unwrap();
    client
        .deploy_plugin("other", read_plugin(&example_plugin("template")), None)
        .await
        .unwrap();
    let run = |args: &[&str]| quiver(&broker, &data, args, "");

    // Versions that are not there, or a plugin not on the topic: refused, nothing stored.
    for (through, says) in [
        (
            "gate@9",
            "plugin `gate` has no version `9` (its versions: 1, 2, 3)",
        ),
        (
            "other@1",
            "plugin `other` is not on the ingress pipeline of topic `orders`",
        ),
        ("gate", "is not NAME@VERSION"),
    ] {
        let refused = run(&["dlq", "redrive", "dlq.orders", "--through", through]);
        assert!(!refused.status.success(), "{through}");
        assert!(
            stderr(&refused).contains(says),
            "{through}: {}",
            stderr(&refused)
        );
    }
    assert!(read_all(&client, "orders").await.is_empty());

    // Through version 2 the dead letters are stored, tagged by it, with their history.
    let out = run(&["dlq", "redrive", "dlq.orders", "--through", "gate@2"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("redrove 2"), "{}", stderr(&out));
    let orders = read_all(&client, "orders").await;
    assert_eq!(orders.len(), 2);
    for (i, record) in orders.iter().enumerate() {
        assert_eq!(record.payload, format!("not json {i}").as_bytes());
        assert_eq!(
            record.header("tagged-by").map(|v| &v[..]),
            Some(&b"quiver"[..])
        );
        assert_eq!(record.header("trace").map(|v| &v[..]), Some(&b"t1"[..]));
        assert_eq!(
            record.header("quiver-redrive-from").map(|v| &v[..]),
            Some(format!("dlq.orders:{i}").as_bytes())
        );
        assert_eq!(
            record.header("quiver-redrive-version").map(|v| &v[..]),
            Some(&b"1"[..]),
            "the version that rejected it, as history"
        );
    }
    // Meanwhile the topic's publishes still meet version 3, which rejects.
    let receipt = client
        .publish_batch("orders", vec![NewRecord::new("not json live")])
        .await
        .unwrap();
    assert_eq!(receipt.count, 0);
    assert!(receipt.dead_letter.is_some());
    // Again through version 2: the first two are not stored twice, the new one is.
    succeeded(run(&[
        "dlq",
        "redrive",
        "dlq.orders",
        "--through",
        "gate@2",
    ]));
    let orders = read_all(&client, "orders").await;
    assert_eq!(orders.len(), 3);
    assert_eq!(&orders[2].payload[..], b"not json live");
    // Through the version running, the dead letters are rejected once more.
    let dlq = read_all(&client, "dlq.orders").await.len();
    assert_eq!(dlq, 3);
    succeeded(run(&[
        "dlq",
        "redrive",
        "dlq.orders",
        "--through",
        "gate@3",
    ]));
    assert_eq!(read_all(&client, "orders").await.len(), 3);
    assert_eq!(read_all(&client, "dlq.orders").await.len(), 2 * dlq);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_topic_is_altered_and_purged_by_those_with_the_right() {
    use quiver_tests::{Stop, principal};
    let data = DataDir::new();
    let ops = principal(&data, "ops", &["admin:>", "publish:>", "subscribe:>"]);
    let alice = principal(&data, "alice", &["publish:t", "subscribe:t"]);
    let broker = Broker::start_with(&data, &[("QUIVER_RETENTION_INTERVAL", "50ms")]);
    let as_who = |broker: &Broker, token: &str, args: &[&str]| {
        cli(
            data.root(),
            args,
            &[("QUIVER_SERVER", broker.addr()), ("QUIVER_TOKEN", token)],
            "",
        )
    };
    let lines: String = (0..10).map(|i| format!("r{i}\n")).collect();
    succeeded(as_who(&broker, &ops, &["topic", "create", "t"]));
    succeeded(cli(
        data.root(),
        &["pub", "t"],
        &[("QUIVER_SERVER", broker.addr()), ("QUIVER_TOKEN", &ops)],
        &lines,
    ));

    // Both need the admin right on the topic (and `info` on every topic).
    for args in [
        &["topic", "alter", "t", "--max-records", "4"][..],
        &["topic", "purge", "t", "--all"],
        &["info"],
    ] {
        let denied = as_who(&broker, &alice, args);
        assert_eq!(
            denied.status.code(),
            Some(4),
            "{args:?}: {}",
            stderr(&denied)
        );
    }

    // A tighter retention applies at the sweep's next pass.
    let altered = succeeded(as_who(
        &broker,
        &ops,
        &["topic", "alter", "t", "--max-records", "4"],
    ));
    assert!(altered.contains("retention:    records 4"), "{altered}");
    let client = broker.client_as(&ops).await;
    eventually(
        Duration::from_secs(30),
        "retention to 4 records",
        || async { client.describe_topic("t").await.unwrap().records == 4 },
    )
    .await;
    let args = [
        "topic",
        "alter",
        "t",
        "--max-records",
        "none",
        "--durability",
        "batched",
        "--flush-interval",
        "50ms",
    ];
    let altered = succeeded(as_who(&broker, &ops, &args));
    assert!(altered.contains("batched"), "{altered}");
    drop(client);
    // The settings are stored: a restart keeps them.
    let broker = broker.restart(&data, Stop::Term, &[]);
    let client = broker.client_as(&ops).await;
    let info = client.describe_topic("t").await.unwrap();
    assert_eq!(info.retention.max_records, None);
    assert!(
        info.durability.to_string().contains("batched"),
        "{}",
        info.durability
    );

    // Purge before an offset, before a time (nothing is that old), then everything.
    let out = succeeded(as_who(
        &broker,
        &ops,
        &["topic", "purge", "t", "--before", "8"],
    ));
    assert_eq!(out.trim(), "purged 2 records of t; it holds offsets 8..10");
    let out = succeeded(as_who(
        &broker,
        &ops,
        &["topic", "purge", "t", "--before", "-1h"],
    ));
    assert!(out.starts_with("purged 0 records"), "{out}");
    let out = succeeded(as_who(&broker, &ops, &["topic", "purge", "t", "--all"]));
    assert_eq!(out.trim(), "purged 2 records of t; it holds offsets 10..10");
    // Offsets are not reused, and the purge survives a crash (as does a record
    // acknowledged once the topic is back on fsync).
    let fsync = ["topic", "alter", "t", "--durability", "fsync"];
    assert!(succeeded(as_who(&broker, &ops, &fsync)).contains("durability:   fsync"));
    assert_eq!(client.publish("t", "after").await.unwrap(), 10);
    drop(client);
    let broker = broker.restart(&data, Stop::Kill, &[]);
    let client = broker.client_as(&ops).await;
    let info = client.describe_topic("t").await.unwrap();
    assert_eq!((info.first_offset, info.records), (10, 1));
}
