//! Durable groups from the broker's side: creating, deleting, describing and resetting
//! them (which needs the topic registry), and dead-lettering what they give up on.

use std::collections::BTreeMap;
use std::sync::Arc;

use quiver_protocol::record::{decode_shared, headers};
use quiver_protocol::{GroupInfo, GroupSettings, NewRecord, StartAt, TopicName, TopicPattern};
use tracing::{error, info, warn};

use super::{Broker, BrokerError};
use crate::groups::state::{DeadLetter, Lane};
use crate::groups::{Changes, Group, Loaded};
use crate::storage::{GroupRecord, GroupWrite, PendingAppend, StorageError, TopicLog};
use crate::util::now_ms;

/// The most records a member may hold unsettled.
pub(crate) const MAX_PREFETCH: u32 = 10_000;

impl Broker {
    /// A group by name.
    pub fn group(&self, name: &str) -> Result<Arc<Group>, BrokerError> {
        self.groups
            .get(name)
            .ok_or_else(|| BrokerError::GroupNotFound(name.to_owned()))
    }

    /// Where `log`'s records start for a reader (a group, a browse) reading it `from`.
    pub(super) fn start_offset(&self, log: &TopicLog, from: StartAt) -> Result<u64, StorageError> {
        let stats = log.stats();
        Ok(match from {
            StartAt::Earliest => stats.first,
            StartAt::Latest => stats.next,
            StartAt::Offset(offset) => offset.max(stats.first),
            StartAt::Timestamp(ms) => self.storage.offset_for_timestamp(log, ms)?,
        })
    }

    /// Creates a durable group.
    pub async fn create_group(
        &self,
        name: &str,
        settings: GroupSettings,
    ) -> Result<GroupInfo, BrokerError> {
        TopicName::parse(name).map_err(|e| {
            BrokerError::InvalidArgument(format!(
                "invalid group name `{name}`: {e} (group names follow the topic-name grammar)"
            ))
        })?;
        let pattern = TopicPattern::parse(&settings.pattern).map_err(|source| {
            BrokerError::InvalidPattern {
                pattern: settings.pattern.clone(),
                source,
            }
        })?;
        if let Some(dead_letter) = &settings.dead_letter {
            Self::parse_name(dead_letter)?;
        }
        let invalid = |what: &str| Err(BrokerError::InvalidArgument(what.to_owned()));
        if settings.ack_timeout_ms == 0 {
            return invalid("the ack timeout must be longer than zero");
        }
        if settings.max_deliveries == 0 {
            return invalid("max deliveries must be at least 1");
        }
        if settings.prefetch == 0 || settings.prefetch > MAX_PREFETCH {
            return invalid(&format!("prefetch must be 1 to {MAX_PREFETCH}"));
        }
        // Held until the group is in the registry: a concurrent creation of the same
        // name waits, then finds it there (not only in storage). Exclusive: topics
        // being created are in the registry before the group looks for its topics.
        // Let go with the follow-up below, even when this caller is gone before then.
        let creating = Arc::clone(&self.creation).write_owned().await;
        if self.groups.get(name).is_some() {
            return Err(BrokerError::GroupExists(name.to_owned()));
        }
        let mut lanes = Vec::new();
        for log in self
            .topics()
            .into_iter()
            .filter(|log| pattern.matches(log.name()))
        {
            let cursor = self.start_offset(&log, settings.from)?;
            lanes.push((log, Lane::new(cursor, BTreeMap::new(), 0, 0)));
        }
        let record = GroupRecord {
            id: self.storage.generate_id()?,
            name: name.to_owned(),
            settings,
            created_ms: now_ms(),
        };
        let stored_lanes = lanes
            .iter()
            .map(|(log, lane)| (log.id(), lane.cursor))
            .collect();
        let (group, _) = Group::new(record.clone(), pattern, lanes);
        let (groups, created) = (Arc::clone(&self.groups), Arc::clone(&group));
        self.storage
            .create_group_then(record, stored_lanes, move || {
                groups.insert(created);
                drop(creating);
            })
            .await?;
        info!(group = name, pattern = %group.pattern(), "group created");
        Ok(group.info())
    }

    /// Deletes a group; its members are told and its state is removed.
    pub async fn delete_group(&self, name: &str) -> Result<(), BrokerError> {
        let group = self.group(name)?;
        let (groups, deleted) = (Arc::clone(&self.groups), name.to_owned());
        self.storage
            .delete_group_then(name.to_owned(), group.record.id, move || {
                groups.remove(&deleted);
            })
            .await?;
        // Its lanes and pending records are purged in the background, in steps.
        self.cleanup.purge();
        info!(group = name, "group deleted");
        Ok(())
    }

    /// Describes a group. The group's state changes queued before the call are
    /// durable by the time it returns: after a member has left, what `describe` shows
    /// is what a crash would keep.
    pub async fn describe_group(&self, name: &str) -> Result<GroupInfo, BrokerError> {
        let group = self.group(name)?;
        self.sync_and_persist(&group).await;
        let info = group.info();
        self.storage.sync().await?;
        Ok(info)
    }

    /// Every group, by name.
    pub async fn list_groups(&self) -> Vec<GroupInfo> {
        let mut infos = Vec::new();
        for group in self.groups.all() {
            self.sync_and_persist(&group).await;
            infos.push(group.info());
        }
        infos
    }

