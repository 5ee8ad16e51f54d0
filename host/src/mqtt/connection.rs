//! One MQTT connection: the CONNECT (in time, authenticated, the session taken), then
//! one task serving it until it ends: reading packets, acknowledging publishes once
//! durable (`inbound.rs`), and delivering subscriptions within the client's window
//! (`outbound.rs`). Writes go through a writer task over a bounded queue, so a client
//! that stops reading stops its deliveries, not the broker.
//!
//! How a connection ends decides the will: a DISCONNECT (without MQTT 5's "with
//! will") drops it; anything else (the socket lost, keep-alive missed, a protocol
//! error, a takeover) publishes it, after its delay. A broker shutdown does not.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use futures::stream::FuturesOrdered;
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf};
use tokio::sync::broadcast::{self, error::RecvError};
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tracing::{Instrument, debug, info, info_span, warn};

use super::Shared;
use super::inbound::{Acked, Awaiting};
use super::outbound::{Inflight, Share, Subscription};
use super::packet::{
    ConnAck, Connect, Inbound, Outbound, PacketCodec, PacketError, Reason, Refusal, Version,
};
use super::session::{Holder, StoredSession};
use crate::auth::Access;
use crate::broker::PublishOrder;
use crate::storage::TopicLog;
use crate::transport::tcp::ByteStream;

/// Bytes the read buffer makes room for at a time.
const READ_ROOM: usize = 32 * 1024;
/// Encoded packets queued for the writer task.
const OUTBOX: usize = 16;
/// How long the writer's queue may stay full (the client not reading) before the
/// connection is closed.
const WRITE_STALL: Duration = Duration::from_secs(60);
/// How often a persistent session's positions are stored while it is connected.
const STORE_EVERY: Duration = Duration::from_secs(1);

