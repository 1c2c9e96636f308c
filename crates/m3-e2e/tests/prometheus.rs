//! Prometheus as the client: Debian's `prometheus` scrapes itself every second and remote-writes
//! to the coordinator of the seed's deployment (etcd, two aggregators, one coordinator). The
//! aggregated series the system stores (Last per 10s window) must equal, window by window, the
//! last raw sample Prometheus itself holds for the same series.
//!
//! ```text
//!   first sample                                   cutoff = now − (bufferPast + resolution + margin)
//!        │   [end−10s, end)                           │
//!  ──────┼──────┬──────┬──────┬──────┬──────┬─────────┼────── now
//!        │      │ end  │ end  │ end  │ end  │ end     │
//!        └──────┴──────┴──────┴──────┴──────┴─────────┘
//!          every window ending in (first sample, cutoff] is compared
//! ```
//!
//! A window whose last raw value is NaN must be absent: the aggregator discards NaN results
//! (`discardNaNAggregatedValues`, M3's default). Any other missing, extra or differing window
//! fails the test with a listing.

mod support;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::time::Duration;

use m3_testkit::{PrometheusOptions, PrometheusProcess};
use support::{
    AGG_10S, BUFFER_PAST_MS, Cluster, LabelSet, RESOLUTION_MS, matrix, now_ms, query, show_labels,
    window_end,
};

/// Prometheus's own series compared: TSDB, Go runtime and process metrics.
const SELECTOR: &str = r#"{__name__=~"prometheus_tsdb.*|go_.*|process_.*"}[10m]"#;

/// How long Prometheus scrapes and remote-writes before the comparison.
const RUN: Duration = Duration::from_secs(70);

/// Beyond bufferPast + resolution: the flush check period, remote write's batch deadline and
/// delivery.
const MARGIN_MS: i64 = 5_000;

