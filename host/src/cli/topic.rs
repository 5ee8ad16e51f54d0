//! `quiver topic create|list|describe|delete`.

use std::time::Duration;

use bytesize::ByteSize;
use clap::{Args, Subcommand};
use quiver_client::{Retention, TopicConfig, TopicInfo};

use super::output;
use super::{ConnectArgs, DurabilityArgs};

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
            let info = connect.connect().await?.create_topic(&name, config).await?;
            println!("created {}", info.name);
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
        TopicCommand::Delete { name, connect } => {
            connect.connect().await?.delete_topic(&name).await?;
            println!("deleted {name}");
        }
    }
    Ok(())
}
