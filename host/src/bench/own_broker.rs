//! The broker `quiver bench` starts for itself when no `--server` is given: this same
//! binary running `serve` on a temp data dir and port 0, in its own process (so its
//! CPU and memory are its own), stopped when the bench ends.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, bail};

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
    _dir: tempfile::TempDir,
}

impl OwnBroker {
    /// Starts `quiver serve` on a fresh temp dir and waits for its ready line.
    pub fn start() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir().context("creating a temp dir for the bench's broker")?;
        let data = dir.path().join("data");
        let exe = std::env::current_exe().context("finding the quiver binary")?;
        let mut child = Command::new(exe)
            .args(["serve", "--listen", "127.0.0.1:0", "--data"])
            .arg(&data)
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
                    let addr = rest
                        .split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_owned();
                    let _ = tx.send(Some(addr));
                    // Keep draining so the broker never blocks on a full pipe.
                    for _ in lines.by_ref() {}
                    return;
                }
            }
            let _ = tx.send(None);
        });
        let addr = match rx.recv_timeout(READY_TIMEOUT) {
            Ok(Some(addr)) => addr,
            Ok(None) => bail!("the bench's broker exited before it was ready"),
            Err(_) => bail!("the bench's broker was not ready within {READY_TIMEOUT:?}"),
        };
        Ok(Self {
            child,
            addr,
            cert: data.join("tls").join("cert.pem"),
            _dir: dir,
        })
    }

    /// The broker's resident memory in KiB, where /proc tells it.
    pub fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
    }
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
