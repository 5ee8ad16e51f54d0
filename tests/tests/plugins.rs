//! WebAssembly plugins through the real broker, with real compiled components:
//! filtering, transforming and routing on ingress, per-subscriber views, parameters,
//! state across restarts, live upgrade under load, the compiled-artifact cache, and
//! hostile plugins kept in their box.

#![allow(clippy::unwrap_used)] // in tests a failed unwrap is a failed test

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use futures::StreamExt;
use quiver_client::{
    Client, Error, ErrorCode, NewRecord, OnError, Record, Retention, Stage, StartAt,
    SubscribeOptions,
};
use quiver_tests::{
    Broker, DataDir, example_plugin, level_filter, read_all, read_plugin, take, test_plugin,
};

async fn deploy(client: &Client, name: &str, wasm: std::path::PathBuf) {
    client
        .deploy_plugin(name, read_plugin(&wasm), None)
        .await
        .unwrap();
}

async fn create(client: &Client, topic: &str) {
    client
        .create_topic(topic, Retention::default())
        .await
        .unwrap();
}

fn header(record: &Record, name: &str) -> String {
    String::from_utf8(
        record
            .header(name)
            .unwrap_or_else(|| panic!("no header {name}"))
            .to_vec(),
    )
    .unwrap()
}

fn payloads(records: &[Record]) -> Vec<String> {
    records
        .iter()
        .map(|r| String::from_utf8(r.payload.to_vec()).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ingress_filter_keeps_drops_and_dead_letters() {
    let data = DataDir::new();
    let broker = Broker::start_with(&data, &[]);
    let client = broker.client().await;
    create(&client, "logs").await;
    let info = client
        .deploy_plugin(
            "json-filter",
            read_plugin(&example_plugin("json-filter")),
            None,
        )
        .await
        .unwrap();
    assert_eq!((info.version.as_str(), info.sha256.len()), ("1", 64));
    let topic = client.attach_plugin("logs", level_filter()).await.unwrap();
    assert_eq!(topic.pipeline, vec![level_filter()]);

    let batch = [
        r#"{"level":"info"}"#,
        r#"{"level":"warn"}"#,
        r#"{"level":"error"}"#,
        "not json",
    ]
    .map(NewRecord::new)
    .to_vec();
    let receipt = client.publish_batch("logs", batch).await.unwrap();
    assert_eq!((receipt.offsets(), receipt.dropped), (0..2, 1));
    let dead = receipt.dead_letter.clone().unwrap();
    assert_eq!((dead.topic.as_str(), dead.count), ("dlq.logs", 1));
    assert_eq!(
        payloads(&read_all(&client, "logs").await),
        [r#"{"level":"warn"}"#, r#"{"level":"error"}"#]
    );
    let dead = read_all(&client, "dlq.logs").await;
    assert_eq!(payloads(&dead), ["not json"]);
    assert_eq!(header(&dead[0], "quiver-dlq-topic"), "logs");
    assert_eq!(header(&dead[0], "quiver-dlq-offset"), "3");
    assert_eq!(header(&dead[0], "quiver-dlq-plugin"), "json-filter");
    assert_eq!(header(&dead[0], "quiver-dlq-version"), "1");
    assert_eq!(header(&dead[0], "quiver-dlq-reason"), "payload is not JSON");

    // A single publish the filter drops says so instead of inventing an offset.
    match client.publish("logs", r#"{"level":"debug"}"#).await {
        Err(Error::Transformed(receipt)) => assert_eq!((receipt.count, receipt.dropped), (0, 1)),
        other => panic!("expected Transformed, got {other:?}"),
    }
    let status = client.plugin_status("json-filter").await.unwrap();
    let stage = &status.attachments[0];
    assert_eq!(stage.target, "topic logs");
    assert_eq!(
        (
            stage.calls,
            stage.records_in,
            stage.records_out,
            stage.errors
        ),
        (2, 5, 2, 0)
    );
    assert!(stage.p99_us >= stage.p50_us && stage.p50_us > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stages_transform_in_order() {
    let data = DataDir::new();
    let broker = Broker::start_with(&data, &[]);
    let client = broker.client().await;
    create(&client, "signups").await;
    deploy(&client, "json-filter", example_plugin("json-filter")).await;
    deploy(&client, "redactor", example_plugin("redactor")).await;
    client
        .attach_plugin("signups", level_filter())
        .await
        .unwrap();
    let redact = Stage::new("redactor").param("fields", "ssn");
    let topic = client.attach_plugin("signups", redact).await.unwrap();
    assert_eq!(topic.pipeline.len(), 2);

    let batch = vec![
        NewRecord::new(r#"{"level":"info","email":"a@example.com"}"#),
        NewRecord::new(r#"{"level":"warn","who":"mail jane@example.org","ssn":"123-45-6789"}"#)
            .with_key("k"),
    ];
    let receipt = client.publish_batch("signups", batch).await.unwrap();
    assert_eq!((receipt.count, receipt.dropped), (1, 1));
    let stored = read_all(&client, "signups").await;
    assert_eq!(
        payloads(&stored),
        [r#"{"level":"warn","who":"mail [email]","ssn":"[REDACTED]"}"#]
    );
    assert_eq!(header(&stored[0], "quiver-redactions"), "2");
    assert_eq!(
        stored[0].key.as_deref(),
        Some(&b"k"[..]),
        "the key survives the transform"
    );
    // The redactor only saw what the filter kept.
    let status = client.plugin_status("redactor").await.unwrap();
    assert_eq!(status.attachments[0].records_in, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_publishes_through_plugins_keep_their_order() {
    let data = DataDir::new();
    let broker = Broker::start(&data);
    let client = broker.client().await;
    create(&client, "ordered").await;
    create(&client, "plain").await;
    deploy(&client, "template", example_plugin("template")).await;
    let stage = Stage::new("template")
        .param("name", "seen")
        .param("value", "1");
    client.attach_plugin("ordered", stage).await.unwrap();
    // Plugin calls overlap; storage still gets the publishes in the order sent, also
    // when they alternate with publishes that run no plugin.
    let pending: Vec<_> = (0..300)
        .map(|i| match i % 3 {
            0 => client.publish("plain", format!("p{i}")),
            _ => client.publish("ordered", format!("o{i}")),
        })
        .collect();
    let mut offsets = Vec::new();
    for publish in pending {
        offsets.push(publish.await.unwrap());
    }
    let ordered: Vec<String> = (0..300)
        .filter(|i| i % 3 != 0)
        .map(|i| format!("o{i}"))
        .collect();
    let stored = read_all(&client, "ordered").await;
    assert_eq!(payloads(&stored), ordered, "stored in the order published");
    assert!(stored.iter().all(|r| header(r, "seen") == "1"));
    let plain: Vec<String> = (0..300).step_by(3).map(|i| format!("p{i}")).collect();
    assert_eq!(payloads(&read_all(&client, "plain").await), plain);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_routes_atomically_and_dead_letters_what_it_cannot_deliver() {
    let data = DataDir::new();
    let broker = Broker::start_with(&data, &[]);
    let client = broker.client().await;
    for topic in ["orders", "orders.eu", "orders.us"] {
        create(&client, topic).await;
    }
    deploy(&client, "router", example_plugin("router")).await;
    let routes = Stage::new("router")
        .param("field", "region")
        .param("routes", "eu=orders.eu,us=orders.us,mars=orders.mars");
    client.attach_plugin("orders", routes).await.unwrap();

    let batch = ["eu", "us", "eu", "apac", "mars"]
        .map(|r| NewRecord::new(format!(r#"{{"region":"{r}"}}"#)))
        .to_vec();
    let receipt = client.publish_batch("orders", batch).await.unwrap();
    assert_eq!(
        receipt.count, 1,
        "no route for apac: it stays (default keep)"
    );
    let routed: BTreeMap<_, _> = receipt
        .routed
        .iter()
        .map(|p| (p.topic.as_str(), (p.base_offset, p.count)))
        .collect();
    assert_eq!(
        routed,
        BTreeMap::from([("orders.eu", (0, 2)), ("orders.us", (0, 1))])
    );
    assert_eq!(receipt.dead_letter.as_ref().map(|d| d.count), Some(1));
    assert_eq!(read_all(&client, "orders.eu").await.len(), 2);
    assert_eq!(
        payloads(&read_all(&client, "orders").await),
        [r#"{"region":"apac"}"#]
    );
    let dead = read_all(&client, "dlq.orders").await;
    assert!(header(&dead[0], "quiver-dlq-reason").contains("orders.mars"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_subscribers_see_two_views_of_one_topic() {
    let data = DataDir::new();
    let broker = Broker::start_with(&data, &[]);
    let client = broker.client().await;
    create(&client, "audit").await;
    deploy(&client, "json-filter", example_plugin("json-filter")).await;
    deploy(&client, "redactor", example_plugin("redactor")).await;
    let records = [
        r#"{"level":"info","user":"bob@example.com"}"#,
        r#"{"level":"error","user":"eve@example.com"}"#,
    ];
    client
        .publish_batch("audit", records.map(NewRecord::new).to_vec())
        .await
        .unwrap();
    let view = |stage: Stage| SubscribeOptions {
        from: StartAt::Earliest,
        pipeline: vec![stage],
        ..SubscribeOptions::default()
    };
    let mut errors_only = client
        .subscribe("audit", view(level_filter()))
        .await
        .unwrap();
    let mut redacted = client
        .subscribe("audit", view(Stage::new("redactor")))
        .await
        .unwrap();
    let mut raw = client
        .subscribe("audit", SubscribeOptions::from(StartAt::Earliest))
        .await
        .unwrap();

    let first = take(&mut errors_only, 1).await;
    assert_eq!(
        (first[0].offset, payloads(&first)[0].as_str()),
        (1, records[1])
    );
    let masked = take(&mut redacted, 2).await;
    assert_eq!(
        payloads(&masked),
        [
            r#"{"level":"info","user":"[email]"}"#,
            r#"{"level":"error","user":"[email]"}"#
        ]
    );
    assert_eq!((masked[0].offset, masked[1].offset), (0, 1));
    assert_eq!(
        payloads(&take(&mut raw, 2).await),
        records,
        "storage is untouched"
    );

    // Live records go through the same views.
    client
        .publish("audit", r#"{"level":"warn","user":"x@y.io"}"#)
        .await
        .unwrap();
    assert_eq!(take(&mut errors_only, 1).await[0].offset, 2);
    let status = client.plugin_status("redactor").await.unwrap();
    assert_eq!(status.attachments[0].target, "subscription audit");
    // A subscription's stages keep the plugin in use.
    let refused = client.remove_plugin("redactor").await.unwrap_err();
    assert_eq!(refused.code(), Some(ErrorCode::PluginInUse));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_state_survives_a_restart() {
    let data = DataDir::new();
    let window = Stage::new("dedup").param("window", "1h");
    {
        let broker = Broker::start_with(&data, &[]);
        let client = broker.client().await;
        create(&client, "events").await;
        deploy(&client, "dedup", example_plugin("dedup")).await;
        client
            .attach_plugin("events", window.clone())
            .await
            .unwrap();
        let first = NewRecord::new("first").with_key("k1");
        assert_eq!(client.publish("events", first).await.unwrap(), 0);
        let again = client
            .publish_batch("events", vec![NewRecord::new("again").with_key("k1")])
            .await
            .unwrap();
        assert_eq!(again.dropped, 1, "a duplicate within the window is dropped");
        client.close().await;
        assert!(broker.stop().success());
    }
    let broker = Broker::start_with(&data, &[]);
    let client = broker.client().await;
    let topic = client.describe_topic("events").await.unwrap();
    assert_eq!(topic.pipeline, vec![window], "the attachment survives");
    let after = client
        .publish_batch(
            "events",
            vec![
                NewRecord::new("dup").with_key("k1"),
                NewRecord::new("new").with_key("k2"),
            ],
        )
        .await
        .unwrap();
    assert_eq!(
        (after.count, after.dropped),
        (1, 1),
        "k1 is still remembered"
    );
    assert_eq!(
        payloads(&read_all(&client, "events").await),
        ["first", "new"]
    );
}

/// Removing a plugin removes its state (in steps, after the plugin itself): deployed
/// again under its name, it remembers nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_deployed_again_after_its_removal_starts_without_state() {
    let data = DataDir::new();
    let broker = Broker::start_with(&data, &[]);
    let client = broker.client().await;
    create(&client, "events").await;
    let window = Stage::new("dedup").param("window", "1h");
    // More keys than one purge step removes.
    const KEYS: usize = 5000;
    let keyed = |tag: &str| -> Vec<NewRecord> {
        (0..KEYS)
            .map(|i| NewRecord::new(tag.to_owned()).with_key(format!("k{i}")))
            .collect()
    };
    // The test is about state, not speed: a call reading or writing 5,000 keys through
    // this debug-build broker's host functions takes near the Rust default deadline
    // (100 ms of CPU) on a loaded machine, and a call past it dead-letters its batch.
    let patient = quiver_protocol::StageLimits {
        memory: None,
        call_timeout_ms: Some(10_000),
    };
    for round in ["first", "second"] {
        deploy(&client, "dedup", example_plugin("dedup")).await;
        client
            .attach_plugin_sized("events", window.clone(), patient)
            .await
            .unwrap();
        let receipt = client.publish_batch("events", keyed(round)).await.unwrap();
        assert_eq!(
            (receipt.count as usize, receipt.dropped as usize),
            (KEYS, 0),
            "{round} deployment: every key is new to it: {receipt:?}"
        );
        let again = client
            .publish_batch("events", keyed("again"))
            .await
            .unwrap();
        assert_eq!(again.dropped as usize, KEYS, "and then remembered");
        client.detach_plugin("events", "dedup").await.unwrap();
        client.remove_plugin("dedup").await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_under_load_loses_and_doubles_nothing() {
    let data = DataDir::new();
    let broker = Broker::start_with(&data, &[]);
    let client = broker.client().await;
    create(&client, "stream").await;
    client
        .deploy_plugin(
            "versioned",
            read_plugin(&test_plugin("version-a")),
            Some("a"),
        )
        .await
        .unwrap();
    client
        .attach_plugin("stream", Stage::new("versioned"))
        .await
        .unwrap();

    const PRODUCERS: u32 = 4;
    const BATCHES: u32 = 60;
    const PER_BATCH: u32 = 10;
    let (upgraded_tx, upgraded_rx) = tokio::sync::watch::channel(false);
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|p| {
            let client = client.clone();
            let upgraded = upgraded_rx.clone();
            tokio::spawn(async move {
                let mut after_upgrade = Vec::new();
                for b in 0..BATCHES {
                    let started_after_upgrade = *upgraded.borrow();
                    let batch = (0..PER_BATCH)
                        .map(|i| NewRecord::new(format!("{p}-{b}-{i}")))
                        .collect();
                    let receipt = client.publish_batch("stream", batch).await.unwrap();
                    assert_eq!(receipt.count, PER_BATCH);
                    if started_after_upgrade {
                        after_upgrade.push(format!("{p}-{b}-"));
                    }
                }
                after_upgrade
            })
        })
        .collect();
    // Upgrade once some batches are through.
    while client.describe_topic("stream").await.unwrap().records < 200 {
        tokio::task::yield_now().await;
    }
    let info = client
        .upgrade_plugin(
            "versioned",
            read_plugin(&test_plugin("version-b")),
            Some("b"),
        )
        .await
        .unwrap();
    assert_eq!((info.version.as_str(), info.versions.len()), ("b", 2));
    upgraded_tx.send(true).unwrap();
    let mut must_be_b = HashSet::new();
    for producer in producers {
        must_be_b.extend(producer.await.unwrap());
    }

    let records = read_all(&client, "stream").await;
    assert_eq!(
        records.len() as u32,
        PRODUCERS * BATCHES * PER_BATCH,
        "none lost or doubled"
    );
    let mut seen = HashSet::new();
    let mut batch_versions: BTreeMap<String, HashSet<String>> = BTreeMap::new();
    for record in &records {
        let payload = String::from_utf8(record.payload.to_vec()).unwrap();
        assert!(seen.insert(payload.clone()), "{payload} stored twice");
        let batch = payload.rsplit_once('-').unwrap().0.to_owned() + "-";
        batch_versions
            .entry(batch)
            .or_default()
            .insert(header(record, "version"));
    }
    let mut versions_seen = HashSet::new();
    for (batch, versions) in &batch_versions {
        assert_eq!(
            versions.len(),
            1,
            "batch {batch} was split across versions: {versions:?}"
        );
        versions_seen.extend(versions.iter().cloned());
        if must_be_b.contains(batch) {
            assert!(
                versions.contains("b"),
                "batch {batch} published after the upgrade ran on a"
            );
        }
    }
    assert_eq!(
        versions_seen,
        HashSet::from(["a".to_owned(), "b".to_owned()])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_loads_plugins_from_the_artifact_cache() {
    let data = DataDir::new();
    let cache = data.path().join("plugins").to_str().unwrap().to_owned();
    let own_cache = [("QUIVER_PLUGINS__CACHE_DIR", cache.as_str())];
    {
        // This broker uses its own cache (in its data dir), not the shared one.
        let broker = Broker::start_with(&data, &own_cache);
        let client = broker.client().await;
        create(&client, "t").await;
        let info = client
            .deploy_plugin("tag", read_plugin(&example_plugin("template")), None)
            .await
            .unwrap();
        assert!(!info.cached, "the first deploy compiles");
        client
            .attach_plugin("t", Stage::new("tag").param("name", "via"))
            .await
            .unwrap();
        client.close().await;
        assert!(broker.stop().success());
    }
    assert!(
        std::fs::read_dir(data.path().join("plugins"))
            .unwrap()
            .count()
            > 0,
        "a compiled artifact is cached in the data dir"
    );
    let broker = Broker::start_with(&data, &own_cache);
    let client = broker.client().await;
    let plugins = client.list_plugins().await.unwrap();
    assert_eq!(plugins.len(), 1);
    assert!(plugins[0].cached, "the restart did not recompile");
    assert_eq!(plugins[0].topics, ["t"]);
    client.publish("t", "hello").await.unwrap();
    assert_eq!(header(&read_all(&client, "t").await[0], "via"), "quiver");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_components_are_refused_at_deploy() {
    let data = DataDir::new();
    let broker = Broker::start_with(&data, &[]);
    let client = broker.client().await;
    let refused = |result: Result<quiver_client::PluginInfo, Error>| {
        let error = result.unwrap_err();
        assert_eq!(error.code(), Some(ErrorCode::InvalidPlugin), "{error}");
        error.to_string()
    };
    let garbage = refused(
        client
            .deploy_plugin("garbage", vec![0x13u8; 4096], None)
            .await,
    );
    assert!(
        garbage.contains("not a valid WebAssembly component"),
        "{garbage}"
    );
    // A file that is not WebAssembly at all is named for what it is, not dumped.
    let text = refused(
        client
            .deploy_plugin("text", b"hello world, not wasm at all\n".to_vec(), None)
            .await,
    );
    assert!(
        text.contains("not WebAssembly") && text.contains("\"hello world, not"),
        "{text}"
    );
    assert!(!text.contains("0x68"), "no raw bytes: {text}");
    // A core module (the 8-byte header of an empty one) is told apart from a component.
    let core = refused(
        client
            .deploy_plugin("core", b"\0asm\x01\0\0\0".to_vec(), None)
            .await,
    );
    assert!(core.contains("core WebAssembly module"), "{core}");
    let mut truncated = read_plugin(&example_plugin("template"));
    truncated.truncate(truncated.len() / 2);
    refused(client.deploy_plugin("truncated", truncated, None).await);
    let wrong = refused(
        client
            .deploy_plugin("other", read_plugin(&test_plugin("wrong-world")), None)
            .await,
    );
    assert!(wrong.contains("quiver:plugin world"), "{wrong}");
    let name = client
        .deploy_plugin("bad name", read_plugin(&example_plugin("template")), None)
        .await
        .unwrap_err();
    assert_eq!(name.code(), Some(ErrorCode::InvalidArgument));
    assert!(
        client.list_plugins().await.unwrap().is_empty(),
        "nothing was stored"
    );
    let missing = client
        .attach_plugin("nowhere", Stage::new("x"))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Some(ErrorCode::TopicNotFound));
    create(&client, "t").await;
    let missing = client
        .attach_plugin("t", Stage::new("x"))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Some(ErrorCode::PluginNotFound));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_plugins_are_contained_and_the_broker_keeps_serving() {
    let data = DataDir::new();
    // Quarantine only after many failures: this test looks at each failure itself. The
    // deadline leaves the memory bomb time to reach its cap on a loaded machine (at
    // 50 ms, filling 64 MiB under a parallel test run sometimes hit the deadline first).
    let broker = Broker::start_with(
        &data,
        &[
            ("QUIVER_PLUGINS__QUARANTINE_AFTER", "100"),
            ("QUIVER_PLUGINS__CALL_TIMEOUT", "500ms"),
        ],
    );
    let client = broker.client().await;
    create(&client, "healthy").await;
    let mut healthy = client
        .subscribe("healthy", SubscribeOptions::from(StartAt::Earliest))
        .await
        .unwrap();
    let cases = [
        ("spin", "CPU deadline"),
        ("memory-bomb", "memory limit"),
        ("trap", "panicked at"),
        ("huge-output", "invalid output"),
    ];
    for (n, (plugin, reason)) in cases.into_iter().enumerate() {
        let topic = format!("hostile.{n}");
        create(&client, &topic).await;
        deploy(&client, plugin, test_plugin(plugin)).await;
        client
            .attach_plugin(&topic, Stage::new(plugin).on_error(OnError::FailOpen))
            .await
            .unwrap();
        let receipt = client
            .publish_batch(
                &topic,
                vec![NewRecord::new("boom"), NewRecord::new("boom too")],
            )
            .await
            .unwrap();
        assert_eq!(receipt.count, 0, "{plugin}: nothing stored as if processed");
        assert_eq!(
            receipt.dead_letter.as_ref().map(|d| d.count),
            Some(2),
            "{plugin}"
        );
        let dead = read_all(&client, &format!("dlq.{topic}")).await;
        let why = header(&dead[0], "quiver-dlq-reason");
        assert!(why.contains(reason), "{plugin}: dead-letter reason {why:?}");
        assert_eq!(header(&dead[0], "quiver-dlq-plugin"), plugin);
        let status = client.plugin_status(plugin).await.unwrap();
        assert_eq!(status.attachments[0].errors, 1, "{plugin}");
        assert!(
            status.attachments[0]
                .last_error
                .as_ref()
                .unwrap()
                .contains(reason)
        );

        // Meanwhile another topic is served as usual.
        client
            .publish("healthy", format!("still here {n}"))
            .await
            .unwrap();
        let record = take(&mut healthy, 1).await.remove(0);
        assert_eq!(record.payload, format!("still here {n}").as_bytes());
    }
    // The trap plugin recovers on good input: a fresh instance replaces the dead one.
    let receipt = client
        .publish_batch("hostile.2", vec![NewRecord::new("fine")])
        .await
        .unwrap();
    assert_eq!(receipt.count, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_plugin_is_quarantined_by_its_policy() {
    let data = DataDir::new();
    let broker = Broker::start_with(
        &data,
        &[
            ("QUIVER_PLUGINS__QUARANTINE_AFTER", "2"),
            ("QUIVER_PLUGINS__QUARANTINE_FOR", "1h"),
        ],
    );
    let client = broker.client().await;
    create(&client, "closed").await;
    create(&client, "open").await;
    deploy(&client, "trap", test_plugin("trap")).await;
    client
        .attach_plugin("closed", Stage::new("trap"))
        .await
        .unwrap();
    client
        .attach_plugin("open", Stage::new("trap").on_error(OnError::FailOpen))
        .await
        .unwrap();
    for topic in ["closed", "open"] {
        for _ in 0..2 {
            let receipt = client
                .publish_batch(topic, vec![NewRecord::new("boom")])
                .await
                .unwrap();
            assert!(receipt.dead_letter.is_some());
        }
    }
    // Fail-closed: publishes are refused while quarantined, with a clear error.
    let refused = client.publish("closed", "fine").await.unwrap_err();
    assert_eq!(
        refused.code(),
        Some(ErrorCode::PluginQuarantined),
        "{refused}"
    );
    assert!(
        refused.to_string().contains("`trap` is quarantined"),
        "{refused}"
    );
    // Fail-open: records pass unchanged, even the ones the plugin would trap on.
    let passed = client
        .publish_batch("open", vec![NewRecord::new("boom")])
        .await
        .unwrap();
    assert_eq!((passed.count, passed.dead_letter), (1, None));

    let status = client.plugin_status("trap").await.unwrap();
    assert_eq!(status.attachments.len(), 2);
    for attachment in &status.attachments {
        assert!(attachment.quarantined_until_ms.is_some(), "{attachment:?}");
        assert_eq!(attachment.errors, 2);
    }
    // Lifting the quarantine lets the next call run: it traps again, a dead letter,
    // not a refusal (two more failures in a row quarantine it again).
    let lifted = client.lift_quarantine("trap").await.unwrap();
    assert!(
        lifted
            .attachments
            .iter()
            .all(|a| a.quarantined_until_ms.is_none()),
        "{lifted:?}"
    );
    let receipt = client
        .publish_batch("closed", vec![NewRecord::new("boom")])
        .await
        .unwrap();
    assert!(receipt.dead_letter.is_some(), "{receipt:?}");
    client
        .publish_batch("closed", vec![NewRecord::new("boom")])
        .await
        .unwrap();
    let refused = client.publish("closed", "fine").await.unwrap_err();
    assert_eq!(refused.code(), Some(ErrorCode::PluginQuarantined));
    // Upgrading to fixed code lifts it too: the fix runs at once.
    client
        .upgrade_plugin("trap", read_plugin(&example_plugin("template")), None)
        .await
        .unwrap();
    let receipt = client
        .publish_batch("closed", vec![NewRecord::new("fine")])
        .await
        .unwrap();
    assert_eq!((receipt.count, receipt.dead_letter), (1, None));
    let status = client.plugin_status("trap").await.unwrap();
    for attachment in &status.attachments {
        assert_eq!(attachment.quarantined_until_ms, None, "{attachment:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_can_only_be_removed_when_detached() {
    let data = DataDir::new();
    let broker = Broker::start_with(&data, &[]);
    let client = broker.client().await;
    create(&client, "t").await;
    deploy(&client, "tag", example_plugin("template")).await;
    let exists = client
        .deploy_plugin("tag", read_plugin(&example_plugin("template")), None)
        .await
        .unwrap_err();
    assert_eq!(exists.code(), Some(ErrorCode::PluginExists));
    client.attach_plugin("t", Stage::new("tag")).await.unwrap();
    let twice = client
        .attach_plugin("t", Stage::new("tag"))
        .await
        .unwrap_err();
    assert_eq!(twice.code(), Some(ErrorCode::InvalidArgument));
    let in_use = client.remove_plugin("tag").await.unwrap_err();
    assert_eq!(in_use.code(), Some(ErrorCode::PluginInUse));
    assert!(in_use.to_string().contains("topic `t`"), "{in_use}");
    client.detach_plugin("t", "tag").await.unwrap();
    client.remove_plugin("tag").await.unwrap();
    assert!(client.list_plugins().await.unwrap().is_empty());
    assert_eq!(
        client.plugin_status("tag").await.unwrap_err().code(),
        Some(ErrorCode::PluginNotFound)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sandbox_denies_files_environment_network_and_clocks() {
    let data = DataDir::new();
    let broker = Broker::start_with(&data, &[("QUIVER_PLUGINS__QUARANTINE_AFTER", "100")]);
    let client = broker.client().await;
    create(&client, "t").await;
    deploy(&client, "escape", test_plugin("escape")).await;
    client
        .attach_plugin("t", Stage::new("escape"))
        .await
        .unwrap();
    let attempts = [
        ("file", "wasi:filesystem"),
        ("env", "wasi:cli/environment"),
        ("net", "wasi:sockets"),
        ("clock", "wasi:clocks"),
    ];
    for (attempt, _) in attempts {
        let receipt = client
            .publish_batch("t", vec![NewRecord::new(attempt)])
            .await
            .unwrap();
        assert_eq!(
            receipt.dead_letter.as_ref().map(|d| d.count),
            Some(1),
            "{attempt}"
        );
    }
    let dead = read_all(&client, "dlq.t").await;
    for (record, (attempt, import)) in dead.iter().zip(attempts) {
        let reason = header(record, "quiver-dlq-reason");
        assert!(reason.contains(import), "{attempt}: {reason}");
        assert!(!reason.contains("escaped"), "{attempt} got out: {reason}");
    }
    assert_eq!(client.publish("t", "harmless").await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_dir_is_deployed_at_start_and_upgraded_when_a_file_changes() {
    let data = DataDir::new();
    let dir = data.root().join("plugin-dir");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("tagger.wasm");
    std::fs::copy(test_plugin("version-a"), &file).unwrap();
    std::fs::write(dir.join("notes.txt"), "not a plugin").unwrap();
    let dir_arg = dir.to_str().unwrap().to_owned();
    let versions = |broker: &Broker| {
        let broker_addr = broker.addr().to_owned();
        let cert = broker.cert().to_owned();
        async move {
            let client = Client::builder()
                .ca_file(cert)
                .unwrap()
                .connect(&broker_addr)
                .await
                .unwrap();
            let plugins = client.list_plugins().await.unwrap();
            assert_eq!(plugins.len(), 1, "only the .wasm file is deployed");
            assert_eq!(plugins[0].name, "tagger");
            plugins[0].versions.clone()
        }
    };
    let broker = Broker::launch(&data, &["--plugin-dir", &dir_arg], &[]);
    assert_eq!(versions(&broker).await, ["1"]);
    assert!(broker.stop().success());
    // Unchanged: nothing happens. Changed: upgraded.
    let broker = Broker::launch(&data, &["--plugin-dir", &dir_arg], &[]);
    assert_eq!(versions(&broker).await, ["1"]);
    assert!(broker.stop().success());
    std::fs::copy(test_plugin("version-b"), &file).unwrap();
    let broker = Broker::launch(&data, &["--plugin-dir", &dir_arg], &[]);
    assert_eq!(versions(&broker).await, ["1", "2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quarantined_fail_closed_subscription_plugin_ends_the_subscription() {
    let data = DataDir::new();
    let broker = Broker::start_with(
        &data,
        &[
            ("QUIVER_PLUGINS__QUARANTINE_AFTER", "2"),
            ("QUIVER_PLUGINS__QUARANTINE_FOR", "1h"),
        ],
    );
    let client = broker.client().await;
    create(&client, "feed").await;
    deploy(&client, "trap", test_plugin("trap")).await;
    client
        .publish_batch(
            "feed",
            ["ok 1", "boom 1", "boom 2", "ok 2"]
                .map(NewRecord::new)
                .to_vec(),
        )
        .await
        .unwrap();
    // A window of one: one record per call, so each poison record fails its own call.
    let options = SubscribeOptions {
        from: StartAt::Earliest,
        window: 1,
        pipeline: vec![Stage::new("trap")],
        at: Vec::new(),
    };
    let mut sub = client.subscribe("feed", options).await.unwrap();
    assert_eq!(take(&mut sub, 1).await[0].payload, "ok 1");
    let end = tokio::time::timeout(Duration::from_secs(30), sub.next())
        .await
        .expect("the subscription ends promptly")
        .expect("with an error");
    let error = end.unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::PluginQuarantined), "{error}");
    // The two poison records went to the dead-letter topic on the way.
    let dead = read_all(&client, "dlq.feed").await;
    assert_eq!(payloads(&dead), ["boom 1", "boom 2"]);
    assert_eq!(header(&dead[0], "quiver-dlq-offset"), "1");
}

/// A stateful plugin under pipelined publishes from several connections: its calls
/// overlap with later publishes, yet the state each call wrote reaches storage in the
/// order the calls ran. The `counter` plugin numbers records in its state, so every
/// record's count is its offset + 1, and after a restart the numbering goes on where
/// it stopped. (Publishes used to run their plugins before taking their turn to be
/// stored: two could be stored in the other order, and the older count won.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stateful_plugin_sees_and_stores_its_state_in_call_order() {
    const CONNECTIONS: usize = 3;
    const PER_CONNECTION: usize = 400;
    let data = DataDir::new();
    let broker = Broker::start(&data);
    let client = broker.client().await;
    create(&client, "numbered").await;
    deploy(&client, "counter", test_plugin("counter")).await;
    client
        .attach_plugin("numbered", Stage::new("counter"))
        .await
        .unwrap();
    let mut producers = Vec::new();
    for c in 0..CONNECTIONS {
        let client = broker.client().await;
        producers.push(tokio::spawn(async move {
            // All in flight at once, each a publish of its own, of two records (so
            // the client does not merge them into one request).
            let pending: Vec<_> = (0..PER_CONNECTION / 2)
                .map(|i| {
                    let batch = vec![
                        NewRecord::new(format!("{c}-{i}-a")),
                        NewRecord::new(format!("{c}-{i}-b")),
                    ];
                    client.publish_batch("numbered", batch)
                })
                .collect();
            for p in pending {
                p.await.unwrap();
            }
        }));
    }
    for producer in producers {
        producer.await.unwrap();
    }
    let count = |r: &Record| -> u64 {
        String::from_utf8(r.header("count").expect("a count").to_vec())
            .unwrap()
            .parse()
            .unwrap()
    };
    let records = read_all(&client, "numbered").await;
    assert_eq!(records.len(), CONNECTIONS * PER_CONNECTION);
    for record in &records {
        assert_eq!(
            count(record),
            record.offset + 1,
            "at offset {}",
            record.offset
        );
    }
    client.close().await;
    assert!(broker.stop().success());

    let broker = Broker::start(&data);
    let client = broker.client().await;
    client.publish("numbered", "after").await.unwrap();
    let records = read_all(&client, "numbered").await;
    let last = records.last().unwrap();
    assert_eq!(
        (last.offset, count(last)),
        (records.len() as u64 - 1, records.len() as u64),
        "the numbering goes on after a restart"
    );
}
