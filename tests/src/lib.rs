//! The integration-test harness: starts the real `quiver` binary on a temp data dir and
//! a free loopback port ([`ports`]), waits for its ready line, and hands out real SDK
//! clients.
//!
//! The binary is `target/<profile>/quiver` next to the test executable, or `$QUIVER_BIN`.
//! `make test` builds it before running the tests.

pub mod browser;
pub mod crash;
pub mod disk;
pub mod http;
pub mod live;
pub mod mqtt;
pub mod nats;
pub mod ports;
pub mod raw;
pub mod relay;
pub mod rng;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use futures::StreamExt;
use quiver_client::{Client, Delivery, Member, Record, StartAt, SubscribeOptions, Subscription};

/// How long a broker may take to print its ready line before the test gives up.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// The `quiver` binary under test.
pub fn quiver_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("QUIVER_BIN") {
        return bin.into();
    }
    let exe = std::env::current_exe().expect("the test binary knows its path");
    // target/<profile>/deps/<test> -> target/<profile>/quiver
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binaries live in target/<profile>/deps")
        .join("quiver");
    assert!(
        bin.exists(),
        "{} does not exist: build it first (`make test` does), or set QUIVER_BIN",
        bin.display()
    );
    bin
}

/// A client SDK example program (`client/examples/NAME.rs`), built next to the binary.
pub fn example_bin(name: &str) -> PathBuf {
    let bin = quiver_bin()
        .parent()
        .expect("the binary is in a directory")
        .join("examples")
        .join(name);
    assert!(
        bin.exists(),
        "{} does not exist: build the examples first (`make test` does)",
        bin.display()
    );
    bin
}

/// An example plugin (`plugins/NAME`), built by `make plugins`.
pub fn example_plugin(name: &str) -> PathBuf {
    wasm(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins"),
        name,
    )
}

/// A test plugin (`tests/plugins/NAME`: hostile ones and the upgrade pair), built by
/// `make plugins`.
pub fn test_plugin(name: &str) -> PathBuf {
    wasm(Path::new(env!("CARGO_MANIFEST_DIR")).join("plugins"), name)
}

fn wasm(workspace: PathBuf, name: &str) -> PathBuf {
    let file = workspace
        .join("target/wasm32-wasip2/release")
        .join(format!("{}.wasm", name.replace('-', "_")));
    assert!(
        file.exists(),
        "{} does not exist: build the plugins first (`make plugins`)",
        file.display()
    );
    file
}

/// The example `json-filter` as the tests attach it: keeps JSON records whose `level`
/// is `warn` or above, drops the rest, rejects what is not JSON (a dead letter).
pub fn level_filter() -> quiver_client::Stage {
    quiver_client::Stage::new("json-filter")
        .param("where", "level >= warn")
        .param("order", "debug,info,warn,error")
}

/// Creates `topic` with the `json-filter` example deployed and attached as `filter`.
pub async fn filtered_topic(client: &Client, topic: &str, filter: quiver_client::Stage) {
    client
        .create_topic(topic, quiver_client::Retention::default())
        .await
        .expect("the topic is created");
    let wasm = read_plugin(&example_plugin("json-filter"));
    client
        .deploy_plugin("json-filter", wasm, None)
        .await
        .expect("json-filter deploys");
    client
        .attach_plugin(topic, filter)
        .await
        .expect("json-filter attaches");
}

/// Reads a plugin component.
pub fn read_plugin(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// A compiled-plugin cache shared by the test brokers (`target/test-plugin-cache`), so
/// each plugin is compiled once per test run rather than once per broker.
pub fn shared_plugin_cache() -> String {
    let dir = quiver_bin()
        .parent()
        .and_then(Path::parent)
        .expect("the binary lives in target/<profile>")
        .join("test-plugin-cache");
    dir.to_string_lossy().into_owned()
}

/// A data dir that outlives broker restarts; removed on drop.
///
/// It is `quiver-data` inside a temp dir, laid out as `quiver serve` run in that temp
/// dir would lay it out, so CLI tests can run there and find the certificate.
#[derive(Debug)]
pub struct DataDir {
    root: tempfile::TempDir,
    path: PathBuf,
}

impl DataDir {
    /// A fresh, empty data dir.
    pub fn new() -> Self {
        let root = tempfile::tempdir().expect("a temp dir");
        let path = root.path().join("quiver-data");
        Self { root, path }
    }

    /// The data dir's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The temp dir holding it: where `quiver` finds `./quiver-data`.
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// The broker's self-signed certificate in it.
    pub fn cert(&self) -> PathBuf {
        self.path().join("tls").join("cert.pem")
    }
}

impl Default for DataDir {
    fn default() -> Self {
        Self::new()
    }
}

/// How [`Broker::restart`] stops a broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// SIGTERM: a clean shutdown, connections closed with a reason.
    Term,
    /// SIGKILL: the process is gone at once, its clients are not told.
    Kill,
}

