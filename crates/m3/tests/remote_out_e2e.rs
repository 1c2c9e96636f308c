//! Remote write out against the real endpoints: the built `m3 local` sends its raw samples to a
//! VictoriaMetrics and its 10s aggregated output to a Prometheus (remote-write receiver), both
//! started by the test, while keeping them in its own store too.
//!
//! A writer sends one sample per second for each of eight series the whole time. Ten seconds
//! in, both endpoints go down for 30 seconds, then come back with their data. Afterwards:
//!
//! * VictoriaMetrics holds exactly the samples `m3 local` accepted: every one, with its value,
//!   and no other;
//! * Prometheus holds exactly the 10s windows `m3 local` stored itself, and those are one per
//!   series for every 10s window the writer wrote into;
//! * nothing was counted as dropped, and both endpoints saw failed sends that were retried.
//!
//! A second test runs `m3 local` with `backend: prom-remote`: no namespaces, nothing stored, the
//! endpoints' storage policies are what the aggregators produce.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use m3_proto::Message;
use m3_proto::prometheus::WriteRequest;
use m3_testkit::{PrometheusOptions, PrometheusProcess, VictoriaMetricsProcess};
use serde_json::Value;
use support::{ByLabels, CONFIG, LocalProcess, now_ms, points_by_labels, series, url_encode};
use tokio::sync::Mutex;

const SERIES: usize = 8;
const AGG_10S: &[(&str, &str)] = &[
    ("M3-Metrics-Type", "aggregated"),
    ("M3-Storage-Policy", "10s:2d"),
];
const RESOLUTION_MS: i64 = 10_000;
/// What the test selects from every store.
const QUERY: &str = "rwo_gauge[10m]";

/// The endpoints both tests send to: a VictoriaMetrics for raw samples and a Prometheus
/// receiving remote writes for the 10s aggregates.
fn start_endpoints() -> (VictoriaMetricsProcess, PrometheusProcess) {
    let vm = VictoriaMetricsProcess::start();
    let prometheus = PrometheusProcess::start(&PrometheusOptions {
        // Its own scrapes are not what the test reads; keep them rare.
        scrape_interval: Duration::from_secs(60),
        remote_write_receiver: true,
        // Aggregated output redelivered after an outage may be older than what got through.
        out_of_order_time_window: Some(Duration::from_secs(3600)),
        ..PrometheusOptions::default()
    });
    (vm, prometheus)
}

/// `config` (the test config, or a variant) with 10s past buffers, so windows are flushed soon,
/// and `backend` lines followed by the endpoints block (raw → `vm`, 10s:2d → `prometheus`).
fn with_endpoints(
    config: &str,
    backend: &str,
    vm: &VictoriaMetricsProcess,
    prometheus: &PrometheusProcess,
) -> String {
    config
        .replace("bufferPast: 30s", "bufferPast: 10s")
        .replace(
            "bufferDurationForPastTimedMetric: 30s",
            "bufferDurationForPastTimedMetric: 10s",
        )
        .replace(
            "  writeBuffers:",
            &format!(
                "{backend}  prometheusRemoteBackend:\n    endpoints:\n      - name: raw\n        address: {}\n      - name: agg10s\n        address: {}/api/v1/write\n        storagePolicy:\n          resolution: 10s\n          retention: 2d\n    retry:\n      initialBackoff: 100ms\n      maxBackoff: 1s\n  writeBuffers:",
                vm.remote_write_url(),
                prometheus.url()
            ),
        )
}

/// A writer task (see [`write_until`]) against `local`: what it got accepted, and the flag
/// that stops it.
fn start_writer(
    local: &LocalProcess,
) -> (
    tokio::task::JoinHandle<()>,
    Arc<Mutex<ByLabels>>,
    Arc<AtomicBool>,
) {
    let accepted: Arc<Mutex<ByLabels>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn(write_until(
        format!("{}/api/v1/prom/remote/write", local.http()),
        Arc::clone(&accepted),
        Arc::clone(&stop),
    ));
    (writer, accepted, stop)
}

