//! `quiver bench`: load scenarios run through the client SDK against a broker (its own,
//! started on a temp dir, or one given with `--server`), measuring throughput and
//! latency with hdrhistogram.
//!
//! - `load`: producers (a window of publishes in flight each, optionally paced) and
//!   consumers (subscriptions or group members), with the clocks they stamp;
//! - `own_broker`: the broker the bench starts for itself;
//! - `restart`: the restart scenario, a client riding through restarts of that broker;
//! - `link`: the link scenario, an edge and a hub of the bench's own and a link between;
//! - `mqtt`: MQTT devices against the bench's own broker and against mosquitto;
//! - this module: the scenarios and their [`Report`].
//!
//! Every run is bounded: by `count` records and by `time_limit`, whichever comes
//! first. Scenarios create their own topics (and group) with unique names and delete
//! them at the end (`keep` leaves the topics, to measure a broker holding data). With
//! several topics, producers publish to each in turn and consumers subscribe to (or
//! group over) a pattern matching them all.

pub mod link;
mod load;
pub mod mqtt;
pub mod own_broker;
pub mod restart;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use hdrhistogram::Histogram;
use quiver_client::{
    Client, Durability, GroupSettings, OnError, Retention, Stage, StartAt, TopicConfig,
};
use serde_json::{Value, json};

use load::{Consumers, Payloads, Producers, Source};

/// What a run measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// Durable publish throughput, and publish-to-ack latency.
    Publish,
    /// Producers and consumers: publish-to-receive latency.
    E2e,
    /// One topic, many subscribers, each receiving every record.
    Fanout,
    /// A durable group whose members ack every record.
    Group,
    /// Publishing through an ingress filter plugin, against the same without it.
    Plugin,
    /// A client publishing while the bench's own broker restarts (run by
    /// [`restart::run`], not [`run`]).
    Restart,
    /// Two brokers of the bench's own and a link between them: catch-up, latency
    /// through the link, and its cost to the edge's publishes (run by [`link::run`]).
    Link,
    /// MQTT devices publishing at QoS 1 and a subscriber, against the bench's own
    /// broker and against mosquitto in the same run (run by [`mqtt::run`]).
    Mqtt,
}

/// How a run is shaped.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The scenario.
    pub scenario: Scenario,
    /// Bytes per record payload.
    pub size: usize,
    /// Records to publish, in total.
    pub count: u64,
    /// Records per second in total, or as fast as possible.
    pub rate: Option<u64>,
    /// Producer connections.
    pub producers: usize,
    /// Consumers: subscriptions (e2e, fanout) or group members (group).
    pub consumers: usize,
    /// Publishes in flight per producer.
    pub window: usize,
    /// Records per publish.
    pub batch: usize,
    /// Records a group member holds unacked at once.
    pub prefetch: u32,
    /// group: publish every record first, then start the members and time only their
    /// drain of the queue.
    pub prefill: bool,
    /// group: members nack every delivery with this delay instead of acking it.
    pub nack_delay: Option<Duration>,
    /// The run stops publishing after this long.
    pub time_limit: Duration,
    /// Topics the records are spread over.
    pub topics: usize,
    /// Retention of each topic: at most this many records (the broker's retention
    /// sweep trims them while the run goes on).
    pub retain_records: Option<u64>,
    /// When the topics' publishes are acknowledged.
    pub durability: Durability,
    /// Leave the topics and their records on the broker at the end, and the group or
    /// plugin the scenario made.
    pub keep: bool,
    /// The plugin's component (plugin scenario).
    pub plugin: Option<Bytes>,
    /// Its parameters; none: the json-filter's `where=seq >= 0`, which keeps every
    /// record (the cost measured is the call, not fewer appends).
    pub plugin_params: Vec<(String, String)>,
    /// Moved on by each acknowledged record (hidden unless someone watches).
    pub progress: indicatif::ProgressBar,
}

/// The smallest payload: a timestamp and a sequence number.
pub const MIN_SIZE: usize = 16;