/// A running broker process.
#[derive(Debug)]
pub struct Broker {
    child: Child,
    addr: String,
    cert: PathBuf,
    data: PathBuf,
    /// The MQTT listeners the ready line names (`--mqtt`, `--mqtt-tls`).
    mqtt: Option<String>,
    mqtt_tls: Option<String>,
    /// The HTTP listener's base URL (`http://127.0.0.1:port`).
    http: Option<String>,
}

/// What a broker's ready line says:
///
/// ```text
/// quiver 0.1.0 listening on ADDR (data dir D, certificate C[, mqtt A][, mqtt-tls B][, http H])
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
struct Ready {
    addr: String,
    cert: PathBuf,
    mqtt: Option<String>,
    mqtt_tls: Option<String>,
    /// `http://ADDR` or `https://ADDR`.
    http: Option<String>,
}

impl Ready {
    /// Parses a ready line; `None` for any other line.
    fn parse(line: &str) -> Option<Self> {
        let rest = line.split("listening on ").nth(1)?;
        let addr = rest
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_owned();
        let mut ready = Self {
            addr,
            cert: PathBuf::new(),
            mqtt: None,
            mqtt_tls: None,
            http: None,
        };
        // The certificate path ends at the first ", " or ")".
        if let Some(cert) = line.split("certificate ").nth(1) {
            let end = [cert.find(", "), cert.find(')')]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or(cert.len());
            ready.cert = PathBuf::from(&cert[..end]);
        }
        let details = rest
            .split_once('(')
            .map_or("", |(_, inner)| inner.trim_end().trim_end_matches(')'));
        for part in details.split(", ") {
            if let Some(addr) = part.strip_prefix("mqtt-tls ") {
                ready.mqtt_tls = Some(addr.trim().to_owned());
            } else if let Some(addr) = part.strip_prefix("mqtt ") {
                ready.mqtt = Some(addr.trim().to_owned());
            } else if let Some((scheme @ ("http" | "https"), addr)) = part.split_once(' ') {
                ready.http = Some(format!("{scheme}://{}", addr.trim()));
            }
        }
        Some(ready)
    }
}

/// A CLI process running in the background; killed if dropped while running (so a
/// failing test leaves nothing behind).
#[derive(Debug)]
pub struct Background(Option<Child>);

