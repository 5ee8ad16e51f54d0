//! Quiver's wire protocol, shared by the broker and the client SDK.
//!
//! - [`frame`]: length-prefixed frames carrying postcard-encoded messages;
//! - [`message`]: every message, by direction and stream;
//! - [`link`]: what a link forwards, and links' specs and descriptions;
//! - [`record`]: records and the batch format used on the wire and on disk;
//! - [`name`]: topic names and subscription patterns;
//! - [`error`]: stable error codes.
//!
//! Boundary: this crate does no IO and knows nothing of QUIC or async runtimes; it turns
//! bytes into values and back, so it can be tested and fuzzed alone. docs/protocol.md
//! is its specification.

#[cfg(feature = "codec")]
pub mod codec;
pub mod error;
pub mod frame;
pub mod link;
pub mod message;
pub mod name;
pub mod record;

pub use error::{ErrorCode, WireError};
pub use frame::{FrameDecoder, FrameError};
pub use link::*;
pub use message::*;
pub use name::{NameError, TopicName, TopicPattern};
pub use record::{Header, NewRecord, Record};

/// The ALPN protocol id negotiated on every Quiver QUIC connection. It changes only
/// with an encoding that is not compatible: versions 2 to 4, of which each only adds
/// messages, share it and tell each other apart in the hello.
pub const ALPN: &[u8] = b"quiver/2";

/// The protocol version this crate implements, exchanged in the hello messages.
pub const PROTOCOL_VERSION: u16 = 4;

/// The oldest protocol version a broker still accepts. Each version only adds messages
/// to the one before (see docs/protocol.md, Evolving the protocol), so a broker serves
/// an older client as it is; a client speaking a newer version than a broker's is
/// refused at the handshake, before it sends what the broker could not read.
pub const OLDEST_PROTOCOL_VERSION: u16 = 2;
