//! Hostile and careless input against the built `m3 local`: what a client can make the process
//! hold, for how long, and what it answers. Each test is one finding of the hardening review
//! (issue 6); on the code before it, each of them fails.

mod support;

use std::time::{Duration, Instant};

use m3_proto::Message;
use m3_proto::prometheus::WriteRequest;
use support::{CONFIG, LocalProcess, now_ms, series};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MIB: u64 = 1024 * 1024;

/// The growth of the process's peak RSS that three concurrent bombs may cause: each request
/// may hold its compressed body, its decompressed body (≤ 32 MiB) and decoded arrays within
/// the count limits (docs/limits.md); 64 MiB each, plus slack for the allocator.
const BOMB_BOUND: u64 = 3 * 64 * MIB + 64 * MIB;

/// A `WriteRequest` holding one series `x` and `count` copies of the 2-byte `item` (an empty
/// sample `12 00`, or an empty series `0a 00` at the top level), snappy-compressed: a few
/// hundred KB on the wire that decode to millions of entries.
fn bomb(item: &[u8], count: usize, top_level: bool) -> Vec<u8> {
    let label = [
        0x0a, 0x0d, 0x0a, 0x08, b'_', b'_', b'n', b'a', b'm', b'e', b'_', b'_', 0x12, 0x01, b'x',
    ];
    let mut body = Vec::new();
    if top_level {
        body.push(0x0a);
        put_varint(label.len() as u64, &mut body);
        body.extend_from_slice(&label);
        for _ in 0..count {
            body.extend_from_slice(item);
        }
    } else {
        let inner_len = label.len() + item.len() * count;
        body.push(0x0a);
        put_varint(inner_len as u64, &mut body);
        body.extend_from_slice(&label);
        for _ in 0..count {
            body.extend_from_slice(item);
        }
    }
    snap::raw::Encoder::new()
        .compress_vec(&body)
        .expect("compress")
}

fn put_varint(mut n: u64, out: &mut Vec<u8>) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// Regression: one 1.5 MB request of empty samples peaked at 2 GB, three at 4.3 GB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_write_bombs_are_refused_inside_the_memory_bound() {
    let local = LocalProcess::start("bombs").await;
    // Just under the 32 MiB decompressed limit, so the count limits are what stops them.
    let samples = bomb(&[0x12, 0x00], 15 * 1024 * 1024, false);
    let series = bomb(&[0x0a, 0x00], 15 * 1024 * 1024, true);
    let labels = bomb(
        &[0x0a, 0x06, 0x0a, 0x01, b'a', 0x12, 0x01, b'b'],
        3 * 1024 * 1024,
        false,
    );
    println!(
        "bodies: {} / {} / {} bytes",
        samples.len(),
        series.len(),
        labels.len()
    );
    // Let the process settle, then measure the peak from here.
    tokio::time::sleep(Duration::from_secs(1)).await;
    local.reset_peak_rss();
    let base = local.peak_rss();
    for body in [&samples, &series, &labels] {
        let (a, b, c) = tokio::join!(
            local.remote_write_raw(body.clone()),
            local.remote_write_raw(body.clone()),
            local.remote_write_raw(body.clone()),
        );
        for (status, text) in [a, b, c] {
            assert_eq!(status, 413, "{text}");
            assert!(text.contains("split it into smaller requests"), "{text}");
        }
    }
    let grown = local.peak_rss().saturating_sub(base);
    println!(
        "peak RSS grew by {} MiB (bound {} MiB)",
        grown / MIB,
        BOMB_BOUND / MIB
    );
    assert!(
        grown <= BOMB_BOUND,
        "three concurrent bombs grew the peak RSS by {} MiB, over the bound of {} MiB",
        grown / MIB,
        BOMB_BOUND / MIB
    );
    let ok = WriteRequest {
        timeseries: vec![self::series(
            &[("__name__", "after_bombs")],
            &[(now_ms(), 1.0)],
        )],
    };
    let (status, text) = local.remote_write(&ok.encode_to_vec()).await;
    assert_eq!(status, 200, "{text}");
    local.stop().await;
}

