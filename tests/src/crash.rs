//! The crash-safety harness: runs the real broker under a pipelined publish load,
//! acking group members and a stateful ingress plugin, brings it down at moments chosen
//! from events (a seeded number of publish receipts or group acks), restarts it on the
//! same data dir, and checks Quiver's guarantees after every restart and at the end.
//! It brings the broker down in one of two ways ([`Fault`]): SIGKILL (the process
//! dies, the OS keeps everything it was given), or a power cut (the data dir is on a
//! [`Disk`] that loses whatever no fsync/fdatasync made durable, sometimes keeping
//! torn pieces of it, and then the process dies). The guarantees:
//!
//! - every acknowledged record is stored exactly once, at the offset its receipt gave.
//!   On a topic with batched durability this holds for every receipt a later fsync
//!   publish covers (one queued after the receipt arrived, then acknowledged: its flush
//!   wrote everything applied before it); the others may be lost, from the end of the
//!   log only, and are published again;
//! - offsets are dense from 0 and each producer's records are in publish order;
//! - no record is stored twice: publishes a kill cut off are retried with their
//!   `PublishId`, and the broker deduplicates them;
//! - a group's cursor never moves back, every record below it that the group never
//!   acked is still pending (it will be delivered again), and in the end the group has
//!   acked every record;
//! - the ingress plugin's state agrees with the records of the same commits: the
//!   `counter` test plugin numbers each topic's records in its state, so the record at
//!   offset N carries count N + 1, whatever was lost;
//! - the broker always restarts and prints its ready line; a refusal to start is
//!   reported as a broken guarantee, with what the broker said.
//!
//! The seed fixes the load's shape, the fault points and how cuts tear; thread timing
//! still varies, so replaying a seed repeats the same schedule, not the same
//! interleaving.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail, ensure};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use quiver_client::{
    Client, Durability, ErrorCode, GroupInfo, GroupSettings, NewRecord, PublishId, Receipt, Stage,
    StartAt, SubscribeOptions, TopicConfig,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::disk::{Counts, Disk, Tear};
use crate::rng::Rng;
use crate::{Broker, DataDir, read_plugin, test_plugin};

/// The topics under load: one acknowledged after fsync, one with batched durability.
const TOPICS: [(&str, Durability); 2] = [
    ("crash.fsync", Durability::Fsync),
    ("crash.batched", Durability::Batched { interval_ms: 20 }),
];
/// The topic (index into [`TOPICS`]) each producer publishes to: two connections
/// interleave on the fsync topic.
const PRODUCERS: [usize; 3] = [0, 0, 1];
/// The durable group consuming both topics.
const GROUP: &str = "crash-workers";
/// Group members, each on its own connection.
const MEMBERS: usize = 2;
/// Records each member holds unsettled at most.
const PREFETCH: u32 = 16;
/// Publishes each producer keeps in flight.
const IN_FLIGHT: usize = 16;
/// The most records in one publish.
const MAX_BATCH: u64 = 6;
/// The longest padding after a record's id: most records are small, some large enough
/// that chunks span several parts.
const MAX_PAD: u64 = 4096;
/// How often (in percent) a member nacks a delivery instead of acking it.
const NACK_PERCENT: u64 = 10;
/// The most receipts or group acks before a fault.
const MAX_TRIGGER: u64 = 100;
/// The longest a cycle's load runs before a fault picked by the clock, in ms.
const MAX_TRIGGER_MS: u64 = 300;
/// How long a cycle's load may take to reach its kill point.
const CYCLE_LIMIT: Duration = Duration::from_secs(60);
/// How long the final drain (retries stored, group caught up) may take.
const DRAIN_LIMIT: Duration = Duration::from_secs(120);
/// How long reading one record back may stall.
const READ_STALL: Duration = Duration::from_secs(30);
/// Every this many restarts the check reads the topics whole (the others read what
/// is new since the last check).
const FULL_CHECK_EVERY: u32 = 8;
/// The harness's clients give up on a dead broker after this long.
const IDLE_TIMEOUT: Duration = Duration::from_secs(2);
/// The stateful ingress plugin on every topic (`tests/plugins/counter`).
const COUNTER: &str = "counter";
/// The header it numbers records with.
const COUNT_HEADER: &str = "count";
/// How often (in percent) a power cut also keeps torn pieces of unsynced writes.
const TORN_PERCENT: u64 = 50;

/// How the harness brings the broker down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// SIGKILL: the process dies; everything it handed the OS survives.
    Kill,
    /// The power goes: the data dir's [`Disk`] keeps only what was synced (sometimes
    /// with torn pieces of the rest), then the process dies.
    PowerCut,
}

impl Fault {
    /// The environment variable asking for more (or fewer) faults.
    fn count_variable(self) -> &'static str {
        match self {
            Self::Kill => "QUIVER_CRASH_KILLS",
            Self::PowerCut => "QUIVER_POWER_CUTS",
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Kill => "kills (SIGKILL)",
            Self::PowerCut => "power cuts",
        })
    }
}

/// How long and with which seed to run.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Seeds every choice: load shape, fault points, torn sectors.
    pub seed: u64,
    /// How the broker is brought down.
    pub fault: Fault,
    /// Faults to cause.
    pub faults: u32,
    /// Wall time after which no more faults are caused (the final checks still run).
    pub budget: Duration,
    /// Whether the broker syncs before acknowledging: `false` only to show that the
    /// harness notices when it does not (`quiver serve --unsafe-skip-barrier`).
    pub barrier: bool,
}

