//! The HTTP listener: a room beside the QUIC session and the MQTT listener, on the same
//! broker. It serves what operators and their tools read over HTTP:
//!
//! - `/healthz`: the process is up and serving (always `200 ok`);
//! - `/readyz`: storage is open and takes writes (`200 ready`), or why not (`503`);
//! - `/metrics`: Prometheus metrics in the OpenMetrics text format (`metrics.rs`);
//! - `/console/`: the web console (`console.rs`), and `/api/…`, the JSON API it reads
//!   and acts through (`api.rs`).
//!
//! Authentication is the QUIC side's: a token (`quiver auth token create`) as
//! `Authorization: Bearer qvt_…`, or a client certificate over HTTPS. A request with
//! neither is anonymous, which only a loopback peer may be, and then only as the QUIC
//! side would let it (no principals yet, or `auth.allow_anonymous`). What `/metrics`
//! and the API show is cut to what the principal may see, and every action the API
//! takes is checked against its grants. The health checks need no credentials:
//! they name nothing.
//!
//! Off loopback the listener speaks HTTPS with the broker's certificate (unless
//! `http.tls = false`).

mod api;
mod console;
mod metrics;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::debug;

use crate::auth::{Access, Authenticator};
use crate::broker::Broker;
use crate::config::HttpConfig;
use crate::transport::TransportError;
use crate::transport::tcp::{ByteStream, TcpListener, TcpTls};
use crate::transport::tls::Identity;

/// HTTP connections open at once, at most.
const MAX_CONNECTIONS: usize = 256;
/// How long a client has for its TLS handshake, and for each request's head.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The bound HTTP listener, if one is configured.
#[derive(Debug)]
pub struct HttpListener {
    tcp: TcpListener,
    tls: Option<TcpTls>,
    max_topic_series: usize,
}

/// What the handlers share.
#[derive(Debug, Clone)]
struct Shared {
    broker: Arc<Broker>,
    auth: Arc<Authenticator>,
    /// Open QUIC connections: the permits taken from this.
    connections: Arc<Semaphore>,
    max_connections: usize,
    max_topic_series: usize,
}

/// How the peer proved itself: its address, and the CN of its TLS client certificate.
#[derive(Debug, Clone)]
struct Peer {
    addr: SocketAddr,
    cert_name: Option<String>,
}

impl HttpListener {
    /// Binds the configured address, if any.
    pub async fn bind(
        config: &HttpConfig,
        identity: &Identity,
        client_ca: Option<&std::path::Path>,
    ) -> Result<Option<Self>, TransportError> {
        let Some(addr) = config.addr() else {
            return Ok(None);
        };
        let tls = match config.tls_on(addr) {
            true => Some(TcpTls::new(identity, client_ca)?),
            false => None,
        };
        Ok(Some(Self {
            tcp: TcpListener::bind(addr).await?,
            tls,
            max_topic_series: config.max_topic_series,
        }))
    }

    /// The address bound.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp.local_addr()
    }

    /// Serves requests on `tasks` until `stop`. `connections` counts the QUIC
    /// connections (their permits are taken), out of `max_connections`.
    pub fn serve(
        self,
        broker: Arc<Broker>,
        auth: Arc<Authenticator>,
        connections: Arc<Semaphore>,
        max_connections: usize,
        tasks: &TaskTracker,
        stop: CancellationToken,
    ) {
        let shared = Shared {
            broker,
            auth,
            connections,
            max_connections,
            max_topic_series: self.max_topic_series,
        };
        let router = router(shared);
        let inner = tasks.clone();
        let open = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        tasks.spawn(async move {
            loop {
                let (tcp, addr) = tokio::select! {
                    () = stop.cancelled() => return,
                    accepted = self.tcp.accept() => match accepted {
                        Ok(accepted) => accepted,
                        Err(e) => {
                            debug!(cause = %e, "HTTP accept failed");
                            continue;
                        }
                    },
                };
                // Past the limit a connection is closed at once: scrapers and probes
                // are few, and a flood must not take the broker's file descriptors.
                let Ok(slot) = Arc::clone(&open).try_acquire_owned() else {
                    debug!(%addr, "HTTP connection refused: {MAX_CONNECTIONS} open already");
                    continue;
                };
                let (tls, router, stop) = (self.tls.clone(), router.clone(), stop.clone());
                inner.spawn(async move {
                    let _slot = slot;
                    let (stream, cert_name) = match tls {
                        Some(tls) => {
                            match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(tcp)).await {
                                Ok(Ok(accepted)) => accepted,
                                Ok(Err(e)) => {
                                    return debug!(cause = %e, %addr, "HTTPS handshake failed");
                                }
                                Err(_) => return debug!(%addr, "HTTPS handshake timed out"),
                            }
                        }
                        None => (ByteStream::Plain(tcp), None),
                    };
                    serve_connection(stream, Peer { addr, cert_name }, router, stop).await;
                });
            }
        });
    }
}

/// Serves one connection's requests until it closes or `stop` (then it finishes the
/// request in hand).
async fn serve_connection(stream: ByteStream, peer: Peer, router: Router, stop: CancellationToken) {
    let service = TowerToHyperService::new(router.layer(Extension(peer)));
    let connection = hyper::server::conn::http1::Builder::new()
        // A client that does not finish its request's head in time is dropped.
        .timer(TokioTimer::new())
        .header_read_timeout(HANDSHAKE_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(e) = result {
                debug!(cause = %e, "HTTP connection ended");
            }
        }
        () = stop.cancelled() => {
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        }
    }
}

fn router(shared: Shared) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_page))
        .merge(api::routes())
        .merge(console::routes())
        .with_state(shared)
}

/// Ready when storage takes writes: open, and not halted by a failed write.
async fn readyz(State(shared): State<Shared>) -> Response {
    match shared.broker.storage().halted_cause() {
        None => (StatusCode::OK, "ready\n").into_response(),
        Some(cause) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: storage halted after a failed write: {cause}\n"),
        )
            .into_response(),
    }
}

async fn metrics_page(
    State(shared): State<Shared>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
) -> Response {
    let access = match authenticate(&shared.auth, &peer, &headers) {
        Ok(access) => access,
        Err(reason) => {
            let challenge = [(header::WWW_AUTHENTICATE, "Bearer")];
            return (StatusCode::UNAUTHORIZED, challenge, format!("{reason}\n")).into_response();
        }
    };
    let open = shared
        .max_connections
        .saturating_sub(shared.connections.available_permits());
    match metrics::render(&shared.broker, &access, open, shared.max_topic_series).await {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding the metrics failed: {e}\n"),
        )
            .into_response(),
    }
}

/// The principal a request speaks for, or why it is refused (a `401`).
fn authenticate(
    auth: &Arc<Authenticator>,
    peer: &Peer,
    headers: &HeaderMap,
) -> Result<Access, String> {
    let token = match headers.get(header::AUTHORIZATION) {
        None => None,
        Some(value) => match value.to_str().ok().and_then(|v| v.strip_prefix("Bearer ")) {
            Some(token) => Some(token.trim()),
            None => {
                return Err(
                    "the Authorization header must be `Bearer <token>` (a token \
                            from `quiver auth token create`)"
                        .into(),
                );
            }
        },
    };
    if token.is_none() && peer.cert_name.is_none() && !peer.addr.ip().is_loopback() {
        return Err(format!(
            "anonymous requests are only taken from loopback, not {}: send \
             `Authorization: Bearer <token>`",
            peer.addr.ip()
        ));
    }
    auth.authenticate(token, peer.cert_name.as_deref())
        .map_err(|e| e.to_string())
}
