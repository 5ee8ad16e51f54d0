//! Re-driving dead letters: publishing a dead-letter topic's records again, each to the
//! topic it was given up on (its `quiver-dlq-topic` header) or to another, once the
//! cause is fixed. `quiver dlq redrive` (through the SDK) and the console (through
//! [`Broker::redrive`]) make the same records under the same ids.
//!
//! A redriven record keeps its key, headers and payload; its dead-letter headers
//! (`quiver-dlq-*`) become `quiver-redrive-*`, history that a second failure's own
//! dead-letter headers do not mix with, and `quiver-redrive-from` names the dead letter
//! (`DLQ:OFFSET`). Its publish id is made from the dead-letter topic (and its creation
//! time), the target and the dead letter's offset, so redriving the same dead letter
//! again within the deduplication window stores nothing twice. The dead letters stay
//! where they are.
//!
//! A redrive `through` a plugin version runs the target's pipeline with that plugin at
//! that deployed version (`Broker::publish_via`), the live version serving every other
//! publish meanwhile; the version is part of the id, so a dead letter a redrive through
//! one version dead-lettered again can be redriven through another.

use std::sync::Arc;

use futures::future::join_all;
use quiver_protocol::{Header, NewRecord, PublishId, Receipt, Record, StartAt, WireError};

use super::browse::MAX_SCAN;
use super::{Broker, BrokerError, PublishOrder, Publishes, authorize, one_outcome};
use crate::auth::Access;

/// What dead-letter headers start with, and what they become.
const DLQ_PREFIX: &str = "quiver-dlq-";
const HISTORY_PREFIX: &str = "quiver-redrive-";

/// Which dead letters to redrive, and where.
#[derive(Debug, Clone, Default)]
pub struct Redrive {
    /// The dead-letter topic.
    pub dlq: String,
    /// Publish them all to this topic instead of each one's own.
    pub to: Option<String>,
    /// Only dead letters whose header `quiver-dlq-NAME` is VALUE (for `reason`:
    /// contains VALUE); all must hold.
    pub filters: Vec<(String, String)>,
    /// Run the target's pipeline with this plugin at this version of it.
    pub through: Option<(String, String)>,
}

/// Reads `NAME@VERSION`, a plugin and one of its versions.
pub fn parse_through(s: &str) -> Result<(String, String), String> {
    match s.split_once('@') {
        Some((plugin, version)) if !plugin.is_empty() && !version.is_empty() => {
            Ok((plugin.to_owned(), version.to_owned()))
        }
        _ => Err(format!(
            "`{s}` is not NAME@VERSION (a plugin and one of its versions, as `plugin status` \
             lists them)"
        )),
    }
}

impl Redrive {
    /// Where `record` goes, if it passes the filters and has somewhere to go.
    pub fn target(&self, record: &Record) -> Option<String> {
        let header = |name: &str| {
            record
                .header(&format!("{DLQ_PREFIX}{name}"))
                .map(|v| String::from_utf8_lossy(v).into_owned())
        };
        let passes = self.filters.iter().all(|(name, value)| match header(name) {
            Some(found) if name == "reason" => found.contains(value.as_str()),
            Some(found) => found == *value,
            None => false,
        });
        if !passes {
            return None;
        }
        self.to.clone().or_else(|| header("topic"))
    }

    /// The record to publish again: its dead-letter headers as history.
    pub fn again(&self, record: &Record) -> NewRecord {
        let mut headers: Vec<Header> = record
            .headers
            .iter()
            .map(|h| match h.name.strip_prefix(DLQ_PREFIX) {
                Some(rest) => Header {
                    name: format!("{HISTORY_PREFIX}{rest}"),
                    value: h.value.clone(),
                },
                None => h.clone(),
            })
            .collect();
        headers.push(Header {
            name: format!("{HISTORY_PREFIX}from"),
            value: format!("{}:{}", self.dlq, record.offset).into(),
        });
        NewRecord {
            key: record.key.clone(),
            headers,
            payload: record.payload.clone(),
        }
    }

