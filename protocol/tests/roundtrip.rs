//! Property tests: every message round-trips through a frame, and arbitrary bytes never
//! panic the decoder.

#![allow(clippy::unwrap_used)] // in tests a failed unwrap is a failed test

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use quiver_protocol::frame::{self, FrameDecoder};
use quiver_protocol::*;

#[path = "support/strategies.rs"]
mod strategies;
use strategies::*;

fn round_trip<M>(msg: &M) -> M
where
    M: serde::Serialize + serde::de::DeserializeOwned,
{
    let mut buf = BytesMut::new();
    frame::encode(msg, &mut buf).unwrap();
    let mut decoder = FrameDecoder::new(frame::DEFAULT_MAX_FRAME_LEN);
    let decoded = decoder.decode::<M>(&mut buf).unwrap().unwrap();
    assert!(buf.is_empty(), "the frame was consumed whole");
    decoded
}

proptest! {
    #[test]
    fn client_frames_round_trip(msg in client_frame()) {
        prop_assert_eq!(round_trip(&msg), msg);
    }

    #[test]
    fn server_frames_round_trip(msg in server_frame()) {
        prop_assert_eq!(round_trip(&msg), msg);
    }

    #[test]
    fn records_in_a_batch_round_trip(records in proptest::collection::vec(record(), 0..8), base in 0u64..1 << 40, ts in any::<u64>()) {
        let batch = record::encode_batch(ts, &records);
        let decoded = record::decode_batch(base, &batch).unwrap();
        prop_assert_eq!(decoded.len(), records.len());
        for (i, (got, want)) in decoded.into_iter().zip(records).enumerate() {
            prop_assert_eq!(got.offset, base + i as u64);
            prop_assert_eq!(got.timestamp, ts);
            prop_assert_eq!(got.key, want.key);
            prop_assert_eq!(got.headers, want.headers);
            prop_assert_eq!(got.payload, want.payload);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_decoder(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..8)) {
        let mut client = FrameDecoder::new(256);
        let mut server = FrameDecoder::new(256);
        let mut a = BytesMut::new();
        let mut b = BytesMut::new();
        for chunk in chunks {
            a.extend_from_slice(&chunk);
            b.extend_from_slice(&chunk);
            // Drain every complete frame; errors are values, never panics.
            while let Ok(Some(_)) | Err(_) = server.decode::<ClientFrame>(&mut a) {}
            while let Ok(Some(_)) | Err(_) = client.decode::<ServerFrame>(&mut b) {}
        }
    }

    #[test]
    fn arbitrary_bodies_never_panic(body in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = frame::decode_body::<ClientFrame>(&body);
        if let Ok(ServerFrame::Records(records)) = frame::decode_body::<ServerFrame>(&body) {
            let _ = record::decode_batch(records.base_offset, &records.batch);
        }
    }
}

#[test]
fn unknown_error_codes_survive_decoding() {
    let msg = ServerFrame::Error(WireError::new(ErrorCode::Unknown(777), "from the future"));
    assert_eq!(round_trip(&msg), msg);
}

fn body<M: serde::Serialize>(msg: &M) -> Vec<u8> {
    let mut buf = BytesMut::new();
    frame::encode(msg, &mut buf).unwrap();
    buf[frame::LENGTH_PREFIX_LEN..].to_vec()
}

/// docs/protocol.md gives this frame byte by byte.
#[test]
fn the_documented_hello_frame_encodes_as_written() {
    let hello = ClientFrame::Hello(ClientHello {
        version: 2,
        client: "a".into(),
        token: None,
    });
    let mut buf = BytesMut::new();
    frame::encode(&hello, &mut buf).unwrap();
    assert_eq!(&buf[..], &[0, 0, 0, 5, 0x00, 0x02, 0x01, b'a', 0x00]);
}

/// The variant indexes in docs/protocol.md's tables.
#[test]
fn variant_indexes_match_the_documentation() {
    let name = String::new;
    let request = |op| ClientFrame::Request(Request { id: 0, op });
    let hello = ClientHello {
        version: 1,
        client: name(),
        token: None,
    };
    let subscribe = Subscribe {
        pattern: name(),
        from: StartAt::Earliest,
        credit: 0,
        pipeline: vec![],
    };
    let client = [
        (ClientFrame::Hello(hello), 0),
        (request(Op::ListTopics), 1),
        (ClientFrame::Subscribe(subscribe.clone()), 2),
        (ClientFrame::Credit(0), 3),
        (
            ClientFrame::Join(Join {
                group: name(),
                prefetch: 0,
            }),
            4,
        ),
        (ClientFrame::Settle(vec![]), 5),
        (
            ClientFrame::SubscribeAt(SubscribeAt {
                subscribe,
                positions: vec![],
            }),
            6,
        ),
        (ClientFrame::SettleRuns(vec![]), 7),
    ];
    for (frame, want) in client {
        assert_eq!(body(&frame)[0], want);
    }
    // Request: variant, id (varint 0), then the op's variant.
    let stage = Stage {
        plugin: name(),
        params: vec![],
        on_error: OnError::FailOpen,
        attached_by: None,
    };
    let settings = GroupSettings {
        pattern: name(),
        from: StartAt::Earliest,
        ack_timeout_ms: 0,
        max_deliveries: 0,
        dead_letter: None,
        prefetch: 0,
    };
    let ops = [
        (
            Op::CreateTopic {
                name: name(),
                config: TopicConfig::default(),
            },
            0,
        ),
        (Op::DeleteTopic { name: name() }, 1),
        (Op::DescribeTopic { name: name() }, 2),
        (Op::ListTopics, 3),
        (
            Op::Publish {
                topic: name(),
                records: vec![],
                id: None,
            },
            4,
        ),
        (
            Op::DeployPlugin {
                name: name(),
                version: None,
                wasm: Bytes::new(),
            },
            5,
        ),
        (
            Op::UpgradePlugin {
                name: name(),
                version: None,
                wasm: Bytes::new(),
            },
            6,
        ),
        (Op::RemovePlugin { name: name() }, 7),
        (Op::ListPlugins, 8),
        (Op::PluginStatus { name: name() }, 9),
        (
            Op::AttachPlugin {
                topic: name(),
                stage,
            },
            10,
        ),
        (
            Op::DetachPlugin {
                topic: name(),
                plugin: name(),
            },
            11,
        ),
        (
            Op::CreateGroup {
                name: name(),
                settings: settings.clone(),
            },
            12,
        ),
        (Op::DeleteGroup { name: name() }, 13),
        (Op::DescribeGroup { name: name() }, 14),
        (Op::ListGroups, 15),
        (
            Op::ResetGroup {
                name: name(),
                to: StartAt::Earliest,
            },
            16,
        ),
        (
            Op::Request {
                topic: name(),
                record: NewRecord::default(),
                timeout_ms: 0,
            },
            17,
        ),
        (
            Op::Reply {
                to: name(),
                record: NewRecord::default(),
            },
            18,
        ),
        (
            Op::PublishEach {
                topic: name(),
                records: vec![],
                first_id: PublishId {
                    producer: 0,
                    sequence: 0,
                },
            },
            19,
        ),
        (
            Op::Forward(Forward {
                topic: name(),
                origin: Origin {
                    broker: 0,
                    topic: name(),
                    topic_id: 0,
                },
                from: 0,
                next: 0,
                records: ForwardedRecords::none(),
            }),
            20,
        ),
        (Op::DeleteLink { name: name() }, 22),
        (Op::DescribeLink { name: name() }, 23),
        (Op::ListLinks, 24),
        (Op::PauseLink { name: name() }, 25),
        (Op::ResumeLink { name: name() }, 26),
        (Op::DescribeBroker, 27),
        (
            Op::PublishAcross {
                runs: vec![],
                first_id: PublishId {
                    producer: 0,
                    sequence: 0,
                },
            },
            28,
        ),
        (
            Op::AlterTopic {
                name: name(),
                retention: None,
                durability: None,
            },
            29,
        ),
        (
            Op::PurgeTopic {
                name: name(),
                before: PurgeBefore::All,
            },
            30,
        ),
        (Op::DescribeServer, 31),
        (Op::LiftQuarantine { name: name() }, 32),
        (
            Op::AttachSized {
                topic: name(),
                stage: Stage::new("p"),
                limits: StageLimits::default(),
            },
            33,
        ),
        (Op::PluginSandboxes { name: name() }, 34),
        (
            Op::PublishThrough {
                topic: name(),
                records: vec![],
                id: None,
                plugin: name(),
                version: name(),
            },
            35,
        ),
        (
            Op::ShadowPlugin {
                name: name(),
                version: None,
                wasm: Bytes::new(),
            },
            36,
        ),
        (Op::DiffPlugin { name: name() }, 37),
        (Op::PromotePlugin { name: name() }, 38),
        (Op::RollbackPlugin { name: name() }, 39),
        (
            Op::CanaryPlugin {
                name: name(),
                version: None,
                wasm: Bytes::new(),
                percent: 10,
            },
            40,
        ),
    ];
    for (op, want) in ops {
        assert_eq!(body(&request(op))[2], want);
    }
    let starts = [
        (StartAt::Earliest, 0),
        (StartAt::Latest, 1),
        (StartAt::Offset(0), 2),
        (StartAt::Timestamp(0), 3),
    ];
    for (start, want) in starts {
        assert_eq!(body(&start)[0], want);
    }
    let settles = [
        (Settle::Ack, 0),
        (Settle::Nack { delay_ms: 0 }, 1),
        (Settle::Term { reason: name() }, 2),
        (Settle::InProgress, 3),
    ];
    for (settle, want) in settles {
        assert_eq!(body(&settle)[0], want);
    }
    assert_eq!(body(&OnError::FailOpen)[0], 0);
    assert_eq!(body(&OnError::FailClosed)[0], 1);

    let reply = |result| ServerFrame::Reply(Reply { id: 0, result });
    let limits = Limits {
        max_frame_len: 0,
        max_record_size: 0,
        max_batch_records: 0,
    };
    let server_hello = ServerHello {
        version: 1,
        server: name(),
        limits,
        principal: None,
    };
    let records = Records {
        topic: name(),
        base_offset: 0,
        batch: Bytes::new(),
    };
    let processed = Processed {
        topic: name(),
        records: vec![],
    };
    let server = [
        (ServerFrame::Hello(server_hello), 0),
        (reply(Ok(OpReply::Deleted)), 1),
        (ServerFrame::Subscribed, 2),
        (ServerFrame::Records(records), 3),
        (
            ServerFrame::Error(WireError::new(ErrorCode::Internal, "")),
            4,
        ),
        (ServerFrame::Processed(processed), 5),
        (ServerFrame::Joined, 6),
        (
            ServerFrame::Assigned(Assigned {
                topic: name(),
                records: vec![],
            }),
            7,
        ),
        (ServerFrame::Positions(vec![]), 8),
    ];
    for (frame, want) in server {
        assert_eq!(body(&frame)[0], want);
    }
    // Reply: variant, id, Result tag (0 = Ok), then the reply's variant.
    let info = TopicInfo {
        name: name(),
        retention: Retention::default(),
        durability: Durability::Fsync,
        created_ms: 0,
        records: 0,
        bytes: 0,
        first_offset: 0,
        next_offset: 0,
        dead_letter: name(),
        pipeline: vec![],
    };
    let plugin = PluginInfo {
        name: name(),
        version: name(),
        sha256: name(),
        size: 0,
        deployed_ms: 0,
        versions: vec![],
        cached: false,
        topics: vec![],
    };
    let receipt = Receipt {
        base_offset: 0,
        count: 0,
        routed: vec![],
        dead_letter: None,
        dropped: 0,
    };
    let status = PluginStatus {
        info: plugin.clone(),
        attachments: vec![],
    };
    let replies = [
        (OpReply::Topic(info), 0),
        (OpReply::Topics(vec![]), 1),
        (OpReply::Deleted, 2),
        (OpReply::Published(receipt), 3),
        (OpReply::Plugin(plugin), 4),
        (OpReply::Plugins(vec![]), 5),
        (OpReply::PluginStatus(status), 6),
        (
            OpReply::Group(GroupInfo {
                name: name(),
                settings,
                created_ms: 0,
                members: 0,
                topics: vec![],
            }),
            7,
        ),
        (OpReply::Groups(vec![]), 8),
        (OpReply::Response(NewRecord::default()), 9),
        (OpReply::Replied, 10),
        (OpReply::PublishedEach(vec![]), 11),
        (
            OpReply::Forwarded(Forwarded {
                broker: 0,
                next: None,
                receipt: None,
            }),
            12,
        ),
        (OpReply::Links(vec![]), 14),
    ];
    for (op_reply, want) in replies {
        let encoded = body(&reply(Ok(op_reply)));
        assert_eq!((encoded[2], encoded[3]), (0, want));
    }
    // An error reply: Result tag 1, then the code as a varint.
    let refused = body(&reply(Err(WireError::new(ErrorCode::TopicNotFound, "x"))));
    assert_eq!(&refused[..], &[1, 0, 1, 12, 1, b'x']);
}
