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
//! header, those label bytes and the one [`Sample`] field: byte for byte what prost produces for
//! the same [`WriteRequest`] (a test pins this), without holding a million label strings or
//! re-encoding them every round. The body is compressed as a snappy block, as Prometheus does.
//!
//! [`TimeSeries`]: m3_proto::prometheus::TimeSeries
//! [`WriteRequest`]: m3_proto::prometheus::WriteRequest

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};
use m3_proto::Message;
use m3_proto::prometheus::{Label, Sample, TimeSeries};
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

/// What `m3 bench` was asked to do. See the flags of `m3 bench --help`.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// The coordinator's base URL, e.g. `http://127.0.0.1:7201`.
    pub url: String,
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
}

/// Runs the benchmark and prints its summary on stdout.
///
/// # Errors
/// Invalid options, a coordinator that cannot be reached, a `--pid` with no process.
pub async fn run(options: BenchOptions) -> anyhow::Result<()> {
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

    let load = send(
        &options,
        &client,
        &format!("{base}/api/v1/prom/remote/write"),
        series,
    )
    .await;

    let mut cpu = Vec::with_capacity(options.pids.len());
    for (&pid, before) in options.pids.iter().zip(cpu_before) {
        let after = cpu_time(pid)?;
        cpu.push(CpuUse {
            what: format!("pid {pid}"),
            seconds: after.saturating_sub(before).as_secs_f64(),
        });
    }
    if let (Some(before), Some(after)) = (own_before, own_cpu_time()) {
        cpu.push(CpuUse {
            what: "m3 bench itself".to_string(),
            seconds: after.saturating_sub(before).as_secs_f64(),
        });
    }

    let after_send = match &before {
        Some(_) => scrape(&client, &metrics_url).await.ok().flatten(),
        None => None,
    };
    let after = match (&before, options.wait_stored.is_zero()) {
        (Some(before), false) => {
            wait_for_stored(&client, &metrics_url, before, options.wait_stored).await
        }
        _ => after_send.clone(),
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

    let report = Report {
        options,
        load,
        coordinator,
        cpu,
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
    if options.duration.is_zero() {
        problems.push("--duration must be longer than 0".to_string());
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
pub fn parse_duration_arg(text: &str) -> Result<Duration, String> {
    if let Ok(seconds) = text.trim().parse::<u64>() {
        return Ok(Duration::from_secs(seconds));
    }
    m3_metric::duration::parse_duration(text).map_err(|e| e.to_string())
}

// ---------------------------------------------------------------------------------------------
// Series and encoding
// ---------------------------------------------------------------------------------------------

/// Metric families, after the prefix: what a Kubernetes Prometheus scrapes most of.
const FAMILIES: &[&str] = &[
    "http_requests_total",
    "http_request_duration_seconds_sum",
    "process_cpu_seconds_total",
    "process_resident_memory_bytes",
    "go_goroutines",
    "container_cpu_usage_seconds_total",
    "container_memory_working_set_bytes",
    "up",
];

const JOBS: &[&str] = &["api", "web", "checkout", "search", "node-exporter"];
const NAMESPACES: &[&str] = &["default", "payments", "search", "monitoring", "kube-system"];
const REGIONS: &[&str] = &["us-east-1", "eu-west-1", "ap-south-1"];

/// The labels of series `index`, sorted by name: `__name__`, `instance` (unique within the
/// family), then target labels, then `label_NN` fillers when more are asked for.
fn series_labels(index: usize, labels: usize, prefix: &str) -> Vec<(String, String)> {
    let family = index % FAMILIES.len();
    let n = index / FAMILIES.len();
    let job = JOBS[n % JOBS.len()];
    let node = n / 20;
    let mut pairs = vec![
        (
            "__name__".to_string(),
            format!("{prefix}{}", FAMILIES[family]),
        ),
        (
            "instance".to_string(),
            format!(
                "10.{}.{}.{}:{}",
                (n >> 16) & 0xff,
                (n >> 8) & 0xff,
                n & 0xff,
                9100 + (n >> 24)
            ),
        ),
    ];
    let targets: [(&str, String); 10] = [
        ("job", job.to_string()),
        (
            "pod",
            format!("{job}-{:08x}-{:05}", hash32(n as u64), n % 100_000),
        ),
        ("namespace", NAMESPACES[n % NAMESPACES.len()].to_string()),
        ("container", job.to_string()),
        ("node", format!("node-{node:04}")),
        ("service", format!("{job}-svc")),
        ("endpoint", "http-metrics".to_string()),
        ("region", REGIONS[node % REGIONS.len()].to_string()),
        (
            "zone",
            format!(
                "{}{}",
                REGIONS[node % REGIONS.len()],
                ['a', 'b', 'c'][node % 3]
            ),
        ),
        (
            "env",
            if n.is_multiple_of(10) {
                "staging"
            } else {
                "production"
            }
            .to_string(),
        ),
    ];
    for (name, value) in targets.into_iter().take(labels.saturating_sub(2)) {
        pairs.push((name.to_string(), value));
    }
    for k in pairs.len()..labels {
        pairs.push((format!("label_{k:02}"), format!("value_{}", n % (k * 7))));
    }
    pairs.sort_by(|a, b| a.0.cmp(&b.0));
    pairs
}

/// A cheap integer mix (splitmix64's finaliser) for label values that look random.
fn hash32(x: u64) -> u32 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (z ^ (z >> 31)) as u32
}

/// Every series' labels, encoded once as the label fields of a `TimeSeries`.
#[derive(Debug)]
struct SeriesSet {
    /// The label fields of all series, back to back.
    bytes: Vec<u8>,
    /// Series `i` is `bytes[offsets[i]..offsets[i + 1]]`.
    offsets: Vec<usize>,
}

/// Key of field 1 (`WriteRequest.timeseries`), wire type 2 (length-delimited).
const TIMESERIES_KEY: u8 = 1 << 3 | 2;
/// Key of field 2 (`TimeSeries.samples`), wire type 2.
const SAMPLES_KEY: u8 = 2 << 3 | 2;

impl SeriesSet {
    fn generate(series: usize, labels: usize, prefix: &str) -> SeriesSet {
        let mut bytes = Vec::new();
        let mut offsets = Vec::with_capacity(series + 1);
        offsets.push(0);
        for i in 0..series {
            let timeseries = TimeSeries {
                labels: series_labels(i, labels, prefix)
                    .into_iter()
                    .map(|(name, value)| Label { name, value })
                    .collect(),
                samples: Vec::new(),
            };
            timeseries
                .encode(&mut bytes)
                .expect("a Vec<u8> grows as needed");
            offsets.push(bytes.len());
        }
        SeriesSet { bytes, offsets }
    }

    fn len(&self) -> usize {
        self.offsets.len() - 1
    }

    fn labels(&self, index: usize) -> &[u8] {
        &self.bytes[self.offsets[index]..self.offsets[index + 1]]
    }

    /// Encodes the `WriteRequest` with one sample at `timestamp_ms` for each series of `range`
    /// into `out` (cleared first).
    fn encode_request(
        &self,
        range: Range<usize>,
        round: u64,
        timestamp_ms: i64,
        out: &mut Vec<u8>,
    ) {
        out.clear();
        for index in range {
            let labels = self.labels(index);
            let sample = Sample {
                value: sample_value(index, round),
                timestamp: timestamp_ms,
            };
            let sample_len = sample.encoded_len();
            let series_len =
                labels.len() + 1 + prost::length_delimiter_len(sample_len) + sample_len;
            out.push(TIMESERIES_KEY);
            prost::encode_length_delimiter(series_len, out).expect("a Vec<u8> grows as needed");
            out.extend_from_slice(labels);
            out.push(SAMPLES_KEY);
            sample
                .encode_length_delimited(out)
                .expect("a Vec<u8> grows as needed");
        }
    }
}

/// The value of series `index` in `round`: a counter that grows at a per-series pace.
fn sample_value(index: usize, round: u64) -> f64 {
    (round as f64) * ((index % 7) + 1) as f64 + (index % 3) as f64 * 0.25
}

// ---------------------------------------------------------------------------------------------
// Pacing and sending
// ---------------------------------------------------------------------------------------------

/// One request to send: which series, which round, when.
#[derive(Debug, Clone, PartialEq)]
struct Claim {
    round: u64,
    series: Range<usize>,
    at: Instant,
    timestamp_ms: i64,
}

/// Hands out requests in order and paces them: the token bucket of the module docs.
#[derive(Debug)]
struct Schedule {
    series: usize,
    batch: usize,
    /// Seconds per sample; `None` for as fast as possible.
    per_sample: Option<f64>,
    start: Instant,
    start_wall_ms: i64,
    deadline: Instant,
    next_request: u64,
    next_at: Instant,
}

impl Schedule {
    fn new(series: usize, batch: usize, rate: u64, duration: Duration, start: Instant) -> Schedule {
        Schedule {
            series,
            batch,
            per_sample: (rate > 0).then(|| 1.0 / rate as f64),
            start,
            start_wall_ms: wall_clock_ms(),
            deadline: start + duration,
            next_request: 0,
            next_at: start,
        }
    }

    /// The next request, or `None` once its send time would be past the end of the run.
    fn claim(&mut self, now: Instant) -> Option<Claim> {
        let per_round = self.series.div_ceil(self.batch) as u64;
        let round = self.next_request / per_round;
        let first = (self.next_request % per_round) as usize * self.batch;
        let series = first..(first + self.batch).min(self.series);
        let at = match self.per_sample {
            Some(_) => self.next_at.max(now),
            None => now,
        };
        if at >= self.deadline {
            return None;
        }
        if let Some(per_sample) = self.per_sample {
            self.next_at = at + Duration::from_secs_f64(per_sample * series.len() as f64);
        }
        self.next_request += 1;
        let offset_ms = i64::try_from(at.duration_since(self.start).as_millis()).unwrap_or(0);
        Some(Claim {
            round,
            series,
            at,
            timestamp_ms: self.start_wall_ms + offset_ms,
        })
    }
}

fn wall_clock_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Counts shared by the workers and the progress bar.
#[derive(Debug, Default)]
struct Stats {
    requests: AtomicU64,
    sent: AtomicU64,
    accepted: AtomicU64,
    rejected: AtomicU64,
    failed: AtomicU64,
    first_rejection: Mutex<Option<String>>,
    first_failure: Mutex<Option<String>>,
}

/// How one request ended.
#[derive(Debug)]
enum Outcome {
    Accepted,
    Rejected(String),
    Failed(String),
}

impl Stats {
    fn record(&self, samples: u64, outcome: Outcome) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.sent.fetch_add(samples, Ordering::Relaxed);
        let (counter, first, reason) = match outcome {
            Outcome::Accepted => {
                self.accepted.fetch_add(samples, Ordering::Relaxed);
                return;
            }
            Outcome::Rejected(reason) => (&self.rejected, &self.first_rejection, reason),
            Outcome::Failed(reason) => (&self.failed, &self.first_failure, reason),
        };
        counter.fetch_add(samples, Ordering::Relaxed);
        first.lock().get_or_insert(reason);
    }

    fn errors(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed) + self.failed.load(Ordering::Relaxed)
    }
}

/// What the send phase did.
#[derive(Debug)]
struct LoadResult {
    requests: u64,
    sent: u64,
    accepted: u64,
    rejected: u64,
    failed: u64,
    first_rejection: Option<String>,
    first_failure: Option<String>,
    elapsed: Duration,
    /// Request latencies, sorted.
    latencies: Vec<Duration>,
}

/// Everything a worker needs.
struct Shared {
    series: SeriesSet,
    schedule: Mutex<Schedule>,
    stats: Stats,
    client: reqwest::Client,
    write_url: String,
}

/// Sends for the configured duration with a progress bar on stderr (hidden when stderr is not
/// a terminal).
async fn send(
    options: &BenchOptions,
    client: &reqwest::Client,
    write_url: &str,
    series: SeriesSet,
) -> LoadResult {
    let start = Instant::now();
    let shared = Arc::new(Shared {
        schedule: Mutex::new(Schedule::new(
            series.len(),
            options.batch,
            options.rate,
            options.duration,
            start,
        )),
        series,
        stats: Stats::default(),
        client: client.clone(),
        write_url: write_url.to_string(),
    });
    let done = CancellationToken::new();
    let progress = tokio::spawn(show_progress(
        Arc::clone(&shared),
        options.duration,
        done.clone(),
    ));
    let workers: Vec<_> = (0..options.concurrency)
        .map(|_| tokio::spawn(worker(Arc::clone(&shared))))
        .collect();
    let mut latencies = Vec::new();
    for worker in workers {
        if let Ok(mut l) = worker.await {
            latencies.append(&mut l);
        }
    }
    // A paced run's last request is due just before the end and may finish early; the run
    // still lasted the whole duration.
    let elapsed = start.elapsed().max(options.duration);
    done.cancel();
    let _ = progress.await;
    latencies.sort_unstable();
    let stats = &shared.stats;
    LoadResult {
        requests: stats.requests.load(Ordering::Relaxed),
        sent: stats.sent.load(Ordering::Relaxed),
        accepted: stats.accepted.load(Ordering::Relaxed),
        rejected: stats.rejected.load(Ordering::Relaxed),
        failed: stats.failed.load(Ordering::Relaxed),
        first_rejection: stats.first_rejection.lock().clone(),
        first_failure: stats.first_failure.lock().clone(),
        elapsed,
        latencies,
    }
}

/// Claims, encodes and sends requests until the schedule runs out; returns the latencies.
async fn worker(shared: Arc<Shared>) -> Vec<Duration> {
    let mut proto = Vec::new();
    let mut snappy = snap::raw::Encoder::new();
    let mut latencies = Vec::new();
    loop {
        let claim = shared.schedule.lock().claim(Instant::now());
        let Some(claim) = claim else {
            return latencies;
        };
        tokio::time::sleep_until(claim.at.into()).await;
        shared.series.encode_request(
            claim.series.clone(),
            claim.round,
            claim.timestamp_ms,
            &mut proto,
        );
        let samples = claim.series.len() as u64;
        let body = match snappy.compress_vec(&proto) {
            Ok(body) => body,
            Err(e) => {
                shared
                    .stats
                    .record(samples, Outcome::Failed(format!("snappy: {e}")));
                continue;
            }
        };
        let started = Instant::now();
        let outcome = post(&shared.client, &shared.write_url, body).await;
        latencies.push(started.elapsed());
        shared.stats.record(samples, outcome);
    }
}

/// POSTs one snappy-compressed `WriteRequest` with Prometheus's remote-write headers.
async fn post(client: &reqwest::Client, url: &str, body: Vec<u8>) -> Outcome {
    let response = client
        .post(url)
        .header("Content-Encoding", "snappy")
        .header("Content-Type", "application/x-protobuf")
        .header("X-Prometheus-Remote-Write-Version", "0.1.0")
        .body(body)
        .send()
        .await;
    let response = match response {
        Ok(r) => r,
        Err(e) => return Outcome::Failed(error_chain(&e)),
    };
    let status = response.status();
    // Read the body in full either way, so the connection goes back to the pool.
    let text = response.text().await.unwrap_or_default();
    if status.is_success() {
        Outcome::Accepted
    } else {
        let reason = format!("{status}: {}", shorten(text.trim(), 300));
        if status.is_client_error() {
            Outcome::Rejected(reason)
        } else {
            Outcome::Failed(reason)
        }
    }
}

/// An error and its sources on one line ("error sending request ...: connection refused").
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let next = e.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = e.source();
    }
    text
}

