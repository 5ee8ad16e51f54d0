//! Third-party MQTT clients against the broker's MQTT listener: Debian's
//! `mosquitto_pub` and `mosquitto_sub`, scripts on the Eclipse Paho Python client
//! (`tests/mqtt/*.py`, MQTT 3.1.1 and 5), and raw bytes over TCP for what no
//! well-behaved client sends. `make test-tools` installs them, pinned: mosquitto-clients
//! from Debian, paho-mqtt in the workspace's `tools/venv`.
//!
//! A broker serves MQTT when started with [`MQTT_ARGS`] (`--mqtt 127.0.0.1:0`; and
//! `--mqtt-tls 127.0.0.1:0` for TLS); its ready line names the ports, which
//! [`Broker::mqtt_addr`] and [`Broker::mqtt_tls_addr`] give.
//!
//! Nothing here sleeps to wait. Every client is a process whose output lines are
//! collected as they come ([`LiveCli`]): a subscriber is ready once it printed its
//! SUBACK, a message has arrived once its line has, and every wait has a deadline. The
//! Paho scripts print one JSON object per line (`{"event": "ack", ...}`: each script's
//! docstring lists its events) and bound each of their own waits by `--timeout` (20 s).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output};
use std::time::Duration;

use serde_json::Value;

use crate::live::{Lines, LiveCli};
use crate::{Broker, DataDir, Env, Stop};

/// The `quiver serve` arguments of a broker with an MQTT listener on a free port.
pub const MQTT_ARGS: [&str; 2] = ["--mqtt", "127.0.0.1:0"];

/// The arguments of a broker with MQTT over TCP and over TLS, each on a free port.
pub const MQTT_TLS_ARGS: [&str; 4] = ["--mqtt", "127.0.0.1:0", "--mqtt-tls", "127.0.0.1:0"];

/// How long a test waits for a client to get somewhere (its SUBACK, N messages).
pub const WAIT: Duration = Duration::from_secs(30);

/// How long a one-shot client may run: the scripts' own waits end after 20 s.
const RUN_LIMIT: Duration = Duration::from_secs(60);

/// Events of the Paho scripts that end them in failure.
const FAILURES: [&str; 4] = ["connect_failed", "disconnected", "timeout", "error"];

/// Starts a broker on `data` with an MQTT listener ([`MQTT_ARGS`]).
pub fn start(data: &DataDir) -> Broker {
    launch(data, &[], &[])
}

/// Starts a broker with an MQTT listener, more `args` (`--config FILE`, `--mqtt-tls
/// 127.0.0.1:0`, ...) and `env` (`QUIVER_MQTT__CONNECT_TIMEOUT`, ...).
pub fn launch(data: &DataDir, args: &[&str], env: Env<'_>) -> Broker {
    Broker::launch(data, &with_mqtt(args), env)
}

/// Restarts a broker started by [`launch`] with the same `args`: its MQTT ports are
/// new ones (the QUIC address stays).
pub fn restart(broker: Broker, data: &DataDir, stop: Stop, args: &[&str]) -> Broker {
    broker.restart(data, stop, &with_mqtt(args))
}

fn with_mqtt<'a>(args: &[&'a str]) -> Vec<&'a str> {
    let mut all = MQTT_ARGS.to_vec();
    all.extend_from_slice(args);
    all
}

/// Writes a broker configuration file (TOML) into the data dir's parent; the path to
/// pass as `--config`.
pub fn write_config(data: &DataDir, toml: &str) -> String {
    let path = data.root().join("quiver.toml");
    std::fs::write(&path, toml).expect("the config file is written");
    path.to_str().expect("temp paths are UTF-8").to_owned()
}

/// Creates Quiver topics with `quiver topic create`, as the principal `env` names
/// (`QUIVER_TOKEN`), if any.
pub fn create_topics(broker: &Broker, data: &DataDir, names: &[&str], env: Env<'_>) {
    for name in names {
        quiver(broker, data, &["topic", "create", name], env);
    }
}

