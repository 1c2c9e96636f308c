//! The input shared by the coordinator's benches: a remote-write request shaped like those
//! Prometheus sends.

use m3_proto::Message;
use m3_proto::prometheus::{Label, Sample, TimeSeries, WriteRequest};

/// Series per request: Prometheus's default `max_samples_per_send`, one sample each.
pub(crate) const SERIES: usize = 2000;

/// The ten labels of series `i` (sorted by name, as Prometheus sends them), from a few metric
/// families.
pub(crate) fn prometheus_shaped_labels(i: usize) -> Vec<Label> {
    let labels = [
        ("__name__", format!("http_requests_total_{}", i % 20)),
        ("code", format!("{}", 200 + (i % 5))),
        ("handler", format!("/api/v1/endpoint/{}", i % 50)),
        ("instance", format!("10.0.{}.{}:9100", i % 7, i % 250)),
        ("job", "node-exporter".to_string()),
        ("method", ["GET", "POST", "PUT"][i % 3].to_string()),
        ("namespace", "production".to_string()),
        ("pod", format!("api-server-7d9f8b6c5-{:05}", i)),
        ("region", "eu-west-1".to_string()),
        ("zone", "eu-west-1a".to_string()),
    ];
    labels
        .into_iter()
        .map(|(name, value)| Label {
            name: name.to_string(),
            value,
        })
        .collect()
}

/// An uncompressed request of `series` series, each with ten labels and one sample.
pub(crate) fn prometheus_shaped_proto(series: usize) -> Vec<u8> {
    let timeseries = (0..series)
        .map(|i| TimeSeries {
            labels: prometheus_shaped_labels(i),
            samples: vec![Sample {
                value: i as f64,
                timestamp: 1_700_000_000_000 + i as i64,
            }],
        })
        .collect();
    WriteRequest { timeseries }.encode_to_vec()
}

/// The same request as Prometheus puts it on the wire: a snappy block.
pub(crate) fn prometheus_shaped_request(series: usize) -> Vec<u8> {
    snap::raw::Encoder::new()
        .compress_vec(&prometheus_shaped_proto(series))
        .expect("compressing a generated request")
}
