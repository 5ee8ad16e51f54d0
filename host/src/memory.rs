//! Handing freed heap memory back to the operating system.
//!
//! glibc's malloc returns memory to the kernel by itself only from the top of a heap
//! (and whole blocks it served with `mmap`). A broker under load allocates and frees
//! small buffers by the million: records staged by the sessions and freed by the
//! storage thread once sealed, sled's tree nodes cloned at every change and dropped
//! when replaced or evicted. The holes they leave stay resident. After 3 million
//! records published round-robin over 10,000 topics, 28 of the broker's 171 MiB were
//! such pages (`malloc_trim(0)` called from a debugger took it to 142 MiB; figures in
//! docs/performance.md).
//!
//! `malloc_trim(0)` gives back every whole free page of every arena (`MADV_DONTNEED`),
//! so the broker calls it every [`TRIM_INTERVAL`]. It walks each arena under that
//! arena's lock, so it runs on a blocking thread, not a runtime worker. Pages it gives
//! back and the allocator hands out again cost a page fault each, a small price every
//! few seconds.
//!
//! Elsewhere than on glibc (musl, macOS) [`trim`] does nothing.

use std::time::Duration;

use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tracing::debug;

/// How often the broker gives freed heap pages back.
pub const TRIM_INTERVAL: Duration = Duration::from_secs(5);

/// Trims every [`TRIM_INTERVAL`] until `stop`.
pub async fn trim_periodically(stop: CancellationToken) {
    let mut ticks = tokio::time::interval(TRIM_INTERVAL);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    ticks.tick().await; // the first tick is immediate: nothing is freed yet
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = stop.cancelled() => return,
        }
        let started = std::time::Instant::now();
        match tokio::task::spawn_blocking(trim).await {
            Ok(released) => debug!(
                released,
                ms = started.elapsed().as_millis(),
                "freed heap memory trimmed"
            ),
            // Only a panic or a runtime shutting down ends the blocking task early.
            Err(_) => return,
        }
    }
}

/// A process's resident memory in KiB, from `/proc/<process>/status` (`process` is
/// `"self"` or a pid); `None` where /proc does not tell it.
pub fn resident_kib(process: &str) -> Option<u64> {
    status_kib(process, "VmRSS:")
}

/// The most resident memory a process has held, in KiB (`VmHWM`), like
/// [`resident_kib`].
pub fn peak_resident_kib(process: &str) -> Option<u64> {
    status_kib(process, "VmHWM:")
}

/// A field of `/proc/<process>/status` given in kB.
fn status_kib(process: &str, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{process}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Gives the free pages of the allocator's heaps back to the operating system;
/// whether there were any. Any thread may call it at any time.
pub fn trim() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: `malloc_trim` takes the allocator's own locks and releases only
        // memory no allocation holds; it has no precondition on the caller.
        #[allow(unsafe_code)]
        let released = unsafe { libc::malloc_trim(0) };
        released == 1
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}
