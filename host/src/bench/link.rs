//! The link scenario: two brokers of the bench's own (an edge and a hub) and an `out`
//! link between them, measured three ways:
//!
//! 1. **catch-up**: a backlog published to the edge before the link exists, then the
//!    time from creating the link to the hub holding every record;
//! 2. **latency**: records published to the edge at a steady rate, received by a
//!    subscriber of the hub: publish-to-receive through the link;
//! 3. **cost**: the edge's publish throughput to a topic the link forwards while it
//!    runs, against a topic it does not forward, in interleaved rounds.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::FutureExt;
use futures::future::BoxFuture;
use quiver_client::{Client, LinkAuth, LinkDirection, LinkSpec, StartAt, TopicConfig};
use serde_json::{Value, json};

use super::load::{Consumers, Payloads, Producers, Source};
use super::own_broker::{self, OwnBroker};
use super::{Connector, Scenario, Settings};

/// Interleaved rounds of the cost measurement (each: without, then with the link).
const COST_ROUNDS: usize = 3;
/// The most records each half of a cost round publishes.
const COST_RECORDS: u64 = 300_000;
/// How long the latency phase publishes.
const LATENCY_SECONDS: u64 = 10;
/// The longest a catch-up may take before the run gives up.
const CATCH_UP_LIMIT: Duration = Duration::from_secs(600);

/// What the link scenario measured.
#[derive(Debug)]
pub struct LinkReport {
    /// Records in the backlog.
    pub backlog: u64,
    /// Bytes of payload in the backlog.
    pub backlog_bytes: u64,
    /// From creating the link to the hub holding the whole backlog.
    pub catch_up: Duration,
    /// The backlog published to the edge, records per second (one connection).
    pub publish_rate: f64,
    /// Publish-to-receive latency through the link at the steady rate, µs: p50, p99.
    pub latency_us: (u64, u64),
    /// The steady rate.
    pub rate: u64,
    /// Broker CPU per record, µs: the edge while the backlog was published, and the
    /// edge and the hub while the link caught up (`None` without /proc).
    pub cpu_us: Option<[f64; 3]>,
    /// Whether the hub had a CPU of its own (`--pin`).
    pub pinned: bool,
    /// Publish throughput per round, without and with the link forwarding.
    pub cost_rounds: Vec<(f64, f64)>,
}

impl LinkReport {
    /// Records per second the link caught up.
    pub fn catch_up_rate(&self) -> f64 {
        self.backlog as f64 / self.catch_up.as_secs_f64().max(f64::EPSILON)
    }

    /// The median throughput cost of forwarding, in percent.
    pub fn cost_percent(&self) -> f64 {
        let mut costs: Vec<f64> = self
            .cost_rounds
            .iter()
            .map(|(without, with)| (1.0 - with / without.max(f64::EPSILON)) * 100.0)
            .collect();
        costs.sort_by(f64::total_cmp);
        costs.get(costs.len() / 2).copied().unwrap_or(0.0)
    }

    /// The report as one JSON object.
    pub fn json(&self) -> Value {
        json!({
            "scenario": "link",
            "pinned": self.pinned,
            "backlog": self.backlog,
            "backlog_bytes": self.backlog_bytes,
            "backlog_publish_msgs_per_s": self.publish_rate.round(),
            "catch_up_seconds": self.catch_up.as_secs_f64(),
            "catch_up_msgs_per_s": self.catch_up_rate().round(),
            "rate": self.rate,
            "latency_us": { "p50": self.latency_us.0, "p99": self.latency_us.1 },
            "cpu_us_per_record": self.cpu_us.map(|[publish, forward, store]| json!({
                "edge_publish": publish, "edge_forward": forward, "hub_store": store,
            })),
            "cost_rounds": self.cost_rounds.iter().map(|(a, b)| json!([a.round(), b.round()])).collect::<Vec<_>>(),
            "cost_percent": (self.cost_percent() * 10.0).round() / 10.0,
        })
    }

