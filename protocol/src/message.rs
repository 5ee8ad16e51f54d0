//! Every message of the protocol, by direction.
//!
//! Which stream carries what (docs/protocol.md has the full picture):
//! - the **control stream**, the first bidirectional stream a client opens: `Hello`
//!   both ways, then pipelined [`Request`]s answered by [`Reply`]s with the same id,
//!   in any order;
//! - a **subscription stream**, one bidirectional stream per subscription: the client
//!   sends [`Subscribe`] and then [`ClientFrame::Credit`]; the server answers
//!   [`ServerFrame::Subscribed`] (or an error) and then pushes [`Records`]; a client
//!   that resumes subscriptions sends [`SubscribeAt`] instead and is told each topic's
//!   position ([`ServerFrame::Positions`]).
//!
//! Why one file of ~700 lines: the wire format is the order of these types' fields and
//! variants (postcard encodes by position), so they are read, changed and checked
//! against docs/protocol.md's tables together. Most of the length is their docs.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::error::WireError;
use crate::link::{Forward, Forwarded, LinkInfo, LinkSpec};
use crate::record::NewRecord;

/// Everything a client sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientFrame {
    /// The first frame of the control stream.
    Hello(ClientHello),
    /// A request on the control stream.
    Request(Request),
    /// The first frame of a subscription stream.
    Subscribe(Subscribe),
    /// More delivery credit on a subscription stream, in records.
    Credit(u32),
    /// The first frame of a group member stream: join a durable group.
    Join(Join),
    /// Settles delivered records on a group member stream.
    Settle(Vec<Settlement>),
    /// The first frame of a subscription stream that can be resumed: a [`Subscribe`]
    /// with where to resume in the topics read before.
    SubscribeAt(SubscribeAt),
    /// Settles delivered records on a group member stream, compactly: per topic,
    /// acknowledgements as runs of offsets.
    SettleRuns(Vec<TopicSettlements>),
}

impl ClientFrame {
    /// What kind of frame this is, for error messages ("Subscribe is not valid on the
    /// control stream").
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Hello(_) => "Hello",
            Self::Request(_) => "a request",
            Self::Subscribe(_) => "Subscribe",
            Self::Credit(_) => "Credit",
            Self::Join(_) => "Join",
            Self::Settle(_) => "Settle",
            Self::SubscribeAt(_) => "SubscribeAt",
            Self::SettleRuns(_) => "SettleRuns",
        }
    }
}

/// Everything a server sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServerFrame {
    /// The answer to a successful [`ClientHello`].
    Hello(ServerHello),
    /// The answer to a [`Request`].
    Reply(Reply),
    /// The subscription is set up; records follow as credit allows.
    Subscribed,
    /// Records for a subscription.
    Records(Records),
    /// An error not tied to a request: a failed handshake, a frame that could not be
    /// decoded, or the end of a subscription. The stream may stay open (see the code).
    Error(WireError),
    /// Records for a subscription with plugins: each with its own offset, since a
    /// plugin may drop records or replace one with several.
    Processed(Processed),
    /// The member has joined its group; assignments follow as prefetch allows.
    Joined,
    /// Records assigned to a group member, to settle.
    Assigned(Assigned),
    /// Where a subscription started by [`SubscribeAt`] reads: every matching topic as
    /// the answer to it, then each topic that starts matching later, before its
    /// records.
    Positions(Vec<Position>),
}

/// The client's side of the version handshake.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientHello {
    /// The protocol version the client speaks.
    pub version: u16,
    /// A free-form name for logs (`quiver-cli/0.1.0`).
    pub client: String,
    /// A token proving the client's principal (`quiver auth token create`), if it
    /// authenticates by token rather than by its TLS certificate or not at all.
    pub token: Option<String>,
}

/// The server's side of the version handshake.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerHello {
    /// The protocol version the server speaks (equal to the client's).
    pub version: u16,
    /// A free-form name for logs (`quiver/0.1.0`).
    pub server: String,
    /// Limits the client must respect.
    pub limits: Limits,
    /// The principal the broker took the client for; `None` when it is anonymous.
    pub principal: Option<String>,
}

