//! One attachment of a plugin (a topic's ingress stage or a subscription's stage): its
//! instance, its figures, and its quarantine.
//!
//! Invariants worth naming:
//! - a call holds the stage's instance lock from start to end, and an upgrade takes
//!   effect only when a call finds a newer generation before it starts, so each batch
//!   is processed wholly by one version;
//! - an instance that trapped, ran out of time or memory, or returned invalid output is
//!   dropped; the next call gets a fresh one;
//! - a rollout's candidate (`rollout.rs`) has an instance of its own: a shadow runs
//!   after the live call and changes nothing it returns; a canary takes its records
//!   out of the live call and its outcomes go back in their places.

use std::sync::{Arc, Mutex};

use hdrhistogram::Histogram;
use quiver_protocol::{AttachmentStatus, OnError, SandboxInfo, Stage, StageLimits};

use super::rollout::Candidate;
use super::runtime::{CallContext, CallOutput, Compiled, Instance};
use super::sandbox::Language;
use super::{Deployed, InputEvent, Outcome, PluginError, Plugins, StateSource};
use crate::util::lock;

/// When a failing stage is quarantined and for how long.
#[derive(Debug, Clone, Copy)]
pub struct QuarantinePolicy {
    /// Consecutive failed calls that quarantine a stage.
    pub after_failures: u32,
    /// How long a quarantine lasts before one trial call is let through.
    pub duration_ms: u64,
}

/// A stage's health: how many calls failed in a row, and whether it is quarantined.
///
/// Pure: time comes in as a parameter. Active until `after_failures` calls fail in a
/// row; then quarantined until `until_ms`; after that one trial call runs, and its
/// result either clears the quarantine or renews it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Quarantine {
    failures_in_a_row: u32,
    until_ms: Option<u64>,
}

impl Quarantine {
    /// Whether a call may run at `now_ms`.
    pub fn admits(&self, now_ms: u64) -> bool {
        self.until_ms.is_none_or(|until| now_ms >= until)
    }

    /// Until when the stage is quarantined, as of `now_ms`.
    pub fn quarantined_until(&self, now_ms: u64) -> Option<u64> {
        self.until_ms.filter(|&until| now_ms < until)
    }

    /// Records a call's result.
    pub fn record(&mut self, ok: bool, now_ms: u64, policy: QuarantinePolicy) {
        if ok {
            *self = Self::default();
            return;
        }
        self.failures_in_a_row = self.failures_in_a_row.saturating_add(1);
        if self.until_ms.is_some() || self.failures_in_a_row >= policy.after_failures {
            self.until_ms = Some(now_ms + policy.duration_ms);
        }
    }
}

/// The upper bounds of the call-time buckets `/metrics` shows, in µs: 10 µs to 1 s.
pub const CALL_TIME_BOUNDS_MICROS: &[u64] = &[
    10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000,
    1_000_000,
];

/// One attachment's call times, bucketed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallTimes {
    /// Calls per bucket (not cumulative), by upper bound in µs, the last `u64::MAX`.
    /// Counted by a histogram of three significant digits, so a call within 0.1 %
    /// of a bound may land on either side.
    pub buckets: Vec<(u64, u64)>,
    /// Calls.
    pub count: u64,
    /// Their times added up, in µs.
    pub sum_micros: u64,
}

/// The result of asking a stage to process a batch.
#[derive(Debug)]
pub enum StageRun {
    /// The plugin ran.
    Ran(CallOutput),
    /// The plugin failed; the batch goes to the dead-letter topic.
    Failed(PluginError),
    /// Quarantined, failing open: the batch passes unchanged.
    Skipped,
    /// Quarantined, failing closed: the batch is refused.
    Refused,
}

