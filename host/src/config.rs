//! Broker configuration: defaults, then a TOML file, then `QUIVER_*` environment
//! variables, then command-line flags, each overriding the one before.
//!
//! Environment variables name a key by its path with `__` between sections:
//! `QUIVER_LISTEN`, `QUIVER_DATA`, `QUIVER_LIMITS__MAX_RECORD_SIZE=2MiB`.
//! `quiver.example.toml` at the repository root documents every key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytesize::ByteSize;
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

/// The UDP port a broker listens on unless told otherwise.
pub const DEFAULT_PORT: u16 = 7848;
/// The data dir used unless told otherwise.
pub const DEFAULT_DATA_DIR: &str = "./quiver-data";

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file, an environment variable or a flag holds a bad value.
    #[error(transparent)]
    Invalid(#[from] Box<figment::Error>),
    /// The config file given does not exist.
    #[error("config file {0} does not exist")]
    MissingFile(PathBuf),
    /// A value is out of its allowed range.
    #[error("invalid configuration: {0}")]
    OutOfRange(String),
}

/// How logs are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Human,
    /// One JSON object per line.
    Json,
}

/// The whole broker configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// UDP address to listen on (port 0 picks a free port).
    pub listen: SocketAddr,
    /// The data dir: sled database, TLS certificate and key.
    pub data: PathBuf,
    /// Log format.
    pub log_format: LogFormat,
    /// TLS certificate and key.
    pub tls: TlsConfig,
    /// Client authentication.
    pub auth: AuthConfig,
    /// Limits on what clients may send.
    pub limits: LimitsConfig,
    /// Storage tuning.
    pub storage: StorageSettings,
    /// WebAssembly plugins: sandbox limits, quarantine, cache, autoload dir.
    pub plugins: PluginsConfig,
    /// Deduplication of retried publishes.
    pub dedup: DedupConfig,
    /// How often retention and clean-up run.
    #[serde(with = "humantime_serde")]
    pub retention_interval: Duration,
    /// How long a graceful shutdown waits for in-flight work.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// Links to other brokers (`[[links]]`), started with the broker.
    pub links: Vec<LinkConfig>,
    /// The MQTT listener (docs/mqtt.md); off unless an address is set.
    pub mqtt: MqttConfig,
    /// The HTTP listener: metrics and health checks (docs/operations.md).
    pub http: HttpConfig,
}

/// The default HTTP listener.
pub const DEFAULT_HTTP_PORT: u16 = 7849;

/// The HTTP listener: Prometheus metrics (`/metrics`) and health checks (`/healthz`,
/// `/readyz`), with the QUIC side's authentication (a bearer token).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// TCP address, or `off`.
    pub listen: HttpListen,
    /// HTTPS with the broker's certificate; unset: on unless the address is loopback.
    pub tls: Option<bool>,
    /// Per-topic metric series for at most this many topics (those holding the most
    /// bytes); the others are summed into the series of topic `_other`.
    pub max_topic_series: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: HttpListen::At(SocketAddr::from(([127, 0, 0, 1], DEFAULT_HTTP_PORT))),
            tls: None,
            max_topic_series: 1000,
        }
    }
}

impl HttpConfig {
    /// Where to listen, if anywhere.
    pub fn addr(&self) -> Option<SocketAddr> {
        match self.listen {
            HttpListen::At(addr) => Some(addr),
            HttpListen::Off => None,
        }
    }

    /// Whether the listener speaks HTTPS.
    pub fn tls_on(&self, addr: SocketAddr) -> bool {
        self.tls.unwrap_or(!addr.ip().is_loopback())
    }
}

/// Where the HTTP listener listens: an address, or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpListen {
    /// No HTTP listener.
    Off,
    /// This TCP address (port 0 picks a free one).
    At(SocketAddr),
}

impl std::str::FromStr for HttpListen {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "off" => Ok(Self::Off),
            addr => addr
                .parse()
                .map(Self::At)
                .map_err(|_| format!("`{addr}` is neither an address (127.0.0.1:7849) nor `off`")),
        }
    }
}

impl std::fmt::Display for HttpListen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Off => f.write_str("off"),
            Self::At(addr) => addr.fmt(f),
        }
    }
}

