//! A subscription: a [`Stream`] of records with credit-based flow control.
//!
//! The server sends at most as many records as it has credit for. A pump task moves
//! records from the QUIC stream into a channel as large as the window, and the
//! [`Subscription`] grants credit back as the application takes records out. So a
//! subscriber that stops reading holds at most one window of records, here and on the
//! server, and slows only itself.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::Stream;
use quiver_protocol::record::{decode_batch, headers};
use quiver_protocol::{ClientFrame, Header, NewRecord, ServerFrame};
use tokio::sync::mpsc;
use tracing::debug;

use crate::connection::{Client, Frames, encode, lost_reason, next_frame};
use crate::error::{Error, Result};

/// A record delivered to a subscriber.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The topic it belongs to.
    pub topic: Arc<str>,
    /// Its position in the topic.
    pub offset: u64,
    /// When the broker appended it (ms since the Unix epoch).
    pub timestamp: u64,
    /// Optional key.
    pub key: Option<Bytes>,
    /// Headers, in the order published.
    pub headers: Vec<Header>,
    /// The payload.
    pub payload: Bytes,
}

impl Record {
    /// The first header with this name, if any.
    pub fn header(&self, name: &str) -> Option<&Bytes> {
        headers::find(&self.headers, name)
    }

    pub(crate) fn new(topic: &Arc<str>, offset: u64, timestamp: u64, record: NewRecord) -> Self {
        Self {
            topic: Arc::clone(topic),
            offset,
            timestamp,
            key: record.key,
            headers: record.headers,
            payload: record.payload,
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
    records: mpsc::Receiver<Result<Record>>,
    credit: mpsc::UnboundedSender<u32>,
    consumed: u32,
    window: u32,
    _client: Client,
}

pub(crate) fn start(
    client: Client,
    send: quinn::SendStream,
    frames: Frames,
    window: u32,
) -> Subscription {
    let (tx, records) = mpsc::channel(window as usize);
    let (credit, credit_rx) = mpsc::unbounded_channel();
    tokio::spawn(pump(
        frames,
        send,
        tx,
        credit_rx,
        client.shared.conn.clone(),
    ));
    Subscription {
        records,
        credit,
        consumed: 0,
        window,
        _client: client,
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
        let item = std::task::ready!(this.records.poll_recv(cx));
        if let Some(Ok(_)) = item {
            this.consumed += 1;
            // Grant credit in batches of half a window: fewer frames, never a stall.
            if this.consumed >= this.window.div_ceil(2) {
                let _ = this.credit.send(this.consumed);
                this.consumed = 0;
            }
        }
        Poll::Ready(item)
    }
}

async fn pump(
    mut frames: Frames,
    mut send: quinn::SendStream,
    records: mpsc::Sender<Result<Record>>,
    mut credit: mpsc::UnboundedReceiver<u32>,
    conn: quinn::Connection,
) {
    loop {
        tokio::select! {
            frame = next_frame(&mut frames) => {
                let batch = match frame {
                    Ok(ServerFrame::Records(batch)) => batch,
                    Ok(ServerFrame::Processed(processed)) => {
                        let topic: Arc<str> = processed.topic.into();
                        for delivered in processed.records {
                            let record = Record::new(&topic, delivered.offset, delivered.timestamp, delivered.record);
                            if records.send(Ok(record)).await.is_err() {
                                let _ = send.finish();
                                return;
                            }
                        }
                        continue;
                    }
                    Ok(ServerFrame::Error(e)) => {
                        let _ = records.send(Err(Error::Server(e))).await;
                        break;
                    }
                    Ok(other) => {
                        let error = Error::Protocol(format!("unexpected frame on a subscription: {other:?}"));
                        let _ = records.send(Err(error)).await;
                        break;
                    }
                    Err(e) => {
                        let _ = records.send(Err(lost_reason(&conn, e))).await;
                        break;
                    }
                };
                let topic: Arc<str> = batch.topic.into();
                let decoded = match decode_batch(batch.base_offset, &batch.batch) {
                    Ok(decoded) => decoded,
                    Err(e) => {
                        let _ = records.send(Err(Error::Protocol(e.to_string()))).await;
                        break;
                    }
                };
                for r in decoded {
                    let record = Record {
                        topic: Arc::clone(&topic),
                        offset: r.offset,
                        timestamp: r.timestamp,
                        key: r.key,
                        headers: r.headers,
                        payload: r.payload,
                    };
                    if records.send(Ok(record)).await.is_err() {
                        debug!("subscription dropped");
                        let _ = send.finish();
                        return;
                    }
                }
            }
            granted = credit.recv() => {
                let Some(n) = granted else {
                    // The Subscription was dropped: unsubscribe.
                    let _ = send.finish();
                    return;
                };
                let Ok(frame) = encode(&ClientFrame::Credit(n)) else { break };
                if send.write_all(&frame).await.is_err() {
                    break;
                }
            }
        }
    }
    let _ = send.finish();
}