fn shorten(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}

/// Updates the progress bar every 200 ms until `done`.
async fn show_progress(shared: Arc<Shared>, duration: Duration, done: CancellationToken) {
    let bar = ProgressBar::new(duration.as_millis() as u64);
    if let Ok(style) =
        ProgressStyle::with_template("{spinner} {elapsed_precise} [{wide_bar}] {msg}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    let start = Instant::now();
    // (when, samples sent) over the last second, for the current rate.
    let mut recent = std::collections::VecDeque::from([(start, 0u64)]);
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = done.cancelled() => break,
        }
        let now = Instant::now();
        let sent = shared.stats.sent.load(Ordering::Relaxed);
        recent.push_back((now, sent));
        while recent.len() > 6 {
            recent.pop_front();
        }
        let (then, sent_then) = recent[0];
        let rate = (sent - sent_then) as f64 / now.duration_since(then).as_secs_f64().max(1e-3);
        bar.set_position(now.duration_since(start).as_millis() as u64);
        bar.set_message(format!(
            "{} samples sent, {}/s, {} errors",
            count(sent as f64),
            count(rate),
            count(shared.stats.errors() as f64)
        ));
    }
    bar.finish_and_clear();
}

// ---------------------------------------------------------------------------------------------
// The coordinator's metrics and the processes' CPU time
// ---------------------------------------------------------------------------------------------