/// Counters and timings of one attachment.
#[derive(Debug)]
struct Figures {
    calls: u64,
    records_in: u64,
    records_out: u64,
    errors: u64,
    micros: Histogram<u64>,
    /// Every call's time added up, in µs.
    micros_sum: u64,
    last_error: Option<String>,
    version: String,
    quarantine: Quarantine,
    /// The language of the version that ran last.
    language: Option<Language>,
    /// The most linear memory any of its instances reached, in bytes.
    memory_peak: usize,
}

/// Code an instance is made from: its generation (which tells instances of other code
/// apart), version, compiled form, and where its state is read.
struct Code<'a> {
    generation: u64,
    version: &'a Arc<str>,
    compiled: &'a Compiled,
    state: Arc<dyn StateSource>,
}

struct Loaded {
    generation: u64,
    version: Arc<str>,
    language: Language,
    instance: Instance,
}

/// One plugin stage where it runs.
pub struct StageRunner {
    /// What was attached.
    pub stage: Stage,
    /// The sandbox it asked for.
    pub limits: StageLimits,
    /// Where it runs, for status: `topic NAME` or `subscription PATTERN`.
    pub target: String,
    params: Arc<[(String, String)]>,
    /// The code it runs when not the plugin's running version (see `pinned.rs`).
    pinned: Option<Arc<Deployed>>,
    loaded: Mutex<Option<Loaded>>,
    /// The instance of the candidate of the plugin's rollout, if one runs.
    candidate: Mutex<Option<Loaded>>,
    figures: Mutex<Figures>,
}

impl std::fmt::Debug for StageRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StageRunner")
            .field("stage", &self.stage)
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

/// The µs since `started`.
fn elapsed_micros(started: std::time::Instant) -> u64 {
    u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX)
}

impl StageRunner {
    /// A stage not yet run.
    pub fn new(stage: Stage, limits: StageLimits, target: String) -> Self {
        let params = stage.params.clone().into();
        Self {
            stage,
            limits,
            target,
            params,
            pinned: None,
            loaded: Mutex::new(None),
            candidate: Mutex::new(None),
            figures: Mutex::new(Figures {
                calls: 0,
                records_in: 0,
                records_out: 0,
                errors: 0,
                // Invariant: 1 µs to 1 hour at 3 significant digits are valid bounds.
                micros: Histogram::new_with_bounds(1, 3_600_000_000, 3)
                    .expect("valid histogram bounds"),
                micros_sum: 0,
                last_error: None,
                version: String::new(),
                quarantine: Quarantine::default(),
                language: None,
                memory_peak: 0,
            }),
        }
    }

    /// A stage like `live` running `deployed`'s code instead of the plugin's
    /// running version, with figures of its own.
    pub fn pinned(live: &StageRunner, deployed: Arc<Deployed>) -> Self {
        Self {
            pinned: Some(deployed),
            ..Self::new(live.stage.clone(), live.limits, live.target.clone())
        }
    }

    /// The sha256 of the code a pinned stage runs.
    pub fn pinned_sha256(&self) -> Option<&[u8; 32]> {
        let pinned = self.pinned.as_ref()?;
        pinned.record.current().map(|v| &v.sha256)
    }

    /// The plugin this stage runs.
    pub fn plugin(&self) -> &str {
        &self.stage.plugin
    }

