//! The broker's core: the topic registry, validation of every request, plugin
//! administration, and the publish path into storage (`publish.rs`). No networking
//! here: connections call these methods.
//!
//! Invariant: a name in the registry maps to a live (not deleted) log, and every live
//! log in storage is in the registry. Topic creation is announced on a broadcast
//! channel, subscribed to *before* a pattern subscription takes its snapshot of
//! existing topics, so a topic created meanwhile is seen at least once.

pub mod authorize;
pub mod browse;
pub mod cursors;
pub mod dedup;
mod deliver;
mod execute;
mod groups;
mod links;
pub mod membership;
mod publish;
pub mod redrive;
mod registry;
mod request;
pub mod streams;
#[cfg(test)]
mod tests;

use std::collections::BTreeSet;
use std::sync::{Arc, PoisonError, RwLock};

use bytes::Bytes;
use quiver_protocol::{
    BrokerInfo, Durability, ErrorCode, NameError, PluginInfo, PluginStatus, PurgeBefore, Retention,
    SandboxInfo, ServerStatus, Stage, StageLimits, TopicConfig, TopicInfo, TopicName, TopicPattern,
    WireError,
};
use tokio::sync::{Notify, broadcast};
use tracing::info;

use crate::auth::{Authenticator, Denied};
use crate::groups::Groups;
use crate::plugins::stage::CallTimes;
use crate::plugins::{AdminError, PipelineError, Plugins};
use crate::storage::{AttachedStage, Storage, StorageError, TopicLog, TopicSettings};
use crate::util::{lock, now_ms};
use dedup::Deduplicator;
pub use links::LinkControl;
pub use publish::{Outcomes, PublishOrder, Publishes, Run, one_outcome};
pub(crate) use publish::{hops, is_provenance, path_before, visited};
use registry::Registry;
use streams::OpenStreams;

/// Limits the broker enforces on requests.
#[derive(Debug, Clone, Copy)]
pub struct BrokerLimits {
    /// Largest record (payload + key + headers).
    pub max_record_size: u64,
    /// Most records in one publish.
    pub max_batch_records: u32,
    /// Topics the broker holds; clients cannot create more.
    pub max_topics: usize,
    /// Plugins deployed at once.
    pub max_plugins: usize,
    /// Bytes of records a subscription or group member encodes before waiting for
    /// its client to read them.
    pub max_buffered_per_subscription: usize,
}

/// How the broker is set up, beyond storage and plugins.
#[derive(Debug, Clone, Copy)]
pub struct BrokerSettings {
    /// Limits on requests.
    pub limits: BrokerLimits,
    /// How long a publish id is remembered, in ms.
    pub dedup_window_ms: u64,
    /// The most publish ids remembered.
    pub dedup_max_entries: usize,
}