impl Background {
    /// Waits for it to exit and collects its output.
    pub fn wait(mut self) -> std::process::Output {
        let child = self.0.take().expect("waited once");
        child.wait_with_output().expect("the CLI is reaped")
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Extra settings for a broker, as `QUIVER_*` environment variables.
pub type Env<'a> = &'a [(&'a str, &'a str)];

impl Broker {
    /// Starts a broker on `data` at a [`ports::stable_addr`] and waits for its ready
    /// line.
    pub fn start(data: &DataDir) -> Self {
        Self::start_with(data, &[])
    }

    /// Like [`Broker::start`], with extra environment (configuration overrides).
    pub fn start_with(data: &DataDir, env: Env<'_>) -> Self {
        Self::launch(data, &[], env)
    }

    /// Starts `quiver serve --listen ADDR --data DATA ARGS…` with `env`, at a
    /// [`ports::stable_addr`]: one it can be restarted at however long it is down.
    pub fn launch(data: &DataDir, args: &[&str], env: Env<'_>) -> Self {
        Self::launch_at(data, &ports::stable_addr(), args, env)
    }

    /// Starts `quiver serve --listen LISTEN --data DATA ARGS…` with `env`.
    fn launch_at(data: &DataDir, listen: &str, args: &[&str], env: Env<'_>) -> Self {
        let command = Self::serve_command(data, listen, args, env);
        Self::spawn(command, data).unwrap_or_else(|refused| {
            panic!(
                "the broker exited ({}) before printing its ready line; its log is above",
                refused.status
            )
        })
    }

    /// Stops the broker (with SIGTERM, waiting for it to exit, or with SIGKILL) and
    /// starts it again on the same data dir and address, with the same arguments
    /// `args`, waiting for its ready line. Its clients see a broker restart.
    pub fn restart(self, data: &DataDir, stop: Stop, args: &[&str]) -> Self {
        let addr = self.addr.clone();
        match stop {
            Stop::Term => {
                let status = self.stop();
                assert!(status.success(), "the broker stops cleanly: {status}");
            }
            Stop::Kill => self.kill9(),
        }
        Self::launch_at(data, &addr, args, &[])
    }

    /// Starts a broker on `data` at `addr` (one that listened there before, stopped
    /// meanwhile), with `env`, waiting for its ready line.
    pub fn start_at(data: &DataDir, addr: &str, env: Env<'_>) -> Self {
        Self::launch_at(data, addr, &[], env)
    }

    /// The `quiver serve` command [`Broker::launch`] runs.
    fn serve_command(data: &DataDir, listen: &str, args: &[&str], env: Env<'_>) -> Command {
        let mut command = Command::new(quiver_bin());
        command
            .args(["serve", "--listen", listen, "--data"])
            .arg(data.path())
            .args(args)
            .env("RUST_LOG", "info")
            // Compile each plugin once per test run (a test may point elsewhere).
            .env("QUIVER_PLUGINS__CACHE_DIR", shared_plugin_cache())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // Each broker's HTTP listener on a port of its own, unless the test says.
        if !args.contains(&"--http") {
            command.args(["--http", "127.0.0.1:0"]);
        }
        for (key, value) in env {
            command.env(key, value);
        }
        command
    }

    /// Runs a `quiver serve` command until its ready line, or until it exits.
    fn spawn(mut command: Command, data: &DataDir) -> Result<Self, Refused> {
        let mut child = command.spawn().expect("the quiver binary starts");
        let logged = forward_stderr(&mut child);
        match wait_for_ready_line(&mut child) {
            Some(ready) => Ok(Self {
                child,
                addr: ready.addr,
                cert: ready.cert,
                data: data.path().to_owned(),
                mqtt: ready.mqtt,
                mqtt_tls: ready.mqtt_tls,
                http: ready.http,
            }),
            None => {
                let status = child.wait().expect("the broker is reaped");
                // stderr ends with the process: the forwarder has sent every line.
                let stderr: Vec<String> = logged.iter().collect();
                Err(Refused {
                    status,
                    stderr: stderr.join("\n"),
                })
            }
        }
    }

    /// The address it listens on (`127.0.0.1:port`).
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The HTTP listener's base URL (`http://127.0.0.1:port`, or `https://…`), from
    /// the ready line (every test broker has one unless started with `--http off`).
    pub fn http_url(&self) -> &str {
        self.http
            .as_deref()
            .expect("this broker has no HTTP listener (started with `--http off`?)")
    }

    /// The MQTT listener's TCP address (`127.0.0.1:port`), from the ready line of a
    /// broker started with `--mqtt` ([`mqtt::MQTT_ARGS`]).
    pub fn mqtt_addr(&self) -> &str {
        self.mqtt.as_deref().unwrap_or_else(|| {
            panic!(
                "this broker has no MQTT listener: start it with `--mqtt 127.0.0.1:0` \
                 (quiver_tests::mqtt::MQTT_ARGS)"
            )
        })
    }

    /// The MQTT-over-TLS listener's address, from the ready line of a broker started
    /// with `--mqtt-tls` ([`mqtt::MQTT_TLS_ARGS`]).
    pub fn mqtt_tls_addr(&self) -> &str {
        self.mqtt_tls.as_deref().unwrap_or_else(|| {
            panic!(
                "this broker has no MQTT-over-TLS listener: start it with \
                 `--mqtt-tls 127.0.0.1:0` (quiver_tests::mqtt::MQTT_TLS_ARGS)"
            )
        })
    }

    /// The certificate clients trust.
    pub fn cert(&self) -> &Path {
        &self.cert
    }

    /// The data dir.
    pub fn data(&self) -> &Path {
        &self.data
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Runs the `quiver` CLI against this broker, in the data dir's parent (where it
    /// finds the certificate by itself).
    pub fn cli(&self, data: &DataDir, args: &[&str], stdin: &str) -> std::process::Output {
        cli(data.root(), args, &[("QUIVER_SERVER", self.addr())], stdin)
    }

    /// Starts the `quiver` CLI against this broker in the background (like
    /// [`Broker::cli`]); it is killed if still running when dropped.
    pub fn spawn_cli(&self, data: &DataDir, args: &[&str]) -> Background {
        let child = Command::new(quiver_bin())
            .args(args)
            .current_dir(data.root())
            .env("QUIVER_SERVER", self.addr())
            .env_remove("QUIVER_CA")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the quiver binary starts");
        Background(Some(child))
    }

    /// A connected client.
    pub async fn client(&self) -> Client {
        self.try_client()
            .await
            .expect("the broker accepts a connection")
    }

    /// A connected client that does not reconnect: a lost connection ends what is in
    /// flight, as the tests of the broker's own behaviour need.
    pub async fn client_without_reconnection(&self) -> Client {
        Client::builder()
            .ca_file(&self.cert)
            .expect("the broker's certificate is readable")
            .reconnect(quiver_client::Reconnect::Never)
            .connect(&self.addr)
            .await
            .expect("the broker accepts a connection")
    }

    /// A connected client authenticated with `token` (see [`principal`]).
    pub async fn client_as(&self, token: &str) -> Client {
        Client::builder()
            .ca_file(&self.cert)
            .expect("the broker's certificate is readable")
            .token(token)
            .connect(&self.addr)
            .await
            .expect("the broker accepts the token")
    }

    /// A client, if the broker accepts one now.
    pub async fn try_client(&self) -> Result<Client, quiver_client::Error> {
        Client::builder()
            .ca_file(&self.cert)
            .expect("the broker's certificate is readable")
            .connect(&self.addr)
            .await
    }

    /// Kills the broker with SIGKILL (no chance to flush anything) and reaps it.
    pub fn kill9(mut self) {
        self.child.kill().expect("SIGKILL is delivered");
        self.child.wait().expect("the broker is reaped");
    }

    /// Sends SIGTERM without waiting.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "SIGTERM is delivered");
    }

    /// Sends SIGTERM and waits for the broker to exit.
    pub fn stop(mut self) -> ExitStatus {
        self.terminate();
        self.child.wait().expect("the broker is reaped")
    }

    /// Waits for the broker to exit (after [`Broker::terminate`]).
    pub fn wait(mut self) -> ExitStatus {
        self.child.wait().expect("the broker is reaped")
    }

    /// The broker's resident memory, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("the broker's /proc status is readable");
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS is in /proc status")
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Copies the broker's log into the test's output (shown when a test fails), and
/// hands each line to the returned receiver too.
fn forward_stderr(child: &mut Child) -> mpsc::Receiver<String> {
    let stderr = child.stderr.take().expect("stderr is piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("[broker] {line}");
            let _ = tx.send(line);
        }
    });
    rx
}

/// Reads stdout until the ready line and returns what it says (the bound address, the
/// certificate, the MQTT listeners); `None` if the broker exits first.
fn wait_for_ready_line(child: &mut Child) -> Option<Ready> {
    let stdout = child.stdout.take().expect("stdout is piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        for line in lines.by_ref().map_while(Result::ok) {
            if let Some(ready) = Ready::parse(&line) {
                let _ = tx.send(Some(ready));
                // Keep draining so the broker never blocks on a full pipe.
                for _ in lines.by_ref() {}
                return;
            }
        }
        let _ = tx.send(None);
    });
    rx.recv_timeout(READY_TIMEOUT)
        .unwrap_or_else(|_| panic!("neither a ready line nor an exit within {READY_TIMEOUT:?}"))
}

