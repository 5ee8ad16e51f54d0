//! MQTT packets as the rest of `mqtt/` sees them: one set for both protocol versions,
//! decoded and encoded by rmqtt-codec. A 3.1.1 client's packets come in without the
//! 5.0 properties; what is said to it goes out without them (a refusal becomes the
//! 3.1.1 return code, or closing the connection where 3.1.1 has no code).
//!
//! The version is read off the CONNECT before it is decoded ([`PacketCodec`] starts in
//! version detection); a CONNECT naming a protocol level neither version knows is
//! answered with 3.1.1's "unacceptable protocol version", as MQTT 5 allows.

use std::num::{NonZeroU16, NonZeroU32};

use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use rmqtt_codec::error::{DecodeError, EncodeError};
pub use rmqtt_codec::types::{Publish, QoS};
pub use rmqtt_codec::v5::PublishProperties;
use rmqtt_codec::version::{ProtocolVersion, VersionCodec};
use rmqtt_codec::{v3, v5};
use tokio_util::codec::{Decoder, Encoder};

/// The protocol version a client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// MQTT 3.1 and 3.1.1.
    V3,
    /// MQTT 5.0.
    V5,
}

/// MQTT 5 reason codes the broker sends (3.1.1 has a few of them as return codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Reason {
    /// Success (or QoS 0 granted, normal disconnection).
    Success = 0x00,
    /// Something went wrong that no other code names.
    UnspecifiedError = 0x80,
    /// The packet could not be parsed.
    MalformedPacket = 0x81,
    /// The packet broke the protocol's rules.
    ProtocolError = 0x82,
    /// Valid, but the broker will not act on it (the reason string says why).
    ImplementationSpecificError = 0x83,
    /// The CONNECT names a protocol version the broker does not speak.
    UnsupportedProtocolVersion = 0x84,
    /// The client id is not acceptable.
    ClientIdentifierNotValid = 0x85,
    /// The username or password (token) is not valid.
    BadUserNameOrPassword = 0x86,
    /// The principal may not do this.
    NotAuthorized = 0x87,
    /// The broker cannot serve the client now.
    ServerUnavailable = 0x88,
    /// The broker is shutting down.
    ServerShuttingDown = 0x8B,
    /// Nothing came within 1.5 times the keep-alive.
    KeepAliveTimeout = 0x8D,
    /// Another connection took the client id over.
    SessionTakenOver = 0x8E,
    /// The topic filter is not one the broker can hold.
    TopicFilterInvalid = 0x8F,
    /// The topic name is not one the broker can hold.
    TopicNameInvalid = 0x90,
    /// The packet id is in use.
    PacketIdentifierInUse = 0x91,
    /// No QoS 2 publish awaits release under that packet id.
    PacketIdentifierNotFound = 0x92,
    /// More QoS 2 publishes unreleased than the receive maximum.
    ReceiveMaximumExceeded = 0x93,
    /// The topic alias is not valid.
    TopicAliasInvalid = 0x94,
    /// The packet is larger than the maximum packet size.
    PacketTooLarge = 0x95,
    /// A limit was reached.
    QuotaExceeded = 0x97,
    /// `$share/` filters are not supported.
    SharedSubscriptionNotSupported = 0x9E,
}

/// A refusal: its reason code and, in words, why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The reason code.
    pub reason: Reason,
    /// Why, for the reason string (MQTT 5) and the log.
    pub message: String,
}

impl Refusal {
    /// A refusal with this reason, saying why.
    pub fn new(reason: Reason, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (reason 0x{:02x})", self.message, self.reason as u8)
    }
}

