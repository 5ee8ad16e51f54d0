//! The task that owns a client's connections: it serves one (writing the control
//! stream, reading its replies), notices when it is lost, dials again with backoff as
//! the [`Reconnect`] policy allows, and writes what was in flight again on the new
//! one. Subscriptions and memberships follow through [`Shared::link_after`].
//!
//! Invariants:
//! - one connection is in use at a time, numbered by its generation from 1;
//! - what was written on a lost connection and may be written again goes out first on
//!   the next one, in its first order, before anything queued since;
//! - the client closes (and answers everything still waiting) when it is closed or
//!   dropped, when a connection is lost under [`Reconnect::Never`], or when no
//!   connection could be made within the maximum outage.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use quiver_protocol::{ErrorCode, Limits, ServerFrame};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::dial::{Dialed, Dialer};
use super::outgoing::{EachLimits, Outgoing, Writer};
use super::pending::{Pending, lost_reason};
use super::reconnect::{Backoff, ConnectionState, Reconnect, jitter};
use super::stream::FrameReader;
use crate::error::{Error, Result};

/// One connection in use, as streams see it.
#[derive(Debug)]
pub(crate) struct Link {
    pub(crate) conn: quinn::Connection,
    /// 1 for the first connection, one more for each reconnection.
    pub(crate) generation: u64,
}

/// Whether a connection is there for streams to use.
#[derive(Debug, Clone)]
enum Route {
    Up(Arc<Link>),
    Down,
    Closed(String),
}

/// What the client's handles and its supervisor share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) pending: Pending,
    pub(crate) closing: CancellationToken,
    pub(crate) reconnects: bool,
    route: watch::Sender<Route>,
    state: watch::Sender<ConnectionState>,
    limits: Mutex<Limits>,
}

impl Shared {
    pub(crate) fn new(first: &Dialed, reconnect: Reconnect) -> Self {
        let state = ConnectionState::Connected {
            addr: first.addr.clone(),
        };
        Self {
            pending: Pending::default(),
            closing: CancellationToken::new(),
            reconnects: reconnect != Reconnect::Never,
            route: watch::Sender::new(Route::Down),
            state: watch::Sender::new(state),
            limits: Mutex::new(first.limits),
        }
    }