impl Settings {
    /// `QUIVER_CRASH_SEED` (default: from the clock), the fault count (default `faults`;
    /// `QUIVER_CRASH_KILLS` or `QUIVER_POWER_CUTS`) and `QUIVER_CRASH_BUDGET` in seconds
    /// (default 600).
    pub fn from_env(fault: Fault, faults: u32) -> Self {
        let seed = env_number("QUIVER_CRASH_SEED").unwrap_or_else(clock_seed);
        let variable = fault.count_variable();
        Self {
            seed,
            fault,
            faults: env_number(variable).map_or(faults, |n| {
                u32::try_from(n).unwrap_or_else(|_| panic!("{variable} fits in a u32"))
            }),
            budget: Duration::from_secs(env_number("QUIVER_CRASH_BUDGET").unwrap_or(600)),
            barrier: true,
        }
    }
}

fn env_number(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    Some(
        value
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value} is not a number")),
    )
}

fn clock_seed() -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    (now.as_nanos() as u64) ^ u64::from(std::process::id()).rotate_left(32)
}

/// What a run did; printed at the end.
#[derive(Debug, Clone)]
pub struct Figures {
    /// The seed it ran with.
    pub seed: u64,
    /// How the broker was brought down.
    pub fault: Fault,
    /// Faults caused (kills, or power cuts).
    pub faults: u32,
    /// Power cuts that kept torn pieces of unsynced writes.
    pub torn_cuts: u32,
    /// Broker starts after the first (after faults, and one after a clean stop).
    pub restarts: u32,
    /// Starts the broker refused, finding its data dir damaged (must be 0).
    pub refused_starts: u32,
    /// Records the producers published (each counted once, however often retried).
    pub records_published: u64,
    /// Records acknowledged, each counted once.
    pub records_acked: u64,
    /// Publish receipts received (retries answered from the dedup window included).
    pub receipts: u64,
    /// Publishes sent again after a kill.
    pub retries: u64,
    /// Acknowledged records missing from their offset (must be 0).
    pub lost: u64,
    /// Records stored more than once (must be 0).
    pub duplicates: u64,
    /// Records acknowledged on the batched topic that a kill lost before any flush
    /// covered them (allowed: see [`Durability::Batched`]), then published again.
    pub batched_unflushed_lost: u64,
    /// Deliveries to group members.
    pub deliveries: u64,
    /// Deliveries the broker numbered above 1: redeliveries (at least once).
    pub redeliveries: u64,
    /// Acks the members sent.
    pub group_acks: u64,
    /// Stored records whose plugin count was checked against their offset.
    pub counts_checked: u64,
    /// What the power-cut disk saw (syncs, bytes it threw away).
    pub disk: Option<Counts>,
    /// Wall time of the whole run.
    pub wall: Duration,
}

impl Figures {
    fn new(settings: &Settings) -> Self {
        Self {
            seed: settings.seed,
            fault: settings.fault,
            faults: 0,
            torn_cuts: 0,
            restarts: 0,
            refused_starts: 0,
            records_published: 0,
            records_acked: 0,
            receipts: 0,
            retries: 0,
            lost: 0,
            duplicates: 0,
            batched_unflushed_lost: 0,
            deliveries: 0,
            redeliveries: 0,
            group_acks: 0,
            counts_checked: 0,
            disk: None,
            wall: Duration::ZERO,
        }
    }
}

impl fmt::Display for Figures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "crash harness figures (QUIVER_CRASH_SEED={}):",
            self.seed
        )?;
        let fault = self.fault.to_string();
        let mut rows: Vec<(&str, String)> = vec![
            (&fault, self.faults.to_string()),
            ("restarts", self.restarts.to_string()),
            ("starts refused", self.refused_starts.to_string()),
            ("records published", self.records_published.to_string()),
            ("records acked", self.records_acked.to_string()),
            ("publish receipts", self.receipts.to_string()),
            ("publishes retried", self.retries.to_string()),
            ("acked records lost", self.lost.to_string()),
            ("records duplicated", self.duplicates.to_string()),
            (
                "batched acks lost unflushed",
                self.batched_unflushed_lost.to_string(),
            ),
            ("group deliveries", self.deliveries.to_string()),
            ("group redeliveries", self.redeliveries.to_string()),
            ("group acks", self.group_acks.to_string()),
            ("plugin counts checked", self.counts_checked.to_string()),
        ];
        if let Some(disk) = &self.disk {
            rows.extend([
                ("torn power cuts", self.torn_cuts.to_string()),
                ("file syncs seen", disk.file_syncs.to_string()),
                ("directory syncs seen", disk.dir_syncs.to_string()),
                (
                    "unsynced KiB thrown away",
                    (disk.bytes_lost / 1024).to_string(),
                ),
                ("torn sectors kept", disk.sectors_kept.to_string()),
                ("directory entries undone", disk.entries_lost.to_string()),
            ]);
        }
        let wall = format!("{:.1} s", self.wall.as_secs_f64());
        rows.push(("wall time", wall));
        for (name, value) in rows {
            writeln!(f, "  {name:<28} {value:>10}")?;
        }
        Ok(())
    }
}

/// A run's figures and the broken guarantees it found (none, if all is well).
#[derive(Debug)]
pub struct Report {
    /// The figures.
    pub figures: Figures,
    /// Each broken guarantee, described; the run stops killing at the first restart
    /// that finds one.
    pub violations: Vec<String>,
}

