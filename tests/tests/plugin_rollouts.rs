//! Rollouts through the real broker: a shadow (new code run beside the live version on
//! the same batches) changes nothing stored and `plugin diff` counts how the two
//! decided; a canary takes its share of the records by key, each key staying with one
//! version; `rollback` drops a rollout and `promote` makes it the live version under a
//! steady publish load, with no record lost or doubled and every batch wholly one
//! version's.

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
        "gate version 1 shadows version 2: see `quiver plugin diff gate`\n"
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
    assert_eq!(
        (&diff["live"], &diff["candidate"]),
        (&json!("1"), &json!("2"))
    );
    assert_eq!(diff["canary_percent"], Value::Null);
    assert_eq!(diff["batches"], 4);
    assert_eq!(diff["records"], 100);
    assert_eq!(diff["differing"], 100, "the shadow replaces every record");
    assert_eq!(
        diff["kinds"],
        json!([
            {"live": "drop", "candidate": "replace", "records": 72},
            {"live": "keep", "candidate": "replace", "records": 28},
        ])
    );
    assert_eq!(diff["candidate_errors"], 0);
    let samples = diff["samples"].as_array().unwrap();
    assert_eq!(samples.len(), 5);
    assert_eq!(samples[0]["target"], "topic logs");
    assert_eq!(samples[0]["offset"], 0);
    assert_eq!(samples[0]["live"], "keep");
    assert!(
        samples[0]["candidate"]
            .as_str()
            .unwrap()
            .starts_with("replace with 1 record(s); the first: headers [tagged-by=quiver]"),
        "{diff}"
    );
    assert!(diff["live_micros"].as_u64().unwrap() > 0);
    assert!(diff["candidate_micros"].as_u64().unwrap() > 0);
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
    assert!(String::from_utf8_lossy(&none.stderr).contains("plugin `gate` has no rollout running"));
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

/// Records published one at a time to `orders`, 20 keys in turn, while `switch`
/// (a promotion or a rollback) runs after the first [`BEFORE`], and one more once it
/// returned: each stored record's key and whether the template tagged it (the new
/// code stored it), in the topic's order, each checked stored once.
async fn switch_under_load<F>(client: &quiver_client::Client, switch: F) -> Vec<(String, bool)>
where
    F: std::future::Future<Output = ()>,
{
    const TOTAL: u64 = 400;
    let record =
        |n: u64| NewRecord::new(json!({ "n": n }).to_string()).with_key(format!("k{}", n % 20));
    let (halfway, reached) = tokio::sync::oneshot::channel();
    let producer = {
        let client = client.clone();
        tokio::spawn(async move {
            let mut halfway = Some(halfway);
            for n in 0..TOTAL {
                let receipt = client
                    .publish_batch("orders", vec![record(n)])
                    .await
                    .unwrap();
                assert_eq!(receipt.count, 1, "record {n} is stored");
                if n + 1 == BEFORE {
                    let _ = halfway.take().map(|tx| tx.send(()));
                }
            }
        })
    };
    reached.await.unwrap();
    switch.await;
    // Published after the switch returned.
    client
        .publish_batch("orders", vec![record(TOTAL)])
        .await
        .unwrap();
    producer.await.unwrap();

    let stored = read_all(client, "orders").await;
    let mut numbers: Vec<u64> = stored
        .iter()
        .map(|r| {
            serde_json::from_slice::<Value>(&r.payload).unwrap()["n"]
                .as_u64()
                .unwrap()
        })
        .collect();
    numbers.sort_unstable();
    assert_eq!(
        numbers,
        (0..=TOTAL).collect::<Vec<_>>(),
        "each record stored once"
    );
    stored
        .iter()
        .map(|r| {
            let key = String::from_utf8(r.key.as_ref().unwrap().to_vec()).unwrap();
            (key, r.header("tagged-by").is_some())
        })
        .collect()
}

/// `topic` created with the template deployed as `gate` and attached: the live
/// version tags every record and keeps it.
async fn tagging_gate(client: &quiver_client::Client, topic: &str) {
    client
        .deploy_plugin("gate", read_plugin(&example_plugin("template")), None)
        .await
        .unwrap();
    client
        .create_topic(topic, Retention::default())
        .await
        .unwrap();
    client
        .attach_plugin(topic, Stage::new("gate"))
        .await
        .unwrap();
}

/// The live filter keeping every record published here (`n >= 0`), so that a
/// record's tag alone tells which version stored it.
fn keep_all() -> Stage {
    Stage::new("gate").param("where", "n >= 0")
}

