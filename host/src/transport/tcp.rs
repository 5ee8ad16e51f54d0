//! TCP listeners for protocols that run over a byte stream (MQTT): plain, or TLS with
//! the broker's certificate, accepting client certificates from `auth.client_ca` as
//! the QUIC listener does (the certificate's subject CN names the principal).
//!
//! Unlike QUIC, TLS here also allows 1.2: the devices that speak MQTT often have TLS
//! stacks without 1.3.

use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

use super::TransportError;
use super::tls::{self, Identity};

/// A bound TCP listener.
#[derive(Debug)]
pub struct TcpListener(tokio::net::TcpListener);

impl TcpListener {
    /// Binds `addr` (port 0 picks a free port).
    pub async fn bind(addr: SocketAddr) -> Result<Self, TransportError> {
        tokio::net::TcpListener::bind(addr)
            .await
            .map(Self)
            .map_err(|source| TransportError::Bind { addr, source })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.0.local_addr()
    }

    /// The next connection; errors are per connection (a client that reset before
    /// it was accepted, too many open files), and the listener goes on.
    pub async fn accept(&self) -> std::io::Result<(TcpStream, SocketAddr)> {
        let (stream, peer) = self.0.accept().await?;
        // Small packets (acknowledgements) are latency-bound; the writer coalesces.
        stream.set_nodelay(true)?;
        Ok((stream, peer))
    }
}

/// TLS over TCP with the broker's identity.
#[derive(Clone)]
pub struct TcpTls(TlsAcceptor);

impl std::fmt::Debug for TcpTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TcpTls")
    }
}

impl TcpTls {
    /// TLS 1.2 and 1.3 with `identity`; client certificates chaining to `client_ca`
    /// are accepted (and optional) when it is given.
    pub fn new(identity: &Identity, client_ca: Option<&Path>) -> Result<Self, TransportError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| TransportError::Tls(e.to_string()))?;
        let config = match client_ca {
            Some(ca) => config.with_client_cert_verifier(tls::client_verifier(ca, provider)?),
            None => config.with_no_client_auth(),
        };
        let config = config
            .with_single_cert(identity.certs.clone(), identity.key.clone_key())
            .map_err(|e| TransportError::Tls(format!("certificate and key do not fit: {e}")))?;
        Ok(Self(TlsAcceptor::from(Arc::new(config))))
    }

    /// Runs the TLS handshake on `tcp`; the stream, and the subject CN of the client's
    /// certificate if it presented one.
    pub async fn accept(
        &self,
        tcp: TcpStream,
    ) -> Result<(ByteStream, Option<String>), TransportError> {
        let stream = self
            .0
            .accept(tcp)
            .await
            .map_err(|e| TransportError::Tls(format!("TLS handshake: {e}")))?;
        let name = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|certs| certs.first())
            .and_then(tls::common_name);
        Ok((ByteStream::Tls(Box::new(stream)), name))
    }
}

/// A connection's bytes: plain TCP or TLS over it.
#[derive(Debug)]
pub enum ByteStream {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP.
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl AsyncRead for ByteStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ByteStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
