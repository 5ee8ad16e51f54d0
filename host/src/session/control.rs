//! The control stream: pipelined requests (topic admin, publishes, plugins, groups,
//! request-reply), each authorized first and answered by a reply carrying its id as
//! soon as it completes, in any order.

use std::sync::Arc;
use std::time::Duration;

use futures::future::{BoxFuture, FutureExt};
use futures::stream::{FuturesUnordered, StreamExt};
use quiver_protocol::{
    ClientFrame, ErrorCode, Op, OpReply, Receipt, Reply, Request, ServerFrame, Stage, WireError,
};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::authorize;
use crate::auth::Access;
use crate::broker::{Broker, BrokerError, Outcomes, PublishOrder, Publishes, Run};
use crate::transport::{FrameStream, Incoming};

/// Serves the control stream: pipelined requests, replies as they complete.
pub(super) async fn serve(
    broker: Arc<Broker>,
    control: FrameStream,
    access: Access,
    max_inflight: usize,
    shutdown: CancellationToken,
) {
    let FrameStream {
        mut reader,
        mut writer,
    } = control;
    let mut inflight: FuturesUnordered<BoxFuture<'static, ServerFrame>> = FuturesUnordered::new();
    let mut order = PublishOrder::default();
    let mut reading = true;
    while reading || !inflight.is_empty() {
        tokio::select! {
            biased;
            Some(reply) = inflight.next(), if !inflight.is_empty() => {
                writer.feed(&reply);
                // Replies that are ready too share the write.
                while let Some(Some(reply)) = inflight.next().now_or_never() {
                    writer.feed(&reply);
                }
                if writer.flush().await.is_err() {
                    return;
                }
            }
            incoming = reader.next(), if reading && inflight.len() < max_inflight => {
                match incoming {
                    Incoming::Frame(ClientFrame::Request(request)) => {
                        let started = dispatch(&broker, &access, request, &mut order).await;
                        inflight.push(started);
                    }
                    Incoming::Frame(other) => {
                        let error = WireError::new(
                            ErrorCode::UnexpectedMessage,
                            format!("{} is not valid on the control stream", other.kind()),
                        );
                        if writer.send(&ServerFrame::Error(error)).await.is_err() {
                            return;
                        }
                    }
                    Incoming::Bad(e) => {
                        debug!(error = %e, "bad frame on the control stream");
                        if writer.send(&ServerFrame::Error(WireError::from(&e))).await.is_err() {
                            return;
                        }
                    }
                    Incoming::End => reading = false,
                }
            }
            () = shutdown.cancelled(), if reading => reading = false,
        }
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
    if let Err(e) = authorize::request(broker, access, &op) {
        return std::future::ready(reply(Err(wire(e)))).boxed();
    }
    let op = match op {
        Op::AttachPlugin { topic, stage } => Op::AttachPlugin {
            topic,
            stage: Stage {
                attached_by: access.principal().map(str::to_owned),
                ..stage
            },
        },
        other => other,
    };
    let broker = Arc::clone(broker);
    match op {
        Op::Publish { topic, records, id } => {
            let publishes = Publishes::One { records, id };
            let outcomes = broker.publish(order, &topic, publishes).await;
            async move { reply(one(outcomes.await).map(OpReply::Published)) }.boxed()
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
            async move {
                let result = execute(&broker, op).await;
                reply(
                    result
                        .map(|answer| authorize::visible(&broker, &access, answer))
                        .map_err(wire),
                )
            }
            .boxed()
        }
    }
}

/// The outcome of a `Publish`: its one publish's.
fn one(outcomes: Outcomes) -> Result<Receipt, WireError> {
    let mut outcomes = outcomes.map_err(|e| WireError::from(&e))?;
    outcomes.pop().unwrap_or_else(|| {
        Err(WireError::new(
            ErrorCode::Internal,
            "the publish was answered with no outcome",
        ))
    })
}

/// Carries out a request. Publishes go through [`dispatch`], which keeps their order
/// across requests; this is for everything else.
async fn execute(broker: &Arc<Broker>, op: Op) -> Result<OpReply, BrokerError> {
    match op {
        Op::Publish { .. } | Op::PublishEach { .. } | Op::PublishAcross { .. } | Op::Forward(_) => {
            Err(BrokerError::InvalidArgument(
                "a publish is dispatched, not executed".into(),
            ))
        }
        Op::CreateLink(spec) => broker
            .links()?
            .create(*spec)
            .await
            .map(|info| OpReply::Link(Box::new(info))),
        Op::DeleteLink { name } => broker
            .links()?
            .delete(&name)
            .await
            .map(|()| OpReply::Deleted),
        Op::DescribeLink { name } => broker
            .links()?
            .describe(&name)
            .map(|info| OpReply::Link(Box::new(info))),
        Op::ListLinks => Ok(OpReply::Links(broker.links()?.list())),
        Op::DescribeServer => broker
            .describe_server()
            .await
            .map(|status| OpReply::Server(Box::new(status))),
        Op::DescribeBroker => Ok(OpReply::Broker(quiver_protocol::BrokerInfo {
            id: broker.storage().broker_id(),
            version: concat!("quiver/", env!("CARGO_PKG_VERSION")).to_owned(),
        })),
        Op::PauseLink { name } => broker
            .links()?
            .pause(&name, true)
            .await
            .map(|info| OpReply::Link(Box::new(info))),
        Op::ResumeLink { name } => broker
            .links()?
            .pause(&name, false)
            .await
            .map(|info| OpReply::Link(Box::new(info))),
        Op::CreateTopic { name, config } => broker
            .create_topic(&name, &config)
            .await
            .map(OpReply::Topic),
        Op::DeleteTopic { name } => broker.delete_topic(&name).await.map(|()| OpReply::Deleted),
        Op::AlterTopic {
            name,
            retention,
            durability,
        } => broker
            .alter_topic(&name, retention, durability)
            .await
            .map(OpReply::Topic),
        Op::PurgeTopic { name, before } => {
            broker.purge_topic(&name, before).await.map(OpReply::Topic)
        }
        Op::DescribeTopic { name } => broker.describe_topic(&name).map(OpReply::Topic),
        Op::ListTopics => Ok(OpReply::Topics(broker.list_topics())),
        Op::DeployPlugin {
            name,
            version,
            wasm,
        } => broker
            .deploy_plugin(&name, version, wasm)
            .await
            .map(OpReply::Plugin),
        Op::UpgradePlugin {
            name,
            version,
            wasm,
        } => broker
            .upgrade_plugin(&name, version, wasm)
            .await
            .map(OpReply::Plugin),
        Op::RemovePlugin { name } => broker.remove_plugin(&name).await.map(|()| OpReply::Deleted),
        Op::ListPlugins => Ok(OpReply::Plugins(broker.list_plugins())),
        Op::PluginStatus { name } => broker.plugin_status(&name).map(OpReply::PluginStatus),
        Op::AttachPlugin { topic, stage } => broker
            .attach_plugin(&topic, stage)
            .await
            .map(OpReply::Topic),
        Op::DetachPlugin { topic, plugin } => broker
            .detach_plugin(&topic, &plugin)
            .await
            .map(OpReply::Topic),
        Op::CreateGroup { name, settings } => broker
            .create_group(&name, settings)
            .await
            .map(OpReply::Group),
        Op::DeleteGroup { name } => broker.delete_group(&name).await.map(|()| OpReply::Deleted),
        Op::DescribeGroup { name } => broker.describe_group(&name).await.map(OpReply::Group),
        Op::ListGroups => Ok(OpReply::Groups(broker.list_groups().await)),
        Op::ResetGroup { name, to } => broker.reset_group(&name, to).await.map(OpReply::Group),
        Op::Request {
            topic,
            record,
            timeout_ms,
        } => {
            let timeout = Duration::from_millis(timeout_ms);
            broker
                .request(&topic, record, timeout)
                .await
                .map(OpReply::Response)
        }
        Op::Reply { to, record } => broker.reply(&to, record).map(|()| OpReply::Replied),
    }
}
