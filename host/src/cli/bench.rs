//! `quiver bench`: the load scenarios of [`crate::bench`], from the command line.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use bytesize::ByteSize;
use clap::Args;
use futures::FutureExt;
use futures::future::BoxFuture;
use quiver_client::Client;

use super::{ConnectArgs, DurabilityArgs};
use crate::bench::own_broker::OwnBroker;
use crate::bench::{self, Connector, Report, Scenario, Settings};

#[derive(Debug, Args)]
pub(super) struct BenchArgs {
    /// publish: durable publish throughput and publish-to-ack latency; e2e: producers
    /// and consumers, publish-to-receive latency; fanout: every subscriber gets every
    /// record; group: a durable group whose members ack each record; plugin: publish
    /// through the json-filter plugin, against the same without it; restart: a client
    /// publishing while the bench's own broker restarts (--restarts times with SIGTERM,
    /// as many with SIGKILL), how soon it is back; link: an edge and a hub of the
    /// bench's own, the catch-up of a backlog of --count records, latency through the
    /// link at --rate (default 5,000/s), and the link's cost to the edge's publishes;
    /// mqtt: --devices MQTT clients publishing --count messages at QoS 1 (--window in
    /// flight each) and one subscriber, against the bench's own broker and against
    /// mosquitto (persistence on), alternating for --rounds.
    #[arg(value_enum)]
    scenario: Scenario,
    /// mqtt: device counts to measure, each against both brokers.
    #[arg(long, value_delimiter = ',', default_value = "1,100")]
    devices: Vec<usize>,
    /// mqtt: rounds, each measuring every device count on both brokers.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// mqtt: the mosquitto broker binary (`make bench-tools` installs Debian's).
    #[arg(long, default_value = "/usr/sbin/mosquitto")]
    mosquitto: PathBuf,
    /// Restarts of each kind (restart).
    #[arg(long, default_value_t = 10)]
    restarts: usize,
    /// link: the hub on the last CPU, the edge and the bench on the others (with
    /// `taskset`), as if the hub ran on a machine of its own.
    #[arg(long)]
    pin: bool,
    /// Payload bytes per record (at least 16: a timestamp and a sequence number).
    #[arg(long, default_value_t = ByteSize::b(256))]
    size: ByteSize,
    /// Records to publish in all.
    #[arg(long, default_value_t = 1_000_000)]
    count: u64,
    /// Records per second in all [default: as fast as acknowledgements allow].
    #[arg(long, value_name = "MSGS_PER_S")]
    rate: Option<u64>,
    /// Producer connections.
    #[arg(long, default_value_t = 1)]
    producers: usize,
    /// Subscribers (e2e, fanout) or group members (group) [default: 1; fanout: 4].
    #[arg(long)]
    consumers: Option<usize>,
    /// Publishes in flight per producer.
    #[arg(long, default_value_t = 1024)]
    window: usize,
    /// Records per publish.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Records a group member holds unacknowledged (group).
    #[arg(long, default_value_t = 1024)]
    prefetch: u32,
    /// group: publish --count records first, then start the members and time only
    /// their drain of the queue.
    #[arg(long)]
    prefill: bool,
    /// group: members nack every delivery with this delay instead of acking it, the
    /// load of a queue whose downstream is down (nothing is dead-lettered; a delay
    /// longer than the run leaves every record pending when the group is deleted).
    #[arg(long, value_name = "DELAY", value_parser = humantime::parse_duration)]
    nack_delay: Option<Duration>,
    /// Topics to spread the records over (each publish goes to the next in turn;
    /// consumers subscribe to a pattern matching them all).
    #[arg(long, default_value_t = 1)]
    topics: usize,
    /// Give each topic a retention of at most N records, so that the broker's
    /// retention sweep trims them while the run goes on.
    #[arg(long, value_name = "N")]
    retain_records: Option<u64>,
    #[command(flatten)]
    durability: DurabilityArgs,
    /// Stop publishing after this long, whatever --count says (the report then says
    /// the run was cut short).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    time_limit: Duration,
    /// The component the plugin scenario attaches to its topic [default: the
    /// json-filter example, with `where=seq >= 0`, which keeps every record].
    #[arg(
        long,
        value_name = "FILE",
        default_value = "plugins/target/wasm32-wasip2/release/json_filter.wasm"
    )]
    plugin: PathBuf,
    /// A parameter of the plugin scenario's attachment, NAME=VALUE (repeatable;
    /// replaces the default `where=seq >= 0`). Records are JSON:
    /// `{"seq":N,"ts":T,"pad":"…"}`.
    #[arg(long = "param", value_name = "NAME=VALUE", value_parser = super::args::parse_header)]
    params: Vec<(String, String)>,
    /// Leave the bench's topics and records on the broker, the group scenario's group
    /// and the plugin scenario's plugin (with --server: to measure a broker holding
    /// data).
    #[arg(long)]
    keep: bool,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// Broker to load, host:port [default: start one on a temp dir].
    #[arg(long, env = "QUIVER_SERVER")]
    server: Option<String>,
    /// Certificate to trust for --server (see `quiver sub --help`).
    #[arg(long, env = "QUIVER_CA", requires = "server")]
    ca: Option<PathBuf>,
    /// Token for --server, where it requires authentication (`quiver auth`).
    #[arg(
        long,
        env = "QUIVER_TOKEN",
        hide_env_values = true,
        requires = "server"
    )]
    token: Option<String>,
}

