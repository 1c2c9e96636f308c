//! The send phase: workers claim requests from the schedule, encode and POST them, and count
//! what was accepted, rejected and failed, with a progress bar on stderr.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use super::BenchOptions;
use super::report::count;
use super::schedule::Schedule;
use super::series::SeriesSet;
use super::windows::WindowTally;

/// Counts shared by the workers and the progress bar.
#[derive(Debug, Default)]
pub(super) struct Stats {
    pub(super) requests: AtomicU64,
    pub(super) sent: AtomicU64,
    pub(super) accepted: AtomicU64,
    pub(super) rejected: AtomicU64,
    pub(super) failed: AtomicU64,
    pub(super) first_rejection: Mutex<Option<String>>,
    pub(super) first_failure: Mutex<Option<String>>,
}

/// How one request ended.
#[derive(Debug)]
pub(super) enum Outcome {
    Accepted,
    Rejected(String),
    Failed(String),
    /// 503: counted as failed; the worker backs off before its next request.
    Overloaded(String),
}

/// Prometheus's remote-write backoff after a 503 (`min_backoff`, `max_backoff`),
/// doubling from the first to the second and reset by an accepted request.
const MIN_BACKOFF: Duration = Duration::from_millis(30);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

impl Stats {
    pub(super) fn record(&self, samples: u64, outcome: Outcome) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.sent.fetch_add(samples, Ordering::Relaxed);
        let (counter, first, reason) = match outcome {
            Outcome::Accepted => {
                self.accepted.fetch_add(samples, Ordering::Relaxed);
                return;
            }
            Outcome::Rejected(reason) => (&self.rejected, &self.first_rejection, reason),
            Outcome::Failed(reason) | Outcome::Overloaded(reason) => {
                (&self.failed, &self.first_failure, reason)
            }
        };
        counter.fetch_add(samples, Ordering::Relaxed);
        first.lock().get_or_insert(reason);
    }

    pub(super) fn errors(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed) + self.failed.load(Ordering::Relaxed)
    }
}

/// What the send phase did.
#[derive(Debug)]
pub(super) struct LoadResult {
    pub(super) requests: u64,
    pub(super) sent: u64,
    pub(super) accepted: u64,
    pub(super) rejected: u64,
    pub(super) failed: u64,
    pub(super) first_rejection: Option<String>,
    pub(super) first_failure: Option<String>,
    pub(super) elapsed: Duration,
    /// Request latencies, sorted.
    pub(super) latencies: Vec<Duration>,
}

/// Everything a worker needs.
pub(super) struct Shared {
    pub(super) series: SeriesSet,
    pub(super) schedule: Mutex<Schedule>,
    pub(super) stats: Stats,
    /// The windows of the accepted samples.
    pub(super) windows: Arc<WindowTally>,
    pub(super) client: reqwest::Client,
    pub(super) write_url: String,
}

/// Sends for the configured duration with a progress bar on stderr (hidden when stderr is not
/// a terminal).
pub(super) async fn send(
    options: &BenchOptions,
    client: &reqwest::Client,
    write_url: &str,
    series: SeriesSet,
    windows: Arc<WindowTally>,
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
        windows,
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
pub(super) async fn worker(shared: Arc<Shared>) -> Vec<Duration> {
    let mut proto = Vec::new();
    let mut snappy = snap::raw::Encoder::new();
    let mut latencies = Vec::new();
    let mut backoff = MIN_BACKOFF;
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
        let overloaded = matches!(outcome, Outcome::Overloaded(_));
        if matches!(outcome, Outcome::Accepted) {
            shared.windows.record(&claim.series, claim.timestamp_ms);
            backoff = MIN_BACKOFF;
        }
        shared.stats.record(samples, outcome);
        if overloaded {
            // As Prometheus does: wait before sending again, longer each time in a row.
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
}

/// POSTs one snappy-compressed `WriteRequest` with Prometheus's remote-write headers.
pub(super) async fn post(client: &reqwest::Client, url: &str, body: Vec<u8>) -> Outcome {
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
        if status == reqwest::StatusCode::SERVICE_UNAVAILABLE {
            Outcome::Overloaded(reason)
        } else if status.is_client_error() {
            Outcome::Rejected(reason)
        } else {
            Outcome::Failed(reason)
        }
    }
}

/// An error and its sources on one line ("error sending request ...: connection refused").
pub(super) fn error_chain(error: &dyn std::error::Error) -> String {
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

pub(super) fn shorten(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}

/// Updates the progress bar every 200 ms until `done`.
pub(super) async fn show_progress(
    shared: Arc<Shared>,
    duration: Duration,
    done: CancellationToken,
) {
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