/// Sample values of a text exposition, keyed by `name{labels}` as written.
type Scrape = BTreeMap<String, f64>;

/// Reads `url` (the coordinator's `/metrics`).
///
/// `Ok(None)` when it answers but not with the coordinator's counters (another remote-write
/// receiver); an error when it cannot be reached at all.
async fn scrape(client: &reqwest::Client, url: &str) -> anyhow::Result<Option<Scrape>> {
    let response = client
        .get(url)
        .send()
        .await
        .map_err(|e| anyhow::anyhow!(error_chain(&e)))?;
    if !response.status().is_success() {
        return Ok(None);
    }
    let text = response
        .text()
        .await
        .map_err(|e| anyhow::anyhow!(error_chain(&e)))?;
    let values = parse_exposition(&text);
    Ok(values.contains_key(RECEIVED).then_some(values))
}

/// Parses the sample lines of a Prometheus or OpenMetrics text exposition.
fn parse_exposition(text: &str) -> Scrape {
    let mut values = Scrape::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (key, rest) = match line.find('}') {
            Some(end) => (&line[..=end], &line[end + 1..]),
            None => match line.split_once(' ') {
                Some((key, rest)) => (key, rest),
                None => continue,
            },
        };
        if let Some(Ok(value)) = rest.split_whitespace().next().map(str::parse::<f64>) {
            values.insert(key.to_string(), value);
        }
    }
    values
}

