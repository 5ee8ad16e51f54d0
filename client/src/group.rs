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
//! queued. One lost with the connection only means the record is delivered again.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use quiver_protocol::{
    ClientFrame, GroupInfo, GroupSettings, Join, Op, ServerFrame, Settle, Settlement, StartAt,
};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::client::{Client, Deleted};
use crate::connection::{FrameReader, FrameSender, Mux};
use crate::error::{Error, Result};
use crate::subscription::Record;

/// The most settlements sent in one frame (well within any frame limit).
const MAX_SETTLE_BATCH: usize = 1024;

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
        let join = ClientFrame::Join(Join {
            group: group.to_owned(),
            prefetch: prefetch.unwrap_or(0),
        });
        let (send, frames) = self.mux.open_stream(&join, ServerFrame::Joined).await?;
        let (deliveries_tx, deliveries) = mpsc::unbounded_channel();
        let (settle, settle_rx) = mpsc::unbounded_channel();
        let (leave, leave_rx) = oneshot::channel();
        let pump = tokio::spawn(pump(
            Pump {
                frames,
                send,
                deliveries: deliveries_tx,
                settle,
                settlements: settle_rx,
                mux: Arc::clone(&self.mux),
            },
            leave_rx,
        ));
        Ok(Member {
            deliveries,
            leave: Some((leave, pump)),
            _mux: Arc::clone(&self.mux),
        })
    }
}

/// A member of a durable group: a [`Stream`] of [`Delivery`]s.
///
/// The stream ends with an error if the broker ends the membership (the group was
/// deleted, or the broker is shutting down). Dropping it leaves the group: records it
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
            topic: self.record.topic.to_string(),
            offset: self.record.offset,
            action,
        };
        self.settle
            .send(settlement)
            .map_err(|_| Error::ConnectionLost("the membership has ended".into()))
    }
}

/// The two directions of a member stream.
struct Pump {
    frames: FrameReader,
    send: FrameSender,
    deliveries: mpsc::UnboundedSender<Result<Delivery>>,
    settle: mpsc::UnboundedSender<Settlement>,
    settlements: mpsc::UnboundedReceiver<Settlement>,
    mux: Arc<Mux>,
}

/// Moves deliveries from the stream to the [`Member`], and settlements back, until
/// the stream ends, the `Member` is dropped, or it leaves. Deliveries are not bounded
/// here: the broker never has more than the prefetch outstanding.
///
/// On leaving, queued settlements are sent, then the stream is finished, and the pump
/// waits for the broker to end its side: the broker has read everything by then.
async fn pump(mut pump: Pump, mut leave: oneshot::Receiver<()>) {
    let leaving = loop {
        tokio::select! {
            frame = pump.frames.next() => {
                if let Err(e) = pump.deliver(frame) {
                    // Settling fails from here on, before the member hears why.
                    pump.settlements.close();
                    let _ = pump.deliveries.send(Err(e));
                    return;
                }
            }
            Some(first) = pump.settlements.recv() => {
                if pump.send_settlements(first).await.is_err() {
                    break false;
                }
            }
            _ = &mut leave => break true,
            () = pump.deliveries.closed() => break false,
        }
    };
    // Settlements made before leaving (or dropping) go out first.
    while let Ok(first) = pump.settlements.try_recv() {
        if pump.send_settlements(first).await.is_err() {
            break;
        }
    }
    pump.send.finish();
    if leaving {
        // Records assigned meanwhile are released by the broker when it reads the end.
        while let Ok(ServerFrame::Assigned(_)) = pump.frames.next().await {}
    }
}

impl Pump {
    /// Hands the records of a frame to the member, or says why the stream ended.
    fn deliver(&self, frame: Result<ServerFrame>) -> Result<()> {
        let assigned = match frame {
            Ok(ServerFrame::Assigned(assigned)) => assigned,
            Ok(ServerFrame::Error(e)) => return Err(Error::Server(e)),
            Ok(other) => {
                return Err(Error::Protocol(format!(
                    "unexpected frame for a group member: {other:?}"
                )));
            }
            Err(e) => return Err(self.mux.lost_reason(e)),
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
        self.send.send(&ClientFrame::Settle(batch)).await
    }
}
