//! The MQTT listener through third-party clients (`tests/src/mqtt.rs`): Debian's
//! mosquitto_pub and mosquitto_sub, Eclipse Paho scripts for MQTT 3.1.1 and 5, and raw
//! bytes. MQTT topics are Quiver topics (`a/b/c` is `a.b.c`, `+` is `*`, `#` is `>`),
//! which must exist unless `[[mqtt.auto_create]]` covers them; QoS 0, 1 and 2 both
//! ways; retained messages across restarts and `kill -9`; wills; persistent sessions;
//! shared subscriptions; ingress plugins; principals proven by token or client
//! certificate, and their grants; acknowledged QoS 1 publishes surviving `kill -9`; a
//! retained publish finished after its connection ended, on a disk that stalls; and
//! malformed, late, oversized and unknown-version input closing only its own
//! connection.

#![allow(clippy::unwrap_used)] // in tests a failed unwrap is a failed test

use std::time::{Duration, Instant};

use quiver_tests::disk::Disk;
use quiver_tests::mqtt::{
    self, MosquittoSub, Paho, RawOutcome, Step, WAIT, acked, distinct, event_payloads, events,
    mosquitto_pub, mosquitto_pub_ok, numbered, of, packet, paho, paho_ok, payloads, quiver_sub,
    raw,
};
use quiver_tests::{Broker, DataDir, Stop, auth, principal};
use serde_json::Value;

/// How long raw connections wait for the broker to close them.
const CLOSE_WAIT: Duration = Duration::from_secs(20);

/// `--broker ADDR --protocol P` and more, for the Paho scripts.
fn client<'a>(addr: &'a str, protocol: &'a str, more: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["--broker", addr, "--protocol", protocol];
    args.extend_from_slice(more);
    args
}

/// The one event named `event`, failing the test unless there is exactly one.
fn one(events: &[Value], event: &str) -> Value {
    let mut found = of(events, event);
    assert_eq!(found.len(), 1, "one {event:?} event in {events:?}");
    found.swap_remove(0)
}

/// The last event (the one a failing script ends with).
fn last(events: &[Value]) -> &Value {
    events.last().expect("the script printed something")
}

#[test]
fn mqtt_topics_are_quiver_topics_and_filters_are_patterns() {
    let data = DataDir::new();
    let broker = mqtt::start(&data);
    mqtt::create_topics(&broker, &data, &["a", "a.b.c", "a.b.d", "a.d.c"], &[]);
    let addr = broker.mqtt_addr();
    // `a/#` matches `a` itself too; `a/+/c` one level in the middle.
    let all = MosquittoSub::start(addr, &["-t", "a/#", "-q", "1", "-v", "-C", "7"]);
    let middle = MosquittoSub::start(addr, &["-t", "a/+/c", "-q", "1", "-v"]);
    assert_eq!(all.granted(), [1]);

    // Quiver to MQTT: `quiver pub` (a line of stdin per record).
    for (topic, payload) in [
        ("a.b.c", "one"),
        ("a.b.d", "two"),
        ("a", "three"),
        ("a.d.c", "four"),
    ] {
        let line = format!("{payload}\n");
        mqtt::quiver_stdin(&broker, &data, &["pub", topic], &[], Some(&line));
    }
    let mut got = all.wait_for(4, WAIT);
    got.sort();
    assert_eq!(got, ["a three", "a/b/c one", "a/b/d two", "a/d/c four"]);
    let mut got = middle.wait_for(2, WAIT);
    got.sort();
    assert_eq!(got, ["a/b/c one", "a/d/c four"]);

    // MQTT to Quiver: mosquitto_pub at QoS 1 exits once the broker acknowledged.
    for i in 0..3 {
        mosquitto_pub_ok(
            addr,
            &["-t", "a/b/c", "-q", "1", "-m", &format!("mqtt-{i}")],
        );
    }
    let stored = quiver_sub(&broker, &data, "a.b.c", 4, &[]);
    assert_eq!(payloads(&stored), ["one", "mqtt-0", "mqtt-1", "mqtt-2"]);
    assert!(stored.iter().all(|r| r["topic"] == "a.b.c"), "{stored:?}");
    assert_eq!(mqtt::records(&broker, &data, "a.b.c", &[]), 4);

    // And MQTT to MQTT, through the topic.
    let from_mqtt = ["a/b/c mqtt-0", "a/b/c mqtt-1", "a/b/c mqtt-2"];
    let got = all.finish(WAIT);
    assert_eq!(got.len(), 7, "{got:?}");
    assert_eq!(&got[4..], from_mqtt, "in publishing order");
    assert_eq!(&middle.wait_for(5, WAIT)[2..], from_mqtt);
}

