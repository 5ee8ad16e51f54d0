//! WebAssembly plugins: the registry of deployed plugins, the stages attached to topics
//! and subscriptions, and running records through them.
//!
//! - `runtime`: wasmtime (the only module importing it): compile, cache, sandbox, call;
//! - `stage`: one attachment: its instance, figures and quarantine;
//! - `pipeline`: sorting records by the stages' outcomes;
//! - this module: [`Plugins`], which the broker asks to deploy, upgrade, remove, attach
//!   and run plugins.
//!
//! Invariants worth naming:
//! - a deployed plugin's code is swapped by replacing its registry entry with a new
//!   generation; stages pick it up between calls, never during one;
//! - plugin state written by a call is visible to later calls at once and becomes
//!   durable with the records of its call (or is forgotten if that commit fails);
//! - storage receives a plugin's state writes in the order its calls made them: calls
//!   of a plugin run, and queue their results to storage, in the order they were
//!   dispatched (`order.rs`, [`Plugins::run_then`]), so a later call's value can never
//!   be overwritten by an earlier one's, and a commit that survives a crash carries no
//!   state from a call whose records did not.

mod executor;
mod order;
pub mod pipeline;
pub mod runtime;
pub mod stage;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};
use std::time::Duration;

use bytes::Bytes;
use quiver_protocol::{NewRecord, PluginInfo, PluginStatus, Stage, TopicName};
use sha2::{Digest, Sha256};
use tracing::{error, info, warn};

use executor::Executor;

use crate::storage::{PluginRecord, PluginVersion, StateWrite, Storage, StorageError, TopicLog};
use crate::util::now_ms;
use pipeline::{Item, Refused, Sorted};
use runtime::{Compiled, Runtime, SandboxLimits};

use crate::util::hex;
use stage::{QuarantinePolicy, StageRunner};

/// An event handed to a plugin: a record with the offset and time it is known by.
#[derive(Debug, Clone, Copy)]
pub struct InputEvent<'a> {
    /// On ingress, its position in the publish; on delivery, its offset.
    pub offset: u64,
    /// On ingress, the time of the publish; on delivery, its append time.
    pub timestamp: u64,
    /// The record.
    pub record: &'a NewRecord,
}

/// What a plugin decided for one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Pass it on unchanged.
    Keep,
    /// Remove it.
    Drop,
    /// Replace it with these records.
    Replace(Vec<NewRecord>),
    /// Send it to these topics instead.
    Route(Vec<String>),
    /// Dead-letter it, with this reason.
    Reject(String),
}

impl Outcome {
    /// Records that come out of the stage for this outcome.
    pub fn outputs(&self) -> u64 {
        match self {
            Self::Keep => 1,
            Self::Drop | Self::Reject(_) => 0,
            Self::Replace(records) => records.len() as u64,
            Self::Route(topics) => topics.len() as u64,
        }
    }
}

/// Why a plugin could not be loaded or a call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PluginError {
    /// The bytes are not a WebAssembly component.
    #[error("not a valid WebAssembly component: {0}")]
    InvalidWasm(String),
    /// A component, but not one of the `quiver:plugin` world.
    #[error("{0}")]
    WrongWorld(String),
    /// The plugin trapped (a panic, an `unreachable`, a forbidden import, …).
    #[error("trapped: {0}")]
    Trap(String),
    /// The call ran past its CPU deadline.
    #[error("exceeded its CPU deadline of {timeout:?}")]
    Deadline {
        /// The deadline.
        timeout: Duration,
    },
    /// The instance tried to grow its memory past the cap.
    #[error("exceeded its memory limit of {limit} bytes")]
    MemoryLimit {
        /// The cap.
        limit: usize,
    },
    /// The call returned outcomes the broker does not accept.
    #[error("invalid output: {0}")]
    InvalidOutput(String),
    /// The plugin returned an error.
    #[error("returned an error: {0}")]
    Failed(String),
    /// The plugin is no longer deployed.
    #[error("plugin `{0}` is not deployed")]
    NotDeployed(String),
    /// The runtime itself could not start or compile.
    #[error("plugin runtime: {0}")]
    Runtime(String),
}

impl PluginError {
    /// True when the instance that produced this error must not run again.
    pub fn poisons_instance(&self) -> bool {
        matches!(
            self,
            Self::Trap(_)
                | Self::Deadline { .. }
                | Self::MemoryLimit { .. }
                | Self::InvalidOutput(_)
        )
    }
}

