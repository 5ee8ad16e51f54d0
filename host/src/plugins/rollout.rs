//! Rollouts: new code of a plugin (the candidate) tried on live traffic wherever the
//! plugin runs, until it is promoted (made the live version, as an upgrade is) or
//! rolled back (dropped). Two kinds:
//!
//! - a **shadow** runs beside the live version on the same batches, its outcomes
//!   compared with the live ones and discarded;
//! - a **canary** takes a share of the records, chosen by key ([`Candidate::takes`]),
//!   so that one key stays with one version; its outcomes count like the live version's.
//!
//! Invariants worth naming:
//! - a shadow never changes what is stored: its outcomes are counted and dropped, and
//!   its state writes are kept apart, in memory ([`ShadowState`]): it reads what it
//!   wrote itself, else the live state as it was before the batch; its failures are
//!   counted, never quarantine the stage and never fail the batch;
//! - a candidate runs on the stage's thread with an instance of its own per
//!   attachment and the attachment's sandbox;
//! - a rollout lives in memory: a restart ends it (the live version goes on).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use quiver_protocol::{DiffSample, PluginDiff};
use sha2::{Digest, Sha256};
use tracing::{info, warn};

use super::runtime::Compiled;
use super::{
    AdminError, Deployed, InputEvent, Outcome, PluginError, Plugins, StateSource, read, write,
};
use crate::storage::PluginRecord;

/// Differing records kept as samples.
const SAMPLES: usize = 5;
/// The longest payload a sample keeps.
const SAMPLE_PAYLOAD: usize = 256;
/// The longest description of a replacement in a sample.
const SAMPLE_TEXT: usize = 300;
/// The most a shadow's own state may hold, in bytes of keys and values; its writes
/// beyond are dropped (and said once in the log).
const SHADOW_STATE_BYTES: usize = 64 << 20;

/// New code tried beside a plugin's live version.
pub struct Candidate {
    /// Its version label.
    pub version: Arc<str>,
    /// Its component, kept to promote it.
    wasm: Bytes,
    /// Its compiled code.
    pub compiled: Compiled,
    /// Tells its instances from those of a candidate before it.
    pub generation: u64,
    /// A canary's share of the records, in percent; `None` for a shadow.
    pub canary_percent: Option<u8>,
    /// What a shadow's calls read their state from: what it wrote itself, then the
    /// live state; a canary reads and writes the live state.
    state: Arc<dyn StateSource>,
    /// A shadow's own state (none for a canary).
    own_state: Option<Arc<ShadowState>>,
    /// Records without a key a canary was asked about.
    keyless: AtomicU64,
    figures: Mutex<Figures>,
}

/// A shadow's own state: what its calls wrote, read before the live state and never
/// stored, so that a shadow that keeps state decides from its own history.
struct ShadowState {
    live: Arc<dyn StateSource>,
    written: Mutex<Written>,
}

#[derive(Default)]
struct Written {
    values: HashMap<Vec<u8>, Option<Vec<u8>>>,
    bytes: usize,
    full: bool,
}

impl StateSource for ShadowState {
    fn get(&self, plugin: &str, key: &[u8]) -> Result<Option<Vec<u8>>, String> {
        let written = self.written.lock().unwrap_or_else(PoisonError::into_inner);
        match written.values.get(key) {
            Some(value) => Ok(value.clone()),
            None => {
                drop(written);
                self.live.get(plugin, key)
            }
        }
    }
}

impl ShadowState {
    /// Keeps what a call wrote, up to [`SHADOW_STATE_BYTES`].
    fn keep(&self, plugin: &str, writes: Vec<(Vec<u8>, Option<Vec<u8>>)>) {
        let mut written = self.written.lock().unwrap_or_else(PoisonError::into_inner);
        for (key, value) in writes {
            let size = key.len() + value.as_ref().map_or(0, Vec::len);
            if !written.values.contains_key(&key) && written.bytes + size > SHADOW_STATE_BYTES {
                if !written.full {
                    written.full = true;
                    warn!(
                        plugin,
                        "a shadow's own state passed {SHADOW_STATE_BYTES} bytes: its new keys \
                         are dropped, and read from the live state"
                    );
                }
                continue;
            }
            written.bytes += size;
            written.values.insert(key, value);
        }
    }
}

impl std::fmt::Debug for Candidate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Candidate")
            .field("version", &self.version)
            .field("generation", &self.generation)
            .field("canary_percent", &self.canary_percent)
            .finish_non_exhaustive()
    }
}

