//! A UDP relay between a QUIC client and a QUIC server on loopback, for tests of flaky
//! networks: it loses a seeded share of the datagrams, delays them (in order), cuts the
//! link altogether (a partition) and heals it, and follows a server that restarts on
//! another port. It counts what it relayed and what it dropped, for assertions.
//!
//! Clients dial [`Relay::addr`]; each client address gets a socket of its own towards
//! the server, so the server sees one peer per client, as it would without the relay.
//! The relay runs on a thread of its own with its own tokio runtime, so it works the
//! same from synchronous tests and from `#[tokio::test]`s, and dropping it stops the
//! thread and closes every socket.
//!
//! It never sleeps to wait for anything: the only timers are the delays it was told to
//! add to datagrams, and the setters act at once.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::rng::Rng;

/// The largest datagram the relay carries.
const MAX_DATAGRAM: usize = 65_535;

/// How many datagrams may wait in one direction's delay queue; more are dropped.
const QUEUE_LIMIT: usize = 10_000;

/// How many client addresses the relay keeps sockets for; datagrams from more are
/// dropped.
const CLIENT_LIMIT: usize = 4_096;

/// The seed [`Relay::start`] uses.
const DEFAULT_SEED: u64 = 0x5eed_f00d_9e1a_7e57;

/// A running UDP relay; stops when dropped.
#[derive(Debug)]
pub struct Relay {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: CancellationToken,
    thread: Option<JoinHandle<()>>,
}

impl Relay {
    /// Starts relaying: binds 127.0.0.1:0 for clients, forwards each client's datagrams
    /// to `target` (a loopback address) from a socket of its own per client address (so
    /// the server sees one peer per client), and the server's answers back to that
    /// client. Losses use a fixed default seed.
    pub fn start(target: SocketAddr) -> Self {
        Self::start_seeded(target, DEFAULT_SEED)
    }

    /// Like [`Relay::start`], with the losses drawn from a generator seeded with
    /// `seed`, so a run can be repeated.
    pub fn start_seeded(target: SocketAddr, seed: u64) -> Self {
        let front = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
            .expect("the relay binds a loopback UDP port");
        front
            .set_nonblocking(true)
            .expect("the relay's socket can be made non-blocking");
        let addr = front
            .local_addr()
            .expect("the relay's socket has an address");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("the relay's runtime starts");
        let shared = Arc::new(Shared::new(target, seed));
        let stop = CancellationToken::new();
        let thread = std::thread::Builder::new()
            .name(format!("relay {addr}"))
            .spawn({
                let shared = Arc::clone(&shared);
                let stop = stop.clone();
                move || {
                    runtime.block_on(async move {
                        let front = UdpSocket::from_std(front)
                            .expect("the relay's socket joins its runtime");
                        tokio::select! {
                            () = stop.cancelled() => {}
                            () = serve(Arc::new(front), shared) => {}
                        }
                    });
                    // Dropping the runtime here ends every task and closes its sockets.
                }
            })
            .expect("the relay's thread starts");
        Self {
            addr,
            shared,
            stop,
            thread: Some(thread),
        }
    }

    /// The address clients dial.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Points the relay at another server address (a restarted server on a new port):
    /// existing client mappings forward there from now on.
    pub fn retarget(&self, target: SocketAddr) {
        *self
            .shared
            .target
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = target;
    }

    /// Drops each datagram (both directions) with probability `share` (0.0 to 1.0),
    /// drawn from the relay's seeded generator.
    pub fn set_loss(&self, share: f64) {
        assert!(
            (0.0..=1.0).contains(&share),
            "a loss share is between 0 and 1, not {share}"
        );
        self.shared.loss.store(share.to_bits(), Ordering::Relaxed);
    }

    /// Delays each datagram by `delay` (both directions), keeping their order in each
    /// direction: a datagram never overtakes one that arrived before it, even when the
    /// delay shrinks.
    pub fn set_delay(&self, delay: Duration) {
        let nanos = u64::try_from(delay.as_nanos()).unwrap_or(u64::MAX);
        self.shared.delay_nanos.store(nanos, Ordering::Relaxed);
    }

