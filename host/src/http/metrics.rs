//! `/metrics`: the broker's figures in the OpenMetrics text format, from the Prometheus
//! project's client (`prometheus-client`).
//!
//! Almost everything is read from the broker's own state at scrape time (a
//! [`Snapshot`], encoded as a collector), so nothing is counted twice and a deleted
//! topic, group, plugin or link simply stops appearing. Counters that state holds
//! (a topic's next offset is every record it ever took) survive restarts; the
//! plugins' and links' counters restart from zero with the broker, as Prometheus'
//! `rate()` expects of counters. Only storage's timings are observed as they happen
//! (`storage::StorageMetrics`, written by the storage writer).
//!
//! Cardinality stays bounded: per-topic series exist for at most
//! `http.max_topic_series` topics (those holding the most bytes); the figures of the
//! others are summed into the series of topic `_other`. Groups, plugin attachments
//! and links are few by nature and get series each. docs/operations.md lists every
//! metric.

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet,
};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;
use quiver_protocol::{
    AttachmentStatus, GroupInfo, GroupTopic, LinkInfo, LinkState, LinkTopic, PluginStatus,
    SandboxInfo, TopicInfo, TopicPattern,
};

use crate::auth::{Access, Right};
use crate::broker::Broker;
use crate::broker::streams::StreamKind;
use crate::memory;
use crate::plugins::stage::CallTimes;
use crate::util::now_ms;

/// The page `/metrics` serves, as the principal of `access` may see it.
pub(super) async fn render(
    broker: &Arc<Broker>,
    access: &Access,
    connections: usize,
    max_topic_series: usize,
) -> Result<String, std::fmt::Error> {
    let snapshot = Snapshot::take(broker, access, connections, max_topic_series).await;
    let storage = broker.storage().metrics().clone();
    let mut registry = Registry::default();
    registry.register(
        "quiver_storage_commit_records",
        "Records appended per storage commit.",
        storage.commit_records,
    );
    registry.register(
        "quiver_storage_flush_seconds",
        "Time each flush of storage to disk took (fdatasync included).",
        storage.flush_seconds,
    );
    registry.register_collector(Box::new(snapshot));
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)?;
    Ok(text)
}

/// The broker's state at one scrape, cut to what one principal may see.
#[derive(Debug)]
struct Snapshot {
    /// Every topic the principal may see (for the count).
    topic_count: usize,
    /// The topics with series of their own, then `_other` if any were summed.
    topics: Vec<TopicFigures>,
    groups: Vec<GroupInfo>,
    /// Plugins and links: only for a principal with admin on every topic.
    plugins: Vec<PluginStatus>,
    /// Each plugin's attachments' call times, by plugin, then target.
    call_times: Vec<(String, Vec<(String, CallTimes)>)>,
    /// Each plugin's attachments' sandboxes, by plugin.
    sandboxes: Vec<(String, Vec<SandboxInfo>)>,
    links: Vec<LinkInfo>,
    connections: usize,
    /// QUIC streams open, by kind.
    streams: Vec<(StreamKind, u64)>,
    halted: bool,
    disk_bytes: Option<u64>,
    process: Option<Process>,
}

