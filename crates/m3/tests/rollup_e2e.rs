//! Rollup rules through the built `m3 local`: counters of many series are rolled up across
//! series, window by window, and the stored rollup equals what the written samples say.
//!
//! Two rules over the same counter family (`e2e_requests_total{route, pod}`):
//!
//! * `Increase → rollup Sum by (route) → Add`: the aggregator owning each source series takes
//!   the per-window increase of its last value, forwards it to the aggregator owning the rollup
//!   ID, which sums the sources and keeps a running total;
//! * `rollup Sum by (route)` as the first step: the coordinator sends every sample under the
//!   rollup ID, which sums all samples of the window.
//!
//! and a mapping rule with `tags`: each series' Min per window, written under the series' ID
//! with `tier="gold"` added.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use m3_proto::Message;
use m3_proto::prometheus::{Label, Sample, TimeSeries, WriteRequest};
use support::{CONFIG, LocalProcess, now_ms};

const ROUTES: usize = 3;
const PODS: usize = 4;
const RESOLUTION_MS: i64 = 10_000;

const RULES: &str = r#"  downsample:
    rules:
      mappingRules:
        - name: min per series, tagged
          filter: "__name__:e2e_requests_total"
          aggregations: ["Min"]
          storagePolicies:
            - resolution: 10s
              retention: 2d
          tags:
            - name: tier
              value: gold
      rollupRules:
        - name: requests by route
          filter: "__name__:e2e_requests_total"
          transforms:
            - transform:
                type: "Increase"
            - rollup:
                metricName: "e2e_requests_by_route"
                groupBy: ["route"]
                aggregations: ["Sum"]
            - transform:
                type: "Add"
          storagePolicies:
            - resolution: 10s
              retention: 2d
        - name: samples by route
          filter: "__name__:e2e_requests_total"
          transforms:
            - rollup:
                metricName: "e2e_samples_by_route"
                groupBy: ["route"]
                aggregations: ["Sum"]
          storagePolicies:
            - resolution: 10s
              retention: 2d
    remoteAggregator:"#;