/// A client's CONNECT, either version.
#[derive(Debug, Clone)]
pub struct Connect {
    /// The version it speaks.
    pub version: Version,
    /// Start without any earlier session state (3.1.1: clean session).
    pub clean_start: bool,
    /// Seconds between the client's packets at most; 0 turns keep-alive off.
    pub keep_alive: u16,
    /// Seconds the session outlives the connection (3.1.1: none for a clean session,
    /// the broker's maximum otherwise).
    pub session_expiry: Option<u32>,
    /// QoS 1 and 2 publishes the client takes in flight at once.
    pub receive_maximum: u16,
    /// The largest packet the client accepts.
    pub max_packet_size: Option<u32>,
    /// The client id (may be empty: the broker assigns one).
    pub client_id: String,
    /// The username.
    pub username: Option<String>,
    /// The password.
    pub password: Option<Bytes>,
    /// The will message, published if the connection ends without DISCONNECT.
    pub will: Option<Will>,
}

/// A will message.
#[derive(Debug, Clone)]
pub struct Will {
    /// The message, as a PUBLISH.
    pub publish: Publish,
    /// Seconds to wait before publishing it (MQTT 5).
    pub delay: u32,
}

/// A subscription's options (3.1.1: the QoS alone).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubOptions {
    /// The most QoS the client takes on this subscription.
    pub qos: QoS,
    /// Not the client's own publishes (MQTT 5).
    pub no_local: bool,
    /// Keep the retain flag of forwarded messages (MQTT 5).
    pub retain_as_published: bool,
    /// 0: retained messages at subscribe; 1: only if the subscription is new; 2: none.
    pub retain_handling: u8,
}

/// What a client sent.
#[derive(Debug)]
pub enum Inbound {
    /// CONNECT.
    Connect(Box<Connect>),
    /// PUBLISH.
    Publish(Box<Publish>),
    /// PUBACK for a QoS 1 delivery.
    PubAck(NonZeroU16),
    /// PUBREC for a QoS 2 delivery.
    PubRec(NonZeroU16),
    /// PUBREL for a QoS 2 publish of the client's.
    PubRel(NonZeroU16),
    /// PUBCOMP for a QoS 2 delivery.
    PubComp(NonZeroU16),
    /// SUBSCRIBE.
    Subscribe {
        /// Its packet id.
        packet_id: NonZeroU16,
        /// The filters and their options.
        filters: Vec<(String, SubOptions)>,
    },
    /// UNSUBSCRIBE.
    Unsubscribe {
        /// Its packet id.
        packet_id: NonZeroU16,
        /// The filters.
        filters: Vec<String>,
    },
    /// PINGREQ.
    PingReq,
    /// DISCONNECT.
    Disconnect {
        /// MQTT 5's "disconnect with will message".
        with_will: bool,
        /// A new session expiry (MQTT 5).
        session_expiry: Option<u32>,
    },
    /// A packet only a server sends, or AUTH (enhanced authentication).
    Unexpected(&'static str),
}

/// How a refused or accepted CONNECT is answered.
#[derive(Debug, Clone)]
pub struct ConnAck {
    /// Earlier session state was found.
    pub session_present: bool,
    /// `None`: accepted.
    pub refusal: Option<Refusal>,
    /// The session expiry the broker grants, when it differs from what was asked.
    pub session_expiry: Option<u32>,
    /// QoS 2 publishes the client may have unreleased at once.
    pub receive_maximum: u16,
    /// The largest packet the broker accepts.
    pub max_packet_size: u32,
    /// The id the broker gave a client that sent none.
    pub assigned_client_id: Option<String>,
}

/// What the broker sends.
#[derive(Debug)]
pub enum Outbound {
    /// CONNACK.
    ConnAck(ConnAck),
    /// PUBLISH.
    Publish(Box<Publish>),
    /// PUBACK (`None`: success).
    PubAck(NonZeroU16, Option<Refusal>),
    /// PUBREC (`None`: success).
    PubRec(NonZeroU16, Option<Refusal>),
    /// PUBREL.
    PubRel(NonZeroU16),
    /// PUBCOMP; `false`: no publish awaited release under that id.
    PubComp(NonZeroU16, bool),
    /// SUBACK: per filter the QoS granted, or why it was refused.
    SubAck(NonZeroU16, Vec<Result<QoS, Refusal>>),
    /// UNSUBACK: per filter whether a subscription existed.
    UnsubAck(NonZeroU16, Vec<bool>),
    /// PINGRESP.
    PingResp,
    /// DISCONNECT (MQTT 5 only: 3.1.1 servers just close).
    Disconnect(Refusal),
}

/// Why the byte stream could not be read as packets: the connection ends.
#[derive(Debug, thiserror::Error)]
pub enum PacketError {
    /// A packet over the maximum size.
    #[error("a packet of {size} bytes is over the maximum of {max} (mqtt.max_packet_size)")]
    TooLarge {
        /// Its size.
        size: u32,
        /// The limit.
        max: u32,
    },
    /// A CONNECT for a protocol level the broker does not speak.
    #[error("unsupported protocol level {0} (Quiver speaks MQTT 3.1, 3.1.1 and 5.0)")]
    UnsupportedLevel(u8),
    /// Not MQTT, or not valid MQTT.
    #[error("malformed packet: {0}")]
    Malformed(String),
}

impl PacketError {
    /// The reason code that goes with it.
    pub fn reason(&self) -> Reason {
        match self {
            Self::TooLarge { .. } => Reason::PacketTooLarge,
            Self::UnsupportedLevel(_) => Reason::UnsupportedProtocolVersion,
            Self::Malformed(_) => Reason::MalformedPacket,
        }
    }
}

/// Decodes a client's packets and encodes the broker's, in the client's version.
#[derive(Debug)]
pub struct PacketCodec {
    state: State,
    max_in: u32,
}

#[derive(Debug)]
enum State {
    /// Waiting for the CONNECT, whose version decides the rest.
    Detecting,
    V3(v3::Codec),
    V5(v5::Codec),
}

impl PacketCodec {
    /// A codec for a new connection, accepting packets up to `max_in` bytes.
    pub fn new(max_in: u32) -> Self {
        Self {
            state: State::Detecting,
            max_in,
        }
    }

