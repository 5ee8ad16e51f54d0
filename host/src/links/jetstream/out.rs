//! An `out` link into JetStream: each local topic matching the link's pattern is
//! published, in offset order, to subject `P.<prefix><topic>` of the link's stream.
//!
//! Records go in **atomic batches** (ADR-50, nats-server 2.12+): up to
//! [`MAX_BATCH`] messages that the stream stores all or none, acknowledged by one
//! PubAck on the batch's last message. One batch per topic is in flight at a time:
//! a batch that fails leaves nothing behind, so the next attempt continues exactly
//! where the stream ends and a topic's order survives any server failing mid-batch
//! (pipelined single publishes could lose one message while a later one is stored).
//! The cursor moves only with the PubAck.
//!
//! A re-send never doubles: within JetStream's duplicate window each message's
//! `Nats-Msg-Id` (origin broker, topic id, offset) drops it; beyond the window, the
//! link never re-sends at all, because each topic's task starts past the last origin
//! offset the stream holds for it (read from the subject's last message), whatever
//! the cursor says.
//!
//! Records that cannot be a NATS message (larger than the server's max payload, or
//! with a header that is not text) go to the topic's dead-letter topic with the reason,
//! and the link goes on.

use std::sync::Arc;

use async_nats::jetstream::context::PublishAckFuture;
use async_nats::jetstream::{self, stream::LastRawMessageErrorKind};
use async_nats::{HeaderMap, HeaderName, HeaderValue};
use base64::Engine;
use bytes::Bytes;
use quiver_protocol::record::{decode_shared, headers};
use quiver_protocol::{Delivered, JetStreamRemote, LinkSpec, broker_id_hex};
use tokio::sync::Notify;
use tracing::{info, warn};

use super::{remote_error, stream_id};
use crate::broker::{Broker, BrokerError, is_provenance, path_before};
use crate::links::Failed;
use crate::links::out::{
    CursorWriter, Limiter, each_topic, link_stages, loops, note_skip, read_run, start_offset,
};
use crate::links::status::Status;
use crate::plugins::stage::StageRunner;
use crate::storage::{LinkCursor, StorageError, TopicLog};

/// The most messages in one atomic batch (the server's limit is 1,000).
const MAX_BATCH: u32 = 1000;
/// The most bytes read for one batch.
const MAX_BATCH_BYTES: usize = 1 << 20;

/// NATS headers the link sets on each message (docs/scaling.md).
pub(crate) mod nats_headers {
    pub(crate) const ORIGIN_BROKER: &str = "Quiver-Origin-Broker";
    pub(crate) const ORIGIN_TOPIC: &str = "Quiver-Origin-Topic";
    pub(crate) const ORIGIN_TOPIC_ID: &str = "Quiver-Origin-Topic-Id";
    pub(crate) const ORIGIN_OFFSET: &str = "Quiver-Origin-Offset";
    pub(crate) const TIMESTAMP: &str = "Quiver-Timestamp";
    pub(crate) const PATH: &str = "Quiver-Path";
    pub(crate) const KEY: &str = "Quiver-Key";
    pub(crate) const KEY_BASE64: &str = "Quiver-Key-Base64";
}

/// Publishes until something fails.
pub(super) async fn run(
    broker: &Arc<Broker>,
    spec: &LinkSpec,
    remote: &JetStreamRemote,
    client: &async_nats::Client,
    context: &jetstream::Context,
    stream: &jetstream::stream::Stream,
    status: &Arc<Status>,
) -> Failed {
    let stages = match link_stages(broker, spec) {
        Ok(stages) => stages,
        Err(failed) => return failed,
    };
    each_topic(broker, spec, |log, stored| {
        let publisher = TopicPublisher {
            broker: Arc::clone(broker),
            spec: spec.clone(),
            subject: remote.subject(&format!("{}{}", spec.prefix, log.name())),
            stream_id: stream_id(&remote.stream),
            client: client.clone(),
            context: context.clone(),
            stream: stream.clone(),
            status: Arc::clone(status),
            stages: stages.clone(),
            log,
            stored,
        };
        publisher.run()
    })
    .await
}

/// One topic's publishing.
struct TopicPublisher {
    broker: Arc<Broker>,
    spec: LinkSpec,
    subject: String,
    /// The stream's id, where a remote broker's would be (loop checks).
    stream_id: u128,
    client: async_nats::Client,
    context: jetstream::Context,
    stream: jetstream::stream::Stream,
    status: Arc<Status>,
    stages: Option<Arc<[Arc<StageRunner>]>>,
    log: Arc<TopicLog>,
    /// The cursor written down before, if any.
    stored: Option<LinkCursor>,
}