impl Serialize for HttpListen {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HttpListen {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// The MQTT listener: devices publish and subscribe with MQTT 3.1.1 or 5.0 over TCP,
/// or over TLS with the broker's certificate. docs/mqtt.md explains each setting.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    /// TCP address for MQTT (port 0 picks a free one); unset: no MQTT over TCP.
    pub listen: Option<SocketAddr>,
    /// TCP address for MQTT over TLS, with the broker's certificate (and client
    /// certificates from `auth.client_ca`); unset: none.
    pub tls_listen: Option<SocketAddr>,
    /// How long a new connection has to send its CONNECT.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Largest packet a client may send, and the largest the broker sends it unless
    /// the client asks for less (MQTT 5).
    pub max_packet_size: ByteSize,
    /// QoS 1 and 2 messages in flight to a client before it acknowledges them, and
    /// the most QoS 2 publishes a client may have unreleased.
    pub receive_maximum: u16,
    /// The longest session expiry a client may ask for (MQTT 5), and the one a
    /// 3.1.1 client's persistent session (clean session 0) gets.
    #[serde(with = "humantime_serde")]
    pub max_session_expiry: Duration,
    /// Topics a publish may create, with the settings to create them with; the first
    /// pattern matching the topic applies. Without a match, a publish to a topic that
    /// does not exist is refused.
    pub auto_create: Vec<AutoCreate>,
}

impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            listen: None,
            tls_listen: None,
            connect_timeout: Duration::from_secs(10),
            max_packet_size: ByteSize::mib(1),
            receive_maximum: 64,
            max_session_expiry: Duration::from_secs(24 * 3600),
            auto_create: Vec::new(),
        }
    }
}

/// Topics an MQTT publish may create (`[[mqtt.auto_create]]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AutoCreate {
    /// A Quiver topic pattern (`sensors.>`, `plant.*.temperature`).
    pub pattern: String,
    /// Retention: the oldest a record may be.
    #[serde(default, with = "humantime_serde")]
    pub max_age: Option<Duration>,
    /// Retention: the most bytes kept.
    #[serde(default)]
    pub max_bytes: Option<ByteSize>,
    /// Retention: the most records kept.
    #[serde(default)]
    pub max_records: Option<u64>,
    /// `fsync` (the default: acknowledged once on disk) or `batched`.
    #[serde(default)]
    pub durability: Option<String>,
    /// With batched durability: the longest an acknowledged record waits for its flush.
    #[serde(default, with = "humantime_serde")]
    pub flush_interval: Option<Duration>,
}

/// A link to another broker, as the config file (`[[links]]`) or `quiver link create`
/// declares it; docs/links.md explains each setting.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LinkConfig {
    /// The link's name (the topic-name grammar).
    pub name: String,
    /// The remote broker's addresses (`HOST:PORT`), tried in turn.
    pub to: Vec<String>,
    /// The source topics: a name or pattern (local for `out`, remote for `in`).
    pub topics: String,
    /// `out` (forward local topics to the remote, the default) or `in` (pull the
    /// remote's topics here).
    pub direction: Option<String>,
    /// Put before each source topic's name to name its destination.
    pub prefix: String,
    /// Where a topic never forwarded before starts: `earliest` (the default),
    /// `latest`, an offset, an RFC 3339 time or `-DURATION`.
    pub from: Option<String>,
    /// The most records per second the link forwards.
    pub max_rate: Option<u32>,
    /// The CA certificate (PEM) the remote's certificate must chain to (`tls_ca` for
    /// a JetStream remote means the same).
    #[serde(alias = "tls_ca")]
    pub ca: Option<PathBuf>,
    /// A token the remote issued (`quiver auth token create` there).
    pub token: Option<String>,
    /// A client certificate (PEM) the remote trusts, with `key`.
    pub cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    pub key: Option<PathBuf>,
    /// A deployed plugin an `out` link runs on records before forwarding them.
    pub plugin: Option<String>,
    /// The plugin's parameters.
    pub params: std::collections::BTreeMap<String, String>,
    /// The remote is NATS JetStream (`to` holds `nats://` URLs): the stream records
    /// go to or come from.
    pub stream: Option<String>,
    /// JetStream: subjects are this, a dot and the topic's name.
    pub subject_prefix: String,
    /// JetStream: create the stream if it is missing.
    pub create_stream: bool,
    /// JetStream: the created stream's replicas (default 1).
    pub replicas: Option<u8>,
    /// JetStream: the created stream's storage, `file` (default) or `memory`.
    pub storage: Option<String>,
    /// JetStream: the created stream's retention, `limits` (default), `interest` or
    /// `work-queue`.
    pub retention: Option<String>,
    /// JetStream: a NATS credentials file (user JWT and NKey seed).
    pub creds: Option<PathBuf>,
    /// JetStream: a NATS user, with `password`.
    pub user: Option<String>,
    /// JetStream: the user's password.
    pub password: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], DEFAULT_PORT)),
            data: PathBuf::from(DEFAULT_DATA_DIR),
            log_format: LogFormat::Human,
            tls: TlsConfig::default(),
            auth: AuthConfig::default(),
            limits: LimitsConfig::default(),
            storage: StorageSettings::default(),
            plugins: PluginsConfig::default(),
            dedup: DedupConfig::default(),
            retention_interval: Duration::from_secs(5),
            shutdown_timeout: Duration::from_secs(10),
            links: Vec::new(),
            mqtt: MqttConfig::default(),
            http: HttpConfig::default(),
        }
    }
}

