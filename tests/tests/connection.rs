//! What docs/protocol.md says a connection does, the broker does: it grants no
//! unidirectional streams, a stream that ends in the middle of a frame just ends, and a
//! shutdown ends each stream with `ShuttingDown` and then closes the connection with
//! code 2 and a reason. (The document's tables of messages are checked against the
//! code in `protocol/tests/documentation.rs`.)

#![allow(clippy::unwrap_used)] // in tests a failed unwrap is a failed test

use quiver_protocol::{ClientFrame, ErrorCode, Op, Request, ServerFrame, StartAt, Subscribe};
use quiver_tests::raw::RawConnection;
use quiver_tests::{Broker, DataDir};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unidirectional_streams_are_not_granted() {
    let data = DataDir::new();
    let broker = Broker::start(&data);
    let raw = RawConnection::connect(broker.addr(), broker.cert()).await;
    let _control = raw.handshake().await;
    assert!(!raw.can_open_unidirectional());
    assert!(raw.try_open().is_some(), "bidirectional ones are");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_ending_mid_frame_just_ends_and_the_connection_goes_on() {
    let data = DataDir::new();
    let broker = Broker::start(&data);
    let raw = RawConnection::connect(broker.addr(), broker.cert()).await;
    let (mut control, _) = raw.handshake().await;
    // A new stream: half a length prefix, then the end.
    let mut cut = raw.open().await;
    cut.send_bytes(&[0, 0]).await;
    cut.finish();
    assert_eq!(cut.recv().await, None, "the broker ends it without a word");
    // And a frame promising 100 bytes, with 3.
    let mut cut = raw.open().await;
    cut.send_bytes(&[0, 0, 0, 100, 1, 2, 3]).await;
    cut.finish();
    assert_eq!(cut.recv().await, None);
    // The connection still serves: a request on the control stream, a subscription.
    control
        .send(&ClientFrame::Request(Request {
            id: 7,
            op: Op::ListTopics,
        }))
        .await;
    match control.recv().await {
        Some(ServerFrame::Reply(reply)) => assert_eq!(reply.id, 7),
        other => panic!("expected the reply, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_says_so_on_each_stream_then_closes_with_code_2() {
    let data = DataDir::new();
    let broker = Broker::start(&data);
    let client = broker.client().await;
    client
        .create_topic("t", quiver_client::Retention::default())
        .await
        .unwrap();
    client.close().await;
    let raw = RawConnection::connect(broker.addr(), broker.cert()).await;
    let (mut control, _) = raw.handshake().await;
    let mut subscription = raw.open().await;
    subscription
        .send(&ClientFrame::Subscribe(Subscribe {
            pattern: "t".into(),
            from: StartAt::Earliest,
            credit: 10,
            pipeline: vec![],
        }))
        .await;
    assert_eq!(subscription.recv().await, Some(ServerFrame::Subscribed));

    broker.terminate();
    for stream in [&mut control, &mut subscription] {
        match stream.recv().await {
            Some(ServerFrame::Error(e)) => assert_eq!(e.code, ErrorCode::ShuttingDown),
            other => panic!("expected ShuttingDown, got {other:?}"),
        }
    }
    match raw.closed().await {
        quinn::ConnectionError::ApplicationClosed(close) => {
            assert_eq!(u64::from(close.error_code), 2);
            assert_eq!(&close.reason[..], b"the broker is shutting down");
        }
        other => panic!("expected an application close, got {other}"),
    }
    assert!(broker.wait().success());
}