/// Regression: labels over 64 KiB made the store panic (500, retried forever) and dropped the
/// valid series of the same request; labels each within their limits but over the store's
/// per-series size together failed the whole request with 503; timestamps at i64::MIN/MAX were
/// stored but unreadable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_series_and_timestamps_get_400_and_the_rest_is_kept() {
    let local = LocalProcess::start("labels").await;
    let now = now_ms();
    let huge = "v".repeat(70 * 1024);
    // Five 15 KiB values: each under label_value_length_limit (16 KiB), 75 KiB together.
    let wide_value = "w".repeat(15 * 1024);
    let wide_labels: Vec<(String, &str)> = std::iter::once(("__name__".to_string(), "wide"))
        .chain((0..5).map(|i| (format!("l{i}"), wide_value.as_str())))
        .collect();
    let wide_labels: Vec<(&str, &str)> =
        wide_labels.iter().map(|(n, v)| (n.as_str(), *v)).collect();
    let request = WriteRequest {
        timeseries: vec![
            series(&[("__name__", "kept"), ("job", "a")], &[(now, 1.0)]),
            series(
                &[("__name__", "huge"), ("job", huge.as_str())],
                &[(now, 2.0)],
            ),
            series(&wide_labels, &[(now, 5.0)]),
            series(
                &[("__name__", "kept"), ("job", "b")],
                &[(i64::MAX, 3.0), (i64::MIN, 6.0), (now, 4.0)],
            ),
        ],
    };
    let (status, text) = local.remote_write(&request.encode_to_vec()).await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("label_value_length_limit"), "{text}");
    assert!(text.contains("labels take more than"), "{text}");
    assert!(text.contains("timestamp outside"), "{text}");
    let wide = local.query("wide", &[]).await;
    assert_eq!(wide["data"]["result"], serde_json::json!([]), "{wide}");
    let result = local.query("kept", &[]).await;
    let kept = result["data"]["result"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(kept.len(), 2, "both valid series are stored: {result}");
    let huge = local.query("huge", &[]).await;
    assert_eq!(huge["data"]["result"], serde_json::json!([]), "{huge}");
    local.stop().await;
}

/// Regression: a remote write 2.0 request got 200 and was dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_write_2_gets_415() {
    let local = LocalProcess::start("rw2").await;
    let response = reqwest::Client::new()
        .post(format!("{}/api/v1/prom/remote/write", local.http()))
        .header("Content-Encoding", "snappy")
        .header(
            "Content-Type",
            "application/x-protobuf;proto=io.prometheus.write.v2.Request",
        )
        .header("X-Prometheus-Remote-Write-Version", "2.0.0")
        .body(vec![0u8; 16])
        .send()
        .await
        .expect("answers");
    assert_eq!(response.status().as_u16(), 415);
    let text = response.text().await.unwrap_or_default();
    assert!(text.contains("remote write 2.0 is not supported"), "{text}");
    local.stop().await;
}

/// Regression: 1100 idle HTTP connections exhausted a 1024 descriptor limit and `/health`
/// stopped answering; idle connections were never closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_neither_exhaust_descriptors_nor_stay_forever() {
    let config = CONFIG.replace(
        "  writeBuffers:",
        "  limits:\n    http:\n      readHeaderTimeout: 3s\n  writeBuffers:",
    );
    // Started with the soft descriptor limit most services get: 1024.
    let local = LocalProcess::start_with("idle", &config, &["prlimit", "--nofile=1024:"]).await;
    // The process raised its soft limit to the hard one at start.
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", local.pid()))
        .expect("the process's limits are readable");
    let open_files: Vec<&str> = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .expect("an open files line")
        .split_whitespace()
        .collect();
    assert_eq!(
        open_files.get(3),
        open_files.get(4),
        "soft open-files limit raised to the hard one: {open_files:?}"
    );
    let address = local.http().trim_start_matches("http://").to_string();
    tokio::time::sleep(Duration::from_secs(1)).await;
    local.reset_peak_rss();
    let base = local.peak_rss();
    let mut idle = Vec::new();
    for _ in 0..1100 {
        idle.push(
            tokio::net::TcpStream::connect(&address)
                .await
                .expect("connect"),
        );
    }
    let (status, body) = tokio::time::timeout(
        Duration::from_secs(10),
        local.get(&format!("{}/health", local.http())),
    )
    .await
    .expect("/health answers while 1100 idle connections are open");
    assert_eq!(status, 200, "{body}");
    // docs/limits.md: an idle connection holds a few KiB.
    let grown = local.peak_rss().saturating_sub(base);
    println!(
        "1100 idle connections grew the peak RSS by {} KiB",
        grown / 1024
    );
    assert!(
        grown <= 1100 * 64 * 1024,
        "1100 idle connections grew the peak RSS by {} MiB, over 64 KiB each",
        grown / MIB
    );
    // Each idle connection is closed by the server after the header timeout.
    let started = Instant::now();
    for stream in idle.iter_mut().take(20) {
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(15), stream.read(&mut byte))
            .await
            .expect("the server closes an idle connection");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    }
    println!("idle connections closed after {:?}", started.elapsed());
    local.stop().await;
}