    /// The id the dead letter at `offset` is published to `target` under, the dead-letter
    /// topic having been created at `created_ms`: the same for every run (a new one if
    /// the topic is deleted and made again), so it is stored once in each target.
    pub fn id(&self, created_ms: u64, target: &str, offset: u64) -> PublishId {
        use sha2::Digest;
        let mut seed = format!("quiver-redrive\0{}\0{created_ms}\0{target}", self.dlq);
        if let Some((plugin, version)) = &self.through {
            seed.push_str(&format!("\0{plugin}@{version}"));
        }
        let digest = sha2::Sha256::digest(seed);
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(&digest[..8]);
        PublishId {
            producer: u64::from_le_bytes(bytes),
            sequence: offset,
        }
    }
}

/// Which dead letters of the topic a [`Broker::redrive`] takes.
#[derive(Debug, Clone)]
pub enum Selection {
    /// These offsets (at most [`MAX_SCAN`]).
    Offsets(Vec<u64>),
    /// Every dead letter from this offset on, up to [`MAX_SCAN`] of them.
    From(u64),
}

/// What a redrive did.
#[derive(Debug, Default)]
pub struct Redriven {
    /// Each dead letter redriven: its offset, the topic it went to, the receipt.
    pub stored: Vec<(u64, String, Receipt)>,
    /// Dead letters left out: by the filters, with no topic, or no longer held.
    pub skipped: u64,
    /// Dead letters that could not be published, and why.
    pub failed: Vec<(u64, WireError)>,
    /// With [`Selection::From`]: where the next run goes on, if records are left.
    pub next: Option<u64>,
}

impl Broker {
    /// Publishes dead letters of `redrive.dlq` again as `access`'s principal: it needs
    /// the subscribe right on the dead-letter topic and the publish right on each
    /// target (a target it lacks fails that record alone).
    pub async fn redrive(
        self: &Arc<Self>,
        access: &Access,
        redrive: &Redrive,
        selection: Selection,
    ) -> Result<Redriven, BrokerError> {
        let created_ms = self.topic(&redrive.dlq)?.created_ms();
        let mut report = Redriven::default();
        let records = match selection {
            Selection::From(from) => {
                let page = self.browse(
                    access,
                    &redrive.dlq,
                    StartAt::Offset(from),
                    MAX_SCAN as usize,
                    None,
                )?;
                report.next = (page.next < page.end).then_some(page.next);
                page.records
            }
            Selection::Offsets(mut offsets) => {
                if offsets.len() as u64 > MAX_SCAN {
                    return Err(BrokerError::InvalidArgument(format!(
                        "at most {MAX_SCAN} dead letters per redrive, not {}",
                        offsets.len()
                    )));
                }
                offsets.sort_unstable();
                offsets.dedup();
                let mut records = Vec::with_capacity(offsets.len());
                for offset in offsets {
                    let page =
                        self.browse(access, &redrive.dlq, StartAt::Offset(offset), 1, None)?;
                    match page.records.into_iter().next() {
                        Some(record) if record.offset == offset => records.push(record),
                        _ => report.skipped += 1,
                    }
                }
                records
            }
        };
        // One order for the run: the publishes are queued in offset order and written
        // together, each with its own receipt.
        let mut order = PublishOrder::default();
        let mut publishes = Vec::with_capacity(records.len());
        for record in &records {
            let Some(target) = redrive.target(record) else {
                report.skipped += 1;
                continue;
            };
            let allowed =
                authorize::publish(access, &target).and_then(|()| match redrive.through {
                    Some(_) => authorize::choose_code(access, &target),
                    None => Ok(()),
                });
            if let Err(e) = allowed {
                report.failed.push((record.offset, WireError::from(&e)));
                continue;
            }
            let publish = Publishes::One {
                records: vec![redrive.again(record)],
                id: Some(redrive.id(created_ms, &target, record.offset)),
            };
            let outcome = self
                .publish_via(&mut order, &target, publish, redrive.through.clone())
                .await;
            publishes.push((record.offset, target, outcome));
        }
        let (offsets, outcomes): (Vec<_>, Vec<_>) = publishes
            .into_iter()
            .map(|(offset, target, outcome)| ((offset, target), outcome))
            .unzip();
        for ((offset, target), outcome) in offsets.into_iter().zip(join_all(outcomes).await) {
            match one_outcome(outcome) {
                Ok(receipt) => report.stored.push((offset, target, receipt)),
                Err(e) => report.failed.push((offset, e)),
            }
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn dead_letter(headers: &[(&str, &str)]) -> Record {
        Record {
            offset: 7,
            timestamp: 1,
            key: Some(Bytes::from_static(b"k")),
            headers: headers
                .iter()
                .map(|(name, value)| Header {
                    name: (*name).to_owned(),
                    value: Bytes::copy_from_slice(value.as_bytes()),
                })
                .collect(),
            payload: Bytes::from_static(b"{}"),
        }
    }

    #[test]
    fn a_dead_letter_goes_back_to_its_topic_with_its_history() {
        let redrive = Redrive {
            dlq: "dlq.orders".into(),
            ..Redrive::default()
        };
        let record = dead_letter(&[
            ("quiver-dlq-topic", "orders"),
            ("quiver-dlq-reason", "plugin json-filter trapped"),
            ("trace", "abc"),
        ]);
        assert_eq!(redrive.target(&record).as_deref(), Some("orders"));
        let again = redrive.again(&record);
        let names: Vec<_> = again.headers.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "quiver-redrive-topic",
                "quiver-redrive-reason",
                "trace",
                "quiver-redrive-from"
            ]
        );
        assert_eq!(&again.headers[3].value[..], b"dlq.orders:7");
        assert_eq!(again.key, record.key);
        assert_eq!(again.payload, record.payload);
    }