    /// Drops everything in both directions, including datagrams already delayed, until
    /// [`Relay::heal`] (a partition).
    pub fn partition(&self) {
        self.shared.partitioned.store(true, Ordering::SeqCst);
    }

    /// Ends a [`Relay::partition`]: datagrams pass again (those dropped stay lost).
    pub fn heal(&self) {
        self.shared.partitioned.store(false, Ordering::SeqCst);
    }

    /// Datagrams relayed and dropped so far, both directions: `(relayed, dropped)`.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.shared.relayed.load(Ordering::SeqCst),
            self.shared.dropped.load(Ordering::SeqCst),
        )
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            eprintln!("relay {}: its thread panicked", self.addr);
        }
    }
}

/// The settings and counters shared by the [`Relay`] handle and its tasks.
#[derive(Debug)]
struct Shared {
    target: Mutex<SocketAddr>,
    /// The loss share, as `f64` bits.
    loss: AtomicU64,
    delay_nanos: AtomicU64,
    partitioned: AtomicBool,
    relayed: AtomicU64,
    dropped: AtomicU64,
    rng: Mutex<Rng>,
    /// The errors already logged, by where they happened and their kind.
    logged: Mutex<HashSet<(&'static str, io::ErrorKind)>>,
}

impl Shared {
    fn new(target: SocketAddr, seed: u64) -> Self {
        Self {
            target: Mutex::new(target),
            loss: AtomicU64::new(0.0_f64.to_bits()),
            delay_nanos: AtomicU64::new(0),
            partitioned: AtomicBool::new(false),
            relayed: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            rng: Mutex::new(Rng::new(seed)),
            logged: Mutex::new(HashSet::new()),
        }
    }

    fn target(&self) -> SocketAddr {
        *self.target.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn partitioned(&self) -> bool {
        self.partitioned.load(Ordering::SeqCst)
    }

    /// Whether to lose the next datagram: a draw from the seeded generator.
    fn lose(&self) -> bool {
        let share = f64::from_bits(self.loss.load(Ordering::Relaxed));
        if share <= 0.0 {
            return false;
        }
        let draw = self
            .rng
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .next_u64();
        let high = u32::try_from(draw >> 32).expect("the top 32 bits of a u64 fit a u32");
        // Uniform in [0, 1): a share of 1.0 loses everything, 0.0 nothing.
        f64::from(high) / 4_294_967_296.0 < share
    }

    fn drop_one(&self) {
        self.dropped.fetch_add(1, Ordering::SeqCst);
    }

    /// Logs an error to stderr, once per place and kind.
    fn log_once(&self, place: &'static str, error: &io::Error) {
        let first = self
            .logged
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert((place, error.kind()));
        if first {
            eprintln!("relay: {place}: {error} (logged once; the relay carries on)");
        }
    }

    /// Takes a datagram that came in: drops it (partition, loss, full queue) or queues
    /// it for sending after the current delay.
    fn admit(&self, queue: &mpsc::Sender<Datagram>, bytes: &[u8]) {
        if self.partitioned() || self.lose() {
            self.drop_one();
            return;
        }
        let delay = Duration::from_nanos(self.delay_nanos.load(Ordering::Relaxed));
        let datagram = Datagram {
            due: Instant::now() + delay,
            bytes: bytes.to_vec(),
        };
        match queue.try_send(datagram) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.drop_one();
                self.log_once(
                    "a delay queue is full",
                    &io::Error::other(format!("more than {QUEUE_LIMIT} datagrams wait")),
                );
            }
            // The relay is stopping.
            Err(mpsc::error::TrySendError::Closed(_)) => self.drop_one(),
        }
    }
}

/// A datagram waiting in a direction's queue.
#[derive(Debug)]
struct Datagram {
    /// When to send it.
    due: Instant,
    bytes: Vec<u8>,
}

/// Where a direction's queue sends its datagrams.
#[derive(Debug, Clone, Copy)]
enum Destination {
    /// The server, wherever the relay points now.
    Target,
    /// A client.
    Client(SocketAddr),
}

