//! The PromQL engine against the real Prometheus: the same generated data is written to a
//! Prometheus (Debian's `prometheus`, remote-write receiver enabled, started by the test) and
//! to the embedded store, then every query of the corpus is asked of both, as instant queries
//! at three times and as range queries at two steps. Answers must agree: the same result type,
//! the same series, equal timestamps, values equal within 1e-9 relative (or 1e-12 absolute
//! near zero) with NaN equal to NaN. A query both refuse agrees. Differences Prometheus
//! documents as its own nondeterminism (the order of a vector outside `sort`) are not compared;
//! the known exceptions are listed in docs/promql.md.
//!
//! The test prints the number of comparisons that agree and lists every disagreement.

mod compare;
mod corpus;
mod data;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use m3_proto::prometheus::{Label, Sample, TimeSeries, WriteRequest};
use m3_query::{Engine, NamespaceSource};
use m3_storage::{Labels, NamespaceConfig, Store};
use m3_testkit::{PrometheusOptions, PrometheusProcess};
use prost::Message;

const NAMESPACE: &str = "default";

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Sends the series to Prometheus' remote-write receiver, a few series per request.
async fn write_to_prometheus(
    client: &reqwest::Client,
    url: &str,
    series: &[data::GeneratedSeries],
) {
    for chunk in series.chunks(8) {
        let request = WriteRequest {
            timeseries: chunk
                .iter()
                .map(|s| TimeSeries {
                    labels: s
                        .labels
                        .iter()
                        .map(|(n, v)| Label {
                            name: n.clone(),
                            value: v.clone(),
                        })
                        .collect(),
                    samples: s
                        .samples
                        .iter()
                        .map(|&(t, v)| Sample {
                            value: v,
                            timestamp: t,
                        })
                        .collect(),
                })
                .collect(),
        };
        let body = snap::raw::Encoder::new()
            .compress_vec(&request.encode_to_vec())
            .expect("snappy");
        let response = client
            .post(format!("{url}/api/v1/write"))
            .header("Content-Encoding", "snappy")
            .header("Content-Type", "application/x-protobuf")
            .header("X-Prometheus-Remote-Write-Version", "0.1.0")
            .body(body)
            .send()
            .await
            .expect("remote write to prometheus");
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        assert!(
            status.is_success(),
            "prometheus refused the remote write: {status} {text}"
        );
    }
}

fn write_to_store(store: &Store, series: &[data::GeneratedSeries]) {
    for s in series {
        let labels = Labels::new(s.labels.iter().map(|(n, v)| (n.as_str(), v.as_str())))
            .expect("valid labels");
        store
            .write_series(NAMESPACE, &labels, &s.samples)
            .expect("write to store");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promql_answers_equal_prometheus() {
    let prometheus = PrometheusProcess::start(&PrometheusOptions {
        remote_write_receiver: true,
        // Also Prometheus' evaluation interval: the step of a subquery that names none.
        scrape_interval: Duration::from_secs(60),
        ..PrometheusOptions::default()
    });
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(
        dir.path(),
        vec![NamespaceConfig::unaggregated(
            NAMESPACE,
            Duration::from_secs(48 * 3600),
        )],
    )
    .expect("open store");

    // 40 minutes of data ending a minute ago: inside Prometheus' head block, which refuses
    // samples older than about an hour before its newest.
    let end = (now_ms() / 60_000 - 1) * 60_000;
    let start = end - 40 * 60_000;
    let series = data::generate(start, end);
    let client = reqwest::Client::new();
    write_to_prometheus(&client, &prometheus.url(), &series).await;
    write_to_store(&store, &series);

    let engine = Engine::new();
    let source = NamespaceSource::new(store.clone(), NAMESPACE);
    let instant_times = [end, end - 7 * 60_000 - 500, start + 3 * 60_000 + 250];
    let ranges = [
        (start, end, 60_000),
        (start + 5 * 60_000, end - 60_000, 37_000),
    ];
    let mut report = compare::Report::default();
    for query in corpus::queries() {
        for &t in &instant_times {
            let ours = engine.instant_query(&source, &query, t);
            let theirs = compare::prometheus_instant(&client, &prometheus.url(), &query, t).await;
            report.record(&query, &format!("instant at {t}"), ours, theirs);
        }
        for &(s, e, step) in &ranges {
            let ours = engine.range_query(&source, &query, s, e, step);
            let theirs =
                compare::prometheus_range(&client, &prometheus.url(), &query, s, e, step).await;
            report.record(&query, &format!("range {s}..{e} step {step}"), ours, theirs);
        }
    }
    println!(
        "PromQL differential: {} of {} comparisons agree ({} queries, {} instant times, {} \
         ranges; {} answers with data, {} both refused)",
        report.agreed,
        report.total(),
        corpus::queries().len(),
        instant_times.len(),
        ranges.len(),
        report.with_data,
        report.both_refused,
    );
    // Agreement must not come from both sides answering nothing.
    assert!(
        report.with_data * 10 >= report.total() * 8,
        "only {} of {} answers hold data: the data or the times are wrong",
        report.with_data,
        report.total()
    );
    assert!(
        report.both_refused * 20 <= report.total(),
        "{} comparisons agree only because both refused the query",
        report.both_refused
    );
    assert!(
        report.disagreements.is_empty(),
        "{} of {} comparisons disagree with Prometheus:\n{}",
        report.disagreements.len(),
        report.total(),
        report
            .disagreements
            .iter()
            .take(60)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}