/// Why a request was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// A topic name does not follow the grammar.
    #[error("invalid topic name `{name}`: {source}")]
    InvalidName {
        /// The name as given.
        name: String,
        /// What is wrong with it.
        #[source]
        source: NameError,
    },
    /// A pattern does not follow the grammar.
    #[error("invalid pattern `{pattern}`: {source}")]
    InvalidPattern {
        /// The pattern as given.
        pattern: String,
        /// What is wrong with it.
        #[source]
        source: NameError,
    },
    /// No topic by that name.
    #[error("topic `{0}` does not exist")]
    TopicNotFound(String),
    /// The name is taken.
    #[error("topic `{0}` already exists")]
    TopicExists(String),
    /// A record exceeds the size limit.
    #[error(
        "record {index} is {size} bytes, over the limit of {max} bytes (limits.max_record_size)"
    )]
    RecordTooLarge {
        /// Its position in the publish.
        index: usize,
        /// Its size.
        size: u64,
        /// The limit.
        max: u64,
    },
    /// A publish carries too many records.
    #[error("{count} records in one publish, over the limit of {max} (limits.max_batch_records)")]
    BatchTooLarge {
        /// Records in the publish.
        count: usize,
        /// The limit.
        max: u32,
    },
    /// An argument is unacceptable.
    #[error("{0}")]
    InvalidArgument(String),
    /// A plugin request was refused.
    #[error(transparent)]
    Plugin(#[from] AdminError),
    /// No group by that name.
    #[error("group `{0}` does not exist")]
    GroupNotFound(String),
    /// The group name is taken.
    #[error("group `{0}` already exists")]
    GroupExists(String),
    /// Nobody consumes the topic a request was sent to.
    #[error("nothing consumes `{0}`: no subscription or group member is reading it")]
    NoResponders(String),
    /// A request got no reply in time.
    #[error("no reply within {0:?}")]
    RequestTimeout(std::time::Duration),
    /// A reply's requester is gone.
    #[error("no request is waiting under reply token `{0}` (it timed out or its client left)")]
    NoRequester(String),
    /// A plugin pipeline refused the records or could not run.
    #[error("refused: {0}")]
    Pipeline(#[from] PipelineError),
    /// Storage failed; nothing was acknowledged.
    #[error(transparent)]
    Storage(StorageError),
    /// The client's principal has no grant for the request.
    #[error(transparent)]
    Forbidden(#[from] Denied),
    /// A configured limit was reached; the message names the setting.
    #[error("{0}")]
    LimitReached(String),
    /// No link by that name.
    #[error("link `{0}` does not exist")]
    LinkNotFound(String),
    /// The link name is taken.
    #[error("link `{0}` already exists")]
    LinkExists(String),
    /// The broker's own publish failed, as a client's would be told.
    #[error("{}", .0.message)]
    Publish(WireError),
}

impl From<WireError> for BrokerError {
    fn from(e: WireError) -> Self {
        Self::Publish(e)
    }
}

impl From<StorageError> for BrokerError {
    fn from(e: StorageError) -> Self {
        match e {
            StorageError::TopicExists(name) => Self::TopicExists(name.to_string()),
            StorageError::TopicNotFound(name) => Self::TopicNotFound(name.to_string()),
            StorageError::GroupExists(name) => Self::GroupExists(name),
            StorageError::LinkExists(name) => Self::LinkExists(name),
            StorageError::LinkNotFound(name) => Self::LinkNotFound(name),
            other => Self::Storage(other),
        }
    }
}

impl BrokerError {
    /// The protocol code for this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::InvalidName { .. } => ErrorCode::InvalidName,
            Self::InvalidPattern { .. } => ErrorCode::InvalidPattern,
            Self::TopicNotFound(_) => ErrorCode::TopicNotFound,
            Self::TopicExists(_) => ErrorCode::TopicExists,
            Self::RecordTooLarge { .. } => ErrorCode::RecordTooLarge,
            Self::BatchTooLarge { .. } => ErrorCode::BatchTooLarge,
            Self::InvalidArgument(_) => ErrorCode::InvalidArgument,
            Self::Plugin(e) => match e {
                AdminError::NotFound(_) => ErrorCode::PluginNotFound,
                AdminError::Exists(_) => ErrorCode::PluginExists,
                AdminError::InUse { .. } => ErrorCode::PluginInUse,
                AdminError::Invalid { .. } => ErrorCode::InvalidPlugin,
                AdminError::InvalidArgument(_) => ErrorCode::InvalidArgument,
                AdminError::Storage(StorageError::Closed) => ErrorCode::ShuttingDown,
                AdminError::Storage(_) => ErrorCode::Storage,
            },
            Self::GroupNotFound(_) => ErrorCode::GroupNotFound,
            Self::GroupExists(_) => ErrorCode::GroupExists,
            Self::NoResponders(_) => ErrorCode::NoResponders,
            Self::RequestTimeout(_) => ErrorCode::RequestTimeout,
            Self::NoRequester(_) => ErrorCode::NoRequester,
            Self::Pipeline(PipelineError::Refused(_)) => ErrorCode::PluginQuarantined,
            Self::Pipeline(PipelineError::Aborted(_)) => ErrorCode::Internal,
            Self::Storage(StorageError::Closed) => ErrorCode::ShuttingDown,
            Self::Storage(StorageError::OutOfOrder { .. }) => ErrorCode::OutOfOrder,
            Self::Storage(_) => ErrorCode::Storage,
            Self::LinkNotFound(_) => ErrorCode::LinkNotFound,
            Self::LinkExists(_) => ErrorCode::LinkExists,
            Self::Forbidden(_) => ErrorCode::Forbidden,
            Self::LimitReached(_) => ErrorCode::LimitReached,
            Self::Publish(e) => e.code,
        }
    }
}