/// Limits a server enforces, announced in its hello so clients can check locally.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// The longest frame body the server accepts, in bytes.
    pub max_frame_len: u64,
    /// The largest record (payload + key + headers), in bytes.
    pub max_record_size: u64,
    /// The most records in one publish.
    pub max_batch_records: u32,
}

/// A request on the control stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// Chosen by the client, echoed in the reply.
    pub id: u64,
    /// What to do.
    pub op: Op,
}

/// A request's operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Create a topic.
    CreateTopic {
        /// The topic's name.
        name: String,
        /// Its settings.
        config: TopicConfig,
    },
    /// Delete a topic and its records.
    DeleteTopic {
        /// The topic's name.
        name: String,
    },
    /// Describe one topic.
    DescribeTopic {
        /// The topic's name.
        name: String,
    },
    /// List all topics.
    ListTopics,
    /// Append records to a topic; acknowledged once they are durable.
    Publish {
        /// The topic's name.
        topic: String,
        /// The records, appended in order with consecutive offsets.
        records: Vec<NewRecord>,
        /// Makes a retry of this publish safe: within the dedup window, a publish with
        /// an id seen before is answered with the first one's receipt, not appended.
        id: Option<PublishId>,
    },
    /// Store a new plugin: validate, compile, keep with its sha256.
    DeployPlugin {
        /// The plugin's name.
        name: String,
        /// A version label (default: the next number).
        version: Option<String>,
        /// The WebAssembly component.
        wasm: Bytes,
    },
    /// Replace a deployed plugin's code everywhere it is attached, atomically.
    UpgradePlugin {
        /// The plugin's name.
        name: String,
        /// A version label (default: the next number).
        version: Option<String>,
        /// The new WebAssembly component.
        wasm: Bytes,
    },
    /// Remove a plugin that is attached nowhere, with its state.
    RemovePlugin {
        /// The plugin's name.
        name: String,
    },
    /// List deployed plugins.
    ListPlugins,
    /// A plugin's attachments and their figures.
    PluginStatus {
        /// The plugin's name.
        name: String,
    },
    /// Add a stage at the end of a topic's ingress pipeline.
    AttachPlugin {
        /// The topic.
        topic: String,
        /// The plugin and how to run it.
        stage: Stage,
    },
    /// Remove a plugin's stage from a topic's ingress pipeline.
    DetachPlugin {
        /// The topic.
        topic: String,
        /// The plugin's name.
        plugin: String,
    },
    /// Create a durable consumer group.
    CreateGroup {
        /// The group's name.
        name: String,
        /// Its settings.
        settings: GroupSettings,
    },
    /// Delete a group and its cursor.
    DeleteGroup {
        /// The group's name.
        name: String,
    },
    /// Describe one group.
    DescribeGroup {
        /// The group's name.
        name: String,
    },
    /// List all groups.
    ListGroups,
    /// Move a group's cursor (replay or skip); its pending records are forgotten.
    ResetGroup {
        /// The group's name.
        name: String,
        /// Where to move the cursor in each of its topics.
        to: StartAt,
    },
    /// Publish a record and wait for a reply to it.
    Request {
        /// The topic to publish to.
        topic: String,
        /// The request.
        record: NewRecord,
        /// How long to wait for a reply, in milliseconds.
        timeout_ms: u64,
    },
    /// Answer a request (its `quiver-reply-to` header names it).
    Reply {
        /// The request's reply-to token.
        to: String,
        /// The answer.
        record: NewRecord,
    },
    /// Several publishes of one record each, sharing a frame: record `i` is a publish
    /// of its own, with id `first_id` whose sequence is advanced by `i`. Each is
    /// validated, deduplicated and answered on its own (`PublishedEach`); they are
    /// stored in order. Clients send this for single-record publishes queued together.
    PublishEach {
        /// The topic's name.
        topic: String,
        /// One record per publish.
        records: Vec<NewRecord>,
        /// The first publish's id; the next ones count its sequence up.
        first_id: PublishId,
    },
    /// Store records forwarded over a link, each origin offset once (see
    /// [`crate::link`]); an empty batch with `from == next` asks for the mark.
    Forward(Forward),
    /// Declare a link to another broker; it starts at once.
    CreateLink(Box<LinkSpec>),
    /// Stop a link and forget it, with its cursors.
    DeleteLink {
        /// The link's name.
        name: String,
    },
    /// Describe one link.
    DescribeLink {
        /// The link's name.
        name: String,
    },
    /// List all links.
    ListLinks,
    /// Stop a link forwarding until it is resumed (across restarts too).
    PauseLink {
        /// The link's name.
        name: String,
    },
    /// Let a paused link forward again.
    ResumeLink {
        /// The link's name.
        name: String,
    },
    /// Who the broker is: its id and version.
    DescribeBroker,
    /// A [`Op::PublishEach`] across topics: one publish per record, the records in
    /// runs, each run to one topic. Record `i` of the whole request (counting through
    /// the runs in order) has id `first_id` whose sequence is advanced by `i`. Each is
    /// checked, deduplicated and answered on its own (`PublishedEach`, in that order);
    /// a topic that does not exist or may not be published to refuses its own
    /// publishes, not the others. Clients send this for single-record publishes to
    /// different topics queued together (protocol version 3).
    PublishAcross {
        /// The runs, in order.
        runs: Vec<TopicRun>,
        /// The first publish's id; the next ones count its sequence up.
        first_id: PublishId,
    },
    /// Change a live topic's retention or durability (protocol version 3); what is
    /// `None` stays as it is.
    AlterTopic {
        /// The topic's name.
        name: String,
        /// Its new retention limits, all three.
        retention: Option<Retention>,
        /// When its publishes are acknowledged from now on.
        durability: Option<Durability>,
    },
    /// Remove a topic's records before an offset or a time, or all of them (protocol
    /// version 3). Offsets are never reused: the topic goes on from where it was.
    PurgeTopic {
        /// The topic's name.
        name: String,
        /// Which records go.
        before: PurgeBefore,
    },
    /// How the broker runs: version, uptime, data dir, sizes, listeners (protocol
    /// version 3).
    DescribeServer,
    /// End a plugin's quarantine on every attachment now, once its cause is fixed
    /// (protocol version 3): the next call runs.
    LiftQuarantine {
        /// The plugin's name.
        name: String,
    },
    /// Add a stage at the end of a topic's ingress pipeline, with its own sandbox
    /// (protocol version 4): [`Op::AttachPlugin`] with limits.
    AttachSized {
        /// The topic.
        topic: String,
        /// The plugin and how to run it.
        stage: Stage,
        /// Its memory cap and call deadline, within the broker's maxima.
        limits: StageLimits,
    },
    /// The sandbox of each of a plugin's attachments (protocol version 4).
    PluginSandboxes {
        /// The plugin's name.
        name: String,
    },
    /// A [`Op::Publish`] whose records pass the topic's ingress pipeline with one of
    /// its plugins at another of its versions (protocol version 4): re-driving dead
    /// letters through a fixed (or an earlier) version. Takes the admin right on the
    /// topic besides the publish right: it chooses the code that filters the topic.
    PublishThrough {
        /// The topic's name.
        topic: String,
        /// The records, as for [`Op::Publish`].
        records: Vec<NewRecord>,
        /// As for [`Op::Publish`].
        id: Option<PublishId>,
        /// The plugin of the topic's pipeline to run at `version`.
        plugin: String,
        /// One of its deployed versions.
        version: String,
    },
    /// Run new code of a plugin beside the live version, on the same batches, its
    /// outcomes compared and discarded (protocol version 4): a shadow rollout.
    ShadowPlugin {
        /// The plugin's name.
        name: String,
        /// A version label for the new code (default: the next number).
        version: Option<String>,
        /// The new WebAssembly component.
        wasm: Bytes,
    },
    /// How a plugin's rollout (shadow or canary) has gone against the live version
    /// (protocol version 4).
    DiffPlugin {
        /// The plugin's name.
        name: String,
    },
    /// Make the rollout's code the live version everywhere the plugin runs, atomically
    /// (protocol version 4).
    PromotePlugin {
        /// The plugin's name.
        name: String,
    },
    /// End the plugin's rollout; the live version goes on (protocol version 4).
    RollbackPlugin {
        /// The plugin's name.
        name: String,
    },
    /// Give new code of a plugin a share of the records, chosen by key, wherever it
    /// runs (protocol version 4): a canary rollout.
    CanaryPlugin {
        /// The plugin's name.
        name: String,
        /// A version label for the new code (default: the next number).
        version: Option<String>,
        /// The new WebAssembly component.
        wasm: Bytes,
        /// The share of records, 1 to 99.
        percent: u8,
    },
}

