//! Why a storage operation failed, and what an operator can do about it: sled's errors
//! in Quiver's words.

use quiver_protocol::TopicName;
use quiver_protocol::record::BatchError;

/// Why a storage operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StorageError {
    /// sled reported an error (IO, or corruption it detected).
    #[error("storage failure: {0}")]
    Sled(#[from] sled::Error),
    /// The data dir holds something Quiver did not write.
    #[error("data dir is corrupt: {0}")]
    Corrupt(String),
    /// A topic with that name exists already.
    #[error("topic `{0}` already exists")]
    TopicExists(TopicName),
    /// The topic was deleted.
    #[error("topic `{0}` does not exist")]
    TopicNotFound(TopicName),
    /// A group with that name exists already.
    #[error("group `{0}` already exists")]
    GroupExists(String),
    /// A forwarded batch does not continue at the destination's mark for its origin.
    #[error(
        "forwarded records from origin offset {from} do not continue where this broker's \
         mark for their origin is ({expected}): an earlier batch was not stored; send from \
         the mark"
    )]
    OutOfOrder {
        /// The mark.
        expected: u64,
        /// Where the batch started.
        from: u64,
    },
    /// A link with that name exists already.
    #[error("link `{0}` already exists")]
    LinkExists(String),
    /// No link by that name.
    #[error("link `{0}` does not exist")]
    LinkNotFound(String),
    /// The storage writer has stopped (the broker is shutting down).
    #[error("storage is closed")]
    Closed,
    /// An earlier write failed (a full disk, an IO error), and sled refuses every
    /// write after one: nothing more is written until the storage is reopened.
    #[error(
        "storage accepts no writes since one failed ({0}); the broker reopens it by itself \
         once its disk has room again (or restart it after fixing the cause)"
    )]
    Halted(String),
}

impl StorageError {
    pub(super) fn corrupt(what: impl Into<String>) -> Self {
        Self::Corrupt(what.into())
    }

    /// What an operator can do when this error keeps the broker from starting.
    pub fn remedy(&self) -> &'static str {
        use sled::Error as E;
        match self {
            Self::Corrupt(_) | Self::Sled(E::Corruption { .. } | E::ReportableBug(_)) => {
                "the data dir is damaged and Quiver does not repair it: restore it from a \
                 backup, or move it aside to start with an empty one"
            }
            Self::Sled(E::Unsupported(_)) => {
                "the data dir was written with other settings or by an incompatible version: \
                 open it with the version that wrote it, or restore it from a backup"
            }
            Self::Sled(E::Io(e)) if e.to_string().contains("lock") => {
                "another process (a second broker?) has the data dir open: stop it first"
            }
            Self::Sled(_) | Self::Halted(_) => {
                "check that the data dir is readable and writable and that its disk has \
                 space, then start again"
            }
            Self::TopicExists(_)
            | Self::TopicNotFound(_)
            | Self::GroupExists(_)
            | Self::LinkExists(_)
            | Self::LinkNotFound(_)
            | Self::OutOfOrder { .. }
            | Self::Closed => "start again; if it happens again, report it",
        }
    }
}

/// An error sled returned while opening the data dir, in words an operator can act on.
pub(super) fn open_error(e: sled::Error) -> StorageError {
    match e {
        sled::Error::Corruption { at, .. } => StorageError::corrupt(match at {
            Some(at) => format!("sled's log is damaged: a message at {at:?} fails its checksum"),
            None => "sled's log is damaged: its snapshot or a message fails its checksum, \
                     or the log ends before the snapshot says it does"
                .to_owned(),
        }),
        sled::Error::ReportableBug(what) => {
            StorageError::corrupt(format!("sled failed while recovering its log: {what}"))
        }
        other => StorageError::Sled(other),
    }
}

impl From<BatchError> for StorageError {
    fn from(e: BatchError) -> Self {
        Self::Corrupt(format!("stored chunk unreadable: {e}"))
    }
}