const RECEIVED: &str = "m3coordinator_samples_received_total";
const STORED_RAW: &str = "m3coordinator_samples_stored_raw_total";
const FORWARDED: &str = "m3coordinator_samples_forwarded_total";
const INGEST_STORED: &str = "m3coordinator_ingest_stored_total";
const DROPPED: &str = "m3coordinator_samples_dropped_total";

/// Polls `/metrics` every second for `wait` while a spinner shows aggregated output stored so
/// far; returns the last reading.
async fn wait_for_stored(
    client: &reqwest::Client,
    url: &str,
    before: &Scrape,
    wait: Duration,
) -> Option<Scrape> {
    let bar = ProgressBar::new(wait.as_millis() as u64);
    if let Ok(style) = ProgressStyle::with_template("{spinner} waiting [{wide_bar}] {msg}") {
        bar.set_style(style.progress_chars("=> "));
    }
    let start = Instant::now();
    let mut last = None;
    loop {
        if let Ok(Some(now)) = scrape(client, url).await {
            let stored = delta(before, &now, INGEST_STORED);
            bar.set_message(format!("{} aggregated outputs stored", count(stored)));
            last = Some(now);
        }
        let elapsed = start.elapsed();
        bar.set_position(elapsed.as_millis() as u64);
        if elapsed >= wait {
            break;
        }
        tokio::time::sleep((wait - elapsed).min(Duration::from_secs(1))).await;
    }
    bar.finish_and_clear();
    last
}