#[test]
fn publishes_to_missing_topics_are_refused_unless_auto_created() {
    let data = DataDir::new();
    let config = mqtt::write_config(
        &data,
        "[[mqtt.auto_create]]\n\
         pattern = \"sensors.>\"\n\
         max_records = 1000\n\
         max_age = \"1h\"\n\
         durability = \"batched\"\n\
         flush_interval = \"20ms\"\n",
    );
    let broker = mqtt::launch(&data, &["--config", &config], &[]);
    let addr = broker.mqtt_addr();

    // MQTT 5: a PUBACK with 131 (implementation specific error) naming the topic; the
    // connection stays up (the script goes on to its DISCONNECT).
    let sent = paho_ok(
        "pub.py",
        &client(addr, "5", &["--topic", "nope/x", "--qos", "1"]),
    );
    let ack = one(&sent, "ack");
    assert_eq!(ack["reason_code"], 131, "{ack}");
    let reason = ack["reason_string"].as_str().unwrap_or_default();
    assert!(
        reason.contains("nope.x"),
        "the reason names the topic: {ack}"
    );
    one(&sent, "done");

    // MQTT 3.1.1 has no way to refuse a publish: the broker closes the connection.
    let output = paho(
        "pub.py",
        &client(addr, "3.1.1", &["--topic", "nope/x", "--qos", "1"]),
    );
    let events = events(&output);
    assert_eq!(output.status.code(), Some(2), "{events:?}");
    assert_eq!(last(&events)["event"], "disconnected");
    assert!(of(&events, "ack").is_empty(), "{events:?}");
    let missing = quiver_tests::cli(
        data.root(),
        &["topic", "describe", "nope.x"],
        &[("QUIVER_SERVER", broker.addr())],
        "",
    );
    assert!(!missing.status.success(), "no topic was created");

    // A topic under an auto_create pattern is created, with its settings.
    mosquitto_pub_ok(addr, &["-t", "sensors/eu/temp", "-q", "1", "-m", "21.5"]);
    let topic = mqtt::describe_topic(&broker, &data, "sensors.eu.temp", &[]);
    assert_eq!(topic["records"], 1, "{topic}");
    assert_eq!(topic["retention"]["max_records"], 1000, "{topic}");
    assert_eq!(topic["retention"]["max_age_ms"], 3_600_000, "{topic}");
    assert_eq!(topic["durability"]["mode"], "batched", "{topic}");
    assert_eq!(topic["durability"]["flush_interval_ms"], 20, "{topic}");
    assert_eq!(
        payloads(&quiver_sub(&broker, &data, "sensors.eu.temp", 1, &[])),
        ["21.5"]
    );
    // Outside the pattern: still refused.
    let events = paho_ok(
        "pub.py",
        &client(addr, "5", &["--topic", "other/x", "--qos", "1"]),
    );
    assert_eq!(one(&events, "ack")["reason_code"], 131);
}

#[test]
fn qos_0_1_and_2_both_ways_with_mqtt_3_1_1_and_5() {
    let data = DataDir::new();
    let broker = mqtt::start(&data);
    let addr = broker.mqtt_addr();
    let cases = [("3.1.1", "v311"), ("5", "v5")];
    for (_, version) in cases {
        for qos in 0..3 {
            mqtt::create_topics(&broker, &data, &[&format!("qos.{version}.q{qos}")], &[]);
        }
    }
    for (protocol, version) in cases {
        for qos in ["0", "1", "2"] {
            let topic = format!("qos/{version}/q{qos}");
            let client_id = format!("sub-{version}-{qos}");
            let sub = Paho::spawn(
                "sub.py",
                &client(
                    addr,
                    protocol,
                    &[
                        "--topic",
                        &topic,
                        "--qos",
                        qos,
                        "--count",
                        "10",
                        "--client-id",
                        &client_id,
                    ],
                ),
            );
            let ready = sub.ready();
            assert_eq!(
                ready["granted"],
                serde_json::json!([qos.parse::<u8>().unwrap()])
            );

            let sent = paho_ok(
                "pub.py",
                &client(
                    addr,
                    protocol,
                    &[
                        "--topic",
                        &topic,
                        "--qos",
                        qos,
                        "--count",
                        "10",
                        "--inflight",
                        "4",
                    ],
                ),
            );
            assert_eq!(acked(&sent), numbered("msg", 10), "{protocol} QoS {qos}");
            assert!(
                of(&sent, "ack")
                    .iter()
                    .all(|a| a["qos"] == qos.parse::<u8>().unwrap())
            );

            let got = of(&sub.succeed(WAIT), "message");
            assert_eq!(
                event_payloads(&got),
                numbered("msg", 10),
                "{protocol} QoS {qos}"
            );
            for message in &got {
                assert_eq!(message["topic"], topic.as_str());
                assert_eq!(message["qos"], qos.parse::<u8>().unwrap(), "{message}");
                assert_eq!(message["retain"], false, "{message}");
                assert_eq!(message["dup"], false, "{message}");
            }
            let quiver_topic = topic.replace('/', ".");
            let stored = quiver_sub(&broker, &data, &quiver_topic, 10, &[]);
            assert_eq!(payloads(&stored), numbered("msg", 10));
            assert_eq!(mqtt::records(&broker, &data, &quiver_topic, &[]), 10);
        }
    }
}

#[test]
fn mqtt5_properties_reach_subscribers() {
    let data = DataDir::new();
    let broker = mqtt::start(&data);
    let addr = broker.mqtt_addr();
    mqtt::create_topics(&broker, &data, &["rpc.ask"], &[]);
    let v5 = Paho::spawn(
        "sub.py",
        &client(
            addr,
            "5",
            &["--topic", "rpc/#", "--qos", "1", "--count", "1"],
        ),
    );
    let v311 = Paho::spawn(
        "sub.py",
        &client(
            addr,
            "3.1.1",
            &["--topic", "rpc/#", "--qos", "1", "--count", "1"],
        ),
    );
    v5.ready();
    v311.ready();
    let sent = paho_ok(
        "pub.py",
        &client(
            addr,
            "5",
            &[
                "--topic",
                "rpc/ask",
                "--payload",
                "{\"q\":1}",
                "--user-property",
                "tenant=acme",
                "--user-property",
                "trace=a=b",
                "--content-type",
                "application/json",
                "--response-topic",
                "rpc/reply/7",
                "--correlation-data",
                "req-7",
            ],
        ),
    );
    assert_eq!(acked(&sent), ["{\"q\":1}"]);

    let message = one(&v5.succeed(WAIT), "message");
    assert_eq!(message["payload"], "{\"q\":1}");
    assert_eq!(
        message["user_properties"],
        serde_json::json!([["tenant", "acme"], ["trace", "a=b"]])
    );
    assert_eq!(message["content_type"], "application/json");
    assert_eq!(message["response_topic"], "rpc/reply/7");
    assert_eq!(message["correlation_data"], "req-7");
    // A 3.1.1 subscriber gets the message without them.
    let message = one(&v311.succeed(WAIT), "message");
    assert_eq!(message["payload"], "{\"q\":1}");
    assert_eq!(message["user_properties"], serde_json::json!([]));
}

