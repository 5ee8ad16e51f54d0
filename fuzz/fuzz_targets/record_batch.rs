//! Arbitrary bytes as a record batch with an arbitrary base offset, as a subscriber
//! receives it or the broker reads it from disk. The input is the base offset (8 bytes,
//! little-endian), then the batch.
//!
//! Reading never panics; entries tile the batch from its start, each within it, and an
//! error ends the iteration. The records of a batch that decodes, encoded again with
//! their timestamps, decode to the same records at the same offsets.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use quiver_protocol::NewRecord;
use quiver_protocol::record::{append_entry, decode_batch, entries};

fuzz_target!(|data: &[u8]| {
    let Some((base_offset, batch)) = data.split_first_chunk::<8>() else {
        return;
    };
    let base_offset = u64::from_le_bytes(*base_offset);

    let mut end = 0;
    let mut failed = false;
    for entry in entries(batch) {
        assert!(!failed, "an entry after an error");
        match entry {
            Ok(entry) => {
                assert_eq!(entry.start, end, "entries tile the batch");
                end += entry.encoded_len;
                assert!(end <= batch.len(), "an entry runs past the batch");
            }
            Err(_) => failed = true,
        }
    }

    let Ok(records) = decode_batch(base_offset, batch) else {
        return;
    };
    let mut again = BytesMut::new();
    for record in &records {
        let new = NewRecord {
            key: record.key.clone(),
            headers: record.headers.clone(),
            payload: record.payload.clone(),
        };
        append_entry(&mut again, record.timestamp, &new);
    }
    let decoded = decode_batch(base_offset, &again).expect("a re-encoded batch decodes");
    assert_eq!(decoded, records);
});
