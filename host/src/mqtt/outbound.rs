//! A client's subscriptions, delivered. Each subscription reads the topics its filter
//! matches through `broker::cursors` (as a QUIC subscription does), from the newest
//! record when it is made, and from where it was for a persistent session resumed.
//!
//! QoS 1 and 2 deliveries take a packet id and wait in the window (the client's receive
//! maximum, within `mqtt.receive_maximum`) until acknowledged; the connection reads
//! only as much as the window has room for, and QoS 0 only as fast as the writer
//! drains, so a slow subscriber holds the broker to a bounded amount of memory.
//!
//! A record is delivered at the lower of its subscription's QoS and the QoS it was
//! published with (`mqtt-qos`; a record from a QUIC client has none: the
//! subscription's).

use std::sync::Arc;

use bytes::Bytes;
use bytestring::ByteString;
use quiver_protocol::record::decode_shared;
use quiver_protocol::{GroupSettings, Header, Record, StartAt, TopicName};
use std::num::NonZeroU16;
use tracing::{debug, info, warn};

use super::connection::{Connection, Ended};
use super::headers;
use super::inbound::Awaiting;
use super::packet::{
    Outbound, Publish, PublishProperties, QoS, Reason, Refusal, SubOptions, Version,
};
use super::session::{StoredSession, StoredSubscription};
use super::topic::{self, Filter};
use crate::auth::Right;
use crate::broker::cursors::Cursors;
use crate::broker::membership::{Membership, Settle};
use crate::groups::state::Action;
use crate::storage::{StorageError, TopicLog};

/// Bytes of packets encoded for one write, about.
const MAX_WRITE: usize = 64 * 1024;
/// Room kept in the write buffer for the next packet (larger ones grow it).
const MAX_PACKET_GUESS: usize = 4 * 1024;
/// Records read at once for a QoS 0 subscription.
const QOS0_BATCH: u32 = 256;

/// One subscription of a client.
pub(super) struct Subscription {
    id: u64,
    filter: Filter,
    options: SubOptions,
    cursors: Cursors,
}

/// A shared subscription (`$share/GROUP/filter`): a member of the durable group
/// GROUP, which splits the records of its topics among its members (MQTT and QUIC).
pub(super) struct Share {
    id: u64,
    /// The filter as the client wrote it, `$share/` and all.
    raw: String,
    qos: QoS,
    membership: Membership,
}

/// Where a delivered message came from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Source {
    /// A retained message.
    Retained,
    /// A subscription's record: subscription id, topic id, offset.
    Record(u64, u64, u64),
    /// A record a group assigned: share id, topic name, offset.
    Share(u64, String, u64),
}

/// A message on its way to the client.
pub(super) struct Delivery {
    topic: String,
    qos: QoS,
    retain: bool,
    headers: Vec<Header>,
    payload: Bytes,
    source: Source,
}

/// A QoS 1 or 2 delivery not yet acknowledged.
pub(super) struct Inflight {
    qos: QoS,
    /// QoS 2: PUBREC came, PUBCOMP has not.
    received: bool,
    source: Source,
}

impl Connection {
    /// Room in the window for QoS 1 and 2 deliveries.
    pub(super) fn room(&self) -> usize {
        self.window.saturating_sub(self.inflight.len())
    }

    /// Whether a QoS 0 subscription (or retained message) may be delivered anyway.
    pub(super) fn has_qos0(&self) -> bool {
        self.subscriptions
            .iter()
            .any(|s| s.options.qos == QoS::AtMostOnce)
            || self
                .pending
                .front()
                .is_some_and(|d| d.qos == QoS::AtMostOnce)
    }

