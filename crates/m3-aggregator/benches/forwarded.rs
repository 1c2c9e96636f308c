//! Throughput of forwarded (rollup) writes on the aggregator that owns the rollup IDs.
//!
//! `forwarded/add`: 1000 rollup IDs, each receiving one write per window from each of 64 source
//! shards, 8 values per write (the series of that source shard in the group), with the rest of
//! the pipeline (`Add`) attached as the source sends it. Throughput in values (samples).
//! Target: ≥ 2M values/s on one core.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use m3_aggregator::ForwardedWrite;
use m3_metric::{AggregationId, AggregationType, MetricType, StoragePolicy};
use m3_proto::pipelinepb;

#[allow(dead_code)] // each benchmark uses a part of the shared setup
mod common;
use common::{S, T0};

const ROLLUPS: usize = 1000;
const SOURCES: u32 = 64;
const VALUES: usize = 8;

fn forwarded(c: &mut Criterion) {
    let agg = common::engine();
    let ids = common::ids(ROLLUPS);
    let policy: StoragePolicy = "10s:2d".parse().expect("policy");
    let sum = AggregationId::from_types([AggregationType::Sum]);
    let add = pipelinepb::AppliedPipeline {
        ops: vec![pipelinepb::AppliedPipelineOp {
            r#type: pipelinepb::applied_pipeline_op::Type::Transformation as i32,
            transformation: Some(pipelinepb::TransformationOp {
                r#type: m3_rules::Transform::Add.to_proto(),
            }),
            rollup: None,
        }],
    };
    let values = [1.0; VALUES];
    let per_window = ROLLUPS as u64 * u64::from(SOURCES) * VALUES as u64;
    let mut group = c.benchmark_group("forwarded");
    group.throughput(Throughput::Elements(per_window));
    group.sample_size(10);
    let mut window = 0i64;
    group.bench_function("add", |b| {
        b.iter(|| {
            window += 1;
            let end = T0 + window * 10 * S;
            for id in &ids {
                for source in 0..SOURCES {
                    let r = agg.add_forwarded(
                        ForwardedWrite {
                            metric_type: MetricType::Gauge,
                            id,
                            time_nanos: end,
                            values: &values,
                            source_id: source,
                            version: 0,
                            aggregation_id: sum,
                            storage_policy: policy,
                            pipeline: Some(&add),
                            forwarded_times: 1,
                        },
                        end + S,
                    );
                    assert!(r.is_ok(), "{r:?}");
                }
            }
            // Close the window as a leader would, so state stays bounded across iterations.
            let mut out = Vec::new();
            agg.flush(end + 3600 * S, m3_aggregator::FlushMode::Leader, &mut out);
            out.len()
        });
    });
    group.finish();
}

criterion_group!(benches, forwarded);
criterion_main!(benches);