/// Runs the harness on a fresh data dir. `Err` means the harness itself could not go
/// on (a stalled load, a client error while the broker was up); broken guarantees are
/// in [`Report::violations`].
pub async fn run(settings: &Settings) -> anyhow::Result<Report> {
    let started = Instant::now();
    let mut harness = Harness::new(settings)?;
    let broker = harness
        .start_broker()
        .ok_or_else(|| anyhow!("the first start failed: {:?}", harness.violations))?;
    harness.set_up(&broker).await?;
    // `None` once a restart was refused (a broken guarantee, recorded).
    let mut up = Some(broker);
    while let Some(broker) = up.take() {
        let done = harness.figures.faults >= settings.faults
            || started.elapsed() >= settings.budget
            || !harness.violations.is_empty();
        if !done {
            up = harness.cycle(broker).await?;
        } else if harness.violations.is_empty() {
            harness.finish(broker).await?;
        }
    }
    harness.figures.disk = harness.disk.as_ref().map(Disk::counts);
    harness.figures.records_acked = harness
        .model
        .topics
        .iter()
        .map(|t| t.acked.len() as u64)
        .sum();
    harness.figures.wall = started.elapsed();
    Ok(Report {
        figures: harness.figures,
        violations: harness.violations,
    })
}

/// Broken guarantees a failing run shows (one bug tends to break many records).
const SHOWN: usize = 20;

/// Runs the harness, printing the seed first and the figures at the end; panics if the
/// harness could not go on.
pub async fn run_reported(settings: &Settings) -> Report {
    eprintln!(
        "crash harness ({}): QUIVER_CRASH_SEED={}",
        settings.fault, settings.seed
    );
    let report = run(settings)
        .await
        .unwrap_or_else(|e| panic!("QUIVER_CRASH_SEED={}: {e:#}", settings.seed));
    println!("{}", report.figures);
    report
}

/// Runs the harness ([`run_reported`]) and fails on any broken guarantee, showing the
/// first ones with the seed that replays the run; returns the figures.
pub async fn run_and_check(settings: &Settings) -> Figures {
    let report = run_reported(settings).await;
    let shown = &report.violations[..report.violations.len().min(SHOWN)];
    assert!(
        report.violations.is_empty(),
        "QUIVER_CRASH_SEED={}: {} broken guarantees, the first {}:\n{}",
        settings.seed,
        report.violations.len(),
        shown.len(),
        shown.join("\n")
    );
    let figures = report.figures;
    assert_eq!(figures.lost, 0, "acknowledged records lost");
    assert_eq!(figures.duplicates, 0, "records stored twice");
    assert_eq!(figures.refused_starts, 0, "starts refused");
    assert!(figures.faults > 0, "at least one fault happened");
    assert_eq!(
        figures.restarts,
        figures.faults + 1,
        "a restart after every fault, and one after the clean stop"
    );
    assert!(
        figures.counts_checked > 0,
        "the plugin's counts were checked"
    );
    figures
}

/// Which record a payload is: its producer, its publish's sequence number and its
/// place in that publish's batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct RecordId {
    producer: usize,
    sequence: u64,
    index: u32,
}

impl fmt::Display for RecordId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.producer, self.sequence, self.index)
    }
}

impl RecordId {
    /// `producer.sequence.index.pad|` and `pad` bytes derived from the id, so a stored
    /// payload proves itself whole.
    fn payload(self, pad: usize) -> Vec<u8> {
        let mut payload = format!("{self}.{pad}|").into_bytes();
        payload.resize(payload.len() + pad, self.pad_byte());
        payload
    }

    fn pad_byte(self) -> u8 {
        b'a' + (self
            .sequence
            .wrapping_mul(31)
            .wrapping_add(u64::from(self.index))
            % 26) as u8
    }

    /// The id of a payload [`RecordId::payload`] made, if it is whole.
    fn parse(payload: &[u8]) -> Option<Self> {
        let bar = payload.iter().position(|&b| b == b'|')?;
        let head = std::str::from_utf8(&payload[..bar]).ok()?;
        let mut fields = head.split('.');
        let id = Self {
            producer: fields.next()?.parse().ok()?,
            sequence: fields.next()?.parse().ok()?,
            index: fields.next()?.parse().ok()?,
        };
        let pad: usize = fields.next()?.parse().ok()?;
        let padding = &payload[bar + 1..];
        let whole = fields.next().is_none()
            && padding.len() == pad
            && padding.iter().all(|&b| b == id.pad_byte());
        whole.then_some(id)
    }
}

/// One publish: its id (kept for retries) and its records' ids and padding.
#[derive(Debug, Clone)]
struct Publish {
    id: PublishId,
    records: Vec<(RecordId, usize)>,
}

impl Publish {
    fn batch(&self) -> Vec<NewRecord> {
        self.records
            .iter()
            .map(|&(id, pad)| NewRecord::new(id.payload(pad)))
            .collect()
    }
}

/// A logical clock shared by every task, to order receipts across connections.
#[derive(Debug, Clone, Default)]
struct Clock(Arc<AtomicU64>);

impl Clock {
    fn tick(&self) -> u64 {
        self.0.fetch_add(1, Ordering::SeqCst)
    }
}

/// What the load's tasks tell the coordinator.
#[derive(Debug)]
enum Event {
    /// A publish was acknowledged. `queued` is the clock before it was sent,
    /// `answered` after its receipt arrived.
    Receipt {
        producer: usize,
        publish: Publish,
        receipt: Receipt,
        queued: u64,
        answered: u64,
    },
    /// A member got a record and is about to ack (or nack) it.
    Delivery {
        topic: usize,
        offset: u64,
        id: RecordId,
        deliveries: u32,
        acked: bool,
    },
    /// A task failed: a failure of the test if the broker was up.
    Failed(String),
}

type Events = mpsc::UnboundedSender<Event>;

/// One producer: its own connection each cycle, its publishes numbered from 0.
#[derive(Debug)]
struct Producer {
    index: usize,
    topic: usize,
    producer_id: u64,
    next_sequence: u64,
    /// Publishes to send again (cut off by a kill), oldest first.
    retry: VecDeque<Publish>,
    /// Publishes sent and not yet answered, by sequence number.
    in_flight: BTreeMap<u64, Publish>,
    /// Records made so far (each counted once, however often it is sent).
    records_made: u64,
    rng: Rng,
}

