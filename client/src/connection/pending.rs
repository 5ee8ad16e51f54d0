//! The requests waiting for their replies, across connections. The writer
//! (`outgoing.rs`) marks what it writes, the reader (`supervisor.rs`) answers by id,
//! and when a connection is lost the supervisor decides here what becomes of each
//! request: a publish (or a query) is written again on the next connection, anything
//! else that was written fails with [`Error::ConnectionLost`].
//!
//! Invariants:
//! - request ids are never reused for the life of a client, so a reply can only ever
//!   answer the request that carried its id, whichever connection it came on;
//! - every waiter is answered exactly once: with a reply, or with an error when its
//!   request cannot be written again or the client gives up;
//! - once closed, nothing new is registered, so no request waits for a reply that
//!   will never come.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use bytes::{Bytes, BytesMut};
use quiver_protocol::{ClientFrame, ErrorCode, OpReply, Receipt, WireError, frame};
use tokio::sync::oneshot;

use crate::error::{Error, Result};

pub(crate) fn encode(msg: &ClientFrame) -> Result<Bytes> {
    let mut buf = BytesMut::new();
    frame::encode(msg, &mut buf).map_err(|e| Error::Protocol(e.to_string()))?;
    Ok(buf.freeze())
}

/// Requests waiting for their replies.
#[derive(Debug)]
pub(crate) struct Pending {
    state: Mutex<State>,
    next_id: AtomicU64,
    /// Numbers writes in the order they happen, across connections.
    next_write: AtomicU64,
}

impl Default for Pending {
    fn default() -> Self {
        Self {
            state: Mutex::default(),
            next_id: AtomicU64::new(1),
            next_write: AtomicU64::new(0),
        }
    }
}

#[derive(Debug, Default)]
struct State {
    entries: HashMap<u64, Entry>,
    /// Why nothing can be registered any more, once that is so.
    closed: Option<String>,
}

/// One request waiting for its reply.
#[derive(Debug)]
struct Entry {
    waiter: Waiter,
    /// The request's frame, kept when it is safe to write again on a new connection
    /// (a publish, which the broker deduplicates by id, or a query).
    resend: Option<Bytes>,
    sent: Sent,
}

/// Where a request's frame is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sent {
    /// Queued for the writer, never written.
    Queued,
    /// Written, as the `n`th write, on the connection in use.
    On(u64),
    /// Written, as the `n`th write, on a connection that was lost; to be written
    /// again.
    Lost(u64),
}

/// Who waits for a reply.
#[derive(Debug)]
pub(crate) enum Waiter {
    /// One request's caller.
    One(oneshot::Sender<Result<OpReply>>),
    /// The callers of the publishes a `PublishEach` merged, in order.
    Each(Vec<oneshot::Sender<Result<Receipt>>>),
}

impl Waiter {
    /// Hands a reply to whoever waits for it.
    fn answer(self, result: Result<OpReply, WireError>) {
        let replies = match self {
            Self::One(reply) => {
                let _ = reply.send(result.map_err(Error::Server));
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
            let _ = reply.send(outcome.map_err(Error::Server));
        }
    }

    /// Tells whoever waits that the request failed.
    pub(crate) fn fail(self, error: impl Fn() -> Error) {
        match self {
            Self::One(reply) => {
                let _ = reply.send(Err(error()));
            }
            Self::Each(replies) => {
                for reply in replies {
                    let _ = reply.send(Err(error()));
                }
            }
        }
    }
}

impl Pending {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A request id never used by this client.
    pub(crate) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// The number of the next write.
    pub(crate) fn next_write(&self) -> u64 {
        self.next_write.fetch_add(1, Ordering::Relaxed)
    }

    /// Registers the waiter for request `id`, queued for the writer; `resend` is its
    /// frame if it may be written again on a new connection. Fails (handing the
    /// waiter back, with the reason) once the client has closed.
    pub(crate) fn register(
        &self,
        id: u64,
        waiter: Waiter,
        resend: Option<Bytes>,
    ) -> Result<(), (Waiter, String)> {
        self.insert(id, waiter, resend, Sent::Queued)
    }

    /// Registers a request the writer is about to write as write number `write`.
    pub(crate) fn register_written(
        &self,
        id: u64,
        waiter: Waiter,
        resend: Option<Bytes>,
        write: u64,
    ) -> Result<(), (Waiter, String)> {
        self.insert(id, waiter, resend, Sent::On(write))
    }

    fn insert(
        &self,
        id: u64,
        waiter: Waiter,
        resend: Option<Bytes>,
        sent: Sent,
    ) -> Result<(), (Waiter, String)> {
        let mut state = self.lock();
        if let Some(reason) = &state.closed {
            return Err((waiter, reason.clone()));
        }
        let entry = Entry {
            waiter,
            resend,
            sent,
        };
        state.entries.insert(id, entry);
        Ok(())
    }

    /// Forgets a request that could not be queued.
    pub(crate) fn remove(&self, id: u64) {
        self.lock().entries.remove(&id);
    }