    /// The version, once the CONNECT has been read.
    pub fn version(&self) -> Option<Version> {
        match self.state {
            State::Detecting => None,
            State::V3(_) => Some(Version::V3),
            State::V5(_) => Some(Version::V5),
        }
    }

    /// Packets the client accepts up to `max` bytes (MQTT 5's maximum packet size).
    pub fn limit_outbound(&mut self, max: u32) {
        if let State::V5(codec) = &mut self.state {
            codec.set_max_outbound_size(max);
        }
    }

    /// The next whole packet in `buf`, consumed; `None` until one is there.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Inbound>, PacketError> {
        if let State::Detecting = self.state {
            // The version codec reads the CONNECT's header without consuming it.
            match VersionCodec.decode(buf) {
                Ok(None) => return Ok(None),
                Ok(Some(ProtocolVersion::MQTT3)) => {
                    self.state = State::V3(v3::Codec::new(self.max_in));
                }
                Ok(Some(ProtocolVersion::MQTT5)) => {
                    self.state = State::V5(v5::Codec::new(self.max_in, self.max_in));
                }
                Err(e) => return Err(detect_error(buf, e)),
            }
        }
        let packet = match &mut self.state {
            State::Detecting => unreachable!("the version was just detected"),
            State::V3(codec) => codec
                .decode(buf)
                .map_err(decode_error)?
                .map(|(packet, _)| from_v3(packet)),
            State::V5(codec) => codec
                .decode(buf)
                .map_err(decode_error)?
                .map(|(packet, _)| from_v5(packet)),
        };
        Ok(packet)
    }

    /// Appends `packet` to `buf` in the client's version; `Ok(false)` if it has no
    /// form in that version (a DISCONNECT for 3.1.1) and nothing was written.
    pub fn encode(&mut self, packet: Outbound, buf: &mut BytesMut) -> Result<bool, EncodeError> {
        match &mut self.state {
            // Only a refused CONNECT is answered before the version is known.
            State::Detecting | State::V3(_) => {
                let Some(packet) = to_v3(packet) else {
                    return Ok(false);
                };
                v3::Codec::new(0).encode(packet, buf)?;
            }
            State::V5(codec) => codec.encode(to_v5(packet), buf)?,
        }
        Ok(true)
    }
}