/// What a run measured.
#[derive(Debug)]
pub struct Report {
    /// The scenario.
    pub scenario: Scenario,
    /// Records published and acknowledged.
    pub published: u64,
    /// Records each consumer received, at the least (0 without consumers).
    pub received_min: u64,
    /// Wall time from the first publish to the last record acknowledged or received.
    pub elapsed: Duration,
    /// Latency in microseconds: publish-to-ack (publish, plugin) or
    /// publish-to-receive (the others).
    pub latency: Histogram<u64>,
    /// What the measured figure counts: records per second as published, or as each
    /// consumer received them.
    pub per_consumer: bool,
    /// For the plugin scenario: the same run without the plugin.
    pub baseline: Option<Box<Report>>,
    /// For the plugin scenario: what the plugin did with the records.
    pub plugin: Option<PluginFigures>,
    /// With several topics: how long creating them took, and deleting them at the end
    /// (`None` with `--keep`).
    pub topics_setup: Option<(Duration, Option<Duration>)>,
    /// For the group scenario: records each member received (and acked), in the
    /// order they joined.
    pub per_member: Vec<u64>,
    /// The settings.
    pub settings: Settings,
}

impl Report {
    /// Records per second: published (publish, plugin, group) or received by each
    /// consumer (e2e, fanout).
    pub fn msgs_per_s(&self) -> f64 {
        let records = if self.per_consumer {
            self.received_min
        } else {
            self.published
        };
        records as f64 / self.elapsed.as_secs_f64().max(f64::EPSILON)
    }

    /// Whether the time limit stopped the run before `count` records: its figures are
    /// then for fewer records than asked for.
    pub fn cut_short(&self) -> bool {
        self.published < self.settings.count
    }

    /// Payload megabytes (10^6 bytes) per second, by the same count.
    pub fn mb_per_s(&self) -> f64 {
        self.msgs_per_s() * self.settings.size as f64 / 1e6
    }

    /// The throughput this run lost against its baseline, in percent.
    pub fn cost_percent(&self) -> Option<f64> {
        let baseline = self.baseline.as_ref()?.msgs_per_s();
        Some((1.0 - self.msgs_per_s() / baseline.max(f64::EPSILON)) * 100.0)
    }

    /// The report as one JSON object.
    pub fn json(&self) -> Value {
        let s = &self.settings;
        let q = |q: f64| self.latency.value_at_quantile(q);
        let mut out = json!({
            "scenario": format!("{:?}", self.scenario).to_lowercase(),
            "size": s.size,
            "producers": s.producers,
            "consumers": s.consumers,
            "window": s.window,
            "batch": s.batch,
            "rate": s.rate,
            "topics": s.topics,
            "retain_records": s.retain_records,
            "durability": s.durability.to_string(),
            "published": self.published,
            "cut_short": self.cut_short(),
            "received_per_consumer": self.received_min,
            "seconds": self.elapsed.as_secs_f64(),
            "msgs_per_s": self.msgs_per_s().round(),
            "mb_per_s": (self.mb_per_s() * 10.0).round() / 10.0,
            "latency_us": {
                "p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "p999": q(0.999),
                "max": self.latency.max(),
            },
        });
        if let (Some(baseline), Some(cost)) = (&self.baseline, self.cost_percent()) {
            out["baseline_msgs_per_s"] = baseline.msgs_per_s().round().into();
            out["cost_percent"] = ((cost * 10.0).round() / 10.0).into();
        }
        if let Some(plugin) = &self.plugin {
            out["plugin_calls"] = plugin.calls.into();
            out["plugin_kept"] = plugin.kept.into();
        }
        if !self.per_member.is_empty() {
            out["per_member"] = self.per_member.clone().into();
            out["prefetch"] = s.prefetch.into();
            out["prefill"] = s.prefill.into();
            if let Some(delay) = s.nack_delay {
                out["nack_delay_ms"] = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX).into();
            }
        }
        out
    }
}

/// What the plugin of the plugin scenario did.
#[derive(Debug, Clone, Copy)]
pub struct PluginFigures {
    /// Calls it took for the records.
    pub calls: u64,
    /// Records its topic holds at the end: those it kept, and any it added.
    pub kept: u64,
}

/// Connects the bench's clients.
pub trait Connector: Send + Sync {
    /// A new connection.
    fn connect(&self) -> futures::future::BoxFuture<'_, anyhow::Result<Client>>;
}

