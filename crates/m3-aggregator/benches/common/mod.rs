//! Shared setup for the benchmarks: realistic tag-encoded IDs and a populated engine.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use m3_aggregator::metadata::build;
use m3_aggregator::{Aggregator, AggregatorOptions, Metadatas, ShardAssignment};
use m3_metric::id::encode_tags;
use m3_metric::{AggregationId, MetricType};
use m3_proto::metricpb::StagedMetadatas;

pub(crate) const S: i64 = 1_000_000_000;
/// Aligned to 10s.
pub(crate) const T0: i64 = 1_700_000_000 * S;
pub(crate) const NUM_SHARDS: u32 = 256;

/// Tag-encoded Prometheus-style IDs of about 70 bytes:
/// `{__name__="bench_metric_N", instance="host-N:9100", job="node"}`.
pub(crate) fn ids(n: usize) -> Vec<Vec<u8>> {
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

/// An engine owning all shards, with the default options and the production shard function
/// (murmur3_32 of the ID modulo the shard count, as the placement assigns them).
pub(crate) fn engine() -> Aggregator {
    engine_with(AggregatorOptions::default())
}

/// As [`engine`], with `options`.
pub(crate) fn engine_with(options: AggregatorOptions) -> Aggregator {
    // As the server builds it: the shard function is told to be murmur3 under this count.
    let num_shards = Arc::new(AtomicU32::new(NUM_SHARDS));
    let count = Arc::clone(&num_shards);
    let agg = Aggregator::new(
        options,
        Arc::new(move |id: &[u8]| m3_cluster::shard_for(id, count.load(Ordering::Relaxed))),
    )
    .with_murmur3_shard_count(num_shards);
    agg.set_shards((0..NUM_SHARDS).map(ShardAssignment::unbounded).collect(), 0);
    agg
}

/// The metadata a coordinator sends for a Prometheus sample: one staged version, default
/// aggregation (gauge → Last), storage policy 10s:2d.
pub(crate) fn metadatas() -> StagedMetadatas {
    build::simple(
        AggregationId::DEFAULT,
        &["10s:2d".parse().expect("valid policy")],
    )
}

/// Adds one timed gauge sample to every series at `t`.
pub(crate) fn add_all(agg: &Aggregator, ids: &[Vec<u8>], meta: &StagedMetadatas, t: i64, now: i64) {
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