/// Records read for one batch: `first .. next` of the topic (past the cursor if
/// retention removed records), those not left out.
struct Read {
    first: u64,
    next: u64,
    records: Vec<Delivered>,
}

impl TopicPublisher {
    async fn run(self) -> Failed {
        let topic = self.log.name().to_string();
        let mut acked = match self.resume_at().await {
            Ok(at) => at,
            Err(failed) => return failed,
        };
        info!(
            topic,
            subject = self.subject,
            from = acked,
            "publishing to JetStream"
        );
        self.status.topic(&topic, |p| p.next = acked);
        let origin = Origin {
            broker: broker_id_hex(self.broker.storage().broker_id()),
            topic_id: self.log.id().to_string(),
        };
        let mut skipped_total = self.stored.as_ref().map_or(0, |c| c.skipped);
        let notify = Arc::new(Notify::new());
        let _watch = self.log.watch(Arc::clone(&notify));
        let mut cursors = CursorWriter::new();
        let mut progressed = false;
        let mut limiter = Limiter::new(self.spec.max_rate);
        // The batch sent and not yet acknowledged: the next one is read and built
        // meanwhile, and sent once this one's PubAck is in.
        let mut in_flight: Option<Sent> = None;
        let mut read_at = acked;
        loop {
            let read = match self.read(read_at).await {
                Ok(read) => read,
                Err(e) => return Failed::new(e, progressed),
            };
            let next = match read {
                Some(read) => {
                    if read.first > read_at {
                        note_skip(&self.status, &topic, read_at, read.first);
                        skipped_total += read.first - read_at;
                    }
                    read_at = read.next;
                    match self.prepare(&origin, &topic, read).await {
                        Ok(batch) => Some(batch),
                        Err(e) => return Failed::new(e, progressed),
                    }
                }
                None => None,
            };
            if let Some(sent) = in_flight.take() {
                if let Err(failed) = self.confirm(sent.ack, sent.count).await {
                    return Failed {
                        progressed,
                        ..failed
                    };
                }
                acked = sent.next;
                progressed = true;
                self.status.forwarded(&topic, acked, sent.count as u64);
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
            let Some(batch) = next else {
                if self.log.is_deleted() {
                    return Failed::new(format!("topic `{topic}` was deleted"), progressed);
                }
                // Nothing more yet: wait for the topic to grow.
                if read_at >= self.log.stats().next {
                    notify.notified().await;
                }
                continue;
            };
            let count = batch.messages.len();
            limiter.take(count as u64).await;
            match self.send(batch.messages).await {
                Ok(ack) => {
                    in_flight = Some(Sent {
                        ack,
                        count,
                        next: batch.next,
                    });
                }
                Err(failed) => {
                    return Failed {
                        progressed,
                        ..failed
                    };
                }
            }
        }
    }

    /// Turns records read into a batch of messages: leaves out those that would loop,
    /// dead-letters those the stream cannot take.
    async fn prepare(
        &self,
        origin: &Origin,
        topic: &str,
        read: Read,
    ) -> Result<Batch, BrokerError> {
        let max_payload = self.client.server_info().max_payload;
        let mut messages = Vec::with_capacity(read.records.len());
        let mut dead = Vec::new();
        let mut looped = 0;
        for delivered in read.records {
            if loops(&delivered.record.headers, self.stream_id) {
                looped += 1;
                continue;
            }
            match message(origin, topic, &delivered, max_payload) {
                Ok(message) => messages.push(message),
                Err(reason) => dead.push((delivered, reason)),
            }
        }
        if looped > 0 {
            self.status.topic(topic, |p| p.looped += looped);
        }
        if !dead.is_empty() {
            self.dead_letter(dead).await?;
        }
        Ok(Batch {
            messages,
            next: read.next,
        })
    }

    /// Where publishing resumes: past the last origin offset of this topic the stream
    /// holds, else at the stored cursor, else where the spec says.
    async fn resume_at(&self) -> Result<u64, Failed> {
        let cursor = match &self.stored {
            Some(cursor) => cursor.next,
            None => start_offset(&self.broker, &self.spec, &self.log)
                .map_err(|e| Failed::new(e, false))?,
        };
        let last = match self
            .stream
            .get_last_raw_message_by_subject(&self.subject)
            .await
        {
            Ok(last) => last,
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => return Ok(cursor),
            Err(e) => {
                return Err(Failed::new(
                    remote_error(&self.stream.cached_info().config.name, &e.to_string()),
                    false,
                ));
            }
        };
        let header = |name: &str| last.headers.get(name).map(HeaderValue::as_str);
        let own = broker_id_hex(self.broker.storage().broker_id());
        let ours = header(nats_headers::ORIGIN_BROKER) == Some(own.as_str())
            && header(nats_headers::ORIGIN_TOPIC_ID) == Some(self.log.id().to_string().as_str());
        match header(nats_headers::ORIGIN_OFFSET).and_then(|o| o.parse::<u64>().ok()) {
            Some(offset) if ours => Ok(cursor.max(offset + 1)),
            // Another publisher's message is the subject's last: only the cursor (and
            // the duplicate window) can tell what the stream holds of this topic.
            _ => {
                warn!(
                    subject = self.subject,
                    "the subject's last message is not this topic's: give each edge its own \
                     subject prefix, or a re-send past the duplicate window could double"
                );
                Ok(cursor)
            }
        }
    }

    /// The next records from `from` (several of storage's chunks, up to a batch),
    /// through the link's plugins; `None` when the topic holds nothing more yet.
    async fn read(&self, from: u64) -> Result<Option<Read>, BrokerError> {
        let slices = read_run(&self.broker, &self.log, from, MAX_BATCH, MAX_BATCH_BYTES)?;
        let (Some(head), Some(tail)) = (slices.first(), slices.last()) else {
            return Ok(None);
        };
        let (first, next) = (head.base_offset, tail.base_offset + u64::from(tail.count));
        let mut records = Vec::new();
        for slice in slices {
            match &self.stages {
                Some(stages) => records.extend(
                    self.broker
                        .deliver_through(stages, &self.log, slice)
                        .await?
                        .records,
                ),
                None => records.extend(
                    decode_shared(slice.base_offset, &slice.batch)
                        .map_err(StorageError::from)?
                        .into_iter()
                        .map(Delivered::from),
                ),
            }
        }
        Ok(Some(Read {
            first,
            next,
            records,
        }))
    }

    /// Sends `messages` as one atomic batch; its PubAck is to come (`None`: an empty
    /// batch, nothing sent).
    async fn send(&self, messages: Vec<Message>) -> Result<Option<PublishAckFuture>, Failed> {
        let count = messages.len();
        let mut id = [0u8; 12];
        let _ = getrandom::fill(&mut id);
        let batch = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(id);
        for (i, message) in messages.into_iter().enumerate() {
            let Message {
                mut headers,
                payload,
            } = message;
            headers.insert(async_nats::header::NATS_BATCH_ID, batch.as_str());
            headers.insert(async_nats::header::NATS_BATCH_SEQUENCE, (i + 1).to_string());
            if i + 1 < count {
                self.client
                    .publish_with_headers(self.subject.clone(), headers, payload)
                    .await
                    .map_err(|e| self.failed(&e))?;
                continue;
            }
            headers.insert(async_nats::header::NATS_BATCH_COMMIT, "1");
            let ack = self
                .context
                .publish_with_headers(self.subject.clone(), headers, payload)
                .await
                .map_err(|e| self.failed(&e))?;
            return Ok(Some(ack));
        }
        Ok(None)
    }

    /// Waits for a batch's PubAck.
    async fn confirm(&self, ack: Option<PublishAckFuture>, count: usize) -> Result<(), Failed> {
        let Some(ack) = ack else {
            return Ok(());
        };
        let ack = ack.await.map_err(|e| self.failed(&e))?;
        match ack.batch_size {
            Some(stored) if stored != count as u64 => Err(Failed::new(
                format!("JetStream stored {stored} messages of a batch of {count}"),
                false,
            )),
            _ => Ok(()),
        }
    }

    /// A failed request to the stream, in words.
    fn failed(&self, error: &dyn std::fmt::Display) -> Failed {
        Failed::new(
            remote_error(&self.stream.cached_info().config.name, &error.to_string()),
            false,
        )
    }

    /// Puts records the stream cannot take in the topic's dead-letter topic, with
    /// the reason.
    async fn dead_letter(&self, dead: Vec<(Delivered, String)>) -> Result<(), BrokerError> {
        let dlq = self.broker.dead_letter_topic(&self.log).await?;
        let topic = self.log.name().to_string();
        let count = dead.len() as u64;
        let records = dead
            .into_iter()
            .map(|(delivered, reason)| {
                warn!(
                    topic,
                    offset = delivered.offset,
                    reason,
                    "dead-lettered instead of published"
                );
                delivered
                    .record
                    .with_header(headers::DLQ_TOPIC, topic.clone())
                    .with_header(headers::DLQ_OFFSET, delivered.offset.to_string())
                    .with_header(
                        headers::DLQ_REASON,
                        format!("link `{}`: {reason}", self.spec.name),
                    )
            })
            .collect();
        self.broker
            .storage()
            .submit_append(vec![(dlq, records)], Vec::new(), Vec::new(), None)
            .await?
            .durable()
            .await?;
        self.status.topic(&topic, |p| p.dead_lettered += count);
        Ok(())
    }
}

/// A batch built: its messages, and the offset after the records it covers.
struct Batch {
    messages: Vec<Message>,
    next: u64,
}

/// A batch sent, its PubAck to come.
struct Sent {
    ack: Option<PublishAckFuture>,
    count: usize,
    next: u64,
}

/// What every message of a topic says of its origin.
struct Origin {
    broker: String,
    topic_id: String,
}

/// A record as a NATS message.
struct Message {
    headers: HeaderMap,
    payload: Bytes,
}

/// The NATS message for a record: its headers, then its key and origin as `Quiver-*`
/// headers and `Nats-Msg-Id`; the reason if it cannot be one.
fn message(
    origin: &Origin,
    topic: &str,
    delivered: &Delivered,
    max_payload: usize,
) -> Result<Message, String> {
    let record = &delivered.record;
    let mut map = HeaderMap::new();
    // The serialized header block's length, as the client counts it against the
    // server's max payload: "NATS/1.0\r\n", each "name: value\r\n", "\r\n".
    let mut wire = 12;
    let mut put = |name: HeaderName, value: String| {
        wire += AsRef::<str>::as_ref(&name).len() + value.len() + 4;
        map.append(name, value);
    };
    let known = |name: &'static str| HeaderName::from_static(name);
    for header in &record.headers {
        if is_provenance(&header.name) {
            continue;
        }
        let name: HeaderName = header
            .name
            .parse()
            .map_err(|_| format!("header `{}` cannot be a NATS header name", header.name))?;
        let value = text(&header.value).ok_or_else(|| {
            format!(
                "header `{}` has a value that is not one line of text",
                header.name
            )
        })?;
        put(name, value.to_owned());
    }
    if let Some(key) = &record.key {
        match text(key) {
            Some(key) => put(known(nats_headers::KEY), key.to_owned()),
            None => put(
                known(nats_headers::KEY_BASE64),
                base64::engine::general_purpose::STANDARD.encode(key),
            ),
        }
    }
    if let Some(path) = path_before(&record.headers) {
        let path = text(&path).ok_or("its quiver-path header is not text")?;
        put(known(nats_headers::PATH), path.to_owned());
    }
    put(known(nats_headers::ORIGIN_BROKER), origin.broker.clone());
    put(known(nats_headers::ORIGIN_TOPIC), topic.to_owned());
    put(
        known(nats_headers::ORIGIN_TOPIC_ID),
        origin.topic_id.clone(),
    );
    put(
        known(nats_headers::ORIGIN_OFFSET),
        delivered.offset.to_string(),
    );
    put(
        known(nats_headers::TIMESTAMP),
        delivered.timestamp.to_string(),
    );
    put(
        known("Nats-Msg-Id"),
        format!("{}:{}:{}", origin.broker, origin.topic_id, delivered.offset),
    );
    // The batch headers, added when publishing, are counted too.
    let batch_headers = "Nats-Batch-Id: ".len()
        + 16
        + 4
        + "Nats-Batch-Sequence: 1000".len()
        + 4
        + "Nats-Batch-Commit: 1".len()
        + 4;
    let size = wire + batch_headers + record.payload.len();
    if size > max_payload {
        return Err(format!(
            "{size} bytes as a NATS message, more than the server's max payload of {max_payload}"
        ));
    }
    Ok(Message {
        headers: map,
        payload: record.payload.clone(),
    })
}

/// `bytes` as a header value: UTF-8 on one line.
fn text(bytes: &[u8]) -> Option<&str> {
    std::str::from_utf8(bytes)
        .ok()
        .filter(|s| !s.contains(['\r', '\n']))
}
