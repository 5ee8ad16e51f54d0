//! One member of a durable group: a stream on which the broker pushes records as the
//! member's prefetch allows, and the member sends settlements back.
//!
//! Each round the member's loop releases timed-out records, takes what the group hands
//! it, reads those records from storage and sends them; then it sleeps until a
//! settlement arrives, a watched topic grows, another member frees records, the next
//! ack deadline passes, or the broker shuts down. When the stream ends, everything the
//! member held is released at once for the others.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use quiver_protocol::record::decode_shared;
use quiver_protocol::{
    Assigned, AssignedRecord, ClientFrame, ErrorCode, Join, NewRecord, ServerFrame, Settle,
    WireError,
};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, instrument};

use crate::broker::{Broker, BrokerError};
use crate::groups::Group;
use crate::groups::state::{Action, Delivery, MemberId};
use crate::storage::{StorageError, Watch};
use crate::transport::{FrameReader, FrameWriter, Incoming};
use crate::util::now_ms;

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
    let notify = Arc::new(Notify::new());
    let member = group.join(Arc::clone(&notify));
    debug!(member, prefetch, "joined");
    let mut member_loop = Member {
        broker: &broker,
        group: &group,
        member,
        notify,
        watches: BTreeMap::new(),
    };
    let ended = member_loop
        .run(&mut reader, &mut writer, prefetch, &shutdown)
        .await;
    // Whatever it held goes back to the group, now.
    let changes = group.changes().await;
    let (dead, writes) = changes.leave(member, now_ms());
    broker.apply_group_changes(&group, writes, dead).await;
    drop(changes);
    if let Err(error) = ended {
        writer.refuse(error).await;
    } else {
        writer.finish();
    }
    debug!(member, "left");
}

struct Member<'a> {
    broker: &'a Broker,
    group: &'a Group,
    member: MemberId,
    notify: Arc<Notify>,
    watches: BTreeMap<u64, Watch>,
}

