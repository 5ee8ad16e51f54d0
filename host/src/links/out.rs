//! An `out` link: local topics matching the link's pattern forwarded to the remote,
//! each by a task of its own, in offset order.
//!
//! A topic's task asks the destination for its mark first (an empty `Forward`), and
//! starts there; with no mark yet, at the link's stored cursor, or where the spec says
//! (`--from`). It reads the topic like a subscriber, in large batches from storage,
//! and keeps several `Forward`s in flight; until the destination has a mark it sends
//! one at a time, because a first batch is accepted from anywhere. Its cursor moves
//! only with the destination's answer, and is written down now and then (a stale one
//! only means records are sent again, which the mark turns away).
//!
//! Records the source's retention removed before they were forwarded show up as a gap
//! between the cursor and the first record read: counted, logged and listed, and the
//! batch still continues from the cursor, so the destination's mark covers the gap.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use quiver_client::Client;
use quiver_protocol::record::decode_shared;
use quiver_protocol::{
    Delivered, Forward, Forwarded, ForwardedRecords, Header, LinkInfo, LinkSpec, LinkState, Origin,
    StartAt, TopicConfig,
};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tracing::{info, warn};

use super::status::Status;
use super::{Failed, MAX_HOPS};
use crate::broker::{Broker, BrokerError, PatternWatch};
use crate::plugins::stage::StageRunner;
use crate::storage::{LinkCursor, Slice, TopicLog};

/// Forwards in flight per topic, once the destination has a mark.
const WINDOW: usize = 8;
/// The most bytes one forward carries (well within any frame limit).
const MAX_FORWARD_BYTES: usize = 1 << 20;
/// How often a topic's cursor is written down.
const CURSOR_EVERY: Duration = Duration::from_secs(1);

/// Forwards until something fails.
pub(super) async fn run(
    broker: &Arc<Broker>,
    spec: &LinkSpec,
    client: &Client,
    status: &Arc<Status>,
) -> Failed {
    let stages = match link_stages(broker, spec) {
        Ok(stages) => stages,
        Err(failed) => return failed,
    };
    status.set_state(LinkState::Connected {
        addr: client_addr(client),
    });
    each_topic(broker, spec, |log, stored| {
        let topic = TopicForwarder {
            broker: Arc::clone(broker),
            spec: spec.clone(),
            client: client.clone(),
            status: Arc::clone(status),
            stages: stages.clone(),
            log,
            stored,
        };
        topic.run()
    })
    .await
}

/// The plugin stages an `out` link runs before forwarding, if it has any.
pub(super) fn link_stages(
    broker: &Broker,
    spec: &LinkSpec,
) -> Result<Option<Arc<[Arc<StageRunner>]>>, Failed> {
    if spec.pipeline.is_empty() {
        return Ok(None);
    }
    broker
        .plugins()
        .subscription_stages(spec.pipeline.clone(), &spec.topics)
        .map(Some)
        .map_err(|e| Failed::new(BrokerError::from(e), false))
}

/// Runs `forward` for each local topic matching the link's pattern, now and as they
/// are created, each with its stored cursor; until one of them fails.
pub(super) async fn each_topic<F, Fut>(
    broker: &Arc<Broker>,
    spec: &LinkSpec,
    mut forward: F,
) -> Failed
where
    F: FnMut(Arc<TopicLog>, Option<LinkCursor>) -> Fut,
    Fut: Future<Output = Failed> + Send + 'static,
{
    let PatternWatch {
        pattern,
        matching,
        mut created,
    } = match broker.watch_pattern(&spec.topics) {
        Ok(watch) => watch,
        Err(e) => return Failed::new(e, false),
    };
    let cursors = broker
        .storage()
        .link_cursors_of(&spec.name)
        .unwrap_or_default();
    let mut tasks = JoinSet::new();
    let mut start = |tasks: &mut JoinSet<Failed>, log: Arc<TopicLog>| {
        let stored = cursors
            .iter()
            .find(|(id, _)| *id == log.id())
            .map(|(_, c)| c.clone());
        tasks.spawn(forward(log, stored));
    };
    for log in matching {
        start(&mut tasks, log);
    }
    loop {
        tokio::select! {
            created = created.recv() => match created {
                Ok(log) if pattern.matches(log.name()) => start(&mut tasks, log),
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    return Failed::new("missed topic creations; starting again", true);
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                    return Failed::new("the broker is shutting down", true);
                }
            },
            Some(ended) = tasks.join_next() => {
                return match ended {
                    Ok(failed) => failed,
                    Err(e) => Failed::new(format!("a topic's forwarding task failed: {e}"), true),
                };
            }
        }
    }
}

