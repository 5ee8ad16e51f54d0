//! The plugin output path: arbitrary outcomes, as a guest may return them, applied by
//! the broker's pure pipeline core (`quiver_host::plugins::pipeline::apply`) stage after
//! stage, on ingress or on a subscription.
//!
//! Outcomes come in any number (too few or too many for the records), replace a record
//! with up to thousands, route to arbitrary strings or to none. Properties: applying
//! never panics; every record a stage receives is accounted for exactly once (passed
//! on, dropped, routed or dead-lettered); nothing comes out that the guest did not ask
//! for (`Outcome::outputs`, the count the plugin figures report); what goes on keeps its
//! input's offset and order; every dead letter becomes a record naming where it came
//! from.

#![no_main]

use std::collections::BTreeSet;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use quiver_host::plugins::Outcome;
use quiver_host::plugins::pipeline::{Item, Sorted, apply};
use quiver_protocol::NewRecord;
use quiver_protocol::record::headers;

/// What a guest may return for one record.
#[derive(Debug, Arbitrary)]
enum GuestOutcome {
    Keep,
    Drop,
    /// Replace the record with these payloads.
    Replace(Vec<Vec<u8>>),
    /// Replace the record with this many copies of one payload: huge outputs.
    Flood {
        copies: u16,
        payload: Vec<u8>,
    },
    Route(Vec<String>),
    Reject(String),
}

impl GuestOutcome {
    fn into_outcome(self) -> Outcome {
        match self {
            Self::Keep => Outcome::Keep,
            Self::Drop => Outcome::Drop,
            Self::Replace(payloads) => {
                Outcome::Replace(payloads.into_iter().map(NewRecord::new).collect())
            }
            Self::Flood { copies, payload } => {
                let record = NewRecord::new(payload);
                Outcome::Replace(vec![record; usize::from(copies)])
            }
            Self::Route(topics) => Outcome::Route(topics),
            Self::Reject(reason) => Outcome::Reject(reason),
        }
    }
}

#[derive(Debug, Arbitrary)]
struct Input {
    /// On a topic's ingress (routes allowed) or on a subscription.
    ingress: bool,
    /// The payloads of the records published or delivered.
    payloads: Vec<Vec<u8>>,
    /// Each stage's outcomes, in stage order.
    stages: Vec<Vec<GuestOutcome>>,
}

fuzz_target!(|input: Input| {
    let mut current: Vec<Item> = input
        .payloads
        .into_iter()
        .zip(0..)
        .map(|(payload, offset)| Item {
            offset,
            timestamp: 0,
            record: NewRecord::new(payload),
            publish: 0,
        })
        .collect();
    let mut sorted = Sorted::default();
    for (stage, outcomes) in input.stages.into_iter().enumerate() {
        if current.is_empty() {
            break;
        }
        // Tell the stage's inputs apart (outputs of one replaced record share its
        // offset) by their position, carried in the timestamp, which `apply` keeps.
        for (position, item) in (0..).zip(&mut current) {
            item.timestamp = position;
        }
        let offsets: Vec<u64> = current.iter().map(|item| item.offset).collect();
        let outcomes: Vec<Outcome> = outcomes
            .into_iter()
            .map(GuestOutcome::into_outcome)
            .collect();
        let fits = outcomes.len() == current.len();
        let asked: u64 = outcomes.iter().map(Outcome::outputs).sum();
        let emptied = outcomes
            .iter()
            .filter(|o| matches!(o, Outcome::Replace(records) if records.is_empty()))
            .count();
        let before = (sorted.dropped.len(), sorted.routed.len(), sorted.dead.len());

        let version = stage.to_string();
        let next = apply(
            current,
            outcomes,
            ("fuzzed", &version),
            input.ingress,
            &mut sorted,
        );

        let dropped = sorted.dropped.len() - before.0;
        let routed = &sorted.routed[before.1..];
        let dead = &sorted.dead[before.2..];
        if !fits {
            assert!(next.is_empty() && routed.is_empty() && dropped == 0);
            assert_eq!(
                dead.len(),
                offsets.len(),
                "a misfit output dead-letters every record"
            );
        }
        let out = next.len() + routed.len();
        assert!(
            out as u64 <= asked,
            "{out} records out, the guest asked for {asked}"
        );
        assert!(
            input.ingress || routed.is_empty(),
            "a subscription never routes"
        );
        // Every input is passed on (as itself or its replacements), routed, dropped,
        // dead-lettered or replaced with nothing: exactly one of these.
        let went_on: BTreeSet<u64> = next
            .iter()
            .chain(routed.iter().map(|r| &r.item))
            .map(|item| item.timestamp)
            .collect();
        let stopped: BTreeSet<u64> = dead.iter().map(|d| d.item.timestamp).collect();
        assert!(went_on.is_disjoint(&stopped) && stopped.len() == dead.len());
        let emptied = if fits { emptied } else { 0 };
        assert_eq!(
            went_on.len() + stopped.len() + dropped + emptied,
            offsets.len()
        );
        // What goes on keeps its input's offset and order.
        assert!(next.windows(2).all(|w| w[0].timestamp <= w[1].timestamp));
        for item in next.iter().chain(routed.iter().map(|r| &r.item)) {
            assert_eq!(Some(&item.offset), offsets.get(item.timestamp as usize));
        }
        current = next;
    }
    for dead in sorted.dead {
        let record = dead.into_record("topic");
        assert!(
            record
                .header(headers::DLQ_PLUGIN)
                .is_some_and(|p| p == "fuzzed")
        );
        assert!(record.header(headers::DLQ_REASON).is_some());
    }
});