/// What went wrong detecting the version; an unknown protocol level is told apart from
/// garbage so that it can be answered.
fn detect_error(buf: &BytesMut, e: DecodeError) -> PacketError {
    if buf.first() != Some(&0x10) {
        return PacketError::Malformed("the first packet is not a CONNECT".into());
    }
    // CONNECT: fixed header, remaining length (1-4 bytes), protocol name, level.
    let length_bytes = buf[1..]
        .iter()
        .take(4)
        .take_while(|b| *b & 0x80 != 0)
        .count()
        + 1;
    let name_at = 1 + length_bytes;
    let level = buf.get(name_at..name_at + 2).and_then(|len| {
        let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
        let name = buf.get(name_at + 2..name_at + 2 + len)?;
        matches!(name, b"MQTT" | b"MQIsdp").then(|| buf.get(name_at + 2 + len).copied())?
    });
    match level {
        Some(level) => PacketError::UnsupportedLevel(level),
        None => PacketError::Malformed(format!("not an MQTT CONNECT ({e})")),
    }
}

fn decode_error(e: DecodeError) -> PacketError {
    match e {
        DecodeError::MaxSizeExceeded { size, max } => PacketError::TooLarge { size, max },
        other => PacketError::Malformed(other.to_string()),
    }
}

/// A will message as the PUBLISH it becomes.
fn will_publish(
    retain: bool,
    qos: QoS,
    topic: ByteString,
    payload: Bytes,
    properties: Option<v5::PublishProperties>,
) -> Publish {
    Publish {
        dup: false,
        retain,
        qos,
        topic,
        packet_id: None,
        payload,
        properties,
    }
}

fn from_v3(packet: v3::Packet) -> Inbound {
    use v3::Packet as P;
    match packet {
        P::Connect(c) => Inbound::Connect(Box::new(Connect {
            version: Version::V3,
            clean_start: c.clean_session,
            keep_alive: c.keep_alive,
            // A persistent 3.1.1 session lasts the broker's maximum.
            session_expiry: (!c.clean_session).then_some(u32::MAX),
            receive_maximum: u16::MAX,
            max_packet_size: None,
            client_id: c.client_id.to_string(),
            username: c.username.map(|u| u.to_string()),
            password: c.password,
            will: c.last_will.map(|w| Will {
                publish: will_publish(w.retain, w.qos, w.topic, w.message, None),
                delay: 0,
            }),
        })),
        P::Publish(p) => Inbound::Publish(p),
        P::PublishAck { packet_id } => Inbound::PubAck(packet_id),
        P::PublishReceived { packet_id } => Inbound::PubRec(packet_id),
        P::PublishRelease { packet_id } => Inbound::PubRel(packet_id),
        P::PublishComplete { packet_id } => Inbound::PubComp(packet_id),
        P::Subscribe {
            packet_id,
            topic_filters,
        } => Inbound::Subscribe {
            packet_id,
            filters: topic_filters
                .into_iter()
                .map(|(filter, qos)| {
                    let options = SubOptions {
                        qos,
                        no_local: false,
                        retain_as_published: false,
                        retain_handling: 0,
                    };
                    (filter.to_string(), options)
                })
                .collect(),
        },
        P::Unsubscribe {
            packet_id,
            topic_filters,
        } => Inbound::Unsubscribe {
            packet_id,
            filters: topic_filters.into_iter().map(|f| f.to_string()).collect(),
        },
        P::PingRequest => Inbound::PingReq,
        P::Disconnect => Inbound::Disconnect {
            with_will: false,
            session_expiry: None,
        },
        P::ConnectAck(_) => Inbound::Unexpected("CONNACK"),
        P::SubscribeAck { .. } => Inbound::Unexpected("SUBACK"),
        P::UnsubscribeAck { .. } => Inbound::Unexpected("UNSUBACK"),
        P::PingResponse => Inbound::Unexpected("PINGRESP"),
    }
}

