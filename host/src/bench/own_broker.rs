//! The broker `quiver bench` starts for itself when no `--server` is given: this same
//! binary running `serve` on a temp data dir and port 0, in its own process (so its
//! CPU, memory and disk traffic are its own), stopped when the bench ends. The restart
//! scenario stops and starts it again on the same data dir and port.
//!
//! What a run cost the broker is read from outside, as an operator would: CPU and
//! memory from `/proc/PID/stat` and `status`, bytes written and read from
//! `/proc/PID/io`, and the flushes its storage writer waited for from its own
//! `/metrics` (on an HTTP listener at port 0).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytesize::ByteSize;

use crate::memory;

/// How long the broker may take to say it is ready.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// The least CPU time a kind of thread is reported with (one clock tick): less is
/// counted with the threads that ended.
const LEAST_REPORTED: Duration = Duration::from_millis(10);

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
    /// Its HTTP listener's address (`/metrics`).
    http: Option<String>,
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
            http: ready.http,
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
        self.http = ready.http;
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

    /// The broker's CPU and disk traffic now, to measure a run from
    /// ([`OwnBroker::usage_since`]).
    pub fn snapshot(&self) -> Snapshot {
        let pid = self.child.id();
        Snapshot {
            total: cpu_time(pid),
            threads: threads_cpu_time(pid).unwrap_or_default(),
            disk: self.disk(),
        }
    }

    /// Bytes through the broker's write and read calls, and the flushes its storage
    /// writer waited for, so far.
    fn disk(&self) -> Disk {
        let io = std::fs::read_to_string(format!("/proc/{}/io", self.child.id())).ok();
        let metrics = self.http.as_deref().and_then(|http| get_metrics(http).ok());
        Disk {
            written: io.as_deref().and_then(|io| io_field(io, "wchar")),
            read: io.as_deref().and_then(|io| io_field(io, "rchar")),
            flushes: metrics.as_deref().and_then(flush_totals),
        }
    }

    /// What the broker used since `start`, and its memory now and at its peak.
    pub fn usage_since(&self, start: &Snapshot) -> Usage {
        let pid = self.child.id();
        let mut threads: Vec<(String, Duration)> = threads_cpu_time(pid)
            .unwrap_or_default()
            .into_iter()
            .map(|(kind, used)| {
                let before = start.threads.get(&kind).copied().unwrap_or_default();
                (kind, used.saturating_sub(before))
            })
            .filter(|(_, used)| *used >= LEAST_REPORTED)
            .collect();
        threads.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let process = pid.to_string();
        let disk = self.disk();
        let since = |now: Option<u64>, then: Option<u64>| Some(now?.saturating_sub(then?));
        Usage {
            written_bytes: since(disk.written, start.disk.written),
            read_bytes: since(disk.read, start.disk.read),
            flushes: disk
                .flushes
                .zip(start.disk.flushes)
                .map(|(now, then)| Flushes {
                    count: now.count.saturating_sub(then.count),
                    time: now.time.saturating_sub(then.time),
                }),
            cpu: start
                .total
                .zip(cpu_time(pid))
                .map(|(before, now)| now.saturating_sub(before)),
            threads,
            rss_kib: memory::resident_kib(&process),
            peak_rss_kib: memory::peak_resident_kib(&process),
        }
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
    http: Option<String>,
    at: Instant,
}

/// Starts `quiver serve` on `data`, listening on `listen`, with `args` added; returns
/// it and what its ready line said.
fn spawn(data: &Path, listen: &str, args: &[String]) -> anyhow::Result<(Child, Ready)> {
    let exe = std::env::current_exe().context("finding the quiver binary")?;
    let mut child = Command::new(exe)
        .args(["serve", "--listen", listen, "--data"])
        .arg(data)
        // Port 0: the default port may be another broker's.
        .args(["--http", "127.0.0.1:0"])
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
                let _ = tx.send(Some(Ready {
                    addr,
                    mqtt: word_after(", mqtt "),
                    http: word_after(", http "),
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
    parse_stat(&stat).map(|(_, used)| used)
}

/// CPU time the live threads of process `pid` have used, summed by kind: a thread's
/// name without its number (`sled-io-3` counts as `sled-io`). `None` where /proc does
/// not tell it. Threads that have ended are in [`cpu_time`] only.
pub fn threads_cpu_time(pid: u32) -> Option<BTreeMap<String, Duration>> {
    let mut by_kind = BTreeMap::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        // A thread may end between the listing and the read.
        let Some(stat) = task
            .ok()
            .and_then(|task| std::fs::read_to_string(task.path().join("stat")).ok())
        else {
            continue;
        };
        if let Some((name, used)) = parse_stat(&stat) {
            *by_kind.entry(thread_kind(name).to_owned()).or_default() += used;
        }
    }
    Some(by_kind)
}

/// The command name and the CPU time (user and system) in a `/proc/…/stat` line.
fn parse_stat(stat: &str) -> Option<(&str, Duration)> {
    // The name may hold spaces and parentheses: it runs to the last `)`. Of the fields
    // after it, utime and stime are the 12th and 13th, in clock ticks.
    let (head, rest) = stat.rsplit_once(')')?;
    let name = head.split_once('(')?.1;
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    // Linux reports these in USER_HZ, 100 on every architecture it supports.
    Some((name, Duration::from_millis((utime + stime) * 10)))
}

/// A thread's name without the number that tells threads of one pool apart.
fn thread_kind(name: &str) -> &str {
    match name.rsplit_once('-') {
        Some((kind, n)) if !kind.is_empty() && n.parse::<u32>().is_ok() => kind,
        _ => name,
    }
}

/// A field of `/proc/PID/io` (`wchar`, `rchar`: bytes through the process's write and
/// read calls, to files or not).
fn io_field(io: &str, field: &str) -> Option<u64> {
    io.lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|value| value.trim().parse().ok())
}

/// `GET /metrics` from the HTTP listener at `addr`, over HTTP/1.0 so that the body
/// comes whole (no chunks) and the connection closes after it.
fn get_metrics(addr: &str) -> anyhow::Result<String> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(READY_TIMEOUT))?;
    stream.write_all(format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .context("an HTTP response without a body")?;
    let status = head.lines().next().unwrap_or_default();
    if status.split_whitespace().nth(1) != Some("200") {
        bail!("GET /metrics answered {status}");
    }
    Ok(body.to_owned())
}

