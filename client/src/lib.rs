//! Async Rust client for the Quiver event bus.
//!
//! Connect with [`Client::builder`], then manage topics, publish records (each
//! acknowledged once durable, with its offset) and subscribe to topics or patterns as
//! a [`Stream`](futures::Stream) of [`Record`]s. A [`Client`] is cheap to clone and may
//! be used from many tasks at once: requests are pipelined on one QUIC connection.
//!
//! ```no_run
//! # async fn demo() -> quiver_client::Result<()> {
//! use futures::StreamExt;
//! use quiver_client::{Client, NewRecord, StartAt, SubscribeOptions};
//!
//! let client = Client::builder()
//!     .ca_file("quiver-data/tls/cert.pem")?
//!     .connect("127.0.0.1:7848")
//!     .await?;
//! let mut sub = client
//!     .subscribe("sensors.>", SubscribeOptions::from(StartAt::Earliest))
//!     .await?;
//! client.publish("sensors.eu.temp", NewRecord::new("21.5").with_key("probe-7")).await?;
//! while let Some(record) = sub.next().await {
//!     let record = record?;
//!     println!("{} @{}: {:?}", record.topic, record.offset, record.payload);
//! }
//! # Ok(()) }
//! ```
//!
//! Errors are [`Error`] values; those the server sent carry an
//! [`ErrorCode`] ([`Error::code`]).

mod connection;
mod error;
mod subscription;

pub use connection::{Client, ClientBuilder, SubscribeOptions, TopicConfig};
pub use error::{Error, Result};
pub use subscription::{Record, Subscription};

pub use quiver_protocol::{
    AttachmentStatus, ErrorCode, Header, Limits, NewRecord, OnError, Placement, PluginInfo,
    PluginStatus, Receipt, Retention, Stage, StartAt, TopicInfo, WireError,
};
