//! End to end: the built `m3` binary runs `m3 local`; remote-write requests and rawtcp metrics go
//! in; the query API must return exactly what the aggregation produces.

mod support;

use std::time::Duration;

use m3_metric::id::encode_tags;
use m3_proto::Message;
use m3_proto::metricpb::{
    BatchTimer, BatchTimerWithMetadatas, Counter, CounterWithMetadatas, Gauge, GaugeWithMetadatas,
    MetricWithMetadatas, StagedMetadatas, metric_with_metadatas,
};
use m3_proto::prometheus::WriteRequest;
use support::{LocalProcess, now_ms, series};

const AGG_10S: &[(&str, &str)] = &[
    ("M3-Metrics-Type", "aggregated"),
    ("M3-Storage-Policy", "10s:2d"),
];
const AGG_1M: &[(&str, &str)] = &[
    ("M3-Metrics-Type", "aggregated"),
    ("M3-Storage-Policy", "1m:40d"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_write_is_downsampled_to_last_per_window() {
    downsamples_to_last_per_window(LocalProcess::start("remote_write").await).await;
}

/// The default: one aggregator, which leads its shard set alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_aggregator_leads_and_downsamples() {
    let config = support::one_aggregator_config();
    let m3 = LocalProcess::start_with("one_aggregator", &config, &[]).await;
    let urls = m3.aggregator_http();
    assert_eq!(urls.len(), 1, "one aggregator: {urls:?}");
    let mut state = String::new();
    for _ in 0..50 {
        let (_, body) = m3.get(&format!("{}/status", urls[0])).await;
        let json: serde_json::Value = serde_json::from_str(&body).expect("status JSON");
        state = json["status"]["flushStatus"]["electionState"]
            .as_str()
            .unwrap_or("")
            .to_string();
        if state == "leader" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(state, "leader");
    downsamples_to_last_per_window(m3).await;
}

/// Writes two series over two 10 s windows and checks the raw samples and each window's last.
async fn downsamples_to_last_per_window(m3: LocalProcess) {
    // Two 10s windows inside the current minute's past buffer: [w, w+10s) and [w+10s, w+20s).
    let w = (now_ms() / 10_000) * 10_000 - 20_000;
    let a = [
        (w + 1_000, 1.0),
        (w + 5_000, 5.0),
        (w + 9_000, 3.0),
        (w + 12_000, 7.0),
        (w + 19_999, 2.5),
    ];
    let b = [(w + 2_000, 10.0), (w + 11_000, 20.0), (w + 15_000, 30.0)];
    let request = WriteRequest {
        timeseries: vec![
            series(&[("__name__", "e2e_gauge"), ("host", "a")], &a),
            series(&[("__name__", "e2e_gauge"), ("host", "b")], &b),
        ],
    };
    let status = m3.remote_write(&request.encode_to_vec()).await;
    assert_eq!(status.0, 200, "remote write answered {status:?}");

    // Raw samples, exactly as sent.
    let raw = m3.query("e2e_gauge{host=\"a\"}[5m]", &[]).await;
    assert_eq!(
        support::matrix_points(&raw, "a"),
        a.iter().map(|&(t, v)| (t, v)).collect::<Vec<_>>()
    );

    // Last per 10s window, timestamped at the window end.
    let want_a = vec![(w + 10_000, 3.0), (w + 20_000, 2.5)];
    let want_b = vec![(w + 10_000, 10.0), (w + 20_000, 30.0)];
    let got = m3
        .wait_for_points("e2e_gauge[5m]", AGG_10S, |got| {
            support::matrix_points(got, "a") == want_a && support::matrix_points(got, "b") == want_b
        })
        .await;
    assert_eq!(support::matrix_points(&got, "a"), want_a);
    assert_eq!(support::matrix_points(&got, "b"), want_b);

    // Nothing else was written to the aggregated namespace for these series.
    let got_1m_before = m3.query("e2e_gauge[5m]", AGG_1M).await;
    for host in ["a", "b"] {
        for (t, _) in support::matrix_points(&got_1m_before, host) {
            assert_eq!(t % 60_000, 0, "1m outputs are at minute ends");
        }
    }
    m3.stop().await;
}

/// Writes metrics the way M3's client libraries do: untimed counters, gauges and batch timers
/// over rawtcp, with default metadata, to every replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rawtcp_counters_gauges_timers_yield_default_aggregations() {
    let m3 = LocalProcess::start("rawtcp").await;
    let id = |name: &str| {
        let mut out = Vec::new();
        encode_tags(
            [
                (b"__name__".as_slice(), name.as_bytes()),
                (b"service".as_slice(), b"api".as_slice()),
            ],
            &mut out,
        )
        .expect("small tags encode");
        out
    };
    let default_metadata = StagedMetadatas { metadatas: vec![] };
    let mut messages = Vec::new();
    for v in [3i64, 4, 5] {
        messages.push(MetricWithMetadatas {
            r#type: metric_with_metadatas::Type::CounterWithMetadatas as i32,
            counter_with_metadatas: Some(CounterWithMetadatas {
                counter: Some(Counter {
                    id: id("e2e_requests").into(),
                    value: v,
                    ..Default::default()
                }),
                metadatas: Some(default_metadata.clone()),
            }),
            ..Default::default()
        });
    }
    for v in [1.5, 9.25] {
        messages.push(MetricWithMetadatas {
            r#type: metric_with_metadatas::Type::GaugeWithMetadatas as i32,
            gauge_with_metadatas: Some(GaugeWithMetadatas {
                gauge: Some(Gauge {
                    id: id("e2e_queue_depth").into(),
                    value: v,
                    ..Default::default()
                }),
                metadatas: Some(default_metadata.clone()),
            }),
            ..Default::default()
        });
    }
    messages.push(MetricWithMetadatas {
        r#type: metric_with_metadatas::Type::BatchTimerWithMetadatas as i32,
        batch_timer_with_metadatas: Some(BatchTimerWithMetadatas {
            batch_timer: Some(BatchTimer {
                id: id("e2e_latency").into(),
                values: (1..=10).map(f64::from).collect(),
                ..Default::default()
            }),
            metadatas: Some(default_metadata.clone()),
        }),
        ..Default::default()
    });

    // Untimed metrics are bucketed by arrival: send right after a window starts so that all
    // land in one window.
    let into_window = now_ms() % 10_000;
    if into_window > 6_000 {
        tokio::time::sleep(Duration::from_millis((10_000 - into_window + 200) as u64)).await;
    }
    for endpoint in m3.aggregator_endpoints() {
        support::write_rawtcp(&endpoint, &messages).await;
    }

    let expect = |name: &str, value: f64| (name.to_string(), value);
    let wanted = [
        expect("e2e_requests", 12.0),
        expect("e2e_queue_depth", 9.25),
        expect("e2e_latency:sum", 55.0),
        expect("e2e_latency:sum_sq", 385.0),
        expect("e2e_latency:mean", 5.5),
        expect("e2e_latency:lower", 1.0),
        expect("e2e_latency:upper", 10.0),
        expect("e2e_latency:count", 10.0),
        expect("e2e_latency:stdev", (82.5f64 / 9.0).sqrt()),
    ];
    for (name, value) in wanted {
        let got = m3
            .wait_for_points(&format!("{name}[5m]"), AGG_10S, |got| {
                !support::all_points(got).is_empty()
            })
            .await;
        let points = support::all_points(&got);
        assert_eq!(
            points.len(),
            1,
            "{name}: one window expected, got {points:?}"
        );
        assert!(
            (points[0].1 - value).abs() < 1e-9,
            "{name}: want {value}, got {}",
            points[0].1
        );
        assert_eq!(points[0].0 % 10_000, 0, "{name}: timestamp at a window end");
    }
    // Quantiles: M3's nearest rank (P95 = P99 = 10 for 1..10), within the sketch's stated 1 %.
    for (name, exact) in [
        ("e2e_latency:median", 5.0),
        ("e2e_latency:p50", 5.0),
        ("e2e_latency:p95", 10.0),
        ("e2e_latency:p99", 10.0),
    ] {
        let got = m3
            .wait_for_points(&format!("{name}[5m]"), AGG_10S, |got| {
                !support::all_points(got).is_empty()
            })
            .await;
        let points = support::all_points(&got);
        assert_eq!(points.len(), 1, "{name}");
        assert!(
            (points[0].1 - exact).abs() <= exact * 0.01 * (1.0 + 1e-12),
            "{name}: want ≈{exact}, got {}",
            points[0].1
        );
    }
    m3.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_remote_write_bodies_get_400_and_the_process_keeps_serving() {
    let m3 = LocalProcess::start("bad_input").await;
    let good = WriteRequest {
        timeseries: vec![series(&[("__name__", "ok_metric")], &[(now_ms(), 1.0)])],
    }
    .encode_to_vec();
    let compressed = snap::raw::Encoder::new()
        .compress_vec(&good)
        .expect("compress");

    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "truncated",
            compressed[..compressed.len() / 2].to_vec(),
            "snappy",
        ),
        ("not snappy", b"definitely not snappy".to_vec(), "snappy"),
        (
            "not protobuf",
            snap::raw::Encoder::new()
                .compress_vec(&[0xff; 32])
                .expect("compress"),
            "protobuf",
        ),
    ];
    for (what, body, reason) in cases {
        let (status, text) = m3.remote_write_raw(body).await;
        assert_eq!(status, 400, "{what}: {text}");
        assert!(
            text.contains(reason),
            "{what}: reason {text:?} should mention {reason}"
        );
    }
    type LabelCase<'a> = (&'a str, Vec<(&'a str, &'a str)>, &'a str);
    let label_cases: Vec<LabelCase<'_>> = vec![
        (
            "unsorted",
            vec![("__name__", "m"), ("b", "1"), ("a", "2")],
            "sorted",
        ),
        (
            "duplicate",
            vec![("__name__", "m"), ("a", "1"), ("a", "2")],
            "duplicate",
        ),
        (
            "empty value",
            vec![("__name__", "m"), ("a", "")],
            "empty label value",
        ),
        (
            "empty name",
            vec![("", "x"), ("__name__", "m")],
            "empty label name",
        ),
    ];
    for (what, labels, reason) in label_cases {
        let request = WriteRequest {
            timeseries: vec![series(&labels, &[(now_ms(), 1.0)])],
        };
        let (status, text) = m3.remote_write(&request.encode_to_vec()).await;
        assert_eq!(status, 400, "{what}: {text}");
        assert!(
            text.contains(reason),
            "{what}: reason {text:?} should mention {reason}"
        );
    }
    // Still serving: a good request is accepted and readable.
    let (status, text) = m3.remote_write(&good).await;
    assert_eq!(status, 200, "{text}");
    let raw = m3.query("ok_metric", &[]).await;
    assert_eq!(
        raw["data"]["result"].as_array().map(Vec::len),
        Some(1),
        "{raw}"
    );
    m3.stop().await;
}

