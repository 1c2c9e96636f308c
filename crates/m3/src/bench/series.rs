//! The generated series and their encoding: every series' labels are encoded once, at start, as
//! the label fields of a `TimeSeries`; a request is then the concatenation, per series, of the
//! `timeseries` field header, those label bytes and the one `Sample` field (see the parent
//! module's docs).

use std::ops::Range;

use m3_proto::Message;
use m3_proto::prometheus::{Label, Sample, TimeSeries};

/// Metric families, after the prefix: what a Kubernetes Prometheus scrapes most of.
pub(super) const FAMILIES: &[&str] = &[
    "http_requests_total",
    "http_request_duration_seconds_sum",
    "process_cpu_seconds_total",
    "process_resident_memory_bytes",
    "go_goroutines",
    "container_cpu_usage_seconds_total",
    "container_memory_working_set_bytes",
    "up",
];

pub(super) const JOBS: &[&str] = &["api", "web", "checkout", "search", "node-exporter"];
pub(super) const NAMESPACES: &[&str] =
    &["default", "payments", "search", "monitoring", "kube-system"];
pub(super) const REGIONS: &[&str] = &["us-east-1", "eu-west-1", "ap-south-1"];

/// The labels of series `index`, sorted by name: `__name__`, `instance` (unique within the
/// family), then target labels, then `label_NN` fillers when more are asked for.
pub(super) fn series_labels(index: usize, labels: usize, prefix: &str) -> Vec<(String, String)> {
    let family = index % FAMILIES.len();
    let n = index / FAMILIES.len();
    let job = JOBS[n % JOBS.len()];
    let node = n / 20;
    let mut pairs = vec![
        (
            "__name__".to_string(),
            format!("{prefix}{}", FAMILIES[family]),
        ),
        (
            "instance".to_string(),
            format!(
                "10.{}.{}.{}:{}",
                (n >> 16) & 0xff,
                (n >> 8) & 0xff,
                n & 0xff,
                9100 + (n >> 24)
            ),
        ),
    ];
    let targets: [(&str, String); 10] = [
        ("job", job.to_string()),
        (
            "pod",
            format!("{job}-{:08x}-{:05}", hash32(n as u64), n % 100_000),
        ),
        ("namespace", NAMESPACES[n % NAMESPACES.len()].to_string()),
        ("container", job.to_string()),
        ("node", format!("node-{node:04}")),
        ("service", format!("{job}-svc")),
        ("endpoint", "http-metrics".to_string()),
        ("region", REGIONS[node % REGIONS.len()].to_string()),
        (
            "zone",
            format!(
                "{}{}",
                REGIONS[node % REGIONS.len()],
                ['a', 'b', 'c'][node % 3]
            ),
        ),
        (
            "env",
            if n.is_multiple_of(10) {
                "staging"
            } else {
                "production"
            }
            .to_string(),
        ),
    ];
    for (name, value) in targets.into_iter().take(labels.saturating_sub(2)) {
        pairs.push((name.to_string(), value));
    }
    for k in pairs.len()..labels {
        pairs.push((format!("label_{k:02}"), format!("value_{}", n % (k * 7))));
    }
    pairs.sort_by(|a, b| a.0.cmp(&b.0));
    pairs
}

/// A cheap integer mix (splitmix64's finaliser) for label values that look random.
pub(super) fn hash32(x: u64) -> u32 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (z ^ (z >> 31)) as u32
}

/// Every series' labels, encoded once as the label fields of a `TimeSeries`.
#[derive(Debug)]
pub(super) struct SeriesSet {
    /// The label fields of all series, back to back.
    pub(super) bytes: Vec<u8>,
    /// Series `i` is `bytes[offsets[i]..offsets[i + 1]]`.
    pub(super) offsets: Vec<usize>,
}

/// Key of field 1 (`WriteRequest.timeseries`), wire type 2 (length-delimited).
pub(super) const TIMESERIES_KEY: u8 = 1 << 3 | 2;
/// Key of field 2 (`TimeSeries.samples`), wire type 2.
pub(super) const SAMPLES_KEY: u8 = 2 << 3 | 2;

