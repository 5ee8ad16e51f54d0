//! The control stream's writer task, and how one-record publishes share frames.
//!
//! Callers queue [`Outgoing`] items in call order. Most requests arrive as frames their
//! caller encoded. A one-record publish ([`Client::publish`](crate::Client::publish))
//! arrives unencoded instead, so that the writer can put it in one `PublishEach` frame
//! with the one-record publishes queued right behind it to the same topic: the broker
//! then decodes, deduplicates, stores and answers them as one request, while each
//! keeps its own id, receipt and error. Nothing waits to be merged: the writer takes
//! only what is already queued when it wakes up, so a lone publish goes out at once
//! and publishes merge only when they arrive faster than the stream drains.
//!
//! Invariant: items go out in the order they were queued; a merged frame holds
//! consecutive publishes with consecutive sequences, in order.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use quiver_protocol::{
    ClientFrame, ErrorCode, NewRecord, Op, PublishId, Receipt, Request, WireError, frame,
};
use tokio::sync::{mpsc, oneshot};
use tracing::debug;

use super::pending::{Pending, Waiter};

/// The writer stops coalescing once a write reaches this size.
const MAX_WRITE: usize = 1 << 20;
/// The most record bytes (as [`encoded_bound`] counts them) one `PublishEach` frame
/// takes, so a merged frame never holds the broker's reading up for long.
pub(crate) const MAX_EACH_BYTES: usize = 256 * 1024;

/// What a one-record publish's future waits for.
pub(crate) type ReceiptReply = oneshot::Receiver<Result<Receipt, WireError>>;

/// One item for the writer task.
#[derive(Debug)]
pub(crate) enum Outgoing {
    /// A frame its caller encoded and registered.
    Frame(Bytes),
    /// A one-record publish, encoded by the writer, maybe together with the next ones.
    Single(Single),
}

/// A one-record publish waiting for the writer.
#[derive(Debug)]
pub(crate) struct Single {
    pub(crate) topic: String,
    pub(crate) record: NewRecord,
    pub(crate) id: PublishId,
    /// [`encoded_bound`] of `record`.
    pub(crate) bound: usize,
    pub(crate) reply: oneshot::Sender<Result<Receipt, WireError>>,
}

/// At least the bytes `record` takes in a frame: its size as limits count it, plus
/// the most its lengths, options and header framing can add.
pub(crate) fn encoded_bound(record: &NewRecord) -> usize {
    const VARINT_MAX: usize = 10;
    record.size() + 4 * VARINT_MAX + 2 * VARINT_MAX * record.headers.len()
}

/// What a `PublishEach` frame may hold: `limits` as the broker announced them, and
/// [`MAX_EACH_BYTES`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct EachLimits {
    /// Record bytes ([`encoded_bound`]) in one frame.
    pub(crate) bytes: usize,
    /// Records in one frame.
    pub(crate) records: usize,
    /// The longest frame body the broker accepts.
    pub(crate) max_frame_len: u64,
}

/// Writes queued items to the control stream until every sender is gone or the stream
/// fails, coalescing whatever is queued into one write.
pub(crate) async fn write_frames(
    mut send: quinn::SendStream,
    mut rx: mpsc::UnboundedReceiver<Outgoing>,
    pending: Arc<Pending>,
    limits: EachLimits,
) {
    let mut buf = BytesMut::new();
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        while let Some(item) = next.take() {
            match item {
                Outgoing::Frame(frame) => buf.extend_from_slice(&frame),
                Outgoing::Single(single) => {
                    let (merged, after) = merge(single, &mut rx, limits);
                    encode_each(merged, &pending, limits.max_frame_len, &mut buf);
                    next = after;
                }
            }
            if next.is_none() && buf.len() < MAX_WRITE {
                next = rx.try_recv().ok();
            }
        }
        if let Err(e) = send.write_all(&buf).await {
            debug!(cause = %e, "control stream closed for writing");
            return;
        }
        buf.clear();
    }
    let _ = send.finish();
}

/// `first` and the queued one-record publishes that may share its frame; also the
/// item that ended the run, if one was taken from the queue.
fn merge(
    first: Single,
    rx: &mut mpsc::UnboundedReceiver<Outgoing>,
    limits: EachLimits,
) -> (Vec<Single>, Option<Outgoing>) {
    let mut bytes = first.bound;
    let mut merged = vec![first];
    while merged.len() < limits.records {
        let Ok(item) = rx.try_recv() else {
            return (merged, None);
        };
        let last = merged.last().expect("merged starts with one");
        match item {
            Outgoing::Single(single)
                if single.topic == last.topic
                    && single.id.producer == last.id.producer
                    && Some(single.id.sequence) == last.id.sequence.checked_add(1)
                    && bytes + single.bound <= limits.bytes =>
            {
                bytes += single.bound;
                merged.push(single);
            }
            other => return (merged, Some(other)),
        }
    }
    (merged, None)
}

/// Registers merged publishes as one request and appends its frame to `buf`. If the
/// connection is gone, their futures report it.
fn encode_each(merged: Vec<Single>, pending: &Pending, max_frame_len: u64, buf: &mut BytesMut) {
    let first_id = merged[0].id;
    let mut topic = String::new();
    let mut records = Vec::with_capacity(merged.len());
    let mut replies = Vec::with_capacity(merged.len());
    for single in merged {
        topic = single.topic;
        records.push(single.record);
        replies.push(single.reply);
    }
    let id = pending.next_id();
    let request = ClientFrame::Request(Request {
        id,
        op: Op::PublishEach {
            topic,
            records,
            first_id,
        },
    });
    let start = buf.len();
    let refused = match frame::encode(&request, buf) {
        // The byte budget keeps records well within the limit; only an absurdly long
        // topic name (which the broker would refuse anyway) can pass it.
        Ok(()) if (buf.len() - start - frame::LENGTH_PREFIX_LEN) as u64 > max_frame_len => {
            let error = format!("the frame exceeds the broker's limit of {max_frame_len} bytes");
            Some(WireError::new(ErrorCode::FrameTooLarge, error))
        }
        Ok(()) => None,
        Err(e) => Some(WireError::new(ErrorCode::FrameTooLarge, e.to_string())),
    };
    if let Some(error) = refused {
        buf.truncate(start);
        for reply in replies {
            let _ = reply.send(Err(error.clone()));
        }
        return;
    }
    // Registered before the frame is written, so the reply always finds it.
    if pending.insert(id, Waiter::Each(replies)).is_err() {
        // The connection is gone; the dropped replies tell their futures so.
        buf.truncate(start);
    }
}