/// Regression: a SIGTERM that came while `m3 local` was still starting (after its stores
/// opened, before it waited for signals) killed it with the signal's default action, so a
/// supervisor stopping a pod mid-start saw it die instead of stop. The signal is now caught
/// from the first step: the start completes, then the process stops and exits 0.
#[test]
fn sigterm_during_start_up_stops_the_process_cleanly() {
    use std::io::{BufRead, BufReader};
    use std::process::Command;

    let dir = tempfile::tempdir().expect("temp dir");
    let mut child = support::spawn_local(dir.path(), support::CONFIG, &[]);
    // The log and the banner both go to stdout.
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines().map_while(Result::ok);
    // The first store opening is well inside the start-up: the aggregators and the
    // coordinator are still to come.
    let mut printed = Vec::new();
    for line in lines.by_ref() {
        println!("[m3 local] {line}");
        let opened = line.contains("Opened namespace");
        printed.push(line);
        if opened {
            break;
        }
    }
    assert!(
        printed.iter().any(|line| line.contains("Opened namespace")),
        "m3 local ended before it opened a namespace: {printed:?}"
    );
    let signalled = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(signalled.success(), "kill -TERM failed");
    let reader = std::thread::spawn(move || {
        for line in lines {
            println!("[m3 local] {line}");
            printed.push(line);
        }
        printed
    });

    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait on the child") {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("m3 local did not stop within 60s of a SIGTERM during its start-up");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let printed = reader.join().expect("stdout reader");
    assert!(
        status.success(),
        "a SIGTERM during start-up ended m3 local with {status}"
    );
    assert!(
        printed
            .iter()
            .any(|line| line.contains("m3 local is running")),
        "m3 local exited cleanly but never finished starting: {printed:?}"
    );
}

