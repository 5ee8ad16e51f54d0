//! One member of a durable group: a stream on which the broker pushes records as the
//! member's prefetch allows, and the member sends settlements back. The membership
//! itself (assigning, reading, settling, leaving) is `broker::membership`, shared with
//! MQTT shared subscriptions; this is its QUIC carrier.
//!
//! Each round the member's loop takes what the group hands it and sends those records;
//! then it sleeps until a settlement arrives, a watched topic grows, another member
//! frees records, the next ack deadline passes, or the broker shuts down. When the
//! stream ends, everything the member held is released at once for the others.

use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use quiver_protocol::{
    Assigned, AssignedRecord, ClientFrame, ErrorCode, Join, NewRecord, ServerFrame,
    TopicSettlements, WireError,
};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, instrument};

use crate::broker::membership::{Membership, Settle};
use crate::broker::{Broker, BrokerError};
use crate::groups::state::{Action, Delivery};
use crate::transport::{FrameReader, FrameWriter, Incoming};

/// Serves a member stream whose first frame was `join`.
#[instrument(name = "member", skip_all, fields(group = %join.group))]
pub(super) async fn serve(
    broker: Arc<Broker>,
    mut reader: FrameReader,
    mut writer: FrameWriter,
    join: Join,
    shutdown: CancellationToken,
) {
    let group = match broker.group(&join.group) {
        Ok(group) => group,
        Err(e) => return writer.refuse(WireError::from(&e)).await,
    };
    // A member may ask for less than the group's prefetch, never more.
    let prefetch = match join.prefetch {
        0 => group.record.settings.prefetch,
        n => n.min(group.record.settings.prefetch),
    } as usize;
    // Joined before saying Joined: from then on this member counts as a consumer of
    // the group's topics (for requests' "no responders").
    let mut membership = match Membership::join(&broker, group, Arc::new(Notify::new())).await {
        Ok(membership) => membership,
        Err(e) => return writer.refuse(WireError::from(&e)).await,
    };
    debug!(member = membership.member(), prefetch, "joined");
    let ended = run(
        &mut membership,
        &mut reader,
        &mut writer,
        prefetch,
        &shutdown,
    )
    .await;
    let member = membership.member();
    // Whatever it held goes back to the group, now.
    membership.leave().await;
    if let Err(error) = ended {
        writer.refuse(error).await;
    } else {
        writer.finish();
    }
    debug!(member, "left");
}

/// Runs until the stream ends (`Ok`) or must end with an error for the member.
async fn run(
    membership: &mut Membership,
    reader: &mut FrameReader,
    writer: &mut FrameWriter,
    prefetch: usize,
    shutdown: &CancellationToken,
) -> Result<(), WireError> {
    writer
        .send(&ServerFrame::Joined)
        .await
        .map_err(|_| gone())?;
    let notify = Arc::clone(membership.notify());
    loop {
        let room = prefetch.saturating_sub(membership.held());
        let deliveries = membership.take(room).await.map_err(|e| match e {
            BrokerError::GroupNotFound(_) => {
                WireError::new(ErrorCode::GroupNotFound, "the group was deleted")
            }
            other => WireError::from(&other),
        })?;
        if !deliveries.is_empty() {
            send(membership, writer, &deliveries, shutdown).await?;
        }
        tokio::select! {
            flushed = writer.flush() => flushed.map_err(|_| gone())?,
            () = shutdown.cancelled() => return Err(super::shutting_down()),
        }
        let wake_in = membership.next_wakeup();
        let incoming = tokio::select! {
            incoming = reader.next() => incoming,
            () = notify.notified() => continue,
            () = sleep(wake_in) => continue,
            () = membership.topic_created() => continue,
            () = shutdown.cancelled() => return Err(super::shutting_down()),
        };
        // Take in every frame already here before assigning more: a member that
        // settles and leaves in one write is not handed records it would only give
        // back.
        let mut incoming = Some(incoming);
        while let Some(frame) = incoming {
            match frame {
                Incoming::Frame(ClientFrame::Settle(settlements)) => {
                    let settlements = settlements
                        .into_iter()
                        .map(|s| (s.topic, Settle::One(s.offset, action(s.action))));
                    membership.settle(settlements).await;
                }
                Incoming::Frame(ClientFrame::SettleRuns(topics)) => {
                    membership.settle(runs(topics)?).await;
                }
                Incoming::Frame(other) => {
                    return Err(WireError::new(
                        ErrorCode::UnexpectedMessage,
                        format!("{} is not valid on a group member stream", other.kind()),
                    ));
                }
                Incoming::Bad(e) => return Err(WireError::from(&e)),
                Incoming::End => return Ok(()),
            }
            incoming = reader.next().now_or_never();
        }
    }
}

