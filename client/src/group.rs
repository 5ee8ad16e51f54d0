//! Durable consumer groups: managing them, and consuming as a member.
//!
//! A [`Member`] is a [`Stream`] of [`Delivery`]s. The broker hands each record to one
//! member of the group at a time and keeps at most `prefetch` records unsettled per
//! member, so the stream's buffer is bounded by the prefetch. Each delivery is settled
//! by the application: [`ack`](Delivery::ack) when done,
//! [`nack`](Delivery::nack) to have it delivered again (after a delay),
//! [`term`](Delivery::term) to dead-letter it, or
//! [`in_progress`](Delivery::in_progress) to ask for more time. A delivery that is not
//! settled within the group's ack timeout, or whose member leaves, goes to another
//! member: delivery is at least once.
//!
//! Settlements are sent without waiting for an answer, batched with whatever else is
//! queued: everything settled since the last frame goes out as one `SettleRuns` frame,
//! acknowledgements as runs of offsets per topic, so acking records one by one costs
//! the broker little per record. One lost with the connection only means the record is
//! delivered again.
//!
//! When the connection is lost, the member joins its group again on the next one (with
//! [`Reconnect::Backoff`](crate::Reconnect), the default). The broker released what the
//! old membership held when it saw the connection go, so those records are delivered
//! again, to this member or another. Settlements of deliveries from before go out on the
//! new membership: the broker applies each to a record this member holds again, and
//! ignores the rest (delivered again elsewhere: at least once).

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use quiver_protocol::{
    AckRun, ClientFrame, GroupInfo, GroupSettings, Join, Op, RecordSettle, ServerFrame, Settle,
    StartAt, TopicSettlements,
};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::client::{Client, Deleted};
use crate::connection::{Mux, Opened, Resumable};
use crate::error::{Error, Result};
use crate::subscription::Record;

/// The most settlements taken into one frame (well within any frame limit: a frame
/// holds at most this many runs and topic names).
const MAX_SETTLE_BATCH: usize = 4096;

/// One settlement on its way to the pump.
#[derive(Debug)]
struct Settlement {
    topic: Arc<str>,
    offset: u64,
    action: Settle,
}

impl Client {
    /// Creates a durable group consuming `settings.pattern`. Start from
    /// [`GroupSettings::new`] for the defaults.
    pub async fn create_group(&self, name: &str, settings: GroupSettings) -> Result<GroupInfo> {
        let op = Op::CreateGroup {
            name: name.to_owned(),
            settings,
        };
        self.ask(op).await
    }

    /// Deletes a group and its state; its members' streams end.
    pub async fn delete_group(&self, name: &str) -> Result<()> {
        self.ask::<Deleted>(Op::DeleteGroup {
            name: name.to_owned(),
        })
        .await
        .map(drop)
    }

    /// A group's settings, members and position in each topic.
    pub async fn describe_group(&self, name: &str) -> Result<GroupInfo> {
        self.ask(Op::DescribeGroup {
            name: name.to_owned(),
        })
        .await
    }

    /// Every group, sorted by name.
    pub async fn list_groups(&self) -> Result<Vec<GroupInfo>> {
        self.ask(Op::ListGroups).await
    }

    /// Moves a group's position in every topic it consumes to `to` (to replay, or to
    /// skip a backlog). Records pending in the group are forgotten.
    pub async fn reset_group(&self, name: &str, to: StartAt) -> Result<GroupInfo> {
        let op = Op::ResetGroup {
            name: name.to_owned(),
            to,
        };
        self.ask(op).await
    }

    /// Joins a group as a member. `prefetch` caps the records this member holds
    /// unsettled (`None`: the group's setting).
    pub async fn join(&self, group: &str, prefetch: Option<u32>) -> Result<Member> {
        let mut join = Join {
            group: group.to_owned(),
            prefetch: prefetch.unwrap_or(0),
        };
        let stream = self.mux.open_resumable(&mut join, 0).await?;
        let (deliveries_tx, deliveries) = mpsc::unbounded_channel();
        let (settle, settlements) = mpsc::unbounded_channel();
        let (leave, leave_rx) = oneshot::channel();
        let pump = tokio::spawn(pump(
            Pump {
                stream,
                join,
                deliveries: deliveries_tx,
                settle,
                settlements,
            },
            Arc::clone(&self.mux),
            leave_rx,
        ));
        Ok(Member {
            deliveries,
            leave: Some((leave, pump)),
            _mux: Arc::clone(&self.mux),
        })
    }
}

impl Resumable for Join {
    fn first_frame(&self) -> ClientFrame {
        ClientFrame::Join(self.clone())
    }

    fn accept(&mut self, answer: ServerFrame) -> Result<()> {
        match answer {
            ServerFrame::Joined => Ok(()),
            other => Err(Error::Protocol(format!("expected Joined, got {other:?}"))),
        }
    }
}