    #[test]
    fn filters_and_a_missing_topic_leave_a_dead_letter_out() {
        let record = dead_letter(&[
            ("quiver-dlq-topic", "orders"),
            ("quiver-dlq-reason", "deadline exceeded"),
        ]);
        let filtered = |filters: &[(&str, &str)]| Redrive {
            dlq: "dlq".into(),
            to: None,
            filters: filters
                .iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                .collect(),
            through: None,
        };
        assert!(
            filtered(&[("reason", "deadline")])
                .target(&record)
                .is_some()
        );
        assert!(filtered(&[("reason", "trap")]).target(&record).is_none());
        assert!(filtered(&[("topic", "order")]).target(&record).is_none());
        assert!(filtered(&[]).target(&dead_letter(&[])).is_none());
        let elsewhere = Redrive {
            to: Some("retry".into()),
            ..filtered(&[])
        };
        assert_eq!(
            elsewhere.target(&dead_letter(&[])).as_deref(),
            Some("retry")
        );
    }

    #[test]
    fn a_dead_letter_keeps_its_id_per_target() {
        let redrive = Redrive {
            dlq: "dlq".into(),
            ..Redrive::default()
        };
        assert_eq!(redrive.id(5, "a", 3), redrive.id(5, "a", 3));
        assert_eq!(redrive.id(5, "a", 3).sequence, 3);
        assert_ne!(
            redrive.id(5, "a", 3).producer,
            redrive.id(5, "b", 3).producer
        );
        assert_ne!(
            redrive.id(5, "a", 3).producer,
            redrive.id(6, "a", 3).producer
        );
        // Through a version: an id of its own, so what one version dead-lettered again
        // can go through another.
        let through = |version: &str| Redrive {
            through: Some(("gate".into(), version.into())),
            ..redrive.clone()
        };
        assert_ne!(through("2").id(5, "a", 3), redrive.id(5, "a", 3));
        assert_ne!(through("2").id(5, "a", 3), through("3").id(5, "a", 3));
        assert_eq!(through("2").id(5, "a", 3), through("2").id(5, "a", 3));
    }

    #[test]
    fn through_reads_a_plugin_and_a_version() {
        assert_eq!(
            parse_through("gate@2"),
            Ok(("gate".to_owned(), "2".to_owned()))
        );
        assert_eq!(
            parse_through("gate@v2@rc"),
            Ok(("gate".to_owned(), "v2@rc".to_owned()))
        );
        for bad in ["gate", "@2", "gate@", ""] {
            assert!(
                parse_through(bad).unwrap_err().contains("NAME@VERSION"),
                "{bad}"
            );
        }
    }
}