fn from_v5(packet: v5::Packet) -> Inbound {
    use v5::Packet as P;
    match packet {
        P::Connect(c) => Inbound::Connect(Box::new(Connect {
            version: Version::V5,
            clean_start: c.clean_start,
            keep_alive: c.keep_alive,
            session_expiry: Some(c.session_expiry_interval_secs).filter(|s| *s > 0),
            receive_maximum: c.receive_max.map_or(u16::MAX, NonZeroU16::get),
            max_packet_size: c.max_packet_size.map(NonZeroU32::get),
            client_id: c.client_id.to_string(),
            username: c.username.map(|u| u.to_string()),
            password: c.password,
            will: c.last_will.map(|w| {
                let properties = v5::PublishProperties {
                    correlation_data: w.correlation_data,
                    message_expiry_interval: w.message_expiry_interval,
                    content_type: w.content_type,
                    user_properties: w.user_properties,
                    is_utf8_payload: w.is_utf8_payload.unwrap_or(false),
                    response_topic: w.response_topic,
                    ..Default::default()
                };
                Will {
                    publish: will_publish(w.retain, w.qos, w.topic, w.message, Some(properties)),
                    delay: w.will_delay_interval_sec.unwrap_or(0),
                }
            }),
        })),
        P::Publish(p) => Inbound::Publish(p),
        P::PublishAck(ack) => Inbound::PubAck(ack.packet_id),
        P::PublishReceived(ack) => Inbound::PubRec(ack.packet_id),
        P::PublishRelease(ack) => Inbound::PubRel(ack.packet_id),
        P::PublishComplete(ack) => Inbound::PubComp(ack.packet_id),
        P::Subscribe(s) => Inbound::Subscribe {
            packet_id: s.packet_id,
            filters: s
                .topic_filters
                .into_iter()
                .map(|(filter, o)| {
                    let options = SubOptions {
                        qos: o.qos,
                        no_local: o.no_local,
                        retain_as_published: o.retain_as_published,
                        retain_handling: o.retain_handling as u8,
                    };
                    (filter.to_string(), options)
                })
                .collect(),
        },
        P::Unsubscribe(u) => Inbound::Unsubscribe {
            packet_id: u.packet_id,
            filters: u.topic_filters.into_iter().map(|f| f.to_string()).collect(),
        },
        P::PingRequest => Inbound::PingReq,
        P::Disconnect(d) => Inbound::Disconnect {
            with_will: d.reason_code == v5::DisconnectReasonCode::DisconnectWithWillMessage,
            session_expiry: d.session_expiry_interval_secs,
        },
        P::Auth(_) => Inbound::Unexpected("AUTH (enhanced authentication is not supported)"),
        P::ConnectAck(_) => Inbound::Unexpected("CONNACK"),
        P::SubscribeAck(_) => Inbound::Unexpected("SUBACK"),
        P::UnsubscribeAck(_) => Inbound::Unexpected("UNSUBACK"),
        P::PingResponse => Inbound::Unexpected("PINGRESP"),
    }
}

/// 3.1.1's CONNACK return code for a refusal.
fn v3_return_code(refusal: &Refusal) -> v3::ConnectAckReason {
    use v3::ConnectAckReason as C;
    match refusal.reason {
        Reason::UnsupportedProtocolVersion => C::UnacceptableProtocolVersion,
        Reason::ClientIdentifierNotValid => C::IdentifierRejected,
        Reason::BadUserNameOrPassword => C::BadUserNameOrPassword,
        Reason::NotAuthorized => C::NotAuthorized,
        _ => C::ServiceUnavailable,
    }
}

