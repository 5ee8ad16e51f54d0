//! An `in` link: the remote's topics matching the link's pattern, pulled into local
//! topics (named prefix + topic) through the same `Forward` path a remote link uses.
//!
//! The link subscribes to the remote at its local marks: the mark of each local topic
//! for its origin is exactly where the remote topic is to be read from, so the cursor
//! and the records it covers are one commit. Topics without a mark start where the
//! spec says. Records come in offset order per topic; each run of one topic's records
//! is stored as one forward, and the subscription's buffer (its window) bounds what is
//! held. A gap between the mark and the first record received is records the remote's
//! retention removed first: counted, logged and listed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use quiver_client::{Client, Record, SubscribeOptions};
use quiver_protocol::{
    Delivered, Forward, ForwardedRecords, LinkSpec, LinkState, Origin, Position, TopicConfig,
};
use tracing::{info, warn};

use super::Failed;
use super::status::Status;
use crate::broker::{Broker, PublishOrder};

/// Records the remote may send ahead of what is stored here.
const WINDOW: u32 = 8192;
/// The most records stored in one forward.
const MAX_BATCH: usize = 4096;
/// How often the remote's topic ends are asked for (for the lag).
const LAG_EVERY: Duration = Duration::from_secs(2);

/// Pulls records until something fails.
pub(super) async fn run(
    broker: &Arc<Broker>,
    spec: &LinkSpec,
    client: &Client,
    status: &Arc<Status>,
) -> Failed {
    let remote = match client.describe_broker().await {
        Ok(info) => info.id,
        Err(e) => return Failed::client(&e, false),
    };
    let own = broker.storage().broker_id();
    if remote == own {
        return Failed::new(
            "the link's remote is this broker itself: pulling from it would loop",
            false,
        );
    }
    status.set_remote(remote);
    // Where each remote topic was stored up to: the local topic's mark for it.
    let mut expected: HashMap<String, (u64, u64)> = HashMap::new();
    let mut at = Vec::new();
    for log in broker.topics() {
        let Some(origin) = log.name().as_str().strip_prefix(spec.prefix.as_str()) else {
            continue;
        };
        for (topic_id, mark) in broker.storage().marks().from_broker(log.id(), remote) {
            if mark.origin_topic != origin {
                continue;
            }
            expected.insert(mark.origin_topic.clone(), (topic_id, mark.next));
            status.topic(&mark.origin_topic, |p| p.next = mark.next);
            at.push(Position {
                topic: mark.origin_topic,
                topic_id,
                next: mark.next,
            });
        }
    }
    let options = SubscribeOptions {
        from: spec.from,
        window: WINDOW,
        pipeline: Vec::new(),
        at,
    };
    let mut subscription = match client.subscribe(&spec.topics, options).await {
        Ok(subscription) => subscription,
        Err(e) => return Failed::client(&e, false),
    };
    status.set_state(LinkState::Connected {
        addr: super::out::client_addr(client),
    });
    let mut pull = Pull {
        broker: Arc::clone(broker),
        spec,
        client,
        status,
        remote,
        expected,
        order: PublishOrder::default(),
        progressed: false,
    };
    let mut lag = tokio::time::interval(LAG_EVERY);
    let mut held: Option<Record> = None;
    loop {
        let first = match held.take() {
            Some(record) => record,
            None => tokio::select! {
                next = subscription.next() => match next {
                    Some(Ok(record)) => record,
                    Some(Err(e)) => return Failed::client(&e, pull.progressed),
                    None => return Failed::new("the remote ended the subscription", pull.progressed),
                },
                _ = lag.tick() => {
                    pull.refresh_lag().await;
                    continue;
                }
            },
        };
        // The run of this topic's records already here.
        let topic = Arc::clone(&first.topic);
        let mut run = vec![first];
        while run.len() < MAX_BATCH {
            match futures::FutureExt::now_or_never(subscription.next()) {
                Some(Some(Ok(record))) if record.topic == topic => run.push(record),
                Some(Some(Ok(record))) => {
                    held = Some(record);
                    break;
                }
                Some(Some(Err(e))) => return Failed::client(&e, pull.progressed),
                Some(None) => {
                    return Failed::new("the remote ended the subscription", pull.progressed);
                }
                None => break,
            }
        }
        let Some(topic_id) = subscription.topic_id(&topic) else {
            return Failed::new(
                format!("the remote sent records of `{topic}` without its id"),
                pull.progressed,
            );
        };
        if let Err(failed) = pull.store(&topic, topic_id, run).await {
            return failed;
        }
    }
}

