//! The aggregator's side of rawtcp without the socket: a connection's read buffer, filled with
//! the frames a coordinator sends, drained into the engine by the same call the connection
//! handler makes ([`MessageDecoder::apply_frames`]).
//!
//! * `rawtcp_ingest/frames/50k`: 50,000 live series, each request's 2,000 series grouped by
//!   shard as the coordinator groups them, one timed gauge frame each (the coordinator's
//!   encoding, metadata spliced in), handed over 64 KiB at a time as reads bring them; every
//!   sample goes into a window that is already open. Throughput in frames. Every frame must be
//!   applied: a rejection fails the bench rather than measuring the rejection path.

use bytes::BytesMut;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use prost::Message;

use m3_aggregator::ingest::MessageDecoder;
use m3_proto::framing::DEFAULT_RAWTCP_MAX_MESSAGE_SIZE;
use m3_proto::timed_frame::put_timed_metric_frame;

#[allow(dead_code)] // each benchmark uses a part of the shared setup
mod common;
use common::{S, T0};

/// `MetricType::Gauge` on the wire.
const GAUGE: u8 = 3;
/// What one socket read brings at most (the connection's read buffer).
const READ_BYTES: usize = 64 * 1024;
/// Frames per measured iteration.
const FRAMES: usize = 10_000;

fn rawtcp_ingest(c: &mut Criterion) {
    let mut ids = common::ids(50_000);
    for request in ids.chunks_mut(2000) {
        request.sort_by_key(|id| m3_cluster::shard_for(id, common::NUM_SHARDS));
    }
    let metadatas = common::metadatas().encode_to_vec();
    let t = T0 + 5 * S;
    let now = t + S;
    // The whole stream of one pass over the series, cut into iterations of FRAMES frames.
    let passes: Vec<BytesMut> = ids
        .chunks(FRAMES)
        .map(|chunk| {
            let mut stream = BytesMut::new();
            for (i, id) in chunk.iter().enumerate() {
                put_timed_metric_frame(GAUGE, id, t, i as f64, &metadatas, &mut stream);
            }
            stream
        })
        .collect();

    let agg = common::engine();
    common::add_all(&agg, &ids, &common::metadatas(), t, t);
    let mut decoder = MessageDecoder::default();
    let mut buf = BytesMut::with_capacity(READ_BYTES);
    let mut next = 0usize;
    let mut group = c.benchmark_group("rawtcp_ingest");
    group.throughput(Throughput::Elements(FRAMES as u64));
    group.bench_function("frames/50k", |b| {
        b.iter(|| {
            let stream = &passes[next];
            next = (next + 1) % passes.len();
            for read in stream.chunks(READ_BYTES) {
                buf.extend_from_slice(read);
                let applied = decoder.apply_frames(
                    &agg,
                    &mut buf,
                    DEFAULT_RAWTCP_MAX_MESSAGE_SIZE,
                    now,
                    &mut |e| panic!("bench frame rejected: {e}"),
                );
                if let Err(e) = applied {
                    panic!("bench stream broken: {e}");
                }
            }
            assert!(buf.is_empty(), "a pass ends on a frame boundary");
        });
    });
    group.finish();
}

criterion_group!(benches, rawtcp_ingest);
criterion_main!(benches);
