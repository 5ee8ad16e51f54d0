//! Loopback ports for servers that a test may stop and start again at the same address.
//!
//! A port the kernel picked for a bind to port 0 is free again while its server is
//! down, and the kernel may hand it to the next socket that binds port 0 (any client
//! or server of any test running alongside). The restart at that address then fails
//! with "Address already in use". A hub that stays down for seconds while an edge
//! queues records for it made this real.
//!
//! So servers listen on ports from just below the kernel's ephemeral range
//! (`net.ipv4.ip_local_port_range`), which a bind to port 0 never picks: only an
//! explicit bind takes one. Each port handed out is probed free (UDP and TCP) and is
//! handed out once per test process; the pool starts at a random place, so test
//! processes running at the same time rarely meet.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::{Ipv4Addr, TcpListener, UdpSocket};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

/// How many ports below the ephemeral range the pool holds.
const POOL_SIZE: u16 = 8_192;

/// Where the ephemeral range starts when `/proc` does not say (Linux's default).
const EPHEMERAL_FIRST: u16 = 32_768;

/// The lowest port the pool uses: below it are well-known and registered services.
const LOWEST: u16 = 10_000;

/// A loopback port that is free now for both UDP and TCP, that no bind to port 0
/// will take while its server is down, and that no other call in this process
/// returns.
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
        let end = ephemeral_first().max(LOWEST + 1);
        let first = end.saturating_sub(POOL_SIZE).max(LOWEST);
        let len = u32::from(end - first);
        let start = (RandomState::new().hash_one(std::process::id()) % u64::from(len)) as u32;
        Pool {
            first,
            len,
            next: AtomicU32::new(start),
        }
    })
}

/// The first port of the kernel's ephemeral range.
fn ephemeral_first() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .unwrap_or(EPHEMERAL_FIRST)
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
        let ephemeral = ephemeral_first();
        for port in ports {
            assert!((LOWEST..ephemeral).contains(&port), "{port}");
            assert!(free(port), "{port} was free when handed out");
        }
    }
}