impl Op {
    /// Whether this stores records in a topic (`Publish`, `PublishEach`,
    /// `PublishAcross`, `Forward`): the broker keeps a connection's publishes in order.
    pub fn is_publish(&self) -> bool {
        matches!(
            self,
            Self::Publish { .. }
                | Self::PublishEach { .. }
                | Self::PublishAcross { .. }
                | Self::PublishThrough { .. }
                | Self::Forward(_)
        )
    }
}

/// Which records a [`Op::PurgeTopic`] removes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PurgeBefore {
    /// Every record the topic holds.
    All,
    /// Those with a lower offset.
    Offset(u64),
    /// Those stored before this time (ms since the Unix epoch).
    Time(u64),
}

/// Consecutive one-record publishes to one topic, within a [`Op::PublishAcross`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicRun {
    /// The topic's name.
    pub topic: String,
    /// One record per publish.
    pub records: Vec<NewRecord>,
}

/// A reply to a [`Request`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    /// The request's id.
    pub id: u64,
    /// What happened.
    pub result: Result<OpReply, WireError>,
}

/// What a successful request returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OpReply {
    /// The topic created or described.
    Topic(TopicInfo),
    /// All topics, sorted by name.
    Topics(Vec<TopicInfo>),
    /// The topic or plugin was deleted or removed.
    Deleted,
    /// Where the records of a publish went, once all of it is durable.
    Published(Receipt),
    /// The plugin deployed, upgraded or described.
    Plugin(PluginInfo),
    /// All deployed plugins, sorted by name.
    Plugins(Vec<PluginInfo>),
    /// A plugin's attachments and their figures.
    PluginStatus(PluginStatus),
    /// The group created, described or reset.
    Group(GroupInfo),
    /// All groups, sorted by name.
    Groups(Vec<GroupInfo>),
    /// The reply to a request.
    Response(NewRecord),
    /// The reply was handed to its requester.
    Replied,
    /// The outcome of each publish of a `PublishEach`, in order: where its record went
    /// once durable, or why it was refused.
    PublishedEach(Vec<Result<Receipt, WireError>>),
    /// What the destination made of a `Forward`.
    Forwarded(Forwarded),
    /// The link created, described, paused or resumed.
    Link(Box<LinkInfo>),
    /// All links, sorted by name.
    Links(Vec<LinkInfo>),
    /// Who the broker is.
    Broker(BrokerInfo),
    /// How the broker runs.
    Server(Box<ServerStatus>),
    /// The sandbox of each of a plugin's attachments, in the order of its status.
    Sandboxes(Vec<SandboxInfo>),
    /// How a plugin's rollout has gone against the live version.
    Diff(Box<PluginDiff>),
}

