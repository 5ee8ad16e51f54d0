//! The per-record cost of the wire codec, for batches of 1 and 64 records of 256-byte
//! payloads with a key and 2 headers (333 bytes each encoded, 345 in a batch):
//! - `publish_frame`: a client's `Publish` request (`ClientFrame::Request`), encoded
//!   into a reused buffer and decoded by a `FrameDecoder`, as on the control stream;
//! - `records_frame`: what a subscriber receives (`ServerFrame::Records`, a slice of
//!   the log in the batch format): encoding the frame, decoding it, and decoding it
//!   together with its batch into `Record`s, as the client SDK does;
//! - `record_batch`: the batch format itself (`append_entry` into a reused buffer, and
//!   `decode_shared`), as the broker stores it and subscribers read it.
//!
//! `cargo bench -p quiver-protocol --bench codec`

use std::hint::black_box;

use bytes::{Bytes, BytesMut};
use criterion::measurement::WallTime;
use criterion::{
    BatchSize, BenchmarkGroup, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main,
};
use quiver_protocol::frame::{self, DEFAULT_MAX_FRAME_LEN, FrameDecoder};
use quiver_protocol::record::{append_entry, decode_shared, encode_batch};
use quiver_protocol::{ClientFrame, NewRecord, Op, PublishId, Records, Request, ServerFrame};

/// Records per batch.
const BATCHES: [usize; 2] = [1, 64];

/// A fixed append time, so every encoding is the same size.
const TIMESTAMP: u64 = 1_795_000_000_000;

fn record(i: usize) -> NewRecord {
    let payload: Vec<u8> = (0..256).map(|b| (b + i) as u8).collect();
    NewRecord::new(payload)
        .with_key(format!("device-{:04}", i % 1000))
        .with_header("content-type", "application/octet-stream")
        .with_header("trace", "4bf92f3577b34da6")
}

fn records(n: usize) -> Vec<NewRecord> {
    (0..n).map(record).collect()
}

fn publish(n: usize) -> ClientFrame {
    ClientFrame::Request(Request {
        id: 42,
        op: Op::Publish {
            topic: "sensors.eu-west.temp".into(),
            records: records(n),
            id: Some(PublishId {
                producer: 0x5eed_cafe_f00d_beef,
                sequence: 7,
            }),
        },
    })
}

fn delivery(n: usize) -> ServerFrame {
    ServerFrame::Records(Records {
        topic: "sensors.eu-west.temp".into(),
        base_offset: 1_000_000,
        batch: encode_batch(TIMESTAMP, &records(n)),
    })
}

fn encoded<M: serde::Serialize>(msg: &M) -> Bytes {
    let mut buf = BytesMut::new();
    frame::encode(msg, &mut buf).expect("a bench frame fits a length prefix");
    buf.freeze()
}

/// Adds `encode` (into a reused buffer) and `decode` (by a `FrameDecoder`) of `msg`,
/// which carries `n` records, to `group`. The copy into a fresh buffer for the decoder
/// to consume is set-up, not measured; freeing what was decoded is measured.
fn bench_frame<M>(group: &mut BenchmarkGroup<'_, WallTime>, n: usize, msg: &M) -> Bytes
where
    M: serde::Serialize + serde::de::DeserializeOwned,
{
    let bytes = encoded(msg);
    group.throughput(Throughput::Elements(n as u64));
    group.bench_with_input(BenchmarkId::new("encode", n), msg, |b, msg| {
        let mut buf = BytesMut::with_capacity(bytes.len());
        b.iter(|| {
            buf.clear();
            frame::encode(black_box(msg), &mut buf).expect("a bench frame fits");
        });
    });
    group.bench_with_input(BenchmarkId::new("decode", n), &bytes, |b, bytes| {
        let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME_LEN);
        b.iter_batched_ref(
            || BytesMut::from(&bytes[..]),
            |src| {
                let msg = decoder
                    .decode::<M>(src)
                    .expect("the frame decodes")
                    .expect("the frame is whole");
                drop(black_box(msg)); // timed, as in `decode_shared`
            },
            BatchSize::SmallInput,
        );
    });
    bytes
}

fn bench_publish(c: &mut Criterion) {
    let mut group = c.benchmark_group("publish_frame");
    for n in BATCHES {
        bench_frame(&mut group, n, &publish(n));
    }
    group.finish();
}

/// The delivery frame alone, then with its batch decoded as a subscriber does.
fn bench_delivery(c: &mut Criterion) {
    let mut group = c.benchmark_group("records_frame");
    for n in BATCHES {
        let bytes = bench_frame(&mut group, n, &delivery(n));
        group.bench_with_input(
            BenchmarkId::new("decode_with_batch", n),
            &bytes,
            |b, bytes| {
                let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME_LEN);
                b.iter_batched_ref(
                    || BytesMut::from(&bytes[..]),
                    |src| {
                        let frame = decoder
                            .decode::<ServerFrame>(src)
                            .expect("the frame decodes")
                            .expect("the frame is whole");
                        let ServerFrame::Records(records) = frame else {
                            unreachable!("the bench encoded a Records frame");
                        };
                        let records = decode_shared(records.base_offset, &records.batch)
                            .expect("the batch decodes");
                        drop(black_box(records));
                    },
                    BatchSize::SmallInput,
                );
            },
        );
    }
    group.finish();
}

fn bench_record_batch(c: &mut Criterion) {
    let mut group = c.benchmark_group("record_batch");
    for n in BATCHES {
        let records = records(n);
        let batch = encode_batch(TIMESTAMP, &records);
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(
            BenchmarkId::new("append_entry", n),
            &records,
            |b, records| {
                let mut buf = BytesMut::with_capacity(batch.len());
                b.iter(|| {
                    buf.clear();
                    for record in black_box(records) {
                        append_entry(&mut buf, TIMESTAMP, record);
                    }
                });
            },
        );
        group.bench_with_input(BenchmarkId::new("decode_shared", n), &batch, |b, batch| {
            b.iter(|| decode_shared(1_000_000, black_box(batch)).expect("the batch decodes"));
        });
    }
    group.finish();
}

fn bench(c: &mut Criterion) {
    bench_publish(c);
    bench_delivery(c);
    bench_record_batch(c);
}

criterion_group!(benches, bench);
criterion_main!(benches);
