//! The MQTT listener: devices publish and subscribe with MQTT 3.1.1 and 5.0, over TCP
//! or TLS over TCP, to the same topics, plugins and grants as QUIC clients. A room
//! beside `session/`: it serves connections of its own protocol and calls the same
//! `Broker` methods (`publish` with a `PublishOrder` per connection, topic logs read
//! through `broker::cursors`); docs/mqtt.md is the user's side.
//!
//! - `packet`: the two protocol versions as one set of packets (rmqtt-codec);
//! - `topic`: MQTT names and filters as Quiver topics and patterns;
//! - `connection`: CONNECT, then one task per connection until it ends;
//! - `inbound`: a client's PUBLISHes, stored and acknowledged once durable;
//! - `outbound`: subscriptions delivered within the client's window;
//! - `session`: who holds each client id, and persistent sessions;
//! - `retained`: the retained message of each topic.

mod connection;
mod inbound;
mod outbound;
pub mod packet;
mod retained;
mod session;
pub mod topic;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quiver_protocol::{Durability, Retention, TopicConfig, TopicPattern};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::auth::Authenticator;
use crate::broker::Broker;
use crate::config::MqttConfig;
use crate::storage::StorageError;
use crate::transport::TransportError;
use crate::transport::tcp::{ByteStream, TcpListener, TcpTls};
use crate::transport::tls::Identity;
use retained::Retained;
use session::Sessions;

/// Header names MQTT properties are stored under (and read back from).
pub mod headers {
    /// The QoS the message was published with (`0`, `1`, `2`).
    pub const QOS: &str = "mqtt-qos";
    /// MQTT 5 content type.
    pub const CONTENT_TYPE: &str = "content-type";
    /// MQTT 5 response topic (as the MQTT client wrote it).
    pub const RESPONSE_TOPIC: &str = "mqtt-response-topic";
    /// MQTT 5 correlation data.
    pub const CORRELATION_DATA: &str = "mqtt-correlation-data";
    /// MQTT 5 payload format indicator: UTF-8 text.
    pub const PAYLOAD_UTF8: &str = "mqtt-payload-utf8";

    /// Whether a user property of this name would be mistaken for one of the above
    /// (such user properties are not stored).
    pub fn is_reserved(name: &str) -> bool {
        name.starts_with("mqtt-") || name == CONTENT_TYPE
    }
}

/// A grant the principal lacks: MQTT's "not authorized".
impl From<crate::auth::Denied> for packet::Refusal {
    fn from(denied: crate::auth::Denied) -> Self {
        Self::new(packet::Reason::NotAuthorized, denied.to_string())
    }
}

/// The MQTT settings a connection needs, from `[mqtt]`.
#[derive(Debug, Clone)]
pub struct MqttSettings {
    /// How long a new connection has to send CONNECT.
    pub connect_timeout: Duration,
    /// Largest packet accepted (and sent, unless the client asks for less).
    pub max_packet_size: u32,
    /// QoS 1 and 2 deliveries in flight per client, and publishes being stored.
    pub receive_maximum: u16,
    /// The longest a persistent session outlives its connection, in seconds.
    pub max_session_expiry: u32,
    /// Patterns a publish may create topics for, with their settings.
    pub auto_create: Vec<(TopicPattern, TopicConfig)>,
}

impl MqttSettings {
    /// The settings of `config`, or what is wrong with them.
    pub fn from_config(config: &MqttConfig) -> Result<Self, String> {
        let auto_create = config
            .auto_create
            .iter()
            .map(|rule| {
                let pattern = TopicPattern::parse(&rule.pattern)
                    .map_err(|e| format!("mqtt.auto_create pattern `{}`: {e}", rule.pattern))?;
                let durability = match rule.durability.as_deref() {
                    Some("batched") => Durability::Batched {
                        interval_ms: rule
                            .flush_interval
                            .map_or(100, |d| u32::try_from(d.as_millis()).unwrap_or(u32::MAX)),
                    },
                    _ => Durability::Fsync,
                };
                let config = TopicConfig {
                    retention: Retention {
                        max_age_ms: rule
                            .max_age
                            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
                        max_bytes: rule.max_bytes.map(|b| b.as_u64()),
                        max_records: rule.max_records,
                    },
                    dead_letter: None,
                    durability,
                };
                Ok((pattern, config))
            })
            .collect::<Result<_, String>>()?;
        Ok(Self {
            connect_timeout: config.connect_timeout,
            max_packet_size: u32::try_from(config.max_packet_size.as_u64()).unwrap_or(u32::MAX),
            receive_maximum: config.receive_maximum,
            max_session_expiry: u32::try_from(config.max_session_expiry.as_secs())
                .unwrap_or(u32::MAX),
            auto_create,
        })
    }
}

