//! Shadow rollouts through the real broker: new code run beside the live version on
//! the same batches changes nothing stored, `plugin diff` counts how the two decided,
//! `rollback` drops the shadow and `promote` makes it the live version under a steady
//! publish load, with no record lost or doubled and every batch wholly one version's.

#![allow(clippy::unwrap_used)] // in tests a failed unwrap is a failed test

use quiver_client::{NewRecord, Retention, Stage};
use quiver_tests::{Broker, DataDir, example_plugin, read_all, read_plugin, succeeded};
use serde_json::{Value, json};

/// `json-filter` keeps records of level warn and above: the live version. The
/// template, which tags every record (`tagged-by: quiver`) and keeps it: the shadow.
async fn gate(client: &quiver_client::Client, topic: &str, filter: Stage) {
    let json_filter = read_plugin(&example_plugin("json-filter"));
    client
        .deploy_plugin("gate", json_filter, None)
        .await
        .unwrap();
    client
        .create_topic(topic, Retention::default())
        .await
        .unwrap();
    client.attach_plugin(topic, filter).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_is_compared_and_discarded_then_rolled_back() {
    let data = DataDir::new();
    let broker = Broker::start(&data);
    let client = broker.client().await;
    let levels = Stage::new("gate")
        .param("where", "level >= warn")
        .param("order", "debug,info,warn,error");
    gate(&client, "logs", levels).await;
    let run = |args: &[&str]| succeeded(broker.cli(&data, args, ""));
    let template = example_plugin("template");
    assert_eq!(
        run(&[
            "plugin",
            "upgrade",
            "gate",
            template.to_str().unwrap(),
            "--shadow"
        ]),
        "shadowing gate version 1 with version 2: see `quiver plugin diff gate`\n"
    );

    // Four publishes of 25, 7 warnings in each.
    for batch in 0..4 {
        let records = (0..25)
            .map(|i| {
                let level = if i % 4 == 0 { "warn" } else { "info" };
                NewRecord::new(json!({"level": level, "n": batch * 25 + i}).to_string())
            })
            .collect();
        client.publish_batch("logs", records).await.unwrap();
    }
    // The live version alone decided what was stored.
    let stored = read_all(&client, "logs").await;
    assert_eq!(stored.len(), 28);
    assert!(stored.iter().all(|r| r.header("tagged-by").is_none()));

    let diff: Value = serde_json::from_str(&run(&["plugin", "diff", "gate", "--json"])).unwrap();
    assert_eq!((&diff["live"], &diff["shadow"]), (&json!("1"), &json!("2")));
    assert_eq!(diff["batches"], 4);
    assert_eq!(diff["records"], 100);
    assert_eq!(diff["differing"], 100, "the shadow replaces every record");
    assert_eq!(
        diff["kinds"],
        json!([
            {"live": "drop", "shadow": "replace", "records": 72},
            {"live": "keep", "shadow": "replace", "records": 28},
        ])
    );
    assert_eq!(diff["shadow_errors"], 0);
    let samples = diff["samples"].as_array().unwrap();
    assert_eq!(samples.len(), 5);
    assert_eq!(samples[0]["target"], "topic logs");
    assert_eq!(samples[0]["offset"], 0);
    assert_eq!(samples[0]["live"], "keep");
    assert!(
        samples[0]["shadow"]
            .as_str()
            .unwrap()
            .starts_with("replace with 1 record(s), 1 header(s)"),
        "{diff}"
    );
    assert!(diff["live_micros"].as_u64().unwrap() > 0);
    assert!(diff["shadow_micros"].as_u64().unwrap() > 0);
    let text = run(&["plugin", "diff", "gate"]);
    assert!(
        text.contains("4 batches, 100 records: 100 decided differently (100.0 %)")
            && text.contains("  drop -> replace: 72\n"),
        "{text}"
    );

    // Rolled back: the shadow is gone, nothing of it was stored, version 1 goes on.
    let rolled = run(&["plugin", "rollback", "gate"]);
    assert!(
        rolled.ends_with("rolled back gate version 2; version 1 goes on\n"),
        "{rolled}"
    );
    let none = broker.cli(&data, &["plugin", "diff", "gate"], "");
    assert!(!none.status.success());
    assert!(String::from_utf8_lossy(&none.stderr).contains("plugin `gate` runs no shadow"));
    let status = client.plugin_status("gate").await.unwrap();
    assert_eq!(status.info.versions, ["1"]);
    let warn = NewRecord::new(r#"{"level":"error"}"#);
    assert_eq!(
        client
            .publish_batch("logs", vec![warn])
            .await
            .unwrap()
            .count,
        1
    );
    let last = read_all(&client, "logs").await.pop().unwrap();
    assert!(last.header("tagged-by").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promotion_under_load_loses_and_doubles_nothing() {
    let data = DataDir::new();
    let broker = Broker::start(&data);
    let client = broker.client().await;
    // The live filter keeps everything (n >= 0), so a record's tag alone tells which
    // version stored it.
    gate(
        &client,
        "orders",
        Stage::new("gate").param("where", "n >= 0"),
    )
    .await;
    let template = read_plugin(&example_plugin("template"));
    client.shadow_plugin("gate", template, None).await.unwrap();

    // A producer publishes one record at a time while the shadow is promoted.
    const BEFORE: u64 = 150;
    const TOTAL: u64 = 400;
    let (halfway, reached) = tokio::sync::oneshot::channel();
    let producer = {
        let client = client.clone();
        tokio::spawn(async move {
            let mut halfway = Some(halfway);
            for n in 0..TOTAL {
                let record = NewRecord::new(json!({ "n": n }).to_string());
                let receipt = client.publish_batch("orders", vec![record]).await.unwrap();
                assert_eq!(receipt.count, 1, "record {n} is stored");
                if n + 1 == BEFORE {
                    let _ = halfway.take().map(|tx| tx.send(()));
                }
            }
        })
    };
    reached.await.unwrap();
    let promoted = client.promote_plugin("gate").await.unwrap();
    assert_eq!(promoted.shadow, "2");
    assert!(promoted.records >= BEFORE, "{promoted:?}");
    // Published after the promotion returned: the new version's.
    let after = NewRecord::new(json!({ "n": TOTAL }).to_string());
    client.publish_batch("orders", vec![after]).await.unwrap();
    producer.await.unwrap();

    let stored = read_all(&client, "orders").await;
    let numbers: Vec<u64> = stored
        .iter()
        .map(|r| {
            serde_json::from_slice::<Value>(&r.payload).unwrap()["n"]
                .as_u64()
                .unwrap()
        })
        .collect();
    let mut sorted = numbers.clone();
    sorted.sort_unstable();
    assert_eq!(
        sorted,
        (0..=TOTAL).collect::<Vec<_>>(),
        "each record stored once"
    );
    let tagged: Vec<bool> = stored
        .iter()
        .map(|r| r.header("tagged-by").is_some())
        .collect();
    let first_tagged = tagged.iter().position(|&t| t).unwrap();
    assert!(
        tagged[first_tagged..].iter().all(|&t| t),
        "once the new version stores a record, the old one stores none: {tagged:?}"
    );
    assert!(
        first_tagged >= BEFORE as usize,
        "what was stored before the promotion began is the old version's"
    );
    assert!(tagged[stored.len() - 1]);
    let status = client.plugin_status("gate").await.unwrap();
    assert_eq!(status.info.version, "2");
    assert_eq!(status.info.versions, ["1", "2"]);
    assert!(
        client.plugin_diff("gate").await.is_err(),
        "the shadow is gone"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_shadow_is_counted_and_never_fails_the_live_stage() {
    let data = DataDir::new();
    let broker = Broker::start(&data);
    let client = broker.client().await;
    client
        .deploy_plugin("gate", read_plugin(&example_plugin("template")), None)
        .await
        .unwrap();
    client
        .create_topic("events", Retention::default())
        .await
        .unwrap();
    client
        .attach_plugin("events", Stage::new("gate"))
        .await
        .unwrap();
    // The shadow traps on `boom`, four times in a row: more than the quarantine takes.
    let trap = read_plugin(&quiver_tests::test_plugin("trap"));
    client.shadow_plugin("gate", trap, None).await.unwrap();
    for _ in 0..4 {
        let receipt = client.publish("events", "boom").await.unwrap();
        assert!(receipt < 4, "stored by the live version");
    }
    assert_eq!(read_all(&client, "events").await.len(), 4);
    let diff = client.plugin_diff("gate").await.unwrap();
    assert_eq!((diff.batches, diff.shadow_errors), (4, 4));
    assert!(
        diff.last_error.as_deref().unwrap().contains("panicked at"),
        "{diff:?}"
    );
    let status = client.plugin_status("gate").await.unwrap();
    assert_eq!(status.attachments[0].errors, 0);
    assert_eq!(status.attachments[0].quarantined_until_ms, None);
}
