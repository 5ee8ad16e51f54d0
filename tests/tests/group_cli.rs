//! The CLI's group, request and reply commands against a real broker.

#![allow(clippy::unwrap_used)] // in tests a failed unwrap is a failed test

use std::process::Output;
use std::time::Duration;

use quiver_tests::{Broker, DataDir, eventually, succeeded};
use serde_json::Value;

fn quiver(broker: &Broker, data: &DataDir, args: &[&str]) -> Output {
    broker.cli(data, args, "")
}

fn lines(out: &str) -> Vec<&str> {
    out.lines().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_commands_manage_a_group_that_sub_consumes() {
    let data = DataDir::new();
    let broker = Broker::start(&data);
    succeeded(quiver(&broker, &data, &["topic", "create", "jobs"]));
    succeeded(broker.cli(
        &data,
        &["pub", "jobs"],
        "job-0\njob-1\njob-2\njob-3\njob-4\n",
    ));
    let created = succeeded(quiver(
        &broker,
        &data,
        &[
            "group",
            "create",
            "workers",
            "--topic",
            "jobs",
            "--ack-timeout",
            "10s",
            "--max-deliveries",
            "3",
            "--prefetch",
            "10",
        ],
    ));
    assert_eq!(created.trim(), "created workers on jobs");

    // Two records printed and acknowledged; then one printed and left unacknowledged.
    let out = succeeded(quiver(
        &broker,
        &data,
        &["sub", "--group", "workers", "--count", "2"],
    ));
    assert_eq!(lines(&out), ["job-0", "job-1"]);
    let out = succeeded(quiver(
        &broker,
        &data,
        &[
            "sub", "--group", "workers", "--count", "1", "--no-ack", "--json",
        ],
    ));
    let record: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(record["offset"], 2);
    // A member may be handed a record just before it leaves; that counts as a delivery.
    assert!(record["deliveries"].as_u64().unwrap() >= 1);

    let described = succeeded(quiver(
        &broker,
        &data,
        &["group", "describe", "workers", "--json"],
    ));
    let group: Value = serde_json::from_str(described.trim()).unwrap();
    assert_eq!(group["pattern"], "jobs");
    assert_eq!(group["ack_timeout_ms"], 10_000);
    assert_eq!(group["max_deliveries"], 3);
    let topic = &group["topics"][0];
    let pending = topic["pending"].as_u64().unwrap();
    let cursor = topic["cursor"].as_u64().unwrap();
    // Offset 2 is pending, unacknowledged (and maybe 3, handed out just before a leave).
    assert!(
        (1..=2).contains(&pending) && cursor == 2 + pending,
        "{described}"
    );
    assert_eq!(
        topic["lag"].as_u64(),
        Some(3),
        "two acked of five: {described}"
    );
    let text = succeeded(quiver(&broker, &data, &["group", "describe", "workers"]));
    assert!(text.contains("ack timeout:    10s"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("jobs") && l.contains(&format!("  {pending}  "))),
        "{text}"
    );

    // The unacknowledged record comes first, as a redelivery, then the rest.
    let out = succeeded(quiver(
        &broker,
        &data,
        &["sub", "--group", "workers", "--count", "3"],
    ));
    assert_eq!(lines(&out), ["job-2", "job-3", "job-4"]);
    let table = succeeded(quiver(&broker, &data, &["group", "list"]));
    let row: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
    // NAME PATTERN MEMBERS LAG PENDING REDELIVERED DEAD
    assert_eq!(row[..5], ["workers", "jobs", "0", "0", "0"], "{table}");
    assert_ne!(row[5], "0", "offset 2 was redelivered: {table}");
    assert_eq!(row[6], "0", "{table}");

    // Replay from the start.
    let reset = succeeded(quiver(
        &broker,
        &data,
        &["group", "reset", "workers", "--to", "earliest"],
    ));
    assert_eq!(reset.trim(), "workers jobs at 0");
    let out = succeeded(quiver(
        &broker,
        &data,
        &["sub", "--group", "workers", "--count", "5"],
    ));
    assert_eq!(lines(&out), ["job-0", "job-1", "job-2", "job-3", "job-4"]);

    let deleted = succeeded(quiver(&broker, &data, &["group", "delete", "workers"]));
    assert_eq!(deleted.trim(), "deleted workers");
    let missing = quiver(&broker, &data, &["group", "describe", "workers"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("group `workers` does not exist"));
    let bad = quiver(
        &broker,
        &data,
        &["group", "create", "g", "--topic", "jobs", "--prefetch", "0"],
    );
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("prefetch must be"));
}

/// Sends a request with the CLI until a responder started in the background answers
/// it; returns the successful output. The first tries may find no responder yet, or
/// reach only one that is going away (its requests time out): both are retried.
async fn request_when_answered(broker: &Broker, data: &DataDir, args: &[&str]) -> String {
    let mut answer = None;
    let args = [args, &["--timeout", "2s"]].concat();
    eventually(Duration::from_secs(30), "a responder answers", || {
        let out = quiver(broker, data, &args);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let retry = stderr.contains("NoResponders") || stderr.contains("RequestTimeout");
        assert!(out.status.success() || retry, "{stderr}");
        let answered = out.status.success();
        if answered {
            answer = Some(String::from_utf8(out.stdout).unwrap());
        }
        async move { answered }
    })
    .await;
    answer.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_and_reply_commands_answer_each_other() {
    let data = DataDir::new();
    let broker = Broker::start(&data);
    succeeded(quiver(&broker, &data, &["topic", "create", "rpc.upper"]));

    // Nothing answers yet: a clear error.
    let none = quiver(&broker, &data, &["request", "rpc.upper", "hello"]);
    assert!(!none.status.success());
    assert!(String::from_utf8_lossy(&none.stderr).contains("no subscription or group member"));

    let responder = broker.spawn_cli(
        &data,
        &[
            "reply",
            "rpc.upper",
            "--command",
            "tr a-z A-Z",
            "--count",
            "2",
        ],
    );
    let out = request_when_answered(&broker, &data, &["request", "rpc.upper", "hello"]).await;
    assert_eq!(out, "HELLO\n");
    let json = succeeded(quiver(
        &broker,
        &data,
        &["request", "rpc.upper", "abc", "--json"],
    ));
    let reply: Value = serde_json::from_str(json.trim()).unwrap();
    assert_eq!(reply["payload"], "ABC");
    let exited = responder.wait();
    assert!(
        exited.status.success(),
        "{}",
        String::from_utf8_lossy(&exited.stderr)
    );

    // Echo; and a consumer that never answers makes a timeout, not "no responders".
    let echo = broker.spawn_cli(&data, &["reply", "rpc.upper", "--count", "1"]);
    let out = request_when_answered(&broker, &data, &["request", "rpc.upper", "same"]).await;
    assert_eq!(out, "same\n");
    assert!(echo.wait().status.success());
    let _silent = broker.spawn_cli(&data, &["sub", "rpc.upper"]);
    let timed_out = {
        let mut result = None;
        eventually(
            Duration::from_secs(30),
            "the silent consumer is subscribed",
            || {
                let out = quiver(
                    &broker,
                    &data,
                    &["request", "rpc.upper", "x", "--timeout", "200ms"],
                );
                let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
                let subscribed = stderr.contains("RequestTimeout");
                if subscribed {
                    result = Some(stderr);
                }
                async move { subscribed }
            },
        )
        .await;
        result.unwrap()
    };
    assert!(timed_out.contains("no reply within 200ms"), "{timed_out}");
}
