//! Request-reply over topics: any consumer of the topic may answer; no responder and
//! no reply in time are distinct errors.

#![allow(clippy::unwrap_used)] // in tests a failed unwrap is a failed test

use std::time::Duration;

use futures::StreamExt;
use quiver_client::headers;
use quiver_client::{
    Error, ErrorCode, GroupSettings, NewRecord, Retention, StartAt, SubscribeOptions,
};
use quiver_tests::{Broker, DataDir, next_delivery};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_answers_a_request() {
    let data = DataDir::new();
    let broker = Broker::start(&data);
    let client = broker.client().await;
    client
        .create_topic("rpc.upper", Retention::default())
        .await
        .unwrap();

    let responder = broker.client().await;
    let mut requests = responder
        .subscribe("rpc.upper", SubscribeOptions::default())
        .await
        .unwrap();
    let serve = tokio::spawn(async move {
        let request = requests.next().await.unwrap().unwrap();
        let upper = request.payload.to_ascii_uppercase();
        responder
            .reply(
                &request,
                NewRecord::new(upper).with_header("served-by", "test"),
            )
            .await
            .unwrap();
        request
    });
    let reply = client
        .request("rpc.upper", "hello", Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(&reply.payload[..], b"HELLO");
    assert_eq!(
        reply.header("served-by").map(|v| &v[..]),
        Some(&b"test"[..])
    );
    // The request itself is an ordinary, durable record with its reply-to header.
    let request = serve.await.unwrap();
    assert!(request.header(headers::REPLY_TO).is_some());
    assert_eq!(client.describe_topic("rpc.upper").await.unwrap().records, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_member_answers_a_request() {
    let data = DataDir::new();
    let broker = Broker::start(&data);
    let client = broker.client().await;
    client
        .create_topic("rpc.sum", Retention::default())
        .await
        .unwrap();
    let settings = GroupSettings {
        from: StartAt::Latest,
        ..GroupSettings::new("rpc.sum")
    };
    client.create_group("adders", settings).await.unwrap();
    let responder = broker.client().await;
    let mut member = responder.join("adders", None).await.unwrap();
    let serve = tokio::spawn(async move {
        let delivery = next_delivery(&mut member).await;
        let text = String::from_utf8(delivery.record.payload.to_vec()).unwrap();
        let sum: i64 = text
            .split('+')
            .map(|n| n.trim().parse::<i64>().unwrap())
            .sum();
        responder
            .reply(&delivery.record, sum.to_string())
            .await
            .unwrap();
        delivery.ack().unwrap();
        member.leave().await.unwrap();
    });
    let reply = client
        .request("rpc.sum", "2 + 40", Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(&reply.payload[..], b"42");
    serve.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_responder_and_no_reply_are_distinct_errors() {
    let data = DataDir::new();
    let broker = Broker::start(&data);
    let client = broker.client().await;
    client
        .create_topic("rpc.quiet", Retention::default())
        .await
        .unwrap();

    // Nobody reads the topic: refused at once.
    let e = client
        .request("rpc.quiet", "anyone?", Duration::from_secs(30))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::NoResponders), "{e}");
    let e = client
        .request("rpc.nowhere", "anyone?", Duration::from_secs(30))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::TopicNotFound), "{e}");

    // Someone reads it but never answers: a timeout.
    let listener = broker.client().await;
    let mut requests = listener
        .subscribe("rpc.quiet", SubscribeOptions::default())
        .await
        .unwrap();
    let e = client
        .request("rpc.quiet", "anyone?", Duration::from_millis(300))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::RequestTimeout), "{e}");

    // Answering it late finds nobody waiting; answering a plain record is refused.
    let late = requests.next().await.unwrap().unwrap();
    let e = listener.reply(&late, "too late").await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::NoRequester), "{e}");
    client.publish("rpc.quiet", "not a request").await.unwrap();
    let plain = requests.next().await.unwrap().unwrap();
    assert!(matches!(
        listener.reply(&plain, "?").await,
        Err(Error::NotARequest)
    ));

    let e = client
        .request("rpc.quiet", "x", Duration::ZERO)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::InvalidArgument), "{e}");
}
