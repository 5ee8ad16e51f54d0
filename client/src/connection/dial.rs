//! Dialing a broker: one QUIC connection and the version handshake on its control
//! stream, to the first of the client's addresses that answers. Used for the first
//! connection and for every reconnection, from one UDP endpoint per address family
//! that lives as long as the client.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use quiver_protocol::{ClientFrame, ClientHello, Limits, ServerFrame};
use tracing::debug;

use super::pending::lost_reason;
use super::stream::{FrameReader, FrameSender};
use crate::error::{Error, Result};

/// QUIC settings every connection of a client shares.
pub(crate) struct Quic {
    pub(crate) crypto: Arc<quinn::crypto::rustls::QuicClientConfig>,
    pub(crate) idle: quinn::IdleTimeout,
    pub(crate) keep_alive: Duration,
}

impl std::fmt::Debug for Quic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The TLS configuration has no `Debug`.
        f.debug_struct("Quic")
            .field("idle", &self.idle)
            .field("keep_alive", &self.keep_alive)
            .finish_non_exhaustive()
    }
}

impl Quic {
    /// The settings of one connection. `rtt` is the round-trip time of the client's
    /// last connection, where there was one: QUIC resends a first packet that got no
    /// answer after about three times its RTT estimate (333 ms before anything is
    /// known), and a broker that is starting again answers only the packets sent once
    /// it is up, so a redial that knows the path's RTT notices it back sooner.
    fn config(&self, rtt: Option<Duration>) -> quinn::ClientConfig {
        let mut transport = quinn::TransportConfig::default();
        transport
            .max_idle_timeout(Some(self.idle))
            .keep_alive_interval(Some(self.keep_alive));
        if let Some(rtt) = rtt {
            transport.initial_rtt(rtt.clamp(MIN_INITIAL_RTT, MAX_INITIAL_RTT));
        }
        let mut config = quinn::ClientConfig::new(self.crypto.clone());
        config.transport_config(Arc::new(transport));
        config
    }
}

/// Bounds on the RTT a redial starts from: above a loopback's, below QUIC's default.
const MIN_INITIAL_RTT: Duration = Duration::from_millis(10);
const MAX_INITIAL_RTT: Duration = Duration::from_millis(333);

/// How to reach the broker; shared by the client and its supervisor.
#[derive(Debug)]
pub(crate) struct Dialer {
    addrs: Vec<String>,
    server_name: Option<String>,
    quic: Quic,
    hello: ClientHello,
    /// Where the trusted certificates came from ("the CA file ca.pem"), for errors.
    trusted: String,
    /// The IPv4 and IPv6 endpoints, made when first needed.
    endpoints: Mutex<[Option<quinn::Endpoint>; 2]>,
}

/// A connection whose handshake is done.
#[derive(Debug)]
pub(crate) struct Dialed {
    /// The address it was dialed at, as given.
    pub(crate) addr: String,
    pub(crate) conn: quinn::Connection,
    /// The control stream.
    pub(crate) send: FrameSender,
    pub(crate) frames: FrameReader,
    pub(crate) limits: Limits,
    pub(crate) principal: Option<String>,
}

impl Dialer {
    pub(crate) fn new(
        addrs: Vec<String>,
        server_name: Option<String>,
        quic: Quic,
        hello: ClientHello,
        trusted: String,
    ) -> Self {
        Self {
            addrs,
            server_name,
            quic,
            hello,
            trusted,
            endpoints: Mutex::default(),
        }
    }

    /// Dials each address in turn, each for at most `timeout`, until one answers;
    /// `rtt` is the last connection's round-trip time, if there was one. The error
    /// names every address and why it failed.
    pub(crate) async fn dial_any(
        &self,
        timeout: Duration,
        rtt: Option<Duration>,
    ) -> Result<Dialed> {
        let mut failures = Vec::new();
        for addr in &self.addrs {
            let attempt = tokio::time::timeout(timeout, self.dial(addr, rtt)).await;
            match attempt.unwrap_or_else(|_| {
                Err(Error::Connect {
                    addr: addr.clone(),
                    reason: format!("no answer within {timeout:?}"),
                })
            }) {
                Ok(dialed) => return Ok(dialed),
                // Nothing another address or a later attempt could change.
                Err(e @ (Error::Server(_) | Error::Tls(_))) => return Err(e),
                Err(e) => failures.push(e),
            }
        }
        match failures.len() {
            1 => Err(failures.remove(0)),
            _ => Err(Error::Connect {
                addr: self.addrs.join(", "),
                reason: failures
                    .iter()
                    .map(|failure| match failure {
                        Error::Connect { addr, reason } => format!("{addr}: {reason}"),
                        other => other.to_string(),
                    })
                    .collect::<Vec<_>>()
                    .join("; "),
            }),
        }
    }