    /// SUBSCRIBE: each filter granted or refused, then the retained messages.
    pub(super) async fn subscribe(
        &mut self,
        packet_id: NonZeroU16,
        filters: Vec<(String, SubOptions)>,
    ) -> Result<(), Ended> {
        let mut results = Vec::with_capacity(filters.len());
        for (raw, options) in filters {
            let result = self.add_subscription(&raw, options).await;
            if let Err(refusal) = &result {
                info!(filter = %raw, %refusal, "subscription refused");
            }
            results.push(result);
        }
        if self.session_expiry.is_some() {
            // Part of the session before the client hears it is.
            self.store_session().await;
        }
        self.encode(Outbound::SubAck(packet_id, results))
    }

    async fn add_subscription(&mut self, raw: &str, options: SubOptions) -> Result<QoS, Refusal> {
        if let Some(shared) = raw.strip_prefix("$share/") {
            return self.add_share(raw, shared, options.qos).await;
        }
        let filter = topic::filter(raw)?;
        for pattern in &filter.patterns {
            self.access
                .check_pattern(Right::Subscribe, pattern)
                .map_err(Refusal::from)?;
        }
        let options = SubOptions {
            qos: options.qos,
            ..options
        };
        let existing = self.subscriptions.iter_mut().find(|s| s.filter.mqtt == raw);
        let new = existing.is_none();
        match existing {
            // The same filter again replaces the options; the position stays.
            Some(existing) => existing.options = options,
            // A new subscription reads from each topic's newest record on.
            None => self.push_subscription(filter.clone(), options, |log| log.stats().next),
        }
        if options.retain_handling == 0 || (options.retain_handling == 1 && new) {
            for (name, message) in self.shared.retained.matching(&filter) {
                // A deleted topic's retained message waits for the topic to be back.
                if self.shared.broker.topic(name.as_str()).is_err() {
                    continue;
                }
                self.pending.push_back(Delivery {
                    topic: topic::mqtt_name(name.as_str()),
                    qos: lower(options.qos, message.qos),
                    retain: true,
                    headers: message.headers.clone(),
                    payload: message.payload.clone(),
                    source: Source::Retained,
                });
            }
        }
        Ok(options.qos)
    }

    /// Joins the durable group a `$share/GROUP/filter` names, creating it (from the
    /// newest records) if it does not exist.
    async fn add_share(&mut self, raw: &str, shared: &str, qos: QoS) -> Result<QoS, Refusal> {
        let invalid = |why: String| Refusal::new(Reason::TopicFilterInvalid, why);
        let Some((group, filter)) = shared.split_once('/') else {
            return Err(invalid(format!("`{raw}`: expected $share/GROUP/filter")));
        };
        TopicName::parse(group).map_err(|e| {
            invalid(format!(
                "`{raw}`: group name `{group}`: {e} (a Quiver group name)"
            ))
        })?;
        let filter = topic::filter(filter)?;
        // A group consumes one pattern: for `a/#` the topics below `a`.
        let pattern = filter.patterns[0].clone();
        self.access
            .check_pattern(Right::Group, &pattern)
            .map_err(Refusal::from)?;
        if let Some(existing) = self.shares.iter_mut().find(|s| s.raw == raw) {
            existing.qos = qos;
            return Ok(qos);
        }
        let broker = &self.shared.broker;
        let group = match broker.group(group) {
            Ok(existing) if existing.pattern() != &pattern => {
                return Err(Refusal::new(
                    Reason::ImplementationSpecificError,
                    format!(
                        "`{raw}`: group `{group}` consumes `{}`, not `{pattern}`",
                        existing.pattern()
                    ),
                ));
            }
            Ok(existing) => existing,
            Err(_) => {
                let mut settings = GroupSettings::new(pattern.as_str());
                settings.from = StartAt::Latest;
                let created = broker.create_group(group, settings).await;
                // Another client may have created it meanwhile: then it is there.
                match (broker.group(group), created) {
                    (Ok(group), _) => group,
                    (Err(_), Err(e)) | (Err(e), Ok(_)) => {
                        return Err(Refusal::new(
                            Reason::ImplementationSpecificError,
                            e.to_string(),
                        ));
                    }
                }
            }
        };
        let membership = Membership::join(broker, group, Arc::clone(&self.notify))
            .await
            .map_err(|e| Refusal::new(Reason::ImplementationSpecificError, e.to_string()))?;
        self.next_subscription += 1;
        self.shares.push(Share {
            id: self.next_subscription,
            raw: raw.to_owned(),
            qos,
            membership,
        });
        Ok(qos)
    }

