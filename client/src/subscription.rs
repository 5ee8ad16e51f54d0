//! A subscription: a [`Stream`] of records with credit-based flow control, resumed
//! on a new connection where the application is.
//!
//! The server sends at most as many records as it has credit for. A pump task decodes
//! each batch from the QUIC stream and hands it over whole, and the [`Subscription`]
//! grants credit back as the application takes records out. So a subscriber that
//! stops reading holds at most one window of records, here and on the server, and
//! slows only itself.
//!
//! The pump keeps the subscription's position in every topic it reads: the broker
//! says where each starts (`Positions`), and each batch handed over moves its topic's
//! position past it. Batches handed over are consumed in order, so when the connection
//! is lost, the next connection resumes at those positions: after the last record the
//! application has or will get, with nothing skipped and nothing repeated. What was on
//! the wire and not yet handed over is simply sent again. The credit the broker held
//! carries over, so the window still bounds what is buffered.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::Stream;
use quiver_protocol::record::decode_shared;
use quiver_protocol::{
    ClientFrame, NewRecord, Position, Record as StoredRecord, Records, ServerFrame, StartAt,
    Subscribe, SubscribeAt,
};
use tokio::sync::mpsc;
use tracing::debug;

use crate::client::SubscribeOptions;
use crate::connection::{Mux, Opened, Resumable};
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
/// With [`Reconnect::Backoff`](crate::Reconnect) (the default) it carries on across
/// lost connections and broker restarts, resuming after the last record it handed
/// over. The stream ends with an error if the broker ends the subscription (a
/// subscription plugin failing closed, the topic's rights revoked), if the client gives
/// up reconnecting, or, with [`Reconnect::Never`](crate::Reconnect::Never), when the
/// connection is lost; it ends without one if the client is closed. Dropping it
/// unsubscribes.
#[derive(Debug)]
pub struct Subscription {
    /// Decoded batches, and where topics start; never more records than credit
    /// granted, so at most a window.
    batches: mpsc::UnboundedReceiver<Result<Piece>>,
    /// Each topic's id, as announced before its records.
    ids: HashMap<Arc<str>, u64>,
    /// The rest of the batch being read.
    current: std::vec::IntoIter<Record>,
    credit: mpsc::UnboundedSender<u32>,
    consumed: u32,
    window: u32,
    /// Keeps the connection open while the subscription lives.
    _mux: Arc<Mux>,
}

/// What the pump hands the [`Subscription`], in stream order.
#[derive(Debug)]
enum Piece {
    /// Records of one topic.
    Records(Vec<Record>),
    /// Where topics start (their ids): before their records.
    Positions(Vec<Position>),
}

/// Subscribes to `pattern`.
pub(crate) async fn open(
    mux: Arc<Mux>,
    pattern: &str,
    options: SubscribeOptions,
) -> Result<Subscription> {
    let window = options.window.max(1);
    let mut place = Place {
        subscribe: Subscribe {
            pattern: pattern.to_owned(),
            from: options.from,
            credit: window,
            pipeline: options.pipeline,
        },
        positions: options
            .at
            .into_iter()
            .map(|p| (p.topic.clone(), p))
            .collect(),
        credit: window,
        resuming: false,
    };
    let stream = mux.open_resumable(&mut place, 0).await?;
    let (tx, batches) = mpsc::unbounded_channel();
    let _ = tx.send(Ok(Piece::Positions(
        place.positions.values().cloned().collect(),
    )));
    let (credit, credit_rx) = mpsc::unbounded_channel();
    tokio::spawn(pump(
        Pump {
            stream,
            place,
            batches: tx,
            credit: credit_rx,
        },
        Arc::clone(&mux),
    ));
    Ok(Subscription {
        batches,
        ids: HashMap::new(),
        current: Vec::new().into_iter(),
        credit,
        consumed: 0,
        window,
        _mux: mux,
    })
}

/// Where a subscription is: what to send to resume it.
#[derive(Debug)]
struct Place {
    /// The subscription as first asked for.
    subscribe: Subscribe,
    /// The next offset to hand over in each topic read.
    positions: HashMap<String, Position>,
    /// What the broker may still send: the credit granted (initial and since) minus the
    /// records received.
    credit: u32,
    /// Whether the subscription was open before.
    resuming: bool,
}

impl Resumable for Place {
    fn first_frame(&self) -> ClientFrame {
        let mut subscribe = self.subscribe.clone();
        subscribe.credit = self.credit;
        if self.resuming {
            // Topics without a position were created while away: from their start.
            subscribe.from = StartAt::Earliest;
        }
        ClientFrame::SubscribeAt(SubscribeAt {
            subscribe,
            positions: self.positions.values().cloned().collect(),
        })
    }

    fn accept(&mut self, answer: ServerFrame) -> Result<()> {
        let ServerFrame::Positions(positions) = answer else {
            return Err(Error::Protocol(format!(
                "expected the subscription's positions, got {answer:?}"
            )));
        };
        // Topics deleted meanwhile are gone from the answer.
        self.positions = positions
            .into_iter()
            .map(|p| (p.topic.clone(), p))
            .collect();
        self.resuming = true;
        Ok(())
    }
}