impl Settings {
    /// Refuses settings no run can have.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.size < MIN_SIZE {
            bail!("--size must be at least {MIN_SIZE} bytes (a timestamp and a sequence number)");
        }
        if self.producers == 0 || self.window == 0 || self.batch == 0 || self.topics == 0 {
            bail!("--producers, --window, --batch and --topics must be at least 1");
        }
        if self.scenario == Scenario::Plugin && self.topics > 1 {
            bail!("the plugin scenario publishes to one topic: leave --topics at 1");
        }
        let needs_consumers = matches!(
            self.scenario,
            Scenario::E2e | Scenario::Fanout | Scenario::Group
        );
        if needs_consumers && self.consumers == 0 {
            bail!("--consumers must be at least 1 for this scenario");
        }
        if self.prefill && self.scenario != Scenario::Group {
            bail!("--prefill is for the group scenario");
        }
        if self.nack_delay.is_some() && self.scenario != Scenario::Group {
            bail!("--nack-delay is for the group scenario");
        }
        if self.retain_records == Some(0) {
            bail!("--retain-records must be at least 1");
        }
        Ok(())
    }
}

/// Runs a scenario.
pub async fn run(settings: Settings, connector: Arc<dyn Connector>) -> anyhow::Result<Report> {
    settings.validate()?;
    let admin = connector.connect().await?;
    let suffix = format!("{:08x}", getrandom::u32().unwrap_or_default());
    // One topic: `bench.<suffix>`; more: `bench.<suffix>.<i>`, all matching `pattern`.
    let (topics, pattern): (Arc<[String]>, String) = match settings.topics {
        1 => (
            Arc::new([format!("bench.{suffix}")]),
            format!("bench.{suffix}"),
        ),
        n => (
            (0..n).map(|i| format!("bench.{suffix}.{i}")).collect(),
            format!("bench.{suffix}.>"),
        ),
    };
    let result = async {
        let config = TopicConfig {
            durability: settings.durability,
            retention: Retention {
                max_records: settings.retain_records,
                ..Retention::default()
            },
            ..TopicConfig::default()
        };
        // Borrowed by every creation future.
        let creating = (&admin, &config);
        let started = Instant::now();
        for_each_topic(&topics, |topic| async move {
            let (admin, config) = creating;
            admin
                .create_topic(topic, config.clone())
                .await
                .with_context(|| format!("creating {topic}"))
                .map(drop)
        })
        .await?;
        let created_in = started.elapsed();
        let report = match settings.scenario {
            Scenario::Publish => publish(&settings, &connector, &topics, Payloads::Binary).await,
            Scenario::E2e | Scenario::Fanout => {
                let source = Source::Subscription(pattern);
                end_to_end(&settings, &connector, &topics, source).await
            }
            Scenario::Group => {
                let group = format!("bench-{suffix}");
                let result =
                    group_run(&settings, &connector, &admin, &topics, &pattern, &group).await;
                if !settings.keep {
                    let _ = admin.delete_group(&group).await;
                }
                result
            }
            Scenario::Plugin => plugin(&settings, &connector, &admin, &topics, &suffix).await,
            Scenario::Restart => bail!("the restart scenario is run by bench::restart::run"),
            Scenario::Link => bail!("the link scenario is run by bench::link::run"),
            Scenario::Mqtt => bail!("the mqtt scenario is run by bench::mqtt::run"),
        };
        report.map(|report| (report, created_in))
    }
    .await;
    // Leave nothing behind on a shared broker, unless asked to.
    let mut deleted_in = None;
    if !settings.keep {
        let started = Instant::now();
        let deleted = for_each_topic(&topics, |topic| admin.delete_topic(topic)).await;
        deleted_in = deleted.is_ok().then(|| started.elapsed());
    }
    admin.close().await;
    let (mut report, created_in) = result?;
    if settings.topics > 1 {
        report.topics_setup = Some((created_in, deleted_in));
    }
    Ok(report)
}

