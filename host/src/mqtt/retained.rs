//! Retained messages: the last retained PUBLISH of each topic, delivered to every new
//! subscription whose filter matches it. Kept in memory and in storage (the MQTT
//! state's kind `r`, keyed by topic name), written before the PUBLISH is acknowledged,
//! so an acknowledged retained message survives a restart. An empty retained payload
//! clears the topic's.

use std::collections::BTreeMap;
use std::sync::{Arc, PoisonError, RwLock};

use bytes::Bytes;
use quiver_protocol::{Header, TopicName};
use serde::{Deserialize, Serialize};

use super::topic::Filter;
use crate::storage::{Storage, StorageError};

/// The storage kind of retained messages.
const KIND: u8 = b'r';

/// A retained message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct RetainedMessage {
    /// The QoS it was published with.
    pub(super) qos: u8,
    /// Its headers (user properties, content type…), as stored records carry them.
    pub(super) headers: Vec<Header>,
    /// Its payload.
    pub(super) payload: Bytes,
}

/// The retained message of every topic that has one.
#[derive(Debug, Default)]
pub(super) struct Retained {
    messages: RwLock<BTreeMap<String, Arc<RetainedMessage>>>,
}

impl Retained {
    /// Loads what storage holds; an entry that does not decode is skipped (and said).
    pub(super) fn load(storage: &Storage) -> Result<Self, StorageError> {
        let mut messages = BTreeMap::new();
        for (key, value) in storage.mqtt_entries(KIND)? {
            let topic = String::from_utf8_lossy(&key).into_owned();
            match postcard::from_bytes::<RetainedMessage>(&value) {
                Ok(message) => {
                    messages.insert(topic, Arc::new(message));
                }
                Err(e) => {
                    tracing::warn!(%topic, error = %e, "a stored retained message does not decode; skipped")
                }
            }
        }
        Ok(Self {
            messages: RwLock::new(messages),
        })
    }

    /// Retains `message` for `topic` (`None`: clears it), durably before returning.
    pub(super) async fn set(
        &self,
        storage: &Storage,
        topic: &TopicName,
        message: Option<RetainedMessage>,
    ) -> Result<(), StorageError> {
        let value = message
            .as_ref()
            .map(|m| postcard::to_allocvec(m).expect("a retained message encodes"));
        let key = topic.as_str().as_bytes().to_vec();
        storage.put_mqtt(KIND, vec![(key, value)]).await?;
        let mut messages = self
            .messages
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        match message {
            Some(message) => messages.insert(topic.to_string(), Arc::new(message)),
            None => messages.remove(topic.as_str()),
        };
        Ok(())
    }

    /// The retained messages of the topics `filter` matches, by topic name.
    pub(super) fn matching(&self, filter: &Filter) -> Vec<(TopicName, Arc<RetainedMessage>)> {
        let messages = self.messages.read().unwrap_or_else(PoisonError::into_inner);
        messages
            .iter()
            .filter_map(|(topic, message)| {
                let name = TopicName::parse(topic).ok()?;
                filter.matches(&name).then(|| (name, Arc::clone(message)))
            })
            .collect()
    }

    /// How many topics have a retained message.
    pub(super) fn len(&self) -> usize {
        self.messages
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}