/// What the candidate and the live version did so far.
#[derive(Debug, Default)]
struct Figures {
    started_ms: u64,
    batches: u64,
    records: u64,
    differing: u64,
    kinds: BTreeMap<(&'static str, &'static str), u64>,
    samples: Vec<DiffSample>,
    live_micros: u64,
    candidate_micros: u64,
    candidate_errors: u64,
    last_error: Option<String>,
}

impl Candidate {
    /// Whether this canary takes `event`: by its key, so that one key stays with one
    /// version (FNV-1a modulo 100, the same on every broker and run); records without
    /// a key in turn, spread over each hundred of them (a record's offset would not
    /// do: on ingress it is its place in its publish, 0 for every one-record publish).
    pub fn takes(&self, percent: u8, event: &InputEvent<'_>) -> bool {
        let spot = match &event.record.key {
            Some(key) => {
                let hash = key.iter().fold(0xcbf2_9ce4_8422_2325_u64, |hash, &byte| {
                    (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
                });
                hash % 100
            }
            // 37 is prime to 100: each run of 100 keyless records visits every spot.
            None => {
                self.keyless
                    .fetch_add(1, Ordering::Relaxed)
                    .wrapping_mul(37)
                    % 100
            }
        };
        spot < u64::from(percent)
    }

    /// Where its calls read the plugin's state.
    pub fn state(&self) -> Arc<dyn StateSource> {
        Arc::clone(&self.state)
    }

    /// Keeps what a shadow's call wrote, for its later calls (a canary's writes are
    /// stored with its records instead).
    pub fn keep_shadow_state(&self, plugin: &str, writes: Vec<(Vec<u8>, Option<Vec<u8>>)>) {
        if let Some(own) = &self.own_state {
            own.keep(plugin, writes);
        }
    }

    /// Counts one call of a canary: the records it took, how long it took next to
    /// the live call of the same batch, and whether it failed.
    pub fn record_canary(
        &self,
        records: usize,
        live_micros: u64,
        (result, micros): (Result<(), &PluginError>, u64),
    ) {
        let mut figures = self.figures.lock().unwrap_or_else(PoisonError::into_inner);
        figures.batches += 1;
        figures.records += records as u64;
        figures.live_micros = figures.live_micros.saturating_add(live_micros);
        figures.candidate_micros = figures.candidate_micros.saturating_add(micros);
        if let Err(e) = result {
            figures.candidate_errors += 1;
            figures.last_error = Some(e.to_string());
        }
    }

    /// Counts one batch a shadow and the live version both ran: the live outcomes and
    /// what the shadow made of the same events, with each call's time.
    pub fn record_shadow(
        &self,
        target: &str,
        events: &[InputEvent<'_>],
        live: (&[Outcome], u64),
        shadow: (Result<Vec<Outcome>, PluginError>, u64),
    ) {
        let mut figures = self.figures.lock().unwrap_or_else(PoisonError::into_inner);
        figures.batches += 1;
        figures.live_micros = figures.live_micros.saturating_add(live.1);
        figures.candidate_micros = figures.candidate_micros.saturating_add(shadow.1);
        let outcomes = match shadow.0 {
            Ok(outcomes) => outcomes,
            Err(e) => {
                figures.candidate_errors += 1;
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
                    candidate: describe(shadow),
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
            candidate: self.version.to_string(),
            canary_percent: self.canary_percent,
            started_ms: figures.started_ms,
            batches: figures.batches,
            records: figures.records,
            differing: figures.differing,
            kinds,
            samples: figures.samples.clone(),
            live_micros: figures.live_micros,
            candidate_micros: figures.candidate_micros,
            candidate_errors: figures.candidate_errors,
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

/// An outcome in words, for a sample: a replacement by its first record's headers
/// and size.
fn describe(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Replace(records) => {
            let first = records.first().map_or_else(String::new, |record| {
                let headers: Vec<String> = record
                    .headers
                    .iter()
                    .map(|h| format!("{}={}", h.name, String::from_utf8_lossy(&h.value)))
                    .collect();
                let mut first = format!(
                    "; the first: headers [{}], {} payload bytes",
                    headers.join(", "),
                    record.payload.len()
                );
                if first.len() > SAMPLE_TEXT {
                    let mut end = SAMPLE_TEXT;
                    while !first.is_char_boundary(end) {
                        end -= 1;
                    }
                    first.truncate(end);
                    first.push('…');
                }
                first
            });
            format!("replace with {} record(s){first}", records.len())
        }
        Outcome::Route(topics) => format!("route to {}", topics.join(", ")),
        Outcome::Reject(reason) => format!("reject: {reason}"),
        other => kind(other).to_owned(),
    }
}

impl Plugins {
    /// Starts trying `wasm` beside `name`'s live version (replacing a rollout there
    /// was): as a shadow, or as a canary of `canary_percent` of the records. Compiled
    /// and checked as an upgrade is; stored only if promoted.
    pub async fn roll_out(
        &self,
        name: &str,
        version: Option<String>,
        wasm: Bytes,
        canary_percent: Option<u8>,
    ) -> Result<PluginDiff, AdminError> {
        if let Some(percent) = canary_percent
            && !(1..=99).contains(&percent)
        {
            return Err(AdminError::InvalidArgument(format!(
                "a canary takes 1 to 99 percent of the records, not {percent} (100: \
                 promote it, or upgrade)"
            )));
        }
        let _admin = self.admin.lock().await;
        let deployed = self.found(name)?;
        let version = next_version(&deployed.record, version)?;
        let sha256: [u8; 32] = Sha256::digest(&wasm).into();
        let compiled = self.compile(name, wasm.clone(), sha256).await?;
        let own_state = canary_percent.is_none().then(|| {
            Arc::new(ShadowState {
                live: self.state_source(),
                written: Mutex::default(),
            })
        });
        let state = match &own_state {
            Some(own) => Arc::clone(own) as Arc<dyn StateSource>,
            None => self.state_source(),
        };
        let candidate = Arc::new(Candidate {
            version: version.as_str().into(),
            wasm,
            compiled,
            generation: self.next_generation(),
            canary_percent,
            state,
            own_state,
            keyless: AtomicU64::new(0),
            figures: Mutex::new(Figures {
                started_ms: crate::util::now_ms(),
                ..Figures::default()
            }),
        });
        let deployed = self.replace_candidate(&deployed, Some(Arc::clone(&candidate)));
        info!(plugin = name, live = %deployed.version, candidate = %version, ?canary_percent, "rollout started");
        Ok(candidate.diff(name, &deployed.version))
    }

    /// How `name`'s rollout has gone so far.
    pub fn diff(&self, name: &str) -> Result<PluginDiff, AdminError> {
        let deployed = self.found(name)?;
        Ok(running(&deployed)?.diff(name, &deployed.version))
    }

    /// Makes the candidate's code `name`'s live version, stored as an upgrade is
    /// (every batch after runs it wholly, none before does); returns the last diff.
    pub async fn promote(&self, name: &str) -> Result<PluginDiff, AdminError> {
        let _admin = self.admin.lock().await;
        let deployed = self.found(name)?;
        let candidate = Arc::clone(running(&deployed)?);
        let diff = candidate.diff(name, &deployed.version);
        self.store_version(
            deployed.record.clone(),
            Some(candidate.version.to_string()),
            candidate.wasm.clone(),
        )
        .await?;
        self.lift_quarantine(name)?;
        info!(plugin = name, version = %candidate.version, "rollout promoted");
        Ok(diff)
    }

    /// Ends `name`'s rollout; the live version goes on. Returns the last diff.
    pub async fn rollback(&self, name: &str) -> Result<PluginDiff, AdminError> {
        let _admin = self.admin.lock().await;
        let deployed = self.found(name)?;
        let diff = running(&deployed)?.diff(name, &deployed.version);
        self.replace_candidate(&deployed, None);
        info!(plugin = name, candidate = %diff.candidate, "rollout rolled back");
        Ok(diff)
    }

    /// Installs `deployed` with another candidate, keeping its generation: the live
    /// instances go on as they are.
    fn replace_candidate(
        &self,
        deployed: &Deployed,
        candidate: Option<Arc<Candidate>>,
    ) -> Arc<Deployed> {
        let replaced = Arc::new(Deployed {
            record: deployed.record.clone(),
            version: Arc::clone(&deployed.version),
            compiled: deployed.compiled.clone(),
            generation: deployed.generation,
            candidate,
        });
        let mut registry = write(&self.registry);
        registry.insert(deployed.record.name.clone(), Arc::clone(&replaced));
        replaced
    }

    /// The candidate of `name`'s rollout, if one runs.
    pub fn candidate_of(&self, name: &str) -> Option<Arc<Candidate>> {
        read(&self.registry).get(name)?.candidate.clone()
    }
}

/// The candidate of the rollout beside `deployed`, or why there is none.
fn running(deployed: &Deployed) -> Result<&Arc<Candidate>, AdminError> {
    deployed.candidate.as_ref().ok_or_else(|| {
        let name = &deployed.record.name;
        AdminError::InvalidArgument(format!(
            "plugin `{name}` has no rollout running (start one with `quiver plugin \
             upgrade {name} FILE --shadow` or `--canary PERCENT`)"
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
