//! One client connection: everything that serves it, each in a file of its own.
//!
//! - this module: the connection's life: the handshake, then the control stream's task
//!   and a task per stream the client opens, handed out by its first frame;
//! - `handshake`: the version handshake and authentication;
//! - `control`: the control stream's pipelined requests;
//! - `subscription`: a subscription stream; `member`: a group member's stream;
//!
//! New listeners (MQTT, HTTP) are siblings of this module, sharing the broker.
//!
//! Invariants worth naming:
//! - one connection's publishes reach storage in the order they arrive (the broker
//!   keeps that order, given the connection's `PublishOrder`); replies go out as they
//!   complete;
//! - at most `max_inflight` requests wait for completion; past that the stream is not
//!   read, and QUIC flow control pushes back on the client;
//! - a bad frame is answered with an error and the stream carries on.

mod control;
mod handshake;
mod member;
mod subscription;

use std::sync::Arc;
use std::time::Duration;

use quiver_protocol::{ClientFrame, ErrorCode, Limits, WireError};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, instrument};

use crate::auth::{Access, Authenticator};
use crate::broker::streams::StreamKind;
use crate::broker::{Broker, authorize};
use crate::transport::{CloseCode, Connection, FrameStream, Incoming};
use handshake::handshake;

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
    tasks.spawn(control::serve(
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
    if shutdown.is_cancelled() {
        // Every stream has had its `ShuttingDown` error (and a moment to read it).
        conn.close(CloseCode::ShuttingDown, "the broker is shutting down");
    }
}

/// Serves a client-opened stream by its first frame: `Subscribe` or `SubscribeAt`
/// opens a subscription, `Join` a group membership. `slot` is the stream's place under the
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
        Incoming::Frame(
            ClientFrame::Subscribe(_) | ClientFrame::SubscribeAt(_) | ClientFrame::Join(_),
        ) if slot.is_none() => full(),
        Incoming::Frame(ClientFrame::Subscribe(subscribe)) => {
            match authorize::subscribe(&access, &subscribe.pattern) {
                Ok(()) => {
                    let _open = broker.streams().open(StreamKind::Subscription);
                    let start = subscription::Start::Fresh(subscribe);
                    return subscription::serve(broker, reader, writer, start, shutdown).await;
                }
                Err(e) => WireError::from(&e),
            }
        }
        Incoming::Frame(ClientFrame::SubscribeAt(at)) => {
            match authorize::subscribe(&access, &at.subscribe.pattern) {
                Ok(()) => {
                    let _open = broker.streams().open(StreamKind::Subscription);
                    let start = subscription::Start::At(at);
                    return subscription::serve(broker, reader, writer, start, shutdown).await;
                }
                Err(e) => WireError::from(&e),
            }
        }
        Incoming::Frame(ClientFrame::Join(join)) => {
            match authorize::group(&broker, &access, &join.group) {
                Ok(()) => {
                    let _open = broker.streams().open(StreamKind::Member);
                    return member::serve(broker, reader, writer, join, shutdown).await;
                }
                Err(e) => WireError::from(&e),
            }
        }
        Incoming::Frame(other) => WireError::new(
            ErrorCode::UnexpectedMessage,
            format!(
                "a new stream must start with Subscribe, SubscribeAt or Join, not {} (requests go on the control stream)",
                other.kind()
            ),
        ),
        Incoming::Bad(e) => WireError::from(&e),
        Incoming::End => return,
    };
    writer.refuse(error).await;
}

/// The last word every stream gets when the broker shuts down: clients that reconnect
/// take it as the cue to open the stream again on the next connection.
fn shutting_down() -> WireError {
    WireError::new(ErrorCode::ShuttingDown, "the broker is shutting down")
}