fn delta(before: &Scrape, after: &Scrape, key: &str) -> f64 {
    after.get(key).copied().unwrap_or(0.0) - before.get(key).copied().unwrap_or(0.0)
}

/// What the coordinator's counters moved by.
#[derive(Debug, Clone, PartialEq)]
struct CoordinatorDiff {
    received: f64,
    stored_raw: f64,
    forwarded: f64,
    /// `(reason, samples)` for every reason that moved.
    dropped: Vec<(String, f64)>,
    /// Over the send phase only.
    aggregated_during_run: f64,
    /// Including `--wait-stored`.
    aggregated: f64,
    waited: Duration,
}

impl CoordinatorDiff {
    fn between(before: &Scrape, after_send: &Scrape, after: &Scrape, waited: Duration) -> Self {
        let dropped = after
            .iter()
            .filter(|(key, _)| key.starts_with(DROPPED) && key.len() > DROPPED.len())
            .filter_map(|(key, _)| {
                let n = delta(before, after, key);
                let reason = key
                    .split_once("reason=\"")
                    .and_then(|(_, r)| r.split_once('"'))
                    .map_or(key.as_str(), |(r, _)| r);
                (n != 0.0).then(|| (reason.to_string(), n))
            })
            .collect();
        CoordinatorDiff {
            received: delta(before, after, RECEIVED),
            stored_raw: delta(before, after, STORED_RAW),
            forwarded: delta(before, after, FORWARDED),
            dropped,
            aggregated_during_run: delta(before, after_send, INGEST_STORED),
            aggregated: delta(before, after, INGEST_STORED),
            waited,
        }
    }
}

