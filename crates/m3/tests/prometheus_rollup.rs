//! A real Prometheus remote-writes its own metrics to the built `m3 local`, configured with a
//! rollup rule over one of Prometheus's counter families:
//!
//! ```yaml
//! filter: "__name__:prometheus_http_requests_total"
//! transforms: [Increase, rollup Sum by (code) → prometheus_http_requests_by_code]
//! ```
//!
//! Each `{code, handler}` series lives on the aggregator that owns it, which takes the increase
//! of its last value per 10s window and forwards it to the aggregator owning the rollup ID,
//! which sums the handlers of each code. The test then asks Prometheus for the raw samples it
//! holds itself and computes, per code and window, the sum over handlers of (last value in the
//! window − last value in the series' previous window with a sample; the whole value for a
//! series' first window). Every window ending between the first scrape and the cutoff must be
//! stored with exactly that value; any missing, extra or differing window fails the test with a
//! listing.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use m3_testkit::{PrometheusOptions, PrometheusProcess};
use serde_json::Value;
use support::{CONFIG, LocalProcess, now_ms};

const RESOLUTION_MS: i64 = 10_000;
/// How long Prometheus scrapes itself and remote-writes.
const RUN: Duration = Duration::from_secs(60);
/// Remote write's batch deadline and delivery.
const MARGIN_MS: i64 = 5_000;

/// Requests the test sends to Prometheus while it runs.
const API_TRAFFIC: [&str; 5] = [
    "/api/v1/status/buildinfo",
    "/api/v1/labels",
    "/api/v1/query?query=up",
    "/api/v1/query",
    "/-/healthy",
];

const FAMILY: &str = "prometheus_http_requests_total";
const ROLLUP: &str = "prometheus_http_requests_by_code";

const RULES: &str = r#"  downsample:
    rules:
      rollupRules:
        - name: requests by code
          filter: "__name__:prometheus_http_requests_total"
          transforms:
            - transform:
                type: "Increase"
            - rollup:
                metricName: "prometheus_http_requests_by_code"
                groupBy: ["code"]
                aggregations: ["Sum"]
          storagePolicies:
            - resolution: 10s
              retention: 2d
    remoteAggregator:"#;

