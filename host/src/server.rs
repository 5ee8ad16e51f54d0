//! Putting the broker together: open storage, load TLS, bind, serve connections until a
//! shutdown signal, then stop gracefully.
//!
//! [`Server::bind`] does everything that can fail at start-up and returns before
//! serving, so the caller can print the bound address (the ready line) and tests can
//! bind port 0. [`Server::run`] takes the shutdown signal as a future.
//!
//! Graceful shutdown: refuse new connections; stop reading requests; answer every
//! publish already read (its records are committed and flushed); end subscriptions
//! with `ShuttingDown`; close connections; flush and close storage.
//!
//! Recovering storage: once a failed write has halted storage (see
//! `storage/writer.rs`), the server probes the data dir's file system until it can
//! write [`RECOVERY_PROBE_BYTES`] again, then stops as for a shutdown and returns
//! [`Stopped::ToRecoverStorage`]; the caller binds a new server on the same address,
//! which reopens storage from what is durable. Until then reads go on being served.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use quiver_protocol::{Limits, LinkSpec};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn};

use tokio::sync::Semaphore;

use crate::auth::{self, AuthError, AuthSettings, Authenticator};
use crate::broker::ServerFacts;
use crate::broker::{Broker, BrokerLimits, BrokerSettings};
use crate::config::Config;
use crate::http::HttpListener;
use crate::links::{self, Links};
use crate::memory;
use crate::mqtt::{MqttAddrs, MqttListeners, MqttSettings};
use crate::plugins::runtime::SandboxLimits;
use crate::plugins::sandbox::SandboxPolicy;
use crate::plugins::stage::QuarantinePolicy;
use crate::plugins::{AdminError, PluginSettings, Plugins};
use crate::retention;
use crate::session::{self, SessionSettings};
use crate::storage::{self, Storage, StorageConfig, StorageError};
use crate::transport::tls::{self, Origin};
use crate::transport::{CloseCode, Listener, TransportError, TransportSettings};

/// Why the broker could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The data dir could not be created.
    #[error("cannot create data dir {path}: {source}")]
    DataDir {
        /// The data dir.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Storage could not be opened: what is wrong, where, and what the operator can do.
    #[error(
        "cannot open storage in {}: {cause}\n  what to do: {}",
        path.display(),
        cause.remedy()
    )]
    Storage {
        /// The sled directory.
        path: PathBuf,
        /// What went wrong (in the message, not a `source`, so it is printed once).
        cause: StorageError,
    },
    /// TLS or the socket.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The durable groups could not be loaded.
    #[error("groups: {0}")]
    Groups(String),
    /// A link the config file declares is not valid.
    #[error("links: {0}")]
    Links(String),
    /// The plugin runtime could not start, or the plugin dir could not be read.
    #[error("plugins: {0}")]
    Plugins(#[from] AdminError),
    /// The MQTT settings are not valid.
    #[error("mqtt: {0}")]
    Mqtt(String),
    /// The auth file could not be read.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// Listening beyond this machine with nobody required to authenticate.
    #[error(
        "refusing to listen on {addr} without authentication: anyone who can reach it could \
         read, publish and delete everything. Create a principal and a token \
         (`quiver auth principal add NAME --grant admin:'>'`, then `quiver auth token create \
         NAME`), or accept client certificates (--client-ca), or pass --allow-anonymous \
         (auth.allow_anonymous) if that is really meant"
    )]
    Unprotected {
        /// The address.
        addr: SocketAddr,
    },
}

/// The plugin subsystem's settings from the `[plugins]` section and the record-size limit.
pub(crate) fn plugin_settings(config: &Config) -> PluginSettings {
    let p = &config.plugins;
    PluginSettings {
        limits: SandboxLimits::from_settings(p, config.limits.max_record_size),
        sandbox: SandboxPolicy::from_settings(p),
        quarantine: QuarantinePolicy {
            after_failures: p.quarantine_after,
            duration_ms: u64::try_from(p.quarantine_for.as_millis()).unwrap_or(u64::MAX),
        },
        cache_dir: Some(
            p.cache_dir
                .clone()
                .unwrap_or_else(|| config.data.join("plugins")),
        ),
    }
}