/// Linux reports process times in clock ticks of `USER_HZ`, which is 100 on every architecture
/// Linux supports today (`getconf CLK_TCK`).
const CLOCK_TICKS_PER_SECOND: u64 = 100;

/// User + system CPU time of process `pid` so far.
///
/// # Errors
/// No such process, or a `/proc/<pid>/stat` that does not parse.
fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("--pid {pid}: reading {path} (is the process running?)"))?;
    parse_stat_cpu(&text).with_context(|| format!("--pid {pid}: unexpected contents of {path}"))
}

fn own_cpu_time() -> Option<Duration> {
    let text = std::fs::read_to_string("/proc/self/stat").ok()?;
    parse_stat_cpu(&text).ok()
}

/// `utime + stime` (fields 14 and 15) of a `/proc/<pid>/stat` line. The command name (field 2)
/// is in parentheses and may hold spaces and parentheses, so fields are counted from the last
/// `)`.
fn parse_stat_cpu(stat: &str) -> anyhow::Result<Duration> {
    let after_name = stat
        .rfind(')')
        .map(|i| &stat[i + 1..])
        .context("no `)` closing the command name")?;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // fields[0] is field 3 (state), so field 14 is fields[11].
    let ticks = |i: usize| -> anyhow::Result<u64> {
        fields
            .get(i)
            .context("too few fields")?
            .parse::<u64>()
            .with_context(|| format!("field {} is not a number", i + 3))
    };
    let total = ticks(11)? + ticks(12)?;
    Ok(Duration::from_millis(total * 1000 / CLOCK_TICKS_PER_SECOND))
}

/// CPU seconds one process used during the send phase.
#[derive(Debug)]
struct CpuUse {
    what: String,
    seconds: f64,
}

// ---------------------------------------------------------------------------------------------
// The summary
// ---------------------------------------------------------------------------------------------

struct Report {
    options: BenchOptions,
    load: LoadResult,
    coordinator: Option<CoordinatorDiff>,
    cpu: Vec<CpuUse>,
}

