//! The WebAssembly runtime: the only module that imports wasmtime.
//!
//! One [`Runtime`] holds the engine (one per process), the linker with the host
//! functions of the `quiver:plugin` world, and an epoch ticker that gives every call a
//! CPU deadline (and sleeps while no call runs: [`Ticker`]). [`Runtime::compile`]
//! validates a component against the world and caches its compiled form on disk, keyed
//! by the component's sha256 and the engine's compatibility hash, so a restart does not
//! recompile. An [`Instance`] is one store and one instantiation, reused call after
//! call.
//!
//! The sandbox: a plugin can call only the `host` interface and `wasi:random` (std's
//! `HashMap` seeds itself from it). Any other import (the WASI interfaces a
//! `wasm32-wasip2` build pulls in: files, sockets, environment, clocks, stdio) is linked
//! to a function that traps. Each instance has a memory cap, each
//! call a deadline of CPU time (epoch interruption, checked against the thread's CPU
//! clock: [`CpuClock`]), both given per instance ([`Sandbox`]), and outputs are checked
//! against limits before the broker sees them. Every failure is a [`PluginError`] value; after a trap the
//! instance is thrown away.
//!
//! Why one file of ~700 lines: it is the wall around wasmtime. Splitting it would put
//! wasmtime imports in several files; everything that touches wasmtime's types (the
//! engine, the linker and its trapping stubs, stores and their limits, lifting and
//! lowering events) is here, and nothing else is.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use bytes::Bytes;
use bytesize::ByteSize;
use quiver_protocol::{Header, NewRecord};
use tracing::warn;
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine, ResourceLimiter, Store, Trap};

use super::sandbox::{Language, Sandbox};
use super::{InputEvent, Outcome, PluginError, StateSource};
use crate::config::PluginsConfig;

mod bindings {
    wasmtime::component::bindgen!({
        path: "../plugin-sdk/wit",
        world: "plugin",
        imports: { default: trappable },
        // Events go into a call borrowed from the records, not copied into owned
        // values first (`header` then has a borrowed and an owned form).
        ownership: Borrowing { duplicate_if_necessary: true },
    });
}

use bindings::quiver::plugin::{host, types};

/// How often the epoch advances; call deadlines are counted in these ticks.
const TICK: Duration = Duration::from_millis(2);
/// How many ticks the ticker goes on after the last call ends before it sleeps until
/// the next one: calls in quick succession do not each have to wake it.
const LINGER_TICKS: u32 = 50;
/// The least time an instantiation may take (an interpreter's start-up runs then),
/// whatever the call deadline: it is not charged to the first call.
const MIN_INSTANTIATE_TIME: Duration = Duration::from_secs(1);
/// Log lines one call may write before the rest are dropped.
const MAX_LOG_LINES_PER_CALL: usize = 100;
/// The longest log line kept.
const MAX_LOG_LINE: usize = 4096;
/// State a call may write, in bytes of keys and values.
const MAX_STATE_BYTES_PER_CALL: usize = 4 << 20;
/// The largest state key.
const MAX_STATE_KEY: usize = 1024;
/// The largest state value.
const MAX_STATE_VALUE: usize = 256 << 10;
/// The most topics one event may be routed to.
const MAX_ROUTES_PER_EVENT: usize = 16;
/// The longest reject reason kept.
const MAX_REASON: usize = 1024;

/// What any plugin's output may be.
#[derive(Debug, Clone, Copy)]
pub struct SandboxLimits {
    /// Records one event may be replaced with.
    pub max_outputs_per_event: usize,
    /// Bytes of replacement records one call may return.
    pub max_output_bytes: usize,
    /// The largest record a plugin may make (the broker's record-size limit).
    pub max_record_size: usize,
}

impl SandboxLimits {
    /// The limits the `[plugins]` settings describe, with the broker's record-size limit.
    pub fn from_settings(plugins: &PluginsConfig, max_record_size: ByteSize) -> Self {
        let bytes = |size: ByteSize| usize::try_from(size.as_u64()).unwrap_or(usize::MAX);
        Self {
            max_outputs_per_event: plugins.max_outputs_per_event as usize,
            max_output_bytes: bytes(plugins.max_output_bytes),
            max_record_size: bytes(max_record_size),
        }
    }
}

/// A component validated against the plugin world and compiled, ready to instantiate.
#[derive(Clone)]
pub struct Compiled {
    pre: bindings::PluginPre<HostState>,
    /// True when it came from the on-disk cache rather than a fresh compile.
    pub from_cache: bool,
    /// The language it was built from, which picks its sandbox's defaults.
    pub language: Language,
}

