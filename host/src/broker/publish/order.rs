//! The order of one connection's publishes: they reach storage in the order they
//! arrived, so one connection's publishes to a topic get increasing offsets.
//!
//! A publish that needs no waiting (no earlier publish of the connection still on its
//! way, no ingress plugins, no retry of an id still in flight) is queued to storage at
//! once, before the connection reads its next frame. Every other one takes a
//! [`Turn`]: it is checked and deduplicated at once, overlapping with later requests,
//! and then waits for the publish before it:
//!
//! - to be queued to storage, before being queued itself; or,
//! - when both run ingress plugins and share one, only until that one's call is
//!   dispatched (`Plugins::run_then`): calls of a plugin run, and queue their results,
//!   in the order they were dispatched, so its own call then runs, and queues, right
//!   after the other's on the plugin thread. A connection pipelining publishes
//!   through a plugin keeps the plugin busy instead of waking the async side between
//!   calls.
//!
//! A publish retrying an id still in flight takes a turn too: waiting for that attempt
//! inline would stop the connection from answering it, when it may be its own.

use std::sync::Arc;

use tokio::sync::watch;

/// How far a publish that took a turn has got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Progress {
    /// Checked and deduplicated, or still at it.
    Waiting,
    /// Its plugin call is dispatched: a call of the same plugins dispatched later runs,
    /// and queues its result, after it.
    Dispatched,
    /// Queued to storage (or failed before: either way, out of the way).
    Queued,
}

/// The order of one connection's publishes: one per connection.
#[derive(Debug, Default)]
pub struct PublishOrder {
    /// The last publish that took a turn, while it may still be on its way.
    last: Option<Previous>,
}

#[derive(Debug)]
struct Previous {
    progress: watch::Receiver<Progress>,
    /// The plugins it calls (sorted, deduplicated).
    plugins: Arc<[String]>,
}

impl Previous {
    fn queued(&self) -> bool {
        // A closed channel means the publish (and its turn) is gone.
        self.progress.has_changed().is_err() || *self.progress.borrow() == Progress::Queued
    }
}

impl PublishOrder {
    /// True when no publish that took a turn is still on its way to storage.
    pub(super) fn idle(&mut self) -> bool {
        if self.last.as_ref().is_some_and(Previous::queued) {
            self.last = None;
        }
        self.last.is_none()
    }

    /// A turn after every publish before it, for a publish calling `plugins`
    /// (sorted, deduplicated; empty without ingress plugins).
    pub(super) fn turn(&mut self, plugins: Arc<[String]>) -> Turn {
        let (progress, receiver) = watch::channel(Progress::Waiting);
        let previous = self.last.replace(Previous {
            progress: receiver,
            plugins: Arc::clone(&plugins),
        });
        Turn {
            previous,
            progress: Arc::new(progress),
            plugins,
        }
    }
}

/// A publish's place in its connection's order. Dropping it tells the next publish
/// that this one is out of the way; drop it only once queued (or failed).
#[derive(Debug)]
pub(super) struct Turn {
    previous: Option<Previous>,
    progress: Arc<watch::Sender<Progress>>,
    plugins: Arc<[String]>,
}

impl Turn {
    /// Waits until this publish may be queued to storage: the one before it is.
    pub(super) async fn queue_after_previous(&mut self) {
        self.wait_for(|_, progress| progress == Progress::Queued)
            .await;
    }

    /// Waits until this publish's plugins may be called: the publish before it is
    /// queued, or its call of a plugin this one calls too is dispatched (this call then
    /// runs, and queues, after it).
    pub(super) async fn call_after_previous(&mut self) {
        let mine = Arc::clone(&self.plugins);
        self.wait_for(move |theirs, progress| {
            progress == Progress::Queued
                || (progress == Progress::Dispatched && theirs.iter().any(|p| mine.contains(p)))
        })
        .await;
    }

    async fn wait_for(&mut self, ready: impl Fn(&[String], Progress) -> bool) {
        if let Some(previous) = self.previous.as_mut() {
            let theirs = Arc::clone(&previous.plugins);
            // An error means the previous publish is gone: out of the way.
            let _ = previous
                .progress
                .wait_for(|progress| ready(&theirs, *progress))
                .await;
        }
    }

    /// Tells the next publish that this one's plugin call is dispatched.
    pub(super) fn dispatched(&self) {
        self.progress.send_if_modified(|p| {
            let earlier = *p < Progress::Dispatched;
            if earlier {
                *p = Progress::Dispatched;
            }
            earlier
        });
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        self.progress.send_replace(Progress::Queued);
    }
}

#[cfg(test)]
mod tests {
    use futures::FutureExt;

    use super::*;

    fn plugins(names: &[&str]) -> Arc<[String]> {
        names.iter().map(|s| (*s).to_owned()).collect()
    }

    /// Whether `future` is ready without waiting.
    fn ready(future: impl Future<Output = ()>) -> bool {
        future.now_or_never().is_some()
    }

    #[test]
    fn a_turn_waits_for_the_publish_before_it_to_be_queued() {
        let mut order = PublishOrder::default();
        assert!(order.idle());
        let first = order.turn(plugins(&[]));
        let mut second = order.turn(plugins(&[]));
        assert!(!order.idle());
        assert!(!ready(second.queue_after_previous()));
        drop(first);
        assert!(ready(second.queue_after_previous()));
        drop(second);
        assert!(order.idle());
    }

    #[test]
    fn a_call_of_a_shared_plugin_may_start_once_the_one_before_is_dispatched() {
        let mut order = PublishOrder::default();
        let first = order.turn(plugins(&["counter", "filter"]));
        let mut shares = order.turn(plugins(&["filter"]));
        assert!(!ready(shares.call_after_previous()));
        first.dispatched();
        assert!(ready(shares.call_after_previous()));
        // It is queued only after the first is, though.
        assert!(!ready(shares.queue_after_previous()));
    }

    #[test]
    fn a_call_of_other_plugins_waits_for_the_one_before_to_be_queued() {
        let mut order = PublishOrder::default();
        let first = order.turn(plugins(&["counter"]));
        let mut other = order.turn(plugins(&["filter"]));
        first.dispatched();
        assert!(!ready(other.call_after_previous()));
        drop(first);
        assert!(ready(other.call_after_previous()));
    }
}
