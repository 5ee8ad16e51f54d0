//! One connection's request multiplexer. One control stream carries every request of
//! a client. Callers encode their own frames (so a large publish is encoded on the
//! caller's task), hand them to a writer task (`outgoing.rs`) that coalesces whatever
//! is queued into one write, and wait on a oneshot that the reader task completes when
//! the reply with the same id arrives. Many requests are therefore in flight at once
//! (pipelining), from any number of tasks. One-record publishes are handed over
//! unencoded, so the writer can merge those queued together into one frame.
//! Subscriptions and group memberships get streams of their own ([`Mux::open_stream`]).
//!
//! Invariant: a request is queued when it is made, not when its future is polled, so
//! requests go out in the order they were made.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use quiver_protocol::{
    ClientFrame, ErrorCode, Limits, NewRecord, Op, OpReply, PublishId, Request, ServerFrame, frame,
};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use super::outgoing::{self, EachLimits, Outgoing, ReceiptReply, Single};
use super::pending::{Pending, Waiter, encode, lost_reason};
use super::stream::{FrameReader, FrameSender};
use crate::error::{Error, Result};

/// Room for a `PublishEach` frame's own fields (request id, topic, first id) beside
/// its records.
const EACH_FRAME_OVERHEAD: usize = 1024;

/// What every clone of a client shares: the connection and its control stream.
#[derive(Debug)]
pub(crate) struct Mux {
    endpoint: quinn::Endpoint,
    conn: quinn::Connection,
    pub(crate) limits: Limits,
    pub(crate) principal: Option<String>,
    writes: mpsc::UnboundedSender<Outgoing>,
    /// What one `PublishEach` may hold.
    each: EachLimits,
    pending: Arc<Pending>,
    producer: u64,
    sequence: AtomicU64,
}

/// A connection whose handshake is done: what [`Mux::start`] takes over.
#[derive(Debug)]
pub(crate) struct Handshaken {
    pub(crate) endpoint: quinn::Endpoint,
    pub(crate) conn: quinn::Connection,
    /// The control stream.
    pub(crate) send: FrameSender,
    pub(crate) frames: FrameReader,
    pub(crate) limits: Limits,
    pub(crate) principal: Option<String>,
    pub(crate) producer: u64,
}

impl Mux {
    /// Starts the control stream's writer and reader tasks.
    pub(crate) fn start(link: Handshaken) -> Arc<Self> {
        let Handshaken {
            endpoint,
            conn,
            send,
            frames,
            limits,
            principal,
            producer,
        } = link;
        let pending = Arc::new(Pending::default());
        let (writes, write_rx) = mpsc::unbounded_channel();
        let each = EachLimits {
            bytes: usize::try_from(limits.max_frame_len)
                .unwrap_or(usize::MAX)
                .saturating_sub(EACH_FRAME_OVERHEAD)
                .min(outgoing::MAX_EACH_BYTES),
            records: limits.max_batch_records.max(1) as usize,
            max_frame_len: limits.max_frame_len,
        };
        tokio::spawn(outgoing::write_frames(
            send.into_inner(),
            write_rx,
            Arc::clone(&pending),
            each,
        ));
        tokio::spawn(read_replies(frames, Arc::clone(&pending), conn.clone()));
        Arc::new(Self {
            endpoint,
            conn,
            limits,
            principal,
            writes,
            each,
            pending,
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

    /// The error for a request whose connection is gone.
    pub(crate) fn lost(&self) -> Error {
        self.pending.lost()
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
            match rx.await {
                Ok(Ok(reply)) => Ok(reply),
                Ok(Err(e)) => Err(Error::Server(e)),
                Err(_) => Err(mux.lost()),
            }
        }
    }

    /// Encodes a request, checking its size against the broker's limit, and hands it
    /// to the writer task with who waits for its reply.
    fn queue_frame(&self, op: Op, waiter: Waiter) -> Result<()> {
        let id = self.pending.next_id();
        let frame = encode(&ClientFrame::Request(Request { id, op }))?;
        let body_len = frame.len() - frame::LENGTH_PREFIX_LEN;
        if body_len as u64 > self.limits.max_frame_len {
            return Err(Error::TooLarge {
                size: body_len,
                max: self.limits.max_frame_len,
            });
        }
        self.pending.insert(id, waiter)?;
        if self.writes.send(Outgoing::Frame(frame)).is_err() {
            self.pending.lock().replies.remove(&id);
            return Err(self.pending.lost());
        }
        Ok(())
    }

    /// Hands a one-record publish to the writer task, which may merge it with the
    /// ones queued after it. A record too large to share a frame goes in one of its
    /// own, encoded here, so its size is checked exactly.
    pub(crate) fn queue_single(
        &self,
        topic: &str,
        record: NewRecord,
        id: PublishId,
    ) -> Result<ReceiptReply> {
        let (reply, rx) = oneshot::channel();
        let bound = outgoing::encoded_bound(&record);
        if bound > self.each.bytes {
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
            return Err(self.pending.lost());
        }
        Ok(rx)
    }

    /// Opens a stream, sends its first frame and waits for the server to accept it
    /// (with `accepted`) or refuse it (with an error).
    pub(crate) async fn open_stream(
        &self,
        first: &ClientFrame,
        accepted: ServerFrame,
    ) -> Result<(FrameSender, FrameReader)> {
        let (send, recv) = self
            .conn
            .open_bi()
            .await
            .map_err(|e| Error::ConnectionLost(e.to_string()))?;
        let mut send = FrameSender::new(send);
        send.send(first).await?;
        let mut frames = FrameReader::new(recv);
        match frames.next().await? {
            frame if frame == accepted => Ok((send, frames)),
            ServerFrame::Error(e) => Err(Error::Server(e)),
            other => Err(Error::Protocol(format!(
                "expected {accepted:?}, got {other:?}"
            ))),
        }
    }

    /// The reason the connection ended, if it did (see [`lost_reason`]).
    pub(crate) fn lost_reason(&self, error: Error) -> Error {
        lost_reason(&self.conn, error)
    }

    /// Closes the connection, waiting briefly for the close to reach the server.
    pub(crate) async fn close(&self) {
        self.conn.close(0u32.into(), b"client closed");
        let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
    }
}

impl Drop for Mux {
    fn drop(&mut self) {
        self.conn.close(0u32.into(), b"client dropped");
    }
}

/// Matches replies on the control stream to the requests waiting for them, until the
/// stream ends; then closes `pending`.
async fn read_replies(mut frames: FrameReader, pending: Arc<Pending>, conn: quinn::Connection) {
    let reason = loop {
        match frames.next().await {
            Ok(ServerFrame::Reply(reply)) => {
                let waiter = pending.lock().replies.remove(&reply.id);
                if let Some(waiter) = waiter {
                    waiter.answer(reply.result);
                }
            }
            Ok(ServerFrame::Error(e)) => {
                // Not tied to a request: the server could not read something we sent.
                warn!(error = %e, "server reported a stream error");
                if e.code == ErrorCode::ShuttingDown {
                    break e.to_string();
                }
            }
            Ok(other) => break format!("unexpected frame on the control stream: {other:?}"),
            Err(e @ Error::ConnectionLost(_)) => match lost_reason(&conn, e) {
                Error::ConnectionLost(reason) => break reason,
                other => break other.to_string(),
            },
            Err(e) => break e.to_string(),
        }
    };
    debug!(%reason, "control stream ended");
    pending.close(reason);
}
