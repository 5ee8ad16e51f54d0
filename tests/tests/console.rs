//! The web console in a real headless Chromium (`quiver_tests::browser`): log in with
//! a token, read the overview, open a topic and browse its records (JSON
//! pretty-printed), publish a test record, detach a plugin, re-drive a dead letter and
//! see it arrive, and an action the principal holds no right for refused. What the
//! page did is checked through the SDK, not only on the page.
//!
//! The screenshots in docs/operations.md come from this test:
//! `QUIVER_SCREENSHOTS=docs/img cargo test -p quiver-tests --test console`.

#![allow(clippy::unwrap_used)] // in tests a failed unwrap is a failed test

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::StreamExt;
use quiver_client::{Client, GroupSettings, NewRecord, StartAt, SubscribeOptions};
use quiver_tests::browser::Browser;
use quiver_tests::{Broker, DataDir, filtered_topic, level_filter, principal};

/// Takes a screenshot of what the page shows now as `name`.png: into a temporary
/// folder (checked to be a PNG), and into `QUIVER_SCREENSHOTS` if set.
struct Screenshots {
    dir: tempfile::TempDir,
    keep: Option<PathBuf>,
}

impl Screenshots {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
            keep: std::env::var_os("QUIVER_SCREENSHOTS").map(|dir| {
                // Relative to the workspace, where the command is typed.
                Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(dir)
            }),
        }
    }

    fn take(&self, browser: &mut Browser, name: &str) {
        let path = self.dir.path().join(format!("console-{name}.png"));
        browser.screenshot(&path);
        let png = std::fs::read(&path).unwrap();
        assert!(png.starts_with(b"\x89PNG"), "{name}: not a PNG");
        if let Some(keep) = &self.keep {
            std::fs::create_dir_all(keep).unwrap();
            std::fs::copy(&path, keep.join(format!("console-{name}.png"))).unwrap();
        }
    }
}

/// Opens `hash` and waits until its view has shown its first data.
fn open(browser: &mut Browser, hash: &str, view: &str) {
    browser.eval(&format!("location.hash = {}", serde_json::json!(hash)));
    browser.wait(&format!(
        "document.body.dataset.view === '{view}' && document.body.dataset.loaded === '1'"
    ));
}

/// Clicks `selector` and waits for the action it starts to finish; returns how it
/// ended (`ok` or `error`).
fn act(browser: &mut Browser, selector: &str, action: &str) -> String {
    browser.eval("delete document.body.dataset.action");
    browser.click(selector);
    let done = browser.wait(&format!(
        "(document.body.dataset.action || '').startsWith('{action}:') && \
         document.body.dataset.action"
    ));
    done.as_str()
        .unwrap()
        .trim_start_matches(&format!("{action}:"))
        .to_owned()
}

/// Logs in on the page's form with `token`, and waits for the view the address
/// names to show.
fn log_in(browser: &mut Browser, token: &str) {
    browser.wait("document.querySelector('#login-token')");
    browser.fill("#login-token", token);
    browser.click("#login-submit");
    browser.wait("document.body.dataset.view && document.body.dataset.loaded === '1'");
}