/// What a new subscriber to `status/#` gets as retained: it subscribes, then `marker` is
/// published (not retained) to `marker_topic` (under `status/`); whatever came before the
/// marker was retained, as (topic, payload, retain flag).
fn retained_before(addr: &str, marker_topic: &str, marker: &str) -> Vec<(String, String, bool)> {
    let sub = Paho::spawn(
        "sub.py",
        &client(
            addr,
            "5",
            &["--topic", "status/#", "--qos", "1", "--timeout", "60"],
        ),
    );
    sub.ready();
    mosquitto_pub_ok(addr, &["-t", marker_topic, "-q", "1", "-m", marker]);
    let events = sub.wait_until("the marker", WAIT, |events| {
        events.iter().any(|e| e["payload"] == marker)
    });
    sub.kill();
    let messages = of(&events, "message");
    let at = messages
        .iter()
        .position(|m| m["payload"] == marker)
        .unwrap();
    assert_eq!(
        messages[at]["retain"], false,
        "a live message is not retained"
    );
    messages[..at]
        .iter()
        .map(|m| {
            (
                m["topic"].as_str().unwrap().to_owned(),
                m["payload"].as_str().unwrap().to_owned(),
                m["retain"].as_bool().unwrap(),
            )
        })
        .collect()
}

#[test]
fn retained_messages_reach_later_subscribers_and_survive_restarts() {
    let data = DataDir::new();
    let mut broker = mqtt::start(&data);
    mqtt::create_topics(&broker, &data, &["status.dev1", "status.dev2"], &[]);

    let publish_retained = |addr: &str, topic: &str, payload: &str| {
        let sent = paho_ok(
            "pub.py",
            &client(
                addr,
                "3.1.1",
                &[
                    "--topic",
                    topic,
                    "--qos",
                    "1",
                    "--retain",
                    "--payload",
                    payload,
                ],
            ),
        );
        assert_eq!(acked(&sent), [payload]);
    };
    let retained_then = |addr: &str, marker: &str| retained_before(addr, "status/dev1", marker);

    let addr = broker.mqtt_addr().to_owned();
    publish_retained(&addr, "status/dev1", "online");
    assert_eq!(
        retained_then(&addr, "marker-1"),
        [("status/dev1".to_owned(), "online".to_owned(), true)]
    );
    // An empty retained payload clears it.
    mosquitto_pub_ok(&addr, &["-t", "status/dev1", "-q", "1", "-r", "-n"]);
    assert_eq!(retained_then(&addr, "marker-2"), []);

    // Across a clean restart.
    publish_retained(&addr, "status/dev2", "v2");
    broker = mqtt::restart(broker, &data, Stop::Term, &[]);
    let addr = broker.mqtt_addr().to_owned();
    assert_eq!(
        retained_then(&addr, "marker-3"),
        [("status/dev2".to_owned(), "v2".to_owned(), true)]
    );

    // Across kill -9, once acknowledged at QoS 1.
    publish_retained(&addr, "status/dev2", "v3");
    broker = mqtt::restart(broker, &data, Stop::Kill, &[]);
    let addr = broker.mqtt_addr().to_owned();
    assert_eq!(
        retained_then(&addr, "marker-4"),
        [("status/dev2".to_owned(), "v3".to_owned(), true)]
    );
}