/// How a broker runs, for operators (`quiver info`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerStatus {
    /// Who it is.
    pub broker: BrokerInfo,
    /// When this process started serving (ms since the Unix epoch).
    pub started_ms: u64,
    /// Its data dir, as it was given.
    pub data_dir: String,
    /// What its storage files take on disk.
    pub disk_bytes: u64,
    /// Topics, groups, plugins and links it holds.
    pub topics: u64,
    /// Durable groups.
    pub groups: u64,
    /// Deployed plugins.
    pub plugins: u64,
    /// Links.
    pub links: u64,
    /// Open QUIC connections.
    pub connections: u64,
    /// Where it listens: `quic`, `mqtt`, `mqtt-tls`, `http` or `https`, and the address.
    pub listeners: Vec<(String, String)>,
}

/// Who a broker is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerInfo {
    /// Its id: random, made with its data dir, kept for its life.
    pub id: u128,
    /// Its version (`quiver/0.1.0`).
    pub version: String,
}

/// Where a publish's records went. Without plugins on the topic, all of them are in
/// the topic at `base_offset .. base_offset + count`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// The first record stored in the topic published to.
    pub base_offset: u64,
    /// Records stored in that topic (after its ingress plugins).
    pub count: u32,
    /// Records an ingress plugin routed to other topics.
    pub routed: Vec<Placement>,
    /// Records a plugin failed on or rejected, stored in the dead-letter topic.
    pub dead_letter: Option<Placement>,
    /// Records a plugin dropped.
    pub dropped: u32,
}