impl Producer {
    /// The next publish to send: a retry first; a new one unless `finishing`.
    fn next_publish(&mut self, finishing: bool) -> Option<Publish> {
        if let Some(publish) = self.retry.pop_front() {
            return Some(publish);
        }
        if finishing {
            return None;
        }
        let sequence = self.next_sequence;
        self.next_sequence += 1;
        let count = 1 + self.rng.below(MAX_BATCH);
        let records = (0..count)
            .map(|index| {
                let id = RecordId {
                    producer: self.index,
                    sequence,
                    index: index as u32,
                };
                // One record in twenty is large.
                let pad = match self.rng.percent(5) {
                    true => self.rng.below(MAX_PAD),
                    false => self.rng.below(64),
                };
                (id, pad as usize)
            })
            .collect::<Vec<_>>();
        self.records_made += count;
        Some(Publish {
            id: PublishId {
                producer: self.producer_id,
                sequence,
            },
            records,
        })
    }

    /// Keeps [`IN_FLIGHT`] publishes going until stopped (or, `finishing`, until every
    /// retry is answered), reporting each receipt. State stays consistent at every
    /// await, so the task may be cancelled anywhere.
    async fn pump(&mut self, client: &Client, clock: &Clock, events: &Events, finishing: bool) {
        let topic = TOPICS[self.topic].0;
        let mut replies = FuturesUnordered::new();
        loop {
            while replies.len() < IN_FLIGHT {
                let Some(publish) = self.next_publish(finishing) else {
                    break;
                };
                let queued = clock.tick();
                let reply = client.publish_batch_with_id(topic, publish.batch(), publish.id);
                let sequence = publish.id.sequence;
                self.in_flight.insert(sequence, publish);
                replies.push(async move { (sequence, queued, reply.await) });
            }
            let Some((sequence, queued, result)) = replies.next().await else {
                return;
            };
            let answered = clock.tick();
            match result {
                Ok(receipt) => {
                    let publish = self
                        .in_flight
                        .remove(&sequence)
                        .expect("a publish is listed in flight until answered");
                    let _ = events.send(Event::Receipt {
                        producer: self.index,
                        publish,
                        receipt,
                        queued,
                        answered,
                    });
                }
                Err(e) => {
                    // The publish stays listed in flight, to be retried.
                    let _ = events.send(Event::Failed(format!(
                        "producer {} publish {sequence}: {e}",
                        self.index
                    )));
                    return;
                }
            }
        }
    }

    /// Puts what is in flight (and `voided`: receipts a kill may have undone) back in
    /// the retry queue, in sequence order.
    fn requeue(&mut self, voided: impl IntoIterator<Item = Publish>) {
        let mut all: BTreeMap<u64, Publish> = std::mem::take(&mut self.in_flight);
        all.extend(voided.into_iter().map(|p| (p.id.sequence, p)));
        all.extend(self.retry.drain(..).map(|p| (p.id.sequence, p)));
        self.retry = all.into_values().collect();
    }
}

/// Runs `producer` on `client` until `stop` (or until it is done, `finishing`), then
/// hands it back with its publishes in flight still listed.
async fn produce(
    mut producer: Producer,
    client: Client,
    clock: Clock,
    events: Events,
    stop: CancellationToken,
    finishing: bool,
) -> Producer {
    tokio::select! {
        () = producer.pump(&client, &clock, &events, finishing) => {}
        () = stop.cancelled() => {}
    }
    producer
}

/// A group member: acks (or, unless `drain`, now and then nacks) everything it gets,
/// reporting each delivery first, until `stop`.
async fn consume(
    client: Client,
    mut rng: Rng,
    events: Events,
    stop: CancellationToken,
    drain: bool,
) {
    let run = async {
        let mut member = client.join(GROUP, Some(PREFETCH)).await?;
        while let Some(delivery) = member.next().await {
            let delivery = delivery?;
            let record = &delivery.record;
            let topic = TOPICS
                .iter()
                .position(|(name, _)| **name == *record.topic)
                .ok_or_else(|| anyhow!("delivered from topic {}", record.topic))?;
            let id = RecordId::parse(&record.payload)
                .ok_or_else(|| anyhow!("delivered a garbled record at {}", record.offset))?;
            let acked = drain || !rng.percent(NACK_PERCENT);
            let _ = events.send(Event::Delivery {
                topic,
                offset: record.offset,
                id,
                deliveries: delivery.deliveries,
                acked,
            });
            match acked {
                true => delivery.ack()?,
                false => delivery.nack(Duration::from_millis(rng.below(50)))?,
            }
        }
        anyhow::Ok(())
    };
    tokio::select! {
        result = run => {
            let why = result.err().map_or("its membership ended".to_owned(), |e| format!("{e:#}"));
            let _ = events.send(Event::Failed(format!("a member stopped: {why}")));
        }
        () = stop.cancelled() => {}
    }
}

/// A receipt from the batched topic that no fsync receipt covers yet.
#[derive(Debug)]
struct Uncovered {
    answered: u64,
    producer: usize,
    publish: Publish,
    base_offset: u64,
}

/// What one topic should hold, and what it held at the last check.
#[derive(Debug, Default)]
struct TopicModel {
    /// Offset → record, for every standing receipt.
    acked: BTreeMap<u64, RecordId>,
    /// Receipts since the last check (it compares those below what it read before).
    fresh: Vec<(u64, RecordId)>,
    /// The records the topic held at the last check, in offset order.
    stored: Vec<RecordId>,
    /// The offset of each of them.
    offsets: HashMap<RecordId, u64>,
    /// Offsets of stored records the group never acked.
    unacked: BTreeSet<u64>,
    /// The group's cursor when last seen (durable then).
    cursor: u64,
}