impl std::fmt::Debug for Compiled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compiled")
            .field("from_cache", &self.from_cache)
            .field("language", &self.language)
            .finish_non_exhaustive()
    }
}

/// The engine, the linker and the deadline ticker.
pub struct Runtime {
    engine: Engine,
    linker: Linker<HostState>,
    limits: SandboxLimits,
    cache_dir: Option<PathBuf>,
    engine_hash: u64,
    ticker: Arc<Ticker>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("limits", &self.limits)
            .field("cache_dir", &self.cache_dir)
            .finish_non_exhaustive()
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.ticker.stop();
    }
}

impl Runtime {
    /// A runtime with these limits, caching compiled components in `cache_dir` (or
    /// not at all).
    pub fn new(limits: SandboxLimits, cache_dir: Option<PathBuf>) -> Result<Self, PluginError> {
        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .epoch_interruption(true)
            // Calls are synchronous; the concurrency machinery costs each call time.
            .concurrency_support(false)
            .max_wasm_stack(1 << 20);
        let engine = Engine::new(&config).map_err(|e| PluginError::Runtime(format!("{e:#}")))?;
        let mut linker = Linker::new(&engine);
        bindings::Plugin::add_to_linker::<_, wasmtime::component::HasSelf<_>>(
            &mut linker,
            |state| state,
        )
        .map_err(|e| PluginError::Runtime(format!("{e:#}")))?;
        if let Some(dir) = &cache_dir {
            std::fs::create_dir_all(dir).map_err(|e| {
                PluginError::Runtime(format!("creating plugin cache {}: {e}", dir.display()))
            })?;
        }
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let ticker = Ticker::start(engine.clone())?;
        Ok(Self {
            engine,
            linker,
            limits,
            cache_dir,
            engine_hash: hasher.finish(),
            ticker,
        })
    }

    /// The limits every instance's output is held to.
    pub fn limits(&self) -> SandboxLimits {
        self.limits
    }

    /// Validates `wasm` against the plugin world and compiles it (or loads its compiled
    /// form from the cache).
    pub fn compile(&self, wasm: &[u8], sha256: &[u8; 32]) -> Result<Compiled, PluginError> {
        let (component, from_cache) = self.load(wasm, sha256)?;
        let mut linker = self.linker.clone();
        // `wasi:random` under the exact names (and versions) the plugin imports; the
        // rest of what it imports beyond `host` traps when called.
        let imports: Vec<String> = component
            .component_type()
            .imports(&self.engine)
            .map(|(name, _)| name.to_owned())
            .collect();
        for name in imports.iter().filter(|n| n.starts_with("wasi:random/")) {
            add_randomness(&mut linker, name)
                .map_err(|e| PluginError::Runtime(format!("{e:#}")))?;
        }
        linker
            .define_unknown_imports_as_traps(&component)
            .map_err(|e| PluginError::WrongWorld(format!("{e:#}")))?;
        let pre = linker
            .instantiate_pre(&component)
            .and_then(bindings::PluginPre::new)
            .map_err(|e| {
                PluginError::WrongWorld(format!(
                    "not a component of the quiver:plugin world ({e:#}); build it with \
                     quiver-plugin-sdk"
                ))
            })?;
        Ok(Compiled {
            pre,
            from_cache,
            language: Language::of(wasm),
        })
    }