    /// The limits the broker in use announced.
    pub(crate) fn limits(&self) -> Limits {
        *self.limits.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn state(&self) -> watch::Receiver<ConnectionState> {
        self.state.subscribe()
    }

    /// The connection in use once there is one newer than generation `after` (0: any);
    /// fails once the client is closed.
    pub(crate) async fn link_after(&self, after: u64) -> Result<Arc<Link>> {
        let mut route = self.route.subscribe();
        let route = route
            .wait_for(|route| match route {
                Route::Up(link) => link.generation > after,
                Route::Down => false,
                Route::Closed(_) => true,
            })
            .await
            .map_err(|_| self.pending.lost())?;
        match &*route {
            Route::Up(link) => Ok(Arc::clone(link)),
            Route::Closed(reason) => Err(Error::ConnectionLost(reason.clone())),
            Route::Down => unreachable!("waited for another route"),
        }
    }

    /// Waits until the client is closed; the reason, as an error.
    pub(crate) async fn closed(&self) -> Error {
        let mut route = self.route.subscribe();
        match route
            .wait_for(|route| matches!(route, Route::Closed(_)))
            .await
        {
            Ok(route) => match &*route {
                Route::Closed(reason) => Error::ConnectionLost(reason.clone()),
                _ => unreachable!("waited for the client to close"),
            },
            Err(_) => self.pending.lost(),
        }
    }

    /// Closes the client: every request still waiting fails, and so does every
    /// request made from now on.
    fn close(&self, reason: String, written: impl Fn() -> Error) {
        self.pending.close(&reason, written);
        self.route.send_replace(Route::Closed(reason.clone()));
        self.state.send_replace(ConnectionState::Closed { reason });
    }
}

/// Why serving a connection ended.
enum Ended {
    /// The client was closed or dropped.
    Closing,
    /// The connection was lost, for this reason.
    Lost(String),
}

/// Serves `first`, then every connection after it, until the client closes.
pub(crate) async fn run(
    first: Dialed,
    dialer: Arc<Dialer>,
    reconnect: Reconnect,
    mut queue: mpsc::UnboundedReceiver<Outgoing>,
    shared: Arc<Shared>,
) {
    let mut dialed = first;
    let mut generation = 0;
    let reason = loop {
        generation += 1;
        let reason = match serve(&shared, &mut queue, dialed, generation).await {
            Ended::Closing => break "the client closed the connection".to_owned(),
            Ended::Lost(reason) => reason,
        };
        let Reconnect::Backoff(backoff) = reconnect else {
            break reason;
        };
        info!(%reason, "connection lost; reconnecting");
        shared.pending.connection_lost(&reason);
        let rtt = match shared.route.send_replace(Route::Down) {
            Route::Up(link) => Some(link.conn.rtt()),
            _ => None,
        };
        match redial(&dialer, &backoff, &shared, reason, rtt).await {
            Redialed::Back(next) => dialed = next,
            Redialed::Closing => break "the client closed the connection".to_owned(),
            Redialed::GaveUp(reason) => {
                warn!(%reason, "giving up reconnecting");
                let outage = backoff.max_outage;
                let unknown = || {
                    Error::OutcomeUnknown(format!(
                        "sent before the connection was lost, and no connection could be \
                         made again within {outage:?} ({reason})"
                    ))
                };
                shared.close(
                    format!("no connection within {outage:?}: {reason}"),
                    unknown,
                );
                fail_queued(&mut queue, &shared.pending);
                return;
            }
        }
    };
    debug!(%reason, "client closed");
    let lost = reason.clone();
    shared.close(reason, || Error::ConnectionLost(lost.clone()));
    fail_queued(&mut queue, &shared.pending);
}

/// Answers what is still queued once the client has closed.
fn fail_queued(queue: &mut mpsc::UnboundedReceiver<Outgoing>, pending: &Pending) {
    queue.close();
    while let Ok(item) = queue.try_recv() {
        item.fail(pending);
    }
}

/// Serves one connection until it is lost or the client closes.
async fn serve(
    shared: &Arc<Shared>,
    queue: &mut mpsc::UnboundedReceiver<Outgoing>,
    dialed: Dialed,
    generation: u64,
) -> Ended {
    let Dialed {
        addr,
        conn,
        send,
        frames,
        limits,
        principal: _,
    } = dialed;
    *shared.limits.lock().unwrap_or_else(PoisonError::into_inner) = limits;
    let link = Arc::new(Link {
        conn: conn.clone(),
        generation,
    });
    shared.route.send_replace(Route::Up(link));
    shared
        .state
        .send_replace(ConnectionState::Connected { addr });
    let mut reader = tokio::spawn(read_replies(frames, Arc::clone(shared), conn.clone()));
    let mut writer = Writer::new(send.into_inner(), EachLimits::from(limits));
    let writing = write(shared, queue, &mut writer);
    let ended = tokio::select! {
        written = writing => match written {
            Ok(ended) => ended,
            Err(e) => {
                // The reader says why better than the failed write.
                conn.close(0u32.into(), b"control stream lost");
                Ended::Lost((&mut reader).await.unwrap_or_else(|_| e.to_string()))
            }
        },
        read = &mut reader => {
            // Ends the connection's streams too: their owners move to the next one.
            conn.close(0u32.into(), b"control stream lost");
            Ended::Lost(read.unwrap_or_else(|e| e.to_string()))
        }
    };
    if let Ended::Closing = ended {
        writer.finish();
        conn.close(0u32.into(), b"client closed");
        reader.abort();
    }
    ended
}

/// Writes what a lost connection left unanswered, then what is queued, until the
/// client closes or a write fails.
async fn write(
    shared: &Shared,
    queue: &mut mpsc::UnboundedReceiver<Outgoing>,
    writer: &mut Writer,
) -> Result<Ended, quinn::WriteError> {
    let again = shared.pending.take_lost();
    if !again.is_empty() {
        debug!(
            requests = again.len(),
            "writing again what the lost connection had"
        );
    }
    writer.resend(again, &shared.pending).await?;
    loop {
        tokio::select! {
            biased;
            () = shared.closing.cancelled() => return Ok(Ended::Closing),
            item = queue.recv() => match item {
                Some(first) => writer.write(first, queue, &shared.pending).await?,
                // Every handle is gone.
                None => return Ok(Ended::Closing),
            },
        }
    }
}

/// Matches replies on the control stream to the requests waiting for them, until the
/// stream ends; returns why it ended.
async fn read_replies(
    mut frames: FrameReader,
    shared: Arc<Shared>,
    conn: quinn::Connection,
) -> String {
    loop {
        match frames.next().await {
            Ok(ServerFrame::Reply(reply)) => shared.pending.answer(reply.id, reply.result),
            Ok(ServerFrame::Error(e)) if e.code == ErrorCode::ShuttingDown => {
                return e.to_string();
            }
            Ok(ServerFrame::Error(e)) => {
                // Not tied to a request: the server could not read something we sent.
                warn!(error = %e, "server reported a stream error");
            }
            Ok(other) => return format!("unexpected frame on the control stream: {other:?}"),
            Err(e @ Error::ConnectionLost(_)) => match lost_reason(&conn, e) {
                Error::ConnectionLost(reason) => return reason,
                other => return other.to_string(),
            },
            Err(e) => return e.to_string(),
        }
    }
}

/// How dialing again ended.
enum Redialed {
    Back(Dialed),
    Closing,
    GaveUp(String),
}

/// Dials with growing delays until connected, the client closes, or the maximum
/// outage has passed; `rtt` is the lost connection's round-trip time.
async fn redial(
    dialer: &Dialer,
    backoff: &Backoff,
    shared: &Shared,
    reason: String,
    rtt: Option<Duration>,
) -> Redialed {
    let deadline = Instant::now() + backoff.max_outage;
    let mut last_error = reason;
    for attempt in 1u32.. {
        shared.state.send_replace(ConnectionState::Reconnecting {
            attempt,
            last_error: last_error.clone(),
        });
        let delay = backoff.delay(attempt, jitter());
        if Instant::now() + delay >= deadline {
            break;
        }
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = shared.closing.cancelled() => return Redialed::Closing,
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let timeout = backoff
            .attempt_timeout
            .min(left)
            .max(Duration::from_millis(1));
        tokio::select! {
            dialed = dialer.dial_any(timeout, rtt) => match dialed {
                Ok(dialed) => {
                    info!(addr = %dialed.addr, attempt, "reconnected");
                    return Redialed::Back(dialed);
                }
                Err(e) => {
                    debug!(attempt, error = %e, "reconnection attempt failed");
                    last_error = e.to_string();
                }
            },
            () = shared.closing.cancelled() => return Redialed::Closing,
        }
    }
    Redialed::GaveUp(last_error)
}