/// Serves one accepted connection (`cert_name`: its client certificate's CN).
pub(super) async fn serve(
    shared: Arc<Shared>,
    stream: ByteStream,
    peer: SocketAddr,
    cert_name: Option<String>,
) {
    let (mut reader, mut writer) = tokio::io::split(stream);
    let mut codec = PacketCodec::new(shared.settings.max_packet_size);
    let mut buf = BytesMut::with_capacity(4096);
    let first = tokio::time::timeout(
        shared.settings.connect_timeout,
        read_packet(&mut reader, &mut codec, &mut buf),
    )
    .await;
    let connect = match first {
        Ok(Ok(Some(Inbound::Connect(connect)))) => connect,
        Ok(Ok(Some(other))) => {
            return debug!(%peer, packet = ?other, "closed: the first packet was not a CONNECT");
        }
        Ok(Ok(None)) => return debug!(%peer, "closed before CONNECT"),
        Ok(Err(PacketError::UnsupportedLevel(level))) => {
            // 3.1.1's "unacceptable protocol version", which MQTT 5 also allows.
            let _ = writer.write_all(b"\x20\x02\x00\x01").await;
            let _ = writer.shutdown().await;
            return info!(%peer, level, "refused: unsupported MQTT protocol level");
        }
        Ok(Err(e)) => return info!(%peer, error = %e, "closed: no valid CONNECT"),
        Err(_) => {
            return info!(%peer, timeout = ?shared.settings.connect_timeout, "closed: no CONNECT in time (mqtt.connect_timeout)");
        }
    };
    let mut out = BytesMut::new();
    let accepted = match accept(&shared, &connect, cert_name.as_deref()) {
        Ok(accepted) => accepted,
        Err(refusal) => {
            info!(%peer, client_id = %connect.client_id, %refusal, "CONNECT refused");
            let ack = connack(&shared, false, Some(refusal), None, None);
            if codec.encode(Outbound::ConnAck(ack), &mut out).is_ok() {
                let _ = writer.write_all(&out).await;
            }
            let _ = writer.shutdown().await;
            return;
        }
    };
    let (holder, parked) = match shared
        .sessions
        .connect(&accepted.client_id, connect.clean_start)
        .await
    {
        Ok(taken) => taken,
        Err(e) => {
            warn!(%peer, error = %e, "CONNECT refused: the session could not be taken");
            let refusal = Refusal::new(Reason::ServerUnavailable, format!("storage: {e}"));
            let ack = connack(&shared, false, Some(refusal), None, None);
            if codec.encode(Outbound::ConnAck(ack), &mut out).is_ok() {
                let _ = writer.write_all(&out).await;
            }
            return;
        }
    };
    let span = info_span!("mqtt", client_id = %accepted.client_id, %peer);
    let session_present = parked.is_some();
    let ack = connack(
        &shared,
        session_present,
        None,
        accepted
            .session_expiry
            .filter(|granted| connect.session_expiry != Some(*granted)),
        connect
            .client_id
            .is_empty()
            .then(|| accepted.client_id.clone()),
    );
    if codec.encode(Outbound::ConnAck(ack), &mut out).is_err()
        || writer.write_all(&out.split()).await.is_err()
    {
        shared
            .sessions
            .disconnected(holder, None, false, None)
            .await;
        return;
    }
    if let Some(max) = connect.max_packet_size {
        codec.limit_outbound(max);
    }
    let (outbox, mut queued) = mpsc::channel::<Bytes>(OUTBOX);
    let write_task = tokio::spawn(async move {
        while let Some(bytes) = queued.recv().await {
            if writer.write_all(&bytes).await.is_err() {
                return;
            }
        }
        let _ = writer.shutdown().await;
    });
    let will = connect.will.clone();
    let keep_alive = connect.keep_alive;
    let mut conn = Connection::new(
        Arc::clone(&shared),
        codec,
        accepted,
        connect.receive_maximum,
        outbox,
    );
    if let Some(parked) = parked {
        conn.stored = true;
        conn.resume(parked).await;
    }
    info!(parent: &span, version = ?conn.version, session_present, keep_alive, "connected");
    let ended = conn
        .run(&mut reader, buf, keep_alive, &holder)
        .instrument(span.clone())
        .await;
    info!(parent: &span, reason = %ended, "disconnected");
    let publish_will = match &ended {
        Ended::Disconnect { with_will } => *with_will,
        Ended::Shutdown => false,
        _ => true,
    };
    let will = will.filter(|_| publish_will).map(|will| {
        let delay = Duration::from_secs(u64::from(will.delay));
        let publish =
            super::inbound::publish_will(Arc::clone(&shared), conn.access.clone(), will.publish);
        (delay, publish)
    });
    // Records a shared subscription held go to the group's other members now.
    conn.leave_shares().await;
    let stored = conn.stored;
    let session = conn.into_session();
    shared
        .sessions
        .disconnected(holder, session, stored, will)
        .await;
    // The writer sends what is queued (a last DISCONNECT) and closes; a client that
    // does not read gets a second.
    let aborter = write_task.abort_handle();
    if tokio::time::timeout(Duration::from_secs(1), write_task)
        .await
        .is_err()
    {
        aborter.abort();
    }
}

/// Reads until a whole packet is decoded; `None` when the client closed first.
async fn read_packet(
    reader: &mut ReadHalf<ByteStream>,
    codec: &mut PacketCodec,
    buf: &mut BytesMut,
) -> Result<Option<Inbound>, PacketError> {
    loop {
        if let Some(packet) = codec.decode(buf)? {
            return Ok(Some(packet));
        }
        match reader.read_buf(buf).await {
            Ok(0) | Err(_) => return Ok(None),
            Ok(_) => {}
        }
    }
}

/// What a CONNECT was accepted as.
pub(super) struct Accepted {
    pub client_id: String,
    pub version: Version,
    pub access: Access,
    /// Seconds the session outlives the connection (0: not persistent).
    pub session_expiry: Option<u32>,
}