    fn load(&self, wasm: &[u8], sha256: &[u8; 32]) -> Result<(Component, bool), PluginError> {
        check_header(wasm)?;
        let invalid = |e: wasmtime::Error| PluginError::InvalidWasm(format!("{e:#}"));
        let Some(dir) = &self.cache_dir else {
            return Ok((Component::new(&self.engine, wasm).map_err(invalid)?, false));
        };
        let path = dir.join(format!(
            "{}-{:016x}.cwasm",
            crate::util::hex(sha256),
            self.engine_hash
        ));
        if path.exists() {
            match self.deserialize_cached(&path) {
                Ok(component) => return Ok((component, true)),
                Err(e) => {
                    warn!(path = %path.display(), cause = %e, "unusable cached plugin; recompiling");
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        let compiled = self.engine.precompile_component(wasm).map_err(invalid)?;
        if let Err(e) = crate::files::write_atomically(&path, &compiled, 0o644) {
            warn!(path = %path.display(), cause = %e, "could not cache a compiled plugin");
        }
        // Loaded from the code just compiled, not compiled a second time (which took
        // as long again: a minute for an interpreter's component on a slow machine).
        let component = self.deserialize_compiled(&compiled).map_err(invalid)?;
        Ok((component, false))
    }

    #[allow(unsafe_code)]
    fn deserialize_compiled(&self, compiled: &[u8]) -> wasmtime::Result<Component> {
        // SAFETY: `compiled` was produced a moment ago by `precompile_component` of
        // this very engine, and never left this process's memory.
        unsafe { Component::deserialize(&self.engine, compiled) }
    }

    #[allow(unsafe_code)]
    fn deserialize_cached(&self, path: &Path) -> wasmtime::Result<Component> {
        // SAFETY: wasmtime requires that the file hold code produced by
        // `Engine::precompile_component` for a compatible engine. Only this runtime
        // writes into the cache directory (inside the broker's data dir), the file
        // name carries the engine's compatibility hash, and wasmtime itself checks the
        // artifact's header against the engine before using it. Whoever can write
        // arbitrary files into the data dir already controls the broker.
        unsafe { Component::deserialize_file(&self.engine, path) }
    }

    /// A fresh instance of `compiled` for `context`, running in `sandbox`.
    pub fn instantiate(
        &self,
        compiled: &Compiled,
        context: CallContext,
        sandbox: Sandbox,
    ) -> Result<Instance, PluginError> {
        let state = HostState::new(context, sandbox.memory_bytes);
        // Instantiating runs the component's start-up code, under a deadline too.
        let _running = self.ticker.running();
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| state as &mut dyn ResourceLimiter);
        store.epoch_deadline_callback(|store| Ok(store.data().clock.on_deadline()));
        store.data_mut().clock = CpuClock::start(sandbox.call_timeout.max(MIN_INSTANTIATE_TIME));
        store.set_epoch_deadline(store.data().clock.ticks_left());
        let plugin = compiled
            .pre
            .instantiate(&mut store)
            .map_err(|e| classify(e, store.data(), sandbox))?;
        Ok(Instance {
            store,
            plugin,
            ticker: Arc::clone(&self.ticker),
            limits: self.limits,
            sandbox,
        })
    }
}

/// The CPU time a call has used, against its budget: the call deadline counts the
/// time the calling thread ran, not the time it waited for a core, so a busy machine
/// does not fail calls that did not overrun. The epoch ticker wakes it every [`TICK`]
/// once the ticks it expected are spent ([`CpuClock::on_deadline`]), and a call is
/// interrupted when its thread's CPU time is over the budget, or when ten budgets of
/// elapsed time have passed whatever it used (a call waiting on the host).
#[derive(Debug, Clone, Copy)]
struct CpuClock {
    budget: Duration,
    cpu_at_start: Duration,
    started: std::time::Instant,
}

/// How many budgets of elapsed time a call may take, whatever CPU time it used.
const MAX_ELAPSED_BUDGETS: u32 = 10;

impl CpuClock {
    fn start(budget: Duration) -> Self {
        Self {
            budget,
            cpu_at_start: thread_cpu_time(),
            started: std::time::Instant::now(),
        }
    }

    /// The CPU time left, in ticks (at least one).
    fn ticks_left(&self) -> u64 {
        let used = thread_cpu_time().saturating_sub(self.cpu_at_start);
        ticks(self.budget.saturating_sub(used))
    }

    /// Called on the calling thread when the epoch passes the deadline set: go on for
    /// the CPU time left, or stop.
    fn on_deadline(&self) -> wasmtime::UpdateDeadline {
        let used = thread_cpu_time().saturating_sub(self.cpu_at_start);
        if used >= self.budget || self.started.elapsed() >= self.budget * MAX_ELAPSED_BUDGETS {
            return wasmtime::UpdateDeadline::Interrupt;
        }
        wasmtime::UpdateDeadline::Continue(self.ticks_left())
    }
}

/// The CPU time the calling thread has used.
#[cfg(unix)]
#[allow(unsafe_code)]
fn thread_cpu_time() -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid, writable timespec; CLOCK_THREAD_CPUTIME_ID is always
    // available on the platforms Quiver runs on (Linux, the BSDs, macOS).
    let ok = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) } == 0;
    if !ok {
        return Duration::ZERO;
    }
    Duration::new(
        u64::try_from(now.tv_sec).unwrap_or(0),
        u32::try_from(now.tv_nsec).unwrap_or(0),
    )
}

/// Elsewhere, elapsed time stands for CPU time.
#[cfg(not(unix))]
fn thread_cpu_time() -> Duration {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START.get_or_init(std::time::Instant::now).elapsed()
}

/// The epoch ticks of `time` (at least one).
fn ticks(time: Duration) -> u64 {
    u64::try_from(time.as_millis().div_ceil(TICK.as_millis().max(1)))
        .unwrap_or(u64::MAX)
        .max(1)
}

