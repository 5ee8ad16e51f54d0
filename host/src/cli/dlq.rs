//! `quiver dlq`: dead-letter topics. `redrive` publishes dead letters again, each to
//! the topic it was given up on (or `--to`), once the cause is fixed: the records and
//! ids of `broker::redrive` (which says how a redriven record looks), published
//! through the SDK.
//!
//! With `--through NAME@VERSION` the target's pipeline runs that plugin at that
//! deployed version for these publishes (`Client::publish_through`).
//!
//! Each record is published once per run, under an id made from the dead-letter
//! topic, the target topic, the record's offset (and the version it goes through), so a run that is cut short and
//! run again stores nothing twice within the broker's deduplication window (2 minutes
//! by default); the summary names the offset to go on from.

use std::io::Write;

use anyhow::{Context, bail};
use clap::Subcommand;
use futures::stream::FuturesOrdered;
use futures::{FutureExt, StreamExt};
use quiver_client::{Client, StartAt, SubscribeOptions};

use super::ConnectArgs;
use super::args::parse_header;
use crate::broker::redrive::{Redrive, parse_through};

/// Redrives kept in flight at once.
const WINDOW: usize = 256;

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
        /// Run the target topic's pipeline with this plugin at this deployed version
        /// (`plugin status` lists them), not the one running: a fixed version, or an
        /// earlier one. Needs the admin right on the target topic.
        #[arg(long, value_name = "NAME@VERSION", value_parser = parse_through)]
        through: Option<(String, String)>,
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
            through,
            dry_run,
            connect,
        } => {
            let client = connect.connect_streaming().await?;
            let run = Run {
                redrive: Redrive {
                    dlq,
                    to,
                    filters,
                    through,
                },
                dry_run,
            };
            run.run(&client, from).await
        }
    }
}

struct Run {
    redrive: Redrive,
    dry_run: bool,
}

/// What a run did.
#[derive(Debug, Default)]
struct Tally {
    redriven: u64,
    skipped: u64,
    failed: u64,
}

impl Run {
    /// Redrives the dead letters from `from` up to the end the topic has now.
    async fn run(&self, client: &Client, from: Option<u64>) -> anyhow::Result<()> {
        let Self { redrive, dry_run } = self;
        let info = client.describe_topic(&redrive.dlq).await?;
        let start = from.unwrap_or(0).max(info.first_offset);
        let end = info.next_offset;
        if start >= end {
            println!("{}: nothing to redrive (offsets end at {end})", redrive.dlq);
            return Ok(());
        }
        let options = SubscribeOptions {
            window: u32::try_from(WINDOW).unwrap_or(u32::MAX),
            ..SubscribeOptions::from(StartAt::Offset(start))
        };
        let mut records = client.subscribe(&redrive.dlq, options).await?;
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
                    let Some(target) = redrive.target(&record) else {
                        tally.skipped += 1;
                        continue;
                    };
                    if *dry_run {
                        writeln!(stdout, "{}:{} -> {target}", redrive.dlq, record.offset)?;
                        tally.redriven += 1;
                        continue;
                    }
                    let id = redrive.id(info.created_ms, &target, record.offset);
                    let again = vec![redrive.again(&record)];
                    let publish = match &redrive.through {
                        None => client.publish_batch_with_id(&target, again, id).boxed(),
                        Some((plugin, version)) => client
                            .publish_through(&target, again, Some(id), (plugin, version))
                            .boxed(),
                    };
                    let offset = record.offset;
                    inflight.push_back(async move { (offset, target, publish.await) });
                }
                Some((offset, target, published)) = inflight.next() => match published {
                    Ok(receipt) => {
                        tally.redriven += 1;
                        writeln!(stdout, "{}:{offset} -> {target}:{}", redrive.dlq, receipt.base_offset)?;
                    }
                    Err(e) => {
                        tally.failed += 1;
                        eprintln!("{}:{offset} -> {target}: {e}", redrive.dlq);
                    }
                },
            }
        }
        stdout.flush()?;
        bar.finish_and_clear();
        let verb = if *dry_run { "would redrive" } else { "redrove" };
        eprintln!(
            "{verb} {} of the dead letters at offsets {start}..{end} of {}; {} left out by \
             --filter or without a topic; {} failed (still in {}). Go on from --from {end}.",
            tally.redriven, redrive.dlq, tally.skipped, tally.failed, redrive.dlq
        );
        if tally.failed > 0 {
            bail!("{} dead letters could not be redriven", tally.failed);
        }
        Ok(())
    }
}