/// Receives clients' datagrams and hands each to its client's queue towards the server,
/// setting up a client the first time it is seen. Runs until the relay stops.
async fn serve(front: Arc<UdpSocket>, shared: Arc<Shared>) {
    let mut clients: HashMap<SocketAddr, mpsc::Sender<Datagram>> = HashMap::new();
    let mut buf = vec![0_u8; MAX_DATAGRAM];
    loop {
        let (len, from) = match front.recv_from(&mut buf).await {
            Ok(received) => received,
            Err(error) => {
                shared.log_once("receiving from clients", &error);
                // A socket error is one-shot; let the other tasks run before retrying.
                tokio::task::yield_now().await;
                continue;
            }
        };
        let known = clients.len();
        let queue = match clients.entry(from) {
            Entry::Occupied(entry) => entry.into_mut(),
            Entry::Vacant(entry) => {
                if known >= CLIENT_LIMIT {
                    shared.drop_one();
                    shared.log_once(
                        "a new client",
                        &io::Error::other(format!("more than {CLIENT_LIMIT} clients")),
                    );
                    continue;
                }
                match connect_client(from, &front, &shared).await {
                    Ok(queue) => entry.insert(queue),
                    Err(error) => {
                        shared.log_once("binding a socket towards the server", &error);
                        shared.drop_one();
                        continue;
                    }
                }
            }
        };
        shared.admit(queue, &buf[..len]);
    }
}

/// Sets up a new client: a socket of its own towards the server, a queue each way and
/// a task receiving the server's answers. Returns the queue towards the server.
async fn connect_client(
    client: SocketAddr,
    front: &Arc<UdpSocket>,
    shared: &Arc<Shared>,
) -> io::Result<mpsc::Sender<Datagram>> {
    let local: SocketAddr = if shared.target().is_ipv6() {
        (Ipv6Addr::LOCALHOST, 0).into()
    } else {
        (Ipv4Addr::LOCALHOST, 0).into()
    };
    let back = Arc::new(UdpSocket::bind(local).await?);
    let (up, up_queue) = mpsc::channel(QUEUE_LIMIT);
    let (down, down_queue) = mpsc::channel(QUEUE_LIMIT);
    tokio::spawn(deliver(
        up_queue,
        Arc::clone(&back),
        Destination::Target,
        Arc::clone(shared),
    ));
    tokio::spawn(deliver(
        down_queue,
        Arc::clone(front),
        Destination::Client(client),
        Arc::clone(shared),
    ));
    tokio::spawn(answers(back, down, Arc::clone(shared)));
    Ok(up)
}

/// Receives the server's answers on a client's own socket and queues them towards the
/// client. Runs until the relay stops.
async fn answers(back: Arc<UdpSocket>, down: mpsc::Sender<Datagram>, shared: Arc<Shared>) {
    let mut buf = vec![0_u8; MAX_DATAGRAM];
    loop {
        match back.recv_from(&mut buf).await {
            Ok((len, _server)) => shared.admit(&down, &buf[..len]),
            Err(error) => {
                // ECONNREFUSED and the like while the server is down: carry on.
                shared.log_once("receiving from the server", &error);
                tokio::task::yield_now().await;
            }
        }
    }
}

