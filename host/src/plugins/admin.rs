//! Plugin administration: deploying (validate, compile, store), upgrading in place,
//! removing, listing and describing plugins, attaching and detaching them on topics,
//! and loading a plugin dir at start-up.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError, Weak};

use bytes::Bytes;
use quiver_protocol::{PluginInfo, PluginStatus, SandboxInfo, Stage, TopicName};
use sha2::{Digest, Sha256};
use tracing::{info, warn};

use super::runtime::Compiled;
use super::stage::{CallTimes, StageRunner};
use super::{AdminError, Deployed, PluginError, Plugins, read, write};
use crate::storage::{AttachedStage, PluginRecord, PluginVersion, TopicLog};
use crate::util::{hex, now_ms};

impl Plugins {
    pub(super) fn install(
        &self,
        record: PluginRecord,
        compiled: Result<Compiled, PluginError>,
    ) -> Arc<Deployed> {
        let version: Arc<str> = record.current().map_or("", |v| v.version.as_str()).into();
        let deployed = Arc::new(Deployed {
            record,
            version,
            compiled,
            generation: self.next_generation(),
            candidate: None,
        });
        write(&self.registry).insert(deployed.record.name.clone(), Arc::clone(&deployed));
        deployed
    }

    /// The deployed plugin called `name`, for an admin request about it.
    pub(super) fn found(&self, name: &str) -> Result<Arc<Deployed>, AdminError> {
        self.deployed(name)
            .map_err(|_| AdminError::NotFound(name.to_owned()))
    }

    /// A generation number no deployed code has had.
    pub(super) fn next_generation(&self) -> u64 {
        self.generations.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Compiles `wasm` off the async workers.
    pub(super) async fn compile(
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
        // A plugin removed under this name may have left state to purge (a restart
        // cut its purge short): the new plugin starts with none.
        self.storage.purge_all_state(name).await?;
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
        let record = self.found(name)?.record.clone();
        let info = self.store_version(record, version, wasm).await?;
        // New code is the fix a quarantine waits for: its next call runs.
        self.lift_quarantine(name)?;
        Ok(info)
    }

    /// Ends the plugin's quarantine on every attachment: the next call runs.
    pub fn lift_quarantine(&self, name: &str) -> Result<PluginStatus, AdminError> {
        let lifted = self
            .attachments(name)?
            .iter()
            .filter(|runner| runner.lift_quarantine())
            .count();
        if lifted > 0 {
            info!(plugin = name, attachments = lifted, "quarantine lifted");
        }
        self.status(name)
    }

    pub(super) async fn store_version(
        &self,
        mut record: PluginRecord,
        version: Option<String>,
        wasm: Bytes,
    ) -> Result<PluginInfo, AdminError> {
        let name = record.name.clone();
        let version = super::rollout::next_version(&record, version)?;
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
        self.found(name)?;
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
        self.pinned.forget(name);
        // Its state goes in bounded steps, other writes going on between them. Should
        // a step fail, the marker the removal wrote has the retention task (or the next
        // deploy under this name) finish it.
        match self.storage.purge_all_state(name).await {
            Ok(keys) => info!(plugin = name, state_keys = keys, "plugin removed"),
            Err(e) => warn!(
                plugin = name,
                cause = %e,
                "plugin removed; purging its state failed, to be retried"
            ),
        }
        Ok(())
    }

    /// Every deployed plugin, by name.
    pub fn list(&self) -> Vec<PluginInfo> {
        let deployed: Vec<_> = read(&self.registry).values().cloned().collect();
        deployed.iter().map(|d| self.info(d)).collect()
    }

    /// A plugin and the figures of each of its attachments.
    pub fn status(&self, name: &str) -> Result<PluginStatus, AdminError> {
        let deployed = self.found(name)?;
        Ok(PluginStatus {
            info: self.info(&deployed),
            attachments: self.attachments(name)?.iter().map(|r| r.status()).collect(),
        })
    }

    /// The sandbox of each of a plugin's attachments, in the order of [`Self::status`].
    pub fn sandboxes(&self, name: &str) -> Result<Vec<SandboxInfo>, AdminError> {
        Ok(self
            .attachments(name)?
            .iter()
            .map(|r| r.sandbox(self))
            .collect())
    }

    /// Each attachment's call times, in `/metrics`' buckets, by target.
    pub fn call_times(&self, name: &str) -> Result<Vec<(String, CallTimes)>, AdminError> {
        Ok(self
            .attachments(name)?
            .iter()
            .map(|r| (r.target.clone(), r.call_times()))
            .collect())
    }

    /// Where a plugin runs: topic stages by topic, then live subscriptions' stages.
    fn attachments(&self, name: &str) -> Result<Vec<Arc<StageRunner>>, AdminError> {
        self.found(name)?;
        let mut attachments: Vec<_> = read(&self.topics)
            .values()
            .flat_map(|t| t.stages.iter().filter(|s| s.plugin() == name).cloned())
            .collect();
        attachments.sort_by(|a, b| a.target.cmp(&b.target));
        attachments.extend(
            self.live_subscription_runners()
                .into_iter()
                .filter(|r| r.plugin() == name),
        );
        Ok(attachments)
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
    pub(super) fn check_stages(&self, stages: &[Stage]) -> Result<(), AdminError> {
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
        stages: Vec<AttachedStage>,
    ) -> Result<(), AdminError> {
        let plain: Vec<Stage> = stages.iter().map(|a| a.stage.clone()).collect();
        self.check_stages(&plain)?;
        // Only what is new is held to the maxima: a stage attached before they were
        // lowered runs at the maximum, and must not stop its topic's next edit.
        let before = log.pipeline();
        for attached in stages.iter().filter(|a| !before.contains(a)) {
            self.sandbox
                .check(attached.limits)
                .map_err(AdminError::InvalidArgument)?;
        }
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
        edit: impl FnOnce(Vec<AttachedStage>) -> Result<Vec<AttachedStage>, AdminError>,
    ) -> Result<(), AdminError> {
        let _admin = self.admin.lock().await;
        let stages = edit(log.pipeline())?;
        self.set_topic_pipeline(log, stages).await
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
