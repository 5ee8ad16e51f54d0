//! `quiver pub` and `quiver sub`.

use std::io::Write;

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Args;
use futures::StreamExt;
use futures::stream::FuturesOrdered;
use quiver_client::{
    Client, Delivery, Member, NewRecord, Record, Stage, StartAt, SubscribeOptions, Subscription,
};
use tokio::io::{AsyncBufReadExt, BufReader};

use super::ConnectArgs;
use super::args::{parse_header, parse_start};
use super::output;

/// Publishes from stdin kept in flight at once; records are stored, and offsets
/// printed, in input order.
const PUBLISH_WINDOW: usize = 256;

#[derive(Debug, Args)]
pub(super) struct PubArgs {
    /// The topic.
    topic: String,
    /// The payload; without it, each line of stdin is published as a record.
    message: Option<String>,
    #[command(flatten)]
    record: RecordArgs,
    #[command(flatten)]
    connect: ConnectArgs,
}

/// The key and headers of records a command sends.
#[derive(Debug, Args)]
pub(super) struct RecordArgs {
    /// Record key.
    #[arg(long)]
    key: Option<String>,
    /// Record header, NAME=VALUE (repeatable).
    #[arg(long = "header", value_name = "NAME=VALUE", value_parser = parse_header)]
    headers: Vec<(String, String)>,
}

impl RecordArgs {
    /// A record of `payload` with this key and these headers.
    pub(super) fn record(&self, payload: impl Into<Bytes>) -> NewRecord {
        let mut record = NewRecord::new(payload);
        if let Some(key) = &self.key {
            record = record.with_key(key.clone());
        }
        for (name, value) in &self.headers {
            record = record.with_header(name.clone(), value.clone());
        }
        record
    }
}

pub(super) async fn publish(args: PubArgs) -> anyhow::Result<()> {
    let client = match args.message {
        Some(_) => args.connect.connect().await?,
        None => args.connect.connect_streaming().await?,
    };
    let publish = |record| client.publish_batch(&args.topic, vec![record]);
    if let Some(message) = &args.message {
        let receipt = publish(args.record.record(message.clone())).await?;
        println!("{}", output::receipt_text(&receipt));
        return Ok(());
    }
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut inflight = FuturesOrdered::new();
    let mut stdout = std::io::stdout().lock();
    let mut tally = Tally::default();
    let bar = output::progress(None, "stored", true);
    let mut eof = false;
    let mut interrupted = false;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    while !eof || !inflight.is_empty() {
        tokio::select! {
            // Ctrl-C: read no more, but see what was sent through, so that every
            // record stored is reported (a second Ctrl-C ends the process at once).
            _ = &mut ctrl_c, if !interrupted => {
                interrupted = true;
                eof = true;
            }
            line = lines.next_line(), if !eof && inflight.len() < PUBLISH_WINDOW => {
                match line.context("reading stdin")? {
                    // Queued in line order by this call: the topic keeps stdin's order.
                    Some(line) => {
                        tally.sent += 1;
                        inflight.push_back(publish(args.record.record(line)));
                    }
                    None => eof = true,
                }
            }
            Some(placed) = inflight.next() => {
                let receipt = match placed {
                    Ok(receipt) => receipt,
                    Err(e) if interrupted => {
                        tally.failed += 1;
                        eprintln!("error: {e}");
                        continue;
                    }
                    Err(e) => return Err(e.into()),
                };
                tally.stored(&receipt);
                bar.inc(1);
                writeln!(stdout, "{}", output::receipt_text(&receipt))?;
            }
        }
    }
    stdout.flush()?;
    bar.finish_and_clear();
    if interrupted {
        eprintln!("{}", tally.summary());
        return Err(super::Interrupted.into());
    }
    Ok(())
}

/// What a publish from stdin got through, for the summary after Ctrl-C.
#[derive(Debug, Default)]
struct Tally {
    sent: u64,
    stored: u64,
    failed: u64,
    last_offset: Option<u64>,
}

impl Tally {
    fn stored(&mut self, receipt: &quiver_client::Receipt) {
        self.stored += 1;
        if receipt.count > 0 {
            self.last_offset = Some(receipt.base_offset + u64::from(receipt.count) - 1);
        }
    }