/// A member of a durable group: a [`Stream`] of [`Delivery`]s.
///
/// The stream ends with an error if the broker ends the membership (the group was
/// deleted), if the client gives up reconnecting, or, with
/// [`Reconnect::Never`](crate::Reconnect::Never), when the connection is lost or the
/// broker shuts down. Dropping it leaves the group: records it
/// held and did not settle are delivered to other members. Settlements made just
/// before a drop may not reach the broker; [`leave`](Member::leave) waits until they
/// have.
#[derive(Debug)]
pub struct Member {
    deliveries: mpsc::UnboundedReceiver<Result<Delivery>>,
    leave: Option<(oneshot::Sender<()>, JoinHandle<()>)>,
    /// Keeps the connection open while the membership lives.
    _mux: Arc<Mux>,
}

/// How long [`Member::leave`] waits for the broker to confirm.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(5);

impl Member {
    /// The next delivery; `None` when the membership has ended.
    pub async fn recv(&mut self) -> Option<Result<Delivery>> {
        self.deliveries.recv().await
    }

    /// Leaves the group once every settlement made so far has reached the broker;
    /// records held and not settled go to other members.
    pub async fn leave(mut self) -> Result<()> {
        let Some((leave, pump)) = self.leave.take() else {
            return Ok(());
        };
        let _ = leave.send(());
        match tokio::time::timeout(LEAVE_TIMEOUT, pump).await {
            Ok(_) => Ok(()),
            Err(_) => Err(Error::Timeout(LEAVE_TIMEOUT)),
        }
    }
}

impl Stream for Member {
    type Item = Result<Delivery>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.deliveries.poll_recv(cx)
    }
}

/// A record delivered to a group member, to be settled.
#[derive(Debug)]
#[must_use = "a delivery not settled is delivered again after the ack timeout"]
pub struct Delivery {
    /// The record.
    pub record: Record,
    /// This delivery's number: 1 the first time, more when it is a redelivery.
    pub deliveries: u32,
    settle: mpsc::UnboundedSender<Settlement>,
}

impl Delivery {
    /// Done with it: it is never delivered again.
    pub fn ack(self) -> Result<()> {
        self.send(Settle::Ack)
    }

    /// Not done: deliver it again, to this member or another, no sooner than `delay`
    /// from now.
    pub fn nack(self, delay: Duration) -> Result<()> {
        let delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.send(Settle::Nack { delay_ms })
    }

    /// Never deliver it again: the broker stores it in the dead-letter topic, with
    /// `reason` in its `quiver-dlq-reason` header.
    pub fn term(self, reason: impl Into<String>) -> Result<()> {
        self.send(Settle::Term {
            reason: reason.into(),
        })
    }

    /// Still working on it: restarts its ack timeout. Call it again before each
    /// timeout passes; settle it when done.
    pub fn in_progress(&self) -> Result<()> {
        self.send(Settle::InProgress)
    }

    fn send(&self, action: Settle) -> Result<()> {
        let settlement = Settlement {
            topic: Arc::clone(&self.record.topic),
            offset: self.record.offset,
            action,
        };
        self.settle
            .send(settlement)
            .map_err(|_| Error::ConnectionLost("the membership has ended".into()))
    }
}

/// A membership's pump: the stream in use and both sides of the application.
struct Pump {
    stream: Opened,
    join: Join,
    deliveries: mpsc::UnboundedSender<Result<Delivery>>,
    /// Given to each delivery.
    settle: mpsc::UnboundedSender<Settlement>,
    settlements: mpsc::UnboundedReceiver<Settlement>,
}

/// Why serving one stream ended.
enum Ended {
    /// The member left (`true`) or was dropped (`false`).
    Leaving(bool),
    /// The stream failed or the broker ended the membership.
    Failed(Error),
}

/// Moves deliveries from the stream to the [`Member`], and settlements back, until
/// the `Member` is dropped or leaves, joining again on the next connection each time
/// one is lost. Deliveries are not bounded here: the broker never has more than the
/// prefetch outstanding.
///
/// On leaving, queued settlements are sent, then the stream is finished, and the pump
/// waits for the broker to end its side: the broker has read everything by then.
async fn pump(mut pump: Pump, mux: Arc<Mux>, mut leave: oneshot::Receiver<()>) {
    let leaving = loop {
        let error = match pump.serve(&mut leave).await {
            Ended::Leaving(leaving) => break leaving,
            Ended::Failed(error) => error,
        };
        let abandoned = async {
            tokio::select! {
                _ = &mut leave => {}
                () = pump.deliveries.closed() => {}
            }
        };
        let resumed = mux
            .resume(&mut pump.join, &pump.stream, error, abandoned)
            .await;
        match resumed {
            Some(Ok(stream)) => pump.stream = stream,
            Some(Err(error)) => {
                // Settling fails from the moment the application can see why.
                pump.settlements.close();
                let _ = pump.deliveries.send(Err(error));
                return;
            }
            None => return,
        }
    };
    // Settlements made before leaving (or dropping) go out first.
    while let Ok(first) = pump.settlements.try_recv() {
        if pump.send_settlements(first).await.is_err() {
            break;
        }
    }
    pump.stream.send.finish();
    if leaving {
        // Records assigned meanwhile are released by the broker when it reads the end.
        while let Ok(ServerFrame::Assigned(_)) = pump.stream.frames.next().await {}
    }
}