    /// Dials `addr` and performs the handshake.
    async fn dial(&self, addr: &str, rtt: Option<Duration>) -> Result<Dialed> {
        let (socket_addr, host) = resolve(addr).await?;
        let server_name = self.server_name.clone().unwrap_or(host);
        let connect_error = |reason: String| Error::Connect {
            addr: addr.to_owned(),
            reason,
        };
        let endpoint = self
            .endpoint(socket_addr)
            .map_err(|e| connect_error(e.to_string()))?;
        let conn = endpoint
            .connect_with(self.quic.config(rtt), socket_addr, &server_name)
            .map_err(|e| connect_error(e.to_string()))?
            .await
            .map_err(|e| connect_error(self.explain(e.to_string(), &server_name)))?;
        // A broker that closes the connection at once (at its connection limit) says
        // why in the close reason.
        let closed = |e: &dyn std::fmt::Display| {
            connect_error(conn.close_reason().map_or(e.to_string(), |r| r.to_string()))
        };
        let (send, recv) = conn.open_bi().await.map_err(|e| closed(&e))?;
        let mut send = FrameSender::new(send);
        send.send(&ClientFrame::Hello(self.hello.clone()))
            .await
            .map_err(|e| match e {
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
        Ok(Dialed {
            addr: addr.to_owned(),
            conn,
            send,
            frames,
            limits,
            principal,
        })
    }

    /// A failed handshake's reason, with what to do about a certificate the client
    /// refused (rustls only names the check that failed: `BadSignature`, say).
    fn explain(&self, reason: String, server_name: &str) -> String {
        if !reason.contains("invalid peer certificate") {
            return reason;
        }
        if reason.contains("not valid for name") || reason.contains("NotValidForName") {
            return format!(
                "{reason}: the broker's certificate does not name `{server_name}`; connect \
                 by a name or address it holds (a self-signed one holds localhost, 127.0.0.1 \
                 and ::1), or set the name to check (`server_name`)"
            );
        }
        format!(
            "{reason}: the broker's certificate is not trusted by {}; trust the \
             certificate the broker uses (its ready line names it: \
             <data dir>/tls/cert.pem when self-signed) or the CA that signed it",
            self.trusted
        )
    }

    /// The endpoint for `remote`'s address family, bound when first needed.
    fn endpoint(&self, remote: SocketAddr) -> std::io::Result<quinn::Endpoint> {
        let mut endpoints = self
            .endpoints
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let slot = &mut endpoints[usize::from(remote.is_ipv6())];
        if let Some(endpoint) = slot {
            return Ok(endpoint.clone());
        }
        let endpoint = quinn::Endpoint::client(unspecified(remote))?;
        *slot = Some(endpoint.clone());
        Ok(endpoint)
    }

    /// Moves every endpoint to a new UDP socket (a new local port), as a network
    /// change would: connections carry on through QUIC connection migration.
    pub(crate) fn rebind(&self) -> std::io::Result<()> {
        let endpoints = self
            .endpoints
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for endpoint in endpoints.iter().flatten() {
            let local = endpoint.local_addr()?;
            endpoint.rebind(std::net::UdpSocket::bind(unspecified(local))?)?;
        }
        Ok(())
    }

    /// Waits (up to `timeout`) until every connection's close has reached the broker.
    pub(crate) async fn wait_idle(&self, timeout: Duration) {
        let endpoints: Vec<quinn::Endpoint> = self
            .endpoints
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .flatten()
            .cloned()
            .collect();
        let idle = futures::future::join_all(endpoints.iter().map(quinn::Endpoint::wait_idle));
        let _ = tokio::time::timeout(timeout, idle).await;
    }
}

/// Any local address, any port, of `addr`'s family.
fn unspecified(addr: SocketAddr) -> SocketAddr {
    let ip = match addr {
        SocketAddr::V4(_) => std::net::Ipv4Addr::UNSPECIFIED.into(),
        SocketAddr::V6(_) => std::net::Ipv6Addr::UNSPECIFIED.into(),
    };
    SocketAddr::new(ip, 0)
}

/// Resolves `host:port`, returning the address and the host part (for TLS).
pub(crate) async fn resolve(addr: &str) -> Result<(SocketAddr, String)> {
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