impl Receipt {
    /// The offsets of the records stored in the topic published to.
    pub fn offsets(&self) -> std::ops::Range<u64> {
        self.base_offset..self.base_offset + u64::from(self.count)
    }
}

/// Identifies a publish so that retrying it is safe: a producer (random per client
/// unless chosen) and a sequence number never reused by that producer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PublishId {
    /// The producer.
    pub producer: u64,
    /// The publish's number within the producer.
    pub sequence: u64,
}

/// Consecutive records stored in one topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    /// The topic.
    pub topic: String,
    /// The first record's offset.
    pub base_offset: u64,
    /// How many records.
    pub count: u32,
}

/// A plugin stage: which plugin, with which parameters, failing how.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stage {
    /// The plugin's name (the stage follows its upgrades).
    pub plugin: String,
    /// Parameters the plugin reads with `param`.
    pub params: Vec<(String, String)>,
    /// What happens while the plugin is quarantined.
    pub on_error: OnError,
    /// The principal that attached the stage to a topic, set by the broker (whatever a
    /// request carries here is replaced): the stage may route only to topics this
    /// principal may publish to. `None`: attached without authentication.
    pub attached_by: Option<String>,
}

impl Stage {
    /// A stage running `plugin` with no parameters, failing closed.
    pub fn new(plugin: impl Into<String>) -> Self {
        Self {
            plugin: plugin.into(),
            params: Vec::new(),
            on_error: OnError::default(),
            attached_by: None,
        }
    }

    /// Adds a parameter.
    pub fn param(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.params.push((name.into(), value.into()));
        self
    }

    /// Sets the failure policy.
    pub fn on_error(mut self, on_error: OnError) -> Self {
        self.on_error = on_error;
        self
    }
}

/// A stage's own sandbox (protocol version 4): what is not set takes the broker's
/// default for the plugin's language (`[plugins]` settings, docs/plugins.md).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageLimits {
    /// Linear memory one instance may use, in bytes.
    pub memory: Option<u64>,
    /// Time one call (one batch) may take, in milliseconds.
    pub call_timeout_ms: Option<u64>,
}

impl StageLimits {
    /// True when nothing is set.
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// The sandbox one attachment runs in, for `plugin status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxInfo {
    /// Where it runs: `topic NAME` or `subscription PATTERN`.
    pub target: String,
    /// The language the running version was built from (`rust`, `python`,
    /// `javascript`, or `other`), which picks the defaults.
    pub language: String,
    /// What the attachment asked for.
    pub limits: StageLimits,
    /// The memory cap in force, in bytes.
    pub memory_limit: u64,
    /// The call deadline in force, in milliseconds.
    pub call_timeout_ms: u64,
    /// The most linear memory an instance of it has reached, in bytes (0 before the
    /// first call).
    pub memory_peak: u64,
}

/// How a plugin's rollout has gone since it began: new code (the candidate) run
/// beside the live version on the same batches (a shadow), or given a share of the
/// records (a canary).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginDiff {
    /// The plugin.
    pub name: String,
    /// The live version.
    pub live: String,
    /// The candidate's version.
    pub candidate: String,
    /// A canary's share of the records, in percent; `None` for a shadow.
    pub canary_percent: Option<u8>,
    /// When the rollout began (ms since the Unix epoch).
    pub started_ms: u64,
    /// Batches the candidate ran (a shadow: beside the live version).
    pub batches: u64,
    /// Records the candidate decided on.
    pub records: u64,
    /// A shadow's records it decided otherwise than the live version (a canary: 0).
    pub differing: u64,
    /// Those records by the live outcome's kind and the candidate's (`keep`, `drop`,
    /// `replace`, `route`, `reject`), most first.
    pub kinds: Vec<(String, String, u64)>,
    /// A few of those records, the first seen.
    pub samples: Vec<DiffSample>,
    /// Time the live version's calls took, in µs, over the same batches.
    pub live_micros: u64,
    /// Time the candidate's calls took, in µs.
    pub candidate_micros: u64,
    /// Batches the candidate failed (a trap, its deadline or memory cap, bad output,
    /// an error it returned).
    pub candidate_errors: u64,
    /// The candidate's last failure.
    pub last_error: Option<String>,
}

