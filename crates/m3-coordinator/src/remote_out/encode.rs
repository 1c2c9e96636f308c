//! Prometheus remote-write v1 bodies written straight from label sets and samples.
//!
//! A `WriteRequest` is a run of `timeseries` fields, each holding its `labels` and `samples`
//! fields. Writing the bytes directly (the lengths are known before each field is written)
//! costs no allocation per label or sample, which building prost's owned structs would; a
//! test decodes what is written with prost to pin the format. Consecutive samples of the same
//! label set share one `TimeSeries`, as Prometheus sends them.

use bytes::Bytes;
use prost::encoding::{encode_varint, encoded_len_varint};

use m3_storage::{AsLabelsView, LabelsView};

/// One sample to send: its series (a `&Labels`, a [`LabelsView`]…), time in milliseconds and
/// value.
pub type OutSample<L> = (L, i64, f64);

/// Key of `WriteRequest.timeseries` (field 1, length-delimited).
const TIMESERIES_KEY: u8 = 1 << 3 | 2;
/// Key of `TimeSeries.labels` (field 1, length-delimited).
const LABELS_KEY: u8 = 1 << 3 | 2;
/// Key of `TimeSeries.samples` (field 2, length-delimited).
const SAMPLES_KEY: u8 = 2 << 3 | 2;
/// Keys of `Label.name` and `Label.value` (fields 1 and 2, length-delimited).
const NAME_KEY: u8 = 1 << 3 | 2;
const VALUE_KEY: u8 = 2 << 3 | 2;
/// Keys of `Sample.value` (field 1, 64-bit) and `Sample.timestamp` (field 2, varint).
const SAMPLE_VALUE_KEY: u8 = 1 << 3 | 1;
const SAMPLE_TIMESTAMP_KEY: u8 = 2 << 3;

/// A snappy-compressed `WriteRequest` ready to send, and how many samples it holds.
#[derive(Debug, Clone)]
pub struct Body {
    /// The compressed bytes.
    pub bytes: Bytes,
    /// Samples in it.
    pub samples: usize,
}

/// Encodes `samples` as requests of at most `max_per_request` samples each, snappy-compressed.
/// `scratch` is reused between calls to hold the uncompressed bytes.
pub fn encode_requests<L: AsLabelsView>(
    samples: &[OutSample<L>],
    max_per_request: usize,
    scratch: &mut Vec<u8>,
) -> Vec<Body> {
    let mut bodies = Vec::with_capacity(samples.len().div_ceil(max_per_request.max(1)));
    let mut encoder = snap::raw::Encoder::new();
    for chunk in samples.chunks(max_per_request.max(1)) {
        scratch.clear();
        let mut start = 0;
        while start < chunk.len() {
            let labels = chunk[start].0.labels_view();
            let end = chunk[start..]
                .iter()
                .position(|s| s.0.labels_view() != labels)
                .map_or(chunk.len(), |n| start + n);
            put_series(scratch, labels, &chunk[start..end]);
            start = end;
        }
        let mut compressed = vec![0; snap::raw::max_compress_len(scratch.len())];
        // Compression into a buffer of the maximum compressed size cannot fail.
        let n = encoder.compress(scratch, &mut compressed).unwrap_or(0);
        compressed.truncate(n);
        bodies.push(Body {
            bytes: Bytes::from(compressed),
            samples: chunk.len(),
        });
    }
    bodies
}

/// Length of a length-delimited field holding `len` bytes, key included.
fn field_len(len: usize) -> usize {
    1 + encoded_len_varint(len as u64) + len
}

fn put_field(out: &mut Vec<u8>, key: u8, bytes: &[u8]) {
    out.push(key);
    encode_varint(bytes.len() as u64, out);
    out.extend_from_slice(bytes);
}

/// Length of one encoded `Sample` message (without its key and length).
fn sample_len(timestamp: i64) -> usize {
    1 + 8 + 1 + encoded_len_varint(timestamp as u64)
}

