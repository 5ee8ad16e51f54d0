//! The client SDK's examples run as documented against a real broker.

#![allow(clippy::unwrap_used)] // in tests a failed unwrap is a failed test

use std::process::Command;

use quiver_tests::{Broker, DataDir, example_bin};

fn run_example(broker: &Broker, data: &DataDir, name: &str) -> String {
    // From the data dir's parent, as the docs say: the default CA path then resolves.
    let output = Command::new(example_bin(name))
        .current_dir(data.root())
        .env("QUIVER_SERVER", broker.addr())
        .env_remove("QUIVER_CA")
        .env("COUNT", "111")
        .output()
        .unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(
        output.status.success(),
        "example {name} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[test]
fn the_sdk_examples_run() {
    let data = DataDir::new();
    let broker = Broker::start(&data);
    let topics = run_example(&broker, &data, "topics");
    assert!(topics.contains("created examples.readings"), "{topics}");
    assert!(topics.contains("examples.readings: 0 records"), "{topics}");
    let published = run_example(&broker, &data, "publish");
    assert!(published.contains("stored at offset 0"), "{published}");
    assert!(
        published.contains("batch stored at offsets 1..11"),
        "{published}"
    );
    assert!(published.contains("offsets 11..=110"), "{published}");
    let received = run_example(&broker, &data, "subscribe");
    let lines: Vec<&str> = received.lines().collect();
    assert_eq!(lines.len(), 111);
    assert!(
        lines[0].starts_with("examples.readings #0 key=Some(\"probe-7\")"),
        "{}",
        lines[0]
    );
    assert!(lines[110].ends_with("pipelined 99"), "{}", lines[110]);
    // The worker takes the same 111 records through a durable group, acking each.
    let worked = run_example(&broker, &data, "worker");
    let lines: Vec<&str> = worked.lines().collect();
    assert_eq!(lines[0], "created group examples-workers");
    assert_eq!(lines.len(), 112, "{worked}");
    assert!(
        lines[1].starts_with("examples.readings #0 (delivery 1)"),
        "{}",
        lines[1]
    );
}
