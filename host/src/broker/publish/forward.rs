//! Records forwarded over a link, stored once per origin offset.
//!
//! A `Forward` names its origin (broker, topic, topic id) and the run of origin
//! offsets it covers, `from .. next`. The destination topic keeps a mark per origin
//! (storage's `Marks`): the origin offset it expects next. Here, before the publish
//! path, against the committed mark: a batch wholly below it is a repeat (answered,
//! nothing stored), and records below it are left out. What remains goes through the
//! one publish path as a publish whose write also moves the mark. A batch past the
//! committed mark may follow one still in flight: the storage writer checks every mark
//! in commit order, refuses a batch (`OutOfOrder`) whose predecessor was not stored,
//! and so stores two copies of a batch racing each other once.
//!
//! The provenance headers (`quiver-origin-*`, `quiver-path`) are added by the storage
//! writer as it encodes each record, so nothing is built per record here; only when
//! the topic has ingress plugins, which see records whole, are they built first.
//!
//! A record that has been stored on this broker before (its `quiver-origin-broker` or
//! `quiver-path` names this broker, or the batch comes from here) is left out too: a
//! loop between links ends here.

use std::sync::Arc;

use bytes::Bytes;
use futures::future::{BoxFuture, FutureExt};
use quiver_protocol::record::decode_shared;
use quiver_protocol::record::headers;
use quiver_protocol::{
    Delivered, Forward, Forwarded, ForwardedRecords, Header, NewRecord, broker_id_hex,
};

use super::{PublishOrder, Publishes};
use crate::broker::{Broker, BrokerError};
use crate::storage::{MarkKey, MarkWrite, Provenance};

impl Broker {
    /// Starts storing a forwarded batch from a connection whose publishes keep
    /// `order`; the returned future resolves once it is durable (or was a repeat).
    pub async fn forward(
        self: &Arc<Self>,
        order: &mut PublishOrder,
        forward: Forward,
    ) -> BoxFuture<'static, Result<Forwarded, BrokerError>> {
        let broker = self.storage.broker_id();
        let prepared = match self.prepare_forward(forward) {
            Ok(prepared) => prepared,
            Err(e) => return std::future::ready(Err(e)).boxed(),
        };
        let answer = move |next, receipt| Forwarded {
            broker,
            next,
            receipt,
        };
        match prepared {
            Prepared::Answered(next) => std::future::ready(Ok(answer(next, None))).boxed(),
            Prepared::Store {
                topic,
                records,
                mark,
            } => {
                let next = mark.next;
                let publishes = Publishes::Forwarded {
                    records,
                    mark: *mark,
                };
                let outcomes = self.publish(order, &topic, publishes).await;
                async move {
                    let receipt = outcomes.await?.pop().ok_or_else(|| {
                        BrokerError::InvalidArgument(
                            "a forward was answered with no outcome".into(),
                        )
                    })??;
                    let stored = receipt.count > 0
                        || receipt.dropped > 0
                        || receipt.dead_letter.is_some()
                        || !receipt.routed.is_empty();
                    Ok(answer(Some(next), stored.then_some(receipt)))
                }
                .boxed()
            }
        }
    }

    /// Checks a forwarded batch against its origin's mark and keeps what is new.
    fn prepare_forward(&self, forward: Forward) -> Result<Prepared, BrokerError> {
        let Forward {
            topic,
            origin,
            from,
            next,
            records,
        } = forward;
        let log = self.topic(&topic)?;
        let records = match records {
            ForwardedRecords::Listed(records) => records,
            // Decoded without copying: keys, headers and payloads are slices of it.
            ForwardedRecords::Batch { base_offset, batch } => decode_shared(base_offset, &batch)
                .map_err(|e| {
                    BrokerError::InvalidArgument(format!("a forwarded batch is malformed: {e}"))
                })?
                .into_iter()
                .map(Delivered::from)
                .collect(),
        };
        if from > next {
            return Err(BrokerError::InvalidArgument(format!(
                "a forwarded batch runs from origin offset {from} back to {next}"
            )));
        }
        if records.len() > self.limits.max_batch_records as usize {
            return Err(BrokerError::BatchTooLarge {
                count: records.len(),
                max: self.limits.max_batch_records,
            });
        }
        let mut previous = from;
        for record in &records {
            if record.offset < previous || record.offset >= next {
                return Err(BrokerError::InvalidArgument(format!(
                    "forwarded record at origin offset {} is out of order or outside {from}..{next}",
                    record.offset
                )));
            }
            previous = record.offset;
        }
        let key = MarkKey {
            topic: log.id(),
            broker: origin.broker,
            origin_topic: origin.topic_id,
        };
        let mark = self.storage.marks().get(&key);
        let start = match mark {
            // A probe, or a batch stored before.
            _ if from == next && records.is_empty() => return Ok(Prepared::Answered(mark)),
            Some(mark) if next <= mark => return Ok(Prepared::Answered(Some(mark))),
            // Past the committed mark: the batch before it may be in flight still. The
            // storage writer decides, in commit order (a gap is refused there).
            Some(mark) => mark.max(from),
            None => from,
        };
        let own = self.storage.broker_id();
        let mut provenance = Provenance {
            // Shared by every record (a `Bytes` clone is a reference count).
            broker: Bytes::from(broker_id_hex(origin.broker)),
            topic: Bytes::from(origin.topic.clone()),
            offsets: Vec::new(),
            paths: Vec::new(),
        };
        let mut stamps = Vec::new();
        let mut kept = Vec::new();
        for delivered in records.into_iter().filter(|r| r.offset >= start) {
            let mut record = delivered.record;
            if origin.broker == own || visited(&record.headers, own) {
                continue;
            }
            let path = path_before(&record.headers);
            if record.headers.iter().any(|h| is_provenance(&h.name)) {
                record.headers.retain(|h| !is_provenance(&h.name));
            }
            provenance.offsets.push(delivered.offset);
            provenance.paths.push(path);
            stamps.push(delivered.timestamp);
            kept.push(record);
        }
        // The storage writer adds the provenance headers as it encodes each record,
        // unless plugins are to see the records first (then they are built here).
        let provenance = match self.plugins.topic_stages(log.id()) {
            None => Some(provenance),
            Some(_) => {
                provenance.apply(&mut kept);
                None
            }
        };
        let mark = MarkWrite {
            key,
            origin_topic: origin.topic,
            from: start,
            next,
            stamps,
            provenance,
        };
        Ok(Prepared::Store {
            topic,
            records: kept,
            mark: Box::new(mark),
        })
    }
}