/// Why records could not be run through a pipeline.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// A fail-closed stage is quarantined.
    #[error(transparent)]
    Refused(#[from] Refused),
    /// The blocking task running the stages did not complete.
    #[error("plugin task did not complete: {0}")]
    Aborted(String),
}

/// Reads a plugin's state.
pub trait StateSource: Send + Sync {
    /// The value under `key` in `plugin`'s state.
    fn get(&self, plugin: &str, key: &[u8]) -> Result<Option<Vec<u8>>, String>;
}

/// Why a plugin administration request was refused.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// No such plugin.
    #[error("plugin `{0}` is not deployed")]
    NotFound(String),
    /// The name is taken.
    #[error("plugin `{0}` is deployed already; use upgrade to replace it")]
    Exists(String),
    /// It is attached somewhere.
    #[error("plugin `{name}` is attached to {by}; detach it first")]
    InUse {
        /// The plugin.
        name: String,
        /// Where it is attached.
        by: String,
    },
    /// The component was refused.
    #[error("plugin `{name}` refused: {source}")]
    Invalid {
        /// The plugin.
        name: String,
        /// Why.
        #[source]
        source: PluginError,
    },
    /// A name, version or stage is not acceptable.
    #[error("{0}")]
    InvalidArgument(String),
    /// Storage failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// How plugins run.
#[derive(Debug, Clone)]
pub struct PluginSettings {
    /// What each instance and call may use.
    pub limits: SandboxLimits,
    /// When failing stages are quarantined.
    pub quarantine: QuarantinePolicy,
    /// Where compiled components are cached (`None`: not cached).
    pub cache_dir: Option<PathBuf>,
}

/// A deployed plugin, as stages run it.
#[derive(Debug)]
pub struct Deployed {
    /// What storage keeps of it.
    pub record: PluginRecord,
    /// The version running.
    pub version: Arc<str>,
    /// Its compiled code, or why it could not be loaded.
    pub compiled: Result<Compiled, PluginError>,
    /// Bumped on every deploy and upgrade.
    pub generation: u64,
}

/// A topic's ingress stages.
#[derive(Debug)]
struct TopicStages {
    name: TopicName,
    stages: Arc<[Arc<StageRunner>]>,
}

/// Threads running plugin calls: a couple more than the two cores Quiver is sized
/// for, so one plugin spinning to its deadline does not hold up every other.
const EXECUTOR_THREADS: usize = 4;

/// The plugin subsystem.
#[derive(Debug)]
pub struct Plugins {
    runtime: Arc<Runtime>,
    storage: Storage,
    registry: RwLock<BTreeMap<String, Arc<Deployed>>>,
    topics: RwLock<HashMap<u64, TopicStages>>,
    subscriptions: Mutex<Vec<Weak<StageRunner>>>,
    state: Arc<PendingState>,
    policy: QuarantinePolicy,
    generations: AtomicU64,
    /// Serializes deploy, upgrade, remove, attach and detach.
    admin: tokio::sync::Mutex<()>,
    /// Where plugin calls run.
    executor: Executor,
    /// The order calls of each plugin run and queue their results in.
    call_order: order::CallOrder,
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}

impl Plugins {
    /// Starts the runtime, loads every deployed plugin (compiled code from the cache
    /// where possible) and the ingress stages of `topics`.
    pub fn open(
        storage: Storage,
        topics: &[Arc<TopicLog>],
        settings: PluginSettings,
    ) -> Result<Self, AdminError> {
        let runtime = Runtime::new(settings.limits, settings.cache_dir).map_err(|source| {
            AdminError::Invalid {
                name: "runtime".into(),
                source,
            }
        })?;
        let plugins = Self {
            runtime: Arc::new(runtime),
            state: Arc::new(PendingState {
                storage: storage.clone(),
                pending: Mutex::default(),
            }),
            storage,
            registry: RwLock::default(),
            topics: RwLock::default(),
            subscriptions: Mutex::default(),
            policy: settings.quarantine,
            generations: AtomicU64::new(0),
            admin: tokio::sync::Mutex::new(()),
            executor: Executor::new(EXECUTOR_THREADS).map_err(|e| {
                AdminError::InvalidArgument(format!("starting the plugin threads: {e}"))
            })?,
            call_order: order::CallOrder::default(),
        };
        for record in plugins.storage.plugins()? {
            let Some(current) = record.current().cloned() else {
                continue;
            };
            let compiled = match plugins.storage.plugin_wasm(&current.sha256)? {
                Some(wasm) => plugins.runtime.compile(&wasm, &current.sha256),
                None => Err(PluginError::Runtime(
                    "its component is missing from storage".into(),
                )),
            };
            match &compiled {
                Ok(c) => {
                    info!(plugin = %record.name, version = %current.version, from_cache = c.from_cache, "plugin loaded")
                }
                Err(e) => {
                    error!(plugin = %record.name, version = %current.version, cause = %e, "plugin could not be loaded; its stages will fail")
                }
            }
            plugins.install(record, compiled);
        }
        for log in topics {
            plugins.build_topic_stages(log, log.pipeline());
        }
        Ok(plugins)
    }

