//! Loopback ports for servers that a test may stop and start again at the same address.
//!
//! A port the kernel picked for a bind to port 0 is free again while its server is
//! down, and the kernel may hand it to the next socket that binds port 0 (any client
//! or server of any test running alongside). The restart at that address then fails
//! with "Address already in use". A hub that stays down for seconds while an edge
//! queues records for it made this real.
//!
//! So servers listen on ports from just below the kernel's ephemeral range
//! (`net.ipv4.ip_local_port_range`; just above it where it starts too low), which a
//! bind to port 0 never picks: only an explicit bind takes one. Each port handed out
//! is probed free (UDP and TCP) and is handed out once per test process; the pool
//! starts at a random place, so test processes running at the same time rarely meet.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::{Ipv4Addr, TcpListener, UdpSocket};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

/// How many ports the pool holds at most.
const POOL_SIZE: u32 = 8_192;

/// The fewest ports a pool beside the ephemeral range is taken with.
const MIN_POOL: u32 = 1_024;

/// Linux's default ephemeral range, when `/proc` does not say.
const EPHEMERAL: (u16, u16) = (32_768, 60_999);

/// The lowest port the pool uses: below it are well-known and registered services.
const LOWEST: u16 = 10_000;

/// A loopback port that is free now for both UDP and TCP, that no bind to port 0
/// will take while its server is down, and that no other call in this process
/// returns (until the pool, thousands of ports, has gone round once).
pub fn stable_port() -> u16 {
    let pool = pool();
    for _ in 0..pool.len {
        let port = pool.first + (pool.next.fetch_add(1, Ordering::Relaxed) % pool.len) as u16;
        if free(port) {
            return port;
        }
    }
    panic!(
        "no free loopback port in {}..{}",
        pool.first,
        u32::from(pool.first) + pool.len
    );
}

/// `127.0.0.1:PORT` with a [`stable_port`].
pub fn stable_addr() -> String {
    format!("127.0.0.1:{}", stable_port())
}

struct Pool {
    first: u16,
    len: u32,
    /// The next offset into the pool (taken modulo `len`).
    next: AtomicU32,
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| {
        let (first, len) = pool_range(ephemeral_range());
        let start = (RandomState::new().hash_one(std::process::id()) % u64::from(len)) as u32;
        Pool {
            first,
            len,
            next: AtomicU32::new(start),
        }
    })
}

/// The pool's first port and length for the ephemeral range `(first, last)`: the
/// ports just below it, or just above it where the range starts too low to leave
/// room. Where it leaves none on either side, every port from [`LOWEST`] up, and a
/// bind to port 0 may take one of them while its server is down, as before.
fn pool_range((first, last): (u16, u16)) -> (u16, u32) {
    let below_end = u32::from(first);
    let below_start = below_end.saturating_sub(POOL_SIZE).max(u32::from(LOWEST));
    let above_start = (u32::from(last) + 1).max(u32::from(LOWEST));
    let above_end = (above_start + POOL_SIZE).min(1 << 16);
    let below = (below_start, below_end.saturating_sub(below_start));
    let above = (above_start, above_end.saturating_sub(above_start));
    let (start, len) = [below, above]
        .into_iter()
        .find(|&(_, len)| len >= MIN_POOL)
        .unwrap_or_else(|| match below.1.max(above.1) {
            0 => (u32::from(LOWEST), (1 << 16) - u32::from(LOWEST)),
            _ if below.1 >= above.1 => below,
            _ => above,
        });
    (u16::try_from(start).expect("a pool starts at a port"), len)
}

/// The kernel's ephemeral range, first and last port.
fn ephemeral_range() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| {
            let mut ports = range.split_whitespace().map(|p| p.parse().ok());
            Some((ports.next()??, ports.next()??))
        })
        .unwrap_or(EPHEMERAL)
}

/// Whether nothing on loopback holds `port`, for UDP (QUIC) and TCP (MQTT, HTTP,
/// NATS) at once.
fn free(port: u16) -> bool {
    let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, port));
    let tcp = TcpListener::bind((Ipv4Addr::LOCALHOST, port));
    udp.is_ok() && tcp.is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_distinct_free_and_outside_the_ephemeral_range() {
        let ports: Vec<u16> = (0..64).map(|_| stable_port()).collect();
        let mut unique = ports.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), ports.len(), "{ports:?}");
        let (first, last) = ephemeral_range();
        for port in ports {
            assert!(!(first..=last).contains(&port), "{port} is ephemeral");
            assert!(port >= LOWEST, "{port}");
            assert!(free(port), "{port} was free when handed out");
        }
    }

    #[test]
    fn the_pool_sits_beside_the_ephemeral_range_where_there_is_room() {
        // Linux's default: the 8,192 ports just below it.
        assert_eq!(pool_range((32_768, 60_999)), (24_576, 8_192));
        // A range starting low: above it.
        assert_eq!(pool_range((1_024, 49_151)), (49_152, 8_192));
        // Little room below, more above: the side with at least MIN_POOL.
        assert_eq!(pool_range((10_500, 63_000)), (63_001, 2_535));
        // No side with MIN_POOL: the larger one.
        assert_eq!(pool_range((10_600, 65_000)), (10_000, 600));
        assert_eq!(pool_range((10_500, 65_000)), (65_001, 535));
        // No room at all: every port from LOWEST up.
        assert_eq!(pool_range((1_024, 65_535)), (10_000, 55_536));
    }
}
