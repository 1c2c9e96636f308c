//! `m3 bench`: a load generator that writes Prometheus remote-write traffic to a coordinator and
//! reports what happened to it.
//!
//! The generator plays a Prometheus with `--series` series of `--labels` labels each. Every
//! series gets one sample per *round*; a round is cut into requests of at most `--batch`
//! samples, and `--concurrency` workers each keep one request in flight:
//!
//! ```text
//! round r:    [series 0 .. batch) [batch .. 2·batch) ... [.. series)    one sample each,
//! round r+1:  [series 0 .. batch) ...                                   value changes per round
//!
//! pacer:      |--n/rate--|--n/rate--|--n/rate--|   each request of n samples reserves its
//!             ^ req 1    ^ req 2    ^ req 3        send time; a worker sleeps until then
//! ```
//!
//! The pacer is a token bucket with one token per sample and a burst of one request: a request
//! of `n` samples may start `n / rate` seconds after the previous one, and a request that starts
//! late does not let the next one start early, so the target is never exceeded. With `--rate 0`
//! the workers send as fast as the coordinator answers.
//!
//! Timestamps are the request's scheduled send time in milliseconds, so samples fall inside the
//! aggregation buffers as a live Prometheus's do. A round faster than a millisecond (rate /
//! series > 1000) gives a series two samples with the same timestamp, which Prometheus never
//! sends; use more series for such rates.
//!
//! Requests are not retried: the point is to count what the coordinator accepted (2xx),
//! rejected (4xx, with the first reason) and failed (5xx or a transport error). Before and after
//! the run the coordinator's `/metrics` are read, and their differences show what it received,
//! stored raw, forwarded to the aggregators, dropped (by reason) and — once windows close —
//! stored aggregated. `--pid` adds the CPU time those processes used during the run.
//!
//! # Encoding
//!
//! The labels of every series are encoded once, at start, as the label fields of a
//! [`TimeSeries`]. A request is then the concatenation, per series, of the `timeseries` field
//! header, those label bytes and the one `Sample` field: byte for byte what prost produces for
//! the same [`WriteRequest`] (a test pins this), without holding a million label strings or
//! re-encoding them every round. The body is compressed as a snappy block, as Prometheus does.
//!
//! | module | what it holds |
//! |---|---|
//! | [`series`] | the generated series and their encoding |
//! | [`schedule`] | the pacer |
//! | [`load`] | the workers and what they counted |
//! | [`coordinator`] | the coordinator's `/metrics` before and after |
//! | [`cpu`] | CPU time of `--pid` processes |
//! | [`report`] | the summary |
//!
//! [`TimeSeries`]: m3_proto::prometheus::TimeSeries
//! [`WriteRequest`]: m3_proto::prometheus::WriteRequest

mod coordinator;
mod cpu;
mod load;
mod report;
mod schedule;
mod series;
mod windows;

use coordinator::{CoordinatorDiff, scrape, wait_for_stored};
use cpu::{CpuUse, ResidentSampler, cpu_time, own_cpu_time};
use load::send;
use report::Report;
use series::SeriesSet;
use windows::WindowTally;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};

/// What `m3 bench` was asked to do. See the flags of `m3 bench --help`.
#[derive(Debug, Clone)]
pub(crate) struct BenchOptions {
    /// The coordinator's base URL, e.g. `http://127.0.0.1:7201`.
    pub url: String,
    /// The remote-write path under `url`.
    pub write_path: String,
    /// Number of distinct series.
    pub series: usize,
    /// Target samples per second; 0 sends as fast as the coordinator answers.
    pub rate: u64,
    /// How long to send.
    pub duration: Duration,
    /// Samples (one per series) per request.
    pub batch: usize,
    /// Requests in flight at once.
    pub concurrency: usize,
    /// Labels per series, `__name__` included.
    pub labels: usize,
    /// Prefix of every metric name.
    pub metric_prefix: String,
    /// How long to wait after sending for aggregated output to be stored.
    pub wait_stored: Duration,
    /// Processes whose CPU time to report.
    pub pids: Vec<u32>,
    /// The resolutions of the coordinator's aggregated namespaces: one output is expected
    /// per series, resolution and window.
    pub resolutions: Vec<Duration>,
    /// The aggregators' past buffer (`bufferDurationForPastTimedMetric`): a window is due
    /// once window end + past buffer + resolution has passed.
    pub buffer_past: Duration,
}

