//! The client's side of the wire: the only module that imports quinn and rustls.
//!
//! - `connect`: TLS 1.3 over QUIC, the client's identity, the version handshake;
//! - `mux`: the request multiplexer on the control stream, and opening streams;
//! - `outgoing`: the control stream's writer task (merging one-record publishes);
//! - `pending`: requests waiting for their replies;
//! - `stream`: a stream's two halves as frames, for subscriptions and memberships.
//!
//! The rest of the client speaks Quiver's own types: a transport upgrade touches this
//! folder only.

mod connect;
mod mux;
mod outgoing;
mod pending;
mod stream;

pub use connect::ClientBuilder;
pub(crate) use mux::Mux;
pub(crate) use stream::{FrameReader, FrameSender};