/// TLS files; both unset means a self-signed pair kept in `<data>/tls/`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM certificate chain.
    pub cert: Option<PathBuf>,
    /// PEM private key.
    pub key: Option<PathBuf>,
    /// More DNS names or IP addresses for the self-signed certificate to hold, beside
    /// localhost, the loopback addresses, this host's name and the listen addresses.
    pub names: Vec<String>,
}

/// Client authentication: principals and tokens live in `<data>/auth.toml`
/// (`quiver auth`); this section says what else is accepted.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Let clients without credentials in: on a non-loopback address without any
    /// principal (everyone may do everything), or, once principals exist, with the
    /// grants of the principal named `anonymous`.
    pub allow_anonymous: bool,
    /// PEM file of the CA certificates whose client certificates the broker accepts
    /// (mutual TLS); the certificate's subject CN names the principal.
    pub client_ca: Option<PathBuf>,
}

/// Limits on what clients may send.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest record: payload + key + header names and values.
    pub max_record_size: ByteSize,
    /// Most records in one publish.
    pub max_batch_records: u32,
    /// Largest frame a client may send.
    pub max_frame_size: ByteSize,
    /// Publishes one connection may have waiting for their acknowledgement.
    pub max_inflight_publishes: u32,
    /// Concurrent streams (subscriptions + the control stream) per connection.
    pub max_streams_per_connection: u32,
    /// Client connections at once; more are closed right after the handshake.
    pub max_connections: u32,
    /// Subscriptions and group memberships one connection may have open at once.
    pub max_subscriptions_per_connection: u32,
    /// Bytes of records a subscription encodes for its client before waiting for the
    /// client to read them (on top of what QUIC flow control holds in flight).
    pub max_buffered_per_subscription: ByteSize,
    /// Topics the broker holds (dead-letter topics included).
    pub max_topics: u32,
    /// Plugins deployed at once.
    pub max_plugins: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_record_size: ByteSize::mib(1),
            max_batch_records: 10_000,
            max_frame_size: ByteSize::mib(64),
            max_inflight_publishes: 4096,
            max_streams_per_connection: 1024,
            max_connections: 1024,
            max_subscriptions_per_connection: 256,
            max_buffered_per_subscription: ByteSize::kib(256),
            max_topics: 100_000,
            max_plugins: 256,
        }
    }
}

/// Storage tuning.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageSettings {
    /// sled's page cache, counted as sled counts it: the bytes its cached tree nodes
    /// take on disk (they take about a quarter more in memory). 16 MiB holds the nodes
    /// every write touches even with 10,000 topics written in turn (about 10–15 MB);
    /// more keeps more of the history in memory for readers catching up.
    pub cache_capacity: ByteSize,
    /// The journal's budget: records appended and not yet sealed into a chunk of their
    /// topic's, at most about this much of them (in memory and on disk), before the
    /// topics holding the oldest are sealed. More means fuller chunks when many topics
    /// are written in turn; it is also what a start after a crash reads back.
    pub journal_size: ByteSize,
    /// Test only, never from a file or the environment: flush without `fdatasync`
    /// (`quiver serve --unsafe-skip-barrier`), so the power-cut harness can show it
    /// notices lost acknowledgements.
    #[serde(skip)]
    pub unsafe_skip_barrier: bool,
}