    /// The report as a few lines of text.
    pub fn text(&self) -> String {
        let mut out = format!(
            "link: edge -> hub{}, {} records ({:.0} MB) of backlog\n",
            if self.pinned {
                " (the hub on a CPU of its own)"
            } else {
                ""
            },
            self.backlog,
            self.backlog_bytes as f64 / 1e6
        );
        out.push_str(&format!(
            "  backlog published at {:.0} msgs/s; caught up in {:.2} s: {:.0} msgs/s, {:.1} MB/s\n",
            self.publish_rate,
            self.catch_up.as_secs_f64(),
            self.catch_up_rate(),
            self.catch_up_rate() * self.backlog_bytes as f64 / self.backlog.max(1) as f64 / 1e6,
        ));
        if let Some([publish, forward, store]) = self.cpu_us {
            out.push_str(&format!(
                "  broker CPU per record: edge publishing {publish:.2} µs; during catch-up, edge forwarding {forward:.2} µs, hub storing {store:.2} µs\n"
            ));
        }
        out.push_str(&format!(
            "  latency, publish at the edge to receive at the hub, at {} msgs/s: p50 {:.2} ms  p99 {:.2} ms\n",
            self.rate,
            self.latency_us.0 as f64 / 1000.0,
            self.latency_us.1 as f64 / 1000.0,
        ));
        for (i, (without, with)) in self.cost_rounds.iter().enumerate() {
            out.push_str(&format!(
                "  round {}: publish {without:.0} msgs/s to a topic not forwarded, {with:.0} to one forwarded\n",
                i + 1
            ));
        }
        out.push_str(&format!(
            "  cost of an active link to the edge's publishes: {:.1} % (median of rounds)\n",
            self.cost_percent()
        ));
        out
    }
}

/// Connects to one of the bench's brokers.
struct At {
    addr: String,
    cert: std::path::PathBuf,
}

impl Connector for At {
    fn connect(&self) -> BoxFuture<'_, anyhow::Result<Client>> {
        async move {
            Ok(Client::builder()
                .ca_file(&self.cert)?
                .connect(&self.addr)
                .await?)
        }
        .boxed()
    }
}

