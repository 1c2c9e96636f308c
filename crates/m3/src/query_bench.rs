//! `m3 query-bench`: the same range query timed against several Prometheus-compatible query
//! APIs holding the same data, so their speeds compare in one run on one machine.
//!
//! 1. Writes `--series` counters, one sample every 15 s over the last `--range` (plus five
//!    minutes, so the first step's `rate` window is full), to every target's remote-write
//!    endpoint: the same bytes to each.
//! 2. Asks each target `--query` as a range query over the last `--range` at `--step`, twice
//!    to warm up, then `--runs` times, and prints the median and fastest wall time of each, the
//!    ratio of every target's median to the first target's (the baseline), and whether the
//!    answers agree (same series, same points, values within 1e-9 relative).
//!
//! Targets are `NAME=URL` or `NAME=URL,WRITE_PATH` (default write path `/api/v1/write`, what
//! Prometheus' receiver takes; the coordinator's is `/api/v1/prom/remote/write`).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use m3_proto::prometheus::{Label, Sample, TimeSeries, WriteRequest};
use prost::Message;

/// One API under test.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    name: String,
    url: String,
    write_path: String,
}

/// Parses `NAME=URL[,WRITE_PATH]`.
pub(crate) fn parse_target(text: &str) -> Result<Target, String> {
    let (name, rest) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?}: expected NAME=URL[,WRITE_PATH]"))?;
    let (url, write_path) = rest.split_once(',').unwrap_or((rest, "/api/v1/write"));
    Ok(Target {
        name: name.to_owned(),
        url: url.trim_end_matches('/').to_owned(),
        write_path: write_path.to_owned(),
    })
}

/// What to write and ask.
#[derive(Debug)]
pub(crate) struct QueryBenchOptions {
    pub(crate) targets: Vec<Target>,
    pub(crate) series: usize,
    pub(crate) range: Duration,
    pub(crate) step: Duration,
    pub(crate) runs: usize,
    pub(crate) query: String,
}

const SCRAPE_MS: i64 = 15_000;
const METRIC: &str = "bench_http_requests_total";

/// Runs the benchmark and prints its report.
pub(crate) async fn run(options: QueryBenchOptions) -> anyhow::Result<()> {
    if options.targets.is_empty() {
        bail!("give at least one --target");
    }
    if options.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as i64;
    let end = now / SCRAPE_MS * SCRAPE_MS - SCRAPE_MS;
    let range_ms = options.range.as_millis() as i64;
    let start = end - range_ms;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(600))
        .build()?;

    let bodies = encode(options.series, start - 5 * 60_000, end);
    let samples = options.series as i64 * ((end - start + 5 * 60_000) / SCRAPE_MS + 1);
    println!(
        "== writing {} series, {samples} samples ({} requests) to each target",
        options.series,
        bodies.len()
    );
    for target in &options.targets {
        let url = format!("{}{}", target.url, target.write_path);
        for body in &bodies {
            // Retried on 503 and 429, as Prometheus retries: the target is catching up.
            let mut attempts = 0;
            loop {
                let response = client
                    .post(&url)
                    .header("Content-Encoding", "snappy")
                    .header("Content-Type", "application/x-protobuf")
                    .header("X-Prometheus-Remote-Write-Version", "0.1.0")
                    .body(body.clone())
                    .send()
                    .await
                    .with_context(|| format!("remote write to {}", target.name))?;
                let status = response.status();
                let text = response.text().await.unwrap_or_default();
                if status.is_success() {
                    break;
                }
                let busy = status == reqwest::StatusCode::SERVICE_UNAVAILABLE
                    || status == reqwest::StatusCode::TOO_MANY_REQUESTS;
                attempts += 1;
                if !busy || attempts > 300 {
                    bail!("{} refused a write: {status} {text}", target.name);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    println!(
        "== {:?} over {}s at a {}s step, {} runs after 2 warm-ups",
        options.query,
        range_ms / 1000,
        options.step.as_secs_f64(),
        options.runs
    );
    let mut medians = Vec::new();
    let mut answers = Vec::new();
    for target in &options.targets {
        let params = [
            ("query", options.query.clone()),
            ("start", format!("{:.3}", start as f64 / 1000.0)),
            ("end", format!("{:.3}", end as f64 / 1000.0)),
            ("step", format!("{}", options.step.as_secs_f64())),
        ];
        let url = format!("{}/api/v1/query_range", target.url);
        let mut times = Vec::new();
        let mut answer = serde_json::Value::Null;
        for run in 0..options.runs + 2 {
            let started = Instant::now();
            let response = client
                .post(&url)
                .form(&params)
                .send()
                .await
                .with_context(|| format!("query to {}", target.name))?;
            let body: serde_json::Value = response
                .json()
                .await
                .with_context(|| format!("answer of {}", target.name))?;
            let elapsed = started.elapsed();
            if body["status"] != "success" {
                bail!("{} refused the query: {body}", target.name);
            }
            if run >= 2 {
                times.push(elapsed);
            }
            answer = body["data"]["result"].clone();
        }
        times.sort();
        let median = times[times.len() / 2];
        let points: usize = answer
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|s| s["values"].as_array().map_or(0, Vec::len))
                    .sum()
            })
            .unwrap_or(0);
        println!(
            "{:<12} median {:>9.1} ms   fastest {:>9.1} ms   {} series, {points} points",
            target.name,
            median.as_secs_f64() * 1e3,
            times[0].as_secs_f64() * 1e3,
            answer.as_array().map_or(0, Vec::len),
        );
        medians.push(median);
        answers.push(answer);
    }
    let baseline = &options.targets[0];
    for (target, (median, answer)) in options
        .targets
        .iter()
        .zip(medians.iter().zip(&answers))
        .skip(1)
    {
        println!(
            "speed {} / {}: {:.2}x (median query time {:.1} ms vs {:.1} ms); answers {}",
            target.name,
            baseline.name,
            medians[0].as_secs_f64() / median.as_secs_f64(),
            median.as_secs_f64() * 1e3,
            medians[0].as_secs_f64() * 1e3,
            if same_matrix(&answers[0], answer) {
                "agree"
            } else {
                "DIFFER"
            }
        );
    }
    Ok(())
}

