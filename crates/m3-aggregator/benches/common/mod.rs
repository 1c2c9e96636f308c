//! Shared setup for the benchmarks: realistic tag-encoded IDs and a populated engine.

use std::hash::Hasher;
use std::sync::Arc;

use m3_aggregator::metadata::build;
use m3_aggregator::{Aggregator, AggregatorOptions, Metadatas, ShardAssignment};
use m3_metric::id::encode_tags;
use m3_metric::{AggregationId, MetricType};
use m3_proto::metricpb::StagedMetadatas;

pub const S: i64 = 1_000_000_000;
/// Aligned to 10s.
pub const T0: i64 = 1_700_000_000 * S;
pub const NUM_SHARDS: u32 = 256;

/// Tag-encoded Prometheus-style IDs of about 70 bytes:
/// `{__name__="bench_metric_N", instance="host-N:9100", job="node"}`.
pub fn ids(n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            let name = format!("bench_metric_{}", i % 1000);
            let instance = format!("host-{i}:9100");
            let mut id = Vec::new();
            encode_tags(
                [
                    (&b"__name__"[..], name.as_bytes()),
                    (&b"instance"[..], instance.as_bytes()),
                    (&b"job"[..], &b"node"[..]),
                ],
                &mut id,
            )
            .expect("short tags encode");
            id
        })
        .collect()
}

/// An engine owning all shards. The shard function is FxHash, standing in for murmur3 (which
/// the integrator supplies and which costs a few more nanoseconds per ID).
pub fn engine() -> Aggregator {
    let agg = Aggregator::new(
        AggregatorOptions::default(),
        Arc::new(|id: &[u8]| {
            let mut h = rustc_hash::FxHasher::default();
            h.write(id);
            (h.finish() % u64::from(NUM_SHARDS)) as u32
        }),
    );
    agg.set_shards((0..NUM_SHARDS).map(ShardAssignment::unbounded).collect(), 0);
    agg
}

/// The metadata a coordinator sends for a Prometheus sample: one staged version, default
/// aggregation (gauge → Last), storage policy 10s:2d.
pub fn metadatas() -> StagedMetadatas {
    build::simple(
        AggregationId::DEFAULT,
        &["10s:2d".parse().expect("valid policy")],
    )
}

/// Adds one timed gauge sample to every series at `t`.
pub fn add_all(agg: &Aggregator, ids: &[Vec<u8>], meta: &StagedMetadatas, t: i64, now: i64) {
    for (i, id) in ids.iter().enumerate() {
        agg.add_timed(
            MetricType::Gauge,
            id,
            t,
            i as f64,
            Metadatas::Staged(meta),
            now,
        )
        .expect("bench sample accepted");
    }
}