/// Runs the benchmark and prints its summary on stdout.
///
/// # Errors
/// Invalid options, a coordinator that cannot be reached, a `--pid` with no process.
pub(crate) async fn run(options: BenchOptions) -> anyhow::Result<()> {
    validate(&options)?;
    let base = options.url.trim_end_matches('/').to_string();
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(options.concurrency)
        .user_agent(concat!("m3-bench/", env!("CARGO_PKG_VERSION")))
        .build()
        .context("building the HTTP client")?;

    let series = SeriesSet::generate(options.series, options.labels, &options.metric_prefix);
    if options.rate > 0 && options.rate / options.series as u64 > 1000 {
        eprintln!(
            "note: {} samples/s over {} series is more than one round per millisecond; \
             a series will get several samples with the same timestamp",
            options.rate, options.series
        );
    }

    let metrics_url = format!("{base}/metrics");
    let before = scrape(&client, &metrics_url).await.with_context(|| {
        format!(
            "cannot reach the coordinator at {base} (is `m3 local` or `m3coordinator` \
             running there? pass its address with --url)"
        )
    })?;
    if before.is_none() {
        eprintln!(
            "note: {metrics_url} has no coordinator metrics; stored counts will not be shown"
        );
    }
    let mut cpu_before = Vec::with_capacity(options.pids.len());
    for &pid in &options.pids {
        cpu_before.push(cpu_time(pid)?);
    }
    let own_before = own_cpu_time();

    let windows = Arc::new(WindowTally::new(&options.resolutions));
    let resident = ResidentSampler::start(options.pids.clone());
    let load = send(
        &options,
        &client,
        &format!("{base}{}", options.write_path),
        series,
        Arc::clone(&windows),
    )
    .await;

    let mut resident_over_run = resident.finish().await.into_iter();
    let mut cpu = Vec::with_capacity(options.pids.len());
    for (&pid, before) in options.pids.iter().zip(cpu_before) {
        let after = cpu_time(pid)?;
        cpu.push(CpuUse {
            what: format!("pid {pid}"),
            seconds: after.saturating_sub(before).as_secs_f64(),
            resident_bytes: cpu::resident_bytes(pid),
            resident_over_run: resident_over_run.next().flatten(),
        });
    }
    if let (Some(before), Some(after)) = (own_before, own_cpu_time()) {
        cpu.push(CpuUse {
            what: "m3 bench itself".to_string(),
            seconds: after.saturating_sub(before).as_secs_f64(),
            resident_bytes: None,
            resident_over_run: None,
        });
    }

    let after_send_at = schedule::wall_clock_ms();
    let after_send = match &before {
        Some(_) => scrape(&client, &metrics_url).await.ok().flatten(),
        None => None,
    };
    // The last reading, and when it was asked for: windows are due as of then.
    let (after, counted_at) = match (&before, options.wait_stored.is_zero()) {
        (Some(before), false) => {
            match wait_for_stored(&client, &metrics_url, before, options.wait_stored).await {
                Some((scrape, at)) => (Some(scrape), at),
                None => (None, schedule::wall_clock_ms()),
            }
        }
        _ => (after_send.clone(), after_send_at),
    };
    let coordinator = match (before, after_send, after) {
        (Some(before), Some(after_send), Some(after)) => Some(CoordinatorDiff::between(
            &before,
            &after_send,
            &after,
            options.wait_stored,
        )),
        _ => None,
    };

    let expected = windows.expected(counted_at, options.buffer_past);
    let report = Report {
        options,
        load,
        coordinator,
        cpu,
        expected,
        resolutions: windows.resolutions(),
    };
    print!("{report}");
    Ok(())
}

fn validate(options: &BenchOptions) -> anyhow::Result<()> {
    let mut problems = Vec::new();
    if !options.url.starts_with("http://") {
        problems.push(format!(
            "--url {:?}: expected an http:// URL such as http://127.0.0.1:7201",
            options.url
        ));
    }
    for (flag, value) in [
        ("--series", options.series),
        ("--batch", options.batch),
        ("--concurrency", options.concurrency),
    ] {
        if value == 0 {
            problems.push(format!("{flag} must be at least 1"));
        }
    }
    if options.labels < 2 {
        problems.push(format!(
            "--labels {}: every series needs at least __name__ and instance (2 labels)",
            options.labels
        ));
    }
    if !options.write_path.starts_with('/') {
        problems.push(format!(
            "--write-path {:?} must start with /",
            options.write_path
        ));
    }
    if options.duration.is_zero() {
        problems.push("--duration must be longer than 0".to_string());
    }
    if options.resolutions.is_empty() || options.resolutions.iter().any(Duration::is_zero) {
        problems.push(
            "--resolutions must list the aggregated namespaces' resolutions, each longer than 0"
                .to_string(),
        );
    }
    if problems.is_empty() {
        Ok(())
    } else {
        bail!("{}", problems.join("\n       "))
    }
}

/// Parses `--duration` and `--wait-stored`: a duration such as `30s`, `2m`, `1m30s`, or a bare
/// number of seconds.
///
/// # Errors
/// Text that is neither.
pub(crate) fn parse_duration_arg(text: &str) -> Result<Duration, String> {
    if let Ok(seconds) = text.trim().parse::<u64>() {
        return Ok(Duration::from_secs(seconds));
    }
    m3_config::duration::parse_duration(text).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_go_style_or_seconds() {
        assert_eq!(parse_duration_arg("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration_arg("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration_arg("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration_arg("soon").is_err());
    }

    #[test]
    fn invalid_options_are_reported_together() {
        let options = BenchOptions {
            url: "127.0.0.1:7201".into(),
            write_path: "api/v1/write".into(),
            series: 0,
            rate: 0,
            duration: Duration::ZERO,
            batch: 1,
            concurrency: 0,
            labels: 1,
            metric_prefix: String::new(),
            wait_stored: Duration::ZERO,
            pids: Vec::new(),
            resolutions: vec![Duration::ZERO],
            buffer_past: Duration::ZERO,
        };
        let message = validate(&options).expect_err("invalid").to_string();
        for part in [
            "--url",
            "--write-path",
            "--resolutions",
            "--series",
            "--concurrency",
            "--labels",
            "--duration",
        ] {
            assert!(message.contains(part), "{part} missing from {message}");
        }
    }
}