impl TopicModel {
    /// Forgets what the last checks read from `from` on.
    fn truncate(&mut self, from: u64) {
        for id in self.stored.drain(from as usize..) {
            self.offsets.remove(&id);
        }
        self.unacked.split_off(&from);
    }

    /// The last record below `from` of each of `topic`'s producers, as (sequence,
    /// index).
    fn last_positions(&self, topic: usize, from: u64) -> HashMap<usize, (u64, u32)> {
        let mut wanted: HashSet<usize> = (0..PRODUCERS.len())
            .filter(|&p| PRODUCERS[p] == topic)
            .collect();
        let mut last = HashMap::new();
        for id in self.stored[..from as usize].iter().rev() {
            if wanted.is_empty() {
                break;
            }
            if wanted.remove(&id.producer) {
                last.insert(id.producer, (id.sequence, id.index));
            }
        }
        last
    }
}

/// The harness's knowledge of what the broker acknowledged and what the group did.
#[derive(Debug, Default)]
struct Model {
    topics: [TopicModel; TOPICS.len()],
    uncovered: Vec<Uncovered>,
    /// Every batched receipt answered before this tick is durable.
    covered_until: u64,
    /// Receipts a kill voided, to look for after the restart: (topic, offset, record).
    voided: Vec<(usize, u64, RecordId)>,
    /// Records a member acked (or was about to).
    group_acked: HashSet<RecordId>,
}

struct Harness {
    fault: Fault,
    barrier: bool,
    /// The disk the data dir is on, for power cuts (unmounted before the data dir's
    /// temp dir is removed: fields drop in order).
    disk: Option<Disk>,
    data: DataDir,
    rng: Rng,
    clock: Clock,
    model: Model,
    producers: Vec<Producer>,
    figures: Figures,
    violations: Vec<String>,
}

/// The tasks of one cycle's load.
struct Load {
    producers: Vec<JoinHandle<Producer>>,
    members: Vec<JoinHandle<()>>,
    events: mpsc::UnboundedReceiver<Event>,
    stop: CancellationToken,
}

/// When to bring the broker down in a cycle.
#[derive(Debug, Clone, Copy)]
enum Trigger {
    /// After this many publish receipts (0: at once, with the retries in flight).
    Receipts(u64),
    /// After this many acks from the group's members.
    GroupAcks(u64),
    /// Once this long has passed since the load started: a moment the clock picks
    /// rather than the load's progress, so faults also land inside writes.
    Elapsed(Duration),
}

impl Trigger {
    /// A trigger picked by `rng`.
    fn pick(rng: &mut Rng) -> Self {
        match rng.below(10) {
            0..=5 => Self::Receipts(rng.below(MAX_TRIGGER + 1)),
            6..=7 => Self::GroupAcks(1 + rng.below(MAX_TRIGGER)),
            _ => Self::Elapsed(Duration::from_millis(rng.below(MAX_TRIGGER_MS + 1))),
        }
    }

    fn reached(self, seen: u64, started: tokio::time::Instant) -> bool {
        match self {
            Self::Receipts(n) | Self::GroupAcks(n) => seen >= n,
            Self::Elapsed(after) => started.elapsed() >= after,
        }
    }

    /// When to stop waiting for events, at the latest.
    fn deadline(self, started: tokio::time::Instant) -> tokio::time::Instant {
        match self {
            Self::Elapsed(after) => started + after,
            _ => started + CYCLE_LIMIT,
        }
    }

    /// Whether `event` counts toward this trigger.
    fn counts(self, event: &Event) -> bool {
        match (self, event) {
            (Self::Receipts(_), Event::Receipt { .. }) => true,
            (Self::GroupAcks(_), Event::Delivery { acked, .. }) => *acked,
            _ => false,
        }
    }
}

/// How a check reads the topics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    /// Everything, from offset 0.
    Full,
    /// What the previous checks did not read; what they read was durable then and
    /// nothing removes records, so a full check now and then suffices for it.
    Tail,
}

impl Harness {
    fn new(settings: &Settings) -> anyhow::Result<Self> {
        let mut rng = Rng::new(settings.seed);
        let producers = PRODUCERS
            .iter()
            .enumerate()
            .map(|(index, &topic)| Producer {
                index,
                topic,
                producer_id: rng.next_u64(),
                next_sequence: 0,
                retry: VecDeque::new(),
                in_flight: BTreeMap::new(),
                records_made: 0,
                rng: rng.fork(),
            })
            .collect();
        let data = DataDir::new();
        let disk = match settings.fault {
            Fault::Kill => None,
            Fault::PowerCut => Some(Disk::mount(data.root()).context(
                "mounting the power-cut disk (needs /dev/fuse, and root or fusermount3 from \
                 fuse3, which `make test` installs)",
            )?),
        };
        Ok(Self {
            fault: settings.fault,
            barrier: settings.barrier,
            disk,
            data,
            rng,
            clock: Clock::default(),
            model: Model::default(),
            producers,
            figures: Figures::new(settings),
            violations: Vec::new(),
        })
    }

    /// Starts the broker on the data dir, logging warnings only, with room for plugin
    /// calls on a busy machine. `None` if it exits instead of printing its ready line:
    /// that is recorded as a broken guarantee, with what it said.
    fn start_broker(&mut self) -> Option<Broker> {
        let args: &[&str] = match self.barrier {
            true => &[],
            false => &["--unsafe-skip-barrier"],
        };
        let env = [
            ("RUST_LOG", "warn"),
            ("QUIVER_PLUGINS__CALL_TIMEOUT", "10s"),
        ];
        match Broker::try_launch(&self.data, args, &env) {
            Ok(broker) => Some(broker),
            Err(refused) => {
                self.figures.refused_starts += 1;
                self.violations.push(format!(
                    "the broker refused to start after {} {} ({}): {}",
                    self.figures.faults, self.fault, refused.status, refused.stderr
                ));
                None
            }
        }
    }

