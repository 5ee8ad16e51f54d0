//! The client's error type.

use std::path::PathBuf;

use quiver_protocol::{ErrorCode, WireError};

/// Everything that can go wrong talking to a broker.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The server address could not be parsed or resolved.
    #[error("invalid server address `{addr}`: {reason}")]
    InvalidAddress {
        /// The address as given.
        addr: String,
        /// What was wrong with it.
        reason: String,
    },
    /// The CA certificate file could not be read or holds no certificate.
    #[error("cannot use CA file {}: {reason}", path.display())]
    CaFile {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// No certificate to trust was configured.
    #[error(
        "no CA certificate configured: pass the broker's certificate (for a local broker, \
         <data dir>/tls/cert.pem)"
    )]
    NoCa,
    /// TLS could not be set up (bad certificate, unsupported settings).
    #[error("TLS setup failed: {0}")]
    Tls(String),
    /// The QUIC connection could not be established (unreachable, certificate rejected,
    /// handshake failed).
    #[error("cannot connect to {addr}: {reason}")]
    Connect {
        /// The address dialled.
        addr: String,
        /// Why it failed.
        reason: String,
    },
    /// The connection ended, with the reason, and the request cannot be sent again
    /// safely or the client gave up reconnecting (see
    /// [`Reconnect`](crate::Reconnect)). A request that was never sent was not acted on.
    #[error("connection lost: {0}")]
    ConnectionLost(String),
    /// A publish was sent, the connection was lost before its answer, and no
    /// connection could be made again within the maximum outage
    /// ([`Backoff::max_outage`](crate::Backoff::max_outage)): it may or may not be
    /// stored. Publishing it again with the same id
    /// ([`Client::publish_batch_with_id`](crate::Client::publish_batch_with_id)) within
    /// the broker's dedup window settles it: the broker stores it only if it had not.
    #[error("the outcome of the publish is unknown: {0}")]
    OutcomeUnknown(String),
    /// The server sent something this client does not understand.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The server refused or failed a request; the code says why.
    #[error(transparent)]
    Server(#[from] WireError),
    /// A request would not fit in one frame under the server's limit.
    #[error("request of {size} bytes exceeds the server's frame limit of {max} bytes")]
    TooLarge {
        /// The encoded size.
        size: usize,
        /// The server's limit.
        max: u64,
    },
    /// The topic's ingress plugins did not store the record as one record in the
    /// topic (they dropped, routed, dead-lettered or split it): the receipt says where
    /// it went. Only [`Client::publish`](crate::Client::publish) reports this;
    /// `publish_batch` returns the receipt.
    #[error("the record was not stored as one record in the topic: {0:?}")]
    Transformed(Box<quiver_protocol::Receipt>),
    /// [`Client::reply`](crate::Client::reply) was given a record without a
    /// `quiver-reply-to` header: it was not published as a request.
    #[error("the record is not a request (it has no quiver-reply-to header)")]
    NotARequest,
    /// The server did not answer in time.
    #[error("timed out after {0:?}")]
    Timeout(std::time::Duration),
}

impl Error {
    /// The protocol error code, for errors the server sent.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Self::Server(e) => Some(e.code),
            _ => None,
        }
    }
}

/// The client's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
