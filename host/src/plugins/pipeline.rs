//! Running records through ordered plugin stages, and what becomes of each.
//!
//! [`apply`] is the pure core: given a stage's inputs and outcomes it sorts records
//! into kept (on to the next stage), routed, dead-lettered and dropped. [`run`] drives
//! the stages with it.
//!
//! Rules:
//! - a stage sees the records the previous one kept or made, in order;
//! - `route` takes a record out of the pipeline to the named topics (later stages do
//!   not see it); on a subscription, where nothing is published, it is an error;
//! - a failed call dead-letters every record of its batch; a quarantined stage passes
//!   records unchanged (fail-open) or refuses them all (fail-closed).

use std::sync::Arc;

use quiver_protocol::NewRecord;
use quiver_protocol::record::headers;

use super::stage::{StageRun, StageRunner};
use super::{InputEvent, Outcome, Plugins};
use crate::storage::StateWrite;

/// A record travelling through a pipeline, with the offset and time it is known by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// On ingress, its position in the publish; on delivery, its offset.
    pub offset: u64,
    /// On ingress, the time of the publish; on delivery, its append time.
    pub timestamp: u64,
    /// The record.
    pub record: NewRecord,
    /// On ingress, which of the publishes sharing one call it belongs to (the
    /// publishes of a `PublishEach`); 0 otherwise. Plugins do not see it.
    pub publish: u32,
}

/// A record that goes to the dead-letter topic, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The record as the failing stage received it.
    pub item: Item,
    /// The plugin that failed on it or rejected it.
    pub plugin: String,
    /// That plugin's version.
    pub version: String,
    /// What happened.
    pub reason: String,
}

impl DeadLetter {
    /// The record to store in the dead-letter topic: the original with headers naming
    /// the topic, offset, plugin, version and reason.
    pub fn into_record(self, topic: &str) -> NewRecord {
        self.item
            .record
            .with_header(headers::DLQ_TOPIC, topic.to_owned())
            .with_header(headers::DLQ_OFFSET, self.item.offset.to_string())
            .with_header(headers::DLQ_PLUGIN, self.plugin)
            .with_header(headers::DLQ_VERSION, self.version)
            .with_header(headers::DLQ_REASON, self.reason)
    }
}

/// A record a stage routed out of the pipeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routed {
    /// The target topic, as the plugin named it.
    pub topic: String,
    /// The record.
    pub item: Item,
    /// The plugin that routed it.
    pub plugin: String,
    /// That plugin's version.
    pub version: String,
}

impl Routed {
    /// A dead letter for a record whose target cannot take it.
    pub fn undeliverable(self, reason: String) -> DeadLetter {
        DeadLetter {
            item: self.item,
            plugin: self.plugin,
            version: self.version,
            reason,
        }
    }
}

/// Where a pipeline sent its records.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Sorted {
    /// Records that passed every stage.
    pub passed: Vec<Item>,
    /// Records routed out (once per target).
    pub routed: Vec<Routed>,
    /// Records for the dead-letter topic.
    pub dead: Vec<DeadLetter>,
    /// The publish ([`Item::publish`]) of each record dropped.
    pub dropped: Vec<u32>,
    /// State written by the stages' calls.
    pub state: Vec<StateWrite>,
}

impl Sorted {
    /// Sorts what happened by publish (`publishes` of them, numbered by
    /// [`Item::publish`]); the state written stays with the whole.
    pub fn split(self, publishes: usize) -> (Vec<Sorted>, Vec<StateWrite>) {
        let mut each: Vec<Sorted> = (0..publishes).map(|_| Sorted::default()).collect();
        // Every output keeps its input's publish (`apply` copies it), so it is always
        // in range; were it not, the record would go to the last publish, not vanish.
        let last = publishes.saturating_sub(1);
        let at = |publish: u32| (publish as usize).min(last);
        if each.is_empty() {
            return (each, self.state);
        }
        for item in self.passed {
            each[at(item.publish)].passed.push(item);
        }
        for route in self.routed {
            each[at(route.item.publish)].routed.push(route);
        }
        for dead in self.dead {
            each[at(dead.item.publish)].dead.push(dead);
        }
        for publish in self.dropped {
            each[at(publish)].dropped.push(publish);
        }
        (each, self.state)
    }
}