/// The flushes the storage writer waited for, from a `/metrics` page.
fn flush_totals(metrics: &str) -> Option<Flushes> {
    let sample = |name: &str| {
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|value| value.trim().parse::<f64>().ok())
    };
    let count = sample("quiver_storage_flush_seconds_count")?;
    let seconds = sample("quiver_storage_flush_seconds_sum")?;
    Some(Flushes {
        count: count as u64,
        time: Duration::try_from_secs_f64(seconds).ok()?,
    })
}

/// The bench's own broker's CPU and disk traffic at one moment, for
/// [`OwnBroker::usage_since`].
#[derive(Debug, Clone)]
pub struct Snapshot {
    total: Option<Duration>,
    threads: BTreeMap<String, Duration>,
    disk: Disk,
}

/// Counters of the broker's disk traffic (each `None` where it could not be read).
#[derive(Debug, Clone)]
struct Disk {
    written: Option<u64>,
    read: Option<u64>,
    flushes: Option<Flushes>,
}

/// Flushes the storage writer waited for before it answered, and their time in all.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Flushes {
    /// How many.
    pub count: u64,
    /// Their time in all.
    pub time: Duration,
}

/// What the bench's own broker used between a [`Snapshot`] and the end of a run.
#[derive(Debug, Clone, Default)]
pub struct Usage {
    /// CPU time of the whole process (threads that ended meanwhile included).
    pub cpu: Option<Duration>,
    /// CPU time by kind of thread, most first; kinds under 10 ms are left out.
    pub threads: Vec<(String, Duration)>,
    /// Resident memory at the end, KiB.
    pub rss_kib: Option<u64>,
    /// The most it was ever resident, KiB (`VmHWM`: start-up and the run).
    pub peak_rss_kib: Option<u64>,
    /// Bytes through its write calls (`wchar`): nearly all of them sled's log.
    pub written_bytes: Option<u64>,
    /// Bytes through its read calls (`rchar`): sled reading back pages its cache let go.
    pub read_bytes: Option<u64>,
    /// The flushes its storage writer waited for (`/metrics`).
    pub flushes: Option<Flushes>,
}

impl Usage {
    /// The usage as JSON fields: `broker_cpu_s`, `broker_cpu_s_by_thread` (an object
    /// of the kinds listed), `broker_rss_kib`, `broker_peak_rss_kib`,
    /// `broker_written_bytes`, `broker_read_bytes`, `broker_flushes` and
    /// `broker_flush_s` (null where not known).
    pub fn add_json(&self, json: &mut serde_json::Value) {
        let threads: serde_json::Map<String, serde_json::Value> = self
            .threads
            .iter()
            .map(|(kind, used)| (kind.clone(), round_ms(*used).into()))
            .collect();
        json["broker_cpu_s"] = self.cpu.map(round_ms).into();
        json["broker_cpu_s_by_thread"] = threads.into();
        json["broker_rss_kib"] = self.rss_kib.into();
        json["broker_peak_rss_kib"] = self.peak_rss_kib.into();
        json["broker_written_bytes"] = self.written_bytes.into();
        json["broker_read_bytes"] = self.read_bytes.into();
        json["broker_flushes"] = self.flushes.map(|f| f.count).into();
        json["broker_flush_s"] = self.flushes.map(|f| round_ms(f.time)).into();
    }