/// Runs the link scenario: `settings.count` records of backlog (and per half of a cost
/// round, at most [`COST_RECORDS`]), `settings.rate` (default 5,000/s) for the latency
/// phase. With `pin`, the hub runs on the last CPU and the edge and the bench on the
/// others, as if the hub were a machine of its own.
pub async fn run(settings: &Settings, pin: bool) -> anyhow::Result<LinkReport> {
    let edge = OwnBroker::start()?;
    let hub = OwnBroker::start()?;
    if pin {
        let cpus = std::thread::available_parallelism().map_or(1, usize::from);
        if cpus < 2 {
            bail!(
                "--pin needs at least 2 CPUs: the hub on one, the edge and the bench on the rest"
            );
        }
        let rest = match cpus - 2 {
            0 => "0".to_owned(),
            last => format!("0-{last}"),
        };
        own_broker::pin(hub.pid(), &(cpus - 1).to_string())?;
        own_broker::pin(edge.pid(), &rest)?;
        own_broker::pin(std::process::id(), &rest)?;
    }
    let edge_at: Arc<dyn Connector> = Arc::new(At {
        addr: edge.addr.clone(),
        cert: edge.cert.clone(),
    });
    let hub_at: Arc<dyn Connector> = Arc::new(At {
        addr: hub.addr.clone(),
        cert: hub.cert.clone(),
    });
    let edge_admin = edge_at.connect().await?;
    let hub_admin = hub_at.connect().await?;
    let config = TopicConfig {
        durability: settings.durability,
        ..TopicConfig::default()
    };
    for topic in ["bench.backlog", "bench.live", "nolink.cost"] {
        edge_admin.create_topic(topic, config.clone()).await?;
    }

    // 1. Catch-up.
    let backlog: Arc<[String]> = Arc::new(["bench.backlog".to_owned()]);
    let publish = Settings {
        scenario: Scenario::Publish,
        rate: None,
        ..settings.clone()
    };
    let edge_before = edge.cpu_time();
    let produced = Producers::start(&publish, &edge_at, &backlog, Payloads::Binary)
        .await?
        .finish()
        .await?;
    let (edge_published, hub_before) = (edge.cpu_time(), hub.cpu_time());
    let publish_rate = produced.acked as f64 / produced.elapsed.as_secs_f64().max(f64::EPSILON);
    let ca = std::fs::read_to_string(&hub.cert).context("reading the hub's certificate")?;
    let spec = LinkSpec {
        name: "bench".into(),
        to: vec![hub.addr.clone()],
        direction: LinkDirection::Out,
        topics: "bench.>".into(),
        prefix: String::new(),
        from: StartAt::Earliest,
        max_rate: None,
        ca: Some(ca),
        auth: LinkAuth::Anonymous,
        pipeline: Vec::new(),
        jetstream: None,
    };
    let started = Instant::now();
    edge_admin.create_link(spec).await?;
    held(&hub_admin, "bench.backlog", produced.acked).await?;
    let catch_up = started.elapsed();
    let per_record = |from: Option<Duration>, to: Option<Duration>| {
        Some((to? - from?).as_secs_f64() * 1e6 / produced.acked.max(1) as f64)
    };
    let cpu_us = (|| {
        Some([
            per_record(edge_before, edge_published)?,
            per_record(edge_published, edge.cpu_time())?,
            per_record(hub_before, hub.cpu_time())?,
        ])
    })();

    // 2. Latency at a steady rate, through the link.
    let rate = settings.rate.unwrap_or(5_000);
    let steady = Settings {
        scenario: Scenario::E2e,
        rate: Some(rate),
        count: rate * LATENCY_SECONDS,
        consumers: 1,
        producers: 1,
        ..settings.clone()
    };
    let live: Arc<[String]> = Arc::new(["bench.live".to_owned()]);
    hub_admin
        .create_topic("bench.live", config.clone())
        .await
        .ok();
    let consumers =
        Consumers::start(&steady, &hub_at, Source::Subscription("bench.live".into())).await?;
    let produced_live = Producers::start(&steady, &edge_at, &live, Payloads::Binary)
        .await?
        .finish()
        .await?;
    let consumed = consumers.finish(&produced_live).await?;
    if consumed.received_min < produced_live.acked {
        bail!(
            "the hub received {} of {} records in the latency phase",
            consumed.received_min,
            produced_live.acked
        );
    }
    let latency_us = (
        consumed.latency.value_at_quantile(0.5),
        consumed.latency.value_at_quantile(0.99),
    );

    // 3. Cost: the same publishes to a topic not forwarded, then to one forwarded.
    let publish = Settings {
        count: settings.count.min(COST_RECORDS),
        ..publish
    };
    let mut cost_rounds = Vec::with_capacity(COST_ROUNDS);
    for round in 0..COST_ROUNDS {
        let mut rates = [0.0; 2];
        for (slot, prefix) in ["nolink", "bench"].into_iter().enumerate() {
            let topic = format!("{prefix}.cost.{round}");
            edge_admin.create_topic(&topic, config.clone()).await?;
            let topics: Arc<[String]> = Arc::new([topic]);
            let produced = Producers::start(&publish, &edge_at, &topics, Payloads::Binary)
                .await?
                .finish()
                .await?;
            rates[slot] = produced.acked as f64 / produced.elapsed.as_secs_f64().max(f64::EPSILON);
            if prefix == "bench" {
                // The next round starts once the link has caught up with this one.
                held(&hub_admin, &topics[0], produced.acked).await?;
            }
        }
        cost_rounds.push((rates[0], rates[1]));
    }
    edge_admin.close().await;
    hub_admin.close().await;
    Ok(LinkReport {
        backlog: produced.acked,
        backlog_bytes: produced.acked * settings.size as u64,
        catch_up,
        publish_rate,
        latency_us,
        rate,
        cpu_us,
        pinned: pin,
        cost_rounds,
    })
}

/// Waits until the hub's `topic` holds `records` (polling: a benchmark, not a test).
async fn held(hub: &Client, topic: &str, records: u64) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        let held = hub.describe_topic(topic).await.map_or(0, |t| t.records);
        if held >= records {
            return Ok(());
        }
        if started.elapsed() > CATCH_UP_LIMIT {
            bail!("the hub held {held} of {records} records of {topic} after {CATCH_UP_LIMIT:?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
