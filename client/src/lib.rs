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
//! For work queues, a durable group ([`Client::create_group`], [`Client::join`])
//! shares a topic's records among competing members, each record settled with an ack
//! (or redelivered, or dead-lettered). [`Client::request`] and [`Client::reply`] do
//! request-reply over topics. Publishes carry a [`PublishId`], so a retried publish
//! ([`Client::publish_batch_with_id`]) is stored once.
//!
//! A client rides through broker restarts and network changes by itself: it reconnects
//! with backoff, sends again what was in flight (each publish is still stored once),
//! resumes subscriptions after the last record it handed over, and rejoins groups.
//! [`Reconnect`] says exactly what is kept; [`Client::state`] shows where the
//! connection stands.
//!
//! Errors are [`Error`] values; those the server sent carry an
//! [`ErrorCode`] ([`Error::code`]).

mod client;
mod connection;
mod error;
mod group;
mod link;
mod subscription;

pub use client::{Client, SubscribeOptions};
pub use connection::{Backoff, ClientBuilder, ConnectionState, Reconnect};
pub use error::{Error, Result};
pub use group::{Delivery, Member};
pub use subscription::{Record, Subscription};

pub use quiver_protocol::Record as StoredRecord;
pub use quiver_protocol::record::headers;
pub use quiver_protocol::{
    AttachmentStatus, BrokerInfo, Delivered, DiffSample, Durability, ErrorCode, Forward, Forwarded,
    ForwardedRecords, GroupInfo, GroupSettings, GroupTopic, Header, JetStreamRemote, Limits,
    LinkAuth, LinkDirection, LinkInfo, LinkSpec, LinkState, LinkTopic, NewRecord, OnError, Origin,
    Placement, PluginDiff, PluginInfo, PluginStatus, Position, PublishId, PurgeBefore, Receipt,
    Retention, SandboxInfo, ServerStatus, Skip, Stage, StageLimits, StartAt, StreamRetention,
    StreamSetup, StreamStorage, TopicConfig, TopicInfo, WireError, broker_id_hex,
};
