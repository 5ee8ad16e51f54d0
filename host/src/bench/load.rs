//! The load: producers keeping a window of publishes in flight (optionally paced to a
//! rate), and consumers receiving, timing and (in a group) acking every record.
//!
//! Clocks: a payload starts with the wall-clock time it was made (ns since the Unix
//! epoch), so a consumer's latency is "received now minus made then"; publish-to-ack
//! latency is measured with the monotonic clock of the producer.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use bytes::{BufMut, Bytes, BytesMut};
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt, TryFutureExt};
use hdrhistogram::Histogram;
use quiver_client::{Client, NewRecord, Record, StartAt, SubscribeOptions};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{Connector, Settings};

/// Records a subscriber lets the broker send ahead of it.
const SUBSCRIBER_WINDOW: u32 = 4096;
/// How long consumers may take, after the last publish was acknowledged, to receive
/// everything before the run gives up on them.
const DRAIN_GRACE: Duration = Duration::from_secs(30);

/// What payloads look like.
#[derive(Debug, Clone, Copy)]
pub(super) enum Payloads {
    /// Timestamp (u64 BE), sequence (u64 BE), then filler.
    Binary,
    /// `{"seq":N,"ts":T,"pad":"xx…"}`, for plugins that read JSON.
    Json,
}

impl Payloads {
    fn make(self, size: usize, seq: u64) -> Bytes {
        let ts = now_ns();
        match self {
            Self::Binary => {
                let mut payload = BytesMut::with_capacity(size);
                payload.put_u64(ts);
                payload.put_u64(seq);
                payload.resize(size, b'x');
                payload.freeze()
            }
            Self::Json => {
                let head = format!(r#"{{"seq":{seq},"ts":{ts},"pad":""#);
                let pad = size.saturating_sub(head.len() + 2);
                let mut payload = String::with_capacity(size);
                payload.push_str(&head);
                payload.extend(std::iter::repeat_n('x', pad));
                payload.push_str(r#""}"#);
                Bytes::from(payload)
            }
        }
    }
}

/// Nanoseconds since the Unix epoch.
fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// A latency histogram in microseconds, up to a minute, three significant digits.
pub(super) fn histogram() -> Histogram<u64> {
    // Invariant: constant bounds that hdrhistogram accepts (low ≥ 1, high ≥ 2 × low).
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

/// What one producer or consumer did.
struct Tally {
    /// Records acknowledged (producer) or received (consumer).
    count: u64,
    /// When the last one was.
    last: Option<Instant>,
    /// Their latencies, µs.
    latency: Histogram<u64>,
}

/// What the producers did.
pub(super) struct Produced {
    /// Records acknowledged.
    pub(super) acked: u64,
    /// When the first publish went out.
    pub(super) started: Instant,
    /// From the first publish to the last acknowledgement.
    pub(super) elapsed: Duration,
    /// Publish-to-ack latency, µs.
    pub(super) latency: Histogram<u64>,
}

/// Producers at work.
pub(super) struct Producers {
    tasks: Vec<JoinHandle<anyhow::Result<Tally>>>,
    started: Instant,
}

impl Producers {
    /// Connects every producer, then starts them together.
    pub(super) async fn start(
        settings: &Settings,
        connector: &Arc<dyn Connector>,
        topics: &Arc<[String]>,
        payloads: Payloads,
    ) -> anyhow::Result<Self> {
        let mut clients = Vec::with_capacity(settings.producers);
        for _ in 0..settings.producers {
            clients.push(connector.connect().await?);
        }
        let started = Instant::now();
        let deadline = started + settings.time_limit;
        let n = settings.producers as u64;
        let tasks = clients
            .into_iter()
            .enumerate()
            .map(|(i, client)| {
                let share = settings.count / n + u64::from((i as u64) < settings.count % n);
                let job = Job {
                    topics: Arc::clone(topics),
                    count: share,
                    size: settings.size,
                    batch: settings.batch,
                    window: settings.window,
                    rate: settings.rate.map(|r| r as f64 / n as f64),
                    payloads,
                    started,
                    deadline,
                    progress: settings.progress.clone(),
                };
                tokio::spawn(job.run(client))
            })
            .collect();
        Ok(Self { tasks, started })
    }

    /// Waits for every producer to finish.
    pub(super) async fn finish(self) -> anyhow::Result<Produced> {
        let mut acked = 0;
        let mut last = self.started;
        let mut latency = histogram();
        for task in self.tasks {
            let tally = task.await.context("a producer panicked")??;
            acked += tally.count;
            last = last.max(tally.last.unwrap_or(last));
            latency
                .add(tally.latency)
                .context("merging latency histograms")?;
        }
        Ok(Produced {
            acked,
            started: self.started,
            elapsed: last - self.started,
            latency,
        })
    }
}

/// One producer's share of the run.
struct Job {
    /// Published to in turn, one publish each.
    topics: Arc<[String]>,
    count: u64,
    size: usize,
    batch: usize,
    window: usize,
    /// Records per second for this producer.
    rate: Option<f64>,
    payloads: Payloads,
    started: Instant,
    deadline: Instant,
    progress: indicatif::ProgressBar,
}

impl Job {
    /// When record `seq` is due, by the rate.
    fn due(&self, seq: u64) -> Instant {
        match self.rate {
            Some(rate) if rate > 0.0 => self.started + Duration::from_secs_f64(seq as f64 / rate),
            _ => self.started,
        }
    }

    /// Publishes its records; returns how many were acknowledged, when the last ack
    /// came, and the publish-to-ack latencies.
    async fn run(self, client: Client) -> anyhow::Result<Tally> {
        let mut latency = histogram();
        let mut inflight = FuturesUnordered::new();
        let (mut sent, mut acked) = (0u64, 0u64);
        let mut turn = self.topics.iter().cycle();
        let mut last = self.started;
        loop {
            let open = sent < self.count && Instant::now() < self.deadline;
            let due = self.due(sent);
            if open && inflight.len() < self.window && Instant::now() >= due {
                let n = (self.count - sent).min(self.batch as u64);
                let record = |seq| NewRecord::new(self.payloads.make(self.size, seq));
                let topic = turn.next().expect("there is at least one topic");
                let sent_at = Instant::now();
                // One record goes through `publish`, as an application publishes one.
                // A record a plugin dropped, routed or split is acknowledged all the
                // same: `publish` reports it as `Transformed`, with its receipt.
                let receipt = match n {
                    1 => client
                        .publish(topic, record(sent))
                        .map(|result| match result {
                            Ok(_) | Err(quiver_client::Error::Transformed(_)) => Ok(()),
                            Err(e) => Err(e),
                        })
                        .boxed(),
                    _ => {
                        let records = (sent..sent + n).map(record).collect();
                        client.publish_batch(topic, records).map_ok(drop).boxed()
                    }
                };
                inflight.push(async move { (topic, sent_at, n, receipt.await) });
                sent += n;
                continue;
            }
            if inflight.is_empty() {
                if !open {
                    break;
                }
                // Paced: nothing in flight, the next record not yet due.
                tokio::time::sleep_until(due.into()).await;
                continue;
            }
            let pacing = open && inflight.len() < self.window;
            tokio::select! {
                Some((topic, sent_at, n, receipt)) = inflight.next() => {
                    receipt.with_context(|| format!("publishing to {topic}"))?;
                    last = Instant::now();
                    latency.saturating_record(micros(last - sent_at));
                    acked += n;
                    self.progress.inc(n);
                }
                () = tokio::time::sleep_until(due.into()), if pacing => {}
            }
        }
        client.close().await;
        Ok(Tally {
            count: acked,
            last: Some(last),
            latency,
        })
    }
}

/// Where consumers read.
#[derive(Debug, Clone)]
pub(super) enum Source {
    /// Each consumer subscribes to this topic or pattern and receives every record.
    Subscription(String),
    /// Each consumer joins this group; together they receive every record.
    Group(String),
}

/// What the consumers did.
pub(super) struct Consumed {
    /// Records each subscriber received at the least, or the group's members in all.
    pub(super) received_min: u64,
    /// From the first publish to the last record received.
    pub(super) elapsed: Duration,
    /// Publish-to-receive latency, µs.
    pub(super) latency: Histogram<u64>,
    /// Records each consumer received, in the order they joined.
    pub(super) counts: Vec<u64>,
}

/// Consumers at work.
pub(super) struct Consumers {
    tasks: Vec<JoinHandle<anyhow::Result<Tally>>>,
    expected: watch::Sender<Option<u64>>,
    stop: CancellationToken,
    group: bool,
}

impl Consumers {
    /// Connects and subscribes (or joins) every consumer before anything is published.
    pub(super) async fn start(
        settings: &Settings,
        connector: &Arc<dyn Connector>,
        source: Source,
    ) -> anyhow::Result<Self> {
        let (expected, expected_rx) = watch::channel(None);
        let stop = CancellationToken::new();
        let received = Arc::new(AtomicU64::new(0));
        let complete = CancellationToken::new();
        let group = matches!(source, Source::Group(_));
        let mut tasks = Vec::with_capacity(settings.consumers);
        for _ in 0..settings.consumers {
            let client = connector.connect().await?;
            let stream = match &source {
                Source::Subscription(topic) => {
                    let options = SubscribeOptions {
                        from: StartAt::Earliest,
                        window: SUBSCRIBER_WINDOW,
                        ..SubscribeOptions::default()
                    };
                    Stream::Subscription(client.subscribe(topic, options).await?)
                }
                Source::Group(name) => {
                    Stream::Member(client.join(name, None).await?, settings.nack_delay)
                }
            };
            let consumer = Consumer {
                client,
                stream,
                expected: expected_rx.clone(),
                stop: stop.clone(),
                group_received: Arc::clone(&received),
                group_complete: complete.clone(),
            };
            tasks.push(tokio::spawn(consumer.run()));
        }
        Ok(Self {
            tasks,
            expected,
            stop,
            group,
        })
    }

    /// Tells the consumers how many records were published and waits for them (at
    /// most [`DRAIN_GRACE`]).
    pub(super) async fn finish(self, produced: &Produced) -> anyhow::Result<Consumed> {
        let _ = self.expected.send(Some(produced.acked));
        let stop = self.stop.clone();
        let guard = tokio::spawn(async move {
            tokio::time::sleep(DRAIN_GRACE).await;
            stop.cancel();
        });
        let mut counts = Vec::new();
        let mut last = produced.started;
        let mut latency = histogram();
        for task in self.tasks {
            let tally = task.await.context("a consumer panicked")??;
            counts.push(tally.count);
            last = last.max(tally.last.unwrap_or(last));
            latency
                .add(tally.latency)
                .context("merging latency histograms")?;
        }
        guard.abort();
        let received_min = match self.group {
            true => counts.iter().sum(),
            false => counts.iter().copied().min().unwrap_or(0),
        };
        Ok(Consumed {
            received_min,
            elapsed: last - produced.started,
            latency,
            counts,
        })
    }
}

enum Stream {
    Subscription(quiver_client::Subscription),
    /// A group member, and the delay it nacks every delivery with (none: it acks).
    Member(quiver_client::Member, Option<Duration>),
}

struct Consumer {
    client: Client,
    stream: Stream,
    expected: watch::Receiver<Option<u64>>,
    stop: CancellationToken,
    /// Records received by all the members of a group.
    group_received: Arc<AtomicU64>,
    /// Cancelled when a group's members have received everything between them.
    group_complete: CancellationToken,
}

impl Consumer {
    /// Whether everything expected has arrived: at this subscriber, or at the group.
    fn done(&self, received: u64) -> bool {
        let Some(expected) = *self.expected.borrow() else {
            return false;
        };
        match self.stream {
            Stream::Subscription(_) => received >= expected,
            Stream::Member(..) => self.group_received.load(Ordering::Acquire) >= expected,
        }
    }

    async fn run(mut self) -> anyhow::Result<Tally> {
        let mut tally = Tally {
            count: 0,
            last: None,
            latency: histogram(),
        };
        'receiving: while !self.done(tally.count) {
            let record = tokio::select! {
                next = next_record(&mut self.stream) => next?,
                _ = self.expected.changed() => continue,
                () = self.group_complete.cancelled() => break,
                () = self.stop.cancelled() => break,
            };
            let Some(record) = record else { break };
            self.take(&mut tally, &record);
            // Records already here are taken without waiting on anything else: the
            // bench's own bookkeeping stays out of the figures.
            while !self.done(tally.count) {
                match next_record(&mut self.stream).now_or_never() {
                    Some(Ok(Some(record))) => self.take(&mut tally, &record),
                    Some(Ok(None)) => {
                        tally.last = Some(Instant::now());
                        break 'receiving;
                    }
                    Some(Err(e)) => return Err(e),
                    None => break,
                }
            }
            tally.last = Some(Instant::now());
        }
        if let Stream::Member(member, _) = self.stream {
            // The other members wait for more: the group has had everything.
            self.group_complete.cancel();
            member.leave().await?;
        }
        self.client.close().await;
        Ok(tally)
    }

    /// Counts a received record and its publish-to-receive latency. (`tally.last` is
    /// set once the records already here are taken.)
    fn take(&self, tally: &mut Tally, record: &Record) {
        if let Some(made) = record.payload.get(..8).and_then(|b| b.try_into().ok()) {
            let made = u64::from_be_bytes(made);
            tally
                .latency
                .saturating_record(now_ns().saturating_sub(made) / 1000);
        }
        tally.count += 1;
        self.group_received.fetch_add(1, Ordering::AcqRel);
    }
}

/// The next record, settled at once when it came from a group.
async fn next_record(stream: &mut Stream) -> anyhow::Result<Option<Record>> {
    match stream {
        Stream::Subscription(sub) => Ok(sub.next().await.transpose()?),
        Stream::Member(member, nack_delay) => match member.next().await {
            Some(delivery) => {
                let delivery = delivery?;
                let record = delivery.record.clone();
                match *nack_delay {
                    Some(delay) => delivery.nack(delay)?,
                    None => delivery.ack()?,
                }
                Ok(Some(record))
            }
            None => Ok(None),
        },
    }
}