/// Remote-write bodies (snappy) holding every series' samples in `[from, to]`: in time order,
/// five minutes of 2,000 series per request, as scrapes arrive (Prometheus refuses samples
/// more than an hour older than the newest it holds, unless out-of-order ingestion is on).
fn encode(series: usize, from: i64, to: i64) -> Vec<Vec<u8>> {
    const SLICE_MS: i64 = 5 * 60_000;
    let indices: Vec<usize> = (0..series).collect();
    let mut bodies = Vec::new();
    let mut slice_start = from;
    while slice_start <= to {
        let slice_end = (slice_start + SLICE_MS - 1).min(to);
        for chunk in indices.chunks(2000) {
            let request = WriteRequest {
                timeseries: chunk
                    .iter()
                    .map(|&i| series_in(i, from, slice_start, slice_end))
                    .collect(),
            };
            bodies.push(
                snap::raw::Encoder::new()
                    .compress_vec(&request.encode_to_vec())
                    .unwrap_or_default(),
            );
        }
        slice_start += SLICE_MS;
    }
    bodies
}

/// Series `i`'s samples in `[slice_start, slice_end]`: a counter scraped every 15 s from
/// `from` (shifted by a per-series phase), growing by `i % 7 + 1` per scrape.
fn series_in(i: usize, from: i64, slice_start: i64, slice_end: i64) -> TimeSeries {
    let phase = (i as i64 * 97) % SCRAPE_MS;
    let labels = [
        ("__name__", METRIC.to_owned()),
        ("instance", format!("host-{i}:9100")),
        ("job", format!("job-{}", i % 10)),
    ];
    let first = (slice_start - from - phase + SCRAPE_MS - 1)
        .div_euclid(SCRAPE_MS)
        .max(0);
    let samples = (first..)
        .map(|k| (k, from + phase + k * SCRAPE_MS))
        .take_while(|(_, t)| *t <= slice_end)
        .map(|(k, t)| Sample {
            value: ((k + 1) * ((i % 7) as i64 + 1)) as f64,
            timestamp: t,
        })
        .collect();
    TimeSeries {
        labels: labels
            .iter()
            .map(|(n, v)| Label {
                name: (*n).to_owned(),
                value: v.clone(),
            })
            .collect(),
        samples,
    }
}

/// Whether two matrices hold the same series and points, values within 1e-9 relative.
fn same_matrix(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    let index = |m: &serde_json::Value| -> std::collections::BTreeMap<String, Vec<(f64, f64)>> {
        m.as_array()
            .into_iter()
            .flatten()
            .map(|s| {
                let points = s["values"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|p| {
                        (
                            p[0].as_f64().unwrap_or(f64::NAN),
                            p[1].as_str()
                                .and_then(|v| v.parse().ok())
                                .unwrap_or(f64::NAN),
                        )
                    })
                    .collect();
                (s["metric"].to_string(), points)
            })
            .collect()
    };
    let (a, b) = (index(a), index(b));
    a.len() == b.len()
        && a.iter().zip(&b).all(|((ka, pa), (kb, pb))| {
            ka == kb
                && pa.len() == pb.len()
                && pa.iter().zip(pb).all(|(x, y)| {
                    x.0 == y.0
                        && ((x.1 - y.1).abs() <= 1e-9 * x.1.abs().max(y.1.abs()) || x.1 == y.1)
                })
        })
}
