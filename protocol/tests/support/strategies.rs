//! Proptest strategies for every protocol message, shared by the round-trip property
//! tests and the check of docs/protocol.md's tables (each includes this file by path).

use bytes::Bytes;
use proptest::prelude::*;
use quiver_protocol::*;

pub(crate) fn bytes(max: usize) -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), 0..max).prop_map(Bytes::from)
}

pub(crate) fn record() -> impl Strategy<Value = NewRecord> {
    (
        proptest::option::of(bytes(16)),
        proptest::collection::vec(
            (".{0,8}", bytes(8)).prop_map(|(name, value)| Header { name, value }),
            0..3,
        ),
        bytes(64),
    )
        .prop_map(|(key, headers, payload)| NewRecord {
            key,
            headers,
            payload,
        })
}

pub(crate) fn retention() -> impl Strategy<Value = Retention> {
    (
        proptest::option::of(any::<u64>()),
        proptest::option::of(any::<u64>()),
        proptest::option::of(any::<u64>()),
    )
        .prop_map(|(max_age_ms, max_bytes, max_records)| Retention {
            max_age_ms,
            max_bytes,
            max_records,
        })
}

pub(crate) fn durability() -> impl Strategy<Value = Durability> {
    proptest::option::of(any::<u32>()).prop_map(|interval| match interval {
        None => Durability::Fsync,
        Some(interval_ms) => Durability::Batched { interval_ms },
    })
}

pub(crate) fn wire_error() -> impl Strategy<Value = WireError> {
    (any::<u16>(), ".{0,16}").prop_map(|(code, message)| WireError::new(code.into(), message))
}

pub(crate) fn start_at() -> impl Strategy<Value = StartAt> {
    prop_oneof![
        Just(StartAt::Earliest),
        Just(StartAt::Latest),
        any::<u64>().prop_map(StartAt::Offset),
        any::<u64>().prop_map(StartAt::Timestamp),
    ]
}

pub(crate) fn stage() -> impl Strategy<Value = Stage> {
    (
        ".{0,8}",
        proptest::collection::vec((".{0,4}", ".{0,4}"), 0..3),
        any::<bool>(),
        proptest::option::of(".{0,8}"),
    )
        .prop_map(|(plugin, params, open, attached_by)| Stage {
            plugin,
            params,
            on_error: if open {
                OnError::FailOpen
            } else {
                OnError::FailClosed
            },
            attached_by,
        })
}

pub(crate) fn topic_info() -> impl Strategy<Value = TopicInfo> {
    (
        ".{0,12}",
        (retention(), durability()),
        any::<[u64; 5]>(),
        ".{0,12}",
        proptest::collection::vec(stage(), 0..3),
    )
        .prop_map(
            |(name, (retention, durability), n, dead_letter, pipeline)| TopicInfo {
                name,
                retention,
                durability,
                created_ms: n[0],
                records: n[1],
                bytes: n[2],
                first_offset: n[3],
                next_offset: n[4],
                dead_letter,
                pipeline,
            },
        )
}

pub(crate) fn plugin_info() -> impl Strategy<Value = PluginInfo> {
    (
        (".{0,8}", ".{0,4}", "[0-9a-f]{0,64}"),
        any::<(u64, u64, bool)>(),
        proptest::collection::vec(".{0,4}", 0..3),
        proptest::collection::vec(".{0,8}", 0..3),
    )
        .prop_map(
            |((name, version, sha256), (size, deployed_ms, cached), versions, topics)| PluginInfo {
                name,
                version,
                sha256,
                size,
                deployed_ms,
                versions,
                cached,
                topics,
            },
        )
}

pub(crate) fn attachment() -> impl Strategy<Value = AttachmentStatus> {
    (
        (".{0,12}", ".{0,4}", any::<bool>()),
        any::<[u64; 6]>(),
        proptest::option::of(any::<u64>()),
        proptest::option::of(".{0,12}"),
    )
        .prop_map(
            |((target, version, open), n, quarantined_until_ms, last_error)| AttachmentStatus {
                target,
                version,
                on_error: if open {
                    OnError::FailOpen
                } else {
                    OnError::FailClosed
                },
                calls: n[0],
                records_in: n[1],
                records_out: n[2],
                errors: n[3],
                p50_us: n[4],
                p99_us: n[5],
                quarantined_until_ms,
                last_error,
            },
        )
}