impl Snapshot {
    async fn take(
        broker: &Arc<Broker>,
        access: &Access,
        connections: usize,
        max_topic_series: usize,
    ) -> Self {
        let mut topics: Vec<TopicFigures> = broker
            .list_topics()
            .into_iter()
            .filter(|t| {
                quiver_protocol::TopicName::parse(&t.name).is_ok_and(|name| access.may_see(&name))
            })
            .map(|info| TopicFigures {
                bytes_in: broker.topic(&info.name).map_or(0, |log| log.bytes_in()),
                info,
            })
            .collect();
        let topic_count = topics.len();
        if topics.len() > max_topic_series {
            topics.sort_by(|a, b| {
                (b.info.bytes.cmp(&a.info.bytes)).then_with(|| a.info.name.cmp(&b.info.name))
            });
            let others = topics.split_off(max_topic_series);
            topics.push(summed("_other", &others));
        }
        let mut groups = broker.list_groups().await;
        groups.retain(|g| {
            broker
                .group(&g.name)
                .is_ok_and(|group| access.allows_pattern(Right::Group, group.pattern()))
        });
        let admin = access.allows_pattern(Right::Admin, &TopicPattern::every());
        let plugins: Vec<PluginStatus> = match admin {
            true => broker
                .list_plugins()
                .into_iter()
                .filter_map(|p| broker.plugin_status(&p.name).ok())
                .collect(),
            false => Vec::new(),
        };
        let call_times = plugins
            .iter()
            .filter_map(|p| {
                let name = &p.info.name;
                Some((name.clone(), broker.plugin_call_times(name).ok()?))
            })
            .collect();
        let sandboxes = plugins
            .iter()
            .filter_map(|p| {
                let name = &p.info.name;
                Some((name.clone(), broker.plugin_sandboxes(name).ok()?))
            })
            .collect();
        let links = match (admin, broker.links()) {
            (true, Ok(links)) => links.list(),
            _ => Vec::new(),
        };
        Self {
            topic_count,
            topics,
            groups,
            plugins,
            call_times,
            sandboxes,
            links,
            connections,
            streams: StreamKind::ALL
                .into_iter()
                .map(|kind| (kind, broker.streams().count(kind)))
                .collect(),
            halted: broker.storage().halted_cause().is_some(),
            disk_bytes: broker.storage().size_on_disk().ok(),
            process: Process::read(),
        }
    }
}

/// A topic's state and what only the live broker counts.
#[derive(Debug)]
struct TopicFigures {
    info: TopicInfo,
    /// Bytes appended since the broker started.
    bytes_in: u64,
}

/// The figures of `topics` added up, under `name`.
fn summed(name: &str, topics: &[TopicFigures]) -> TopicFigures {
    let sum = |field: fn(&TopicInfo) -> u64| topics.iter().map(|t| field(&t.info)).sum();
    TopicFigures {
        info: TopicInfo {
            name: name.to_owned(),
            records: sum(|t| t.records),
            bytes: sum(|t| t.bytes),
            first_offset: sum(|t| t.first_offset),
            next_offset: sum(|t| t.next_offset),
            pipeline: Vec::new(),
            ..topics[0].info.clone()
        },
        bytes_in: topics.iter().map(|t| t.bytes_in).sum(),
    }
}

/// A histogram whose buckets were counted elsewhere (a plugin attachment's call
/// times), in seconds.
#[derive(Debug)]
struct Seconds<'a>(&'a CallTimes);

impl TypedMetric for Seconds<'_> {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Seconds<'_> {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> std::fmt::Result {
        let seconds = |micros: u64| micros as f64 / 1e6;
        let buckets: Vec<(f64, u64)> = self
            .0
            .buckets
            .iter()
            .map(|&(bound, calls)| match bound {
                u64::MAX => (f64::MAX, calls),
                bound => (seconds(bound), calls),
            })
            .collect();
        encoder.encode_histogram::<NoLabelSet>(
            seconds(self.0.sum_micros),
            self.0.count,
            &buckets,
            None,
        )
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// One metric family: its series, each with its labels.
fn family<L: EncodeLabelSet, M: EncodeMetric + TypedMetric>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (L, M)>,
) -> std::fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, None, M::TYPE)?;
    for (labels, metric) in series {
        metric.encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

/// A metric with one value and no labels.
fn single<M: EncodeMetric + TypedMetric>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    metric: M,
) -> std::fmt::Result {
    metric.encode(encoder.encode_descriptor(name, help, None, M::TYPE)?)
}

fn gauge(value: u64) -> ConstGauge<i64> {
    ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX))
}

fn counter(value: u64) -> ConstCounter<u64> {
    ConstCounter::new(value)
}