/// What a forwarded batch comes to.
enum Prepared {
    /// Nothing to store: the mark as it is.
    Answered(Option<u64>),
    /// Records to store (maybe none: every record was below the mark, or looped),
    /// and the mark to move with them.
    Store {
        topic: String,
        records: Vec<NewRecord>,
        mark: Box<MarkWrite>,
    },
}

/// Whether a record was stored on `broker` before: its origin or its path names it.
pub(crate) fn visited(headers: &[Header], broker: u128) -> bool {
    let id = broker_id_hex(broker);
    let named = |value: &Bytes| value.split(|b| *b == b',').any(|hop| hop == id.as_bytes());
    headers::find(headers, headers::ORIGIN_BROKER).is_some_and(named)
        || headers::find(headers, headers::PATH).is_some_and(named)
}

/// The brokers a record passed through before the broker forwarding it now: its
/// `quiver-path`, then its `quiver-origin-broker` (none on a first hop: no path).
pub(crate) fn path_before(headers: &[Header]) -> Option<Bytes> {
    match (
        headers::find(headers, headers::PATH),
        headers::find(headers, headers::ORIGIN_BROKER),
    ) {
        (Some(path), Some(before)) if !path.is_empty() => {
            let mut joined = path.to_vec();
            joined.push(b',');
            joined.extend_from_slice(before);
            Some(Bytes::from(joined))
        }
        (_, Some(before)) => Some(before.clone()),
        (path, None) => path.cloned(),
    }
}

/// Whether a header is one of the provenance headers a forward sets.
pub(crate) fn is_provenance(name: &str) -> bool {
    [
        headers::ORIGIN_BROKER,
        headers::ORIGIN_TOPIC,
        headers::ORIGIN_OFFSET,
        headers::PATH,
    ]
    .contains(&name)
}

/// How many brokers a record was stored on before this one.
pub(crate) fn hops(headers: &[Header]) -> usize {
    let path = headers::find(headers, headers::PATH)
        .filter(|path| !path.is_empty())
        .map_or(0, |path| path.split(|b| *b == b',').count());
    path + usize::from(headers::find(headers, headers::ORIGIN_BROKER).is_some())
}