    /// CPU time of the process that no kind in `threads` accounts for: threads that
    /// ended during the run (sled's IO pool ends idle ones) and kinds under 10 ms.
    fn other_threads(&self) -> Duration {
        let listed: Duration = self.threads.iter().map(|(_, used)| *used).sum();
        self.cpu.unwrap_or_default().saturating_sub(listed)
    }

    /// The usage as report lines.
    pub fn text(&self) -> String {
        let mut out = String::new();
        if let Some(cpu) = self.cpu {
            let mut threads: Vec<String> = self
                .threads
                .iter()
                .map(|(kind, used)| format!("{kind} {:.2} s", used.as_secs_f64()))
                .collect();
            let other = self.other_threads();
            if other >= LEAST_REPORTED {
                threads.push(format!(
                    "threads that ended or used less {:.2} s",
                    other.as_secs_f64()
                ));
            }
            out.push_str(&format!(
                "  broker CPU during the bench: {:.2} s ({})\n",
                cpu.as_secs_f64(),
                threads.join(", ")
            ));
        }
        if let Some(kib) = self.rss_kib {
            out.push_str(&format!("  broker RSS at the end: {}", ByteSize::kib(kib)));
            if let Some(peak) = self.peak_rss_kib {
                out.push_str(&format!(", at most {}", ByteSize::kib(peak)));
            }
            out.push('\n');
        }
        if let (Some(written), Some(read)) = (self.written_bytes, self.read_bytes) {
            out.push_str(&format!(
                "  broker disk traffic during the bench: wrote {}, read back {}",
                ByteSize(written),
                ByteSize(read)
            ));
            if let Some(Flushes { count, time }) = self.flushes {
                out.push_str(&format!(
                    "; waited for {count} flushes, {:.2} s in all",
                    time.as_secs_f64()
                ));
                if count > 0 {
                    let each = time.as_secs_f64() * 1000.0 / count as f64;
                    out.push_str(&format!(" ({each:.2} ms each)"));
                }
            }
            out.push('\n');
        }
        out
    }
}

/// Seconds to the millisecond, for JSON.
fn round_ms(used: Duration) -> f64 {
    used.as_millis() as f64 / 1000.0
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stat_line_gives_its_name_and_cpu_time() {
        // A name with a space and a parenthesis; utime 150 and stime 25 ticks.
        let stat = "42 (odd) name) S 1 42 42 0 -1 4194560 100 0 0 0 150 25 0 0 20 0 1 0";
        assert_eq!(
            parse_stat(stat),
            Some(("odd) name", Duration::from_millis(1_750)))
        );
        assert_eq!(parse_stat("42 (cut short"), None);
        assert_eq!(parse_stat("42 (x) S 1 2"), None);
    }

    #[test]
    fn proc_io_gives_bytes_written_and_read() {
        let io = "rchar: 160812345\nwchar: 645200000\nsyscr: 12\nsyscw: 554\n\
                  read_bytes: 0\nwrite_bytes: 923312128\ncancelled_write_bytes: 0\n";
        assert_eq!(io_field(io, "wchar"), Some(645_200_000));
        assert_eq!(io_field(io, "rchar"), Some(160_812_345));
        // A name matches a whole field only: `write` is not `write_bytes`.
        assert_eq!(io_field(io, "write"), None);
        assert_eq!(io_field("wchar: many\n", "wchar"), None);
    }

    #[test]
    fn a_metrics_page_gives_the_flushes_waited_for() {
        let page = "# TYPE quiver_storage_flush_seconds histogram\n\
                    quiver_storage_flush_seconds_sum 0.9232374690000004\n\
                    quiver_storage_flush_seconds_count 815\n\
                    quiver_storage_flush_seconds_bucket{le=\"0.00005\"} 0\n";
        assert_eq!(
            flush_totals(page),
            Some(Flushes {
                count: 815,
                time: Duration::from_secs_f64(0.9232374690000004),
            })
        );
        assert_eq!(flush_totals("quiver_storage_flush_seconds_count 3\n"), None);
    }

    #[test]
    fn threads_of_one_pool_count_as_one_kind() {
        assert_eq!(thread_kind("sled-io-3"), "sled-io");
        assert_eq!(thread_kind("quiver-storage"), "quiver-storage");
        assert_eq!(thread_kind("quiver-worker"), "quiver-worker");
        assert_eq!(thread_kind("-7"), "-7");
        assert_eq!(thread_kind("io-"), "io-");
    }

    #[test]
    fn this_process_has_its_own_threads_cpu_time() {
        let pid = std::process::id();
        let total = cpu_time(pid).expect("/proc tells this process's CPU time");
        let threads = threads_cpu_time(pid).expect("and its threads'");
        assert!(!threads.is_empty());
        let listed: Duration = threads.values().sum();
        // Each thread's time is read after the process's: it may have grown since, by
        // a tick per thread at most while this runs.
        assert!(listed <= total + Duration::from_millis(10 * threads.len() as u64 + 10));
    }
}
