//! A worker in a durable group: the group `examples-workers` shares the records of
//! `examples.>` among every worker running this, each record acknowledged once
//! handled. Records whose payload says "poison" are terminated (dead-lettered to
//! `dlq.<topic>`); others that fail are retried a few times, then dead-lettered by the
//! broker. Stops after `COUNT` records (default 10). Run it twice to see the work
//! shared.
//!
//! `cargo run -p quiver-client --example worker`

use std::time::Duration;

use futures::StreamExt;
use quiver_client::{Client, ErrorCode, GroupSettings};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let server = std::env::var("QUIVER_SERVER").unwrap_or_else(|_| "127.0.0.1:7848".into());
    let ca = std::env::var("QUIVER_CA").unwrap_or_else(|_| "quiver-data/tls/cert.pem".into());
    let count: usize = std::env::var("COUNT").map_or(Ok(10), |c| c.parse())?;
    let client = Client::builder().ca_file(ca)?.connect(&server).await?;

    // Created by whichever worker starts first.
    let settings = GroupSettings {
        ack_timeout_ms: 10_000,
        max_deliveries: 3,
        prefetch: 8,
        ..GroupSettings::new("examples.>")
    };
    match client.create_group("examples-workers", settings).await {
        Ok(_) => println!("created group examples-workers"),
        Err(e) if e.code() == Some(ErrorCode::GroupExists) => {}
        Err(e) => return Err(e.into()),
    }

    let mut member = client.join("examples-workers", None).await?;
    for _ in 0..count {
        let Some(delivery) = member.next().await else {
            break;
        };
        let delivery = delivery?;
        let payload = String::from_utf8_lossy(&delivery.record.payload).into_owned();
        if payload.contains("poison") {
            delivery.term("cannot be processed")?;
            continue;
        }
        match handle(&payload).await {
            Ok(()) => {
                println!(
                    "{} #{} (delivery {}) {payload}",
                    delivery.record.topic, delivery.record.offset, delivery.deliveries
                );
                delivery.ack()?;
            }
            // Try again in a second; after max_deliveries the broker dead-letters it.
            Err(()) => delivery.nack(Duration::from_secs(1))?,
        }
    }
    // Leaving hands back what this worker holds, once its acks are in.
    member.leave().await?;
    Ok(())
}

/// The work itself.
async fn handle(payload: &str) -> Result<(), ()> {
    if payload.is_empty() { Err(()) } else { Ok(()) }
}