/// What a self-signed certificate should name besides the loopback names: this
/// host's name, every listen address that is neither loopback nor unspecified, and
/// `tls.names`.
fn certificate_names(config: &Config) -> Vec<String> {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty());
    let listening = [
        Some(config.listen),
        config.mqtt.listen,
        config.mqtt.tls_listen,
        config.http.addr(),
    ];
    let addrs = listening
        .into_iter()
        .flatten()
        .map(|addr| addr.ip())
        .filter(|ip| !ip.is_loopback() && !ip.is_unspecified())
        .map(|ip| ip.to_string());
    let mut names: Vec<String> = Vec::new();
    for name in host
        .into_iter()
        .chain(addrs)
        .chain(config.tls.names.iter().cloned())
    {
        if !names.contains(&name) {
            names.push(name);
        }
    }
    names
}

/// A broker bound to its address, ready to [`run`](Server::run).
#[derive(Debug)]
pub struct Server {
    broker: Arc<Broker>,
    auth: Arc<Authenticator>,
    listener: Listener,
    mqtt: MqttListeners,
    http: Option<HttpListener>,
    config: Config,
    /// The links the config file declares.
    links: Vec<LinkSpec>,
    cert_path: PathBuf,
    cert_origin: Origin,
}

impl Server {
    /// Opens the data dir, loads plugins (deploying those of the plugin dir), and binds
    /// the listener.
    pub async fn bind(config: Config) -> Result<Self, ServeError> {
        crate::files::create_dir_all(&config.data).map_err(|source| ServeError::DataDir {
            path: config.data.clone(),
            source,
        })?;
        let auth = Authenticator::open(AuthSettings {
            file: auth::file::path_in(&config.data),
            allow_anonymous: config.auth.allow_anonymous,
            mutual_tls: config.auth.client_ca.is_some(),
        })?;
        if !config.listen.ip().is_loopback() && !auth.is_required() && !auth.allows_anonymous() {
            return Err(ServeError::Unprotected {
                addr: config.listen,
            });
        }
        let storage_config = StorageConfig {
            path: config.data.join("db"),
            cache_capacity: config.storage.cache_capacity.as_u64(),
            chunk_bytes: storage::DEFAULT_CHUNK_BYTES,
            barrier: !config.storage.unsafe_skip_barrier,
            journal_bytes: usize::try_from(config.storage.journal_size.as_u64())
                .unwrap_or(usize::MAX),
            group_deltas: storage::DEFAULT_GROUP_DELTAS,
        };
        if !storage_config.barrier {
            warn!(
                "storage barrier OFF (--unsafe-skip-barrier): acknowledged records can be \
                 lost on power failure or an OS crash; this exists for tests only"
            );
        }
        let (storage, topics) =
            Storage::open(&storage_config).map_err(|cause| ServeError::Storage {
                path: storage_config.path.clone(),
                cause,
            })?;
        info!(topics = topics.len(), path = %storage_config.path.display(), "storage opened");
        let limits = &config.limits;
        let plugins = Arc::new(Plugins::open(
            storage.clone(),
            &topics,
            plugin_settings(&config),
        )?);
        if let Some(dir) = &config.plugins.dir {
            plugins.autoload(dir).await?;
        }
        let settings = BrokerSettings {
            limits: BrokerLimits {
                max_record_size: limits.max_record_size.as_u64(),
                max_batch_records: limits.max_batch_records,
                max_topics: limits.max_topics as usize,
                max_plugins: limits.max_plugins as usize,
                max_buffered_per_subscription: usize::try_from(
                    limits.max_buffered_per_subscription.as_u64(),
                )
                .unwrap_or(usize::MAX),
            },
            dedup_window_ms: u64::try_from(config.dedup.window.as_millis()).unwrap_or(u64::MAX),
            dedup_max_entries: config.dedup.max_entries,
        };
        let auth = Arc::new(auth);
        let broker = Broker::new(storage, &topics, plugins, Arc::clone(&auth), settings).map_err(
            |cause| ServeError::Storage {
                path: storage_config.path.clone(),
                cause,
            },
        )?;
        let broker = Arc::new(broker);
        broker
            .load_groups()
            .await
            .map_err(|e| ServeError::Groups(e.to_string()))?;
        let links = config
            .links
            .iter()
            .map(|link| {
                let spec = links::spec_of(link).map_err(ServeError::Links)?;
                links::validate(&spec).map_err(|e| ServeError::Links(e.to_string()))?;
                Ok(spec)
            })
            .collect::<Result<Vec<_>, ServeError>>()?;
        let configured = config.tls.cert.as_deref().zip(config.tls.key.as_deref());
        let identity =
            tls::load_or_generate(configured, &config.data, &certificate_names(&config))?;
        for addr in [config.mqtt.listen, config.mqtt.tls_listen]
            .into_iter()
            .flatten()
        {
            if !addr.ip().is_loopback() && !auth.is_required() && !auth.allows_anonymous() {
                return Err(ServeError::Unprotected { addr });
            }
        }
        let mqtt_settings = MqttSettings::from_config(&config.mqtt).map_err(ServeError::Mqtt)?;
        let mqtt = MqttListeners::bind(
            &config.mqtt,
            mqtt_settings,
            &identity,
            config.auth.client_ca.as_deref(),
        )
        .await?;
        let http =
            HttpListener::bind(&config.http, &identity, config.auth.client_ca.as_deref()).await?;
        let (cert_path, cert_origin) = (identity.cert_path.clone(), identity.origin.clone());
        let listener = Listener::bind(
            config.listen,
            identity,
            &TransportSettings {
                max_streams: limits.max_streams_per_connection,
                max_frame_len: usize::try_from(limits.max_frame_size.as_u64())
                    .unwrap_or(usize::MAX),
                idle_timeout: Duration::from_secs(30),
                client_ca: config.auth.client_ca.clone(),
            },
        )?;
        Ok(Self {
            broker,
            auth,
            listener,
            mqtt,
            http,
            config,
            links,
            cert_path,
            cert_origin,
        })
    }

