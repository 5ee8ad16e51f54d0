//! Power cuts: the real broker on a disk that loses everything not made durable by
//! fsync/fdatasync when the harness cuts its power (`tests/src/disk/`), under
//! pipelined publishes, acking group members and a stateful ingress plugin. After
//! every cut, every acknowledged record is stored exactly once at its offset, offsets
//! are dense, the group skipped nothing, and the plugin's state agrees with the
//! records of the same commits. docs/reliability.md says how to run it longer
//! (`QUIVER_POWER_CUTS`) or replay a seed (`QUIVER_CRASH_SEED`).
//!
//! The harness proves its own teeth too: with the broker's barrier switched off
//! (`--unsafe-skip-barrier`: sled's `sync_file_range` only, as before the barrier),
//! it must find acknowledged records lost.

use quiver_tests::crash::{self, Fault, Settings};

/// Power cuts per run in the test suite; `QUIVER_POWER_CUTS` asks for more.
const CUTS: u32 = 50;
/// Power cuts for the run without a barrier: enough to lose an acknowledgement.
const CUTS_WITHOUT_BARRIER: u32 = 10;
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_records_survive_repeated_power_cuts_under_load() {
    let settings = Settings::from_env(Fault::PowerCut, CUTS);
    let figures = crash::run_and_check(&settings).await;
    assert_eq!(
        figures.faults, settings.faults,
        "every power cut asked for happened within the time budget"
    );
    let disk = figures.disk.expect("the run was on the power-cut disk");
    assert!(disk.file_syncs > 0, "the broker synced its files");
    assert!(
        disk.bytes_lost > 0,
        "the cuts threw unsynced writes away: the harness cut under load"
    );
}

/// The harness's own test: with the barrier off (sled's `sync_file_range` only, as
/// before it), power cuts lose acknowledged records, and the harness says so: it finds
/// them missing, or the broker finds its log gone (nothing of it was ever synced) and
/// refuses to start, every acknowledged record lost with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_barrier_power_cuts_lose_acknowledged_records() {
    let settings = Settings {
        barrier: false,
        ..Settings::from_env(Fault::PowerCut, CUTS_WITHOUT_BARRIER)
    };
    let report = crash::run_reported(&settings).await;
    assert!(
        report.figures.lost > 0 || report.figures.refused_starts > 0,
        "QUIVER_CRASH_SEED={}: {} power cuts without a barrier and no acknowledged record \
         lost: the harness would not notice a missing fsync (broken guarantees: {:?})",
        settings.seed,
        report.figures.faults,
        report.violations
    );
    eprintln!(
        "found, as it must: {} acknowledged records missing, {} starts refused; first \
         broken guarantee: {}",
        report.figures.lost,
        report.figures.refused_starts,
        report.violations.first().map_or("-", String::as_str)
    );
}
