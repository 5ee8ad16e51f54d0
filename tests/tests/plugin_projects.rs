//! Plugin projects from `quiver plugin new`: written outside this repository, built by
//! `quiver plugin build`, checked over their own sample records, run by the real broker.

#![allow(clippy::unwrap_used)] // in tests a failed unwrap is a failed test

use std::path::{Path, PathBuf};

use quiver_tests::{Broker, DataDir, cli, succeeded};
use serde_json::Value;

/// This repository's root.
fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .canonicalize()
        .unwrap()
}

/// Where Rust projects build: the example plugins' target dir, so the registry crates
/// they share with the examples are compiled once. The projects themselves, and the
/// SDK they carry, are outside the repository.
fn shared_target() -> String {
    repository()
        .join("plugins/target")
        .to_string_lossy()
        .into_owned()
}

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A language's project as the test changes it: `edit` makes the plugin escape its
/// sandbox on a record whose payload is `escape` (which must fail that call only),
/// `env` is what its build needs, `reason` a word of the dead-letter reason then.
struct Language {
    lang: &'static str,
    source: &'static str,
    edit: (&'static str, &'static str),
    reason: &'static str,
}

/// `quiver plugin new NAME --lang LANG` in a folder outside the repository, changed
/// as `language` says, built by `quiver plugin build` with `env`, checked by its own
/// test, then deployed into a real broker: it tags what is published, and its
/// escape fails one call without disturbing the next.
fn a_project_builds_and_runs(language: &Language, env: &[(&str, &str)], setup: impl Fn(&Path)) {
    // One at a time: each builds with a toolchain and compiles a component of up to
    // 18 MB, which on two cores would otherwise crowd the calls' deadlines.
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _turn = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let root = tempfile::tempdir().unwrap();
    assert!(
        !root
            .path()
            .canonicalize()
            .unwrap()
            .starts_with(repository())
    );
    let wrote = succeeded(cli(
        root.path(),
        &["plugin", "new", "tagger", "--lang", language.lang],
        &[],
        "",
    ));
    assert!(wrote.contains("quiver plugin build tagger"), "{wrote}");
    let project = root.path().join("tagger");
    for file in ["README.md", "test/records.jsonl", language.source] {
        assert!(project.join(file).is_file(), "{file} is written");
    }
    let source = std::fs::read_to_string(project.join(language.source)).unwrap();
    let (anchor, escape) = language.edit;
    assert!(source.contains(anchor), "the template has `{anchor}`");
    std::fs::write(
        project.join(language.source),
        source.replacen(anchor, &format!("{escape}{anchor}"), 1),
    )
    .unwrap();
    setup(&project);

    let built = succeeded(cli(root.path(), &["plugin", "build", "tagger"], env, ""));
    let component = root.path().join(built.trim());
    let wasm = std::fs::read(&component).unwrap();
    assert_eq!(&wasm[..4], b"\0asm", "a WebAssembly file at {built}");

    // The project's own test passes as written, and fails when the plugin does
    // something else.
    let expect = [
        "plugin",
        "test",
        component.to_str().unwrap(),
        "--input",
        "test/records.jsonl",
        "--expect",
        "test/expected.jsonl",
    ];
    let passed = cli(&project, &expect, &[], "");
    assert!(passed.status.success(), "{}", stderr(&passed));
    assert!(
        stderr(&passed).contains("2 outcomes as expected"),
        "{}",
        stderr(&passed)
    );
    let differs = cli(
        &project,
        &[&expect[..], &["--param", "value=elsewhere"][..]].concat(),
        &[],
        "",
    );
    assert_eq!(differs.status.code(), Some(1));
    assert!(
        stderr(&differs).contains("record 0 (line 1) is not as expected"),
        "{}",
        stderr(&differs)
    );

    // Deployed into a real broker, it tags what is published; its escape fails that
    // call (a dead letter) and the next publish is served by a fresh instance.
    let data = DataDir::new();
    let broker = Broker::start(&data);
    let run = |args: &[&str], stdin: &str| succeeded(broker.cli(&data, args, stdin));
    run(
        &[
            "plugin",
            "deploy",
            component.to_str().unwrap(),
            "--name",
            "tagger",
        ],
        "",
    );
    run(&["topic", "create", "edge.readings"], "");
    run(
        &[
            "plugin",
            "attach",
            "tagger",
            "--topic",
            "edge.readings",
            "--param",
            "value=gateway-7",
        ],
        "",
    );
    assert_eq!(run(&["pub", "edge.readings"], "21.5\n"), "0\n");
    assert_eq!(
        run(&["pub", "edge.readings"], "escape\n"),
        "dead-lettered to dlq.edge.readings@0\n"
    );
    assert_eq!(run(&["pub", "edge.readings"], "22.0\n"), "1\n");
    let read = |topic: &str, count: &str| -> Vec<Value> {
        run(
            &[
                "sub", topic, "--from", "earliest", "--count", count, "--json",
            ],
            "",
        )
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
    };
    let stored = read("edge.readings", "2");
    assert_eq!(stored[0]["payload"], "21.5");
    assert_eq!(stored[1]["payload"], "22.0");
    for record in &stored {
        assert_eq!(record["headers"]["tagged-by"], "gateway-7");
    }
    let dead = &read("dlq.edge.readings", "1")[0];
    assert_eq!(dead["payload"], "escape");
    let reason = dead["headers"]["quiver-dlq-reason"].as_str().unwrap();
    assert!(reason.contains(language.reason), "{reason}");
}