impl Place {
    /// Records up to `next` (exclusive) in `topic` were handed over, `count` of them.
    fn handed_over(&mut self, topic: &str, next: u64, count: u32) {
        self.credit = self.credit.saturating_sub(count);
        match self.positions.get_mut(topic) {
            Some(position) => position.next = position.next.max(next),
            None => debug!(topic, "records for a topic the broker did not announce"),
        }
    }
}

impl Subscription {
    /// The next record; `None` when the subscription has ended.
    pub async fn recv(&mut self) -> Option<Result<Record>> {
        std::future::poll_fn(|cx| Pin::new(&mut *self).poll_next(cx)).await
    }

    /// The id of `topic` that the records handed out so far come from (announced by
    /// the broker before them). A topic deleted and created again under its name has
    /// another id, and its offsets start again.
    pub fn topic_id(&self, topic: &str) -> Option<u64> {
        self.ids.get(topic).copied()
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
                Some(Ok(Piece::Records(batch))) => this.current = batch.into_iter(),
                Some(Ok(Piece::Positions(positions))) => {
                    for p in positions {
                        this.ids.insert(p.topic.into(), p.topic_id);
                    }
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => return Poll::Ready(None),
            }
        }
    }
}

/// A subscription's pump: the stream in use and both sides of the application.
struct Pump {
    stream: Opened,
    place: Place,
    batches: mpsc::UnboundedSender<Result<Piece>>,
    credit: mpsc::UnboundedReceiver<u32>,
}

/// Why serving one stream ended.
enum Ended {
    /// The [`Subscription`] was dropped.
    Dropped,
    /// The stream failed or the broker ended it.
    Failed(Error),
}

/// Moves batches to the [`Subscription`] and credit back, opening the subscription
/// again on the next connection each time one is lost.
async fn pump(mut pump: Pump, mux: Arc<Mux>) {
    loop {
        let error = match pump.serve().await {
            Ended::Dropped => {
                pump.stream.send.finish();
                return;
            }
            Ended::Failed(error) => error,
        };
        let resumed = mux
            .resume(&mut pump.place, &pump.stream, error, pump.batches.closed())
            .await;
        match resumed {
            Some(Ok(stream)) => {
                pump.stream = stream;
                // Where the broker resumed each topic: a topic created again since
                // has another id.
                let positions = pump.place.positions.values().cloned().collect();
                let _ = pump.batches.send(Ok(Piece::Positions(positions)));
            }
            Some(Err(error)) => {
                let _ = pump.batches.send(Err(error));
                pump.stream.send.finish();
                return;
            }
            None => return,
        }
    }
}

impl Pump {
    /// Serves the stream in use until it ends or the subscription is dropped.
    async fn serve(&mut self) -> Ended {
        // Set once the broker stopped reading the stream: it is ending it, and the read
        // side says how (a last frame, usually an error, or a reset).
        let mut stopped = false;
        loop {
            tokio::select! {
                frame = self.stream.frames.next() => {
                    let frame = frame.map_err(|e| self.stream.lost_reason(e));
                    let batch = match self.take(frame) {
                        Ok(Some(batch)) => batch,
                        Ok(None) => continue,
                        Err(e) => return Ended::Failed(e),
                    };
                    if self.batches.send(Ok(batch)).is_err() {
                        return Ended::Dropped;
                    }
                }
                granted = self.credit.recv(), if !stopped => {
                    let Some(n) = granted else {
                        return Ended::Dropped;
                    };
                    // Counted even if it does not get through: a resumed stream starts
                    // with it.
                    self.place.credit = self.place.credit.saturating_add(n);
                    stopped = self.stream.send.send(&ClientFrame::Credit(n)).await.is_err();
                }
            }
        }
    }

    /// The records of a frame, noting where they leave the subscription; `None` for a
    /// frame without records.
    fn take(&mut self, frame: Result<ServerFrame>) -> Result<Option<Piece>> {
        let batch = match frame? {
            ServerFrame::Records(batch) => decode(batch)?,
            ServerFrame::Processed(processed) => {
                let topic: Arc<str> = processed.topic.into();
                processed
                    .records
                    .into_iter()
                    .map(|d| Record::new(&topic, d.offset, d.timestamp, d.record))
                    .collect()
            }
            ServerFrame::Positions(joined) => {
                for position in &joined {
                    self.place
                        .positions
                        .insert(position.topic.clone(), position.clone());
                }
                return Ok(Some(Piece::Positions(joined)));
            }
            ServerFrame::Error(e) => return Err(Error::Server(e)),
            other => {
                return Err(Error::Protocol(format!(
                    "unexpected frame on a subscription: {other:?}"
                )));
            }
        };
        if let Some(last) = batch.last() {
            let count = u32::try_from(batch.len()).unwrap_or(u32::MAX);
            self.place.handed_over(&last.topic, last.offset + 1, count);
        }
        Ok(Some(Piece::Records(batch)))
    }
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