/// Regression: 16 half-written 49 MiB rawtcp frames held 784 MB forever; the m3msg ingest had
/// no timeout either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_written_frames_are_dropped_after_the_frame_timeout() {
    let config = CONFIG
        .replace(
            "  numShards: 16",
            "  numShards: 16\n  frameTimeout: 2s",
        )
        .replace(
            "        listenAddress: 127.0.0.1:0\n  writeBuffers:",
            "        listenAddress: 127.0.0.1:0\n      consumer:\n        frameTimeout: 2s\n  writeBuffers:",
        );
    let local = LocalProcess::start_with("frames", &config, &[]).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    local.reset_peak_rss();
    let base = local.peak_rss();
    // rawtcp: a zig-zag varint announcing 40 MB, then 1 MB of it.
    let mut rawtcp = tokio::net::TcpStream::connect(&local.aggregator_endpoints()[0])
        .await
        .expect("connect rawtcp");
    let announced: i64 = 40 * 1024 * 1024;
    let mut prefix = Vec::new();
    put_varint(((announced << 1) ^ (announced >> 63)) as u64, &mut prefix);
    rawtcp.write_all(&prefix).await.expect("write");
    rawtcp.write_all(&vec![0u8; 1 << 20]).await.expect("write");
    // m3msg: a 4-byte length announcing 3 MB, then 1 MB of it.
    let mut m3msg = tokio::net::TcpStream::connect(local.ingest())
        .await
        .expect("connect m3msg");
    m3msg
        .write_all(&(3u32 * 1024 * 1024).to_be_bytes())
        .await
        .expect("write");
    m3msg.write_all(&vec![0u8; 1 << 20]).await.expect("write");
    for (name, stream) in [("rawtcp", &mut rawtcp), ("m3msg", &mut m3msg)] {
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(20), stream.read(&mut byte))
            .await
            .unwrap_or_else(|_| panic!("{name}: a half-written frame is not dropped"));
        assert!(matches!(read, Ok(0) | Err(_)), "{name}: {read:?}");
    }
    // docs/limits.md: a connection holds at most the frame being read (announced 40 MB and
    // 3 MB here, 1 MB of each sent).
    let grown = local.peak_rss().saturating_sub(base);
    println!(
        "half-written frames grew the peak RSS by {} MiB",
        grown / MIB
    );
    assert!(
        grown <= 43 * MIB + 16 * MIB,
        "two half-written frames grew the peak RSS by {} MiB, over the frames they announce",
        grown / MIB
    );
    let (_, metrics) = local
        .get(&format!("{}/metrics", local.aggregator_http()[0]))
        .await;
    assert!(
        metrics.contains("rawtcp_connections_closed_total{reason=\"timeout\"} 1"),
        "{metrics}"
    );
    let (_, metrics) = local.get(&format!("{}/metrics", local.http())).await;
    assert!(metrics.contains("kind=\"timeout\"} 1"), "{metrics}");
    local.stop().await;
}

