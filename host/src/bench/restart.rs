//! The restart scenario: how soon a client is back after its broker restarts.
//!
//! One client publishes one record at a time (each acknowledged before the next) to
//! the bench's own broker, which is restarted on the same data dir and port, in turn
//! with SIGTERM (a clean shutdown: connections are closed with a reason) and SIGKILL
//! (nothing is said: the restarted broker answers the client's next packet with a
//! stateless reset). For each restart: the time from the broker's ready line to the
//! client's next acknowledged publish (which is the publish in flight at the restart,
//! sent again), and the whole outage as the client saw it (last acknowledgement
//! before, first after).

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use quiver_client::{Client, Retention};
use serde_json::{Value, json};
use tokio::sync::watch;

use super::own_broker::{OwnBroker, Stop};

/// Figures of one kind of restart.
#[derive(Debug, Default)]
pub struct Restarts {
    /// From the ready line to the first acknowledged publish, per restart.
    pub back_after_ready: Vec<Duration>,
    /// From the last acknowledged publish before to the first after, per restart.
    pub outage: Vec<Duration>,
}

/// What a restart run measured.
#[derive(Debug)]
pub struct RestartReport {
    /// Restarts after SIGTERM.
    pub term: Restarts,
    /// Restarts after SIGKILL.
    pub kill: Restarts,
    /// Publishes acknowledged in all.
    pub published: u64,
}

/// Restarts the bench's own broker `restarts` times with each signal, under a client
/// publishing; every publish must complete, with consecutive offsets.
pub async fn run(restarts: usize) -> anyhow::Result<RestartReport> {
    if restarts == 0 {
        bail!("--restarts must be at least 1");
    }
    let mut broker = OwnBroker::start()?;
    let client = Client::builder()
        .ca_file(&broker.cert)?
        .connect(&broker.addr)
        .await?;
    let topic = format!("bench.{:08x}", getrandom::u32().unwrap_or_default());
    client.create_topic(&topic, Retention::default()).await?;

    let (acked, mut acks) = watch::channel(None::<Instant>);
    let publisher = tokio::spawn(publish_one_at_a_time(client.clone(), topic.clone(), acked));
    let mut report = RestartReport {
        term: Restarts::default(),
        kill: Restarts::default(),
        published: 0,
    };
    for i in 0..restarts * 2 {
        let stop = if i % 2 == 0 { Stop::Term } else { Stop::Kill };
        // Publishing steadily on this connection before each restart.
        for _ in 0..10 {
            acks.changed().await.context("the publisher stopped")?;
        }
        let last_before = acks
            .borrow_and_update()
            .context("a publish was acknowledged")?;
        let (restarted, ready) = tokio::task::spawn_blocking(move || {
            let ready = broker.restart(stop);
            (broker, ready)
        })
        .await
        .context("restarting the bench's broker")?;
        broker = restarted;
        let ready = ready?;
        let back = loop {
            acks.changed().await.context("the publisher stopped")?;
            if let Some(at) = *acks.borrow_and_update()
                && at > ready
            {
                break at;
            }
        };
        let figures = match stop {
            Stop::Term => &mut report.term,
            Stop::Kill => &mut report.kill,
        };
        figures.back_after_ready.push(back - ready);
        figures.outage.push(back - last_before);
    }
    publisher.abort();
    if let Ok(Err(e)) = publisher.await {
        return Err(e);
    }
    report.published = client.describe_topic(&topic).await?.records;
    client.close().await;
    drop(broker);
    Ok(report)
}

/// Publishes until stopped, one record at a time, each at the offset after the last:
/// a publish that fails, or lands elsewhere, ends the run.
async fn publish_one_at_a_time(
    client: Client,
    topic: String,
    acked: watch::Sender<Option<Instant>>,
) -> anyhow::Result<()> {
    for expected in 0u64.. {
        let offset = client
            .publish(&topic, vec![0u8; 256])
            .await
            .with_context(|| format!("publish {expected}"))?;
        if offset != expected {
            bail!("publish {expected} was stored at offset {offset}");
        }
        acked.send_replace(Some(Instant::now()));
    }
    Ok(())
}

impl Restarts {
    fn summary(&self) -> Value {
        json!({
            "restarts": self.back_after_ready.len(),
            "back_after_ready_ms": stats_ms(&self.back_after_ready),
            "outage_ms": stats_ms(&self.outage),
        })
    }

    /// One line of text: median and range of both figures.
    pub fn text(&self) -> String {
        let line = |values: &[Duration]| {
            let s = stats_ms(values);
            format!(
                "p50 {:.0} ms (min {:.0}, max {:.0})",
                s["p50"].as_f64().unwrap_or_default(),
                s["min"].as_f64().unwrap_or_default(),
                s["max"].as_f64().unwrap_or_default(),
            )
        };
        format!(
            "ready line to first ack: {}; outage seen by the client: {}",
            line(&self.back_after_ready),
            line(&self.outage)
        )
    }
}

impl RestartReport {
    /// The report as JSON.
    pub fn json(&self) -> Value {
        json!({
            "scenario": "restart",
            "published": self.published,
            "sigterm": self.term.summary(),
            "sigkill": self.kill.summary(),
        })
    }
}

/// Median, minimum and maximum, in milliseconds.
fn stats_ms(values: &[Duration]) -> Value {
    let mut ms: Vec<f64> = values.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| {
        ms.get(((ms.len() as f64 - 1.0) * q).round() as usize)
            .copied()
    };
    json!({ "p50": at(0.5), "min": at(0.0), "max": at(1.0) })
}
