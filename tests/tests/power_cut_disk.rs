//! The power-cut disk itself (`tests/src/disk/`): what it keeps across a cut. A binary
//! of its own, away from the power-cut tests, which fork brokers all the time: a child
//! between fork and exec holds copies of every open file, those of this test on the
//! mount too, and unmounting then fails with `EBUSY` (the likeliest cause of one such
//! failure in CI).

use std::ffi::OsStr;
use std::fs;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::time::Duration;

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

/// Held syncs: the caller waits in `fdatasync` while other requests go on, and the sync
/// makes the data durable once released.
#[test]
fn held_syncs_wait_until_released_and_then_count() {
    let root = tempfile::tempdir().unwrap();
    let mut disk = Disk::mount(root.path()).expect("mounting the power-cut disk");
    let path = root.path().join("log");
    let mut log = fs::File::create(&path).unwrap();
    fs::File::open(root.path()).unwrap().sync_all().unwrap();
    log.write_all(b"held").unwrap();

    disk.hold_syncs();
    let syncing = std::thread::spawn(move || {
        let synced = log.sync_data();
        (log, synced)
    });
    assert_eq!(disk.wait_for_held_syncs(1, Duration::from_secs(30)), 1);
    // The disk still serves everything but syncs meanwhile.
    assert_eq!(fs::read(&path).unwrap(), b"held");
    assert!(!syncing.is_finished(), "the sync waits while held");
    assert_eq!(disk.release_syncs(), 1);
    let (log, synced) = syncing.join().unwrap();
    synced.unwrap();
    drop(log);

    disk.cut(Tear::None);
    disk.remount().unwrap();
    assert_eq!(
        fs::read(&path).unwrap(),
        b"held",
        "the released sync counted"
    );
}