impl Default for StorageSettings {
    fn default() -> Self {
        Self {
            cache_capacity: ByteSize::mib(16),
            journal_size: ByteSize::mib(32),
            unsafe_skip_barrier: false,
        }
    }
}

/// Deduplication of retried publishes (publishes carrying an id).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DedupConfig {
    /// How long a publish id is remembered; `0s` turns deduplication off.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// The most publish ids remembered; past it the oldest are forgotten first. Each
    /// costs about 200 bytes of memory while remembered.
    pub max_entries: usize,
}

impl Default for DedupConfig {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(120),
            max_entries: 200_000,
        }
    }
}

/// WebAssembly plugin settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PluginsConfig {
    /// Linear memory one instance of a compiled plugin (Rust, or any language without
    /// its own defaults) may use, unless its attachment says otherwise.
    pub memory_limit: ByteSize,
    /// Time one call (one batch) of a compiled plugin may take, unless its
    /// attachment says otherwise.
    #[serde(with = "humantime_serde")]
    pub call_timeout: Duration,
    /// The defaults for Python plugins (componentize-py).
    pub python: LanguageSandbox,
    /// The defaults for JavaScript plugins (componentize-js).
    pub javascript: LanguageSandbox,
    /// The most memory an attachment may ask for.
    pub max_memory_limit: ByteSize,
    /// The longest call deadline an attachment may ask for.
    #[serde(with = "humantime_serde")]
    pub max_call_timeout: Duration,
    /// Records one event may be replaced with.
    pub max_outputs_per_event: u32,
    /// Bytes of replacement records one call may return.
    pub max_output_bytes: ByteSize,
    /// Consecutive failed calls that quarantine an attachment.
    pub quarantine_after: u32,
    /// How long a quarantine lasts before a trial call.
    #[serde(with = "humantime_serde")]
    pub quarantine_for: Duration,
    /// Where compiled plugins are cached (default: `<data>/plugins`).
    pub cache_dir: Option<PathBuf>,
    /// A directory whose `*.wasm` files are deployed (or upgraded) at start-up.
    pub dir: Option<PathBuf>,
}

/// The defaults of one plugin language.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LanguageSandbox {
    /// Linear memory one instance may use.
    pub memory_limit: ByteSize,
    /// Time one call (one batch) may take.
    #[serde(with = "humantime_serde")]
    pub call_timeout: Duration,
}

impl Default for PluginsConfig {
    fn default() -> Self {
        Self {
            memory_limit: ByteSize::mib(64),
            call_timeout: Duration::from_millis(100),
            // Measured (docs/performance.md, Sandboxes by language): memory about
            // twice what an example's instance settles at (Python 13-21 MiB,
            // JavaScript 73-89 MiB), the deadline about ten times the slower example's
            // p99 call at batch 256 (Rust 11 ms, Python 18 ms, JavaScript 43 ms).
            python: LanguageSandbox {
                memory_limit: ByteSize::mib(64),
                call_timeout: Duration::from_millis(200),
            },
            javascript: LanguageSandbox {
                memory_limit: ByteSize::mib(192),
                call_timeout: Duration::from_millis(500),
            },
            max_memory_limit: ByteSize::gib(1),
            max_call_timeout: Duration::from_secs(10),
            max_outputs_per_event: 64,
            max_output_bytes: ByteSize::mib(16),
            quarantine_after: 3,
            quarantine_for: Duration::from_secs(30),
            cache_dir: None,
            dir: None,
        }
    }
}

/// Values given on the command line; `None` leaves the configured value.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Overrides {
    /// `--listen`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// `--data`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<PathBuf>,
    /// `--log-format`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_format: Option<LogFormat>,
    /// `--tls-cert` and `--tls-key`.
    #[serde(skip_serializing_if = "TlsOverrides::is_empty")]
    pub tls: TlsOverrides,
    /// `--plugin-dir`.
    #[serde(skip_serializing_if = "PluginOverrides::is_empty")]
    pub plugins: PluginOverrides,
    /// `--allow-anonymous` and `--client-ca`.
    #[serde(skip_serializing_if = "AuthOverrides::is_empty")]
    pub auth: AuthOverrides,
    /// `--mqtt` and `--mqtt-tls`.
    #[serde(skip_serializing_if = "MqttOverrides::is_empty")]
    pub mqtt: MqttOverrides,
    /// `--http`.
    #[serde(skip_serializing_if = "HttpOverrides::is_empty")]
    pub http: HttpOverrides,
}

