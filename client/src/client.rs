//! The public API of a connected client: topics, publishing, plugins, subscriptions
//! and request-reply (groups are in `group.rs`), each a request through the
//! multiplexer (`mux.rs`) whose reply is taken by type ([`Client::ask`]).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use quiver_protocol::record::headers;
use quiver_protocol::{
    Durability, GroupInfo, Limits, NewRecord, Op, OpReply, PluginInfo, PluginStatus, Position,
    PublishId, PurgeBefore, Receipt, Retention, Stage, StartAt, TopicConfig, TopicInfo,
};

use crate::connection::{ConnectionState, Mux};
use crate::error::{Error, Result};
use crate::subscription::{self, Record, Subscription};

/// A connection to a Quiver broker. Cheap to clone; clones share the connection, and
/// any number of tasks may use it at once.
///
/// ```no_run
/// # async fn demo() -> quiver_client::Result<()> {
/// use quiver_client::{Client, NewRecord, Retention};
///
/// let client = Client::builder()
///     .ca_file("quiver-data/tls/cert.pem")?
///     .connect("127.0.0.1:7848")
///     .await?;
/// client.create_topic("sensors.eu.temp", Retention::default()).await?;
/// let offset = client.publish("sensors.eu.temp", NewRecord::new("21.5")).await?;
/// println!("stored at offset {offset}");
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Client {
    pub(crate) mux: Arc<Mux>,
}

/// A reply a request expects, taken out of the [`OpReply`] (or the reply as it came,
/// if it is another: a protocol error).
pub(crate) trait Expected: Sized {
    // The `Err` is as large as any reply: it is the reply itself, handed back only on
    // a protocol error, so it is not worth a box.
    #[allow(clippy::result_large_err)]
    fn take(reply: OpReply) -> std::result::Result<Self, OpReply>;
}

/// `Expected` for the reply variants that hold one value.
macro_rules! expected {
    ($($variant:ident => $ty:ty),* $(,)?) => {$(
        impl Expected for $ty {
            #[allow(clippy::result_large_err)] // see the trait
            fn take(reply: OpReply) -> std::result::Result<Self, OpReply> {
                match reply {
                    OpReply::$variant(value) => Ok(value),
                    other => Err(other),
                }
            }
        }
    )*};
}

expected! {
    Topic => TopicInfo,
    Topics => Vec<TopicInfo>,
    Published => Receipt,
    Plugin => PluginInfo,
    Plugins => Vec<PluginInfo>,
    PluginStatus => PluginStatus,
    Group => GroupInfo,
    Groups => Vec<GroupInfo>,
    Response => NewRecord,
    Forwarded => quiver_protocol::Forwarded,
    Link => Box<quiver_protocol::LinkInfo>,
    Links => Vec<quiver_protocol::LinkInfo>,
    Broker => quiver_protocol::BrokerInfo,
    Server => Box<quiver_protocol::ServerStatus>,
    Sandboxes => Vec<quiver_protocol::SandboxInfo>,
    Diff => Box<quiver_protocol::PluginDiff>,
}

/// The reply to a deletion.
pub(crate) struct Deleted;

impl Expected for Deleted {
    #[allow(clippy::result_large_err)] // see the trait
    fn take(reply: OpReply) -> std::result::Result<Self, OpReply> {
        match reply {
            OpReply::Deleted => Ok(Self),
            other => Err(other),
        }
    }
}

/// The reply to a reply.
struct Replied;

impl Expected for Replied {
    #[allow(clippy::result_large_err)] // see the trait
    fn take(reply: OpReply) -> std::result::Result<Self, OpReply> {
        match reply {
            OpReply::Replied => Ok(Self),
            other => Err(other),
        }
    }
}

impl Client {
    /// The limits the server announced.
    pub fn limits(&self) -> Limits {
        self.mux.limits()
    }