/// A pipeline that refused its records: a fail-closed stage is quarantined.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "plugin `{plugin}` is quarantined after repeated failures, and its attachment fails closed"
)]
pub struct Refused {
    /// The quarantined plugin.
    pub plugin: String,
}

/// Sorts one stage's inputs by its outcomes (one per input, in order). Returns what
/// goes on to the next stage.
///
/// Every input is accounted for, whatever the outcomes: output the runtime refuses
/// before it gets here (a count that differs from the inputs', a route to no topic)
/// dead-letters the records concerned rather than losing them.
pub fn apply(
    inputs: Vec<Item>,
    outcomes: Vec<Outcome>,
    stage: (&str, &str),
    ingress: bool,
    sorted: &mut Sorted,
) -> Vec<Item> {
    let (plugin, version) = stage;
    let dead_letter = |item, reason| DeadLetter {
        item,
        plugin: plugin.into(),
        version: version.into(),
        reason,
    };
    if outcomes.len() != inputs.len() {
        let reason = format!(
            "{} outcomes for {} records (one per record is required)",
            outcomes.len(),
            inputs.len()
        );
        sorted.dead.extend(
            inputs
                .into_iter()
                .map(|item| dead_letter(item, reason.clone())),
        );
        return Vec::new();
    }
    let mut next = Vec::with_capacity(inputs.len());
    for (item, outcome) in inputs.into_iter().zip(outcomes) {
        match outcome {
            Outcome::Keep => next.push(item),
            Outcome::Drop => sorted.dropped.push(item.publish),
            Outcome::Replace(records) => next.extend(records.into_iter().map(|record| Item {
                record,
                ..item.clone()
            })),
            Outcome::Route(topics) if topics.is_empty() => {
                sorted
                    .dead
                    .push(dead_letter(item, "routed to no topic".into()));
            }
            Outcome::Route(topics) if ingress => {
                sorted.routed.extend(topics.into_iter().map(|topic| Routed {
                    topic,
                    item: item.clone(),
                    plugin: plugin.into(),
                    version: version.into(),
                }));
            }
            Outcome::Route(_) => sorted.dead.push(dead_letter(
                item,
                "route is only possible on ingress, not on a subscription".into(),
            )),
            Outcome::Reject(reason) => sorted.dead.push(dead_letter(item, reason)),
        }
    }
    next
}

