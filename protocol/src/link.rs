//! Links between brokers: what one broker forwards to another (`Forward`), and how a
//! link is declared and described.
//!
//! A link forwards a source broker's topics to a destination broker, in offset order
//! per topic. Each forwarded batch names its origin (the source broker, topic and
//! topic id) and the run of origin offsets it covers, `from .. next`. The destination
//! keeps a *mark* per destination topic and origin: the origin offset it expects next,
//! written in the same commit as the records. Records below the mark are dropped as
//! repeats, so a batch sent again after any crash is stored once, however long after.

use serde::{Deserialize, Serialize};

use crate::message::{Delivered, Receipt, Stage, StartAt};

/// Where forwarded records come from: a topic of another broker.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Origin {
    /// The source broker's id (random, made with its data dir).
    pub broker: u128,
    /// The source topic's name.
    pub topic: String,
    /// The source topic's id: a topic deleted and created again under the same name
    /// is another origin, with offsets of its own.
    pub topic_id: u64,
}

/// Records forwarded over a link: origin offsets `from .. next` of one origin topic,
/// for one destination topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Forward {
    /// The destination topic.
    pub topic: String,
    /// Where the records come from.
    pub origin: Origin,
    /// The origin offset this batch continues from: the destination's mark, if it
    /// has one for this origin, must be here (or past it, for a batch sent again).
    pub from: u64,
    /// The origin offset after this batch: the destination's mark once it is stored.
    pub next: u64,
    /// The records, each in `from .. next`.
    pub records: ForwardedRecords,
}

/// The records of a [`Forward`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ForwardedRecords {
    /// Records in origin offset order, with their origin offset and original
    /// timestamp; offsets without a record (filtered by the source's link plugins, or
    /// not forwarded to avoid a loop) are absent.
    Listed(Vec<Delivered>),
    /// Consecutive records as the source stored them (the batch format of
    /// [`crate::record`], timestamps included), the first at origin offset
    /// `base_offset`: sent without decoding and encoding each record again.
    Batch {
        /// The origin offset of the batch's first record.
        base_offset: u64,
        /// The records.
        batch: bytes::Bytes,
    },
}

impl ForwardedRecords {
    /// No records.
    pub fn none() -> Self {
        Self::Listed(Vec::new())
    }

    /// Whether there are no records.
    pub fn is_empty(&self) -> bool {
        match self {
            Self::Listed(records) => records.is_empty(),
            Self::Batch { batch, .. } => batch.is_empty(),
        }
    }
}

/// The answer to a [`Forward`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Forwarded {
    /// The destination broker's id.
    pub broker: u128,
    /// The destination's mark for the origin after this batch: the origin offset it
    /// expects next; `None` if it has none (a probe of an origin never forwarded).
    pub next: Option<u64>,
    /// Where the stored records went; `None` if nothing was stored (a probe, or a
    /// batch stored before).
    pub receipt: Option<Receipt>,
}

/// Which way a link carries records.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum LinkDirection {
    /// Local topics are forwarded to the remote broker.
    #[default]
    Out,
    /// The remote broker's topics are pulled into local ones.
    In,
}

impl std::fmt::Display for LinkDirection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Out => "out",
            Self::In => "in",
        })
    }
}

/// How a link proves who it is to the remote broker.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum LinkAuth {
    /// No credentials.
    #[default]
    Anonymous,
    /// A token (`quiver auth token create` on the remote).
    Token(String),
    /// A client certificate and its private key, PEM.
    Certificate {
        /// The certificate chain.
        cert: String,
        /// The private key.
        key: String,
    },
    /// A NATS user name and password (JetStream remotes only).
    UserPassword {
        /// The user.
        user: String,
        /// The password.
        password: String,
    },
    /// A NATS credentials file's contents: a user JWT and its NKey seed (JetStream
    /// remotes only).
    Credentials(String),
}

/// A link whose remote is a NATS JetStream stream instead of a Quiver broker
/// (docs/scaling.md): records go to, or come from, subjects `subject_prefix.<topic>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JetStreamRemote {
    /// The stream the link publishes to (`out`) or consumes from (`in`).
    pub stream: String,
    /// Put, with a dot, before each topic's name to make its subject; empty: the
    /// subject is the topic's name.
    pub subject_prefix: String,
    /// Create the stream if it is missing, so; `None`: it must exist.
    pub create: Option<StreamSetup>,
}

impl JetStreamRemote {
    /// The subject of a topic.
    pub fn subject(&self, topic: &str) -> String {
        match self.subject_prefix.as_str() {
            "" => topic.to_owned(),
            prefix => format!("{prefix}.{topic}"),
        }
    }

    /// The topic of a subject, if the subject is under the prefix.
    pub fn topic<'a>(&self, subject: &'a str) -> Option<&'a str> {
        match self.subject_prefix.as_str() {
            "" => Some(subject),
            prefix => subject.strip_prefix(prefix)?.strip_prefix('.'),
        }
    }
}