    /// Where the connection stands (connected, reconnecting, closed), as a
    /// [`watch`](tokio::sync::watch) receiver: read it now, or wait for it to change.
    ///
    /// ```no_run
    /// # async fn demo(client: quiver_client::Client) {
    /// let mut state = client.state();
    /// while state.changed().await.is_ok() {
    ///     eprintln!("quiver: {}", *state.borrow());
    /// }
    /// # }
    /// ```
    pub fn state(&self) -> tokio::sync::watch::Receiver<ConnectionState> {
        self.mux.state()
    }

    /// Moves the connection to a new local UDP socket, as when a gateway changes
    /// network or a NAT rebinds: QUIC connection migration carries the connection
    /// over, with its requests, subscriptions and memberships, without reconnecting.
    pub fn rebind(&self) -> Result<()> {
        self.mux.rebind()
    }

    /// The principal the broker authenticated this client as; `None` when it is
    /// anonymous.
    pub fn principal(&self) -> Option<&str> {
        self.mux.principal.as_deref()
    }

    /// Sends a request, queued now (see [`Mux::call`]), and takes the reply of the
    /// type it expects.
    pub(crate) fn ask<T: Expected>(
        &self,
        op: Op,
    ) -> impl Future<Output = Result<T>> + Send + 'static {
        let reply = self.mux.call(op);
        async move { T::take(reply.await?).map_err(unexpected) }
    }

    /// Creates a topic with retention limits (a [`Retention`](crate::Retention)) or full settings (a
    /// [`TopicConfig`]).
    pub async fn create_topic(
        &self,
        name: &str,
        config: impl Into<TopicConfig>,
    ) -> Result<TopicInfo> {
        let op = Op::CreateTopic {
            name: name.to_owned(),
            config: config.into(),
        };
        self.ask(op).await
    }

    /// Changes a live topic's retention (all three limits) or durability; what is
    /// `None` stays as it is. Needs protocol version 3 (a broker that speaks only 2
    /// refuses the connection).
    pub async fn alter_topic(
        &self,
        name: &str,
        retention: Option<Retention>,
        durability: Option<Durability>,
    ) -> Result<TopicInfo> {
        self.ask(Op::AlterTopic {
            name: name.to_owned(),
            retention,
            durability,
        })
        .await
    }

    /// Removes a topic's records before an offset or a time, or all of them; the
    /// topic goes on from the offset it had. Durable when this returns.
    pub async fn purge_topic(&self, name: &str, before: PurgeBefore) -> Result<TopicInfo> {
        self.ask(Op::PurgeTopic {
            name: name.to_owned(),
            before,
        })
        .await
    }

    /// How the broker runs: version, uptime, data dir, sizes, listeners (what
    /// `quiver info` prints). Needs the admin right on every topic.
    pub async fn describe_server(&self) -> Result<quiver_protocol::ServerStatus> {
        self.ask::<Box<quiver_protocol::ServerStatus>>(Op::DescribeServer)
            .await
            .map(|status| *status)
    }

    /// Deletes a topic and all its records.
    pub async fn delete_topic(&self, name: &str) -> Result<()> {
        self.ask::<Deleted>(Op::DeleteTopic {
            name: name.to_owned(),
        })
        .await
        .map(drop)
    }

    /// Describes one topic.
    pub async fn describe_topic(&self, name: &str) -> Result<TopicInfo> {
        self.ask(Op::DescribeTopic {
            name: name.to_owned(),
        })
        .await
    }

    /// Lists every topic, sorted by name.
    pub async fn list_topics(&self) -> Result<Vec<TopicInfo>> {
        self.ask(Op::ListTopics).await
    }

    /// Publishes one record; the future resolves to its offset once it is durable.
    ///
    /// The record is queued for sending by this call, so records published one after
    /// the other keep that order in the topic even while many are in flight. Memory:
    /// each queued record is held until its future resolves or is dropped.
    ///
    /// On a topic whose ingress plugins may drop, route or split records, this fails
    /// with [`Error::Transformed`] when the record did not land in the topic as one
    /// record; [`publish_batch`](Client::publish_batch) returns the full receipt.
    pub fn publish(
        &self,
        topic: &str,
        record: impl Into<NewRecord>,
    ) -> impl Future<Output = Result<u64>> + Send + 'static {
        let mux = Arc::clone(&self.mux);
        let queued = mux.queue_single(topic, record.into(), self.next_publish_id());
        async move {
            let receipt = queued?.await.unwrap_or_else(|_| Err(mux.lost()))?;
            match receipt.count {
                1 => Ok(receipt.base_offset),
                _ => Err(Error::Transformed(Box::new(receipt))),
            }
        }
    }

    /// Publishes records as one batch, all or nothing, and resolves once everything is
    /// durable. Without ingress plugins the records get consecutive offsets in the
    /// topic ([`Receipt::offsets`]); with them, the receipt also says what was routed,
    /// dead-lettered or dropped. Queued by this call, like [`publish`](Client::publish).
    pub fn publish_batch(
        &self,
        topic: &str,
        records: Vec<NewRecord>,
    ) -> impl Future<Output = Result<Receipt>> + Send + 'static {
        self.publish_batch_with_id(topic, records, self.next_publish_id())
    }

    /// A fresh id for a publish: this client's producer id and its next sequence
    /// number. Every publish gets one; take one yourself to retry a publish safely.
    pub fn next_publish_id(&self) -> PublishId {
        self.mux.next_publish_id()
    }

    /// Publishes under a given id. Publishing again with the same id (after a timeout
    /// or a lost connection, from this client or another) is safe: within the broker's
    /// dedup window the retry gets the first publish's receipt and nothing is
    /// appended twice, even across a broker restart.
    pub fn publish_batch_with_id(
        &self,
        topic: &str,
        records: Vec<NewRecord>,
        id: PublishId,
    ) -> impl Future<Output = Result<Receipt>> + Send + 'static {
        self.ask(Op::Publish {
            topic: topic.to_owned(),
            records,
            id: Some(id),
        })
    }

    /// Publishes `records` to `topic` as one publish (under `id`, if given) with the
    /// topic's pipeline running `plugin` at its deployed `version` instead of the
    /// version running: re-driving dead letters through a fixed or an earlier version.
    /// Needs the admin right on the topic as well as publish; refused if the plugin is
    /// not on the topic's pipeline or has no such version.
    pub fn publish_through(
        &self,
        topic: &str,
        records: Vec<NewRecord>,
        id: Option<PublishId>,
        (plugin, version): (&str, &str),
    ) -> impl Future<Output = Result<Receipt>> + Send + 'static {
        self.ask(Op::PublishThrough {
            topic: topic.to_owned(),
            records,
            id,
            plugin: plugin.to_owned(),
            version: version.to_owned(),
        })
    }

    /// Deploys a plugin: the broker validates the component against Quiver's plugin
    /// world, compiles it and stores it with its sha256. `version` defaults to the next
    /// number.
    pub async fn deploy_plugin(
        &self,
        name: &str,
        wasm: impl Into<Bytes>,
        version: Option<&str>,
    ) -> Result<PluginInfo> {
        let op = Op::DeployPlugin {
            name: name.to_owned(),
            version: version.map(str::to_owned),
            wasm: wasm.into(),
        };
        self.ask(op).await
    }

    /// Upgrades a deployed plugin everywhere it is attached, atomically: each batch of
    /// records is processed wholly by the old or wholly by the new version.
    pub async fn upgrade_plugin(
        &self,
        name: &str,
        wasm: impl Into<Bytes>,
        version: Option<&str>,
    ) -> Result<PluginInfo> {
        let op = Op::UpgradePlugin {
            name: name.to_owned(),
            version: version.map(str::to_owned),
            wasm: wasm.into(),
        };
        self.ask(op).await
    }

    /// Removes a plugin that is attached to no topic, with its state.
    pub async fn remove_plugin(&self, name: &str) -> Result<()> {
        self.ask::<Deleted>(Op::RemovePlugin {
            name: name.to_owned(),
        })
        .await
        .map(drop)
    }

    /// Lists deployed plugins, sorted by name.
    pub async fn list_plugins(&self) -> Result<Vec<PluginInfo>> {
        self.ask(Op::ListPlugins).await
    }

    /// A plugin's attachments and their figures (calls, records, errors, timings,
    /// quarantine).
    pub async fn plugin_status(&self, name: &str) -> Result<PluginStatus> {
        self.ask(Op::PluginStatus {
            name: name.to_owned(),
        })
        .await
    }

    /// The sandbox of each of a plugin's attachments (language, memory cap, call
    /// deadline, the most memory used), in the order of [`Client::plugin_status`].
    pub async fn plugin_sandboxes(&self, name: &str) -> Result<Vec<quiver_protocol::SandboxInfo>> {
        self.ask(Op::PluginSandboxes {
            name: name.to_owned(),
        })
        .await
    }

    /// Starts running `wasm` beside the plugin's live version, wherever it runs, on
    /// the same batches: its outcomes are compared with the live ones and discarded,
    /// its state writes kept apart and never stored (a shadow rollout). Replaces a
    /// rollout that ran. Returns the (empty) diff.
    pub async fn shadow_plugin(
        &self,
        name: &str,
        wasm: impl Into<Bytes>,
        version: Option<&str>,
    ) -> Result<Box<quiver_protocol::PluginDiff>> {
        self.ask(Op::ShadowPlugin {
            name: name.to_owned(),
            version: version.map(str::to_owned),
            wasm: wasm.into(),
        })
        .await
    }

    /// Gives `wasm` `percent` (1 to 99) of the plugin's records wherever it runs,
    /// chosen by record key so that one key stays with one version (a canary
    /// rollout); its outcomes count. Replaces a rollout that ran. Returns the (empty)
    /// diff.
    pub async fn canary_plugin(
        &self,
        name: &str,
        wasm: impl Into<Bytes>,
        version: Option<&str>,
        percent: u8,
    ) -> Result<Box<quiver_protocol::PluginDiff>> {
        self.ask(Op::CanaryPlugin {
            name: name.to_owned(),
            version: version.map(str::to_owned),
            wasm: wasm.into(),
            percent,
        })
        .await
    }

    /// How the plugin's rollout has gone so far: the records a shadow decided
    /// otherwise than the live version, by kind, with samples; a canary's records;
    /// call times; the candidate's failures.
    pub async fn plugin_diff(&self, name: &str) -> Result<Box<quiver_protocol::PluginDiff>> {
        self.ask(Op::DiffPlugin {
            name: name.to_owned(),
        })
        .await
    }

    /// Makes the rollout's code the plugin's live version, stored as an upgrade is:
    /// every batch from then on runs it wholly, none before does. Returns the last diff.
    pub async fn promote_plugin(&self, name: &str) -> Result<Box<quiver_protocol::PluginDiff>> {
        self.ask(Op::PromotePlugin {
            name: name.to_owned(),
        })
        .await
    }

    /// Ends the plugin's rollout; the live version goes on. Returns the last diff.
    pub async fn rollback_plugin(&self, name: &str) -> Result<Box<quiver_protocol::PluginDiff>> {
        self.ask(Op::RollbackPlugin {
            name: name.to_owned(),
        })
        .await
    }

    /// Ends a plugin's quarantine on every attachment (once its cause is fixed): the
    /// next call runs. Returns the plugin's status.
    pub async fn lift_quarantine(&self, name: &str) -> Result<PluginStatus> {
        self.ask(Op::LiftQuarantine {
            name: name.to_owned(),
        })
        .await
    }

    /// Adds a stage to the end of a topic's ingress pipeline; returns the topic.
    pub async fn attach_plugin(&self, topic: &str, stage: Stage) -> Result<TopicInfo> {
        let op = Op::AttachPlugin {
            topic: topic.to_owned(),
            stage,
        };
        self.ask(op).await
    }

    /// Adds a stage to the end of a topic's ingress pipeline with its own memory cap
    /// and call deadline (within the broker's maxima; what `limits` leaves unset
    /// follows the plugin's language); returns the topic.
    pub async fn attach_plugin_sized(
        &self,
        topic: &str,
        stage: Stage,
        limits: quiver_protocol::StageLimits,
    ) -> Result<TopicInfo> {
        let op = Op::AttachSized {
            topic: topic.to_owned(),
            stage,
            limits,
        };
        self.ask(op).await
    }

    /// Removes a plugin's stage from a topic's ingress pipeline; returns the topic.
    pub async fn detach_plugin(&self, topic: &str, plugin: &str) -> Result<TopicInfo> {
        let op = Op::DetachPlugin {
            topic: topic.to_owned(),
            plugin: plugin.to_owned(),
        };
        self.ask(op).await
    }

    /// Subscribes to a topic or pattern (`sensors.*.temp`, `sensors.>`).
    pub async fn subscribe(
        &self,
        pattern: &str,
        options: SubscribeOptions,
    ) -> Result<Subscription> {
        subscription::open(Arc::clone(&self.mux), pattern, options).await
    }

    /// Publishes `record` to `topic` as a request and waits up to `timeout` for a
    /// responder's reply. The request is stored like any record, with a
    /// `quiver-reply-to` header naming where the reply goes; it fails at once with
    /// [`ErrorCode::NoResponders`](quiver_protocol::ErrorCode::NoResponders) when
    /// nothing consumes the topic, and with
    /// [`ErrorCode::RequestTimeout`](quiver_protocol::ErrorCode::RequestTimeout) when
    /// no reply comes in time.
    pub async fn request(
        &self,
        topic: &str,
        record: impl Into<NewRecord>,
        timeout: Duration,
    ) -> Result<NewRecord> {
        let op = Op::Request {
            topic: topic.to_owned(),
            record: record.into(),
            timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
        };
        self.ask(op).await
    }

    /// Answers a request received on a subscription or as a group member. Fails with
    /// [`Error::NotARequest`] if the record has no `quiver-reply-to` header, and with
    /// [`ErrorCode::NoRequester`](quiver_protocol::ErrorCode::NoRequester) when the
    /// requester is gone (it timed out, or another responder answered first).
    pub async fn reply(&self, request: &Record, response: impl Into<NewRecord>) -> Result<()> {
        let to = request
            .header(headers::REPLY_TO)
            .ok_or(Error::NotARequest)?;
        let op = Op::Reply {
            to: String::from_utf8_lossy(to).into_owned(),
            record: response.into(),
        };
        self.ask::<Replied>(op).await.map(drop)
    }

    /// Closes the connection, waiting briefly for the close to reach the server.
    pub async fn close(&self) {
        self.mux.close().await;
    }
}