/// Where a topic the link never forwarded before starts (`--from`).
pub(super) fn start_offset(
    broker: &Broker,
    spec: &LinkSpec,
    log: &TopicLog,
) -> Result<u64, BrokerError> {
    Ok(match spec.from {
        StartAt::Earliest => 0,
        StartAt::Latest => log.stats().next,
        StartAt::Offset(offset) => offset,
        StartAt::Timestamp(ms) => broker.storage().offset_for_timestamp(log, ms)?,
    })
}

/// Writes a topic's cursor down now and then (each write is a commit with a barrier);
/// a stale cursor only means records are offered again, which the destination's mark
/// (or, for JetStream, its last origin offset) turns away, and a failed write is not
/// fatal for the same reason.
pub(super) struct CursorWriter {
    written_at: Instant,
}

impl CursorWriter {
    pub(super) fn new() -> Self {
        Self {
            written_at: Instant::now(),
        }
    }

    /// Writes the topic's cursor (`next`, and `skipped` in all) if the last write is
    /// [`CURSOR_EVERY`] old.
    pub(super) async fn due(
        &mut self,
        broker: &Broker,
        link: &str,
        log: &TopicLog,
        next: u64,
        skipped: u64,
    ) {
        if self.written_at.elapsed() < CURSOR_EVERY {
            return;
        }
        self.written_at = Instant::now();
        let cursor = LinkCursor {
            topic: log.name().to_string(),
            next,
            skipped,
        };
        if let Err(e) = broker
            .storage()
            .link_cursors(link.to_owned(), vec![(log.id(), cursor)])
            .await
        {
            warn!(link, topic = %log.name(), error = %e, "could not write the link's cursor");
        }
    }
}

/// Logs, counts and lists records retention removed before they were forwarded.
pub(super) fn note_skip(status: &Status, topic: &str, from: u64, to: u64) {
    warn!(
        topic,
        from,
        to,
        skipped = to - from,
        "retention removed records before the link forwarded them"
    );
    status.skipped(topic, from, to);
}

pub(super) fn client_addr(client: &Client) -> String {
    match &*client.state().borrow() {
        quiver_client::ConnectionState::Connected { addr } => addr.to_string(),
        other => format!("{other:?}"),
    }
}

/// One topic's forwarding.
struct TopicForwarder {
    broker: Arc<Broker>,
    spec: LinkSpec,
    client: Client,
    status: Arc<Status>,
    stages: Option<Arc<[Arc<StageRunner>]>>,
    log: Arc<TopicLog>,
    /// The cursor written down before, if any.
    stored: Option<LinkCursor>,
}

type InFlight = Pin<Box<dyn Future<Output = Result<Forwarded, quiver_client::Error>> + Send>>;

/// A forward sent and not yet answered.
struct Sent {
    next: u64,
    count: u64,
    reply: InFlight,
}