/// Records published before the switch began.
const BEFORE: u64 = 150;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promotion_under_load_loses_and_doubles_nothing() {
    let data = DataDir::new();
    let broker = Broker::start(&data);
    let client = broker.client().await;
    gate(&client, "orders", keep_all()).await;
    let template = read_plugin(&example_plugin("template"));
    client.shadow_plugin("gate", template, None).await.unwrap();

    let promote = async {
        let promoted = client.promote_plugin("gate").await.unwrap();
        assert_eq!(promoted.candidate, "2");
        assert!(promoted.records >= BEFORE, "{promoted:?}");
    };
    let tagged: Vec<bool> = switch_under_load(&client, promote)
        .await
        .into_iter()
        .map(|(_, tagged)| tagged)
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
    let status = client.plugin_status("gate").await.unwrap();
    assert_eq!(status.info.version, "2");
    assert_eq!(status.info.versions, ["1", "2"]);
    assert!(
        client.plugin_diff("gate").await.is_err(),
        "the rollout is gone"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_rolled_back_under_load_loses_and_doubles_nothing() {
    let data = DataDir::new();
    let broker = Broker::start(&data);
    let client = broker.client().await;
    gate(&client, "orders", keep_all()).await;
    let template = read_plugin(&example_plugin("template"));
    client
        .canary_plugin("gate", template, None, 50)
        .await
        .unwrap();

    let rollback = async {
        let rolled = client.rollback_plugin("gate").await.unwrap();
        assert!(rolled.records > 0, "the canary took records: {rolled:?}");
    };
    let stored = switch_under_load(&client, rollback).await;
    // Each key's records: the canary's first (if the key is one of its), then the live
    // version's, never the canary's again.
    let mut canary_keys = 0;
    for key in 0..20 {
        let key = format!("k{key}");
        let tags: Vec<bool> = stored
            .iter()
            .filter(|(k, _)| *k == key)
            .map(|(_, t)| *t)
            .collect();
        let first_live = tags.iter().position(|&t| !t).unwrap();
        assert!(tags[first_live..].iter().all(|&t| !t), "{key}: {tags:?}");
        canary_keys += usize::from(tags[0]);
    }
    assert!(
        canary_keys > 0,
        "some keys were the canary's before the rollback"
    );
    assert!(
        !stored.last().unwrap().1,
        "after the rollback, the live version's"
    );
    let status = client.plugin_status("gate").await.unwrap();
    assert_eq!(status.info.versions, ["1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_shadow_is_counted_and_never_fails_the_live_stage() {
    let data = DataDir::new();
    let broker = Broker::start(&data);
    let client = broker.client().await;
    tagging_gate(&client, "events").await;
    // The shadow traps on `boom`, four times in a row: more than the quarantine takes.
    let trap = read_plugin(&quiver_tests::test_plugin("trap"));
    client.shadow_plugin("gate", trap, None).await.unwrap();
    for _ in 0..4 {
        let receipt = client.publish("events", "boom").await.unwrap();
        assert!(receipt < 4, "stored by the live version");
    }
    assert_eq!(read_all(&client, "events").await.len(), 4);
    let diff = client.plugin_diff("gate").await.unwrap();
    assert_eq!((diff.batches, diff.candidate_errors), (4, 4));
    assert!(
        diff.last_error.as_deref().unwrap().contains("panicked at"),
        "{diff:?}"
    );
    let status = client.plugin_status("gate").await.unwrap();
    assert_eq!(status.attachments[0].errors, 0);
    assert_eq!(status.attachments[0].quarantined_until_ms, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_takes_its_share_by_key_and_rolls_back() {
    let data = DataDir::new();
    let broker = Broker::start(&data);
    let client = broker.client().await;
    gate(&client, "orders", keep_all()).await;
    let template = example_plugin("template");
    let started = succeeded(broker.cli(
        &data,
        &[
            "plugin",
            "upgrade",
            "gate",
            template.to_str().unwrap(),
            "--canary",
            "30",
        ],
        "",
    ));
    assert_eq!(
        started,
        "gate version 1 gives 30 % of the records, by key, to version 2: see `quiver plugin diff gate`\n"
    );
    // 200 keys, 5 records each, published in batches of 40 that mix the keys.
    let records: Vec<NewRecord> = (0..1000)
        .map(|n| NewRecord::new(json!({ "n": n }).to_string()).with_key(format!("k{}", n % 200)))
        .collect();
    for batch in records.chunks(40) {
        let receipt = client
            .publish_batch("orders", batch.to_vec())
            .await
            .unwrap();
        assert_eq!(receipt.count, 40);
    }
    let stored = read_all(&client, "orders").await;
    assert_eq!(stored.len(), 1000, "every record stored once");
    // One key, one version: the canary's records are tagged, the live version's not.
    let mut by_key = std::collections::BTreeMap::<Vec<u8>, Vec<bool>>::new();
    for record in &stored {
        let key = record.key.as_ref().unwrap().to_vec();
        by_key
            .entry(key)
            .or_default()
            .push(record.header("tagged-by").is_some());
    }
    assert_eq!(by_key.len(), 200);
    assert!(
        by_key
            .values()
            .all(|tags| tags.iter().all(|&t| t == tags[0])),
        "a key stays with one version"
    );
    let canary_keys = by_key.values().filter(|tags| tags[0]).count();
    assert!(
        (40..=80).contains(&canary_keys),
        "about 30 % of 200 keys go to the canary: {canary_keys}"
    );
    let diff = client.plugin_diff("gate").await.unwrap();
    assert_eq!(diff.canary_percent, Some(30));
    assert_eq!(diff.records, 5 * canary_keys as u64);
    assert_eq!((diff.differing, diff.candidate_errors), (0, 0));

    // Records without a key, each its own publish, are dealt out in turn: exactly 30
    // of each hundred.
    for n in 0..200 {
        let record = NewRecord::new(json!({ "n": 1000 + n }).to_string());
        client.publish_batch("orders", vec![record]).await.unwrap();
    }
    let keyless = read_all(&client, "orders").await.split_off(1000);
    let tagged = keyless
        .iter()
        .filter(|r| r.header("tagged-by").is_some())
        .count();
    assert_eq!(tagged, 60);

    // Rolled back: every key is the live version's again.
    client.rollback_plugin("gate").await.unwrap();
    let again: Vec<NewRecord> = (0..200)
        .map(|k| NewRecord::new(json!({ "n": 1200 + k }).to_string()).with_key(format!("k{k}")))
        .collect();
    client.publish_batch("orders", again).await.unwrap();
    let stored = read_all(&client, "orders").await;
    assert!(
        stored[1200..]
            .iter()
            .all(|r| r.header("tagged-by").is_none())
    );
    // Outside 1 to 99 percent: refused.
    let full = broker.cli(
        &data,
        &[
            "plugin",
            "upgrade",
            "gate",
            template.to_str().unwrap(),
            "--canary",
            "100",
        ],
        "",
    );
    assert!(!full.status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_canary_dead_letters_its_share_under_its_own_name() {
    let data = DataDir::new();
    let broker = Broker::start(&data);
    let client = broker.client().await;
    tagging_gate(&client, "events").await;
    // The canary traps on `boom`; key `a` is its (FNV-1a of "a" is 96 modulo 100).
    let trap = read_plugin(&quiver_tests::test_plugin("trap"));
    client.canary_plugin("gate", trap, None, 99).await.unwrap();
    let boom = NewRecord::new("boom").with_key("a");
    let receipt = client.publish_batch("events", vec![boom]).await.unwrap();
    assert_eq!(receipt.dead_letter.map(|d| d.count), Some(1));
    let dead = read_all(&client, "dlq.events").await;
    let reason = String::from_utf8(dead[0].header("quiver-dlq-reason").unwrap().to_vec()).unwrap();
    assert!(reason.starts_with("canary version 2: trapped"), "{reason}");
    // The canary's next record of that key is stored; the failure is in the diff.
    let fine = NewRecord::new("fine").with_key("a");
    assert_eq!(
        client
            .publish_batch("events", vec![fine])
            .await
            .unwrap()
            .count,
        1
    );
    let diff = client.plugin_diff("gate").await.unwrap();
    assert_eq!((diff.records, diff.candidate_errors), (2, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_keeps_its_state_apart_from_the_live_state() {
    let data = DataDir::new();
    let broker = Broker::start(&data);
    let client = broker.client().await;
    tagging_gate(&client, "events").await;
    // The shadow counts the records it sees in its state: 1, 2, 3… across batches.
    let counter = read_plugin(&quiver_tests::test_plugin("counter"));
    client.shadow_plugin("gate", counter, None).await.unwrap();
    for batch in 0..3 {
        let records = (0..2)
            .map(|i| NewRecord::new(format!("{batch}.{i}")))
            .collect();
        client.publish_batch("events", records).await.unwrap();
    }
    let diff = client.plugin_diff("gate").await.unwrap();
    assert_eq!(diff.samples.len(), 5);
    for (n, sample) in diff.samples.iter().enumerate() {
        assert!(
            sample.candidate.contains(&format!("count={}", n + 1)),
            "the shadow read what it wrote itself: {sample:?}"
        );
    }
    // Promoted, it starts from the live state, where none of its writes went.
    client.promote_plugin("gate").await.unwrap();
    client.publish("events", "after").await.unwrap();
    let last = read_all(&client, "events").await.pop().unwrap();
    assert_eq!(last.header("count").map(|v| &v[..]), Some(&b"1"[..]));
}