    /// Processes one batch (blocking: run it off the async workers).
    pub fn run(&self, plugins: &Plugins, topic: &str, events: &[InputEvent<'_>]) -> StageRun {
        let now = crate::util::now_ms();
        if !lock(&self.figures).quarantine.admits(now) {
            return match self.stage.on_error {
                OnError::FailOpen => StageRun::Skipped,
                OnError::FailClosed => StageRun::Refused,
            };
        }
        // A pinned stage runs its own version, and no rollout.
        let candidate = match &self.pinned {
            None => plugins.candidate_of(&self.stage.plugin),
            Some(_) => None,
        };
        if candidate.is_none() {
            // A rollout that ended (promoted or rolled back) leaves no instance behind.
            lock(&self.candidate).take();
        }
        let started = std::time::Instant::now();
        let mut loaded = lock(&self.loaded);
        let result = match candidate.as_deref() {
            Some(
                canary @ Candidate {
                    canary_percent: Some(percent),
                    ..
                },
            ) => self.call_with_canary(plugins, &mut loaded, (canary, *percent), topic, events),
            _ => self.call(plugins, &mut loaded, topic, events),
        };
        let micros = elapsed_micros(started);
        let version = loaded.as_ref().map(|l| l.version.to_string());
        let language = loaded.as_ref().map(|l| l.language);
        let memory = loaded.as_ref().map_or(0, |l| l.instance.memory_peak());
        if let Err(e) = &result
            && e.poisons_instance()
        {
            *loaded = None;
        }
        drop(loaded);
        if let Ok(output) = &result
            && let Some(shadow) = candidate.filter(|c| c.canary_percent.is_none())
        {
            self.run_shadow(plugins, &shadow, topic, events, (&output.outcomes, micros));
        }

        let mut figures = lock(&self.figures);
        figures.calls += 1;
        figures.records_in += events.len() as u64;
        let _ = figures.micros.record(micros.max(1));
        figures.micros_sum = figures.micros_sum.saturating_add(micros);
        if let Some(version) = version {
            figures.version = version;
        }
        if language.is_some() {
            figures.language = language;
        }
        figures.memory_peak = figures.memory_peak.max(memory);
        let policy = plugins.quarantine_policy();
        match result {
            Ok(output) => {
                figures.records_out += output.outcomes.iter().map(|o| o.outputs()).sum::<u64>();
                figures.quarantine.record(true, now, policy);
                StageRun::Ran(output)
            }
            Err(e) => {
                figures.errors += 1;
                figures.last_error = Some(e.to_string());
                figures.quarantine.record(false, now, policy);
                if let Some(until) = figures.quarantine.quarantined_until(now) {
                    tracing::warn!(
                        plugin = %self.stage.plugin, target = %self.target, until,
                        cause = %e, "plugin quarantined"
                    );
                }
                StageRun::Failed(e)
            }
        }
    }

    /// Calls the plugin, (re)instantiating first if there is no instance or a newer
    /// version was deployed.
    fn call(
        &self,
        plugins: &Plugins,
        loaded: &mut Option<Loaded>,
        topic: &str,
        events: &[InputEvent<'_>],
    ) -> Result<CallOutput, PluginError> {
        let deployed = match &self.pinned {
            Some(pinned) => Arc::clone(pinned),
            None => plugins.deployed(&self.stage.plugin)?,
        };
        let code = Code {
            generation: deployed.generation,
            version: &deployed.version,
            compiled: deployed.compiled.as_ref().map_err(Clone::clone)?,
            state: plugins.state_source(),
        };
        self.load(plugins, loaded, code)?
            .instance
            .process(topic, events)
    }

    /// The instance in `slot`, made anew from `code` if it holds none or one of other
    /// code.
    fn load<'a>(
        &self,
        plugins: &Plugins,
        slot: &'a mut Option<Loaded>,
        code: Code<'_>,
    ) -> Result<&'a mut Loaded, PluginError> {
        if slot
            .as_ref()
            .is_none_or(|l| l.generation != code.generation)
        {
            let context = CallContext {
                plugin: self.stage.plugin.as_str().into(),
                version: Arc::clone(code.version),
                params: Arc::clone(&self.params),
                state: code.state,
            };
            let language = code.compiled.language;
            let sandbox = plugins.sandbox_policy().resolve(language, self.limits);
            // The old instance goes first: an interpreter's holds tens of MiB.
            *slot = None;
            *slot = Some(Loaded {
                generation: code.generation,
                version: Arc::clone(code.version),
                language,
                instance: plugins
                    .runtime()
                    .instantiate(code.compiled, context, sandbox)?,
            });
        }
        Ok(slot.get_or_insert_with(|| unreachable!("an instance was loaded just above")))
    }

