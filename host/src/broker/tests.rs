//! The broker's registries: lookups and order, and agreement with storage when callers
//! go away mid-request.

use std::sync::Arc;

use futures::FutureExt;
use quiver_protocol::{GroupSettings, TopicConfig};

use super::{Broker, BrokerError, BrokerLimits, BrokerSettings};
use crate::auth::{AuthSettings, Authenticator};
use crate::config::Config;
use crate::plugins::Plugins;
use crate::storage::{
    DEFAULT_CHUNK_BYTES, DEFAULT_GROUP_DELTAS, DEFAULT_JOURNAL_BYTES, Storage, StorageConfig,
};

/// A broker over a fresh data dir in `dir`, holding at most `max_topics` topics.
fn broker(dir: &tempfile::TempDir, max_topics: usize) -> Broker {
    let (storage, topics) = Storage::open(&StorageConfig {
        path: dir.path().join("db"),
        cache_capacity: 8 << 20,
        chunk_bytes: DEFAULT_CHUNK_BYTES,
        barrier: true,
        journal_bytes: DEFAULT_JOURNAL_BYTES,
        group_deltas: DEFAULT_GROUP_DELTAS,
    })
    .unwrap();
    let plugins = Plugins::open(
        storage.clone(),
        &topics,
        crate::server::plugin_settings(&Config::default()),
    )
    .unwrap();
    let auth = Authenticator::open(AuthSettings {
        file: dir.path().join("auth.toml"),
        allow_anonymous: false,
        mutual_tls: false,
    })
    .unwrap();
    let settings = BrokerSettings {
        limits: BrokerLimits {
            max_record_size: 1 << 20,
            max_batch_records: 1000,
            max_topics,
            max_plugins: 8,
            max_buffered_per_subscription: 1 << 20,
        },
        dedup_window_ms: 0,
        dedup_max_entries: 0,
    };
    Broker::new(
        storage,
        &topics,
        Arc::new(plugins),
        Arc::new(auth),
        settings,
    )
    .unwrap()
}

#[tokio::test]
async fn a_creation_whose_caller_went_away_holds_its_name_and_place_until_it_is_done() {
    let dir = tempfile::tempdir().unwrap();
    let broker = broker(&dir, 1);
    let config = TopicConfig::default();
    // Handed to storage on the first poll, then dropped before the answer.
    assert!(broker.create_topic("a", &config).now_or_never().is_none());

    // The creation under way still counts against the limit of one topic...
    let second = broker.create_topic("b", &config).await;
    assert!(
        matches!(second, Err(BrokerError::LimitReached(_))),
        "{second:?}"
    );
    // ...and still holds its name: the same name waits for it, then finds the topic.
    let again = broker.create_topic("a", &config).await;
    assert!(
        matches!(again, Err(BrokerError::TopicExists(_))),
        "{again:?}"
    );
    assert_eq!(broker.topic("a").unwrap().name().as_str(), "a");
    assert!(broker.topic("b").is_err());
}

#[tokio::test]
async fn a_group_created_or_deleted_for_a_caller_that_went_away_is_so_in_the_registry() {
    let dir = tempfile::tempdir().unwrap();
    let broker = broker(&dir, 10);
    broker
        .create_topic("jobs", &TopicConfig::default())
        .await
        .unwrap();
    let settings = GroupSettings::new("jobs");
    assert!(
        broker
            .create_group("workers", settings.clone())
            .now_or_never()
            .is_none()
    );
    broker.storage.sync().await.unwrap();
    let group = broker.group("workers").expect("the stored group is served");
    assert_eq!(group.pattern().as_str(), "jobs");
    let again = broker.create_group("workers", settings.clone()).await;
    assert!(
        matches!(again, Err(BrokerError::GroupExists(_))),
        "{again:?}"
    );

    assert!(broker.delete_group("workers").now_or_never().is_none());
    broker.storage.sync().await.unwrap();
    assert!(matches!(
        broker.group("workers"),
        Err(BrokerError::GroupNotFound(_))
    ));
    assert!(group.is_deleted(), "its members are told");
    broker.create_group("workers", settings).await.unwrap();
}

#[tokio::test]
async fn the_registry_finds_topics_by_name_and_lists_them_in_name_order() {
    let dir = tempfile::tempdir().unwrap();
    let broker = broker(&dir, 10);
    let config = TopicConfig::default();
    for name in ["c", "a", "d", "b"] {
        broker.create_topic(name, &config).await.unwrap();
    }
    let first_b = broker.topic("b").unwrap().id();
    broker.delete_topic("b").await.unwrap();
    assert!(matches!(
        broker.topic("b"),
        Err(BrokerError::TopicNotFound(_))
    ));
    broker.create_topic("b", &config).await.unwrap();

    let names: Vec<String> = broker
        .topics()
        .iter()
        .map(|l| l.name().to_string())
        .collect();
    assert_eq!(names, ["a", "b", "c", "d"]);
    for name in ["a", "b", "c", "d"] {
        assert_eq!(broker.topic(name).unwrap().name().as_str(), name);
    }
    assert_ne!(
        broker.topic("b").unwrap().id(),
        first_b,
        "the new topic, not the old"
    );
    assert!(matches!(
        broker.topic("e"),
        Err(BrokerError::TopicNotFound(_))
    ));
}