    /// Leaves every group: what this client held goes to the other members now.
    pub(super) async fn leave_shares(&mut self) {
        for share in self.shares.drain(..) {
            share.membership.leave().await;
        }
    }

    /// Adds a subscription reading each topic `filter` matches now from `start`.
    fn push_subscription(
        &mut self,
        filter: Filter,
        options: SubOptions,
        start: impl Fn(&TopicLog) -> u64,
    ) {
        let mut cursors = Cursors::with_notify(Arc::clone(&self.notify));
        for log in self.matching(&filter) {
            let next = start(&log);
            cursors.add(log, next);
        }
        self.next_subscription += 1;
        self.subscriptions.push(Subscription {
            id: self.next_subscription,
            filter,
            options,
            cursors,
        });
    }

    /// The live topics `filter` matches.
    fn matching(&self, filter: &Filter) -> Vec<Arc<TopicLog>> {
        let mut logs: Vec<Arc<TopicLog>> = Vec::new();
        for pattern in &filter.patterns {
            if let Ok(watch) = self.shared.broker.watch_pattern(pattern.as_str()) {
                logs.extend(watch.matching);
            }
        }
        logs
    }

    /// UNSUBSCRIBE.
    pub(super) async fn unsubscribe(
        &mut self,
        packet_id: NonZeroU16,
        filters: Vec<String>,
    ) -> Result<(), Ended> {
        let mut existed = Vec::with_capacity(filters.len());
        for raw in &filters {
            let before = self.subscriptions.len();
            self.subscriptions.retain(|s| s.filter.mqtt != *raw);
            let mut found = self.subscriptions.len() < before;
            if let Some(i) = self.shares.iter().position(|s| s.raw == *raw) {
                self.shares.remove(i).membership.leave().await;
                found = true;
            }
            existed.push(found);
        }
        if self.session_expiry.is_some() {
            self.store_session().await;
        }
        self.encode(Outbound::UnsubAck(packet_id, existed))
    }

    /// A topic was created (`None`: some were missed): subscriptions it matches read
    /// it from its start.
    pub(super) fn topic_created(&mut self, created: Option<Arc<TopicLog>>) {
        let logs = match created {
            Some(log) => vec![log],
            None => self.shared.broker.topics(),
        };
        for sub in &mut self.subscriptions {
            for log in &logs {
                if sub.filter.matches(log.name()) {
                    sub.cursors.add(Arc::clone(log), 0);
                }
            }
        }
    }

    /// Encodes the next deliveries the window and a write have room for; `None` when
    /// there is nothing to send now.
    pub(super) async fn pump(&mut self) -> Result<Option<Bytes>, Ended> {
        while let Some(delivery) = self.pending.front() {
            if delivery.qos != QoS::AtMostOnce && self.room() == 0 {
                break;
            }
            let delivery = self.pending.pop_front().expect("looked at it");
            self.deliver(delivery);
            if self.out.len() >= MAX_WRITE {
                return Ok(Some(self.out.split().freeze()));
            }
        }
        self.pump_shares().await?;
        if self.out.len() >= MAX_WRITE {
            return Ok(Some(self.out.split().freeze()));
        }
        let storage = self.shared.broker.storage().clone();
        for i in 0..self.subscriptions.len() {
            let room = u32::try_from(self.room()).unwrap_or(u32::MAX);
            let sub = &mut self.subscriptions[i];
            sub.cursors.drop_deleted();
            let credit = match sub.options.qos {
                QoS::AtMostOnce => QOS0_BATCH,
                _ => room,
            };
            if credit == 0 {
                continue;
            }
            let read = sub
                .cursors
                .next_slice(&storage, credit, MAX_WRITE)
                .map_err(storage_failed)?;
            let Some((log, slice)) = read else { continue };
            let records = match decode_shared(slice.base_offset, &slice.batch) {
                Ok(records) => records,
                Err(e) => {
                    warn!(topic = %log.name(), error = %e, "a stored batch does not decode; skipped");
                    continue;
                }
            };
            let (id, qos) = (sub.id, sub.options.qos);
            let name = topic::mqtt_name(log.name().as_str());
            for record in records {
                self.deliver(Delivery {
                    topic: name.clone(),
                    qos: lower(qos, published_qos(&record)),
                    retain: false,
                    source: Source::Record(id, log.id(), record.offset),
                    headers: record.headers,
                    payload: record.payload,
                });
            }
            if self.out.len() >= MAX_WRITE {
                break;
            }
        }
        Ok((!self.out.is_empty()).then(|| self.out.split().freeze()))
    }

