//! The frame decoder on what a client may send: arbitrary frames, some past the
//! decoder's limit, some cut short, arriving in arbitrary pieces.
//!
//! The input is `max: u8 | n: u8 | n piece sizes: u8 each | stream`, where the stream is
//! read as frames, `len: u32 BE | body`, as on the wire (the last one may be cut short).
//! The decoder gets every frame of the stream followed by a valid frame of its own, in
//! pieces of the given sizes, and a limit of `max + 16` bytes.
//!
//! Properties: decoding never panics; every frame yields exactly one result, the one its
//! body alone gives (`TooLarge` past the limit, as soon as the length is read), so the
//! valid frame after a bad one always decodes: the stream stays in sync.

#![no_main]

use bytes::{BufMut, BytesMut};
use libfuzzer_sys::fuzz_target;
use quiver_protocol::ClientFrame;
use quiver_protocol::frame::{self, FrameDecoder, FrameError, LENGTH_PREFIX_LEN};

type Decoded = Result<ClientFrame, FrameError>;

fuzz_target!(|data: &[u8]| {
    let [max, n, rest @ ..] = data else {
        return;
    };
    let Some((pieces, mut wire)) = rest.split_at_checked(usize::from(*n)) else {
        return;
    };
    let max_len = usize::from(*max) + 16;

    // What the decoder must say, frame by frame, read from the stream independently.
    let mut stream = BytesMut::new();
    let mut expected: Vec<Decoded> = Vec::new();
    for i in 0u32.. {
        let Some((prefix, after)) = wire.split_first_chunk::<LENGTH_PREFIX_LEN>() else {
            stream.put_slice(wire); // a length cut short: no result
            break;
        };
        let len = u32::from_be_bytes(*prefix) as usize;
        stream.put_slice(prefix);
        if len > max_len {
            stream.put_slice(&after[..len.min(after.len())]);
            expected.push(Err(FrameError::TooLarge { len, max: max_len }));
        } else if let Some((body, _)) = after.split_at_checked(len) {
            stream.put_slice(body);
            expected.push(frame::decode_body(body));
        } else {
            stream.put_slice(after); // a body cut short: no result
            break;
        }
        let Some(next) = after.get(len..) else {
            break; // the rest of an oversized frame is still being skipped
        };
        let valid = ClientFrame::Credit(i);
        frame::encode(&valid, &mut stream).expect("a credit frame encodes");
        expected.push(Ok(valid));
        wire = next;
    }

    let mut decoder = FrameDecoder::new(max_len);
    let mut buf = BytesMut::new();
    let mut decoded = Vec::new();
    let mut sizes = pieces.iter().map(|&n| usize::from(n.max(1))).cycle();
    let mut unsent = &stream[..];
    while !unsent.is_empty() {
        let n = sizes.next().unwrap_or(unsent.len()).min(unsent.len());
        let (piece, after) = unsent.split_at(n);
        buf.extend_from_slice(piece);
        unsent = after;
        while let Some(result) = decoder.decode::<ClientFrame>(&mut buf).transpose() {
            decoded.push(result);
        }
    }
    assert_eq!(decoded, expected);
});