/// What every MQTT connection shares.
#[derive(Debug)]
struct Shared {
    broker: Arc<Broker>,
    auth: Arc<Authenticator>,
    settings: MqttSettings,
    retained: Retained,
    sessions: Arc<Sessions>,
    shutdown: CancellationToken,
}

/// The bound MQTT listeners (none, TCP, TLS, or both).
#[derive(Debug)]
pub struct MqttListeners {
    plain: Option<TcpListener>,
    tls: Option<(TcpListener, TcpTls)>,
    settings: MqttSettings,
}

/// Where the MQTT listeners are bound.
#[derive(Debug, Clone, Copy, Default)]
pub struct MqttAddrs {
    /// MQTT over TCP.
    pub listen: Option<SocketAddr>,
    /// MQTT over TLS.
    pub tls_listen: Option<SocketAddr>,
}

impl MqttListeners {
    /// Binds what `config` asks for; TLS uses `identity` and accepts client
    /// certificates chaining to `client_ca`.
    pub async fn bind(
        config: &MqttConfig,
        settings: MqttSettings,
        identity: &Identity,
        client_ca: Option<&std::path::Path>,
    ) -> Result<Self, TransportError> {
        let plain = match config.listen {
            Some(addr) => Some(TcpListener::bind(addr).await?),
            None => None,
        };
        let tls = match config.tls_listen {
            Some(addr) => Some((
                TcpListener::bind(addr).await?,
                TcpTls::new(identity, client_ca)?,
            )),
            None => None,
        };
        Ok(Self {
            plain,
            tls,
            settings,
        })
    }

    /// The bound addresses.
    pub fn addrs(&self) -> MqttAddrs {
        MqttAddrs {
            listen: self.plain.as_ref().and_then(|l| l.local_addr().ok()),
            tls_listen: self.tls.as_ref().and_then(|(l, _)| l.local_addr().ok()),
        }
    }

    /// Serves connections on `tasks` until `stop`; each connection ends with the
    /// broker's shutdown (MQTT 5 clients hear why).
    pub async fn serve(
        self,
        broker: Arc<Broker>,
        auth: Arc<Authenticator>,
        tasks: &TaskTracker,
        stop: CancellationToken,
    ) -> Result<(), StorageError> {
        if self.plain.is_none() && self.tls.is_none() {
            return Ok(());
        }
        let storage = broker.storage().clone();
        let retained = Retained::load(&storage)?;
        let sessions = Sessions::load(&storage, self.settings.max_session_expiry).await?;
        info!(
            retained = retained.len(),
            sessions = sessions.parked(),
            "MQTT state loaded"
        );
        let shared = Arc::new(Shared {
            broker,
            auth,
            settings: self.settings,
            retained,
            sessions,
            shutdown: stop.clone(),
        });
        if let Some(listener) = self.plain {
            tasks.spawn(accept_loop(
                listener,
                None,
                Arc::clone(&shared),
                tasks.clone(),
            ));
        }
        if let Some((listener, tls)) = self.tls {
            tasks.spawn(accept_loop(listener, Some(tls), shared, tasks.clone()));
        }
        Ok(())
    }
}

/// Accepts connections until the broker stops, each served on a task of its own.
async fn accept_loop(
    listener: TcpListener,
    tls: Option<TcpTls>,
    shared: Arc<Shared>,
    tasks: TaskTracker,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shared.shutdown.cancelled() => return,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors, say: the listener goes on after a breath.
                warn!(error = %e, "accepting an MQTT connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let shared = Arc::clone(&shared);
        let tls = tls.clone();
        tasks.spawn(async move {
            let (stream, cert_name) = match tls {
                None => (ByteStream::Plain(tcp), None),
                Some(tls) => {
                    let handshake =
                        tokio::time::timeout(shared.settings.connect_timeout, tls.accept(tcp));
                    match handshake.await {
                        Ok(Ok(accepted)) => accepted,
                        Ok(Err(e)) => return debug!(%peer, error = %e, "MQTT TLS handshake failed"),
                        Err(_) => return debug!(%peer, "MQTT TLS handshake timed out"),
                    }
                }
            };
            connection::serve(shared, stream, peer, cert_name).await;
        });
    }
}