    /// The runtime.
    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// When failing stages are quarantined.
    pub fn quarantine_policy(&self) -> QuarantinePolicy {
        self.policy
    }

    /// Where stages read plugin state.
    pub fn state_source(&self) -> Arc<dyn StateSource> {
        Arc::clone(&self.state) as Arc<dyn StateSource>
    }

    /// The deployed plugin called `name`.
    pub fn deployed(&self, name: &str) -> Result<Arc<Deployed>, PluginError> {
        read(&self.registry)
            .get(name)
            .cloned()
            .ok_or_else(|| PluginError::NotDeployed(name.to_owned()))
    }

    fn install(
        &self,
        record: PluginRecord,
        compiled: Result<Compiled, PluginError>,
    ) -> Arc<Deployed> {
        let version: Arc<str> = record.current().map_or("", |v| v.version.as_str()).into();
        let deployed = Arc::new(Deployed {
            record,
            version,
            compiled,
            generation: self.generations.fetch_add(1, Ordering::Relaxed) + 1,
        });
        write(&self.registry).insert(deployed.record.name.clone(), Arc::clone(&deployed));
        deployed
    }

    /// Compiles `wasm` off the async workers.
    async fn compile(
        &self,
        name: &str,
        wasm: Bytes,
        sha256: [u8; 32],
    ) -> Result<Compiled, AdminError> {
        let runtime = Arc::clone(&self.runtime);
        let started = std::time::Instant::now();
        let compiled = tokio::task::spawn_blocking(move || runtime.compile(&wasm, &sha256))
            .await
            .map_err(|e| PluginError::Runtime(format!("compile task: {e}")))
            .and_then(|r| r)
            .map_err(|source| AdminError::Invalid {
                name: name.to_owned(),
                source,
            })?;
        info!(plugin = name, elapsed = ?started.elapsed(), from_cache = compiled.from_cache, "plugin compiled");
        Ok(compiled)
    }

    /// Deploys a new plugin: validates the name, compiles the component (validating
    /// it against the plugin world) and stores it with its sha256.
    pub async fn deploy(
        &self,
        name: &str,
        version: Option<String>,
        wasm: Bytes,
    ) -> Result<PluginInfo, AdminError> {
        let _admin = self.admin.lock().await;
        TopicName::parse(name).map_err(|e| {
            AdminError::InvalidArgument(format!(
                "invalid plugin name `{name}`: {e} (plugin names follow the topic-name grammar)"
            ))
        })?;
        if read(&self.registry).contains_key(name) {
            return Err(AdminError::Exists(name.to_owned()));
        }
        let record = PluginRecord {
            name: name.to_owned(),
            versions: Vec::new(),
        };
        self.store_version(record, version, wasm).await
    }

    /// Replaces a plugin's code everywhere it runs.
    pub async fn upgrade(
        &self,
        name: &str,
        version: Option<String>,
        wasm: Bytes,
    ) -> Result<PluginInfo, AdminError> {
        let _admin = self.admin.lock().await;
        let record = self
            .deployed(name)
            .map_err(|_| AdminError::NotFound(name.to_owned()))?
            .record
            .clone();
        self.store_version(record, version, wasm).await
    }