/// Checks a CONNECT: the client id, the credentials, the will.
fn accept(
    shared: &Shared,
    connect: &Connect,
    cert_name: Option<&str>,
) -> Result<Accepted, Refusal> {
    let client_id = match connect.client_id.as_str() {
        "" if connect.version == Version::V3 && !connect.clean_start => {
            return Err(Refusal::new(
                Reason::ClientIdentifierNotValid,
                "a persistent session (clean session 0) needs a client id",
            ));
        }
        "" => format!("quiver-{:016x}", rand_u64()),
        id => id.to_owned(),
    };
    // The password is a Quiver token; the username, if given, must be its principal.
    let token = match &connect.password {
        Some(password) => Some(std::str::from_utf8(password).map_err(|_| {
            Refusal::new(
                Reason::BadUserNameOrPassword,
                "the password is not a Quiver token",
            )
        })?),
        None => None,
    };
    let access = shared
        .auth
        .authenticate(token, cert_name)
        .map_err(|e| match token {
            Some(_) => Refusal::new(Reason::BadUserNameOrPassword, e.to_string()),
            None => Refusal::new(Reason::NotAuthorized, e.to_string()),
        })?;
    if let (Some(username), Some(principal)) = (&connect.username, access.principal())
        && token.is_some()
        && username != principal
    {
        return Err(Refusal::new(
            Reason::BadUserNameOrPassword,
            format!("the token is principal `{principal}`'s, not `{username}`'s"),
        ));
    }
    if let Some(will) = &connect.will {
        super::inbound::publishable(&access, &will.publish.topic)?;
    }
    let max = shared.sessions.max_expiry();
    Ok(Accepted {
        client_id,
        version: connect.version,
        access,
        session_expiry: connect.session_expiry.map(|s| s.min(max)),
    })
}

fn connack(
    shared: &Shared,
    session_present: bool,
    refusal: Option<Refusal>,
    session_expiry: Option<u32>,
    assigned_client_id: Option<String>,
) -> ConnAck {
    ConnAck {
        session_present,
        refusal,
        session_expiry,
        receive_maximum: shared.settings.receive_maximum,
        max_packet_size: shared.settings.max_packet_size,
        assigned_client_id,
    }
}

fn rand_u64() -> u64 {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).expect("the OS has randomness");
    u64::from_le_bytes(bytes)
}

/// What woke the connection.
enum Event<'a> {
    Acked(Acked),
    Read,
    Ready,
    Created(Option<Arc<TopicLog>>),
    Room(mpsc::Permit<'a, Bytes>),
    Tick,
}

/// Why a connection ended.
#[derive(Debug)]
pub(super) enum Ended {
    /// The client sent DISCONNECT.
    Disconnect { with_will: bool },
    /// The socket closed or failed without DISCONNECT.
    Lost,
    /// Nothing came within 1.5 times the keep-alive.
    KeepAlive,
    /// Another connection took the client id over.
    TakenOver,
    /// The broker is shutting down.
    Shutdown,
    /// The client read nothing for [`WRITE_STALL`] while the broker had packets for it.
    Stalled,
    /// The client broke the protocol, or sent what the broker refuses by closing.
    Refused(Refusal),
}

impl std::fmt::Display for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Disconnect { .. } => f.write_str("DISCONNECT"),
            Self::Lost => f.write_str("connection lost"),
            Self::KeepAlive => f.write_str("keep-alive expired"),
            Self::TakenOver => f.write_str("taken over by a new connection"),
            Self::Shutdown => f.write_str("broker shutting down"),
            Self::Stalled => write!(f, "the client read nothing for {WRITE_STALL:?}"),
            Self::Refused(refusal) => write!(f, "{refusal}"),
        }
    }
}

