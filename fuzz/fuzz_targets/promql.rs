//! Query text and evaluation times from outside the process: any bytes as a PromQL query,
//! evaluated as an instant query and as a short range query over a few in-memory series. The
//! engine must answer or refuse (never panic, never run away: the limits are small), whatever
//! the query and however far in the past or future it is evaluated.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use m3_query::error::Result;
use m3_query::source::EachSeries;
use m3_query::{Engine, SeriesSource};
use m3_storage::{Labels, Matcher};

/// Three series with a minute of samples each around t = 0, plus NaN, infinities and a
/// staleness marker.
struct Fixed(Vec<(Labels, Vec<(i64, f64)>)>);

impl SeriesSource for Fixed {
    fn select_each(
        &self,
        matchers: &[Matcher],
        start_ms: i64,
        end_ms: i64,
        each: &mut EachSeries<'_>,
    ) -> Result<()> {
        for (labels, samples) in &self.0 {
            if !matchers.iter().all(|m| m.matches(labels)) {
                continue;
            }
            let within: Vec<(i64, f64)> = samples
                .iter()
                .copied()
                .filter(|(t, _)| *t >= start_ms && *t <= end_ms)
                .collect();
            if !within.is_empty() {
                each(labels, &within)?;
            }
        }
        Ok(())
    }
}

fn fixture() -> Fixed {
    let series = |pairs: &[(&str, &str)], values: &[f64]| {
        let labels = Labels::new(pairs.iter().copied()).expect("valid labels");
        let samples = values
            .iter()
            .enumerate()
            .map(|(i, v)| (i as i64 * 15_000 - 30_000, *v))
            .collect();
        (labels, samples)
    };
    Fixed(vec![
        series(
            &[("__name__", "up"), ("job", "a")],
            &[1.0, 0.0, 1.0, 1.0, 1.0],
        ),
        series(
            &[("__name__", "up"), ("job", "b"), ("le", "0.5")],
            &[3.0, 5.0, 2.0, 8.0, 9.0],
        ),
        series(
            &[("__name__", "x"), ("le", "+Inf")],
            &[
                f64::NAN,
                f64::INFINITY,
                f64::NEG_INFINITY,
                -0.0,
                f64::from_bits(0x7ff0_0000_0000_0002),
            ],
        ),
    ])
}

fuzz_target!(|data: &[u8]| {
    let Some((time, query)) = data.split_at_checked(9) else {
        return;
    };
    let query = String::from_utf8_lossy(query);
    let t = i64::from_le_bytes(time[..8].try_into().unwrap_or([0; 8]));
    // Mostly near the data, sometimes anywhere.
    let t = if time[8] & 1 == 0 { t % 600_000 } else { t };
    let source = fixture();
    let engine = Engine::new()
        .with_max_samples(100_000)
        .with_max_series(100)
        .with_timeout(Some(Duration::from_secs(2)));
    let _ = engine.instant_query(&source, &query, t);
    let step = 1 + i64::from(time[8] >> 1) * 1_000;
    let _ = engine.range_query(&source, &query, t, t.saturating_add(step * 20), step);
});