impl TopicForwarder {
    async fn run(self) -> Failed {
        let topic = self.log.name().to_string();
        let dest = format!("{}{topic}", self.spec.prefix);
        let origin = Origin {
            broker: self.broker.storage().broker_id(),
            topic: topic.clone(),
            topic_id: self.log.id(),
        };
        // The destination topic, with the source's retention, unless it exists (or
        // this link may not create it: then forwarding says whether it exists).
        let config = TopicConfig::from(self.log.retention());
        if let Err(e) = self.client.create_topic(&dest, config).await
            && e.code() != Some(quiver_client::ErrorCode::TopicExists)
            && e.code() != Some(quiver_client::ErrorCode::Forbidden)
        {
            return Failed::client(&e, false);
        }
        let probe = Forward {
            topic: dest.clone(),
            origin: origin.clone(),
            from: 0,
            next: 0,
            records: ForwardedRecords::none(),
        };
        let probed = match self.client.forward(probe).await {
            Ok(probed) => probed,
            Err(e) => return Failed::client(&e, false),
        };
        let remote = probed.broker;
        if remote == origin.broker {
            return Failed::new(
                "the link's remote is this broker itself: forwarding to it would loop",
                false,
            );
        }
        self.status.set_remote(remote);
        let mut marked = probed.next.is_some();
        let mut acked = match probed.next {
            Some(next) => next,
            None => match &self.stored {
                Some(cursor) => cursor.next,
                None => match start_offset(&self.broker, &self.spec, &self.log) {
                    Ok(start) => start,
                    Err(e) => return Failed::new(e, false),
                },
            },
        };
        info!(topic, dest, from = acked, "forwarding");
        let mut skipped_total = self.stored.as_ref().map_or(0, |c| c.skipped);
        self.status.topic(&topic, |p| p.next = acked);
        let notify = Arc::new(Notify::new());
        let _watch = self.log.watch(Arc::clone(&notify));
        let mut read_at = acked;
        let mut in_flight: VecDeque<Sent> = VecDeque::new();
        let mut cursors = CursorWriter::new();
        let mut progressed = false;
        let mut limiter = Limiter::new(self.spec.max_rate);
        loop {
            let window = if marked { WINDOW } else { 1 };
            // Send what there is, within the window.
            while in_flight.len() < window {
                let batch = match self.next_batch(read_at, remote).await {
                    Ok(Some(batch)) => batch,
                    Ok(None) => break,
                    Err(e) => return Failed::new(e, progressed),
                };
                if batch.first > read_at {
                    note_skip(&self.status, &topic, read_at, batch.first);
                    skipped_total += batch.first - read_at;
                }
                if batch.looped > 0 {
                    self.status.topic(&topic, |p| p.looped += batch.looped);
                }
                limiter.take(batch.count).await;
                let count = batch.count;
                let forward = Forward {
                    topic: dest.clone(),
                    origin: origin.clone(),
                    from: read_at,
                    next: batch.next,
                    records: batch.records,
                };
                read_at = batch.next;
                in_flight.push_back(Sent {
                    next: batch.next,
                    count,
                    reply: Box::pin(self.client.forward(forward)),
                });
            }
            let room = marked && in_flight.len() < window;
            let Some(oldest) = in_flight.front_mut() else {
                // Nothing to send: wait for the topic to grow.
                if read_at < self.log.stats().next {
                    continue;
                }
                if self.log.is_deleted() {
                    return Failed::new(format!("topic `{topic}` was deleted"), progressed);
                }
                notify.notified().await;
                continue;
            };
            // The oldest answer, or new records to send meanwhile (within the window):
            // a record arriving while a forward is out does not wait for its answer.
            let answer = tokio::select! {
                answer = &mut oldest.reply => answer,
                () = notify.notified(), if room => continue,
            };
            match answer {
                Ok(answer) => {
                    let sent = in_flight.pop_front().expect("the oldest forward is there");
                    acked = answer.next.unwrap_or(sent.next).max(sent.next);
                    marked = true;
                    progressed = true;
                    self.status.forwarded(&topic, acked, sent.count);
                }
                Err(e) => return Failed::client(&e, progressed),
            }
            cursors
                .due(
                    &self.broker,
                    &self.spec.name,
                    &self.log,
                    acked,
                    skipped_total,
                )
                .await;
        }
    }

    /// The next batch from `from` (several of storage's chunks), through the link's
    /// plugins, without the records that would loop; `None` when the topic holds nothing
    /// more yet. Without plugins and with nothing to leave out (the usual case), the
    /// stored records go as they are (the chunks' bytes, one after the other).
    async fn next_batch(&self, from: u64, remote: u128) -> Result<Option<Batch>, BrokerError> {
        let max_records = self.client.limits().max_batch_records.min(4096);
        let max_bytes = usize::try_from(self.client.limits().max_frame_len / 2)
            .unwrap_or(MAX_FORWARD_BYTES)
            .min(MAX_FORWARD_BYTES);
        let slices = read_run(&self.broker, &self.log, from, max_records, max_bytes)?;
        let (Some(head), Some(tail)) = (slices.first(), slices.last()) else {
            return Ok(None);
        };
        let first = head.base_offset;
        let next = tail.base_offset + u64::from(tail.count);
        if let Some(stages) = &self.stages {
            let mut delivered = Vec::new();
            for slice in slices {
                delivered.extend(
                    self.broker
                        .deliver_through(stages, &self.log, slice)
                        .await?
                        .records,
                );
            }
            return Ok(Some(Batch::listed(first, next, delivered, remote)));
        }
        // Decoded without copying, to look for records that would loop.
        let mut stored = Vec::new();
        for slice in &slices {
            stored.extend(
                decode_shared(slice.base_offset, &slice.batch)
                    .map_err(crate::storage::StorageError::from)?,
            );
        }
        if stored.iter().any(|r| loops(&r.headers, remote)) {
            let delivered = stored.into_iter().map(Delivered::from).collect();
            return Ok(Some(Batch::listed(first, next, delivered, remote)));
        }
        let batch = match <[Slice; 1]>::try_from(slices) {
            Ok([slice]) => slice.batch,
            Err(slices) => {
                let mut joined =
                    BytesMut::with_capacity(slices.iter().map(|s| s.batch.len()).sum());
                for slice in &slices {
                    joined.extend_from_slice(&slice.batch);
                }
                joined.freeze()
            }
        };
        Ok(Some(Batch {
            first,
            next,
            count: next - first,
            records: ForwardedRecords::Batch {
                base_offset: first,
                batch,
            },
            looped: 0,
        }))
    }
}