/// Per series, how many 10s windows its points fall in.
fn windows_per_series(points: &ByLabels) -> BTreeMap<Vec<(String, String)>, usize> {
    points
        .iter()
        .map(|(labels, points)| {
            let mut windows: Vec<i64> = points.iter().map(|(t, _)| t / RESOLUTION_MS).collect();
            windows.dedup();
            (labels.clone(), windows.len())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_down_for_30s_receive_everything_once_back() {
    let (vm, prometheus) = start_endpoints();
    let config = with_endpoints(CONFIG, "", &vm, &prometheus);
    let local = LocalProcess::start_with("remote-out", &config, &[]).await;
    // The writer: one sample per series per second until told to stop; what was accepted.
    let (writer, accepted, stop) = start_writer(&local);

    tokio::time::sleep(Duration::from_secs(10)).await;
    let (mut vm, mut prometheus) = tokio::task::spawn_blocking(move || {
        let (mut vm, mut prometheus) = (vm, prometheus);
        vm.stop();
        prometheus.stop();
        (vm, prometheus)
    })
    .await
    .expect("stops");
    tokio::time::sleep(Duration::from_secs(30)).await;
    let queued_in_outage = metric_sum(&local, "m3coordinator_remote_out_queued_samples").await;
    (vm, prometheus) = tokio::task::spawn_blocking(move || {
        vm.restart();
        prometheus.restart();
        (vm, prometheus)
    })
    .await
    .expect("restarts");
    tokio::time::sleep(Duration::from_secs(10)).await;
    stop.store(true, Ordering::SeqCst);
    writer.await.expect("writer");
    let accepted = accepted.lock().await.clone();
    let sent: usize = accepted.values().map(Vec::len).sum();
    assert!(
        accepted.len() == SERIES && sent >= SERIES * 40,
        "the writer got {sent} samples of {} series accepted",
        accepted.len()
    );
    assert!(
        queued_in_outage > 0.0,
        "samples were queued for the endpoints while they were down"
    );

    // Raw: VictoriaMetrics holds exactly what was accepted.
    let vm_url = vm.url();
    let raw = wait_until_equal(&accepted, || query_points(&vm_url, QUERY, &[])).await;
    compare("VictoriaMetrics (raw)", &accepted, &raw);

    // Aggregated: m3 local's own 10s namespace has a window per series for every window written
    // into (each flushed once its end + 10s past buffer + resolution has passed).
    let expected_windows = windows_per_series(&accepted);
    let local_url = local.http().to_string();
    let mut stored = ByLabels::new();
    for _ in 0..120 {
        stored = query_points(&local_url, QUERY, AGG_10S).await;
        let counts: BTreeMap<Vec<(String, String)>, usize> =
            stored.iter().map(|(l, p)| (l.clone(), p.len())).collect();
        if counts == expected_windows {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let counts: BTreeMap<Vec<(String, String)>, usize> =
        stored.iter().map(|(l, p)| (l.clone(), p.len())).collect();
    assert_eq!(
        counts, expected_windows,
        "m3 local's 10s namespace: windows per series"
    );
    // Prometheus holds exactly those windows.
    let prometheus_url = prometheus.url();
    let received = wait_until_equal(&stored, || query_points(&prometheus_url, QUERY, &[])).await;
    compare("Prometheus (10s aggregated)", &stored, &received);

    // Nothing dropped; the outage was seen and retried through; the queues are empty.
    let (_, metrics) = local.get(&format!("{}/metrics", local.http())).await;
    assert!(
        !metrics.contains("m3coordinator_remote_out_samples_dropped_total{"),
        "nothing dropped:\n{metrics}"
    );
    for endpoint in ["raw", "agg10s"] {
        let retries = metric_value(
            &metrics,
            &format!("m3coordinator_remote_out_send_retries_total{{endpoint=\"{endpoint}\"}}"),
        );
        assert!(
            retries > 0.0,
            "{endpoint}: sends failed while it was down and were retried:\n{metrics}"
        );
        let queued = metric_value(
            &metrics,
            &format!("m3coordinator_remote_out_queued_samples{{endpoint=\"{endpoint}\"}}"),
        );
        assert_eq!(queued, 0.0, "{endpoint}: queue empty at the end");
    }
    local.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prom_remote_backend_stores_nothing_and_sends_everything() {
    let (vm, prometheus) = start_endpoints();
    let clusters_start = CONFIG
        .find("  clusters:")
        .expect("the test config has clusters");
    let clusters_end = CONFIG.find("  storage:").expect("and storage after them");
    let without_clusters = format!("{}{}", &CONFIG[..clusters_start], &CONFIG[clusters_end..]);
    let config = with_endpoints(
        &without_clusters,
        "  backend: prom-remote\n",
        &vm,
        &prometheus,
    );
    let local = LocalProcess::start_with("prom-remote", &config, &[]).await;
    let (writer, accepted, stop) = start_writer(&local);
    tokio::time::sleep(Duration::from_secs(15)).await;
    stop.store(true, Ordering::SeqCst);
    writer.await.expect("writer");
    let accepted = accepted.lock().await.clone();
    assert_eq!(accepted.len(), SERIES, "every series was accepted");

    let vm_url = vm.url();
    let raw = wait_until_equal(&accepted, || query_points(&vm_url, QUERY, &[])).await;
    compare("VictoriaMetrics (raw)", &accepted, &raw);

    // One 10s window per series for every window written into, in Prometheus only.
    let expected_windows = windows_per_series(&accepted);
    let mut counts = BTreeMap::new();
    for _ in 0..120 {
        let windows = query_points(&prometheus.url(), QUERY, &[]).await;
        counts = windows.iter().map(|(l, p)| (l.clone(), p.len())).collect();
        if counts == expected_windows {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(
        counts, expected_windows,
        "Prometheus: 10s windows per series"
    );

    // Output aggregated elsewhere, written with M3's headers, goes to the endpoint of its
    // policy as it is.
    let direct_time = now_ms() - 5_000;
    let request = WriteRequest {
        timeseries: vec![series(
            &[("__name__", "rwo_direct")],
            &[(direct_time, 42.5)],
        )],
    };
    let body = snap::raw::Encoder::new()
        .compress_vec(&request.encode_to_vec())
        .expect("compress");
    let answer = reqwest::Client::new()
        .post(format!("{}/api/v1/prom/remote/write", local.http()))
        .header("Content-Encoding", "snappy")
        .header("Content-Type", "application/x-protobuf")
        .header("M3-Metrics-Type", "aggregated")
        .header("M3-Storage-Policy", "10s:2d")
        .body(body)
        .send()
        .await
        .expect("answers");
    assert_eq!(answer.status().as_u16(), 200);
    let mut direct = ByLabels::new();
    for _ in 0..60 {
        direct = query_points(&prometheus.url(), "rwo_direct[10m]", &[]).await;
        if !direct.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(
        direct.into_values().collect::<Vec<_>>(),
        vec![vec![(direct_time, 42.5)]],
        "the aggregated write reached Prometheus as it was"
    );

    // The coordinator itself holds nothing and says so.
    let (status, body) = local
        .get(&format!(
            "{}/api/v1/query?query={}",
            local.http(),
            url_encode(QUERY)
        ))
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("stores nothing (backend: prom-remote)"),
        "{body}"
    );
    let (_, metrics) = local.get(&format!("{}/metrics", local.http())).await;
    assert!(
        !metrics.contains("m3coordinator_remote_out_samples_dropped_total{"),
        "nothing dropped:\n{metrics}"
    );
    assert_eq!(
        metric_value(&metrics, "m3coordinator_samples_stored_raw_total"),
        0.0,
        "nothing stored raw"
    );
    assert!(
        metric_value(&metrics, "m3coordinator_samples_received_total") >= (SERIES * 10) as f64,
        "{metrics}"
    );
    local.stop().await;
}

/// Sends one sample per series per second to `url` until `stop`; records what got a 200.
async fn write_until(url: String, accepted: Arc<Mutex<ByLabels>>, stop: Arc<AtomicBool>) {
    let client = reqwest::Client::new();
    let mut round = 0u32;
    while !stop.load(Ordering::SeqCst) {
        let t = now_ms();
        let names: Vec<String> = (0..SERIES).map(|i| format!("s{i}")).collect();
        let request = WriteRequest {
            timeseries: names
                .iter()
                .enumerate()
                .map(|(i, name)| {
                    let value = f64::from(round) * (i as f64 + 1.0) + 0.5;
                    series(
                        &[("__name__", "rwo_gauge"), ("series", name.as_str())],
                        &[(t, value)],
                    )
                })
                .collect(),
        };
        let body = snap::raw::Encoder::new()
            .compress_vec(&request.encode_to_vec())
            .expect("compress");
        let answer = client
            .post(&url)
            .header("Content-Encoding", "snappy")
            .header("Content-Type", "application/x-protobuf")
            .body(body)
            .send()
            .await;
        if let Ok(response) = answer
            && response.status().is_success()
        {
            let mut accepted = accepted.lock().await;
            for ts in &request.timeseries {
                let mut labels: Vec<(String, String)> = ts
                    .labels
                    .iter()
                    .map(|l| (l.name.clone(), l.value.clone()))
                    .collect();
                labels.sort();
                let points = accepted.entry(labels).or_default();
                points.extend(ts.samples.iter().map(|s| (s.timestamp, s.value)));
            }
        }
        round += 1;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Every series of a matrix query at `base`, by labels.
async fn query_points(base: &str, query: &str, headers: &[(&str, &str)]) -> ByLabels {
    let client = reqwest::Client::new();
    let mut request = client.get(format!(
        "{base}/api/v1/query?query={}&time={}",
        url_encode(query),
        now_ms() / 1000 + 1
    ));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let Ok(response) = request.send().await else {
        return ByLabels::new();
    };
    let Ok(body) = response.json::<Value>().await else {
        return ByLabels::new();
    };
    points_by_labels(&body)
}

/// Polls `read` (up to 60 s) until it returns `expected`; the last answer.
async fn wait_until_equal<F, Fut>(expected: &ByLabels, mut read: F) -> ByLabels
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ByLabels>,
{
    let mut got = ByLabels::new();
    for _ in 0..120 {
        got = read().await;
        if &got == expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    got
}

/// Fails listing every series whose points in `got` are not exactly those of `expected`
/// (sorted by time): what is missing, and what is extra or differs.
fn compare(what: &str, expected: &ByLabels, got: &ByLabels) {
    let mut problems = Vec::new();
    let mut total = 0;
    for (labels, points) in expected {
        total += points.len();
        let mut want = points.clone();
        want.sort_by_key(|p| p.0);
        let mut theirs = got.get(labels).cloned().unwrap_or_default();
        theirs.sort_by_key(|p| p.0);
        if theirs != want {
            let missing: Vec<&(i64, f64)> = want.iter().filter(|p| !theirs.contains(p)).collect();
            let extra: Vec<&(i64, f64)> = theirs.iter().filter(|p| !want.contains(p)).collect();
            problems.push(format!(
                "{labels:?}: {} points instead of {}; missing {missing:?}, extra or differing {extra:?}",
                theirs.len(),
                want.len()
            ));
        }
    }
    for labels in got.keys().filter(|l| !expected.contains_key(*l)) {
        problems.push(format!("{labels:?}: a series that should not be there"));
    }
    assert!(
        problems.is_empty(),
        "{what}: {} series of {} ({total} points) wrong:\n{}",
        problems.len(),
        expected.len(),
        problems.join("\n")
    );
}

/// The value of the exposition line of `series` (name and labels, exactly); fails when the
/// coordinator does not expose it.
fn metric_value(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("{series} is not in the coordinator's metrics:\n{metrics}"))
}

/// The sum of every series of metric `name` in the coordinator's `/metrics`.
async fn metric_sum(local: &LocalProcess, name: &str) -> f64 {
    let (_, metrics) = local.get(&format!("{}/metrics", local.http())).await;
    metrics
        .lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