/// Connects to the broker under test.
struct Connect(ConnectArgs);

impl Connector for Connect {
    fn connect(&self) -> BoxFuture<'_, anyhow::Result<Client>> {
        self.0.connect().boxed()
    }
}

pub(super) async fn run(args: BenchArgs) -> anyhow::Result<()> {
    if args.scenario == Scenario::Restart {
        return restart(&args).await;
    }
    if args.scenario == Scenario::Mqtt {
        return mqtt(&args).await;
    }
    let plugin = match args.scenario {
        Scenario::Plugin => Some(
            std::fs::read(&args.plugin)
                .with_context(|| {
                    format!(
                        "reading {} (`make example-plugins` builds it; --plugin names another)",
                        args.plugin.display()
                    )
                })?
                .into(),
        ),
        _ => None,
    };
    if !args.params.is_empty() && args.scenario != Scenario::Plugin {
        bail!("--param sets the plugin scenario's parameters: use it with `quiver bench plugin`");
    }
    let default_consumers = match args.scenario {
        Scenario::Publish | Scenario::Plugin => 0,
        Scenario::Fanout => 4,
        Scenario::E2e | Scenario::Group => 1,
        Scenario::Restart | Scenario::Link | Scenario::Mqtt => 0,
    };
    let settings = Settings {
        scenario: args.scenario,
        size: usize::try_from(args.size.as_u64()).context("--size is too large")?,
        count: args.count,
        rate: args.rate,
        producers: args.producers,
        consumers: args.consumers.unwrap_or(default_consumers),
        window: args.window,
        batch: args.batch,
        prefetch: args.prefetch,
        prefill: args.prefill,
        nack_delay: args.nack_delay,
        time_limit: args.time_limit,
        topics: args.topics,
        retain_records: args.retain_records,
        durability: args.durability.durability(),
        keep: args.keep,
        plugin,
        plugin_params: args.params.clone(),
        progress: super::output::progress(Some(args.count), "acknowledged", false),
    };
    settings.validate()?;
    if args.scenario == Scenario::Link {
        if args.server.is_some() {
            bail!("the link scenario runs two brokers of its own: leave out --server");
        }
        let report = bench::link::run(&settings, args.pin).await?;
        settings.progress.finish_and_clear();
        match args.json {
            true => println!("{}", report.json()),
            false => print!("{}", report.text()),
        }
        return Ok(());
    }
    let (own, connect) = match args.server {
        Some(server) => (
            None,
            ConnectArgs {
                token: args.token,
                ..ConnectArgs::to(server, args.ca)
            },
        ),
        None => {
            let own = OwnBroker::start()?;
            let connect = ConnectArgs::to(own.addr.clone(), Some(own.cert.clone()));
            (Some(own), connect)
        }
    };
    let progress = settings.progress.clone();
    // What the bench's own broker uses during the run; a broker of `--server` is not
    // this process's to measure.
    let start = own.as_ref().map(|own| (own, own.snapshot()));
    let report = bench::run(settings, Arc::new(Connect(connect))).await?;
    progress.finish_and_clear();
    let usage = start.map(|(own, start)| own.usage_since(&start));
    if args.json {
        let mut json = report.json();
        if let Some(usage) = &usage {
            usage.add_json(&mut json);
        }
        println!("{json}");
    } else {
        print!("{}", text(&report));
        if let Some(usage) = &usage {
            print!("{}", usage.text());
        }
    }
    Ok(())
}

/// The restart scenario, on the bench's own broker.
async fn restart(args: &BenchArgs) -> anyhow::Result<()> {
    if args.server.is_some() {
        bail!("the restart scenario restarts the bench's own broker: leave out --server");
    }
    let report = bench::restart::run(args.restarts).await?;
    if args.json {
        println!("{}", report.json());
    } else {
        println!(
            "restart: one client publishing one record at a time, {} records in all",
            report.published
        );
        println!(
            "  {} restarts after SIGTERM: {}",
            args.restarts,
            report.term.text()
        );
        println!(
            "  {} restarts after SIGKILL: {}",
            args.restarts,
            report.kill.text()
        );
    }
    Ok(())
}