type Labels = Vec<(&'static str, String)>;

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        let e = &mut encoder;
        self.encode_topics(e)?;
        self.encode_groups(e)?;
        self.encode_plugins(e)?;
        self.encode_links(e)?;
        single(
            e,
            "quiver_connections",
            "Open QUIC connections.",
            gauge(self.connections as u64),
        )?;
        family(
            e,
            "quiver_streams",
            "Open QUIC streams, by kind: control, subscription, member.",
            self.streams.iter().map(|&(kind, open)| {
                let labels: Labels = vec![("kind", kind.label().to_owned())];
                (labels, gauge(open))
            }),
        )?;
        single(
            e,
            "quiver_storage_halted",
            "1 while storage refuses writes after a failed write (see /readyz).",
            gauge(u64::from(self.halted)),
        )?;
        if let Some(bytes) = self.disk_bytes {
            single(
                e,
                "quiver_storage_disk_bytes",
                "Bytes the storage files take on disk.",
                gauge(bytes),
            )?;
        }
        if let Some(process) = &self.process {
            process.encode(e)?;
        }
        Ok(())
    }
}

/// How one metric reads its value from an item (a topic, a group's topic, …).
struct Spec<T> {
    name: &'static str,
    help: &'static str,
    counter: bool,
    value: fn(&T) -> u64,
}

const fn gauge_of<T>(name: &'static str, help: &'static str, value: fn(&T) -> u64) -> Spec<T> {
    Spec {
        name,
        help,
        counter: false,
        value,
    }
}

const fn counter_of<T>(name: &'static str, help: &'static str, value: fn(&T) -> u64) -> Spec<T> {
    Spec {
        name,
        help,
        counter: true,
        value,
    }
}

/// One family per spec, each with a series per item.
fn families<T>(
    e: &mut DescriptorEncoder<'_>,
    specs: &[Spec<T>],
    items: &[(Labels, &T)],
) -> std::fmt::Result {
    for spec in specs {
        let series = items
            .iter()
            .map(|(labels, item)| (labels.clone(), (spec.value)(item)));
        match spec.counter {
            true => family(
                e,
                spec.name,
                spec.help,
                series.map(|(l, v)| (l, counter(v))),
            )?,
            false => family(e, spec.name, spec.help, series.map(|(l, v)| (l, gauge(v))))?,
        }
    }
    Ok(())
}

const TOPIC_METRICS: &[Spec<TopicFigures>] = &[
    gauge_of("quiver_topic_records", "Records a topic holds.", |t| {
        t.info.records
    }),
    gauge_of(
        "quiver_topic_stored_bytes",
        "Bytes of records a topic holds.",
        |t| t.info.bytes,
    ),
    counter_of(
        "quiver_topic_appended_records",
        "Records ever appended to a topic (its next offset): rate() is its publish rate.",
        |t| t.info.next_offset,
    ),
    counter_of(
        "quiver_topic_appended_bytes",
        "Bytes of records appended to a topic as stored (since the broker started).",
        |t| t.bytes_in,
    ),
    counter_of(
        "quiver_topic_removed_records",
        "Records removed from the front of a topic (retention), since it was created.",
        |t| t.info.first_offset,
    ),
];

const GROUP_TOPIC_METRICS: &[Spec<GroupTopic>] = &[
    gauge_of(
        "quiver_group_lag_records",
        "Records of a topic the group has not been assigned yet.",
        |t| t.lag,
    ),
    gauge_of(
        "quiver_group_pending_records",
        "Records assigned to members and not yet acknowledged.",
        |t| t.pending,
    ),
    counter_of(
        "quiver_group_redelivered_records",
        "Records assigned again after a nack, a timeout or a member leaving.",
        |t| t.redelivered,
    ),
    counter_of(
        "quiver_group_dead_lettered_records",
        "Records the group moved to its dead-letter topic.",
        |t| t.dead_lettered,
    ),
];