#[test]
fn a_rust_project_from_plugin_new_builds_outside_the_repository_and_runs_in_the_broker() {
    let target = shared_target();
    let rust = Language {
        lang: "rust",
        source: "src/lib.rs",
        edit: (
            "let mut record = event.to_new();",
            "if event.payload == b\"escape\" {\n            let _ = std::fs::read(\"/etc/passwd\");\n        }\n        ",
        ),
        reason: "trap",
    };
    a_project_builds_and_runs(&rust, &[("CARGO_TARGET_DIR", target.as_str())], |project| {
        let manifest = std::fs::read_to_string(project.join("Cargo.toml")).unwrap();
        assert!(
            !manifest.contains(".."),
            "the project depends on nothing outside itself but registry crates: {manifest}"
        );
        assert!(project.join("sdk/wit/quiver.wit").is_file());
    });
}

#[test]
fn a_python_project_from_plugin_new_builds_outside_the_repository_and_runs_in_the_broker() {
    // componentize-py, pinned, from the tests' venv (`make plugin-tools`).
    let tools = repository().join("tools/venv/bin");
    let path = format!(
        "{}:{}",
        tools.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let python = Language {
        lang: "python",
        source: "app.py",
        edit: (
            "        name = param(\"name\")",
            "        if event.payload == b\"escape\":\n            open(\"/etc/passwd\")\n",
        ),
        reason: "trap",
    };
    a_project_builds_and_runs(&python, &[("PATH", path.as_str())], |project| {
        assert!(project.join("quiver_plugin.py").is_file());
    });
}

#[test]
fn a_javascript_project_from_plugin_new_builds_outside_the_repository_and_runs_in_the_broker() {
    let js = Language {
        lang: "js",
        source: "plugin.js",
        edit: (
            "    const record = toNew(event);",
            "    if (String.fromCharCode(...event.payload) === 'escape') for (;;);\n",
        ),
        reason: "deadline",
    };
    a_project_builds_and_runs(&js, &[], |project| {
        let package: Value =
            serde_json::from_str(&std::fs::read_to_string(project.join("package.json")).unwrap())
                .unwrap();
        assert_eq!(package["name"], "tagger");
        // componentize-js, pinned, as `make plugin-tools` installed it from the same
        // lock file the project carries (so `plugin build` needs no `npm ci`).
        std::os::unix::fs::symlink(
            repository().join("plugin-sdk/js/node_modules"),
            project.join("node_modules"),
        )
        .unwrap();
    });
}

#[test]
fn plugin_new_and_build_refuse_what_they_cannot_do() {
    let root = tempfile::tempdir().unwrap();
    let bad_name = cli(root.path(), &["plugin", "new", "9lives"], &[], "");
    assert_eq!(bad_name.status.code(), Some(2), "a usage error");
    assert!(
        stderr(&bad_name).contains("cannot name a plugin project"),
        "{}",
        stderr(&bad_name)
    );
    assert!(!root.path().join("9lives").exists(), "nothing is written");

    std::fs::create_dir(root.path().join("taken")).unwrap();
    std::fs::write(root.path().join("taken/notes.txt"), "mine").unwrap();
    let taken = cli(root.path(), &["plugin", "new", "taken"], &[], "");
    assert_eq!(taken.status.code(), Some(1));
    assert!(
        stderr(&taken).contains("taken exists and is not empty"),
        "{}",
        stderr(&taken)
    );
    assert_eq!(
        std::fs::read_dir(root.path().join("taken"))
            .unwrap()
            .count(),
        1,
        "nothing is written into a folder in use"
    );

    let not_a_project = cli(root.path(), &["plugin", "build", "taken"], &[], "");
    assert_eq!(not_a_project.status.code(), Some(1));
    assert!(
        stderr(&not_a_project).contains("taken is not a plugin project"),
        "{}",
        stderr(&not_a_project)
    );
    let missing = cli(root.path(), &["plugin", "build", "nowhere"], &[], "");
    assert!(
        stderr(&missing).contains("nowhere is not a folder"),
        "{}",
        stderr(&missing)
    );
}