/// Runs `quiver ARGS` against `broker` (with `env` added), bounded, and returns its
/// output lines; fails the test unless it succeeds.
pub fn quiver(broker: &Broker, data: &DataDir, args: &[&str], env: Env<'_>) -> Vec<String> {
    quiver_stdin(broker, data, args, env, None)
}

/// [`quiver`] reading `stdin` (`quiver pub TOPIC`: a record per line).
pub fn quiver_stdin(
    broker: &Broker,
    data: &DataDir,
    args: &[&str],
    env: Env<'_>,
    stdin: Option<&str>,
) -> Vec<String> {
    let mut all = vec![("QUIVER_SERVER", broker.addr())];
    all.extend_from_slice(env);
    let stdin = stdin.map(|text| text.as_bytes().to_vec());
    LiveCli::spawn(data.root(), args, &all, Lines::default(), stdin)
        .succeed(RUN_LIMIT)
        .0
}

/// The first `count` records of `pattern`, read from the earliest with `quiver sub
/// --json` (as the principal `env` names, if any), failing the test if they do not
/// come within [`RUN_LIMIT`].
pub fn quiver_sub(
    broker: &Broker,
    data: &DataDir,
    pattern: &str,
    count: usize,
    env: Env<'_>,
) -> Vec<Value> {
    let count_arg = count.to_string();
    let args = [
        "sub", pattern, "--from", "earliest", "--count", &count_arg, "--json",
    ];
    quiver(broker, data, &args, env)
        .iter()
        .map(|line| serde_json::from_str(line).expect("quiver sub --json prints JSON"))
        .collect()
}

/// The payloads of records from [`quiver_sub`] (UTF-8).
pub fn payloads(records: &[Value]) -> Vec<String> {
    records
        .iter()
        .map(|record| {
            record["payload"]
                .as_str()
                .unwrap_or_else(|| panic!("a UTF-8 payload: {record}"))
                .to_owned()
        })
        .collect()
}

/// `quiver topic describe NAME --json`.
pub fn describe_topic(broker: &Broker, data: &DataDir, name: &str, env: Env<'_>) -> Value {
    let out = quiver(broker, data, &["topic", "describe", name, "--json"], env).join("\n");
    serde_json::from_str(&out).expect("topic describe prints JSON")
}

/// How many records topic `name` holds.
pub fn records(broker: &Broker, data: &DataDir, name: &str, env: Env<'_>) -> u64 {
    describe_topic(broker, data, name, env)["records"]
        .as_u64()
        .expect("a record count")
}

/// `HOST:PORT` split for mosquitto's `-h` and `-p`.
fn host_port(addr: &str) -> (&str, &str) {
    addr.rsplit_once(':')
        .unwrap_or_else(|| panic!("{addr} is not HOST:PORT"))
}

/// A program on PATH (`mosquitto_pub` is /usr/bin/mosquitto_pub).
fn on_path(name: &str, install: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| panic!("`{name}` is not on PATH: {install}"))
}

fn mosquitto(name: &str) -> PathBuf {
    on_path(
        name,
        "run `make mqtt-tools` (Debian's mosquitto-clients, pinned)",
    )
}

/// Runs `command` with `stdin`, failing the test if it runs past `limit`.
fn run(command: Command, stdin: Option<Vec<u8>>, limit: Duration) -> Output {
    let cli = LiveCli::spawn_command(command, Lines::default(), stdin);
    let (stdout, stderr) = (cli.stdout.clone(), cli.stderr.clone());
    let status = cli.wait(limit);
    let text = |lines: &Lines| {
        let mut text = lines.snapshot().join("\n");
        if !text.is_empty() {
            text.push('\n');
        }
        text.into_bytes()
    };
    Output {
        status,
        stdout: text(&stdout),
        stderr: text(&stderr),
    }
}