/// The largest random buffer one call to `get-random-bytes` returns.
const MAX_RANDOM_BYTES: u64 = 1 << 20;

/// Links the `wasi:random` interface `name` (random bytes, and the seed std's `HashMap`
/// asks for at its first use), the one WASI capability plugins get: it reaches nothing
/// outside the sandbox. Unknown `wasi:random` interfaces are left to trap.
fn add_randomness(linker: &mut Linker<HostState>, name: &str) -> wasmtime::Result<()> {
    fn random_bytes(len: u64) -> wasmtime::Result<Vec<u8>> {
        if len > MAX_RANDOM_BYTES {
            wasmtime::bail!("asked for {len} random bytes; at most {MAX_RANDOM_BYTES} per call");
        }
        let mut bytes = vec![0; usize::try_from(len)?];
        getrandom::fill(&mut bytes).map_err(|e| wasmtime::format_err!("no randomness: {e}"))?;
        Ok(bytes)
    }
    fn random_u64() -> wasmtime::Result<u64> {
        let bytes: [u8; 8] = random_bytes(8)?
            .try_into()
            .map_err(|_| wasmtime::format_err!("short read"))?;
        Ok(u64::from_le_bytes(bytes))
    }
    let interface = name.split('@').next().unwrap_or(name);
    let (bytes, number) = match interface {
        "wasi:random/random" => ("get-random-bytes", "get-random-u64"),
        "wasi:random/insecure" => ("get-insecure-random-bytes", "get-insecure-random-u64"),
        "wasi:random/insecure-seed" => {
            return linker
                .instance(name)?
                .func_wrap("insecure-seed", |_, (): ()| {
                    Ok(((random_u64()?, random_u64()?),))
                });
        }
        _ => return Ok(()),
    };
    let mut instance = linker.instance(name)?;
    instance.func_wrap(bytes, |_, (len,): (u64,)| Ok((random_bytes(len)?,)))?;
    instance.func_wrap(number, |_, (): ()| Ok((random_u64()?,)))
}

/// The thread that advances the engine's epoch every [`TICK`], which is what makes a
/// running call check its deadline ([`CpuClock::on_deadline`]). It ticks only while
/// a call may be running: [`LINGER_TICKS`] after the last one ends it waits for the
/// next, so an idle broker, with plugins or without, does not wake 500 times a second.
///
/// A call holds a [`Running`] from before its deadline is set until it returns. Taking
/// one wakes the thread if it is waiting; the two sides meet as in Dekker's algorithm
/// (each stores its own flag, then reads the other's, all `SeqCst`), so either the
/// call sees the thread waiting and wakes it, or the thread sees the call and does
/// not wait.
struct Ticker {
    engine: Engine,
    /// Calls (and instantiations) in flight.
    calls: AtomicUsize,
    /// The thread waits for a call (or is about to: it checks `calls` after setting this).
    waiting: AtomicBool,
    stopped: AtomicBool,
    /// Held to wait on `wake`, and to signal it, so that no wake-up is lost.
    lock: Mutex<()>,
    wake: Condvar,
    /// Signalled each time the thread starts waiting (tests wait for it).
    idle: Condvar,
}

/// A call in flight: the ticker keeps ticking until it is dropped.
struct Running<'a>(&'a Ticker);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.calls.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Ticker {
    fn start(engine: Engine) -> Result<Arc<Self>, PluginError> {
        let ticker = Arc::new(Self {
            engine,
            calls: AtomicUsize::new(0),
            waiting: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            lock: Mutex::new(()),
            wake: Condvar::new(),
            idle: Condvar::new(),
        });
        let thread = Arc::clone(&ticker);
        std::thread::Builder::new()
            .name("quiver-plugin-epoch".into())
            .spawn(move || thread.run())
            .map_err(|e| PluginError::Runtime(format!("starting the deadline ticker: {e}")))?;
        Ok(ticker)
    }