/// The HTTP listener given on the command line.
#[derive(Debug, Clone, Default, Serialize)]
pub struct HttpOverrides {
    /// `--http`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<HttpListen>,
}

impl HttpOverrides {
    fn is_empty(&self) -> bool {
        self.listen.is_none()
    }
}

/// MQTT listeners given on the command line.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MqttOverrides {
    /// `--mqtt`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// `--mqtt-tls`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_listen: Option<SocketAddr>,
}

impl MqttOverrides {
    fn is_empty(&self) -> bool {
        self.listen.is_none() && self.tls_listen.is_none()
    }
}

/// Authentication settings given on the command line.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AuthOverrides {
    /// `--allow-anonymous` (only ever turns it on).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allow_anonymous: Option<bool>,
    /// `--client-ca`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_ca: Option<PathBuf>,
}

impl AuthOverrides {
    fn is_empty(&self) -> bool {
        self.allow_anonymous.is_none() && self.client_ca.is_none()
    }
}

/// Plugin settings given on the command line.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PluginOverrides {
    /// `--plugin-dir`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dir: Option<PathBuf>,
}

impl PluginOverrides {
    fn is_empty(&self) -> bool {
        self.dir.is_none()
    }
}

/// TLS files given on the command line.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TlsOverrides {
    /// `--tls-cert`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    /// `--tls-key`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    /// `--tls-name`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
}

impl TlsOverrides {
    fn is_empty(&self) -> bool {
        self.cert.is_none() && self.key.is_none() && self.names.is_empty()
    }
}

/// The largest packet MQTT's remaining-length field can describe.
pub const MAX_MQTT_PACKET: u32 = 268_435_455;

/// Top-level keys, so unrelated `QUIVER_*` variables (`QUIVER_SERVER`, `QUIVER_CA`,
/// used by the client commands) are not mistaken for broker settings.
const KEYS: &[&str] = &[
    "listen",
    "data",
    "log_format",
    "tls",
    "auth",
    "limits",
    "storage",
    "plugins",
    "dedup",
    "retention_interval",
    "shutdown_timeout",
    "links",
    "mqtt",
    "http",
];

