//! Writing rawtcp frames of timed metrics, as the coordinator does for every sample it relays
//! (two frames per sample, one per replica): a request's worth of frames (2000 series with
//! IDs of Prometheus-shaped size, about 240 bytes, nanosecond timestamps and the same encoded
//! metadata) into one reused buffer. Throughput is in frames per second.

use bytes::BytesMut;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use m3_proto::timed_frame::put_timed_metric_frame;

const FRAMES: usize = 2000;
const ID_LEN: usize = 240;

fn timed_frame(c: &mut Criterion) {
    let ids: Vec<Vec<u8>> = (0..FRAMES)
        .map(|i| {
            let mut id = format!("instance=host-{i:05}.example.com:9100,job=node,").into_bytes();
            id.resize(ID_LEN, b'x');
            id
        })
        .collect();
    // A StagedMetadatas of one pipeline with one storage policy, as the coordinator sends.
    let metadatas = [
        0x0a, 0x0e, 0x12, 0x0c, 0x0a, 0x0a, 0x1a, 0x08, 0x0a, 0x06, 0x08, 0x80, 0xc8, 0xaf, 0xa0,
        0x25,
    ];
    let mut out = BytesMut::with_capacity(FRAMES * 320);
    let mut group = c.benchmark_group("timed_frame");
    group.throughput(Throughput::Elements(FRAMES as u64));
    group.bench_function(BenchmarkId::new("put", FRAMES), |b| {
        let mut time_nanos = 1_700_000_000_000_000_000i64;
        b.iter(|| {
            out.clear();
            time_nanos += 15_000_000_000;
            for (i, id) in ids.iter().enumerate() {
                put_timed_metric_frame(2, id, time_nanos, i as f64 + 0.5, &metadatas, &mut out);
            }
            std::hint::black_box(out.len())
        });
    });
    group.finish();
}

criterion_group!(benches, timed_frame);
criterion_main!(benches);
