//! The example plugins written in Rust, Python and JavaScript (`json-filter` and
//! `dedup`, built by `make plugins`) decide alike on the same records, and the Python
//! and JavaScript ones run in the real broker: filtering, rejecting to the dead-letter
//! topic, and keeping state across a restart.

#![allow(clippy::unwrap_used)] // in tests a failed unwrap is a failed test

use std::path::{Path, PathBuf};

use quiver_tests::{Broker, DataDir, Stop, cli, example_plugin, succeeded};
use serde_json::Value;

#[derive(Debug, Clone, Copy)]
enum Lang {
    Rust,
    Python,
    Js,
}

/// An example plugin in `lang`, as `make plugins` builds it.
fn component(lang: Lang, plugin: &str) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/target");
    let file = match lang {
        Lang::Rust => return example_plugin(plugin),
        Lang::Python => root.join(format!("python/{}.wasm", plugin.replace('-', "_"))),
        Lang::Js => root.join(format!("js/{plugin}.wasm")),
    };
    assert!(
        file.exists(),
        "{} does not exist: build the plugins first (`make plugins`)",
        file.display()
    );
    file
}

fn records() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("plugins/languages/records.jsonl")
}

/// `quiver plugin test` of `lang`'s `plugin` over the shared records: whether it
/// succeeded, and its outcomes.
fn outcomes(lang: Lang, plugin: &str, batch: &str, params: &[&str]) -> (bool, Vec<Value>) {
    let file = component(lang, plugin);
    let records = records();
    let mut args = vec![
        "plugin",
        "test",
        file.to_str().unwrap(),
        "--input",
        records.to_str().unwrap(),
        "--batch",
        batch,
        // What is compared here is the outcomes; the deadline counts elapsed time,
        // which a loaded machine stretches.
        "--call-timeout",
        "10s",
    ];
    for param in params {
        args.extend(["--param", param]);
    }
    let output = cli(Path::new("."), &args, &[], "");
    let outcomes = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    (output.status.success(), outcomes)
}

fn count(outcomes: &[Value], outcome: &str) -> usize {
    outcomes.iter().filter(|o| o["outcome"] == outcome).count()
}

#[test]
fn json_filter_and_dedup_decide_alike_in_rust_python_and_javascript() {
    let records = std::fs::read_to_string(records()).unwrap().lines().count();
    // (plugin, batch, params): comparisons of words on a scale, numbers, paths,
    // what is not JSON, bad parameters; dedup by key and by field, in windows.
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "json-filter",
            "256",
            &["where=level >= warn", "order=trace,debug,info,warn,error"],
        ),
        (
            "json-filter",
            "1",
            &[
                "where=level >= warn",
                "order=trace,debug,info,warn,error",
                "invalid=keep",
            ],
        ),
        ("json-filter", "256", &["where=ms > 100", "invalid=drop"]),
        ("json-filter", "256", &["where=user.id == 7"]),
        ("json-filter", "256", &["where=user exists"]),
        ("json-filter", "256", &["where=level ~ warn"]),
        ("dedup", "256", &["window=10m"]),
        ("dedup", "1", &["window=1s", "missing=drop"]),
        ("dedup", "256", &["field=user", "window=1h"]),
        ("dedup", "256", &["window=10x"]),
    ];
    for (plugin, batch, params) in cases {
        let (rust_ok, rust) = outcomes(Lang::Rust, plugin, batch, params);
        assert_eq!(
            rust.len(),
            records,
            "{plugin} {params:?}: one outcome per record"
        );
        for lang in [Lang::Python, Lang::Js] {
            let (ok, theirs) = outcomes(lang, plugin, batch, params);
            assert_eq!(
                ok, rust_ok,
                "{lang:?} {plugin} {params:?} fails as Rust does"
            );
            assert_eq!(
                theirs, rust,
                "{lang:?} {plugin} {params:?} decides as Rust does"
            );
        }
    }

    // The cases are not vacuous: the first filter keeps, drops and rejects; dedup
    // drops repeats; a bad parameter fails every call with the same message.
    let (_, filtered) = outcomes(
        Lang::Js,
        "json-filter",
        "256",
        &["where=level >= warn", "order=trace,debug,info,warn,error"],
    );
    for outcome in ["keep", "drop", "reject"] {
        assert!(
            count(&filtered, outcome) > 0,
            "some {outcome}: {filtered:?}"
        );
    }
    let (_, deduped) = outcomes(Lang::Python, "dedup", "256", &["window=10m"]);
    assert!(count(&deduped, "drop") > 0 && count(&deduped, "keep") > 0);
    let (ok, refused) = outcomes(Lang::Python, "json-filter", "256", &["where=level ~ warn"]);
    assert!(!ok);
    assert_eq!(
        refused[0]["reason"], "returned an error: unknown operator `~` in `where`",
        "{refused:?}"
    );
}