pub(crate) fn placement() -> impl Strategy<Value = Placement> {
    (".{0,8}", any::<u64>(), any::<u32>()).prop_map(|(topic, base_offset, count)| Placement {
        topic,
        base_offset,
        count,
    })
}

pub(crate) fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (
            ".{0,12}",
            retention(),
            proptest::option::of(".{0,8}"),
            durability()
        )
            .prop_map(
                |(name, retention, dead_letter, durability)| Op::CreateTopic {
                    name,
                    config: TopicConfig {
                        retention,
                        dead_letter,
                        durability,
                    },
                }
            ),
        ".{0,12}".prop_map(|name| Op::DeleteTopic { name }),
        ".{0,12}".prop_map(|name| Op::DescribeTopic { name }),
        Just(Op::ListTopics),
        (
            ".{0,12}",
            proptest::collection::vec(record(), 0..4),
            proptest::option::of(publish_id())
        )
            .prop_map(|(topic, records, id)| Op::Publish { topic, records, id }),
        (".{0,8}", proptest::option::of(".{0,4}"), bytes(32)).prop_map(|(name, version, wasm)| {
            Op::DeployPlugin {
                name,
                version,
                wasm,
            }
        }),
        (".{0,8}", proptest::option::of(".{0,4}"), bytes(32)).prop_map(|(name, version, wasm)| {
            Op::UpgradePlugin {
                name,
                version,
                wasm,
            }
        }),
        ".{0,8}".prop_map(|name| Op::RemovePlugin { name }),
        Just(Op::ListPlugins),
        ".{0,8}".prop_map(|name| Op::PluginStatus { name }),
        (".{0,8}", stage()).prop_map(|(topic, stage)| Op::AttachPlugin { topic, stage }),
        (".{0,8}", ".{0,8}").prop_map(|(topic, plugin)| Op::DetachPlugin { topic, plugin }),
        (".{0,8}", group_settings())
            .prop_map(|(name, settings)| Op::CreateGroup { name, settings }),
        ".{0,8}".prop_map(|name| Op::DeleteGroup { name }),
        ".{0,8}".prop_map(|name| Op::DescribeGroup { name }),
        Just(Op::ListGroups),
        (".{0,8}", start_at()).prop_map(|(name, to)| Op::ResetGroup { name, to }),
        (".{0,8}", record(), any::<u64>()).prop_map(|(topic, record, timeout_ms)| {
            Op::Request {
                topic,
                record,
                timeout_ms,
            }
        }),
        (".{0,8}", record()).prop_map(|(to, record)| Op::Reply { to, record }),
        (
            ".{0,8}",
            proptest::collection::vec(record(), 0..3),
            publish_id()
        )
            .prop_map(|(topic, records, first_id)| Op::PublishEach {
                topic,
                records,
                first_id
            }),
        forward().prop_map(Op::Forward),
        link_spec().prop_map(|spec| Op::CreateLink(Box::new(spec))),
        ".{0,8}".prop_map(|name| Op::DeleteLink { name }),
        ".{0,8}".prop_map(|name| Op::DescribeLink { name }),
        Just(Op::ListLinks),
        ".{0,8}".prop_map(|name| Op::PauseLink { name }),
        ".{0,8}".prop_map(|name| Op::ResumeLink { name }),
        Just(Op::DescribeBroker),
        (
            proptest::collection::vec(
                (".{0,8}", proptest::collection::vec(record(), 0..3))
                    .prop_map(|(topic, records)| TopicRun { topic, records }),
                0..3
            ),
            publish_id()
        )
            .prop_map(|(runs, first_id)| Op::PublishAcross { runs, first_id }),
        (
            ".{0,8}",
            proptest::option::of(retention()),
            proptest::option::of(durability())
        )
            .prop_map(|(name, retention, durability)| Op::AlterTopic {
                name,
                retention,
                durability
            }),
        (
            ".{0,8}",
            prop_oneof![
                Just(PurgeBefore::All),
                any::<u64>().prop_map(PurgeBefore::Offset),
                any::<u64>().prop_map(PurgeBefore::Time),
            ]
        )
            .prop_map(|(name, before)| Op::PurgeTopic { name, before }),
        Just(Op::DescribeServer),
        ".{0,8}".prop_map(|name| Op::LiftQuarantine { name }),
        (".{0,8}", stage(), stage_limits()).prop_map(|(topic, stage, limits)| Op::AttachSized {
            topic,
            stage,
            limits
        }),
        ".{0,8}".prop_map(|name| Op::PluginSandboxes { name }),
        (
            ".{0,8}",
            proptest::collection::vec(record(), 0..3),
            proptest::option::of(any::<(u64, u64)>()),
            ".{0,8}",
            ".{0,4}"
        )
            .prop_map(|(topic, records, id, plugin, version)| Op::PublishThrough {
                topic,
                records,
                id: id.map(|(producer, sequence)| PublishId { producer, sequence }),
                plugin,
                version,
            }),
        (".{0,8}", proptest::option::of(".{0,4}"), bytes(64)).prop_map(|(name, version, wasm)| {
            Op::ShadowPlugin {
                name,
                version,
                wasm,
            }
        }),
        ".{0,8}".prop_map(|name| Op::DiffPlugin { name }),
        ".{0,8}".prop_map(|name| Op::PromotePlugin { name }),
        ".{0,8}".prop_map(|name| Op::RollbackPlugin { name }),
        (
            ".{0,8}",
            proptest::option::of(".{0,4}"),
            bytes(64),
            any::<u8>()
        )
            .prop_map(|(name, version, wasm, percent)| Op::CanaryPlugin {
                name,
                version,
                wasm,
                percent
            }),
    ]
}

