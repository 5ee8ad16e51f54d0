//! Arbitrary bytes as the body of a frame a client sent: decoding never panics, and a
//! message that decodes survives encode → decode unchanged.

#![no_main]

use libfuzzer_sys::fuzz_target;
use quiver_protocol::ClientFrame;

fuzz_target!(|body: &[u8]| {
    quiver_fuzz::check_round_trip::<ClientFrame>(body);
});