/// Most differences quoted in a failure.
const MAX_LISTED: usize = 40;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregated_windows_equal_prometheus_raw_last_per_window() {
    let mut cluster = Cluster::start("prometheus", 1).await;
    cluster.run_seed_commands().await;
    cluster.wait_for_leader(Duration::from_secs(30)).await;
    let coordinator = cluster.coordinators[0].url();
    let mut prometheus = PrometheusProcess::start(&PrometheusOptions {
        scrape_interval: Duration::from_secs(1),
        remote_write_url: Some(format!("{coordinator}/api/v1/prom/remote/write")),
        batch_send_deadline: Duration::from_secs(1),
        ..PrometheusOptions::default()
    });
    let prometheus_url = prometheus.url();
    let started = now_ms();

    // Scrape and remote-write for RUN, checking every second that everything still runs.
    while now_ms() < started + RUN.as_millis() as i64 {
        assert!(
            prometheus.process().is_running(),
            "{}",
            prometheus.process()
        );
        for a in &mut cluster.aggregators {
            assert!(a.process.is_running(), "{}", a.process);
        }
        for c in &mut cluster.coordinators {
            assert!(c.process.is_running(), "{}", c.process);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    let cutoff = now_ms() - (BUFFER_PAST_MS + RESOLUTION_MS + MARGIN_MS);
    let eval_s = now_ms() as f64 / 1000.0;
    let raw = matrix(
        &query(
            &cluster.client,
            &prometheus_url,
            SELECTOR,
            &[],
            Some(eval_s),
        )
        .await,
    );
    let first_sample = raw
        .iter()
        .flat_map(|(_, points)| points.iter().map(|(t, _)| *t))
        .min()
        .unwrap_or_else(|| {
            panic!(
                "Prometheus holds no sample for {SELECTOR}; {}",
                prometheus.process()
            )
        });
    let expected = last_per_window(&raw, first_sample, cutoff);

    // The comparison is repeated (bounded) while the last windows may still be in flight.
    let outcome = RefCell::new(Comparison::default());
    let matched = m3_testkit::wait_for(Duration::from_secs(30), Duration::from_secs(1), || {
        let stored = query(
            &cluster.client,
            &coordinator,
            SELECTOR,
            AGG_10S,
            Some(eval_s),
        );
        let expected = &expected;
        let outcome = &outcome;
        async move {
            let compared = compare(expected, &matrix(&stored.await), first_sample, cutoff);
            let done = compared.differences.is_empty();
            *outcome.borrow_mut() = compared;
            done.then_some(())
        }
    })
    .await;
    let Comparison {
        checked,
        nan_absent,
        differences,
    } = outcome.into_inner();
    println!(
        "{} series, {checked} windows in ({first_sample}, {cutoff}] compared, {} differ, {nan_absent} NaN windows absent as expected",
        expected.len(),
        differences.len()
    );
    assert!(
        matched.is_some(),
        "{} of {checked} windows differ between the stored aggregation and Prometheus's raw samples (first {MAX_LISTED}):\n  {}{}\n--- {}",
        differences.len(),
        differences
            .iter()
            .take(MAX_LISTED)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n  "),
        cluster.logs(),
        prometheus.process()
    );
    assert!(
        checked >= 100,
        "too few windows compared ({checked}) to mean anything"
    );
    let log = prometheus.process().log();
    for complaint in ["non-recoverable error", "Failed to send batch"] {
        assert!(
            !log.contains(complaint),
            "Prometheus reports remote-write errors ({complaint:?}); {}",
            prometheus.process()
        );
    }
}

/// series → window end → last raw value in `[end − 10s, end)`, for windows ending in
/// `(first, cutoff]`.
type Expected = BTreeMap<LabelSet, BTreeMap<i64, f64>>;

fn last_per_window(raw: &[(LabelSet, Vec<(i64, f64)>)], first: i64, cutoff: i64) -> Expected {
    let mut expected = Expected::new();
    for (labels, points) in raw {
        let windows = expected.entry(labels.clone()).or_default();
        // Prometheus returns points in time order, so the last insert per window wins.
        for (t, v) in points {
            let end = window_end(*t, RESOLUTION_MS);
            if end > first && end <= cutoff {
                windows.insert(end, *v);
            }
        }
    }
    expected
}

#[derive(Debug, Default)]
struct Comparison {
    checked: usize,
    nan_absent: usize,
    differences: Vec<String>,
}

fn compare(
    expected: &Expected,
    stored: &[(LabelSet, Vec<(i64, f64)>)],
    first: i64,
    cutoff: i64,
) -> Comparison {
    let mut got: BTreeMap<&LabelSet, BTreeMap<i64, f64>> = BTreeMap::new();
    for (labels, points) in stored {
        let windows = got.entry(labels).or_default();
        for (t, v) in points {
            if *t > first && *t <= cutoff {
                windows.insert(*t, *v);
            }
        }
    }
    let mut out = Comparison::default();
    for (labels, windows) in expected {
        let stored = got.get(labels);
        for (end, want) in windows {
            out.checked += 1;
            let have = stored.and_then(|w| w.get(end));
            match (want.is_nan(), have) {
                (true, None) => out.nan_absent += 1,
                (true, Some(v)) => out.differences.push(format!(
                    "{} @{end}: last raw value NaN must be absent, stored {v}",
                    show_labels(labels)
                )),
                (false, None) => out.differences.push(format!(
                    "{} @{end}: want {want}, missing",
                    show_labels(labels)
                )),
                (false, Some(v)) if v != want => out.differences.push(format!(
                    "{} @{end}: want {want}, stored {v}",
                    show_labels(labels)
                )),
                (false, Some(_)) => {}
            }
        }
    }
    for (labels, windows) in &got {
        let known = expected.get(*labels);
        for (end, v) in windows {
            if !known.is_some_and(|w| w.contains_key(end)) {
                out.differences.push(format!(
                    "{} @{end}: stored {v}, but Prometheus has no raw sample in that window",
                    show_labels(labels)
                ));
            }
        }
    }
    out
}

/// The comparison itself, on made-up data: what counts as a difference.
#[test]
fn comparison_reports_missing_extra_differing_and_stored_nan_windows() {
    let series = |name: &str| -> LabelSet {
        [("__name__".to_string(), name.to_string())]
            .into_iter()
            .collect()
    };
    // Raw samples every 5s from 1s; a sample at exactly 20s belongs to the window ending at 30s.
    let raw = vec![
        (
            series("a"),
            vec![(1_000, 1.0), (6_000, 2.0), (11_000, 3.0), (20_000, 4.0)],
        ),
        (series("b"), vec![(2_000, 5.0), (12_000, f64::NAN)]),
    ];
    let expected = last_per_window(&raw, 1_000, 30_000);
    assert_eq!(
        expected[&series("a")]
            .iter()
            .map(|(t, v)| (*t, *v))
            .collect::<Vec<_>>(),
        [(10_000, 2.0), (20_000, 3.0), (30_000, 4.0)]
    );

    let exact = vec![
        (
            series("a"),
            vec![(10_000, 2.0), (20_000, 3.0), (30_000, 4.0)],
        ),
        (series("b"), vec![(10_000, 5.0)]),
    ];
    let outcome = compare(&expected, &exact, 1_000, 30_000);
    assert_eq!((outcome.checked, outcome.nan_absent), (5, 1));
    assert!(outcome.differences.is_empty(), "{:?}", outcome.differences);

    let wrong = vec![
        // 20s missing, 30s differs, 40s is outside the compared range and ignored.
        (
            series("a"),
            vec![(10_000, 2.0), (30_000, 4.5), (40_000, 9.0)],
        ),
        // A NaN window stored, and a window Prometheus has no sample for.
        (
            series("b"),
            vec![(10_000, 5.0), (20_000, f64::NAN), (30_000, 1.0)],
        ),
    ];
    let outcome = compare(&expected, &wrong, 1_000, 30_000);
    assert_eq!(
        outcome.differences,
        [
            r#"{__name__="a"} @20000: want 3, missing"#,
            r#"{__name__="a"} @30000: want 4, stored 4.5"#,
            r#"{__name__="b"} @20000: last raw value NaN must be absent, stored NaN"#,
            r#"{__name__="b"} @30000: stored 1, but Prometheus has no raw sample in that window"#,
        ]
    );
}
