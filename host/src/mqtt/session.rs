//! MQTT sessions: which connection holds each client id (a new connection with the
//! same id takes the session over, and the old one is closed first), and the
//! persistent sessions that outlive their connection.
//!
//! A persistent session (3.1.1 clean session 0, 5.0 a session expiry above 0) keeps,
//! per subscription, the position in every matching topic up to which its client
//! acknowledged what it was sent; a client that comes back resumes there and gets what
//! it missed. While connected the connection owns the session and stores it (the MQTT
//! state's kind `s`, keyed by client id) when it changes and now and then; once the
//! connection ends the registry holds it until the client returns or it expires.
//! Stored positions lag what was acknowledged by at most the store interval, so a
//! broker crash means redelivery, never loss.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::storage::{Storage, StorageError};
use crate::util::now_ms;

/// The storage kind of persistent sessions.
const KIND: u8 = b's';

/// A persistent session as stored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct StoredSession {
    /// Seconds the session outlives its connection.
    pub(super) expiry_secs: u32,
    /// When its connection ended (ms since the epoch); `None` while connected.
    pub(super) disconnected_ms: Option<u64>,
    /// Its subscriptions.
    pub(super) subscriptions: Vec<StoredSubscription>,
    /// QoS 2 publishes of the client's stored and not yet released: packet id and
    /// the sequence they were published with (a retry is deduplicated by it).
    pub(super) awaiting_release: Vec<(u16, u64)>,
    /// The client's publish producer id (for deduplicating QoS 2 retries).
    pub(super) producer: u64,
    /// The next publish sequence.
    pub(super) next_sequence: u64,
}

/// A subscription of a persistent session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct StoredSubscription {
    /// The filter as the client wrote it.
    pub(super) filter: String,
    /// The most QoS granted.
    pub(super) qos: u8,
    /// MQTT 5's retain-as-published.
    pub(super) retain_as_published: bool,
    /// Where each matching topic is read from: name, id, next offset.
    pub(super) positions: Vec<(String, u64, u64)>,
}

/// One client id's place in the registry.
#[derive(Debug, Default)]
struct Entry {
    /// The connection holding the id.
    live: Option<Live>,
    /// A persistent session no connection holds.
    parked: Option<StoredSession>,
    /// Cancels the parked session's expiry, or a delayed will.
    timers: Option<CancellationToken>,
}

#[derive(Debug)]
struct Live {
    connection: u64,
    takeover: CancellationToken,
    ended: watch::Receiver<bool>,
}

/// What a connection holding a client id keeps to hand it back.
#[derive(Debug)]
pub(super) struct Holder {
    /// The client id.
    pub(super) client_id: String,
    connection: u64,
    /// Cancelled when another connection takes the session over.
    pub(super) takeover: CancellationToken,
    ended: watch::Sender<bool>,
}

/// Every client id in use, and every parked persistent session.
#[derive(Debug)]
pub(super) struct Sessions {
    storage: Storage,
    entries: Mutex<HashMap<String, Entry>>,
    next_connection: std::sync::atomic::AtomicU64,
    max_expiry: u32,
}

