//! The per-record cost of plugins, by batch size, through the real runtime, with
//! batches of 1, 16 and 256 events of ~270 bytes with 4 headers:
//! - `json-filter` (the example filter: parses each JSON payload, compares a field,
//!   keeps a quarter of the events);
//! - `template` (the example that adds a header: no parsing, but every event crosses
//!   back out as a new record), for the cost of crossing the boundary itself.
//!
//! Needs the example plugins: `make plugins`, then
//! `cargo bench -p quiver-host --bench plugin_call`.

use std::path::Path;
use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use quiver_host::config::Config;
use quiver_host::plugins::runtime::{CallContext, Runtime, SandboxLimits};
use quiver_host::plugins::sandbox::SandboxPolicy;
use quiver_host::plugins::{InputEvent, StateSource};
use quiver_protocol::{NewRecord, StageLimits};
use sha2::{Digest, Sha256};

struct NoState;

impl StateSource for NoState {
    fn get(&self, _plugin: &str, _key: &[u8]) -> Result<Option<Vec<u8>>, String> {
        Ok(None)
    }
}

fn event(i: usize) -> NewRecord {
    let level = ["debug", "info", "warn", "error"][i % 4];
    let payload = format!(
        r#"{{"ts":"2026-11-22T10:00:{:02}Z","level":"{level}","service":"checkout","host":"edge-7","msg":"request handled","route":"/api/v1/orders/{i}","status":200,"latency_ms":{}}}"#,
        i % 60,
        i % 500
    );
    let mut record = NewRecord::new(format!("{payload:<270}"));
    for (name, value) in [
        ("content-type", "application/json"),
        ("source", "edge-7"),
        ("tenant", "acme"),
        ("trace", "4bf92f3577b34da6"),
    ] {
        record = record.with_header(name, value);
    }
    record
}

fn bench_plugin(c: &mut Criterion, runtime: &Runtime, plugin: &str, params: &[(&str, &str)]) {
    let wasm_path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../plugins/target/wasm32-wasip2/release")
        .join(format!("{}.wasm", plugin.replace('-', "_")));
    let wasm = std::fs::read(&wasm_path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (build it with `make plugins`)",
            wasm_path.display()
        )
    });
    let sha: [u8; 32] = Sha256::digest(&wasm).into();
    let compiled = runtime.compile(&wasm, &sha).expect("the plugin compiles");
    let context = CallContext {
        plugin: plugin.into(),
        version: "bench".into(),
        params: params
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect::<Vec<_>>()
            .into(),
        state: Arc::new(NoState),
    };
    let sandbox = SandboxPolicy::from_settings(&Config::default().plugins)
        .resolve(compiled.language, StageLimits::default());
    let mut instance = runtime
        .instantiate(&compiled, context, sandbox)
        .expect("it instantiates");
    let records: Vec<NewRecord> = (0..256).map(event).collect();

    let mut group = c.benchmark_group(plugin);
    for batch in [1usize, 16, 256] {
        let events: Vec<InputEvent<'_>> = records[..batch]
            .iter()
            .enumerate()
            .map(|(i, record)| InputEvent {
                offset: i as u64,
                timestamp: 0,
                record,
            })
            .collect();
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_with_input(BenchmarkId::new("batch", batch), &events, |b, events| {
            b.iter(|| instance.process("logs", events).expect("the plugin runs"));
        });
    }
    group.finish();
}

fn bench(c: &mut Criterion) {
    let config = Config::default();
    let limits = SandboxLimits::from_settings(&config.plugins, config.limits.max_record_size);
    let runtime = Runtime::new(limits, None).expect("the runtime starts");
    bench_plugin(
        c,
        &runtime,
        "json-filter",
        &[
            ("where", "level >= warn"),
            ("order", "debug,info,warn,error"),
        ],
    );
    bench_plugin(c, &runtime, "template", &[]);
}

criterion_group!(benches, bench);
criterion_main!(benches);