/// The state of one attempt.
struct Pull<'a> {
    broker: Arc<Broker>,
    spec: &'a LinkSpec,
    client: &'a Client,
    status: &'a Arc<Status>,
    remote: u128,
    /// Per remote topic: its id and the next offset expected.
    expected: HashMap<String, (u64, u64)>,
    order: PublishOrder,
    progressed: bool,
}

impl Pull<'_> {
    /// Stores a run of one remote topic's records, in order.
    async fn store(&mut self, topic: &str, topic_id: u64, run: Vec<Record>) -> Result<(), Failed> {
        let dest = format!("{}{topic}", self.spec.prefix);
        if self.broker.topic(&dest).is_err() {
            self.create(topic, &dest).await?;
        }
        let first = run.first().map_or(0, |r| r.offset);
        let last = run.last().map_or(0, |r| r.offset);
        let from = match self.expected.get(topic) {
            Some((id, next)) if *id == topic_id => *next,
            // New, or the remote topic was created again: its offsets start anew.
            _ => first,
        };
        if first > from {
            warn!(
                topic,
                from,
                to = first,
                skipped = first - from,
                "the remote's retention removed records before the link pulled them"
            );
            self.status.skipped(topic, from, first);
        }
        let count = run.len() as u64;
        let forward = Forward {
            topic: dest,
            origin: Origin {
                broker: self.remote,
                topic: topic.to_owned(),
                topic_id,
            },
            from,
            next: last + 1,
            records: ForwardedRecords::Listed(
                run.into_iter()
                    .map(|r| Delivered::from(r.into_stored()))
                    .collect(),
            ),
        };
        let stored = self.broker.forward(&mut self.order, forward).await.await;
        match stored {
            Ok(answer) => {
                let next = answer.next.unwrap_or(last + 1);
                self.expected.insert(topic.to_owned(), (topic_id, next));
                let kept = answer.receipt.map_or(0, |r| u64::from(r.count));
                self.status.stored(topic, next, count, kept);
                self.progressed = true;
                Ok(())
            }
            Err(e) => Err(Failed::new(e, self.progressed)),
        }
    }

    /// Creates the local topic for a remote one, with the remote's retention.
    async fn create(&self, topic: &str, dest: &str) -> Result<(), Failed> {
        let retention = match self.client.describe_topic(topic).await {
            Ok(info) => info.retention,
            Err(e) => return Err(Failed::client(&e, self.progressed)),
        };
        match self
            .broker
            .create_topic(dest, &TopicConfig::from(retention))
            .await
        {
            Ok(_) => {
                info!(topic = dest, "created for the link");
                Ok(())
            }
            Err(crate::broker::BrokerError::TopicExists(_)) => Ok(()),
            Err(e) => Err(Failed::new(e, self.progressed)),
        }
    }

    /// Asks the remote where its topics end, for the lag.
    async fn refresh_lag(&self) {
        let Ok(topics) = self.client.list_topics().await else {
            return;
        };
        for info in topics {
            if self.expected.contains_key(&info.name) {
                self.status.topic(&info.name, |p| {
                    p.end = info.next_offset;
                    p.lag_bytes = match info.records {
                        0 => 0,
                        n => {
                            info.bytes / n
                                * info
                                    .next_offset
                                    .saturating_sub(p.next.max(info.first_offset))
                        }
                    };
                });
            }
        }
    }
}
