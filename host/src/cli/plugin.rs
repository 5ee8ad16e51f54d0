//! `quiver plugin …`: deploy and manage plugins on a broker, and try them locally
//! (`test` over sample records, `replay` over a topic's stored records) without
//! publishing anything.

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use futures::StreamExt;
use quiver_client::{
    NewRecord, PluginDiff, PluginInfo, PluginStatus, SandboxInfo, Stage, StageLimits, StartAt,
    SubscribeOptions,
};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::ConnectArgs;
use super::args::{Policy, parse_header, parse_start};
use super::output;
use super::project::{BuildArgs, NewArgs};
use crate::config::Config;
use crate::plugins::runtime::{CallContext, Runtime, SandboxLimits};
use crate::plugins::sandbox::SandboxPolicy;
use crate::plugins::{InputEvent, Outcome, StateSource};
use crate::util::hex;

/// How long a replay waits for the next stored record before it concludes there is
/// none (a start time after the last record).
const REPLAY_IDLE: std::time::Duration = std::time::Duration::from_secs(2);

#[derive(Debug, Subcommand)]
pub(super) enum PluginCommand {
    /// Validate, compile and store a plugin component on the broker.
    Deploy {
        /// The component (.wasm).
        file: PathBuf,
        /// The plugin's name (dot-separated tokens, like topic names).
        #[arg(long)]
        name: String,
        /// A version label [default: the next number].
        #[arg(long)]
        version: Option<String>,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// List deployed plugins.
    List {
        /// Print one JSON object per plugin.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Add a plugin to the end of a topic's ingress pipeline.
    Attach {
        /// The plugin.
        name: String,
        /// The topic whose publishes it processes.
        #[arg(long)]
        topic: String,
        /// A parameter, NAME=VALUE (repeatable).
        #[arg(long = "param", value_name = "NAME=VALUE", value_parser = parse_header)]
        params: Vec<(String, String)>,
        /// While quarantined: refuse publishes (fail-closed) or pass records unchanged
        /// (fail-open).
        #[arg(long, value_enum, default_value_t = Policy::FailClosed)]
        on_error: Policy,
        /// Linear memory its instance may use, e.g. `128MiB` [default: the broker's
        /// default for the plugin's language; at most `plugins.max_memory_limit`].
        #[arg(long)]
        memory: Option<bytesize::ByteSize>,
        /// Time one call (one batch) may take, e.g. `250ms` [default: the broker's
        /// default for the plugin's language; at most `plugins.max_call_timeout`].
        #[arg(long, value_parser = humantime::parse_duration)]
        deadline: Option<std::time::Duration>,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Remove a plugin from a topic's ingress pipeline.
    Detach {
        /// The plugin.
        name: String,
        /// The topic.
        #[arg(long)]
        topic: String,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Replace a plugin's code everywhere it runs, atomically, without a restart
    /// (or, with --shadow, run it beside the live version first).
    Upgrade {
        /// The plugin.
        name: String,
        /// The new component (.wasm).
        file: PathBuf,
        /// A version label [default: the next number].
        #[arg(long)]
        version: Option<String>,
        /// Run the new code beside the live version on the same batches, its outcomes
        /// compared (`plugin diff`) and discarded, until `plugin promote` or `plugin
        /// rollback`.
        #[arg(long, conflicts_with = "canary")]
        shadow: bool,
        /// Give the new code this share of the records (1 to 99), chosen by key so
        /// that one key stays with one version, until `plugin promote` or `plugin
        /// rollback`.
        #[arg(long, value_name = "PERCENT", value_parser = clap::value_parser!(u8).range(1..=99))]
        canary: Option<u8>,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// How the plugin's rollout has gone: records a shadow decided otherwise than the
    /// live version, by kind, with samples; a canary's records; call times; failures.
    Diff {
        /// The plugin.
        name: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Make the rollout's code the live version, atomically: every batch after runs it
    /// wholly, none before does.
    Promote {
        /// The plugin.
        name: String,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// End the plugin's rollout; the live version goes on.
    Rollback {
        /// The plugin.
        name: String,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Remove a plugin that is attached nowhere, with its state.
    Remove {
        /// The plugin.
        name: String,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Calls, records, errors, timings and quarantine of each attachment.
    Status {
        /// The plugin.
        name: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// End the plugin's quarantine on every attachment, once its cause is fixed (an
    /// upgrade does this too): the next call runs.
    Lift {
        /// The plugin.
        name: String,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Write a plugin project that builds as it is: the contract, the guest SDK, an
    /// example plugin, a test over sample records and a README.
    New(NewArgs),
    /// Build the plugin project in DIR with its language's toolchain and print the
    /// component's path.
    Build(BuildArgs),
    /// Run a component locally over records from a JSON-lines file and print each
    /// outcome (no broker needed).
    Test(TestArgs),
    /// Run a component locally over a topic's stored records and print each outcome;
    /// nothing is published.
    Replay(ReplayArgs),
}

/// The sandbox of a local run, as an attachment's `--deadline` and `--memory` set it.
#[derive(Debug, Args)]
pub(super) struct LocalSandbox {
    /// Time one call may take [default: a broker's default for the plugin's language:
    /// 100ms for Rust, 200ms for Python, 500ms for JavaScript], in CPU time of the
    /// thread running it.
    #[arg(long, visible_alias = "deadline", value_parser = humantime::parse_duration)]
    call_timeout: Option<std::time::Duration>,
    /// Linear memory the instance may use [default: a broker's default for the
    /// plugin's language: 64 MiB for Rust and Python, 192 MiB for JavaScript].
    #[arg(long, visible_alias = "memory")]
    memory_limit: Option<bytesize::ByteSize>,
}

impl LocalSandbox {
    /// What an attachment with these flags would ask for.
    fn limits(&self) -> StageLimits {
        StageLimits {
            memory: self.memory_limit.map(|m| m.as_u64()),
            call_timeout_ms: self
                .call_timeout
                .map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
        }
    }
}

#[derive(Debug, Args)]
pub(super) struct TestArgs {
    /// The component (.wasm).
    file: PathBuf,
    /// Records, one JSON object per line, as `quiver sub --json` prints them
    /// (`payload` or `payload_base64`, optional `key`, `headers`, `topic`, `offset`;
    /// a `payload` that is a JSON object is its JSON text). Any other line, plain text
    /// or JSON without those fields, is one record's payload as it is.
    #[arg(long)]
    input: PathBuf,
    /// A parameter, NAME=VALUE (repeatable).
    #[arg(long = "param", value_name = "NAME=VALUE", value_parser = parse_header)]
    params: Vec<(String, String)>,
    /// The topic the plugin is told the records come from [default: each record's
    /// `topic`, else `test`].
    #[arg(long)]
    topic: Option<String>,
    /// Records per call.
    #[arg(long, default_value_t = 256)]
    batch: usize,
    /// The outcomes expected, one JSON line per record as this command prints them:
    /// any difference fails the command (exit status 1), naming the first record
    /// that differs.
    #[arg(long)]
    expect: Option<PathBuf>,
    #[command(flatten)]
    sandbox: LocalSandbox,
}

#[derive(Debug, Args)]
pub(super) struct ReplayArgs {
    /// The component (.wasm).
    file: PathBuf,
    /// The topic to read.
    #[arg(long)]
    topic: String,
    /// Where to start: earliest, latest, an OFFSET, an RFC 3339 time or -DURATION.
    #[arg(long, default_value = "earliest", value_parser = parse_start, allow_hyphen_values = true)]
    from: StartAt,
    /// Stop after this many records [default: every record stored when the replay
    /// starts].
    #[arg(long)]
    count: Option<u64>,
    /// A parameter, NAME=VALUE (repeatable).
    #[arg(long = "param", value_name = "NAME=VALUE", value_parser = parse_header)]
    params: Vec<(String, String)>,
    /// Records per call.
    #[arg(long, default_value_t = 256)]
    batch: usize,
    #[command(flatten)]
    sandbox: LocalSandbox,
    #[command(flatten)]
    connect: ConnectArgs,
}

pub(super) async fn run(command: PluginCommand) -> anyhow::Result<()> {
    match command {
        PluginCommand::Deploy {
            file,
            name,
            version,
            connect,
        } => {
            let wasm = read_wasm(&file)?;
            let info = connect
                .connect()
                .await?
                .deploy_plugin(&name, wasm, version.as_deref())
                .await?;
            println!(
                "deployed {} version {} (sha256 {})",
                info.name, info.version, info.sha256
            );
        }
        PluginCommand::List { json, connect } => {
            let plugins = connect.connect().await?.list_plugins().await?;
            if json {
                for plugin in &plugins {
                    println!("{}", plugin_json(plugin));
                }
            } else {
                print!("{}", plugin_table(&plugins));
            }
        }
        PluginCommand::Attach {
            name,
            topic,
            params,
            on_error,
            memory,
            deadline,
            connect,
        } => {
            let stage = Stage {
                plugin: name,
                params,
                on_error: on_error.into(),
                attached_by: None,
            };
            let sandbox = LocalSandbox {
                call_timeout: deadline,
                memory_limit: memory,
            };
            let client = connect.connect().await?;
            let info = match sandbox.limits() {
                limits if limits.is_default() => client.attach_plugin(&topic, stage).await?,
                limits => client.attach_plugin_sized(&topic, stage, limits).await?,
            };
            println!("{}: {}", info.name, output::pipeline_text(&info.pipeline));
        }
        PluginCommand::Detach {
            name,
            topic,
            connect,
        } => {
            let info = connect
                .connect()
                .await?
                .detach_plugin(&topic, &name)
                .await?;
            println!("{}: {}", info.name, output::pipeline_text(&info.pipeline));
        }
        PluginCommand::Upgrade {
            name,
            file,
            version,
            shadow,
            canary,
            connect,
        } => upgrade(&connect, &name, &file, version.as_deref(), (shadow, canary)).await?,
        PluginCommand::Diff {
            name,
            json,
            connect,
        } => {
            let diff = connect.connect().await?.plugin_diff(&name).await?;
            if json {
                println!("{}", diff_json(&diff));
            } else {
                print!("{}", diff_text(&diff));
            }
        }
        PluginCommand::Promote { name, connect } => {
            let diff = connect.connect().await?.promote_plugin(&name).await?;
            print!("{}", diff_text(&diff));
            println!("promoted {} version {}", diff.name, diff.candidate);
        }
        PluginCommand::Rollback { name, connect } => {
            let diff = connect.connect().await?.rollback_plugin(&name).await?;
            print!("{}", diff_text(&diff));
            println!(
                "rolled back {} version {}; version {} goes on",
                diff.name, diff.candidate, diff.live
            );
        }
        PluginCommand::Remove { name, connect } => {
            connect.connect().await?.remove_plugin(&name).await?;
            println!("removed {name}");
        }
        PluginCommand::Status {
            name,
            json,
            connect,
        } => {
            let client = connect.connect().await?;
            let status = client.plugin_status(&name).await?;
            let sandboxes = client.plugin_sandboxes(&name).await?;
            if json {
                println!("{}", status_json(&status, &sandboxes));
            } else {
                print!("{}", status_text(&status, &sandboxes));
            }
        }
        PluginCommand::Lift { name, connect } => {
            let status = connect.connect().await?.lift_quarantine(&name).await?;
            print!("{}", status_text(&status, &[]));
        }
        PluginCommand::New(args) => super::project::new(args)?,
        PluginCommand::Build(args) => super::project::build(args)?,
        PluginCommand::Test(args) => test(args)?,
        PluginCommand::Replay(args) => replay(args).await?,
    }
    Ok(())
}

/// `plugin upgrade`: at once, or as a rollout (a shadow, or a canary of a share).
async fn upgrade(
    connect: &ConnectArgs,
    name: &str,
    file: &Path,
    version: Option<&str>,
    (shadow, canary): (bool, Option<u8>),
) -> anyhow::Result<()> {
    let wasm = read_wasm(file)?;
    let client = connect.connect().await?;
    let rollout = match (shadow, canary) {
        (false, None) => {
            let info = client.upgrade_plugin(name, wasm, version).await?;
            println!(
                "upgraded {} to version {} (sha256 {})",
                info.name, info.version, info.sha256
            );
            return Ok(());
        }
        (_, Some(percent)) => client.canary_plugin(name, wasm, version, percent).await?,
        (true, None) => client.shadow_plugin(name, wasm, version).await?,
    };
    let how = match rollout.canary_percent {
        Some(percent) => format!("gives {percent} % of the records, by key, to"),
        None => "shadows".to_owned(),
    };
    println!(
        "{name} version {} {how} version {}: see `quiver plugin diff {name}`",
        rollout.live, rollout.candidate
    );
    Ok(())
}

fn read_wasm(file: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(file).with_context(|| format!("reading {}", file.display()))
}

fn plugin_json(p: &PluginInfo) -> Value {
    json!({
        "name": p.name,
        "version": p.version,
        "sha256": p.sha256,
        "size": p.size,
        "deployed_ms": p.deployed_ms,
        "versions": p.versions,
        "cached": p.cached,
        "topics": p.topics,
    })
}

fn plugin_table(plugins: &[PluginInfo]) -> String {
    let rows: Vec<[String; 5]> = plugins
        .iter()
        .map(|p| {
            let topics = match p.topics.is_empty() {
                true => "-".to_owned(),
                false => p.topics.join(","),
            };
            [
                p.name.clone(),
                p.version.clone(),
                bytesize::ByteSize(p.size).to_string(),
                p.sha256.get(..12).unwrap_or(&p.sha256).to_owned(),
                topics,
            ]
        })
        .collect();
    output::table(["NAME", "VERSION", "SIZE", "SHA256", "TOPICS"], &rows)
}

fn diff_json(diff: &PluginDiff) -> Value {
    let samples: Vec<Value> = diff
        .samples
        .iter()
        .map(|s| {
            json!({
                "target": s.target,
                "offset": s.offset,
                "key": s.key.as_ref().map(|k| String::from_utf8_lossy(k).into_owned()),
                "payload": String::from_utf8_lossy(&s.payload),
                "live": s.live,
                "candidate": s.candidate,
            })
        })
        .collect();
    json!({
        "plugin": diff.name,
        "live": diff.live,
        "candidate": diff.candidate,
        "canary_percent": diff.canary_percent,
        "started_ms": diff.started_ms,
        "batches": diff.batches,
        "records": diff.records,
        "differing": diff.differing,
        "kinds": diff.kinds.iter().map(|(live, candidate, n)| {
            json!({"live": live, "candidate": candidate, "records": n})
        }).collect::<Vec<_>>(),
        "samples": samples,
        "live_micros": diff.live_micros,
        "candidate_micros": diff.candidate_micros,
        "candidate_errors": diff.candidate_errors,
        "last_error": diff.last_error,
    })
}

fn diff_text(diff: &PluginDiff) -> String {
    let per_batch = |micros: u64| match diff.batches {
        0 => "-".to_owned(),
        n => format!("{} µs", micros / n),
    };
    let share = match diff.records {
        0 => 0.0,
        n => 100.0 * diff.differing as f64 / n as f64,
    };
    let (what, decided) = match diff.canary_percent {
        Some(percent) => (
            format!(
                "canary version {} ({percent} % of the records, by key)",
                diff.candidate
            ),
            format!(
                "{} batches, {} records to the canary",
                diff.batches, diff.records
            ),
        ),
        None => (
            format!("shadow version {}", diff.candidate),
            format!(
                "{} batches, {} records: {} decided differently ({share:.1} %)",
                diff.batches, diff.records, diff.differing
            ),
        ),
    };
    let mut out = format!(
        "plugin {}: live version {}, {what}\n{decided}\n\
         per batch: live {}, candidate {}; candidate failures {}\n",
        diff.name,
        diff.live,
        per_batch(diff.live_micros),
        per_batch(diff.candidate_micros),
        diff.candidate_errors,
    );
    for (live, candidate, n) in &diff.kinds {
        out.push_str(&format!("  {live} -> {candidate}: {n}\n"));
    }
    for s in &diff.samples {
        out.push_str(&format!(
            "  e.g. {} offset {}: live {}; shadow {}; payload {:?}\n",
            s.target,
            s.offset,
            s.live,
            s.candidate,
            String::from_utf8_lossy(&s.payload)
        ));
    }
    if let Some(e) = &diff.last_error {
        out.push_str(&format!("  candidate's last failure: {e}\n"));
    }
    out
}

/// The sandbox of the attachment at `target`, if the broker named it.
fn sandbox_of<'a>(sandboxes: &'a [SandboxInfo], target: &str) -> Option<&'a SandboxInfo> {
    sandboxes.iter().find(|s| s.target == target)
}

fn status_json(status: &PluginStatus, sandboxes: &[SandboxInfo]) -> Value {
    let attachments: Vec<Value> = status
        .attachments
        .iter()
        .map(|a| {
            let sandbox = sandbox_of(sandboxes, &a.target).map(|s| {
                json!({
                    "language": s.language,
                    "memory_limit": s.memory_limit,
                    "call_timeout_ms": s.call_timeout_ms,
                    "memory_peak": s.memory_peak,
                    "asked": {
                        "memory": s.limits.memory,
                        "call_timeout_ms": s.limits.call_timeout_ms,
                    },
                })
            });
            json!({
                "target": a.target,
                "version": a.version,
                "on_error": output::on_error_text(a.on_error),
                "calls": a.calls,
                "records_in": a.records_in,
                "records_out": a.records_out,
                "errors": a.errors,
                "p50_us": a.p50_us,
                "p99_us": a.p99_us,
                "quarantined_until_ms": a.quarantined_until_ms,
                "last_error": a.last_error,
                "sandbox": sandbox,
            })
        })
        .collect();
    json!({ "plugin": plugin_json(&status.info), "attachments": attachments })
}

fn status_text(status: &PluginStatus, sandboxes: &[SandboxInfo]) -> String {
    let info = &status.info;
    let mut out = format!(
        "plugin:   {} version {} (sha256 {}, {})\nversions: {}\n",
        info.name,
        info.version,
        info.sha256,
        bytesize::ByteSize(info.size),
        info.versions.join(", ")
    );
    if status.attachments.is_empty() {
        out.push_str("attached nowhere\n");
    }
    for a in &status.attachments {
        let state = match a.quarantined_until_ms {
            Some(until) => format!(
                "QUARANTINED until {}",
                humantime::format_rfc3339_millis(
                    std::time::UNIX_EPOCH + std::time::Duration::from_millis(until)
                )
            ),
            None => "active".into(),
        };
        out.push_str(&format!(
            "{} ({}, {}): {state}\n  calls {}  records in {}  out {}  errors {}  per batch p50 {} µs  p99 {} µs\n",
            a.target,
            if a.version.is_empty() { "not run yet" } else { &a.version },
            output::on_error_text(a.on_error),
            a.calls,
            a.records_in,
            a.records_out,
            a.errors,
            a.p50_us,
            a.p99_us,
        ));
        if let Some(s) = sandbox_of(sandboxes, &a.target) {
            let chosen = |set: bool| if set { "" } else { " (default)" };
            out.push_str(&format!(
                "  {}: memory {} of {}{}  deadline {}{}\n",
                s.language,
                bytesize::ByteSize(s.memory_peak).display().iec(),
                bytesize::ByteSize(s.memory_limit).display().iec(),
                chosen(s.limits.memory.is_some()),
                humantime::format_duration(std::time::Duration::from_millis(s.call_timeout_ms)),
                chosen(s.limits.call_timeout_ms.is_some()),
            ));
        }
        if let Some(e) = &a.last_error {
            out.push_str(&format!("  last error: {e}\n"));
        }
    }
    out
}

/// State kept in memory for local runs.
#[derive(Default)]
struct MemoryState(Mutex<HashMap<Vec<u8>, Vec<u8>>>);

impl StateSource for MemoryState {
    fn get(&self, _plugin: &str, key: &[u8]) -> Result<Option<Vec<u8>>, String> {
        Ok(self
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
            .cloned())
    }
}

/// Where local runs cache compiled components, as a broker does in its data dir, so
/// that only the first run of a component compiles it (seconds for an interpreter's
/// component): `QUIVER_PLUGIN_CACHE`, else `$XDG_CACHE_HOME/quiver/plugins`, else
/// `~/.cache/quiver/plugins`; none when none is set or the folder cannot be made.
fn local_cache_dir() -> Option<PathBuf> {
    let var = |name| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    var("QUIVER_PLUGIN_CACHE")
        .or_else(|| var("XDG_CACHE_HOME").map(|d| d.join("quiver/plugins")))
        .or_else(|| var("HOME").map(|d| d.join(".cache/quiver/plugins")))
        .filter(|dir| std::fs::create_dir_all(dir).is_ok())
}

/// A plugin loaded into a local runtime.
struct Local {
    instance: crate::plugins::runtime::Instance,
    runtime: Runtime,
    compiled: crate::plugins::runtime::Compiled,
    context: CallContext,
    state: Arc<MemoryState>,
    /// Each call's time, in µs.
    call_micros: Vec<u64>,
    /// The most linear memory any instance reached.
    memory_peak: usize,
}

impl Local {
    fn load(
        file: &Path,
        params: Vec<(String, String)>,
        sandbox: &LocalSandbox,
    ) -> anyhow::Result<Self> {
        let wasm = read_wasm(file)?;
        let config = Config::default();
        let policy = SandboxPolicy::from_settings(&config.plugins);
        policy
            .check(sandbox.limits())
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let limits = SandboxLimits::from_settings(&config.plugins, config.limits.max_record_size);
        let runtime = Runtime::new(limits, local_cache_dir())?;
        let sha256: [u8; 32] = Sha256::digest(&wasm).into();
        let compiled = runtime.compile(&wasm, &sha256)?;
        let sandbox = policy.resolve(compiled.language, sandbox.limits());
        let state = Arc::new(MemoryState::default());
        let name = file
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("plugin");
        let context = CallContext {
            plugin: name.into(),
            version: format!("local-{}", &hex(&sha256)[..12]).into(),
            params: params.into(),
            state: Arc::clone(&state) as Arc<dyn StateSource>,
        };
        let instance = runtime.instantiate(&compiled, context.clone(), sandbox)?;
        Ok(Self {
            instance,
            runtime,
            compiled,
            context,
            state,
            call_micros: Vec::new(),
            memory_peak: 0,
        })
    }

    /// Runs one batch and prints one JSON line per record; returns whether it failed.
    fn run(
        &mut self,
        topic: &str,
        batch: &[(u64, u64, NewRecord)],
        out: &mut impl Write,
    ) -> anyhow::Result<bool> {
        let events: Vec<InputEvent<'_>> = batch
            .iter()
            .map(|(offset, timestamp, record)| InputEvent {
                offset: *offset,
                timestamp: *timestamp,
                record,
            })
            .collect();
        let started = std::time::Instant::now();
        let result = self.instance.process(topic, &events);
        self.call_micros
            .push(u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX));
        self.memory_peak = self.memory_peak.max(self.instance.memory_peak());
        match result {
            Ok(output) => {
                let mut state = self.state.0.lock().unwrap_or_else(PoisonError::into_inner);
                for (key, value) in output.state {
                    match value {
                        Some(value) => state.insert(key, value),
                        None => state.remove(&key),
                    };
                }
                for ((offset, _, _), outcome) in batch.iter().zip(output.outcomes) {
                    writeln!(out, "{}", outcome_json(*offset, &outcome))?;
                }
                Ok(false)
            }
            Err(e) => {
                for (offset, _, _) in batch {
                    writeln!(
                        out,
                        "{}",
                        json!({"offset": offset, "outcome": "error", "reason": e.to_string()})
                    )?;
                }
                if e.poisons_instance() {
                    let sandbox = self.instance.sandbox();
                    self.instance =
                        self.runtime
                            .instantiate(&self.compiled, self.context.clone(), sandbox)?;
                }
                Ok(true)
            }
        }
    }
}

impl Local {
    /// One line on what the run used, against the sandbox it ran in: what to size an
    /// attachment's `--deadline` and `--memory` from.
    fn summary(&self) -> String {
        let mut micros = self.call_micros.clone();
        micros.sort_unstable();
        let at = |q: f64| {
            let i = ((micros.len() as f64 * q).ceil() as usize).clamp(1, micros.len().max(1));
            micros.get(i - 1).copied().unwrap_or(0) as f64 / 1000.0
        };
        let sandbox = self.instance.sandbox();
        format!(
            "{} calls: per call p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (deadline {}); \
             memory peak {} of {} ({} plugin)",
            micros.len(),
            at(0.5),
            at(0.99),
            at(1.0),
            humantime::format_duration(sandbox.call_timeout),
            bytesize::ByteSize(self.memory_peak as u64).display().iec(),
            bytesize::ByteSize(sandbox.memory_bytes as u64)
                .display()
                .iec(),
            self.compiled.language,
        )
    }
}

fn outcome_json(offset: u64, outcome: &Outcome) -> Value {
    match outcome {
        Outcome::Keep => json!({"offset": offset, "outcome": "keep"}),
        Outcome::Drop => json!({"offset": offset, "outcome": "drop"}),
        Outcome::Replace(records) => json!({
            "offset": offset,
            "outcome": "replace",
            "records": records.iter().map(output::new_record_json).collect::<Vec<_>>(),
        }),
        Outcome::Route(topics) => json!({"offset": offset, "outcome": "route", "topics": topics}),
        Outcome::Reject(reason) => json!({"offset": offset, "outcome": "reject", "reason": reason}),
    }
}

fn test(args: TestArgs) -> anyhow::Result<()> {
    let mut local = Local::load(&args.file, args.params, &args.sandbox)?;
    let input = std::fs::File::open(&args.input)
        .with_context(|| format!("opening {}", args.input.display()))?;
    let now = crate::util::now_ms();
    let mut records = Vec::new();
    let mut raw_lines = 0;
    for (n, line) in std::io::BufReader::new(input).lines().enumerate() {
        let line = line.with_context(|| format!("reading {}", args.input.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        // A line that is not a record (plain text, or a JSON log line with no record
        // field) is a payload as it is: said once, so an outcome is never read off an
        // empty payload by mistake.
        let parsed = serde_json::from_str::<Value>(&line).ok();
        let is_record = parsed
            .as_ref()
            .and_then(Value::as_object)
            .is_some_and(|object| {
                output::RECORD_FIELDS
                    .iter()
                    .any(|field| object.contains_key(*field))
            });
        let value = match (is_record, parsed) {
            (true, Some(value)) => value,
            _ => {
                if raw_lines == 0 {
                    eprintln!(
                        "note: {} line {} is not a record as `quiver sub --json` prints \
                         them (no payload, payload_base64, key or headers field): the \
                         whole line is taken as the payload, as are such lines after it",
                        args.input.display(),
                        n + 1
                    );
                }
                raw_lines += 1;
                json!({"payload": line})
            }
        };
        let record = output::record_from_json(&value)
            .map_err(|e| anyhow::anyhow!("{} line {}: {e}", args.input.display(), n + 1))?;
        let topic = args
            .topic
            .clone()
            .or_else(|| {
                value
                    .get("topic")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            })
            .unwrap_or_else(|| "test".into());
        let offset = value
            .get("offset")
            .and_then(Value::as_u64)
            .unwrap_or(records.len() as u64);
        let timestamp = value
            .get("timestamp")
            .and_then(Value::as_u64)
            .unwrap_or(now);
        records.push((topic, (offset, timestamp, record)));
    }
    let mut stdout = std::io::stdout().lock();
    let mut failed = false;
    // What was printed, kept only to compare with --expect.
    let mut printed = Vec::new();
    // Consecutive records of one topic share a call, up to --batch.
    let mut rest = records.as_slice();
    while let Some((topic, _)) = rest.first() {
        let same = rest
            .iter()
            .take(args.batch.max(1))
            .take_while(|(t, _)| t == topic)
            .count();
        let batch: Vec<_> = rest[..same].iter().map(|(_, r)| r.clone()).collect();
        let mut lines = Vec::new();
        failed |= local.run(topic, &batch, &mut lines)?;
        stdout.write_all(&lines)?;
        if args.expect.is_some() {
            printed.extend_from_slice(&lines);
        }
        rest = &rest[same..];
    }
    stdout.flush()?;
    eprintln!("{}", local.summary());
    if let Some(expect) = &args.expect {
        check_expected(expect, &printed)?;
    } else if failed {
        bail!("the plugin failed on some records (see the `error` outcomes above)");
    }
    Ok(())
}

/// Compares the outcomes printed with those in `expect`, line by line as JSON values
/// (so key order and spacing do not matter).
fn check_expected(expect: &Path, printed: &[u8]) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(expect).with_context(|| format!("reading {}", expect.display()))?;
    let expected = text
        .lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(n, line)| {
            serde_json::from_str::<Value>(line)
                .with_context(|| format!("{} line {}", expect.display(), n + 1))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let got = String::from_utf8_lossy(printed)
        .lines()
        .map(serde_json::from_str::<Value>)
        .collect::<Result<Vec<_>, _>>()
        .context("reading back the outcomes printed")?;
    if let Some((n, (want, have))) = expected
        .iter()
        .zip(&got)
        .enumerate()
        .find(|(_, (want, have))| want != have)
    {
        bail!(
            "record {n} (line {}) is not as expected in {}:\n  expected {want}\n  got      {have}",
            n + 1,
            expect.display()
        );
    }
    if expected.len() != got.len() {
        bail!(
            "{} expects {} outcomes; the plugin gave {}",
            expect.display(),
            expected.len(),
            got.len()
        );
    }
    eprintln!("{} outcomes as expected in {}", got.len(), expect.display());
    Ok(())
}

async fn replay(args: ReplayArgs) -> anyhow::Result<()> {
    let mut local = Local::load(&args.file, args.params.clone(), &args.sandbox)?;
    let client = args.connect.connect().await?;
    let info = client.describe_topic(&args.topic).await?;
    let options = SubscribeOptions {
        from: args.from,
        ..SubscribeOptions::default()
    };
    let mut subscription = client.subscribe(&args.topic, options).await?;
    let mut stdout = std::io::stdout().lock();
    let mut failed = false;
    let mut batch = Vec::new();
    // Stored records only: stop at the end the topic had when the replay started (or
    // when nothing more arrives: a start time after the last record).
    let end = info.next_offset;
    let mut left = args.count.unwrap_or(u64::MAX);
    let nothing_stored = info.records == 0 || matches!(args.from, StartAt::Latest);
    let total = args
        .count
        .map_or(info.records, |count| count.min(info.records));
    let bar = output::progress(Some(total), "replaying", true);
    while left > 0 && !nothing_stored {
        let next = tokio::time::timeout(REPLAY_IDLE, subscription.next()).await;
        let Ok(Some(record)) = next else { break };
        let record = record?;
        if record.offset >= end {
            break;
        }
        left -= 1;
        bar.inc(1);
        let stored = record.into_stored();
        batch.push((
            stored.offset,
            stored.timestamp,
            NewRecord {
                key: stored.key,
                headers: stored.headers,
                payload: stored.payload,
            },
        ));
        if batch.len() >= args.batch.max(1) {
            failed |= local.run(&args.topic, &batch, &mut stdout)?;
            batch.clear();
        }
    }
    if !batch.is_empty() {
        failed |= local.run(&args.topic, &batch, &mut stdout)?;
    }
    bar.finish_and_clear();
    stdout.flush()?;
    if failed {
        bail!("the plugin failed on some records (see the `error` outcomes above)");
    }
    Ok(())
}