/// Runs `items` of `topic` through `stages` (blocking: run it off the async workers).
pub fn run(
    plugins: &Plugins,
    stages: &[Arc<StageRunner>],
    topic: &str,
    items: Vec<Item>,
    ingress: bool,
) -> Result<Sorted, Refused> {
    let mut sorted = Sorted::default();
    let mut current = items;
    for stage in stages {
        if current.is_empty() {
            break;
        }
        let events: Vec<InputEvent<'_>> = current
            .iter()
            .map(|item| InputEvent {
                offset: item.offset,
                timestamp: item.timestamp,
                record: &item.record,
            })
            .collect();
        match stage.run(plugins, topic, &events) {
            StageRun::Ran(output) => {
                let version = stage.version();
                sorted
                    .state
                    .extend(output.state.into_iter().map(|(key, value)| StateWrite {
                        plugin: stage.plugin().to_owned(),
                        key,
                        value,
                    }));
                current = apply(
                    current,
                    output.outcomes,
                    (stage.plugin(), &version),
                    ingress,
                    &mut sorted,
                );
            }
            StageRun::Failed(error) => {
                let (plugin, version, reason) =
                    (stage.plugin(), stage.version(), error.to_string());
                sorted.dead.extend(current.drain(..).map(|item| DeadLetter {
                    item,
                    plugin: plugin.to_owned(),
                    version: version.clone(),
                    reason: reason.clone(),
                }));
            }
            StageRun::Skipped => {}
            StageRun::Refused => {
                return Err(Refused {
                    plugin: stage.plugin().to_owned(),
                });
            }
        }
    }
    sorted.passed = current;
    Ok(sorted)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;

    fn item(offset: u64, payload: &'static str) -> Item {
        Item {
            offset,
            timestamp: 7,
            record: NewRecord::new(payload),
            publish: 0,
        }
    }

    #[test]
    fn what_a_shared_call_did_is_sorted_back_to_each_publish() {
        let inputs = (0..4)
            .map(|i| Item {
                publish: i as u32,
                ..item(0, "x")
            })
            .collect();
        let outcomes = vec![
            Outcome::Replace(vec![NewRecord::new("a"), NewRecord::new("b")]),
            Outcome::Drop,
            Outcome::Route(vec!["elsewhere".into()]),
            Outcome::Reject("no".into()),
        ];
        let mut sorted = Sorted::default();
        sorted.passed = apply(inputs, outcomes, ("p", "1"), true, &mut sorted);
        let (each, _) = sorted.split(4);
        let passed = |s: &Sorted| {
            s.passed
                .iter()
                .map(|i| i.record.payload.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(passed(&each[0]), ["a", "b"]);
        assert_eq!(each[1].dropped, [1]);
        assert_eq!(each[2].routed[0].topic, "elsewhere");
        assert_eq!(each[3].dead[0].reason, "no");
        let lengths = |s: &Sorted| {
            (
                s.passed.len(),
                s.dropped.len(),
                s.routed.len(),
                s.dead.len(),
            )
        };
        let counts: Vec<_> = each.iter().map(lengths).collect();
        assert_eq!(
            counts,
            [(2, 0, 0, 0), (0, 1, 0, 0), (0, 0, 1, 0), (0, 0, 0, 1)]
        );
    }

    #[test]
    fn outcomes_sort_records() {
        let inputs = vec![
            item(0, "keep"),
            item(1, "drop"),
            item(2, "split"),
            item(3, "route"),
            item(4, "reject"),
        ];
        let outcomes = vec![
            Outcome::Keep,
            Outcome::Drop,
            Outcome::Replace(vec![NewRecord::new("a"), NewRecord::new("b")]),
            Outcome::Route(vec!["x".into(), "y".into()]),
            Outcome::Reject("bad".into()),
        ];
        let mut sorted = Sorted::default();
        let next = apply(inputs, outcomes, ("p", "1"), true, &mut sorted);
        let payloads: Vec<_> = next
            .iter()
            .map(|i| (i.offset, &i.record.payload[..]))
            .collect();
        assert_eq!(payloads, [(0, &b"keep"[..]), (2, b"a"), (2, b"b")]);
        assert_eq!(sorted.dropped.len(), 1);
        assert_eq!(
            sorted
                .routed
                .iter()
                .map(|r| r.topic.as_str())
                .collect::<Vec<_>>(),
            ["x", "y"]
        );
        assert_eq!(sorted.dead.len(), 1);
        assert_eq!(sorted.dead[0].reason, "bad");
        assert_eq!(sorted.dead[0].item.offset, 4);
    }

    #[test]
    fn routing_on_a_subscription_is_an_error() {
        let mut sorted = Sorted::default();
        let next = apply(
            vec![item(9, "r")],
            vec![Outcome::Route(vec!["x".into()])],
            ("p", "1"),
            false,
            &mut sorted,
        );
        assert!(next.is_empty() && sorted.routed.is_empty());
        assert!(sorted.dead[0].reason.contains("only possible on ingress"));
    }

    #[test]
    fn output_the_runtime_refuses_is_dead_lettered_not_lost() {
        let mut sorted = Sorted::default();
        let next = apply(
            vec![item(0, "a"), item(1, "b")],
            vec![Outcome::Keep],
            ("p", "1"),
            true,
            &mut sorted,
        );
        assert!(next.is_empty());
        let dead: Vec<_> = sorted.dead.iter().map(|d| d.item.offset).collect();
        assert_eq!(dead, [0, 1]);
        assert!(sorted.dead[0].reason.contains("1 outcomes for 2 records"));

        let mut sorted = Sorted::default();
        let next = apply(
            vec![item(0, "a")],
            vec![Outcome::Route(vec![])],
            ("p", "1"),
            true,
            &mut sorted,
        );
        assert!(next.is_empty() && sorted.routed.is_empty());
        assert_eq!(sorted.dead[0].reason, "routed to no topic");
    }

    fn outcome() -> impl Strategy<Value = Outcome> {
        prop_oneof![
            Just(Outcome::Keep),
            Just(Outcome::Drop),
            (0usize..4).prop_map(|n| Outcome::Replace(vec![NewRecord::new("r"); n])),
            proptest::collection::vec("[a-z.]{0,3}", 0..3).prop_map(Outcome::Route),
            ".{0,4}".prop_map(Outcome::Reject),
        ]
    }

    proptest! {
        /// Whatever a stage returns (the fuzz target `plugin_outcomes` tries more),
        /// every input is passed on, routed, dropped, dead-lettered or replaced with
        /// nothing, exactly one of these, and no more records come out than the
        /// plugin asked for.
        #[test]
        fn every_record_is_accounted_for(
            count in 0u64..6,
            outcomes in proptest::collection::vec(outcome(), 0..7),
            ingress in any::<bool>(),
        ) {
            let fits = outcomes.len() as u64 == count;
            let asked: u64 = outcomes.iter().map(Outcome::outputs).sum();
            let emptied = outcomes
                .iter()
                .filter(|o| fits && matches!(o, Outcome::Replace(r) if r.is_empty()))
                .count();
            let mut sorted = Sorted::default();
            let inputs = (0..count).map(|i| item(i, "x")).collect();
            let next = apply(inputs, outcomes, ("p", "1"), ingress, &mut sorted);

            let went_on: BTreeSet<u64> = next
                .iter()
                .chain(sorted.routed.iter().map(|r| &r.item))
                .map(|i| i.offset)
                .collect();
            let stopped: BTreeSet<u64> = sorted.dead.iter().map(|d| d.item.offset).collect();
            prop_assert!(went_on.is_disjoint(&stopped));
            prop_assert_eq!(stopped.len(), sorted.dead.len());
            let accounted = went_on.len() + stopped.len() + sorted.dropped.len() + emptied;
            prop_assert_eq!(accounted as u64, count);
            prop_assert!((next.len() + sorted.routed.len()) as u64 <= asked);
            prop_assert!(next.windows(2).all(|w| w[0].offset <= w[1].offset));
            prop_assert!(ingress || sorted.routed.is_empty());
        }
    }

    #[test]
    fn dead_letters_say_where_they_came_from() {
        let dead = DeadLetter {
            item: item(3, "x"),
            plugin: "p".into(),
            version: "2".into(),
            reason: "trapped".into(),
        };
        let record = dead.into_record("orders");
        let header = |n: &str| {
            record
                .headers
                .iter()
                .find(|h| h.name == n)
                .map(|h| h.value.clone())
        };
        assert_eq!(header("quiver-dlq-topic").unwrap(), "orders");
        assert_eq!(header("quiver-dlq-offset").unwrap(), "3");
        assert_eq!(header("quiver-dlq-plugin").unwrap(), "p");
        assert_eq!(header("quiver-dlq-version").unwrap(), "2");
        assert_eq!(header("quiver-dlq-reason").unwrap(), "trapped");
    }
}
