//! `quiver serve`: load the configuration, bind, print the ready line, serve until
//! SIGINT or SIGTERM.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::{
    AuthOverrides, Config, HttpConfig, HttpListen, HttpOverrides, LogFormat, MqttConfig,
    MqttOverrides, Overrides, PluginOverrides, TlsOverrides,
};
use crate::server::{Server, Stopped};
use crate::transport::tls::Origin;

#[derive(Debug, Args)]
pub(super) struct ServeArgs {
    /// TOML configuration file (see quiver.example.toml).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Data dir [default: ./quiver-data].
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// UDP address to listen on; port 0 picks a free one [default: 127.0.0.1:7848].
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// PEM certificate chain (with --tls-key) instead of the self-signed one.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key (with --tls-cert).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Another DNS name or IP address clients reach this broker by, for the
    /// self-signed certificate to hold (repeatable; it always holds localhost, the
    /// loopback addresses, this host's name and the listen addresses).
    #[arg(long = "tls-name", value_name = "NAME", conflicts_with = "tls_cert")]
    tls_names: Vec<String>,
    /// Log format on stderr [default: human].
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
    /// Deploy (or upgrade) every *.wasm in DIR at start-up; the file stem names the
    /// plugin.
    #[arg(long, value_name = "DIR")]
    plugin_dir: Option<PathBuf>,
    /// Let clients without credentials in, even on a non-loopback address (see
    /// `auth.allow_anonymous`).
    #[arg(long)]
    allow_anonymous: bool,
    /// Accept client certificates issued by the CAs in this PEM file (mutual TLS).
    #[arg(long, value_name = "FILE")]
    client_ca: Option<PathBuf>,
    /// Serve MQTT 3.1.1 and 5.0 on this TCP address (see docs/mqtt.md); port 0 picks
    /// a free one.
    #[arg(long, value_name = "ADDR")]
    mqtt: Option<SocketAddr>,
    /// Serve MQTT over TLS, with the broker's certificate, on this TCP address.
    #[arg(long, value_name = "ADDR")]
    mqtt_tls: Option<SocketAddr>,
    /// Serve metrics and health checks over HTTP on this TCP address, or `off`
    /// (default 127.0.0.1:7849; HTTPS with the broker's certificate unless on loopback).
    #[arg(long, value_name = "ADDR|off")]
    http: Option<HttpListen>,
    /// Test only: flush storage without `fdatasync`, so acknowledged records can be
    /// lost on power failure. Exists for the power-cut harness's own test.
    #[arg(long, hide = true)]
    unsafe_skip_barrier: bool,
}

pub(super) fn run(args: ServeArgs) -> anyhow::Result<()> {
    let overrides = Overrides {
        listen: args.listen,
        data: args.data,
        log_format: args.log_format,
        tls: TlsOverrides {
            cert: args.tls_cert,
            key: args.tls_key,
            names: args.tls_names,
        },
        plugins: PluginOverrides {
            dir: args.plugin_dir,
        },
        auth: AuthOverrides {
            allow_anonymous: args.allow_anonymous.then_some(true),
            client_ca: args.client_ca,
        },
        mqtt: MqttOverrides {
            listen: args.mqtt,
            tls_listen: args.mqtt_tls,
        },
        http: HttpOverrides { listen: args.http },
    };
    let mut config = Config::load(args.config.as_deref(), &overrides)?;
    config.storage.unsafe_skip_barrier = args.unsafe_skip_barrier;
    super::init_tracing("info", config.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("quiver-worker")
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let stop = CancellationToken::new();
        tokio::spawn({
            let stop = stop.clone();
            async move {
                shutdown_signal().await;
                stop.cancel();
            }
        });
        let mut server = Server::bind(config.clone()).await?;
        let addr = server.local_addr().context("reading the bound address")?;
        let (cert, origin) = server.certificate();
        if *origin == Origin::Generated {
            info!(path = %cert.display(), "created a self-signed certificate; clients trust it with --ca");
        }
        let mqtt = server.mqtt_addrs();
        let mut mqtt_addrs = String::new();
        if let Some(addr) = mqtt.listen {
            mqtt_addrs.push_str(&format!(", mqtt {addr}"));
        }
        if let Some(addr) = mqtt.tls_listen {
            mqtt_addrs.push_str(&format!(", mqtt-tls {addr}"));
        }
        let http = server.http_addr();
        if let Some(addr) = http {
            let scheme = if config.http.tls_on(addr) { "https" } else { "http" };
            mqtt_addrs.push_str(&format!(", {scheme} {addr}"));
        }
        // The ready line: tests and scripts wait for it.
        let mut stdout = std::io::stdout().lock();
        writeln!(
            stdout,
            "quiver {} listening on {addr} (data dir {}, certificate {}{mqtt_addrs})",
            env!("CARGO_PKG_VERSION"),
            config.data.display(),
            cert.display()
        )
        .and_then(|()| stdout.flush())
        .context("writing the ready line")?;
        drop(stdout);
        // Reopening storage binds again, on the ports the first bind got.
        let config = Config {
            listen: addr,
            mqtt: MqttConfig {
                listen: mqtt.listen,
                tls_listen: mqtt.tls_listen,
                ..config.mqtt
            },
            http: HttpConfig {
                listen: http.map_or(HttpListen::Off, HttpListen::At),
                ..config.http
            },
            ..config
        };
        while server.run(stop.clone().cancelled_owned()).await == Stopped::ToRecoverStorage {
            match bind_again(&config, &stop).await {
                Some(again) => server = again,
                None => break,
            }
        }
        Ok(())
    })
}

/// How long to wait between attempts to bind again after stopping to reopen storage.
const REBIND_RETRY: Duration = Duration::from_secs(1);

/// Binds a new server on `config` after the last one stopped to reopen storage,
/// retrying (the old storage may take a moment to let go of the data dir, or the disk
/// may fill up again) until it succeeds or the broker is told to stop.
async fn bind_again(config: &Config, stop: &CancellationToken) -> Option<Server> {
    loop {
        match Server::bind(config.clone()).await {
            Ok(server) => {
                info!(addr = %config.listen, "storage reopened; serving again");
                return Some(server);
            }
            Err(e) => warn!(cause = %e, "cannot reopen storage yet; retrying"),
        }
        tokio::select! {
            () = tokio::time::sleep(REBIND_RETRY) => {}
            () = stop.cancelled() => return None,
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = match signal(SignalKind::terminate()) {
        Ok(terminate) => terminate,
        Err(e) => {
            tracing::warn!(cause = %e, "cannot listen for SIGTERM; only SIGINT stops the broker");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => info!("SIGINT received"),
        _ = terminate.recv() => info!("SIGTERM received"),
    }
}
