//! A client's PUBLISHes: mapped to a Quiver topic (created if `mqtt.auto_create`
//! allows), checked against the principal's grants, and handed to `Broker::publish`
//! with the connection's `PublishOrder`, so they run through the topic's ingress
//! plugins exactly as QUIC publishes do. QoS 1 is acknowledged (PUBACK) and QoS 2
//! received (PUBREC) only once the record is durable, in the order the publishes came.
//!
//! QoS 2 is exactly once: each is published with a publish id (the session's producer
//! and a sequence it keeps per packet id until PUBREL), so a PUBLISH sent again with
//! DUP set is deduplicated by the broker (within `dedup.window`) instead of stored
//! twice. A persistent session stores that packet id's sequence before the record, so
//! this holds across a broker restart too.

use std::collections::HashMap;
use std::num::NonZeroU16;
use std::sync::Arc;

use futures::FutureExt;
use futures::future::BoxFuture;
use quiver_protocol::{ErrorCode, Header, NewRecord, PublishId, TopicName, WireError};
use tracing::{info, warn};

use super::connection::{Connection, Ended};
use super::packet::{Outbound, Publish, QoS, Reason, Refusal, Version};
use super::retained::RetainedMessage;
use super::{Shared, headers, topic};
use crate::auth::{Access, Right};
use crate::broker::{BrokerError, Publishes};

/// A client's publish, stored or refused.
pub(super) struct Acked {
    packet_id: Option<NonZeroU16>,
    qos: QoS,
    result: Result<(), Refusal>,
}

/// The QoS 2 publishes a session has stored and not yet released.
#[derive(Debug)]
pub(super) struct Awaiting {
    /// The producer of the session's publish ids.
    pub producer: u64,
    /// The next sequence.
    pub next_sequence: u64,
    /// Packet id → the sequence it was published with.
    pub ids: HashMap<u16, u64>,
}

impl Awaiting {
    pub(super) fn new(producer: u64) -> Self {
        Self {
            producer,
            next_sequence: 0,
            ids: HashMap::new(),
        }
    }

    /// The sequence to publish packet `id` with, and whether it is new: a PUBLISH
    /// sent again (DUP) under an id not yet released keeps its sequence; any other
    /// gets the next one (a new PUBLISH reusing an id whose release was lost).
    fn claim(&mut self, id: u16, dup: bool) -> (u64, bool) {
        if dup && let Some(&sequence) = self.ids.get(&id) {
            return (sequence, false);
        }
        let sequence = self.next_sequence;
        self.next_sequence += 1;
        self.ids.insert(id, sequence);
        (sequence, true)
    }

    /// PUBREL: whether `id` was awaiting it.
    pub(super) fn release(&mut self, id: u16) -> bool {
        self.ids.remove(&id).is_some()
    }
}

impl Connection {
    /// Starts storing a client's PUBLISH; its acknowledgement follows once durable.
    pub(super) async fn publish(&mut self, publish: Publish) -> Result<(), Ended> {
        let qos = publish.qos;
        let packet_id = publish.packet_id;
        if publish
            .properties
            .as_ref()
            .is_some_and(|p| p.topic_alias.is_some())
        {
            return Err(Ended::Refused(Refusal::new(
                Reason::TopicAliasInvalid,
                "topic aliases are not supported (the CONNACK's topic alias maximum is 0)",
            )));
        }
        let name = match check_publish(&self.shared, &self.access, &publish).await {
            Ok(name) => name,
            Err(refusal) => return self.refuse_publish(qos, packet_id, refusal),
        };
        let id = match (qos, packet_id) {
            (QoS::ExactlyOnce, Some(packet_id)) => {
                let (sequence, fresh) = self.awaiting.claim(packet_id.get(), publish.dup);
                if fresh && self.session_expiry.is_some() {
                    // Stored before the record: a retry after a crash keeps its id.
                    self.store_session().await;
                }
                Some(PublishId {
                    producer: self.awaiting.producer,
                    sequence,
                })
            }
            _ => None,
        };
        let retain = publish
            .retain
            .then(|| (name.clone(), retained_of(&publish)));
        let record = record_of(&publish);
        let publishes = Publishes::One {
            records: vec![record],
            id,
        };
        let durable = self
            .shared
            .broker
            .publish(&mut self.order, name.as_str(), publishes)
            .await;
        let shared = Arc::clone(&self.shared);
        self.publishes.push_back(
            async move {
                let mut result = match durable.await {
                    Ok(mut outcomes) => match outcomes.pop() {
                        Some(Ok(receipt)) => Ok(receipt.count),
                        Some(Err(wire)) => Err(refusal_of_wire(&wire)),
                        None => Err(Refusal::new(Reason::UnspecifiedError, "no outcome")),
                    },
                    Err(e) => Err(refusal_of_wire(&WireError::from(&e))),
                };
                // Retained only if the topic kept it (a plugin may have dropped it).
                if let (Ok(stored), Some((name, message))) = (&result, retain)
                    && (*stored > 0 || message.is_none())
                    && let Err(e) = shared
                        .retained
                        .set(shared.broker.storage(), &name, message)
                        .await
                {
                    result = Err(Refusal::new(
                        Reason::UnspecifiedError,
                        format!("storing the retained message: {e}"),
                    ));
                }
                Acked {
                    packet_id,
                    qos,
                    result: result.map(|_| ()),
                }
            }
            .boxed(),
        );
        Ok(())
    }

