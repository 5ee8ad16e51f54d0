//! The publish path: check, deduplicate, run the topic's ingress plugins, and hand
//! everything the publishes produced (records for the topic, routed copies, dead
//! letters, plugin state, the ids to remember) to storage as one atomic append; answer
//! each publish with its receipt once that is durable.
//!
//! One path serves both requests ([`Publishes`]): a `Publish` is one publish of one or
//! more records, a `PublishEach` one publish per record, each checked, deduplicated and
//! answered on its own, all stored in one write (and their plugins called once).
//!
//! - `order`: the order of one connection's publishes ([`PublishOrder`]), and when a
//!   publish must wait for the one before it;
//! - `across`: one-record publishes to several topics in one request
//!   (`PublishAcross`), as one write when no plugin is in the way;
//! - `prepare`: the checks and deduplication claims, before a publish's turn;
//! - `forward`: records forwarded over a link, turned into a publish that also moves
//!   their origin's mark;
//! - `store`: in its turn, the plugins and the write, and the receipts after it.
//!
//! Invariants worth naming:
//! - what a publish produced becomes durable together or not at all, and its receipt
//!   is sent only after that; the receipt is computed once, by storage, from the
//!   offsets the write got;
//! - one connection's publishes reach storage in the order they arrived;
//! - plugin state reaches storage in the order the calls that wrote it ran
//!   (`Plugins::run_then`).

mod across;
mod forward;
mod order;
mod prepare;
mod store;

use std::sync::Arc;

use futures::future::{BoxFuture, FutureExt};
use quiver_protocol::{NewRecord, PublishId, Receipt, WireError};

use super::{Broker, BrokerError};
use crate::storage::MarkWrite;
pub use across::Run;
pub(crate) use forward::{hops, is_provenance, path_before, visited};
pub use order::PublishOrder;

/// The publishes of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Publishes {
    /// A `Publish`: one publish of these records (in order), with an id if retries
    /// should be deduplicated.
    One {
        /// The records.
        records: Vec<NewRecord>,
        /// The publish's id.
        id: Option<PublishId>,
    },
    /// A `PublishEach`: one publish per record, with ids counting up from `first`.
    Each {
        /// The records, one per publish.
        records: Vec<NewRecord>,
        /// The first publish's id.
        first: PublishId,
    },
    /// Records forwarded over a link (`forward.rs`): one publish, stored with their
    /// original timestamps and with the move of their origin's mark.
    Forwarded {
        /// The records, provenance headers set.
        records: Vec<NewRecord>,
        /// The mark to move, with each record's original timestamp.
        mark: MarkWrite,
    },
}

/// One outcome per publish of a request, in order, or why the request as a whole was
/// refused.
pub type Outcomes = Result<Vec<Result<Receipt, WireError>>, BrokerError>;

/// The outcome of a request of one publish (`Publishes::One`): its receipt or error.
pub fn one_outcome(outcomes: Outcomes) -> Result<Receipt, WireError> {
    let mut outcomes = outcomes.map_err(|e| WireError::from(&e))?;
    outcomes.pop().unwrap_or_else(|| {
        Err(WireError::new(
            quiver_protocol::ErrorCode::Internal,
            "the publish was answered with no outcome",
        ))
    })
}

impl Publishes {
    /// Records in all.
    fn records(&self) -> usize {
        match self {
            Self::One { records, .. }
            | Self::Each { records, .. }
            | Self::Forwarded { records, .. } => records.len(),
        }
    }

    /// The ids of the publishes that carry one (once the request is checked).
    fn ids(&self) -> impl Iterator<Item = PublishId> + use<> {
        let (first, count) = match self {
            Self::One { id, .. } => (*id, 1),
            Self::Forwarded { .. } => (None, 0),
            Self::Each { records, first } => (Some(*first), records.len() as u64),
        };
        first.into_iter().flat_map(move |first| {
            (0..count).map(move |i| PublishId {
                producer: first.producer,
                sequence: first.sequence.saturating_add(i),
            })
        })
    }

