//! CLI processes watched while they run: their output lines are collected as they come,
//! so a test can act when a process has got so far (kill the broker after 75,000
//! acknowledged lines) and wait for it without sleeping.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::{Env, quiver_bin};

/// Output lines, shared by the processes writing into them and the test reading them.
#[derive(Debug, Clone, Default)]
pub struct Lines(Arc<(Mutex<Vec<String>>, Condvar)>);

impl Lines {
    fn push(&self, line: String) {
        let (lines, changed) = &*self.0;
        lines
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(line);
        changed.notify_all();
    }

    /// The lines so far.
    pub fn snapshot(&self) -> Vec<String> {
        self.0
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// How many lines there are so far.
    pub fn len(&self) -> usize {
        self.0
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Whether there are none yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Waits until `done` holds for the lines, failing the test after `limit`.
    pub fn wait_until(&self, what: &str, limit: Duration, mut done: impl FnMut(&[String]) -> bool) {
        let (lines, changed) = &*self.0;
        let deadline = Instant::now() + limit;
        let mut guard = lines.lock().unwrap_or_else(PoisonError::into_inner);
        while !done(&guard) {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "{what}: not within {limit:?} ({} lines so far)",
                guard.len()
            );
            guard = changed
                .wait_timeout(guard, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Waits until there are at least `n` lines.
    pub fn wait_for(&self, n: usize, limit: Duration) {
        self.wait_until(&format!("{n} lines"), limit, |lines| lines.len() >= n);
    }
}

/// `PREFIX-0` to `PREFIX-(n-1)`, a line each.
pub fn numbered_lines(prefix: &str, n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..n {
        let _ = writeln!(out, "{prefix}-{i}");
    }
    out
}

/// A `quiver` command (or another client: [`LiveCli::spawn_command`]) running in the
/// background; killed if dropped while running.
#[derive(Debug)]
pub struct LiveCli {
    child: Child,
    /// Its standard output.
    pub stdout: Lines,
    /// Its standard error.
    pub stderr: Lines,
    readers: Vec<JoinHandle<()>>,
    /// A message from each reader when its pipe closes: the process has exited.
    closed: mpsc::Receiver<()>,
    feeder: Option<JoinHandle<()>>,
}

impl LiveCli {
    /// Starts `quiver ARGS` in `cwd` with `env`; its stdout goes to `stdout` (shared
    /// with other processes, or fresh), and it reads `stdin` (written as fast as it
    /// reads, then closed; none: stdin is empty).
    pub fn spawn(
        cwd: &Path,
        args: &[&str],
        env: Env<'_>,
        stdout: Lines,
        stdin: Option<Vec<u8>>,
    ) -> Self {
        let mut command = Command::new(quiver_bin());
        command
            .args(args)
            .current_dir(cwd)
            .env_remove("QUIVER_SERVER")
            .env_remove("QUIVER_CA");
        for (key, value) in env {
            command.env(key, value);
        }
        Self::spawn_command(command, stdout, stdin)
    }

    /// Starts `command` (any program: the MQTT tests' clients) the same way: its stdout
    /// goes to `stdout`, its stderr is collected, and it reads `stdin` (none: empty).
    pub fn spawn_command(mut command: Command, stdout: Lines, stdin: Option<Vec<u8>>) -> Self {
        command
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().unwrap_or_else(|e| {
            panic!(
                "{} does not start: {e}",
                Path::new(command.get_program()).display()
            )
        });
        let stderr = Lines::default();
        let (closing, closed) = mpsc::channel();
        let readers = vec![
            collect(
                child.stdout.take().expect("stdout is piped"),
                stdout.clone(),
                closing.clone(),
            ),
            collect(
                child.stderr.take().expect("stderr is piped"),
                stderr.clone(),
                closing,
            ),
        ];
        let feeder = stdin.map(|input| {
            let mut pipe = child.stdin.take().expect("stdin is piped");
            // Fails only if the process exits first, which the test sees.
            std::thread::spawn(move || {
                let _ = pipe.write_all(&input);
            })
        });
        Self {
            child,
            stdout,
            stderr,
            readers,
            closed,
            feeder,
        }
    }

    /// Waits (at most `limit`, else kills it and fails the test) for it to exit;
    /// returns how it exited, once all its output is collected.
    pub fn wait(mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        for _ in 0..self.readers.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            if self.closed.recv_timeout(left).is_err() {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "still running after {limit:?}; stderr:\n{}",
                    self.stderr.snapshot().join("\n")
                );
            }
        }
        let status = self.child.wait().expect("the CLI is reaped");
        self.drain();
        status
    }

    /// Waits (as [`LiveCli::wait`]) for it to exit, failing the test unless it
    /// succeeded; returns its output lines and its stderr.
    pub fn succeed(self, limit: Duration) -> (Vec<String>, Lines) {
        let (stdout, stderr) = (self.stdout.clone(), self.stderr.clone());
        let status = self.wait(limit);
        assert!(
            status.success(),
            "failed ({status}): {:?}",
            stderr.snapshot()
        );
        (stdout.snapshot(), stderr)
    }

    /// Sends it SIGINT, as Ctrl-C in a terminal would.
    pub fn interrupt(&self) {
        let status = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "SIGINT is delivered");
    }

    /// Stops it (SIGKILL) and collects its output.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.drain();
    }

    fn drain(&mut self) {
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        if let Some(feeder) = self.feeder.take() {
            let _ = feeder.join();
        }
    }
}

impl Drop for LiveCli {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn collect(
    from: impl std::io::Read + Send + 'static,
    into: Lines,
    closed: mpsc::Sender<()>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(from).lines() {
            match line {
                Ok(line) => into.push(line),
                Err(_) => break,
            }
        }
        let _ = closed.send(());
    })
}
