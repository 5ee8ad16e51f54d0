//! An `in` link from JetStream: a durable pull consumer (explicit acks) on the link's
//! stream, filtered to subjects `P.<pattern>`, feeds local topics (`P.<topic>` →
//! prefix + topic) through the same `Forward` path a Quiver link uses.
//!
//! The stream stands as the origin broker ([`super::stream_id`]) and each subject as
//! an origin topic whose offsets are stream sequences, so the local topic's mark is
//! the sequence after the last message stored, moved in the same commit as the
//! records. A message is acknowledged to JetStream only once that commit is durable;
//! a redelivery (after a crash before the ack, or a lost ack) is below the mark and
//! stored no second time.
//!
//! JetStream redelivers what was not acknowledged only after the consumer's ack wait,
//! while newer messages flow: a message of a subject may arrive after later ones of
//! the same subject. Before storing a run past the mark, the link therefore asks the
//! stream for the subject's first message at or after the mark; any it has not seen
//! are read from the stream and stored first, so a topic's order is the stream's.

use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use async_nats::jetstream::{self, AckKind};
use base64::Engine;
use bytes::Bytes;
use futures::StreamExt;
use quiver_protocol::record::headers;
use quiver_protocol::{
    Delivered, Forward, ForwardedRecords, Header, JetStreamRemote, LinkSpec, NewRecord, Origin,
    StartAt, TopicName,
};
use sha2::{Digest, Sha256};
use tracing::{info, warn};

use super::out::nats_headers;
use super::{ServerErrors, remote_error, stream_id};
use crate::broker::{Broker, PublishOrder};
use crate::links::Failed;
use crate::links::status::Status;
use crate::storage::MarkKey;

/// The most messages stored in one forward.
const MAX_BATCH: usize = 1000;
/// How long JetStream waits for an ack before it delivers a message again.
const ACK_WAIT: Duration = Duration::from_secs(30);
/// Messages the consumer may have delivered and not had acknowledged.
const MAX_ACK_PENDING: i64 = 10_000;

/// Pulls messages until something fails.
pub(super) async fn run(
    broker: &Arc<Broker>,
    spec: &LinkSpec,
    remote: &JetStreamRemote,
    stream: &jetstream::stream::Stream,
    status: &Arc<Status>,
    errors: &ServerErrors,
) -> Failed {
    let name = consumer_name(&spec.name);
    let filter = remote.subject(&spec.topics);
    let config = pull::Config {
        durable_name: Some(name.clone()),
        filter_subject: filter.clone(),
        ack_policy: AckPolicy::Explicit,
        ack_wait: ACK_WAIT,
        max_ack_pending: MAX_ACK_PENDING,
        deliver_policy: match spec.from {
            StartAt::Earliest => DeliverPolicy::All,
            StartAt::Latest => DeliverPolicy::New,
            StartAt::Offset(sequence) => DeliverPolicy::ByStartSequence {
                start_sequence: sequence.max(1),
            },
            StartAt::Timestamp(ms) => DeliverPolicy::ByStartTime {
                start_time: time_of(ms),
            },
        },
        description: Some(format!("Quiver link `{}`", spec.name)),
        ..pull::Config::default()
    };
    let stream_name = stream.cached_info().config.name.clone();
    let consumer: jetstream::consumer::PullConsumer =
        match stream.get_or_create_consumer(&name, config).await {
            Ok(consumer) => consumer,
            Err(e) => {
                return Failed::new(
                    remote_error(&stream_name, &format!("consumer `{name}`: {e}")),
                    false,
                );
            }
        };
    let existing = &consumer.cached_info().config.filter_subject;
    if *existing != filter {
        return Failed::new(
            format!(
                "consumer `{name}` on stream `{stream_name}` exists with filter `{existing}`, \
                 not the link's `{filter}`: delete it (it is the link's own), or name the link \
                 otherwise"
            ),
            false,
        );
    }
    // Everything up to the ack floor is stored here; above it, the consumer may
    // deliver a subject's messages out of order (see the module docs).
    let floor = consumer.cached_info().ack_floor.stream_sequence;
    let mut messages = match consumer.messages().await {
        Ok(messages) => messages,
        Err(e) => return Failed::new(remote_error(&stream_name, &e.to_string()), false),
    };
    info!(
        stream = stream_name,
        consumer = name,
        filter,
        "pulling from JetStream"
    );
    let mut pull = Pull {
        broker: Arc::clone(broker),
        spec,
        remote,
        stream,
        status,
        stream_id: stream_id(&remote.stream),
        floor,
        order: PublishOrder::default(),
        progressed: false,
    };
    loop {
        let next = tokio::select! {
            next = messages.next() => next,
            // A refused pull would otherwise leave the link waiting in silence.
            () = errors.raised() => {
                return Failed::new("the server reported an error", pull.progressed);
            }
        };
        let first = match next {
            Some(Ok(message)) => message,
            Some(Err(e)) => {
                return Failed::new(remote_error(&stream_name, &e.to_string()), pull.progressed);
            }
            None => return Failed::new("the consumer's messages ended", pull.progressed),
        };
        let mut chunk = vec![first];
        while chunk.len() < MAX_BATCH {
            match futures::FutureExt::now_or_never(messages.next()) {
                Some(Some(Ok(message))) => chunk.push(message),
                Some(Some(Err(e))) => {
                    return Failed::new(
                        remote_error(&stream_name, &e.to_string()),
                        pull.progressed,
                    );
                }
                Some(None) | None => break,
            }
        }
        if let Err(failed) = pull.store_chunk(chunk).await {
            return failed;
        }
    }
}

