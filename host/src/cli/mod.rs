//! The `quiver` command line: `serve` runs a broker; every other command is a client
//! of one, built on the client SDK.

mod args;
mod auth;
mod bench;
mod cert;
mod dlq;
mod group;
mod info;
mod link;
mod output;
mod plugin;
mod project;
mod pubsub;
mod request;
mod serve;
mod topic;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use quiver_client::{Backoff, Client, ConnectionState, Durability, Reconnect};
use tokio::sync::watch;

use crate::config::{DEFAULT_DATA_DIR, DEFAULT_PORT};
use crate::transport::tls::default_cert_path;

/// Quiver: an event bus over QUIC with durable topics and WebAssembly plugins.
#[derive(Debug, Parser)]
#[command(
    name = "quiver",
    version,
    after_help = "Exit status: 0 done; 1 failed (anything below does not fit); 2 usage (a bad \
                  argument, name or pattern, a CA file missing); 3 not found (topic, group, \
                  plugin, link, no responder); 4 denied (authentication or rights); 5 \
                  unavailable (cannot connect, connection lost, the broker cannot store now, \
                  a timeout); 6 data refused (too large, invalid plugin, dropped by a plugin); \
                  130 interrupted (Ctrl-C)."
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a broker on an embedded data dir.
    Serve(serve::ServeArgs),
    /// Create, list, describe and delete topics.
    #[command(subcommand)]
    Topic(topic::TopicCommand),
    /// Publish records: MESSAGE, or each line of stdin.
    Pub(pubsub::PubArgs),
    /// Subscribe to a topic or pattern (or consume as a group member) and print its
    /// records.
    Sub(pubsub::SubArgs),
    /// Create, list, describe, reset and delete durable consumer groups.
    #[command(subcommand)]
    Group(group::GroupCommand),
    /// Create, list, describe, pause, resume and delete links to other brokers.
    #[command(subcommand)]
    Link(link::LinkCommand),
    /// Send a request to a topic and print the reply.
    Request(request::RequestArgs),
    /// Answer requests arriving on a topic (or group) with a command's output.
    Reply(request::ReplyArgs),
    /// Measure throughput and latency: publish, e2e, fanout, group or plugin load.
    Bench(bench::BenchArgs),
    /// Deploy, attach, upgrade, inspect and try WebAssembly plugins.
    #[command(subcommand)]
    Plugin(plugin::PluginCommand),
    /// Manage principals, their rights and tokens (in the data dir's auth file).
    #[command(subcommand)]
    Auth(auth::AuthCommand),
    /// How the broker runs: version, uptime, data dir and its size, listeners, what it
    /// holds.
    Info(info::InfoArgs),
    /// Dead-letter topics: publish dead letters again once the cause is fixed.
    #[command(subcommand)]
    Dlq(dlq::DlqCommand),
    /// Show the broker's TLS certificate: its names and the fingerprint to pin.
    #[command(subcommand)]
    Cert(cert::CertCommand),
    /// Print a completion script for a shell, e.g. `quiver completions bash >
    /// /etc/bash_completion.d/quiver`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

/// How client commands reach a broker.
#[derive(Debug, Clone, Args)]
struct ConnectArgs {
    /// Broker address, host:port; several, comma-separated, are tried in turn.
    #[arg(
        long,
        env = "QUIVER_SERVER",
        value_delimiter = ',',
        default_values_t = [format!("127.0.0.1:{DEFAULT_PORT}")]
    )]
    server: Vec<String>,
    /// Certificate (PEM) to trust: the broker's self-signed certificate or its CA.
    /// Default: ./quiver-data/tls/cert.pem when it exists (a broker started here).
    #[arg(long, env = "QUIVER_CA")]
    ca: Option<PathBuf>,
    /// Name to verify the broker's certificate against [default: the host in --server].
    #[arg(long, env = "QUIVER_SERVER_NAME")]
    server_name: Option<String>,
    /// How long to wait for the broker to answer when connecting; also how long a
    /// one-shot command (`topic list`, `pub MESSAGE`) tries to reconnect.
    #[arg(long, env = "QUIVER_CONNECT_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    connect_timeout: Duration,
    /// How long a streaming command (`pub` from stdin, `sub`, `reply`) keeps
    /// reconnecting after losing the broker before it fails. Keep it below the
    /// broker's dedup window (2 minutes by default), so resent publishes are stored
    /// once.
    #[arg(long, env = "QUIVER_MAX_OUTAGE", default_value = "60s", value_parser = humantime::parse_duration)]
    max_outage: Duration,
    /// Token to authenticate with (`quiver auth token create`).
    #[arg(long, env = "QUIVER_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Client certificate (PEM) to authenticate with, for brokers that accept them.
    #[arg(long, env = "QUIVER_CLIENT_CERT", requires = "client_key")]
    client_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, env = "QUIVER_CLIENT_KEY", requires = "client_cert")]
    client_key: Option<PathBuf>,
}

