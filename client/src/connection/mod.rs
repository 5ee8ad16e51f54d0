//! The client's side of the wire: the only module that imports quinn and rustls.
//!
//! - `connect`: configuring a client (TLS, identity, addresses, reconnection);
//! - `dial`: one connection and its version handshake, at the first address answering;
//! - `supervisor`: the task owning the connection in use: serving it, noticing its loss,
//!   dialing again and writing again what was in flight;
//! - `reconnect`: the reconnection policy, the delays, the state the client reports;
//! - `mux`: the request multiplexer callers use, and opening streams;
//! - `outgoing`: the control stream's writer (merging one-record publishes);
//! - `pending`: requests waiting for their replies, across connections;
//! - `stream`: a stream's two halves as frames.
//!
//! The rest of the client speaks Quiver's own types: a transport upgrade touches this
//! folder only.

mod connect;
mod dial;
mod mux;
mod outgoing;
mod pending;
mod reconnect;
mod stream;
mod supervisor;

pub use connect::ClientBuilder;
pub(crate) use mux::{Mux, Opened, Resumable};
pub use reconnect::{Backoff, ConnectionState, Reconnect};
