//! ID encode + shard: what the write path does for every series before routing it to an
//! aggregator. Each series' labels (ten, sorted, borrowed from a decoded remote-write request)
//! are tag-encoded with `m3_metric::id::encode_tags` into one reused buffer, and the ID's shard
//! among 64 is computed with `m3_cluster::shard_for`.
//!
//! `id_shard/encode_and_shard` is the whole step; `encode_tags` and `murmur3` split it, so a
//! regression can be pinned on one half. Throughput is in series per second.
//!
//! `output_labels` is the way back, for every aggregated output the coordinator stores: the
//! ID's labels. `labels_of` is the store path; `tag_by_tag` (every tag decoded to owned
//! strings, then sorted and checked) is what it did before, kept as the same-run baseline.

mod common;

use common::{SERIES, prometheus_shaped_request};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use m3_cluster::shard_for;
use m3_coordinator::ingest::labels_of;
use m3_coordinator::remote_write::RemoteWriteDecoder;
use m3_metric::id::{decode_tags, encode_tags};
use m3_storage::Labels;
use std::hint::black_box;

const NUM_SHARDS: u32 = 64;

fn id_shard(c: &mut Criterion) {
    let body = prometheus_shaped_request(SERIES);
    let mut decoder = RemoteWriteDecoder::new();
    let request = decoder.decode_snappy(&body).expect("valid body");
    let ids: Vec<Vec<u8>> = request
        .series()
        .map(|s| {
            let mut id = Vec::new();
            encode_tags(s.labels(), &mut id).expect("short labels");
            id
        })
        .collect();

    let mut group = c.benchmark_group("id_shard");
    group.throughput(Throughput::Elements(SERIES as u64));
    let mut id = Vec::with_capacity(256);
    group.bench_function(BenchmarkId::new("encode_and_shard", SERIES), |b| {
        b.iter(|| {
            let mut shards = 0u32;
            for series in request.series() {
                id.clear();
                encode_tags(series.labels(), &mut id).expect("short labels");
                shards = shards.wrapping_add(shard_for(&id, NUM_SHARDS));
            }
            shards
        })
    });
    group.bench_function(BenchmarkId::new("encode_tags", SERIES), |b| {
        b.iter(|| {
            let mut bytes = 0usize;
            for series in request.series() {
                id.clear();
                encode_tags(series.labels(), &mut id).expect("short labels");
                bytes += black_box(&id).len();
            }
            bytes
        })
    });
    group.bench_function(BenchmarkId::new("murmur3", SERIES), |b| {
        b.iter(|| {
            ids.iter()
                .fold(0u32, |acc, id| acc.wrapping_add(shard_for(id, NUM_SHARDS)))
        })
    });
    group.finish();

    let mut group = c.benchmark_group("output_labels");
    group.throughput(Throughput::Elements(SERIES as u64));
    let expected: Vec<Labels> = ids
        .iter()
        .map(|id| labels_of(id).expect("labels"))
        .collect();
    let check = |got: &[Labels]| assert_eq!(got, expected.as_slice());
    group.bench_function(BenchmarkId::new("labels_of", SERIES), |b| {
        let mut got = Vec::with_capacity(SERIES);
        b.iter(|| {
            got.clear();
            got.extend(ids.iter().map(|id| labels_of(id).expect("labels")));
        });
        check(&got);
    });
    group.bench_function(BenchmarkId::new("tag_by_tag", SERIES), |b| {
        let mut got = Vec::with_capacity(SERIES);
        b.iter(|| {
            got.clear();
            got.extend(
                ids.iter()
                    .map(|id| Labels::new(decode_tags(id).expect("tag-encoded")).expect("labels")),
            );
        });
        check(&got);
    });
    group.finish();
}

criterion_group!(benches, id_shard);
criterion_main!(benches);
