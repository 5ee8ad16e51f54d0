//! Crash safety: the real broker, killed with SIGKILL again and again under a pipelined
//! publish load, acking group members and a stateful ingress plugin, keeps every
//! acknowledged record exactly once at its offset, stores no retried publish twice,
//! skips nothing its group never acked, keeps the plugin's state in step with the
//! records, and always restarts. `tests/src/crash.rs` is the harness; docs/reliability.md says
//! how to run it longer (`QUIVER_CRASH_KILLS`) or replay a seed (`QUIVER_CRASH_SEED`).

use quiver_tests::crash::{self, Fault, Settings};

/// Kills per run in the test suite; `QUIVER_CRASH_KILLS` asks for more.
const KILLS: u32 = 24;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_records_survive_repeated_kill_9_under_load() {
    crash::run_and_check(&Settings::from_env(Fault::Kill, KILLS)).await;
}