/// A retained QoS 1 publish whose connection ends while storage still waits on the
/// disk (its sync held past the few seconds a closing connection waits for its
/// publishes) is stored, and retained, once the disk answers, with nobody left to
/// answer.
#[test]
fn a_retained_publish_still_being_stored_when_its_connection_ends_is_retained() {
    let data = DataDir::new();
    let disk = Disk::mount_data_dir(&data);
    let broker = mqtt::start(&data);
    mqtt::create_topics(&broker, &data, &["status.stalled", "status.marker"], &[]);
    let addr = broker.mqtt_addr().to_owned();

    disk.hold_syncs();
    let outcome = raw(
        &addr,
        &[
            Step::Send(packet::connect(4, "stalled")),
            Step::Packets(1),
            Step::Send(
                [
                    packet::publish_qos1_retained("status/stalled", b"kept", 1),
                    packet::disconnect(),
                ]
                .concat(),
            ),
        ],
        CLOSE_WAIT,
    );
    assert!(
        outcome.closed,
        "the broker ends the connection: {outcome:?}"
    );
    assert_eq!(
        outcome.packets(),
        [(packet::CONNACK, vec![0, 0])],
        "no PUBACK: the publish was still being stored when the connection ended"
    );
    assert!(disk.release_syncs() > 0, "storage was waiting on the disk");

    // Retained once its commit and the retained message's own are done, soon after.
    let deadline = Instant::now() + WAIT;
    for attempt in 1.. {
        let marker = format!("marker-{attempt}");
        let retained = retained_before(&addr, "status/marker", &marker);
        if !retained.is_empty() {
            assert_eq!(
                retained,
                [("status/stalled".to_owned(), "kept".to_owned(), true)]
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the retained message was never set"
        );
    }
    assert_eq!(mqtt::records(&broker, &data, "status.stalled", &[]), 1);
    drop(broker);
}

#[test]
fn a_will_is_published_when_its_client_dies_without_disconnect() {
    let data = DataDir::new();
    let broker = mqtt::start(&data);
    let addr = broker.mqtt_addr();
    mqtt::create_topics(&broker, &data, &["clients.c1.status"], &[]);
    let watcher = Paho::spawn(
        "sub.py",
        &client(
            addr,
            "5",
            &["--topic", "clients/+/status", "--qos", "1", "--count", "1"],
        ),
    );
    watcher.ready();
    let events = paho_ok(
        "will.py",
        &client(
            addr,
            "3.1.1",
            &[
                "--client-id",
                "c1",
                "--will-topic",
                "clients/c1/status",
                "--will-payload",
                "offline",
                "--will-qos",
                "1",
            ],
        ),
    );
    one(&events, "connected");
    let will = one(&watcher.succeed(WAIT), "message");
    assert_eq!(will["topic"], "clients/c1/status");
    assert_eq!(will["payload"], "offline");
    // The will is stored like any publish.
    assert_eq!(
        payloads(&quiver_sub(&broker, &data, "clients.c1.status", 1, &[])),
        ["offline"]
    );
}

#[test]
fn persistent_sessions_get_what_they_missed_and_clean_ones_do_not() {
    let data = DataDir::new();
    let broker = mqtt::start(&data);
    let addr = broker.mqtt_addr();
    mqtt::create_topics(&broker, &data, &["inbox.v311", "inbox.v5"], &[]);
    let cases: [(&str, &str, &[&str]); 2] = [
        ("3.1.1", "v311", &[]),
        ("5", "v5", &["--session-expiry", "300"]),
    ];
    for (protocol, version, expiry) in cases {
        let topic = format!("inbox/{version}");
        let publish = |prefix: &str, n: &str| {
            let sent = paho_ok(
                "pub.py",
                &client(
                    addr,
                    "3.1.1",
                    &[
                        "--topic", &topic, "--qos", "1", "--count", n, "--prefix", prefix,
                    ],
                ),
            );
            assert_eq!(acked(&sent).len(), n.parse::<usize>().unwrap());
        };

        // Persistent: subscribe at QoS 1 and leave; what comes meanwhile waits.
        let id = format!("persistent-{version}");
        let mut args = client(
            addr,
            protocol,
            &[
                "--client-id",
                &id,
                "--topic",
                &topic,
                "--qos",
                "1",
                "--persistent",
            ],
        );
        args.extend_from_slice(expiry);
        let mut leave = args.clone();
        leave.extend_from_slice(&["--count", "0"]);
        let first = paho_ok("sub.py", &leave);
        assert_eq!(one(&first, "connected")["session_present"], false);
        assert_eq!(one(&first, "ready")["granted"], serde_json::json!([1]));
        publish("missed", "5");
        let mut back = args.clone();
        back.extend_from_slice(&["--no-subscribe", "--count", "5"]);
        let again = paho_ok("sub.py", &back);
        assert_eq!(
            one(&again, "connected")["session_present"],
            true,
            "{protocol}: the session was kept"
        );
        let got = of(&again, "message");
        assert_eq!(event_payloads(&got), numbered("missed", 5), "{protocol}");
        assert!(got.iter().all(|m| m["qos"] == 1), "{got:?}");

        // Clean: nothing is kept for it; back, it gets only what comes after.
        let id = format!("clean-{version}");
        let args = client(
            addr,
            protocol,
            &["--client-id", &id, "--topic", &topic, "--qos", "1"],
        );
        let mut leave = args.clone();
        leave.extend_from_slice(&["--count", "0"]);
        paho_ok("sub.py", &leave);
        publish("gone", "5");
        let mut back = args.clone();
        back.extend_from_slice(&["--count", "1"]);
        let sub = Paho::spawn("sub.py", &back);
        assert_eq!(
            one(&sub.wait_events("connected", 1, WAIT), "connected")["session_present"],
            false
        );
        sub.ready();
        publish("after", "1");
        let got = of(&sub.succeed(WAIT), "message");
        assert_eq!(
            event_payloads(&got),
            ["after-0"],
            "{protocol}: nothing missed was kept"
        );
    }
}

#[test]
fn a_persistent_session_and_its_position_survive_kill_9() {
    let data = DataDir::new();
    let broker = mqtt::start(&data);
    mqtt::create_topics(&broker, &data, &["inbox.dev"], &[]);
    let args = [
        "--client-id",
        "survivor",
        "--topic",
        "inbox/dev",
        "--qos",
        "1",
        "--persistent",
    ];
    let mut leave = client(broker.mqtt_addr(), "3.1.1", &args);
    leave.extend_from_slice(&["--count", "0"]);
    paho_ok("sub.py", &leave);
    let broker = mqtt::restart(broker, &data, Stop::Kill, &[]);
    let sent = paho_ok(
        "pub.py",
        &client(
            broker.mqtt_addr(),
            "3.1.1",
            &[
                "--topic",
                "inbox/dev",
                "--qos",
                "1",
                "--count",
                "3",
                "--prefix",
                "while-away",
            ],
        ),
    );
    assert_eq!(acked(&sent).len(), 3);
    let mut back = client(broker.mqtt_addr(), "3.1.1", &args);
    back.extend_from_slice(&["--no-subscribe", "--count", "3"]);
    let again = paho_ok("sub.py", &back);
    assert_eq!(
        one(&again, "connected")["session_present"],
        true,
        "stored, and loaded"
    );
    assert_eq!(
        event_payloads(&of(&again, "message")),
        numbered("while-away", 3)
    );
}

#[test]
fn a_qos2_publish_sent_again_after_kill_9_is_stored_once() {
    let data = DataDir::new();
    let broker = mqtt::start(&data);
    mqtt::create_topics(&broker, &data, &["once"], &[]);
    // PUBLISH at QoS 2 in a persistent session, and go before PUBREL: the broker has
    // the record (PUBREC) and must not store it again when it comes back.
    let first = raw(
        broker.mqtt_addr(),
        &[
            Step::Send(packet::connect_persistent("exactly")),
            Step::Packets(1),
            Step::Send(packet::publish_qos2("once", b"only-once", 7, false)),
            Step::Packets(2),
        ],
        Duration::from_millis(200),
    );
    let packets = first.packets();
    assert_eq!(
        packets.get(1),
        Some(&(0x50, vec![0, 7])),
        "PUBREC 7: {packets:?}"
    );
    let broker = mqtt::restart(broker, &data, Stop::Kill, &[]);
    // Back: the same PUBLISH again (DUP), then PUBREL.
    let again = raw(
        broker.mqtt_addr(),
        &[
            Step::Send(packet::connect_persistent("exactly")),
            Step::Packets(1),
            Step::Send(packet::publish_qos2("once", b"only-once", 7, true)),
            Step::Packets(2),
            Step::Send(packet::pubrel(7)),
            Step::Packets(3),
            // A new PUBLISH reusing the released id is a new message.
            Step::Send(packet::publish_qos2("once", b"a-new-one", 7, false)),
            Step::Packets(4),
            Step::Send(packet::pubrel(7)),
            Step::Packets(5),
        ],
        Duration::from_millis(200),
    );
    let packets = again.packets();
    assert_eq!(
        packets,
        [
            (packet::CONNACK, vec![1, 0]),
            (0x50, vec![0, 7]),
            (0x70, vec![0, 7]),
            (0x50, vec![0, 7]),
            (0x70, vec![0, 7]),
        ],
        "session present, PUBREC, PUBCOMP, PUBREC, PUBCOMP"
    );
    let stored = payloads(&quiver_sub(&broker, &data, "once", 2, &[]));
    assert_eq!(
        stored,
        ["only-once", "a-new-one"],
        "the retry stored nothing"
    );
    assert_eq!(mqtt::records(&broker, &data, "once", &[]), 2);
}

#[test]
fn a_subscriber_that_does_not_acknowledge_gets_no_more_than_its_window() {
    use std::io::{Read, Write};
    let data = DataDir::new();
    let window = 5;
    let env = [("QUIVER_MQTT__RECEIVE_MAXIMUM", "5")];
    let broker = mqtt::launch(&data, &[], &env);
    mqtt::create_topics(&broker, &data, &["window"], &env);
    let mut socket = std::net::TcpStream::connect(broker.mqtt_addr()).unwrap();
    socket.set_read_timeout(Some(WAIT)).unwrap();
    let mut received = Vec::new();
    // Reads until `n` whole packets in all have come.
    let mut read_packets = |socket: &mut std::net::TcpStream, n: usize| {
        let mut chunk = [0u8; 4096];
        while packet::split(&received).len() < n {
            let read = socket
                .read(&mut chunk)
                .unwrap_or_else(|e| panic!("no answer in time ({e}); so far {received:02x?}"));
            assert!(read > 0, "the broker closed the connection");
            received.extend_from_slice(&chunk[..read]);
        }
        packet::split(&received)
    };
    socket.write_all(&packet::connect(4, "slow")).unwrap();
    // SUBSCRIBE `window` at QoS 1, packet id 1.
    socket
        .write_all(&[0x82, 11, 0, 1, 0, 6, b'w', b'i', b'n', b'd', b'o', b'w', 1])
        .unwrap();
    let answers = read_packets(&mut socket, 2);
    assert_eq!(answers[1], (0x90, vec![0, 1, 1]), "SUBACK, QoS 1 granted");
    let lines: String = (0..20).map(|i| format!("m{i}\n")).collect();
    mqtt::quiver_stdin(&broker, &data, &["pub", "window"], &env, Some(&lines));

    // Acknowledge only when the window is full: it must never hold more.
    let mut outstanding = std::collections::VecDeque::new();
    let mut payloads = Vec::new();
    let mut seen = 2;
    while payloads.len() < 20 {
        let packets = read_packets(&mut socket, seen + 1);
        for (first, body) in &packets[seen..] {
            assert_eq!(first & 0xF6, 0x32, "a QoS 1 PUBLISH: {first:#x}");
            let topic_len = usize::from(u16::from_be_bytes([body[0], body[1]]));
            let id = [body[2 + topic_len], body[3 + topic_len]];
            payloads.push(String::from_utf8_lossy(&body[4 + topic_len..]).into_owned());
            outstanding.push_back(id);
            assert!(
                outstanding.len() <= window,
                "{} deliveries unacknowledged, over the window of {window}",
                outstanding.len()
            );
        }
        seen = packets.len();
        if outstanding.len() == window || payloads.len() == 20 {
            let id = outstanding.pop_front().expect("one to acknowledge");
            socket.write_all(&[0x40, 2, id[0], id[1]]).unwrap();
        }
    }
    let expected: Vec<String> = (0..20).map(|i| format!("m{i}")).collect();
    assert_eq!(payloads, expected, "each once, in order");
}

#[test]
fn a_shared_subscription_splits_the_messages_between_its_members() {
    let data = DataDir::new();
    let broker = mqtt::start(&data);
    let addr = broker.mqtt_addr();
    mqtt::create_topics(&broker, &data, &["jobs.build"], &[]);
    let lines = quiver_tests::live::Lines::default();
    let workers: Vec<Paho> = ["worker-1", "worker-2"]
        .into_iter()
        .map(|id| {
            Paho::spawn_into(
                "sub.py",
                &client(
                    addr,
                    "5",
                    &[
                        "--client-id",
                        id,
                        "--topic",
                        "$share/workers/jobs/#",
                        "--qos",
                        "1",
                        "--timeout",
                        "60",
                    ],
                ),
                lines.clone(),
            )
        })
        .collect();
    mqtt::wait_events(&lines, "ready", 2, WAIT);
    let sent = paho_ok(
        "pub.py",
        &client(
            addr,
            "3.1.1",
            &[
                "--topic",
                "jobs/build",
                "--qos",
                "1",
                "--count",
                "100",
                "--inflight",
                "10",
            ],
        ),
    );
    assert_eq!(acked(&sent).len(), 100);

    mqtt::wait_events(&lines, "message", 100, WAIT);
    // The workers share their output lines: these are both workers' events.
    let got = of(&workers[0].events(), "message");
    let mut all = event_payloads(&got);
    assert!(distinct(&all), "no message went to both: {all:?}");
    all.sort();
    let mut want = numbered("msg", 100);
    want.sort();
    assert_eq!(all, want, "together they got every message");
    for id in ["worker-1", "worker-2"] {
        let share = got.iter().filter(|m| m["client"] == id).count();
        assert!(share > 0 && share < 100, "{id} got {share} of 100");
    }
    for worker in workers {
        worker.kill();
    }
}

#[test]
fn an_ingress_plugin_filters_mqtt_publishes() {
    let data = DataDir::new();
    let broker = mqtt::start(&data);
    let addr = broker.mqtt_addr();
    mqtt::create_topics(&broker, &data, &["readings"], &[]);
    let plugin = quiver_tests::example_plugin("json-filter");
    mqtt::quiver(
        &broker,
        &data,
        &[
            "plugin",
            "deploy",
            plugin.to_str().unwrap(),
            "--name",
            "json-filter",
        ],
        &[],
    );
    mqtt::quiver(
        &broker,
        &data,
        &[
            "plugin",
            "attach",
            "json-filter",
            "--topic",
            "readings",
            "--param",
            "where=temp > 30",
        ],
        &[],
    );
    let published = [
        r#"{"temp":25}"#,
        r#"{"temp":35}"#,
        r#"{"temp":12.5}"#,
        r#"{"temp":31.5}"#,
    ];
    for payload in published {
        // Dropped by the plugin or not, each is acknowledged.
        mosquitto_pub_ok(addr, &["-t", "readings", "-q", "1", "-m", payload]);
    }
    assert_eq!(mqtt::records(&broker, &data, "readings", &[]), 2);
    assert_eq!(
        payloads(&quiver_sub(&broker, &data, "readings", 2, &[])),
        [r#"{"temp":35}"#, r#"{"temp":31.5}"#]
    );
}

/// A token like `token` with its last character changed: right form, wrong secret.
fn forged(token: &str) -> String {
    let (head, last) = token.split_at(token.len() - 1);
    format!("{head}{}", if last == "0" { "1" } else { "0" })
}

#[test]
fn mqtt_clients_prove_a_principal_with_its_token_and_get_its_grants() {
    let data = DataDir::new();
    let ops = principal(&data, "ops", &["admin:>", "publish:>", "subscribe:>"]);
    let dev = principal(&data, "dev", &["publish:sensors.>", "subscribe:sensors.>"]);
    let broker = mqtt::start(&data);
    let addr = broker.mqtt_addr();
    let as_ops = [("QUIVER_TOKEN", ops.as_str())];
    mqtt::create_topics(&broker, &data, &["sensors.t", "billing.x"], &as_ops);
    let bad = forged(&dev);

    for protocol in ["3.1.1", "5"] {
        let with = |creds: &[&str]| -> std::process::Output {
            let mut args = client(addr, protocol, &["--topic", "sensors/t", "--qos", "1"]);
            args.extend_from_slice(creds);
            paho("pub.py", &args)
        };
        // The principal's name and token: in.
        let output = with(&["--username", "dev", "--password", &dev]);
        assert!(output.status.success(), "{protocol}: {:?}", events(&output));
        assert_eq!(acked(&events(&output)).len(), 1);

        // A wrong token: bad user name or password (3.1.1 code 4, MQTT 5 134).
        let output = with(&["--username", "dev", "--password", &bad]);
        let refused = one(&events(&output), "connect_failed");
        assert_eq!(output.status.code(), Some(3), "{refused}");
        if protocol == "5" {
            assert_eq!(refused["reason_code"], 134, "{refused}");
        } else {
            assert_eq!(refused["return_code"], 4, "{refused}");
        }

        // No credentials: not authorized (3.1.1 code 5, MQTT 5 135).
        let output = with(&[]);
        let refused = one(&events(&output), "connect_failed");
        assert_eq!(output.status.code(), Some(3), "{refused}");
        if protocol == "5" {
            assert_eq!(refused["reason_code"], 135, "{refused}");
        } else {
            assert_eq!(refused["return_code"], 5, "{refused}");
        }
    }

    // The grants apply: dev may publish under sensors. only (MQTT 5 PUBACK 135).
    let events = paho_ok(
        "pub.py",
        &client(
            addr,
            "5",
            &[
                "--topic",
                "billing/x",
                "--qos",
                "1",
                "--username",
                "dev",
                "--password",
                &dev,
            ],
        ),
    );
    assert_eq!(one(&events, "ack")["reason_code"], 135);
    assert_eq!(mqtt::records(&broker, &data, "billing.x", &as_ops), 0);
    assert_eq!(
        payloads(&quiver_sub(&broker, &data, "sensors.t", 2, &as_ops)),
        ["msg-0", "msg-0"],
        "one publish per protocol version"
    );
}

#[test]
fn mqtt_over_tls_maps_a_client_certificate_to_its_principal() {
    let data = DataDir::new();
    let certs = tempfile::tempdir().unwrap();
    let (ca, issued) =
        quiver_tests::client_certificates(certs.path(), &["gateway-7", "stranger-1"]);
    let [(gateway, gateway_key), (stranger, stranger_key)] = <[_; 2]>::try_from(issued).unwrap();
    let ops = principal(&data, "ops", &["admin:>", "publish:>", "subscribe:>"]);
    auth(
        &data,
        &[
            "principal",
            "add",
            "gw",
            "--grant",
            "publish:telemetry.>",
            "--cert-name",
            "gateway-7",
        ],
    );
    let broker = mqtt::launch(
        &data,
        &[
            "--mqtt-tls",
            "127.0.0.1:0",
            "--client-ca",
            ca.to_str().unwrap(),
        ],
        &[],
    );
    let as_ops = [("QUIVER_TOKEN", ops.as_str())];
    mqtt::create_topics(&broker, &data, &["telemetry.a"], &as_ops);
    let tls = broker.mqtt_tls_addr();
    let broker_cert = broker.cert().to_str().unwrap();
    let path = |p: &std::path::Path| p.to_str().unwrap().to_owned();
    let (gateway, gateway_key) = (path(&gateway), path(&gateway_key));
    let (stranger, stranger_key) = (path(&stranger), path(&stranger_key));

    let with_cert = |cert: Option<(&str, &str)>| {
        let mut args = client(
            tls,
            "5",
            &[
                "--topic",
                "telemetry/a",
                "--qos",
                "1",
                "--cafile",
                broker_cert,
            ],
        );
        if let Some((cert, key)) = cert {
            args.extend_from_slice(&["--cert", cert, "--key", key]);
        }
        paho("pub.py", &args)
    };
    let output = with_cert(Some((&gateway, &gateway_key)));
    assert!(output.status.success(), "{:?}", events(&output));
    assert_eq!(acked(&events(&output)), ["msg-0"]);

    // A certificate from the trusted CA whose name maps to no principal, and none at
    // all: not let in (refused in the CONNACK or at the TLS handshake).
    for cert in [Some((stranger.as_str(), stranger_key.as_str())), None] {
        let output = with_cert(cert);
        let events = events(&output);
        assert!(!output.status.success(), "{events:?}");
        assert!(of(&events, "connected").is_empty(), "{events:?}");
        assert_eq!(last(&events)["event"], "connect_failed", "{events:?}");
    }
    assert_eq!(mqtt::records(&broker, &data, "telemetry.a", &as_ops), 1);
}

#[test]
fn qos1_publishes_acknowledged_before_kill_9_are_all_there_after_it() {
    let data = DataDir::new();
    let broker = mqtt::start(&data);
    mqtt::create_topics(&broker, &data, &["durable.t"], &[]);
    let total = 20_000;
    let publisher = Paho::spawn(
        "pub.py",
        &client(
            broker.mqtt_addr(),
            "3.1.1",
            &[
                "--topic",
                "durable/t",
                "--qos",
                "1",
                "--count",
                &total.to_string(),
                "--inflight",
                "32",
                "--prefix",
                "acked",
            ],
        ),
    );
    publisher.wait_events("ack", 500, WAIT);
    let broker = mqtt::restart(broker, &data, Stop::Kill, &[]);
    let (status, events) = publisher.finish(WAIT);
    assert_eq!(status.code(), Some(2), "the publisher lost its broker");
    assert_eq!(last(&events)["event"], "disconnected");
    let acked = acked(&events);
    assert!(
        acked.len() >= 500 && acked.len() < total,
        "killed mid-stream: {} acked",
        acked.len()
    );

    let stored = mqtt::records(&broker, &data, "durable.t", &[]);
    let stored = payloads(&quiver_sub(
        &broker,
        &data,
        "durable.t",
        usize::try_from(stored).unwrap(),
        &[],
    ));
    assert!(distinct(&stored), "nothing stored twice");
    let seqs: Vec<usize> = stored
        .iter()
        .map(|p| p.strip_prefix("acked-").unwrap().parse().unwrap())
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "in publishing order");
    let stored: std::collections::HashSet<&String> = stored.iter().collect();
    let lost: Vec<&String> = acked.iter().filter(|p| !stored.contains(p)).collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged publishes lost, first {:?}",
        lost.len(),
        acked.len(),
        lost.first()
    );
}

