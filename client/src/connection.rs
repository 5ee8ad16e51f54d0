//! Connecting to a broker, and the request/reply multiplexer of the control stream.
//!
//! One control stream carries every request of a client. Callers encode their own
//! frames (so a large publish is encoded on the caller's task), hand them to a writer
//! task that coalesces whatever is queued into one write, and wait on a oneshot that
//! the reader task completes when the reply with the same id arrives. Many requests are
//! therefore in flight at once (pipelining), from any number of tasks. One-record
//! publishes are handed over unencoded, so the writer can merge those queued together
//! into one frame (`outgoing.rs`).
//!
//! Invariant: once the connection is lost, `Pending` is closed, so no request can wait
//! for a reply that will never come.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use quiver_protocol::codec::Codec;
use quiver_protocol::record::headers;
use quiver_protocol::{
    ALPN, ClientFrame, ClientHello, ErrorCode, Limits, NewRecord, Op, OpReply, PROTOCOL_VERSION,
    PluginInfo, PluginStatus, PublishId, Receipt, Request, ServerFrame, Stage, StartAt, Subscribe,
    TopicConfig, TopicInfo, WireError, frame,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::FramedRead;
use tracing::{debug, warn};

use crate::error::{Error, Result};
use crate::outgoing::{self, EachLimits, Outgoing, ReceiptReply, Single};
use crate::subscription::{self, Record, Subscription};

/// The largest frame this client accepts from a server.
const MAX_INCOMING_FRAME: usize = frame::DEFAULT_MAX_FRAME_LEN;

/// Options for connecting; start from [`Client::builder`].
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    roots: rustls::RootCertStore,
    server_name: Option<String>,
    client_name: String,
    connect_timeout: Duration,
    idle_timeout: Duration,
    producer: Option<u64>,
    token: Option<String>,
    identity: Option<ClientIdentity>,
}