impl Config {
    /// Loads the configuration from its layers; `file` must exist when given.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            if !file.exists() {
                return Err(ConfigError::MissingFile(file.to_owned()));
            }
            figment = figment.merge(Toml::file_exact(file));
        }
        let env = Env::prefixed("QUIVER_").split("__").filter(|key| {
            let key = key.as_str().to_ascii_lowercase().replace("__", ".");
            let top = key.split('.').next().unwrap_or_default();
            KEYS.contains(&top)
        });
        let config: Config = figment
            .merge(env)
            .merge(Serialized::defaults(overrides))
            .extract()
            .map_err(Box::new)?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let limits = &self.limits;
        let out_of_range = |what: String| Err(ConfigError::OutOfRange(what));
        if limits.max_record_size.as_u64() == 0 {
            return out_of_range("limits.max_record_size must be at least 1 byte".into());
        }
        if limits.max_frame_size.as_u64() <= limits.max_record_size.as_u64() {
            return out_of_range(format!(
                "limits.max_frame_size ({}) must exceed limits.max_record_size ({}) so a \
                 maximum-size record fits in a frame",
                limits.max_frame_size, limits.max_record_size
            ));
        }
        if limits.max_frame_size.as_u64() > u64::from(u32::MAX) {
            return out_of_range("limits.max_frame_size must be below 4 GiB".into());
        }
        if limits.max_buffered_per_subscription.as_u64() == 0 {
            return out_of_range(
                "limits.max_buffered_per_subscription must be at least 1 byte".into(),
            );
        }
        for (name, value) in [
            ("limits.max_batch_records", limits.max_batch_records),
            (
                "limits.max_inflight_publishes",
                limits.max_inflight_publishes,
            ),
            (
                "limits.max_streams_per_connection",
                limits.max_streams_per_connection,
            ),
            ("limits.max_connections", limits.max_connections),
            (
                "limits.max_subscriptions_per_connection",
                limits.max_subscriptions_per_connection,
            ),
            ("limits.max_topics", limits.max_topics),
            ("limits.max_plugins", limits.max_plugins),
        ] {
            if value == 0 {
                return out_of_range(format!("{name} must be at least 1"));
            }
        }
        if self.tls.cert.is_some() != self.tls.key.is_some() {
            return out_of_range("tls.cert and tls.key must be given together".into());
        }
        let plugins = &self.plugins;
        for (language, memory, timeout) in [
            ("", plugins.memory_limit, plugins.call_timeout),
            (
                "python.",
                plugins.python.memory_limit,
                plugins.python.call_timeout,
            ),
            (
                "javascript.",
                plugins.javascript.memory_limit,
                plugins.javascript.call_timeout,
            ),
        ] {
            if memory.as_u64() < 1 << 20 || memory > plugins.max_memory_limit {
                return out_of_range(format!(
                    "plugins.{language}memory_limit must be at least 1 MiB and at most \
                     plugins.max_memory_limit ({})",
                    plugins.max_memory_limit.display().iec()
                ));
            }
            if timeout.is_zero() || timeout > plugins.max_call_timeout {
                return out_of_range(format!(
                    "plugins.{language}call_timeout must be longer than zero and at most \
                     plugins.max_call_timeout ({})",
                    humantime::format_duration(plugins.max_call_timeout)
                ));
            }
        }
        if plugins.quarantine_for.is_zero() {
            return out_of_range("plugins.quarantine_for must be longer than zero".into());
        }
        if plugins.quarantine_after == 0 || plugins.max_outputs_per_event == 0 {
            return out_of_range(
                "plugins.quarantine_after and plugins.max_outputs_per_event must be at least 1"
                    .into(),
            );
        }
        if self.retention_interval.is_zero() {
            return out_of_range("retention_interval must be longer than zero".into());
        }
        let mqtt = &self.mqtt;
        if !(64..=u64::from(MAX_MQTT_PACKET)).contains(&mqtt.max_packet_size.as_u64()) {
            return out_of_range(format!(
                "mqtt.max_packet_size must be between 64 bytes and {MAX_MQTT_PACKET} (MQTT's \
                 largest packet)"
            ));
        }
        if mqtt.receive_maximum == 0 || mqtt.connect_timeout.is_zero() {
            return out_of_range(
                "mqtt.receive_maximum must be at least 1 and mqtt.connect_timeout longer than \
                 zero"
                    .into(),
            );
        }
        for rule in &mqtt.auto_create {
            match rule.durability.as_deref() {
                None | Some("fsync" | "batched") => {}
                Some(other) => {
                    return out_of_range(format!(
                        "mqtt.auto_create `{}`: durability `{other}` is neither `fsync` nor \
                         `batched`",
                        rule.pattern
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment's Jail returns its own large error type
mod tests {
    use super::*;

    #[test]
    fn the_example_file_is_the_default_configuration() {
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../quiver.example.toml");
        figment::Jail::expect_with(|_| {
            let loaded =
                Config::load(Some(&example), &Overrides::default()).map_err(|e| e.to_string())?;
            assert_eq!(loaded, Config::default());
            Ok(())
        });
    }

    #[test]
    fn links_are_declared_as_tables() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "q.toml",
                "[[links]]\nname = \"up\"\nto = [\"hub:7848\"]\ntopics = \"a.>\"\nmax_rate = 10\n\
                 [links.params]\nk = \"v\"\n\n[[links]]\nname = \"down\"\nto = [\"hub:7848\"]\n\
                 topics = \"c.>\"\ndirection = \"in\"\n",
            )?;
            let config = Config::load(Some(Path::new("q.toml")), &Overrides::default())
                .map_err(|e| e.to_string())?;
            assert_eq!(config.links.len(), 2);
            assert_eq!(config.links[0].max_rate, Some(10));
            assert_eq!(
                config.links[0].params.get("k").map(String::as_str),
                Some("v")
            );
            assert_eq!(config.links[1].direction.as_deref(), Some("in"));
            Ok(())
        });
    }

    #[test]
    fn the_example_links_are_valid_declarations() {
        // The commented `[[links]]` blocks of the example file, uncommented.
        let example = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../quiver.example.toml"),
        )
        .unwrap_or_default();
        let mut links = String::new();
        let mut inside = false;
        for line in example.lines() {
            inside = match line {
                "# [[links]]" => true,
                "#" => false,
                _ if !line.starts_with('#') => false,
                _ => inside,
            };
            if inside && let Some(line) = line.strip_prefix("# ") {
                links.push_str(line);
                links.push('\n');
            }
        }
        figment::Jail::expect_with(|jail| {
            jail.create_file("q.toml", &links)?;
            let config = Config::load(Some(Path::new("q.toml")), &Overrides::default())
                .map_err(|e| e.to_string())?;
            assert_eq!(config.links.len(), 2, "{links}");
            let jetstream = &config.links[1];
            assert_eq!(jetstream.stream.as_deref(), Some("EDGES"));
            assert_eq!(jetstream.subject_prefix, "edge1");
            assert!(jetstream.create_stream);
            assert_eq!(jetstream.replicas, Some(3));
            assert_eq!(jetstream.retention.as_deref(), Some("limits"));
            Ok(())
        });
    }

    #[test]
    fn the_example_auto_create_block_is_valid() {
        let example = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../quiver.example.toml"),
        )
        .unwrap_or_default();
        let block: String = example
            .lines()
            .skip_while(|line| *line != "# [[mqtt.auto_create]]")
            .take_while(|line| line.starts_with("# "))
            .map(|line| format!("{}\n", &line[2..]))
            .collect();
        figment::Jail::expect_with(|jail| {
            jail.create_file("q.toml", &block)?;
            let config = Config::load(Some(Path::new("q.toml")), &Overrides::default())
                .map_err(|e| e.to_string())?;
            let [rule] = config.mqtt.auto_create.as_slice() else {
                return Err(format!("one rule expected in {block}").into());
            };
            assert_eq!(rule.pattern, "sensors.>");
            assert_eq!(rule.max_records, Some(10_000_000));
            assert_eq!(rule.durability.as_deref(), Some("batched"));
            assert_eq!(rule.flush_interval, Some(Duration::from_millis(100)));
            Ok(())
        });
    }

    #[test]
    fn layers_override_in_order() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "q.toml",
                "listen = \"127.0.0.1:1000\"\ndata = \"from-file\"\n[limits]\nmax_record_size = \"2 MiB\"\n",
            )?;
            jail.set_env("QUIVER_DATA", "from-env");
            jail.set_env("QUIVER_LIMITS__MAX_BATCH_RECORDS", "7");
            jail.set_env("QUIVER_SERVER", "ignored by the broker");
            let overrides = Overrides {
                listen: Some("127.0.0.1:0".parse().unwrap()),
                ..Overrides::default()
            };
            let config =
                Config::load(Some(Path::new("q.toml")), &overrides).map_err(|e| e.to_string())?;
            assert_eq!(config.listen.port(), 0);
            assert_eq!(config.data, PathBuf::from("from-env"));
            assert_eq!(config.limits.max_record_size, ByteSize::mib(2));
            assert_eq!(config.limits.max_batch_records, 7);
            Ok(())
        });
    }

    #[test]
    fn bad_values_are_refused_with_their_key() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("q.toml", "[limits]\nmax_recrod_size = 5\n")?;
            let err = Config::load(Some(Path::new("q.toml")), &Overrides::default()).unwrap_err();
            assert!(err.to_string().contains("max_recrod_size"), "{err}");

            jail.create_file("q.toml", "[limits]\nmax_record_size = \"100 MiB\"\n")?;
            let err = Config::load(Some(Path::new("q.toml")), &Overrides::default()).unwrap_err();
            assert!(err.to_string().contains("max_frame_size"), "{err}");

            // A language's default above the maxima, and a partial language table.
            jail.create_file("q.toml", "[plugins.javascript]\nmemory_limit = \"2 GiB\"\n")?;
            let err = Config::load(Some(Path::new("q.toml")), &Overrides::default()).unwrap_err();
            assert!(
                err.to_string().contains("plugins.javascript.memory_limit")
                    && err
                        .to_string()
                        .contains("plugins.max_memory_limit (1.0 GiB)"),
                "{err}"
            );
            jail.create_file("q.toml", "[plugins.python]\ncall_timeout = \"1s\"\n")?;
            let config = Config::load(Some(Path::new("q.toml")), &Overrides::default()).unwrap();
            assert_eq!(config.plugins.python.call_timeout, Duration::from_secs(1));
            assert_eq!(config.plugins.python.memory_limit, ByteSize::mib(64));

            let err =
                Config::load(Some(Path::new("missing.toml")), &Overrides::default()).unwrap_err();
            assert!(matches!(err, ConfigError::MissingFile(_)));
            Ok(())
        });
    }
}
