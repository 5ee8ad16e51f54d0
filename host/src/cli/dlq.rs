//! `quiver dlq`: dead-letter topics. `redrive` publishes dead letters again, each to
//! the topic it was given up on (or `--to`), once the cause is fixed.
//!
//! Each record is published once per run, under an id made from the dead-letter
//! topic, the target topic and the record's offset, so a run that is cut short and
//! run again stores nothing twice within the broker's deduplication window (2 minutes
//! by default); the summary names the offset to go on from. The dead letters stay
//! where they are. The redriven record keeps its key, headers and payload; its
//! dead-letter headers (`quiver-dlq-*`) become `quiver-redrive-*`, history that a
//! second failure's own dead-letter headers do not mix with, and
//! `quiver-redrive-from` names the dead letter (`DLQ:OFFSET`).

use std::io::Write;

use anyhow::{Context, bail};
use clap::Subcommand;
use futures::StreamExt;
use futures::stream::FuturesOrdered;
use quiver_client::{Client, Header, NewRecord, PublishId, Record, StartAt, SubscribeOptions};

use super::ConnectArgs;
use super::args::parse_header;

/// Redrives kept in flight at once.
const WINDOW: usize = 256;
/// What dead-letter headers start with, and what they become.
const DLQ_PREFIX: &str = "quiver-dlq-";
const HISTORY_PREFIX: &str = "quiver-redrive-";

#[derive(Debug, Subcommand)]
pub(super) enum DlqCommand {
    /// Publish the dead letters of a dead-letter topic again, each to the topic it
    /// was given up on (its quiver-dlq-topic header) or to --to; they stay in DLQ.
    Redrive {
        /// The dead-letter topic (`dlq.orders`, a group's, …).
        dlq: String,
        /// Publish them all to this topic instead.
        #[arg(long, value_name = "TOPIC")]
        to: Option<String>,
        /// Only dead letters whose header quiver-dlq-NAME is VALUE (`reason`: contains
        /// VALUE), e.g. plugin=json-filter, topic=orders, group=billing,
        /// reason=timeout. Repeatable; all must hold.
        #[arg(long = "filter", value_name = "NAME=VALUE", value_parser = parse_header)]
        filters: Vec<(String, String)>,
        /// The first offset of DLQ to redrive [default: its first record].
        #[arg(long)]
        from: Option<u64>,
        /// Say what would be redriven, and publish nothing.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        connect: ConnectArgs,
    },
}

pub(super) async fn run(command: DlqCommand) -> anyhow::Result<()> {
    match command {
        DlqCommand::Redrive {
            dlq,
            to,
            filters,
            from,
            dry_run,
            connect,
        } => {
            let client = connect.connect_streaming().await?;
            let redrive = Redrive {
                dlq,
                to,
                filters,
                dry_run,
            };
            redrive.run(&client, from).await
        }
    }
}

struct Redrive {
    dlq: String,
    to: Option<String>,
    filters: Vec<(String, String)>,
    dry_run: bool,
}

/// What a run did.
#[derive(Debug, Default)]
struct Tally {
    redriven: u64,
    skipped: u64,
    failed: u64,
}

impl Redrive {
    /// Redrives the dead letters from `from` up to the end the topic has now.
    async fn run(&self, client: &Client, from: Option<u64>) -> anyhow::Result<()> {
        let info = client.describe_topic(&self.dlq).await?;
        let start = from.unwrap_or(0).max(info.first_offset);
        let end = info.next_offset;
        if start >= end {
            println!("{}: nothing to redrive (offsets end at {end})", self.dlq);
            return Ok(());
        }
        let options = SubscribeOptions {
            window: u32::try_from(WINDOW).unwrap_or(u32::MAX),
            ..SubscribeOptions::from(StartAt::Offset(start))
        };
        let mut records = client.subscribe(&self.dlq, options).await?;
        let mut tally = Tally::default();
        let mut inflight = FuturesOrdered::new();
        let mut stdout = std::io::stdout().lock();
        let mut reading = true;
        let bar = super::output::progress(Some(end - start), "redriving", true);
        while reading || !inflight.is_empty() {
            tokio::select! {
                next = records.next(), if reading && inflight.len() < WINDOW => {
                    let record = next.context("the subscription ended")??;
                    bar.set_position(record.offset + 1 - start);
                    // The end the topic had when the run began: later dead letters wait
                    // for the next run.
                    if record.offset + 1 >= end {
                        reading = false;
                    }
                    if record.offset >= end {
                        continue;
                    }
                    let Some(target) = self.target(&record) else {
                        tally.skipped += 1;
                        continue;
                    };
                    if self.dry_run {
                        writeln!(stdout, "{}:{} -> {target}", self.dlq, record.offset)?;
                        tally.redriven += 1;
                        continue;
                    }
                    let id = PublishId {
                        producer: producer_of(&self.dlq, info.created_ms, &target),
                        sequence: record.offset,
                    };
                    let publish = client.publish_batch_with_id(&target, vec![self.again(&record)], id);
                    let offset = record.offset;
                    inflight.push_back(async move { (offset, target, publish.await) });
                }
                Some((offset, target, published)) = inflight.next() => match published {
                    Ok(receipt) => {
                        tally.redriven += 1;
                        writeln!(stdout, "{}:{offset} -> {target}:{}", self.dlq, receipt.base_offset)?;
                    }
                    Err(e) => {
                        tally.failed += 1;
                        eprintln!("{}:{offset} -> {target}: {e}", self.dlq);
                    }
                },
            }
        }
        stdout.flush()?;
        bar.finish_and_clear();
        let verb = if self.dry_run {
            "would redrive"
        } else {
            "redrove"
        };
        eprintln!(
            "{verb} {} of the dead letters at offsets {start}..{end} of {}; {} left out by \
             --filter or without a topic; {} failed (still in {}). Go on from --from {end}.",
            tally.redriven, self.dlq, tally.skipped, tally.failed, self.dlq
        );
        if tally.failed > 0 {
            bail!("{} dead letters could not be redriven", tally.failed);
        }
        Ok(())
    }

    /// Where `record` goes, if it passes the filters and has somewhere to go.
    fn target(&self, record: &Record) -> Option<String> {
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
    fn again(&self, record: &Record) -> NewRecord {
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
}

/// The producer id a dead-letter topic's redrives to `target` publish under: the same
/// for every run over the same topic (a new one if it is deleted and made again), so
/// a dead letter is stored once in each topic it is redriven to.
fn producer_of(dlq: &str, created_ms: u64, target: &str) -> u64 {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(format!("quiver-redrive\0{dlq}\0{created_ms}\0{target}"));
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    u64::from_le_bytes(bytes)
}