fn to_v3(packet: Outbound) -> Option<v3::Packet> {
    use v3::Packet as P;
    Some(match packet {
        Outbound::ConnAck(ack) => P::ConnectAck(v3::ConnectAck {
            return_code: match &ack.refusal {
                None => v3::ConnectAckReason::ConnectionAccepted,
                Some(refusal) => v3_return_code(refusal),
            },
            session_present: ack.session_present,
        }),
        Outbound::Publish(mut p) => {
            p.properties = None;
            P::Publish(p)
        }
        // 3.1.1 has no refusing acknowledgement: the caller closes the connection.
        Outbound::PubAck(packet_id, None) => P::PublishAck { packet_id },
        Outbound::PubRec(packet_id, None) => P::PublishReceived { packet_id },
        Outbound::PubAck(_, Some(_)) | Outbound::PubRec(_, Some(_)) => return None,
        Outbound::PubRel(packet_id) => P::PublishRelease { packet_id },
        Outbound::PubComp(packet_id, _) => P::PublishComplete { packet_id },
        Outbound::SubAck(packet_id, results) => P::SubscribeAck {
            packet_id,
            status: results
                .into_iter()
                .map(|r| match r {
                    Ok(qos) => v3::SubscribeReturnCode::Success(qos),
                    Err(_) => v3::SubscribeReturnCode::Failure,
                })
                .collect(),
        },
        Outbound::UnsubAck(packet_id, _) => P::UnsubscribeAck { packet_id },
        Outbound::PingResp => P::PingResponse,
        Outbound::Disconnect(_) => return None,
    })
}

fn reason_string(refusal: &Option<Refusal>) -> Option<ByteString> {
    refusal
        .as_ref()
        .map(|r| ByteString::from(r.message.clone()))
}

