//! Property tests of what the fuzz targets (`fuzz/`) reach only by chance: streams of
//! valid frames cut anywhere, frames past the limit amid valid ones, batches joined and
//! sliced, and names and patterns against plain reference implementations of the
//! grammar and of matching. roundtrip.rs has the per-message round trips.

#![allow(clippy::unwrap_used)] // in tests a failed unwrap is a failed test

use bytes::{BufMut, Bytes, BytesMut};
use proptest::prelude::*;
use quiver_protocol::frame::{self, FrameDecoder, FrameError};
use quiver_protocol::record::{self, decode_batch, encode_batch, entries};
use quiver_protocol::*;
use support::reference::{reference_is_valid, reference_matches};

// Public for the fuzz crate, which includes the same reference file.
#[allow(unreachable_pub)]
mod support;

/// Client frames whose shape does not depend on the handshake's fields.
fn client_frame() -> impl Strategy<Value = ClientFrame> {
    let record =
        (any::<Vec<u8>>(), proptest::option::of(any::<Vec<u8>>())).prop_map(|(payload, key)| {
            NewRecord {
                key: key.map(Bytes::from),
                headers: Vec::new(),
                payload: payload.into(),
            }
        });
    prop_oneof![
        any::<u32>().prop_map(ClientFrame::Credit),
        ("\\PC{0,12}", proptest::collection::vec(record, 0..4)).prop_map(|(topic, records)| {
            ClientFrame::Request(Request {
                id: 1,
                op: Op::Publish {
                    topic,
                    records,
                    id: None,
                },
            })
        }),
        ("\\PC{0,12}", any::<u64>()).prop_map(|(topic, offset)| {
            ClientFrame::Settle(vec![Settlement {
                topic,
                offset,
                action: Settle::Ack,
            }])
        }),
    ]
}

/// Cuts `stream` at `cuts` (positions taken modulo its length) and feeds the pieces to
/// a decoder with a limit of `max_len`, taking every frame after each piece.
fn decode_cut(
    max_len: usize,
    stream: &[u8],
    cuts: &[usize],
) -> Vec<Result<ClientFrame, FrameError>> {
    let mut decoder = FrameDecoder::new(max_len);
    let mut at: Vec<usize> = cuts.iter().map(|c| c % (stream.len() + 1)).collect();
    at.push(0);
    at.push(stream.len());
    at.sort_unstable();
    let mut buf = BytesMut::new();
    let mut results = Vec::new();
    for piece in at.windows(2) {
        buf.extend_from_slice(&stream[piece[0]..piece[1]]);
        while let Some(result) = decoder.decode(&mut buf).transpose() {
            results.push(result);
        }
    }
    assert!(buf.is_empty(), "every frame was taken whole");
    results
}

/// Strings made of the tokens that matter to the grammar, so that valid names, valid
/// patterns and matches are all common.
fn dotted() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop_oneof!["a", "b", "ab", r"\*", ">", "", "[a-c_ -]{1,2}"],
        1..5,
    )
    .prop_map(|tokens| tokens.join("."))
}

