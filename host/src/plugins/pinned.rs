//! Running a topic's pipeline with one of its plugins at another of its deployed
//! versions: how dead letters are re-driven through a fixed (or an earlier) version
//! while the live version keeps serving every other publish.
//!
//! A pinned stage is a [`StageRunner`] of its own, with the attachment's parameters and
//! limits and the version's code; it is kept for the next publishes through the same
//! version (a re-drive sends one publish per dead letter), two at most.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};

use super::stage::StageRunner;
use super::{AdminError, Deployed, Plugins};
use crate::storage::PluginRecord;

/// Pinned stages kept for the publishes that follow: few, as each may hold an
/// instance (up to about 90 MiB for a JavaScript one).
const KEPT: usize = 2;

/// The pinned stages made lately, newest last.
#[derive(Debug, Default)]
pub(super) struct PinnedStages(Mutex<VecDeque<Arc<StageRunner>>>);

impl PinnedStages {
    fn find(&self, like: &StageRunner, sha256: &[u8; 32]) -> Option<Arc<StageRunner>> {
        self.lock()
            .iter()
            .find(|r| {
                r.target == like.target
                    && r.stage == like.stage
                    && r.limits == like.limits
                    && r.pinned_sha256() == Some(sha256)
            })
            .cloned()
    }

    fn keep(&self, runner: Arc<StageRunner>) {
        let mut kept = self.lock();
        if kept.len() == KEPT {
            kept.pop_front();
        }
        kept.push_back(runner);
    }

    /// Forgets the pinned stages of a removed plugin.
    pub(super) fn forget(&self, plugin: &str) {
        self.lock().retain(|r| r.plugin() != plugin);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Arc<StageRunner>>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Plugins {
    /// `stages`, the ingress stages of `topic`, with `plugin`'s stage running its
    /// deployed `version` (the same stages when that is the version running).
    pub async fn pin(
        &self,
        topic: &str,
        stages: Option<Arc<[Arc<StageRunner>]>>,
        plugin: &str,
        version: &str,
    ) -> Result<Arc<[Arc<StageRunner>]>, AdminError> {
        let not_attached = || {
            AdminError::InvalidArgument(format!(
                "plugin `{plugin}` is not on the ingress pipeline of topic `{topic}`"
            ))
        };
        let stages = stages.ok_or_else(not_attached)?;
        let index = stages
            .iter()
            .position(|s| s.plugin() == plugin)
            .ok_or_else(not_attached)?;
        let deployed = self.found(plugin)?;
        let record = &deployed.record;
        let Some(at) = record.versions.iter().position(|v| v.version == version) else {
            let known: Vec<&str> = record.versions.iter().map(|v| v.version.as_str()).collect();
            return Err(AdminError::InvalidArgument(format!(
                "plugin `{plugin}` has no version `{version}` (its versions: {})",
                known.join(", ")
            )));
        };
        let sha256 = record.versions[at].sha256;
        if record.current().is_some_and(|live| live.sha256 == sha256) {
            return Ok(stages);
        }
        let live = &stages[index];
        let runner = match self.pinned.find(live, &sha256) {
            Some(runner) => runner,
            None => {
                let wasm = self.storage.plugin_wasm(&sha256)?.ok_or_else(|| {
                    AdminError::InvalidArgument(format!(
                        "the component of plugin `{plugin}` version `{version}` is missing \
                         from storage"
                    ))
                })?;
                let compiled = self.compile(plugin, wasm, sha256).await?;
                // The record as it was when that version ran: it is the current one.
                let record = PluginRecord {
                    name: record.name.clone(),
                    versions: record.versions[..=at].to_vec(),
                };
                let pinned = Arc::new(Deployed {
                    record,
                    version: version.into(),
                    compiled: Ok(compiled),
                    generation: self.next_generation(),
                    candidate: None,
                });
                let runner = Arc::new(StageRunner::pinned(live, pinned));
                self.pinned.keep(Arc::clone(&runner));
                runner
            }
        };
        let mut stages = stages.to_vec();
        stages[index] = runner;
        Ok(stages.into())
    }
}
