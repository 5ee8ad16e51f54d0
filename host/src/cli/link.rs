//! `quiver link create|list|describe|pause|resume|delete`: links to other brokers
//! (docs/links.md).
//!
//! `link create` takes `--ca`, `--token`, `--cert` and `--key` for the *remote*
//! broker, as the link presents them; it reaches the local broker with `--server` and
//! the `QUIVER_CA`, `QUIVER_TOKEN`, `QUIVER_CLIENT_CERT`/`KEY` environment variables.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use quiver_client::{ErrorCode, LinkInfo, LinkState, broker_id_hex};
use serde_json::{Value, json};

use super::ConnectArgs;
use super::args::{IfNotExists, parse_header};
use super::output;
use crate::config::{DEFAULT_PORT, LinkConfig};
use crate::links::spec_of;

#[derive(Debug, Subcommand)]
pub(super) enum LinkCommand {
    /// Declare a link: forward local topics to another broker (`--direction out`, the
    /// default) or pull its topics here (`in`). It starts at once and survives
    /// restarts.
    Create(Box<CreateArgs>),
    /// List links with their state and lag.
    List {
        /// Print one JSON object per link.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Describe one link: its state, and per topic its cursor, lag, forwarded and
    /// skipped records.
    Describe {
        /// The link.
        name: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Stop a link forwarding until it is resumed (across restarts too).
    Pause {
        /// The link.
        name: String,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Let a paused link forward again, from where it stopped.
    Resume {
        /// The link.
        name: String,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Stop a link and forget it (topics on either side are untouched).
    Delete {
        /// The link.
        name: String,
        #[command(flatten)]
        connect: ConnectArgs,
    },
}

#[derive(Debug, clap::Args)]
pub(super) struct CreateArgs {
    /// The link's name (same grammar as topic names).
    name: String,
    /// The remote broker, HOST:PORT; several, comma-separated, are tried in turn. A
    /// JetStream remote: its servers' nats://HOST:PORT URLs (repeat --to for each).
    #[arg(long, value_delimiter = ',', required = true)]
    to: Vec<String>,
    /// The topics to forward: a name or pattern (`sensors.>`), local for `out`, on the
    /// remote for `in`. Topics that start matching later are picked up.
    #[arg(long, value_name = "PATTERN")]
    topics: String,
    /// out: forward local topics to the remote; in: pull the remote's topics here.
    #[arg(long, default_value = "out", value_parser = ["out", "in"])]
    direction: String,
    /// Put before each topic's name to name its destination (`edge1.`).
    #[arg(long, default_value = "")]
    prefix: String,
    /// Where a topic never forwarded before starts: earliest, latest, an OFFSET, an
    /// RFC 3339 time or a time ago (-1h).
    #[arg(long, default_value = "earliest", allow_hyphen_values = true)]
    from: String,
    /// The most records per second the link forwards.
    #[arg(long, value_name = "MSGS_PER_S")]
    max_rate: Option<u32>,
    /// The certificate (PEM) the remote's certificate must chain to (its self-signed
    /// certificate, or its CA). For a JetStream remote, this also requires TLS.
    #[arg(long, visible_alias = "tls-ca", value_name = "FILE")]
    ca: Option<PathBuf>,
    /// A token the remote issued for the link (`quiver auth token create` there, or
    /// a NATS token).
    #[arg(long, conflicts_with_all = ["cert", "key", "creds", "user"])]
    token: Option<String>,
    /// A client certificate (PEM) the remote trusts.
    #[arg(long, value_name = "FILE", requires = "key")]
    cert: Option<PathBuf>,
    /// Its private key (PEM).
    #[arg(long, value_name = "FILE", requires = "cert")]
    key: Option<PathBuf>,
    /// A deployed plugin to run on records before forwarding them (`out` only).
    #[arg(long)]
    plugin: Option<String>,
    /// A plugin parameter, NAME=VALUE (repeatable).
    #[arg(long = "param", value_parser = parse_header, requires = "plugin")]
    params: Vec<(String, String)>,
    /// The remote is NATS JetStream: the stream records go to (`out`) or come from
    /// (`in`); subjects are SUBJECT_PREFIX.<topic>.
    #[arg(long)]
    stream: Option<String>,
    /// JetStream: put this and a dot before each topic's name to make its subject.
    #[arg(long, default_value = "", requires = "stream")]
    subject_prefix: String,
    /// JetStream: create the stream if it is missing.
    #[arg(long, requires = "stream")]
    create_stream: bool,
    /// JetStream: the created stream's replicas.
    #[arg(long, requires = "create_stream")]
    replicas: Option<u8>,
    /// JetStream: the created stream's storage.
    #[arg(long, requires = "create_stream", value_parser = ["file", "memory"])]
    storage: Option<String>,
    /// JetStream: the created stream's retention.
    #[arg(long, requires = "create_stream", value_parser = ["limits", "interest", "work-queue"])]
    retention: Option<String>,
    /// JetStream: a NATS credentials file (user JWT and NKey seed).
    #[arg(long, value_name = "FILE", requires = "stream", conflicts_with_all = ["cert", "key", "user"])]
    creds: Option<PathBuf>,
    /// JetStream: a NATS user (with --password).
    #[arg(long, requires_all = ["stream", "password"], conflicts_with_all = ["cert", "key"])]
    user: Option<String>,
    /// JetStream: the user's password.
    #[arg(long, requires = "user")]
    password: Option<String>,
    /// The local broker, host:port.
    #[arg(long, env = "QUIVER_SERVER", default_value_t = format!("127.0.0.1:{DEFAULT_PORT}"))]
    server: String,
    #[command(flatten)]
    if_not_exists: IfNotExists,
}

/// How `link create` reaches the local broker: `--server`, the rest from the
/// environment (its `--ca` and `--token` are the remote's).
#[derive(Debug, Parser)]
struct LocalBroker {
    #[command(flatten)]
    connect: ConnectArgs,
}

pub(super) async fn run(command: LinkCommand) -> anyhow::Result<()> {
    match command {
        LinkCommand::Create(args) => {
            let config = LinkConfig {
                name: args.name,
                to: args.to,
                topics: args.topics,
                direction: Some(args.direction),
                prefix: args.prefix,
                from: Some(args.from),
                max_rate: args.max_rate,
                ca: args.ca,
                token: args.token,
                cert: args.cert,
                key: args.key,
                plugin: args.plugin,
                params: args.params.into_iter().collect(),
                stream: args.stream,
                subject_prefix: args.subject_prefix,
                create_stream: args.create_stream,
                replicas: args.replicas,
                storage: args.storage,
                retention: args.retention,
                creds: args.creds,
                user: args.user,
                password: args.password,
            };
            let spec = spec_of(&config).map_err(anyhow::Error::msg)?;
            let local = LocalBroker::try_parse_from(["quiver", "--server", &args.server])
                .context("the local broker's connection settings")?;
            let created = local.connect.connect().await?.create_link(spec).await;
            let Some(info) = args.if_not_exists.allow(created, ErrorCode::LinkExists)? else {
                println!("link {} exists already", config.name);
                return Ok(());
            };
            println!(
                "created link {} ({} {} {})",
                info.spec.name,
                info.spec.topics,
                if info.spec.direction == quiver_client::LinkDirection::Out {
                    "->"
                } else {
                    "<-"
                },
                info.spec.to.join(",")
            );
        }
        LinkCommand::List { json, connect } => {
            let links = connect.connect().await?.list_links().await?;
            if json {
                for link in &links {
                    println!("{}", link_json(link));
                }
            } else {
                print!("{}", link_table(&links));
            }
        }
        LinkCommand::Describe {
            name,
            json,
            connect,
        } => {
            let info = connect.connect().await?.describe_link(&name).await?;
            if json {
                println!("{}", link_json(&info));
            } else {
                print!("{}", link_details(&info));
            }
        }
        LinkCommand::Pause { name, connect } => {
            connect.connect().await?.pause_link(&name).await?;
            println!("paused {name}");
        }
        LinkCommand::Resume { name, connect } => {
            connect.connect().await?.resume_link(&name).await?;
            println!("resumed {name}");
        }
        LinkCommand::Delete { name, connect } => {
            connect.connect().await?.delete_link(&name).await?;
            println!("deleted {name}");
        }
    }
    Ok(())
}

fn state_text(state: &LinkState) -> String {
    match state {
        LinkState::Starting => "starting".into(),
        LinkState::Connected { addr } => format!("connected to {addr}"),
        LinkState::BackingOff { error, retry_ms } => {
            format!("backing off (retry in {retry_ms} ms): {error}")
        }
        LinkState::Paused => "paused".into(),
    }
}

fn link_json(link: &LinkInfo) -> Value {
    let (state, error, addr) = match &link.state {
        LinkState::Starting => ("starting", None, None),
        LinkState::Connected { addr } => ("connected", None, Some(addr.clone())),
        LinkState::BackingOff { error, .. } => ("backing_off", Some(error.clone()), None),
        LinkState::Paused => ("paused", None, None),
    };
    json!({
        "name": link.spec.name,
        "to": link.spec.to,
        "direction": link.spec.direction.to_string(),
        "topics": link.spec.topics,
        "prefix": link.spec.prefix,
        "state": state,
        "error": error,
        "connected_to": addr,
        "remote": link.remote.map(broker_id_hex),
        "failures": link.failures,
        "lag": link.topics.iter().map(|t| t.lag).sum::<u64>(),
        "forwarded": link.topics.iter().map(|t| t.forwarded).sum::<u64>(),
        "skipped": link.topics.iter().map(|t| t.skipped).sum::<u64>(),
        "looped": link.topics.iter().map(|t| t.looped).sum::<u64>(),
        "dead_lettered": link.topics.iter().map(|t| t.dead_lettered).sum::<u64>(),
        "stream": link.spec.jetstream.as_ref().map(|js| js.stream.clone()),
        "per_topic": link.topics.iter().map(|t| json!({
            "topic": t.topic,
            "next": t.next,
            "lag": t.lag,
            "lag_bytes": t.lag_bytes,
            "oldest_ms": t.oldest_ms,
            "forwarded": t.forwarded,
            "skipped": t.skipped,
            "looped": t.looped,
            "dead_lettered": t.dead_lettered,
            "rate": t.rate,
        })).collect::<Vec<_>>(),
        "skips": link.skips.iter().map(|s| json!({
            "topic": s.topic, "from": s.from, "to": s.to, "at_ms": s.at_ms,
        })).collect::<Vec<_>>(),
    })
}

fn link_table(links: &[LinkInfo]) -> String {
    let rows: Vec<[String; 6]> = links
        .iter()
        .map(|l| {
            [
                l.spec.name.clone(),
                l.spec.direction.to_string(),
                l.spec.topics.clone(),
                l.spec.to.join(","),
                l.topics.iter().map(|t| t.lag).sum::<u64>().to_string(),
                state_text(&l.state),
            ]
        })
        .collect();
    output::table(["NAME", "DIR", "TOPICS", "TO", "LAG", "STATE"], &rows)
}

fn link_details(link: &LinkInfo) -> String {
    let mut out = format!(
        "name: {}\ndirection: {}\ntopics: {}\nprefix: {}\nto: {}\nremote: {}\nstate: {}\nfailures: {}\n",
        link.spec.name,
        link.spec.direction,
        link.spec.topics,
        link.spec.prefix,
        link.spec.to.join(","),
        link.remote
            .map_or_else(|| "(not reached yet)".into(), broker_id_hex),
        state_text(&link.state),
        link.failures,
    );
    if let Some(js) = &link.spec.jetstream {
        out.push_str(&format!(
            "stream: {} (subjects {})\n",
            js.stream,
            js.subject("<topic>")
        ));
    }
    let now = crate::util::now_ms();
    let rows: Vec<[String; 9]> = link
        .topics
        .iter()
        .map(|t| {
            // How long the oldest record not yet forwarded has waited.
            let age = t.oldest_ms.map_or_else(
                || "-".to_owned(),
                |ms| {
                    let waited = std::time::Duration::from_secs(now.saturating_sub(ms) / 1000);
                    humantime::format_duration(waited).to_string()
                },
            );
            [
                t.topic.clone(),
                t.next.to_string(),
                t.lag.to_string(),
                age,
                t.forwarded.to_string(),
                t.skipped.to_string(),
                t.looped.to_string(),
                t.dead_lettered.to_string(),
                format!("{}/s", t.rate),
            ]
        })
        .collect();
    out.push_str(&output::table(
        [
            "TOPIC",
            "CURSOR",
            "LAG",
            "OLDEST WAITING",
            "FORWARDED",
            "SKIPPED",
            "LOOPED",
            "DEAD-LETTERED",
            "RATE",
        ],
        &rows,
    ));
    for skip in &link.skips {
        out.push_str(&format!(
            "skipped {} offsets {}..{} (retention removed them before they were forwarded)\n",
            skip.topic, skip.from, skip.to
        ));
    }
    out
}