/// The mqtt scenario: the bench's own broker against mosquitto.
async fn mqtt(args: &BenchArgs) -> anyhow::Result<()> {
    if args.server.is_some() {
        bail!("the mqtt scenario runs its own broker and mosquitto: leave out --server");
    }
    if args.devices.is_empty() || args.devices.contains(&0) || args.rounds == 0 {
        bail!("--devices needs counts of at least 1, and --rounds at least 1");
    }
    let settings = bench::mqtt::MqttBench {
        devices: args.devices.clone(),
        count: args.count,
        size: usize::try_from(args.size.as_u64()).context("--size is too large")?,
        window: u16::try_from(args.window.clamp(1, usize::from(u16::MAX))).unwrap_or(u16::MAX),
        rounds: args.rounds,
        time_limit: args.time_limit,
        mosquitto: args.mosquitto.clone(),
    };
    println!(
        "mqtt: {} messages of {} per measurement at QoS 1, {} in flight per device, one \
         subscriber on bench/#, {} rounds",
        args.count,
        ByteSize::b(args.size.as_u64()),
        settings.window,
        args.rounds
    );
    let measurements = bench::mqtt::run(&settings).await?;
    if args.json {
        let all: Vec<_> = measurements.iter().map(|m| m.json()).collect();
        println!("{}", serde_json::Value::Array(all));
    } else {
        for measurement in &measurements {
            println!("{}", measurement.text());
        }
    }
    Ok(())
}

/// The report as a few lines of text.
fn text(report: &Report) -> String {
    let s = &report.settings;
    let plural = |n: usize, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
    let mut out = format!(
        "{}: {}, {}, {}, {} records, batch {}, window {}, {}{}\n",
        format!("{:?}", report.scenario).to_lowercase(),
        plural(s.producers, "producer"),
        plural(s.consumers, "consumer"),
        plural(s.topics, "topic"),
        ByteSize::b(s.size as u64),
        s.batch,
        s.window,
        s.durability,
        s.rate
            .map(|r| format!(", paced at {r} msgs/s"))
            .unwrap_or_default(),
    );
    let line = |report: &Report, label: &str| {
        format!(
            "  {label}{} records in {:.2} s: {:.0} msgs/s, {:.1} MB/s{}\n",
            report.published,
            report.elapsed.as_secs_f64(),
            report.msgs_per_s(),
            report.mb_per_s(),
            match report.per_consumer {
                true => format!(" per consumer ({} received by each)", report.received_min),
                false => String::new(),
            },
        )
    };
    if let Some(baseline) = &report.baseline {
        out.push_str(&line(baseline, "without the plugin: "));
        out.push_str(&line(report, "with the plugin:    "));
        if let Some(cost) = report.cost_percent() {
            out.push_str(&format!("  throughput cost of the plugin: {cost:.1} %\n"));
        }
        if let Some(plugin) = report.plugin {
            if plugin.calls > 0 {
                let per_call = report.published as f64 / plugin.calls as f64;
                out.push_str(&format!(
                    "  plugin calls: {} ({per_call:.1} records per call)\n",
                    plugin.calls
                ));
            }
            out.push_str(&format!(
                "  records its topic holds: {} of the {} published\n",
                plugin.kept, report.published
            ));
        }
    } else {
        out.push_str(&line(report, ""));
    }
    if report.cut_short() {
        out.push_str(&format!(
            "  cut short by --time-limit {}: {} of the {} records asked for\n",
            humantime::format_duration(report.settings.time_limit),
            report.published,
            report.settings.count,
        ));
    }
    if !report.per_member.is_empty() {
        let counts: Vec<String> = report.per_member.iter().map(u64::to_string).collect();
        out.push_str(&format!(
            "  {} per member (prefetch {}{}): {}\n",
            match report.settings.nack_delay {
                Some(_) => "nacked",
                None => "acked",
            },
            report.settings.prefetch,
            match report.settings.prefill {
                true => ", queue filled first, drain timed",
                false => ", producer publishing meanwhile",
            },
            counts.join(" / ")
        ));
    }
    let h = &report.latency;
    let ms = |us: u64| format!("{:.2} ms", us as f64 / 1000.0);
    let what = match report.scenario {
        Scenario::Publish
        | Scenario::Plugin
        | Scenario::Restart
        | Scenario::Link
        | Scenario::Mqtt => "publish to ack",
        _ => "publish to receive",
    };
    out.push_str(&format!(
        "  latency, {what}: p50 {}  p90 {}  p99 {}  p99.9 {}  max {}\n",
        ms(h.value_at_quantile(0.5)),
        ms(h.value_at_quantile(0.9)),
        ms(h.value_at_quantile(0.99)),
        ms(h.value_at_quantile(0.999)),
        ms(h.max()),
    ));
    if let Some((created, deleted)) = report.topics_setup {
        out.push_str(&format!(
            "  {} topics created in {:.2} s{}\n",
            report.settings.topics,
            created.as_secs_f64(),
            deleted
                .map(|d| format!(", deleted in {:.2} s", d.as_secs_f64()))
                .unwrap_or_default()
        ));
    }
    out
}
