//! Subscribing to a pattern from the beginning: catch up on stored records, then keep
//! receiving new ones as they are published. Stops after `COUNT` records (default 10).
//!
//! `cargo run -p quiver-client --example subscribe`

use futures::StreamExt;
use quiver_client::{Client, StartAt, SubscribeOptions};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let server = std::env::var("QUIVER_SERVER").unwrap_or_else(|_| "127.0.0.1:7848".into());
    let ca = std::env::var("QUIVER_CA").unwrap_or_else(|_| "quiver-data/tls/cert.pem".into());
    let count: usize = std::env::var("COUNT").map_or(Ok(10), |c| c.parse())?;
    let client = Client::builder().ca_file(ca)?.connect(&server).await?;

    let options = SubscribeOptions {
        from: StartAt::Earliest,
        window: 256, // records buffered ahead of this loop, at most
        ..SubscribeOptions::default()
    };
    let mut records = client.subscribe("examples.>", options).await?.take(count);
    while let Some(record) = records.next().await {
        let record = record?;
        println!(
            "{} #{} key={:?} {}",
            record.topic,
            record.offset,
            record.key.as_deref().map(String::from_utf8_lossy),
            String::from_utf8_lossy(&record.payload)
        );
    }
    Ok(())
}
