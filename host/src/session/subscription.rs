//! Subscription streams: catch up from storage, then tail live, within the credit the
//! subscriber grants.
//!
//! A subscription keeps a cursor per matching topic: the next offset to send. Each
//! round it reads from storage at every cursor in turn (round robin, so one busy topic
//! cannot starve the others) while credit lasts, and otherwise sleeps until a watched
//! topic gets records, a matching topic is created, credit arrives, or the broker
//! shuts down. Catch-up and live tail are the same loop: the cursor only ever moves by
//! what was sent, so there is no switch-over at which a record could be skipped or sent
//! twice.
//!
//! A subscription opened with `SubscribeAt` can be resumed by the client on another
//! connection: it starts at the positions the client names, and the client is told
//! where every topic starts (`Positions`), including topics that start matching later.
//!
//! Memory per subscription is bounded by one write (`limits.max_buffered_per_subscription`)
//! plus what QUIC flow control lets sit in the send buffer; a subscriber that stops reading stops this
//! task in `flush`, and nothing accumulates.

use std::collections::HashMap;
use std::sync::Arc;

use quiver_protocol::{
    ClientFrame, ErrorCode, Position, Records, ServerFrame, StartAt, Subscribe, SubscribeAt,
    TopicPattern, WireError,
};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tracing::{debug, instrument, warn};

use crate::broker::cursors::Cursors;
use crate::broker::{Broker, BrokerError, PatternWatch};
use crate::storage::TopicLog;
use crate::transport::{FrameReader, FrameWriter, Incoming};

/// How a subscription stream began.
#[derive(Debug)]
pub(super) enum Start {
    /// `Subscribe`: answered `Subscribed`.
    Fresh(Subscribe),
    /// `SubscribeAt`: resumable, answered and kept informed with `Positions`.
    At(SubscribeAt),
}

impl Start {
    fn subscribe(&self) -> &Subscribe {
        match self {
            Self::Fresh(subscribe) => subscribe,
            Self::At(at) => &at.subscribe,
        }
    }
}

