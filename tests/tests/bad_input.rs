//! Bad input gets a typed error with a clear message, and the broker keeps serving:
//! through the SDK (names, unknown topics, sizes) and through raw frames (garbage,
//! oversized frames, wrong versions, messages on the wrong stream).

#![allow(clippy::unwrap_used)] // in tests a failed unwrap is a failed test

use std::time::Duration;

use bytes::{BufMut, BytesMut};
use quiver_client::{Client, Error, ErrorCode, NewRecord, Retention, StartAt, SubscribeOptions};
use quiver_protocol::{ClientFrame, ClientHello, Op, Request, ServerFrame, Subscribe};
use quiver_tests::raw::RawConnection;
use quiver_tests::{Broker, DataDir};

fn code(result: Result<impl std::fmt::Debug, Error>) -> (ErrorCode, String) {
    let error = result.expect_err("the request is refused");
    let code = error
        .code()
        .unwrap_or_else(|| panic!("a server error, got {error}"));
    (code, error.to_string())
}

/// The broker still creates, publishes and delivers for a fresh client.
async fn still_serving(broker: &Broker) {
    let client = broker.client().await;
    let topic = format!("alive.t{}", rand_suffix());
    client
        .create_topic(&topic, Retention::default())
        .await
        .unwrap();
    let mut sub = client
        .subscribe(&topic, SubscribeOptions::from(StartAt::Earliest))
        .await
        .unwrap();
    client.publish(&topic, "ping").await.unwrap();
    let record = tokio::time::timeout(Duration::from_secs(30), sub.recv())
        .await
        .expect("delivered")
        .unwrap()
        .unwrap();
    assert_eq!(record.payload, "ping");
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_requests_get_typed_errors() {
    let data = DataDir::new();
    let broker = Broker::start_with(&data, &[("QUIVER_LIMITS__MAX_BATCH_RECORDS", "100")]);
    let client = broker.client().await;
    client
        .create_topic("ok", Retention::default())
        .await
        .unwrap();

    let (c, message) = code(client.create_topic("bad name", Retention::default()).await);
    assert_eq!(c, ErrorCode::InvalidName);
    assert!(message.contains("' '"), "{message}");
    assert_eq!(
        code(client.create_topic("a..b", Retention::default()).await).0,
        ErrorCode::InvalidName
    );
    assert_eq!(
        code(
            client
                .create_topic(&"x".repeat(256), Retention::default())
                .await
        )
        .0,
        ErrorCode::InvalidName
    );
    assert_eq!(
        code(client.create_topic("a.*", Retention::default()).await).0,
        ErrorCode::InvalidName
    );
    assert_eq!(
        code(client.create_topic("ok", Retention::default()).await).0,
        ErrorCode::TopicExists
    );
    let zero = Retention {
        max_records: Some(0),
        ..Retention::default()
    };
    assert_eq!(
        code(client.create_topic("zero", zero).await).0,
        ErrorCode::InvalidArgument
    );

    assert_eq!(
        code(client.publish("missing", "x").await).0,
        ErrorCode::TopicNotFound
    );
    assert_eq!(
        code(client.publish("bad name", "x").await).0,
        ErrorCode::InvalidName
    );
    assert_eq!(
        code(client.describe_topic("missing").await).0,
        ErrorCode::TopicNotFound
    );
    assert_eq!(
        code(client.delete_topic("missing").await).0,
        ErrorCode::TopicNotFound
    );
    assert_eq!(
        code(client.publish_batch("ok", vec![]).await).0,
        ErrorCode::InvalidArgument
    );
    let too_many = (0..101).map(|_| NewRecord::new("x")).collect();
    assert_eq!(
        code(client.publish_batch("ok", too_many).await).0,
        ErrorCode::BatchTooLarge
    );

    let (c, message) = code(
        client
            .subscribe("a.>.b", SubscribeOptions::default())
            .await
            .map(|_| ()),
    );
    assert_eq!(c, ErrorCode::InvalidPattern);
    assert!(message.contains("last token"), "{message}");

    // None of it touched the topic.
    assert_eq!(client.describe_topic("ok").await.unwrap().records, 0);
    still_serving(&broker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_records_are_refused_and_nothing_is_stored() {
    let data = DataDir::new();
    let broker = Broker::start_with(&data, &[("QUIVER_LIMITS__MAX_RECORD_SIZE", "64 KiB")]);
    let client = broker.client().await;
    assert_eq!(client.limits().max_record_size, 64 * 1024);
    client
        .create_topic("big", Retention::default())
        .await
        .unwrap();
    let fits = NewRecord::new(vec![1u8; 64 * 1024]);
    assert_eq!(client.publish("big", fits).await.unwrap(), 0);
    let (c, message) = code(client.publish("big", vec![1u8; 64 * 1024 + 1]).await);
    assert_eq!(c, ErrorCode::RecordTooLarge);
    assert!(
        message.contains("65537 bytes") && message.contains("65536"),
        "{message}"
    );
    // Key and headers count toward the size.
    let with_key = NewRecord::new(vec![1u8; 64 * 1024]).with_key("k");
    assert_eq!(
        code(client.publish("big", with_key).await).0,
        ErrorCode::RecordTooLarge
    );
    // One bad record refuses the whole batch: all or nothing.
    let batch = vec![NewRecord::new("small"), NewRecord::new(vec![0u8; 100_000])];
    let (c, message) = code(client.publish_batch("big", batch).await);
    assert_eq!(c, ErrorCode::RecordTooLarge);
    assert!(message.contains("record 1"), "{message}");
    assert_eq!(client.describe_topic("big").await.unwrap().records, 1);
    still_serving(&broker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_get_errors_and_the_stream_stays_usable() {
    let data = DataDir::new();
    let broker = Broker::start_with(&data, &[("QUIVER_LIMITS__MAX_FRAME_SIZE", "2 MiB")]);
    let raw = RawConnection::connect(broker.addr(), broker.cert()).await;
    let (mut control, hello) = raw.handshake().await;
    assert_eq!(hello.limits.max_frame_len, 2 * 1024 * 1024);

    // A well-framed body that is not a message.
    let mut garbage = BytesMut::new();
    garbage.put_u32(5);
    garbage.put_slice(&[0xde, 0xad, 0xbe, 0xef, 0xff]);
    control.send_bytes(&garbage).await;
    match control.recv().await {
        Some(ServerFrame::Error(e)) => assert_eq!(e.code, ErrorCode::Malformed, "{e}"),
        other => panic!("expected an error, got {other:?}"),
    }

    // A frame longer than the limit: refused, its bytes skipped.
    let mut oversized = BytesMut::new();
    oversized.put_u32(3 * 1024 * 1024);
    oversized.put_slice(&vec![7u8; 3 * 1024 * 1024]);
    control.send_bytes(&oversized).await;
    match control.recv().await {
        Some(ServerFrame::Error(e)) => {
            assert_eq!(e.code, ErrorCode::FrameTooLarge);
            assert!(e.message.contains("3145728"), "{e}");
        }
        other => panic!("expected an error, got {other:?}"),
    }

    // A subscription request on the control stream.
    let subscribe = ClientFrame::Subscribe(Subscribe {
        pattern: "x".into(),
        from: quiver_protocol::StartAt::Latest,
        credit: 1,
        pipeline: vec![],
    });
    control.send(&subscribe).await;
    match control.recv().await {
        Some(ServerFrame::Error(e)) => assert_eq!(e.code, ErrorCode::UnexpectedMessage),
        other => panic!("expected an error, got {other:?}"),
    }

    // The same stream still serves requests.
    control
        .send(&ClientFrame::Request(Request {
            id: 42,
            op: Op::ListTopics,
        }))
        .await;
    match control.recv().await {
        Some(ServerFrame::Reply(reply)) => {
            assert_eq!(reply.id, 42);
            assert!(reply.result.is_ok());
        }
        other => panic!("expected a reply, got {other:?}"),
    }

    // A second stream that starts with a request instead of Subscribe is refused.
    let mut stray = raw.open().await;
    stray
        .send(&ClientFrame::Request(Request {
            id: 1,
            op: Op::ListTopics,
        }))
        .await;
    match stray.recv().await {
        Some(ServerFrame::Error(e)) => {
            assert_eq!(e.code, ErrorCode::UnexpectedMessage);
            assert!(e.message.contains("control stream"), "{e}");
        }
        other => panic!("expected an error, got {other:?}"),
    }
    assert!(stray.recv().await.is_none(), "and then closed");

    // Garbage on a subscription stream after it started.
    let sdk = broker.client().await;
    sdk.create_topic("sub.t", Retention::default())
        .await
        .unwrap();
    let mut sub_stream = raw.open().await;
    sub_stream
        .send(&ClientFrame::Subscribe(Subscribe {
            pattern: "sub.t".into(),
            from: quiver_protocol::StartAt::Earliest,
            credit: 10,
            pipeline: vec![],
        }))
        .await;
    assert_eq!(sub_stream.recv().await, Some(ServerFrame::Subscribed));
    sub_stream.send_bytes(&garbage).await;
    match sub_stream.recv().await {
        Some(ServerFrame::Error(e)) => assert_eq!(e.code, ErrorCode::Malformed),
        other => panic!("expected an error, got {other:?}"),
    }
    still_serving(&broker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_refusals_are_explained() {
    let data = DataDir::new();
    let broker = Broker::start(&data);

    let raw = RawConnection::connect(broker.addr(), broker.cert()).await;
    let mut control = raw.open().await;
    control
        .send(&ClientFrame::Hello(ClientHello {
            version: 99,
            client: "from the future".into(),
            token: None,
        }))
        .await;
    match control.recv().await {
        Some(ServerFrame::Error(e)) => {
            assert_eq!(e.code, ErrorCode::UnsupportedVersion);
            assert!(
                e.message.contains("99") && e.message.contains("versions 2 to 4"),
                "{e}"
            );
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    let closed = raw.closed().await;
    assert!(
        closed.to_string().contains("99"),
        "the close says why: {closed}"
    );

    // A client of the older version 2 is served, and told the version it speaks.
    let raw = RawConnection::connect(broker.addr(), broker.cert()).await;
    let mut control = raw.open().await;
    control
        .send(&ClientFrame::Hello(ClientHello {
            version: 2,
            client: "from the past".into(),
            token: None,
        }))
        .await;
    match control.recv().await {
        Some(ServerFrame::Hello(hello)) => assert_eq!(hello.version, 2),
        other => panic!("expected a hello, got {other:?}"),
    }
    control
        .send(&ClientFrame::Request(Request {
            id: 1,
            op: Op::ListTopics,
        }))
        .await;
    assert!(
        matches!(control.recv().await, Some(ServerFrame::Reply(r)) if r.id == 1 && r.result.is_ok()),
        "a version 2 client's request is answered"
    );

    // A request before any hello.
    let raw = RawConnection::connect(broker.addr(), broker.cert()).await;
    let mut control = raw.open().await;
    control
        .send(&ClientFrame::Request(Request {
            id: 1,
            op: Op::ListTopics,
        }))
        .await;
    match control.recv().await {
        Some(ServerFrame::Error(e)) => assert_eq!(e.code, ErrorCode::UnexpectedMessage),
        other => panic!("expected a refusal, got {other:?}"),
    }
    still_serving(&broker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_without_the_right_certificate_cannot_connect() {
    let data = DataDir::new();
    let broker = Broker::start(&data);
    let other = DataDir::new();
    let stranger = Broker::start(&other); // a different self-signed certificate
    let error = Client::builder()
        .ca_file(stranger.cert())
        .unwrap()
        .connect(broker.addr())
        .await
        .unwrap_err();
    assert!(matches!(error, Error::Connect { .. }), "{error}");
    // The error says which file is the problem, and what to trust instead.
    let stranger_cert = stranger.cert().display().to_string();
    assert!(
        error
            .to_string()
            .contains(&format!("not trusted by the CA file {stranger_cert}"))
            && error.to_string().contains("tls/cert.pem"),
        "{error}"
    );
    let missing = Client::builder()
        .ca_file(data.path().join("nope.pem"))
        .unwrap_err();
    assert!(matches!(missing, Error::CaFile { .. }), "{missing}");
    let no_ca = Client::builder().connect(broker.addr()).await.unwrap_err();
    assert!(matches!(no_ca, Error::NoCa), "{no_ca}");
    still_serving(&broker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_settlements_and_bad_member_frames_disturb_no_one() {
    use quiver_protocol::{GroupSettings, Join, Settle, Settlement};
    let data = DataDir::new();
    let broker = Broker::start(&data);
    let sdk = broker.client().await;
    sdk.create_topic("jobs", Retention::default())
        .await
        .unwrap();
    sdk.publish("jobs", "job-0").await.unwrap();
    sdk.create_group("workers", GroupSettings::new("jobs"))
        .await
        .unwrap();
    let raw = RawConnection::connect(broker.addr(), broker.cert()).await;
    let (mut control, _) = raw.handshake().await;

    // Settling on the control stream is refused there.
    control.send(&ClientFrame::Settle(vec![])).await;
    match control.recv().await {
        Some(ServerFrame::Error(e)) => assert_eq!(e.code, ErrorCode::UnexpectedMessage),
        other => panic!("expected an error, got {other:?}"),
    }

    // A member settling records it does not hold, in topics it does not read: ignored.
    let mut member = raw.open().await;
    member
        .send(&ClientFrame::Join(Join {
            group: "workers".into(),
            prefetch: 1,
        }))
        .await;
    assert_eq!(member.recv().await, Some(ServerFrame::Joined));
    let Some(ServerFrame::Assigned(assigned)) = member.recv().await else {
        panic!("the record is assigned")
    };
    assert_eq!(assigned.records[0].offset, 0);
    let stray = |topic: &str, offset| Settlement {
        topic: topic.into(),
        offset,
        action: Settle::Ack,
    };
    member
        .send(&ClientFrame::Settle(vec![
            stray("jobs", 99),
            stray("nowhere", 0),
        ]))
        .await;
    // A subscription frame on a member stream ends the membership with an error;
    // what it held goes back to the group.
    member.send(&ClientFrame::Credit(5)).await;
    match member.recv().await {
        Some(ServerFrame::Error(e)) => {
            assert_eq!(e.code, ErrorCode::UnexpectedMessage);
            assert!(e.message.contains("member stream"), "{e}");
        }
        other => panic!("expected an error, got {other:?}"),
    }
    let mut next = sdk.join("workers", None).await.unwrap();
    let again = quiver_tests::next_delivery(&mut next).await;
    assert_eq!(
        (again.record.offset, again.deliveries),
        (0, 2),
        "not lost, not acked"
    );
    again.ack().unwrap();
    still_serving(&broker).await;
}
