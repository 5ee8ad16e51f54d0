//! Connecting to a broker: TLS 1.3 over QUIC with the broker's ALPN, the client's
//! identity (a token or a certificate), and the version handshake on the control
//! stream; then the connection is the multiplexer's (`mux.rs`).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use quiver_protocol::{ALPN, ClientFrame, ClientHello, PROTOCOL_VERSION, ServerFrame};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tracing::debug;

use super::mux::{Handshaken, Mux};
use super::pending::lost_reason;
use super::stream::{FrameReader, FrameSender};
use crate::client::Client;
use crate::error::{Error, Result};

impl Client {
    /// Starts configuring a connection.
    pub fn builder() -> ClientBuilder {
        ClientBuilder::default()
    }
}

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
        let (send, recv) = conn.open_bi().await.map_err(|e| closed(&e))?;
        let mut send = FrameSender::new(send);
        let hello = ClientFrame::Hello(ClientHello {
            version: PROTOCOL_VERSION,
            client: self.client_name,
            token: self.token,
        });
        send.send(&hello).await.map_err(|e| match e {
            Error::ConnectionLost(reason) => closed(&reason),
            other => other,
        })?;
        let mut frames = FrameReader::new(recv);
        let hello = frames.next().await.map_err(|e| lost_reason(&conn, e))?;
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
        let mux = Mux::start(Handshaken {
            endpoint,
            conn,
            send,
            frames,
            limits,
            principal,
            producer,
        });
        Ok(Client { mux })
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
