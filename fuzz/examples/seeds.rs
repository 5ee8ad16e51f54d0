//! Writes the seed corpora, `corpus/<target>/seed-*`, from real encoded frames,
//! batches and names: `cargo run --manifest-path fuzz/Cargo.toml --example seeds`.
//! Run it again when the protocol changes; the fuzzer takes it from there.

use std::fs;
use std::path::Path;

use bytes::{BufMut, BytesMut};
use quiver_protocol::frame::{self, LENGTH_PREFIX_LEN};
use quiver_protocol::record::encode_batch;
use quiver_protocol::*;
use serde::Serialize;

fn publish() -> NewRecord {
    NewRecord::new(r#"{"probe":7,"celsius":21.5}"#)
        .with_key("probe-7")
        .with_header("unit", "C")
}

fn request(id: u64, op: Op) -> ClientFrame {
    ClientFrame::Request(Request { id, op })
}

fn client_frames() -> Vec<(&'static str, ClientFrame)> {
    vec![
        (
            "hello",
            ClientFrame::Hello(ClientHello {
                version: PROTOCOL_VERSION,
                client: "quiver-cli/0.1.0".into(),
                token: Some("qvt_0123456789abcdef".into()),
            }),
        ),
        (
            "create-topic",
            request(
                1,
                Op::CreateTopic {
                    name: "sensors.eu.temp".into(),
                    config: TopicConfig {
                        retention: Retention {
                            max_age_ms: Some(86_400_000),
                            max_bytes: Some(1 << 30),
                            max_records: None,
                        },
                        dead_letter: None,
                        durability: Durability::Batched { interval_ms: 50 },
                    },
                },
            ),
        ),
        (
            "publish",
            request(
                2,
                Op::Publish {
                    topic: "sensors.eu.temp".into(),
                    records: vec![publish(), NewRecord::new("19.0")],
                    id: Some(PublishId {
                        producer: 0x5eed,
                        sequence: 3,
                    }),
                },
            ),
        ),
        (
            "attach-plugin",
            request(
                3,
                Op::AttachPlugin {
                    topic: "app.logs".into(),
                    stage: Stage::new("json-filter")
                        .param("where", "level >= warn")
                        .on_error(OnError::FailOpen),
                },
            ),
        ),
        (
            "create-group",
            request(
                4,
                Op::CreateGroup {
                    name: "workers".into(),
                    settings: GroupSettings::new("jobs.>"),
                },
            ),
        ),
        (
            "request",
            request(
                5,
                Op::Request {
                    topic: "rpc.upper".into(),
                    record: NewRecord::new("hello"),
                    timeout_ms: 2000,
                },
            ),
        ),
        (
            "subscribe",
            ClientFrame::Subscribe(Subscribe {
                pattern: "sensors.*.temp".into(),
                from: StartAt::Timestamp(1_700_000_000_000),
                credit: 256,
                pipeline: vec![Stage::new("template").param("name", "seen-by")],
            }),
        ),
        ("credit", ClientFrame::Credit(64)),
        (
            "forward-batch",
            request(
                6,
                Op::Forward(Forward {
                    topic: "edge1.sensors.eu.temp".into(),
                    origin: Origin {
                        broker: 0x0123_4567_89ab_cdef_0123_4567_89ab_cdef,
                        topic: "sensors.eu.temp".into(),
                        topic_id: 7,
                    },
                    from: 40,
                    next: 42,
                    records: ForwardedRecords::Batch {
                        base_offset: 40,
                        batch: encode_batch(
                            1_700_000_000_000,
                            &[publish(), NewRecord::new("19.0")],
                        ),
                    },
                }),
            ),
        ),
        (
            "forward-listed",
            request(
                7,
                Op::Forward(Forward {
                    topic: "edge1.sensors.eu.temp".into(),
                    origin: Origin {
                        broker: 1,
                        topic: "sensors.eu.temp".into(),
                        topic_id: 7,
                    },
                    from: 42,
                    next: 45,
                    records: ForwardedRecords::Listed(vec![Delivered {
                        offset: 44,
                        timestamp: 1_700_000_000_000,
                        record: publish().with_header("quiver-origin-broker", "00"),
                    }]),
                }),
            ),
        ),
        (
            "join",
            ClientFrame::Join(Join {
                group: "workers".into(),
                prefetch: 10,
            }),
        ),
        (
            "settle",
            ClientFrame::Settle(
                [
                    Settle::Ack,
                    Settle::Nack { delay_ms: 5000 },
                    Settle::Term {
                        reason: "bad input".into(),
                    },
                    Settle::InProgress,
                ]
                .into_iter()
                .zip(0..)
                .map(|(action, offset)| Settlement {
                    topic: "jobs".into(),
                    offset,
                    action,
                })
                .collect(),
            ),
        ),
        (
            "settle-runs",
            ClientFrame::SettleRuns(vec![TopicSettlements {
                topic: "jobs".into(),
                acks: vec![
                    AckRun {
                        first: 0,
                        count: 256,
                    },
                    AckRun {
                        first: 300,
                        count: 1,
                    },
                ],
                others: vec![RecordSettle {
                    offset: 257,
                    action: Settle::Nack { delay_ms: 5000 },
                }],
            }]),
        ),
        (
            "publish-across",
            request(
                12,
                Op::PublishAcross {
                    runs: ["device.1", "device.2", "device.1"]
                        .into_iter()
                        .map(|topic| TopicRun {
                            topic: topic.into(),
                            records: vec![publish()],
                        })
                        .collect(),
                    first_id: PublishId {
                        producer: 0x5eed,
                        sequence: 40,
                    },
                },
            ),
        ),
    ]
}

fn server_frames() -> Vec<(&'static str, ServerFrame)> {
    let reply = |id, result| ServerFrame::Reply(Reply { id, result });
    vec![
        (
            "hello",
            ServerFrame::Hello(ServerHello {
                version: PROTOCOL_VERSION,
                server: "quiver/0.1.0".into(),
                limits: Limits {
                    max_frame_len: frame::DEFAULT_MAX_FRAME_LEN as u64,
                    max_record_size: 1 << 20,
                    max_batch_records: 10_000,
                },
                principal: Some("alice".into()),
            }),
        ),
        (
            "published",
            reply(
                2,
                Ok(OpReply::Published(Receipt {
                    base_offset: 41,
                    count: 1,
                    routed: vec![Placement {
                        topic: "sensors.all".into(),
                        base_offset: 7,
                        count: 1,
                    }],
                    dead_letter: None,
                    dropped: 1,
                })),
            ),
        ),
        ("response", reply(5, Ok(OpReply::Response(publish())))),
        (
            "refused",
            reply(
                1,
                Err(WireError::new(ErrorCode::TopicNotFound, "no topic `x`")),
            ),
        ),
        ("subscribed", ServerFrame::Subscribed),
        (
            "records",
            ServerFrame::Records(Records {
                topic: "sensors.eu.temp".into(),
                base_offset: 42,
                batch: encode_batch(1_700_000_000_000, &[publish(), NewRecord::new("x")]),
            }),
        ),
        (
            "error",
            ServerFrame::Error(WireError::new(ErrorCode::FrameTooLarge, "too large")),
        ),
        (
            "processed",
            ServerFrame::Processed(Processed {
                topic: "app.logs".into(),
                records: vec![Delivered {
                    offset: 3,
                    timestamp: 1_700_000_000_000,
                    record: publish(),
                }],
            }),
        ),
        ("joined", ServerFrame::Joined),
        (
            "assigned",
            ServerFrame::Assigned(Assigned {
                topic: "jobs".into(),
                records: vec![AssignedRecord {
                    offset: 5,
                    timestamp: 1_700_000_000_000,
                    deliveries: 2,
                    record: NewRecord::new("5"),
                }],
            }),
        ),
    ]
}

fn body<M: Serialize>(msg: &M) -> Vec<u8> {
    let mut buf = BytesMut::new();
    frame::encode(msg, &mut buf).expect("seed messages encode");
    buf[LENGTH_PREFIX_LEN..].to_vec()
}

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    fs::create_dir_all(&dir).expect("the corpus folder can be made");
    fs::write(dir.join(format!("seed-{name}")), bytes).expect("the seed can be written");
}