pub(crate) fn stage_limits() -> impl Strategy<Value = StageLimits> {
    (
        proptest::option::of(any::<u64>()),
        proptest::option::of(any::<u64>()),
    )
        .prop_map(|(memory, call_timeout_ms)| StageLimits {
            memory,
            call_timeout_ms,
        })
}

pub(crate) fn delivered() -> impl Strategy<Value = Delivered> {
    (any::<(u64, u64)>(), record()).prop_map(|((offset, timestamp), record)| Delivered {
        offset,
        timestamp,
        record,
    })
}

pub(crate) fn forward() -> impl Strategy<Value = Forward> {
    (
        ".{0,8}",
        any::<u128>(),
        ".{0,8}",
        any::<(u64, u64, u64)>(),
        prop_oneof![
            proptest::collection::vec(delivered(), 0..3).prop_map(ForwardedRecords::Listed),
            (any::<u64>(), bytes(32))
                .prop_map(|(base_offset, batch)| ForwardedRecords::Batch { base_offset, batch }),
        ],
    )
        .prop_map(
            |(topic, broker, origin_topic, (topic_id, from, next), records)| Forward {
                topic,
                origin: Origin {
                    broker,
                    topic: origin_topic,
                    topic_id,
                },
                from,
                next,
                records,
            },
        )
}

pub(crate) fn link_spec() -> impl Strategy<Value = LinkSpec> {
    (
        (
            ".{0,8}",
            proptest::collection::vec(".{0,12}", 0..3),
            any::<bool>(),
        ),
        (
            ".{0,8}",
            ".{0,4}",
            start_at(),
            proptest::option::of(any::<u32>()),
        ),
        proptest::option::of(".{0,8}"),
        prop_oneof![
            Just(LinkAuth::Anonymous),
            ".{0,8}".prop_map(LinkAuth::Token),
            (".{0,8}", ".{0,8}").prop_map(|(cert, key)| LinkAuth::Certificate { cert, key }),
            (".{0,8}", ".{0,8}")
                .prop_map(|(user, password)| LinkAuth::UserPassword { user, password }),
            ".{0,8}".prop_map(LinkAuth::Credentials),
        ],
        proptest::option::of((
            ".{0,8}",
            ".{0,8}",
            proptest::option::of((any::<u8>(), any::<bool>(), 0..3u8)),
        )),
        proptest::collection::vec(stage(), 0..2),
    )
        .prop_map(
            |(
                (name, to, inward),
                (topics, prefix, from, max_rate),
                ca,
                auth,
                jetstream,
                pipeline,
            )| LinkSpec {
                name,
                to,
                direction: if inward {
                    LinkDirection::In
                } else {
                    LinkDirection::Out
                },
                topics,
                prefix,
                from,
                max_rate,
                ca,
                auth,
                pipeline,
                jetstream: jetstream.map(|(stream, subject_prefix, create)| JetStreamRemote {
                    stream,
                    subject_prefix,
                    create: create.map(|(replicas, memory, retention)| StreamSetup {
                        replicas,
                        storage: if memory {
                            StreamStorage::Memory
                        } else {
                            StreamStorage::File
                        },
                        retention: match retention {
                            0 => StreamRetention::Limits,
                            1 => StreamRetention::Interest,
                            _ => StreamRetention::WorkQueue,
                        },
                    }),
                }),
            },
        )
}

