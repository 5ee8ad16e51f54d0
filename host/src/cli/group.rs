//! `quiver group create|list|describe|delete|reset`.

use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;
use quiver_client::{ErrorCode, GroupSettings, StartAt};

use super::ConnectArgs;
use super::args::{IfNotExists, parse_start};
use super::output;

#[derive(Debug, Subcommand)]
pub(super) enum GroupCommand {
    /// Create a durable group: its members share the records of the topics it
    /// consumes, each record settled by one of them.
    Create {
        /// The group's name (same grammar as topic names).
        name: String,
        /// The topic or pattern it consumes (`orders`, `orders.*`, `orders.>`).
        #[arg(long, value_name = "PATTERN")]
        topic: String,
        /// Where it starts in the topics that match now: earliest, latest, an OFFSET,
        /// an RFC 3339 time or a time ago (-10m). Topics created later are consumed
        /// from their first record.
        #[arg(long, default_value = "earliest", value_parser = parse_start, allow_hyphen_values = true)]
        from: StartAt,
        /// How long a member has to settle a record before it goes to another member.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        ack_timeout: Duration,
        /// Deliveries after which a record that was never settled is dead-lettered.
        #[arg(long, default_value_t = GroupSettings::DEFAULT_MAX_DELIVERIES)]
        max_deliveries: u32,
        /// Where dead-lettered records go [default: each topic's dead-letter topic].
        #[arg(long, value_name = "TOPIC")]
        dead_letter: Option<String>,
        /// Records a member holds unsettled at once (members may ask for fewer).
        #[arg(long, default_value_t = GroupSettings::DEFAULT_PREFETCH)]
        prefetch: u32,
        #[command(flatten)]
        if_not_exists: IfNotExists,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// List groups with their members, lag and pending records.
    List {
        /// Print one JSON object per group.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Describe one group: settings, members, and its position in each topic.
    Describe {
        /// The group.
        name: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Delete a group and its state (the topics are untouched).
    Delete {
        /// The group.
        name: String,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Move a group's position in every topic it consumes: replay from earlier, or
    /// skip a backlog. Records pending in the group are forgotten.
    Reset {
        /// The group.
        name: String,
        /// earliest, latest, an OFFSET, an RFC 3339 time or a time ago (-1h).
        #[arg(long, value_parser = parse_start, allow_hyphen_values = true)]
        to: StartAt,
        #[command(flatten)]
        connect: ConnectArgs,
    },
}

pub(super) async fn run(command: GroupCommand) -> anyhow::Result<()> {
    match command {
        GroupCommand::Create {
            name,
            topic,
            from,
            ack_timeout,
            max_deliveries,
            dead_letter,
            prefetch,
            if_not_exists,
            connect,
        } => {
            let ack_timeout_ms =
                u64::try_from(ack_timeout.as_millis()).context("the ack timeout is too long")?;
            let settings = GroupSettings {
                from,
                ack_timeout_ms,
                max_deliveries,
                dead_letter,
                prefetch,
                ..GroupSettings::new(topic)
            };
            let created = connect.connect().await?.create_group(&name, settings).await;
            match if_not_exists.allow(created, ErrorCode::GroupExists)? {
                Some(info) => println!("created {} on {}", info.name, info.settings.pattern),
                None => println!("{name} exists already"),
            }
        }
        GroupCommand::List { json, connect } => {
            let groups = connect.connect().await?.list_groups().await?;
            if json {
                for group in &groups {
                    println!("{}", output::group_json(group));
                }
            } else {
                print!("{}", output::group_table(&groups));
            }
        }
        GroupCommand::Describe {
            name,
            json,
            connect,
        } => {
            let info = connect.connect().await?.describe_group(&name).await?;
            if json {
                println!("{}", output::group_json(&info));
            } else {
                print!("{}", output::group_details(&info));
            }
        }
        GroupCommand::Delete { name, connect } => {
            connect.connect().await?.delete_group(&name).await?;
            println!("deleted {name}");
        }
        GroupCommand::Reset { name, to, connect } => {
            let info = connect.connect().await?.reset_group(&name, to).await?;
            for topic in &info.topics {
                println!("{} {} at {}", info.name, topic.topic, topic.cursor);
            }
        }
    }
    Ok(())
}