fn main() {
    let clients = client_frames();
    for (name, msg) in &clients {
        write("client_frame", name, &body(msg));
    }
    for (name, msg) in server_frames() {
        write("server_frame", name, &body(&msg));
    }

    let records = [publish(), NewRecord::new(""), NewRecord::new("19.0")];
    for (name, base) in [("from-zero", 0u64), ("high-offset", 1 << 40)] {
        let mut input = base.to_le_bytes().to_vec();
        input.extend_from_slice(&encode_batch(1_700_000_000_000, &records));
        write("record_batch", name, &input);
    }

    // frame_decoder: limit byte, piece sizes, then frames as on the wire.
    let mut stream = BytesMut::new();
    for (_, msg) in &clients[..3] {
        frame::encode(msg, &mut stream).expect("seed messages encode");
    }
    let mut input = vec![64, 3, 1, 7, 200];
    input.extend_from_slice(&stream);
    write("frame_decoder", "valid", &input);
    let mut bad = BytesMut::new();
    bad.put_u32(300); // past the limit of 64 + 16
    bad.put_bytes(b'x', 300);
    bad.put_u32(2);
    bad.put_slice(&[0xff, 0xff]); // not a message
    frame::encode(&ClientFrame::Credit(1), &mut bad).expect("seed messages encode");
    bad.put_u32(1000); // cut short
    let mut input = vec![64, 2, 13, 255];
    input.extend_from_slice(&bad);
    write("frame_decoder", "bad", &input);

    for (name, text) in [
        ("wildcard", "sensors.*.temp\nsensors.>\nsensors.eu.temp"),
        ("rest", ">\n*.*\na.b"),
        ("invalid", "a.>.b\nsensors..temp\ncaf\u{e9}"),
    ] {
        write("names", name, text.as_bytes());
    }
}