impl From<&BrokerError> for WireError {
    fn from(e: &BrokerError) -> Self {
        WireError::new(e.code(), e.to_string())
    }
}

/// The broker: topics by name over the storage, and the plugins that run on them.
#[derive(Debug)]
pub struct Broker {
    storage: Storage,
    plugins: Arc<Plugins>,
    /// Rights, for work done on a principal's behalf (an attached plugin's routes).
    auth: Arc<Authenticator>,
    /// The live topics by name. Storage's writer updates it as a creation or deletion
    /// commits (`Storage::create_topic_then`), so that it never disagrees with storage,
    /// even when whoever asked went away meanwhile (a link stopped, say).
    topics: Arc<RwLock<Registry>>,
    /// Held by a creation from its checks until what it created is in the registry:
    /// shared by topic creations (which [`Creations`] keeps apart), so that topics
    /// created together share commits; exclusive for a group's creation (which must
    /// see every topic storage holds) and a topic's change (one at a time).
    creation: Arc<tokio::sync::RwLock<()>>,
    creations: Arc<Creations>,
    created: broadcast::Sender<Arc<TopicLog>>,
    /// Topics deleted so far: a group looks for deleted topics among its own only
    /// when this moved ([`Broker::topic_deletions`]).
    deletions: Arc<std::sync::atomic::AtomicU64>,
    limits: BrokerLimits,
    dedup: Arc<Deduplicator>,
    groups: Arc<Groups>,
    requests: request::Requests,
    /// Makes reply tokens unique across restarts.
    requests_prefix: String,
    /// Wakes the background clean-up early (after a delete, or a retention change).
    pub(crate) cleanup: crate::retention::Wake,
    /// The links, handed over once they are started.
    links: std::sync::OnceLock<Arc<dyn LinkControl>>,
    /// How the server runs this broker (`quiver info`), handed over once it serves.
    server: std::sync::OnceLock<ServerFacts>,
    /// QUIC streams open now, by kind (`/metrics`).
    streams: Arc<OpenStreams>,
}

/// What the server knows of how it runs the broker, for [`Broker::describe_server`].
#[derive(Debug)]
pub struct ServerFacts {
    /// When it started serving (ms since the Unix epoch).
    pub started_ms: u64,
    /// The data dir, as given.
    pub data_dir: String,
    /// Each listener's kind (`quic`, `mqtt`, `mqtt-tls`, `http`, `https`) and address.
    pub listeners: Vec<(String, String)>,
    /// The open QUIC connections: the permits taken from this, out of `max`.
    pub connections: Arc<tokio::sync::Semaphore>,
    /// The most connections.
    pub max_connections: usize,
}

impl Broker {
    /// A broker over opened storage, what it recovered, and the plugin subsystem.
    pub fn new(
        storage: Storage,
        recovered: &[Arc<TopicLog>],
        plugins: Arc<Plugins>,
        auth: Arc<Authenticator>,
        settings: BrokerSettings,
    ) -> Result<Self, StorageError> {
        let topics: Registry = recovered.iter().cloned().collect();
        let dedup = Deduplicator::new(settings.dedup_window_ms, settings.dedup_max_entries);
        let since = now_ms().saturating_sub(settings.dedup_window_ms);
        storage.dedup_entries(since, settings.dedup_max_entries, |id, at, receipt| {
            dedup.remember(id, receipt, at);
        })?;
        Ok(Self {
            storage,
            plugins,
            auth,
            topics: Arc::new(RwLock::new(topics)),
            creation: Arc::default(),
            creations: Arc::default(),
            created: broadcast::channel(1024).0,
            limits: settings.limits,
            dedup,
            groups: Arc::default(),
            requests: request::Requests::default(),
            requests_prefix: format!("{:x}", now_ms()),
            cleanup: crate::retention::Wake::default(),
            deletions: Arc::default(),
            links: std::sync::OnceLock::new(),
            server: std::sync::OnceLock::new(),
            streams: Arc::default(),
        })
    }

