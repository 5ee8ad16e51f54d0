//! Streams open on QUIC connections, by kind, for `/metrics`: whoever serves a stream
//! holds an [`OpenStream`] for it, so the counts cannot drift.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// What a stream carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    /// A connection's control stream (requests and publishes).
    Control,
    /// A subscription.
    Subscription,
    /// A group membership.
    Member,
}

impl StreamKind {
    /// Every kind, in label order.
    pub const ALL: [Self; 3] = [Self::Control, Self::Subscription, Self::Member];

    /// The kind as a metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Control => "control",
            Self::Subscription => "subscription",
            Self::Member => "member",
        }
    }
}

/// The streams open now, by kind.
#[derive(Debug, Default)]
pub struct OpenStreams([AtomicU64; 3]);

impl OpenStreams {
    /// Counts a stream of `kind` open until the returned guard is dropped.
    pub fn open(self: &Arc<Self>, kind: StreamKind) -> OpenStream {
        self.0[kind as usize].fetch_add(1, Ordering::Relaxed);
        OpenStream {
            streams: Arc::clone(self),
            kind,
        }
    }

    /// The streams of `kind` open now.
    pub fn count(&self, kind: StreamKind) -> u64 {
        self.0[kind as usize].load(Ordering::Relaxed)
    }
}

/// One open stream, counted until dropped.
#[derive(Debug)]
pub struct OpenStream {
    streams: Arc<OpenStreams>,
    kind: StreamKind,
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.streams.0[self.kind as usize].fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_counts_while_its_guard_lives() {
        let streams = Arc::new(OpenStreams::default());
        let control = streams.open(StreamKind::Control);
        let member = streams.open(StreamKind::Member);
        let second = streams.open(StreamKind::Member);
        assert_eq!(streams.count(StreamKind::Control), 1);
        assert_eq!(streams.count(StreamKind::Subscription), 0);
        assert_eq!(streams.count(StreamKind::Member), 2);
        drop((control, member));
        assert_eq!(streams.count(StreamKind::Control), 0);
        assert_eq!(streams.count(StreamKind::Member), 1);
        drop(second);
        assert_eq!(streams.count(StreamKind::Member), 0);
    }
}
