//! `quiver info`: how a broker runs, for an operator's first look.

use bytesize::ByteSize;
use clap::Args;
use serde_json::json;

use super::ConnectArgs;

#[derive(Debug, Args)]
pub(super) struct InfoArgs {
    /// Print JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    connect: ConnectArgs,
}

pub(super) async fn run(args: InfoArgs) -> anyhow::Result<()> {
    let status = args.connect.connect().await?.describe_server().await?;
    let uptime_ms = crate::util::now_ms().saturating_sub(status.started_ms);
    // Whole seconds: humantime would print milliseconds too.
    let uptime = humantime::format_duration(std::time::Duration::from_secs(uptime_ms / 1000));
    let listeners: Vec<String> = status
        .listeners
        .iter()
        .map(|(kind, addr)| format!("{kind} {addr}"))
        .collect();
    if args.json {
        let listeners: Vec<_> = status
            .listeners
            .iter()
            .map(|(kind, addr)| json!({ "kind": kind, "addr": addr }))
            .collect();
        let value = json!({
            "version": status.broker.version,
            "broker_id": quiver_client::broker_id_hex(status.broker.id),
            "started_ms": status.started_ms,
            "uptime_ms": uptime_ms,
            "data_dir": status.data_dir,
            "disk_bytes": status.disk_bytes,
            "topics": status.topics,
            "groups": status.groups,
            "plugins": status.plugins,
            "links": status.links,
            "connections": status.connections,
            "listeners": listeners,
        });
        println!("{value:#}");
        return Ok(());
    }
    println!(
        "version      {} (broker {})",
        status.broker.version,
        quiver_client::broker_id_hex(status.broker.id)
    );
    println!("uptime       {uptime}");
    println!(
        "data dir     {} ({} on disk)",
        status.data_dir,
        ByteSize(status.disk_bytes)
    );
    println!("listeners    {}", listeners.join(", "));
    println!(
        "holds        {} topics, {} groups, {} plugins, {} links",
        status.topics, status.groups, status.plugins, status.links
    );
    println!("connections  {}", status.connections);
    Ok(())
}