/// `1234567.0` → `1234567`; counts are integers, rates are rounded.
fn count(n: f64) -> String {
    format!("{:.0}", n)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let o = &self.options;
        let l = &self.load;
        let seconds = l.elapsed.as_secs_f64().max(1e-9);
        let target = if o.rate == 0 {
            "as fast as possible".to_string()
        } else {
            format!("target {} samples/s", o.rate)
        };
        writeln!(
            f,
            "m3 bench: {} series x {} labels, {target}, {:?}, batch {}, concurrency {}, to {}",
            o.series, o.labels, o.duration, o.batch, o.concurrency, o.url
        )?;
        writeln!(
            f,
            "sent:      {} samples in {} requests over {:.2} s",
            l.sent, l.requests, seconds
        )?;
        writeln!(f, "accepted:  {} samples (2xx)", l.accepted)?;
        writeln!(f, "rejected:  {} samples (4xx)", l.rejected)?;
        if let Some(reason) = &l.first_rejection {
            writeln!(f, "           first: {reason}")?;
        }
        writeln!(f, "failed:    {} samples (5xx or transport)", l.failed)?;
        if let Some(reason) = &l.first_failure {
            writeln!(f, "           first: {reason}")?;
        }
        writeln!(
            f,
            "rate:      {} samples/s sent, {} samples/s accepted",
            count(l.sent as f64 / seconds),
            count(l.accepted as f64 / seconds)
        )?;
        writeln!(
            f,
            "latency:   p50 {}, p99 {}, max {} per request",
            ms(percentile(&l.latencies, 0.5)),
            ms(percentile(&l.latencies, 0.99)),
            ms(l.latencies.last().copied().unwrap_or_default())
        )?;
        match &self.coordinator {
            None => writeln!(f, "coordinator: no metrics read")?,
            Some(c) => {
                writeln!(f, "coordinator (counter differences over the run):")?;
                writeln!(f, "  received:    {} samples", count(c.received))?;
                writeln!(f, "  stored raw:  {} samples", count(c.stored_raw))?;
                writeln!(
                    f,
                    "  forwarded:   {} samples (to aggregator instances, once per replica)",
                    count(c.forwarded)
                )?;
                if c.dropped.is_empty() {
                    writeln!(f, "  dropped:     0 samples")?;
                }
                for (reason, n) in &c.dropped {
                    writeln!(f, "  dropped:     {} samples ({reason})", count(*n))?;
                }
                if c.waited.is_zero() {
                    writeln!(
                        f,
                        "  aggregated:  {} outputs stored during the run (windows are written \
                         after window end + past buffer + resolution; see --wait-stored)",
                        count(c.aggregated)
                    )?;
                } else {
                    writeln!(
                        f,
                        "  aggregated:  {} outputs stored during the run and {:?} after it \
                         ({} during the run)",
                        count(c.aggregated),
                        c.waited,
                        count(c.aggregated_during_run)
                    )?;
                }
            }
        }
        for cpu in &self.cpu {
            writeln!(
                f,
                "cpu:       {}: {:.2} s over {:.2} s = {:.2} cores",
                cpu.what,
                cpu.seconds,
                seconds,
                cpu.seconds / seconds
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use m3_proto::prometheus::WriteRequest;

    #[test]
    fn request_bytes_are_prosts_write_request() {
        let set = SeriesSet::generate(50, 10, "m3bench_");
        let mut out = Vec::new();
        set.encode_request(10..30, 3, 1_700_000_000_123, &mut out);
        let expected = WriteRequest {
            timeseries: (10..30)
                .map(|i| TimeSeries {
                    labels: series_labels(i, 10, "m3bench_")
                        .into_iter()
                        .map(|(name, value)| Label { name, value })
                        .collect(),
                    samples: vec![Sample {
                        value: sample_value(i, 3),
                        timestamp: 1_700_000_000_123,
                    }],
                })
                .collect(),
        };
        assert_eq!(out, expected.encode_to_vec());
        // Round 0 has zero values, which proto3 leaves out.
        set.encode_request(0..7, 0, 5, &mut out);
        let decoded = WriteRequest::decode(out.as_slice()).expect("decodes");
        assert_eq!(decoded.timeseries.len(), 7);
        assert_eq!(decoded.timeseries[0].samples[0].value, 0.0);
        assert_eq!(decoded.timeseries[0].samples[0].timestamp, 5);
    }

    #[test]
    fn series_are_distinct_sorted_and_prometheus_shaped() {
        for labels in [2, 5, 10, 12, 15] {
            let mut seen = std::collections::HashSet::new();
            for i in 0..5_000 {
                let pairs = series_labels(i, labels, "p_");
                assert_eq!(pairs.len(), labels);
                assert!(pairs.windows(2).all(|w| w[0].0 < w[1].0), "{pairs:?}");
                assert!(pairs.iter().all(|(n, v)| !n.is_empty() && !v.is_empty()));
                assert!(pairs[0].0 == "__name__" && pairs[0].1.starts_with("p_"));
                assert!(seen.insert(pairs), "series {i} repeats");
            }
        }
    }

    #[test]
    fn schedule_cuts_rounds_into_batches_and_paces_them() {
        let start = Instant::now();
        // 5 series in batches of 2: requests of 2, 2, 1 samples per round; 10 samples/s.
        let mut s = Schedule::new(5, 2, 10, Duration::from_secs(1), start);
        let a = s.claim(start).expect("first");
        assert_eq!((a.round, a.series.clone(), a.at), (0, 0..2, start));
        let b = s.claim(start).expect("second");
        assert_eq!((b.round, b.series.clone()), (0, 2..4));
        assert_eq!(b.at, start + Duration::from_millis(200));
        assert_eq!(b.timestamp_ms, a.timestamp_ms + 200);
        let c = s.claim(start).expect("third");
        assert_eq!((c.round, c.series.clone()), (0, 4..5));
        assert_eq!(c.at, start + Duration::from_millis(400));
        let d = s.claim(start).expect("fourth");
        assert_eq!((d.round, d.series.clone()), (1, 0..2));
        assert_eq!(d.at, start + Duration::from_millis(500));
        // A late claim starts now and does not let the next one start early.
        let late = start + Duration::from_millis(800);
        let e = s.claim(late).expect("fifth");
        assert_eq!(e.at, late);
        // The next would start at 1000 ms, the end of the run.
        assert_eq!(s.claim(late), None);
    }

    #[test]
    fn unpaced_schedule_ends_at_the_deadline() {
        let start = Instant::now();
        let mut s = Schedule::new(3, 10, 0, Duration::from_secs(1), start);
        for round in 0..100 {
            let c = s.claim(start).expect("claim");
            assert_eq!((c.round, c.series), (round, 0..3));
        }
        assert_eq!(s.claim(start + Duration::from_secs(1)), None);
    }

    #[test]
    fn exposition_lines_parse_with_and_without_labels() {
        let text = "# HELP m3coordinator_samples_received Samples\n\
                    # TYPE m3coordinator_samples_received counter\n\
                    m3coordinator_samples_received_total 1200\n\
                    m3coordinator_samples_dropped_total{reason=\"queue_full\"} 7\n\
                    m3coordinator_samples_dropped_total{reason=\"too_far_past\"} 3 1700000000\n\
                    # EOF\n";
        let values = parse_exposition(text);
        assert_eq!(values[RECEIVED], 1200.0);
        assert_eq!(
            values["m3coordinator_samples_dropped_total{reason=\"queue_full\"}"],
            7.0
        );
        let mut after = values.clone();
        after.insert(RECEIVED.into(), 2200.0);
        after.insert(
            "m3coordinator_samples_dropped_total{reason=\"queue_full\"}".into(),
            9.0,
        );
        after.insert(
            "m3coordinator_samples_dropped_total{reason=\"no_placement\"}".into(),
            4.0,
        );
        let diff = CoordinatorDiff::between(&values, &after, &after, Duration::ZERO);
        assert_eq!(diff.received, 1000.0);
        assert_eq!(
            diff.dropped,
            vec![("no_placement".into(), 4.0), ("queue_full".into(), 2.0)]
        );
    }

    #[test]
    fn proc_stat_cpu_counts_from_the_last_parenthesis() {
        let stat = "4242 (m3 (local)) S 1 4242 4242 0 -1 4194560 9000 0 0 0 250 75 0 0 20 0 \
                    12 0 100 200000000 5000 18446744073709551615";
        assert_eq!(
            parse_stat_cpu(stat).expect("parses"),
            Duration::from_millis(3250)
        );
        assert!(parse_stat_cpu("4242 (x) S 1").is_err());
        assert!(own_cpu_time().is_some());
    }

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
            series: 0,
            rate: 0,
            duration: Duration::ZERO,
            batch: 1,
            concurrency: 0,
            labels: 1,
            metric_prefix: String::new(),
            wait_stored: Duration::ZERO,
            pids: Vec::new(),
        };
        let message = validate(&options).expect_err("invalid").to_string();
        for part in [
            "--url",
            "--series",
            "--concurrency",
            "--labels",
            "--duration",
        ] {
            assert!(message.contains(part), "{part} missing from {message}");
        }
    }
}