fn to_v5(packet: Outbound) -> v5::Packet {
    use v5::Packet as P;
    let code = |refusal: &Option<Refusal>| refusal.as_ref().map_or(0, |r| r.reason as u8);
    // PUBACK and PUBREC carry the same fields.
    let ack = |packet_id, refusal: &Option<Refusal>| v5::PublishAck {
        packet_id,
        reason_code: v5::PublishAckReason::try_from(code(refusal))
            .unwrap_or(v5::PublishAckReason::UnspecifiedError),
        properties: Vec::new(),
        reason_string: reason_string(refusal),
    };
    match packet {
        Outbound::ConnAck(ack) => P::ConnectAck(Box::new(v5::ConnectAck {
            session_present: ack.session_present,
            reason_code: v5::ConnectAckReason::try_from(code(&ack.refusal))
                .unwrap_or(v5::ConnectAckReason::UnspecifiedError),
            session_expiry_interval_secs: ack.session_expiry,
            receive_max: NonZeroU16::new(ack.receive_maximum).unwrap_or(NonZeroU16::MAX),
            max_packet_size: Some(ack.max_packet_size),
            assigned_client_id: ack.assigned_client_id.map(ByteString::from),
            reason_string: reason_string(&ack.refusal),
            // Topic aliases and subscription identifiers are not supported.
            topic_alias_max: 0,
            subscription_identifiers_available: false,
            ..Default::default()
        })),
        Outbound::Publish(p) => P::Publish(p),
        Outbound::PubAck(packet_id, refusal) => P::PublishAck(ack(packet_id, &refusal)),
        Outbound::PubRec(packet_id, refusal) => P::PublishReceived(ack(packet_id, &refusal)),
        Outbound::PubRel(packet_id) => P::PublishRelease(v5::PublishAck2 {
            packet_id,
            reason_code: v5::PublishAck2Reason::Success,
            properties: Vec::new(),
            reason_string: None,
        }),
        Outbound::PubComp(packet_id, found) => P::PublishComplete(v5::PublishAck2 {
            packet_id,
            reason_code: match found {
                true => v5::PublishAck2Reason::Success,
                false => v5::PublishAck2Reason::PacketIdNotFound,
            },
            properties: Vec::new(),
            reason_string: None,
        }),
        Outbound::SubAck(packet_id, results) => {
            let refusals: Vec<&str> = results
                .iter()
                .filter_map(|r| r.as_ref().err().map(|r| r.message.as_str()))
                .collect();
            P::SubscribeAck(v5::SubscribeAck {
                packet_id,
                properties: Vec::new(),
                reason_string: (!refusals.is_empty())
                    .then(|| ByteString::from(refusals.join("; "))),
                status: results
                    .iter()
                    .map(|r| {
                        let code = match r {
                            Ok(qos) => qos.value(),
                            Err(refusal) => refusal.reason as u8,
                        };
                        v5::SubscribeAckReason::try_from(code)
                            .unwrap_or(v5::SubscribeAckReason::UnspecifiedError)
                    })
                    .collect(),
            })
        }
        Outbound::UnsubAck(packet_id, existed) => P::UnsubscribeAck(v5::UnsubscribeAck {
            packet_id,
            properties: Vec::new(),
            reason_string: None,
            status: existed
                .into_iter()
                .map(|existed| match existed {
                    true => v5::UnsubscribeAckReason::Success,
                    false => v5::UnsubscribeAckReason::NoSubscriptionExisted,
                })
                .collect(),
        }),
        Outbound::PingResp => P::PingResponse,
        Outbound::Disconnect(refusal) => P::Disconnect(v5::Disconnect {
            reason_code: v5::DisconnectReasonCode::try_from(refusal.reason as u8)
                .unwrap_or(v5::DisconnectReasonCode::UnspecifiedError),
            session_expiry_interval_secs: None,
            server_reference: None,
            reason_string: Some(ByteString::from(refusal.message)),
            user_properties: Vec::new(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(codec: &mut PacketCodec, bytes: &[u8]) -> Result<Vec<Inbound>, PacketError> {
        let mut buf = BytesMut::from(bytes);
        let mut packets = Vec::new();
        while let Some(packet) = codec.decode(&mut buf)? {
            packets.push(packet);
        }
        Ok(packets)
    }

    #[test]
    fn a_3_1_1_connect_is_read_and_answered_in_3_1_1() {
        // CONNECT, "MQTT", level 4, clean session, keep-alive 60, client id "dev1".
        let connect = b"\x10\x10\x00\x04MQTT\x04\x02\x00\x3c\x00\x04dev1";
        let mut codec = PacketCodec::new(1024);
        let packets = decode_all(&mut codec, connect).unwrap();
        let [Inbound::Connect(c)] = packets.as_slice() else {
            panic!("{packets:?}");
        };
        assert_eq!(
            (c.version, c.clean_start, c.keep_alive),
            (Version::V3, true, 60)
        );
        assert_eq!(c.client_id, "dev1");
        let mut out = BytesMut::new();
        let ack = ConnAck {
            session_present: false,
            refusal: Some(Refusal::new(Reason::NotAuthorized, "no")),
            session_expiry: None,
            receive_maximum: 10,
            max_packet_size: 1024,
            assigned_client_id: None,
        };
        assert!(codec.encode(Outbound::ConnAck(ack), &mut out).unwrap());
        assert_eq!(
            &out[..],
            b"\x20\x02\x00\x05",
            "3.1.1 return code 5, not authorized"
        );
    }

    #[test]
    fn an_unknown_protocol_level_is_told_from_garbage() {
        let level_7 = b"\x10\x10\x00\x04MQTT\x07\x02\x00\x3c\x00\x04dev1";
        let error = decode_all(&mut PacketCodec::new(1024), level_7).unwrap_err();
        assert!(matches!(error, PacketError::UnsupportedLevel(7)), "{error}");
        let garbage = b"GET / HTTP/1.1\r\n\r\n";
        let error = decode_all(&mut PacketCodec::new(1024), garbage).unwrap_err();
        assert!(matches!(error, PacketError::Malformed(_)), "{error}");
    }

    #[test]
    fn a_packet_over_the_maximum_is_refused_before_it_is_read() {
        let mut codec = PacketCodec::new(64);
        decode_all(
            &mut codec,
            b"\x10\x10\x00\x04MQTT\x04\x02\x00\x3c\x00\x04dev1",
        )
        .unwrap();
        // A PUBLISH announcing 200 bytes: refused from its header alone.
        let error = decode_all(&mut codec, b"\x30\xc8\x01\x00\x01a").unwrap_err();
        assert!(
            matches!(error, PacketError::TooLarge { size: 200, max: 64 }),
            "{error}"
        );
    }
}