impl Pump {
    /// Serves the stream in use until it ends, or the member leaves or is dropped.
    async fn serve(&mut self, leave: &mut oneshot::Receiver<()>) -> Ended {
        // Set once the broker stopped reading the stream: it is ending it, and the read
        // side says how (a last frame, usually an error, or a reset). What is settled
        // from then on goes nowhere: the broker releases what the member held.
        let mut stopped = false;
        loop {
            tokio::select! {
                frame = self.stream.frames.next() => {
                    let frame = frame.map_err(|e| self.stream.lost_reason(e));
                    if let Err(e) = self.deliver(frame) {
                        return Ended::Failed(e);
                    }
                }
                Some(first) = self.settlements.recv(), if !stopped => {
                    stopped = self.send_settlements(first).await.is_err();
                }
                _ = &mut *leave => return Ended::Leaving(true),
                () = self.deliveries.closed() => return Ended::Leaving(false),
            }
        }
    }

    /// Hands the records of a frame to the member, or says why the stream ended.
    fn deliver(&self, frame: Result<ServerFrame>) -> Result<()> {
        let assigned = match frame? {
            ServerFrame::Assigned(assigned) => assigned,
            ServerFrame::Error(e) => return Err(Error::Server(e)),
            other => {
                return Err(Error::Protocol(format!(
                    "unexpected frame for a group member: {other:?}"
                )));
            }
        };
        let topic: Arc<str> = assigned.topic.into();
        for assigned in assigned.records {
            let delivery = Delivery {
                record: Record::new(&topic, assigned.offset, assigned.timestamp, assigned.record),
                deliveries: assigned.deliveries,
                settle: self.settle.clone(),
            };
            // A dropped Member is noticed by the pump's loop.
            let _ = self.deliveries.send(Ok(delivery));
        }
        Ok(())
    }

    /// Sends `first` and whatever else is queued, in frames of at most
    /// [`MAX_SETTLE_BATCH`].
    async fn send_settlements(&mut self, first: Settlement) -> Result<()> {
        let mut batch = vec![first];
        while batch.len() < MAX_SETTLE_BATCH {
            let Ok(more) = self.settlements.try_recv() else {
                break;
            };
            batch.push(more);
        }
        self.stream
            .send
            .send(&ClientFrame::SettleRuns(runs(batch)))
            .await
    }
}

/// Settlements as `SettleRuns` wants them: per topic (in the order topics first
/// appear), acknowledgements sorted into runs of consecutive offsets, every other
/// settlement in the order it was made.
fn runs(batch: Vec<Settlement>) -> Vec<TopicSettlements> {
    let mut topics: Vec<(Arc<str>, Vec<u64>, Vec<RecordSettle>)> = Vec::new();
    let mut index: HashMap<Arc<str>, usize> = HashMap::new();
    for Settlement {
        topic,
        offset,
        action,
    } in batch
    {
        let i = *index.entry(Arc::clone(&topic)).or_insert_with(|| {
            topics.push((topic, Vec::new(), Vec::new()));
            topics.len() - 1
        });
        let (_, acks, others) = &mut topics[i];
        match action {
            Settle::Ack => acks.push(offset),
            action => others.push(RecordSettle { offset, action }),
        }
    }
    topics
        .into_iter()
        .map(|(topic, mut acks, others)| {
            acks.sort_unstable();
            acks.dedup();
            let mut runs: Vec<AckRun> = Vec::new();
            for offset in acks {
                match runs.last_mut() {
                    Some(run) if run.first + run.count == offset => run.count += 1,
                    _ => runs.push(AckRun {
                        first: offset,
                        count: 1,
                    }),
                }
            }
            TopicSettlements {
                topic: topic.to_string(),
                acks: runs,
                others,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settlement(topic: &Arc<str>, offset: u64, action: Settle) -> Settlement {
        Settlement {
            topic: Arc::clone(topic),
            offset,
            action,
        }
    }

    #[test]
    fn acks_become_runs_per_topic_and_the_rest_keeps_its_order() {
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        let batch = vec![
            settlement(&a, 5, Settle::Ack),
            settlement(&b, 1, Settle::Ack),
            settlement(&a, 3, Settle::Ack),
            settlement(&a, 9, Settle::InProgress),
            settlement(&a, 4, Settle::Ack),
            settlement(&a, 9, Settle::Nack { delay_ms: 7 }),
            settlement(&a, 7, Settle::Ack),
        ];
        let frame = runs(batch);
        assert_eq!(frame.len(), 2);
        assert_eq!(frame[0].topic, "a");
        assert_eq!(
            frame[0].acks,
            [AckRun { first: 3, count: 3 }, AckRun { first: 7, count: 1 }]
        );
        assert_eq!(
            frame[0].others,
            [
                RecordSettle {
                    offset: 9,
                    action: Settle::InProgress
                },
                RecordSettle {
                    offset: 9,
                    action: Settle::Nack { delay_ms: 7 }
                }
            ]
        );
        assert_eq!(frame[1].acks, [AckRun { first: 1, count: 1 }]);
    }
}
