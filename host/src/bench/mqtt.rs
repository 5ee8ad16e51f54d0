//! The mqtt scenario: MQTT devices publishing at QoS 1 while one subscriber takes
//! everything, against the bench's own Quiver (its MQTT listener) and against
//! Debian's mosquitto broker with persistence on, in the same run, the two brokers
//! alternating round after round so that both see the same machine.
//!
//! Each device is an MQTT 3.1.1 client (rumqttc) with a window of QoS 1 publishes in
//! flight, publishing to a topic of its own (`bench/dev-N`); the subscriber takes
//! `bench/#` at QoS 1. Measured per broker and device count: acknowledged publishes
//! per second, publish-to-PUBACK latency, and publish-to-subscriber latency (the
//! payload carries the send time; devices and subscriber share the bench's clock).
//!
//! What a PUBACK means differs: Quiver sends it once the record is on disk (fsync);
//! mosquitto once the message is in memory (its persistence file is written at
//! `autosave_interval` and at shutdown). mosquitto gets the same window towards the
//! subscriber as Quiver's default (`max_inflight_messages 64`, as
//! `mqtt.receive_maximum`) and an unbounded queue (`max_queued_messages 0`: by default
//! it drops a slow subscriber's messages past 1,000).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use quiver_client::Retention;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Outgoing, Packet, QoS};
use serde_json::{Value, json};
use tokio::sync::Mutex;

use super::own_broker::{OwnBroker, cpu_time};

/// How the mqtt scenario is run.
#[derive(Debug, Clone)]
pub struct MqttBench {
    /// Device counts to measure, each against both brokers.
    pub devices: Vec<usize>,
    /// Messages per measurement, spread over the devices.
    pub count: u64,
    /// Payload bytes (at least 16).
    pub size: usize,
    /// QoS 1 publishes in flight per device.
    pub window: u16,
    /// Rounds: each measures every device count on both brokers.
    pub rounds: usize,
    /// Each measurement stops after this long, whatever `count` says.
    pub time_limit: Duration,
    /// The mosquitto binary.
    pub mosquitto: PathBuf,
}

/// One measurement.
#[derive(Debug)]
pub struct Measurement {
    /// `quiver` or `mosquitto`.
    pub broker: &'static str,
    /// Devices publishing.
    pub devices: usize,
    /// Publishes acknowledged.
    pub acked: u64,
    /// Messages the subscriber received.
    pub received: u64,
    /// From the first publish to the last acknowledgement.
    pub elapsed: Duration,
    /// Publish to PUBACK, µs.
    pub ack: Histogram<u64>,
    /// Publish to the subscriber, µs.
    pub e2e: Histogram<u64>,
    /// CPU time the broker spent on the measurement.
    pub broker_cpu: Option<Duration>,
}

