//! Inputs the fuzz targets (`fuzz/`) once crashed on, decoded exactly as the target
//! decoded them. Each is also in the target's corpus, `fuzz/corpus/<target>/`.

use quiver_protocol::record::{BatchError, decode_batch};

/// `fuzz/corpus/record_batch/regression-offset-overflow`: a base offset of
/// `u64::MAX - 1` (the first 8 bytes, little-endian, as the target reads them), then a
/// batch of three 15-byte entries (two empty records and a malformed one) and a stray
/// byte. Numbering the third entry overflowed `u64`: a panic in a debug build, a
/// wrapped offset in a release build. A server sends both halves in a `Records` frame,
/// so a client must refuse such a batch, whatever its entries hold.
#[test]
fn a_batch_past_the_largest_offset_is_refused() {
    const INPUT: &[u8] = &[
        0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, // base offset
        0x00, 0x00, 0x00, 0x0b, 0x21, 0x2d, 0x2d, 0x2d, 0x2d, 0x3c, 0x89, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x0b, 0x30, 0x00, 0x00, 0x00, 0xc1, 0x00, 0xc1, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x0b, 0x21, 0x2d, 0x2d, 0x2d, 0x2d, 0x89, 0x00, 0x00, 0x0b, 0x00, 0x00,
        0x1e,
    ];
    let fuzz_file = include_bytes!("../../fuzz/corpus/record_batch/regression-offset-overflow");
    assert_eq!(INPUT, fuzz_file);

    let (base, batch) = INPUT.split_at(8);
    let base = u64::from_le_bytes(base.try_into().expect("8 bytes"));
    assert_eq!(base, u64::MAX - 1);
    assert_eq!(
        decode_batch(base, batch),
        Err(BatchError::OffsetOverflow { at: 2 * 15 })
    );
    // The first two records fit, at the two largest offsets.
    let offsets: Vec<u64> = decode_batch(base, &batch[..2 * 15])
        .expect("two empty records")
        .iter()
        .map(|r| r.offset)
        .collect();
    assert_eq!(offsets, [u64::MAX - 1, u64::MAX]);
}