/// Ctrl-C (here SIGTERM) flushes the windows that have ended, even those still inside the past
/// buffer, and stores them; a restart on the same data directory serves them and the raw samples.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_flushes_ended_windows_and_data_survives_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let m3 = LocalProcess::start_in(dir.path()).await;
    // A window that ended less than the 30s past buffer ago: a running leader would still hold it.
    let w = (now_ms() / 10_000) * 10_000 - 10_000;
    let points = [(w + 1_000, 4.0), (w + 6_000, 6.0)];
    let request = WriteRequest {
        timeseries: vec![series(
            &[("__name__", "e2e_shutdown"), ("host", "a")],
            &points,
        )],
    };
    let status = m3.remote_write(&request.encode_to_vec()).await;
    assert_eq!(status.0, 200, "{status:?}");
    let before = m3.query("e2e_shutdown[5m]", AGG_10S).await;
    assert!(
        support::all_points(&before).is_empty(),
        "not flushed before shutdown: {before}"
    );
    m3.stop().await;

    let m3 = LocalProcess::start_in(dir.path()).await;
    let aggregated = m3.query("e2e_shutdown[5m]", AGG_10S).await;
    assert_eq!(
        support::matrix_points(&aggregated, "a"),
        vec![(w + 10_000, 6.0)],
        "{aggregated}"
    );
    let raw = m3.query("e2e_shutdown[5m]", &[]).await;
    assert_eq!(support::matrix_points(&raw, "a"), points.to_vec(), "{raw}");
    m3.stop().await;
}

