//! Crash safety: the real broker, killed with SIGKILL again and again under a pipelined
//! publish load, acking group members and a stateful ingress plugin, keeps every
//! acknowledged record exactly once at its offset, stores no retried publish twice,
//! skips nothing its group never acked, keeps the plugin's state in step with the
//! records, and always restarts. `tests/src/crash.rs` is the harness; docs/reliability.md says
//! how to run it longer (`QUIVER_CRASH_KILLS`) or replay a seed (`QUIVER_CRASH_SEED`).

use quiver_tests::crash::{self, Fault, Settings};

/// Kills per run in the test suite; `QUIVER_CRASH_KILLS` asks for more.
const KILLS: u32 = 24;
/// Broken guarantees shown when there are any (one bug tends to break many records).
const SHOWN: usize = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_records_survive_repeated_kill_9_under_load() {
    let settings = Settings::from_env(Fault::Kill, KILLS);
    eprintln!("crash harness: QUIVER_CRASH_SEED={}", settings.seed);
    let report = crash::run(&settings)
        .await
        .unwrap_or_else(|e| panic!("QUIVER_CRASH_SEED={}: {e:#}", settings.seed));
    println!("{}", report.figures);
    let shown = &report.violations[..report.violations.len().min(SHOWN)];
    assert!(
        report.violations.is_empty(),
        "QUIVER_CRASH_SEED={}: {} broken guarantees, the first {}:\n{}",
        settings.seed,
        report.violations.len(),
        shown.len(),
        shown.join("\n")
    );
    assert_eq!(report.figures.lost, 0, "acknowledged records lost");
    assert_eq!(report.figures.duplicates, 0, "records stored twice");
    assert!(
        report.figures.faults > 0,
        "the broker was killed at least once"
    );
    assert_eq!(
        report.figures.restarts,
        report.figures.faults + 1,
        "a restart after every kill, and one after the clean stop"
    );
    assert!(
        report.figures.counts_checked > 0,
        "the plugin's counts were checked"
    );
}