/// A broker for the bad-input tests, with topic `health` and a mosquitto_sub on it.
fn watched(data: &DataDir, env: quiver_tests::Env<'_>) -> (Broker, MosquittoSub) {
    let broker = mqtt::launch(data, &[], env);
    mqtt::create_topics(&broker, data, &["health"], &[]);
    let watcher = MosquittoSub::start(broker.mqtt_addr(), &["-t", "health", "-q", "1", "-v"]);
    (broker, watcher)
}

/// Publishes `check-N` to `health` and sees the watcher get it (its `n`th message) on
/// its first connection: the broker still serves its other clients.
fn still_serving(broker: &Broker, watcher: &MosquittoSub, n: usize) {
    let payload = format!("check-{n}");
    mosquitto_pub_ok(
        broker.mqtt_addr(),
        &["-t", "health", "-q", "1", "-m", &payload],
    );
    let got = watcher.wait_for(n, WAIT);
    assert_eq!(got.last().unwrap(), &format!("health {payload}"), "{got:?}");
    assert_eq!(got.len(), n, "nothing else reached the watcher: {got:?}");
    assert_eq!(watcher.connects(), 1, "the watcher kept its connection");
}

fn assert_closed(outcome: &RawOutcome, what: &str) {
    assert!(
        outcome.closed,
        "{what}: the broker closed the connection within {CLOSE_WAIT:?} ({outcome:?})"
    );
}