/// Regression: shutting down with a backlog of ended windows warned that output was not acked
/// although all of it was stored. 20 000 series write into a window that has ended but is
/// inside the past buffer, so the final flush at shutdown emits all of them at once: the
/// process exits cleanly without that warning, and after a restart every window is stored
/// with its value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_with_a_backlog_stores_every_window_and_does_not_warn() {
    const SERIES: usize = 20_000;
    let dir = tempfile::tempdir().expect("temp dir");
    let m3 = LocalProcess::start_in(dir.path()).await;
    let w = (now_ms() / 10_000) * 10_000 - 10_000;
    for part in 0..2 {
        let request = WriteRequest {
            timeseries: (part * SERIES / 2..(part + 1) * SERIES / 2)
                .map(|i| {
                    let name = format!("{i:05}");
                    series(
                        &[("__name__", "e2e_backlog"), ("host", name.as_str())],
                        &[(w + 5_000, i as f64)],
                    )
                })
                .collect(),
        };
        let status = m3.remote_write(&request.encode_to_vec()).await;
        assert_eq!(status.0, 200, "{status:?}");
    }
    let output = m3.stop().await;
    let warned: Vec<&String> = output
        .iter()
        .filter(|line| line.contains("not acked"))
        .collect();
    assert!(warned.is_empty(), "shutdown warned: {warned:?}");

    let m3 = LocalProcess::start_in(dir.path()).await;
    let stored = m3.query("e2e_backlog[5m]", AGG_10S).await;
    let mut wrong = Vec::new();
    let mut windows = 0;
    for series in stored["data"]["result"].as_array().into_iter().flatten() {
        let i: f64 = series["metric"]["host"]
            .as_str()
            .and_then(|h| h.parse().ok())
            .unwrap_or(f64::NAN);
        for point in series["values"].as_array().into_iter().flatten() {
            windows += 1;
            let at = (point[0].as_f64().unwrap_or(0.0) * 1000.0).round() as i64;
            let value: f64 = point[1]
                .as_str()
                .and_then(|v| v.parse().ok())
                .unwrap_or(f64::NAN);
            if at != w + 10_000 || value != i {
                wrong.push(format!("{i} @{at}: {value}"));
            }
        }
    }
    wrong.truncate(10);
    assert!(
        windows == SERIES && wrong.is_empty(),
        "{windows} windows stored of {SERIES}; wrong (first 10): {wrong:?}"
    );
    m3.stop().await;
}