/// Regression: a full disk poisoned the store until restart (every later write 503
/// "Poisoned", also after space was freed) while `/health` answered 200. An aggregated window
/// flushed while the disk is full is not acked by the ingest, and the aggregators' redelivery
/// stores it once space returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_reported_and_writes_resume_when_space_returns() {
    let local = LocalProcess::start("disk-full").await;
    let write = |value: f64| {
        let request = WriteRequest {
            timeseries: vec![series(&[("__name__", "disk")], &[(now_ms(), value)])],
        };
        request.encode_to_vec()
    };
    let (status, text) = local.remote_write(&write(1.0)).await;
    assert_eq!(status, 200, "{text}");
    // A sample in a window that has ended but is inside the 30s past buffer: the aggregators
    // flush that window 10-20s from now, while the disk is full, so the coordinator's ingest
    // cannot store it and leaves it un-acked; it must be redelivered and stored afterwards.
    let window_end = (now_ms() / 10_000) * 10_000 - 10_000;
    let late_window = WriteRequest {
        timeseries: vec![series(
            &[("__name__", "disk_window")],
            &[(window_end - 2_000, 7.0)],
        )],
    };
    let (status, text) = local.remote_write(&late_window.encode_to_vec()).await;
    assert_eq!(status, 200, "{text}");
    // No file of the process may grow any more: the disk is full.
    let pid = local.pid().to_string();
    let limit = |size: &str| {
        let status = std::process::Command::new("prlimit")
            .args(["--pid", &pid, &format!("--fsize={size}")])
            .status()
            .expect("prlimit runs");
        assert!(status.success());
    };
    limit("0:");
    let mut refused = None;
    for i in 0..50 {
        let (status, text) = local.remote_write(&write(2.0 + f64::from(i))).await;
        if status == 503 {
            refused = Some(text);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let refused = refused.expect("writes fail once the store cannot grow its files");
    println!("refused while full: {refused}");
    // The storage error is printed once, not once per error in its chain.
    let parts: Vec<&str> = refused.trim().split(": ").collect();
    for (i, part) in parts.iter().enumerate() {
        assert!(
            !parts[i + 1..]
                .iter()
                .any(|later| later.contains(part) || part.contains(later)),
            "the reason repeats {part:?}: {refused}"
        );
    }
    for path in ["health", "ready"] {
        let (status, body) = local.get(&format!("{}/{path}", local.http())).await;
        assert_eq!(
            status, 503,
            "/{path} reports a store that cannot write: {body}"
        );
        assert!(body.contains("cannot write"), "{body}");
    }

    // The window is flushed while the disk is full: its store fails and it is not acked.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, metrics) = local.get(&format!("{}/metrics", local.http())).await;
        let refused_ingest = metrics.lines().any(|line| {
            line.contains("ingest_errors_total{reason=\"storage_error\"}") && !line.ends_with(" 0")
        });
        if refused_ingest {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no aggregated window was refused by the full store within 60s"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    limit("unlimited:");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, text) = local.remote_write(&write(100.0)).await;
        if status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "writes did not resume within 30s after space returned: {status} {text}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (status, body) = local.get(&format!("{}/health", local.http())).await;
    assert_eq!(status, 200, "{body}");
    let stored = local.query("disk", &[]).await;
    assert_eq!(
        stored["data"]["result"][0]["value"][1], "100",
        "the write after recovery is readable: {stored}"
    );
    // The un-acked window is redelivered and stored once space returns: one point, its Last.
    let aggregated = [
        ("M3-Metrics-Type", "aggregated"),
        ("M3-Storage-Policy", "10s:2d"),
    ];
    let redelivered = local
        .wait_for_points("disk_window[5m]", &aggregated, |got| {
            got["data"]["result"][0]["values"]
                .as_array()
                .is_some_and(|v| !v.is_empty())
        })
        .await;
    let points = &redelivered["data"]["result"][0]["values"];
    assert_eq!(
        points,
        &serde_json::json!([[window_end / 1000, "7"]]),
        "the window refused while the disk was full is stored after it: {redelivered}"
    );
    local.stop().await;
}

/// docs/limits.md's bound per query: the samples it holds (`maxSamples`, 16 B each) and its
/// share of the answer. Twenty concurrent queries, each over the limit, stay inside twenty
/// times that, and are answered 422; within the limit the store still answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_queries_stay_inside_the_memory_bound() {
    const MAX_SAMPLES: u64 = 100_000;
    const QUERIES: u64 = 20;
    let config = CONFIG.replace(
        "  writeBuffers:",
        &format!("  limits:\n    query:\n      maxSamples: {MAX_SAMPLES}\n  writeBuffers:"),
    );
    let local = LocalProcess::start_with("query-memory", &config, &[]).await;
    let now = now_ms();
    // 3,000 series of 50 samples: 150,000 samples, more than one query may hold.
    for part in 0..3 {
        let request = WriteRequest {
            timeseries: (0..1000)
                .map(|i| {
                    let name = format!("s{part}_{i}");
                    series(
                        &[("__name__", "wide"), ("i", name.as_str())],
                        &(0..50)
                            .map(|k: i64| (now - 25_000 + k * 500, k as f64))
                            .collect::<Vec<_>>(),
                    )
                })
                .collect(),
        };
        let (status, text) = local.remote_write(&request.encode_to_vec()).await;
        assert_eq!(status, 200, "{text}");
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    local.reset_peak_rss();
    let base = local.peak_rss();
    let client = reqwest::Client::new();
    let url = format!(
        "{}/api/v1/query?query={}",
        local.http(),
        support::url_encode("wide[5m]")
    );
    let answers = futures_join_all((0..QUERIES).map(|_| {
        let (client, url) = (client.clone(), url.clone());
        async move {
            client
                .get(url)
                .send()
                .await
                .expect("answers")
                .status()
                .as_u16()
        }
    }))
    .await;
    assert!(answers.iter().all(|s| *s == 422), "{answers:?}");
    let grown = local.peak_rss().saturating_sub(base);
    let bound = QUERIES * MAX_SAMPLES * 16 * 4;
    println!(
        "{QUERIES} concurrent queries grew the peak RSS by {} MiB (bound {} MiB)",
        grown / MIB,
        bound / MIB
    );
    assert!(
        grown <= bound,
        "{QUERIES} concurrent queries grew the peak RSS by {} MiB, over {} MiB",
        grown / MIB,
        bound / MIB
    );
    let one = local.query("wide{i=\"s0_1\"}[5m]", &[]).await;
    assert_eq!(one["status"], "success", "{one}");
    local.stop().await;
}

/// Awaits every future, concurrently.
async fn futures_join_all<F>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for handle in handles {
        out.push(handle.await.expect("query task"));
    }
    out
}

/// Regression: `num_shards` 1e9 built a placement of over 4 GiB before checking anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placement_init_with_a_billion_shards_is_refused_at_once() {
    let local = LocalProcess::start("shards").await;
    local.reset_peak_rss();
    let base = local.peak_rss();
    let body = r#"{"num_shards": 1000000000, "replication_factor": 1, "instances": [
        {"id": "db1", "isolation_group": "a", "zone": "embedded", "weight": 100,
         "endpoint": "db1:9000", "hostname": "db1", "port": 9000}]}"#;
    // Refused before anything is built: no growth, and an answer (a build would take minutes).
    let response = tokio::time::timeout(
        Duration::from_secs(60),
        reqwest::Client::new()
            .post(format!(
                "{}/api/v1/services/m3db/placement/init",
                local.http()
            ))
            .body(body)
            .send(),
    )
    .await
    .expect("answered without building the placement")
    .expect("answers");
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("maxShards"), "{text}");
    assert!(local.peak_rss().saturating_sub(base) < 64 * MIB);
    // An instance ID longer than allowed is refused too.
    let long = format!(
        r#"{{"instances": [{{"id": "{}", "zone": "embedded", "endpoint": "c:7507", "hostname": "c", "port": 7507}}]}}"#,
        "c".repeat(300)
    );
    let response = reqwest::Client::new()
        .post(format!(
            "{}/api/v1/services/m3coordinator/placement/init",
            local.http()
        ))
        .body(long)
        .send()
        .await
        .expect("answers");
    assert_eq!(response.status().as_u16(), 400);
    local.stop().await;
}

