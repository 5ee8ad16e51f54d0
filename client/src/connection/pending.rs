//! The requests of one connection waiting for their replies, and the framing both
//! directions of a stream share. The leaf of the client: the writer task
//! (`outgoing.rs`) registers merged publishes here, the multiplexer (`mux.rs`)
//! everything else, and its reader answers them.
//!
//! Invariant: once the connection is lost, [`Pending`] is closed, so no request can
//! wait for a reply that will never come.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use bytes::{Bytes, BytesMut};
use quiver_protocol::{ClientFrame, ErrorCode, OpReply, Receipt, WireError, frame};
use tokio::sync::oneshot;

use crate::error::{Error, Result};

pub(crate) fn encode(msg: &ClientFrame) -> Result<Bytes> {
    let mut buf = BytesMut::new();
    frame::encode(msg, &mut buf).map_err(|e| Error::Protocol(e.to_string()))?;
    Ok(buf.freeze())
}

/// Requests waiting for their replies; closed (`None`) once the connection is gone.
#[derive(Debug)]
pub(crate) struct Pending {
    waiting: Mutex<PendingState>,
    next_id: AtomicU64,
}

impl Default for Pending {
    fn default() -> Self {
        Self {
            waiting: Mutex::default(),
            next_id: AtomicU64::new(1),
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct PendingState {
    pub(crate) replies: HashMap<u64, Waiter>,
    closed: Option<String>,
}

/// Who waits for a reply.
#[derive(Debug)]
pub(crate) enum Waiter {
    /// One request's caller.
    One(oneshot::Sender<Result<OpReply, WireError>>),
    /// The callers of the publishes a `PublishEach` merged, in order.
    Each(Vec<oneshot::Sender<Result<Receipt, WireError>>>),
}

impl Waiter {
    /// Hands a reply to whoever waits for it.
    pub(crate) fn answer(self, result: Result<OpReply, WireError>) {
        let replies = match self {
            Self::One(reply) => {
                let _ = reply.send(result);
                return;
            }
            Self::Each(replies) => replies,
        };
        let outcomes = match result {
            Ok(OpReply::PublishedEach(outcomes)) if outcomes.len() == replies.len() => outcomes,
            Ok(other) => {
                let error = WireError::new(
                    ErrorCode::Malformed,
                    format!(
                        "the broker answered {} publishes with {other:?}",
                        replies.len()
                    ),
                );
                vec![Err(error); replies.len()]
            }
            Err(error) => vec![Err(error); replies.len()],
        };
        for (reply, outcome) in replies.into_iter().zip(outcomes) {
            let _ = reply.send(outcome);
        }
    }
}

impl Pending {
    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, PendingState> {
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A request id never used on this connection.
    pub(crate) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Registers the waiter for request `id`; fails (dropping it) once the connection
    /// is gone.
    pub(crate) fn insert(&self, id: u64, waiter: Waiter) -> Result<()> {
        let mut state = self.lock();
        if let Some(reason) = &state.closed {
            return Err(Error::ConnectionLost(reason.clone()));
        }
        state.replies.insert(id, waiter);
        Ok(())
    }

    pub(crate) fn close(&self, reason: String) {
        let mut state = self.lock();
        state.closed = Some(reason);
        state.replies.clear(); // waiters see their sender dropped
    }

    pub(crate) fn lost(&self) -> Error {
        Error::ConnectionLost(
            self.lock()
                .closed
                .clone()
                .unwrap_or_else(|| "the connection closed".into()),
        )
    }
}

/// The reason a connection ended, from QUIC if it knows one (a broker shutting down says
/// so), else what the stream reported.
pub(crate) fn lost_reason(conn: &quinn::Connection, error: Error) -> Error {
    match (error, conn.close_reason()) {
        (Error::ConnectionLost(_), Some(reason)) => Error::ConnectionLost(reason.to_string()),
        (error, _) => error,
    }
}