impl Measurement {
    /// Acknowledged publishes per second.
    pub fn msgs_per_s(&self) -> f64 {
        self.acked as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The broker's CPU time per acknowledged message, µs.
    pub fn cpu_us_per_msg(&self) -> Option<f64> {
        Some(self.broker_cpu?.as_secs_f64() * 1e6 / self.acked.max(1) as f64)
    }

    /// The measurement as one line of text.
    pub fn text(&self) -> String {
        let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        format!(
            "  {:<9} {:>3} devices: {:>8.0} msgs/s acked ({} of {} received); PUBACK p50 {:.2} ms p99 {:.2} ms; to subscriber p50 {:.2} ms p99 {:.2} ms; broker CPU {} µs/msg",
            self.broker,
            self.devices,
            self.msgs_per_s(),
            self.received,
            self.acked,
            ms(&self.ack, 0.5),
            ms(&self.ack, 0.99),
            ms(&self.e2e, 0.5),
            ms(&self.e2e, 0.99),
            self.cpu_us_per_msg()
                .map_or_else(|| "?".to_owned(), |us| format!("{us:.1}")),
        )
    }

    /// The measurement as JSON.
    pub fn json(&self) -> Value {
        let q = |h: &Histogram<u64>| {
            json!({
                "p50_us": h.value_at_quantile(0.5),
                "p99_us": h.value_at_quantile(0.99),
                "max_us": h.max(),
            })
        };
        json!({
            "broker": self.broker,
            "devices": self.devices,
            "acked": self.acked,
            "received": self.received,
            "elapsed_s": self.elapsed.as_secs_f64(),
            "msgs_per_s": self.msgs_per_s(),
            "puback": q(&self.ack),
            "to_subscriber": q(&self.e2e),
            "broker_cpu_us_per_msg": self.cpu_us_per_msg(),
        })
    }
}

/// Runs every round; the measurements in the order they were made.
pub async fn run(bench: &MqttBench) -> anyhow::Result<Vec<Measurement>> {
    if bench.size < 16 {
        bail!("--size must be at least 16 bytes (a timestamp and a sequence number)");
    }
    if !bench.mosquitto.exists() {
        bail!(
            "{} not found: `make bench-tools` installs Debian's mosquitto (it is not started \
             as a service; the bench starts it itself), or pass --mosquitto",
            bench.mosquitto.display()
        );
    }
    let quiver = OwnBroker::start_with(&["--mqtt", "127.0.0.1:0"])?;
    let quiver_mqtt = quiver
        .mqtt
        .clone()
        .context("the bench's broker did not name an MQTT address")?;
    create_topics(&quiver, bench.devices.iter().copied().max().unwrap_or(1)).await?;
    let mosquitto = Mosquitto::start(&bench.mosquitto)?;
    let mut measurements = Vec::new();
    for round in 0..bench.rounds {
        for &devices in &bench.devices {
            // Alternate which broker goes first.
            let quiver_side = ("quiver", quiver_mqtt.as_str(), quiver.pid());
            let mosquitto_side = ("mosquitto", mosquitto.addr.as_str(), mosquitto.child.id());
            let order = match round % 2 {
                0 => [quiver_side, mosquitto_side],
                _ => [mosquitto_side, quiver_side],
            };
            for (broker, addr, pid) in order {
                let cpu_before = cpu_time(pid);
                let mut measured = measure(bench, broker, addr, devices, round).await?;
                measured.broker_cpu = cpu_time(pid)
                    .zip(cpu_before)
                    .map(|(after, before)| after.saturating_sub(before));
                measurements.push(measured);
            }
        }
    }
    Ok(measurements)
}

/// The Quiver topics the devices publish to (`bench.dev-N`).
async fn create_topics(quiver: &OwnBroker, devices: usize) -> anyhow::Result<()> {
    let client = quiver_client::Client::builder()
        .ca_file(&quiver.cert)?
        .connect(&quiver.addr)
        .await
        .context("connecting to the bench's broker")?;
    for device in 0..devices {
        client
            .create_topic(&format!("bench.dev-{device}"), Retention::default())
            .await
            .context("creating the bench's topics")?;
    }
    Ok(())
}

/// One broker, one device count.
async fn measure(
    bench: &MqttBench,
    broker: &'static str,
    addr: &str,
    devices: usize,
    round: usize,
) -> anyhow::Result<Measurement> {
    let (host, port) = addr
        .rsplit_once(':')
        .context("an MQTT address is host:port")?;
    let port: u16 = port.parse().context("an MQTT port")?;
    let start = Instant::now();
    let per_device = (bench.count / devices as u64).max(1);
    let total = per_device * devices as u64;
    let deadline = start + bench.time_limit;

    // The subscriber first, subscribed before anything is published.
    let mut options = MqttOptions::new(format!("bench-sub-{round}-{devices}"), host, port);
    options.set_keep_alive(Duration::from_secs(30));
    options.set_inflight(bench.window);
    options.set_max_packet_size(bench.size + 1024, bench.size + 1024);
    let (subscriber, mut events) = AsyncClient::new(options, 64);
    subscriber.subscribe("bench/#", QoS::AtLeastOnce).await?;
    wait_for(&mut events, deadline, |event| {
        matches!(event, Event::Incoming(Packet::SubAck(_)))
    })
    .await
    .context("the subscriber's SUBACK")?;
    let e2e = Arc::new(Mutex::new(histogram()));
    let received_task = {
        let e2e = Arc::clone(&e2e);
        tokio::spawn(async move {
            let mut received = 0u64;
            while received < total && Instant::now() < deadline {
                match tokio::time::timeout_at(deadline.into(), events.poll()).await {
                    Ok(Ok(Event::Incoming(Packet::Publish(publish)))) => {
                        received += 1;
                        if let Some(sent) = stamp(&publish.payload) {
                            let us = now_us(start).saturating_sub(sent);
                            let _ = e2e.lock().await.record(us.max(1));
                        }
                    }
                    Ok(Ok(_)) => {}
                    Ok(Err(_)) | Err(_) => break,
                }
            }
            received
        })
    };

    let ack = Arc::new(Mutex::new(histogram()));
    let mut device_tasks = Vec::with_capacity(devices);
    let began = Instant::now();
    for device in 0..devices {
        let mut options =
            MqttOptions::new(format!("bench-dev-{round}-{devices}-{device}"), host, port);
        options.set_keep_alive(Duration::from_secs(30));
        options.set_inflight(bench.window);
        options.set_max_packet_size(bench.size + 1024, bench.size + 1024);
        let (client, events) = AsyncClient::new(options, usize::from(bench.window));
        let ack = Arc::clone(&ack);
        let size = bench.size;
        device_tasks.push(tokio::spawn(async move {
            publish_all(
                client, events, device, per_device, size, start, deadline, ack,
            )
            .await
        }));
    }
    let mut acked = 0;
    for task in device_tasks {
        acked += task.await.context("a device task")??;
    }
    let elapsed = began.elapsed();
    let received = received_task.await.context("the subscriber task")?;
    let _ = subscriber.disconnect().await;
    let ack = Arc::try_unwrap(ack).map_err(|_| anyhow::anyhow!("histogram still shared"))?;
    let e2e = Arc::try_unwrap(e2e).map_err(|_| anyhow::anyhow!("histogram still shared"))?;
    Ok(Measurement {
        broker,
        devices,
        acked,
        received,
        elapsed,
        ack: ack.into_inner(),
        e2e: e2e.into_inner(),
        broker_cpu: None,
    })
}

/// One device: publishes `count` messages at QoS 1, each stamped, recording how long
/// each took to be acknowledged; returns how many were.
#[allow(clippy::too_many_arguments)]
async fn publish_all(
    client: AsyncClient,
    mut events: EventLoop,
    device: usize,
    count: u64,
    size: usize,
    start: Instant,
    deadline: Instant,
    ack: Arc<Mutex<Histogram<u64>>>,
) -> anyhow::Result<u64> {
    let topic = format!("bench/dev-{device}");
    // The client queues requests; the event loop sends them as its window allows.
    let publisher = tokio::spawn(async move {
        for seq in 0..count {
            let mut payload = vec![0u8; size];
            payload[8..16].copy_from_slice(&seq.to_be_bytes());
            // Stamped when queued; the window's wait counts in the latency, as it
            // does for an application.
            payload[..8].copy_from_slice(&now_us(start).to_be_bytes());
            if client
                .publish(&topic, QoS::AtLeastOnce, false, payload)
                .await
                .is_err()
            {
                break;
            }
        }
        client
    });
    let mut sent: std::collections::HashMap<u16, u64> = std::collections::HashMap::new();
    let mut acked = 0;
    let mut latencies = Vec::with_capacity(count as usize);
    while acked < count && Instant::now() < deadline {
        match tokio::time::timeout_at(deadline.into(), events.poll()).await {
            Ok(Ok(Event::Outgoing(Outgoing::Publish(pkid)))) => {
                sent.insert(pkid, now_us(start));
            }
            Ok(Ok(Event::Incoming(Packet::PubAck(puback)))) => {
                if let Some(at) = sent.remove(&puback.pkid) {
                    latencies.push(now_us(start).saturating_sub(at).max(1));
                }
                acked += 1;
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => bail!("device {device}: {e}"),
            Err(_) => break,
        }
    }
    let client = publisher.await.context("the device's publisher")?;
    let _ = client.disconnect().await;
    let mut ack = ack.lock().await;
    for us in latencies {
        let _ = ack.record(us);
    }
    Ok(acked)
}

/// Polls `events` until one satisfies `done`.
async fn wait_for(
    events: &mut EventLoop,
    deadline: Instant,
    done: impl Fn(&Event) -> bool,
) -> anyhow::Result<()> {
    loop {
        let event = tokio::time::timeout_at(deadline.into(), events.poll())
            .await
            .context("timed out")??;
        if done(&event) {
            return Ok(());
        }
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

fn now_us(start: Instant) -> u64 {
    u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX)
}

fn stamp(payload: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(payload.get(..8)?.try_into().ok()?))
}

/// Debian's mosquitto on a temp dir, persistence on, on a free loopback port.
struct Mosquitto {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Mosquitto {
    fn start(binary: &Path) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir().context("a temp dir for mosquitto")?;
        // mosquitto cannot report a port 0 bind: take a free port and hand it over.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .context("finding a free port")?
            .port();
        let config = dir.path().join("mosquitto.conf");
        std::fs::write(
            &config,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\n\
                 persistence_location {}/\nlog_dest stderr\nlog_type information\nmax_inflight_messages 64\n\
                 max_queued_messages 0\n",
                dir.path().display()
            ),
        )
        .context("writing mosquitto's configuration")?;
        let mut child = Command::new(binary)
            .arg("-c")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            // Its log: stderr is unbuffered, stdout into a pipe is not.
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let stdout = child.stderr.take().context("mosquitto's log")?;
        let (tx, rx) = std_mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            for line in lines.by_ref().map_while(Result::ok) {
                if line.contains(" running") {
                    let _ = tx.send(true);
                    for _ in lines.by_ref() {}
                    return;
                }
            }
            let _ = tx.send(false);
        });
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(true) => Ok(Self {
                child,
                addr: format!("127.0.0.1:{port}"),
                _dir: dir,
            }),
            _ => {
                let _ = child.kill();
                bail!("mosquitto did not say it was running (is port {port} taken?)")
            }
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
