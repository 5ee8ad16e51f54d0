//! A real headless Chromium (Debian's `chromium`, pinned by `make console-tools`) for
//! the console's tests, driven over the DevTools protocol by `tests/console/cdp.py`:
//! one JSON command per line on its stdin, one JSON answer per line on its stdout.
//! Waiting is for a condition in the page, polled by the script with a deadline.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use serde_json::{Value, json};

/// How long a wait for the page may take before the test fails.
const WAIT_MS: u64 = 30_000;

/// A headless Chromium with one page.
#[derive(Debug)]
pub struct Browser {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    /// The browser's profile: a fresh one per test.
    _profile: tempfile::TempDir,
    /// The browser's product and version.
    pub version: String,
}

/// Where Debian's package puts the browser.
const CHROMIUM: &str = "/usr/bin/chromium";

impl Browser {
    /// Starts the browser on `about:blank`.
    pub fn start() -> Self {
        assert!(
            Path::new(CHROMIUM).exists(),
            "{CHROMIUM} does not exist: run `make console-tools`"
        );
        let profile = tempfile::tempdir().expect("a temporary directory");
        let mut child = Command::new(crate::mqtt::python())
            .arg(script())
            .args(["--chromium", CHROMIUM, "--profile"])
            .arg(profile.path())
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python runs");
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut browser = Self {
            child,
            stdin,
            stdout,
            _profile: profile,
            version: String::new(),
        };
        let ready = browser.read_line();
        assert_eq!(ready["ready"], true, "the browser did not start: {ready}");
        browser.version = ready["version"].as_str().unwrap_or_default().to_owned();
        browser
    }

    /// Opens `url` and waits for its load event.
    pub fn goto(&mut self, url: &str) {
        self.ask(json!({"op": "goto", "url": url}));
    }

    /// The value of the JavaScript expression `js` (a promise is awaited).
    pub fn eval(&mut self, js: &str) -> Value {
        self.ask(json!({"op": "eval", "js": js}))
    }

    /// Waits until `js` is truthy in the page, and returns its value.
    pub fn wait(&mut self, js: &str) -> Value {
        self.ask(json!({"op": "wait", "js": js, "timeout_ms": WAIT_MS}))
    }

    /// Waits for the element `selector`, then clicks it.
    pub fn click(&mut self, selector: &str) {
        let found = format!("document.querySelector({})", quoted(selector));
        self.wait(&found);
        self.eval(&format!("{found}.click(), true"));
    }

    /// Waits for the form field `selector`, then types `value` into it (as a user
    /// would: its `input` and `change` events fire).
    pub fn fill(&mut self, selector: &str, value: &str) {
        let found = format!("document.querySelector({})", quoted(selector));
        self.wait(&found);
        self.eval(&format!(
            "(() => {{ const e = {found}; e.value = {}; \
             e.dispatchEvent(new Event('input', {{bubbles: true}})); \
             e.dispatchEvent(new Event('change', {{bubbles: true}})); return true; }})()",
            quoted(value)
        ));
    }

    /// The text of the element `selector` (empty if there is none).
    pub fn text(&mut self, selector: &str) -> String {
        let js = format!(
            "document.querySelector({})?.textContent ?? ''",
            quoted(selector)
        );
        self.eval(&js).as_str().unwrap_or_default().to_owned()
    }

    /// Writes a PNG of what the page shows to `path`.
    pub fn screenshot(&mut self, path: &Path) {
        let path = path.to_str().expect("a UTF-8 path");
        self.ask(json!({"op": "screenshot", "path": path}));
    }

    /// Every JavaScript exception and `console.error` the page has had.
    pub fn errors(&mut self) -> Vec<String> {
        let errors = self.ask(json!({"op": "errors"}));
        errors
            .as_array()
            .map(|errors| {
                errors
                    .iter()
                    .map(|e| e.as_str().unwrap_or_default().to_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn ask(&mut self, command: Value) -> Value {
        tokio::task::block_in_place(|| {
            writeln!(self.stdin, "{command}").expect("the browser script reads");
            self.stdin.flush().expect("the browser script reads");
            let answer = self.read_line();
            assert_eq!(
                answer["ok"], true,
                "the browser failed {command}: {}",
                answer["error"]
            );
            answer["value"].clone()
        })
    }

    fn read_line(&mut self) -> Value {
        let mut line = String::new();
        let read = self
            .stdout
            .read_line(&mut line)
            .expect("the script answers");
        assert!(read > 0, "the browser script ended");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The script closes the browser on `close` or at the end of its input.
        let _ = writeln!(self.stdin, "{}", json!({"op": "close"}));
        let _ = self.stdin.flush();
        let mut line = String::new();
        let _ = self.stdout.read_line(&mut line);
        if !matches!(self.child.try_wait(), Ok(Some(_))) {
            let _ = self.child.wait();
        }
    }
}

/// A JavaScript string literal of `s`.
fn quoted(s: &str) -> String {
    Value::from(s).to_string()
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("console/cdp.py")
}
