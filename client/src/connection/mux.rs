//! A client's request multiplexer. One control stream carries every request of a
//! client. Callers encode their own frames (so a large publish is encoded on the
//! caller's task), hand them to the writer (`outgoing.rs`, run by the supervisor) that
//! coalesces whatever is queued into one write, and wait on a oneshot that the reader
//! completes when the reply with the same id arrives. Many requests are therefore in
//! flight at once (pipelining), from any number of tasks. One-record publishes are
//! handed over unencoded, so the writer can merge those queued together into one frame.
//! Subscriptions and group memberships get streams of their own
//! ([`Mux::open_resumable`]).
//!
//! The multiplexer outlives connections: requests queued while the supervisor
//! reconnects go out on the next connection, and publishes are kept (encoded) until
//! answered, to be written again if their connection is lost.
//!
//! Invariant: a request is queued when it is made, not when its future is polled, so
//! requests go out in the order they were made.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use quiver_protocol::{
    ClientFrame, ErrorCode, Limits, NewRecord, Op, OpReply, PublishId, Request, ServerFrame, frame,
};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::debug;

use super::dial::{Dialed, Dialer};
use super::outgoing::{EachLimits, Outgoing, ReceiptReply, Single, encoded_bound};
use super::pending::{Waiter, encode, lost_reason};
use super::reconnect::{ConnectionState, Reconnect};
use super::stream::{FrameReader, FrameSender};
use super::supervisor::{self, Link, Shared};
use crate::error::{Error, Result};

/// What every clone of a client shares.
#[derive(Debug)]
pub(crate) struct Mux {
    shared: Arc<Shared>,
    dialer: Arc<Dialer>,
    writes: mpsc::UnboundedSender<Outgoing>,
    pub(crate) principal: Option<String>,
    producer: u64,
    sequence: AtomicU64,
}

/// A stream whose owner opens it again on the next connection when its connection
/// is lost: a subscription, a group membership.
pub(crate) trait Resumable {
    /// The stream's first frame, saying where to resume if it was open before.
    fn first_frame(&self) -> ClientFrame;
    /// Takes the broker's answer to it (other than an error): fails if it is not the
    /// one expected.
    fn accept(&mut self, answer: ServerFrame) -> Result<()>;
}

/// A stream opened on the connection of generation `generation`.
#[derive(Debug)]
pub(crate) struct Opened {
    pub(crate) send: FrameSender,
    pub(crate) frames: FrameReader,
    pub(crate) generation: u64,
    conn: quinn::Connection,
}

impl Opened {
    /// The reason the stream's connection ended, if it did (see [`lost_reason`]).
    pub(crate) fn lost_reason(&self, error: Error) -> Error {
        lost_reason(&self.conn, error)
    }

    /// Whether the stream's connection is closed (not just the stream).
    pub(crate) fn connection_closed(&self) -> bool {
        self.conn.close_reason().is_some()
    }
}

impl Mux {
    /// Starts the supervisor on the first connection.
    pub(crate) fn start(
        dialer: Dialer,
        first: Dialed,
        reconnect: Reconnect,
        producer: u64,
    ) -> Arc<Self> {
        let shared = Arc::new(Shared::new(&first, reconnect));
        let dialer = Arc::new(dialer);
        let principal = first.principal.clone();
        let (writes, queue) = mpsc::unbounded_channel();
        tokio::spawn(supervisor::run(
            first,
            Arc::clone(&dialer),
            reconnect,
            queue,
            Arc::clone(&shared),
        ));
        Arc::new(Self {
            shared,
            dialer,
            writes,
            principal,
            producer,
            sequence: AtomicU64::new(0),
        })
    }

