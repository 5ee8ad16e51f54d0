//! What the client does when its connection is lost: the [`Reconnect`] policy, the
//! [`ConnectionState`] it reports, and the delay before each new attempt.

use std::fmt;
use std::time::Duration;

/// What a client does when its connection to the broker is lost (the broker
/// restarted, the network went down, the connection timed out). Set with
/// [`ClientBuilder::reconnect`](crate::ClientBuilder::reconnect); the default is
/// [`Reconnect::Backoff`] with [`Backoff::default`].
///
/// While reconnecting, requests are queued; once connected again:
/// - publishes in flight or queued are sent again, in their order and with their
///   publish ids, so each is stored once (the broker deduplicates) and completes with
///   its offset;
/// - subscriptions resume after the last record handed to the application, in every
///   topic they read;
/// - group members join their group again (records they held and had not settled are
///   delivered again, to them or another member);
/// - requests that are not safe to repeat and were sent (request-reply, topic and
///   plugin changes) fail with [`Error::ConnectionLost`](crate::Error::ConnectionLost).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reconnect {
    /// Do not reconnect: a lost connection ends every request, subscription and
    /// membership with [`Error::ConnectionLost`](crate::Error::ConnectionLost).
    Never,
    /// Dial again with growing delays until connected or
    /// [`max_outage`](Backoff::max_outage) has passed.
    Backoff(Backoff),
}

impl Default for Reconnect {
    fn default() -> Self {
        Self::Backoff(Backoff::default())
    }
}

/// Delays between reconnection attempts: exponential from `initial_delay` up to
/// `max_delay`, each with random jitter (between half and all of it), so that many
/// clients of a restarted broker do not all dial at the same moment.
///
/// ```
/// use std::time::Duration;
/// use quiver_client::{Backoff, Reconnect};
///
/// let policy = Reconnect::Backoff(Backoff {
///     max_outage: Duration::from_secs(20),
///     ..Backoff::default()
/// });
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The delay before the first attempt. Default: 100 ms.
    pub initial_delay: Duration,
    /// The longest delay between attempts. Default: 5 s.
    pub max_delay: Duration,
    /// How long the client keeps trying after the connection was lost. After that the
    /// client closes: what is in flight fails (a publish that was sent with
    /// [`Error::OutcomeUnknown`](crate::Error::OutcomeUnknown)) and so does every
    /// request made later. Keep it well below the broker's dedup window (`[dedup]
    /// window`, 2 minutes by default): a publish sent again after that window may be
    /// stored twice. Default: 60 s.
    pub max_outage: Duration,
    /// How long one attempt to reach one address may take. QUIC repeats its first
    /// packet with growing gaps, so a short attempt notices a broker that is back
    /// sooner than a long one would. Default: 2 s.
    pub attempt_timeout: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(5),
            max_outage: Duration::from_secs(60),
            attempt_timeout: Duration::from_secs(2),
        }
    }
}

impl Backoff {
    /// The delay before attempt `attempt` (from 1), with `jitter` (0 to 1) choosing
    /// where it falls between half and all of the exponential delay.
    pub(crate) fn delay(&self, attempt: u32, jitter: f64) -> Duration {
        let doublings = attempt.saturating_sub(1).min(30);
        let full = self
            .initial_delay
            .saturating_mul(1 << doublings)
            .min(self.max_delay);
        full.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
    }
}

/// A random number between 0 and 1 for [`Backoff::delay`]'s jitter.
pub(crate) fn jitter() -> f64 {
    let mut bytes = [0u8; 8];
    // Without randomness the delay is simply the longest of its range.
    if getrandom::fill(&mut bytes).is_err() {
        return 1.0;
    }
    (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64
}

/// Where a client's connection stands; watch it with
/// [`Client::state`](crate::Client::state).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectionState {
    /// Connected to the broker at `addr`.
    Connected {
        /// The address as given to the builder.
        addr: String,
    },
    /// The connection was lost; the client is dialing again.
    Reconnecting {
        /// The attempt under way or next (from 1).
        attempt: u32,
        /// Why the connection was lost, or why the last attempt failed.
        last_error: String,
    },
    /// The client is closed: closed by the application, lost with
    /// [`Reconnect::Never`], or not reconnected within the maximum outage.
    Closed {
        /// Why.
        reason: String,
    },
}

impl fmt::Display for ConnectionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Connected { addr } => write!(f, "connected to {addr}"),
            Self::Reconnecting {
                attempt,
                last_error,
            } => write!(f, "reconnecting (attempt {attempt}): {last_error}"),
            Self::Closed { reason } => write!(f, "closed: {reason}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_to_the_maximum_within_their_jitter() {
        let backoff = Backoff::default();
        let ms = |d: Duration| d.as_millis();
        assert_eq!(ms(backoff.delay(1, 1.0)), 100);
        assert_eq!(ms(backoff.delay(1, 0.0)), 50);
        assert_eq!(ms(backoff.delay(4, 1.0)), 800);
        assert_eq!(ms(backoff.delay(7, 1.0)), 5000, "capped");
        assert_eq!(ms(backoff.delay(u32::MAX, 0.0)), 2500, "no overflow");
        for _ in 0..100 {
            let j = jitter();
            assert!((0.0..1.0).contains(&j));
        }
    }
}