    async fn store_version(
        &self,
        mut record: PluginRecord,
        version: Option<String>,
        wasm: Bytes,
    ) -> Result<PluginInfo, AdminError> {
        let name = record.name.clone();
        let version = match version {
            Some(v) if record.versions.iter().any(|old| old.version == v) => {
                return Err(AdminError::InvalidArgument(format!(
                    "plugin `{name}` already has a version `{v}`"
                )));
            }
            Some(v) if v.is_empty() || v.len() > 64 => {
                return Err(AdminError::InvalidArgument(
                    "a version label is 1 to 64 characters".into(),
                ));
            }
            Some(v) => v,
            None => (record.versions.len() + 1..)
                .map(|n| n.to_string())
                .find(|n| record.versions.iter().all(|old| old.version != *n))
                .unwrap_or_default(),
        };
        let sha256: [u8; 32] = Sha256::digest(&wasm).into();
        let compiled = self.compile(&name, wasm.clone(), sha256).await?;
        record.versions.push(PluginVersion {
            version: version.clone(),
            sha256,
            size: wasm.len() as u64,
            deployed_ms: now_ms(),
        });
        self.storage.put_plugin(record.clone(), Some(wasm)).await?;
        let deployed = self.install(record, Ok(compiled));
        info!(plugin = %name, %version, sha256 = %hex(&sha256), "plugin deployed");
        Ok(self.info(&deployed))
    }

    /// Removes a plugin attached nowhere, with its state.
    pub async fn remove(&self, name: &str) -> Result<(), AdminError> {
        let _admin = self.admin.lock().await;
        self.deployed(name)
            .map_err(|_| AdminError::NotFound(name.to_owned()))?;
        let topics = self.topics_using(name);
        if let Some(topic) = topics.first() {
            return Err(AdminError::InUse {
                name: name.to_owned(),
                by: format!("topic `{topic}`"),
            });
        }
        if let Some(runner) = self
            .live_subscription_runners()
            .iter()
            .find(|r| r.plugin() == name)
        {
            return Err(AdminError::InUse {
                name: name.to_owned(),
                by: runner.target.clone(),
            });
        }
        self.storage.remove_plugin(name.to_owned()).await?;
        write(&self.registry).remove(name);
        info!(plugin = name, "plugin removed");
        Ok(())
    }

    /// Every deployed plugin, by name.
    pub fn list(&self) -> Vec<PluginInfo> {
        let deployed: Vec<_> = read(&self.registry).values().cloned().collect();
        deployed.iter().map(|d| self.info(d)).collect()
    }

    /// A plugin and the figures of each of its attachments.
    pub fn status(&self, name: &str) -> Result<PluginStatus, AdminError> {
        let deployed = self
            .deployed(name)
            .map_err(|_| AdminError::NotFound(name.to_owned()))?;
        let mut attachments: Vec<_> = read(&self.topics)
            .values()
            .flat_map(|t| {
                t.stages
                    .iter()
                    .filter(|s| s.plugin() == name)
                    .map(|s| s.status())
                    .collect::<Vec<_>>()
            })
            .collect();
        attachments.sort_by(|a, b| a.target.cmp(&b.target));
        attachments.extend(
            self.live_subscription_runners()
                .iter()
                .filter(|r| r.plugin() == name)
                .map(|r| r.status()),
        );
        Ok(PluginStatus {
            info: self.info(&deployed),
            attachments,
        })
    }

    fn info(&self, deployed: &Deployed) -> PluginInfo {
        let current = deployed.record.current();
        PluginInfo {
            name: deployed.record.name.clone(),
            version: deployed.version.to_string(),
            sha256: current.map(|v| hex(&v.sha256)).unwrap_or_default(),
            size: current.map_or(0, |v| v.size),
            deployed_ms: current.map_or(0, |v| v.deployed_ms),
            versions: deployed
                .record
                .versions
                .iter()
                .map(|v| v.version.clone())
                .collect(),
            cached: deployed.compiled.as_ref().is_ok_and(|c| c.from_cache),
            topics: self.topics_using(&deployed.record.name),
        }
    }

    fn topics_using(&self, plugin: &str) -> Vec<String> {
        let mut topics: Vec<String> = read(&self.topics)
            .values()
            .filter(|t| t.stages.iter().any(|s| s.plugin() == plugin))
            .map(|t| t.name.to_string())
            .collect();
        topics.sort();
        topics
    }

    fn live_subscription_runners(&self) -> Vec<Arc<StageRunner>> {
        let mut live = self
            .subscriptions
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        live.retain(|weak| weak.strong_count() > 0);
        live.iter().filter_map(Weak::upgrade).collect()
    }

