//! `quiver topic create|list|describe|delete`.

use std::time::Duration;

use anyhow::bail;
use bytesize::ByteSize;
use clap::{Args, Subcommand};
use quiver_client::{
    Client, ErrorCode, PurgeBefore, Record, Retention, StartAt, SubscribeOptions, TopicConfig,
    TopicInfo,
};

use super::NotFound;
use super::args::{IfNotExists, parse_start};
use super::output;
use super::{ConnectArgs, DurabilityArgs, DurabilityMode};

#[derive(Debug, Subcommand)]
pub(super) enum TopicCommand {
    /// Create a topic.
    Create {
        /// Dot-separated tokens of A-Z a-z 0-9 _ - (at most 255 bytes).
        name: String,
        /// Remove records older than this (e.g. 7d, 12h).
        #[arg(long, value_parser = humantime::parse_duration)]
        max_age: Option<Duration>,
        /// Keep the topic under this size (e.g. "1 GiB", 500MB).
        #[arg(long)]
        max_bytes: Option<ByteSize>,
        /// Keep at most this many records.
        #[arg(long)]
        max_records: Option<u64>,
        /// Where records go that the topic's plugins fail on [default: dlq.NAME].
        #[arg(long, value_name = "TOPIC")]
        dead_letter: Option<String>,
        #[command(flatten)]
        durability: DurabilityArgs,
        #[command(flatten)]
        if_not_exists: IfNotExists,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// List topics with their record count, size and offsets.
    List(ListArgs),
    /// Describe one topic.
    Describe {
        /// The topic.
        name: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Print the record at OFFSET (its payload, or with --json the whole record,
    /// pretty-printed).
    Get {
        /// The topic.
        name: String,
        /// The record's offset.
        offset: u64,
        /// Print the record (offset, time, key, headers, payload) as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Change a topic's retention or durability while it is in use (what is not
    /// given stays as it is).
    Alter {
        /// The topic.
        name: String,
        /// Remove records older than this (e.g. 7d), or `none`.
        #[arg(long, value_name = "AGE|none", value_parser = parse_limit(|s| {
            humantime::parse_duration(s)
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
                .map_err(|e| e.to_string())
        }))]
        max_age: Option<Limit>,
        /// Keep the topic under this size (e.g. "1 GiB"), or `none`.
        #[arg(long, value_name = "SIZE|none", value_parser = parse_limit(|s| {
            s.parse::<ByteSize>().map(|b| b.as_u64())
        }))]
        max_bytes: Option<Limit>,
        /// Keep at most this many records, or `none`.
        #[arg(long, value_name = "COUNT|none", value_parser = parse_limit(|s| {
            s.parse::<u64>().map_err(|e| e.to_string())
        }))]
        max_records: Option<Limit>,
        /// fsync: acknowledge once on disk; batched: acknowledge at once and flush
        /// within --flush-interval.
        #[arg(long, value_enum)]
        durability: Option<DurabilityMode>,
        /// With --durability batched: the longest an acknowledged record waits for its
        /// flush.
        #[arg(long, default_value = "100ms", value_parser = humantime::parse_duration)]
        flush_interval: Duration,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Remove a topic's records: all of them, or those before an offset or a time.
    /// Offsets are not reused: the topic goes on from where it was.
    #[command(group(clap::ArgGroup::new("which").required(true).args(["all", "before"])))]
    Purge {
        /// The topic.
        name: String,
        /// Every record.
        #[arg(long)]
        all: bool,
        /// The records before this OFFSET, RFC 3339 time or time ago (-1h).
        #[arg(long, value_parser = parse_start, allow_hyphen_values = true)]
        before: Option<StartAt>,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Delete a topic and its records.
    Delete {
        /// The topic.
        name: String,
        #[command(flatten)]
        connect: ConnectArgs,
    },
}

#[derive(Debug, Args)]
pub(super) struct ListArgs {
    /// Print one JSON object per topic.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    connect: ConnectArgs,
}