pub(crate) fn link_info() -> impl Strategy<Value = LinkInfo> {
    (
        link_spec(),
        prop_oneof![
            Just(LinkState::Starting),
            ".{0,8}".prop_map(|addr| LinkState::Connected { addr }),
            (".{0,8}", any::<u64>())
                .prop_map(|(error, retry_ms)| LinkState::BackingOff { error, retry_ms }),
            Just(LinkState::Paused),
        ],
        (proptest::option::of(any::<u128>()), any::<u64>()),
        proptest::collection::vec(
            (
                ".{0,8}",
                any::<[u64; 8]>(),
                proptest::option::of(any::<u64>()),
            ),
            0..3,
        ),
        proptest::collection::vec((".{0,8}", any::<[u64; 3]>()), 0..2),
    )
        .prop_map(
            |(spec, state, (remote, failures), topics, skips)| LinkInfo {
                spec,
                state,
                remote,
                failures,
                topics: topics
                    .into_iter()
                    .map(|(topic, n, oldest_ms)| LinkTopic {
                        topic,
                        next: n[0],
                        lag: n[1],
                        lag_bytes: n[2],
                        oldest_ms,
                        forwarded: n[3],
                        skipped: n[4],
                        looped: n[5],
                        dead_lettered: n[7],
                        rate: n[6],
                    })
                    .collect(),
                skips: skips
                    .into_iter()
                    .map(|(topic, n)| Skip {
                        topic,
                        from: n[0],
                        to: n[1],
                        at_ms: n[2],
                    })
                    .collect(),
            },
        )
}

pub(crate) fn publish_id() -> impl Strategy<Value = PublishId> {
    any::<(u64, u64)>().prop_map(|(producer, sequence)| PublishId { producer, sequence })
}

pub(crate) fn group_settings() -> impl Strategy<Value = GroupSettings> {
    (
        ".{0,8}",
        start_at(),
        any::<(u64, u32, u32)>(),
        proptest::option::of(".{0,8}"),
    )
        .prop_map(
            |(pattern, from, (ack_timeout_ms, max_deliveries, prefetch), dead_letter)| {
                GroupSettings {
                    pattern,
                    from,
                    ack_timeout_ms,
                    max_deliveries,
                    dead_letter,
                    prefetch,
                }
            },
        )
}

pub(crate) fn group_info() -> impl Strategy<Value = GroupInfo> {
    (
        ".{0,8}",
        group_settings(),
        any::<(u64, u32)>(),
        proptest::collection::vec((".{0,8}", any::<[u64; 5]>()), 0..3),
    )
        .prop_map(
            |(name, settings, (created_ms, members), topics)| GroupInfo {
                name,
                settings,
                created_ms,
                members,
                topics: topics
                    .into_iter()
                    .map(|(topic, n)| GroupTopic {
                        topic,
                        cursor: n[0],
                        lag: n[1],
                        pending: n[2],
                        redelivered: n[3],
                        dead_lettered: n[4],
                    })
                    .collect(),
            },
        )
}

pub(crate) fn settle() -> impl Strategy<Value = Settle> {
    prop_oneof![
        Just(Settle::Ack),
        any::<u64>().prop_map(|delay_ms| Settle::Nack { delay_ms }),
        ".{0,8}".prop_map(|reason| Settle::Term { reason }),
        Just(Settle::InProgress),
    ]
}