#[test]
fn garbage_and_a_publish_before_connect_close_only_their_connection() {
    let data = DataDir::new();
    let (broker, watcher) = watched(&data, &[]);
    let addr = broker.mqtt_addr();
    let cases: [(&str, Vec<u8>); 3] = [
        // A remaining length longer than 4 bytes.
        (
            "a malformed length",
            vec![0x10, 0xff, 0xff, 0xff, 0xff, 0xff],
        ),
        // Packet type 0 is reserved.
        ("a reserved packet type", vec![0x00, 0x00]),
        // A well-formed PUBLISH, but before CONNECT: dropped, never stored.
        (
            "a publish before connect",
            packet::publish("health", b"sneaked-in", false),
        ),
    ];
    for (n, (what, bytes)) in cases.into_iter().enumerate() {
        let outcome = raw(addr, &[Step::Send(bytes)], CLOSE_WAIT);
        assert_closed(&outcome, what);
        assert!(
            outcome
                .packets()
                .iter()
                .all(|(first, _)| *first != packet::CONNACK),
            "{what}: no CONNACK ({outcome:?})"
        );
        still_serving(&broker, &watcher, n + 1);
    }
    assert_eq!(mqtt::records(&broker, &data, "health", &[]), 3);
}

#[test]
fn a_connection_without_connect_is_closed_after_the_connect_timeout() {
    let data = DataDir::new();
    let (broker, watcher) = watched(&data, &[("QUIVER_MQTT__CONNECT_TIMEOUT", "500ms")]);
    let outcome = raw(broker.mqtt_addr(), &[], CLOSE_WAIT);
    assert_closed(&outcome, "a connection that sends nothing");
    assert!(outcome.received.is_empty(), "{outcome:?}");
    assert!(
        outcome.after >= Duration::from_millis(400),
        "not before the connect timeout: {outcome:?}"
    );
    // The watcher, connected for longer than that, is not affected.
    still_serving(&broker, &watcher, 1);
}

