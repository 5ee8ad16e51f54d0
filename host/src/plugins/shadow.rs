//! Shadow rollouts: new code of a plugin run beside the live version on the same
//! batches, wherever the plugin runs, its outcomes compared with the live ones and
//! discarded, until it is promoted (made the live version, as an upgrade is) or rolled
//! back (dropped).
//!
//! Invariants worth naming:
//! - the shadow never changes what is stored: its outcomes are counted and dropped,
//!   and its state writes are never applied (it reads the live version's state, as it
//!   was before the batch, so both decide from the same state);
//! - the shadow runs after the live call of the same batch, on the same thread, with
//!   an instance of its own per attachment and the attachment's sandbox; its failures
//!   are counted, never quarantine the stage and never fail the batch;
//! - a shadow lives in memory: a restart ends it (the live version goes on).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use quiver_protocol::{DiffSample, PluginDiff};
use sha2::{Digest, Sha256};
use tracing::info;

use super::runtime::Compiled;
use super::{AdminError, Deployed, InputEvent, Outcome, PluginError, Plugins, read, write};
use crate::storage::PluginRecord;

/// Differing records kept as samples.
const SAMPLES: usize = 5;
/// The longest payload a sample keeps.
const SAMPLE_PAYLOAD: usize = 256;

/// New code run beside a plugin's live version.
#[derive(Debug)]
pub struct Shadow {
    /// Its version label.
    pub version: Arc<str>,
    /// Its component, kept to promote it.
    wasm: Bytes,
    /// Its compiled code.
    pub compiled: Compiled,
    /// Tells its instances from those of a shadow before it.
    pub generation: u64,
    figures: Mutex<Figures>,
}

/// What the shadow and the live version decided so far.
#[derive(Debug, Default)]
struct Figures {
    started_ms: u64,
    batches: u64,
    records: u64,
    differing: u64,
    kinds: BTreeMap<(&'static str, &'static str), u64>,
    samples: Vec<DiffSample>,
    live_micros: u64,
    shadow_micros: u64,
    shadow_errors: u64,
    last_error: Option<String>,
}

impl Shadow {
    /// Counts one batch both ran: the live outcomes and what the shadow made of the
    /// same events, with each call's time.
    pub fn record(
        &self,
        target: &str,
        events: &[InputEvent<'_>],
        live: (&[Outcome], u64),
        shadow: (Result<Vec<Outcome>, PluginError>, u64),
    ) {
        let mut figures = self.figures.lock().unwrap_or_else(PoisonError::into_inner);
        figures.batches += 1;
        figures.live_micros = figures.live_micros.saturating_add(live.1);
        figures.shadow_micros = figures.shadow_micros.saturating_add(shadow.1);
        let outcomes = match shadow.0 {
            Ok(outcomes) => outcomes,
            Err(e) => {
                figures.shadow_errors += 1;
                figures.last_error = Some(e.to_string());
                return;
            }
        };
        for ((event, live), shadow) in events.iter().zip(live.0).zip(&outcomes) {
            figures.records += 1;
            if live == shadow {
                continue;
            }
            figures.differing += 1;
            *figures.kinds.entry((kind(live), kind(shadow))).or_default() += 1;
            if figures.samples.len() < SAMPLES {
                let payload = &event.record.payload;
                figures.samples.push(DiffSample {
                    target: target.to_owned(),
                    offset: event.offset,
                    key: event.record.key.clone(),
                    payload: payload.slice(..payload.len().min(SAMPLE_PAYLOAD)),
                    live: describe(live),
                    shadow: describe(shadow),
                });
            }
        }
    }

    fn diff(&self, name: &str, live: &str) -> PluginDiff {
        let figures = self.figures.lock().unwrap_or_else(PoisonError::into_inner);
        let mut kinds: Vec<(String, String, u64)> = figures
            .kinds
            .iter()
            .map(|(&(live, shadow), &n)| (live.to_owned(), shadow.to_owned(), n))
            .collect();
        kinds.sort_by_key(|kind| std::cmp::Reverse(kind.2));
        PluginDiff {
            name: name.to_owned(),
            live: live.to_owned(),
            shadow: self.version.to_string(),
            started_ms: figures.started_ms,
            batches: figures.batches,
            records: figures.records,
            differing: figures.differing,
            kinds,
            samples: figures.samples.clone(),
            live_micros: figures.live_micros,
            shadow_micros: figures.shadow_micros,
            shadow_errors: figures.shadow_errors,
            last_error: figures.last_error.clone(),
        }
    }
}

/// An outcome's kind, as `plugin diff` counts them.
fn kind(outcome: &Outcome) -> &'static str {
    match outcome {
        Outcome::Keep => "keep",
        Outcome::Drop => "drop",
        Outcome::Replace(_) => "replace",
        Outcome::Route(_) => "route",
        Outcome::Reject(_) => "reject",
    }
}

