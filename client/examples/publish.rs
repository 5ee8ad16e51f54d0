//! Publishing: one record with a key and headers, then a batch, then many records in
//! flight at once from one connection. Each publish returns once the record is on disk.
//!
//! Run `cargo run -p quiver-client --example topics` first (it creates the topic).

use futures::future::try_join_all;
use quiver_client::{Client, NewRecord};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let server = std::env::var("QUIVER_SERVER").unwrap_or_else(|_| "127.0.0.1:7848".into());
    let ca = std::env::var("QUIVER_CA").unwrap_or_else(|_| "quiver-data/tls/cert.pem".into());
    let client = Client::builder().ca_file(ca)?.connect(&server).await?;

    let record = NewRecord::new(r#"{"probe":7,"celsius":21.5}"#)
        .with_key("probe-7")
        .with_header("content-type", "application/json");
    let offset = client.publish("examples.readings", record).await?;
    println!("stored at offset {offset}");

    let batch = (0..10)
        .map(|i| NewRecord::new(format!("batch record {i}")))
        .collect();
    let receipt = client.publish_batch("examples.readings", batch).await?;
    println!("batch stored at offsets {:?}", receipt.offsets());

    // Pipelining: 100 publishes in flight on one connection, acknowledged as they
    // become durable (many share one disk flush).
    let publishes = (0..100).map(|i| client.publish("examples.readings", format!("pipelined {i}")));
    let offsets = try_join_all(publishes).await?;
    println!(
        "100 pipelined publishes, offsets {}..={}",
        offsets[0], offsets[99]
    );
    Ok(())
}