/// Sends a direction's datagrams in the order they came, each when it is due, unless
/// the link is partitioned by then. Runs until the relay stops.
async fn deliver(
    mut queue: mpsc::Receiver<Datagram>,
    socket: Arc<UdpSocket>,
    destination: Destination,
    shared: Arc<Shared>,
) {
    while let Some(datagram) = queue.recv().await {
        if datagram.due > Instant::now() {
            tokio::time::sleep_until(datagram.due).await;
        }
        if shared.partitioned() {
            shared.drop_one();
            continue;
        }
        let (to, place) = match destination {
            Destination::Target => (shared.target(), "sending to the server"),
            Destination::Client(client) => (client, "sending to a client"),
        };
        // Counted before sending, so a test that sees the datagram arrive sees it
        // counted; taken back if the send fails.
        shared.relayed.fetch_add(1, Ordering::SeqCst);
        if let Err(error) = socket.send_to(&datagram.bytes, to).await {
            shared.relayed.fetch_sub(1, Ordering::SeqCst);
            shared.drop_one();
            shared.log_once(place, &error);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// How long a datagram that should get through may take.
    const ARRIVAL: Duration = Duration::from_secs(5);

    /// How long a test waits to see that nothing gets through.
    const SILENCE: Duration = Duration::from_millis(300);

    /// A UDP socket on loopback, port 0.
    async fn socket() -> UdpSocket {
        UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("a loopback UDP socket")
    }

    /// An echo server on `addr` answering each datagram with `tag` and the datagram;
    /// stopped (its socket closed) by [`stop`].
    async fn echo_at(addr: SocketAddr, tag: &'static [u8]) -> tokio::task::JoinHandle<()> {
        let socket = UdpSocket::bind(addr).await.expect("the echo server binds");
        tokio::spawn(async move {
            let mut buf = vec![0_u8; MAX_DATAGRAM];
            loop {
                let Ok((len, from)) = socket.recv_from(&mut buf).await else {
                    continue;
                };
                let mut answer = tag.to_vec();
                answer.extend_from_slice(&buf[..len]);
                let _ = socket.send_to(&answer, from).await;
            }
        })
    }

    /// An echo server on a fresh loopback port (one it can be restarted at:
    /// [`crate::ports`]), and its address.
    async fn echo(tag: &'static [u8]) -> (SocketAddr, tokio::task::JoinHandle<()>) {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, crate::ports::stable_port()));
        (addr, echo_at(addr, tag).await)
    }

    /// Stops an echo server and waits until its socket is closed.
    async fn stop(server: tokio::task::JoinHandle<()>) {
        server.abort();
        let _ = server.await;
    }

    /// The next datagram `client` receives, which must come from the relay in time.
    async fn answer(client: &UdpSocket, relay: &Relay) -> Vec<u8> {
        let mut buf = vec![0_u8; MAX_DATAGRAM];
        let (len, from) = tokio::time::timeout(ARRIVAL, client.recv_from(&mut buf))
            .await
            .expect("an answer arrives")
            .expect("the client receives");
        assert_eq!(from, relay.addr(), "answers come from the relay");
        buf.truncate(len);
        buf
    }

    /// Fails if `client` receives anything within [`SILENCE`].
    async fn silence(client: &UdpSocket) {
        let mut buf = vec![0_u8; MAX_DATAGRAM];
        let got = tokio::time::timeout(SILENCE, client.recv_from(&mut buf)).await;
        assert!(got.is_err(), "nothing gets through, yet got {got:?}");
    }

    /// Sends `bytes` through the relay and returns the answer.
    async fn round_trip(client: &UdpSocket, relay: &Relay, bytes: &[u8]) -> Vec<u8> {
        client
            .send_to(bytes, relay.addr())
            .await
            .expect("the client sends");
        answer(client, relay).await
    }

    #[tokio::test]
    async fn relays_an_echo_both_ways() {
        let (server, echo) = echo(b"echo:").await;
        let relay = Relay::start(server);
        let client = socket().await;
        assert_eq!(round_trip(&client, &relay, b"ping").await, b"echo:ping");
        let big = vec![7_u8; 60_000];
        let back = round_trip(&client, &relay, &big).await;
        assert_eq!(
            back.len(),
            5 + big.len(),
            "a 60,000-byte datagram passes whole"
        );
        assert_eq!(&back[5..], &big[..]);
        assert_eq!(
            relay.counts(),
            (4, 0),
            "two datagrams each way, none dropped"
        );
        stop(echo).await;
    }

    #[tokio::test]
    async fn a_partition_drops_everything_until_healed() {
        let (server, echo) = echo(b"").await;
        let relay = Relay::start(server);
        let client = socket().await;
        assert_eq!(round_trip(&client, &relay, b"before").await, b"before");

        relay.partition();
        client.send_to(b"cut", relay.addr()).await.expect("sent");
        silence(&client).await;
        assert_eq!(
            relay.counts(),
            (2, 1),
            "the datagram sent across the cut is dropped"
        );

        relay.heal();
        // The one sent during the partition stays lost: the next answer is the new one.
        assert_eq!(round_trip(&client, &relay, b"after").await, b"after");
        assert_eq!(relay.counts(), (4, 1));
        stop(echo).await;
    }

    #[tokio::test]
    async fn a_partition_drops_datagrams_already_delayed() {
        let (server, echo) = echo(b"").await;
        let relay = Relay::start(server);
        let client = socket().await;
        relay.set_delay(Duration::from_millis(50));
        client
            .send_to(b"in flight", relay.addr())
            .await
            .expect("sent");
        relay.partition();
        silence(&client).await;
        relay.heal();
        relay.set_delay(Duration::ZERO);
        assert_eq!(round_trip(&client, &relay, b"after").await, b"after");
        assert_eq!(relay.counts(), (2, 1));
        stop(echo).await;
    }

    #[tokio::test]
    async fn total_loss_lets_nothing_through_and_counts_it() {
        let (server, echo) = echo(b"").await;
        let relay = Relay::start(server);
        let client = socket().await;
        relay.set_loss(1.0);
        for i in 0..20_u8 {
            client.send_to(&[i], relay.addr()).await.expect("sent");
        }
        silence(&client).await;
        assert_eq!(relay.counts(), (0, 20), "every datagram is dropped");

        relay.set_loss(0.0);
        assert_eq!(round_trip(&client, &relay, b"through").await, b"through");
        assert_eq!(relay.counts(), (2, 20));
        stop(echo).await;
    }

    #[test]
    fn losses_follow_the_seed() {
        let draws = |seed| {
            let shared = Shared::new((Ipv4Addr::LOCALHOST, 9).into(), seed);
            shared.loss.store(0.5_f64.to_bits(), Ordering::Relaxed);
            (0..1_000).map(|_| shared.lose()).collect::<Vec<bool>>()
        };
        assert_eq!(draws(7), draws(7), "a seed repeats its losses");
        assert_ne!(draws(7), draws(8), "another seed loses others");
        let lost = draws(7).into_iter().filter(|&lost| lost).count();
        assert!(
            (400..=600).contains(&lost),
            "about half lost: {lost} of 1000"
        );
    }

    #[tokio::test]
    async fn retarget_moves_existing_clients_to_the_new_server() {
        let (first, first_echo) = echo(b"first:").await;
        let (second, second_echo) = echo(b"second:").await;
        let relay = Relay::start(first);
        let client = socket().await;
        assert_eq!(round_trip(&client, &relay, b"x").await, b"first:x");
        relay.retarget(second);
        assert_eq!(round_trip(&client, &relay, b"y").await, b"second:y");
        assert_eq!(relay.counts(), (4, 0));
        stop(first_echo).await;
        stop(second_echo).await;
    }

    #[tokio::test]
    async fn keeps_relaying_while_the_server_is_down_and_after_it_restarts() {
        let (server, echo) = echo(b"").await;
        let relay = Relay::start(server);
        let client = socket().await;
        assert_eq!(round_trip(&client, &relay, b"before").await, b"before");

        stop(echo).await;
        client
            .send_to(b"while down", relay.addr())
            .await
            .expect("sent");
        silence(&client).await;

        // Restarted on the same port.
        let echo = echo_at(server, b"").await;
        assert_eq!(round_trip(&client, &relay, b"after").await, b"after");
        let (relayed, dropped) = relay.counts();
        assert_eq!(relayed + dropped, 5, "every datagram is accounted for");
        assert!(relayed >= 4, "both round trips are relayed: {relayed}");
        stop(echo).await;
    }

    #[tokio::test]
    async fn a_delay_delays_both_ways_and_keeps_the_order() {
        let (server, echo) = echo(b"").await;
        let relay = Relay::start(server);
        let client = socket().await;
        let delay = Duration::from_millis(100);
        relay.set_delay(delay);
        let start = Instant::now();
        for i in 0..20_u8 {
            client.send_to(&[i], relay.addr()).await.expect("sent");
        }
        for i in 0..20_u8 {
            assert_eq!(answer(&client, &relay).await, [i], "answers come in order");
        }
        assert!(
            start.elapsed() >= 2 * delay,
            "each way is delayed: the round trips took {:?}",
            start.elapsed()
        );
        assert_eq!(relay.counts(), (40, 0));
        stop(echo).await;
    }

    #[tokio::test]
    async fn a_delayed_datagram_is_not_overtaken_when_the_delay_shrinks() {
        let receiver = socket().await;
        let shared = Arc::new(Shared::new(
            receiver.local_addr().expect("a bound address"),
            1,
        ));
        let (queue, queued) = mpsc::channel(QUEUE_LIMIT);
        let slow = Duration::from_millis(200);
        let start = Instant::now();
        shared.delay_nanos.store(
            u64::try_from(slow.as_nanos()).expect("200 ms fits"),
            Ordering::Relaxed,
        );
        shared.admit(&queue, b"slow");
        shared.delay_nanos.store(0, Ordering::Relaxed);
        shared.admit(&queue, b"fast");
        let sender = Arc::new(socket().await);
        let delivering = tokio::spawn(deliver(
            queued,
            sender,
            Destination::Target,
            Arc::clone(&shared),
        ));
        let mut buf = [0_u8; 16];
        for expected in [&b"slow"[..], b"fast"] {
            let (len, _) = tokio::time::timeout(ARRIVAL, receiver.recv_from(&mut buf))
                .await
                .expect("a datagram arrives")
                .expect("received");
            assert_eq!(&buf[..len], expected);
        }
        assert!(start.elapsed() >= slow, "the first waited its delay");
        assert_eq!(shared.relayed.load(Ordering::SeqCst), 2);
        delivering.abort();
    }

    #[test]
    fn a_full_delay_queue_drops_and_counts() {
        let shared = Shared::new((Ipv4Addr::LOCALHOST, 9).into(), 1);
        let (queue, _queued) = mpsc::channel(QUEUE_LIMIT);
        for _ in 0..QUEUE_LIMIT + 5 {
            shared.admit(&queue, b"x");
        }
        assert_eq!(shared.dropped.load(Ordering::SeqCst), 5);
    }

    /// From a synchronous test, with std sockets: the server sees each client as a peer
    /// of its own, and dropping the relay frees its port.
    #[test]
    fn works_from_a_synchronous_test_with_one_peer_per_client() {
        let bind = || {
            let socket = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bound");
            socket
                .set_read_timeout(Some(ARRIVAL))
                .expect("a read timeout");
            socket
        };
        let server = bind();
        let relay = Relay::start(server.local_addr().expect("a bound address"));
        let (a, b) = (bind(), bind());
        let mut buf = vec![0_u8; MAX_DATAGRAM];

        a.send_to(b"from a", relay.addr()).expect("sent");
        let (len, peer_a) = server.recv_from(&mut buf).expect("a's datagram arrives");
        assert_eq!(&buf[..len], b"from a");
        b.send_to(b"from b", relay.addr()).expect("sent");
        let (len, peer_b) = server.recv_from(&mut buf).expect("b's datagram arrives");
        assert_eq!(&buf[..len], b"from b");
        assert_ne!(peer_a, peer_b, "one peer per client");
        assert_ne!(peer_a, relay.addr());

        for (peer, client, text) in [(peer_a, &a, &b"to a"[..]), (peer_b, &b, b"to b")] {
            server.send_to(text, peer).expect("sent");
            let (len, from) = client.recv_from(&mut buf).expect("the answer arrives");
            assert_eq!((&buf[..len], from), (text, relay.addr()));
        }
        assert_eq!(relay.counts(), (4, 0));

        let addr = relay.addr();
        drop(relay);
        std::net::UdpSocket::bind(addr).expect("the relay's port is free once it is dropped");
    }
}