/// A client certificate chain and its key, for brokers that authenticate clients by
/// mutual TLS.
#[derive(Debug)]
struct ClientIdentity {
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl Clone for ClientIdentity {
    fn clone(&self) -> Self {
        Self {
            certs: self.certs.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl Default for ClientBuilder {
    fn default() -> Self {
        Self {
            roots: rustls::RootCertStore::empty(),
            server_name: None,
            client_name: format!("quiver-client/{}", env!("CARGO_PKG_VERSION")),
            connect_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(15),
            producer: None,
            token: None,
            identity: None,
        }
    }
}

impl ClientBuilder {
    /// Trusts the certificates in a PEM file: the broker's self-signed certificate
    /// (`<data dir>/tls/cert.pem`) or the CA that issued the broker's certificate.
    pub fn ca_file(self, path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let pem = std::fs::read(path).map_err(|e| Error::CaFile {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        self.ca_pem(&pem).map_err(|e| Error::CaFile {
            path: path.to_owned(),
            reason: e.to_string(),
        })
    }

    /// Trusts the certificates in PEM text.
    pub fn ca_pem(mut self, pem: &[u8]) -> Result<Self> {
        let mut added = 0;
        for cert in CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|e| Error::Tls(format!("reading PEM: {e}")))?;
            self.roots
                .add(cert)
                .map_err(|e| Error::Tls(format!("unusable certificate: {e}")))?;
            added += 1;
        }
        if added == 0 {
            return Err(Error::Tls("no certificate found in the PEM data".into()));
        }
        Ok(self)
    }

    /// The name to verify the server's certificate against; defaults to the host part
    /// of the address passed to [`ClientBuilder::connect`].
    pub fn server_name(mut self, name: impl Into<String>) -> Self {
        self.server_name = Some(name.into());
        self
    }

    /// How this client names itself in the broker's logs.
    pub fn client_name(mut self, name: impl Into<String>) -> Self {
        self.client_name = name.into();
        self
    }

    /// How long connecting and the handshake may take.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long the broker may stay silent before the connection counts as lost (the
    /// client sends keep-alives well within it). Pending requests then fail with
    /// [`Error::ConnectionLost`].
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// The producer id in this client's publish ids (default: random). Two clients
    /// must not share one while both publish: their sequence numbers would collide.
    pub fn producer_id(mut self, producer: u64) -> Self {
        self.producer = Some(producer);
        self
    }

    /// Authenticates with a token (`quiver auth token create`). Sent in the hello,
    /// inside TLS; it takes precedence over a client certificate.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Presents a client certificate (PEM chain and PEM private key) for brokers that
    /// map certificate subjects to principals (mutual TLS).
    pub fn client_cert_pem(mut self, cert_pem: &[u8], key_pem: &[u8]) -> Result<Self> {
        let certs = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Error::Tls(format!("reading the client certificate: {e}")))?;
        if certs.is_empty() {
            return Err(Error::Tls("no client certificate in the PEM data".into()));
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem)
            .map_err(|e| Error::Tls(format!("reading the client key: {e}")))?;
        self.identity = Some(ClientIdentity { certs, key });
        Ok(self)
    }

    /// Presents the client certificate and key in these PEM files; see
    /// [`ClientBuilder::client_cert_pem`].
    pub fn client_cert_files(self, cert: impl AsRef<Path>, key: impl AsRef<Path>) -> Result<Self> {
        let read = |path: &Path| {
            std::fs::read(path).map_err(|e| Error::Tls(format!("reading {}: {e}", path.display())))
        };
        let (cert, key) = (read(cert.as_ref())?, read(key.as_ref())?);
        self.client_cert_pem(&cert, &key)
    }

    /// Connects to a broker at `addr` (`host:port`) and performs the handshake.
    pub async fn connect(self, addr: &str) -> Result<Client> {
        let timeout = self.connect_timeout;
        tokio::time::timeout(timeout, self.connect_inner(addr))
            .await
            .map_err(|_| Error::Connect {
                addr: addr.to_owned(),
                reason: format!("no answer within {timeout:?}"),
            })?
    }

    async fn connect_inner(self, addr: &str) -> Result<Client> {
        if self.roots.is_empty() {
            return Err(Error::NoCa);
        }
        let (socket_addr, host) = resolve(addr).await?;
        let server_name = self.server_name.clone().unwrap_or(host);
        let config = self.quic_config()?;
        let bind: SocketAddr = if socket_addr.is_ipv6() {
            "[::]:0".parse().expect("a valid literal")
        } else {
            "0.0.0.0:0".parse().expect("a valid literal")
        };
        let connect_error = |reason: String| Error::Connect {
            addr: addr.to_owned(),
            reason,
        };
        let endpoint = quinn::Endpoint::client(bind).map_err(|e| connect_error(e.to_string()))?;
        let conn = endpoint
            .connect_with(config, socket_addr, &server_name)
            .map_err(|e| connect_error(e.to_string()))?
            .await
            .map_err(|e| connect_error(e.to_string()))?;
        // A broker that closes the connection at once (at its connection limit) says
        // why in the close reason.
        let closed = |e: &dyn std::fmt::Display| {
            connect_error(conn.close_reason().map_or(e.to_string(), |r| r.to_string()))
        };
        let (mut send, recv) = conn.open_bi().await.map_err(|e| closed(&e))?;
        let hello = ClientFrame::Hello(ClientHello {
            version: PROTOCOL_VERSION,
            client: self.client_name,
            token: self.token,
        });
        send.write_all(&encode(&hello)?)
            .await
            .map_err(|e| closed(&e))?;
        let mut frames = FramedRead::new(
            recv,
            Codec::<ServerFrame, ClientFrame>::new(MAX_INCOMING_FRAME),
        );
        let hello = next_frame(&mut frames)
            .await
            .map_err(|e| lost_reason(&conn, e))?;
        let (limits, principal) = match hello {
            ServerFrame::Hello(hello) => (hello.limits, hello.principal),
            ServerFrame::Error(e) => return Err(Error::Server(e)),
            other => return Err(Error::Protocol(format!("expected a hello, got {other:?}"))),
        };
        debug!(%addr, ?limits, ?principal, "connected");

        let producer = match self.producer {
            Some(producer) => producer,
            None => {
                let mut bytes = [0u8; 8];
                getrandom::fill(&mut bytes)
                    .map_err(|e| Error::Tls(format!("no randomness for a producer id: {e}")))?;
                u64::from_le_bytes(bytes)
            }
        };
        let pending = Arc::new(Pending::default());
        let (writes, write_rx) = mpsc::unbounded_channel();
        let each = EachLimits {
            bytes: usize::try_from(limits.max_frame_len)
                .unwrap_or(usize::MAX)
                .saturating_sub(EACH_FRAME_OVERHEAD)
                .min(outgoing::MAX_EACH_BYTES),
            records: limits.max_batch_records.max(1) as usize,
            max_frame_len: limits.max_frame_len,
        };
        tokio::spawn(outgoing::write_frames(
            send,
            write_rx,
            Arc::clone(&pending),
            each,
        ));
        tokio::spawn(read_replies(frames, Arc::clone(&pending), conn.clone()));
        Ok(Client {
            shared: Arc::new(Shared {
                endpoint,
                conn,
                limits,
                principal,
                writes,
                each,
                pending,
                producer,
                sequence: AtomicU64::new(0),
            }),
        })
    }

    fn quic_config(&self) -> Result<quinn::ClientConfig> {
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(crypto_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| Error::Tls(e.to_string()))?
            .with_root_certificates(self.roots.clone());
        let mut tls = match &self.identity {
            Some(identity) => tls
                .with_client_auth_cert(identity.certs.clone(), identity.key.clone_key())
                .map_err(|e| Error::Tls(format!("unusable client certificate: {e}")))?,
            None => tls.with_no_client_auth(),
        };
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
            .map_err(|e| Error::Tls(e.to_string()))?;
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        let mut transport = quinn::TransportConfig::default();
        let idle = quinn::IdleTimeout::try_from(self.idle_timeout).map_err(|_| {
            Error::Tls(format!(
                "idle timeout {:?} is out of range",
                self.idle_timeout
            ))
        })?;
        transport
            .max_idle_timeout(Some(idle))
            .keep_alive_interval(Some((self.idle_timeout / 3).min(Duration::from_secs(5))));
        config.transport_config(Arc::new(transport));
        Ok(config)
    }
}

/// ring's provider with AES-128-GCM offered first. Brokers take the client's order, and
/// rustls's default puts AES-256-GCM first; AES-128-GCM is TLS 1.3's mandatory suite,
/// as strong as its key needs to be here, and four fewer AES rounds on every packet
/// (docs/performance.md measures the difference).
fn crypto_provider() -> rustls::crypto::CryptoProvider {
    let mut provider = rustls::crypto::ring::default_provider();
    provider
        .cipher_suites
        .sort_by_key(|suite| suite.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    provider
}

/// Resolves `host:port`, returning the address and the host part (for TLS).
async fn resolve(addr: &str) -> Result<(SocketAddr, String)> {
    let invalid = |reason: &str| Error::InvalidAddress {
        addr: addr.to_owned(),
        reason: reason.to_owned(),
    };
    let (host, _port) = addr
        .rsplit_once(':')
        .ok_or_else(|| invalid("expected host:port"))?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let socket_addr = tokio::net::lookup_host(addr)
        .await
        .map_err(|e| invalid(&e.to_string()))?
        .next()
        .ok_or_else(|| invalid("the name resolves to no address"))?;
    Ok((socket_addr, host))
}

pub(crate) fn encode(msg: &ClientFrame) -> Result<Bytes> {
    let mut buf = BytesMut::new();
    frame::encode(msg, &mut buf).map_err(|e| Error::Protocol(e.to_string()))?;
    Ok(buf.freeze())
}

pub(crate) type Frames = FramedRead<quinn::RecvStream, Codec<ServerFrame, ClientFrame>>;

/// The next frame from the server, with transport and decoding errors as [`Error`]s.
pub(crate) async fn next_frame(frames: &mut Frames) -> Result<ServerFrame> {
    match frames.next().await {
        Some(Ok(Ok(frame))) => Ok(frame),
        Some(Ok(Err(e))) => Err(Error::Protocol(e.to_string())),
        Some(Err(e)) => Err(Error::ConnectionLost(e.to_string())),
        None => Err(Error::ConnectionLost("the server closed the stream".into())),
    }
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
struct PendingState {
    replies: HashMap<u64, Waiter>,
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
    fn answer(self, result: Result<OpReply, WireError>) {
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
    fn lock(&self) -> std::sync::MutexGuard<'_, PendingState> {
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

    fn close(&self, reason: String) {
        let mut state = self.lock();
        state.closed = Some(reason);
        state.replies.clear(); // waiters see their sender dropped
    }

    fn lost(&self) -> Error {
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

async fn read_replies(mut frames: Frames, pending: Arc<Pending>, conn: quinn::Connection) {
    let reason = loop {
        match next_frame(&mut frames).await {
            Ok(ServerFrame::Reply(reply)) => {
                let waiter = pending.lock().replies.remove(&reply.id);
                if let Some(waiter) = waiter {
                    waiter.answer(reply.result);
                }
            }
            Ok(ServerFrame::Error(e)) => {
                // Not tied to a request: the server could not read something we sent.
                warn!(error = %e, "server reported a stream error");
                if e.code == quiver_protocol::ErrorCode::ShuttingDown {
                    break e.to_string();
                }
            }
            Ok(other) => break format!("unexpected frame on the control stream: {other:?}"),
            Err(e @ Error::ConnectionLost(_)) => match lost_reason(&conn, e) {
                Error::ConnectionLost(reason) => break reason,
                other => break other.to_string(),
            },
            Err(e) => break e.to_string(),
        }
    };
    debug!(%reason, "control stream ended");
    pending.close(reason);
}

/// What every clone of a [`Client`] shares.
#[derive(Debug)]
pub(crate) struct Shared {
    endpoint: quinn::Endpoint,
    pub(crate) conn: quinn::Connection,
    limits: Limits,
    principal: Option<String>,
    writes: mpsc::UnboundedSender<Outgoing>,
    /// What one `PublishEach` may hold.
    each: EachLimits,
    pending: Arc<Pending>,
    producer: u64,
    sequence: AtomicU64,
}

impl Shared {
    /// Encodes a request, registers it and hands it to the writer task.
    fn queue(&self, op: Op) -> Result<oneshot::Receiver<Result<OpReply, WireError>>> {
        let (tx, rx) = oneshot::channel();
        self.queue_frame(op, Waiter::One(tx))?;
        Ok(rx)
    }

    /// Encodes a request, checking its size against the broker's limit, and hands it
    /// to the writer task with who waits for its reply.
    fn queue_frame(&self, op: Op, waiter: Waiter) -> Result<()> {
        let id = self.pending.next_id();
        let frame = encode(&ClientFrame::Request(Request { id, op }))?;
        let body_len = frame.len() - frame::LENGTH_PREFIX_LEN;
        if body_len as u64 > self.limits.max_frame_len {
            return Err(Error::TooLarge {
                size: body_len,
                max: self.limits.max_frame_len,
            });
        }
        self.pending.insert(id, waiter)?;
        if self.writes.send(Outgoing::Frame(frame)).is_err() {
            self.pending.lock().replies.remove(&id);
            return Err(self.pending.lost());
        }
        Ok(())
    }

    /// Hands a one-record publish to the writer task, which may merge it with the
    /// ones queued after it. A record too large to share a frame goes in one of its
    /// own, encoded here, so its size is checked exactly.
    fn queue_single(&self, topic: &str, record: NewRecord, id: PublishId) -> Result<ReceiptReply> {
        let (reply, rx) = oneshot::channel();
        let bound = outgoing::encoded_bound(&record);
        if bound > self.each.bytes {
            let op = Op::PublishEach {
                topic: topic.to_owned(),
                records: vec![record],
                first_id: id,
            };
            self.queue_frame(op, Waiter::Each(vec![reply]))?;
            return Ok(rx);
        }
        let single = Single {
            topic: topic.to_owned(),
            record,
            id,
            bound,
            reply,
        };
        if self.writes.send(Outgoing::Single(single)).is_err() {
            return Err(self.pending.lost());
        }
        Ok(rx)
    }
}

/// Room for a `PublishEach` frame's own fields (request id, topic, first id) beside
/// its records.
const EACH_FRAME_OVERHEAD: usize = 1024;

impl Drop for Shared {
    fn drop(&mut self) {
        self.conn.close(0u32.into(), b"client dropped");
    }
}

/// A connection to a Quiver broker. Cheap to clone; clones share the connection, and
/// any number of tasks may use it at once.
///
/// ```no_run
/// # async fn demo() -> quiver_client::Result<()> {
/// use quiver_client::{Client, NewRecord, Retention};
///
/// let client = Client::builder()
///     .ca_file("quiver-data/tls/cert.pem")?
///     .connect("127.0.0.1:7848")
///     .await?;
/// client.create_topic("sensors.eu.temp", Retention::default()).await?;
/// let offset = client.publish("sensors.eu.temp", NewRecord::new("21.5")).await?;
/// println!("stored at offset {offset}");
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Client {
    pub(crate) shared: Arc<Shared>,
}

impl Client {
    /// Starts configuring a connection.
    pub fn builder() -> ClientBuilder {
        ClientBuilder::default()
    }

    /// The limits the server announced.
    pub fn limits(&self) -> Limits {
        self.shared.limits
    }

    /// The principal the broker authenticated this client as; `None` when it is
    /// anonymous.
    pub fn principal(&self) -> Option<&str> {
        self.shared.principal.as_deref()
    }

    /// Queues one request for sending, now, and returns a future of its reply.
    ///
    /// Queueing happens in this call, not when the future is first polled, so requests
    /// go out in the order they were made however their futures are polled.
    pub(crate) fn call(&self, op: Op) -> impl Future<Output = Result<OpReply>> + Send + 'static {
        let shared = Arc::clone(&self.shared);
        let queued = shared.queue(op);
        async move {
            match queued?.await {
                Ok(Ok(reply)) => Ok(reply),
                Ok(Err(e)) => Err(Error::Server(e)),
                Err(_) => Err(shared.pending.lost()),
            }
        }
    }

    /// Creates a topic with retention limits (a [`Retention`](crate::Retention)) or full settings (a
    /// [`TopicConfig`]).
    pub async fn create_topic(
        &self,
        name: &str,
        config: impl Into<TopicConfig>,
    ) -> Result<TopicInfo> {
        let op = Op::CreateTopic {
            name: name.to_owned(),
            config: config.into(),
        };
        match self.call(op).await? {
            OpReply::Topic(info) => Ok(info),
            other => Err(unexpected(other)),
        }
    }

    /// Deletes a topic and all its records.
    pub async fn delete_topic(&self, name: &str) -> Result<()> {
        match self
            .call(Op::DeleteTopic {
                name: name.to_owned(),
            })
            .await?
        {
            OpReply::Deleted => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// Describes one topic.
    pub async fn describe_topic(&self, name: &str) -> Result<TopicInfo> {
        match self
            .call(Op::DescribeTopic {
                name: name.to_owned(),
            })
            .await?
        {
            OpReply::Topic(info) => Ok(info),
            other => Err(unexpected(other)),
        }
    }

    /// Lists every topic, sorted by name.
    pub async fn list_topics(&self) -> Result<Vec<TopicInfo>> {
        match self.call(Op::ListTopics).await? {
            OpReply::Topics(topics) => Ok(topics),
            other => Err(unexpected(other)),
        }
    }

    /// Publishes one record; the future resolves to its offset once it is durable.
    ///
    /// The record is queued for sending by this call, so records published one after
    /// the other keep that order in the topic even while many are in flight. Memory:
    /// each queued record is held until its future resolves or is dropped.
    ///
    /// On a topic whose ingress plugins may drop, route or split records, this fails
    /// with [`Error::Transformed`] when the record did not land in the topic as one
    /// record; [`publish_batch`](Client::publish_batch) returns the full receipt.
    pub fn publish(
        &self,
        topic: &str,
        record: impl Into<NewRecord>,
    ) -> impl Future<Output = Result<u64>> + Send + 'static {
        let shared = Arc::clone(&self.shared);
        let queued = shared.queue_single(topic, record.into(), self.next_publish_id());
        async move {
            let receipt = match queued?.await {
                Ok(Ok(receipt)) => receipt,
                Ok(Err(e)) => return Err(Error::Server(e)),
                Err(_) => return Err(shared.pending.lost()),
            };
            match receipt.count {
                1 => Ok(receipt.base_offset),
                _ => Err(Error::Transformed(Box::new(receipt))),
            }
        }
    }

    /// Publishes records as one batch, all or nothing, and resolves once everything is
    /// durable. Without ingress plugins the records get consecutive offsets in the
    /// topic ([`Receipt::offsets`]); with them, the receipt also says what was routed,
    /// dead-lettered or dropped. Queued by this call, like [`publish`](Client::publish).
    pub fn publish_batch(
        &self,
        topic: &str,
        records: Vec<NewRecord>,
    ) -> impl Future<Output = Result<Receipt>> + Send + 'static {
        self.publish_batch_with_id(topic, records, self.next_publish_id())
    }

    /// A fresh id for a publish: this client's producer id and its next sequence
    /// number. Every publish gets one; take one yourself to retry a publish safely.
    pub fn next_publish_id(&self) -> PublishId {
        PublishId {
            producer: self.shared.producer,
            sequence: self.shared.sequence.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// Publishes under a given id. Publishing again with the same id (after a timeout
    /// or a lost connection, from this client or another) is safe: within the broker's
    /// dedup window the retry gets the first publish's receipt and nothing is
    /// appended twice, even across a broker restart.
    pub fn publish_batch_with_id(
        &self,
        topic: &str,
        records: Vec<NewRecord>,
        id: PublishId,
    ) -> impl Future<Output = Result<Receipt>> + Send + 'static {
        let reply = self.call(Op::Publish {
            topic: topic.to_owned(),
            records,
            id: Some(id),
        });
        async move {
            match reply.await? {
                OpReply::Published(receipt) => Ok(receipt),
                other => Err(unexpected(other)),
            }
        }
    }

    /// Deploys a plugin: the broker validates the component against Quiver's plugin
    /// world, compiles it and stores it with its sha256. `version` defaults to the next
    /// number.
    pub async fn deploy_plugin(
        &self,
        name: &str,
        wasm: impl Into<Bytes>,
        version: Option<&str>,
    ) -> Result<PluginInfo> {
        let op = Op::DeployPlugin {
            name: name.to_owned(),
            version: version.map(str::to_owned),
            wasm: wasm.into(),
        };
        self.plugin_reply(op).await
    }

    /// Upgrades a deployed plugin everywhere it is attached, atomically: each batch of
    /// records is processed wholly by the old or wholly by the new version.
    pub async fn upgrade_plugin(
        &self,
        name: &str,
        wasm: impl Into<Bytes>,
        version: Option<&str>,
    ) -> Result<PluginInfo> {
        let op = Op::UpgradePlugin {
            name: name.to_owned(),
            version: version.map(str::to_owned),
            wasm: wasm.into(),
        };
        self.plugin_reply(op).await
    }

    async fn plugin_reply(&self, op: Op) -> Result<PluginInfo> {
        match self.call(op).await? {
            OpReply::Plugin(info) => Ok(info),
            other => Err(unexpected(other)),
        }
    }

    /// Removes a plugin that is attached to no topic, with its state.
    pub async fn remove_plugin(&self, name: &str) -> Result<()> {
        match self
            .call(Op::RemovePlugin {
                name: name.to_owned(),
            })
            .await?
        {
            OpReply::Deleted => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// Lists deployed plugins, sorted by name.
    pub async fn list_plugins(&self) -> Result<Vec<PluginInfo>> {
        match self.call(Op::ListPlugins).await? {
            OpReply::Plugins(plugins) => Ok(plugins),
            other => Err(unexpected(other)),
        }
    }

    /// A plugin's attachments and their figures (calls, records, errors, timings,
    /// quarantine).
    pub async fn plugin_status(&self, name: &str) -> Result<PluginStatus> {
        match self
            .call(Op::PluginStatus {
                name: name.to_owned(),
            })
            .await?
        {
            OpReply::PluginStatus(status) => Ok(status),
            other => Err(unexpected(other)),
        }
    }

    /// Adds a stage to the end of a topic's ingress pipeline; returns the topic.
    pub async fn attach_plugin(&self, topic: &str, stage: Stage) -> Result<TopicInfo> {
        let op = Op::AttachPlugin {
            topic: topic.to_owned(),
            stage,
        };
        match self.call(op).await? {
            OpReply::Topic(info) => Ok(info),
            other => Err(unexpected(other)),
        }
    }

    /// Removes a plugin's stage from a topic's ingress pipeline; returns the topic.
    pub async fn detach_plugin(&self, topic: &str, plugin: &str) -> Result<TopicInfo> {
        let op = Op::DetachPlugin {
            topic: topic.to_owned(),
            plugin: plugin.to_owned(),
        };
        match self.call(op).await? {
            OpReply::Topic(info) => Ok(info),
            other => Err(unexpected(other)),
        }
    }

    /// Subscribes to a topic or pattern (`sensors.*.temp`, `sensors.>`).
    pub async fn subscribe(
        &self,
        pattern: &str,
        options: SubscribeOptions,
    ) -> Result<Subscription> {
        let window = options.window.max(1);
        let subscribe = ClientFrame::Subscribe(Subscribe {
            pattern: pattern.to_owned(),
            from: options.from,
            credit: window,
            pipeline: options.pipeline,
        });
        let (send, frames) = self
            .open_stream(&subscribe, ServerFrame::Subscribed)
            .await?;
        Ok(subscription::start(self.clone(), send, frames, window))
    }

    /// Opens a stream, sends its first frame and waits for the server to accept it
    /// (with `accepted`) or refuse it (with an error).
    pub(crate) async fn open_stream(
        &self,
        first: &ClientFrame,
        accepted: ServerFrame,
    ) -> Result<(quinn::SendStream, Frames)> {
        let (mut send, recv) = self
            .shared
            .conn
            .open_bi()
            .await
            .map_err(|e| Error::ConnectionLost(e.to_string()))?;
        send.write_all(&encode(first)?)
            .await
            .map_err(|e| Error::ConnectionLost(e.to_string()))?;
        let mut frames = FramedRead::new(recv, Codec::new(MAX_INCOMING_FRAME));
        match next_frame(&mut frames).await? {
            frame if frame == accepted => Ok((send, frames)),
            ServerFrame::Error(e) => Err(Error::Server(e)),
            other => Err(Error::Protocol(format!(
                "expected {accepted:?}, got {other:?}"
            ))),
        }
    }

    /// Publishes `record` to `topic` as a request and waits up to `timeout` for a
    /// responder's reply. The request is stored like any record, with a
    /// `quiver-reply-to` header naming where the reply goes; it fails at once with
    /// [`ErrorCode::NoResponders`](quiver_protocol::ErrorCode::NoResponders) when
    /// nothing consumes the topic, and with
    /// [`ErrorCode::RequestTimeout`](quiver_protocol::ErrorCode::RequestTimeout) when
    /// no reply comes in time.
    pub async fn request(
        &self,
        topic: &str,
        record: impl Into<NewRecord>,
        timeout: Duration,
    ) -> Result<NewRecord> {
        let op = Op::Request {
            topic: topic.to_owned(),
            record: record.into(),
            timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
        };
        match self.call(op).await? {
            OpReply::Response(reply) => Ok(reply),
            other => Err(unexpected(other)),
        }
    }

    /// Answers a request received on a subscription or as a group member. Fails with
    /// [`Error::NotARequest`] if the record has no `quiver-reply-to` header, and with
    /// [`ErrorCode::NoRequester`](quiver_protocol::ErrorCode::NoRequester) when the
    /// requester is gone (it timed out, or another responder answered first).
    pub async fn reply(&self, request: &Record, response: impl Into<NewRecord>) -> Result<()> {
        let to = request
            .header(headers::REPLY_TO)
            .ok_or(Error::NotARequest)?;
        let op = Op::Reply {
            to: String::from_utf8_lossy(to).into_owned(),
            record: response.into(),
        };
        match self.call(op).await? {
            OpReply::Replied => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// Closes the connection, waiting briefly for the close to reach the server.
    pub async fn close(&self) {
        self.shared.conn.close(0u32.into(), b"client closed");
        let _ =
            tokio::time::timeout(Duration::from_secs(1), self.shared.endpoint.wait_idle()).await;
    }
}

pub(crate) fn unexpected(reply: OpReply) -> Error {
    Error::Protocol(format!("unexpected reply {reply:?}"))
}

/// How a subscription starts, how far ahead the server may send, and which plugins
/// shape this subscriber's view.
#[derive(Debug, Clone)]
pub struct SubscribeOptions {
    /// Where to start in each topic that matches now (topics created later are read
    /// from their beginning). Default: [`StartAt::Latest`].
    pub from: StartAt,
    /// Records the server may send before this subscriber consumes them: the most this
    /// client buffers. Default: 1024.
    pub window: u32,
    /// Plugin stages the broker runs on delivery, for this subscriber only. Default:
    /// none.
    pub pipeline: Vec<Stage>,
}

impl Default for SubscribeOptions {
    fn default() -> Self {
        Self {
            from: StartAt::Latest,
            window: 1024,
            pipeline: Vec::new(),
        }
    }
}

impl SubscribeOptions {
    /// Options starting at `from`, with the default window.
    pub fn from(from: StartAt) -> Self {
        Self {
            from,
            ..Self::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use rustls::CipherSuite;

    use super::crypto_provider;

    #[test]
    fn aes_128_gcm_is_offered_first_and_nothing_is_dropped() {
        let suites = |p: rustls::crypto::CryptoProvider| {
            p.cipher_suites
                .iter()
                .map(|s| s.suite())
                .collect::<Vec<_>>()
        };
        let ours = suites(crypto_provider());
        let mut default = suites(rustls::crypto::ring::default_provider());
        assert_eq!(ours.first(), Some(&CipherSuite::TLS13_AES_128_GCM_SHA256));
        let mut sorted = ours.clone();
        sorted.sort_by_key(|s| u16::from(*s));
        default.sort_by_key(|s| u16::from(*s));
        assert_eq!(sorted, default, "the same suites, in another order");
    }
}
