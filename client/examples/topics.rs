//! Topic administration: create a topic with retention limits, list and describe.
//!
//! Run against a local broker (`quiver serve`), from the directory it runs in:
//! `cargo run -p quiver-client --example topics`.
//! `QUIVER_SERVER` and `QUIVER_CA` point elsewhere.

use quiver_client::{Client, ErrorCode, Retention};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let server = std::env::var("QUIVER_SERVER").unwrap_or_else(|_| "127.0.0.1:7848".into());
    let ca = std::env::var("QUIVER_CA").unwrap_or_else(|_| "quiver-data/tls/cert.pem".into());
    let client = Client::builder().ca_file(ca)?.connect(&server).await?;

    // Keep a day of readings, at most 1 GiB.
    let retention = Retention {
        max_age_ms: Some(24 * 3600 * 1000),
        max_bytes: Some(1 << 30),
        max_records: None,
    };
    match client.create_topic("examples.readings", retention).await {
        Ok(info) => println!("created {}", info.name),
        Err(e) if e.code() == Some(ErrorCode::TopicExists) => println!("already there"),
        Err(e) => return Err(e.into()),
    }
    for topic in client.list_topics().await? {
        println!(
            "{}: {} records, {} bytes, offsets {}..{}",
            topic.name, topic.records, topic.bytes, topic.first_offset, topic.next_offset
        );
    }
    Ok(())
}