/// Runs the `quiver` CLI with `args`, in `cwd`, against nothing in particular (pass
/// `--server`/`--ca` or set them in `env`), feeding `stdin`. Returns its output.
pub fn cli(cwd: &Path, args: &[&str], env: Env<'_>, stdin: &str) -> std::process::Output {
    use std::io::Write;
    let mut command = Command::new(quiver_bin());
    command
        .args(args)
        .current_dir(cwd)
        .env_remove("QUIVER_SERVER")
        .env_remove("QUIVER_CA")
        // Local plugin runs (`plugin test`, `replay`) share the brokers' cache of
        // compiled components instead of the user's.
        .env("QUIVER_PLUGIN_CACHE", shared_plugin_cache())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (key, value) in env {
        command.env(key, value);
    }
    let mut child = command.spawn().expect("the quiver binary starts");
    let mut input = child.stdin.take().expect("stdin is piped");
    let stdin = stdin.to_owned();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(stdin.as_bytes());
    });
    let output = child.wait_with_output().expect("the CLI runs");
    writer.join().expect("stdin writer finishes");
    output
}

/// The standard output of a command that must have succeeded.
pub fn succeeded(output: std::process::Output) -> String {
    assert!(
        output.status.success(),
        "the command failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("UTF-8 output")
}

/// Takes `n` records from a subscription, failing the test if it stalls for 30 s.
pub async fn take(sub: &mut Subscription, n: usize) -> Vec<Record> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let next = tokio::time::timeout(Duration::from_secs(30), sub.next())
            .await
            .unwrap_or_else(|_| panic!("stalled after {} of {n} records", out.len()));
        out.push(next.expect("the subscription is open").expect("a record"));
    }
    out
}

