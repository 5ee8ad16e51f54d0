//! The live topics by name.
//!
//! Every publish finds its topic by name, so the registry answers that from a hash
//! map: with a `BTreeMap` alone, a broker over 1,000 topics spent 6 % of its runtime
//! workers' time comparing names (docs/performance.md, "sled's IO threads woken one
//! at a time"). Listing, patterns and groups go through the topics in name order, so
//! the registry keeps that order beside it; both change only as topics are created
//! and deleted.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use quiver_protocol::TopicName;

use crate::storage::TopicLog;

#[derive(Debug, Default)]
pub(super) struct Registry {
    by_name: HashMap<TopicName, Arc<TopicLog>>,
    ordered: BTreeMap<TopicName, Arc<TopicLog>>,
}

impl Registry {
    /// The topic named `name`.
    pub(super) fn get(&self, name: &str) -> Option<&Arc<TopicLog>> {
        self.by_name.get(name)
    }

    /// Whether a topic is named `name`.
    pub(super) fn contains(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    /// How many topics there are.
    pub(super) fn len(&self) -> usize {
        self.by_name.len()
    }

    /// The topics in name order.
    pub(super) fn in_order(&self) -> impl Iterator<Item = &Arc<TopicLog>> {
        self.ordered.values()
    }

    /// Adds `log` under its name, in place of any topic of that name.
    pub(super) fn insert(&mut self, log: &Arc<TopicLog>) {
        self.by_name.insert(log.name().clone(), Arc::clone(log));
        self.ordered.insert(log.name().clone(), Arc::clone(log));
    }

    /// Removes `log`, if its name is still its own (not a newer topic's of the same
    /// name).
    pub(super) fn remove(&mut self, log: &TopicLog) {
        if self
            .get(log.name().as_str())
            .is_some_and(|l| l.id() == log.id())
        {
            self.by_name.remove(log.name().as_str());
            self.ordered.remove(log.name().as_str());
        }
    }
}

impl FromIterator<Arc<TopicLog>> for Registry {
    fn from_iter<I: IntoIterator<Item = Arc<TopicLog>>>(logs: I) -> Self {
        let mut registry = Self::default();
        for log in logs {
            registry.insert(&log);
        }
        registry
    }
}