    /// A fresh publish id: this client's producer id and its next sequence number.
    pub(crate) fn next_publish_id(&self) -> PublishId {
        PublishId {
            producer: self.producer,
            sequence: self.sequence.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// The limits the broker in use announced.
    pub(crate) fn limits(&self) -> Limits {
        self.shared.limits()
    }

    /// Whether lost connections are replaced.
    pub(crate) fn reconnects(&self) -> bool {
        self.shared.reconnects
    }

    pub(crate) fn state(&self) -> watch::Receiver<ConnectionState> {
        self.shared.state()
    }

    /// The error for a request whose client is closed.
    pub(crate) fn lost(&self) -> Error {
        self.shared.pending.lost()
    }

    /// Queues one request for sending, now, and returns a future of its reply.
    ///
    /// Queueing happens in this call, not when the future is first polled, so requests
    /// go out in the order they were made however their futures are polled.
    pub(crate) fn call(
        self: &Arc<Self>,
        op: Op,
    ) -> impl Future<Output = Result<OpReply>> + Send + 'static {
        let mux = Arc::clone(self);
        let (tx, rx) = oneshot::channel();
        let queued = self.queue_frame(op, Waiter::One(tx));
        async move {
            queued?;
            rx.await.unwrap_or_else(|_| Err(mux.lost()))
        }
    }

    /// Encodes a request, checking its size against the broker's limit, and hands it
    /// to the writer with who waits for its reply.
    fn queue_frame(&self, op: Op, waiter: Waiter) -> Result<()> {
        let id = self.shared.pending.next_id();
        let again = safe_to_repeat(&op);
        let frame = encode(&ClientFrame::Request(Request { id, op }))?;
        let body_len = frame.len() - frame::LENGTH_PREFIX_LEN;
        let max = self.limits().max_frame_len;
        if body_len as u64 > max {
            return Err(Error::TooLarge {
                size: body_len,
                max,
            });
        }
        let resend = again.then(|| frame.clone());
        self.shared
            .pending
            .register(id, waiter, resend)
            .map_err(|(_, reason)| Error::ConnectionLost(reason))?;
        if self.writes.send(Outgoing::Frame { id, frame }).is_err() {
            self.shared.pending.remove(id);
            return Err(self.lost());
        }
        Ok(())
    }

    /// Hands a one-record publish to the writer, which may merge it with the ones
    /// queued after it. A record too large to share a frame goes in one of its own,
    /// encoded here, so its size is checked exactly.
    pub(crate) fn queue_single(
        &self,
        topic: &str,
        record: NewRecord,
        id: PublishId,
    ) -> Result<ReceiptReply> {
        let (reply, rx) = oneshot::channel();
        let bound = encoded_bound(topic, &record);
        if bound > EachLimits::from(self.limits()).bytes {
            let op = Op::PublishEach {
                topic: topic.to_owned(),
                records: vec![record],
                first_id: id,
            };
            self.queue_frame(op, Waiter::Each(vec![reply]))?;
            return Ok(rx);
        }
        let single = Single {
            topic: topic.to_owned(),
            record,
            id,
            bound,
            reply,
        };
        if self.writes.send(Outgoing::Single(single)).is_err() {
            return Err(self.lost());
        }
        Ok(rx)
    }

    /// Opens `stream` on the connection in use (waiting for one while reconnecting),
    /// or on one newer than generation `after`: sends its first frame and hands the
    /// broker's answer to it. While connections are lost under the way (the broker
    /// restarting), it tries again on the next one; it fails when the broker refuses
    /// the stream or the client closes.
    pub(crate) async fn open_resumable(
        &self,
        stream: &mut impl Resumable,
        mut after: u64,
    ) -> Result<Opened> {
        loop {
            let link = self.shared.link_after(after).await?;
            let error = match try_open(&link, stream).await {
                Ok(opened) => return Ok(opened),
                Err(error) => error,
            };
            let closed = link.conn.close_reason().is_some();
            self.resume_or_fail(error, closed).await?;
            after = link.generation;
        }
    }

    /// After `stream`'s stream `failed` with `error`: the stream opened again on the
    /// next connection, when the connection was lost and the client reconnects; else
    /// the error to end it with. `None` if `abandoned` completes first (its owner is
    /// gone).
    pub(crate) async fn resume(
        &self,
        stream: &mut impl Resumable,
        failed: &Opened,
        error: Error,
        abandoned: impl Future<Output = ()>,
    ) -> Option<Result<Opened>> {
        if let Err(error) = self.resume_or_fail(error, failed.connection_closed()).await {
            return Some(Err(error));
        }
        debug!("opening the stream again on the next connection");
        tokio::select! {
            reopened = self.open_resumable(stream, failed.generation) => Some(reopened),
            () = abandoned => None,
        }
    }

    /// Whether a stream that failed with `error` is to be opened again on the next
    /// connection (`Ok`): when its connection was lost (`connection_closed`) or the
    /// broker is shutting down, and the client reconnects. Otherwise the error to end
    /// the stream with; without reconnection, the reason the client closed.
    async fn resume_or_fail(&self, error: Error, connection_closed: bool) -> Result<()> {
        let lost = match &error {
            Error::Server(e) => e.code == ErrorCode::ShuttingDown,
            // Not when the stream alone ended while its connection carries on.
            Error::ConnectionLost(_) => connection_closed,
            _ => false,
        };
        match (lost, self.reconnects(), error) {
            (true, true, _) => Ok(()),
            // The client closes with its connection; the reason it gives is the best.
            (true, false, Error::ConnectionLost(_)) => Err(self.shared.closed().await),
            (_, _, error) => Err(error),
        }
    }

    /// Moves the client to a new local UDP socket, as a network change would; the
    /// connection carries on (QUIC connection migration).
    pub(crate) fn rebind(&self) -> Result<()> {
        self.dialer
            .rebind()
            .map_err(|e| Error::ConnectionLost(format!("cannot move to a new socket: {e}")))
    }

    /// Closes the client, waiting briefly for the close to reach the server.
    pub(crate) async fn close(&self) {
        self.shared.closing.cancel();
        let mut state = self.state();
        let closed = state.wait_for(|s| matches!(s, ConnectionState::Closed { .. }));
        let _ = tokio::time::timeout(Duration::from_secs(1), closed).await;
        self.dialer.wait_idle(Duration::from_secs(1)).await;
    }
}

impl Drop for Mux {
    fn drop(&mut self) {
        self.shared.closing.cancel();
    }
}

/// Opens a stream for `stream` on `link`, sends its first frame and takes the
/// broker's answer.
async fn try_open(link: &Link, stream: &mut impl Resumable) -> Result<Opened> {
    let lost = |e: Error| lost_reason(&link.conn, e);
    let (send, recv) = link
        .conn
        .open_bi()
        .await
        .map_err(|e| lost(Error::ConnectionLost(e.to_string())))?;
    let mut send = FrameSender::new(send);
    send.send(&stream.first_frame()).await.map_err(lost)?;
    let mut frames = FrameReader::new(recv);
    match frames.next().await.map_err(lost)? {
        ServerFrame::Error(e) => return Err(Error::Server(e)),
        answer => stream.accept(answer)?,
    }
    Ok(Opened {
        send,
        frames,
        generation: link.generation,
        conn: link.conn.clone(),
    })
}

/// Whether a request may be written again on a new connection when its first
/// connection was lost before the reply: publishes (the broker stores each publish id
/// once, and each forwarded origin offset once) and queries. Anything else may have been acted on, and fails instead.
fn safe_to_repeat(op: &Op) -> bool {
    matches!(
        op,
        Op::Publish { id: Some(_), .. }
            | Op::PublishEach { .. }
            | Op::PublishAcross { .. }
            | Op::Forward(_)
            | Op::DescribeTopic { .. }
            | Op::ListTopics
            | Op::ListPlugins
            | Op::PluginStatus { .. }
            | Op::DescribeGroup { .. }
            | Op::ListGroups
            | Op::DescribeLink { .. }
            | Op::ListLinks
            | Op::DescribeBroker
    )
}