    /// Marks a call as running, waking the thread if it waits.
    fn running(&self) -> Running<'_> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.waiting.load(Ordering::SeqCst) {
            let _lock = self.lock.lock().unwrap_or_else(|e| e.into_inner());
            self.wake.notify_one();
        }
        Running(self)
    }

    /// Ends the thread (at its next tick, or at once if it waits).
    fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        let _lock = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        self.wake.notify_one();
    }

    fn run(&self) {
        let mut idle = 0;
        while !self.stopped.load(Ordering::SeqCst) {
            std::thread::sleep(TICK);
            self.engine.increment_epoch();
            match self.calls.load(Ordering::SeqCst) {
                0 => idle += 1,
                _ => idle = 0,
            }
            if idle >= LINGER_TICKS {
                self.wait_for_a_call();
                idle = 0;
            }
        }
    }

    /// Waits until a call runs, or the ticker is stopped.
    fn wait_for_a_call(&self) {
        let mut lock = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        self.waiting.store(true, Ordering::SeqCst);
        self.idle.notify_all();
        while self.calls.load(Ordering::SeqCst) == 0 && !self.stopped.load(Ordering::SeqCst) {
            lock = self.wake.wait(lock).unwrap_or_else(|e| e.into_inner());
        }
        self.waiting.store(false, Ordering::SeqCst);
    }

    /// Waits up to `timeout` for the thread to wait for a call; true if it does.
    #[cfg(test)]
    fn until_waiting(&self, timeout: Duration) -> bool {
        let lock = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let (_lock, result) = self
            .idle
            .wait_timeout_while(lock, timeout, |()| !self.waiting.load(Ordering::SeqCst))
            .unwrap_or_else(|e| e.into_inner());
        !result.timed_out()
    }
}

/// Who is calling, for the host functions: the plugin's identity, its attachment's
/// parameters and where its state lives.
#[derive(Clone)]
pub struct CallContext {
    /// The plugin's name.
    pub plugin: Arc<str>,
    /// Its version.
    pub version: Arc<str>,
    /// The attachment's parameters.
    pub params: Arc<[(String, String)]>,
    /// Reads the plugin's state.
    pub state: Arc<dyn StateSource>,
}

/// What a successful call produced.
#[derive(Debug)]
pub struct CallOutput {
    /// One outcome per input event, in order.
    pub outcomes: Vec<Outcome>,
    /// State the call wrote: key and new value (`None`: removed).
    pub state: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

/// One instantiated plugin.
pub struct Instance {
    store: Store<HostState>,
    plugin: bindings::Plugin,
    ticker: Arc<Ticker>,
    limits: SandboxLimits,
    sandbox: Sandbox,
}

impl Instance {
    /// The most linear memory this instance has had, in bytes.
    pub fn memory_peak(&self) -> usize {
        self.store.data().memory_peak
    }

    /// The sandbox it runs in.
    pub fn sandbox(&self) -> Sandbox {
        self.sandbox
    }

    /// Runs the plugin over a batch of events from `topic`.
    ///
    /// After an error for which [`PluginError::poisons_instance`] holds, the instance
    /// must not be used again.
    pub fn process(
        &mut self,
        topic: &str,
        events: &[InputEvent<'_>],
    ) -> Result<CallOutput, PluginError> {
        let headers: Vec<_> = events.iter().map(|e| header_params(e.record)).collect();
        let inputs: Vec<types::Event<'_>> = events
            .iter()
            .zip(&headers)
            .map(|(event, headers)| to_wit(event, headers))
            .collect();
        let _running = self.ticker.running();
        self.store.data_mut().begin_call(self.sandbox.call_timeout);
        let ticks = self.store.data().clock.ticks_left();
        self.store.set_epoch_deadline(ticks);
        let result = self.plugin.call_process(&mut self.store, topic, &inputs);
        let outcomes = match result {
            Err(e) => return Err(classify(e, self.store.data(), self.sandbox)),
            Ok(Err(message)) => return Err(PluginError::Failed(truncate(message, MAX_REASON))),
            Ok(Ok(outcomes)) => outcomes,
        };
        let outcomes = check_outputs(outcomes, events.len(), &self.limits)?;
        let state = std::mem::take(&mut self.store.data_mut().written)
            .into_iter()
            .collect();
        Ok(CallOutput { outcomes, state })
    }
}

/// An event as the call takes it, borrowing the record's bytes and `headers` (made by
/// [`header_params`]).
fn to_wit<'a>(
    event: &'a InputEvent<'a>,
    headers: &'a [types::HeaderParam<'a>],
) -> types::Event<'a> {
    let record = event.record;
    types::Event {
        offset: event.offset,
        timestamp: event.timestamp,
        key: record.key.as_deref(),
        headers,
        payload: &record.payload,
    }
}

fn header_params(record: &NewRecord) -> Vec<types::HeaderParam<'_>> {
    record
        .headers
        .iter()
        .map(|h| types::HeaderParam {
            name: &h.name,
            value: &h.value,
        })
        .collect()
}