impl Sessions {
    /// Loads the stored persistent sessions, forgetting those expired meanwhile.
    pub(super) async fn load(
        storage: &Storage,
        max_expiry: u32,
    ) -> Result<Arc<Self>, StorageError> {
        let sessions = Arc::new(Self {
            storage: storage.clone(),
            entries: Mutex::new(HashMap::new()),
            next_connection: 1.into(),
            max_expiry,
        });
        let now = now_ms();
        let mut expired = Vec::new();
        for (key, value) in storage.mqtt_entries(KIND)? {
            let client_id = String::from_utf8_lossy(&key).into_owned();
            let mut session = match postcard::from_bytes::<StoredSession>(&value) {
                Ok(session) => session,
                Err(e) => {
                    warn!(%client_id, error = %e, "a stored MQTT session does not decode; forgotten");
                    expired.push((key, None));
                    continue;
                }
            };
            // A session stored while connected lost its connection to the restart.
            let since = *session.disconnected_ms.get_or_insert(now);
            let left = remaining(&session, since, now);
            if left.is_zero() {
                expired.push((key, None));
                continue;
            }
            let timer = sessions.expire_later(client_id.clone(), left);
            sessions.lock().insert(
                client_id,
                Entry {
                    live: None,
                    parked: Some(session),
                    timers: Some(timer),
                },
            );
        }
        if !expired.is_empty() {
            info!(
                sessions = expired.len(),
                "forgot MQTT sessions that expired while the broker was down"
            );
            storage.put_mqtt(KIND, expired).await?;
        }
        Ok(sessions)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The longest expiry a session may have.
    pub(super) fn max_expiry(&self) -> u32 {
        self.max_expiry
    }

    /// Takes `client_id` for a new connection: closes the connection holding it (and
    /// waits for it to hand the session back), cancels a pending delayed will, and
    /// returns the parked persistent session unless `clean_start` discards it.
    pub(super) async fn connect(
        self: &Arc<Self>,
        client_id: &str,
        clean_start: bool,
    ) -> Result<(Holder, Option<StoredSession>), StorageError> {
        let previous = {
            let mut entries = self.lock();
            let entry = entries.entry(client_id.to_owned()).or_default();
            if let Some(timers) = entry.timers.take() {
                timers.cancel();
            }
            // Left in place, so that the old connection still finds itself there
            // when it hands the session back.
            entry
                .live
                .as_ref()
                .map(|live| (live.takeover.clone(), live.ended.clone()))
        };
        if let Some((takeover, mut ended)) = previous {
            debug!(%client_id, "taking the session over from another connection");
            takeover.cancel();
            // The old connection hands its session back as it ends; a bound, in case
            // it is stuck writing to a client that does not read.
            let _ = tokio::time::timeout(TAKEOVER_WAIT, ended.wait_for(|ended| *ended)).await;
        }
        let connection = self
            .next_connection
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (ended_tx, ended_rx) = watch::channel(false);
        let takeover = CancellationToken::new();
        let parked = {
            let mut entries = self.lock();
            let entry = entries.entry(client_id.to_owned()).or_default();
            if let Some(timers) = entry.timers.take() {
                timers.cancel();
            }
            entry.live = Some(Live {
                connection,
                takeover: takeover.clone(),
                ended: ended_rx,
            });
            entry.parked.take()
        };
        let session = match (parked, clean_start) {
            (Some(_), true) => {
                self.forget(client_id).await?;
                None
            }
            (parked, _) => parked,
        };
        let holder = Holder {
            client_id: client_id.to_owned(),
            connection,
            takeover,
            ended: ended_tx,
        };
        Ok((holder, session))
    }

    /// Stores a connected client's persistent session.
    pub(super) async fn store(
        &self,
        client_id: &str,
        session: &StoredSession,
    ) -> Result<(), StorageError> {
        let value = postcard::to_allocvec(session).expect("a session encodes");
        self.storage
            .put_mqtt(KIND, vec![(client_id.as_bytes().to_vec(), Some(value))])
            .await
    }

    /// Forgets a stored session.
    pub(super) async fn forget(&self, client_id: &str) -> Result<(), StorageError> {
        self.storage
            .put_mqtt(KIND, vec![(client_id.as_bytes().to_vec(), None)])
            .await
    }

    /// The connection held by `holder` ended; `session` is its persistent session, to
    /// park (and store) until the client returns or it expires; `stored` says whether
    /// one is in storage to forget otherwise. `will` runs after its delay unless the
    /// client returns first.
    pub(super) async fn disconnected(
        self: &Arc<Self>,
        holder: Holder,
        session: Option<StoredSession>,
        stored: bool,
        will: Option<(Duration, futures::future::BoxFuture<'static, ()>)>,
    ) {
        let client_id = holder.client_id.clone();
        let mut session = session.filter(|s| s.expiry_secs > 0);
        if let Some(session) = &mut session {
            let now = now_ms();
            session.disconnected_ms = Some(now);
            if let Err(e) = self.store(&client_id, session).await {
                warn!(%client_id, error = %e, "storing the MQTT session failed; it lives in memory until it expires");
            }
        } else if stored && let Err(e) = self.forget(&client_id).await {
            warn!(%client_id, error = %e, "forgetting the MQTT session failed");
        }
        {
            let mut entries = self.lock();
            let entry = entries.entry(client_id.clone()).or_default();
            let ours = entry
                .live
                .as_ref()
                .is_some_and(|live| live.connection == holder.connection);
            if ours {
                entry.live = None;
                let timers = CancellationToken::new();
                let mut timed = false;
                if let Some(session) = &session {
                    let left = Duration::from_secs(u64::from(session.expiry_secs));
                    self.expire_on(client_id.clone(), left, timers.clone());
                    timed = true;
                }
                if let Some((delay, will)) = will {
                    // A delayed will is cancelled by the client coming back.
                    timed |= !delay.is_zero();
                    self.spawn_will(client_id.clone(), delay, will, timers.clone());
                }
                entry.parked = session;
                entry.timers = timed.then_some(timers);
            } else if let Some((delay, will)) = will {
                // Taken over: the new connection cancelled nothing of ours to wait on.
                self.spawn_will(client_id.clone(), delay, will, CancellationToken::new());
            }
            if entry.live.is_none() && entry.parked.is_none() && entry.timers.is_none() {
                entries.remove(&client_id);
            }
        }
        let _ = holder.ended.send(true);
    }

    fn expire_later(self: &Arc<Self>, client_id: String, after: Duration) -> CancellationToken {
        let timers = CancellationToken::new();
        self.expire_on(client_id, after, timers.clone());
        timers
    }

    /// Forgets `client_id`'s parked session after `after`, unless `cancel` fires.
    fn expire_on(self: &Arc<Self>, client_id: String, after: Duration, cancel: CancellationToken) {
        let sessions = Arc::downgrade(self);
        tokio::spawn(async move {
            tokio::select! {
                () = tokio::time::sleep(after) => {}
                () = cancel.cancelled() => return,
            }
            let Some(sessions) = sessions.upgrade() else {
                return;
            };
            let expired = {
                let mut entries = sessions.lock();
                match entries.get_mut(&client_id) {
                    Some(entry) if entry.live.is_none() && !cancel.is_cancelled() => {
                        entries.remove(&client_id);
                        true
                    }
                    _ => false,
                }
            };
            if expired {
                debug!(%client_id, "MQTT session expired");
                if let Err(e) = sessions.forget(&client_id).await {
                    warn!(%client_id, error = %e, "forgetting an expired MQTT session failed");
                }
            }
        });
    }

    /// Publishes `will` after `delay` unless `cancel` fires first (the client came
    /// back); then forgets `client_id` if nothing else holds it.
    fn spawn_will(
        self: &Arc<Self>,
        client_id: String,
        delay: Duration,
        will: futures::future::BoxFuture<'static, ()>,
        cancel: CancellationToken,
    ) {
        let sessions = Arc::downgrade(self);
        tokio::spawn(async move {
            if !delay.is_zero() {
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = cancel.cancelled() => return,
                }
            }
            will.await;
            let Some(sessions) = sessions.upgrade() else {
                return;
            };
            let mut entries = sessions.lock();
            if entries
                .get(&client_id)
                .is_some_and(|e| e.live.is_none() && e.parked.is_none())
            {
                entries.remove(&client_id);
            }
        });
    }

    /// Persistent sessions parked now.
    pub(super) fn parked(&self) -> usize {
        self.lock().values().filter(|e| e.parked.is_some()).count()
    }
}

/// How long a connection taking a session over waits for the old one to let go.
const TAKEOVER_WAIT: Duration = Duration::from_secs(5);

/// Time left of a session disconnected at `since` (ms), at `now`.
fn remaining(session: &StoredSession, since: u64, now: u64) -> Duration {
    let ends = since.saturating_add(u64::from(session.expiry_secs) * 1000);
    Duration::from_millis(ends.saturating_sub(now))
}