    /// The address the broker listens on.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Where the MQTT listeners are bound (none unless configured).
    pub fn mqtt_addrs(&self) -> MqttAddrs {
        self.mqtt.addrs()
    }

    /// Where the HTTP listener is bound, if there is one.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().and_then(|http| http.local_addr().ok())
    }

    /// The certificate clients should trust when it is self-signed, and whether it was
    /// made by this start.
    pub fn certificate(&self) -> (&std::path::Path, &Origin) {
        (&self.cert_path, &self.cert_origin)
    }

    /// Serves until `shutdown` resolves, or until halted storage can be reopened
    /// (see the module docs), then stops gracefully and says which it was.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Stopped {
        let Self {
            broker,
            auth,
            listener,
            mqtt,
            http,
            config,
            links,
            ..
        } = self;
        let stop = CancellationToken::new();
        let tasks = TaskTracker::new();
        tasks.spawn(retention::run(
            Arc::clone(&broker),
            config.retention_interval,
            stop.clone(),
        ));
        tasks.spawn(memory::trim_periodically(stop.clone()));
        let limits = &config.limits;
        let settings = Arc::new(SessionSettings {
            limits: Limits {
                max_frame_len: limits.max_frame_size.as_u64(),
                max_record_size: limits.max_record_size.as_u64(),
                max_batch_records: limits.max_batch_records,
            },
            max_inflight: limits.max_inflight_publishes as usize,
            handshake_timeout: Duration::from_secs(10),
            max_subscriptions: limits.max_subscriptions_per_connection as usize,
            auth: Arc::clone(&auth),
        });
        let mqtt_addrs = mqtt.addrs();
        if let Err(e) = mqtt
            .serve(Arc::clone(&broker), Arc::clone(&auth), &tasks, stop.clone())
            .await
        {
            error!(cause = %e, "the MQTT listener could not start: its state could not be read");
        }
        tasks.spawn(refresh_auth(Arc::clone(&auth), stop.clone()));
        // Links run until `stop`; shutdown waits for them like for connections.
        match Links::start(Arc::clone(&broker), links, stop.clone()).await {
            Ok(links) => {
                let stop = stop.clone();
                tasks.spawn(async move {
                    stop.cancelled().await;
                    links.stopped().await;
                });
            }
            Err(e) => error!(cause = %e, "links could not start"),
        }
        let connections = Arc::new(Semaphore::new(limits.max_connections as usize));
        let mut listeners = Vec::new();
        let mut listening = |kind: &str, addr: Option<SocketAddr>| {
            if let Some(addr) = addr {
                listeners.push((kind.to_owned(), addr.to_string()));
            }
        };
        listening("quic", listener.local_addr().ok());
        listening("mqtt", mqtt_addrs.listen);
        listening("mqtt-tls", mqtt_addrs.tls_listen);
        if let Some(addr) = http.as_ref().and_then(|h| h.local_addr().ok()) {
            let kind = if config.http.tls_on(addr) {
                "https"
            } else {
                "http"
            };
            listening(kind, Some(addr));
        }
        broker.set_server_facts(ServerFacts {
            started_ms: crate::util::now_ms(),
            data_dir: config.data.display().to_string(),
            listeners,
            connections: Arc::clone(&connections),
            max_connections: limits.max_connections as usize,
        });
        if let Some(http) = http {
            http.serve(
                Arc::clone(&broker),
                Arc::clone(&auth),
                Arc::clone(&connections),
                limits.max_connections as usize,
                &tasks,
                stop.clone(),
            );
        }
        let recoverable = {
            let storage = broker.storage().clone();
            let data = config.data.clone();
            async move {
                storage.halted().await;
                room_again(&data).await;
            }
        };
        tokio::pin!(shutdown, recoverable);
        let stopped = loop {
            tokio::select! {
                connecting = listener.accept() => {
                    let Some(connecting) = connecting else { break Stopped::Shutdown };
                    let slot = Arc::clone(&connections).try_acquire_owned().ok();
                    let (broker, settings, stop) = (Arc::clone(&broker), Arc::clone(&settings), stop.clone());
                    let max = limits.max_connections;
                    tasks.spawn(async move {
                        let conn = match connecting.establish().await {
                            Ok(conn) => conn,
                            Err(e) => return debug!(cause = %e, "connection attempt failed"),
                        };
                        if slot.is_none() {
                            warn!(peer = %conn.remote_addr(), max, "connection refused: limits.max_connections reached");
                            let reason = format!("the broker serves its maximum of {max} connections (limits.max_connections)");
                            return conn.close(CloseCode::LimitReached, &reason);
                        }
                        session::run(broker, conn, settings, stop).await;
                        drop(slot);
                    });
                }
                () = &mut shutdown => break Stopped::Shutdown,
                () = &mut recoverable => {
                    warn!("the disk has room again: restarting to reopen storage");
                    break Stopped::ToRecoverStorage;
                }
            }
        };

        info!("shutting down: no new connections; finishing in-flight work");
        listener.stop_accepting();
        stop.cancel();
        tasks.close();
        if tokio::time::timeout(config.shutdown_timeout, tasks.wait())
            .await
            .is_err()
        {
            warn!(
                timeout = ?config.shutdown_timeout,
                "in-flight work did not finish in time; closing connections anyway"
            );
        }
        listener
            .close(
                CloseCode::ShuttingDown,
                "broker shutting down",
                Duration::from_secs(1),
            )
            .await;
        broker.storage().close().await;
        info!("stopped");
        stopped
    }
}