/// Checks a call's outcomes against the limits and turns them into Quiver's types.
fn check_outputs(
    outcomes: Vec<types::Outcome>,
    events: usize,
    limits: &SandboxLimits,
) -> Result<Vec<Outcome>, PluginError> {
    if outcomes.len() != events {
        return Err(PluginError::InvalidOutput(format!(
            "{} outcomes for {events} events (one per event is required)",
            outcomes.len()
        )));
    }
    let mut output_bytes = 0usize;
    outcomes
        .into_iter()
        .map(|outcome| {
            Ok(match outcome {
                types::Outcome::Keep => Outcome::Keep,
                types::Outcome::Drop => Outcome::Drop,
                types::Outcome::Replace(records) => {
                    if records.len() > limits.max_outputs_per_event {
                        return Err(PluginError::InvalidOutput(format!(
                            "{} replacement records for one event, over the limit of {}",
                            records.len(),
                            limits.max_outputs_per_event
                        )));
                    }
                    let records: Vec<NewRecord> = records.into_iter().map(from_wit).collect();
                    if let Some(big) = records.iter().find(|r| r.size() > limits.max_record_size) {
                        return Err(PluginError::InvalidOutput(format!(
                            "a replacement record of {} bytes, over the record-size limit of {}",
                            big.size(),
                            limits.max_record_size
                        )));
                    }
                    output_bytes += records.iter().map(NewRecord::size).sum::<usize>();
                    if output_bytes > limits.max_output_bytes {
                        return Err(PluginError::InvalidOutput(format!(
                            "replacement records over the limit of {} bytes per call",
                            limits.max_output_bytes
                        )));
                    }
                    Outcome::Replace(records)
                }
                types::Outcome::Route(topics) => {
                    if topics.is_empty() || topics.len() > MAX_ROUTES_PER_EVENT {
                        return Err(PluginError::InvalidOutput(format!(
                            "route to {} topics (1 to {MAX_ROUTES_PER_EVENT} allowed)",
                            topics.len()
                        )));
                    }
                    Outcome::Route(topics)
                }
                types::Outcome::Reject(reason) => Outcome::Reject(truncate(reason, MAX_REASON)),
            })
        })
        .collect()
}

fn from_wit(event: types::NewEvent) -> NewRecord {
    NewRecord {
        key: event.key.map(Bytes::from),
        headers: event
            .headers
            .into_iter()
            .map(|h| Header {
                name: h.name,
                value: Bytes::from(h.value),
            })
            .collect(),
        payload: Bytes::from(event.payload),
    }
}

fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

/// Names what went wrong in a failed call or instantiation.
fn classify(e: wasmtime::Error, state: &HostState, sandbox: Sandbox) -> PluginError {
    if state.memory_exceeded {
        return PluginError::MemoryLimit {
            limit: sandbox.memory_bytes,
        };
    }
    let trap = e.chain().find_map(|cause| cause.downcast_ref::<Trap>());
    if trap == Some(&Trap::Interrupt) {
        return PluginError::Deadline {
            timeout: sandbox.call_timeout,
        };
    }
    // The root cause, without wasmtime's backtrace, and what the plugin said last (a
    // panic message, from the SDK's panic hook).
    let cause = trap.map_or_else(|| e.root_cause().to_string(), ToString::to_string);
    match &state.last_error {
        Some(said) => PluginError::Trap(format!("{cause} (the plugin logged: {said})")),
        None => PluginError::Trap(cause),
    }
}

/// A store's data: the call's context, what it wrote, and the resource accounting.
struct HostState {
    context: CallContext,
    memory_limit: usize,
    memory_exceeded: bool,
    /// The most linear memory granted so far.
    memory_peak: usize,
    /// The current call's (or the instantiation's) CPU time against its budget.
    clock: CpuClock,
    log_lines: usize,
    /// The last error the plugin logged in this call (a panic message, often).
    last_error: Option<String>,
    state_bytes: usize,
    /// State written by the current call: later reads in the same call see it.
    written: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

impl HostState {
    fn new(context: CallContext, memory_limit: usize) -> Self {
        Self {
            context,
            memory_limit,
            memory_exceeded: false,
            memory_peak: 0,
            clock: CpuClock::start(Duration::ZERO),
            log_lines: 0,
            last_error: None,
            state_bytes: 0,
            written: BTreeMap::new(),
        }
    }

    fn begin_call(&mut self, budget: Duration) {
        self.clock = CpuClock::start(budget);
        self.log_lines = 0;
        self.last_error = None;
        self.state_bytes = 0;
        self.written.clear();
    }