fn window_end(t_ms: i64) -> i64 {
    t_ms.div_euclid(RESOLUTION_MS) * RESOLUTION_MS + RESOLUTION_MS
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollup_of_a_prometheus_counter_family_equals_the_increases_prometheus_holds() {
    let config = CONFIG
        .replace("  downsample:\n    remoteAggregator:", RULES)
        .replace("bufferPast: 30s", "bufferPast: 10s")
        .replace(
            "bufferDurationForPastTimedMetric: 30s",
            "bufferDurationForPastTimedMetric: 10s",
        );
    assert!(
        config.contains("rollupRules") && config.contains("bufferPast: 10s"),
        "the rules and buffers went into the config"
    );
    let mut local = LocalProcess::start_with("prometheus-rollup", &config, &[]).await;
    let mut prometheus = PrometheusProcess::start(&PrometheusOptions {
        scrape_interval: Duration::from_secs(1),
        remote_write_url: Some(format!("{}/api/v1/prom/remote/write", local.http())),
        batch_send_deadline: Duration::from_secs(1),
        ..PrometheusOptions::default()
    });

    // Besides its own scrapes, Prometheus serves some API traffic, so that the family has a
    // series per handler and two codes: 200, and 400 for a query without an expression.
    let client = reqwest::Client::new();
    let started = now_ms();
    let mut tick = 0u64;
    while now_ms() < started + RUN.as_millis() as i64 {
        assert!(
            prometheus.process().is_running(),
            "{}",
            prometheus.process()
        );
        assert!(local.is_running(), "m3 local exited");
        for (i, path) in API_TRAFFIC.iter().enumerate() {
            for _ in 0..(tick + i as u64) % 3 {
                let _ = client
                    .get(format!("{}{path}", prometheus.url()))
                    .send()
                    .await;
            }
        }
        tick += 1;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    // What Prometheus holds itself, up to the last window that ended MARGIN ago: every sample
    // of it has been remote-written.
    let cutoff = window_end(now_ms() - MARGIN_MS) - RESOLUTION_MS;
    let raw = prometheus_matrix(&prometheus, &format!("{FAMILY}[10m]")).await;
    assert!(
        raw.len() >= 5,
        "Prometheus holds {} series of {FAMILY}; a rollup across series needs several; {}",
        raw.len(),
        prometheus.process()
    );
    let first_scrape = raw
        .values()
        .flat_map(|points| points.iter().map(|(t, _)| *t))
        .min()
        .unwrap_or(i64::MAX);
    let expected: BTreeMap<(String, i64), f64> = sum_of_increases(&raw)
        .into_iter()
        .filter(|((_, end), _)| *end > first_scrape && *end <= cutoff)
        .collect();
    let windows = (cutoff - window_end(first_scrape)) / RESOLUTION_MS;
    assert!(
        windows >= 3,
        "only {windows} complete windows between the first scrape and the cutoff"
    );

    // The rollup as m3 stores it, once its windows up to the cutoff are flushed (forwarded
    // windows wait for their sources, bufferPast + 30s by default).
    let query = format!("{ROLLUP}[10m]");
    let headers = [
        ("M3-Metrics-Type", "aggregated"),
        ("M3-Storage-Policy", "10s:2d"),
    ];
    let codes: Vec<&String> = {
        let mut codes: Vec<&String> = expected.keys().map(|(code, _)| code).collect();
        codes.dedup();
        codes
    };
    let stored = local
        .wait_for_points(&query, &headers, |got| {
            let by_code = rollup_points(got);
            codes.iter().all(|code| {
                by_code
                    .get(*code)
                    .and_then(|points| points.keys().last())
                    .is_some_and(|t| *t >= cutoff)
            })
        })
        .await;
    let stored = rollup_points(&stored);

    let mut differences = Vec::new();
    let mut compared = 0;
    for ((code, end), want) in &expected {
        compared += 1;
        match stored.get(code).and_then(|points| points.get(end)) {
            Some(got) if got == want => {}
            Some(got) => {
                differences.push(format!("{{code={code}}} @{end}: want {want}, got {got}"))
            }
            None => differences.push(format!("{{code={code}}} @{end}: want {want}, missing")),
        }
    }
    for (code, points) in &stored {
        for (end, got) in points {
            if *end > first_scrape
                && *end <= cutoff
                && !expected.contains_key(&(code.clone(), *end))
            {
                differences.push(format!(
                    "{{code={code}}} @{end}: stored {got}, but no raw sample says so"
                ));
            }
        }
    }
    println!(
        "{} raw series of {FAMILY}, {} codes, {compared} rollup windows expected, {} differ",
        raw.len(),
        codes.len(),
        differences.len()
    );
    assert!(
        differences.is_empty(),
        "{} of {compared} rollup windows differ from Prometheus's own samples:\n  {}\n--- {}",
        differences.len(),
        differences.join("\n  "),
        prometheus.process()
    );
    let log = prometheus.process().log();
    for complaint in ["non-recoverable error", "Failed to send batch"] {
        assert!(
            !log.contains(complaint),
            "Prometheus reports remote-write errors ({complaint:?}); {}",
            prometheus.process()
        );
    }
    drop(prometheus);
    local.stop().await;
}

/// Raw series (labels, as a sorted `name=value` list) → points (ms, value) in time order.
type Raw = BTreeMap<Vec<(String, String)>, Vec<(i64, f64)>>;

/// A range query against Prometheus itself.
async fn prometheus_matrix(prometheus: &PrometheusProcess, query: &str) -> Raw {
    let url = format!(
        "{}/api/v1/query?query={}&time={}",
        prometheus.url(),
        support::url_encode(query),
        now_ms() as f64 / 1000.0
    );
    let body: Value = reqwest::get(&url)
        .await
        .expect("Prometheus answers")
        .json()
        .await
        .expect("Prometheus answers JSON");
    let mut raw = Raw::new();
    for series in body["data"]["result"].as_array().into_iter().flatten() {
        let mut labels: Vec<(String, String)> = series["metric"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(n, v)| (n.clone(), v.as_str().unwrap_or_default().to_string()))
            .collect();
        labels.sort();
        raw.insert(labels, points(&series["values"]));
    }
    raw
}

/// `[[seconds, "value"], …]` as (ms, value).
fn points(values: &Value) -> Vec<(i64, f64)> {
    values
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            let t = (p[0].as_f64().unwrap_or(0.0) * 1000.0).round() as i64;
            let v = p[1].as_str().unwrap_or("NaN").parse().unwrap_or(f64::NAN);
            (t, v)
        })
        .collect()
}