/// A settlement's action, as the group applies it.
fn action(settle: quiver_protocol::Settle) -> Action {
    match settle {
        quiver_protocol::Settle::Ack => Action::Ack,
        quiver_protocol::Settle::Nack { delay_ms } => Action::Nack { delay_ms },
        quiver_protocol::Settle::Term { reason } => {
            Action::Term(format!("terminated by the consumer: {reason}"))
        }
        quiver_protocol::Settle::InProgress => Action::InProgress,
    }
}

/// A `SettleRuns` frame's settlements, in the order they apply (each topic's others,
/// then its acknowledged runs); a run that is empty or overflows is refused.
fn runs(topics: Vec<TopicSettlements>) -> Result<Vec<(String, Settle)>, WireError> {
    let mut settlements = Vec::new();
    for topic in topics {
        for other in topic.others {
            settlements.push((
                topic.topic.clone(),
                Settle::One(other.offset, action(other.action)),
            ));
        }
        for run in topic.acks {
            let end = run
                .first
                .checked_add(run.count)
                .filter(|_| run.count > 0)
                .ok_or_else(|| {
                    WireError::new(
                        ErrorCode::Malformed,
                        format!(
                            "an ack run must hold at least one offset and end within u64: \
                             first {}, count {}",
                            run.first, run.count
                        ),
                    )
                })?;
            settlements.push((topic.topic.clone(), Settle::Acks(run.first..end)));
        }
    }
    Ok(settlements)
}

/// Reads the assigned records and feeds them to the member, flushing every
/// `limits.max_buffered_per_subscription` bytes.
async fn send(
    membership: &Membership,
    writer: &mut FrameWriter,
    deliveries: &[Delivery],
    shutdown: &CancellationToken,
) -> Result<(), WireError> {
    let max_write = membership.max_write();
    let mut frame: Option<Assigned> = None;
    let mut bytes = 0;
    for assignment in membership.read(deliveries) {
        let assignment = assignment.map_err(|e| WireError::from(&BrokerError::from(e)))?;
        let topic = assignment.log.name().as_str();
        if frame.as_ref().is_some_and(|f| f.topic != topic) {
            writer.feed(&ServerFrame::Assigned(frame.take().expect("checked")));
        }
        let frame = frame.get_or_insert_with(|| Assigned {
            topic: topic.to_owned(),
            records: Vec::new(),
        });
        let record = assignment.record;
        bytes += record.payload.len();
        frame.records.push(AssignedRecord {
            offset: record.offset,
            timestamp: record.timestamp,
            deliveries: assignment.deliveries,
            record: NewRecord {
                key: record.key,
                headers: record.headers,
                payload: record.payload,
            },
        });
        if bytes >= max_write {
            writer.feed(&ServerFrame::Assigned(Assigned {
                topic: frame.topic.clone(),
                records: std::mem::take(&mut frame.records),
            }));
            bytes = 0;
            tokio::select! {
                flushed = writer.flush() => flushed.map_err(|_| gone())?,
                () = shutdown.cancelled() => return Err(super::shutting_down()),
            }
        }
    }
    if let Some(frame) = frame.filter(|f| !f.records.is_empty()) {
        writer.feed(&ServerFrame::Assigned(frame));
    }
    Ok(())
}

async fn sleep(duration: Option<Duration>) {
    match duration {
        Some(duration) => tokio::time::sleep(duration).await,
        None => std::future::pending().await,
    }
}

fn gone() -> WireError {
    WireError::new(ErrorCode::Internal, "the member stream closed")
}