#[test]
fn python_and_javascript_plugins_filter_reject_and_keep_state_across_a_restart() {
    let data = DataDir::new();
    let mut broker = Broker::start(&data);
    let run =
        |broker: &Broker, args: &[&str], stdin: &str| succeeded(broker.cli(&data, args, stdin));
    for (lang, suffix) in [(Lang::Python, "py"), (Lang::Js, "js")] {
        for plugin in ["json-filter", "dedup"] {
            let file = component(lang, plugin);
            let name = format!("{plugin}-{suffix}");
            run(
                &broker,
                &["plugin", "deploy", file.to_str().unwrap(), "--name", &name],
                "",
            );
        }
        let logs = format!("logs.{suffix}");
        let events = format!("events.{suffix}");
        run(&broker, &["topic", "create", &logs], "");
        run(&broker, &["topic", "create", &events], "");
        run(
            &broker,
            &[
                "plugin",
                "attach",
                &format!("json-filter-{suffix}"),
                "--topic",
                &logs,
                "--param",
                "where=level >= warn",
                "--param",
                "order=debug,info,warn,error",
            ],
            "",
        );
        run(
            &broker,
            &[
                "plugin",
                "attach",
                &format!("dedup-{suffix}"),
                "--topic",
                &events,
            ],
            "",
        );
        let published = run(
            &broker,
            &["pub", &logs],
            "{\"level\":\"info\"}\n{\"level\":\"error\"}\nnot json\n",
        );
        assert_eq!(
            published,
            format!("dropped\n0\ndead-lettered to dlq.{logs}@0\n"),
            "{lang:?}"
        );
        let dead: Value = serde_json::from_str(&run(
            &broker,
            &[
                "sub",
                &format!("dlq.{logs}"),
                "--from",
                "earliest",
                "--count",
                "1",
                "--json",
            ],
            "",
        ))
        .unwrap();
        assert_eq!(dead["payload"], "not json");
        assert_eq!(dead["headers"]["quiver-dlq-reason"], "payload is not JSON");
        assert_eq!(
            run(&broker, &["pub", &events, "--key", "k1"], "first\n"),
            "0\n",
            "{lang:?}"
        );

        // The broker reads the language from the component and gives the attachment
        // that language's defaults (docs/plugins.md, The sandbox).
        let status: Value = serde_json::from_str(&run(
            &broker,
            &[
                "plugin",
                "status",
                &format!("json-filter-{suffix}"),
                "--json",
            ],
            "",
        ))
        .unwrap();
        let sandbox = &status["attachments"][0]["sandbox"];
        let (language, memory, deadline) = match lang {
            Lang::Python => ("python", 64 << 20, 200),
            _ => ("javascript", 192 << 20, 500),
        };
        assert_eq!(sandbox["language"], language, "{status}");
        assert_eq!(sandbox["memory_limit"], memory, "{status}");
        assert_eq!(sandbox["call_timeout_ms"], deadline, "{status}");
        assert!(
            sandbox["memory_peak"].as_u64().unwrap() > 1 << 20,
            "{status}"
        );
    }

    // The plugins' state is the broker's: after a restart a key seen before is still
    // a repeat, in both languages.
    broker = broker.restart(&data, Stop::Term, &[]);
    for suffix in ["py", "js"] {
        let events = format!("events.{suffix}");
        assert_eq!(
            run(&broker, &["pub", &events, "--key", "k1"], "again\n"),
            "dropped\n",
            "{suffix}: the key is remembered"
        );
        assert_eq!(
            run(&broker, &["pub", &events, "--key", "k2"], "new\n"),
            "1\n",
            "{suffix}"
        );
    }
}
