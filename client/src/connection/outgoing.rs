//! The control stream's writer, and how one-record publishes share frames.
//!
//! Callers queue [`Outgoing`] items in call order. Most requests arrive as frames their
//! caller encoded and registered. A one-record publish
//! ([`Client::publish`](crate::Client::publish)) arrives unencoded instead, so that the
//! writer can put it in one frame with the one-record publishes queued right behind
//! it: a `PublishEach` when they all go to one topic, a `PublishAcross` (runs of one
//! topic each) when they go to several. The broker then decodes, deduplicates, stores
//! and answers them as one request, while each keeps its own id, receipt and error.
//! Nothing waits to be merged: the writer takes only what is already queued when it
//! wakes up, so a lone publish goes out at once and publishes merge only when they
//! arrive faster than the stream drains.
//!
//! Invariants: items go out in the order they were queued; a merged frame holds
//! consecutive publishes with consecutive sequences, in order; every request is marked
//! written (`pending.rs`) before its bytes go out.

use bytes::{Bytes, BytesMut};
use quiver_protocol::{
    ClientFrame, ErrorCode, Limits, NewRecord, Op, PublishId, Receipt, Request, TopicRun,
    WireError, frame,
};
use tokio::sync::{mpsc, oneshot};

use super::pending::{Pending, Waiter};
use crate::error::{Error, Result};

/// The writer stops gathering once a write reaches this size.
const MAX_WRITE: usize = 1 << 20;
/// The most record bytes (as [`encoded_bound`] counts them) one
/// merged frame takes, so it never holds the broker's reading up for long.
const MAX_EACH_BYTES: usize = 256 * 1024;
/// Room for a merged frame's own fields (request id, first id, lengths) beside its
/// records.
const EACH_FRAME_OVERHEAD: usize = 1024;

/// What a one-record publish's future waits for.
pub(crate) type ReceiptReply = oneshot::Receiver<Result<Receipt>>;

/// One item for the writer.
#[derive(Debug)]
pub(crate) enum Outgoing {
    /// A frame its caller encoded and registered as request `id`.
    Frame { id: u64, frame: Bytes },
    /// A one-record publish, encoded by the writer, maybe together with the next ones.
    Single(Single),
}

impl Outgoing {
    /// Tells the caller its request will not be written (the client has closed).
    pub(crate) fn fail(self, pending: &Pending) {
        match self {
            // Its waiter was registered, and closing the registry answered it.
            Self::Frame { .. } => {}
            Self::Single(single) => {
                let _ = single.reply.send(Err(pending.lost()));
            }
        }
    }
}

/// A one-record publish waiting for the writer.
#[derive(Debug)]
pub(crate) struct Single {
    pub(crate) topic: String,
    pub(crate) record: NewRecord,
    pub(crate) id: PublishId,
    /// [`encoded_bound`] of `topic` and `record`.
    pub(crate) bound: usize,
    pub(crate) reply: oneshot::Sender<Result<Receipt>>,
}

/// At least the bytes a one-record publish of `record` to `topic` takes in a merged
/// frame: the record's size as limits count it, plus the most its lengths, options and
/// header framing can add, plus the topic's name (in a frame across topics, each run
/// names its topic).
pub(crate) fn encoded_bound(topic: &str, record: &NewRecord) -> usize {
    const VARINT_MAX: usize = 10;
    topic.len() + record.size() + 5 * VARINT_MAX + 2 * VARINT_MAX * record.headers.len()
}

/// What a merged frame may hold under the limits a broker announced.
#[derive(Debug, Clone, Copy)]
pub(crate) struct EachLimits {
    /// Record bytes ([`encoded_bound`]) in one frame.
    pub(crate) bytes: usize,
    /// Records in one frame.
    pub(crate) records: usize,
    /// The longest frame body the broker accepts.
    pub(crate) max_frame_len: u64,
}

impl From<Limits> for EachLimits {
    fn from(limits: Limits) -> Self {
        Self {
            bytes: usize::try_from(limits.max_frame_len)
                .unwrap_or(usize::MAX)
                .saturating_sub(EACH_FRAME_OVERHEAD)
                .min(MAX_EACH_BYTES),
            records: limits.max_batch_records.max(1) as usize,
            max_frame_len: limits.max_frame_len,
        }
    }
}

/// Writes to one connection's control stream.
#[derive(Debug)]
pub(crate) struct Writer {
    send: quinn::SendStream,
    limits: EachLimits,
    /// The frames of the write being gathered.
    chunks: Vec<Bytes>,
    /// Their bytes.
    gathered: usize,
    /// The requests in it, with their write numbers.
    written: Vec<(u64, u64)>,
    /// Where merged frames are encoded.
    scratch: BytesMut,
}