/// Regression: queries had no limits (`{__name__=~".+"}` over 2 h at 1 s answered 1.45 GB).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_over_the_sample_limit_get_prometheus_error() {
    let config = CONFIG.replace(
        "  writeBuffers:",
        "  limits:\n    query:\n      maxSamples: 50\n  writeBuffers:",
    );
    let local = LocalProcess::start_with("query-limits", &config, &[]).await;
    let now = now_ms();
    let request = WriteRequest {
        timeseries: (0..10)
            .map(|i| {
                let name = format!("s{i}");
                series(
                    &[("__name__", "many"), ("i", name.as_str())],
                    &(0..10)
                        .map(|k| (now - 60_000 + k * 1000, 1.0))
                        .collect::<Vec<_>>(),
                )
            })
            .collect(),
    };
    let (status, text) = local.remote_write(&request.encode_to_vec()).await;
    assert_eq!(status, 200, "{text}");
    let response = reqwest::Client::new()
        .get(format!(
            "{}/api/v1/query?query={}",
            local.http(),
            support::url_encode("{__name__=~\".+\"}[5m]")
        ))
        .send()
        .await
        .expect("answers");
    assert_eq!(response.status().as_u16(), 422);
    let body: serde_json::Value = response.json().await.expect("JSON");
    assert_eq!(body["errorType"], "execution", "{body}");
    assert_eq!(
        body["error"],
        "query processing would load too many samples into memory in query execution"
    );
    // Within the limit the same store answers.
    let small = local.query("many{i=\"s1\"}", &[]).await;
    assert_eq!(small["status"], "success", "{small}");
    local.stop().await;
}