    /// Marks requests as written, each with its write number: before the write, so
    /// that a connection lost during it leaves no doubt about what may have gone out.
    pub(crate) fn mark_written(&self, written: &[(u64, u64)]) {
        let mut state = self.lock();
        for (id, write) in written {
            if let Some(entry) = state.entries.get_mut(id) {
                entry.sent = Sent::On(*write);
            }
        }
    }

    /// Answers request `id` with the broker's reply; a reply to nothing is ignored.
    pub(crate) fn answer(&self, id: u64, result: Result<OpReply, WireError>) {
        let entry = self.lock().entries.remove(&id);
        if let Some(entry) = entry {
            entry.waiter.answer(result);
        }
    }

    /// The connection in use is lost: requests written on it that may be written
    /// again wait for the next one; the others fail, since the broker may or may not
    /// have acted on them.
    pub(crate) fn connection_lost(&self, reason: &str) {
        let failed: Vec<Waiter> = {
            let mut state = self.lock();
            let lost: Vec<u64> = state
                .entries
                .iter_mut()
                .filter_map(|(id, entry)| match (entry.sent, &entry.resend) {
                    (Sent::On(write), Some(_)) => {
                        entry.sent = Sent::Lost(write);
                        None
                    }
                    (Sent::On(_), None) => Some(*id),
                    _ => None,
                })
                .collect();
            lost.iter()
                .filter_map(|id| state.entries.remove(id))
                .map(|entry| entry.waiter)
                .collect()
        };
        for waiter in failed {
            waiter.fail(|| Error::ConnectionLost(reason.to_owned()));
        }
    }

    /// The frames to write first on a new connection: those written on lost ones, in
    /// the order they were first written.
    pub(crate) fn take_lost(&self) -> Vec<(u64, Bytes)> {
        let state = self.lock();
        let mut lost: Vec<(u64, u64, Bytes)> = state
            .entries
            .iter()
            .filter_map(|(id, entry)| match (entry.sent, &entry.resend) {
                (Sent::Lost(write), Some(frame)) => Some((write, *id, frame.clone())),
                _ => None,
            })
            .collect();
        lost.sort_unstable_by_key(|(write, ..)| *write);
        lost.into_iter().map(|(_, id, frame)| (id, frame)).collect()
    }

    /// Ends every request: those written at least once fail with `written` (the
    /// broker may have acted on them), the rest with [`Error::ConnectionLost`]; nothing
    /// can be registered from now on.
    pub(crate) fn close(&self, reason: &str, written: impl Fn() -> Error) {
        let entries = {
            let mut state = self.lock();
            state.closed = Some(reason.to_owned());
            std::mem::take(&mut state.entries)
        };
        for entry in entries.into_values() {
            match entry.sent {
                Sent::Queued => entry
                    .waiter
                    .fail(|| Error::ConnectionLost(reason.to_owned())),
                Sent::On(_) | Sent::Lost(_) => entry.waiter.fail(&written),
            }
        }
    }

    /// The error for a request made after the client closed.
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

#[cfg(test)]
mod tests {
    use super::*;

    fn waiter() -> (Waiter, oneshot::Receiver<Result<OpReply>>) {
        let (tx, rx) = oneshot::channel();
        (Waiter::One(tx), rx)
    }

    /// Registers a request whose frame (`resend`) may be written again, or not.
    fn register(pending: &Pending, id: u64, resend: bool) -> oneshot::Receiver<Result<OpReply>> {
        let (waiter, rx) = waiter();
        let frame = resend.then(|| Bytes::from(id.to_le_bytes().to_vec()));
        assert!(pending.register(id, waiter, frame).is_ok(), "open");
        rx
    }

    #[test]
    fn a_lost_connection_keeps_what_can_be_written_again_in_write_order() {
        let pending = Pending::default();
        let _publish_a = register(&pending, 1, true);
        let _publish_b = register(&pending, 2, true);
        let mut request_rx = register(&pending, 3, false);
        let _queued = register(&pending, 4, true);
        // Written in another order than registered; 4 stays queued.
        pending.mark_written(&[(2, 10), (3, 11), (1, 12)]);

        pending.connection_lost("gone");

        let Ok(Err(Error::ConnectionLost(reason))) = request_rx.try_recv() else {
            panic!("a written request that cannot be repeated fails");
        };
        assert_eq!(reason, "gone");
        let again: Vec<u64> = pending.take_lost().into_iter().map(|(id, _)| id).collect();
        assert_eq!(
            again,
            [2, 1],
            "written again in the order first written, queued ones not"
        );
    }

    #[test]
    fn closing_tells_written_publishes_from_unsent_ones() {
        let pending = Pending::default();
        let mut written_rx = register(&pending, 1, true);
        let mut queued_rx = register(&pending, 2, true);
        pending.mark_written(&[(1, 0)]);
        pending.connection_lost("gone");

        pending.close("gave up", || Error::OutcomeUnknown("gave up".into()));

        assert!(matches!(
            written_rx.try_recv(),
            Ok(Err(Error::OutcomeUnknown(_)))
        ));
        assert!(matches!(
            queued_rx.try_recv(),
            Ok(Err(Error::ConnectionLost(_)))
        ));
        let (late, _) = waiter();
        assert!(pending.register(3, late, None).is_err(), "closed for good");
    }
}
