//! QUIC transport: the only module that imports quinn and rustls.
//!
//! It hands the rest of the broker Quiver's own types: a [`Listener`] that yields
//! [`Connection`]s, and streams of typed frames ([`FrameReader`], [`FrameWriter`]).
//! TLS 1.3 only, ALPN `quiver/2`. `tcp.rs` is the same for byte-stream protocols
//! (MQTT): TCP listeners and TLS over TCP.

pub mod tcp;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use futures::StreamExt;
use quiver_protocol::codec::Codec;
use quiver_protocol::{ALPN, ClientFrame, FrameError, ServerFrame, WireError, frame};
use sha2::{Digest, Sha256};
use tokio_util::codec::FramedRead;

pub use tls::Identity;

/// Why the transport failed.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// Certificate or key trouble.
    #[error("TLS: {0}")]
    Tls(String),
    /// The UDP socket could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The peer closed the connection or it timed out.
    #[error("connection closed: {0}")]
    Closed(String),
    /// Writing to a stream failed (the peer stopped it or the connection is gone).
    #[error("stream closed: {0}")]
    Write(String),
}

/// Application close codes sent when the broker closes a connection.
#[derive(Debug, Clone, Copy)]
#[repr(u32)]
pub enum CloseCode {
    /// Nothing wrong.
    Normal = 0,
    /// The peer broke the protocol (bad handshake, unexpected stream).
    ProtocolViolation = 1,
    /// The broker is shutting down.
    ShuttingDown = 2,
    /// A limit was reached (limits.max_connections); the reason names it.
    LimitReached = 3,
}

/// Transport settings.
#[derive(Debug, Clone)]
pub struct TransportSettings {
    /// Concurrent bidirectional streams a client may open.
    pub max_streams: u32,
    /// Longest frame body accepted from clients.
    pub max_frame_len: usize,
    /// Close connections idle this long (clients send keep-alives more often).
    pub idle_timeout: Duration,
    /// CA certificates (PEM file) whose client certificates the broker accepts; with
    /// none, clients are not asked for a certificate.
    pub client_ca: Option<std::path::PathBuf>,
}

/// A bound QUIC endpoint accepting broker connections.
#[derive(Debug)]
pub struct Listener {
    endpoint: quinn::Endpoint,
    max_frame_len: usize,
}

impl Listener {
    /// Binds `addr` with the given identity.
    pub fn bind(
        addr: SocketAddr,
        identity: Identity,
        settings: &TransportSettings,
    ) -> Result<Self, TransportError> {
        let identity_secret = identity.key.secret_der().to_vec();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TransportError::Tls(e.to_string()))?;
        let tls = match &settings.client_ca {
            Some(ca) => tls.with_client_cert_verifier(tls::client_verifier(ca, provider)?),
            None => tls.with_no_client_auth(),
        };
        let mut tls = tls
            .with_single_cert(identity.certs, identity.key)
            .map_err(|e| TransportError::Tls(format!("certificate and key do not fit: {e}")))?;
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
            .map_err(|e| TransportError::Tls(e.to_string()))?;
        let endpoint_config = restart_aware_endpoint(&identity_secret);
        let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        let mut transport = quinn::TransportConfig::default();
        transport
            .max_concurrent_bidi_streams(settings.max_streams.into())
            .max_concurrent_uni_streams(0u32.into())
            .max_idle_timeout(Some(
                settings
                    .idle_timeout
                    .try_into()
                    .map_err(|_| TransportError::Tls("idle timeout out of range".into()))?,
            ));
        config.transport_config(Arc::new(transport));
        let bind_error = |source| TransportError::Bind { addr, source };
        let socket = std::net::UdpSocket::bind(addr).map_err(bind_error)?;
        let runtime = quinn::default_runtime()
            .ok_or_else(|| bind_error(std::io::Error::other("no async runtime")))?;
        let endpoint = quinn::Endpoint::new(endpoint_config, Some(config), socket, runtime)
            .map_err(bind_error)?;
        Ok(Self {
            endpoint,
            max_frame_len: settings.max_frame_len,
        })
    }

    /// The address actually bound (the real port when 0 was asked for).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// Waits for the next connection attempt; `None` once the listener is closed.
    pub async fn accept(&self) -> Option<Connecting> {
        let incoming = self.endpoint.accept().await?;
        Some(Connecting {
            incoming,
            max_frame_len: self.max_frame_len,
        })
    }

    /// Refuses new connections from now on; existing ones carry on.
    pub fn stop_accepting(&self) {
        self.endpoint.set_server_config(None);
    }

    /// Closes every connection with `code` and waits (up to `timeout`) for the peers
    /// to be told.
    pub async fn close(&self, code: CloseCode, reason: &str, timeout: Duration) {
        self.endpoint.close((code as u32).into(), reason.as_bytes());
        let _ = tokio::time::timeout(timeout, self.endpoint.wait_idle()).await;
    }
}

