//! WebAssembly plugins: the registry of deployed plugins, the stages attached to topics
//! and subscriptions, and running records through them.
//!
//! - `runtime`: wasmtime (the only module importing it): compile, cache, sandbox, call;
//! - `sandbox`: a component's language, and the memory and time each attachment gets;
//! - `stage`: one attachment: its instance, figures and quarantine;
//! - `pipeline`: sorting records by the stages' outcomes;
//! - `executor`: the threads calls run on; `order`: the order a plugin's calls run in;
//! - `admin`: deploying, upgrading, removing and attaching plugins;
//! - `pinned`: a topic's pipeline with one plugin at another of its versions;
//! - `rollout`: new code tried beside the live version (a shadow or a canary),
//!   promoted or dropped;
//! - `state`: plugin state written and not yet committed, in front of storage;
//! - this module: [`Plugins`], which the broker asks to deploy, upgrade, remove, attach
//!   and run plugins, and the stages of each topic.
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

mod admin;
mod executor;
mod order;
mod pinned;
pub mod pipeline;
pub mod rollout;
pub mod runtime;
pub mod sandbox;
pub mod stage;
mod state;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};
use std::time::Duration;

use quiver_protocol::{NewRecord, Stage, StageLimits, TopicName};
use tracing::{error, info};

use crate::storage::{AttachedStage, PluginRecord, StateWrite, Storage, StorageError, TopicLog};
use executor::Executor;
use pipeline::{Item, Refused, Sorted};
use runtime::{Compiled, Runtime, SandboxLimits};
use sandbox::SandboxPolicy;
use stage::{QuarantinePolicy, StageRunner};
use state::PendingState;

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
    #[error("exceeded its memory limit of {}", bytesize::ByteSize(*limit as u64).display().iec())]
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
    /// A canary rollout's new code failed on its share of a batch (the live version's
    /// instance is not at fault).
    #[error("canary version {version}: {cause}")]
    Canary {
        /// The canary's version.
        version: String,
        /// What went wrong.
        cause: Box<PluginError>,
    },
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
    /// What any call's output may be.
    pub limits: SandboxLimits,
    /// The memory and time each attachment gets.
    pub sandbox: SandboxPolicy,
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
    /// New code being rolled out beside it (a shadow or a canary).
    pub candidate: Option<Arc<rollout::Candidate>>,
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
    sandbox: SandboxPolicy,
    generations: AtomicU64,
    /// Serializes deploy, upgrade, remove, attach and detach.
    admin: tokio::sync::Mutex<()>,
    /// Stages pinned to another version than the one running, lately used.
    pinned: pinned::PinnedStages,
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
            sandbox: settings.sandbox,
            generations: AtomicU64::new(0),
            admin: tokio::sync::Mutex::new(()),
            pinned: pinned::PinnedStages::default(),
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

    /// The memory and time each attachment gets.
    pub fn sandbox_policy(&self) -> &SandboxPolicy {
        &self.sandbox
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

    fn build_topic_stages(&self, log: &TopicLog, stages: Vec<AttachedStage>) {
        let mut topics = write(&self.topics);
        if stages.is_empty() {
            topics.remove(&log.id());
            return;
        }
        let old = topics.remove(&log.id());
        let runners: Vec<Arc<StageRunner>> = stages
            .into_iter()
            .map(|AttachedStage { stage, limits }| {
                old.as_ref()
                    .and_then(|o| {
                        o.stages
                            .iter()
                            .find(|r| r.stage == stage && r.limits == limits)
                            .cloned()
                    })
                    .unwrap_or_else(|| {
                        let target = format!("topic {}", log.name());
                        Arc::new(StageRunner::new(stage, limits, target))
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
            .map(|stage| {
                let target = format!("subscription {pattern}");
                Arc::new(StageRunner::new(stage, StageLimits::default(), target))
            })
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
}