    /// Each publish: its records and its id (once the request is checked).
    fn into_each(self) -> Vec<(Vec<NewRecord>, Option<PublishId>)> {
        match self {
            Self::One { records, id } => vec![(records, id)],
            Self::Forwarded { records, .. } => vec![(records, None)],
            Self::Each { records, first } => (0..)
                .zip(records)
                .map(|(i, record)| {
                    let id = PublishId {
                        producer: first.producer,
                        sequence: first.sequence.saturating_add(i),
                    };
                    (vec![record], Some(id))
                })
                .collect(),
        }
    }
}

impl Broker {
    /// Starts the publishes of a request from a connection whose publishes keep
    /// `order`; the returned future resolves to their outcomes once they are durable.
    ///
    /// A request needing no turn (see `order.rs`) is queued to storage before this
    /// returns, so the connection's next request comes after it; any other is checked
    /// and deduplicated, then run through its plugins and queued, in the returned
    /// future, after the connection's publish before it.
    pub async fn publish(
        self: &Arc<Self>,
        order: &mut PublishOrder,
        topic: &str,
        publishes: Publishes,
    ) -> BoxFuture<'static, Outcomes> {
        self.publish_via(order, topic, publishes, None).await
    }

    /// [`Broker::publish`], with `through`'s plugin (a name and one of its deployed
    /// versions) running that version in the topic's pipeline for these publishes.
    pub async fn publish_via(
        self: &Arc<Self>,
        order: &mut PublishOrder,
        topic: &str,
        publishes: Publishes,
        through: Option<(String, String)>,
    ) -> BoxFuture<'static, Outcomes> {
        let checked = self.topic(topic).and_then(|log| {
            self.check_request(&publishes)?;
            Ok(log)
        });
        let log = match checked {
            Ok(log) => log,
            Err(e) => return std::future::ready(Err(e)).boxed(),
        };
        // The stages as they are now serve this request, however the pipeline changes.
        // (A forwarded batch may hold no record, only its mark's move: no call.)
        let stages = match (publishes.records(), &through) {
            (0, None) => None,
            _ => self.plugins.topic_stages(log.id()),
        };
        if through.is_none()
            && stages.is_none()
            && !self.would_wait(publishes.ids())
            && order.idle()
        {
            let claimed = self.claim(log, publishes).await;
            return match self.queue_plain(claimed).await {
                Ok(queued) => queued.durable().map(Ok).boxed(),
                Err(e) => std::future::ready(Err(e)).boxed(),
            };
        }
        let plugins: Arc<[String]> = match &stages {
            Some(stages) => {
                let mut names: Vec<String> = stages.iter().map(|s| s.plugin().to_owned()).collect();
                names.sort_unstable();
                names.dedup();
                names.into()
            }
            None => Arc::new([]),
        };
        let mut turn = order.turn(plugins);
        let broker = Arc::clone(self);
        async move {
            // Pinning may compile the version's code: not before the turn is taken,
            // which keeps the connection's order, and not on the connection's task.
            let stages = match through {
                None => stages,
                Some((plugin, version)) => Some(
                    broker
                        .plugins
                        .pin(log.name().as_str(), stages, &plugin, &version)
                        .await?,
                ),
            };
            let claimed = broker.claim(log, publishes).await;
            let queued = match stages {
                None => {
                    turn.queue_after_previous().await;
                    broker.queue_plain(claimed).await
                }
                Some(stages) => {
                    turn.call_after_previous().await;
                    broker.queue_through(claimed, stages, &turn).await
                }
            };
            // The next publish of this connection may go to storage now.
            drop(turn);
            Ok(queued?.durable().await)
        }
        .boxed()
    }

    /// The broker's own publish of `records` to `topic` (request-reply), outside any
    /// connection's order: its receipt once durable.
    pub async fn publish_alone(
        self: &Arc<Self>,
        topic: &str,
        records: Vec<NewRecord>,
    ) -> Result<Receipt, BrokerError> {
        let publishes = Publishes::One { records, id: None };
        let mut order = PublishOrder::default();
        let mut outcomes = self.publish(&mut order, topic, publishes).await.await?;
        match outcomes.pop() {
            Some(outcome) => outcome.map_err(BrokerError::from),
            None => Err(BrokerError::InvalidArgument(
                "a publish was answered with no outcome".into(),
            )),
        }
    }
}