/// Runs `mosquitto_pub -h HOST -p PORT ARGS…` against the MQTT listener at `addr`
/// (bounded); its output. With `-q 1` it exits once the broker acknowledged.
pub fn mosquitto_pub(addr: &str, args: &[&str]) -> Output {
    mosquitto_pub_stdin(addr, args, None)
}

/// [`mosquitto_pub`] reading `stdin` (for `-l`: a message per line, `-s`: one message).
pub fn mosquitto_pub_stdin(addr: &str, args: &[&str], stdin: Option<&str>) -> Output {
    let (host, port) = host_port(addr);
    let mut command = Command::new(mosquitto("mosquitto_pub"));
    command.args(["-h", host, "-p", port]).args(args);
    run(command, stdin.map(|s| s.as_bytes().to_vec()), RUN_LIMIT)
}

/// `mosquitto_pub` that must succeed.
pub fn mosquitto_pub_ok(addr: &str, args: &[&str]) {
    let output = mosquitto_pub(addr, args);
    assert!(
        output.status.success(),
        "mosquitto_pub {args:?} failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A running `mosquitto_sub`, subscribed; killed if dropped while running.
///
/// It runs with `-d` (debug: it prints its packets, and "Subscribed (mid: 1): QOS" on
/// the SUBACK, which tells it is ready) under `stdbuf -oL`, since it does not flush
/// those lines into a pipe by itself. Debug lines start with "Client " or
/// "Subscribed"; every other line is a message (with `-v`: "TOPIC PAYLOAD"), so the
/// tests use topics and payloads that start otherwise.
#[derive(Debug)]
pub struct MosquittoSub {
    cli: LiveCli,
}

/// Whether a `mosquitto_sub -d` line is its own (not a message).
fn is_debug(line: &str) -> bool {
    line.starts_with("Client ") || line.starts_with("Subscribed (mid:")
}

impl MosquittoSub {
    /// Starts `mosquitto_sub -h HOST -p PORT -d ARGS…` against the MQTT listener at
    /// `addr` and waits for its SUBACK. Add `-v` to get the topic with each payload,
    /// `-C N` to have it exit after N messages.
    pub fn start(addr: &str, args: &[&str]) -> Self {
        let (host, port) = host_port(addr);
        let mut command = Command::new(on_path("stdbuf", "it is in coreutils"));
        command
            .arg("-oL")
            .arg(mosquitto("mosquitto_sub"))
            .args(["-h", host, "-p", port, "-d"])
            .args(args);
        let cli = LiveCli::spawn_command(command, Lines::default(), None);
        let what = format!("mosquitto_sub {args:?} subscribed (its SUBACK)");
        cli.stdout.wait_until(&what, WAIT, |lines| {
            lines
                .iter()
                .any(|line| line.starts_with("Subscribed (mid:"))
        });
        Self { cli }
    }

    /// What the SUBACK granted: a QoS per filter, 128 for a refused one.
    pub fn granted(&self) -> Vec<u8> {
        let lines = self.cli.stdout.snapshot();
        let line = lines
            .iter()
            .find_map(|line| line.strip_prefix("Subscribed (mid: "))
            .expect("it is subscribed");
        let codes = line.split_once("): ").map_or("", |(_, codes)| codes);
        codes
            .split(", ")
            .map(|code| code.trim().parse().expect("a granted QoS"))
            .collect()
    }

    /// The messages so far, one line each.
    pub fn messages(&self) -> Vec<String> {
        messages_of(&self.cli.stdout.snapshot())
    }

    /// Waits until `n` messages have come (failing the test after `limit`); all of
    /// them so far.
    pub fn wait_for(&self, n: usize, limit: Duration) -> Vec<String> {
        self.cli
            .stdout
            .wait_until(&format!("{n} MQTT messages"), limit, |lines| {
                lines.iter().filter(|line| !is_debug(line)).count() >= n
            });
        self.messages()
    }

    /// How many times it sent a CONNECT: more than 1 means its connection was lost and
    /// it reconnected by itself (which mosquitto_sub does).
    pub fn connects(&self) -> usize {
        self.cli
            .stdout
            .snapshot()
            .iter()
            .filter(|line| line.starts_with("Client ") && line.ends_with("sending CONNECT"))
            .count()
    }

    /// Waits for it to exit (after `-C N` messages), failing the test unless it
    /// succeeded; its messages.
    pub fn finish(self, limit: Duration) -> Vec<String> {
        let (lines, _) = self.cli.succeed(limit);
        messages_of(&lines)
    }

    /// Stops it (SIGKILL).
    pub fn kill(self) {
        self.cli.kill();
    }
}

fn messages_of(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .filter(|line| !is_debug(line))
        .cloned()
        .collect()
}

/// The Python of the workspace's `tools/venv`, where `make mqtt-tools` puts paho-mqtt.
pub fn python() -> PathBuf {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tools/venv/bin/python");
    assert!(
        python.exists(),
        "{} does not exist: run `make mqtt-tools`",
        python.display()
    );
    python
}

/// A script of `tests/mqtt/`.
pub fn script(name: &str) -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("mqtt")
        .join(name);
    assert!(script.exists(), "{} does not exist", script.display());
    script
}

fn paho_command(name: &str, args: &[&str]) -> Command {
    let mut command = Command::new(python());
    command
        .arg(script(name))
        .args(args)
        // No __pycache__ in the source tree; every line out at once.
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("PYTHONUNBUFFERED", "1");
    command
}

/// Runs `tests/mqtt/SCRIPT ARGS…` on paho-mqtt to its end (bounded); its output.
/// [`events`] parses its lines.
pub fn paho(name: &str, args: &[&str]) -> Output {
    run(paho_command(name, args), None, RUN_LIMIT)
}

/// A script's output lines, parsed: one JSON object each.
pub fn events(output: &Output) -> Vec<Value> {
    parse_events(
        &String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(str::to_owned)
            .collect::<Vec<_>>(),
    )
}

fn parse_events(lines: &[String]) -> Vec<Value> {
    lines
        .iter()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON event ({e}): {line}"))
        })
        .collect()
}