/// One record the live version and a shadow decided differently.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiffSample {
    /// Where: `topic NAME` or `subscription PATTERN`.
    pub target: String,
    /// The record's offset (on ingress: its position in the publish).
    pub offset: u64,
    /// The record's key, if any.
    pub key: Option<Bytes>,
    /// Its payload, cut to 256 bytes.
    pub payload: Bytes,
    /// What the live version decided, in words.
    pub live: String,
    /// What the shadow decided, in words.
    pub candidate: String,
}

/// What a stage does while its plugin is quarantined for failing repeatedly.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum OnError {
    /// Records pass the stage unchanged.
    FailOpen,
    /// Publishes are refused (`PluginQuarantined`); subscriptions end.
    #[default]
    FailClosed,
}

/// A deployed plugin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginInfo {
    /// Its name.
    pub name: String,
    /// The version running.
    pub version: String,
    /// The sha256 of that version's component, hex.
    pub sha256: String,
    /// The component's size in bytes.
    pub size: u64,
    /// When that version was deployed (ms since the Unix epoch).
    pub deployed_ms: u64,
    /// Every version deployed, oldest first.
    pub versions: Vec<String>,
    /// True when the running code was loaded from the compiled-artifact cache.
    pub cached: bool,
    /// Topics whose ingress pipeline uses it.
    pub topics: Vec<String>,
}

/// A plugin with the figures of each place it runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginStatus {
    /// The plugin.
    pub info: PluginInfo,
    /// Each attachment: topic ingress stages and live subscription stages.
    pub attachments: Vec<AttachmentStatus>,
}

/// One attachment's figures since the broker started (or the attachment was made).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachmentStatus {
    /// Where it runs: `topic NAME` or `subscription PATTERN`.
    pub target: String,
    /// The version that ran last.
    pub version: String,
    /// Its failure policy.
    pub on_error: OnError,
    /// Calls made (one per batch).
    pub calls: u64,
    /// Records passed in.
    pub records_in: u64,
    /// Records that came out (kept, replacements, routed).
    pub records_out: u64,
    /// Failed calls.
    pub errors: u64,
    /// Median time per call, in microseconds.
    pub p50_us: u64,
    /// 99th percentile time per call, in microseconds.
    pub p99_us: u64,
    /// While quarantined: until when (ms since the Unix epoch).
    pub quarantined_until_ms: Option<u64>,
    /// The last failure, if any.
    pub last_error: Option<String>,
}

/// A topic's retention limits; the oldest records go first when any is exceeded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retention {
    /// Remove records older than this many milliseconds.
    pub max_age_ms: Option<u64>,
    /// Keep the topic's records under this many bytes.
    pub max_bytes: Option<u64>,
    /// Keep at most this many records.
    pub max_records: Option<u64>,
}

impl Retention {
    /// True when no limit is set: records are kept until the topic is deleted.
    pub fn is_unlimited(&self) -> bool {
        *self == Self::default()
    }
}

/// When a publish to a topic is acknowledged: what an acknowledged record survives.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Durability {
    /// After the records are flushed to disk (fsync); concurrent publishes share one
    /// flush. Acknowledged records survive a crash of the broker or of the machine.
    #[default]
    Fsync,
    /// As soon as the records are written into the broker's log buffer; the buffer is
    /// flushed at most `interval_ms` later. Records acknowledged in the last interval
    /// before a crash of the broker or the machine may be lost.
    Batched {
        /// The longest an acknowledged record waits for its flush, in milliseconds.
        interval_ms: u32,
    },
}

impl Durability {
    /// The flush interval of [`Durability::Batched`] when none is given.
    pub const DEFAULT_INTERVAL_MS: u32 = 100;
    /// The longest flush interval a topic may have.
    pub const MAX_INTERVAL_MS: u32 = 60_000;
}

impl std::fmt::Display for Durability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Fsync => f.write_str("fsync"),
            Self::Batched { interval_ms } => write!(f, "batched (flush every {interval_ms} ms)"),
        }
    }
}

/// A topic's settings at creation; a [`Retention`] converts into one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicConfig {
    /// Retention limits.
    pub retention: Retention,
    /// Where records go that the topic's plugins fail on or reject. Default:
    /// `dlq.<topic>`, created when first needed.
    pub dead_letter: Option<String>,
    /// When publishes are acknowledged (default: after fsync).
    pub durability: Durability,
}