const ATTACHMENT_METRICS: &[Spec<AttachmentStatus>] = &[
    counter_of(
        "quiver_plugin_calls",
        "Calls of a plugin attachment (one per batch).",
        |a| a.calls,
    ),
    counter_of(
        "quiver_plugin_records_in",
        "Records handed to a plugin attachment.",
        |a| a.records_in,
    ),
    counter_of(
        "quiver_plugin_records_out",
        "Records a plugin attachment kept, replaced or routed.",
        |a| a.records_out,
    ),
    counter_of(
        "quiver_plugin_errors",
        "Failed calls of a plugin attachment (traps, deadlines, bad outcomes).",
        |a| a.errors,
    ),
    gauge_of(
        "quiver_plugin_quarantined",
        "1 while a plugin attachment is quarantined.",
        |a| u64::from(a.quarantined_until_ms.is_some_and(|until| until > now_ms())),
    ),
];

const SANDBOX_METRICS: &[Spec<SandboxInfo>] = &[
    gauge_of(
        "quiver_plugin_memory_peak_bytes",
        "The most linear memory an instance of a plugin attachment reached.",
        |s| s.memory_peak,
    ),
    gauge_of(
        "quiver_plugin_memory_limit_bytes",
        "The memory cap of a plugin attachment's instance.",
        |s| s.memory_limit,
    ),
];

const LINK_METRICS: &[Spec<LinkInfo>] = &[counter_of(
    "quiver_link_failures",
    "Times a link lost its remote or failed to reach it.",
    |l| l.failures,
)];

const LINK_TOPIC_METRICS: &[Spec<LinkTopic>] = &[
    gauge_of(
        "quiver_link_lag_records",
        "Records a link has yet to forward.",
        |t| t.lag,
    ),
    counter_of(
        "quiver_link_forwarded_records",
        "Records a link forwarded (since the broker started).",
        |t| t.forwarded,
    ),
    counter_of(
        "quiver_link_skipped_records",
        "Records a link skipped (refused by the remote, since the broker started).",
        |t| t.skipped,
    ),
];

impl Snapshot {
    fn encode_topics(&self, e: &mut DescriptorEncoder<'_>) -> std::fmt::Result {
        single(
            e,
            "quiver_topics",
            "Topics (that the scraping principal may see).",
            gauge(self.topic_count as u64),
        )?;
        let items: Vec<(Labels, &TopicFigures)> = self
            .topics
            .iter()
            .map(|t| (vec![("topic", t.info.name.clone())], t))
            .collect();
        families(e, TOPIC_METRICS, &items)
    }

    fn encode_groups(&self, e: &mut DescriptorEncoder<'_>) -> std::fmt::Result {
        family(
            e,
            "quiver_group_members",
            "Members joined to a group.",
            self.groups.iter().map(|g| {
                let labels: Labels = vec![("group", g.name.clone())];
                (labels, gauge(u64::from(g.members)))
            }),
        )?;
        let items: Vec<(Labels, &GroupTopic)> = self
            .groups
            .iter()
            .flat_map(|g| {
                g.topics.iter().map(|t| {
                    let labels: Labels =
                        vec![("group", g.name.clone()), ("topic", t.topic.clone())];
                    (labels, t)
                })
            })
            .collect();
        families(e, GROUP_TOPIC_METRICS, &items)
    }

