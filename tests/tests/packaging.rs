//! What ships beside the binary: the systemd unit in `dist/` passes `systemd-analyze
//! verify`, and its command line, with the paths of a test, starts a broker.

#![allow(clippy::unwrap_used)] // in tests a failed unwrap is a failed test

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use quiver_tests::live::{Lines, LiveCli};
use quiver_tests::{DataDir, quiver_bin};

fn repository() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

#[test]
fn the_systemd_unit_verifies_and_its_command_line_starts_a_broker() {
    let unit = std::fs::read_to_string(repository().join("dist/quiver.service")).unwrap();
    let bin = quiver_bin();
    let bin = bin.to_str().unwrap();
    let dir = tempfile::tempdir().unwrap();

    // systemd reads every directive (unknown ones, bad values and a missing binary
    // are errors); the unit is checked with the real binary in place of the installed
    // one.
    let local = dir.path().join("quiver.service");
    std::fs::write(&local, unit.replace("/usr/local/bin/quiver", bin)).unwrap();
    let verify = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&local)
        .output()
        .expect("systemd-analyze runs (make test-tools installs systemd)");
    let complaints = String::from_utf8_lossy(&verify.stderr);
    assert!(verify.status.success(), "{complaints}");
    assert!(complaints.trim().is_empty(), "{complaints}");

    // Its command line, with this test's config and data dir, serves.
    let exec = unit
        .lines()
        .find_map(|line| line.strip_prefix("ExecStart="))
        .expect("the unit has an ExecStart");
    let config = dir.path().join("quiver.toml");
    std::fs::copy(repository().join("quiver.example.toml"), &config).unwrap();
    let data = DataDir::new();
    let mut args: Vec<String> = exec
        .split_whitespace()
        .skip(1) // the binary
        .map(|arg| match arg {
            "/etc/quiver/quiver.toml" => config.to_str().unwrap().to_owned(),
            "/var/lib/quiver" => data.path().to_str().unwrap().to_owned(),
            other => other.to_owned(),
        })
        .collect();
    args.extend(["--listen", "127.0.0.1:0", "--http", "127.0.0.1:0"].map(String::from));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let broker = LiveCli::spawn(data.root(), &args, &[], Lines::default(), None);
    broker
        .stdout
        .wait_until("the ready line", Duration::from_secs(30), |lines| {
            lines.iter().any(|l| l.contains("listening on"))
        });
    // JSON logs, as the unit asks for the journal.
    broker.interrupt();
    let stderr = broker.stderr.clone();
    assert!(broker.wait(Duration::from_secs(30)).success());
    let logs = stderr.snapshot();
    assert!(
        logs.iter()
            .any(|l| l.starts_with('{') && l.contains("\"level\"")),
        "{logs:?}"
    );
}
