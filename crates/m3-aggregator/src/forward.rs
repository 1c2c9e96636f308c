//! Sending rollup values to the aggregators that own the rollup IDs.
//!
//! After each leader flush, the values the pipelines forwarded ([`ForwardedOutput`]) are
//! grouped, as M3's forwarded writer groups them: one message per (rollup ID, aggregation,
//! storage policy, remaining pipeline, hop count, window end) with one value per source series
//! of this shard. Each message goes over rawtcp (message type 4,
//! `FORWARDED_METRIC_WITH_METADATA`) to **every** instance owning the rollup ID's shard,
//! leader and followers alike, through the same [`AggregatorClient`] the coordinator uses.
//! Receivers count each (source shard, version) once per window, so a window forwarded again
//! by a new leader after a failover is not counted twice.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use m3_proto::Message;
use m3_proto::metricpb::{
    ForwardMetadata, ForwardedMetric, ForwardedMetricWithMetadata, MetricWithMetadatas,
    metric_with_metadatas::Type,
};
use m3_proto::{aggregationpb, pipelinepb};

use crate::aggregator::Aggregator;
use crate::client::{AggregatorClient, ClientDrop, ClientMetrics, RouteError};
use crate::flush::ForwardedOutput;

/// Counts what the forwarding client sends and drops in the aggregator's metrics
/// (`forwarded_sent`, `forwarded_dropped{reason}`).
pub(crate) struct ForwardingMetrics(pub(crate) Arc<Aggregator>);

impl ClientMetrics for ForwardingMetrics {
    fn dropped(&self, reason: ClientDrop, n: u64) {
        let reason = match reason {
            ClientDrop::QueueFull => "queue_full",
            ClientDrop::WriteFailed => "write_failed",
            ClientDrop::WriterStopped => "writer_stopped",
        };
        self.0.metrics().record_forwarded(0, &[(reason, n)]);
    }

    fn queued(&self, n: u64) {
        self.0.metrics().record_forwarded(n, &[]);
    }
}

/// The grouping key of forwarded values.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    id: Bytes,
    time_nanos: i64,
    metric_type: i32,
    aggregation_id: u64,
    policy: (i64, i64),
    pipeline: Bytes,
    source_id: u32,
    forwarded_times: u32,
}

/// Groups `outputs` into messages and queues them towards the owners of each rollup ID.
pub(crate) fn send(
    client: &AggregatorClient,
    outputs: Vec<ForwardedOutput>,
    metrics: &crate::Metrics,
) {
    if outputs.is_empty() {
        return;
    }
    let mut groups: BTreeMap<Key, (ForwardedOutput, Vec<f64>)> = BTreeMap::new();
    for output in outputs {
        let key = Key {
            id: output.id.clone(),
            time_nanos: output.time_nanos,
            metric_type: output.metric_type.to_proto(),
            aggregation_id: output.aggregation_id.0,
            policy: (
                output.storage_policy.resolution.window_nanos(),
                i64::try_from(output.storage_policy.retention.0.as_nanos()).unwrap_or(i64::MAX),
            ),
            pipeline: output.pipeline.clone(),
            source_id: output.source_id,
            forwarded_times: output.forwarded_times,
        };
        let value = output.value;
        groups
            .entry(key)
            .or_insert_with(|| (output, Vec::new()))
            .1
            .push(value);
    }
    let max = client.options().max_message_size;
    let mut batch = client.batch();
    let (mut no_owner, mut too_large) = (0u64, 0u64);
    for (first, values) in groups.into_values() {
        let message = message(&first, values);
        let n = message
            .forwarded_metric_with_metadata
            .as_ref()
            .and_then(|f| f.metric.as_ref())
            .map_or(0, |m| m.values.len()) as u64;
        let mut oversized = false;
        let routed = batch.route(&first.id, first.time_nanos, |buf| {
            oversized = m3_proto::framing::put_rawtcp_frame(&message, buf, max).is_err();
        });
        match routed {
            Ok(_) if oversized => too_large += n,
            Ok(_) => {}
            Err(RouteError::NoPlacement | RouteError::NoOwner) => no_owner += n,
        }
    }
    client.commit(batch);
    metrics.record_forwarded(0, &[("no_owner", no_owner), ("too_large", too_large)]);
}

/// The rawtcp message of one group.
fn message(first: &ForwardedOutput, values: Vec<f64>) -> MetricWithMetadatas {
    let pipeline = (!first.pipeline.is_empty())
        .then(|| pipelinepb::AppliedPipeline::decode(first.pipeline.clone()).ok())
        .flatten();
    MetricWithMetadatas {
        r#type: Type::ForwardedMetricWithMetadata as i32,
        forwarded_metric_with_metadata: Some(ForwardedMetricWithMetadata {
            metric: Some(ForwardedMetric {
                r#type: first.metric_type.to_proto(),
                id: first.id.clone(),
                time_nanos: first.time_nanos,
                prev_values: vec![0.0; values.len()],
                values,
                annotation: Bytes::new(),
                version: 0,
            }),
            metadata: Some(ForwardMetadata {
                aggregation_id: Some(aggregationpb::AggregationId {
                    id: first.aggregation_id.0,
                }),
                storage_policy: Some(first.storage_policy.to_proto()),
                pipeline,
                source_id: first.source_id,
                num_forwarded_times: i32::try_from(first.forwarded_times).unwrap_or(i32::MAX),
                ..Default::default()
            }),
        }),
        ..Default::default()
    }
}