/// Writes one `timeseries` field: `labels` and the samples of `samples` (all of that series).
fn put_series<L>(out: &mut Vec<u8>, labels: LabelsView<'_>, samples: &[OutSample<L>]) {
    let label_len = |(name, value): (&str, &str)| field_len(name.len()) + field_len(value.len());
    let series_len: usize = labels
        .iter()
        .map(|l| field_len(label_len(l)))
        .sum::<usize>()
        + samples
            .iter()
            .map(|&(_, t, _)| field_len(sample_len(t)))
            .sum::<usize>();
    out.push(TIMESERIES_KEY);
    encode_varint(series_len as u64, out);
    for (name, value) in labels.iter() {
        out.push(LABELS_KEY);
        encode_varint(label_len((name, value)) as u64, out);
        put_field(out, NAME_KEY, name.as_bytes());
        put_field(out, VALUE_KEY, value.as_bytes());
    }
    for &(_, timestamp, value) in samples {
        out.push(SAMPLES_KEY);
        encode_varint(sample_len(timestamp) as u64, out);
        out.push(SAMPLE_VALUE_KEY);
        out.extend_from_slice(&value.to_le_bytes());
        out.push(SAMPLE_TIMESTAMP_KEY);
        encode_varint(timestamp as u64, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use m3_proto::Message;
    use m3_proto::prometheus::WriteRequest;
    use m3_storage::Labels;
    use proptest::prelude::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        Labels::new(pairs.iter().map(|(n, v)| (n.to_string(), v.to_string()))).unwrap()
    }

    fn decode(body: &Body) -> WriteRequest {
        let raw = snap::raw::Decoder::new()
            .decompress_vec(&body.bytes)
            .expect("snappy");
        WriteRequest::decode(raw.as_slice()).expect("a WriteRequest")
    }

    #[test]
    fn consecutive_samples_of_a_series_share_a_timeseries_and_chunks_hold_the_limit() {
        let up = labels(&[("__name__", "up"), ("job", "a")]);
        let up_copy = up.clone();
        let down = labels(&[("__name__", "down")]);
        let samples = [
            (&up, 1_000, 1.0),
            (&up_copy, 2_000, 2.0),
            (&down, -5, f64::NAN),
            (&up, 3_000, f64::INFINITY),
        ];
        let bodies = encode_requests(&samples, 3, &mut Vec::new());
        assert_eq!(bodies.len(), 2);
        assert_eq!((bodies[0].samples, bodies[1].samples), (3, 1));
        let first = decode(&bodies[0]);
        assert_eq!(first.timeseries.len(), 2);
        let names: Vec<(&str, &str)> = first.timeseries[0]
            .labels
            .iter()
            .map(|l| (l.name.as_str(), l.value.as_str()))
            .collect();
        assert_eq!(names, vec![("__name__", "up"), ("job", "a")]);
        let times: Vec<i64> = first.timeseries[0]
            .samples
            .iter()
            .map(|s| s.timestamp)
            .collect();
        assert_eq!(times, vec![1_000, 2_000]);
        assert_eq!(first.timeseries[1].samples[0].timestamp, -5);
        assert!(first.timeseries[1].samples[0].value.is_nan());
        assert_eq!(
            decode(&bodies[1]).timeseries[0].samples[0].value,
            f64::INFINITY
        );
    }

    /// A decoded sample: its labels, time and value bits.
    type DecodedPoint = (Vec<(String, String)>, i64, u64);

    proptest! {
        /// Whatever the labels, times and values, prost decodes every sample back in order.
        #[test]
        fn prost_decodes_what_is_written(
            series in prop::collection::vec(("[a-z_]{1,12}", ".{1,40}"), 1..5),
            points in prop::collection::vec((0usize..5, any::<i64>(), any::<f64>()), 1..60),
            max in 1usize..20,
        ) {
            let sets: Vec<Labels> = series
                .iter()
                .map(|(name, value)| labels(&[("__name__", name), ("v", value)]))
                .collect();
            let samples: Vec<OutSample<&Labels>> = points
                .iter()
                .map(|&(i, t, v)| (&sets[i % sets.len()], t, v))
                .collect();
            let bodies = encode_requests(&samples, max, &mut Vec::new());
            let mut decoded = Vec::new();
            for body in &bodies {
                prop_assert!(body.samples <= max);
                for ts in decode(body).timeseries {
                    let pairs: Vec<(String, String)> =
                        ts.labels.into_iter().map(|l| (l.name, l.value)).collect();
                    for s in ts.samples {
                        decoded.push((pairs.clone(), s.timestamp, s.value.to_bits()));
                    }
                }
            }
            let expected: Vec<DecodedPoint> = samples
                .iter()
                .map(|(l, t, v)| {
                    let pairs = l.iter().map(|(n, v)| (n.to_owned(), v.to_owned())).collect();
                    (pairs, *t, v.to_bits())
                })
                .collect();
            prop_assert_eq!(decoded, expected);
        }
    }
}