#[test]
fn a_client_silent_past_its_keep_alive_is_disconnected() {
    let data = DataDir::new();
    let (broker, watcher) = watched(&data, &[]);
    // MQTT 5, keep-alive 1 s, then nothing: no PINGREQ, no packet at all.
    let outcome = raw(
        broker.mqtt_addr(),
        &[
            Step::Send(packet::connect_keeping_alive(5, "quiet", 1)),
            Step::Packets(2),
        ],
        CLOSE_WAIT,
    );
    assert_closed(&outcome, "a client past one and a half keep-alives");
    let packets = outcome.packets();
    assert_eq!(packets[0].0, packet::CONNACK, "{packets:?}");
    let (first, body) = &packets[1];
    assert_eq!(*first, packet::DISCONNECT, "{packets:?}");
    assert_eq!(body[0], 0x8D, "reason: keep-alive timeout");
    still_serving(&broker, &watcher, 1);
}

#[test]
fn an_oversized_packet_closes_its_connection() {
    let data = DataDir::new();
    let (broker, watcher) = watched(&data, &[("QUIVER_MQTT__MAX_PACKET_SIZE", "1024")]);
    let addr = broker.mqtt_addr();
    let big = vec![b'x'; 2000];
    for (level, v5) in [(4, false), (5, true)] {
        let outcome = raw(
            addr,
            &[
                Step::Send(packet::connect(level, &format!("big-{level}"))),
                Step::Packets(1),
                Step::Send(packet::publish("health", &big, v5)),
            ],
            CLOSE_WAIT,
        );
        assert_closed(&outcome, "a packet over max_packet_size");
        let packets = outcome.packets();
        let (first, body) = packets.first().expect("a CONNACK first");
        assert_eq!(*first, packet::CONNACK, "{outcome:?}");
        assert_eq!(body.get(1), Some(&0), "accepted: {outcome:?}");
        // MQTT 5 may say why first: DISCONNECT 149, packet too large.
        for (first, body) in &packets[1..] {
            assert_eq!(*first, packet::DISCONNECT, "{outcome:?}");
            assert!(v5, "3.1.1 has no server DISCONNECT: {outcome:?}");
            assert_eq!(body.first(), Some(&149), "{outcome:?}");
        }
        still_serving(&broker, &watcher, usize::from(level - 3));
    }
    // A packet within the limit is fine.
    let fits = "y".repeat(900);
    mosquitto_pub_ok(addr, &["-t", "health", "-q", "1", "-m", &fits]);
    let got = watcher.wait_for(3, WAIT);
    assert_eq!(got[2], format!("health {fits}"));
    // Nothing of the oversized ones was stored.
    assert_eq!(mqtt::records(&broker, &data, "health", &[]), 3);
}