/// The 1m:40d namespace holds each series' Last per minute, with its value, not only its
/// timestamps: samples written into a minute that has just ended (inside the past buffers) are
/// emitted by the final flush at shutdown and read back after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minute_windows_hold_the_last_value_of_the_minute() {
    let dir = tempfile::tempdir().expect("temp dir");
    let m3 = LocalProcess::start_in(dir.path()).await;
    // Early in a minute, so the one that just ended is within the coordinator's 30s buffer.
    loop {
        let into_minute = now_ms().rem_euclid(60_000);
        if (3_000..15_000).contains(&into_minute) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let minute_end = now_ms() / 60_000 * 60_000;
    let points = [(minute_end - 4_000, 7.0), (minute_end - 2_000, 9.0)];
    let request = WriteRequest {
        timeseries: vec![series(
            &[("__name__", "e2e_minute"), ("host", "a")],
            &points,
        )],
    };
    let status = m3.remote_write(&request.encode_to_vec()).await;
    assert_eq!(status.0, 200, "{status:?}");
    m3.stop().await;

    let m3 = LocalProcess::start_in(dir.path()).await;
    let minute = m3.query("e2e_minute[10m]", AGG_1M).await;
    assert_eq!(
        support::matrix_points(&minute, "a"),
        vec![(minute_end, 9.0)],
        "the minute ending at {minute_end}: {minute}"
    );
    m3.stop().await;
}

/// The running coordinator enforces retention: a raw sample older than the raw namespace's
/// 48h is stored when written (queries never show it: they read within the retention), and the
/// first retention pass after a restart removes it from disk (counted in
/// `m3_storage_samples_deleted_by_retention_total`); a recent sample stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retention_loop_removes_expired_samples() {
    let dir = tempfile::tempdir().expect("temp dir");
    let m3 = LocalProcess::start_in(dir.path()).await;
    // The pass the loop runs at start has recorded its cutoff: the next is a minute away, so the
    // sample written now is removed (and counted) by the restarted process, not by this one.
    let cutoff_file = dir.path().join("data").join("default").join("retention");
    for _ in 0..100 {
        if cutoff_file.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        cutoff_file.exists(),
        "the first retention pass records its cutoff in {}",
        cutoff_file.display()
    );
    let now = now_ms();
    let old = now - 72 * 3_600_000;
    let request = WriteRequest {
        timeseries: vec![
            series(
                &[("__name__", "e2e_retention"), ("host", "old")],
                &[(old, 1.0)],
            ),
            series(
                &[("__name__", "e2e_retention"), ("host", "new")],
                &[(now, 2.0)],
            ),
        ],
    };
    let status = m3.remote_write(&request.encode_to_vec()).await;
    // The old sample is too old to aggregate (400 names it) but is stored raw.
    assert_eq!(status.0, 400, "{status:?}");
    assert!(status.1.contains("too far in past"), "{status:?}");
    m3.stop().await;

    let m3 = LocalProcess::start_in(dir.path()).await;
    let mut deleted = 0.0;
    for _ in 0..100 {
        let (_, metrics) = m3.get(&format!("{}/metrics", m3.http())).await;
        deleted = metrics
            .lines()
            .find_map(|l| l.strip_prefix("m3_storage_samples_deleted_by_retention_total "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0);
        if deleted > 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        deleted, 1.0,
        "the retention pass at start removes the 72h-old sample"
    );
    let recent = m3.query("e2e_retention", &[]).await;
    assert!(
        recent.to_string().contains("\"new\""),
        "the recent sample stays: {recent}"
    );
    m3.stop().await;
}

