//! Every message of the protocol, by direction.
//!
//! Which stream carries what (docs/protocol.md has the full picture):
//! - the **control stream**, the first bidirectional stream a client opens: `Hello`
//!   both ways, then pipelined [`Request`]s answered by [`Reply`]s with the same id,
//!   in any order;
//! - a **subscription stream**, one bidirectional stream per subscription: the client
//!   sends [`Subscribe`] and then [`ClientFrame::Credit`]; the server answers
//!   [`ServerFrame::Subscribed`] (or an error) and then pushes [`Records`].

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::error::WireError;
use crate::record::NewRecord;

/// Everything a client sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientFrame {
    /// The first frame of the control stream.
    Hello(ClientHello),
    /// A request on the control stream.
    Request(Request),
    /// The first frame of a subscription stream.
    Subscribe(Subscribe),
    /// More delivery credit on a subscription stream, in records.
    Credit(u32),
}

/// Everything a server sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServerFrame {
    /// The answer to a successful [`ClientHello`].
    Hello(ServerHello),
    /// The answer to a [`Request`].
    Reply(Reply),
    /// The subscription is set up; records follow as credit allows.
    Subscribed,
    /// Records for a subscription.
    Records(Records),
    /// An error not tied to a request: a failed handshake, a frame that could not be
    /// decoded, or the end of a subscription. The stream may stay open (see the code).
    Error(WireError),
}

/// The client's side of the version handshake.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientHello {
    /// The protocol version the client speaks.
    pub version: u16,
    /// A free-form name for logs (`quiver-cli/0.1.0`).
    pub client: String,
}

/// The server's side of the version handshake.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerHello {
    /// The protocol version the server speaks (equal to the client's).
    pub version: u16,
    /// A free-form name for logs (`quiver/0.1.0`).
    pub server: String,
    /// Limits the client must respect.
    pub limits: Limits,
}

/// Limits a server enforces, announced in its hello so clients can check locally.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// The longest frame body the server accepts, in bytes.
    pub max_frame_len: u64,
    /// The largest record (payload + key + headers), in bytes.
    pub max_record_size: u64,
    /// The most records in one publish.
    pub max_batch_records: u32,
}

/// A request on the control stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// Chosen by the client, echoed in the reply.
    pub id: u64,
    /// What to do.
    pub op: Op,
}

/// A request's operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Create a topic.
    CreateTopic {
        /// The topic's name.
        name: String,
        /// Its retention limits.
        retention: Retention,
    },
    /// Delete a topic and its records.
    DeleteTopic {
        /// The topic's name.
        name: String,
    },
    /// Describe one topic.
    DescribeTopic {
        /// The topic's name.
        name: String,
    },
    /// List all topics.
    ListTopics,
    /// Append records to a topic; acknowledged once they are durable.
    Publish {
        /// The topic's name.
        topic: String,
        /// The records, appended in order with consecutive offsets.
        records: Vec<NewRecord>,
    },
}

/// A reply to a [`Request`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    /// The request's id.
    pub id: u64,
    /// What happened.
    pub result: Result<OpReply, WireError>,
}

/// What a successful request returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OpReply {
    /// The topic created or described.
    Topic(TopicInfo),
    /// All topics, sorted by name.
    Topics(Vec<TopicInfo>),
    /// The topic was deleted.
    Deleted,
    /// The records are durable at offsets `base_offset .. base_offset + count`.
    Published {
        /// The first record's offset.
        base_offset: u64,
        /// How many records were appended.
        count: u32,
    },
}

/// A topic's retention limits; the oldest records go first when any is exceeded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retention {
    /// Remove records older than this many milliseconds.
    pub max_age_ms: Option<u64>,
    /// Keep the topic's records under this many bytes.
    pub max_bytes: Option<u64>,
    /// Keep at most this many records.
    pub max_records: Option<u64>,
}

impl Retention {
    /// True when no limit is set: records are kept until the topic is deleted.
    pub fn is_unlimited(&self) -> bool {
        *self == Self::default()
    }
}

/// A topic's description.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicInfo {
    /// The topic's name.
    pub name: String,
    /// Its retention limits.
    pub retention: Retention,
    /// When it was created (ms since the Unix epoch).
    pub created_ms: u64,
    /// Records currently held.
    pub records: u64,
    /// Bytes those records take in storage.
    pub bytes: u64,
    /// The oldest record's offset (equal to `next_offset` when empty).
    pub first_offset: u64,
    /// The offset the next record will get.
    pub next_offset: u64,
}

impl TopicInfo {
    /// The newest record's offset, if the topic holds any.
    pub fn last_offset(&self) -> Option<u64> {
        (self.records > 0).then(|| self.next_offset - 1)
    }
}

/// The first frame of a subscription stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscribe {
    /// A topic name or pattern.
    pub pattern: String,
    /// Where to start in each matching topic that exists now (topics created later are
    /// read from their beginning).
    pub from: StartAt,
    /// Initial credit, in records.
    pub credit: u32,
}

/// Where a subscription starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StartAt {
    /// The oldest record still held.
    Earliest,
    /// Only records appended after the subscription starts.
    Latest,
    /// This offset (or the oldest held, if it is gone).
    Offset(u64),
    /// The first record at or after this time (ms since the Unix epoch).
    Timestamp(u64),
}

/// Records pushed on a subscription stream: a slice of one topic's log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Records {
    /// The topic the records belong to.
    pub topic: String,
    /// The offset of the first record in `batch`.
    pub base_offset: u64,
    /// Consecutive records in the batch format of [`crate::record`].
    pub batch: Bytes,
}