/// How a link creates a missing JetStream stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamSetup {
    /// Copies of each message (1, 3 or 5 in a cluster).
    pub replicas: u8,
    /// Where the servers keep it.
    pub storage: StreamStorage,
    /// When messages leave it.
    pub retention: StreamRetention,
}

impl Default for StreamSetup {
    fn default() -> Self {
        Self {
            replicas: 1,
            storage: StreamStorage::File,
            retention: StreamRetention::Limits,
        }
    }
}

/// Where a JetStream stream is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StreamStorage {
    /// On disk.
    File,
    /// In memory.
    Memory,
}

/// When messages leave a JetStream stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StreamRetention {
    /// At the stream's limits (age, count, size).
    Limits,
    /// Once every consumer has acknowledged them.
    Interest,
    /// Once one consumer has acknowledged them.
    WorkQueue,
}

/// What a link is: declared with `quiver link create` or in the config file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkSpec {
    /// The link's name, unique on this broker (the topic-name grammar).
    pub name: String,
    /// The remote broker's addresses (`HOST:PORT`), tried in turn.
    pub to: Vec<String>,
    /// Which way records go.
    pub direction: LinkDirection,
    /// The source topics: a topic name or pattern, on this broker for `Out`, on the
    /// remote for `In`.
    pub topics: String,
    /// Put before each source topic's name to name its destination topic.
    pub prefix: String,
    /// Where forwarding starts in a source topic the link has not forwarded before.
    pub from: StartAt,
    /// The most records per second the link forwards (`None`: no limit).
    pub max_rate: Option<u32>,
    /// The certificate (PEM) that the remote's certificate must chain to; `None`:
    /// the system's trust roots.
    pub ca: Option<String>,
    /// The credentials the link presents.
    pub auth: LinkAuth,
    /// Plugin stages an `Out` link runs on records before forwarding them.
    pub pipeline: Vec<Stage>,
    /// The remote is a JetStream stream (`to` holds `nats://` URLs), not a Quiver
    /// broker.
    pub jetstream: Option<JetStreamRemote>,
}

/// What a link is doing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LinkState {
    /// Connecting for the first time.
    Starting,
    /// Connected; forwarding or waiting for records.
    Connected {
        /// The remote address in use.
        addr: String,
    },
    /// Waiting to try again after a failure.
    BackingOff {
        /// What failed.
        error: String,
        /// How long until the next attempt, in milliseconds.
        retry_ms: u64,
    },
    /// Paused by an operator.
    Paused,
}

/// A link's progress in one source topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkTopic {
    /// The source topic.
    pub topic: String,
    /// The next source offset to forward: everything below it is stored at the
    /// destination (or was skipped).
    pub next: u64,
    /// Records in the source topic not yet forwarded.
    pub lag: u64,
    /// Bytes those records take (at the source).
    pub lag_bytes: u64,
    /// When the oldest of them was appended (ms since the Unix epoch).
    pub oldest_ms: Option<u64>,
    /// Records forwarded since the broker started.
    pub forwarded: u64,
    /// Records the source's retention removed before they were forwarded.
    pub skipped: u64,
    /// Records not forwarded because they came from the destination (or passed
    /// through as many brokers as the hop limit allows).
    pub looped: u64,
    /// Records the destination cannot take (larger than a JetStream server's max
    /// payload, say), put in the source topic's dead-letter topic instead.
    pub dead_lettered: u64,
    /// Records forwarded per second, over the last few seconds.
    pub rate: u64,
}

/// Records skipped in a source topic: retention removed them before they were
/// forwarded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skip {
    /// The source topic.
    pub topic: String,
    /// The first offset skipped.
    pub from: u64,
    /// The offset after the last one skipped.
    pub to: u64,
    /// When the link noticed (ms since the Unix epoch).
    pub at_ms: u64,
}

/// A link's description: its spec (credentials redacted), its state, and its progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkInfo {
    /// What the link is; a token or key reads `(redacted)`.
    pub spec: LinkSpec,
    /// What it is doing.
    pub state: LinkState,
    /// The remote broker's id, once it has been reached.
    pub remote: Option<u128>,
    /// Attempts that ended in an error (the remote down, a refusal, a lost
    /// connection) since the broker started.
    pub failures: u64,
    /// Progress per source topic, sorted by name.
    pub topics: Vec<LinkTopic>,
    /// The latest skips, oldest first (at most [`LinkInfo::MAX_SKIPS`]).
    pub skips: Vec<Skip>,
}

impl LinkInfo {
    /// The most skips a description lists.
    pub const MAX_SKIPS: usize = 16;
}

/// A broker id as text: 32 hex digits.
pub fn broker_id_hex(id: u128) -> String {
    format!("{id:032x}")
}