/// A connection attempt in progress.
#[derive(Debug)]
pub struct Connecting {
    incoming: quinn::Incoming,
    max_frame_len: usize,
}

impl Connecting {
    /// Completes the QUIC and TLS handshakes.
    pub async fn establish(self) -> Result<Connection, TransportError> {
        let conn = self
            .incoming
            .await
            .map_err(|e| TransportError::Closed(e.to_string()))?;
        Ok(Connection {
            conn,
            max_frame_len: self.max_frame_len,
        })
    }
}

/// An established client connection.
#[derive(Debug, Clone)]
pub struct Connection {
    conn: quinn::Connection,
    max_frame_len: usize,
}

impl Connection {
    /// The client's address.
    pub fn remote_addr(&self) -> SocketAddr {
        self.conn.remote_address()
    }

    /// Waits for the client to open its next stream; `Err` once the connection ends.
    pub async fn accept_stream(&self) -> Result<FrameStream, TransportError> {
        let (send, recv) = self
            .conn
            .accept_bi()
            .await
            .map_err(|e| TransportError::Closed(e.to_string()))?;
        Ok(FrameStream {
            reader: FrameReader(FramedRead::new(recv, Codec::new(self.max_frame_len))),
            writer: FrameWriter {
                send,
                buf: BytesMut::new(),
            },
        })
    }

    /// The subject common name of the client's certificate, when it presented one
    /// (the TLS handshake already verified it against the configured client CA).
    pub fn peer_common_name(&self) -> Option<String> {
        let certs = self.conn.peer_identity()?;
        let certs = certs.downcast_ref::<Vec<rustls_pki_types::CertificateDer<'static>>>()?;
        tls::common_name(certs.first()?)
    }

    /// Closes the connection with a code and reason.
    pub fn close(&self, code: CloseCode, reason: &str) {
        self.conn.close((code as u32).into(), reason.as_bytes());
    }
}

/// Both halves of a client-opened stream.
#[derive(Debug)]
pub struct FrameStream {
    /// Frames from the client.
    pub reader: FrameReader,
    /// Frames to the client.
    pub writer: FrameWriter,
}

/// What the next read from a stream brought.
#[derive(Debug)]
pub enum Incoming {
    /// A well-formed frame.
    Frame(ClientFrame),
    /// A frame that could not be decoded; the stream is still in sync.
    Bad(FrameError),
    /// The client finished the stream or the connection is gone.
    End,
}

/// Reads client frames from a stream.
#[derive(Debug)]
pub struct FrameReader(FramedRead<quinn::RecvStream, Codec<ClientFrame, ServerFrame>>);

impl FrameReader {
    /// The next frame. Cancel-safe: no frame is lost if the future is dropped.
    pub async fn next(&mut self) -> Incoming {
        match self.0.next().await {
            Some(Ok(Ok(frame))) => Incoming::Frame(frame),
            Some(Ok(Err(e))) => Incoming::Bad(e),
            Some(Err(_)) | None => Incoming::End,
        }
    }
}