    /// Brings the broker down as the run's [`Fault`] says.
    fn bring_down(&mut self, broker: Broker) -> anyhow::Result<()> {
        match (self.fault, &mut self.disk) {
            (Fault::PowerCut, Some(disk)) => {
                let tear = match self.rng.percent(TORN_PERCENT) {
                    true => {
                        self.figures.torn_cuts += 1;
                        Tear::Sectors(self.rng.next_u64())
                    }
                    false => Tear::None,
                };
                // The disk first: from this instant nothing more reaches it.
                disk.cut(tear);
                broker.kill9();
                disk.remount()
                    .context("remounting the disk after a power cut")?;
            }
            _ => broker.kill9(),
        }
        self.figures.faults += 1;
        Ok(())
    }

    async fn set_up(&mut self, broker: &Broker) -> anyhow::Result<()> {
        let client = connect(broker).await?;
        for (name, durability) in TOPICS {
            let config = TopicConfig {
                durability,
                ..TopicConfig::default()
            };
            client.create_topic(name, config).await?;
        }
        let settings = GroupSettings {
            max_deliveries: u32::MAX,
            prefetch: PREFETCH,
            ..GroupSettings::new("crash.>")
        };
        client.create_group(GROUP, settings).await?;
        let counter = read_plugin(&test_plugin(COUNTER));
        client.deploy_plugin(COUNTER, counter, None).await?;
        for (name, _) in TOPICS {
            client.attach_plugin(name, Stage::new(COUNTER)).await?;
        }
        client.close().await;
        Ok(())
    }

    /// Load, bring the broker down at the trigger, restart, check. Returns the
    /// restarted broker, or `None` if it refused to start.
    async fn cycle(&mut self, broker: Broker) -> anyhow::Result<Option<Broker>> {
        let trigger = Trigger::pick(&mut self.rng);
        let mut load = self.start_load(&broker, false).await?;
        let started = tokio::time::Instant::now();
        let mut seen = 0;
        while !trigger.reached(seen, started) {
            let event = match tokio::time::timeout_at(trigger.deadline(started), load.events.recv())
                .await
            {
                Ok(event) => event.ok_or_else(|| anyhow!("every load task ended"))?,
                Err(_) if matches!(trigger, Trigger::Elapsed(_)) => break,
                Err(_) => bail!("the load stalled before {trigger:?} (at {seen})"),
            };
            seen += u64::from(trigger.counts(&event));
            self.apply(event)?;
        }
        self.bring_down(broker)?;
        self.stop_load(load).await?;
        self.void_uncovered();
        let Some(broker) = self.start_broker() else {
            return Ok(None);
        };
        self.figures.restarts += 1;
        let scope = match self.figures.restarts % FULL_CHECK_EVERY {
            0 => Scope::Full,
            _ => Scope::Tail,
        };
        self.check(&broker, scope).await?;
        Ok(Some(broker))
    }

    /// The end, with no more kills: every publish a kill cut off is stored, the group
    /// catches up and acks every record; then a clean stop and restart keep it all.
    async fn finish(&mut self, broker: Broker) -> anyhow::Result<()> {
        let mut load = self.start_load(&broker, true).await?;
        let client = connect(&broker).await?;
        let deadline = tokio::time::Instant::now() + DRAIN_LIMIT;
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        loop {
            tokio::select! {
                event = load.events.recv() => {
                    self.apply(event.ok_or_else(|| anyhow!("every load task ended"))?)?;
                }
                _ = tick.tick() => {
                    let published = load.producers.iter().all(JoinHandle::is_finished);
                    if published && caught_up(&client.describe_group(GROUP).await?) {
                        break;
                    }
                    ensure!(
                        tokio::time::Instant::now() < deadline,
                        "the final drain took longer than {DRAIN_LIMIT:?}"
                    );
                }
            }
        }
        self.stop_load(load).await?;
        for (topic, (name, _)) in TOPICS.iter().enumerate() {
            self.check_topic(&client, topic, Scope::Full).await?;
            let never_acked = self.model.topics[topic].unacked.len();
            if never_acked > 0 {
                self.violations.push(format!(
                    "{name}: the group caught up without ever acking {never_acked} records"
                ));
            }
        }
        client.close().await;
        if !broker.stop().success() {
            self.violations.push("a clean stop did not exit 0".into());
        }
        let Some(broker) = self.start_broker() else {
            return Ok(());
        };
        self.figures.restarts += 1;
        // A clean stop flushes the batched topic too: every receipt stands.
        self.check(&broker, Scope::Full).await?;
        let client = connect(&broker).await?;
        if !caught_up(&client.describe_group(GROUP).await?) {
            self.violations
                .push("the group lost its place across a clean restart".into());
        }
        client.close().await;
        Ok(())
    }

    /// Connects and starts the producers and members (`finishing`: the producers only
    /// retry, the members only ack).
    async fn start_load(&mut self, broker: &Broker, finishing: bool) -> anyhow::Result<Load> {
        let (tx, events) = mpsc::unbounded_channel();
        let stop = CancellationToken::new();
        let mut producers = Vec::new();
        for producer in std::mem::take(&mut self.producers) {
            self.figures.retries += producer.retry.len() as u64;
            let client = connect(broker).await?;
            producers.push(tokio::spawn(produce(
                producer,
                client,
                self.clock.clone(),
                tx.clone(),
                stop.clone(),
                finishing,
            )));
        }
        let mut members = Vec::new();
        for _ in 0..MEMBERS {
            let client = connect(broker).await?;
            let rng = self.rng.fork();
            members.push(tokio::spawn(consume(
                client,
                rng,
                tx.clone(),
                stop.clone(),
                finishing,
            )));
        }
        Ok(Load {
            producers,
            members,
            events,
            stop,
        })
    }