    /// Loads the durable groups (run once, at start-up): their state, and the dead
    /// letters a restart left for them.
    pub async fn load_groups(&self) -> Result<(), BrokerError> {
        let (groups, loaded) = Groups::load(self.storage.groups()?, &self.topics());
        for group in groups.all() {
            self.groups.insert(group);
        }
        self.settle_loaded_groups(loaded).await;
        Ok(())
    }

    /// Remembered publish ids.
    pub fn dedup(&self) -> &Deduplicator {
        &self.dedup
    }

    /// The storage under the broker.
    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    /// The plugin subsystem.
    pub fn plugins(&self) -> &Arc<Plugins> {
        &self.plugins
    }

    /// The limits in force.
    pub fn limits(&self) -> BrokerLimits {
        self.limits
    }

    fn parse_name(name: &str) -> Result<TopicName, BrokerError> {
        TopicName::parse(name).map_err(|source| BrokerError::InvalidName {
            name: name.to_owned(),
            source,
        })
    }

    /// A live topic by name.
    pub fn topic(&self, name: &str) -> Result<Arc<TopicLog>, BrokerError> {
        // Looked up as given: only valid names are stored, so a name that is found is
        // valid, and one that is not is parsed to say which error it gets.
        let found = self
            .topics
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .cloned();
        match found {
            Some(log) => Ok(log),
            None => {
                Self::parse_name(name)?;
                Err(BrokerError::TopicNotFound(name.to_owned()))
            }
        }
    }

