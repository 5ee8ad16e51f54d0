//! The broker's HTTP listener as a scraper sees it: requests from Python's `urllib`
//! and `/metrics` read by the Prometheus project's own OpenMetrics parser
//! (`prometheus-client`, which `make http-tools` puts in the workspace's `tools/venv`),
//! through `tests/http/fetch.py`. A page the parser refuses fails the test.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::Broker;

/// What one GET got.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// The HTTP status.
    pub status: u16,
    /// The body, as text.
    pub body: String,
    /// The `Content-Type` header.
    pub content_type: String,
    samples: Vec<Sample>,
}

/// One sample of `/metrics`, as the parser read it.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
}

/// How a request proves itself.
#[derive(Debug, Clone, Copy, Default)]
pub struct As<'a> {
    /// A token, sent as `Authorization: Bearer TOKEN`.
    pub token: Option<&'a str>,
    /// The CA file to trust for HTTPS.
    pub ca: Option<&'a Path>,
}

/// GETs `path` from `broker`'s HTTP listener; with `metrics`, its samples are parsed.
pub fn get(broker: &Broker, path: &str, who: As<'_>, metrics: bool) -> Fetched {
    let mut command = fetch(broker, path);
    if metrics {
        command.arg("--metrics");
    }
    run(command, who)
}

/// A request to the console's JSON API: its status and the JSON it answered.
pub fn api(
    broker: &Broker,
    method: &str,
    path: &str,
    who: As<'_>,
    body: Option<&Value>,
) -> (u16, Value) {
    let mut command = fetch(broker, path);
    command.args(["--method", method]);
    if let Some(body) = body {
        command.args(["--json", &body.to_string()]);
    }
    let fetched = run(command, who);
    let json = serde_json::from_str(&fetched.body)
        .unwrap_or_else(|e| panic!("{method} {path} answered no JSON ({e}): {}", fetched.body));
    (fetched.status, json)
}

/// A request to `path` with the raw options of `tests/http/fetch.py` (`--host`,
/// `--content-type`, …).
pub fn raw(broker: &Broker, path: &str, who: As<'_>, options: &[&str]) -> Fetched {
    let mut command = fetch(broker, path);
    command.args(options);
    run(command, who)
}

fn fetch(broker: &Broker, path: &str) -> Command {
    let url = format!("{}{path}", broker.http_url());
    let mut command = Command::new(crate::mqtt::python());
    command
        .arg(script())
        .arg(&url)
        .env("PYTHONDONTWRITEBYTECODE", "1");
    command
}

fn run(mut command: Command, who: As<'_>) -> Fetched {
    if let Some(token) = who.token {
        command.args(["--token", token]);
    }
    if let Some(ca) = who.ca {
        command.arg("--ca").arg(ca);
    }
    let output = command.output().expect("python runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{command:?} failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let json: Value = serde_json::from_str(stdout.trim()).expect("fetch.py prints JSON");
    let text = |key: &str| json[key].as_str().unwrap_or_default().to_owned();
    let samples = json["samples"]
        .as_array()
        .map(|samples| {
            samples
                .iter()
                .map(|s| Sample {
                    name: s["name"].as_str().unwrap_or_default().to_owned(),
                    labels: s["labels"]
                        .as_object()
                        .map(|labels| {
                            labels
                                .iter()
                                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().into()))
                                .collect()
                        })
                        .unwrap_or_default(),
                    value: s["value"].as_f64().unwrap_or(f64::NAN),
                })
                .collect()
        })
        .unwrap_or_default();
    Fetched {
        status: u16::try_from(json["status"].as_u64().unwrap_or_default()).unwrap_or(0),
        body: text("body"),
        content_type: text("content_type"),
        samples,
    }
}

/// `/metrics` as `who` sees it, parsed; panics unless it answers 200.
pub fn metrics(broker: &Broker, who: As<'_>) -> Fetched {
    let page = get(broker, "/metrics", who, true);
    assert_eq!(page.status, 200, "/metrics: {}", page.body);
    page
}

impl Fetched {
    /// The value of the sample `name` whose labels include `labels`; `None` if there is
    /// no such sample.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples
            .iter()
            .find(|s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.iter().any(|(sk, sv)| sk == k && sv == v))
            })
            .map(|s| s.value)
    }

    /// Whether any sample carries the label `key="value"`.
    pub fn mentions(&self, key: &str, value: &str) -> bool {
        self.samples
            .iter()
            .any(|s| s.labels.iter().any(|(k, v)| k == key && v == value))
    }
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("http/fetch.py")
}