    /// Answers a PUBLISH refused before it was stored: MQTT 5 acknowledges QoS 1 and
    /// 2 with the reason (in order with the others); QoS 0, and any 3.1.1 publish,
    /// can only be refused by closing the connection.
    fn refuse_publish(
        &mut self,
        qos: QoS,
        packet_id: Option<NonZeroU16>,
        refusal: Refusal,
    ) -> Result<(), Ended> {
        if self.version == Version::V3 || qos == QoS::AtMostOnce {
            return Err(Ended::Refused(refusal));
        }
        let acked = Acked {
            packet_id,
            qos,
            result: Err(refusal),
        };
        self.publishes.push_back(std::future::ready(acked).boxed());
        Ok(())
    }

    /// Sends the acknowledgement of a publish that is durable (or failed).
    pub(super) async fn acknowledge(&mut self, acked: Acked) -> Result<(), Ended> {
        let Some(packet_id) = acked.packet_id else {
            if let Err(refusal) = acked.result {
                info!(%refusal, "a QoS 0 PUBLISH was not stored");
            }
            return Ok(());
        };
        match (acked.result, self.version) {
            (Err(refusal), Version::V3) => {
                // 3.1.1 has no negative acknowledgement: closing makes the client send
                // the PUBLISH again, so nothing it was told is stored is lost.
                Err(Ended::Refused(refusal))
            }
            (result, _) => {
                let refusal = result.err();
                if let Some(refusal) = &refusal {
                    info!(%refusal, "PUBLISH refused");
                }
                let packet = match acked.qos {
                    QoS::ExactlyOnce => {
                        // A refused QoS 2 publish ends its exchange at PUBREC.
                        if refusal.is_some() {
                            self.awaiting.release(packet_id.get());
                        }
                        Outbound::PubRec(packet_id, refusal)
                    }
                    _ => Outbound::PubAck(packet_id, refusal),
                };
                self.encode(packet)
            }
        }
    }
}

/// The Quiver topic of an MQTT topic name `access` may publish to (a will's too).
pub(super) fn publishable(access: &Access, mqtt: &str) -> Result<TopicName, Refusal> {
    let name = topic::topic_name(mqtt)?;
    access.check_topic(Right::Publish, &name)?;
    Ok(name)
}

/// The topic a PUBLISH goes to, once it is known to exist and be allowed.
async fn check_publish(
    shared: &Shared,
    access: &Access,
    publish: &Publish,
) -> Result<TopicName, Refusal> {
    let name = publishable(access, &publish.topic)?;
    ensure_topic(shared, &name).await?;
    Ok(name)
}

/// What retaining `publish` stores: its message, or `None` to clear (an empty payload).
fn retained_of(publish: &Publish) -> Option<RetainedMessage> {
    (!publish.payload.is_empty()).then(|| RetainedMessage {
        qos: publish.qos.value(),
        headers: headers_of(publish),
        payload: publish.payload.clone(),
    })
}

