//! `memory::trim` gives the pages of freed heap memory back to the operating system.
//!
//! Measured on this process's resident memory, which no other test shares: this file
//! is a test binary of its own, with this one test.

#![cfg(all(target_os = "linux", target_env = "gnu"))]

const BLOCK: usize = 4096;
const BLOCKS: usize = 16 * 1024;
const MIB: u64 = 1024 * 1024;

#[test]
fn freed_holes_in_the_heap_are_given_back() {
    // 64 MiB in small blocks, each written to, so resident.
    let blocks: Vec<Vec<u8>> = (0..BLOCKS)
        .map(|i| vec![(i % 255) as u8 + 1; BLOCK])
        .collect();
    // Free all but every 16th: each kept block pins the hole before it in place, so the
    // allocator cannot shrink its heap and keeps the freed pages.
    let kept: Vec<(usize, Vec<u8>)> = blocks
        .into_iter()
        .enumerate()
        .filter(|(i, _)| i % 16 == 0)
        .collect();
    let before = resident_bytes();

    assert!(
        quiver_host::memory::trim(),
        "trim found nothing to give back"
    );

    let after = resident_bytes();
    assert!(
        before.saturating_sub(after) >= 32 * MIB,
        "resident memory went from {} to {} MiB: less than 32 MiB of the ~60 MiB freed was given back",
        before / MIB,
        after / MIB
    );
    for (i, block) in &kept {
        assert!(
            block.iter().all(|&b| b == (i % 255) as u8 + 1),
            "block {i} changed"
        );
    }
}

fn resident_bytes() -> u64 {
    quiver_host::memory::resident_kib("self").expect("VmRSS in /proc/self/status") * 1024
}