    /// Stops the load's tasks, takes the producers back and applies every event they
    /// sent (receipts that raced the kill are acknowledgements too; failures after a
    /// kill are expected).
    async fn stop_load(&mut self, mut load: Load) -> anyhow::Result<()> {
        load.stop.cancel();
        for task in load.producers {
            let mut producer = task.await.context("a producer panicked")?;
            producer.requeue([]);
            self.producers.push(producer);
        }
        for task in load.members {
            task.await.context("a member panicked")?;
        }
        while let Some(event) = load.events.recv().await {
            if !matches!(event, Event::Failed(_)) {
                self.apply(event)?;
            }
        }
        self.figures.records_published = self.producers.iter().map(|p| p.records_made).sum();
        Ok(())
    }

    /// Updates the model with one event. `Err` for a failed task (the broker was up);
    /// what contradicts the model is a violation.
    fn apply(&mut self, event: Event) -> anyhow::Result<()> {
        match event {
            Event::Receipt {
                producer,
                publish,
                receipt,
                queued,
                answered,
            } => self.receipt(producer, publish, &receipt, queued, answered),
            Event::Delivery {
                topic,
                offset,
                id,
                deliveries,
                acked,
            } => self.delivery(topic, offset, id, deliveries, acked),
            Event::Failed(why) => bail!("while the broker was up: {why}"),
        }
        Ok(())
    }

    fn receipt(
        &mut self,
        producer: usize,
        publish: Publish,
        receipt: &Receipt,
        queued: u64,
        answered: u64,
    ) {
        self.figures.receipts += 1;
        let topic = PRODUCERS[producer];
        let name = TOPICS[topic].0;
        if receipt.count as usize != publish.records.len() {
            self.violations.push(format!(
                "{name}: a receipt for {} records counts {}",
                publish.records.len(),
                receipt.count
            ));
        }
        let model = &mut self.model.topics[topic];
        for (offset, &(id, _)) in (receipt.base_offset..).zip(&publish.records) {
            if let Some(other) = model.acked.insert(offset, id)
                && other != id
            {
                self.violations.push(format!(
                    "{name}:{offset} acknowledged for both {other} and {id}"
                ));
            }
            model.fresh.push((offset, id));
        }
        match TOPICS[topic].1 {
            Durability::Fsync => {
                let model = &mut self.model;
                model.covered_until = model.covered_until.max(queued);
                let until = model.covered_until;
                model.uncovered.retain(|u| u.answered >= until);
            }
            Durability::Batched { .. } => self.model.uncovered.push(Uncovered {
                answered,
                producer,
                publish,
                base_offset: receipt.base_offset,
            }),
        }
    }

    fn delivery(&mut self, topic: usize, offset: u64, id: RecordId, deliveries: u32, acked: bool) {
        self.figures.deliveries += 1;
        if deliveries > 1 {
            self.figures.redeliveries += 1;
        }
        let model = &mut self.model.topics[topic];
        if acked {
            self.figures.group_acks += 1;
            self.model.group_acked.insert(id);
            if model.stored.get(offset as usize) == Some(&id) {
                model.unacked.remove(&offset);
            }
        }
        let stored = model.stored.get(offset as usize);
        let expected = model.acked.get(&offset).or(stored);
        if let Some(&expected) = expected
            && expected != id
        {
            self.violations.push(format!(
                "the group got {id} at {}:{offset}, which holds {expected}",
                TOPICS[topic].0
            ));
        }
    }

    /// After a kill: batched receipts no flush covered may be lost. Their records are
    /// no longer expected (the check looks for them) and their publishes go back to
    /// be retried.
    fn void_uncovered(&mut self) {
        for u in std::mem::take(&mut self.model.uncovered) {
            let topic = PRODUCERS[u.producer];
            for (offset, &(id, _)) in (u.base_offset..).zip(&u.publish.records) {
                self.model.topics[topic].acked.remove(&offset);
                self.model.voided.push((topic, offset, id));
            }
            self.producers[u.producer].requeue([u.publish]);
        }
        let voided: HashSet<(usize, u64)> =
            self.model.voided.iter().map(|&(t, o, _)| (t, o)).collect();
        for (topic, model) in self.model.topics.iter_mut().enumerate() {
            model
                .fresh
                .retain(|&(offset, _)| !voided.contains(&(topic, offset)));
        }
        self.model.covered_until = 0;
    }

    /// Checks every topic and the group against the model.
    async fn check(&mut self, broker: &Broker, scope: Scope) -> anyhow::Result<()> {
        let client = connect(broker).await?;
        for topic in 0..TOPICS.len() {
            self.check_topic(&client, topic, scope).await?;
        }
        for (topic, offset, id) in std::mem::take(&mut self.model.voided) {
            match self.model.topics[topic].stored.get(offset as usize) {
                Some(&stored) if stored == id => {}
                Some(&stored) => self.violations.push(format!(
                    "{}:{offset} holds {stored}, not {id} (applied before the kill)",
                    TOPICS[topic].0
                )),
                None => self.figures.batched_unflushed_lost += 1,
            }
        }
        match client.describe_group(GROUP).await {
            Ok(info) => self.check_group(&info),
            Err(e) if e.code() == Some(ErrorCode::GroupNotFound) => self.violations.push(format!(
                "the group {GROUP}, created and acknowledged, is gone"
            )),
            Err(e) => return Err(e.into()),
        }
        client.close().await;
        Ok(())
    }