#[test]
fn an_unknown_protocol_level_is_refused_with_connack_1() {
    let data = DataDir::new();
    let (broker, watcher) = watched(&data, &[]);
    let outcome = raw(
        broker.mqtt_addr(),
        &[Step::Send(packet::connect(7, "from-the-future"))],
        CLOSE_WAIT,
    );
    assert_closed(&outcome, "a CONNECT with protocol level 7");
    // A 3.1.1 CONNACK: session present 0, return code 1 (unacceptable protocol version).
    assert_eq!(outcome.received, [0x20, 0x02, 0x00, 0x01], "{outcome:?}");
    still_serving(&broker, &watcher, 1);
}

#[test]
fn mosquitto_pub_sees_refusals_too() {
    // The third-party client's view of an auth failure: it exits non-zero and says so.
    let data = DataDir::new();
    let dev = principal(&data, "dev", &["publish:sensors.>"]);
    let broker = mqtt::start(&data);
    let addr = broker.mqtt_addr();
    let output = mosquitto_pub(addr, &["-t", "sensors/t", "-q", "1", "-m", "x"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr).to_lowercase();
    assert!(stderr.contains("not authori"), "{stderr}");
    let output = mosquitto_pub(
        addr,
        &[
            "-t",
            "sensors/t",
            "-q",
            "1",
            "-m",
            "x",
            "-u",
            "dev",
            "-P",
            &forged(&dev),
        ],
    );
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr).to_lowercase();
    assert!(stderr.contains("bad user name or password"), "{stderr}");
}