impl ConnectArgs {
    /// Settings for `server`, trusting `ca` (or the local default).
    fn to(server: String, ca: Option<PathBuf>) -> Self {
        Self {
            server: vec![server],
            ca,
            server_name: None,
            connect_timeout: Duration::from_secs(5),
            max_outage: Duration::from_secs(60),
            token: None,
            client_cert: None,
            client_key: None,
        }
    }

    /// Connects for a command that makes a few requests and exits: a lost connection
    /// is dialed again for at most the connect timeout.
    async fn connect(&self) -> anyhow::Result<Client> {
        self.connect_for(self.connect_timeout).await
    }

    /// Connects for a command that streams until stopped: a lost connection is dialed
    /// again for up to `--max-outage`, with a line on stderr when it is lost and when
    /// it is back.
    async fn connect_streaming(&self) -> anyhow::Result<Client> {
        let client = self.connect_for(self.max_outage).await?;
        tokio::spawn(report_reconnections(client.state()));
        Ok(client)
    }

    async fn connect_for(&self, max_outage: Duration) -> anyhow::Result<Client> {
        let ca = match &self.ca {
            Some(ca) => ca.clone(),
            None => {
                let local = default_cert_path(std::path::Path::new(DEFAULT_DATA_DIR));
                if !local.exists() {
                    bail!(
                        "no CA certificate: pass --ca FILE (or set QUIVER_CA) with the broker's \
                         certificate; a broker started with `quiver serve` in this directory keeps \
                         it at {}",
                        local.display()
                    );
                }
                local
            }
        };
        let reconnect = Reconnect::Backoff(Backoff {
            max_outage,
            ..Backoff::default()
        });
        let mut builder = Client::builder()
            .ca_file(&ca)?
            .client_name(format!("quiver-cli/{}", env!("CARGO_PKG_VERSION")))
            .connect_timeout(self.connect_timeout)
            .reconnect(reconnect);
        if let Some(name) = &self.server_name {
            builder = builder.server_name(name);
        }
        if let Some(token) = &self.token {
            builder = builder.token(token);
        }
        if let Some((cert, key)) = self.client_cert.as_ref().zip(self.client_key.as_ref()) {
            builder = builder.client_cert_files(cert, key)?;
        }
        Ok(builder.connect_to(&self.server).await?)
    }
}

/// Prints a line on stderr when the connection is lost and when it is back.
async fn report_reconnections(mut state: watch::Receiver<ConnectionState>) {
    let mut lost_at = None;
    while state.changed().await.is_ok() {
        let now = state.borrow_and_update().clone();
        match now {
            ConnectionState::Reconnecting { last_error, .. } if lost_at.is_none() => {
                eprintln!("quiver: connection lost ({last_error}); reconnecting");
                lost_at = Some(Instant::now());
            }
            ConnectionState::Connected { addr } => {
                if let Some(since) = lost_at.take() {
                    let outage = humantime::format_duration(round_ms(since.elapsed()));
                    eprintln!("quiver: reconnected to {addr} after {outage}");
                }
            }
            _ => {}
        }
    }
}

/// `duration` to the millisecond, for messages.
fn round_ms(duration: Duration) -> Duration {
    Duration::from_millis(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX))
}

/// When a topic's publishes are acknowledged (`topic create`, `bench`).
#[derive(Debug, Clone, Args)]
struct DurabilityArgs {
    /// fsync: acknowledge once on disk; batched: acknowledge at once and flush within
    /// --flush-interval (a crash may lose what was acknowledged in that interval).
    #[arg(long, value_enum, default_value_t = DurabilityMode::Fsync)]
    durability: DurabilityMode,
    /// With batched durability: the longest an acknowledged record waits for its flush.
    #[arg(long, default_value = "100ms", value_parser = humantime::parse_duration)]
    flush_interval: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum DurabilityMode {
    Fsync,
    Batched,
}

impl DurabilityArgs {
    fn durability(&self) -> Durability {
        match self.durability {
            DurabilityMode::Fsync => Durability::Fsync,
            DurabilityMode::Batched => Durability::Batched {
                // Out of range either way: the broker refuses it with the limits.
                interval_ms: u32::try_from(self.flush_interval.as_millis()).unwrap_or(u32::MAX),
            },
        }
    }
}

/// Runs the command line; the whole of `main`.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::Auth(command) => auth::run(command),
        Command::Cert(command) => cert::run(command),
        Command::Completions { shell } => {
            exit_quietly_on_closed_stdout();
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut command, "quiver", &mut std::io::stdout());
            Ok(())
        }
        command => run_client(command),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // It said what it got through already; 128 + SIGINT, as shells report it.
        Err(e) if e.is::<Interrupted>() => ExitCode::from(130),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(exit_status(&e))
        }
    }
}