pub(crate) fn unexpected(reply: OpReply) -> Error {
    Error::Protocol(format!("unexpected reply {reply:?}"))
}

/// How a subscription starts, how far ahead the server may send, and which plugins
/// shape this subscriber's view.
#[derive(Debug, Clone)]
pub struct SubscribeOptions {
    /// Where to start in each topic that matches now (topics created later are read
    /// from their beginning). Default: [`StartAt::Latest`].
    pub from: StartAt,
    /// Records the server may send before this subscriber consumes them: the most this
    /// client buffers. Default: 1024.
    pub window: u32,
    /// Plugin stages the broker runs on delivery, for this subscriber only. Default:
    /// none.
    pub pipeline: Vec<Stage>,
    /// Where to start in topics read before (for example by another process, which
    /// kept where it was): a listed topic starts at its position if its id still
    /// matches, and from its beginning if it was deleted and created again; the others
    /// at `from`. Default: none.
    pub at: Vec<Position>,
}

impl Default for SubscribeOptions {
    fn default() -> Self {
        Self {
            from: StartAt::Latest,
            window: 1024,
            pipeline: Vec::new(),
            at: Vec::new(),
        }
    }
}

impl SubscribeOptions {
    /// Options starting at `from`, with the default window.
    pub fn from(from: StartAt) -> Self {
        Self {
            from,
            ..Self::default()
        }
    }
}
