//! Error codes carried on the wire, and the error value a server sends.
//!
//! Codes are stable numbers (see docs/protocol.md). A peer that receives a code it does
//! not know keeps it as [`ErrorCode::Unknown`] instead of failing to decode.

use serde::{Deserialize, Serialize};
use std::fmt;

use crate::frame::FrameError;

macro_rules! error_codes {
    ($( $(#[$doc:meta])* $name:ident = $num:literal, )*) => {
        /// What went wrong, as a stable number on the wire.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(from = "u16", into = "u16")]
        pub enum ErrorCode {
            $( $(#[$doc])* $name, )*
            /// A code this version of the protocol does not know.
            Unknown(u16),
        }

        impl From<u16> for ErrorCode {
            fn from(n: u16) -> Self {
                match n {
                    $( $num => Self::$name, )*
                    other => Self::Unknown(other),
                }
            }
        }

        impl From<ErrorCode> for u16 {
            fn from(code: ErrorCode) -> u16 {
                match code {
                    $( ErrorCode::$name => $num, )*
                    ErrorCode::Unknown(n) => n,
                }
            }
        }

        impl ErrorCode {
            /// Every known code, in numeric order.
            pub const ALL: &[ErrorCode] = &[$( ErrorCode::$name, )*];
        }
    };
}

error_codes! {
    /// A frame's body could not be decoded as a message.
    Malformed = 1,
    /// A frame is longer than the receiver's limit.
    FrameTooLarge = 2,
    /// The client speaks a protocol version the server does not.
    UnsupportedVersion = 3,
    /// A message arrived on a stream or at a time where it has no meaning.
    UnexpectedMessage = 4,
    /// A topic name does not follow the grammar.
    InvalidName = 10,
    /// A subscription pattern does not follow the grammar.
    InvalidPattern = 11,
    /// The topic does not exist.
    TopicNotFound = 12,
    /// A topic with that name already exists.
    TopicExists = 13,
    /// A record is larger than the server's maximum record size.
    RecordTooLarge = 14,
    /// A publish carries more records than the server's maximum batch.
    BatchTooLarge = 15,
    /// A request's arguments are not acceptable (the message says which).
    InvalidArgument = 16,
    /// The server could not persist or read data; nothing was acknowledged.
    Storage = 20,
    /// The server is shutting down and takes no new work.
    ShuttingDown = 21,
    /// A limit on concurrent work was reached; retry later.
    Overloaded = 22,
    /// A configured limit was reached (connections, subscriptions, topics, plugins…);
    /// the message names it. Retrying does not help until something is released.
    LimitReached = 23,
    /// No plugin by that name is deployed.
    PluginNotFound = 30,
    /// A plugin by that name is deployed already (upgrade it instead).
    PluginExists = 31,
    /// The bytes are not a valid component for Quiver's plugin world.
    InvalidPlugin = 32,
    /// The plugin is attached somewhere and cannot be removed.
    PluginInUse = 33,
    /// A fail-closed plugin on the topic is quarantined: publishes are refused.
    PluginQuarantined = 34,
    /// No durable group by that name.
    GroupNotFound = 40,
    /// A durable group by that name exists already.
    GroupExists = 41,
    /// A request found nobody subscribed to its topic.
    NoResponders = 50,
    /// A request got no reply in time.
    RequestTimeout = 51,
    /// A reply's requester is gone (it timed out or disconnected).
    NoRequester = 52,
    /// The client did not prove who it is: no credentials where the broker requires
    /// them, or a token or certificate it does not accept.
    Unauthenticated = 60,
    /// The client's principal has no right to do this (the message names the right
    /// and the topic).
    Forbidden = 61,
    /// No link by that name.
    LinkNotFound = 70,
    /// A link by that name exists already.
    LinkExists = 71,
    /// A forwarded batch does not continue where the destination's mark for its
    /// origin is (the message says where): an earlier batch was not stored.
    OutOfOrder = 72,
    /// A bug in the server.
    Internal = 99,
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unknown(n) => write!(f, "unknown error code {n}"),
            known => write!(f, "{known:?}"),
        }
    }
}

/// An error as the server sends it: a code and a human-readable message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct WireError {
    /// What kind of error this is.
    pub code: ErrorCode,
    /// What happened, for a human.
    pub message: String,
}

impl WireError {
    /// Builds an error from a code and a message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

impl From<&FrameError> for WireError {
    /// The error answering a frame that could not be decoded.
    fn from(e: &FrameError) -> Self {
        let code = match e {
            FrameError::TooLarge { .. } => ErrorCode::FrameTooLarge,
            FrameError::Malformed(_) => ErrorCode::Malformed,
        };
        Self::new(code, e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_through_numbers() {
        for &code in ErrorCode::ALL {
            assert_eq!(ErrorCode::from(u16::from(code)), code);
        }
        assert_eq!(ErrorCode::from(4242), ErrorCode::Unknown(4242));
        assert_eq!(u16::from(ErrorCode::Unknown(4242)), 4242);
    }

    #[test]
    fn codes_are_distinct() {
        let mut numbers: Vec<u16> = ErrorCode::ALL.iter().map(|&c| c.into()).collect();
        numbers.sort_unstable();
        numbers.dedup();
        assert_eq!(numbers.len(), ErrorCode::ALL.len());
    }
}