    fn write_state(&mut self, key: Vec<u8>, value: Option<Vec<u8>>) -> wasmtime::Result<()> {
        let size = key.len() + value.as_ref().map_or(0, Vec::len);
        if key.len() > MAX_STATE_KEY || value.as_ref().is_some_and(|v| v.len() > MAX_STATE_VALUE) {
            wasmtime::bail!(
                "state key or value too large (keys up to {MAX_STATE_KEY} bytes, values up to {MAX_STATE_VALUE})"
            );
        }
        self.state_bytes += size;
        if self.state_bytes > MAX_STATE_BYTES_PER_CALL {
            wasmtime::bail!(
                "more than {MAX_STATE_BYTES_PER_CALL} bytes of state written in one call"
            );
        }
        self.written.insert(key, value);
        Ok(())
    }
}

impl ResourceLimiter for HostState {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_limit {
            self.memory_exceeded = true;
            return Ok(false);
        }
        self.memory_peak = self.memory_peak.max(desired);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

impl types::Host for HostState {}

impl host::Host for HostState {
    fn log(&mut self, level: host::Level, message: String) -> wasmtime::Result<()> {
        self.log_lines += 1;
        if level == host::Level::Error {
            self.last_error = Some(truncate(message.clone(), MAX_REASON));
        }
        let plugin = &*self.context.plugin;
        let version = &*self.context.version;
        if self.log_lines > MAX_LOG_LINES_PER_CALL {
            if self.log_lines == MAX_LOG_LINES_PER_CALL + 1 {
                warn!(
                    plugin,
                    version, "plugin log lines beyond {MAX_LOG_LINES_PER_CALL} per call dropped"
                );
            }
            return Ok(());
        }
        let message = truncate(message, MAX_LOG_LINE);
        match level {
            host::Level::Trace => tracing::trace!(plugin, version, "{message}"),
            host::Level::Debug => tracing::debug!(plugin, version, "{message}"),
            host::Level::Info => tracing::info!(plugin, version, "{message}"),
            host::Level::Warn => tracing::warn!(plugin, version, "{message}"),
            host::Level::Error => tracing::error!(plugin, version, "{message}"),
        }
        Ok(())
    }

    fn now(&mut self) -> wasmtime::Result<u64> {
        Ok(crate::util::now_ms())
    }

    fn param(&mut self, name: String) -> wasmtime::Result<Option<String>> {
        Ok(self
            .context
            .params
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.clone()))
    }

    fn params(&mut self) -> wasmtime::Result<Vec<(String, String)>> {
        Ok(self.context.params.to_vec())
    }

    fn state_get(&mut self, key: Vec<u8>) -> wasmtime::Result<Option<Vec<u8>>> {
        if let Some(value) = self.written.get(&key) {
            return Ok(value.clone());
        }
        self.context
            .state
            .get(&self.context.plugin, &key)
            .map_err(|e| wasmtime::format_err!("reading plugin state: {e}"))
    }

    fn state_set(&mut self, key: Vec<u8>, value: Vec<u8>) -> wasmtime::Result<()> {
        self.write_state(key, Some(value))
    }