/// A running aggregator forgets a series once it has been idle for `entryTTL` and its windows
/// are flushed, checked every `entryCheckInterval`: on the leader (which emitted the window)
/// and on the follower (which discarded it) alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_series_expire_after_the_entry_ttl() {
    // One aggregated namespace (10s), so the series' only window closes within seconds.
    let config = support::CONFIG
        .replace(
            "  bufferDurationForPastTimedMetric: 30s",
            "  bufferDurationForPastTimedMetric: 2s\n  entryTTL: 1s\n  entryCheckInterval: 200ms",
        )
        .replace(
            "        - namespace: agg_1m_40d\n          type: aggregated\n          resolution: 1m\n          retention: 40d\n",
            "",
        );
    assert!(
        !config.contains("agg_1m_40d"),
        "the test config changed: {config}"
    );
    let m3 = LocalProcess::start_with("entry-ttl", &config, &[]).await;
    let expired = |metrics: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.contains("entries_removed_total") && l.contains("reason=\"expired\""))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    let request = WriteRequest {
        timeseries: vec![series(
            &[("__name__", "e2e_idle"), ("host", "a")],
            &[(now_ms(), 1.0)],
        )],
    };
    let status = m3.remote_write(&request.encode_to_vec()).await;
    assert_eq!(status.0, 200, "{status:?}");
    for url in m3.aggregator_http() {
        let (_, metrics) = m3.get(&format!("{url}/metrics")).await;
        assert_eq!(
            expired(&metrics),
            0.0,
            "nothing expires while the window is open"
        );
    }
    // The window closes within 10s, is flushed 2s + 10s after that, then the series is idle.
    for url in m3.aggregator_http() {
        let mut count = 0.0;
        for _ in 0..400 {
            let (_, metrics) = m3.get(&format!("{url}/metrics")).await;
            count = expired(&metrics);
            if count > 0.0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(count, 1.0, "{url}: the idle series expired once");
    }
    m3.stop().await;
}

/// Each aggregator serves M3's admin endpoints; exactly one leads the shard set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregators_serve_health_status_and_metrics() {
    let m3 = LocalProcess::start("admin").await;
    let urls = m3.aggregator_http();
    assert_eq!(urls.len(), 2);
    let mut states = Vec::new();
    for url in &urls {
        let (status, body) = m3.get(&format!("{url}/health")).await;
        assert_eq!((status, body.as_str()), (200, r#"{"state":"OK"}"#));
        let (status, body) = m3.get(&format!("{url}/metrics")).await;
        assert_eq!(status, 200);
        assert!(body.contains("m3aggregator_"), "metrics: {body}");
    }
    // Leadership is settled within a few flush checks.
    for _ in 0..50 {
        states.clear();
        for url in &urls {
            let (_, body) = m3.get(&format!("{url}/status")).await;
            let json: serde_json::Value = serde_json::from_str(&body).expect("status JSON");
            states.push(
                json["status"]["flushStatus"]["electionState"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
            );
        }
        if states.contains(&"leader".to_string()) && states.contains(&"follower".to_string()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    states.sort();
    assert_eq!(states, vec!["follower", "leader"]);
    let (status, body) = m3.get(&format!("{}/metrics", m3.http())).await;
    assert_eq!(status, 200);
    assert!(
        body.contains("m3coordinator_samples_dropped")
            || body.contains("m3coordinator_samples_received"),
        "{body}"
    );
    m3.stop().await;
}