impl From<Retention> for TopicConfig {
    fn from(retention: Retention) -> Self {
        Self {
            retention,
            ..Self::default()
        }
    }
}

/// A topic's description.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicInfo {
    /// The topic's name.
    pub name: String,
    /// Its retention limits.
    pub retention: Retention,
    /// When its publishes are acknowledged.
    pub durability: Durability,
    /// When it was created (ms since the Unix epoch).
    pub created_ms: u64,
    /// Records currently held.
    pub records: u64,
    /// Bytes those records take in storage.
    pub bytes: u64,
    /// The oldest record's offset (equal to `next_offset` when empty).
    pub first_offset: u64,
    /// The offset the next record will get.
    pub next_offset: u64,
    /// Where records go that its plugins fail on.
    pub dead_letter: String,
    /// Its ingress pipeline, in order.
    pub pipeline: Vec<Stage>,
}

impl TopicInfo {
    /// The newest record's offset, if the topic holds any.
    pub fn last_offset(&self) -> Option<u64> {
        (self.records > 0).then(|| self.next_offset - 1)
    }
}

/// The first frame of a subscription stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscribe {
    /// A topic name or pattern.
    pub pattern: String,
    /// Where to start in each matching topic that exists now (topics created later are
    /// read from their beginning).
    pub from: StartAt,
    /// Initial credit, in records.
    pub credit: u32,
    /// Plugin stages run on delivery, for this subscriber only.
    pub pipeline: Vec<Stage>,
}

/// The first frame of a subscription stream that can be resumed after a lost
/// connection: the broker answers with [`ServerFrame::Positions`] instead of
/// [`ServerFrame::Subscribed`], and announces each topic that starts matching later.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscribeAt {
    /// The subscription; its `from` applies to matching topics not in `positions`.
    pub subscribe: Subscribe,
    /// Where to resume in topics read before.
    pub positions: Vec<Position>,
}

/// Where a subscription reads in one topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// The topic.
    pub topic: String,
    /// The topic's id, unique for the life of the broker's data: a topic deleted and
    /// created again under the same name has another, and a position in the old one
    /// does not apply to it.
    pub topic_id: u64,
    /// The next offset to read.
    pub next: u64,
}

/// Where a subscription starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StartAt {
    /// The oldest record still held.
    Earliest,
    /// Only records appended after the subscription starts.
    Latest,
    /// This offset (or the oldest held, if it is gone).
    Offset(u64),
    /// The first record at or after this time (ms since the Unix epoch).
    Timestamp(u64),
}

/// Records pushed on a subscription stream: a slice of one topic's log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Records {
    /// The topic the records belong to.
    pub topic: String,
    /// The offset of the first record in `batch`.
    pub base_offset: u64,
    /// Consecutive records in the batch format of [`crate::record`].
    pub batch: Bytes,
}

/// Records for a subscription after its plugins ran.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Processed {
    /// The topic the records came from.
    pub topic: String,
    /// The records, in offset order; a replaced record's outputs share its offset.
    pub records: Vec<Delivered>,
}

/// One record delivered through subscription plugins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivered {
    /// The offset of the stored record it came from.
    pub offset: u64,
    /// When that record was appended (ms since the Unix epoch).
    pub timestamp: u64,
    /// The record as the plugins left it.
    pub record: NewRecord,
}

impl From<crate::record::Record> for Delivered {
    /// A stored record as delivered (or forwarded) unchanged.
    fn from(r: crate::record::Record) -> Self {
        Self {
            offset: r.offset,
            timestamp: r.timestamp,
            record: NewRecord {
                key: r.key,
                headers: r.headers,
                payload: r.payload,
            },
        }
    }
}

/// A durable consumer group's settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupSettings {
    /// The topic name or pattern the group consumes.
    pub pattern: String,
    /// Where the group starts in each topic that matches at creation (topics created
    /// later are consumed from their beginning).
    pub from: StartAt,
    /// How long a member has to settle a record before it is delivered again.
    pub ack_timeout_ms: u64,
    /// Deliveries after which an unsettled record goes to the dead-letter topic.
    pub max_deliveries: u32,
    /// Where such records go (default: each topic's dead-letter topic).
    pub dead_letter: Option<String>,
    /// The most records a member holds unsettled, unless it asks for fewer.
    pub prefetch: u32,
}

