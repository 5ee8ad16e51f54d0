//! Torn and corrupt data dirs: a broker started on a damaged data dir either serves
//! records byte for byte as they were published (what is intact) or refuses to start
//! with a message saying what is wrong, where, and what to do; it never serves a
//! record whose bytes differ and never dies with a panic.

#![allow(clippy::unwrap_used)] // in tests a failed unwrap is a failed test

use std::path::Path;
use std::time::Duration;

use futures::StreamExt;
use quiver_client::{ErrorCode, Record, Retention, StartAt, SubscribeOptions};
use quiver_tests::{Broker, DataDir, Refused};

const TOPIC: &str = "precious";
const RECORDS: usize = 3000;

/// The payload published at `offset`: distinct, and long enough (2 KiB) for the log to
/// span several of sled's segments.
fn payload(offset: usize) -> Vec<u8> {
    let mut p = format!("record {offset:06} ").into_bytes();
    p.extend((0..2048).map(|i| b'a' + ((offset * 7 + i) % 26) as u8));
    p
}

/// A data dir holding [`RECORDS`] acknowledged records, left by SIGKILL (no clean
/// shutdown) or by a clean stop.
async fn filled(clean: bool) -> DataDir {
    let data = DataDir::new();
    let broker = Broker::start(&data);
    let client = broker.client().await;
    client
        .create_topic(TOPIC, Retention::default())
        .await
        .unwrap();
    for batch in (0..RECORDS).collect::<Vec<_>>().chunks(25) {
        let records = batch.iter().map(|&i| payload(i).into()).collect();
        let receipt = client.publish_batch(TOPIC, records).await.unwrap();
        assert_eq!(receipt.base_offset, batch[0] as u64);
    }
    client.close().await;
    if clean {
        assert!(broker.stop().success());
    } else {
        broker.kill9();
    }
    data
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// A copy of `data` for one kind of damage.
fn copy_of(data: &DataDir) -> DataDir {
    let copy = DataDir::new();
    copy_dir(data.path(), copy.path());
    copy
}

fn log_file(data: &DataDir) -> std::path::PathBuf {
    data.path().join("db").join("db")
}

/// What a broker made of a damaged data dir.
#[derive(Debug)]
enum Outcome {
    /// It started and served this many records from offset 0, each exactly as
    /// published; `failed` when a read then reported a `Storage` error.
    Served { records: usize, failed: bool },
    /// It refused to start, cleanly.
    Refused,
}

/// Starts a broker on `data` and reads everything it claims to hold, checking every
/// record against what was published.
async fn outcome(data: &DataDir, case: &str) -> Outcome {
    let broker = match Broker::try_start(data) {
        Ok(broker) => broker,
        Err(refused) => {
            assert_clean_refusal(&refused, case);
            return Outcome::Refused;
        }
    };
    let client = broker.client().await;
    let Ok(info) = client.describe_topic(TOPIC).await else {
        // Recovered to a point before the topic existed: nothing to serve.
        return Outcome::Served {
            records: 0,
            failed: false,
        };
    };
    let held = usize::try_from(info.records).unwrap();
    assert!(held <= RECORDS, "{case}: more records than were published");
    let mut sub = client
        .subscribe(TOPIC, SubscribeOptions::from(StartAt::Earliest))
        .await
        .unwrap();
    let mut records = 0;
    while records < held {
        let next = tokio::time::timeout(Duration::from_secs(30), sub.next())
            .await
            .unwrap_or_else(|_| panic!("{case}: stalled after {records} of {held} records"));
        match next {
            Some(Ok(record)) => {
                check(&record, records, case);
                records += 1;
            }
            Some(Err(e)) => {
                assert_eq!(e.code(), Some(ErrorCode::Storage), "{case}: {e}");
                return Outcome::Served {
                    records,
                    failed: true,
                };
            }
            None => panic!("{case}: the subscription ended without an error"),
        }
    }
    Outcome::Served {
        records,
        failed: false,
    }
}

fn check(record: &Record, expected_offset: usize, case: &str) {
    assert_eq!(
        record.offset, expected_offset as u64,
        "{case}: offsets dense"
    );
    assert!(
        record.payload[..] == payload(expected_offset)[..],
        "{case}: record {expected_offset} was served with bytes other than those published"
    );
}

fn assert_clean_refusal(refused: &Refused, case: &str) {
    let Refused { status, stderr } = refused;
    assert!(!status.success(), "{case}: refusing exits non-zero");
    assert_eq!(
        status.code(),
        Some(1),
        "{case}: an exit, not a signal or abort"
    );
    assert!(
        stderr.contains("cannot open storage in") && stderr.contains("what to do:"),
        "{case}: says what is wrong, where, and what to do:\n{stderr}"
    );
    assert!(
        !stderr.contains("thread '") && !stderr.contains("RUST_BACKTRACE"),
        "{case}: no panic reaches the operator:\n{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_cut_short_after_kill_9_serves_an_intact_prefix_or_is_refused() {
    let data = filled(false).await;
    let len = std::fs::metadata(log_file(&data)).unwrap().len();
    let undamaged = outcome(&copy_of(&data), "undamaged").await;
    assert!(
        matches!(
            undamaged,
            Outcome::Served {
                records: RECORDS,
                failed: false
            }
        ),
        "{undamaged:?}"
    );
    for cut in [
        0,
        len / 10,
        len / 4,
        len / 2,
        len * 3 / 4,
        len - 4096,
        len - 1,
    ] {
        let case = format!("log cut to {cut} of {len} bytes");
        let copy = copy_of(&data);
        std::fs::OpenOptions::new()
            .write(true)
            .open(log_file(&copy))
            .unwrap()
            .set_len(cut)
            .unwrap();
        let outcome = outcome(&copy, &case).await;
        eprintln!("{case}: {outcome:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipped_bytes_never_reach_a_subscriber() {
    for clean in [false, true] {
        let data = filled(clean).await;
        let len = std::fs::metadata(log_file(&data)).unwrap().len();
        for i in 1..=10 {
            let at = len * i / 11 + 17;
            let case = format!("byte {at} of {len} flipped (clean stop: {clean})");
            let copy = copy_of(&data);
            let mut log = std::fs::read(log_file(&copy)).unwrap();
            log[usize::try_from(at).unwrap()] ^= 0x5a;
            std::fs::write(log_file(&copy), log).unwrap();
            let outcome = outcome(&copy, &case).await;
            eprintln!("{case}: {outcome:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_sled_settings_and_snapshots_are_refused_with_what_to_do() {
    let data = filled(true).await;
    // sled writes a snapshot of its page table when it opens a log it has recovered.
    assert!(Broker::start(&data).stop().success());
    let db = data.path().join("db");

    let copy = copy_of(&data);
    std::fs::remove_file(copy.path().join("db/conf")).unwrap();
    let refused = Broker::try_start(&copy).unwrap_err();
    assert_clean_refusal(&refused, "conf removed");
    assert!(
        refused.stderr.contains("conf") && refused.stderr.contains("missing"),
        "{}",
        refused.stderr
    );

    let copy = copy_of(&data);
    std::fs::write(
        copy.path().join("db/conf"),
        b"\xff\xfe\x00 not sled's settings",
    )
    .unwrap();
    let refused = Broker::try_start(&copy).unwrap_err();
    assert_clean_refusal(&refused, "conf overwritten");
    assert!(refused.stderr.contains("unreadable"), "{}", refused.stderr);

    let snapshot = std::fs::read_dir(&db)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .find(|name| name.starts_with("snap."))
        .expect("a snapshot after a recovery");
    let copy = copy_of(&data);
    let path = copy.path().join("db").join(&snapshot);
    let mut bytes = std::fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x5a;
    std::fs::write(&path, bytes).unwrap();
    let refused = Broker::try_start(&copy).unwrap_err();
    assert_clean_refusal(&refused, "snapshot flipped");
    assert!(refused.stderr.contains("damaged"), "{}", refused.stderr);

    // A log cut short of what the snapshot covers.
    let copy = copy_of(&data);
    std::fs::OpenOptions::new()
        .write(true)
        .open(log_file(&copy))
        .unwrap()
        .set_len(4096)
        .unwrap();
    let refused = Broker::try_start(&copy).unwrap_err();
    assert_clean_refusal(&refused, "log cut below the snapshot");

    // The undamaged original still serves everything.
    let all = outcome(&data, "undamaged").await;
    assert!(
        matches!(
            all,
            Outcome::Served {
                records: RECORDS,
                failed: false
            }
        ),
        "{all:?}"
    );
}
