//! The MQTT listener's packet decoding (`quiver_host::mqtt::packet`, rmqtt-codec
//! underneath) on arbitrary bytes, fed in arbitrary pieces as TCP may deliver them,
//! and its topic mapping on the names and filters those packets carry.
//!
//! Properties: decoding never panics; every packet decoded consumes bytes (no loop
//! without progress); after an error the connection ends, so decoding stops there;
//! a topic name that maps to a Quiver topic maps back to itself.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use quiver_host::mqtt::packet::{Inbound, PacketCodec};
use quiver_host::mqtt::topic;

fuzz_target!(|input: (u8, Vec<u8>)| {
    let (piece, bytes) = input;
    let piece = usize::from(piece).max(1);
    let mut codec = PacketCodec::new(4096);
    let mut buf = BytesMut::new();
    for chunk in bytes.chunks(piece) {
        buf.extend_from_slice(chunk);
        loop {
            let before = buf.len();
            match codec.decode(&mut buf) {
                Ok(Some(packet)) => {
                    assert!(buf.len() < before, "a packet decoded from nothing");
                    check_topics(&packet);
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
});

fn check_topics(packet: &Inbound) {
    match packet {
        Inbound::Publish(publish) => {
            if let Ok(name) = topic::topic_name(&publish.topic) {
                assert_eq!(topic::mqtt_name(name.as_str()), &*publish.topic);
            }
        }
        Inbound::Subscribe { filters, .. } => {
            for (filter, _) in filters {
                if let Ok(mapped) = topic::filter(filter) {
                    assert!(!mapped.patterns.is_empty());
                }
            }
        }
        _ => {}
    }
}