/// Writes server frames to a stream, coalescing fed frames into one write.
#[derive(Debug)]
pub struct FrameWriter {
    send: quinn::SendStream,
    buf: BytesMut,
}

impl FrameWriter {
    /// Queues a frame for the next [`flush`](Self::flush).
    pub fn feed(&mut self, frame: &ServerFrame) {
        // Invariant: server frames are bounded by the limits that produced them (a
        // reply, an error, or a slice of at most a few MiB of records), far below the
        // 4 GiB a length prefix holds, so encoding cannot fail.
        frame::encode(frame, &mut self.buf).expect("server frames fit a length prefix");
    }

    /// Bytes fed and not yet flushed.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Writes everything fed so far. Cancel-safe: a flush dropped part-way (on
    /// shutdown, say) leaves what it had not written for the next one, so a last frame
    /// fed after it still follows whole frames.
    pub async fn flush(&mut self) -> Result<(), TransportError> {
        while !self.buf.is_empty() {
            // `write` is cancel-safe where `write_all` is not: nothing is written
            // unless it returns.
            match self.send.write(&self.buf).await {
                Ok(written) => self.buf.advance(written),
                Err(e) => {
                    self.buf.clear();
                    return Err(TransportError::Write(e.to_string()));
                }
            }
        }
        Ok(())
    }

    /// Feeds and flushes one frame.
    pub async fn send(&mut self, frame: &ServerFrame) -> Result<(), TransportError> {
        self.feed(frame);
        self.flush().await
    }

    /// Ends the stream after what was written.
    pub fn finish(&mut self) {
        let _ = self.send.finish();
    }

    /// Ends the stream and waits (up to `timeout`) until the peer has read it all, so
    /// that closing the connection next does not discard a last error frame.
    pub async fn finish_and_wait(&mut self, timeout: Duration) {
        let _ = self.send.finish();
        let _ = tokio::time::timeout(timeout, self.send.stopped()).await;
    }

    /// Sends a last error and ends the stream, waiting (briefly) until the client has
    /// it: on shutdown the connection closes next, which would discard unacknowledged
    /// data.
    /// A client that does not read gets the stream reset instead once
    /// [`LAST_WORDS_TIMEOUT`] has passed.
    pub async fn refuse(&mut self, error: WireError) {
        let code = error.code;
        let last = ServerFrame::Error(error);
        match tokio::time::timeout(LAST_WORDS_TIMEOUT, self.send(&last)).await {
            Ok(Ok(())) => self.finish_and_wait(LAST_WORDS_TIMEOUT).await,
            Ok(Err(_)) => {}
            Err(_) => {
                let _ = self.send.reset(quinn::VarInt::from(u16::from(code)));
            }
        }
    }
}

/// How long a last error frame may take to be acknowledged before the stream is left.
const LAST_WORDS_TIMEOUT: Duration = Duration::from_secs(1);

/// An endpoint whose connection ids and stateless-reset tokens are derived from the
/// broker's TLS key instead of chosen at random, so the same broker started again
/// recognises its predecessor's connection ids and answers a client still talking on
/// one with a stateless reset (RFC 9000, 10.3). The client then learns at its next
/// packet that the connection is gone, instead of after its idle timeout, and
/// reconnects at once: this is what makes a restart after `kill -9` quick to ride
/// through. The secrets are one-way hashes of the key, each under its own label.
fn restart_aware_endpoint(tls_key: &[u8]) -> quinn::EndpointConfig {
    let derive = |label: &[u8]| -> [u8; 32] {
        let mut hasher = Sha256::new();
        hasher.update(label);
        hasher.update(tls_key);
        hasher.finalize().into()
    };
    let reset = derive(b"quiver stateless reset key\0");
    let cid = derive(b"quiver connection id key\0");
    let cid_key = u64::from_le_bytes(cid[..8].try_into().expect("8 of 32 bytes"));
    let mut config = quinn::EndpointConfig::new(Arc::new(ring::hmac::Key::new(
        ring::hmac::HMAC_SHA256,
        &reset,
    )));
    config.cid_generator(move || {
        Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
    });
    config
}