    fn state_delete(&mut self, key: Vec<u8>) -> wasmtime::Result<()> {
        self.write_state(key, None)
    }
}

/// Refuses, in words, what is not a WebAssembly component at all: a file that is not
/// WebAssembly (a text file, a native binary), or a core module (built for a target
/// without the component model).
fn check_header(wasm: &[u8]) -> Result<(), PluginError> {
    const MAGIC: &[u8] = b"\0asm";
    const CORE_MODULE: &[u8] = &[1, 0, 0, 0];
    let invalid = |what: String| Err(PluginError::InvalidWasm(what));
    if !wasm.starts_with(MAGIC) {
        let head = &wasm[..wasm.len().min(16)];
        let shown = match std::str::from_utf8(head) {
            Ok(text) if text.chars().all(|c| !c.is_control() || c.is_whitespace()) => {
                format!("the text {:?}", text)
            }
            _ => format!("the bytes {}", crate::util::hex(head)),
        };
        return invalid(format!(
            "the file is not WebAssembly: it starts with {shown}, not `\\0asm`; deploy \
             the .wasm file cargo builds (target/wasm32-wasip2/release/NAME.wasm)"
        ));
    }
    if wasm.get(4..8) == Some(CORE_MODULE) {
        return invalid(
            "a core WebAssembly module, not a component: build the plugin for the \
             wasm32-wasip2 target with quiver-plugin-sdk (docs/plugins.md)"
                .into(),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: SandboxLimits = SandboxLimits {
        max_outputs_per_event: 2,
        max_output_bytes: 100,
        max_record_size: 40,
    };

    fn record(size: usize) -> types::NewEvent {
        types::NewEvent {
            key: None,
            headers: vec![],
            payload: vec![0; size],
        }
    }

    fn refused(outcomes: Vec<types::Outcome>, events: usize) -> String {
        match check_outputs(outcomes, events, &LIMITS) {
            Err(PluginError::InvalidOutput(why)) => why,
            other => panic!("expected invalid output, got {other:?}"),
        }
    }

    /// A core module whose export `spin` loops forever.
    const SPIN: &[u8] = &[
        0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, // magic, version
        0x01, 0x04, 0x01, 0x60, 0x00, 0x00, // one type: [] -> []
        0x03, 0x02, 0x01, 0x00, // one function of that type
        0x07, 0x08, 0x01, 0x04, b's', b'p', b'i', b'n', 0x00, 0x00, // exported as `spin`
        0x0a, 0x09, 0x01, 0x07, 0x00, 0x03, 0x40, 0x0c, 0x00, 0x0b, 0x0b, // loop { br 0 }
    ];

    #[test]
    fn the_ticker_waits_while_idle_and_wakes_for_a_call() {
        let mut config = Config::new();
        config.epoch_interruption(true);
        let engine = Engine::new(&config).unwrap();
        let ticker = Ticker::start(engine.clone()).unwrap();
        let patience = Duration::from_secs(30);
        assert!(ticker.until_waiting(patience), "idle, it waits for a call");
        // A call that never ends by itself: only the ticker's epochs interrupt it.
        let (done, result) = std::sync::mpsc::channel();
        let call = Arc::clone(&ticker);
        std::thread::spawn(move || {
            let module = wasmtime::Module::new(&engine, SPIN).unwrap();
            let mut store = Store::new(&engine, ());
            let _running = call.running();
            store.set_epoch_deadline(2);
            let instance = wasmtime::Instance::new(&mut store, &module, &[]).unwrap();
            let spin = instance
                .get_typed_func::<(), ()>(&mut store, "spin")
                .unwrap();
            let _ = done.send(spin.call(&mut store, ()).unwrap_err());
        });
        let error = result
            .recv_timeout(patience)
            .expect("the ticker woke for the call and its deadline interrupted it");
        assert_eq!(error.downcast_ref::<Trap>(), Some(&Trap::Interrupt));
        assert!(ticker.until_waiting(patience), "idle again, it waits again");
        ticker.stop();
    }

    #[test]
    fn the_deadline_counts_cpu_time_not_waiting() {
        let clock = CpuClock::start(Duration::from_millis(20));
        // Descheduled, or waiting: twice the budget passes, next to no CPU time.
        std::thread::sleep(Duration::from_millis(40));
        assert!(matches!(
            clock.on_deadline(),
            wasmtime::UpdateDeadline::Continue(_)
        ));
        // Running: past the budget of CPU time, it stops.
        let until = thread_cpu_time() + Duration::from_millis(25);
        while thread_cpu_time() < until {
            std::hint::black_box(0u64);
        }
        assert!(matches!(
            clock.on_deadline(),
            wasmtime::UpdateDeadline::Interrupt
        ));
        // Ten budgets of elapsed time stop it whatever it used.
        let patient = CpuClock::start(Duration::from_millis(2));
        std::thread::sleep(Duration::from_millis(25));
        assert!(matches!(
            patient.on_deadline(),
            wasmtime::UpdateDeadline::Interrupt
        ));
    }

    #[test]
    fn outputs_within_limits_pass() {
        let outcomes = vec![
            types::Outcome::Keep,
            types::Outcome::Replace(vec![record(30), record(30)]),
            types::Outcome::Route(vec!["a".into()]),
            types::Outcome::Reject("x".repeat(5000)),
        ];
        let checked = check_outputs(outcomes, 4, &LIMITS).unwrap();
        assert!(matches!(&checked[1], Outcome::Replace(r) if r.len() == 2));
        assert!(matches!(&checked[3], Outcome::Reject(r) if r.len() == MAX_REASON));
    }

    #[test]
    fn outputs_over_the_limits_are_refused() {
        assert!(refused(vec![types::Outcome::Keep], 2).contains("1 outcomes for 2 events"));
        let many = types::Outcome::Replace(vec![record(1), record(1), record(1)]);
        assert!(refused(vec![many], 1).contains("3 replacement records"));
        let big = types::Outcome::Replace(vec![record(41)]);
        assert!(refused(vec![big], 1).contains("record-size limit"));
        let bulky = vec![
            types::Outcome::Replace(vec![record(40), record(40)]),
            types::Outcome::Replace(vec![record(40)]),
        ];
        assert!(refused(bulky, 2).contains("100 bytes per call"));
        assert!(refused(vec![types::Outcome::Route(vec![])], 1).contains("route to 0 topics"));
    }
}