    /// Reads a topic (whole, or what earlier checks did not read) and checks it: dense,
    /// in publish order, no record twice, every acknowledged record at its offset.
    async fn check_topic(
        &mut self,
        client: &Client,
        topic: usize,
        scope: Scope,
    ) -> anyhow::Result<()> {
        let name = TOPICS[topic].0;
        let info = match client.describe_topic(name).await {
            Ok(info) => info,
            Err(e) if e.code() == Some(ErrorCode::TopicNotFound) => {
                let model = &self.model.topics[topic];
                let acked = model.acked.len();
                self.figures.lost += acked as u64;
                self.violations.push(format!(
                    "{name}, created and acknowledged, is gone, with {acked} acknowledged \
                     records"
                ));
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
        if info.first_offset != 0 || info.records != info.next_offset {
            self.violations.push(format!(
                "{name} holds {} records from {} to {}: not dense from 0",
                info.records, info.first_offset, info.next_offset
            ));
        }
        let model = &mut self.model.topics[topic];
        let from = match scope {
            Scope::Full => 0,
            Scope::Tail => info.next_offset.min(model.stored.len() as u64),
        };
        let records = read(client, name, from, info.next_offset - from).await?;
        let earlier: Vec<_> = std::mem::take(&mut model.fresh)
            .into_iter()
            .filter(|&(offset, _)| offset < from)
            .collect();
        let mut last = model.last_positions(topic, from);
        model.truncate(from);
        for (expected, record) in (from..).zip(&records) {
            let offset = record.offset;
            if offset != expected {
                self.violations
                    .push(format!("{name}: offset {offset} where {expected} belongs"));
            }
            let count = record
                .header(COUNT_HEADER)
                .and_then(|c| std::str::from_utf8(c).ok()?.parse::<u64>().ok());
            self.figures.counts_checked += 1;
            if count != Some(offset + 1) {
                self.violations.push(format!(
                    "{name}:{offset} carries plugin count {count:?}, not {}: the plugin's \
                     state and the records of its commits disagree",
                    offset + 1
                ));
            }
            let Some(id) = RecordId::parse(&record.payload) else {
                self.violations
                    .push(format!("{name}:{offset} holds a garbled record"));
                continue;
            };
            if let Some(first) = model.offsets.insert(id, offset) {
                self.figures.duplicates += 1;
                self.violations.push(format!(
                    "{name}:{offset} stores {id} again (first at {first})"
                ));
            }
            let position = (id.sequence, id.index);
            if let Some(&before) = last.get(&id.producer)
                && before >= position
            {
                self.violations.push(format!(
                    "{name}:{offset}: {id} after {}.{}.{} (out of publish order)",
                    id.producer, before.0, before.1
                ));
            }
            last.insert(id.producer, position);
            if !self.model.group_acked.contains(&id) {
                model.unacked.insert(offset);
            }
            model.stored.push(id);
        }
        let to_compare = earlier
            .into_iter()
            .chain(model.acked.range(from..).map(|(&o, &id)| (o, id)));
        for (offset, id) in to_compare {
            match model.stored.get(offset as usize) {
                Some(&found) if found == id => {}
                found => {
                    self.figures.lost += 1;
                    self.violations.push(format!(
                        "{name}:{offset}: acknowledged {id}, found {found:?}"
                    ));
                }
            }
        }
        Ok(())
    }

    /// The group's cursor never moves back, and every record below it the group never
    /// acked is pending.
    fn check_group(&mut self, info: &GroupInfo) {
        for (topic, model) in self.model.topics.iter_mut().enumerate() {
            let name = TOPICS[topic].0;
            let Some(lane) = info.topics.iter().find(|t| t.topic == name) else {
                self.violations
                    .push(format!("the group no longer consumes {name}"));
                continue;
            };
            if lane.cursor < model.cursor {
                self.violations.push(format!(
                    "the group's cursor in {name} moved back from {} to {}",
                    model.cursor, lane.cursor
                ));
            }
            if lane.cursor > model.stored.len() as u64 {
                self.violations.push(format!(
                    "the group's cursor in {name} is {}, past the {} records stored",
                    lane.cursor,
                    model.stored.len()
                ));
            }
            let never_acked = model.unacked.range(..lane.cursor).count() as u64;
            if lane.pending < never_acked {
                self.violations.push(format!(
                    "{name}: {never_acked} records below the group's cursor {} were never \
                     acked, but only {} are pending: some were skipped",
                    lane.cursor, lane.pending
                ));
            }
            model.cursor = lane.cursor;
        }
    }
}

/// Whether the group has settled every record of every topic it consumes.
fn caught_up(info: &GroupInfo) -> bool {
    info.topics.len() == TOPICS.len() && info.topics.iter().all(|t| t.lag == 0)
}

/// A client of `broker` that notices a dead broker within [`IDLE_TIMEOUT`]. It does
/// not reconnect by itself: the harness models each fault, so a lost connection must
/// end what is in flight, which the harness then retries (as the SDK would) and checks.
async fn connect(broker: &Broker) -> anyhow::Result<Client> {
    let client = Client::builder()
        .ca_file(broker.cert())?
        .idle_timeout(IDLE_TIMEOUT)
        .reconnect(quiver_client::Reconnect::Never)
        .connect(broker.addr())
        .await?;
    Ok(client)
}

/// Reads `n` records of a topic from offset `from`.
async fn read(
    client: &Client,
    topic: &str,
    from: u64,
    n: u64,
) -> anyhow::Result<Vec<quiver_client::Record>> {
    let mut records = Vec::with_capacity(n as usize);
    if n == 0 {
        return Ok(records);
    }
    let mut sub = client
        .subscribe(topic, SubscribeOptions::from(StartAt::Offset(from)))
        .await?;
    while (records.len() as u64) < n {
        let record = tokio::time::timeout(READ_STALL, sub.next())
            .await
            .map_err(|_| anyhow!("reading {topic} stalled at {}", records.len()))?
            .ok_or_else(|| anyhow!("the subscription to {topic} ended"))??;
        records.push(record);
    }
    Ok(records)
}
