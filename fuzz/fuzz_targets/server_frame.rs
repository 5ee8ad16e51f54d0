//! Arbitrary bytes as the body of a frame a server sent: decoding never panics, a
//! message that decodes survives encode → decode unchanged, and the record batch a
//! `Records` frame carries is read the way a client reads it, without panicking.

#![no_main]

use libfuzzer_sys::fuzz_target;
use quiver_protocol::record::decode_batch;
use quiver_protocol::{Records, ServerFrame};

fuzz_target!(|body: &[u8]| {
    if let Some(ServerFrame::Records(Records {
        base_offset, batch, ..
    })) = quiver_fuzz::check_round_trip::<ServerFrame>(body)
    {
        let _ = decode_batch(base_offset, &batch);
    }
});
