//! Authentication and authorization through the real broker: tokens and client
//! certificates proving principals, `quiver auth` managing them, per-principal grants
//! on topic patterns (allowed and denied, for every right), grant changes reaching
//! live connections, plugins routing only where their attacher may publish, and the
//! refusal to serve a non-loopback address without authentication.

#![allow(clippy::unwrap_used)] // in tests a failed unwrap is a failed test

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use quiver_client::{
    Client, Error, ErrorCode, GroupSettings, NewRecord, Receipt, Retention, Stage, StartAt,
    SubscribeOptions, TopicConfig,
};
use quiver_tests::{
    Broker, DataDir, auth, cli, eventually, example_plugin, principal, quiver_bin, read_all,
    read_plugin,
};

async fn connect(broker: &Broker, token: Option<&str>) -> Result<Client, Error> {
    let mut builder = Client::builder().ca_file(broker.cert()).unwrap();
    if let Some(token) = token {
        builder = builder.token(token);
    }
    builder.connect(broker.addr()).await
}

fn code<T: std::fmt::Debug>(result: Result<T, Error>) -> (ErrorCode, String) {
    let error = result.unwrap_err();
    (
        error
            .code()
            .unwrap_or_else(|| panic!("not a server error: {error}")),
        error.to_string(),
    )
}

fn forbidden<T: std::fmt::Debug>(result: Result<T, Error>, principal: &str, target: &str) {
    let (code, message) = code(result);
    assert_eq!(code, ErrorCode::Forbidden, "{message}");
    assert!(
        message.contains(&format!("`{principal}`")) && message.contains(target),
        "{message}"
    );
}

