//! One rawtcp frame of a timed metric with already-encoded metadata, written by hand.
//!
//! The coordinator sends every remote-write sample as a `MetricWithMetadatas` of type
//! `TIMED_METRIC_WITH_METADATAS`: a `TimedMetric` (type, ID, time, value) and the series'
//! `StagedMetadatas`. The metadata is the same for every sample of a series (it comes from the
//! rules, computed once per series), so it is encoded once and spliced in; the frame is written
//! straight into the instance's batch buffer without building a message or allocating. The
//! bytes equal prost's encoding of the same message (checked by a property test).

use bytes::{BufMut, BytesMut};

/// `MetricWithMetadatas.Type.TIMED_METRIC_WITH_METADATAS`.
const TIMED_METRIC_WITH_METADATAS: u8 = 6;

/// Appends a rawtcp frame carrying a `MetricWithMetadatas` of type
/// `TIMED_METRIC_WITH_METADATAS`: a timed metric of `metric_type` (`MetricType` enum value)
/// with `id`, `time_nanos`, `value`, and the encoded `StagedMetadatas` bytes.
pub fn put_timed_metric_frame(
    metric_type: u8,
    id: &[u8],
    time_nanos: i64,
    value: f64,
    encoded_metadatas: &[u8],
    out: &mut BytesMut,
) {
    // TimedMetric { type = 1, id = 2, time_nanos = 3, value = 4 }
    let mut timed_len = if metric_type != 0 { 2 } else { 0 };
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
    out.put_u8(TIMED_METRIC_WITH_METADATAS);
    out.put_u8((7 << 3) | 2);
    put_varint(body_len as u64, out);
    out.put_u8((1 << 3) | 2);
    put_varint(timed_len as u64, out);
    if metric_type != 0 {
        out.put_u8(0x08);
        out.put_u8(metric_type);
    }
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
    use crate::framing::next_rawtcp_frame;
    use crate::metricpb::{
        MetricWithMetadatas, StagedMetadata, StagedMetadatas, TimedMetric,
        TimedMetricWithMetadatas, metric_with_metadatas,
    };
    use proptest::prelude::*;
    use prost::Message;

    proptest! {
        #[test]
        fn hand_encoding_equals_prost(
            metric_type in 0u8..4,
            id in proptest::collection::vec(any::<u8>(), 0..300),
            t in any::<i64>(),
            v in any::<f64>(),
            cutover in any::<i64>(),
        ) {
            let metadatas = StagedMetadatas {
                metadatas: vec![StagedMetadata { cutover_nanos: cutover, ..Default::default() }],
            }
            .encode_to_vec();
            let mut out = BytesMut::new();
            put_timed_metric_frame(metric_type, &id, t, v, &metadatas, &mut out);
            let payload = next_rawtcp_frame(&mut out, 1 << 20).unwrap().unwrap();
            prop_assert!(out.is_empty());
            let want = MetricWithMetadatas {
                r#type: metric_with_metadatas::Type::TimedMetricWithMetadatas as i32,
                timed_metric_with_metadatas: Some(TimedMetricWithMetadatas {
                    metric: Some(TimedMetric {
                        r#type: i32::from(metric_type),
                        id: id.clone().into(),
                        time_nanos: t,
                        value: v,
                        annotation: Default::default(),
                    }),
                    metadatas: Some(StagedMetadatas::decode(metadatas.as_slice()).unwrap()),
                }),
                ..Default::default()
            };
            let want = want.encode_to_vec();
            prop_assert_eq!(payload.as_ref(), want.as_slice());
        }
    }
}