impl SeriesSet {
    pub(super) fn generate(series: usize, labels: usize, prefix: &str) -> SeriesSet {
        let mut bytes = Vec::new();
        let mut offsets = Vec::with_capacity(series + 1);
        offsets.push(0);
        for i in 0..series {
            let timeseries = TimeSeries {
                labels: series_labels(i, labels, prefix)
                    .into_iter()
                    .map(|(name, value)| Label { name, value })
                    .collect(),
                samples: Vec::new(),
            };
            timeseries
                .encode(&mut bytes)
                .expect("a Vec<u8> grows as needed");
            offsets.push(bytes.len());
        }
        SeriesSet { bytes, offsets }
    }

    pub(super) fn len(&self) -> usize {
        self.offsets.len() - 1
    }

    pub(super) fn labels(&self, index: usize) -> &[u8] {
        &self.bytes[self.offsets[index]..self.offsets[index + 1]]
    }

    /// Encodes the `WriteRequest` with one sample at `timestamp_ms` for each series of `range`
    /// into `out` (cleared first).
    pub(super) fn encode_request(
        &self,
        range: Range<usize>,
        round: u64,
        timestamp_ms: i64,
        out: &mut Vec<u8>,
    ) {
        out.clear();
        for index in range {
            let labels = self.labels(index);
            let sample = Sample {
                value: sample_value(index, round),
                timestamp: timestamp_ms,
            };
            let sample_len = sample.encoded_len();
            let series_len =
                labels.len() + 1 + prost::length_delimiter_len(sample_len) + sample_len;
            out.push(TIMESERIES_KEY);
            prost::encode_length_delimiter(series_len, out).expect("a Vec<u8> grows as needed");
            out.extend_from_slice(labels);
            out.push(SAMPLES_KEY);
            sample
                .encode_length_delimited(out)
                .expect("a Vec<u8> grows as needed");
        }
    }
}

/// The value of series `index` in `round`: a counter that grows at a per-series pace.
pub(super) fn sample_value(index: usize, round: u64) -> f64 {
    (round as f64) * ((index % 7) + 1) as f64 + (index % 3) as f64 * 0.25
}

#[cfg(test)]
mod tests {
    use super::*;
    use m3_proto::prometheus::WriteRequest;

    #[test]
    fn request_bytes_are_prosts_write_request() {
        let set = SeriesSet::generate(50, 10, "m3bench_");
        let mut out = Vec::new();
        set.encode_request(10..30, 3, 1_700_000_000_123, &mut out);
        let expected = WriteRequest {
            timeseries: (10..30)
                .map(|i| TimeSeries {
                    labels: series_labels(i, 10, "m3bench_")
                        .into_iter()
                        .map(|(name, value)| Label { name, value })
                        .collect(),
                    samples: vec![Sample {
                        value: sample_value(i, 3),
                        timestamp: 1_700_000_000_123,
                    }],
                })
                .collect(),
        };
        assert_eq!(out, expected.encode_to_vec());
        // Round 0 has zero values, which proto3 leaves out.
        set.encode_request(0..7, 0, 5, &mut out);
        let decoded = WriteRequest::decode(out.as_slice()).expect("decodes");
        assert_eq!(decoded.timeseries.len(), 7);
        assert_eq!(decoded.timeseries[0].samples[0].value, 0.0);
        assert_eq!(decoded.timeseries[0].samples[0].timestamp, 5);
    }

    #[test]
    fn series_are_distinct_sorted_and_prometheus_shaped() {
        for labels in [2, 5, 10, 12, 15] {
            let mut seen = std::collections::HashSet::new();
            for i in 0..5_000 {
                let pairs = series_labels(i, labels, "p_");
                assert_eq!(pairs.len(), labels);
                assert!(pairs.windows(2).all(|w| w[0].0 < w[1].0), "{pairs:?}");
                assert!(pairs.iter().all(|(n, v)| !n.is_empty() && !v.is_empty()));
                assert!(pairs[0].0 == "__name__" && pairs[0].1.starts_with("p_"));
                assert!(seen.insert(pairs), "series {i} repeats");
            }
        }
    }
}
