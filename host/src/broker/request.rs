//! Request-reply over topics: a request is published (durably) with a
//! `quiver-reply-to` header; whoever consumes it answers with a reply naming that
//! token, and the broker hands the reply to the waiting requester. Replies are not
//! stored.
//!
//! A request to a topic nobody consumes (no subscription or group member is reading
//! it) fails at once with `NoResponders`; one that gets no reply in time fails with
//! `RequestTimeout`.
//!
//! A token is unique (a start-up prefix and a counter) and unguessable (a tag keyed
//! with a secret drawn at start-up): only those who received the request can answer
//! it, whatever their grants.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use quiver_protocol::NewRecord;
use quiver_protocol::record::headers;
use tokio::sync::oneshot;

use super::{Broker, BrokerError};

/// The longest a request may wait.
pub(crate) const MAX_REQUEST_TIMEOUT: Duration = Duration::from_secs(600);

/// Requests waiting for their reply, by token.
#[derive(Debug, Default)]
pub(crate) struct Requests {
    waiting: Mutex<HashMap<String, oneshot::Sender<NewRecord>>>,
    next: AtomicU64,
    /// SipHash keyed with random keys: tags a token so it cannot be guessed.
    secret: RandomState,
}

/// Removes a request's token when the request ends, however it ends.
struct Waiting<'a> {
    requests: &'a Requests,
    token: String,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.requests
            .waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.token);
    }
}

impl Broker {
    /// Publishes `record` to `topic` with a reply token and waits up to `timeout` for
    /// the reply.
    pub async fn request(
        self: &Arc<Self>,
        topic: &str,
        mut record: NewRecord,
        timeout: Duration,
    ) -> Result<NewRecord, BrokerError> {
        if timeout.is_zero() || timeout > MAX_REQUEST_TIMEOUT {
            return Err(BrokerError::InvalidArgument(format!(
                "a request's timeout must be between 1 ms and {MAX_REQUEST_TIMEOUT:?}"
            )));
        }
        let log = self.topic(topic)?;
        if log.watchers() == 0 {
            return Err(BrokerError::NoResponders(topic.to_owned()));
        }
        let n = self.requests.next.fetch_add(1, Ordering::Relaxed);
        let tag = self.requests.secret.hash_one(n);
        let token = format!("{}.{n}.{tag:016x}", self.requests_prefix);
        let (tx, rx) = oneshot::channel();
        self.requests
            .waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(token.clone(), tx);
        let _waiting = Waiting {
            requests: &self.requests,
            token: token.clone(),
        };
        record = record.with_header(headers::REPLY_TO, token);
        self.publish_alone(topic, vec![record]).await?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(_)) | Err(_) => Err(BrokerError::RequestTimeout(timeout)),
        }
    }

    /// Hands a reply to the request waiting under `to`.
    pub fn reply(&self, to: &str, record: NewRecord) -> Result<(), BrokerError> {
        let waiting = self
            .requests
            .waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(to);
        match waiting.map(|tx| tx.send(record)) {
            Some(Ok(())) => Ok(()),
            _ => Err(BrokerError::NoRequester(to.to_owned())),
        }
    }
}