/// Makes sure `name` exists, creating it when an `mqtt.auto_create` pattern matches.
async fn ensure_topic(shared: &Shared, name: &TopicName) -> Result<(), Refusal> {
    if shared.broker.topic(name.as_str()).is_ok() {
        return Ok(());
    }
    let Some((_, config)) = shared
        .settings
        .auto_create
        .iter()
        .find(|(pattern, _)| pattern.matches(name))
    else {
        return Err(Refusal::new(
            Reason::ImplementationSpecificError,
            format!(
                "topic `{name}` does not exist and no mqtt.auto_create pattern matches it \
                 (create it: quiver topic create {name})"
            ),
        ));
    };
    match shared.broker.create_topic(name.as_str(), config).await {
        Ok(_) => {
            info!(topic = %name, "topic created by an MQTT publish (mqtt.auto_create)");
            Ok(())
        }
        Err(BrokerError::TopicExists(_)) => Ok(()),
        Err(e) => Err(refusal_of_wire(&WireError::from(&e))),
    }
}

/// The reason code for a publish the broker refused.
fn refusal_of_wire(error: &WireError) -> Refusal {
    let reason = match error.code {
        ErrorCode::Forbidden => Reason::NotAuthorized,
        ErrorCode::LimitReached | ErrorCode::Overloaded => Reason::QuotaExceeded,
        _ => Reason::ImplementationSpecificError,
    };
    Refusal::new(reason, error.message.clone())
}

/// A PUBLISH as a record: its payload, its MQTT 5 properties as headers.
fn record_of(publish: &Publish) -> NewRecord {
    NewRecord {
        key: None,
        headers: headers_of(publish),
        payload: publish.payload.clone(),
    }
}

/// The headers a PUBLISH is stored with: `mqtt-qos`, then its properties.
fn headers_of(publish: &Publish) -> Vec<Header> {
    let header = |name: &str, value: bytes::Bytes| Header {
        name: name.to_owned(),
        value,
    };
    let mut headers = vec![header(headers::QOS, qos_byte(publish.qos))];
    let Some(properties) = &publish.properties else {
        return headers;
    };
    if let Some(content_type) = &properties.content_type {
        headers.push(header(
            headers::CONTENT_TYPE,
            content_type.as_bytes().clone(),
        ));
    }
    if let Some(topic) = &properties.response_topic {
        headers.push(header(headers::RESPONSE_TOPIC, topic.as_bytes().clone()));
    }
    if let Some(data) = &properties.correlation_data {
        headers.push(header(headers::CORRELATION_DATA, data.clone()));
    }
    if properties.is_utf8_payload {
        headers.push(header(
            headers::PAYLOAD_UTF8,
            bytes::Bytes::from_static(b"1"),
        ));
    }
    for (name, value) in &properties.user_properties {
        // The names the broker maps to properties are its own.
        if !headers::is_reserved(name) {
            headers.push(header(name, value.as_bytes().clone()));
        }
    }
    headers
}

fn qos_byte(qos: QoS) -> bytes::Bytes {
    bytes::Bytes::from_static(match qos {
        QoS::AtMostOnce => b"0",
        QoS::AtLeastOnce => b"1",
        QoS::ExactlyOnce => b"2",
    })
}

/// The will of a connection that ended without DISCONNECT, as a publish to run later.
pub(super) fn publish_will(
    shared: Arc<Shared>,
    access: Access,
    will: Publish,
) -> BoxFuture<'static, ()> {
    async move {
        let stored = async {
            let name = check_publish(&shared, &access, &will).await?;
            shared
                .broker
                .publish_alone(name.as_str(), vec![record_of(&will)])
                .await
                .map_err(|e| refusal_of_wire(&WireError::from(&e)))?;
            if will.retain {
                shared
                    .retained
                    .set(shared.broker.storage(), &name, retained_of(&will))
                    .await
                    .map_err(|e| Refusal::new(Reason::UnspecifiedError, e.to_string()))?;
            }
            Ok::<_, Refusal>(name)
        };
        match stored.await {
            Ok(name) => info!(topic = %name, "will published"),
            Err(refusal) => warn!(%refusal, "the will could not be published"),
        }
    }
    .boxed()
}
