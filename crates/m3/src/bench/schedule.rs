//! The pacer: hands out requests in order, each a slice of a round of series, and reserves each
//! its send time (a token bucket with one token per sample and a burst of one request).

use std::ops::Range;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// One request to send: which series, which round, when.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Claim {
    pub(super) round: u64,
    pub(super) series: Range<usize>,
    pub(super) at: Instant,
    pub(super) timestamp_ms: i64,
}

/// Hands out requests in order and paces them: the token bucket of the module docs.
#[derive(Debug)]
pub(super) struct Schedule {
    pub(super) series: usize,
    pub(super) batch: usize,
    /// Seconds per sample; `None` for as fast as possible.
    pub(super) per_sample: Option<f64>,
    pub(super) start: Instant,
    pub(super) start_wall_ms: i64,
    pub(super) deadline: Instant,
    pub(super) next_request: u64,
    pub(super) next_at: Instant,
}

impl Schedule {
    pub(super) fn new(
        series: usize,
        batch: usize,
        rate: u64,
        duration: Duration,
        start: Instant,
    ) -> Schedule {
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
    pub(super) fn claim(&mut self, now: Instant) -> Option<Claim> {
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

pub(super) fn wall_clock_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