    /// How many topics are live.
    fn topic_count(&self) -> usize {
        self.topics
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Every live topic, in name order.
    pub fn topics(&self) -> Vec<Arc<TopicLog>> {
        self.topics
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .in_order()
            .cloned()
            .collect()
    }

    /// Creates a topic.
    pub async fn create_topic(
        &self,
        name: &str,
        config: &TopicConfig,
    ) -> Result<TopicInfo, BrokerError> {
        let name = Self::parse_name(name)?;
        let retention = config.retention;
        check_retention(&retention)?;
        check_durability(config.durability)?;
        let dead_letter = config
            .dead_letter
            .as_deref()
            .map(Self::parse_name)
            .transpose()?;
        if dead_letter.as_ref() == Some(&name) {
            return Err(BrokerError::InvalidArgument(
                "a topic cannot be its own dead-letter topic".into(),
            ));
        }
        // Both let go with the follow-up below, once the topic is in the registry (or
        // the creation failed), even when this caller is gone before then.
        let creation = Arc::clone(&self.creation).read_owned().await;
        let reserved = self.reserve_topic(&name).await?;
        let settings = TopicSettings {
            retention,
            dead_letter,
            durability: config.durability,
        };
        let (registry, created) = (Arc::clone(&self.topics), self.created.clone());
        let log = self
            .storage
            .create_topic_then(name, settings, move |log| {
                registry
                    .write()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(log);
                let _ = created.send(Arc::clone(log)); // no receivers is fine
                drop((reserved, creation));
            })
            .await?;
        info!(topic = %log.name(), ?retention, durability = %log.durability(), "topic created");
        Ok(describe(&log))
    }

    /// Reserves `name` for a creation: refused if the registry holds it or the
    /// topics held and under way reach `limits.max_topics`; waits while another
    /// creation of the same name is under way, then looks again.
    async fn reserve_topic(&self, name: &TopicName) -> Result<Reserved, BrokerError> {
        loop {
            let finished = self.creations.finished.notified();
            tokio::pin!(finished);
            // Before looking, so that a creation finishing meanwhile wakes this one.
            finished.as_mut().enable();
            {
                let mut names = lock(&self.creations.names);
                if !names.contains(name) {
                    let topics = self.topics.read().unwrap_or_else(PoisonError::into_inner);
                    if topics.contains(name.as_str()) {
                        return Err(BrokerError::TopicExists(name.to_string()));
                    }
                    let held = topics.len() + names.len();
                    if held >= self.limits.max_topics {
                        return Err(BrokerError::LimitReached(format!(
                            "the broker holds {held} topics, its maximum (limits.max_topics); \
                             delete some first"
                        )));
                    }
                    names.insert(name.clone());
                    return Ok(Reserved {
                        creations: Arc::clone(&self.creations),
                        name: name.clone(),
                    });
                }
            }
            finished.await;
        }
    }

    /// Changes a live topic's retention or durability (what is `None` stays). A
    /// tighter retention takes effect at the retention sweep's next pass.
    pub async fn alter_topic(
        &self,
        name: &str,
        retention: Option<Retention>,
        durability: Option<Durability>,
    ) -> Result<TopicInfo, BrokerError> {
        let log = self.topic(name)?;
        if let Some(retention) = &retention {
            check_retention(retention)?;
        }
        if let Some(durability) = durability {
            check_durability(durability)?;
        }
        // One change at a time, so that each starts from the one before.
        let _creation = self.creation.write().await;
        let retention = retention.unwrap_or_else(|| log.retention());
        let durability = durability.unwrap_or_else(|| log.durability());
        self.storage
            .set_settings(Arc::clone(&log), retention, durability)
            .await?;
        info!(topic = %log.name(), ?retention, %durability, "topic altered");
        self.cleanup.retention();
        Ok(describe(&log))
    }

    /// Removes a topic's records before an offset or a time, or all of them; durable
    /// when this returns. Offsets are never reused.
    pub async fn purge_topic(
        &self,
        name: &str,
        before: PurgeBefore,
    ) -> Result<TopicInfo, BrokerError> {
        let log = self.topic(name)?;
        let next = log.stats().next;
        let first = match before {
            PurgeBefore::All => next,
            PurgeBefore::Offset(offset) => offset.min(next),
            PurgeBefore::Time(ms) => self.storage.offset_for_timestamp(&log, ms)?,
        };
        if first > log.stats().first {
            while self.storage.trim(Arc::clone(&log), first).await?.more {}
            self.storage.sync().await?;
            info!(topic = %log.name(), first, "topic purged");
        }
        Ok(describe(&log))
    }

    /// Topics deleted since the broker started: when it has not moved, no topic was
    /// deleted in between.
    pub fn topic_deletions(&self) -> u64 {
        self.deletions.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Deletes a topic; its storage is released in the background.
    pub async fn delete_topic(&self, name: &str) -> Result<(), BrokerError> {
        let log = self.topic(name)?;
        let (registry, deletions) = (Arc::clone(&self.topics), Arc::clone(&self.deletions));
        let plugins = Arc::clone(&self.plugins);
        let deleted = move |log: &Arc<TopicLog>| {
            registry
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(log);
            plugins.forget_topic(log.id());
            // After the topic is marked deleted: whoever reads the new count sees it so.
            deletions.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        };
        self.storage
            .delete_topic_then(Arc::clone(&log), deleted)
            .await?;
        info!(topic = %log.name(), "topic deleted");
        self.cleanup.purge();
        Ok(())
    }

    /// Hands over how the server runs this broker (once; later calls are ignored).
    pub fn set_server_facts(&self, facts: ServerFacts) {
        let _ = self.server.set(facts);
    }

    /// How the broker runs: version, uptime, data dir, sizes, listeners.
    pub async fn describe_server(&self) -> Result<ServerStatus, BrokerError> {
        let facts = self
            .server
            .get()
            .ok_or_else(|| BrokerError::InvalidArgument("the broker is not serving yet".into()))?;
        let count = |n: usize| n as u64;
        Ok(ServerStatus {
            broker: BrokerInfo {
                id: self.storage.broker_id(),
                version: concat!("quiver/", env!("CARGO_PKG_VERSION")).to_owned(),
            },
            started_ms: facts.started_ms,
            data_dir: facts.data_dir.clone(),
            disk_bytes: self.storage.size_on_disk()?,
            topics: count(self.topic_count()),
            groups: count(self.list_groups().await.len()),
            plugins: count(self.list_plugins().len()),
            links: count(self.links().map_or(0, |links| links.list().len())),
            connections: count(
                facts
                    .max_connections
                    .saturating_sub(facts.connections.available_permits()),
            ),
            listeners: facts.listeners.clone(),
        })
    }

    /// Describes one topic.
    pub fn describe_topic(&self, name: &str) -> Result<TopicInfo, BrokerError> {
        let log = self.topic(name)?;
        Ok(describe(&log))
    }

    /// Describes every topic, sorted by name.
    pub fn list_topics(&self) -> Vec<TopicInfo> {
        self.topics().iter().map(|log| describe(log)).collect()
    }

    /// Every topic created from now on, for a listener that follows several patterns
    /// (without the snapshot of existing topics `watch_pattern` takes).
    pub fn topic_creations(&self) -> broadcast::Receiver<Arc<TopicLog>> {
        self.created.subscribe()
    }

    /// Parses a pattern and returns the live topics matching it, with a receiver of
    /// topics created from now on (which may repeat some of those returned).
    pub fn watch_pattern(&self, pattern: &str) -> Result<PatternWatch, BrokerError> {
        let parsed =
            TopicPattern::parse(pattern).map_err(|source| BrokerError::InvalidPattern {
                pattern: pattern.to_owned(),
                source,
            })?;
        let created = self.created.subscribe(); // before the snapshot: see the module docs
        let matching = self
            .topics()
            .into_iter()
            .filter(|log| parsed.matches(log.name()))
            .collect();
        Ok(PatternWatch {
            pattern: parsed,
            matching,
            created,
        })
    }

    /// The topic where `log`'s plugins send what they fail on, created if need be.
    pub async fn dead_letter_topic(&self, log: &TopicLog) -> Result<Arc<TopicLog>, BrokerError> {
        self.topic_or_create(&dead_letter_name(log)).await
    }

    /// A topic, created (with default settings) if it does not exist yet.
    pub async fn topic_or_create(&self, name: &str) -> Result<Arc<TopicLog>, BrokerError> {
        match self.topic(name) {
            Err(BrokerError::TopicNotFound(_)) => {
                match self.create_topic(name, &TopicConfig::default()).await {
                    // Created meanwhile by someone else: as good.
                    Ok(_) | Err(BrokerError::TopicExists(_)) => self.topic(name),
                    Err(e) => Err(e),
                }
            }
            found => found,
        }
    }

    /// Deploys a plugin.
    pub async fn deploy_plugin(
        &self,
        name: &str,
        version: Option<String>,
        wasm: Bytes,
    ) -> Result<PluginInfo, BrokerError> {
        let deployed = self.plugins.list().len();
        if deployed >= self.limits.max_plugins {
            return Err(BrokerError::LimitReached(format!(
                "{deployed} plugins are deployed, the maximum (limits.max_plugins); remove one first"
            )));
        }
        Ok(self.plugins.deploy(name, version, wasm).await?)
    }

    /// Upgrades a plugin everywhere it runs.
    pub async fn upgrade_plugin(
        &self,
        name: &str,
        version: Option<String>,
        wasm: Bytes,
    ) -> Result<PluginInfo, BrokerError> {
        Ok(self.plugins.upgrade(name, version, wasm).await?)
    }

    /// Removes a plugin attached nowhere.
    pub async fn remove_plugin(&self, name: &str) -> Result<(), BrokerError> {
        Ok(self.plugins.remove(name).await?)
    }

    /// Every deployed plugin.
    pub fn list_plugins(&self) -> Vec<PluginInfo> {
        self.plugins.list()
    }

    /// A plugin's attachments and figures.
    pub fn plugin_status(&self, name: &str) -> Result<PluginStatus, BrokerError> {
        Ok(self.plugins.status(name)?)
    }

    /// The QUIC streams open now, by kind: a session counts each it serves.
    pub fn streams(&self) -> &Arc<OpenStreams> {
        &self.streams
    }

    /// The sandbox of each of a plugin's attachments.
    pub fn plugin_sandboxes(&self, name: &str) -> Result<Vec<SandboxInfo>, BrokerError> {
        Ok(self.plugins.sandboxes(name)?)
    }

    /// Ends a plugin's quarantine on every attachment.
    pub fn lift_quarantine(&self, name: &str) -> Result<PluginStatus, BrokerError> {
        Ok(self.plugins.lift_quarantine(name)?)
    }

    /// Each attachment's call times, by target (`/metrics`).
    pub fn plugin_call_times(&self, name: &str) -> Result<Vec<(String, CallTimes)>, BrokerError> {
        Ok(self.plugins.call_times(name)?)
    }

    /// Appends a stage to a topic's ingress pipeline, running in a sandbox of `limits`
    /// (the language's defaults for what they leave unset).
    pub async fn attach_plugin(
        &self,
        topic: &str,
        stage: Stage,
        limits: StageLimits,
    ) -> Result<TopicInfo, BrokerError> {
        let log = self.topic(topic)?;
        self.plugins
            .edit_topic_pipeline(&log, |mut stages| {
                stages.push(AttachedStage { stage, limits });
                Ok(stages)
            })
            .await?;
        info!(topic = %log.name(), pipeline = ?log.stages(), ?limits, "plugin attached");
        Ok(describe(&log))
    }

    /// Removes a plugin's stage from a topic's ingress pipeline.
    pub async fn detach_plugin(&self, topic: &str, plugin: &str) -> Result<TopicInfo, BrokerError> {
        let log = self.topic(topic)?;
        self.plugins
            .edit_topic_pipeline(&log, |mut stages| {
                let before = stages.len();
                stages.retain(|s| s.stage.plugin != plugin);
                if stages.len() == before {
                    return Err(AdminError::InvalidArgument(format!(
                        "plugin `{plugin}` is not attached to topic `{topic}`"
                    )));
                }
                Ok(stages)
            })
            .await?;
        info!(topic = %log.name(), plugin, "plugin detached");
        Ok(describe(&log))
    }
}

/// Topic creations under way, by name: concurrent creations share group commits, yet
/// neither overshoot `limits.max_topics` nor race for one name (the second waits for
/// the first, then finds its topic in the registry, as `topic_or_create` relies on).
#[derive(Debug, Default)]
struct Creations {
    names: std::sync::Mutex<BTreeSet<TopicName>>,
    /// Told whenever a creation ends, done or failed.
    finished: Notify,
}

/// A name reserved for a creation under way: let go when dropped, after the topic is
/// in the registry (or the creation failed). Storage's writer drops it, with the
/// creation's follow-up, so a caller that goes away does not let it go early.
struct Reserved {
    creations: Arc<Creations>,
    name: TopicName,
}

impl Drop for Reserved {
    fn drop(&mut self) {
        lock(&self.creations.names).remove(&self.name);
        self.creations.finished.notify_waiters();
    }
}

/// The dead-letter topic's name: the one chosen at creation, or `dlq.<topic>`.
pub fn dead_letter_name(log: &TopicLog) -> String {
    log.dead_letter()
        .map_or_else(|| format!("dlq.{}", log.name()), ToString::to_string)
}

/// A pattern, the topics matching it now, and news of topics created since.
#[derive(Debug)]
pub struct PatternWatch {
    /// The parsed pattern.
    pub pattern: TopicPattern,
    /// Live topics matching it when the watch began.
    pub matching: Vec<Arc<TopicLog>>,
    /// Every topic created from then on (filter with `pattern`).
    pub created: broadcast::Receiver<Arc<TopicLog>>,
}

/// A topic's description from its log.
pub fn describe(log: &TopicLog) -> TopicInfo {
    let stats = log.stats();
    TopicInfo {
        name: log.name().to_string(),
        retention: log.retention(),
        durability: log.durability(),
        created_ms: log.created_ms(),
        records: stats.records(),
        bytes: stats.bytes,
        first_offset: stats.first,
        next_offset: stats.next,
        dead_letter: dead_letter_name(log),
        pipeline: log.stages(),
    }
}

/// Retention limits, if set, must be above zero.
fn check_retention(retention: &Retention) -> Result<(), BrokerError> {
    for (key, value) in [
        ("max_age", retention.max_age_ms),
        ("max_bytes", retention.max_bytes),
        ("max_records", retention.max_records),
    ] {
        if value == Some(0) {
            return Err(BrokerError::InvalidArgument(format!(
                "retention {key} must be greater than zero (leave it unset for no limit)"
            )));
        }
    }
    Ok(())
}

/// Batched durability's interval must be within its bounds.
fn check_durability(durability: Durability) -> Result<(), BrokerError> {
    if let Durability::Batched { interval_ms } = durability
        && !(1..=Durability::MAX_INTERVAL_MS).contains(&interval_ms)
    {
        return Err(BrokerError::InvalidArgument(format!(
            "the flush interval of batched durability must be 1 to {} ms, not {interval_ms}",
            Durability::MAX_INTERVAL_MS
        )));
    }
    Ok(())
}