    /// Moves a group's cursor in every topic it consumes (replay, or skip ahead);
    /// records it held pending are forgotten.
    pub async fn reset_group(&self, name: &str, to: StartAt) -> Result<GroupInfo, BrokerError> {
        let group = self.group(name)?;
        let changes = group.changes().await;
        let mut writes = self.sync_group_topics(&changes);
        let reset = changes.reset(|log| self.start_offset(log, to));
        // The topics taken in or dropped above are stored even if no cursor moved.
        let reset = reset.map(|moved| writes.extend(moved));
        self.persist_group(&group, writes).await;
        drop(changes);
        reset?;
        info!(group = name, ?to, "group reset");
        Ok(group.info())
    }

    /// Adds lanes for topics created since the group last looked (they are consumed
    /// from their first record) and drops those of deleted topics. Cheap when nothing
    /// changed: one pass over the topic registry.
    pub fn sync_group_topics(&self, changes: &Changes<'_>) -> Vec<GroupWrite> {
        let mut writes = changes.drop_deleted_topics();
        for log in self.topics() {
            if let Some(added) = changes.add_topic(&log, log.stats().first) {
                writes.extend(added);
            }
        }
        writes
    }

    /// [`sync_group_topics`](Broker::sync_group_topics), with what it changed queued.
    async fn sync_and_persist(&self, group: &Group) {
        let changes = group.changes().await;
        let writes = self.sync_group_topics(&changes);
        self.persist_group(group, writes).await;
    }

    /// Hands a group's state changes to storage (call it holding the group's
    /// [`Changes`], which made them).
    pub async fn persist_group(&self, group: &Group, writes: Vec<GroupWrite>) {
        let result = self
            .storage
            .group_writes(group.record.name.clone(), group.record.id, writes)
            .await;
        if let Err(e) = result {
            warn!(group = %group.name(), cause = %e, "group state not persisted");
        }
    }

    /// Applies what a group change produced: `dead` records go to the dead-letter
    /// topic and `writes` to the group's state (call it holding the group's
    /// [`Changes`], which made them).
    ///
    /// The dead letters are queued to storage before the state change that forgets
    /// their records, and storage commits in queue order: a crash may leave a record
    /// both pending and dead-lettered (delivered once more), never neither.
    pub async fn apply_group_changes(
        &self,
        group: &Group,
        writes: Vec<GroupWrite>,
        dead: Vec<DeadLetter>,
    ) {
        let dead_letters = match dead.is_empty() {
            true => None,
            false => match self.queue_group_dead_letters(group, dead).await {
                Ok(pending) => Some(pending),
                Err(e) => {
                    error!(group = %group.name(), cause = %e, "records given up on could not be dead-lettered");
                    None
                }
            },
        };
        self.persist_group(group, writes).await;
        if let Some(pending) = dead_letters
            && let Err(e) = pending.durable().await
        {
            error!(group = %group.name(), cause = %e, "records given up on could not be dead-lettered");
        }
    }

    /// Queues records a group gave up on for its dead-letter topic (the group's, or
    /// each topic's), with headers saying where they came from and why. Records
    /// retention removed meanwhile are skipped.
    async fn queue_group_dead_letters(
        &self,
        group: &Group,
        dead: Vec<DeadLetter>,
    ) -> Result<PendingAppend, BrokerError> {
        let mut by_topic: BTreeMap<String, (Arc<TopicLog>, Vec<NewRecord>)> = BTreeMap::new();
        for letter in dead {
            let Some(log) = group.log(letter.topic) else {
                continue;
            };
            let Some(slice) = self.storage.read(&log, letter.offset, 1, usize::MAX)? else {
                continue;
            };
            if slice.base_offset != letter.offset {
                continue;
            }
            let Some(stored) = decode_shared(slice.base_offset, &slice.batch)
                .map_err(StorageError::from)?
                .pop()
            else {
                continue;
            };
            let record = NewRecord {
                key: stored.key,
                headers: stored.headers,
                payload: stored.payload,
            }
            .with_header(headers::DLQ_TOPIC, log.name().to_string())
            .with_header(headers::DLQ_OFFSET, letter.offset.to_string())
            .with_header(headers::DLQ_DELIVERIES, letter.deliveries.to_string())
            .with_header(headers::DLQ_GROUP, group.name().to_owned())
            .with_header(headers::DLQ_REASON, letter.reason);
            let dlq = match &group.record.settings.dead_letter {
                Some(name) => self.topic_or_create(name).await?,
                None => self.dead_letter_topic(&log).await?,
            };
            by_topic
                .entry(dlq.name().to_string())
                .or_insert_with(|| (dlq, Vec::new()))
                .1
                .push(record);
        }
        let appends = by_topic.into_values().collect();
        Ok(self
            .storage
            .submit_append(appends, Vec::new(), Vec::new(), None)
            .await?)
    }

    /// Dead-letters what loading the groups gave up on and persists what loading
    /// changed (run once, at start-up).
    pub async fn settle_loaded_groups(&self, loaded: Vec<Loaded>) {
        for Loaded {
            group,
            dead,
            writes,
        } in loaded
        {
            let changes = group.changes().await;
            self.apply_group_changes(&group, writes, dead).await;
            drop(changes);
        }
    }
}