    /// Takes what the groups of shared subscriptions assign, as the window allows.
    async fn pump_shares(&mut self) -> Result<(), Ended> {
        for i in 0..self.shares.len() {
            let room = match self.shares[i].qos {
                QoS::AtMostOnce => QOS0_BATCH as usize,
                _ => self.room(),
            };
            let share = &mut self.shares[i];
            let deliveries = share.membership.take(room).await.map_err(|e| {
                Ended::Refused(Refusal::new(
                    Reason::ImplementationSpecificError,
                    format!("shared subscription `{}`: {e}", share.raw),
                ))
            })?;
            if deliveries.is_empty() {
                continue;
            }
            let (id, qos) = (share.id, share.qos);
            let mut read = Vec::with_capacity(deliveries.len());
            for assignment in share.membership.read(&deliveries) {
                let assignment = assignment.map_err(storage_failed)?;
                read.push(assignment);
            }
            let mut delivered_at_qos0 = Vec::new();
            for assignment in read {
                let topic_name = assignment.log.name().to_string();
                let record = assignment.record;
                let qos = lower(qos, published_qos(&record));
                if qos == QoS::AtMostOnce {
                    delivered_at_qos0
                        .push((topic_name.clone(), Settle::One(record.offset, Action::Ack)));
                }
                self.deliver(Delivery {
                    topic: topic::mqtt_name(&topic_name),
                    qos,
                    retain: false,
                    source: Source::Share(id, topic_name, record.offset),
                    headers: record.headers,
                    payload: record.payload,
                });
            }
            if !delivered_at_qos0.is_empty() {
                self.shares[i].membership.settle(delivered_at_qos0).await;
            }
        }
        Ok(())
    }

    /// Encodes one delivery; one the client would not take (over its maximum packet
    /// size) is skipped, as MQTT 5 requires.
    fn deliver(&mut self, delivery: Delivery) {
        let packet_id = match delivery.qos {
            QoS::AtMostOnce => None,
            qos => {
                let id = self.next_free_id();
                self.inflight.insert(
                    id.get(),
                    Inflight {
                        qos,
                        received: false,
                        source: delivery.source.clone(),
                    },
                );
                Some(id)
            }
        };
        let properties = (self.version == Version::V5).then(|| properties_of(&delivery.headers));
        let publish = Publish {
            dup: false,
            retain: delivery.retain,
            qos: delivery.qos,
            topic: ByteString::from(delivery.topic),
            packet_id,
            payload: delivery.payload,
            properties,
        };
        // One buffer per write, not one growing by doublings.
        if self.out.capacity() - self.out.len() < MAX_PACKET_GUESS {
            self.out.reserve(MAX_WRITE + MAX_PACKET_GUESS);
        }
        let before = self.out.len();
        match self
            .codec
            .encode(Outbound::Publish(Box::new(publish)), &mut self.out)
        {
            Ok(_) => {}
            Err(e) => {
                self.out.truncate(before);
                debug!(error = %e, "a message the client would not take was skipped");
                if let Some(id) = packet_id {
                    self.inflight.remove(&id.get());
                }
            }
        }
    }

