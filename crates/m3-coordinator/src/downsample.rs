//! The downsampler: decides which aggregations each incoming series gets, and encodes the
//! metrics sent to the aggregators.
//!
//! Every aggregated namespace that is not read-only and has `downsample.all` (the default)
//! yields an automatic mapping rule: aggregation **Last** at the namespace's
//! resolution:retention, precision 1s (M3's rule). All automatic rules apply to every series, so
//! their metadata — one `StagedMetadatas` with one pipeline carrying every storage policy — is
//! the same for every sample. It is encoded once at startup, and each sample's frame is written
//! by hand around it: a remote-write sample becomes a rawtcp frame without building a protobuf
//! struct or allocating.
//!
//! Explicit `downsample.rules` (mapping and rollup rules with filters) are a later feature.

use std::time::Duration;

use bytes::{BufMut, BytesMut};
use m3_metric::{AggregationId, AggregationType, Resolution, StoragePolicy};
use m3_proto::Message;
use m3_proto::metricpb::{PipelineMetadata, StagedMetadata, StagedMetadatas};

use crate::config::ValidNamespace;

/// The automatic mapping rules and their pre-encoded metadata.
#[derive(Debug, Clone)]
pub struct Downsampler {
    policies: Vec<StoragePolicy>,
    metadatas: Vec<u8>,
    largest_resolution: Duration,
}

impl Downsampler {
    /// Builds the automatic rules for `namespaces`.
    pub fn from_namespaces(namespaces: &[ValidNamespace]) -> Downsampler {
        let policies: Vec<StoragePolicy> = namespaces
            .iter()
            .filter(|ns| ns.downsample_all && !ns.read_only)
            .filter_map(|ns| ns.policy)
            .map(|p| StoragePolicy {
                resolution: Resolution {
                    window: p.resolution.window,
                    precision: Duration::from_secs(1).min(p.resolution.window),
                },
                retention: p.retention,
            })
            .collect();
        let staged = StagedMetadatas {
            metadatas: vec![StagedMetadata {
                cutover_nanos: 0,
                tombstoned: false,
                metadata: Some(m3_proto::metricpb::Metadata {
                    pipelines: vec![PipelineMetadata {
                        aggregation_id: Some(m3_proto::aggregationpb::AggregationId {
                            id: AggregationId::from_types([AggregationType::Last]).0,
                        }),
                        storage_policies: policies.iter().map(StoragePolicy::to_proto).collect(),
                        ..PipelineMetadata::default()
                    }],
                }),
            }],
        };
        let largest_resolution = policies
            .iter()
            .map(|p| p.resolution.window)
            .max()
            .unwrap_or(Duration::ZERO);
        Downsampler {
            metadatas: staged.encode_to_vec(),
            policies,
            largest_resolution,
        }
    }

    /// Whether any rule applies, i.e. whether samples go to the aggregators at all.
    pub fn is_enabled(&self) -> bool {
        !self.policies.is_empty()
    }

    /// The storage policies every series is aggregated at.
    pub fn policies(&self) -> &[StoragePolicy] {
        &self.policies
    }

    /// The encoded `StagedMetadatas` every sample carries.
    pub fn encoded_metadatas(&self) -> &[u8] {
        &self.metadatas
    }

    /// The largest resolution of any rule (used for the too-far-in-the-past check).
    pub fn largest_resolution(&self) -> Duration {
        self.largest_resolution
    }
}

const METRIC_TYPE_GAUGE: u64 = 3;
const TIMED_METRIC_WITH_METADATAS: u64 = 6;

/// Appends a rawtcp frame carrying a `MetricWithMetadatas` of type
/// `TIMED_METRIC_WITH_METADATAS`: a timed gauge with `id`, `time_nanos`, `value`, and the
/// already-encoded `StagedMetadatas` bytes. The bytes equal prost's encoding of the same message.
pub fn put_timed_gauge_frame(
    id: &[u8],
    time_nanos: i64,
    value: f64,
    encoded_metadatas: &[u8],
    out: &mut BytesMut,
) {
    // TimedMetric { type = 1, id = 2, time_nanos = 3, value = 4 }
    let mut timed_len = 2; // type: key + 1-byte varint
    if !id.is_empty() {
        timed_len += 1 + varint_len(id.len() as u64) + id.len();
    }
    if time_nanos != 0 {
        timed_len += 1 + varint_len(time_nanos as u64);
    }
    if value != 0.0 {
        timed_len += 1 + 8;
    }
    // TimedMetricWithMetadatas { metric = 1, metadatas = 2 }
    let body_len = 1
        + varint_len(timed_len as u64)
        + timed_len
        + 1
        + varint_len(encoded_metadatas.len() as u64)
        + encoded_metadatas.len();
    // MetricWithMetadatas { type = 1, timed_metric_with_metadatas = 7 }
    let message_len = 2 + 1 + varint_len(body_len as u64) + body_len;

    out.reserve(10 + message_len);
    put_varint(zigzag(message_len as i64), out);
    out.put_u8(0x08);
    out.put_u8(TIMED_METRIC_WITH_METADATAS as u8);
    out.put_u8((7 << 3) | 2);
    put_varint(body_len as u64, out);
    out.put_u8((1 << 3) | 2);
    put_varint(timed_len as u64, out);
    out.put_u8(0x08);
    out.put_u8(METRIC_TYPE_GAUGE as u8);
    if !id.is_empty() {
        out.put_u8((2 << 3) | 2);
        put_varint(id.len() as u64, out);
        out.put_slice(id);
    }
    if time_nanos != 0 {
        out.put_u8(3 << 3);
        put_varint(time_nanos as u64, out);
    }
    if value != 0.0 {
        out.put_u8((4 << 3) | 1);
        out.put_f64_le(value);
    }
    out.put_u8((2 << 3) | 2);
    put_varint(encoded_metadatas.len() as u64, out);
    out.put_slice(encoded_metadatas);
}