/// Writes `config` to `dir/m3local.yml` and runs `m3 local` with it to its exit: what it
/// printed and exited with, and the config file's path.
fn run_local_with_config(
    dir: &std::path::Path,
    config: &str,
) -> (std::process::Output, std::path::PathBuf) {
    let path = dir.join("m3local.yml");
    std::fs::write(&path, config).expect("write config");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_m3"))
        .args(["local", "-f"])
        .arg(&path)
        .output()
        .expect("m3 runs");
    (output, path)
}

/// Regression: a data directory that is a file was reported as "File exists".
#[test]
fn a_data_dir_that_is_a_file_is_named_as_such() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("data");
    std::fs::write(&file, b"not a directory").expect("write");
    let (output, _) = run_local_with_config(
        dir.path(),
        &CONFIG.replace("DATA_DIR", &file.display().to_string()),
    );
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("is not a directory") && stderr.contains("dataDir"),
        "{stderr}"
    );
}

/// `m3 local` runs one aggregator or a pair: three, or addresses that do not pair up, are a
/// config error naming the key and the file, and nothing starts; so is a flush allowed no
/// unacked bytes.
#[test]
fn aggregator_address_counts_other_than_one_or_two_are_named() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let two = r#"  listenAddresses: ["127.0.0.1:0", "127.0.0.1:0"]"#;
    assert!(
        CONFIG.contains(two),
        "the test config lists two aggregators"
    );
    let cases = [
        (
            r#"  listenAddresses: ["127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"]"#.to_string(),
            "aggregators.listenAddresses",
            "3 addresses given",
        ),
        (
            r#"  listenAddresses: ["127.0.0.1:0"]"#.to_string(),
            "aggregators.httpListenAddresses",
            "1 listenAddresses, 2 httpListenAddresses",
        ),
    ];
    for (addresses, key, reason) in cases {
        let (output, config) = run_local_with_config(
            dir.path(),
            &CONFIG
                .replace("DATA_DIR", &data.display().to_string())
                .replace(two, &addresses),
        );
        assert_eq!(output.status.code(), Some(2), "{addresses}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains(key)
                && stderr.contains(reason)
                && stderr.contains(&config.display().to_string()),
            "{addresses}: {stderr}"
        );
        assert!(!data.exists(), "nothing started for {addresses}");
    }
}

