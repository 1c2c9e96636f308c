//! Remote-write decode: the project's borrowed decoder against the prost-generated one, on
//! Prometheus-shaped batches (one sample per series, ten labels, 2000 series per request as
//! Prometheus's default `max_samples_per_send`).
//!
//! `remote_write_decode` is the whole job (snappy + protobuf + validation) for both decoders.
//! `remote_write_stages` splits it: snappy block decompression alone, and each decoder on the
//! already-decompressed bytes, so a regression can be pinned on one stage. Throughput is in
//! series (= samples) per second throughout.

mod common;

use common::{SERIES, prometheus_shaped_proto, prometheus_shaped_request};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use m3_coordinator::remote_write::{DecodedRequest, RemoteWriteDecoder};
use m3_proto::Message;
use m3_proto::prometheus::WriteRequest;

/// Touches everything the write path reads: each series' validity, labels and samples.
fn consume(decoded: &DecodedRequest<'_>) -> usize {
    let mut n = 0usize;
    for s in decoded.series() {
        n += usize::from(s.invalid().is_some()) + s.labels().count() + s.samples().len();
    }
    n
}

fn consume_prost(req: &WriteRequest) -> usize {
    req.timeseries
        .iter()
        .map(|s| s.labels.len() + s.samples.len())
        .sum()
}

fn decode(c: &mut Criterion) {
    let body = prometheus_shaped_request(SERIES);
    let mut group = c.benchmark_group("remote_write_decode");
    group.throughput(Throughput::Elements(SERIES as u64));
    let mut decoder = RemoteWriteDecoder::new();
    group.bench_with_input(BenchmarkId::new("borrowed", SERIES), &body, |b, body| {
        b.iter(|| consume(&decoder.decode_snappy(body).expect("valid body")))
    });
    let mut scratch = Vec::new();
    group.bench_with_input(BenchmarkId::new("prost", SERIES), &body, |b, body| {
        b.iter(|| {
            scratch.clear();
            scratch.resize(snap::raw::decompress_len(body).expect("snappy"), 0);
            snap::raw::Decoder::new()
                .decompress(body, &mut scratch)
                .expect("snappy");
            consume_prost(&WriteRequest::decode(scratch.as_slice()).expect("valid body"))
        })
    });
    group.finish();
}

fn stages(c: &mut Criterion) {
    let proto = prometheus_shaped_proto(SERIES);
    let body = prometheus_shaped_request(SERIES);
    let mut group = c.benchmark_group("remote_write_stages");
    group.throughput(Throughput::Elements(SERIES as u64));
    let mut scratch = vec![0u8; proto.len()];
    group.bench_with_input(BenchmarkId::new("snappy", SERIES), &body, |b, body| {
        b.iter(|| {
            snap::raw::Decoder::new()
                .decompress(body, &mut scratch)
                .expect("snappy")
        })
    });
    let mut decoder = RemoteWriteDecoder::new();
    group.bench_with_input(
        BenchmarkId::new("borrowed_parse", SERIES),
        &proto,
        |b, proto| b.iter(|| consume(&decoder.decode(proto).expect("valid body"))),
    );
    group.bench_with_input(
        BenchmarkId::new("prost_parse", SERIES),
        &proto,
        |b, proto| {
            b.iter(|| consume_prost(&WriteRequest::decode(proto.as_slice()).expect("valid body")))
        },
    );
    group.finish();
}

criterion_group!(benches, decode, stages);
criterion_main!(benches);