/// The stored rollup: code → window end → value.
fn rollup_points(result: &Value) -> BTreeMap<String, BTreeMap<i64, f64>> {
    let mut out = BTreeMap::new();
    for series in result["data"]["result"].as_array().into_iter().flatten() {
        let metric = &series["metric"];
        assert_eq!(metric["__name__"], ROLLUP, "{series}");
        assert_eq!(metric["__rollup__"], "true", "{series}");
        assert!(
            metric.get("handler").is_none(),
            "grouped by code only: {series}"
        );
        let code = metric["code"].as_str().unwrap_or_default().to_string();
        out.insert(code, points(&series["values"]).into_iter().collect());
    }
    out
}

/// Per (code, window end): the sum over the code's series of the increase of the series' last
/// value in the window over its last value in its previous window with a sample (a first
/// window counts whole; a decrease, a counter reset, contributes nothing).
fn sum_of_increases(raw: &Raw) -> BTreeMap<(String, i64), f64> {
    let mut sums: BTreeMap<(String, i64), f64> = BTreeMap::new();
    for (labels, points) in raw {
        let code = labels
            .iter()
            .find(|(n, _)| n == "code")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        let mut last_per_window: BTreeMap<i64, f64> = BTreeMap::new();
        for &(t, v) in points {
            last_per_window.insert(window_end(t), v);
        }
        let mut previous = 0.0;
        for (end, last) in last_per_window {
            if last >= previous {
                *sums.entry((code.clone(), end)).or_default() += last - previous;
            }
            previous = last;
        }
    }
    sums
}

/// The expected sums, on made-up series: increases per window, summed per code.
#[test]
fn increases_are_summed_per_code_and_window() {
    let series = |handler: &str, code: &str| {
        vec![
            ("code".to_string(), code.to_string()),
            ("handler".to_string(), handler.to_string()),
        ]
    };
    let raw: Raw = [
        // Windows ending 10s, 20s, 30s; nothing in the window ending at 40s; 50s.
        (
            series("/metrics", "200"),
            vec![
                (1_000, 1.0),
                (9_000, 2.0),
                (15_000, 5.0),
                (25_000, 6.0),
                (41_000, 9.0),
            ],
        ),
        // Starts in the window ending at 20s; a reset in the window ending at 30s.
        (
            series("/-/ready", "200"),
            vec![(12_000, 3.0), (22_000, 1.0)],
        ),
        (series("/api", "400"), vec![(5_000, 4.0)]),
    ]
    .into_iter()
    .collect();
    let sums = sum_of_increases(&raw);
    let want: BTreeMap<(String, i64), f64> = [
        (("200".to_string(), 10_000), 2.0),
        (("200".to_string(), 20_000), 3.0 + 3.0),
        (("200".to_string(), 30_000), 1.0),
        (("200".to_string(), 50_000), 3.0),
        (("400".to_string(), 10_000), 4.0),
    ]
    .into_iter()
    .collect();
    assert_eq!(sums, want);
}
