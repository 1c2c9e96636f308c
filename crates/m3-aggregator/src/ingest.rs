//! From a decoded `MetricWithMetadatas` to the engine call its type names.
//!
//! Shared by the rawtcp server and (later) the m3msg server, so both treat every message type
//! the same way:
//!
//! | `type` | field | engine call |
//! |---|---|---|
//! | 1 counter | `counter_with_metadatas` | `add_untimed(Counter, [value])` |
//! | 2 batch timer | `batch_timer_with_metadatas` | `add_untimed(Timer, values)` |
//! | 3 gauge | `gauge_with_metadatas` | `add_untimed(Gauge, [value])` |
//! | 5 timed + `TimedMetadata` | `timed_metric_with_metadata` | `add_timed` with that one policy |
//! | 6 timed + staged | `timed_metric_with_metadatas` | `add_timed` with the staged metadatas |
//! | 4 forwarded | `forwarded_metric_with_metadata` | `add_forwarded`: a rollup's values from another aggregator's leader |
//! | 7 passthrough | `timed_metric_with_storage_policy` | `add_passthrough`: stored as given, by the leader only |
//!
//! A message whose type names a field that is absent is counted as `malformed_message`.
//!
//! [`MessageDecoder`] is the entry for raw message bytes. Type 6 — what the coordinator sends
//! for every sample — is read in place: the metric's fields borrowed, the metadata decoded only
//! when its bytes differ from the previous message's (the coordinator sends the same metadata
//! for every series its rules treat alike). Every other message is decoded whole with prost.

use m3_metric::{AggregationId, MetricType, StoragePolicy};
use m3_proto::metricpb::{self, metric_with_metadatas::Type};

use crate::aggregator::{Aggregator, ForwardedWrite};
use crate::error::{AddError, RejectReason};
use crate::flush::AggregatedOutput;
use crate::metadata::Metadatas;

/// Why a message was not (fully) applied. Every case is already counted when returned.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum IngestError {
    /// The engine rejected (part of) the write.
    #[error(transparent)]
    Add(#[from] AddError),
    /// The message lacks the field its type names, or names an unknown metric type.
    #[error("malformed {message_type} message: {what}")]
    Malformed {
        /// The envelope type.
        message_type: &'static str,
        /// What is missing.
        what: &'static str,
    },
    /// A type value outside the enum.
    #[error("unrecognized message type {0}")]
    UnknownType(i32),
}

/// Decodes and applies messages, one connection or consumer at a time (it keeps the last
/// metadata it decoded).
#[derive(Debug, Default)]
pub struct MessageDecoder {
    /// The encoded bytes of `metadatas`.
    metadatas_bytes: Vec<u8>,
    metadatas: metricpb::StagedMetadatas,
}

impl MessageDecoder {
    /// Decodes `message` (one frame's payload) and applies it at `now_nanos`.
    ///
    /// # Errors
    /// [`prost::DecodeError`] when the bytes are not a `MetricWithMetadatas` (not counted:
    /// the caller decides what a decode error costs the stream); `Ok(Err)` as [`apply`].
    pub fn apply(
        &mut self,
        aggregator: &Aggregator,
        message: &[u8],
        now_nanos: i64,
    ) -> Result<Result<(), IngestError>, prost::DecodeError> {
        use prost::Message;
        let Some(timed) = m3_proto::timed_frame::read_timed_metric_message(message) else {
            let decoded = metricpb::MetricWithMetadatas::decode(message)?;
            return Ok(apply(aggregator, &decoded, now_nanos));
        };
        let metadatas = match timed.metadatas {
            None => Metadatas::Default,
            Some(bytes) => {
                if bytes != self.metadatas_bytes.as_slice() {
                    self.metadatas = metricpb::StagedMetadatas::decode(bytes)?;
                    self.metadatas_bytes.clear();
                    self.metadatas_bytes.extend_from_slice(bytes);
                }
                Metadatas::Staged(&self.metadatas)
            }
        };
        let Some(metric_type) = MetricType::from_proto(timed.metric_type) else {
            aggregator
                .metrics()
                .record_rejected(RejectReason::MalformedMessage, 1);
            return Ok(Err(IngestError::Malformed {
                message_type: Type::TimedMetricWithMetadatas.as_str_name(),
                what: "metric type",
            }));
        };
        Ok(aggregator
            .add_timed(
                metric_type,
                timed.id,
                timed.time_nanos,
                timed.value,
                metadatas,
                now_nanos,
            )
            .map_err(IngestError::from))
    }
}

fn staged(m: Option<&metricpb::StagedMetadatas>) -> Metadatas<'_> {
    m.map_or(Metadatas::Default, Metadatas::Staged)
}