/// An outcome in words, for a sample.
fn describe(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Replace(records) => {
            let headers: usize = records.iter().map(|r| r.headers.len()).sum();
            format!(
                "replace with {} record(s), {} header(s), {} payload bytes",
                records.len(),
                headers,
                records.iter().map(|r| r.payload.len()).sum::<usize>()
            )
        }
        Outcome::Route(topics) => format!("route to {}", topics.join(", ")),
        Outcome::Reject(reason) => format!("reject: {reason}"),
        other => kind(other).to_owned(),
    }
}

impl Plugins {
    /// Starts running `wasm` beside `name`'s live version (replacing a shadow there
    /// was): compiled and checked like an upgrade, stored only if promoted.
    pub async fn shadow(
        &self,
        name: &str,
        version: Option<String>,
        wasm: Bytes,
    ) -> Result<PluginDiff, AdminError> {
        let _admin = self.admin.lock().await;
        let deployed = self.found(name)?;
        let version = next_version(&deployed.record, version)?;
        let sha256: [u8; 32] = Sha256::digest(&wasm).into();
        let compiled = self.compile(name, wasm.clone(), sha256).await?;
        let shadow = Arc::new(Shadow {
            version: version.as_str().into(),
            wasm,
            compiled,
            generation: self.next_generation(),
            figures: Mutex::new(Figures {
                started_ms: crate::util::now_ms(),
                ..Figures::default()
            }),
        });
        let deployed = self.replace_shadow(&deployed, Some(Arc::clone(&shadow)));
        info!(plugin = name, live = %deployed.version, shadow = %version, "shadow started");
        Ok(shadow.diff(name, &deployed.version))
    }

    /// How `name`'s shadow has decided so far.
    pub fn diff(&self, name: &str) -> Result<PluginDiff, AdminError> {
        let deployed = self.found(name)?;
        let shadow = running(&deployed)?;
        Ok(shadow.diff(name, &deployed.version))
    }

    /// Makes the shadow's code `name`'s live version, stored as an upgrade is (every
    /// batch after runs it wholly, none before does); returns the last diff.
    pub async fn promote(&self, name: &str) -> Result<PluginDiff, AdminError> {
        let _admin = self.admin.lock().await;
        let deployed = self.found(name)?;
        let shadow = Arc::clone(running(&deployed)?);
        let diff = shadow.diff(name, &deployed.version);
        self.store_version(
            deployed.record.clone(),
            Some(shadow.version.to_string()),
            shadow.wasm.clone(),
        )
        .await?;
        self.lift_quarantine(name)?;
        info!(plugin = name, version = %shadow.version, "shadow promoted");
        Ok(diff)
    }

    /// Ends `name`'s shadow; the live version goes on. Returns the last diff.
    pub async fn rollback(&self, name: &str) -> Result<PluginDiff, AdminError> {
        let _admin = self.admin.lock().await;
        let deployed = self.found(name)?;
        let diff = running(&deployed)?.diff(name, &deployed.version);
        self.replace_shadow(&deployed, None);
        info!(plugin = name, shadow = %diff.shadow, "shadow rolled back");
        Ok(diff)
    }

    /// Installs `deployed` with another shadow, keeping its generation: the live
    /// instances go on as they are.
    fn replace_shadow(&self, deployed: &Deployed, shadow: Option<Arc<Shadow>>) -> Arc<Deployed> {
        let replaced = Arc::new(Deployed {
            record: deployed.record.clone(),
            version: Arc::clone(&deployed.version),
            compiled: deployed.compiled.clone(),
            generation: deployed.generation,
            shadow,
        });
        let mut registry = write(&self.registry);
        registry.insert(deployed.record.name.clone(), Arc::clone(&replaced));
        replaced
    }

    /// The shadow of `name`, if one runs.
    pub fn shadow_of(&self, name: &str) -> Option<Arc<Shadow>> {
        read(&self.registry).get(name)?.shadow.clone()
    }
}

/// The shadow running beside `deployed`, or why there is none.
fn running(deployed: &Deployed) -> Result<&Arc<Shadow>, AdminError> {
    deployed.shadow.as_ref().ok_or_else(|| {
        AdminError::InvalidArgument(format!(
            "plugin `{}` runs no shadow (start one with `quiver plugin upgrade {} FILE \
             --shadow`)",
            deployed.record.name, deployed.record.name
        ))
    })
}

/// The label a new version of `record` gets: `version` if free, else the next number.
pub(super) fn next_version(
    record: &PluginRecord,
    version: Option<String>,
) -> Result<String, AdminError> {
    let name = &record.name;
    match version {
        Some(v) if record.versions.iter().any(|old| old.version == v) => Err(
            AdminError::InvalidArgument(format!("plugin `{name}` already has a version `{v}`")),
        ),
        Some(v) if v.is_empty() || v.len() > 64 => Err(AdminError::InvalidArgument(
            "a version label is 1 to 64 characters".into(),
        )),
        Some(v) => Ok(v),
        None => Ok((record.versions.len() + 1..)
            .map(|n| n.to_string())
            .find(|n| record.versions.iter().all(|old| old.version != *n))
            .unwrap_or_default()),
    }
}