proptest! {
    #[test]
    fn a_stream_of_frames_decodes_the_same_however_it_is_cut(
        frames in proptest::collection::vec(client_frame(), 0..6),
        cuts in proptest::collection::vec(any::<usize>(), 0..12),
    ) {
        let mut stream = BytesMut::new();
        for msg in &frames {
            frame::encode(msg, &mut stream).unwrap();
        }
        let decoded = decode_cut(frame::DEFAULT_MAX_FRAME_LEN, &stream, &cuts);
        let expected: Vec<_> = frames.into_iter().map(Ok).collect();
        prop_assert_eq!(decoded, expected);
    }

    #[test]
    fn oversized_frames_are_refused_and_the_stream_stays_in_sync(
        sizes in proptest::collection::vec(0usize..300, 1..6),
        max_len in 8usize..128,
        cuts in proptest::collection::vec(any::<usize>(), 0..12),
    ) {
        // Each frame has a body of the given size (valid or not, it does not matter:
        // what is past the limit is never read) and is followed by a valid frame.
        let mut stream = BytesMut::new();
        let mut expected = Vec::new();
        for (i, &size) in sizes.iter().enumerate() {
            stream.put_u32(u32::try_from(size).unwrap());
            stream.put_bytes(0xff, size);
            expected.push(if size > max_len {
                Err(FrameError::TooLarge { len: size, max: max_len })
            } else {
                frame::decode_body::<ClientFrame>(&vec![0xff; size])
            });
            let credit = ClientFrame::Credit(u32::try_from(i).unwrap());
            frame::encode(&credit, &mut stream).unwrap();
            expected.push(Ok(credit));
        }
        prop_assert_eq!(decode_cut(max_len, &stream, &cuts), expected);
    }

    #[test]
    fn joined_batches_decode_as_one_and_slice_at_any_entry(
        first in proptest::collection::vec(any::<Vec<u8>>().prop_map(NewRecord::new), 0..5),
        second in proptest::collection::vec(any::<Vec<u8>>().prop_map(NewRecord::new), 0..5),
        base in prop_oneof![any::<u64>(), u64::MAX - 8..=u64::MAX],
    ) {
        // The broker stores and serves batches by concatenating and slicing entries.
        let mut joined = BytesMut::from(&encode_batch(1, &first)[..]);
        joined.extend_from_slice(&encode_batch(2, &second));
        let count = first.len() + second.len();
        let fits = base.checked_add(count.saturating_sub(1) as u64).is_some();
        match decode_batch(base, &joined) {
            Ok(records) => {
                prop_assert!(fits);
                let payloads: Vec<_> = records.iter().map(|r| &r.payload).collect();
                let want: Vec<_> = first.iter().chain(&second).map(|r| &r.payload).collect();
                prop_assert_eq!(payloads, want);
                for (i, r) in records.iter().enumerate() {
                    prop_assert_eq!(r.offset, base + i as u64);
                    prop_assert_eq!(r.timestamp, if i < first.len() { 1 } else { 2 });
                }
            }
            Err(e) => {
                prop_assert!(!fits);
                let overflow = matches!(e, record::BatchError::OffsetOverflow { .. });
                prop_assert!(overflow, "{}", e);
            }
        }
        // Any run of whole entries is a batch of its own.
        let starts: Vec<usize> = entries(&joined).map(|e| e.unwrap().start).collect();
        for (i, &start) in starts.iter().enumerate() {
            let tail = decode_batch(0, &joined[start..]).unwrap();
            prop_assert_eq!(tail.len(), count - i);
        }
    }

    #[test]
    fn names_and_patterns_follow_the_grammar(s in prop_oneof![dotted(), "\\PC{0,300}"]) {
        prop_assert_eq!(TopicName::parse(&s).is_ok(), reference_is_valid(&s, false), "{:?}", s);
        prop_assert_eq!(TopicPattern::parse(&s).is_ok(), reference_is_valid(&s, true), "{:?}", s);
    }

    #[test]
    fn matching_agrees_with_the_reference(pattern in dotted(), name in dotted()) {
        let (Ok(p), Ok(n)) = (TopicPattern::parse(&pattern), TopicName::parse(&name)) else {
            return Ok(());
        };
        let pattern_tokens: Vec<&str> = pattern.split('.').collect();
        let name_tokens: Vec<&str> = name.split('.').collect();
        prop_assert_eq!(p.matches(&n), reference_matches(&pattern_tokens, &name_tokens));
    }

    #[test]
    fn a_pattern_matches_every_name_of_a_pattern_it_covers(
        ours in dotted(),
        theirs in dotted(),
        fill in proptest::collection::vec("[a-c]{1,2}", 1..3),
    ) {
        let (Ok(ours), Ok(theirs)) = (TopicPattern::parse(&ours), TopicPattern::parse(&theirs))
        else {
            return Ok(());
        };
        // A name `theirs` matches: its wildcards filled in.
        let name: Vec<String> = theirs
            .as_str()
            .split('.')
            .map(|token| match token {
                "*" => fill[0].clone(),
                ">" => fill.join("."),
                literal => literal.to_owned(),
            })
            .collect();
        let Ok(name) = TopicName::parse(&name.join(".")) else {
            return Ok(()); // too long
        };
        prop_assert!(theirs.matches(&name));
        if ours.covers(&theirs) {
            prop_assert!(ours.matches(&name), "{} covers {}, not {}", ours, theirs, name);
        }
    }
}