    /// Checks that every stage names a deployed plugin, once, with sane parameters.
    fn check_stages(&self, stages: &[Stage]) -> Result<(), AdminError> {
        for (i, stage) in stages.iter().enumerate() {
            self.deployed(&stage.plugin)
                .map_err(|_| AdminError::NotFound(stage.plugin.clone()))?;
            if stages[..i].iter().any(|s| s.plugin == stage.plugin) {
                return Err(AdminError::InvalidArgument(format!(
                    "plugin `{}` appears twice in one pipeline",
                    stage.plugin
                )));
            }
            if let Some((k, _)) = stage.params.iter().find(|(k, _)| k.is_empty()) {
                return Err(AdminError::InvalidArgument(format!(
                    "empty parameter name `{k}`"
                )));
            }
        }
        Ok(())
    }

    /// Makes `stages` the ingress pipeline of `log`, durably. Stages that stay keep
    /// their instance and figures.
    pub async fn set_topic_pipeline(
        &self,
        log: &Arc<TopicLog>,
        stages: Vec<Stage>,
    ) -> Result<(), AdminError> {
        self.check_stages(&stages)?;
        self.storage
            .set_pipeline(Arc::clone(log), stages.clone())
            .await?;
        self.build_topic_stages(log, stages);
        Ok(())
    }

    /// Holds the admin lock while `f` computes a new pipeline from the current one.
    pub async fn edit_topic_pipeline(
        &self,
        log: &Arc<TopicLog>,
        edit: impl FnOnce(Vec<Stage>) -> Result<Vec<Stage>, AdminError>,
    ) -> Result<(), AdminError> {
        let _admin = self.admin.lock().await;
        let stages = edit(log.pipeline())?;
        self.set_topic_pipeline(log, stages).await
    }

    fn build_topic_stages(&self, log: &TopicLog, stages: Vec<Stage>) {
        let mut topics = write(&self.topics);
        if stages.is_empty() {
            topics.remove(&log.id());
            return;
        }
        let old = topics.remove(&log.id());
        let runners: Vec<Arc<StageRunner>> = stages
            .into_iter()
            .map(|stage| {
                old.as_ref()
                    .and_then(|o| o.stages.iter().find(|r| r.stage == stage).cloned())
                    .unwrap_or_else(|| {
                        Arc::new(StageRunner::new(stage, format!("topic {}", log.name())))
                    })
            })
            .collect();
        topics.insert(
            log.id(),
            TopicStages {
                name: log.name().clone(),
                stages: runners.into(),
            },
        );
    }

    /// Forgets a deleted topic's stages.
    pub fn forget_topic(&self, id: u64) {
        write(&self.topics).remove(&id);
    }

    /// The ingress stages of a topic, if it has any.
    pub fn topic_stages(&self, id: u64) -> Option<Arc<[Arc<StageRunner>]>> {
        read(&self.topics).get(&id).map(|t| Arc::clone(&t.stages))
    }

    /// Stages for one subscription (they live as long as it holds them).
    pub fn subscription_stages(
        &self,
        stages: Vec<Stage>,
        pattern: &str,
    ) -> Result<Arc<[Arc<StageRunner>]>, AdminError> {
        self.check_stages(&stages)?;
        let runners: Vec<_> = stages
            .into_iter()
            .map(|stage| Arc::new(StageRunner::new(stage, format!("subscription {pattern}"))))
            .collect();
        self.subscriptions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(runners.iter().map(Arc::downgrade));
        Ok(runners.into())
    }