    fn summary(&self) -> String {
        let last = self.last_offset.map_or(String::new(), |offset| {
            format!(", the last at offset {offset}")
        });
        format!(
            "interrupted: {} sent, {} stored{last}, {} failed; stdin past them was not read",
            self.sent, self.stored, self.failed
        )
    }
}

#[derive(Debug, Args)]
pub(super) struct SubArgs {
    #[command(flatten)]
    source: SourceArgs,
    /// Exit after this many records.
    #[arg(long)]
    count: Option<u64>,
    /// Print one JSON object per record.
    #[arg(long)]
    json: bool,
    /// Run this deployed plugin on delivery, for this subscriber only.
    #[arg(long, value_name = "NAME", conflicts_with = "group")]
    plugin: Option<String>,
    /// A parameter for --plugin, NAME=VALUE (repeatable).
    #[arg(long = "param", value_name = "NAME=VALUE", value_parser = parse_header, requires = "plugin")]
    params: Vec<(String, String)>,
    /// What happens while --plugin is quarantined: the subscription ends
    /// (fail-closed) or records pass unchanged (fail-open).
    #[arg(long, value_enum, default_value_t = super::args::Policy::FailClosed, requires = "plugin")]
    on_error: super::args::Policy,
    /// With --group: do not acknowledge printed records. They are delivered again
    /// after the ack timeout or once this member leaves, to it or another member.
    #[arg(long, requires = "group")]
    no_ack: bool,
    #[command(flatten)]
    connect: ConnectArgs,
}

/// Where a consuming command reads: a topic or pattern, or a durable group.
#[derive(Debug, Args)]
pub(super) struct SourceArgs {
    /// Topic name or pattern: `*` matches one token, `>` one or more trailing tokens.
    #[arg(required_unless_present = "group")]
    pattern: Option<String>,
    /// Consume as a member of this durable group instead: its members share the
    /// records, each settled by one of them.
    #[arg(long, value_name = "NAME", conflicts_with_all = ["pattern", "from"])]
    group: Option<String>,
    /// Where to start: earliest, latest, an OFFSET, an RFC 3339 time
    /// (2026-01-31T12:00:00Z) or a time ago (-10m).
    #[arg(long, default_value = "latest", value_parser = parse_start, allow_hyphen_values = true)]
    from: StartAt,
    /// With --group: records this member holds unsettled at once [default: the
    /// group's prefetch].
    #[arg(long, requires = "group")]
    prefetch: Option<u32>,
}

/// Records from a subscription or a group membership.
pub(super) enum Source {
    Subscription(Subscription),
    Member(Member),
}

/// A record received from a [`Source`]; from a group it must be settled.
pub(super) enum Received {
    Record(Record),
    Delivery(Delivery),
}

impl Received {
    pub(super) fn record(&self) -> &Record {
        match self {
            Self::Record(record) => record,
            Self::Delivery(delivery) => &delivery.record,
        }
    }

    /// Acknowledges a group delivery (a plain record needs nothing).
    pub(super) fn ack(self) -> anyhow::Result<()> {
        match self {
            Self::Record(_) => Ok(()),
            Self::Delivery(delivery) => Ok(delivery.ack()?),
        }
    }
}

impl SourceArgs {
    /// Subscribes, or joins the group (holding no more than `count` records at once
    /// when that is all the caller will take).
    pub(super) async fn open(
        &self,
        client: &Client,
        pipeline: Vec<Stage>,
        count: Option<u64>,
    ) -> anyhow::Result<Source> {
        if let Some(group) = &self.group {
            // Taking more than will be printed would only hold records from others.
            let wanted = count.map(|n| u32::try_from(n).unwrap_or(u32::MAX));
            let prefetch = self.prefetch.or(wanted);
            return Ok(Source::Member(client.join(group, prefetch).await?));
        }
        let pattern = self
            .pattern
            .as_deref()
            .context("a topic or pattern is required (or --group)")?;
        let mut options = SubscribeOptions::from(self.from);
        options.pipeline = pipeline;
        let subscription = client.subscribe(pattern, options).await?;
        if let Some(note) = waiting_note(client, pattern).await {
            eprintln!("{note}");
        }
        Ok(Source::Subscription(subscription))
    }
}