fn zigzag(value: i64) -> u64 {
    ((value << 1) ^ (value >> 63)) as u64
}

fn varint_len(value: u64) -> usize {
    (64 - (value | 1).leading_zeros() as usize).div_ceil(7)
}

fn put_varint(mut value: u64, out: &mut BytesMut) {
    while value >= 0x80 {
        out.put_u8((value as u8) | 0x80);
        value >>= 7;
    }
    out.put_u8(value as u8);
}

#[cfg(test)]
mod tests {
    use super::*;
    use m3_proto::framing::next_rawtcp_frame;
    use m3_proto::metricpb::{
        MetricWithMetadatas, TimedMetric, TimedMetricWithMetadatas, metric_with_metadatas,
    };
    use proptest::prelude::*;

    fn namespaces() -> Vec<ValidNamespace> {
        vec![
            ValidNamespace {
                name: "default".into(),
                policy: None,
                retention: Duration::from_secs(86_400),
                downsample_all: true,
                read_only: false,
            },
            ValidNamespace {
                name: "agg10s".into(),
                policy: Some("10s:2d".parse().unwrap()),
                retention: Duration::from_secs(172_800),
                downsample_all: true,
                read_only: false,
            },
            ValidNamespace {
                name: "agg1m".into(),
                policy: Some("1m:40d".parse().unwrap()),
                retention: Duration::from_secs(40 * 86_400),
                downsample_all: true,
                read_only: false,
            },
            ValidNamespace {
                name: "manual".into(),
                policy: Some("1h:1y".parse().unwrap()),
                retention: Duration::from_secs(365 * 86_400),
                downsample_all: false,
                read_only: false,
            },
        ]
    }

    #[test]
    fn automatic_rules_are_last_per_aggregated_namespace() {
        let d = Downsampler::from_namespaces(&namespaces());
        let names: Vec<String> = d.policies().iter().map(|p| p.to_string()).collect();
        assert_eq!(names, ["10s:2d", "1m@1s:40d"]);
        let staged = StagedMetadatas::decode(d.encoded_metadatas()).unwrap();
        let pipeline = &staged.metadatas[0].metadata.as_ref().unwrap().pipelines[0];
        assert_eq!(
            pipeline.aggregation_id.unwrap().id,
            AggregationId::from_types([AggregationType::Last]).0
        );
        assert_eq!(pipeline.storage_policies.len(), 2);
        assert_eq!(d.largest_resolution(), Duration::from_secs(60));
    }

    proptest! {
        #[test]
        fn hand_encoding_equals_prost(id in proptest::collection::vec(any::<u8>(), 0..300), t in any::<i64>(), v in any::<f64>()) {
            let d = Downsampler::from_namespaces(&namespaces());
            let mut out = BytesMut::new();
            put_timed_gauge_frame(&id, t, v, d.encoded_metadatas(), &mut out);
            let payload = next_rawtcp_frame(&mut out, 1 << 20).unwrap().unwrap();
            prop_assert!(out.is_empty());
            let want = MetricWithMetadatas {
                r#type: metric_with_metadatas::Type::TimedMetricWithMetadatas as i32,
                timed_metric_with_metadatas: Some(TimedMetricWithMetadatas {
                    metric: Some(TimedMetric {
                        r#type: 3,
                        id: id.clone().into(),
                        time_nanos: t,
                        value: v,
                        annotation: Default::default(),
                    }),
                    metadatas: Some(StagedMetadatas::decode(d.encoded_metadatas()).unwrap()),
                }),
                ..Default::default()
            };
            let want = want.encode_to_vec();
            prop_assert_eq!(payload.as_ref(), want.as_slice());
        }
    }
}