/// The events named `event` among `events`.
pub fn of(events: &[Value], event: &str) -> Vec<Value> {
    events
        .iter()
        .filter(|e| e["event"] == event)
        .cloned()
        .collect()
}

/// Runs a script that must succeed (exit 0); its events.
pub fn paho_ok(name: &str, args: &[&str]) -> Vec<Value> {
    let output = paho(name, args);
    assert!(
        output.status.success(),
        "{name} {args:?} failed ({}):\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    events(&output)
}

/// A Paho script running in the background; killed if dropped while running.
#[derive(Debug)]
pub struct Paho {
    cli: LiveCli,
}

impl Paho {
    /// Starts `tests/mqtt/SCRIPT ARGS…`.
    pub fn spawn(name: &str, args: &[&str]) -> Self {
        Self::spawn_into(name, args, Lines::default())
    }

    /// Starts it with its output going to `lines`, which other scripts may share (two
    /// subscribers of a shared subscription: their message events name their client).
    pub fn spawn_into(name: &str, args: &[&str], lines: Lines) -> Self {
        Self {
            cli: LiveCli::spawn_command(paho_command(name, args), lines, None),
        }
    }

    /// Its output lines (shared with the others of [`Paho::spawn_into`]).
    pub fn lines(&self) -> &Lines {
        &self.cli.stdout
    }

    /// Its events so far.
    pub fn events(&self) -> Vec<Value> {
        parse_events(&self.cli.stdout.snapshot())
    }

    /// Waits until `n` events named `event` have come, failing the test after `limit`
    /// or as soon as a failure event ("connect_failed", "disconnected", "timeout",
    /// "error") comes instead; the events so far.
    pub fn wait_events(&self, event: &str, n: usize, limit: Duration) -> Vec<Value> {
        wait_events(&self.cli.stdout, event, n, limit);
        self.events()
    }

    /// Waits until `done` holds for the events so far, failing the test after `limit`
    /// or at a failure event; the events so far.
    pub fn wait_until(
        &self,
        what: &str,
        limit: Duration,
        done: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        wait_until(&self.cli.stdout, what, limit, done);
        self.events()
    }

    /// Waits for its "ready" (a subscriber's SUBACK); that event.
    pub fn ready(&self) -> Value {
        of(&self.wait_events("ready", 1, WAIT), "ready").swap_remove(0)
    }

    /// Waits for it to exit (failing the test if it runs past `limit`); how it exited
    /// and its events.
    pub fn finish(self, limit: Duration) -> (ExitStatus, Vec<Value>) {
        let (stdout, stderr) = (self.cli.stdout.clone(), self.cli.stderr.clone());
        let status = self.cli.wait(limit);
        if !status.success() {
            // Shown if the test fails: the script's own account.
            eprintln!("[paho] exited {status}: {}", stderr.snapshot().join("\n"));
        }
        (status, parse_events(&stdout.snapshot()))
    }

    /// Waits for it to exit, failing the test unless it succeeded; its events.
    pub fn succeed(self, limit: Duration) -> Vec<Value> {
        let (status, events) = self.finish(limit);
        assert!(status.success(), "the script failed ({status}): {events:?}");
        events
    }

    /// Stops it (SIGKILL).
    pub fn kill(self) {
        self.cli.kill();
    }
}

/// Waits until `lines` hold `n` events named `event` (see [`Paho::wait_events`]).
pub fn wait_events(lines: &Lines, event: &str, n: usize, limit: Duration) {
    let what = format!("{n} {event:?} events");
    wait_until(lines, &what, limit, |events| {
        events.iter().filter(|e| e["event"] == event).count() >= n
    });
}

/// Waits until `done` holds for the events in `lines`, failing the test after `limit`
/// or as soon as a failure event comes first (unless `done` holds with it).
pub fn wait_until(lines: &Lines, what: &str, limit: Duration, done: impl Fn(&[Value]) -> bool) {
    lines.wait_until(what, limit, |lines| {
        let events = parse_events(lines);
        if done(&events) {
            return true;
        }
        if let Some(failure) = events.iter().find(|e| {
            let name = e["event"].as_str().unwrap_or_default();
            FAILURES.contains(&name)
        }) {
            panic!("waiting for {what}, a client failed: {failure}\nall: {events:?}");
        }
        false
    });
}

/// The payloads of message (or ack) events.
pub fn event_payloads(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| {
            e["payload"]
                .as_str()
                .unwrap_or_else(|| panic!("a payload: {e}"))
                .to_owned()
        })
        .collect()
}