/// The next delivery to a group member, failing the test if none comes in 30 s.
pub async fn next_delivery(member: &mut Member) -> Delivery {
    tokio::time::timeout(Duration::from_secs(30), member.next())
        .await
        .expect("a delivery within 30 s")
        .expect("the membership is open")
        .expect("a delivery")
}

/// Takes `n` deliveries from a group member (30 s stall limit each).
pub async fn deliveries(member: &mut Member, n: usize) -> Vec<Delivery> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        out.push(next_delivery(member).await);
    }
    out
}

/// Every record a topic holds, read from the start.
pub async fn read_all(client: &Client, topic: &str) -> Vec<Record> {
    let info = client
        .describe_topic(topic)
        .await
        .expect("the topic exists");
    let mut sub = client
        .subscribe(topic, SubscribeOptions::from(StartAt::Earliest))
        .await
        .expect("the topic can be subscribed to");
    take(&mut sub, info.records as usize).await
}

/// A new topic `topic` holding `records` records of 256 bytes, published with 1,024
/// in flight (a backlog for a link to catch up).
pub async fn backlog(client: &Client, topic: &str, records: u64) {
    client
        .create_topic(topic, quiver_client::Retention::default())
        .await
        .expect("created");
    let payload = vec![b'x'; 256];
    let mut acks = Vec::new();
    for _ in 0..records {
        acks.push(client.publish(topic, quiver_client::NewRecord::new(payload.clone())));
        if acks.len() == 1024 {
            for ack in acks.drain(..) {
                ack.await.expect("published");
            }
        }
    }
    for ack in acks {
        ack.await.expect("published");
    }
}

/// A CA and a leaf certificate for `name` (a host name or an IP address) signed by
/// it, as PEM files in `dir`: (CA, certificate, key).
pub fn issue_certificate(dir: &Path, name: &str) -> (PathBuf, PathBuf, PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::new()).expect("CA parameters");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca =
        CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("a key")).expect("a CA");
    let leaf_key = KeyPair::generate().expect("a key");
    let leaf = CertificateParams::new(vec![name.to_owned()])
        .expect("leaf parameters")
        .signed_by(&leaf_key, &ca)
        .expect("a leaf certificate");
    let paths = (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    );
    std::fs::write(&paths.0, ca.pem()).expect("written");
    std::fs::write(&paths.1, leaf.pem()).expect("written");
    std::fs::write(&paths.2, leaf_key.serialize_pem()).expect("written");
    paths
}

/// A CA and a client certificate it issued for `cn`, as PEM files in `dir`: (CA,
/// certificate, key).
pub fn client_certificate(dir: &Path, cn: &str) -> (PathBuf, PathBuf, PathBuf) {
    let (ca, mut issued) = client_certificates(dir, &[cn]);
    let (cert, key) = issued.remove(0);
    (ca, cert, key)
}