/// A remote-write request is admitted (`limits.remoteWrite.maxConcurrentRequests`) before its
/// body is read: a sender that trickles its body holds the only slot, the next request gets 429
/// with Retry-After at once, the trickler gets 408 after `bodyTimeout`, and the slot is free
/// again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_body_holds_one_slot_others_get_429_then_it_gets_408() {
    let config = CONFIG.replace(
        "  writeBuffers:",
        "  limits:\n    remoteWrite:\n      maxConcurrentRequests: 1\n      bodyTimeout: 20s\n  writeBuffers:",
    );
    let local = LocalProcess::start_with("write-admission", &config, &[]).await;
    let address = local.http().trim_start_matches("http://").to_string();
    let mut trickler = tokio::net::TcpStream::connect(&address)
        .await
        .expect("connects");
    trickler
        .write_all(
            format!(
                "POST /api/v1/prom/remote/write HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/x-protobuf\r\nContent-Encoding: snappy\r\nContent-Length: 100\r\n\r\nabc"
            )
            .as_bytes(),
        )
        .await
        .expect("writes");
    let request = WriteRequest {
        timeseries: vec![series(&[("__name__", "admitted")], &[(now_ms(), 1.0)])],
    };
    // The trickler's request takes the slot once the coordinator has read its headers, and holds
    // it for the 20s body timeout: wait until the coordinator shows it held, then ask.
    let held_until = Instant::now() + Duration::from_secs(15);
    loop {
        let (_, metrics) = local.get(&format!("{}/metrics", local.http())).await;
        if metrics.contains("write_requests_in_flight 1") {
            break;
        }
        assert!(
            Instant::now() < held_until,
            "the trickler's request never took the slot:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, text) = local.remote_write(&request.encode_to_vec()).await;
    assert_eq!(
        status, 429,
        "a second request while the slot is held: {text}"
    );
    assert!(text.contains("in flight"), "{text}");

    let mut answer = vec![0u8; 4096];
    let read = tokio::time::timeout(Duration::from_secs(60), trickler.read(&mut answer))
        .await
        .expect("the trickler is answered once its body times out")
        .expect("reads");
    let answer = String::from_utf8_lossy(&answer[..read]);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        answer.contains("limits.remoteWrite.bodyTimeout"),
        "{answer}"
    );

    let (status, text) = local.remote_write(&request.encode_to_vec()).await;
    assert_eq!(status, 200, "the slot is free again: {text}");
    let (_, metrics) = local.get(&format!("{}/metrics", local.http())).await;
    assert!(
        metrics.contains("write_requests_in_flight 0")
            && metrics.contains("reason=\"body_timeout\"} 1")
            && metrics.contains("write_requests_throttled_total 1"),
        "the 429 and the 408 are counted:\n{metrics}"
    );
    local.stop().await;
}

/// Regression: a request whose frames towards one aggregator exceeded the batch cap
/// (`maxBatchSize`) was stored raw whole but aggregated only up to the cap, then answered 400,
/// which Prometheus does not retry. Now it is split and aggregated whole: after the final flush
/// at shutdown every series has its window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_over_the_batch_cap_is_split_and_aggregated_whole() {
    const SERIES: usize = 1000;
    let config = CONFIG.replace(
        "        queueDropType: oldest",
        "        queueDropType: oldest\n        maxBatchSize: 4096",
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let local = LocalProcess::start_in_with(dir.path(), &config).await;
    // A window that has ended but is inside the 30s past buffer: the final flush emits it.
    let window_start = (now_ms() / 10_000) * 10_000 - 10_000;
    let names: Vec<String> = (0..SERIES).map(|i| format!("s{i:04}")).collect();
    let request = WriteRequest {
        timeseries: names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                series(
                    &[("__name__", "split"), ("i", name.as_str())],
                    &[(window_start + 5_000, i as f64)],
                )
            })
            .collect(),
    };
    let (status, text) = local.remote_write(&request.encode_to_vec()).await;
    assert_eq!(status, 200, "{text}");
    local.stop().await;

    let local = LocalProcess::start_in_with(dir.path(), &config).await;
    let result = local
        .query(
            "split[5m]",
            &[
                ("M3-Metrics-Type", "aggregated"),
                ("M3-Storage-Policy", "10s:2d"),
            ],
        )
        .await;
    let mut windows = 0;
    let mut wrong = Vec::new();
    for series in result["data"]["result"].as_array().into_iter().flatten() {
        let i: usize = series["metric"]["i"]
            .as_str()
            .and_then(|name| name.trim_start_matches('s').parse().ok())
            .unwrap_or(usize::MAX);
        for point in series["values"].as_array().into_iter().flatten() {
            windows += 1;
            let t = (point[0].as_f64().unwrap_or(0.0) * 1000.0).round() as i64;
            let value: f64 = point[1]
                .as_str()
                .and_then(|v| v.parse().ok())
                .unwrap_or(f64::NAN);
            if t != window_start + 10_000 || value != i as f64 {
                wrong.push(format!("s{i:04} @{t}: {value}"));
            }
        }
    }
    assert!(
        windows == SERIES && wrong.is_empty(),
        "{windows} windows stored of {SERIES}; wrong: {wrong:?}"
    );
    local.stop().await;
}