pub(crate) fn op_reply() -> impl Strategy<Value = OpReply> {
    prop_oneof![
        topic_info().prop_map(OpReply::Topic),
        proptest::collection::vec(topic_info(), 0..3).prop_map(OpReply::Topics),
        Just(OpReply::Deleted),
        (
            any::<(u64, u32, u32)>(),
            proptest::collection::vec(placement(), 0..3),
            proptest::option::of(placement())
        )
            .prop_map(|((base_offset, count, dropped), routed, dead_letter)| {
                OpReply::Published(Receipt {
                    base_offset,
                    count,
                    routed,
                    dead_letter,
                    dropped,
                })
            }),
        plugin_info().prop_map(OpReply::Plugin),
        proptest::collection::vec(plugin_info(), 0..3).prop_map(OpReply::Plugins),
        (plugin_info(), proptest::collection::vec(attachment(), 0..3)).prop_map(
            |(info, attachments)| OpReply::PluginStatus(PluginStatus { info, attachments })
        ),
        group_info().prop_map(OpReply::Group),
        proptest::collection::vec(group_info(), 0..3).prop_map(OpReply::Groups),
        record().prop_map(OpReply::Response),
        Just(OpReply::Replied),
        proptest::collection::vec(
            prop_oneof![
                (any::<(u64, u32)>()).prop_map(|(base_offset, count)| Ok(Receipt {
                    base_offset,
                    count,
                    routed: vec![],
                    dead_letter: None,
                    dropped: 0,
                })),
                ".{0,8}".prop_map(|m| Err(WireError::new(ErrorCode::RecordTooLarge, m))),
            ],
            0..3
        )
        .prop_map(OpReply::PublishedEach),
        (
            any::<u128>(),
            proptest::option::of(any::<u64>()),
            proptest::option::of(any::<(u64, u32)>())
        )
            .prop_map(|(broker, next, stored)| OpReply::Forwarded(Forwarded {
                broker,
                next,
                receipt: stored.map(|(base_offset, count)| Receipt {
                    base_offset,
                    count,
                    routed: vec![],
                    dead_letter: None,
                    dropped: 0,
                }),
            })),
        link_info().prop_map(|info| OpReply::Link(Box::new(info))),
        proptest::collection::vec(link_info(), 0..2).prop_map(OpReply::Links),
        (any::<u128>(), ".{0,8}")
            .prop_map(|(id, version)| OpReply::Broker(BrokerInfo { id, version })),
        (
            any::<(u128, u64, u64)>(),
            ".{0,8}",
            proptest::collection::vec((".{0,4}", ".{0,8}"), 0..3)
        )
            .prop_map(|((id, started_ms, disk_bytes), data_dir, listeners)| {
                OpReply::Server(Box::new(ServerStatus {
                    broker: BrokerInfo {
                        id,
                        version: "quiver/0.1.0".into(),
                    },
                    started_ms,
                    data_dir,
                    disk_bytes,
                    topics: 1,
                    groups: 2,
                    plugins: 3,
                    links: 4,
                    connections: 5,
                    listeners,
                }))
            }),
        (
            ".{0,8}",
            any::<(u64, u64, u64, u64)>(),
            proptest::collection::vec((".{0,4}", ".{0,4}", any::<u64>()), 0..3),
            proptest::collection::vec(
                (
                    ".{0,8}",
                    any::<u64>(),
                    proptest::option::of(bytes(8)),
                    bytes(16)
                ),
                0..2
            ),
            proptest::option::of(".{0,8}")
        )
            .prop_map(
                |(name, (batches, records, differing, micros), kinds, samples, last_error)| {
                    OpReply::Diff(Box::new(PluginDiff {
                        name,
                        live: "1".into(),
                        candidate: "2".into(),
                        canary_percent: u8::try_from(records % 100).ok(),
                        started_ms: micros,
                        batches,
                        records,
                        differing,
                        kinds,
                        samples: samples
                            .into_iter()
                            .map(|(target, offset, key, payload)| DiffSample {
                                target,
                                offset,
                                key,
                                payload,
                                live: "keep".into(),
                                candidate: "drop".into(),
                            })
                            .collect(),
                        live_micros: micros,
                        candidate_micros: batches,
                        candidate_errors: differing,
                        last_error,
                    }))
                }
            ),
        proptest::collection::vec(
            (".{0,8}", ".{0,8}", stage_limits(), any::<(u64, u64, u64)>()),
            0..3
        )
        .prop_map(|sandboxes| OpReply::Sandboxes(
            sandboxes
                .into_iter()
                .map(
                    |(target, language, limits, (memory_limit, call_timeout_ms, memory_peak))| {
                        SandboxInfo {
                            target,
                            language,
                            limits,
                            memory_limit,
                            call_timeout_ms,
                            memory_peak,
                        }
                    }
                )
                .collect()
        )),
    ]
}