/// The link's durable consumer: `quiver-` and its name (dots, which consumer names
/// may not hold, as `_`).
fn consumer_name(link: &str) -> String {
    format!("quiver-{}", link.replace('.', "_"))
}

/// The time `ms` milliseconds after the Unix epoch.
fn time_of(ms: u64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

/// A subject's id as an origin topic (marks are keyed by it).
fn subject_id(subject: &str) -> u64 {
    let digest = Sha256::digest(format!("subject:{subject}").as_bytes());
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(bytes)
}

/// The state of one attempt.
struct Pull<'a> {
    broker: Arc<Broker>,
    spec: &'a LinkSpec,
    remote: &'a JetStreamRemote,
    stream: &'a jetstream::stream::Stream,
    status: &'a Arc<Status>,
    stream_id: u128,
    /// The consumer's ack floor when the attempt began.
    floor: u64,
    order: PublishOrder,
    progressed: bool,
}

/// One message, read for storing.
struct Pulled {
    sequence: u64,
    record: Delivered,
}

impl Pull<'_> {
    /// Stores the messages of a chunk, a run of one subject at a time, then
    /// acknowledges them.
    async fn store_chunk(&mut self, chunk: Vec<jetstream::Message>) -> Result<(), Failed> {
        let mut start = 0;
        while start < chunk.len() {
            let subject = chunk[start].subject.as_str();
            let end = chunk[start..]
                .iter()
                .position(|m| m.subject.as_str() != subject)
                .map_or(chunk.len(), |n| start + n);
            self.store_run(subject, &chunk[start..end]).await?;
            start = end;
        }
        for message in &chunk {
            if let Err(e) = message.ack().await {
                return Err(Failed::new(
                    format!("could not acknowledge: {e}"),
                    self.progressed,
                ));
            }
        }
        Ok(())
    }

    /// Stores one subject's messages (in stream order, with any the stream holds
    /// between the mark and them that did not come first).
    async fn store_run(&mut self, subject: &str, run: &[jetstream::Message]) -> Result<(), Failed> {
        let Some(topic) = self.remote.topic(subject) else {
            return self
                .refuse(run, subject, "it is not under the link's subject prefix")
                .await;
        };
        let dest = format!("{}{topic}", self.spec.prefix);
        if let Err(e) = TopicName::parse(&dest) {
            return self
                .refuse(run, subject, &format!("`{dest}` is not a topic name: {e}"))
                .await;
        }
        let log = self
            .broker
            .topic_or_create(&dest)
            .await
            .map_err(|e| Failed::new(e, self.progressed))?;
        let mut pulled: Vec<Pulled> = Vec::with_capacity(run.len());
        for message in run {
            let info = message.info().map_err(|e| {
                Failed::new(
                    format!("a message without JetStream metadata: {e}"),
                    self.progressed,
                )
            })?;
            self.status.topic(topic, |p| {
                p.end = p.end.max(info.stream_sequence + 1 + info.pending);
            });
            pulled.push(Pulled {
                sequence: info.stream_sequence,
                record: delivered(
                    info.stream_sequence,
                    ms_of(info.published),
                    message.headers.as_ref(),
                    &message.payload,
                ),
            });
        }
        pulled.sort_by_key(|p| p.sequence);
        pulled.dedup_by_key(|p| p.sequence);
        let origin_topic = subject_id(subject);
        let key = MarkKey {
            topic: log.id(),
            broker: self.stream_id,
            origin_topic,
        };
        let mark = self.broker.storage().marks().get(&key);
        pulled.retain(|p| mark.is_none_or(|mark| p.sequence >= mark));
        let (Some(first), Some(last)) = (pulled.first(), pulled.last()) else {
            return Ok(()); // Every message was stored before: a redelivery.
        };
        let (first, next) = (first.sequence, last.sequence + 1);
        // Messages of this subject not stored yet that the consumer delivers later.
        let lower = mark.unwrap_or(self.floor + 1);
        if first > lower {
            let missed = self.missed(subject, lower, first).await?;
            pulled.splice(0..0, missed);
        }
        let from = mark.unwrap_or_else(|| pulled.first().map_or(first, |p| p.sequence));
        let count = pulled.len() as u64;
        let forward = Forward {
            topic: dest,
            origin: Origin {
                broker: self.stream_id,
                topic: subject.to_owned(),
                topic_id: origin_topic,
            },
            from,
            next,
            records: ForwardedRecords::Listed(pulled.into_iter().map(|p| p.record).collect()),
        };
        match self.broker.forward(&mut self.order, forward).await.await {
            Ok(answer) => {
                let kept = answer.receipt.map_or(0, |r| u64::from(r.count));
                self.status.stored(topic, next, count, kept);
                self.progressed = true;
                Ok(())
            }
            Err(e) => Err(Failed::new(e, self.progressed)),
        }
    }

    /// The subject's messages from sequence `from` up to `to` (excluded), read from the
    /// stream: those the consumer will deliver again later, after newer ones.
    async fn missed(&self, subject: &str, from: u64, to: u64) -> Result<Vec<Pulled>, Failed> {
        let mut missed = Vec::new();
        let mut at = from;
        while at < to {
            let message = match self
                .stream
                .raw_message_builder()
                .sequence(at)
                .next_by_subject(subject)
                .send()
                .await
            {
                Ok(message) => message,
                Err(e) => {
                    return Err(Failed::new(
                        remote_error(&self.remote.stream, &e.to_string()),
                        self.progressed,
                    ));
                }
            };
            if message.sequence >= to {
                break;
            }
            at = message.sequence + 1;
            missed.push(Pulled {
                sequence: message.sequence,
                record: delivered(
                    message.sequence,
                    ms_of(message.time),
                    Some(&message.headers),
                    &message.payload,
                ),
            });
        }
        if !missed.is_empty() {
            info!(
                subject,
                count = missed.len(),
                "read messages from the stream that the consumer delivers again only later"
            );
        }
        Ok(missed)
    }

    /// Messages whose subject cannot name a local topic: terminated (JetStream does
    /// not deliver them again), logged and counted as skipped.
    async fn refuse(
        &self,
        run: &[jetstream::Message],
        subject: &str,
        why: &str,
    ) -> Result<(), Failed> {
        warn!(subject, count = run.len(), why, "messages not taken in");
        self.status
            .topic(subject, |p| p.skipped += run.len() as u64);
        for message in run {
            if let Err(e) = message.ack_with(AckKind::Term).await {
                return Err(Failed::new(
                    format!("could not acknowledge: {e}"),
                    self.progressed,
                ));
            }
        }
        Ok(())
    }
}