/// The data dir with `ops` (every right on every topic) and `alice` (publish and
/// subscribe under `sensors.`), and their tokens.
fn two_principals(data: &DataDir) -> (String, String) {
    let ops = principal(
        data,
        "ops",
        &["admin:>", "publish:>", "subscribe:>", "group:>"],
    );
    let alice = principal(data, "alice", &["publish:sensors.>", "subscribe:sensors.>"]);
    (ops, alice)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_must_prove_a_principal_once_one_exists() {
    let data = DataDir::new();
    let (ops, _) = two_principals(&data);
    let broker = Broker::start(&data);

    let (code_, message) = code(connect(&broker, None).await);
    assert_eq!(code_, ErrorCode::Unauthenticated);
    assert!(message.contains("requires authentication"), "{message}");

    let forged = format!("{}0", &ops[..ops.len() - 1]);
    let forged = if forged == ops {
        format!("{}1", &ops[..ops.len() - 1])
    } else {
        forged
    };
    let (code_, message) = code(connect(&broker, Some(&forged)).await);
    assert_eq!(code_, ErrorCode::Unauthenticated);
    assert!(message.contains("not valid"), "{message}");
    let (code_, _) = code(connect(&broker, Some("hunter2")).await);
    assert_eq!(code_, ErrorCode::Unauthenticated);

    let client = connect(&broker, Some(&ops)).await.unwrap();
    assert_eq!(client.principal(), Some("ops"));
    client
        .create_topic("sensors.eu.temp", Retention::default())
        .await
        .unwrap();

    // The auth file keeps a hash, never the token.
    let file = std::fs::read_to_string(data.path().join("auth.toml")).unwrap();
    let secret = ops.rsplit('_').next().unwrap();
    assert!(!file.contains(secret));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_allow_and_deny_each_right_per_topic_pattern() {
    let data = DataDir::new();
    let (ops, alice) = two_principals(&data);
    let bob = principal(&data, "bob", &["group:sensors.>"]);
    let broker = Broker::start(&data);
    let ops = connect(&broker, Some(&ops)).await.unwrap();
    for topic in ["sensors.eu.temp", "billing.invoices"] {
        ops.create_topic(topic, Retention::default()).await.unwrap();
    }
    let alice = connect(&broker, Some(&alice)).await.unwrap();
    let bob = connect(&broker, Some(&bob)).await.unwrap();

    // publish
    alice
        .publish("sensors.eu.temp", NewRecord::new("21.5"))
        .await
        .unwrap();
    forbidden(
        alice.publish("billing.invoices", NewRecord::new("x")).await,
        "alice",
        "billing.invoices",
    );
    forbidden(
        bob.publish("sensors.eu.temp", NewRecord::new("x")).await,
        "bob",
        "sensors.eu.temp",
    );
    // A request is a publish: the same right (checked before anything else).
    let ask = bob
        .request("sensors.eu.temp", "?", Duration::from_secs(1))
        .await;
    forbidden(ask, "bob", "sensors.eu.temp");

    // subscribe: the grant must cover the whole pattern
    let options = || SubscribeOptions::from(StartAt::Earliest);
    let mut sub = alice.subscribe("sensors.*.temp", options()).await.unwrap();
    assert_eq!(quiver_tests::take(&mut sub, 1).await[0].payload, "21.5");
    forbidden(alice.subscribe(">", options()).await, "alice", ">");
    forbidden(
        alice.subscribe("billing.invoices", options()).await,
        "alice",
        "billing.invoices",
    );

    // group
    let settings = GroupSettings::new("sensors.>");
    bob.create_group("temps", settings.clone()).await.unwrap();
    let mut member = bob.join("temps", None).await.unwrap();
    assert_eq!(
        quiver_tests::next_delivery(&mut member)
            .await
            .record
            .payload,
        "21.5"
    );
    forbidden(
        alice.create_group("mine", settings).await,
        "alice",
        "sensors.>",
    );
    forbidden(alice.join("temps", None).await, "alice", "sensors.>");
    forbidden(
        bob.create_group("bills", GroupSettings::new("billing.>"))
            .await,
        "bob",
        "billing.>",
    );
    // A group's dead letters are writes: bob may not aim them at a topic he cannot
    // publish to.
    let dead_letters_elsewhere = GroupSettings {
        dead_letter: Some("billing.invoices".into()),
        ..GroupSettings::new("sensors.>")
    };
    forbidden(
        bob.create_group("sneaky", dead_letters_elsewhere).await,
        "bob",
        "billing.invoices",
    );

    // admin: topics, and plugins (which need admin on every topic)
    forbidden(
        alice
            .create_topic("sensors.new", Retention::default())
            .await,
        "alice",
        "sensors.new",
    );
    forbidden(
        alice.delete_topic("sensors.eu.temp").await,
        "alice",
        "sensors.eu.temp",
    );
    let wasm = read_plugin(&example_plugin("json-filter"));
    forbidden(
        alice.deploy_plugin("json-filter", wasm, None).await,
        "alice",
        ">",
    );

    // Lists show only what the principal holds a right on; describing the rest fails.
    let names: Vec<String> = alice
        .list_topics()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert_eq!(names, ["sensors.eu.temp"]);
    forbidden(
        alice.describe_topic("billing.invoices").await,
        "alice",
        "billing.invoices",
    );
    let groups: Vec<String> = alice
        .list_groups()
        .await
        .unwrap()
        .into_iter()
        .map(|g| g.name)
        .collect();
    assert!(groups.is_empty(), "{groups:?}");

    // The denials disturbed nobody: ops still does everything.
    ops.publish("billing.invoices", NewRecord::new("inv-1"))
        .await
        .unwrap();
    assert_eq!(read_all(&ops, "billing.invoices").await.len(), 1);
}

/// Publishes to `sensors.eu.temp` until they are allowed (or denied), as a change to
/// the auth file reaches the broker.
async fn until_publishing_is(client: &Client, allowed: bool, what: &str) {
    eventually(Duration::from_secs(10), what, || async {
        let published = client
            .publish("sensors.eu.temp", NewRecord::new("poll"))
            .await;
        published.is_ok() == allowed
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grant_changes_reach_live_connections_and_revoked_tokens_stop_new_ones() {
    let data = DataDir::new();
    let (ops, alice_token) = two_principals(&data);
    let broker = Broker::start(&data);
    let ops = connect(&broker, Some(&ops)).await.unwrap();
    ops.create_topic("sensors.eu.temp", Retention::default())
        .await
        .unwrap();
    let alice = connect(&broker, Some(&alice_token)).await.unwrap();
    alice
        .publish("sensors.eu.temp", NewRecord::new("1"))
        .await
        .unwrap();

    auth(&data, &["revoke", "alice", "publish:sensors.>"]);
    until_publishing_is(&alice, false, "the revoked grant to apply").await;
    forbidden(
        alice.publish("sensors.eu.temp", NewRecord::new("3")).await,
        "alice",
        "sensors.eu.temp",
    );
    auth(&data, &["grant", "alice", "publish:sensors.eu.>"]);
    until_publishing_is(&alice, true, "the new grant to apply").await;

    let listed = auth(&data, &["principal", "list"]);
    let id = listed
        .lines()
        .skip_while(|l| l.trim() != "alice")
        .find_map(|l| l.trim().strip_prefix("token"))
        .unwrap()
        .trim()
        .to_owned();
    auth(&data, &["token", "revoke", &id]);
    let (code_, _) = code(connect(&broker, Some(&alice_token)).await);
    assert_eq!(code_, ErrorCode::Unauthenticated);
    // The connection made with it keeps its principal.
    alice
        .publish("sensors.eu.temp", NewRecord::new("5"))
        .await
        .unwrap();

    auth(&data, &["principal", "remove", "alice"]);
    until_publishing_is(&alice, false, "the removal to apply").await;
    forbidden(
        alice.publish("sensors.eu.temp", NewRecord::new("7")).await,
        "alice",
        "sensors.eu.temp",
    );
    // What was denied was not stored (the polls above stored until the change applied).
    let stored: Vec<_> = read_all(&ops, "sensors.eu.temp")
        .await
        .into_iter()
        .map(|r| r.into_stored().payload)
        .collect();
    assert!(stored.iter().all(|p| p != "3" && p != "7"), "{stored:?}");
    assert!(stored.iter().any(|p| p == "5"), "{stored:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_route_only_where_their_attacher_may_publish() {
    let data = DataDir::new();
    let ops = principal(&data, "ops", &["admin:>", "publish:>", "subscribe:>"]);
    // carol runs the `orders` topics but may not publish to `audit`.
    let carol = principal(&data, "carol", &["admin:orders.>", "publish:orders.>"]);
    let broker = Broker::start(&data);
    let ops = connect(&broker, Some(&ops)).await.unwrap();
    for topic in ["orders.in", "orders.eu", "audit"] {
        ops.create_topic(topic, Retention::default()).await.unwrap();
    }
    ops.deploy_plugin("router", read_plugin(&example_plugin("router")), None)
        .await
        .unwrap();
    let carol = connect(&broker, Some(&carol)).await.unwrap();
    let router = Stage::new("router")
        .param("field", "region")
        .param("routes", "eu=orders.eu,spy=audit");
    // Nor may her topics dead-letter into it.
    let config = TopicConfig {
        dead_letter: Some("audit".into()),
        ..TopicConfig::default()
    };
    forbidden(
        carol.create_topic("orders.x", config).await,
        "carol",
        "audit",
    );
    let info = carol.attach_plugin("orders.in", router).await.unwrap();
    assert_eq!(info.pipeline[0].attached_by.as_deref(), Some("carol"));

    let batch = ["eu", "spy"].map(|r| NewRecord::new(format!(r#"{{"region":"{r}"}}"#)));
    let receipt = carol
        .publish_batch("orders.in", batch.to_vec())
        .await
        .unwrap();
    assert_eq!(receipt.routed.len(), 1, "{receipt:?}");
    assert_eq!(receipt.routed[0].topic, "orders.eu");
    assert_eq!(receipt.dead_letter.as_ref().map(|d| d.count), Some(1));
    assert!(read_all(&ops, "audit").await.is_empty());
    let dead = read_all(&ops, "dlq.orders.in").await;
    let reason = String::from_utf8(dead[0].header("quiver-dlq-reason").unwrap().to_vec()).unwrap();
    assert!(
        reason.contains("carol") && reason.contains("audit"),
        "{reason}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_through_another_plugin_version_takes_the_topics_admin_right() {
    let data = DataDir::new();
    let ops = principal(&data, "ops", &["admin:>", "publish:>", "subscribe:>"]);
    // dave publishes to `orders` but does not run it.
    let dave = principal(&data, "dave", &["publish:orders"]);
    let broker = Broker::start(&data);
    let ops = connect(&broker, Some(&ops)).await.unwrap();
    ops.create_topic("orders", Retention::default())
        .await
        .unwrap();
    let filter = read_plugin(&example_plugin("json-filter"));
    ops.deploy_plugin("gate", filter.clone(), None)
        .await
        .unwrap();
    ops.upgrade_plugin("gate", filter, None).await.unwrap();
    let gate = Stage::new("gate").param("where", "amount > 0");
    ops.attach_plugin("orders", gate).await.unwrap();
    fn through(client: &Client) -> impl Future<Output = Result<Receipt, Error>> + use<'_> {
        let record = NewRecord::new(r#"{"amount":5}"#);
        client.publish_through("orders", vec![record], None, ("gate", "1"))
    }
    let dave = connect(&broker, Some(&dave)).await.unwrap();
    // Version 1 may be the one a fix replaced: choosing it is the topic admin's call.
    forbidden(through(&dave).await, "dave", "orders");
    dave.publish("orders", r#"{"amount":5}"#).await.unwrap();
    let receipt = through(&ops).await.unwrap();
    assert_eq!(receipt.count, 1);
    assert_eq!(read_all(&ops, "orders").await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_maps_to_its_principal() {
    let data = DataDir::new();
    let certs = tempfile::tempdir().unwrap();
    let (ca, cert, key) = quiver_tests::client_certificate(certs.path(), "gateway-7");
    let (_, stranger, stranger_key) = {
        let dir = certs.path().join("other");
        std::fs::create_dir(&dir).unwrap();
        quiver_tests::client_certificate(&dir, "gateway-7")
    };
    auth(
        &data,
        &[
            "principal",
            "add",
            "gw",
            "--grant",
            "publish:telemetry.>",
            "--cert-name",
            "gateway-7",
        ],
    );
    let broker = Broker::launch(&data, &["--client-ca", ca.to_str().unwrap()], &[]);

    let with_cert = |cert: &Path, key: &Path| {
        Client::builder()
            .ca_file(broker.cert())
            .unwrap()
            .client_cert_files(cert, key)
            .unwrap()
    };
    let client = with_cert(&cert, &key).connect(broker.addr()).await.unwrap();
    assert_eq!(client.principal(), Some("gw"));
    forbidden(
        client
            .create_topic("telemetry.a", Retention::default())
            .await,
        "gw",
        "telemetry.a",
    );

    // Same name, issued by a CA the broker does not trust: the TLS handshake fails.
    assert!(
        with_cert(&stranger, &stranger_key)
            .connect(broker.addr())
            .await
            .is_err()
    );
    // No certificate and no token: refused, since client certificates are required.
    let (code_, _) = code(connect(&broker, None).await);
    assert_eq!(code_, ErrorCode::Unauthenticated);

    // The CLI takes the same credentials.
    let out = cli(
        data.root(),
        &[
            "topic",
            "list",
            "--client-cert",
            cert.to_str().unwrap(),
            "--client-key",
            key.to_str().unwrap(),
        ],
        &[("QUIVER_SERVER", broker.addr())],
        "",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_clients_get_the_anonymous_principals_grants_when_allowed() {
    let data = DataDir::new();
    let ops = principal(&data, "ops", &["admin:>", "publish:>"]);
    auth(
        &data,
        &[
            "principal",
            "add",
            "anonymous",
            "--grant",
            "subscribe:public.>",
        ],
    );
    let broker = Broker::launch(&data, &["--allow-anonymous"], &[]);
    let ops = connect(&broker, Some(&ops)).await.unwrap();
    ops.create_topic("public.news", Retention::default())
        .await
        .unwrap();
    ops.publish("public.news", NewRecord::new("hello"))
        .await
        .unwrap();

    let anonymous = connect(&broker, None).await.unwrap();
    assert_eq!(anonymous.principal(), None);
    let mut sub = anonymous
        .subscribe("public.news", SubscribeOptions::from(StartAt::Earliest))
        .await
        .unwrap();
    assert_eq!(quiver_tests::take(&mut sub, 1).await[0].payload, "hello");
    forbidden(
        anonymous.publish("public.news", NewRecord::new("x")).await,
        "anonymous",
        "public.news",
    );
}

#[test]
fn a_broker_refuses_a_non_loopback_address_without_authentication() {
    let data = DataDir::new();
    let out = Command::new(quiver_bin())
        .args([
            "serve",
            "--listen",
            "0.0.0.0:0",
            "--data",
            data.path().to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("refusing to listen on 0.0.0.0:0 without authentication")
            && stderr.contains("--allow-anonymous")
            && stderr.contains("quiver auth"),
        "{stderr}"
    );
}

#[test]
fn the_auth_command_refuses_bad_input_with_the_reason() {
    let data = DataDir::new();
    let run = |args: &[&str]| {
        let mut all = vec!["auth"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--data", data.path().to_str().unwrap()]);
        cli(data.root(), &all, &[], "")
    };
    let failed = |args: &[&str], expected: &str| {
        let out = run(args);
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    };
    failed(&["principal", "add", "a b"], "invalid principal name");
    failed(
        &["principal", "add", "x", "--grant", "fly:a"],
        "not a right",
    );
    failed(
        &["principal", "add", "x", "--grant", "publish:a..b"],
        "not a topic pattern",
    );
    failed(&["token", "create", "nobody"], "no principal `nobody`");
    failed(&["token", "revoke", "0000"], "no token has the id");
    assert!(run(&["principal", "add", "x"]).status.success());
    failed(&["principal", "add", "x"], "exists already");
    failed(&["revoke", "x", "publish:a"], "holds no grant");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_auth_command_outside_a_broker_folder_says_so_instead_of_editing_nothing() {
    let data = DataDir::new();
    let add = |name: &str| cli(data.root(), &["auth", "principal", "add", name], &[], "");
    // No broker has run here: the default ./quiver-data is no broker's, so editing it
    // would change nothing a broker reads.
    let out = add("ops");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("holds no broker's data") && stderr.contains("--data DIR"),
        "{stderr}"
    );
    assert!(!data.path().exists(), "nothing was created");

    // Named with --data, a new dir is fine (set up before the first start), with a note.
    let dir = data.path().to_str().unwrap();
    let args = [
        "auth",
        "principal",
        "add",
        "ops",
        "--grant",
        "admin:>",
        "--data",
        dir,
    ];
    let out = cli(data.root(), &args, &[], "");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("holds no broker data yet"),
        "a note says a broker will use it"
    );
    // Where a broker runs, the default dir is the broker's.
    let broker = Broker::start(&data);
    let out = add("dash");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(broker);
}