pub(crate) fn client_frame() -> impl Strategy<Value = ClientFrame> {
    prop_oneof![
        (any::<u16>(), ".{0,12}", proptest::option::of(".{0,40}")).prop_map(
            |(version, client, token)| ClientFrame::Hello(ClientHello {
                version,
                client,
                token
            })
        ),
        (any::<u64>(), op()).prop_map(|(id, op)| ClientFrame::Request(Request { id, op })),
        subscribe().prop_map(ClientFrame::Subscribe),
        any::<u32>().prop_map(ClientFrame::Credit),
        (".{0,8}", any::<u32>())
            .prop_map(|(group, prefetch)| ClientFrame::Join(Join { group, prefetch })),
        proptest::collection::vec((".{0,8}", any::<u64>(), settle()), 0..4).prop_map(|s| {
            ClientFrame::Settle(
                s.into_iter()
                    .map(|(topic, offset, action)| Settlement {
                        topic,
                        offset,
                        action,
                    })
                    .collect(),
            )
        }),
        (subscribe(), positions()).prop_map(|(subscribe, positions)| {
            ClientFrame::SubscribeAt(SubscribeAt {
                subscribe,
                positions,
            })
        }),
        proptest::collection::vec(topic_settlements(), 0..3).prop_map(ClientFrame::SettleRuns),
    ]
}

fn topic_settlements() -> impl Strategy<Value = TopicSettlements> {
    (
        ".{0,8}",
        proptest::collection::vec(
            (any::<u64>(), any::<u64>()).prop_map(|(first, count)| AckRun { first, count }),
            0..3,
        ),
        proptest::collection::vec(
            (any::<u64>(), settle()).prop_map(|(offset, action)| RecordSettle { offset, action }),
            0..3,
        ),
    )
        .prop_map(|(topic, acks, others)| TopicSettlements {
            topic,
            acks,
            others,
        })
}

fn subscribe() -> impl Strategy<Value = Subscribe> {
    (
        ".{0,12}",
        start_at(),
        any::<u32>(),
        proptest::collection::vec(stage(), 0..3),
    )
        .prop_map(|(pattern, from, credit, pipeline)| Subscribe {
            pattern,
            from,
            credit,
            pipeline,
        })
}

fn positions() -> impl Strategy<Value = Vec<Position>> {
    proptest::collection::vec(
        (".{0,8}", any::<u64>(), any::<u64>()).prop_map(|(topic, topic_id, next)| Position {
            topic,
            topic_id,
            next,
        }),
        0..4,
    )
}

pub(crate) fn server_frame() -> impl Strategy<Value = ServerFrame> {
    prop_oneof![
        (
            any::<u16>(),
            ".{0,12}",
            any::<(u64, u64, u32)>(),
            proptest::option::of(".{0,12}")
        )
            .prop_map(|(version, server, l, principal)| {
                ServerFrame::Hello(ServerHello {
                    version,
                    server,
                    limits: Limits {
                        max_frame_len: l.0,
                        max_record_size: l.1,
                        max_batch_records: l.2,
                    },
                    principal,
                })
            }),
        (
            any::<u64>(),
            prop_oneof![op_reply().prop_map(Ok), wire_error().prop_map(Err)]
        )
            .prop_map(|(id, result)| ServerFrame::Reply(Reply { id, result })),
        Just(ServerFrame::Subscribed),
        (
            ".{0,12}",
            any::<u64>(),
            proptest::collection::vec(record(), 0..4)
        )
            .prop_map(|(topic, base_offset, records)| {
                ServerFrame::Records(Records {
                    topic,
                    base_offset,
                    batch: record::encode_batch(1, &records),
                })
            }),
        wire_error().prop_map(ServerFrame::Error),
        (
            ".{0,12}",
            proptest::collection::vec((any::<(u64, u64)>(), record()), 0..4)
        )
            .prop_map(|(topic, records)| {
                ServerFrame::Processed(Processed {
                    topic,
                    records: records
                        .into_iter()
                        .map(|((offset, timestamp), record)| Delivered {
                            offset,
                            timestamp,
                            record,
                        })
                        .collect(),
                })
            }),
        Just(ServerFrame::Joined),
        (
            ".{0,8}",
            proptest::collection::vec((any::<(u64, u64, u32)>(), record()), 0..4)
        )
            .prop_map(|(topic, records)| {
                ServerFrame::Assigned(Assigned {
                    topic,
                    records: records
                        .into_iter()
                        .map(|((offset, timestamp, deliveries), record)| AssignedRecord {
                            offset,
                            timestamp,
                            deliveries,
                            record,
                        })
                        .collect(),
                })
            }),
        positions().prop_map(ServerFrame::Positions),
    ]
}
