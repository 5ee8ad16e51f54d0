//! `quiver request` and `quiver reply`: request-reply over topics.

use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Args;
use quiver_client::{Client, ErrorCode, NewRecord, Record};
use tokio::io::AsyncWriteExt;

use super::ConnectArgs;
use super::output;
use super::pubsub::{RecordArgs, SourceArgs};

#[derive(Debug, Args)]
pub(super) struct RequestArgs {
    /// The topic responders consume.
    topic: String,
    /// The request's payload [default: stdin, whole].
    message: Option<String>,
    #[command(flatten)]
    record: RecordArgs,
    /// How long to wait for the reply.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Print the reply as a JSON object (key, headers, payload).
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    connect: ConnectArgs,
}

pub(super) async fn request(args: RequestArgs) -> anyhow::Result<()> {
    let payload = match args.message {
        Some(message) => Bytes::from(message),
        None => {
            let mut stdin = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut stdin)
                .context("reading the request from stdin")?;
            Bytes::from(stdin)
        }
    };
    let record = args.record.record(payload);
    let client = args.connect.connect().await?;
    let reply = client.request(&args.topic, record, args.timeout).await?;
    let mut stdout = std::io::stdout().lock();
    if args.json {
        writeln!(stdout, "{}", output::new_record_json(&reply))?;
    } else {
        stdout.write_all(&reply.payload)?;
        stdout.write_all(b"\n")?;
    }
    Ok(())
}

#[derive(Debug, Args)]
pub(super) struct ReplyArgs {
    #[command(flatten)]
    source: SourceArgs,
    /// Answer each request with this shell command's output, given the request's
    /// payload on stdin [default: echo the payload back].
    #[arg(long, value_name = "COMMAND")]
    command: Option<String>,
    /// Exit after answering this many requests.
    #[arg(long)]
    count: Option<u64>,
    #[command(flatten)]
    connect: ConnectArgs,
}

pub(super) async fn reply(args: ReplyArgs) -> anyhow::Result<()> {
    if args.count == Some(0) {
        return Ok(());
    }
    let client = args.connect.connect_streaming().await?;
    let mut source = args.source.open(&client, Vec::new(), args.count).await?;
    let mut answered = 0;
    while let Some(received) = source.next().await {
        let received = received?;
        if answer(&client, received.record(), args.command.as_deref()).await? {
            answered += 1;
        }
        received.ack()?;
        if args.count.is_some_and(|count| answered >= count) {
            source.close().await?;
            // Leave cleanly: the broker stops counting this consumer at once.
            client.close().await;
            return Ok(());
        }
    }
    bail!("the subscription ended")
}

/// Answers one request; `false` when there was nobody to answer (not a request, or
/// the requester is gone).
async fn answer(client: &Client, request: &Record, command: Option<&str>) -> anyhow::Result<bool> {
    let response = match command {
        None => request.payload.clone(),
        Some(command) => match run(command, &request.payload).await {
            Ok(output) => output,
            Err(e) => {
                // The requester times out; the next request may do better.
                tracing::warn!(topic = %request.topic, offset = request.offset, "no reply: {e:#}");
                return Ok(false);
            }
        },
    };
    match client.reply(request, NewRecord::new(response)).await {
        Ok(()) => Ok(true),
        Err(quiver_client::Error::NotARequest) => {
            tracing::warn!(topic = %request.topic, offset = request.offset, "not a request (no reply-to header); skipped");
            Ok(false)
        }
        Err(e) if e.code() == Some(ErrorCode::NoRequester) => {
            tracing::warn!(topic = %request.topic, offset = request.offset, "the requester is gone; reply dropped");
            Ok(false)
        }
        // The requester's wait ends with the connection (or its timeout); the client
        // reconnects, or the next record says why it could not.
        Err(quiver_client::Error::ConnectionLost(reason)) => {
            tracing::warn!(topic = %request.topic, offset = request.offset, %reason, "the connection was lost before the reply got through");
            Ok(false)
        }
        Err(e) => Err(e.into()),
    }
}

/// Runs `command` with `sh -c`, `input` on its stdin; its stdout is the result.
async fn run(command: &str, input: &[u8]) -> anyhow::Result<Bytes> {
    let mut child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting `{command}`"))?;
    let stdin = child.stdin.take();
    let feed = async move {
        if let Some(mut stdin) = stdin {
            // A command that does not read its input is fine.
            let _ = stdin.write_all(input).await;
        } // dropping stdin closes it
    };
    // Feed and read at once, so neither side blocks on a full pipe.
    let ((), output) = tokio::join!(feed, child.wait_with_output());
    let output = output.with_context(|| format!("running `{command}`"))?;
    if !output.status.success() {
        bail!("`{command}` failed ({})", output.status);
    }
    Ok(output.stdout.into())
}