/// Runs `f` on every topic, a few at a time (creating 10,000 topics one by one would
/// pay 10,000 flushes in a row).
async fn for_each_topic<'a, F, E>(topics: &'a [String], f: impl Fn(&'a str) -> F) -> Result<(), E>
where
    F: Future<Output = Result<(), E>>,
{
    futures::stream::iter(topics.iter().map(|topic| f(topic)))
        .buffer_unordered(64)
        .try_collect()
        .await
}

async fn publish(
    settings: &Settings,
    connector: &Arc<dyn Connector>,
    topics: &Arc<[String]>,
    payloads: Payloads,
) -> anyhow::Result<Report> {
    let producers = Producers::start(settings, connector, topics, payloads).await?;
    let produced = producers.finish().await?;
    Ok(Report {
        scenario: settings.scenario,
        published: produced.acked,
        received_min: 0,
        elapsed: produced.elapsed,
        latency: produced.latency,
        per_consumer: false,
        baseline: None,
        plugin: None,
        topics_setup: None,
        per_member: Vec::new(),
        settings: settings.clone(),
    })
}

async fn end_to_end(
    settings: &Settings,
    connector: &Arc<dyn Connector>,
    topics: &Arc<[String]>,
    source: Source,
) -> anyhow::Result<Report> {
    let consumers = Consumers::start(settings, connector, source).await?;
    let producers = Producers::start(settings, connector, topics, Payloads::Binary).await?;
    let produced = producers.finish().await?;
    let consumed = consumers.finish(&produced).await?;
    Ok(Report {
        scenario: settings.scenario,
        published: produced.acked,
        received_min: consumed.received_min,
        elapsed: consumed.elapsed,
        latency: consumed.latency,
        per_consumer: settings.scenario != Scenario::Group,
        baseline: None,
        plugin: None,
        topics_setup: None,
        per_member: match settings.scenario {
            Scenario::Group => consumed.counts,
            _ => Vec::new(),
        },
        settings: settings.clone(),
    })
}

async fn group_run(
    settings: &Settings,
    connector: &Arc<dyn Connector>,
    admin: &Client,
    topics: &Arc<[String]>,
    pattern: &str,
    group: &str,
) -> anyhow::Result<Report> {
    let group_settings = GroupSettings {
        from: StartAt::Earliest,
        prefetch: settings.prefetch,
        // Members that nack everything would otherwise fill dead-letter topics,
        // which the bench would leave behind.
        max_deliveries: match settings.nack_delay {
            Some(_) => u32::MAX,
            None => GroupSettings::DEFAULT_MAX_DELIVERIES,
        },
        ..GroupSettings::new(pattern)
    };
    admin.create_group(group, group_settings).await?;
    let source = Source::Group(group.to_owned());
    if !settings.prefill {
        return end_to_end(settings, connector, topics, source).await;
    }
    // A queue filled first; only its drain is timed (from before the first member
    // joins to the last ack).
    let produced = Producers::start(settings, connector, topics, Payloads::Binary)
        .await?
        .finish()
        .await?;
    let drain = load::Produced {
        started: std::time::Instant::now(),
        latency: load::histogram(),
        ..produced
    };
    let consumers = Consumers::start(settings, connector, source).await?;
    let consumed = consumers.finish(&drain).await?;
    Ok(Report {
        scenario: settings.scenario,
        published: drain.acked,
        received_min: consumed.received_min,
        elapsed: consumed.elapsed,
        latency: consumed.latency,
        per_consumer: false,
        baseline: None,
        plugin: None,
        topics_setup: None,
        per_member: consumed.counts,
        settings: settings.clone(),
    })
}

async fn plugin(
    settings: &Settings,
    connector: &Arc<dyn Connector>,
    admin: &Client,
    topics: &Arc<[String]>,
    suffix: &str,
) -> anyhow::Result<Report> {
    let wasm = settings
        .plugin
        .clone()
        .context("the plugin scenario needs the json-filter component (--plugin FILE)")?;
    let name = format!("bench-filter-{suffix}");
    admin.deploy_plugin(&name, wasm, None).await?;
    let filtered: Arc<[String]> = Arc::new([format!("{}.filtered", topics[0])]);
    let config = TopicConfig {
        durability: settings.durability,
        ..TopicConfig::default()
    };
    admin.create_topic(&filtered[0], config).await?;
    let params = match settings.plugin_params.is_empty() {
        true => vec![("where".into(), "seq >= 0".into())],
        false => settings.plugin_params.clone(),
    };
    let stage = Stage {
        plugin: name.clone(),
        params,
        on_error: OnError::FailClosed,
        attached_by: None,
    };
    let outcome = async {
        admin.attach_plugin(&filtered[0], stage).await?;
        let baseline = publish(settings, connector, topics, Payloads::Json).await?;
        let mut report = publish(settings, connector, &filtered, Payloads::Json).await?;
        report.baseline = Some(Box::new(baseline));
        let status = admin.plugin_status(&name).await?;
        report.plugin = Some(PluginFigures {
            calls: status.attachments.iter().map(|a| a.calls).sum(),
            kept: admin.describe_topic(&filtered[0]).await?.records,
        });
        anyhow::Ok(report)
    }
    .await;
    if !settings.keep {
        let _ = admin.delete_topic(&filtered[0]).await;
        let _ = admin.remove_plugin(&name).await;
    }
    outcome
}