/// A connected client.
pub(super) struct Connection {
    pub(super) shared: Arc<Shared>,
    pub(super) codec: PacketCodec,
    pub(super) version: Version,
    pub(super) client_id: String,
    pub(super) access: Access,
    /// Seconds the session outlives the connection; `None`: a clean session.
    pub(super) session_expiry: Option<u32>,
    pub(super) order: PublishOrder,
    /// The client's publishes on their way to storage, acknowledged in order.
    pub(super) publishes: FuturesOrdered<futures::future::BoxFuture<'static, Acked>>,
    /// QoS 2 publishes of the client's, stored or being stored, not yet released.
    pub(super) awaiting: Awaiting,
    pub(super) subscriptions: Vec<Subscription>,
    pub(super) shares: Vec<Share>,
    pub(super) next_subscription: u64,
    /// Retained messages waiting for room in the window.
    pub(super) pending: VecDeque<super::outbound::Delivery>,
    /// Deliveries at QoS 1 and 2 the client has not acknowledged, by packet id.
    pub(super) inflight: HashMap<u16, Inflight>,
    pub(super) next_packet_id: u16,
    /// The most QoS 1 and 2 deliveries in flight (the client's receive maximum, within
    /// the broker's).
    pub(super) window: usize,
    /// Wakes the connection when a watched topic gets records.
    pub(super) notify: Arc<Notify>,
    /// Topics created from the connection's start on (before a resumed session looks
    /// at the registry, so none falls between the two).
    created: Option<broadcast::Receiver<Arc<TopicLog>>>,
    pub(super) outbox: mpsc::Sender<Bytes>,
    /// Packets encoded and not yet handed to the writer.
    pub(super) out: BytesMut,
    /// The persistent session changed since it was last stored.
    pub(super) dirty: bool,
    /// The session is in storage (it was stored, or resumed from there).
    pub(super) stored: bool,
}

impl Connection {
    fn new(
        shared: Arc<Shared>,
        codec: PacketCodec,
        accepted: Accepted,
        receive_maximum: u16,
        outbox: mpsc::Sender<Bytes>,
    ) -> Self {
        let window = usize::from(receive_maximum.min(shared.settings.receive_maximum)).max(1);
        let notify = Arc::new(Notify::new());
        Self {
            codec,
            version: accepted.version,
            client_id: accepted.client_id,
            access: accepted.access,
            session_expiry: accepted.session_expiry.filter(|s| *s > 0),
            order: PublishOrder::default(),
            publishes: FuturesOrdered::new(),
            awaiting: Awaiting::new(rand_u64()),
            subscriptions: Vec::new(),
            shares: Vec::new(),
            next_subscription: 0,
            pending: VecDeque::new(),
            inflight: HashMap::new(),
            next_packet_id: 1,
            window,
            notify,
            created: Some(shared.broker.topic_creations()),
            outbox,
            out: BytesMut::new(),
            dirty: false,
            stored: false,
            shared,
        }
    }

