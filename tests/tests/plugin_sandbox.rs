//! Each attachment's sandbox through the real broker and CLI: a memory cap and a call
//! deadline set per attachment (`plugin attach --memory --deadline`), held to the
//! broker's maxima, shown by `plugin status`, kept across a restart, and set through
//! the console's API as well.

#![allow(clippy::unwrap_used)] // in tests a failed unwrap is a failed test

use quiver_tests::http::{As, api};
use quiver_tests::{Broker, DataDir, Stop, succeeded, test_plugin};
use serde_json::{Value, json};

/// The dead-letter reason of the first record in `topic`'s dead-letter topic.
fn dead_letter_reason(broker: &Broker, data: &DataDir, topic: &str) -> String {
    let dlq = format!("dlq.{topic}");
    let args = ["sub", &dlq, "--from", "earliest", "--count", "1", "--json"];
    let dead: Value = serde_json::from_str(&succeeded(broker.cli(data, &args, ""))).unwrap();
    dead["headers"]["quiver-dlq-reason"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// `plugin status --json`'s sandbox of the attachment on `topic`.
fn sandbox(broker: &Broker, data: &DataDir, plugin: &str, topic: &str) -> Value {
    let status: Value = serde_json::from_str(&succeeded(broker.cli(
        data,
        &["plugin", "status", plugin, "--json"],
        "",
    )))
    .unwrap();
    let target = format!("topic {topic}");
    status["attachments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["target"] == target.as_str())
        .unwrap_or_else(|| panic!("no attachment on {topic}: {status}"))["sandbox"]
        .clone()
}

#[test]
fn each_attachment_runs_in_its_own_sandbox_within_the_maxima() {
    let data = DataDir::new();
    // A long quarantine would hide the second failure; these plugins fail every call.
    let mut broker = Broker::start_with(&data, &[("QUIVER_PLUGINS__QUARANTINE_AFTER", "100")]);
    let run = |broker: &Broker, args: &[&str]| succeeded(broker.cli(&data, args, ""));
    for plugin in ["memory-bomb", "spin"] {
        let file = test_plugin(plugin);
        run(
            &broker,
            &["plugin", "deploy", file.to_str().unwrap(), "--name", plugin],
        );
    }
    // One plugin, two topics, two sandboxes.
    let attachments = [
        ("memory-bomb", "small", "--memory", "8MiB"),
        ("memory-bomb", "large", "--memory", "24MiB"),
        ("spin", "quick", "--deadline", "40ms"),
        ("spin", "patient", "--deadline", "300ms"),
    ];
    for (plugin, topic, flag, value) in attachments {
        run(&broker, &["topic", "create", topic]);
        run(
            &broker,
            &["plugin", "attach", plugin, "--topic", topic, flag, value],
        );
    }
    let publish_fails = |broker: &Broker, topic: &str| {
        assert_eq!(
            run(broker, &["pub", topic, "boom"]),
            format!("dead-lettered to dlq.{topic}@0\n")
        );
    };
    for (_, topic, _, _) in attachments {
        publish_fails(&broker, topic);
    }
    for (topic, reason) in [
        ("small", "exceeded its memory limit of 8.0 MiB"),
        ("large", "exceeded its memory limit of 24.0 MiB"),
        ("quick", "exceeded its CPU deadline of 40ms"),
        ("patient", "exceeded its CPU deadline of 300ms"),
    ] {
        assert_eq!(dead_letter_reason(&broker, &data, topic), reason);
    }

    // Status shows what each asked for and what is in force; what was not asked for
    // is the language's default (Rust: 64 MiB and 100 ms).
    let small = sandbox(&broker, &data, "memory-bomb", "small");
    assert_eq!(small["language"], "rust");
    assert_eq!(small["memory_limit"], 8 << 20);
    assert_eq!(small["asked"]["memory"], 8 << 20);
    assert_eq!(small["call_timeout_ms"], 100);
    assert_eq!(small["asked"]["call_timeout_ms"], Value::Null);
    let peak = small["memory_peak"].as_u64().unwrap();
    assert!(
        peak > 1 << 20 && peak <= 8 << 20,
        "the peak is what the bomb reached under its cap: {peak}"
    );
    let quick = sandbox(&broker, &data, "spin", "quick");
    assert_eq!(quick["call_timeout_ms"], 40);
    assert_eq!(quick["memory_limit"], 64 << 20);
    let text = run(&broker, &["plugin", "status", "spin"]);
    assert!(
        text.contains("rust: memory") && text.contains("of 64.0 MiB (default)  deadline 40ms\n"),
        "{text}"
    );

    // Beyond the broker's maxima (1 GiB, 10 s) or below what can run: refused,
    // naming the setting, and nothing attached.
    run(&broker, &["topic", "create", "greedy"]);
    for (flag, value, says) in [
        (
            "--memory",
            "2GiB",
            "over the broker's maximum of 1.0 GiB (plugins.max_memory_limit)",
        ),
        (
            "--deadline",
            "11s",
            "over the broker's maximum of 10s (plugins.max_call_timeout)",
        ),
        ("--memory", "100KiB", "too small: at least 1 MiB"),
    ] {
        let refused = broker.cli(
            &data,
            &["plugin", "attach", "spin", "--topic", "greedy", flag, value],
            "",
        );
        assert!(!refused.status.success(), "{flag} {value}");
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(stderr.contains(says), "{flag} {value}: {stderr}");
    }
    let greedy = run(&broker, &["topic", "describe", "greedy", "--json"]);
    let greedy: Value = serde_json::from_str(&greedy).unwrap();
    assert_eq!(greedy["pipeline"], serde_json::json!([]), "{greedy}");

    // The limits are part of the topic's pipeline: they survive a restart.
    broker = broker.restart(&data, Stop::Term, &[]);
    let small = sandbox(&broker, &data, "memory-bomb", "small");
    assert_eq!(small["memory_limit"], 8 << 20);
    assert_eq!(small["memory_peak"], 0, "no call since the restart");
    assert_eq!(
        sandbox(&broker, &data, "spin", "patient")["call_timeout_ms"],
        300
    );
    assert_eq!(
        run(&broker, &["pub", "small", "boom"]),
        "dead-lettered to dlq.small@1\n"
    );
    let dlq = ["sub", "dlq.small", "--from", "1", "--count", "1", "--json"];
    let again: Value = serde_json::from_str(&run(&broker, &dlq)).unwrap();
    assert_eq!(
        again["headers"]["quiver-dlq-reason"],
        "exceeded its memory limit of 8.0 MiB"
    );

    // Detached and attached again without limits: the defaults.
    run(&broker, &["plugin", "detach", "spin", "--topic", "quick"]);
    run(&broker, &["plugin", "attach", "spin", "--topic", "quick"]);
    let quick = sandbox(&broker, &data, "spin", "quick");
    assert_eq!(quick["call_timeout_ms"], 100);
    assert_eq!(quick["asked"]["call_timeout_ms"], Value::Null);

    // The console's API attaches with limits too, under the same maxima.
    run(&broker, &["topic", "create", "via.api"]);
    let path = "/api/topics/via.api/plugins";
    let asked = json!({"plugin": "spin", "limits": {"call_timeout_ms": 70}});
    let (status, answer) = api(&broker, "POST", path, As::default(), Some(&asked));
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        sandbox(&broker, &data, "spin", "via.api")["call_timeout_ms"],
        70
    );
    let greedy = json!({"plugin": "memory-bomb", "limits": {"memory": 4u64 << 30}});
    let (status, refused) = api(&broker, "POST", path, As::default(), Some(&greedy));
    assert_eq!(status, 400, "{refused}");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("plugins.max_memory_limit"),
        "{refused}"
    );

    // Maxima lowered below what an attachment asked for: it runs at the new maximum,
    // and its topic's pipeline can still be changed.
    assert!(broker.stop().success());
    let lowered = [
        ("QUIVER_PLUGINS__MAX_MEMORY_LIMIT", "16MiB"),
        ("QUIVER_PLUGINS__MEMORY_LIMIT", "16MiB"),
        ("QUIVER_PLUGINS__PYTHON__MEMORY_LIMIT", "16MiB"),
        ("QUIVER_PLUGINS__JAVASCRIPT__MEMORY_LIMIT", "16MiB"),
    ];
    let broker = Broker::start_with(&data, &lowered);
    let large = sandbox(&broker, &data, "memory-bomb", "large");
    assert_eq!(large["memory_limit"], 16 << 20);
    assert_eq!(large["asked"]["memory"], 24 << 20);
    run(&broker, &["plugin", "attach", "spin", "--topic", "large"]);
    run(&broker, &["plugin", "detach", "spin", "--topic", "large"]);
    let refused = broker.cli(
        &data,
        &[
            "plugin", "attach", "spin", "--topic", "large", "--memory", "24MiB",
        ],
        "",
    );
    assert!(!refused.status.success(), "new stages meet the new maximum");
}