/// Consecutive slices of `log` from `from` (each one of storage's chunks, or part of
/// one), up to `max_records` and about `max_bytes` in all; empty when the topic holds
/// nothing from `from` yet. The first may start past `from` (retention removed
/// records); the rest follow without a gap.
pub(super) fn read_run(
    broker: &Broker,
    log: &TopicLog,
    from: u64,
    max_records: u32,
    max_bytes: usize,
) -> Result<Vec<Slice>, BrokerError> {
    let mut slices: Vec<Slice> = Vec::new();
    let (mut records, mut bytes) = (0, 0);
    while records < max_records && bytes < max_bytes {
        let at = slices
            .last()
            .map_or(from, |s| s.base_offset + u64::from(s.count));
        let Some(slice) =
            broker
                .storage()
                .read(log, at, max_records - records, max_bytes - bytes)?
        else {
            break;
        };
        if !slices.is_empty() && slice.base_offset != at {
            // Retention removed records meanwhile: the next read says so.
            break;
        }
        records += slice.count;
        bytes += slice.batch.len();
        slices.push(slice);
    }
    Ok(slices)
}

/// Records read for one forward.
struct Batch {
    /// The first offset read (past the cursor if retention removed records).
    first: u64,
    /// The offset after the last one read.
    next: u64,
    /// Records in `records`.
    count: u64,
    records: ForwardedRecords,
    /// Records left out because they would loop.
    looped: u64,
}

impl Batch {
    /// Records listed one by one, without those that would loop.
    fn listed(first: u64, next: u64, delivered: Vec<Delivered>, remote: u128) -> Self {
        let before = delivered.len();
        let records: Vec<Delivered> = delivered
            .into_iter()
            .filter(|d| !loops(&d.record.headers, remote))
            .collect();
        Self {
            first,
            next,
            count: records.len() as u64,
            looped: (before - records.len()) as u64,
            records: ForwardedRecords::Listed(records),
        }
    }
}

/// Whether forwarding `record` to `remote` would bring it back to a broker it was
/// stored on, or take it past the hop limit.
pub(crate) fn loops(headers: &[Header], remote: u128) -> bool {
    crate::broker::hops(headers) + 1 >= MAX_HOPS || crate::broker::visited(headers, remote)
}

/// Keeps a link within its `--max-rate`.
pub(super) struct Limiter {
    per_record: Option<Duration>,
    /// When the next record may go.
    next: Instant,
}

impl Limiter {
    pub(super) fn new(max_rate: Option<u32>) -> Self {
        Self {
            per_record: max_rate.map(|rate| Duration::from_secs(1) / rate.max(1)),
            next: Instant::now(),
        }
    }

    /// Waits until `records` more may go.
    pub(super) async fn take(&mut self, records: u64) {
        let Some(per_record) = self.per_record else {
            return;
        };
        let now = Instant::now();
        if self.next > now {
            tokio::time::sleep(self.next - now).await;
        }
        let start = self.next.max(now);
        self.next = start + per_record * u32::try_from(records).unwrap_or(u32::MAX);
    }
}

/// Fills in what a description of an `out` link can only know from the local topics:
/// each topic's end, the bytes behind the cursor and the oldest unforwarded record.
pub(super) fn refresh_lag(broker: &Broker, info: &mut LinkInfo) {
    for topic in &mut info.topics {
        let Ok(log) = broker.topic(&topic.topic) else {
            continue;
        };
        let stats = log.stats();
        let next = topic.next.max(stats.first);
        topic.lag = stats.next.saturating_sub(next);
        let records = stats.next - stats.first;
        topic.lag_bytes = match records {
            0 => 0,
            n => u64::try_from(u128::from(stats.bytes) * u128::from(topic.lag) / u128::from(n))
                .unwrap_or(u64::MAX),
        };
        topic.oldest_ms = broker
            .storage()
            .read(&log, next, 1, 1)
            .ok()
            .flatten()
            .filter(|_| topic.lag > 0)
            .and_then(|slice| decode_shared(slice.base_offset, &slice.batch).ok())
            .and_then(|records| records.first().map(|r| r.timestamp));
    }
}