fn window_end(t_ms: i64) -> i64 {
    t_ms.div_euclid(RESOLUTION_MS) * RESOLUTION_MS + RESOLUTION_MS
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollup_rules_sum_across_series_window_by_window() {
    let config = CONFIG
        .replace("  downsample:\n    remoteAggregator:", RULES)
        .replace("bufferPast: 30s", "bufferPast: 5s")
        .replace(
            "bufferDurationForPastTimedMetric: 30s",
            "bufferDurationForPastTimedMetric: 5s",
        );
    assert!(
        config.contains("rollupRules"),
        "the rules went into the config"
    );
    let local = LocalProcess::start_with("rollup", &config, &[]).await;

    // series (route, pod) → (timestamp, cumulative value) per write.
    let mut written: BTreeMap<(usize, usize), Vec<(i64, f64)>> = BTreeMap::new();
    let mut counters = [0u64; ROUTES * PODS];
    let started = now_ms();
    let mut tick = tokio::time::interval(Duration::from_millis(700));
    for round in 0..60u64 {
        tick.tick().await;
        let t = now_ms();
        let mut timeseries = Vec::new();
        for route in 0..ROUTES {
            for pod in 0..PODS {
                let i = route * PODS + pod;
                counters[i] += 1 + (round * 7 + i as u64) % 5;
                let value = counters[i] as f64;
                written.entry((route, pod)).or_default().push((t, value));
                timeseries.push(TimeSeries {
                    labels: vec![
                        label("__name__", "e2e_requests_total"),
                        label("pod", &format!("p{pod}")),
                        label("route", &format!("/r{route}")),
                    ],
                    samples: vec![Sample {
                        value,
                        timestamp: t,
                    }],
                });
            }
        }
        let (status, text) = local
            .remote_write(&WriteRequest { timeseries }.encode_to_vec())
            .await;
        assert_eq!(status, 200, "{text}");
    }
    let stopped = now_ms();

    // Expected, per route and window end: the running total of the per-series increases of the
    // last value in each window, and the sum of every sample in the window.
    let mut increases: BTreeMap<(usize, i64), f64> = BTreeMap::new();
    let mut sums: BTreeMap<(usize, i64), f64> = BTreeMap::new();
    for ((route, _), points) in &written {
        let mut last_per_window: BTreeMap<i64, f64> = BTreeMap::new();
        for &(t, v) in points {
            last_per_window.insert(window_end(t), v);
            *sums.entry((*route, window_end(t))).or_default() += v;
        }
        let mut previous = 0.0;
        for (end, last) in last_per_window {
            *increases.entry((*route, end)).or_default() += last - previous;
            previous = last;
        }
    }
    let mut totals: BTreeMap<(usize, i64), f64> = BTreeMap::new();
    for route in 0..ROUTES {
        let mut running = 0.0;
        for (&(r, end), inc) in &increases {
            if r == route {
                running += inc;
                totals.insert((route, end), running);
            }
        }
    }
    let last_end = window_end(stopped);
    let expect_windows = (last_end - window_end(started)) / RESOLUTION_MS + 1;
    assert!(expect_windows >= 4, "{expect_windows}");

    for (name, expected) in [
        ("e2e_requests_by_route", &totals),
        ("e2e_samples_by_route", &sums),
    ] {
        let query = format!("{name}[10m]");
        let headers = [
            ("M3-Metrics-Type", "aggregated"),
            ("M3-Storage-Policy", "10s:2d"),
        ];
        let result = local
            .wait_for_points(&query, &headers, |got| {
                got["data"]["result"].as_array().is_some_and(|series| {
                    series.len() == ROUTES
                        && series.iter().all(|s| {
                            s["values"]
                                .as_array()
                                .and_then(|v| v.last())
                                .and_then(|p| p[0].as_f64())
                                .is_some_and(|t| (t * 1000.0) as i64 >= last_end)
                        })
                })
            })
            .await;
        let mut differences = Vec::new();
        let mut compared = 0;
        for series in result["data"]["result"].as_array().into_iter().flatten() {
            let route_label = series["metric"]["route"].as_str().unwrap_or_default();
            let route: usize = route_label
                .trim_start_matches("/r")
                .parse()
                .unwrap_or(usize::MAX);
            assert_eq!(series["metric"]["__rollup__"], "true", "{series}");
            assert_eq!(series["metric"]["__name__"], name, "{series}");
            assert!(
                series["metric"].get("pod").is_none(),
                "grouped by route only"
            );
            for point in series["values"].as_array().into_iter().flatten() {
                let t = (point[0].as_f64().unwrap_or(0.0) * 1000.0).round() as i64;
                let got: f64 = point[1]
                    .as_str()
                    .unwrap_or("NaN")
                    .parse()
                    .unwrap_or(f64::NAN);
                compared += 1;
                match expected.get(&(route, t)) {
                    Some(want) if *want == got => {}
                    want => differences.push(format!(
                        "{name}{{route={route_label}}} @{t}: want {want:?}, got {got}"
                    )),
                }
            }
        }
        let want = expected.len();
        println!(
            "{name}: {compared} windows stored, {want} expected, {} differ",
            differences.len()
        );
        assert!(
            differences.is_empty() && compared == want,
            "{name}: {compared} stored of {want} expected, differences:\n{}",
            differences.join("\n")
        );
    }

    // The tagged mapping rule: per series and window, the smallest (first) cumulative value.
    let result = local
        .wait_for_points(
            "e2e_requests_total{tier=\"gold\"}[10m]",
            &[
                ("M3-Metrics-Type", "aggregated"),
                ("M3-Storage-Policy", "10s:2d"),
            ],
            |got| {
                got["data"]["result"].as_array().is_some_and(|series| {
                    series.len() == ROUTES * PODS
                        && series.iter().all(|s| {
                            s["values"]
                                .as_array()
                                .and_then(|v| v.last())
                                .and_then(|p| p[0].as_f64())
                                .is_some_and(|t| (t * 1000.0) as i64 >= last_end)
                        })
                })
            },
        )
        .await;
    let mut minimums: BTreeMap<(String, String, i64), f64> = BTreeMap::new();
    for ((route, pod), points) in &written {
        for &(t, v) in points {
            let min = minimums
                .entry((format!("/r{route}"), format!("p{pod}"), window_end(t)))
                .or_insert(f64::INFINITY);
            *min = min.min(v);
        }
    }
    let mut differences = Vec::new();
    let mut compared = 0;
    for series in result["data"]["result"].as_array().into_iter().flatten() {
        let metric = &series["metric"];
        let route = metric["route"].as_str().unwrap_or_default().to_string();
        let pod = metric["pod"].as_str().unwrap_or_default().to_string();
        for point in series["values"].as_array().into_iter().flatten() {
            let t = (point[0].as_f64().unwrap_or(0.0) * 1000.0).round() as i64;
            let got: f64 = point[1]
                .as_str()
                .unwrap_or("NaN")
                .parse()
                .unwrap_or(f64::NAN);
            compared += 1;
            match minimums.get(&(route.clone(), pod.clone(), t)) {
                Some(want) if *want == got => {}
                want => differences.push(format!(
                    "e2e_requests_total{{route={route}, pod={pod}, tier=gold}} @{t}: want {want:?}, got {got}"
                )),
            }
        }
    }
    println!(
        "tagged mapping rule: {compared} windows stored, {} expected, {} differ",
        minimums.len(),
        differences.len()
    );
    assert!(
        differences.is_empty() && compared == minimums.len(),
        "tagged mapping rule: {compared} stored of {} expected, differences:\n{}",
        minimums.len(),
        differences.join("\n")
    );
    local.stop().await;
}

fn label(name: &str, value: &str) -> Label {
    Label {
        name: name.to_string(),
        value: value.to_string(),
    }
}
