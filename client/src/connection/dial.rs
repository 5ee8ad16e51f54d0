//! Dialing a broker: one QUIC connection and the version handshake on its control
//! stream, to the first of the client's addresses that answers. Used for the first
//! connection and for every reconnection, from one UDP endpoint per address family
//! that lives as long as the client.

use std::net::SocketAddr;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use quiver_protocol::{ClientFrame, ClientHello, Limits, ServerFrame};
use tracing::debug;

use super::pending::lost_reason;
use super::stream::{FrameReader, FrameSender};
use crate::error::{Error, Result};

/// How to reach the broker; shared by the client and its supervisor.
#[derive(Debug)]
pub(crate) struct Dialer {
    pub(crate) addrs: Vec<String>,
    pub(crate) server_name: Option<String>,
    pub(crate) config: quinn::ClientConfig,
    pub(crate) hello: ClientHello,
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
        config: quinn::ClientConfig,
        hello: ClientHello,
    ) -> Self {
        Self {
            addrs,
            server_name,
            config,
            hello,
            endpoints: Mutex::default(),
        }
    }

    /// Dials each address in turn, each for at most `timeout`, until one answers.
    /// The error names every address and why it failed.
    pub(crate) async fn dial_any(&self, timeout: Duration) -> Result<Dialed> {
        let mut failures = Vec::new();
        for addr in &self.addrs {
            let attempt = tokio::time::timeout(timeout, self.dial(addr)).await;
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
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; "),
            }),
        }
    }

    /// Dials `addr` and performs the handshake.
    async fn dial(&self, addr: &str) -> Result<Dialed> {
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
            .connect_with(self.config.clone(), socket_addr, &server_name)
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