/// Serves a subscription stream whose first frame was `start`.
#[instrument(name = "subscription", skip_all, fields(pattern = %start.subscribe().pattern))]
pub(super) async fn serve(
    broker: Arc<Broker>,
    mut reader: FrameReader,
    mut writer: FrameWriter,
    start: Start,
    shutdown: CancellationToken,
) {
    let (pattern, mut created, mut cursors) = match open(&broker, &start) {
        Ok(started) => started,
        Err(e) => return writer.refuse(WireError::from(&e)).await,
    };
    let resumable = matches!(start, Start::At(_));
    let subscribe = match start {
        Start::Fresh(subscribe) => subscribe,
        Start::At(at) => at.subscribe,
    };
    let stages = match subscribe.pipeline.is_empty() {
        true => None,
        false => match broker
            .plugins()
            .subscription_stages(subscribe.pipeline.clone(), &subscribe.pattern)
        {
            Ok(stages) => Some(stages),
            Err(e) => return writer.refuse(WireError::from(&BrokerError::from(e))).await,
        },
    };
    debug!(pattern = %pattern, from = ?subscribe.from, resumable, "subscribed");
    let accepted = match resumable {
        true => ServerFrame::Positions(cursors.positions()),
        false => ServerFrame::Subscribed,
    };
    if writer.send(&accepted).await.is_err() {
        return;
    }
    // A topic that starts matching is announced to a resumable subscriber before its
    // records (the writer keeps the order of what it is fed).
    let join = |cursors: &mut Cursors, writer: &mut FrameWriter, log: Arc<TopicLog>| {
        if let Some(position) = cursors.add(log, 0)
            && resumable
        {
            writer.feed(&ServerFrame::Positions(vec![position]));
        }
    };
    let storage = broker.storage();
    let mut credit = subscribe.credit;
    // Stop feeding frames into one write past this many bytes.
    let max_write = broker.limits().max_buffered_per_subscription;
    loop {
        cursors.drop_deleted();
        // Send what credit allows, one write at a time.
        while credit > 0 && writer.buffered() < max_write {
            let (log, slice) = match cursors.next_slice(storage, credit, max_write) {
                Ok(Some(next)) => next,
                Ok(None) => break,
                Err(e) => {
                    warn!(cause = %e, "reading for a subscription failed");
                    let error = WireError::from(&BrokerError::from(e));
                    return writer.refuse(error).await;
                }
            };
            let Some(stages) = &stages else {
                credit -= slice.count;
                writer.feed(&ServerFrame::Records(Records {
                    topic: log.name().to_string(),
                    base_offset: slice.base_offset,
                    batch: slice.batch,
                }));
                continue;
            };
            match broker.deliver_through(stages, &log, slice).await {
                Ok(processed) if processed.records.is_empty() => {}
                Ok(processed) => {
                    let count = u32::try_from(processed.records.len()).unwrap_or(u32::MAX);
                    credit = credit.saturating_sub(count);
                    writer.feed(&ServerFrame::Processed(processed));
                }
                Err(e) => return writer.refuse(WireError::from(&e)).await,
            }
        }
        if writer.buffered() > 0 {
            tokio::select! {
                flushed = writer.flush() => if flushed.is_err() { return },
                // The flush left off part-way; the last word follows what it had.
                () = shutdown.cancelled() => return writer.refuse(super::shutting_down()).await,
            }
            continue;
        }
        // Nothing to send: wait for something to change.
        tokio::select! {
            incoming = reader.next() => match incoming {
                Incoming::Frame(ClientFrame::Credit(n)) => credit = credit.saturating_add(n),
                Incoming::Frame(other) => {
                    let error = WireError::new(
                        ErrorCode::UnexpectedMessage,
                        format!("{} is not valid on a subscription stream", other.kind()),
                    );
                    return writer.refuse(error).await;
                }
                Incoming::Bad(e) => return writer.refuse(WireError::from(&e)).await,
                Incoming::End => return,
            },
            () = cursors.notify.notified() => {}
            topic = created.recv() => match topic {
                Ok(log) if pattern.matches(log.name()) => join(&mut cursors, &mut writer, log),
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    // Missed some creations: look at every topic again.
                    for log in broker.topics() {
                        if pattern.matches(log.name()) {
                            join(&mut cursors, &mut writer, log);
                        }
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            () = shutdown.cancelled() => return writer.refuse(super::shutting_down()).await,
        }
    }
}

/// Resolves the pattern and each matching topic's start offset: where the client
/// resumes, for topics a `SubscribeAt` lists with their current id; else `from`.
fn open(
    broker: &Broker,
    start: &Start,
) -> Result<(TopicPattern, broadcast::Receiver<Arc<TopicLog>>, Cursors), BrokerError> {
    let subscribe = start.subscribe();
    let PatternWatch {
        pattern,
        matching,
        created,
    } = broker.watch_pattern(&subscribe.pattern)?;
    let resume: HashMap<&str, &Position> = match start {
        Start::Fresh(_) => HashMap::new(),
        Start::At(at) => at.positions.iter().map(|p| (p.topic.as_str(), p)).collect(),
    };
    let mut cursors = Cursors::new();
    for log in matching {
        let next = match resume.get(log.name().as_str()) {
            // Past the end only if records it was sent were lost (a batched topic's
            // unflushed tail): reading resumes at the end.
            Some(p) if p.topic_id == log.id() => p.next.min(log.stats().next),
            // Deleted and created again: the old position means nothing here.
            Some(_) => 0,
            None => match subscribe.from {
                StartAt::Earliest => 0,
                StartAt::Latest => log.stats().next,
                StartAt::Offset(offset) => offset,
                StartAt::Timestamp(ms) => broker.storage().offset_for_timestamp(&log, ms)?,
            },
        };
        cursors.add(log, next);
    }
    Ok((pattern, created, cursors))
}