/// Milliseconds since the Unix epoch.
fn ms_of(time: time::OffsetDateTime) -> u64 {
    u64::try_from(time.unix_timestamp_nanos() / 1_000_000).unwrap_or_default()
}

/// A JetStream message as a forwarded record: its NATS headers as headers, but for
/// what the `out` side of a link set (`Quiver-Key`, `Quiver-Timestamp`, the origin: the
/// broker it came from is kept as `quiver-origin-broker`, so that it is never sent
/// back there) and JetStream's own (`Nats-*`).
fn delivered(
    sequence: u64,
    published_ms: u64,
    nats: Option<&HeaderMap>,
    payload: &Bytes,
) -> Delivered {
    let mut record = NewRecord {
        key: None,
        headers: Vec::new(),
        payload: payload.clone(),
    };
    let mut timestamp = published_ms;
    for (name, values) in nats.into_iter().flat_map(HeaderMap::iter) {
        let name = name.as_ref();
        for value in values {
            let value = value.as_str();
            match name {
                nats_headers::KEY => record.key = Some(Bytes::copy_from_slice(value.as_bytes())),
                nats_headers::KEY_BASE64 => {
                    record.key = base64::engine::general_purpose::STANDARD
                        .decode(value)
                        .ok()
                        .map(Bytes::from);
                }
                nats_headers::TIMESTAMP => timestamp = value.parse().unwrap_or(published_ms),
                nats_headers::ORIGIN_BROKER => {
                    record.headers.push(header(headers::ORIGIN_BROKER, value))
                }
                nats_headers::PATH => record.headers.push(header(headers::PATH, value)),
                nats_headers::ORIGIN_TOPIC
                | nats_headers::ORIGIN_TOPIC_ID
                | nats_headers::ORIGIN_OFFSET => {}
                _ if name.starts_with("Nats-") => {}
                _ => record.headers.push(header(name, value)),
            }
        }
    }
    Delivered {
        offset: sequence,
        timestamp,
        record,
    }
}

fn header(name: &str, value: &str) -> Header {
    Header {
        name: name.to_owned(),
        value: Bytes::copy_from_slice(value.as_bytes()),
    }
}