    fn next_free_id(&mut self) -> NonZeroU16 {
        loop {
            let id = self.next_packet_id;
            self.next_packet_id = self.next_packet_id.checked_add(1).unwrap_or(1);
            if let Some(id) = NonZeroU16::new(id)
                && !self.inflight.contains_key(&id.get())
            {
                return id;
            }
        }
    }

    /// PUBACK, PUBREC (`received`) or PUBCOMP for delivery `id`; whether to answer
    /// with PUBREL. A shared subscription's record is acknowledged to its group once
    /// delivered (PUBACK, or PUBREC for QoS 2).
    pub(super) async fn acked(&mut self, id: u16, received: bool) -> bool {
        let persistent = self.session_expiry.is_some();
        let (answer, delivered) = match self.inflight.get_mut(&id) {
            Some(inflight) if received && inflight.qos == QoS::ExactlyOnce => {
                // Delivered: only the release is left.
                inflight.received = true;
                (
                    true,
                    std::mem::replace(&mut inflight.source, Source::Retained),
                )
            }
            Some(_) => {
                let inflight = self.inflight.remove(&id).expect("looked it up");
                (false, inflight.source)
            }
            // PUBREC for an id not in flight: released already.
            None => return received,
        };
        match delivered {
            Source::Share(share, topic, offset) => self.settle_share(share, topic, offset).await,
            Source::Record(..) => self.dirty |= persistent,
            Source::Retained => {}
        }
        answer
    }

    async fn settle_share(&mut self, share: u64, topic: String, offset: u64) {
        if let Some(share) = self.shares.iter().find(|s| s.id == share) {
            share
                .membership
                .settle([(topic, Settle::One(offset, Action::Ack))])
                .await;
        }
    }

    /// Takes up a parked persistent session: its subscriptions read on from where
    /// they were acknowledged, topics created since from their start; its shared
    /// subscriptions join their groups again.
    pub(super) async fn resume(&mut self, parked: StoredSession) {
        self.awaiting = Awaiting {
            producer: parked.producer,
            next_sequence: parked.next_sequence,
            ids: parked.awaiting_release.into_iter().collect(),
        };
        for stored in parked.subscriptions {
            let qos = QoS::try_from(stored.qos).unwrap_or(QoS::AtLeastOnce);
            if let Some(shared) = stored.filter.strip_prefix("$share/") {
                if let Err(refusal) = self.add_share(&stored.filter, shared, qos).await {
                    warn!(filter = %stored.filter, %refusal, "a stored shared subscription is dropped");
                }
                continue;
            }
            let filter = match topic::filter(&stored.filter) {
                Ok(filter) => filter,
                Err(refusal) => {
                    warn!(filter = %stored.filter, %refusal, "a stored subscription is dropped");
                    continue;
                }
            };
            let options = SubOptions {
                qos,
                no_local: false,
                retain_as_published: stored.retain_as_published,
                retain_handling: 0,
            };
            self.push_subscription(filter, options, |log| {
                stored
                    .positions
                    .iter()
                    .find(|(_, id, _)| *id == log.id())
                    .map_or(0, |(_, _, next)| (*next).min(log.stats().next))
            });
        }
    }

