//! One client connection: the version handshake, the control stream's pipelined
//! requests, and a task per subscription stream.
//!
//! Invariants worth naming:
//! - one connection's publishes reach storage in the order they arrive (the broker
//!   keeps that order, given the connection's `PublishOrder`); replies go out as they
//!   complete;
//! - at most `max_inflight` requests wait for completion; past that the stream is not
//!   read, and QUIC flow control pushes back on the client;
//! - a bad frame is answered with an error and the stream carries on.

use std::sync::Arc;
use std::time::Duration;

use futures::future::{BoxFuture, FutureExt};
use futures::stream::{FuturesUnordered, StreamExt};
use quiver_protocol::{
    ClientFrame, ErrorCode, FrameError, Limits, Op, OpReply, PROTOCOL_VERSION, Receipt, Reply,
    Request, ServerFrame, ServerHello, Stage, WireError,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, instrument, warn};

use crate::auth::{Access, Authenticator, requests};
use crate::broker::{Broker, BrokerError, Outcomes, PublishOrder, Publishes};
use crate::groups::member;
use crate::subscription;
use crate::transport::{CloseCode, Connection, FrameStream, FrameWriter, Incoming};

/// Per-connection settings.
#[derive(Debug, Clone)]
pub struct SessionSettings {
    /// Limits announced in the hello.
    pub limits: Limits,
    /// Requests that may wait for completion at once.
    pub max_inflight: usize,
    /// How long a client has to send its hello.
    pub handshake_timeout: Duration,
    /// Subscription and group-member streams a connection may have open at once.
    pub max_subscriptions: usize,
    /// Who clients are and what they may do.
    pub auth: Arc<Authenticator>,
}

/// Serves one connection until the client leaves or the broker shuts down.
#[instrument(name = "session", skip_all, fields(peer = %conn.remote_addr()))]
pub async fn run(
    broker: Arc<Broker>,
    conn: Connection,
    settings: Arc<SessionSettings>,
    shutdown: CancellationToken,
) {
    let (control, access) =
        match tokio::time::timeout(settings.handshake_timeout, handshake(&conn, &settings)).await {
            Ok(Ok(accepted)) => accepted,
            Ok(Err(reason)) => {
                info!(%reason, "handshake refused");
                conn.close(CloseCode::ProtocolViolation, &reason);
                return;
            }
            Err(_) => {
                info!("no hello in time");
                conn.close(CloseCode::ProtocolViolation, "no hello received in time");
                return;
            }
        };
    let tasks = TaskTracker::new();
    tasks.spawn(control_loop(
        Arc::clone(&broker),
        control,
        access.clone(),
        settings.max_inflight,
        shutdown.clone(),
    ));
    let subscriptions = Arc::new(Semaphore::new(settings.max_subscriptions));
    loop {
        tokio::select! {
            stream = conn.accept_stream() => match stream {
                Ok(stream) => {
                    // Taken before the stream's first frame is read, so a client cannot
                    // open more than its share by opening them all at once.
                    let slot = Arc::clone(&subscriptions).try_acquire_owned().ok();
                    tasks.spawn(serve_stream(
                        Arc::clone(&broker),
                        access.clone(),
                        slot,
                        Arc::clone(&settings),
                        stream,
                        shutdown.clone(),
                    ));
                }
                Err(e) => {
                    debug!(reason = %e, "connection ended");
                    break;
                }
            },
            () = shutdown.cancelled() => break,
        }
    }
    tasks.close();
    tasks.wait().await;
}

/// Serves a client-opened stream by its first frame: `Subscribe` opens a
/// subscription, `Join` a group membership. `slot` is the stream's place under the
/// connection's subscription limit (`None`: the limit is reached).
async fn serve_stream(
    broker: Arc<Broker>,
    access: Access,
    slot: Option<OwnedSemaphorePermit>,
    settings: Arc<SessionSettings>,
    stream: FrameStream,
    shutdown: CancellationToken,
) {
    let FrameStream {
        mut reader,
        mut writer,
    } = stream;
    let full = || {
        WireError::new(
            ErrorCode::LimitReached,
            format!(
                "this connection has {} subscriptions and group memberships open already \
                 (limits.max_subscriptions_per_connection)",
                settings.max_subscriptions
            ),
        )
    };
    let error = match reader.next().await {
        Incoming::Frame(ClientFrame::Subscribe(_)) | Incoming::Frame(ClientFrame::Join(_))
            if slot.is_none() =>
        {
            full()
        }
        Incoming::Frame(ClientFrame::Subscribe(subscribe)) => {
            match requests::authorize_subscribe(&access, &subscribe.pattern) {
                Ok(()) => {
                    return subscription::serve(broker, reader, writer, subscribe, shutdown).await;
                }
                Err(e) => WireError::from(&e),
            }
        }
        Incoming::Frame(ClientFrame::Join(join)) => {
            match requests::authorize_group(&broker, &access, &join.group) {
                Ok(()) => return member::serve(broker, reader, writer, join, shutdown).await,
                Err(e) => WireError::from(&e),
            }
        }
        Incoming::Frame(other) => WireError::new(
            ErrorCode::UnexpectedMessage,
            format!(
                "a new stream must start with Subscribe or Join, not {} (requests go on the control stream)",
                frame_kind(&other)
            ),
        ),
        Incoming::Bad(e) => frame_error(&e),
        Incoming::End => return,
    };
    refuse(&mut writer, error).await;
}

