//! Configuring a client: TLS 1.3 over QUIC with the broker's ALPN, the client's
//! identity (a token or a certificate), its addresses and what it does when a
//! connection is lost; then the first connection (`dial.rs`) is the multiplexer's
//! (`mux.rs`).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use quiver_protocol::{ALPN, ClientHello, PROTOCOL_VERSION};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::dial::{Dialer, Quic};
use super::mux::Mux;
use super::reconnect::Reconnect;
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
    /// Where the trusted certificates came from, for error messages.
    trusted: Vec<String>,
    server_name: Option<String>,
    client_name: String,
    connect_timeout: Duration,
    idle_timeout: Duration,
    producer: Option<u64>,
    token: Option<String>,
    identity: Option<ClientIdentity>,
    reconnect: Reconnect,
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
            trusted: Vec::new(),
            server_name: None,
            client_name: format!("quiver-client/{}", env!("CARGO_PKG_VERSION")),
            connect_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(15),
            producer: None,
            token: None,
            identity: None,
            reconnect: Reconnect::default(),
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
        let mut builder = self.ca_pem(&pem).map_err(|e| Error::CaFile {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        // `ca_pem` noted PEM text; it came from this file.
        builder.trusted.pop();
        builder
            .trusted
            .push(format!("the CA file {}", path.display()));
        Ok(builder)
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
        self.trusted.push("the CA certificates given".into());
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

    /// How long connecting to one address and the handshake may take (default 10 s).
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

    /// What the client does when its connection is lost: dial again with
    /// [`Reconnect::Backoff`] (the default) or give up with [`Reconnect::Never`]. The
    /// [`Reconnect`] documentation says what survives a reconnection.
    pub fn reconnect(mut self, policy: Reconnect) -> Self {
        self.reconnect = policy;
        self
    }

    /// Connects to a broker at `addr` (`host:port`) and performs the handshake.
    pub async fn connect(self, addr: &str) -> Result<Client> {
        self.connect_to([addr]).await
    }

    /// Connects to the first of `addrs` (each `host:port`) that answers, trying them in
    /// turn, each for at most the connect timeout; reconnections try them in the same
    /// order. The error names each address and why it failed.
    pub async fn connect_to<I>(self, addrs: I) -> Result<Client>
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        let addrs: Vec<String> = addrs.into_iter().map(|a| a.as_ref().to_owned()).collect();
        if addrs.is_empty() {
            return Err(Error::InvalidAddress {
                addr: String::new(),
                reason: "no broker address given".into(),
            });
        }
        if self.roots.is_empty() {
            return Err(Error::NoCa);
        }
        let hello = ClientHello {
            version: PROTOCOL_VERSION,
            client: self.client_name.clone(),
            token: self.token.clone(),
        };
        let trusted = self.trusted.join(" and ");
        let dialer = Dialer::new(
            addrs,
            self.server_name.clone(),
            self.quic()?,
            hello,
            trusted,
        );
        let first = dialer.dial_any(self.connect_timeout, None).await?;
        let producer = match self.producer {
            Some(producer) => producer,
            None => {
                let mut bytes = [0u8; 8];
                getrandom::fill(&mut bytes)
                    .map_err(|e| Error::Tls(format!("no randomness for a producer id: {e}")))?;
                u64::from_le_bytes(bytes)
            }
        };
        let mux = Mux::start(dialer, first, self.reconnect, producer);
        Ok(Client { mux })
    }

    fn quic(&self) -> Result<Quic> {
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
        let idle = quinn::IdleTimeout::try_from(self.idle_timeout).map_err(|_| {
            Error::Tls(format!(
                "idle timeout {:?} is out of range",
                self.idle_timeout
            ))
        })?;
        Ok(Quic {
            crypto: Arc::new(crypto),
            idle,
            keep_alive: (self.idle_timeout / 3).min(KEEP_ALIVE),
        })
    }
}

/// The longest gap between the packets a client sends while idle. A broker that
/// restarted answers the first packet on an old connection with a stateless reset, so
/// this is also about how long a client idle through a `kill -9` and restart takes to
/// notice it.
const KEEP_ALIVE: Duration = Duration::from_secs(1);

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
