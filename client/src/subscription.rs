//! A subscription: a [`Stream`] of records with credit-based flow control.
//!
//! The server sends at most as many records as it has credit for. A pump task decodes
//! each batch from the QUIC stream and hands it over whole, and the [`Subscription`]
//! grants credit back as the application takes records out. So a subscriber that
//! stops reading holds at most one window of records, here and on the server, and
//! slows only itself.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::Stream;
use quiver_protocol::record::decode_shared;
use quiver_protocol::{ClientFrame, NewRecord, Record as StoredRecord, Records, ServerFrame};
use tokio::sync::mpsc;
use tracing::debug;

use crate::connection::{FrameReader, FrameSender, Mux};
use crate::error::{Error, Result};

/// A record delivered to a subscriber or a group member: the stored record (offset,
/// append time, key, headers, payload; a `Record` dereferences to it, so
/// `record.offset` and `record.header(name)` read it) and the topic it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The topic it belongs to.
    pub topic: Arc<str>,
    /// The record as stored.
    pub stored: StoredRecord,
}

impl std::ops::Deref for Record {
    type Target = StoredRecord;

    fn deref(&self) -> &StoredRecord {
        &self.stored
    }
}

impl Record {
    /// The stored record alone, by value.
    pub fn into_stored(self) -> StoredRecord {
        self.stored
    }

    pub(crate) fn new(topic: &Arc<str>, offset: u64, timestamp: u64, record: NewRecord) -> Self {
        Self {
            topic: Arc::clone(topic),
            stored: StoredRecord {
                offset,
                timestamp,
                key: record.key,
                headers: record.headers,
                payload: record.payload,
            },
        }
    }
}

/// A live subscription; a [`Stream`] of records in offset order per topic.
///
/// The stream ends with an error if the server ends the subscription (for example on
/// shutdown) and ends without one if the connection is closed by this client.
/// Dropping it unsubscribes.
#[derive(Debug)]
pub struct Subscription {
    /// Decoded batches; never more records than credit granted, so at most a window.
    batches: mpsc::UnboundedReceiver<Result<Vec<Record>>>,
    /// The rest of the batch being read.
    current: std::vec::IntoIter<Record>,
    credit: mpsc::UnboundedSender<u32>,
    consumed: u32,
    window: u32,
    /// Keeps the connection open while the subscription lives.
    _mux: Arc<Mux>,
}

pub(crate) fn start(
    mux: Arc<Mux>,
    send: FrameSender,
    frames: FrameReader,
    window: u32,
) -> Subscription {
    let (tx, batches) = mpsc::unbounded_channel();
    let (credit, credit_rx) = mpsc::unbounded_channel();
    tokio::spawn(pump(frames, send, tx, credit_rx, Arc::clone(&mux)));
    Subscription {
        batches,
        current: Vec::new().into_iter(),
        credit,
        consumed: 0,
        window,
        _mux: mux,
    }
}

impl Subscription {
    /// The next record; `None` when the subscription has ended.
    pub async fn recv(&mut self) -> Option<Result<Record>> {
        std::future::poll_fn(|cx| Pin::new(&mut *self).poll_next(cx)).await
    }
}

impl Stream for Subscription {
    type Item = Result<Record>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if let Some(record) = this.current.next() {
                this.consumed += 1;
                // Grant credit in batches of half a window: fewer frames, never a stall.
                if this.consumed >= this.window.div_ceil(2) {
                    let _ = this.credit.send(this.consumed);
                    this.consumed = 0;
                }
                return Poll::Ready(Some(Ok(record)));
            }
            match std::task::ready!(this.batches.poll_recv(cx)) {
                Some(Ok(batch)) => this.current = batch.into_iter(),
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => return Poll::Ready(None),
            }
        }
    }
}

async fn pump(
    mut frames: FrameReader,
    mut send: FrameSender,
    batches: mpsc::UnboundedSender<Result<Vec<Record>>>,
    mut credit: mpsc::UnboundedReceiver<u32>,
    mux: Arc<Mux>,
) {
    loop {
        tokio::select! {
            frame = frames.next() => {
                let batch = match frame {
                    Ok(ServerFrame::Records(batch)) => match decode(batch) {
                        Ok(records) => records,
                        Err(e) => {
                            let _ = batches.send(Err(e));
                            break;
                        }
                    },
                    Ok(ServerFrame::Processed(processed)) => {
                        let topic: Arc<str> = processed.topic.into();
                        processed
                            .records
                            .into_iter()
                            .map(|d| Record::new(&topic, d.offset, d.timestamp, d.record))
                            .collect()
                    }
                    Ok(ServerFrame::Error(e)) => {
                        let _ = batches.send(Err(Error::Server(e)));
                        break;
                    }
                    Ok(other) => {
                        let error = Error::Protocol(format!("unexpected frame on a subscription: {other:?}"));
                        let _ = batches.send(Err(error));
                        break;
                    }
                    Err(e) => {
                        let _ = batches.send(Err(mux.lost_reason(e)));
                        break;
                    }
                };
                if batches.send(Ok(batch)).is_err() {
                    debug!("subscription dropped");
                    send.finish();
                    return;
                }
            }
            granted = credit.recv() => {
                let Some(n) = granted else {
                    // The Subscription was dropped: unsubscribe.
                    send.finish();
                    return;
                };
                if send.send(&ClientFrame::Credit(n)).await.is_err() {
                    break;
                }
            }
        }
    }
    send.finish();
}

/// The records of a delivered batch; their bytes are slices of the batch's.
fn decode(batch: Records) -> Result<Vec<Record>> {
    let topic: Arc<str> = batch.topic.into();
    let decoded = decode_shared(batch.base_offset, &batch.batch)
        .map_err(|e| Error::Protocol(e.to_string()))?;
    Ok(decoded
        .into_iter()
        .map(|stored| Record {
            topic: Arc::clone(&topic),
            stored,
        })
        .collect())
}
