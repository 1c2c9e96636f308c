//! The coordinator's `/metrics` before and after the run: what it received, stored raw,
//! forwarded, dropped and stored aggregated meanwhile.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use super::load::error_chain;
use super::report::count;

/// Sample values of a text exposition, keyed by `name{labels}` as written.
pub(super) type Scrape = BTreeMap<String, f64>;

/// Reads `url` (the coordinator's `/metrics`).
///
/// `Ok(None)` when it answers but not with the coordinator's counters (another remote-write
/// receiver); an error when it cannot be reached at all.
pub(super) async fn scrape(client: &reqwest::Client, url: &str) -> anyhow::Result<Option<Scrape>> {
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
pub(super) fn parse_exposition(text: &str) -> Scrape {
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

pub(super) const RECEIVED: &str = "m3coordinator_samples_received_total";
pub(super) const STORED_RAW: &str = "m3coordinator_samples_stored_raw_total";
pub(super) const FORWARDED: &str = "m3coordinator_samples_forwarded_total";
pub(super) const INGEST_STORED: &str = "m3coordinator_ingest_stored_total";
pub(super) const DROPPED: &str = "m3coordinator_samples_dropped_total";

/// Polls `/metrics` every second for `wait` while a spinner shows aggregated output stored so
/// far; returns the last reading and the wall-clock time (ms) it was asked for.
pub(super) async fn wait_for_stored(
    client: &reqwest::Client,
    url: &str,
    before: &Scrape,
    wait: Duration,
) -> Option<(Scrape, i64)> {
    let bar = ProgressBar::new(wait.as_millis() as u64);
    if let Ok(style) = ProgressStyle::with_template("{spinner} waiting [{wide_bar}] {msg}") {
        bar.set_style(style.progress_chars("=> "));
    }
    let start = Instant::now();
    let mut last = None;
    loop {
        let scraped_at = super::schedule::wall_clock_ms();
        if let Ok(Some(now)) = scrape(client, url).await {
            let stored = delta(before, &now, INGEST_STORED);
            bar.set_message(format!("{} aggregated outputs stored", count(stored)));
            last = Some((now, scraped_at));
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

pub(super) fn delta(before: &Scrape, after: &Scrape, key: &str) -> f64 {
    after.get(key).copied().unwrap_or(0.0) - before.get(key).copied().unwrap_or(0.0)
}

/// What the coordinator's counters moved by.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct CoordinatorDiff {
    pub(super) received: f64,
    pub(super) stored_raw: f64,
    pub(super) forwarded: f64,
    /// `(reason, samples)` for every reason that moved.
    pub(super) dropped: Vec<(String, f64)>,
    /// Over the send phase only.
    pub(super) aggregated_during_run: f64,
    /// Including `--wait-stored`.
    pub(super) aggregated: f64,
    pub(super) waited: Duration,
}

impl CoordinatorDiff {
    pub(super) fn between(
        before: &Scrape,
        after_send: &Scrape,
        after: &Scrape,
        waited: Duration,
    ) -> Self {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