    /// Runs the candidate of the plugin's rollout over `events`, in its own instance
    /// (replaced after a failure that poisons it); returns what it made of them and
    /// how long it took.
    fn call_candidate(
        &self,
        plugins: &Plugins,
        candidate: &Candidate,
        topic: &str,
        events: &[InputEvent<'_>],
    ) -> (Result<CallOutput, PluginError>, u64) {
        let started = std::time::Instant::now();
        let mut slot = lock(&self.candidate);
        let code = Code {
            generation: candidate.generation,
            version: &candidate.version,
            compiled: &candidate.compiled,
            state: candidate.state(),
        };
        let result = self
            .load(plugins, &mut slot, code)
            .and_then(|loaded| loaded.instance.process(topic, events));
        if let Err(e) = &result
            && e.poisons_instance()
        {
            *slot = None;
        }
        (result, elapsed_micros(started))
    }

    /// Runs a shadow over the batch the live version just decided on, and counts how
    /// both decided. Its outcomes go no further, its state writes only to its own
    /// state (`rollout.rs`); its failures are counted, nothing else.
    fn run_shadow(
        &self,
        plugins: &Plugins,
        shadow: &Candidate,
        topic: &str,
        events: &[InputEvent<'_>],
        live: (&[Outcome], u64),
    ) {
        let (result, micros) = self.call_candidate(plugins, shadow, topic, events);
        let outcomes = result.map(|output| {
            shadow.keep_shadow_state(&self.stage.plugin, output.state);
            output.outcomes
        });
        shadow.record_shadow(&self.target, events, live, (outcomes, micros));
    }

    /// Calls the live version with the records a canary of `percent` does not take
    /// and the canary with those it takes, and puts each outcome back in its record's
    /// place; the state both write is kept. Either failing fails the batch.
    fn call_with_canary(
        &self,
        plugins: &Plugins,
        loaded: &mut Option<Loaded>,
        (canary, percent): (&Candidate, u8),
        topic: &str,
        events: &[InputEvent<'_>],
    ) -> Result<CallOutput, PluginError> {
        let (taken, left): (Vec<usize>, Vec<usize>) =
            (0..events.len()).partition(|&i| canary.takes(percent, &events[i]));
        let pick = |indices: &[usize]| indices.iter().map(|&i| events[i]).collect::<Vec<_>>();
        if taken.is_empty() {
            return self.call(plugins, loaded, topic, events);
        }
        let started = std::time::Instant::now();
        let live = match left.is_empty() {
            true => CallOutput {
                outcomes: Vec::new(),
                state: Vec::new(),
            },
            false => self.call(plugins, loaded, topic, &pick(&left))?,
        };
        let live_micros = elapsed_micros(started);
        let (result, micros) = self.call_candidate(plugins, canary, topic, &pick(&taken));
        canary.record_canary(
            taken.len(),
            live_micros,
            (result.as_ref().map(drop), micros),
        );
        // The live version's instance is not at fault: a `Canary` error poisons none.
        let taken_output = result.map_err(|cause| PluginError::Canary {
            version: canary.version.to_string(),
            cause: Box::new(cause),
        })?;
        // Each call returned one outcome per event it was given (`check_outputs`).
        let mut outcomes: Vec<Option<Outcome>> = vec![None; events.len()];
        for (i, outcome) in left.iter().zip(live.outcomes) {
            outcomes[*i] = Some(outcome);
        }
        for (i, outcome) in taken.iter().zip(taken_output.outcomes) {
            outcomes[*i] = Some(outcome);
        }
        Ok(CallOutput {
            outcomes: outcomes.into_iter().flatten().collect(),
            state: live.state.into_iter().chain(taken_output.state).collect(),
        })
    }

    /// The version that ran last (empty before the first call).
    pub fn version(&self) -> String {
        lock(&self.figures).version.clone()
    }

    /// Ends the quarantine now (its cause is fixed): the next call runs. True if the
    /// stage was quarantined.
    pub fn lift_quarantine(&self) -> bool {
        let mut figures = lock(&self.figures);
        let was = figures
            .quarantine
            .quarantined_until(crate::util::now_ms())
            .is_some();
        figures.quarantine = Quarantine::default();
        was
    }

    /// The call times so far, in the buckets of [`CALL_TIME_BOUNDS_MICROS`].
    pub fn call_times(&self) -> CallTimes {
        let figures = lock(&self.figures);
        let mut buckets = Vec::with_capacity(CALL_TIME_BOUNDS_MICROS.len() + 1);
        let mut below = 0;
        for &bound in CALL_TIME_BOUNDS_MICROS {
            let up_to = figures.micros.count_between(0, bound);
            buckets.push((bound, up_to.saturating_sub(below)));
            below = below.max(up_to);
        }
        let count = figures.micros.len();
        buckets.push((u64::MAX, count.saturating_sub(below)));
        CallTimes {
            buckets,
            count,
            sum_micros: figures.micros_sum,
        }
    }

    /// The sandbox it runs in, for `plugin status`: that of its instance, or before
    /// one exists, what the deployed version would get.
    pub fn sandbox(&self, plugins: &Plugins) -> SandboxInfo {
        let figures = lock(&self.figures);
        let language = figures.language.or_else(|| {
            let deployed = plugins.deployed(&self.stage.plugin).ok()?;
            deployed.compiled.as_ref().ok().map(|c| c.language)
        });
        let sandbox = plugins
            .sandbox_policy()
            .resolve(language.unwrap_or(Language::Other), self.limits);
        SandboxInfo {
            target: self.target.clone(),
            language: language.map_or("unknown", Language::name).into(),
            limits: self.limits,
            memory_limit: sandbox.memory_bytes as u64,
            call_timeout_ms: u64::try_from(sandbox.call_timeout.as_millis()).unwrap_or(u64::MAX),
            memory_peak: figures.memory_peak as u64,
        }
    }

    /// Figures for `plugin status`.
    pub fn status(&self) -> AttachmentStatus {
        let figures = lock(&self.figures);
        let percentile = |q: f64| {
            if figures.micros.is_empty() {
                0
            } else {
                figures.micros.value_at_quantile(q)
            }
        };
        AttachmentStatus {
            target: self.target.clone(),
            version: figures.version.clone(),
            on_error: self.stage.on_error,
            calls: figures.calls,
            records_in: figures.records_in,
            records_out: figures.records_out,
            errors: figures.errors,
            p50_us: percentile(0.5),
            p99_us: percentile(0.99),
            quarantined_until_ms: figures.quarantine.quarantined_until(crate::util::now_ms()),
            last_error: figures.last_error.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: QuarantinePolicy = QuarantinePolicy {
        after_failures: 3,
        duration_ms: 1000,
    };

    #[test]
    fn quarantine_after_consecutive_failures_then_a_trial() {
        let mut q = Quarantine::default();
        q.record(false, 0, POLICY);
        q.record(false, 1, POLICY);
        assert!(q.admits(2), "two failures do not quarantine");
        q.record(true, 2, POLICY);
        q.record(false, 3, POLICY);
        q.record(false, 4, POLICY);
        assert!(q.admits(5), "a success resets the count");
        q.record(false, 5, POLICY);
        assert!(!q.admits(6));
        assert_eq!(q.quarantined_until(6), Some(1005));
        assert!(q.admits(1005), "a trial call runs when the quarantine ends");
        q.record(false, 1005, POLICY);
        assert_eq!(
            q.quarantined_until(1006),
            Some(2005),
            "a failed trial renews it"
        );
        q.record(true, 2005, POLICY);
        assert_eq!(q, Quarantine::default(), "a successful trial clears it");
    }
}
