//! What a link reports: its state, the remote's id, and its progress per source topic,
//! updated by the link's task and read by `link describe`.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use quiver_protocol::{LinkInfo, LinkState, LinkTopic, Skip};

use crate::util::now_ms;

/// How far back the forwarding rate looks.
const RATE_WINDOW: Duration = Duration::from_secs(5);

/// A link's live status.
#[derive(Debug)]
pub(super) struct Status(Mutex<Inner>);

#[derive(Debug)]
struct Inner {
    state: LinkState,
    remote: Option<u128>,
    failures: u64,
    topics: BTreeMap<String, Progress>,
    skips: VecDeque<Skip>,
}

/// Progress in one source topic.
#[derive(Debug, Default)]
pub(super) struct Progress {
    /// The next source offset to forward.
    pub(super) next: u64,
    /// Where the source topic ends, as last seen (for lag).
    pub(super) end: u64,
    /// Bytes held at the source past `next`, as last seen.
    pub(super) lag_bytes: u64,
    /// When the oldest unforwarded record was appended, as last seen.
    pub(super) oldest_ms: Option<u64>,
    pub(super) forwarded: u64,
    pub(super) skipped: u64,
    pub(super) looped: u64,
    pub(super) dead_lettered: u64,
    /// (when, forwarded then), oldest first, for the rate.
    samples: VecDeque<(Instant, u64)>,
}

impl Progress {
    fn rate(&self) -> u64 {
        let (Some((then, before)), Some((now, after))) =
            (self.samples.front(), self.samples.back())
        else {
            return 0;
        };
        let secs = now.duration_since(*then).as_secs_f64();
        if secs < 0.5 {
            return 0;
        }
        // Records per second: a count over seconds, rounded.
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let rate = ((after - before) as f64 / secs).round() as u64;
        rate
    }
}

impl Status {
    pub(super) fn new(paused: bool) -> Self {
        Self(Mutex::new(Inner {
            state: if paused {
                LinkState::Paused
            } else {
                LinkState::Starting
            },
            remote: None,
            failures: 0,
            topics: BTreeMap::new(),
            skips: VecDeque::new(),
        }))
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn set_state(&self, state: LinkState) {
        self.lock().state = state;
    }

    /// An attempt ended in an error; the link waits before the next.
    pub(super) fn failed(&self, state: LinkState) {
        let mut inner = self.lock();
        inner.failures += 1;
        inner.state = state;
    }

    pub(super) fn set_remote(&self, remote: u128) {
        self.lock().remote = Some(remote);
    }

    /// Changes a topic's progress.
    pub(super) fn topic(&self, topic: &str, change: impl FnOnce(&mut Progress)) {
        let mut inner = self.lock();
        let progress = inner.topics.entry(topic.to_owned()).or_default();
        change(progress);
    }

    /// `count` more records forwarded in `topic`, up to `next`.
    pub(super) fn forwarded(&self, topic: &str, next: u64, count: u64) {
        self.topic(topic, |p| {
            p.next = p.next.max(next);
            p.forwarded += count;
            let now = Instant::now();
            p.samples.push_back((now, p.forwarded));
            while p
                .samples
                .front()
                .is_some_and(|(at, _)| now.duration_since(*at) > RATE_WINDOW)
            {
                p.samples.pop_front();
            }
        });
    }

    /// `count` records of `topic` handed to the local broker, up to `next`, of which it
    /// kept `kept` (the others came from it: loops).
    pub(super) fn stored(&self, topic: &str, next: u64, count: u64, kept: u64) {
        self.forwarded(topic, next, count);
        if kept < count {
            self.topic(topic, |p| p.looped += count - kept);
        }
    }

    /// Records `from .. to` of `topic` were removed before they were forwarded.
    pub(super) fn skipped(&self, topic: &str, from: u64, to: u64) {
        let mut inner = self.lock();
        inner.topics.entry(topic.to_owned()).or_default().skipped += to - from;
        if inner.skips.len() == LinkInfo::MAX_SKIPS {
            inner.skips.pop_front();
        }
        inner.skips.push_back(Skip {
            topic: topic.to_owned(),
            from,
            to,
            at_ms: now_ms(),
        });
    }

    /// The description, with `spec` as given.
    pub(super) fn describe(&self, spec: quiver_protocol::LinkSpec) -> LinkInfo {
        let inner = self.lock();
        LinkInfo {
            spec,
            state: inner.state.clone(),
            remote: inner.remote,
            failures: inner.failures,
            topics: inner
                .topics
                .iter()
                .map(|(topic, p)| LinkTopic {
                    topic: topic.clone(),
                    next: p.next,
                    lag: p.end.saturating_sub(p.next),
                    lag_bytes: p.lag_bytes,
                    oldest_ms: p.oldest_ms,
                    forwarded: p.forwarded,
                    skipped: p.skipped,
                    looped: p.looped,
                    dead_lettered: p.dead_lettered,
                    rate: p.rate(),
                })
                .collect(),
            skips: inner.skips.iter().cloned().collect(),
        }
    }
}