/// Applies one message to `aggregator` at server time `now_nanos`.
///
/// # Errors
/// See [`IngestError`]; the caller only needs to log, the counting is done.
pub fn apply(
    aggregator: &Aggregator,
    msg: &metricpb::MetricWithMetadatas,
    now_nanos: i64,
) -> Result<(), IngestError> {
    let metrics = aggregator.metrics();
    let malformed = |message_type: &'static str, what: &'static str| {
        metrics.record_rejected(RejectReason::MalformedMessage, 1);
        IngestError::Malformed { message_type, what }
    };
    let Ok(kind) = Type::try_from(msg.r#type) else {
        metrics.record_rejected(RejectReason::UnsupportedMessageType, 1);
        return Err(IngestError::UnknownType(msg.r#type));
    };
    let name = kind.as_str_name();
    match kind {
        Type::CounterWithMetadatas => {
            let m = msg.counter_with_metadatas.as_ref();
            let c = m
                .and_then(|m| m.counter.as_ref())
                .ok_or_else(|| malformed(name, "counter"))?;
            let metadatas = staged(m.and_then(|m| m.metadatas.as_ref()));
            aggregator.add_untimed(
                MetricType::Counter,
                &c.id,
                &[c.value as f64],
                metadatas,
                now_nanos,
            )?;
        }
        Type::BatchTimerWithMetadatas => {
            let m = msg.batch_timer_with_metadatas.as_ref();
            let t = m
                .and_then(|m| m.batch_timer.as_ref())
                .ok_or_else(|| malformed(name, "batch_timer"))?;
            let metadatas = staged(m.and_then(|m| m.metadatas.as_ref()));
            aggregator.add_untimed(MetricType::Timer, &t.id, &t.values, metadatas, now_nanos)?;
        }
        Type::GaugeWithMetadatas => {
            let m = msg.gauge_with_metadatas.as_ref();
            let g = m
                .and_then(|m| m.gauge.as_ref())
                .ok_or_else(|| malformed(name, "gauge"))?;
            let metadatas = staged(m.and_then(|m| m.metadatas.as_ref()));
            aggregator.add_untimed(MetricType::Gauge, &g.id, &[g.value], metadatas, now_nanos)?;
        }
        Type::TimedMetricWithMetadata => {
            let m = msg
                .timed_metric_with_metadata
                .as_ref()
                .ok_or_else(|| malformed(name, "timed_metric_with_metadata"))?;
            let metric = m.metric.as_ref().ok_or_else(|| malformed(name, "metric"))?;
            let metric_type = MetricType::from_proto(metric.r#type)
                .ok_or_else(|| malformed(name, "metric type"))?;
            let meta = m
                .metadata
                .as_ref()
                .ok_or_else(|| malformed(name, "metadata"))?;
            let Some(storage_policy) = meta
                .storage_policy
                .as_ref()
                .and_then(StoragePolicy::from_proto)
            else {
                metrics.record_rejected(RejectReason::InvalidStoragePolicy, 1);
                return Err(AddError::InvalidStoragePolicy.into());
            };
            let aggregation_id = AggregationId(meta.aggregation_id.as_ref().map_or(0, |a| a.id));
            aggregator.add_timed(
                metric_type,
                &metric.id,
                metric.time_nanos,
                metric.value,
                Metadatas::Single {
                    aggregation_id,
                    storage_policy,
                },
                now_nanos,
            )?;
        }
        Type::TimedMetricWithMetadatas => {
            let m = msg
                .timed_metric_with_metadatas
                .as_ref()
                .ok_or_else(|| malformed(name, "timed_metric_with_metadatas"))?;
            let metric = m.metric.as_ref().ok_or_else(|| malformed(name, "metric"))?;
            let metric_type = MetricType::from_proto(metric.r#type)
                .ok_or_else(|| malformed(name, "metric type"))?;
            aggregator.add_timed(
                metric_type,
                &metric.id,
                metric.time_nanos,
                metric.value,
                staged(m.metadatas.as_ref()),
                now_nanos,
            )?;
        }
        Type::ForwardedMetricWithMetadata => {
            let f = msg
                .forwarded_metric_with_metadata
                .as_ref()
                .ok_or_else(|| malformed(name, "forwarded_metric_with_metadata"))?;
            let metric = f.metric.as_ref().ok_or_else(|| malformed(name, "metric"))?;
            let meta = f
                .metadata
                .as_ref()
                .ok_or_else(|| malformed(name, "metadata"))?;
            let metric_type = MetricType::from_proto(metric.r#type)
                .ok_or_else(|| malformed(name, "metric type"))?;
            let Some(storage_policy) = meta
                .storage_policy
                .as_ref()
                .and_then(StoragePolicy::from_proto)
            else {
                metrics.record_rejected(RejectReason::InvalidStoragePolicy, 1);
                return Err(AddError::InvalidStoragePolicy.into());
            };
            aggregator.add_forwarded(
                ForwardedWrite {
                    metric_type,
                    id: &metric.id,
                    time_nanos: metric.time_nanos,
                    values: &metric.values,
                    source_id: meta.source_id,
                    version: metric.version,
                    aggregation_id: AggregationId(meta.aggregation_id.as_ref().map_or(0, |a| a.id)),
                    storage_policy,
                    pipeline: meta.pipeline.as_ref(),
                    forwarded_times: u32::try_from(meta.num_forwarded_times).unwrap_or(1),
                },
                now_nanos,
            )?;
        }
        Type::TimedMetricWithStoragePolicy => {
            let p = msg
                .timed_metric_with_storage_policy
                .as_ref()
                .ok_or_else(|| malformed(name, "timed_metric_with_storage_policy"))?;
            let metric = p
                .timed_metric
                .as_ref()
                .ok_or_else(|| malformed(name, "timed_metric"))?;
            let metric_type = MetricType::from_proto(metric.r#type)
                .ok_or_else(|| malformed(name, "metric type"))?;
            let Some(storage_policy) = p
                .storage_policy
                .as_ref()
                .and_then(StoragePolicy::from_proto)
            else {
                metrics.record_rejected(RejectReason::InvalidStoragePolicy, 1);
                return Err(AddError::InvalidStoragePolicy.into());
            };
            aggregator.add_passthrough(AggregatedOutput {
                id: metric.id.to_vec(),
                time_nanos: metric.time_nanos,
                value: metric.value,
                storage_policy,
                aggregation: m3_metric::AggregationType::Last,
                metric_type,
            });
        }
        Type::Unknown => {
            metrics.record_rejected(RejectReason::UnsupportedMessageType, 1);
            return Err(IngestError::UnknownType(msg.r#type));
        }
    }
    Ok(())
}
