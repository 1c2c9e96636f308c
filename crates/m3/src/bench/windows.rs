//! The aggregation windows the accepted samples fall in, so the summary can tell windows lost
//! from windows not flushed yet.
//!
//! Every accepted sample puts its series in one window per aggregated resolution
//! (`--resolutions`, the coordinator's aggregated namespaces; the automatic mapping rules give
//! each series one output per namespace and window). A window is *due* once an aggregator may
//! have flushed it, window end + past buffer (`--buffer-past`) + resolution, and the outputs
//! had [`DELIVERY_ALLOWANCE`] to reach the store. At the end of the run (and of
//! `--wait-stored`) the bench compares the windows due by its last scrape of the coordinator
//! with the aggregated outputs that scrape counted: fewer stored than due means windows lost
//! (or late), while windows not due yet are only waiting.
//!
//! Requests cover fixed slices of the series (`--batch` per request, see the schedule), so a
//! window is recorded per (resolution, window start, slice) with the slice's size: one set
//! insert per accepted request, not per sample.

use std::collections::HashMap;
use std::ops::Range;
use std::time::Duration;

use parking_lot::Mutex;

/// How long a due window's outputs get to be counted as stored: an aggregator looks for
/// windows to flush once a second, flushes every series' window, and the coordinator stores
/// the outputs before it counts them. Without it, a window that fell due in the last moments
/// before the final scrape was reported lost in every series.
pub(super) const DELIVERY_ALLOWANCE: Duration = Duration::from_secs(5);

/// The windows the accepted samples fall in.
#[derive(Debug)]
pub(super) struct WindowTally {
    /// Resolutions in milliseconds.
    resolutions_ms: Vec<i64>,
    /// (resolution index, window start ms, first series of the slice) → the slice's size.
    windows: Mutex<HashMap<(usize, i64, usize), usize>>,
}

/// Windows expected at some moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ExpectedWindows {
    /// Every (series, resolution, window) an accepted sample fell in.
    pub(super) total: u64,
    /// Those an aggregator may have flushed by then.
    pub(super) due: u64,
}

impl WindowTally {
    pub(super) fn new(resolutions: &[Duration]) -> WindowTally {
        WindowTally {
            resolutions_ms: resolutions
                .iter()
                .map(|r| i64::try_from(r.as_millis()).unwrap_or(i64::MAX).max(1))
                .collect(),
            windows: Mutex::new(HashMap::new()),
        }
    }

    /// Records an accepted request: the series of `slice`, each with one sample at
    /// `timestamp_ms`.
    pub(super) fn record(&self, slice: &Range<usize>, timestamp_ms: i64) {
        let mut windows = self.windows.lock();
        for (index, resolution) in self.resolutions_ms.iter().enumerate() {
            let start = timestamp_ms - timestamp_ms.rem_euclid(*resolution);
            windows.insert((index, start, slice.start), slice.len());
        }
    }

    /// The windows expected, and those due by `now_ms` with the aggregators' `buffer_past`
    /// (and the [`DELIVERY_ALLOWANCE`]).
    pub(super) fn expected(&self, now_ms: i64, buffer_past: Duration) -> ExpectedWindows {
        let buffer_ms = i64::try_from(buffer_past.saturating_add(DELIVERY_ALLOWANCE).as_millis())
            .unwrap_or(i64::MAX);
        let mut expected = ExpectedWindows { total: 0, due: 0 };
        for ((index, start, _), series) in self.windows.lock().iter() {
            let resolution = self.resolutions_ms[*index];
            let series = *series as u64;
            expected.total += series;
            let due_at = start
                .saturating_add(resolution)
                .saturating_add(buffer_ms)
                .saturating_add(resolution);
            if due_at <= now_ms {
                expected.due += series;
            }
        }
        expected
    }

    /// The resolutions, for the summary.
    pub(super) fn resolutions(&self) -> Vec<Duration> {
        self.resolutions_ms
            .iter()
            .map(|ms| Duration::from_millis(u64::try_from(*ms).unwrap_or(0)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_counted_per_series_resolution_and_window_once() {
        let tally = WindowTally::new(&[Duration::from_secs(10), Duration::from_secs(60)]);
        // Two rounds of two slices (3 + 2 series) in one 10s window, a third round 10s later.
        for t in [1_000, 4_000] {
            tally.record(&(0..3), t);
            tally.record(&(3..5), t);
        }
        tally.record(&(0..3), 11_000);
        tally.record(&(3..5), 11_000);
        // 10s: windows [0, 10s) and [10s, 20s), 5 series each; 1m: one window, 5 series.
        let all = tally.expected(i64::MAX, Duration::ZERO);
        assert_eq!(all.total, 15);
        assert_eq!(all.due, 15);
        // With a 30s past buffer, at 55s only the first 10s window is due (10 + 30 + 10 = 50,
        // and 5s to be delivered; the second is due at 65s, the minute window at
        // 60 + 30 + 60 + 5 = 155s). A moment earlier, none is.
        let at_55s = tally.expected(55_000, Duration::from_secs(30));
        assert_eq!(at_55s, ExpectedWindows { total: 15, due: 5 });
        let before = tally.expected(54_999, Duration::from_secs(30));
        assert_eq!(before, ExpectedWindows { total: 15, due: 0 });
    }
}
