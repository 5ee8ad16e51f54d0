//! The broker `quiver bench` starts for itself when no `--server` is given: this same
//! binary running `serve` on a temp data dir and port 0, in its own process (so its
//! CPU and memory are its own), stopped when the bench ends. The restart scenario
//! stops and starts it again on the same data dir and port.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::memory;

/// How long the broker may take to say it is ready.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// A broker child process on a temp data dir.
#[derive(Debug)]
pub struct OwnBroker {
    child: Child,
    /// Where it listens.
    pub addr: String,
    /// The certificate clients trust.
    pub cert: PathBuf,
    /// Its MQTT address, when started with `--mqtt`.
    pub mqtt: Option<String>,
    data: PathBuf,
    args: Vec<String>,
    _dir: tempfile::TempDir,
}

/// How [`OwnBroker::restart`] stops the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// SIGTERM, waiting for a clean exit.
    Term,
    /// SIGKILL.
    Kill,
}

impl OwnBroker {
    /// Starts `quiver serve` on a fresh temp dir and waits for its ready line.
    pub fn start() -> anyhow::Result<Self> {
        Self::start_with(&[])
    }

    /// Starts `quiver serve` with `args` added (`--mqtt 127.0.0.1:0`, say).
    pub fn start_with(args: &[&str]) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir().context("creating a temp dir for the bench's broker")?;
        let data = dir.path().join("data");
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let (child, ready) = spawn(&data, "127.0.0.1:0", &args)?;
        Ok(Self {
            child,
            addr: ready.addr,
            cert: data.join("tls").join("cert.pem"),
            mqtt: ready.mqtt,
            data,
            args,
            _dir: dir,
        })
    }

    /// Stops the broker and starts it again on the same data dir and address;
    /// returns when it printed its ready line.
    pub fn restart(&mut self, stop: Stop) -> anyhow::Result<Instant> {
        match stop {
            Stop::Term => {
                let sent = Command::new("kill")
                    .args(["-TERM", &self.child.id().to_string()])
                    .status()
                    .context("running kill")?;
                if !sent.success() {
                    bail!("SIGTERM to the bench's broker failed ({sent})");
                }
            }
            Stop::Kill => self.child.kill().context("killing the bench's broker")?,
        }
        let status = self
            .child
            .wait()
            .context("waiting for the bench's broker")?;
        if stop == Stop::Term && !status.success() {
            bail!("the bench's broker did not stop cleanly: {status}");
        }
        let (child, ready) = spawn(&self.data, &self.addr, &self.args)?;
        self.child = child;
        self.addr = ready.addr;
        Ok(ready.at)
    }

    /// CPU time the broker has used (user and system), where /proc tells it.
    pub fn cpu_time(&self) -> Option<Duration> {
        cpu_time(self.child.id())
    }

    /// The broker's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The broker's resident memory in KiB, where /proc tells it.
    pub fn rss_kib(&self) -> Option<u64> {
        memory::resident_kib(&self.child.id().to_string())
    }
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a ready line says.
struct Ready {
    addr: String,
    mqtt: Option<String>,
    at: Instant,
}

/// Starts `quiver serve` on `data`, listening on `listen`, with `args` added; returns
/// it and what its ready line said.
fn spawn(data: &Path, listen: &str, args: &[String]) -> anyhow::Result<(Child, Ready)> {
    let exe = std::env::current_exe().context("finding the quiver binary")?;
    let mut child = Command::new(exe)
        .args(["serve", "--listen", listen, "--data"])
        .arg(data)
        // No HTTP listener: the default port may be another broker's.
        .args(["--http", "off"])
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting the bench's broker")?;
    let stdout = child.stdout.take().context("the broker's stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        for line in lines.by_ref().map_while(Result::ok) {
            if let Some(rest) = line.split("listening on ").nth(1) {
                let word_after = |marker: &str| {
                    let rest = line.split(marker).nth(1)?;
                    let word = rest.split([',', ')', ' ']).next()?;
                    Some(word.to_owned())
                };
                let addr = rest
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_owned();
                let mqtt = word_after(", mqtt ");
                let _ = tx.send(Some(Ready {
                    addr,
                    mqtt,
                    at: Instant::now(),
                }));
                // Keep draining so the broker never blocks on a full pipe.
                for _ in lines.by_ref() {}
                return;
            }
        }
        let _ = tx.send(None);
    });
    match rx.recv_timeout(READY_TIMEOUT) {
        Ok(Some(ready)) => Ok((child, ready)),
        Ok(None) => bail!("the bench's broker exited before it was ready"),
        Err(_) => bail!("the bench's broker was not ready within {READY_TIMEOUT:?}"),
    }
}

/// CPU time process `pid` has used (user and system), where /proc tells it.
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces, inside parentheses):
    // utime and stime are the 12th and 13th of them, in clock ticks.
    let rest = stat.rsplit_once(')')?.1;
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    // Linux reports these in USER_HZ, 100 on every architecture it supports.
    Some(Duration::from_millis((utime + stime) * 10))
}

/// Keeps every thread of process `pid` on `cpus` (a `taskset` list, `0-2`), with
/// util-linux's `taskset`.
pub fn pin(pid: u32, cpus: &str) -> anyhow::Result<()> {
    let status = Command::new("taskset")
        .args(["--all-tasks", "--pid", "--cpu-list", cpus, &pid.to_string()])
        .stdout(Stdio::null())
        .status()
        .context("running taskset (util-linux) to pin a process to CPUs")?;
    if !status.success() {
        bail!("taskset could not pin process {pid} to CPUs {cpus} ({status})");
    }
    Ok(())
}