pub(super) async fn run(command: TopicCommand) -> anyhow::Result<()> {
    match command {
        TopicCommand::Create {
            name,
            max_age,
            max_bytes,
            max_records,
            dead_letter,
            durability,
            if_not_exists,
            connect,
        } => {
            let retention = Retention {
                max_age_ms: max_age.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
                max_bytes: max_bytes.map(|b| b.as_u64()),
                max_records,
            };
            let config = TopicConfig {
                retention,
                dead_letter,
                durability: durability.durability(),
            };
            let created = connect.connect().await?.create_topic(&name, config).await;
            match if_not_exists.allow(created, ErrorCode::TopicExists)? {
                Some(info) => println!("created {}", info.name),
                None => println!("{name} exists already"),
            }
        }
        TopicCommand::List(ListArgs { json, connect }) => {
            let topics = connect.connect().await?.list_topics().await?;
            if json {
                for topic in &topics {
                    println!("{}", output::topic_json(topic));
                }
            } else {
                print!("{}", output::topic_table(&topics));
            }
        }
        TopicCommand::Describe {
            name,
            json,
            connect,
        } => {
            let info: TopicInfo = connect.connect().await?.describe_topic(&name).await?;
            if json {
                println!("{}", output::topic_json(&info));
            } else {
                print!("{}", output::topic_details(&info));
            }
        }
        TopicCommand::Get {
            name,
            offset,
            json,
            connect,
        } => {
            let client = connect.connect_streaming().await?;
            let record = get(&client, &name, offset).await?;
            if json {
                println!("{:#}", output::record_json(&record));
            } else {
                use std::io::Write;
                let mut stdout = std::io::stdout().lock();
                stdout.write_all(&record.payload)?;
                stdout.write_all(b"\n")?;
            }
        }
        TopicCommand::Alter {
            name,
            max_age,
            max_bytes,
            max_records,
            durability,
            flush_interval,
            connect,
        } => {
            let client = connect.connect().await?;
            let limits = [max_age, max_bytes, max_records];
            let retention = match limits.iter().any(Option::is_some) {
                true => {
                    let now = client.describe_topic(&name).await?.retention;
                    let pick = |limit: Option<Limit>, now| limit.map_or(now, |l: Limit| l.0);
                    Some(Retention {
                        max_age_ms: pick(max_age, now.max_age_ms),
                        max_bytes: pick(max_bytes, now.max_bytes),
                        max_records: pick(max_records, now.max_records),
                    })
                }
                false => None,
            };
            let durability = durability.map(|mode| {
                DurabilityArgs {
                    durability: mode,
                    flush_interval,
                }
                .durability()
            });
            if retention.is_none() && durability.is_none() {
                bail!(
                    "nothing to change: give --max-age, --max-bytes, --max-records or --durability"
                );
            }
            let info = client.alter_topic(&name, retention, durability).await?;
            print!("{}", output::topic_details(&info));
        }
        TopicCommand::Purge {
            name,
            all,
            before,
            connect,
        } => {
            let before = match (all, before) {
                (true, _) | (_, Some(StartAt::Latest)) => PurgeBefore::All,
                (_, Some(StartAt::Offset(offset))) => PurgeBefore::Offset(offset),
                (_, Some(StartAt::Timestamp(ms))) => PurgeBefore::Time(ms),
                (_, Some(StartAt::Earliest) | None) => {
                    bail!("--before earliest removes nothing: give an offset or a time")
                }
            };
            let client = connect.connect().await?;
            let was = client.describe_topic(&name).await?;
            let info = client.purge_topic(&name, before).await?;
            println!(
                "purged {} records of {name}; it holds offsets {}..{}",
                info.first_offset.saturating_sub(was.first_offset),
                info.first_offset,
                info.next_offset
            );
        }
        TopicCommand::Delete { name, connect } => {
            connect.connect().await?.delete_topic(&name).await?;
            println!("deleted {name}");
        }
    }
    Ok(())
}

/// The record at `offset` of `topic`, read with a subscription that starts there; an
/// offset retention removed, or one not written yet, is refused in words instead of
/// waited for.
async fn get(client: &Client, topic: &str, offset: u64) -> anyhow::Result<Record> {
    use futures::StreamExt;
    let info = client.describe_topic(topic).await?;
    let removed = |first: u64| {
        NotFound(format!(
            "offset {offset} of {topic} was removed by retention: the topic starts at {first}"
        ))
    };
    if offset < info.first_offset {
        return Err(removed(info.first_offset).into());
    }
    if offset >= info.next_offset {
        return Err(NotFound(format!(
            "offset {offset} of {topic} does not exist yet: the next record gets {}",
            info.next_offset
        ))
        .into());
    }
    let options = SubscribeOptions {
        window: 1,
        ..SubscribeOptions::from(StartAt::Offset(offset))
    };
    let mut records = client.subscribe(topic, options).await?;
    match records.next().await {
        // Retention moved past it since the topic was described.
        Some(Ok(record)) if record.offset != offset => Err(removed(record.offset).into()),
        Some(record) => Ok(record?),
        None => bail!("the subscription to {topic} ended before offset {offset}"),
    }
}

/// A retention limit on the command line: a value, or `none` to lift it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limit(Option<u64>);

/// A parser of `none` or a value `parse` reads.
fn parse_limit(
    parse: fn(&str) -> Result<u64, String>,
) -> impl Fn(&str) -> Result<Limit, String> + Clone + Send + Sync + 'static {
    move |s| match s {
        "none" => Ok(Limit(None)),
        value => parse(value).map(|v| Limit(Some(v))),
    }
}