/// What to tell the user when a subscription has nothing to read from yet: no topic
/// of that name, or none matching the pattern. It waits (a topic created later is
/// read from its start), which without a word looks like a hang or a typo.
async fn waiting_note(client: &Client, pattern: &str) -> Option<String> {
    let parsed = quiver_protocol::TopicPattern::parse(pattern).ok()?;
    let topics = client.list_topics().await.ok()?;
    let matched = topics.iter().any(|topic| {
        quiver_protocol::TopicName::parse(&topic.name).is_ok_and(|name| parsed.matches(&name))
    });
    match (matched, parsed.is_literal()) {
        (true, _) => None,
        (false, true) => Some(format!(
            "note: topic `{pattern}` does not exist (yet): waiting for it to be created \
             (`quiver topic list` shows those that exist; Ctrl-C stops)"
        )),
        (false, false) => Some(format!(
            "note: no topic matches `{pattern}` yet: waiting for one to be created \
             (`quiver topic list` shows those that exist; Ctrl-C stops)"
        )),
    }
}

impl Source {
    /// Ends the subscription or leaves the group, once the broker has every
    /// settlement.
    pub(super) async fn close(self) -> anyhow::Result<()> {
        match self {
            Self::Subscription(_) => Ok(()),
            Self::Member(member) => Ok(member.leave().await?),
        }
    }

    /// The next record; `None` once the source has ended.
    pub(super) async fn next(&mut self) -> Option<quiver_client::Result<Received>> {
        match self {
            Self::Subscription(sub) => Some(sub.next().await?.map(Received::Record)),
            Self::Member(member) => Some(member.next().await?.map(Received::Delivery)),
        }
    }
}

pub(super) async fn subscribe(args: SubArgs) -> anyhow::Result<()> {
    if args.count == Some(0) {
        return Ok(());
    }
    let client = args.connect.connect_streaming().await?;
    let pipeline = args
        .plugin
        .iter()
        .map(|plugin| Stage {
            plugin: plugin.clone(),
            params: args.params.clone(),
            on_error: args.on_error.into(),
            attached_by: None,
        })
        .collect();
    let mut source = args.source.open(&client, pipeline, args.count).await?;
    let mut stdout = std::io::stdout().lock();
    let mut printed = 0;
    while let Some(received) = source.next().await {
        let received = received?;
        let record = received.record();
        if args.json {
            let mut json = output::record_json(record);
            if let Received::Delivery(delivery) = &received {
                json["deliveries"] = delivery.deliveries.into();
            }
            writeln!(stdout, "{json}")?;
        } else {
            stdout.write_all(&record.payload)?;
            stdout.write_all(b"\n")?;
        }
        // Print promptly when idle (a live tail), and before settling: a record is
        // acknowledged only once it is out.
        stdout.flush()?;
        if !args.no_ack {
            received.ack()?;
        }
        printed += 1;
        if args.count.is_some_and(|count| printed >= count) {
            source.close().await?;
            // Leave cleanly: the broker stops counting this consumer at once.
            client.close().await;
            return Ok(());
        }
    }
    bail!("the subscription ended")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_positions_parse() {
        assert_eq!(parse_start("earliest"), Ok(StartAt::Earliest));
        assert_eq!(parse_start("latest"), Ok(StartAt::Latest));
        assert_eq!(parse_start("42"), Ok(StartAt::Offset(42)));
        assert_eq!(
            parse_start("1970-01-01T00:00:01Z"),
            Ok(StartAt::Timestamp(1000))
        );
        assert!(matches!(parse_start("-10m"), Ok(StartAt::Timestamp(_))));
        assert!(parse_start("yesterday").is_err());
    }

    #[test]
    fn headers_parse() {
        assert_eq!(parse_header("a=b=c"), Ok(("a".into(), "b=c".into())));
        assert!(parse_header("novalue").is_err());
        assert!(parse_header("=x").is_err());
    }
}