impl Member<'_> {
    /// Runs until the stream ends (`Ok`) or must end with an error for the member.
    async fn run(
        &mut self,
        reader: &mut FrameReader,
        writer: &mut FrameWriter,
        prefetch: usize,
        shutdown: &CancellationToken,
    ) -> Result<(), WireError> {
        let fail = |e: BrokerError| WireError::from(&e);
        let mut created = self
            .broker
            .watch_pattern(self.group.pattern().as_str())
            .map_err(fail)?
            .created;
        // Watching before saying Joined: from then on this member counts as a
        // consumer of the group's topics (for requests' "no responders").
        let changes = self.group.changes().await;
        let writes = self.broker.sync_group_topics(&changes);
        self.broker.persist_group(self.group, writes).await;
        drop(changes);
        self.watch_topics();
        writer
            .send(&ServerFrame::Joined)
            .await
            .map_err(|_| gone())?;
        // A full look at the topic registry only when a matching topic was created.
        let mut topics_created = false;
        loop {
            if self.group.is_deleted() {
                return Err(WireError::new(
                    ErrorCode::GroupNotFound,
                    "the group was deleted",
                ));
            }
            let changes = self.group.changes().await;
            let mut writes = match std::mem::take(&mut topics_created) {
                true => self.broker.sync_group_topics(&changes),
                false => changes.drop_deleted_topics(),
            };
            self.watch_topics();
            let now = now_ms();
            let (dead, released) = changes.release_expired(now);
            writes.extend(released);
            self.broker
                .apply_group_changes(self.group, writes, dead)
                .await;

            let room = prefetch.saturating_sub(self.group.held(self.member));
            if room > 0 {
                let (deliveries, writes) = changes.assign(self.member, room, now);
                self.broker.persist_group(self.group, writes).await;
                drop(changes);
                self.send(writer, &deliveries, shutdown).await?;
            } else {
                drop(changes);
            }
            tokio::select! {
                flushed = writer.flush() => flushed.map_err(|_| gone())?,
                () = shutdown.cancelled() => return Err(super::shutting_down()),
            }

            let wake_in = self
                .group
                .next_wakeup(now_ms())
                .map(|at| Duration::from_millis(at.saturating_sub(now_ms())));
            tokio::select! {
                incoming = reader.next() => {
                    // Take in every frame already here before assigning more: a member
                    // that settles and leaves in one write is not handed records it
                    // would only give back.
                    let mut incoming = Some(incoming);
                    while let Some(frame) = incoming {
                        match frame {
                            Incoming::Frame(ClientFrame::Settle(settlements)) => self.settle(settlements).await,
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
                () = self.notify.notified() => {}
                () = sleep(wake_in) => {}
                _ = created.recv() => topics_created = true,
                () = shutdown.cancelled() => return Err(super::shutting_down()),
            }
        }
    }

    /// Watches every topic of the group, so new records wake this member.
    fn watch_topics(&mut self) {
        for log in self.group.logs() {
            self.watches
                .entry(log.id())
                .or_insert_with(|| log.watch(Arc::clone(&self.notify)));
        }
        self.watches.retain(|id, _| self.group.log(*id).is_some());
    }

    /// Reads the assigned records and feeds them to the member.
    async fn send(
        &self,
        writer: &mut FrameWriter,
        deliveries: &[Delivery],
        shutdown: &CancellationToken,
    ) -> Result<(), WireError> {
        let mut by_topic: BTreeMap<u64, Vec<&Delivery>> = BTreeMap::new();
        for delivery in deliveries {
            by_topic.entry(delivery.topic).or_default().push(delivery);
        }
        for (topic, mut deliveries) in by_topic {
            let Some(log) = self.group.log(topic) else {
                continue;
            };
            deliveries.sort_by_key(|d| d.offset);
            let mut frame = Assigned {
                topic: log.name().to_string(),
                records: Vec::new(),
            };
            let mut bytes = 0;
            // Stop feeding frames into one write past this many bytes.
            let max_write = self.broker.limits().max_buffered_per_subscription;
            for run in deliveries.chunk_by(|a, b| b.offset == a.offset + 1) {
                // One read may stop short of the run (at a chunk's end): read on.
                let mut next = run[0].offset;
                let end = next + run.len() as u64;
                while next < end {
                    let count = u32::try_from(end - next).unwrap_or(u32::MAX);
                    let read = self
                        .broker
                        .storage()
                        .read(&log, next, count, max_write)
                        .map_err(storage)?;
                    let Some(slice) = read else {
                        break; // removed by retention: the group drops them when it notices
                    };
                    next = slice.base_offset + u64::from(slice.count);
                    let records = decode_shared(slice.base_offset, &slice.batch)
                        .map_err(|e| storage(e.into()))?;
                    for record in records {
                        // The run is consecutive offsets: a record's delivery is found by
                        // its distance from the run's start.
                        let index = record
                            .offset
                            .checked_sub(run[0].offset)
                            .and_then(|i| usize::try_from(i).ok());
                        let Some(delivery) = index.and_then(|i| run.get(i)) else {
                            continue;
                        };
                        bytes += record.payload.len();
                        frame.records.push(AssignedRecord {
                            offset: record.offset,
                            timestamp: record.timestamp,
                            deliveries: delivery.deliveries,
                            record: NewRecord {
                                key: record.key,
                                headers: record.headers,
                                payload: record.payload,
                            },
                        });
                        if bytes >= max_write {
                            let full = std::mem::take(&mut frame.records);
                            writer.feed(&ServerFrame::Assigned(Assigned {
                                topic: frame.topic.clone(),
                                records: full,
                            }));
                            bytes = 0;
                            tokio::select! {
                                flushed = writer.flush() => flushed.map_err(|_| gone())?,
                                () = shutdown.cancelled() => return Err(super::shutting_down()),
                            }
                        }
                    }
                }
            }
            if !frame.records.is_empty() {
                writer.feed(&ServerFrame::Assigned(frame));
            }
        }
        Ok(())
    }

    async fn settle(&self, settlements: Vec<quiver_protocol::Settlement>) {
        let changes = self.group.changes().await;
        let now = now_ms();
        let mut dead = Vec::new();
        let mut writes = Vec::new();
        for settlement in settlements {
            let Some(topic) = self.group.topic_named(&settlement.topic) else {
                continue;
            };
            let action = match settlement.action {
                Settle::Ack => Action::Ack,
                Settle::Nack { delay_ms } => Action::Nack { delay_ms },
                Settle::Term { reason } => {
                    Action::Term(format!("terminated by the consumer: {reason}"))
                }
                Settle::InProgress => Action::InProgress,
            };
            let (letter, changed) =
                changes.settle(self.member, topic, settlement.offset, action, now);
            dead.extend(letter);
            writes.extend(changed);
        }
        self.broker
            .apply_group_changes(self.group, writes, dead)
            .await;
    }
}

async fn sleep(duration: Option<Duration>) {
    match duration {
        Some(duration) => tokio::time::sleep(duration).await,
        None => std::future::pending().await,
    }
}

fn storage(e: StorageError) -> WireError {
    WireError::from(&BrokerError::from(e))
}

fn gone() -> WireError {
    WireError::new(ErrorCode::Internal, "the member stream closed")
}