/// Checks that every ack event has a success reason code (below 128: MQTT 5 brokers
/// may say 16, no matching subscribers); their payloads.
pub fn acked(events: &[Value]) -> Vec<String> {
    let acks = of(events, "ack");
    for ack in &acks {
        let code = ack["reason_code"].as_u64().expect("a reason code");
        assert!(code < 128, "a publish was refused: {ack}");
    }
    event_payloads(&acks)
}

/// `PREFIX-0` to `PREFIX-(n-1)`: the payloads `pub.py --prefix PREFIX --count N` sends.
pub fn numbered(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

/// Whether `items` has no duplicates.
pub fn distinct<T: std::hash::Hash + Eq>(items: &[T]) -> bool {
    items.iter().collect::<HashSet<_>>().len() == items.len()
}

/// A step of [`raw`].
#[derive(Debug, Clone)]
pub enum Step {
    /// Write these bytes.
    Send(Vec<u8>),
    /// Read until this many whole MQTT packets in all have come (or it closes).
    Packets(usize),
}

/// What [`raw`] saw.
#[derive(Debug, Clone)]
pub struct RawOutcome {
    /// Every byte that came back.
    pub received: Vec<u8>,
    /// Whether the broker closed the connection (within the timeout).
    pub closed: bool,
    /// How: "eof" (an orderly close), "reset", or "send" (a write failed on it).
    pub how: Option<String>,
    /// From the last write (or the connect) to the close, or to the timeout.
    pub after: Duration,
}

impl RawOutcome {
    /// The packets received: (first byte, body) each; a trailing partial one is left
    /// out.
    pub fn packets(&self) -> Vec<(u8, Vec<u8>)> {
        packet::split(&self.received)
    }
}

/// Opens a TCP connection to `addr`, runs `steps` (`tests/mqtt/raw.py`), then waits up
/// to `timeout` for the broker to close it.
pub fn raw(addr: &str, steps: &[Step], timeout: Duration) -> RawOutcome {
    let timeout_arg = timeout.as_secs_f64().to_string();
    let mut args = vec![
        "--broker".to_owned(),
        addr.to_owned(),
        "--timeout".to_owned(),
        timeout_arg,
    ];
    for step in steps {
        args.push(match step {
            Step::Send(bytes) => format!("send:{}", hex(bytes)),
            Step::Packets(n) => format!("packets:{n}"),
        });
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let output = paho("raw.py", &args);
    assert!(
        output.status.success(),
        "raw.py failed ({}): {}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let result = of(&events(&output), "result").swap_remove(0);
    RawOutcome {
        received: unhex(result["received"].as_str().expect("received bytes")),
        closed: result["closed"].as_bool().expect("closed or not"),
        how: result["how"].as_str().map(str::to_owned),
        after: Duration::from_millis(result["after_ms"].as_u64().expect("a time")),
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex"))
        .collect()
}

/// MQTT packets encoded by hand, for [`raw`]: just what the tests of malformed input
/// need (MQTT 3.1.1 section 2 and 3; MQTT 5 adds a properties length).
pub mod packet {
    /// The first byte of a CONNACK.
    pub const CONNACK: u8 = 0x20;
    /// The first byte of a DISCONNECT (server to client in MQTT 5).
    pub const DISCONNECT: u8 = 0xE0;

    /// The variable-length "remaining length".
    pub fn remaining_length(mut n: usize) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let mut byte = u8::try_from(n % 128).expect("below 128");
            n /= 128;
            if n > 0 {
                byte |= 0x80;
            }
            out.push(byte);
            if n == 0 {
                return out;
            }
        }
    }

    fn string(s: &str) -> Vec<u8> {
        let len = u16::try_from(s.len()).expect("a short string");
        let mut out = len.to_be_bytes().to_vec();
        out.extend_from_slice(s.as_bytes());
        out
    }

    fn packet(first: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![first];
        out.extend(remaining_length(body.len()));
        out.extend_from_slice(body);
        out
    }

    /// A CONNECT with protocol `level` (4: 3.1.1, 5: MQTT 5, anything else to test
    /// refusals), clean session, keep-alive 60 s, and `client_id`.
    pub fn connect(level: u8, client_id: &str) -> Vec<u8> {
        connect_keeping_alive(level, client_id, 60)
    }

    /// [`connect`] with a keep-alive of `seconds`.
    pub fn connect_keeping_alive(level: u8, client_id: &str, seconds: u16) -> Vec<u8> {
        let mut body = string("MQTT");
        body.push(level);
        body.push(0x02); // clean session / clean start
        body.extend_from_slice(&seconds.to_be_bytes());
        if level >= 5 {
            body.push(0); // no properties
        }
        body.extend(string(client_id));
        packet(0x10, &body)
    }

    /// A 3.1.1 CONNECT without clean session (a persistent session), keep-alive 60 s.
    pub fn connect_persistent(client_id: &str) -> Vec<u8> {
        let mut body = string("MQTT");
        body.push(4);
        body.push(0x00);
        body.extend_from_slice(&60u16.to_be_bytes());
        body.extend(string(client_id));
        packet(0x10, &body)
    }

    /// A 3.1.1 QoS 2 PUBLISH with packet id `id`, DUP set when `dup` (sent again).
    pub fn publish_qos2(topic: &str, payload: &[u8], id: u16, dup: bool) -> Vec<u8> {
        let mut body = string(topic);
        body.extend_from_slice(&id.to_be_bytes());
        body.extend_from_slice(payload);
        packet(if dup { 0x3C } else { 0x34 }, &body)
    }

    /// PUBREL for packet id `id`.
    pub fn pubrel(id: u16) -> Vec<u8> {
        packet(0x62, &id.to_be_bytes())
    }

    /// A 3.1.1 QoS 1 PUBLISH with packet id `id` and the retain flag.
    pub fn publish_qos1_retained(topic: &str, payload: &[u8], id: u16) -> Vec<u8> {
        let mut body = string(topic);
        body.extend_from_slice(&id.to_be_bytes());
        body.extend_from_slice(payload);
        packet(0x33, &body)
    }

    /// A 3.1.1 DISCONNECT.
    pub fn disconnect() -> Vec<u8> {
        packet(DISCONNECT, &[])
    }

    /// A QoS 0 PUBLISH of `payload` to `topic` (an MQTT topic name); `v5` adds the
    /// (empty) properties.
    pub fn publish(topic: &str, payload: &[u8], v5: bool) -> Vec<u8> {
        let mut body = string(topic);
        if v5 {
            body.push(0);
        }
        body.extend_from_slice(payload);
        packet(0x30, &body)
    }

    /// Splits bytes into whole packets: (first byte, body) each.
    pub fn split(mut bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut packets = Vec::new();
        while let Some((&first, rest)) = bytes.split_first() {
            let mut len = 0usize;
            let mut used = 0;
            loop {
                let Some(&byte) = rest.get(used) else {
                    return packets;
                };
                len |= usize::from(byte & 0x7F) << (7 * used);
                used += 1;
                if byte & 0x80 == 0 {
                    break;
                }
                if used == 4 {
                    return packets;
                }
            }
            let Some(body) = rest.get(used..used + len) else {
                return packets;
            };
            packets.push((first, body.to_vec()));
            bytes = &rest[used + len..];
        }
        packets
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_are_encoded_as_mosquitto_accepts_them() {
        // Checked against mosquitto 2.0.11: it answers these with a CONNACK.
        assert_eq!(
            hex(&packet::connect(4, "ts1")),
            "100f00044d5154540402003c0003747331"
        );
        assert_eq!(
            hex(&packet::connect(5, "ts1")),
            "101000044d5154540502003c000003747331"
        );
        assert_eq!(
            hex(&packet::publish("a/b", b"hi", false)),
            "30070003612f626869"
        );
        assert_eq!(packet::remaining_length(321), [0xC1, 0x02]);
        let big = packet::publish("t", &[b'x'; 2000], true);
        let split = packet::split(&[big.clone(), vec![0x20, 0x02, 0x00]].concat());
        assert_eq!(split.len(), 1, "the partial CONNACK is left out");
        assert_eq!(split[0].0, 0x30);
        assert_eq!(split[0].1.len(), 2 + 1 + 1 + 2000);
        assert_eq!(unhex(&hex(&big)), big);
    }

    #[test]
    fn mosquitto_sub_debug_lines_are_told_from_messages() {
        for line in [
            "Client (null) sending CONNECT",
            "Client mosq-x received PUBLISH (d0, q0, r0, m0, 'a/b', ... (5 bytes))",
            "Subscribed (mid: 1): 0",
        ] {
            assert!(is_debug(line), "{line}");
        }
        assert!(!is_debug("a/b/c hello"));
    }
}