    /// Serves the connection until it ends; says why.
    async fn run(
        &mut self,
        reader: &mut ReadHalf<ByteStream>,
        mut buf: BytesMut,
        keep_alive: u16,
        holder: &Holder,
    ) -> Ended {
        // MQTT: the server closes after one and a half keep-alive periods of silence.
        let silence = (keep_alive > 0).then(|| Duration::from_millis(u64::from(keep_alive) * 1500));
        let mut deadline = silence.map(|s| Instant::now() + s);
        let mut created = self.created.take();
        let mut store_tick = tokio::time::interval(STORE_EVERY);
        store_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let shutdown = self.shared.shutdown.clone();
        let mut ready = true;
        let notify = Arc::clone(&self.notify);
        // A client may send packets right behind its CONNECT, in the same read.
        if let Err(ended) = self.take_packets(&mut buf).await {
            return self.end(ended).await;
        }
        let outbox = self.outbox.clone();
        let ended = loop {
            if let Err(ended) = self.flush_out().await {
                break ended;
            }
            let room = self.room() > 0 || self.has_qos0();
            // Publishes being stored are bounded too: past that, TCP holds the client.
            let reading = self.publishes.len() < usize::from(self.shared.settings.receive_maximum);
            // Reads fill what is left of the buffer: keep room for many packets (a
            // full BytesMut would grow by 64 bytes a read).
            if buf.capacity() - buf.len() < READ_ROOM / 4 {
                buf.reserve(READ_ROOM);
            }
            let event = tokio::select! {
                biased;
                () = shutdown.cancelled() => break Ended::Shutdown,
                () = holder.takeover.cancelled() => break Ended::TakenOver,
                Some(acked) = self.publishes.next() => Event::Acked(acked),
                read = reader.read_buf(&mut buf), if reading => match read {
                    Ok(0) | Err(_) => break Ended::Lost,
                    Ok(_) => Event::Read,
                },
                () = sleep_until(deadline) => break Ended::KeepAlive,
                () = notify.notified() => Event::Ready,
                created = recv_created(&mut created) => Event::Created(created),
                permit = outbox.reserve(), if ready && room => match permit {
                    Ok(permit) => Event::Room(permit),
                    Err(_) => break Ended::Lost,
                },
                // Also the groups' ack deadlines, for shared subscriptions.
                _ = store_tick.tick(), if self.dirty || !self.shares.is_empty() => Event::Tick,
            };
            let handled = match event {
                Event::Acked(acked) => self.acknowledge(acked).await,
                Event::Read => {
                    deadline = silence.map(|s| Instant::now() + s);
                    ready = true;
                    self.take_packets(&mut buf).await
                }
                Event::Ready => {
                    ready = true;
                    Ok(())
                }
                Event::Created(created) => {
                    self.topic_created(created);
                    ready = true;
                    Ok(())
                }
                Event::Room(permit) => match self.pump().await {
                    Ok(Some(bytes)) => {
                        permit.send(bytes);
                        Ok(())
                    }
                    Ok(None) => {
                        ready = false;
                        Ok(())
                    }
                    Err(ended) => Err(ended),
                },
                Event::Tick => {
                    if self.dirty {
                        self.store_session().await;
                    }
                    ready = true;
                    Ok(())
                }
            };
            if let Err(ended) = handled {
                break ended;
            }
        };
        self.end(ended).await
    }

    /// Answers what can be answered, says why the connection ends (MQTT 5), and
    /// hands the last packets to the writer.
    async fn end(&mut self, ended: Ended) -> Ended {
        // Publishes already read are answered where possible (they are stored
        // anyway), before any DISCONNECT. Those still being stored after the wait run
        // to their end unanswered, so that a retained message they set is set.
        loop {
            match tokio::time::timeout(Duration::from_secs(5), self.publishes.next()).await {
                Ok(Some(acked)) => {
                    let _ = self.acknowledge(acked).await;
                }
                Ok(None) => break,
                Err(_) => {
                    let unanswered = std::mem::take(&mut self.publishes);
                    debug!(
                        publishes = unanswered.len(),
                        "the connection ends with publishes still being stored: \
                         they finish unanswered"
                    );
                    tokio::spawn(unanswered.for_each(|_| std::future::ready(())));
                    break;
                }
            }
        }
        // MQTT 5 says why the broker closes; 3.1.1 just closes.
        let bye = match &ended {
            Ended::Refused(refusal) => Some(refusal.clone()),
            Ended::Shutdown => Some(Refusal::new(
                Reason::ServerShuttingDown,
                "the broker is shutting down",
            )),
            Ended::TakenOver => Some(Refusal::new(
                Reason::SessionTakenOver,
                "another connection took this client id over",
            )),
            Ended::KeepAlive => Some(Refusal::new(
                Reason::KeepAliveTimeout,
                "nothing came within 1.5 times the keep-alive",
            )),
            Ended::Disconnect { .. } | Ended::Lost | Ended::Stalled => None,
        };
        if let Some(bye) = bye {
            let _ = self.encode(Outbound::Disconnect(bye));
        }
        if !self.out.is_empty() {
            let _ = self.outbox.try_send(self.out.split().freeze());
        }
        ended
    }

    /// Decodes and handles every whole packet in `buf`.
    async fn take_packets(&mut self, buf: &mut BytesMut) -> Result<(), Ended> {
        loop {
            let packet = match self.codec.decode(buf) {
                Ok(Some(packet)) => packet,
                Ok(None) => return Ok(()),
                Err(e) => return Err(Ended::Refused(Refusal::new(e.reason(), e.to_string()))),
            };
            self.handle(packet).await?;
        }
    }