impl Writer {
    pub(crate) fn new(send: quinn::SendStream, limits: EachLimits) -> Self {
        Self {
            send,
            limits,
            chunks: Vec::new(),
            gathered: 0,
            written: Vec::new(),
            scratch: BytesMut::new(),
        }
    }

    /// Writes frames again (those of a lost connection), in the order given.
    pub(crate) async fn resend(
        &mut self,
        frames: Vec<(u64, Bytes)>,
        pending: &Pending,
    ) -> Result<(), quinn::WriteError> {
        for (id, frame) in frames {
            self.push(pending, id, frame);
            if self.gathered >= MAX_WRITE {
                self.flush(pending).await?;
            }
        }
        self.flush(pending).await
    }

    /// Writes `first` and whatever else is queued behind it (up to [`MAX_WRITE`])
    /// in one write.
    pub(crate) async fn write(
        &mut self,
        first: Outgoing,
        rx: &mut mpsc::UnboundedReceiver<Outgoing>,
        pending: &Pending,
    ) -> Result<(), quinn::WriteError> {
        let mut next = Some(first);
        while let Some(item) = next.take() {
            match item {
                Outgoing::Frame { id, frame } => self.push(pending, id, frame),
                Outgoing::Single(single) => {
                    let (merged, after) = merge(single, rx, self.limits);
                    self.encode_each(merged, pending);
                    next = after;
                }
            }
            if next.is_none() && self.gathered < MAX_WRITE {
                next = rx.try_recv().ok();
            }
        }
        self.flush(pending).await
    }

    /// Ends the stream after what was written.
    pub(crate) fn finish(&mut self) {
        let _ = self.send.finish();
    }

    fn push(&mut self, pending: &Pending, id: u64, frame: Bytes) {
        self.gather(id, pending.next_write(), frame);
    }

    fn gather(&mut self, id: u64, write: u64, frame: Bytes) {
        self.written.push((id, write));
        self.gathered += frame.len();
        self.chunks.push(frame);
    }

    /// Marks what was gathered as written, then writes it.
    async fn flush(&mut self, pending: &Pending) -> Result<(), quinn::WriteError> {
        pending.mark_written(&self.written);
        self.written.clear();
        let result = self.send.write_all_chunks(&mut self.chunks).await;
        self.chunks.clear();
        self.gathered = 0;
        result
    }

    /// Registers merged publishes as one request and gathers its frame. If the client
    /// has closed, their futures report it.
    fn encode_each(&mut self, merged: Vec<Single>, pending: &Pending) {
        let first_id = merged[0].id;
        let mut runs: Vec<TopicRun> = Vec::new();
        let mut replies = Vec::with_capacity(merged.len());
        for single in merged {
            replies.push(single.reply);
            match runs.last_mut() {
                Some(run) if run.topic == single.topic => run.records.push(single.record),
                _ => runs.push(TopicRun {
                    topic: single.topic,
                    records: vec![single.record],
                }),
            }
        }
        let op = match <[TopicRun; 1]>::try_from(runs) {
            Ok([TopicRun { topic, records }]) => Op::PublishEach {
                topic,
                records,
                first_id,
            },
            Err(runs) => Op::PublishAcross { runs, first_id },
        };
        let id = pending.next_id();
        let request = ClientFrame::Request(Request { id, op });
        let max_frame_len = self.limits.max_frame_len;
        let refused = match frame::encode(&request, &mut self.scratch) {
            // The byte budget keeps records well within the limit; only an absurdly
            // long topic name (which the broker would refuse anyway) can pass it.
            Ok(()) if (self.scratch.len() - frame::LENGTH_PREFIX_LEN) as u64 > max_frame_len => {
                let error =
                    format!("the frame exceeds the broker's limit of {max_frame_len} bytes");
                Some(WireError::new(ErrorCode::FrameTooLarge, error))
            }
            Ok(()) => None,
            Err(e) => Some(WireError::new(ErrorCode::FrameTooLarge, e.to_string())),
        };
        let frame = self.scratch.split().freeze();
        if let Some(error) = refused {
            for reply in replies {
                let _ = reply.send(Err(Error::Server(error.clone())));
            }
            return;
        }
        // Registered before the frame is written, so the reply always finds it.
        let write = pending.next_write();
        let waiter = Waiter::Each(replies);
        match pending.register_written(id, waiter, Some(frame.clone()), write) {
            Ok(()) => self.gather(id, write, frame),
            Err((waiter, reason)) => waiter.fail(|| Error::ConnectionLost(reason.clone())),
        }
    }
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
                if single.id.producer == last.id.producer
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
