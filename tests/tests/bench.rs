//! `quiver bench` runs every scenario end to end and reports what it did. These check
//! counts and the report's shape, never speed: the figures belong in
//! docs/performance.md.

#![allow(clippy::unwrap_used)] // in tests a failed unwrap is a failed test

use std::time::Duration;

use quiver_tests::{Broker, DataDir, cli, eventually, example_plugin, succeeded};
use serde_json::Value;

/// Runs `quiver bench ARGS --json` (on its own broker) and parses the report.
fn bench(args: &[&str]) -> Value {
    let dir = DataDir::new();
    let plugin = example_plugin("json-filter");
    let plugin = plugin.to_str().unwrap();
    let args = [&["bench"], args, &["--json", "--plugin", plugin]].concat();
    let out = succeeded(cli(dir.root(), &args, &[], ""));
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// Runs `quiver bench ARGS`, which must fail, and returns what it said.
fn refused(args: &[&str]) -> String {
    let dir = DataDir::new();
    let out = cli(dir.root(), &[&["bench"], args].concat(), &[], "");
    assert!(!out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn every_scenario_runs_and_counts_what_it_moved() {
    let publish = bench(&[
        "publish",
        "--count",
        "2000",
        "--producers",
        "2",
        "--batch",
        "10",
    ]);
    assert_eq!(publish["scenario"], "publish");
    assert_eq!(publish["published"], 2000);
    assert_eq!(publish["cut_short"], false);
    assert!(publish["msgs_per_s"].as_f64().unwrap() > 0.0);
    let p = &publish["latency_us"];
    assert!(p["p50"].as_u64().unwrap() <= p["p99"].as_u64().unwrap());
    assert!(p["p99"].as_u64().unwrap() <= p["max"].as_u64().unwrap());
    // What the bench's own broker used: its CPU by kind of thread within the whole.
    let rss = publish["broker_rss_kib"].as_u64().unwrap();
    assert!(rss > 0);
    assert!(publish["broker_peak_rss_kib"].as_u64().unwrap() >= rss);
    let cpu = publish["broker_cpu_s"].as_f64().unwrap();
    assert!(
        cpu > 0.0,
        "2,000 publishes cost the broker some CPU: {publish}"
    );
    let by_thread = publish["broker_cpu_s_by_thread"].as_object().unwrap();
    let listed: f64 = by_thread.values().map(|s| s.as_f64().unwrap()).sum();
    // Threads' times are read after the process's, a tick (10 ms) apart at most each.
    assert!(
        listed <= cpu + 0.01 * (by_thread.len() + 1) as f64,
        "{publish}"
    );
    // Its disk traffic: every record reached its log, and every publish waited for a
    // flush (concurrent ones share one).
    let written = publish["broker_written_bytes"].as_u64().unwrap();
    assert!(written >= 2000 * 256, "{publish}");
    assert!(publish["broker_read_bytes"].is_u64(), "{publish}");
    let flushes = publish["broker_flushes"].as_u64().unwrap();
    assert!((1..=2000).contains(&flushes), "{publish}");
    assert!(publish["broker_flush_s"].is_f64(), "{publish}");

    let e2e = bench(&["e2e", "--count", "2000", "--size", "64", "--rate", "20000"]);
    assert_eq!(
        (
            e2e["published"].as_u64(),
            e2e["received_per_consumer"].as_u64()
        ),
        (Some(2000), Some(2000))
    );
    assert_eq!(e2e["size"], 64);

    // Spread over three topics of batched durability: subscribers use a pattern.
    let fanout = bench(&[
        "fanout",
        "--count",
        "1000",
        "--consumers",
        "3",
        "--topics",
        "3",
        "--durability",
        "batched",
    ]);
    assert_eq!(fanout["consumers"], 3);
    assert_eq!(fanout["topics"], 3);
    assert!(
        fanout["durability"]
            .as_str()
            .unwrap()
            .starts_with("batched"),
        "{fanout}"
    );
    assert_eq!(
        fanout["received_per_consumer"], 1000,
        "every subscriber gets every record"
    );

    let group = bench(&[
        "group",
        "--count",
        "1000",
        "--consumers",
        "2",
        "--prefetch",
        "10",
        "--topics",
        "4",
    ]);
    assert_eq!(
        group["received_per_consumer"], 1000,
        "the members share every record once"
    );

    let plugin = bench(&["plugin", "--count", "500"]);
    assert_eq!(plugin["published"], 500);
    assert!(plugin["baseline_msgs_per_s"].as_f64().unwrap() > 0.0);
    assert!(plugin["cost_percent"].is_number());
    assert!(plugin["plugin_calls"].as_u64().unwrap() > 0);
    assert_eq!(
        plugin["plugin_kept"], 500,
        "the default filter keeps every record"
    );
}

/// `--param` replaces the plugin scenario's default parameters, and the report says
/// what the plugin kept; elsewhere it is refused.
#[test]
fn the_plugin_scenario_takes_the_attachments_parameters() {
    let plugin = bench(&["plugin", "--count", "500", "--param", "where=seq < 100"]);
    assert_eq!(
        plugin["published"], 500,
        "dropped records are acknowledged too"
    );
    assert_eq!(plugin["plugin_kept"], 100, "{plugin}");
    let stderr = refused(&["publish", "--param", "where=seq < 100"]);
    assert!(
        stderr.contains("--param sets the plugin scenario's"),
        "{stderr}"
    );
}

/// A run the time limit stops says so, in both reports: its figures are for fewer
/// records than asked for.
#[test]
fn a_run_cut_short_by_the_time_limit_says_so() {
    // Paced at 1,000 records a second, a million cannot finish within a second.
    let args = [
        "publish",
        "--count",
        "1000000",
        "--rate",
        "1000",
        "--time-limit",
        "1s",
    ];
    let report = bench(&args);
    assert_eq!(report["cut_short"], true, "{report}");
    let published = report["published"].as_u64().unwrap();
    assert!(0 < published && published < 1_000_000, "{report}");

    let dir = DataDir::new();
    let text = succeeded(cli(dir.root(), &[&["bench"], &args[..]].concat(), &[], ""));
    assert!(
        text.contains("cut short by --time-limit 1s:")
            && text.contains("of the 1000000 records asked for"),
        "{text}"
    );
}

#[test]
fn bad_settings_are_refused_with_a_message() {
    let stderr = refused(&["publish", "--size", "8"]);
    assert!(stderr.contains("at least 16 bytes"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_given_to_the_bench_topics_is_applied_by_the_sweep() {
    let data = DataDir::new();
    let broker = Broker::start_with(&data, &[("QUIVER_RETENTION_INTERVAL", "50ms")]);
    let args = [
        "bench",
        "publish",
        "--count",
        "600",
        "--topics",
        "3",
        "--retain-records",
        "5",
        "--keep",
        "--json",
    ];
    let out = succeeded(broker.cli(&data, &args, ""));
    let report: Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(report["retain_records"], 5);
    assert_eq!(report["published"], 600);
    let client = broker.client().await;
    let topics = client.list_topics().await.unwrap();
    assert_eq!(topics.len(), 3, "the kept bench topics");
    for topic in &topics {
        assert_eq!(topic.retention.max_records, Some(5), "{}", topic.name);
    }
    eventually(
        Duration::from_secs(30),
        "every bench topic trimmed to its last 5 records",
        || async {
            let topics = client.list_topics().await.unwrap();
            topics
                .iter()
                .all(|t| t.records == 5 && t.first_offset == 195)
        },
    )
    .await;

    let stderr = refused(&["publish", "--retain-records", "0"]);
    assert!(
        stderr.contains("--retain-records must be at least 1"),
        "{stderr}"
    );
}

/// `--nack-delay`: the members nack every delivery instead of acking it, so a delay
/// longer than the run leaves each record delivered once and pending (`--keep` keeps
/// the group to show it); without `--keep` the bench deletes its group and topics,
/// leaving no dead-letter topic behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_members_can_nack_everything() {
    let data = DataDir::new();
    let broker = Broker::start(&data);
    let run = |keep: bool| {
        let mut args = vec![
            "bench",
            "group",
            "--prefill",
            "--count",
            "3000",
            "--consumers",
            "2",
            "--nack-delay",
            "1h",
            "--json",
        ];
        if keep {
            args.push("--keep");
        }
        let out = succeeded(broker.cli(&data, &args, ""));
        let report: Value =
            serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
        assert_eq!(report["nack_delay_ms"], 3_600_000, "{report}");
        let per_member: Vec<u64> = serde_json::from_value(report["per_member"].clone()).unwrap();
        assert_eq!(
            per_member.iter().sum::<u64>(),
            3000,
            "each record delivered once: {report}"
        );
    };
    let client = broker.client().await;
    run(true);
    let groups = client.list_groups().await.unwrap();
    assert_eq!(groups.len(), 1);
    let group = client.describe_group(&groups[0].name).await.unwrap();
    let pending: u64 = group.topics.iter().map(|lane| lane.pending).sum();
    assert_eq!(pending, 3000, "every record nacked and waiting: {group:?}");
    client.delete_group(&group.name).await.unwrap();
    for topic in client.list_topics().await.unwrap() {
        client.delete_topic(&topic.name).await.unwrap();
    }

    run(false);
    assert!(client.list_groups().await.unwrap().is_empty());
    let topics = client.list_topics().await.unwrap();
    assert!(topics.is_empty(), "nothing left behind: {topics:?}");

    let stderr = refused(&["publish", "--nack-delay", "1s"]);
    assert!(
        stderr.contains("--nack-delay is for the group scenario"),
        "{stderr}"
    );
}