/// Reads the client's hello on its first stream, authenticates the client and
/// answers.
async fn handshake(
    conn: &Connection,
    settings: &SessionSettings,
) -> Result<(FrameStream, Access), String> {
    let mut stream = conn.accept_stream().await.map_err(|e| e.to_string())?;
    let refusal = match stream.reader.next().await {
        Incoming::Frame(ClientFrame::Hello(hello)) if hello.version == PROTOCOL_VERSION => {
            let cert_name = conn.peer_common_name();
            match settings
                .auth
                .authenticate(hello.token.as_deref(), cert_name.as_deref())
            {
                Ok(access) => {
                    let ours = ServerFrame::Hello(ServerHello {
                        version: PROTOCOL_VERSION,
                        server: format!("quiver/{}", env!("CARGO_PKG_VERSION")),
                        limits: settings.limits,
                        principal: access.principal().map(str::to_owned),
                    });
                    stream.writer.send(&ours).await.map_err(|e| e.to_string())?;
                    debug!(client = %hello.client, principal = ?access.principal(), "handshake done");
                    return Ok((stream, access));
                }
                Err(e) => {
                    warn!(client = %hello.client, reason = %e, "authentication failed");
                    WireError::new(ErrorCode::Unauthenticated, e.to_string())
                }
            }
        }
        Incoming::Frame(ClientFrame::Hello(hello)) => WireError::new(
            ErrorCode::UnsupportedVersion,
            format!(
                "this broker speaks protocol version {PROTOCOL_VERSION}; the client speaks {}",
                hello.version
            ),
        ),
        Incoming::Frame(_) => WireError::new(
            ErrorCode::UnexpectedMessage,
            "the first frame of a connection must be a Hello",
        ),
        Incoming::Bad(e) => WireError::new(
            frame_error(&e).code,
            format!(
                "the first frame is not a protocol version {PROTOCOL_VERSION} Hello (a client \
                 of another version?): {e}"
            ),
        ),
        Incoming::End => {
            return Err("the client closed its first stream before saying hello".into());
        }
    };
    // Let the client read the refusal before the connection closes.
    let _ = stream
        .writer
        .send(&ServerFrame::Error(refusal.clone()))
        .await;
    stream.writer.finish_and_wait(Duration::from_secs(2)).await;
    Err(refusal.message)
}

/// The error answering a frame that could not be decoded.
pub(crate) fn frame_error(e: &FrameError) -> WireError {
    let code = match e {
        FrameError::TooLarge { .. } => ErrorCode::FrameTooLarge,
        FrameError::Malformed(_) => ErrorCode::Malformed,
    };
    WireError::new(code, e.to_string())
}

/// Serves the control stream: pipelined requests, replies as they complete.
async fn control_loop(
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
                            format!("{} is not valid on the control stream", frame_kind(&other)),
                        );
                        if writer.send(&ServerFrame::Error(error)).await.is_err() {
                            return;
                        }
                    }
                    Incoming::Bad(e) => {
                        debug!(error = %e, "bad frame on the control stream");
                        if writer.send(&ServerFrame::Error(frame_error(&e))).await.is_err() {
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
        let bye = WireError::new(ErrorCode::ShuttingDown, "the broker is shutting down");
        return refuse(&mut writer, bye).await;
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
    if let Err(e) = requests::authorize(broker, access, &op) {
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
        op => {
            let access = access.clone();
            async move {
                let result = execute(&broker, op).await;
                reply(
                    result
                        .map(|answer| requests::visible(&broker, &access, answer))
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
        Op::Publish { .. } | Op::PublishEach { .. } => Err(BrokerError::InvalidArgument(
            "a publish is dispatched, not executed".into(),
        )),
        Op::CreateTopic { name, config } => broker
            .create_topic(&name, &config)
            .await
            .map(OpReply::Topic),
        Op::DeleteTopic { name } => broker.delete_topic(&name).await.map(|()| OpReply::Deleted),
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

/// A frame's kind, for error messages.
pub(crate) fn frame_kind(frame: &ClientFrame) -> &'static str {
    match frame {
        ClientFrame::Hello(_) => "Hello",
        ClientFrame::Request(_) => "a request",
        ClientFrame::Subscribe(_) => "Subscribe",
        ClientFrame::Credit(_) => "Credit",
        ClientFrame::Join(_) => "Join",
        ClientFrame::Settle(_) => "Settle",
    }
}

/// Sends a last error on a stream and ends it, waiting (briefly) until the client has
/// it: on shutdown the connection closes next, which would discard unacknowledged data.
pub(crate) async fn refuse(writer: &mut FrameWriter, error: WireError) {
    if writer.send(&ServerFrame::Error(error)).await.is_ok() {
        writer.finish_and_wait(LAST_WORDS_TIMEOUT).await;
    }
}

/// How long a last error frame may take to be acknowledged before the stream is left.
const LAST_WORDS_TIMEOUT: Duration = Duration::from_secs(1);