/// The records of `topic` from `from` up to its end now.
async fn records(client: &Client, topic: &str, from: u64) -> Vec<quiver_client::Record> {
    let end = client.describe_topic(topic).await.unwrap().next_offset;
    let mut subscription = client
        .subscribe(topic, SubscribeOptions::from(StartAt::Offset(from)))
        .await
        .unwrap();
    let mut records = Vec::new();
    while records.len() < usize::try_from(end - from).unwrap() {
        let record = tokio::time::timeout(Duration::from_secs(30), subscription.next())
            .await
            .expect("a record in time")
            .expect("the subscription goes on")
            .unwrap();
        records.push(record);
    }
    records
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_logs_in_browses_publishes_detaches_and_redrives_in_a_real_browser() {
    let data = DataDir::new();
    let ops = principal(
        &data,
        "ops",
        &["admin:>", "publish:>", "subscribe:>", "group:>"],
    );
    let viewer = principal(&data, "viewer", &["subscribe:orders"]);
    let broker = Broker::start(&data);
    let client = broker.client_as(&ops).await;
    filtered_topic(&client, "orders", level_filter()).await;
    client
        .create_group("billing", GroupSettings::new("orders"))
        .await
        .unwrap();
    let kept = client
        .publish_batch(
            "orders",
            vec![NewRecord::new(
                r#"{"level":"error","msg":"disk full","id":7}"#,
            )],
        )
        .await
        .unwrap();
    assert_eq!(kept.count, 1);
    let rejected = client
        .publish_batch("orders", vec![NewRecord::new("not json")])
        .await
        .unwrap();
    assert!(rejected.dead_letter.is_some(), "{rejected:?}");

    let shots = Screenshots::new();
    let mut browser = Browser::start();
    browser.goto(&format!("{}/console/", broker.http_url()));
    // A wrong token is refused on the form; the right one logs in.
    browser.wait("document.querySelector('#login-token')");
    browser.fill("#login-token", "qvt_0000000000000000_00");
    browser.click("#login-submit");
    browser.wait("document.querySelector('#login-error')?.textContent.length > 0");
    log_in(&mut browser, &ops);
    open(&mut browser, "#/overview", "overview");
    let header = browser.text("body");
    assert!(header.contains("ops"), "the principal is shown: {header}");
    // The rates appear once the page has polled twice.
    browser.wait("!document.querySelector('[data-figure=\"rate-records\"]').textContent.includes('measuring')");
    shots.take(&mut browser, "overview");

    open(&mut browser, "#/topics", "topics");
    browser.wait("document.querySelector('tr[data-topic=\"orders\"]')");
    shots.take(&mut browser, "topics");

    // Browse: the kept record, its JSON pretty-printed.
    open(&mut browser, "#/topics/orders", "topic");
    browser.eval("delete document.body.dataset.browsed");
    browser.click("#browse-go");
    browser.wait("document.body.dataset.browsed");
    let payload = browser.text("tr[data-offset=\"0\"] .payload");
    assert!(
        payload.contains("\"msg\": \"disk full\"") && payload.contains('\n'),
        "pretty-printed: {payload}"
    );
    browser.eval("document.querySelector('#browse-results').scrollIntoView(), true");
    shots.take(&mut browser, "topic");

    // Publish a test record from the page; the SDK reads it back.
    browser.fill("#publish-key", "console-test");
    browser.fill(
        "#publish-payload",
        r#"{"level":"warn","msg":"from the console"}"#,
    );
    assert_eq!(act(&mut browser, "#publish-go", "publish"), "ok");
    let stored = records(&client, "orders", 1).await;
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].key.as_deref(), Some(&b"console-test"[..]));
    assert_eq!(
        &stored[0].payload[..],
        br#"{"level":"warn","msg":"from the console"}"#
    );

    // Detach the filter (two clicks: the second confirms).
    browser.click("button[data-detach=\"json-filter\"]");
    assert_eq!(
        act(
            &mut browser,
            "button[data-detach=\"json-filter\"]",
            "detach"
        ),
        "ok"
    );
    let orders = client.describe_topic("orders").await.unwrap();
    assert!(orders.pipeline.is_empty(), "{:?}", orders.pipeline);

    // The dead letter, with its reason; re-driven, it arrives in orders.
    open(&mut browser, "#/dead-letters", "dead-letters");
    browser.wait("document.querySelector('tr[data-dlq=\"dlq.orders\"]')");
    open(&mut browser, "#/dead-letters/dlq.orders", "dead-letter");
    browser.wait("document.querySelector('input[data-select-offset=\"0\"]')");
    let reason = browser.text("body");
    assert!(reason.contains("payload is not JSON"), "{reason}");
    shots.take(&mut browser, "dead-letters");
    browser.click("input[data-select-offset=\"0\"]");
    assert_eq!(act(&mut browser, "#redrive-selected", "redrive"), "ok");
    let result = browser.text("#redrive-result");
    assert!(result.contains('1'), "{result}");
    let arrived = records(&client, "orders", 2).await;
    assert_eq!(arrived.len(), 1, "the dead letter, once");
    assert_eq!(&arrived[0].payload[..], b"not json");
    assert_eq!(
        arrived[0].header("quiver-redrive-from").map(|v| v.to_vec()),
        Some(b"dlq.orders:0".to_vec())
    );

    open(&mut browser, "#/plugins", "plugins");
    browser.wait("document.querySelector('[data-plugin=\"json-filter\"]')");
    shots.take(&mut browser, "plugins");
    open(&mut browser, "#/groups/billing", "group");
    browser.wait("document.querySelector('#lag-chart')");
    // More records: the page's next sample draws the lag growing.
    for i in 0..5 {
        let record = format!(r#"{{"level":"warn","n":{i}}}"#);
        client.publish("orders", record).await.unwrap();
    }
    browser.wait("document.body.textContent.includes('2 samples')");
    shots.take(&mut browser, "group");

    // Another principal, without the right: the page shows the refusal, and nothing
    // is stored.
    let end = client.describe_topic("orders").await.unwrap().next_offset;
    browser.click("#logout");
    log_in(&mut browser, &viewer);
    open(&mut browser, "#/topics/orders", "topic");
    browser.fill("#publish-payload", "not allowed");
    assert_eq!(act(&mut browser, "#publish-go", "publish"), "error");
    let notice = browser.text("#notice");
    assert!(notice.contains("publish"), "the refusal says why: {notice}");
    let after = client.describe_topic("orders").await.unwrap().next_offset;
    assert_eq!(after, end, "nothing stored for the viewer");

    let errors = browser.errors();
    assert!(errors.is_empty(), "the page had errors: {errors:?}");
}
