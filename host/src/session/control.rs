//! The control stream: pipelined requests (topic admin, publishes, plugins, groups,
//! request-reply), each authorized first and answered by a reply carrying its id as
//! soon as it completes, in any order.
//!
//! A request once started runs to its end, even when its client is gone: storage
//! commits what it was handed whatever happens to the request, and what follows the
//! commit (remembering a publish's id for retries, putting a created topic in the
//! registry) must happen too, or a retry is stored twice and a topic is in storage but
//! unknown to the broker. So a failed write only stops the reading and the answers.

use std::sync::Arc;

use futures::future::{BoxFuture, FutureExt};
use futures::stream::{FuturesUnordered, StreamExt};
use quiver_protocol::{
    ClientFrame, ErrorCode, Op, OpReply, Reply, Request, ServerFrame, WireError,
};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::auth::Access;
use crate::broker::streams::StreamKind;
use crate::broker::{Broker, BrokerError, PublishOrder, Publishes, Run, authorize, one_outcome};
use crate::transport::{FrameStream, Incoming};

/// Serves the control stream: pipelined requests, replies as they complete.
pub(super) async fn serve(
    broker: Arc<Broker>,
    control: FrameStream,
    access: Access,
    max_inflight: usize,
    shutdown: CancellationToken,
) {
    let _open = broker.streams().open(StreamKind::Control);
    let FrameStream {
        mut reader,
        mut writer,
    } = control;
    let mut inflight: FuturesUnordered<BoxFuture<'static, ServerFrame>> = FuturesUnordered::new();
    let mut order = PublishOrder::default();
    let mut reading = true;
    // Cleared when a write fails: the client is gone, and nothing more is answered.
    let mut answering = true;
    while reading || !inflight.is_empty() {
        tokio::select! {
            biased;
            Some(reply) = inflight.next(), if !inflight.is_empty() => {
                if !answering {
                    continue;
                }
                writer.feed(&reply);
                // Replies that are ready too share the write.
                while let Some(Some(reply)) = inflight.next().now_or_never() {
                    writer.feed(&reply);
                }
                if writer.flush().await.is_err() {
                    (reading, answering) = (false, false);
                }
            }
            incoming = reader.next(), if reading && inflight.len() < max_inflight => {
                let error = match incoming {
                    Incoming::Frame(ClientFrame::Request(request)) => {
                        let started = dispatch(&broker, &access, request, &mut order).await;
                        inflight.push(started);
                        continue;
                    }
                    Incoming::Frame(other) => WireError::new(
                        ErrorCode::UnexpectedMessage,
                        format!("{} is not valid on the control stream", other.kind()),
                    ),
                    Incoming::Bad(e) => {
                        debug!(error = %e, "bad frame on the control stream");
                        WireError::from(&e)
                    }
                    Incoming::End => {
                        reading = false;
                        continue;
                    }
                };
                if writer.send(&ServerFrame::Error(error)).await.is_err() {
                    (reading, answering) = (false, false);
                }
            }
            () = shutdown.cancelled(), if reading => reading = false,
        }
    }
    if !answering {
        return;
    }
    if shutdown.is_cancelled() {
        return writer.refuse(super::shutting_down()).await;
    }
    writer.finish();
}

/// Starts a request; the returned future resolves to the reply. A publish keeps the
/// connection's order (`order`): see `broker::publish`.
async fn dispatch(
    broker: &Arc<Broker>,
    access: &Access,
    request: Request,
    order: &mut PublishOrder,
) -> BoxFuture<'static, ServerFrame> {
    let Request { id, op } = request;
    let reply = move |result: Result<OpReply, WireError>| ServerFrame::Reply(Reply { id, result });
    let wire = |e: BrokerError| WireError::from(&e);
    // Publishes are authorized here (a `PublishAcross` run by run, below), everything
    // else by `Broker::answer`.
    if op.is_publish()
        && let Err(e) = authorize::request(broker, access, &op)
    {
        return std::future::ready(reply(Err(wire(e)))).boxed();
    }
    let broker = Arc::clone(broker);
    match op {
        Op::Publish { topic, records, id } => {
            let publishes = Publishes::One { records, id };
            let outcomes = broker.publish(order, &topic, publishes).await;
            async move { reply(one_outcome(outcomes.await).map(OpReply::Published)) }.boxed()
        }
        Op::PublishThrough {
            topic,
            records,
            id,
            plugin,
            version,
        } => {
            let publishes = Publishes::One { records, id };
            let through = Some((plugin, version));
            let outcomes = broker.publish_via(order, &topic, publishes, through).await;
            async move { reply(one_outcome(outcomes.await).map(OpReply::Published)) }.boxed()
        }
        Op::PublishEach {
            topic,
            records,
            first_id,
        } => {
            let publishes = Publishes::Each {
                records,
                first: first_id,
            };
            let outcomes = broker.publish(order, &topic, publishes).await;
            async move { reply(outcomes.await.map(OpReply::PublishedEach).map_err(wire)) }.boxed()
        }
        Op::PublishAcross { runs, first_id } => {
            let runs = runs
                .into_iter()
                .map(|run| Run {
                    refused: authorize::publish(access, &run.topic).err(),
                    topic: run.topic,
                    records: run.records,
                })
                .collect();
            let outcomes = broker.publish_across(order, runs, first_id).await;
            async move { reply(outcomes.await.map(OpReply::PublishedEach).map_err(wire)) }.boxed()
        }
        Op::Forward(forward) => {
            let forwarded = broker.forward(order, forward).await;
            async move { reply(forwarded.await.map(OpReply::Forwarded).map_err(wire)) }.boxed()
        }
        op => {
            let access = access.clone();
            async move { reply(broker.answer(&access, op).await.map_err(wire)) }.boxed()
        }
    }
}