    /// Runs `items` of `topic` through `stages` on a plugin thread and hands what they
    /// made of them to `then`, on that thread too (driving it to completion). Calls of
    /// a plugin run, and their `then`s, in the order they were dispatched (`order.rs`):
    /// whatever `then` queues to storage is queued in the order the calls ran, so two
    /// overlapping calls of a stateful plugin cannot be stored in the other order,
    /// leaving the older state value on disk (measured before: the power-cut harness's
    /// counter plugin repeated counts). `dispatched` runs as soon as the call has its
    /// place: a call of the same plugins dispatched after that runs after it.
    pub async fn run_then<T, Fut>(
        self: &Arc<Self>,
        stages: Arc<[Arc<StageRunner>]>,
        topic: String,
        items: Vec<Item>,
        ingress: bool,
        dispatched: impl FnOnce(),
        then: impl FnOnce(Result<Sorted, PipelineError>) -> Fut + Send + 'static,
    ) -> Result<T, PipelineError>
    where
        Fut: Future<Output = T>,
        T: Send + 'static,
    {
        let plugins = Arc::clone(self);
        // The plugin threads are not the runtime's: `then` is driven from there.
        let runtime = tokio::runtime::Handle::current();
        let order = Arc::clone(&stages);
        let call = self.call_order.dispatch(&order, move |tickets| {
            self.executor.submit(move || {
                tickets.wait_for_turn();
                let sorted = pipeline::run(&plugins, &stages, &topic, items, ingress);
                if let Ok(sorted) = &sorted {
                    plugins.state.written(&sorted.state);
                }
                let result = runtime.block_on(then(sorted.map_err(PipelineError::from)));
                // The next call of these plugins may run now.
                drop(tickets);
                result
            })
        });
        dispatched();
        // Plugin failures are values, so this fails only if the executor has stopped
        // (the broker shutting down).
        let stopped = |e: &dyn std::fmt::Display| PipelineError::Aborted(e.to_string());
        call.map_err(|e| stopped(&e))?
            .await
            .map_err(|e| stopped(&e))
    }

    /// Tells the state cache that a commit holding `writes` has finished (either way):
    /// reads go back to storage.
    pub fn state_settled(&self, writes: &[StateWrite]) {
        self.state.settled(writes);
    }

    /// Deploys or upgrades every `*.wasm` file in `dir` whose code is not what runs
    /// already: the plugin's name is the file's stem, with `_` read as `-`.
    pub async fn autoload(&self, dir: &Path) -> Result<(), AdminError> {
        let entries = std::fs::read_dir(dir).map_err(|e| {
            AdminError::InvalidArgument(format!("reading plugin dir {}: {e}", dir.display()))
        })?;
        let mut files: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "wasm"))
            .collect();
        files.sort();
        for path in files {
            let Some(name) = path
                .file_stem()
                .and_then(|s| s.to_str())
                .map(|s| s.replace('_', "-"))
            else {
                continue;
            };
            let wasm = match std::fs::read(&path) {
                Ok(wasm) => Bytes::from(wasm),
                Err(e) => {
                    warn!(path = %path.display(), cause = %e, "skipping unreadable plugin file");
                    continue;
                }
            };
            let sha256: [u8; 32] = Sha256::digest(&wasm).into();
            let result = match self.deployed(&name) {
                Ok(d) if d.record.current().is_some_and(|v| v.sha256 == sha256) => continue,
                Ok(_) => self.upgrade(&name, None, wasm).await,
                Err(_) => self.deploy(&name, None, wasm).await,
            };
            match result {
                Ok(info) => {
                    info!(plugin = %info.name, version = %info.version, path = %path.display(), "plugin loaded from the plugin dir")
                }
                Err(e) => {
                    warn!(path = %path.display(), cause = %e, "plugin in the plugin dir refused")
                }
            }
        }
        Ok(())
    }
}

/// A plugin's state key.
type StateKey = (String, Vec<u8>);

/// Plugin state written by calls whose records are not yet durable, in front of
/// storage.
#[derive(Debug)]
struct PendingState {
    storage: Storage,
    pending: Mutex<HashMap<StateKey, Option<Vec<u8>>>>,
}

impl PendingState {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<StateKey, Option<Vec<u8>>>> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn written(&self, writes: &[StateWrite]) {
        let mut pending = self.lock();
        for w in writes {
            pending.insert((w.plugin.clone(), w.key.clone()), w.value.clone());
        }
    }

    fn settled(&self, writes: &[StateWrite]) {
        let mut pending = self.lock();
        for w in writes {
            let key = (w.plugin.clone(), w.key.clone());
            // Unless a later call wrote the key since: its value is still pending.
            if pending.get(&key) == Some(&w.value) {
                pending.remove(&key);
            }
        }
    }
}

impl StateSource for PendingState {
    fn get(&self, plugin: &str, key: &[u8]) -> Result<Option<Vec<u8>>, String> {
        if let Some(value) = self.lock().get(&(plugin.to_owned(), key.to_vec())) {
            return Ok(value.clone());
        }
        self.storage
            .state_get(plugin, key)
            .map_err(|e| e.to_string())
    }
}