    fn encode_plugins(&self, e: &mut DescriptorEncoder<'_>) -> std::fmt::Result {
        let items: Vec<(Labels, &AttachmentStatus)> = self
            .plugins
            .iter()
            .flat_map(|p| {
                p.attachments.iter().map(|a| {
                    let labels: Labels = vec![
                        ("plugin", p.info.name.clone()),
                        ("target", a.target.clone()),
                        ("version", a.version.clone()),
                    ];
                    (labels, a)
                })
            })
            .collect();
        families(e, ATTACHMENT_METRICS, &items)?;
        let sandboxes: Vec<(Labels, &SandboxInfo)> = self
            .sandboxes
            .iter()
            .flat_map(|(plugin, sandboxes)| {
                sandboxes.iter().map(move |s| {
                    let labels: Labels =
                        vec![("plugin", plugin.clone()), ("target", s.target.clone())];
                    (labels, s)
                })
            })
            .collect();
        families(e, SANDBOX_METRICS, &sandboxes)?;
        family(
            e,
            "quiver_plugin_call_seconds",
            "Time each call of a plugin attachment took (one call per batch).",
            self.call_times.iter().flat_map(|(plugin, attachments)| {
                attachments.iter().map(move |(target, times)| {
                    let labels: Labels =
                        vec![("plugin", plugin.clone()), ("target", target.clone())];
                    (labels, Seconds(times))
                })
            }),
        )
    }

    fn encode_links(&self, e: &mut DescriptorEncoder<'_>) -> std::fmt::Result {
        let state = |s: &LinkState| match s {
            LinkState::Starting => "starting",
            LinkState::Connected { .. } => "connected",
            LinkState::BackingOff { .. } => "backing_off",
            LinkState::Paused => "paused",
        };
        family(
            e,
            "quiver_link_state",
            "1 for the state a link is in.",
            self.links.iter().map(|l| {
                let labels: Labels = vec![
                    ("link", l.spec.name.clone()),
                    ("state", state(&l.state).into()),
                ];
                (labels, gauge(1))
            }),
        )?;
        let links: Vec<(Labels, &LinkInfo)> = self
            .links
            .iter()
            .map(|l| (vec![("link", l.spec.name.clone())], l))
            .collect();
        families(e, LINK_METRICS, &links)?;
        let topics: Vec<(Labels, &LinkTopic)> = self
            .links
            .iter()
            .flat_map(|l| {
                l.topics.iter().map(|t| {
                    let labels: Labels =
                        vec![("link", l.spec.name.clone()), ("topic", t.topic.clone())];
                    (labels, t)
                })
            })
            .collect();
        families(e, LINK_TOPIC_METRICS, &topics)
    }
}

/// The process's own figures, from `/proc/self` (Linux).
#[derive(Debug)]
struct Process {
    resident_bytes: u64,
    cpu_seconds: f64,
    open_fds: u64,
    start_seconds: Option<f64>,
}

impl Process {
    #[cfg(target_os = "linux")]
    fn read() -> Option<Self> {
        // USER_HZ, the unit of /proc's times: 100 on every Linux platform.
        let ticks = 100.0;
        let resident_kib = memory::resident_kib("self")?;
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // Fields after the command name, which may hold spaces: it ends at the last ')'.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let field = |n: usize| -> Option<f64> { fields.get(n - 3)?.parse().ok() };
        let (utime, stime, start_ticks) = (field(14)?, field(15)?, field(22)?);
        let boot = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("btime "))
                .and_then(|b| b.trim().parse::<f64>().ok())
        });
        let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
        Some(Self {
            resident_bytes: resident_kib * 1024,
            cpu_seconds: (utime + stime) / ticks,
            open_fds,
            start_seconds: boot.map(|boot| boot + start_ticks / ticks),
        })
    }

    #[cfg(not(target_os = "linux"))]
    fn read() -> Option<Self> {
        None
    }

    fn encode(&self, e: &mut DescriptorEncoder<'_>) -> std::fmt::Result {
        single(
            e,
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
            gauge(self.resident_bytes),
        )?;
        single(
            e,
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds.",
            ConstCounter::new(self.cpu_seconds),
        )?;
        single(
            e,
            "process_open_fds",
            "Number of open file descriptors.",
            gauge(self.open_fds),
        )?;
        if let Some(start) = self.start_seconds {
            single(
                e,
                "process_start_time_seconds",
                "Start time of the process since the Unix epoch in seconds.",
                ConstGauge::new(start),
            )?;
        }
        Ok(())
    }
}