/// A CA and a client certificate it issued for each of `cns`, as PEM files in `dir`:
/// the CA, and (certificate, key) per name, in order.
pub fn client_certificates(dir: &Path, cns: &[&str]) -> (PathBuf, Vec<(PathBuf, PathBuf)>) {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyPair,
    };
    let mut ca_params = CertificateParams::new(Vec::new()).expect("CA parameters");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "quiver test CA");
    let ca =
        CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("a key")).expect("a CA");
    let ca_path = dir.join("ca.pem");
    std::fs::write(&ca_path, ca.pem()).expect("written");
    let issued = cns
        .iter()
        .map(|cn| {
            let key = KeyPair::generate().expect("a key");
            let mut params = CertificateParams::new(Vec::new()).expect("client parameters");
            params.distinguished_name.push(DnType::CommonName, *cn);
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            let cert = params.signed_by(&key, &ca).expect("a client certificate");
            let paths = (dir.join(format!("{cn}.pem")), dir.join(format!("{cn}.key")));
            std::fs::write(&paths.0, cert.pem()).expect("written");
            std::fs::write(&paths.1, key.serialize_pem()).expect("written");
            paths
        })
        .collect();
    (ca_path, issued)
}

/// Creates a link on `broker` with `quiver link create ARGS…`; its standard output.
pub fn create_link(broker: &Broker, data: &DataDir, args: &[&str]) -> String {
    let mut all = vec!["link", "create"];
    all.extend_from_slice(args);
    succeeded(broker.cli(data, &all, ""))
}

/// `quiver link describe NAME --json`, parsed.
pub fn describe_link(broker: &Broker, data: &DataDir, name: &str) -> serde_json::Value {
    let out = succeeded(broker.cli(data, &["link", "describe", name, "--json"], ""));
    serde_json::from_str(&out).expect("link describe prints JSON")
}

/// Runs `quiver auth ARGS… --data DATA` and returns its standard output.
pub fn auth(data: &DataDir, args: &[&str]) -> String {
    let mut all = vec!["auth"];
    all.extend_from_slice(args);
    all.extend_from_slice(&[
        "--data",
        data.path().to_str().expect("temp paths are UTF-8"),
    ]);
    succeeded(cli(data.root(), &all, &[], ""))
}

/// Adds a principal with grants (`quiver auth principal add`) and returns a new token
/// for it.
pub fn principal(data: &DataDir, name: &str, grants: &[&str]) -> String {
    let mut args = vec!["principal", "add", name];
    for grant in grants {
        args.extend_from_slice(&["--grant", grant]);
    }
    auth(data, &args);
    auth(data, &["token", "create", name]).trim().to_owned()
}

/// Polls `condition` every few milliseconds until it holds, for at most `limit`.
/// For effects with no event to wait on (background retention); panics on timeout.
pub async fn eventually<F, Fut>(limit: Duration, what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    loop {
        tick.tick().await;
        if condition().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
    }
}