    /// The persistent session as it stands: each topic's position is the oldest
    /// record still unacknowledged, or the next to read.
    pub(super) fn session(&self) -> StoredSession {
        let subscriptions = self
            .subscriptions
            .iter()
            .map(|sub| {
                let positions = sub
                    .cursors
                    .positions()
                    .into_iter()
                    .map(|p| {
                        let unacked = self
                            .inflight
                            .values()
                            .filter_map(|f| match f.source {
                                Source::Record(s, t, offset) if s == sub.id && t == p.topic_id => {
                                    Some(offset)
                                }
                                _ => None,
                            })
                            .min();
                        let next = unacked.map_or(p.next, |o| o.min(p.next));
                        (p.topic, p.topic_id, next)
                    })
                    .collect();
                StoredSubscription {
                    filter: sub.filter.mqtt.clone(),
                    qos: sub.options.qos.value(),
                    retain_as_published: sub.options.retain_as_published,
                    positions,
                }
            })
            .chain(self.shares.iter().map(|share| StoredSubscription {
                filter: share.raw.clone(),
                qos: share.qos.value(),
                retain_as_published: false,
                positions: Vec::new(),
            }))
            .collect();
        StoredSession {
            expiry_secs: self.session_expiry.unwrap_or(0),
            disconnected_ms: None,
            subscriptions,
            awaiting_release: self.awaiting.ids.iter().map(|(k, v)| (*k, *v)).collect(),
            producer: self.awaiting.producer,
            next_sequence: self.awaiting.next_sequence,
        }
    }
}

/// Reading records for a client failed: the connection ends.
fn storage_failed(e: StorageError) -> Ended {
    warn!(error = %e, "reading records for an MQTT client failed");
    Ended::Refused(Refusal::new(
        Reason::UnspecifiedError,
        format!("storage: {e}"),
    ))
}

/// The QoS a record was published with (`mqtt-qos`); 2 for a record from QUIC.
fn published_qos(record: &Record) -> u8 {
    record
        .header(headers::QOS)
        .and_then(|v| v.first())
        .map_or(2, |b| b.wrapping_sub(b'0'))
}

/// The lower of a subscription's QoS and a message's.
fn lower(qos: QoS, published: u8) -> QoS {
    qos.less_value(QoS::try_from(published.min(2)).unwrap_or(QoS::ExactlyOnce))
}

/// A record's headers as MQTT 5 properties; header values that are not UTF-8 (which
/// user properties must be) are left out.
fn properties_of(record_headers: &[Header]) -> PublishProperties {
    let text = |value: &Bytes| ByteString::try_from(value.clone()).ok();
    let mut properties = PublishProperties::default();
    for header in record_headers {
        match header.name.as_str() {
            headers::QOS => {}
            headers::CONTENT_TYPE => properties.content_type = text(&header.value),
            headers::RESPONSE_TOPIC => properties.response_topic = text(&header.value),
            headers::CORRELATION_DATA => properties.correlation_data = Some(header.value.clone()),
            headers::PAYLOAD_UTF8 => properties.is_utf8_payload = true,
            name => {
                if let Some(value) = text(&header.value) {
                    properties
                        .user_properties
                        .push((ByteString::from(name), value));
                }
            }
        }
    }
    properties
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_is_delivered_at_the_lower_qos() {
        assert_eq!(lower(QoS::ExactlyOnce, 1), QoS::AtLeastOnce);
        assert_eq!(lower(QoS::AtLeastOnce, 2), QoS::AtLeastOnce);
        assert_eq!(lower(QoS::AtMostOnce, 2), QoS::AtMostOnce);
        // A stray value is taken as the highest.
        assert_eq!(lower(QoS::ExactlyOnce, 200), QoS::ExactlyOnce);
    }

    #[test]
    fn headers_become_properties_and_other_headers_user_properties() {
        let header = |name: &str, value: &'static [u8]| Header {
            name: name.into(),
            value: Bytes::from_static(value),
        };
        let properties = properties_of(&[
            header(headers::QOS, b"1"),
            header(headers::CONTENT_TYPE, b"application/json"),
            header(headers::CORRELATION_DATA, b"\xff\x00"),
            header("site", b"plant-7"),
            header("binary", b"\xff"),
        ]);
        assert_eq!(properties.content_type.as_deref(), Some("application/json"));
        assert_eq!(
            properties.correlation_data.as_deref(),
            Some(&b"\xff\x00"[..])
        );
        assert_eq!(
            properties.user_properties.len(),
            1,
            "{:?}",
            properties.user_properties
        );
        assert_eq!(&*properties.user_properties[0].0, "site");
    }
}