/// The exit status of a failed command (`quiver --help` lists them): scripts can tell
/// a typo from a missing topic, a refusal or a broker that is away.
fn exit_status(error: &anyhow::Error) -> u8 {
    use quiver_client::{Error, ErrorCode};
    const OTHER: u8 = 1;
    const USAGE: u8 = 2;
    const NOT_FOUND: u8 = 3;
    const DENIED: u8 = 4;
    const UNAVAILABLE: u8 = 5;
    const DATA: u8 = 6;
    if error.is::<NotFound>() {
        return NOT_FOUND;
    }
    let Some(client) = error.chain().find_map(|e| e.downcast_ref::<Error>()) else {
        return OTHER;
    };
    match client {
        Error::InvalidAddress { .. } | Error::CaFile { .. } | Error::NoCa => USAGE,
        Error::Tls(_)
        | Error::Connect { .. }
        | Error::ConnectionLost(_)
        | Error::OutcomeUnknown(_)
        | Error::Timeout(_) => UNAVAILABLE,
        Error::TooLarge { .. } | Error::Transformed(_) => DATA,
        _ => match client.code() {
            Some(
                ErrorCode::InvalidName
                | ErrorCode::InvalidPattern
                | ErrorCode::InvalidArgument
                | ErrorCode::UnsupportedVersion,
            ) => USAGE,
            Some(
                ErrorCode::TopicNotFound
                | ErrorCode::PluginNotFound
                | ErrorCode::GroupNotFound
                | ErrorCode::LinkNotFound
                | ErrorCode::NoResponders
                | ErrorCode::NoRequester,
            ) => NOT_FOUND,
            Some(ErrorCode::Unauthenticated | ErrorCode::Forbidden) => DENIED,
            Some(
                ErrorCode::Storage
                | ErrorCode::ShuttingDown
                | ErrorCode::Overloaded
                | ErrorCode::LimitReached
                | ErrorCode::RequestTimeout,
            ) => UNAVAILABLE,
            Some(
                ErrorCode::RecordTooLarge
                | ErrorCode::BatchTooLarge
                | ErrorCode::InvalidPlugin
                | ErrorCode::PluginQuarantined
                | ErrorCode::Malformed
                | ErrorCode::FrameTooLarge,
            ) => DATA,
            _ => OTHER,
        },
    }
}

/// What a command looked for is not there (beyond the broker's own `*NotFound`
/// errors): exit status 3.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct NotFound(String);

/// A command stopped by Ctrl-C after saying what it had done.
#[derive(Debug, thiserror::Error)]
#[error("interrupted")]
struct Interrupted;

/// Lets a client command whose output is piped into `head` (or any reader that quits
/// early) end quietly, as command-line tools do, instead of panicking on the failed
/// write. Not for `serve`: a broker must outlive whatever reads its logs.
fn exit_quietly_on_closed_stdout() {
    #[cfg(unix)]
    // SAFETY: called before any other thread exists; restoring a signal's default
    // disposition has no other effect on this process.
    #[allow(unsafe_code)]
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn run_client(command: Command) -> anyhow::Result<()> {
    exit_quietly_on_closed_stdout();
    init_tracing("warn", crate::config::LogFormat::Human);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        match command {
            Command::Topic(command) => topic::run(command).await,
            Command::Pub(args) => pubsub::publish(args).await,
            Command::Sub(args) => pubsub::subscribe(args).await,
            Command::Plugin(command) => plugin::run(command).await,
            Command::Group(command) => group::run(command).await,
            Command::Link(command) => link::run(command).await,
            Command::Dlq(command) => dlq::run(command).await,
            Command::Info(args) => info::run(args).await,
            Command::Request(args) => request::request(args).await,
            Command::Reply(args) => request::reply(args).await,
            Command::Bench(args) => bench::run(args).await,
            Command::Serve(_)
            | Command::Auth(_)
            | Command::Cert(_)
            | Command::Completions { .. } => {
                unreachable!("handled by main")
            }
        }
    })
}

/// Logs to stderr; the level comes from `RUST_LOG`, else `default_level`.
fn init_tracing(default_level: &str, format: crate::config::LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        crate::config::LogFormat::Human => builder.try_init(),
        crate::config::LogFormat::Json => builder.json().try_init(),
    };
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        super::Cli::command().debug_assert();
    }
}
