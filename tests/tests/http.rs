//! The HTTP listener: health checks, `/metrics` read by the Prometheus project's own
//! parser with values that move as records are published, acked and dead-lettered,
//! its bounded cardinality, the QUIC side's authentication on it (tokens allowed and
//! refused, what each principal may see, HTTPS), and the console's JSON API acting
//! as its principal (publish, browse, redrive; refusals). The console's page itself
//! is driven in a real browser by `console.rs`.

#![allow(clippy::unwrap_used)] // in tests a failed unwrap is a failed test

use std::time::Duration;

use futures::StreamExt;
use quiver_client::{GroupSettings, NewRecord, Retention, Stage};
use quiver_tests::http::{As, api, get, metrics, raw};
use quiver_tests::{Broker, DataDir, eventually, example_plugin, principal, read_plugin};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_as_records_are_published_acked_and_dead_lettered() {
    let data = DataDir::new();
    let broker = Broker::start(&data);
    let health = get(&broker, "/healthz", As::default(), false);
    assert_eq!((health.status, health.body.trim()), (200, "ok"));
    let ready = get(&broker, "/readyz", As::default(), false);
    assert_eq!((ready.status, ready.body.trim()), (200, "ready"));

    let client = broker.client().await;
    client
        .create_topic("orders", Retention::default())
        .await
        .unwrap();
    let settings = GroupSettings {
        prefetch: 16,
        ..GroupSettings::new("orders")
    };
    client.create_group("billing", settings).await.unwrap();
    let template = read_plugin(&example_plugin("template"));
    client
        .deploy_plugin("template", template, None)
        .await
        .unwrap();
    client
        .attach_plugin("orders", Stage::new("template"))
        .await
        .unwrap();
    let page = metrics(&broker, As::default());
    assert!(
        page.content_type
            .starts_with("application/openmetrics-text"),
        "{}",
        page.content_type
    );
    let orders = [("topic", "orders")];
    let billing = [("group", "billing"), ("topic", "orders")];
    assert_eq!(page.value("quiver_topics", &[]), Some(1.0));
    assert_eq!(
        page.value("quiver_topic_appended_records_total", &orders),
        Some(0.0)
    );

    for i in 0..10 {
        client
            .publish("orders", format!("order {i}"))
            .await
            .unwrap();
    }
    let page = metrics(&broker, As::default());
    assert_eq!(
        page.value("quiver_topic_appended_records_total", &orders),
        Some(10.0)
    );
    assert_eq!(page.value("quiver_topic_records", &orders), Some(10.0));
    assert!(page.value("quiver_topic_stored_bytes", &orders).unwrap() > 0.0);
    assert_eq!(page.value("quiver_group_lag_records", &billing), Some(10.0));
    assert!(
        page.value("quiver_storage_commit_records_count", &[])
            .unwrap()
            >= 1.0
    );
    assert!(
        page.value("quiver_storage_flush_seconds_count", &[])
            .unwrap()
            >= 1.0
    );
    assert!(page.value("quiver_connections", &[]).unwrap() >= 1.0);
    assert_eq!(page.value("quiver_storage_halted", &[]), Some(0.0));
    assert!(page.value("process_resident_memory_bytes", &[]).unwrap() > 1e6);
    assert!(page.value("process_open_fds", &[]).unwrap() > 0.0);
    let attachment = [("plugin", "template"), ("target", "topic orders")];
    assert!(
        page.value("quiver_plugin_calls_total", &attachment)
            .unwrap()
            >= 1.0
    );
    assert_eq!(
        page.value("quiver_plugin_records_in_total", &attachment),
        Some(10.0)
    );
    assert_eq!(
        page.value("quiver_plugin_errors_total", &attachment),
        Some(0.0)
    );
    assert_eq!(
        page.value("quiver_plugin_quarantined", &attachment),
        Some(0.0)
    );
    // The template is a Rust plugin: its instance runs under Rust's default cap.
    let cap = f64::from(64u32 << 20);
    assert_eq!(
        page.value("quiver_plugin_memory_limit_bytes", &attachment),
        Some(cap)
    );
    let peak = page
        .value("quiver_plugin_memory_peak_bytes", &attachment)
        .unwrap();
    assert!(peak > 0.0 && peak < cap, "{peak}");
    // Every call is in the call-time histogram.
    let calls = page.value("quiver_plugin_calls_total", &attachment);
    assert_eq!(
        page.value("quiver_plugin_call_seconds_count", &attachment),
        calls
    );
    let every = [
        ("plugin", "template"),
        ("target", "topic orders"),
        ("le", "+Inf"),
    ];
    assert_eq!(
        page.value("quiver_plugin_call_seconds_bucket", &every),
        calls
    );
    assert!(
        page.value("quiver_plugin_call_seconds_sum", &attachment)
            .unwrap()
            > 0.0
    );
    let bytes_in = page
        .value("quiver_topic_appended_bytes_total", &orders)
        .unwrap();
    assert!(bytes_in >= 10.0 * "order 0".len() as f64, "{bytes_in}");
    assert!(
        page.value("quiver_streams", &[("kind", "control")])
            .unwrap()
            >= 1.0
    );
    assert_eq!(
        page.value("quiver_streams", &[("kind", "member")]),
        Some(0.0)
    );

    // A member takes them all, acks nine and dead-letters one.
    let mut member = client.join("billing", None).await.unwrap();
    eventually(Duration::from_secs(30), "the member's stream", || async {
        let page = metrics(&broker, As::default());
        page.value("quiver_streams", &[("kind", "member")]) == Some(1.0)
    })
    .await;
    for i in 0..10 {
        let delivery = tokio::time::timeout(Duration::from_secs(30), member.next())
            .await
            .expect("a delivery in time")
            .expect("the member goes on")
            .unwrap();
        match i {
            4 => delivery.term("not billable").unwrap(),
            _ => delivery.ack().unwrap(),
        }
    }
    eventually(
        Duration::from_secs(30),
        "the settlements in /metrics",
        || async {
            let page = metrics(&broker, As::default());
            page.value("quiver_group_pending_records", &billing) == Some(0.0)
                && page.value("quiver_group_dead_lettered_records_total", &billing) == Some(1.0)
        },
    )
    .await;
    let page = metrics(&broker, As::default());
    assert_eq!(page.value("quiver_group_lag_records", &billing), Some(0.0));
    assert_eq!(
        page.value("quiver_group_members", &[("group", "billing")]),
        Some(1.0)
    );
    // The dead letter is a record of the dead-letter topic.
    let dlq = [("topic", "dlq.orders")];
    assert_eq!(
        page.value("quiver_topic_appended_records_total", &dlq),
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_topic_series_are_bounded_and_the_rest_summed() {
    let data = DataDir::new();
    let broker = Broker::start_with(&data, &[("QUIVER_HTTP__MAX_TOPIC_SERIES", "2")]);
    let client = broker.client().await;
    // The larger topics get series of their own.
    for (topic, records) in [("a", 1), ("b", 4), ("c", 3), ("d", 2)] {
        client
            .create_topic(topic, Retention::default())
            .await
            .unwrap();
        for i in 0..records {
            client.publish(topic, format!("{i}")).await.unwrap();
        }
    }
    let page = metrics(&broker, As::default());
    assert_eq!(page.value("quiver_topics", &[]), Some(4.0));
    let appended = |topic| page.value("quiver_topic_appended_records_total", &[("topic", topic)]);
    assert_eq!(appended("b"), Some(4.0));
    assert_eq!(appended("c"), Some(3.0));
    assert_eq!(appended("_other"), Some(3.0), "a and d, summed");
    assert!(!page.mentions("topic", "a") && !page.mentions("topic", "d"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_takes_tokens_shows_each_principal_its_own_and_refuses_the_rest() {
    let data = DataDir::new();
    let ops = principal(&data, "ops", &["admin:>", "publish:>", "subscribe:>"]);
    let alice = principal(
        &data,
        "alice",
        &["publish:sensors.>", "subscribe:sensors.>"],
    );
    let broker = Broker::start(&data);
    let client = broker.client_as(&ops).await;
    for topic in ["sensors.a", "secret"] {
        client
            .create_topic(topic, Retention::default())
            .await
            .unwrap();
    }
    client
        .publish("sensors.a", NewRecord::new("21.5"))
        .await
        .unwrap();

    // The health checks name nothing: no credentials needed.
    assert_eq!(get(&broker, "/healthz", As::default(), false).status, 200);
    assert_eq!(get(&broker, "/readyz", As::default(), false).status, 200);
    // Anonymous is refused once principals exist, as on QUIC; so is a bad token.
    let anonymous = get(&broker, "/metrics", As::default(), false);
    assert_eq!(anonymous.status, 401, "{}", anonymous.body);
    assert!(
        anonymous.body.contains("requires authentication"),
        "{}",
        anonymous.body
    );
    // ops' token with another secret.
    let mut forged = ops.clone();
    let last = if forged.pop() == Some('0') { '1' } else { '0' };
    forged.push(last);
    let forged = As {
        token: Some(&forged),
        ..As::default()
    };
    let refused = get(&broker, "/metrics", forged, false);
    assert_eq!(refused.status, 401);
    assert!(refused.body.contains("not valid"), "{}", refused.body);

    // Each principal sees what it may see.
    let as_ops = metrics(
        &broker,
        As {
            token: Some(&ops),
            ..As::default()
        },
    );
    assert!(as_ops.mentions("topic", "sensors.a") && as_ops.mentions("topic", "secret"));
    assert_eq!(as_ops.value("quiver_topics", &[]), Some(2.0));
    let as_alice = metrics(
        &broker,
        As {
            token: Some(&alice),
            ..As::default()
        },
    );
    assert!(as_alice.mentions("topic", "sensors.a"));
    assert!(
        !as_alice.mentions("topic", "secret"),
        "alice may not see `secret`"
    );
    assert_eq!(as_alice.value("quiver_topics", &[]), Some(1.0));
    drop(broker);

    // Over HTTPS (the default off loopback), with the broker's certificate.
    let broker = Broker::start_with(&data, &[("QUIVER_HTTP__TLS", "true")]);
    assert!(
        broker.http_url().starts_with("https://"),
        "{}",
        broker.http_url()
    );
    let cert = broker.cert().to_owned();
    let tls = As {
        token: Some(&ops),
        ca: Some(&cert),
    };
    let page = metrics(&broker, tls);
    assert_eq!(
        page.value("quiver_topic_records", &[("topic", "sensors.a")]),
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_api_acts_as_its_principal_and_refuses_what_it_may_not() {
    let data = DataDir::new();
    let ops = principal(
        &data,
        "ops",
        &["admin:>", "publish:>", "subscribe:>", "group:>"],
    );
    let alice = principal(
        &data,
        "alice",
        &["publish:sensors.>", "subscribe:sensors.>"],
    );
    let broker = Broker::start(&data);
    let client = broker.client_as(&ops).await;
    for topic in ["sensors.a", "orders"] {
        client
            .create_topic(topic, Retention::default())
            .await
            .unwrap();
    }
    let as_ops = As {
        token: Some(&ops),
        ..As::default()
    };
    let as_alice = As {
        token: Some(&alice),
        ..As::default()
    };

    let (status, who) = api(&broker, "GET", "/api/whoami", as_alice, None);
    assert_eq!(status, 200, "{who}");
    assert_eq!(
        (&who["principal"], &who["admin"]),
        (&json!("alice"), &json!(false))
    );
    let (status, refused) = api(&broker, "GET", "/api/topics", As::default(), None);
    assert_eq!(status, 401, "anonymous, with principals: {refused}");
    assert_eq!(refused["error"]["code"], "Unauthenticated");
    let (_, topics) = api(&broker, "GET", "/api/topics", as_alice, None);
    let names: Vec<_> = topics
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["sensors.a"], "alice sees only her topics");

    // Publishing, then browsing by key and by offset.
    for (i, (key, payload)) in [("k1", r#"{"t":21.5}"#), ("k2", "plain"), ("k1", "again")]
        .into_iter()
        .enumerate()
    {
        let record = json!({
            "key": key,
            "payload": payload,
            "headers": [{"name": "source", "value": "console"}],
        });
        let path = "/api/topics/sensors.a/records";
        let (status, receipt) = api(&broker, "POST", path, as_alice, Some(&record));
        assert_eq!(status, 200, "{receipt}");
        assert_eq!(receipt["base_offset"], json!(i));
    }
    let path = "/api/topics/sensors.a/records?key=k1";
    let (_, page) = api(&broker, "GET", path, as_alice, None);
    let records = page["records"].as_array().unwrap();
    let offsets: Vec<_> = records.iter().map(|r| r["offset"].clone()).collect();
    assert_eq!(offsets, [json!(0), json!(2)], "{page}");
    assert_eq!(records[0]["payload"], r#"{"t":21.5}"#);
    assert_eq!(
        records[0]["headers"],
        json!([{"name": "source", "value": "console"}])
    );
    let path = "/api/topics/sensors.a/records?from=1&limit=1";
    let (_, page) = api(&broker, "GET", path, as_alice, None);
    assert_eq!(page["records"][0]["payload"], "plain");
    assert_eq!((&page["next"], &page["end"]), (&json!(2), &json!(3)));
    let (_, topic) = api(&broker, "GET", "/api/topics/sensors.a", as_alice, None);
    assert!(topic["bytes_in"].as_u64().unwrap() > 0, "{topic}");

    // What alice holds no right for is refused, with the reason.
    let record = json!({"payload": "x"});
    let refusals = [
        ("POST", "/api/topics/orders/records", Some(&record)),
        ("GET", "/api/topics/orders/records", None),
        ("DELETE", "/api/topics/sensors.a/plugins/none", None),
        ("GET", "/api/principals", None),
        ("GET", "/api/links", None),
    ];
    for (method, path, body) in refusals {
        let (status, refused) = api(&broker, method, path, as_alice, body);
        assert_eq!(status, 403, "{method} {path}: {refused}");
        assert_eq!(refused["error"]["code"], "Forbidden", "{method} {path}");
    }
    // A body must be JSON: a form of another site cannot post one unasked.
    let options = [
        "--method",
        "POST",
        "--json",
        r#"{"payload": "x"}"#,
        "--content-type",
        "text/plain",
    ];
    let plain = raw(&broker, "/api/topics/sensors.a/records", as_alice, &options);
    assert_eq!(plain.status, 415, "{}", plain.body);

    // Principals, read only, for admins: token ids, never secrets.
    let (status, principals) = api(&broker, "GET", "/api/principals", as_ops, None);
    assert_eq!(status, 200, "{principals}");
    let names: Vec<_> = principals
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["alice", "ops"]);
    assert_eq!(principals[0]["tokens"].as_array().unwrap().len(), 1);
    let secret = alice.rsplit('_').next().unwrap();
    assert!(!principals.to_string().contains(secret), "{principals}");

    // A group gives up a record; the console redrives it to its topic, once.
    client
        .create_group("billing", GroupSettings::new("orders"))
        .await
        .unwrap();
    client.publish("orders", "order 1").await.unwrap();
    let mut member = client.join("billing", None).await.unwrap();
    let delivery = tokio::time::timeout(Duration::from_secs(30), member.next())
        .await
        .expect("a delivery in time")
        .expect("the member goes on")
        .unwrap();
    delivery.term("no such customer").unwrap();
    eventually(Duration::from_secs(30), "the dead letter", || async {
        let (_, list) = api(&broker, "GET", "/api/dead-letters", as_ops, None);
        list[0]["topic"] == "dlq.orders" && list[0]["records"] == 1
    })
    .await;
    let path = "/api/dead-letters/dlq.orders/redrive";
    let selected = json!({"offsets": [0]});
    let (status, refused) = api(&broker, "POST", path, as_alice, Some(&selected));
    assert_eq!(status, 403, "alice may not read dlq.orders: {refused}");
    for _ in 0..2 {
        let (status, report) = api(&broker, "POST", path, as_ops, Some(&selected));
        assert_eq!(status, 200, "{report}");
        assert_eq!(
            report["redriven"],
            json!([{"offset": 0, "topic": "orders", "base_offset": 1}]),
            "a second redrive stores nothing new"
        );
    }
    let (_, page) = api(
        &broker,
        "GET",
        "/api/topics/orders/records?from=1",
        as_ops,
        None,
    );
    assert_eq!(page["end"], 2, "stored once: {page}");
    let again = &page["records"][0];
    assert_eq!(again["payload"], "order 1");
    let header = |name: &str| {
        again["headers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["name"] == name)
            .map(|h| h["value"].clone())
    };
    assert_eq!(header("quiver-redrive-from"), Some(json!("dlq.orders:0")));
    assert_eq!(header("quiver-redrive-group"), Some(json!("billing")));
    assert_eq!(
        header("quiver-dlq-topic"),
        None,
        "history, not a dead letter"
    );

    // Through a plugin version: `orders` runs no plugin, so the record fails (and
    // stays a dead letter); a `through` that is not NAME@VERSION is a bad request.
    let through = json!({"offsets": [0], "through": "gate@2"});
    let (status, report) = api(&broker, "POST", path, as_ops, Some(&through));
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["redriven"], json!([]), "{report}");
    assert_eq!(
        report["failed"][0]["message"],
        "plugin `gate` is not on the ingress pipeline of topic `orders`",
        "{report}"
    );
    let malformed = json!({"offsets": [0], "through": "gate"});
    let (status, refused) = api(&broker, "POST", path, as_ops, Some(&malformed));
    assert_eq!(status, 400, "{refused}");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("NAME@VERSION"),
        "{refused}"
    );

    let (status, missing) = api(&broker, "POST", "/api/plugins/none/lift", as_ops, None);
    assert_eq!(status, 404, "{missing}");
    assert_eq!(missing["error"]["code"], "PluginNotFound");
}