impl GroupSettings {
    /// How long a member holds a record by default before it is delivered again.
    pub const DEFAULT_ACK_TIMEOUT_MS: u64 = 30_000;
    /// Deliveries after which an unsettled record is dead-lettered, by default.
    pub const DEFAULT_MAX_DELIVERIES: u32 = 5;
    /// Records a member holds unsettled, by default.
    pub const DEFAULT_PREFETCH: u32 = 100;

    /// A group consuming `pattern` from the earliest retained record, with the default
    /// ack timeout, max deliveries and prefetch, dead-lettering to each topic's
    /// dead-letter topic.
    pub fn new(pattern: impl Into<String>) -> Self {
        Self {
            pattern: pattern.into(),
            from: StartAt::Earliest,
            ack_timeout_ms: Self::DEFAULT_ACK_TIMEOUT_MS,
            max_deliveries: Self::DEFAULT_MAX_DELIVERIES,
            dead_letter: None,
            prefetch: Self::DEFAULT_PREFETCH,
        }
    }
}

/// A group as `group describe` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupInfo {
    /// The group's name.
    pub name: String,
    /// Its settings.
    pub settings: GroupSettings,
    /// When it was created (ms since the Unix epoch).
    pub created_ms: u64,
    /// Members connected now.
    pub members: u32,
    /// Each topic the group consumes.
    pub topics: Vec<GroupTopic>,
}

/// Where a group stands in one topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupTopic {
    /// The topic.
    pub topic: String,
    /// The next offset the group has never delivered.
    pub cursor: u64,
    /// Records the group has not yet delivered (the topic's next offset minus the
    /// cursor), plus those pending.
    pub lag: u64,
    /// Records delivered and not yet settled (or waiting to be redelivered).
    pub pending: u64,
    /// Deliveries that were redeliveries.
    pub redelivered: u64,
    /// Records sent to the dead-letter topic.
    pub dead_lettered: u64,
}

/// The first frame of a member stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Join {
    /// The group to join.
    pub group: String,
    /// The most records this member holds unsettled (0: the group's setting).
    pub prefetch: u32,
}

/// Records assigned to a member, from one topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assigned {
    /// The topic they belong to.
    pub topic: String,
    /// The records, each with its delivery count.
    pub records: Vec<AssignedRecord>,
}

/// One record assigned to a member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssignedRecord {
    /// Its offset.
    pub offset: u64,
    /// When it was appended (ms since the Unix epoch).
    pub timestamp: u64,
    /// This delivery's number: 1 the first time, more on redeliveries.
    pub deliveries: u32,
    /// The record.
    pub record: NewRecord,
}

/// How a member settles one record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settlement {
    /// The record's topic.
    pub topic: String,
    /// Its offset.
    pub offset: u64,
    /// What to do with it.
    pub action: Settle,
}

/// Settlements of records of one topic ([`ClientFrame::SettleRuns`]): `others` are
/// applied first, in order, then `acks`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicSettlements {
    /// The records' topic.
    pub topic: String,
    /// Acknowledged records, as runs of consecutive offsets.
    pub acks: Vec<AckRun>,
    /// Every other settlement (nack, term, in progress), one record each.
    pub others: Vec<RecordSettle>,
}

/// Consecutive offsets acknowledged together: `first` to `first + count - 1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AckRun {
    /// The first offset.
    pub first: u64,
    /// How many offsets (at least 1; `first + count` must not overflow).
    pub count: u64,
}

/// How a member settles one record of a [`TopicSettlements`]' topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordSettle {
    /// The record's offset.
    pub offset: u64,
    /// What to do with it.
    pub action: Settle,
}

/// A settlement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Settle {
    /// Done: never deliver it again.
    Ack,
    /// Not done: deliver it again after `delay_ms` (to this or another member).
    Nack {
        /// How long to wait before redelivering.
        delay_ms: u64,
    },
    /// Never deliver it again: send it to the dead-letter topic with this reason.
    Term {
        /// Why.
        reason: String,
    },
    /// Still working on it: restart its ack timeout.
    InProgress,
}
