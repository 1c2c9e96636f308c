//! Remote-write decode: the project's borrowed decoder against the prost-generated one, on
//! Prometheus-shaped batches (one sample per series, ten labels, 2000 series per request as
//! Prometheus's default `max_samples_per_send`).

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use m3_coordinator::remote_write::RemoteWriteDecoder;
use m3_proto::Message;
use m3_proto::prometheus::{Label, Sample, TimeSeries, WriteRequest};

/// A request shaped like one Prometheus sends: 2000 series of a few metric families, each with
/// ten labels and one sample.
pub fn prometheus_shaped_request(series: usize) -> Vec<u8> {
    let timeseries = (0..series)
        .map(|i| {
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
            TimeSeries {
                labels: labels
                    .into_iter()
                    .map(|(name, value)| Label {
                        name: name.to_string(),
                        value,
                    })
                    .collect(),
                samples: vec![Sample {
                    value: i as f64,
                    timestamp: 1_700_000_000_000 + i as i64,
                }],
            }
        })
        .collect();
    let bytes = WriteRequest { timeseries }.encode_to_vec();
    snap::raw::Encoder::new()
        .compress_vec(&bytes)
        .expect("compressing a generated request")
}

fn decode(c: &mut Criterion) {
    let series = 2000;
    let body = prometheus_shaped_request(series);
    let mut group = c.benchmark_group("remote_write_decode");
    group.throughput(Throughput::Elements(series as u64));
    let mut decoder = RemoteWriteDecoder::new();
    group.bench_with_input(BenchmarkId::new("borrowed", series), &body, |b, body| {
        b.iter(|| {
            let decoded = decoder.decode_snappy(body).expect("valid body");
            let mut labels = 0usize;
            for s in decoded.series() {
                labels += s.labels().count() + s.samples().len();
            }
            labels
        })
    });
    let mut scratch = Vec::new();
    group.bench_with_input(BenchmarkId::new("prost", series), &body, |b, body| {
        b.iter(|| {
            scratch.clear();
            scratch.resize(snap::raw::decompress_len(body).expect("snappy"), 0);
            snap::raw::Decoder::new()
                .decompress(body, &mut scratch)
                .expect("snappy");
            let req = WriteRequest::decode(scratch.as_slice()).expect("valid body");
            req.timeseries
                .iter()
                .map(|s| s.labels.len() + s.samples.len())
                .sum::<usize>()
        })
    });
    group.finish();
}

criterion_group!(benches, decode);
criterion_main!(benches);
