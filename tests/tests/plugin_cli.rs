//! `quiver plugin …` and `quiver sub --plugin` against a real broker, and every example
//! plugin through the real runtime with `quiver plugin test` and `plugin replay`.

#![allow(clippy::unwrap_used)] // in tests a failed unwrap is a failed test

use std::path::Path;
use std::process::Output;

use quiver_tests::{Broker, DataDir, cli, example_plugin, succeeded};
use serde_json::{Value, json};

fn quiver(broker: &Broker, data: &DataDir, args: &[&str], stdin: &str) -> Output {
    broker.cli(data, args, stdin)
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn the_plugin_lifecycle_from_the_command_line() {
    let data = DataDir::new();
    let broker = Broker::start(&data);
    let filter = example_plugin("json-filter");
    let template = example_plugin("template");
    succeeded(quiver(&broker, &data, &["topic", "create", "app.logs"], ""));

    let deployed = succeeded(quiver(
        &broker,
        &data,
        &[
            "plugin",
            "deploy",
            path(&filter),
            "--name",
            "levels",
            "--version",
            "1.0",
        ],
        "",
    ));
    assert!(
        deployed.starts_with("deployed levels version 1.0 (sha256 "),
        "{deployed}"
    );
    let attached = succeeded(quiver(
        &broker,
        &data,
        &[
            "plugin",
            "attach",
            "levels",
            "--topic",
            "app.logs",
            "--param",
            "where=level >= warn",
            "--param",
            "order=info,warn,error",
        ],
        "",
    ));
    assert_eq!(
        attached.trim(),
        "app.logs: levels(where=level >= warn, order=info,warn,error; fail-closed)"
    );
    let published = succeeded(quiver(
        &broker,
        &data,
        &["pub", "app.logs"],
        "{\"level\":\"info\"}\n{\"level\":\"error\"}\nnot json\n",
    ));
    assert_eq!(published, "dropped\n0\ndead-lettered to dlq.app.logs@0\n");

    let listed: Vec<Value> = succeeded(quiver(&broker, &data, &["plugin", "list", "--json"], ""))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(listed[0]["name"], "levels");
    assert_eq!(listed[0]["topics"], json!(["app.logs"]));
    let status = succeeded(quiver(&broker, &data, &["plugin", "status", "levels"], ""));
    assert!(
        status.contains("topic app.logs (1.0, fail-closed): active"),
        "{status}"
    );
    assert!(
        status.contains("calls 3  records in 3  out 1  errors 0"),
        "{status}"
    );

    let in_use = quiver(&broker, &data, &["plugin", "remove", "levels"], "");
    assert!(!in_use.status.success());
    assert!(String::from_utf8_lossy(&in_use.stderr).contains("attached to topic `app.logs`"));

    let upgraded = succeeded(quiver(
        &broker,
        &data,
        &["plugin", "upgrade", "levels", path(&template)],
        "",
    ));
    assert!(
        upgraded.starts_with("upgraded levels to version 2 "),
        "{upgraded}"
    );
    // The template tags every record instead of filtering: the upgrade took effect.
    assert_eq!(
        succeeded(quiver(&broker, &data, &["pub", "app.logs", "anything"], "")),
        "1\n"
    );

    let detached = succeeded(quiver(
        &broker,
        &data,
        &["plugin", "detach", "levels", "--topic", "app.logs"],
        "",
    ));
    assert_eq!(detached.trim(), "app.logs: none");
    assert_eq!(
        succeeded(quiver(&broker, &data, &["plugin", "remove", "levels"], "")).trim(),
        "removed levels"
    );
    let gone = quiver(&broker, &data, &["plugin", "status", "levels"], "");
    assert!(String::from_utf8_lossy(&gone.stderr).contains("plugin `levels` is not deployed"));
}

#[test]
fn sub_runs_a_plugin_for_one_subscriber() {
    let data = DataDir::new();
    let broker = Broker::start(&data);
    succeeded(quiver(&broker, &data, &["topic", "create", "people"], ""));
    succeeded(quiver(
        &broker,
        &data,
        &[
            "plugin",
            "deploy",
            path(&example_plugin("redactor")),
            "--name",
            "redactor",
        ],
        "",
    ));
    succeeded(quiver(
        &broker,
        &data,
        &["pub", "people"],
        "{\"name\":\"Ann\",\"mail\":\"ann@example.com\"}\n",
    ));
    let masked = succeeded(quiver(
        &broker,
        &data,
        &[
            "sub",
            "people",
            "--from",
            "earliest",
            "--count",
            "1",
            "--plugin",
            "redactor",
            "--param",
            "fields=name",
        ],
        "",
    ));
    assert_eq!(masked, "{\"name\":\"[REDACTED]\",\"mail\":\"[email]\"}\n");
    let raw = succeeded(quiver(
        &broker,
        &data,
        &["sub", "people", "--from", "earliest", "--count", "1"],
        "",
    ));
    assert!(
        raw.contains("ann@example.com"),
        "the stored record is untouched: {raw}"
    );
}

/// Runs `quiver plugin test` and returns the outcomes, one JSON value per record.
fn plugin_test(name: &str, records: &[Value], params: &[&str]) -> Vec<Value> {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("records.jsonl");
    let lines: Vec<String> = records.iter().map(Value::to_string).collect();
    std::fs::write(&input, lines.join("\n")).unwrap();
    let plugin = example_plugin(name);
    let mut args = vec!["plugin", "test", path(&plugin), "--input", path(&input)];
    for param in params {
        args.extend(["--param", param]);
    }
    let out = succeeded(cli(dir.path(), &args, &[], ""));
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn outcomes(results: &[Value]) -> Vec<&str> {
    results
        .iter()
        .map(|r| r["outcome"].as_str().unwrap())
        .collect()
}

#[test]
fn json_filter_compares_numbers_words_and_scales() {
    let records = [
        json!({"payload": r#"{"level":"debug","ms":5}"#}),
        json!({"payload": r#"{"level":"warn","ms":250}"#}),
        json!({"payload": r#"{"level":"error","ms":40}"#}),
        json!({"payload": r#"{"ms":900}"#}),
        json!({"payload": "plain text"}),
    ];
    let by_level = plugin_test(
        "json-filter",
        &records,
        &["where=level >= warn", "order=debug,info,warn,error"],
    );
    assert_eq!(
        outcomes(&by_level),
        ["drop", "keep", "keep", "drop", "reject"]
    );
    let slow = plugin_test("json-filter", &records, &["where=ms > 100", "invalid=drop"]);
    assert_eq!(outcomes(&slow), ["drop", "keep", "drop", "keep", "drop"]);
    let has_level = plugin_test(
        "json-filter",
        &records,
        &["where=level exists", "invalid=keep"],
    );
    assert_eq!(
        outcomes(&has_level),
        ["keep", "keep", "keep", "drop", "keep"]
    );
}

#[test]
fn plugin_test_takes_log_lines_and_json_payloads_as_payloads_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("app.log");
    let lines = [
        r#"{"level":"warn","msg":"a JSON log line"}"#,
        "plain text, not JSON",
        r#"{"payload": {"level": "error"}}"#,
        r#"{"payload": "{\"level\":\"debug\"}"}"#,
    ];
    std::fs::write(&input, lines.join("\n")).unwrap();
    let plugin = example_plugin("json-filter");
    let args = [
        "plugin",
        "test",
        path(&plugin),
        "--input",
        path(&input),
        "--param",
        "where=level >= warn",
        "--param",
        "order=debug,info,warn,error",
    ];
    let out = cli(dir.path(), &args, &[], "");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let results: Vec<Value> = succeeded(out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // The log line is the payload, not an empty one: kept; the plain text is not JSON:
    // rejected; a payload written as JSON is its text.
    assert_eq!(outcomes(&results), ["keep", "reject", "keep", "drop"]);
    assert!(
        stderr.contains("line 1 is not a record") && stderr.contains("whole line"),
        "{stderr}"
    );
}

#[test]
fn router_routes_by_field_or_header() {
    let records = [
        json!({"payload": r#"{"region":"eu"}"#}),
        json!({"payload": r#"{"region":"us"}"#, "headers": {"tenant": "acme"}}),
        json!({"payload": r#"{"region":"apac"}"#}),
    ];
    let by_field = plugin_test(
        "router",
        &records,
        &[
            "field=region",
            "routes=eu=orders.eu+audit,us=orders.us",
            "default=orders.other",
        ],
    );
    assert_eq!(by_field[0]["topics"], json!(["orders.eu", "audit"]));
    assert_eq!(by_field[1]["topics"], json!(["orders.us"]));
    assert_eq!(by_field[2]["topics"], json!(["orders.other"]));
    let by_header = plugin_test(
        "router",
        &records,
        &["header=tenant", "routes=acme=tenants.acme", "default=drop"],
    );
    assert_eq!(outcomes(&by_header), ["drop", "route", "drop"]);
}

#[test]
fn redactor_masks_emails_cards_and_fields() {
    let records = [
        json!({"payload": r#"{"card":"4111-1111-1111-1111","note":"call bob@corp.example."}"#}),
        json!({"payload": "card 5500 0000 0000 0004 and id 1234567890123"}),
        json!({"payload": r#"{"ssn":"123-45-6789","ok":true}"#}),
        json!({"payload": "nothing to hide"}),
    ];
    let results = plugin_test("redactor", &records, &["fields=ssn", "mask=***"]);
    assert_eq!(
        outcomes(&results),
        ["replace", "replace", "replace", "keep"]
    );
    let payload = |i: usize| {
        results[i]["records"][0]["payload"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(
        payload(0),
        r#"{"card":"[card ****1111]","note":"call [email]."}"#
    );
    assert_eq!(
        payload(1),
        "card [card ****0004] and id 1234567890123",
        "a number failing the Luhn check is left alone"
    );
    assert_eq!(payload(2), r#"{"ssn":"***","ok":true}"#);
    assert_eq!(
        results[0]["records"][0]["headers"]["quiver-redactions"],
        "2"
    );
}

#[test]
fn validator_rejects_what_breaks_the_schema() {
    let records = [
        json!({"payload": r#"{"id":"a1","amount":12.5,"tags":[]}"#}),
        json!({"payload": r#"{"id":7,"amount":1,"tags":[]}"#}),
        json!({"payload": r#"{"id":"a2","tags":[]}"#}),
        json!({"payload": r#"{"id":"a3","amount":1,"tags":[],"extra":1}"#}),
        json!({"payload": "[1,2]"}),
    ];
    let results = plugin_test(
        "validator",
        &records,
        &["required=id:string,amount:number,tags:array", "extra=false"],
    );
    assert_eq!(
        outcomes(&results),
        ["keep", "reject", "reject", "reject", "reject"]
    );
    assert_eq!(results[1]["reason"], "field `id` is not of type string");
    assert_eq!(results[2]["reason"], "missing field `amount`");
    assert_eq!(results[3]["reason"], "unexpected field `extra`");
    assert_eq!(results[4]["reason"], "payload is not a JSON object");
}

#[test]
fn dedup_drops_repeats_within_the_window() {
    let at = |key: &str, ms: u64| json!({"payload": "x", "key": key, "timestamp": ms});
    let records = [
        at("a", 0),
        at("a", 1000),
        at("b", 1000),
        at("a", 61_000),
        at("a", 62_000),
    ];
    let results = plugin_test("dedup", &records, &["window=60s"]);
    assert_eq!(outcomes(&results), ["keep", "drop", "keep", "keep", "drop"]);
    let by_field = [
        json!({"payload": r#"{"id":1}"#}),
        json!({"payload": r#"{"id":1}"#}),
        json!({"payload": r#"{"id":2}"#}),
        json!({"payload": "no id"}),
    ];
    let results = plugin_test("dedup", &by_field, &["field=id", "missing=drop"]);
    assert_eq!(outcomes(&results), ["keep", "drop", "keep", "drop"]);
}

#[test]
fn template_tags_records() {
    let results = plugin_test(
        "template",
        &[json!({"payload": "p", "key": "k"})],
        &["name=source", "value=edge-7"],
    );
    let record = &results[0]["records"][0];
    assert_eq!(record["headers"]["source"], "edge-7");
    assert_eq!(
        (record["key"].as_str(), record["payload"].as_str()),
        (Some("k"), Some("p"))
    );
}

#[test]
fn replay_runs_a_plugin_over_stored_records_without_publishing() {
    let data = DataDir::new();
    let broker = Broker::start(&data);
    succeeded(quiver(&broker, &data, &["topic", "create", "metrics"], ""));
    let lines: String = (0..5)
        .map(|i| format!("{{\"ms\":{}}}\n", i * 100))
        .collect();
    succeeded(quiver(&broker, &data, &["pub", "metrics"], &lines));
    let replayed = succeeded(quiver(
        &broker,
        &data,
        &[
            "plugin",
            "replay",
            path(&example_plugin("json-filter")),
            "--topic",
            "metrics",
            "--from",
            "1",
            "--param",
            "where=ms >= 300",
            "--batch",
            "2",
        ],
        "",
    ));
    let results: Vec<Value> = replayed
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let offsets: Vec<u64> = results
        .iter()
        .map(|r| r["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(
        offsets,
        [1, 2, 3, 4],
        "stored offsets, from --from to the end"
    );
    assert_eq!(outcomes(&results), ["drop", "drop", "keep", "keep"]);
    let topic = succeeded(quiver(
        &broker,
        &data,
        &["topic", "describe", "metrics"],
        "",
    ));
    assert!(
        topic.contains("records:      5"),
        "nothing was published: {topic}"
    );
}