    async fn handle(&mut self, packet: Inbound) -> Result<(), Ended> {
        match packet {
            Inbound::Publish(publish) => self.publish(*publish).await,
            Inbound::PubAck(id) | Inbound::PubComp(id) => {
                self.acked(id.get(), false).await;
                Ok(())
            }
            Inbound::PubRec(id) => {
                if self.acked(id.get(), true).await {
                    self.encode(Outbound::PubRel(id))?;
                }
                Ok(())
            }
            Inbound::PubRel(id) => {
                let found = self.awaiting.release(id.get());
                self.dirty |= found && self.session_expiry.is_some();
                self.encode(Outbound::PubComp(id, found))
            }
            Inbound::Subscribe { packet_id, filters } => self.subscribe(packet_id, filters).await,
            Inbound::Unsubscribe { packet_id, filters } => {
                self.unsubscribe(packet_id, filters).await
            }
            Inbound::PingReq => self.encode(Outbound::PingResp),
            Inbound::Disconnect {
                with_will,
                session_expiry,
            } => {
                if let Some(expiry) = session_expiry {
                    // MQTT 5: a clean session cannot become persistent at DISCONNECT.
                    if self.session_expiry.is_some() || expiry == 0 {
                        self.session_expiry =
                            Some(expiry.min(self.shared.sessions.max_expiry())).filter(|s| *s > 0);
                    }
                }
                Err(Ended::Disconnect { with_will })
            }
            Inbound::Connect(_) => Err(Ended::Refused(Refusal::new(
                Reason::ProtocolError,
                "a second CONNECT on one connection",
            ))),
            Inbound::Unexpected(what) => Err(Ended::Refused(Refusal::new(
                Reason::ProtocolError,
                format!("{what} is not a packet a client sends to a broker"),
            ))),
        }
    }

    /// Queues `packet` to be written.
    pub(super) fn encode(&mut self, packet: Outbound) -> Result<(), Ended> {
        match self.codec.encode(packet, &mut self.out) {
            Ok(_) => Ok(()),
            Err(e) => Err(Ended::Refused(Refusal::new(
                Reason::ImplementationSpecificError,
                format!("encoding a packet: {e}"),
            ))),
        }
    }

    /// Hands what is encoded to the writer (waiting for room).
    async fn flush_out(&mut self) -> Result<(), Ended> {
        if self.out.is_empty() {
            return Ok(());
        }
        let bytes = self.out.split().freeze();
        tokio::select! {
            biased;
            sent = self.outbox.send(bytes) => sent.map_err(|_| Ended::Lost),
            () = self.shared.shutdown.cancelled() => Err(Ended::Shutdown),
            // The writer's queue is full and stays so: the client stopped reading.
            () = tokio::time::sleep(WRITE_STALL) => Err(Ended::Stalled),
        }
    }

    /// The persistent session to park, if there is one.
    fn into_session(self) -> Option<StoredSession> {
        self.session_expiry?;
        Some(self.session())
    }

    pub(super) async fn store_session(&mut self) {
        self.dirty = false;
        if self.session_expiry.is_none() {
            return;
        }
        let session = self.session();
        self.stored = true;
        if let Err(e) = self.shared.sessions.store(&self.client_id, &session).await {
            warn!(error = %e, "storing the MQTT session failed; it is kept in memory");
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// The next topic created; `None` when some were missed (look at them all again).
async fn recv_created(
    created: &mut Option<broadcast::Receiver<Arc<TopicLog>>>,
) -> Option<Arc<TopicLog>> {
    let Some(rx) = created else {
        return std::future::pending().await;
    };
    match rx.recv().await {
        Ok(log) => Some(log),
        Err(RecvError::Lagged(_)) => None,
        Err(RecvError::Closed) => {
            *created = None;
            std::future::pending().await
        }
    }
}