/// Why [`Server::run`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// The shutdown signal came.
    Shutdown,
    /// Storage had halted and the disk has room again: bind a new server to reopen it.
    ToRecoverStorage,
}

/// Free space a halted broker waits for before it reopens storage: a few of sled's
/// segments, so that reopening (which writes) and the first commits have room.
pub const RECOVERY_PROBE_BYTES: usize = 16 << 20;
/// How often a halted broker checks for room.
const RECOVERY_PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// Resolves once a file of [`RECOVERY_PROBE_BYTES`] can be written and synced in
/// `data`: the room storage needs to be reopened.
async fn room_again(data: &std::path::Path) {
    let probe = data.join("recovery-probe");
    let mut ticks = tokio::time::interval(RECOVERY_PROBE_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let path = probe.clone();
        let written = tokio::task::spawn_blocking(move || {
            let written = write_probe(&path);
            let _ = std::fs::remove_file(&path);
            written
        })
        .await;
        match written {
            Ok(Ok(())) => return,
            Ok(Err(e)) => debug!(cause = %e, "no room for storage yet"),
            Err(e) => debug!(cause = %e, "the space probe did not run"),
        }
    }
}

fn write_probe(path: &std::path::Path) -> std::io::Result<()> {
    use std::io::Write;
    let mut file = std::fs::File::create(path)?;
    let block = vec![0u8; 1 << 20];
    for _ in 0..RECOVERY_PROBE_BYTES / block.len() {
        file.write_all(&block)?;
    }
    file.sync_all()
}

/// How often the auth file is checked for changes (connecting clients also check).
const AUTH_REFRESH: Duration = Duration::from_secs(1);

/// Re-reads the auth file when it changes, so grant changes and removed principals
/// reach live connections without waiting for a new one.
async fn refresh_auth(auth: Arc<Authenticator>, stop: CancellationToken) {
    let mut ticks = tokio::time::interval(AUTH_REFRESH);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => auth.refresh(),
            () = stop.cancelled() => return,
        }
    }
}