/// A full disk without root: the broker's file-size limit (`RLIMIT_FSIZE`).
impl Broker {
    /// Like [`Broker::launch`], with the broker's file-size limit set to `bytes`: a
    /// write that would grow any of its files past it fails with `EFBIG` (`SIGXFSZ` is
    /// ignored, so the write fails instead of the process being killed), as writes fail
    /// on a full disk. [`Broker::set_file_size_limit`] lifts it while it runs.
    pub fn launch_with_file_size_limit(
        data: &DataDir,
        args: &[&str],
        env: Env<'_>,
        bytes: u64,
    ) -> Self {
        use std::os::unix::process::CommandExt;
        let mut command = Self::serve_command(data, &ports::stable_addr(), args, env);
        #[allow(unsafe_code)]
        // SAFETY: runs in the forked child before exec, and calls only `setrlimit` and
        // `signal`, which are async-signal-safe; it touches no memory but its own stack.
        unsafe {
            command.pre_exec(move || {
                let limit = libc::rlimit {
                    rlim_cur: bytes,
                    rlim_max: libc::RLIM_INFINITY,
                };
                if libc::setrlimit(libc::RLIMIT_FSIZE, &limit) != 0
                    || libc::signal(libc::SIGXFSZ, libc::SIG_IGN) == libc::SIG_ERR
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Self::spawn(command, data).unwrap_or_else(|refused| {
            panic!(
                "the broker exited ({}) before its ready line",
                refused.status
            )
        })
    }

    /// Sets the running broker's file-size limit (`None`: unlimited), as space coming
    /// back on a full disk.
    pub fn set_file_size_limit(&self, bytes: Option<u64>) {
        let limit = libc::rlimit {
            rlim_cur: bytes.unwrap_or(libc::RLIM_INFINITY),
            rlim_max: libc::RLIM_INFINITY,
        };
        let pid = libc::pid_t::try_from(self.pid()).expect("a pid fits pid_t");
        #[allow(unsafe_code)]
        // SAFETY: `prlimit` reads `limit` and writes nothing (the old-limit pointer is
        // null); both live for the call.
        let status =
            unsafe { libc::prlimit(pid, libc::RLIMIT_FSIZE, &limit, std::ptr::null_mut()) };
        assert_eq!(status, 0, "prlimit: {}", std::io::Error::last_os_error());
    }
}

/// How a broker that was expected to refuse to start ended.
#[derive(Debug)]
pub struct Refused {
    /// Its exit status.
    pub status: ExitStatus,
    /// Everything it wrote to stderr.
    pub stderr: String,
}

impl Broker {
    /// Starts `quiver serve` on `data` like [`Broker::start`], but returns how it ended
    /// if it exits instead of printing its ready line (a data dir it refuses).
    pub fn try_start(data: &DataDir) -> Result<Self, Refused> {
        Self::try_launch(data, &[], &[])
    }

    /// [`Broker::launch`], returning how the broker ended if it exits instead of
    /// printing its ready line.
    pub fn try_launch(data: &DataDir, args: &[&str], env: Env<'_>) -> Result<Self, Refused> {
        Self::spawn(
            Self::serve_command(data, &ports::stable_addr(), args, env),
            data,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ready_line_is_parsed_with_and_without_mqtt() {
        let plain = Ready::parse(
            "quiver 0.1.0 listening on 127.0.0.1:4433 (data dir /tmp/x/quiver-data, \
             certificate /tmp/x/quiver-data/tls/cert.pem)",
        )
        .unwrap();
        assert_eq!(plain.addr, "127.0.0.1:4433");
        assert_eq!(plain.cert, Path::new("/tmp/x/quiver-data/tls/cert.pem"));
        assert_eq!((plain.mqtt, plain.mqtt_tls), (None, None));

        let mqtt = Ready::parse(
            "quiver 0.1.0 listening on 127.0.0.1:4433 (data dir /d, certificate /c.pem, \
             mqtt 127.0.0.1:1883, mqtt-tls 127.0.0.1:8883, http 127.0.0.1:7849)",
        )
        .unwrap();
        assert_eq!(mqtt.addr, "127.0.0.1:4433");
        assert_eq!(mqtt.cert, Path::new("/c.pem"));
        assert_eq!(mqtt.mqtt.as_deref(), Some("127.0.0.1:1883"));
        assert_eq!(mqtt.mqtt_tls.as_deref(), Some("127.0.0.1:8883"));
        assert_eq!(mqtt.http.as_deref(), Some("http://127.0.0.1:7849"));
        let https = Ready::parse(
            "quiver 0.1.0 listening on 127.0.0.1:4433 (data dir /d, certificate /c.pem, \
             https 127.0.0.1:7849)",
        )
        .unwrap();
        assert_eq!(https.http.as_deref(), Some("https://127.0.0.1:7849"));

        let tls_only = Ready::parse(
            "quiver 0.1.0 listening on [::1]:7848 (data dir /d, certificate /c.pem, \
             mqtt-tls [::1]:8883)",
        )
        .unwrap();
        assert_eq!(tls_only.addr, "[::1]:7848");
        assert_eq!(tls_only.cert, Path::new("/c.pem"));
        assert_eq!(
            (tls_only.mqtt, tls_only.mqtt_tls.as_deref()),
            (None, Some("[::1]:8883"))
        );

        assert_eq!(Ready::parse("INFO quiver: opening storage"), None);
    }
}
