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

use std::ffi::OsStr;
use std::fs;
use std::io::Write;
use std::os::unix::fs::FileExt;

use quiver_tests::crash::{self, Fault, Settings};
use quiver_tests::disk::{Disk, Tear};

/// Writes through the mount, cuts, remounts, and reads back: the disk keeps synced
/// data and synced directory entries, and nothing else.
#[test]
fn the_simulated_disk_keeps_only_what_was_synced() {
    let root = tempfile::tempdir().unwrap();
    let mut disk = Disk::mount(root.path()).expect(
        "mounting the power-cut disk (needs /dev/fuse and root or fusermount3; `make test` \
         installs fuse3)",
    );
    let dir = root.path();
    let sync_dir = || fs::File::open(dir).unwrap().sync_all().unwrap();

    let mut log = fs::File::create(dir.join("log")).unwrap();
    sync_dir();
    log.write_all(b"acknowledged").unwrap();
    log.sync_data().unwrap();
    log.write_all(b" and not yet").unwrap();
    log.write_at(b"X", 0).unwrap();
    // Closing is no barrier.
    drop(log);

    let mut synced_file = fs::File::create(dir.join("unnamed")).unwrap();
    synced_file
        .write_all(b"synced, but its name never was")
        .unwrap();
    synced_file.sync_all().unwrap();
    drop(synced_file);

    fs::write(dir.join("renamed.tmp"), b"new").unwrap();
    fs::File::open(dir.join("renamed.tmp"))
        .unwrap()
        .sync_all()
        .unwrap();
    fs::rename(dir.join("renamed.tmp"), dir.join("renamed")).unwrap();

    disk.cut(Tear::None);
    let after_cut = fs::read(dir.join("log"));
    assert!(after_cut.is_err(), "a cut disk answers nothing");
    disk.remount().unwrap();

    assert_eq!(fs::read(dir.join("log")).unwrap(), b"acknowledged");
    let mut names: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    assert_eq!(names, [OsStr::new("log")]);
    let counts = disk.counts();
    assert_eq!(counts.cuts, 1);
    assert!(
        counts.bytes_lost > 0 && counts.entries_lost == 2,
        "{counts:?}"
    );
}

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
