//! Model test: random timed writes and leader flushes through the engine, compared with a naive
//! model that keeps every accepted (timestamp, value) per series, storage policy and window and
//! computes each aggregation directly.
//!
//! What the model covers:
//!
//! * **Arrival and lateness.** A write stamped `t` arrives at `now = t + delay`; writes are
//!   applied in arrival order with that `now`. Per storage policy, a write is rejected as too far
//!   in the past when `now − t > bufferPast + resolution` and as too far in the future when
//!   `t − now > bufferFuture` (`Aggregator::add_timed`). Delays straddle both limits to the
//!   nanosecond, so with a 60s past buffer a write 71s late is refused at 10s resolution and kept
//!   at 1m. Rejections are counted per value and per rejected policy; the call fails with the
//!   reason of the first rejected policy in metadata order.
//! * **Storage policies.** A series has one or two of `10s:2d` and `1m:40d`, as a single pair or
//!   as staged metadata. Windows are kept per (series, policy, window start); outputs are matched
//!   by ID, storage policy, timestamp and aggregation.
//! * **Flushes.** Several leader flushes at increasing times run between the writes (every write
//!   that arrived by a flush's time is applied before it), then a final one long after. A timed
//!   window `[start, end)` is emitted by the first flush at `now` with
//!   `end ≤ align(now − bufferPast − resolution)` (see `flush.rs`), exactly once, and no window
//!   is left open at the end.
//! * **NaN and infinities** (gauges and timers; counters are integers on the wire). Min and Max
//!   ignore NaN; Count counts it; Sum, SumSq and Mean follow IEEE arithmetic (a NaN, or +∞ with
//!   −∞, gives NaN); Stdev is 0 below two values and NaN once a value is not finite; Last is NaN
//!   when the latest value is. NaN results are not emitted and are counted
//!   (`outputs_discarded{reason="nan"}`). Quantiles skip NaN; an infinity is held as ±`f64::MAX`
//!   (so a quantile landing on it reports about ±`f64::MAX`), and since the sketch keeps 2048
//!   buckets per sign, an infinity merges the buckets of every finite value of its sign: such a
//!   quantile is only known to be over-estimated in magnitude and within the window's min and
//!   max (see `quantile.rs`).
//!   A NaN may open a window: Min and Max take the next real value, as M3's do.
//! * **Quantiles** use M3's nearest rank (`ceil(q·n)`, 1-based): exact below three values,
//!   within the sketch's 1 % relative error from three on. About half of the timer series ask
//!   for one or more of P99, P999 and P9999, and some cases add a burst of 100 to 1500 values to
//!   one window of such a series, so that P99 (and, past 1000 values, P999) falls below the
//!   maximum.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;

use m3_aggregator::metadata::build;
use m3_aggregator::metrics::OutputDiscard;
use m3_aggregator::quantile::RELATIVE_ACCURACY;
use m3_aggregator::{
    AggregatedOutput, Aggregator, AggregatorOptions, FlushMode, Metadatas, RejectReason,
    ShardAssignment,
};
use m3_metric::id::with_suffix;
use m3_metric::{AggregationId, AggregationType, MetricType, StoragePolicy};

const S: i64 = 1_000_000_000;
/// Aligned to 10s windows; 20s into a minute.
const T0: i64 = 1_700_000_000 * S;
const BUFFER_PAST: i64 = 60 * S;
const BUFFER_FUTURE: i64 = 60 * S;
/// The storage policies a series may use, with their resolutions.
const POLICIES: [(&str, i64); 2] = [("10s:2d", 10 * S), ("1m:40d", 60 * S)];
/// The high quantiles.
const HIGH: [AggregationType; 3] = [
    AggregationType::P99,
    AggregationType::P999,
    AggregationType::P9999,
];
/// The last flush: every window has closed by then.
const FINAL_FLUSH: i64 = T0 + 100_000 * S;

#[derive(Debug, Clone)]
struct Series {
    metric_type: MetricType,
    types: AggregationId,
    /// Indexes into [`POLICIES`], in metadata order.
    policies: Vec<usize>,
    /// Sent as staged metadata (always, with two policies) rather than one (types, policy) pair.
    staged: bool,
}

impl Series {
    /// The aggregation types the engine computes.
    fn resolved(&self) -> Vec<AggregationType> {
        self.types.resolve(self.metric_type).types().collect()
    }
}

fn policies_strategy() -> impl Strategy<Value = Vec<usize>> {
    prop_oneof![
        Just(vec![0]),
        Just(vec![1]),
        Just(vec![0, 1]),
        Just(vec![1, 0]),
    ]
}

/// Types read from a random mask and starting point (up to six), plus, for about half of the
/// timers, a non-empty subset of the high quantiles.
fn types_for(metric_type: MetricType, mask: u32, start: usize, high: Option<u8>) -> AggregationId {
    let all = AggregationType::ALL;
    let mut chosen: Vec<AggregationType> = (0..all.len())
        .map(|k| (start + k) % all.len())
        .filter(|i| mask & (1 << (i % 32)) != 0 && all[*i].is_valid_for(metric_type))
        .map(|i| all[i])
        .take(6)
        .collect();
    if let Some(bits) = high.filter(|_| metric_type == MetricType::Timer) {
        chosen.extend((0..3).filter(|i| bits & (1 << i) != 0).map(|i| HIGH[i]));
    }
    AggregationId::from_types(chosen)
}

fn series_strategy() -> impl Strategy<Value = Series> {
    (
        prop_oneof![
            1 => Just(MetricType::Counter),
            1 => Just(MetricType::Gauge),
            2 => Just(MetricType::Timer),
        ],
        any::<u32>(),
        0usize..24,
        prop::option::of(1u8..8),
        policies_strategy(),
        any::<bool>(),
    )
        .prop_map(
            |(metric_type, mask, start, high, policies, staged)| Series {
                metric_type,
                types: types_for(metric_type, mask, start, high),
                staged: staged || policies.len() > 1,
                policies,
            },
        )
}

/// A timer series with at least one high quantile, for bursts.
fn burst_series_strategy() -> impl Strategy<Value = Series> {
    (any::<u32>(), 0usize..24, 1u8..8, policies_strategy()).prop_map(
        |(mask, start, high, policies)| Series {
            metric_type: MetricType::Timer,
            types: types_for(MetricType::Timer, mask, start, Some(high)),
            staged: true,
            policies,
        },
    )
}

/// One write: series index, nanoseconds after [`T0`], a finite value, the non-finite value
/// written instead (rarely), and the arrival delay in nanoseconds (negative: early).
type Write = (usize, i64, f64, Option<f64>, i64);

/// Many values in one 10s window of one timer series: (series, window index after `T0`, count,
/// seed of the values).
type Burst = (Series, i64, usize, u64);

fn offset_strategy() -> impl Strategy<Value = i64> {
    (0i64..300, prop_oneof![Just(0), Just(S - 1), 0..S]).prop_map(|(secs, sub)| secs * S + sub)
}

fn value_strategy() -> impl Strategy<Value = (f64, Option<f64>)> {
    (
        prop_oneof![
            (-1000i32..1000).prop_map(f64::from),
            -1.0e3f64..1.0e3,
            0.001f64..10.0,
        ],
        prop_oneof![
            60 => Just(None),
            1 => Just(Some(f64::NAN)),
            1 => Just(Some(f64::INFINITY)),
            1 => Just(Some(f64::NEG_INFINITY)),
        ],
    )
}

/// Mostly on time, often beyond the past buffer of one or both resolutions, sometimes early;
/// each limit also exactly and one nanosecond past it.
fn delay_strategy() -> impl Strategy<Value = i64> {
    let res = POLICIES.map(|p| p.1);
    prop_oneof![
        12 => 0..30 * S,
        4 => BUFFER_PAST..BUFFER_PAST + res[1] + 10 * S,
        2 => prop::sample::select(vec![
            BUFFER_PAST + res[0],
            BUFFER_PAST + res[0] + 1,
            BUFFER_PAST + res[1],
            BUFFER_PAST + res[1] + 1,
        ]),
        1 => -BUFFER_FUTURE - S..0,
        1 => prop::sample::select(vec![-BUFFER_FUTURE, -BUFFER_FUTURE - 1]),
    ]
}

fn writes_strategy(n_series: usize) -> impl Strategy<Value = Vec<Write>> {
    prop::collection::vec(
        (
            0..n_series,
            offset_strategy(),
            value_strategy(),
            delay_strategy(),
        )
            .prop_map(|(s, t, (v, special), delay)| (s, t, v, special, delay)),
        1..200,
    )
}

/// Flush times after [`T0`]: on a 10s boundary, a nanosecond either side, or anywhere.
fn flushes_strategy() -> impl Strategy<Value = Vec<i64>> {
    prop::collection::vec(
        (0i64..60, prop_oneof![Just(0), Just(1), Just(-1), 0..10 * S])
            .prop_map(|(k, jitter)| k * 10 * S + jitter),
        0..6,
    )
}

fn burst_strategy() -> impl Strategy<Value = Option<Burst>> {
    prop::option::weighted(
        0.3,
        (
            burst_series_strategy(),
            0i64..30,
            100usize..1500,
            any::<u64>(),
        ),
    )
}

/// Burst values: mixed signs, magnitudes from 1e-3 to 1e3, some repeated.
fn burst_values(count: usize, mut seed: u64) -> Vec<f64> {
    let mut next = move || {
        // xorshift64*
        seed ^= seed >> 12;
        seed ^= seed << 25;
        seed ^= seed >> 27;
        seed.wrapping_mul(0x2545_f491_4f6c_dd1d) | 1
    };
    let mut out: Vec<f64> = Vec::with_capacity(count);
    for _ in 0..count {
        let r = next();
        let v = if r % 8 == 0 && !out.is_empty() {
            out[(r >> 8) as usize % out.len()]
        } else {
            let mantissa = ((r >> 11) % 10_000) as f64 / 1000.0;
            let exponent = ((r >> 40) % 7) as i32 - 3;
            let sign = if (r >> 50) % 4 == 0 { -1.0 } else { 1.0 };
            sign * mantissa * 10f64.powi(exponent)
        };
        out.push(v);
    }
    out
}

fn nearest_rank(sorted: &[f64], q: f64) -> f64 {
    let n = sorted.len();
    let rank = ((q * n as f64).ceil() as usize).clamp(1, n);
    sorted[rank - 1]
}

/// What the engine must emit for one aggregation of one window.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Want {
    /// Nothing: the result is NaN, discarded and counted.
    Discarded,
    /// A value within `tolerance` of `expected` (equal, when `expected` is infinite).
    Close { expected: f64, tolerance: f64 },
    /// A quantile landing on an infinity: about ±`f64::MAX` (or the infinity itself once
    /// clamped to a window of infinities).
    Huge { negative: bool },
    /// A quantile of a finite value sharing the sketch's buckets with an infinity of its sign:
    /// same sign, magnitude at least `|expected|` within 1 %, inside the window's min and max.
    Merged { expected: f64, min: f64, max: f64 },
}

/// The model's answer for `agg` over the window's points, in arrival order.
fn expect(agg: AggregationType, points: &[(i64, f64)]) -> Want {
    let values: Vec<f64> = points.iter().map(|p| p.1).collect();
    let n = values.len() as f64;
    let sum: f64 = values.iter().sum();
    let scale: f64 = values
        .iter()
        .filter(|v| v.is_finite())
        .map(|v| v.abs())
        .sum::<f64>()
        .max(1.0);
    // Min, Max and the quantiles ignore NaN.
    let real: Vec<f64> = values.iter().copied().filter(|v| !v.is_nan()).collect();
    let min = real.iter().copied().fold(f64::INFINITY, f64::min);
    let max = real.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let value = |expected: f64, tolerance: f64| {
        if expected.is_nan() {
            Want::Discarded
        } else {
            Want::Close {
                expected,
                tolerance,
            }
        }
    };
    match agg {
        AggregationType::Last => {
            // Latest timestamp; ties go to the later arrival.
            let max_t = points.iter().map(|p| p.0).max().unwrap();
            value(points.iter().rev().find(|p| p.0 == max_t).unwrap().1, 0.0)
        }
        AggregationType::Min if !real.is_empty() => value(min, 0.0),
        AggregationType::Max if !real.is_empty() => value(max, 0.0),
        AggregationType::Min | AggregationType::Max => Want::Discarded,
        AggregationType::Count => value(n, 0.0),
        AggregationType::Sum => value(sum, 1e-9 * scale),
        AggregationType::SumSq => {
            let sq: f64 = values.iter().map(|v| v * v).sum();
            value(sq, 1e-9 * sq.max(1.0))
        }
        AggregationType::Mean => value(sum / n, 1e-9 * scale),
        AggregationType::Stdev => {
            if values.len() < 2 {
                value(0.0, 0.0)
            } else if values.iter().any(|v| !v.is_finite()) {
                Want::Discarded
            } else {
                let mean = sum / n;
                let ss: f64 = values.iter().map(|v| (v - mean).powi(2)).sum();
                let expected = (ss / (n - 1.0)).sqrt();
                value(expected, 1e-3 + 1e-6 * expected)
            }
        }
        _ => {
            let q = agg.quantile().unwrap();
            if real.is_empty() {
                return Want::Discarded;
            }
            let mut sorted = real.clone();
            sorted.sort_by(f64::total_cmp);
            let x = nearest_rank(&sorted, q);
            if x.is_infinite() {
                Want::Huge { negative: x < 0.0 }
            } else if sorted.len() < 3 {
                value(x, 0.0)
            } else if x.abs() > 1e-9
                && real
                    .iter()
                    .any(|v| v.is_infinite() && v.is_sign_negative() == x.is_sign_negative())
            {
                Want::Merged {
                    expected: x,
                    min,
                    max,
                }
            } else {
                // Within the sketch's 1 %, with room for the last bit of rounding.
                value(x, RELATIVE_ACCURACY * x.abs() * (1.0 + 1e-12) + 1e-9)
            }
        }
    }
}

fn check(what: &str, got: f64, want: Want) -> Result<(), TestCaseError> {
    match want {
        Want::Discarded => {
            return Err(TestCaseError::fail(format!(
                "{what}: emitted {got}, expected nothing"
            )));
        }
        Want::Close {
            expected,
            tolerance,
        } => prop_assert!(
            got == expected || (got - expected).abs() <= tolerance,
            "{what}: got {got}, expected {expected} (tolerance {tolerance})"
        ),
        Want::Huge { negative } => prop_assert!(
            got.is_sign_negative() == negative && got.abs() >= f64::MAX * (1.0 - RELATIVE_ACCURACY),
            "{what}: got {got}, expected about {}f64::MAX",
            if negative { "-" } else { "" }
        ),
        Want::Merged { expected, min, max } => prop_assert!(
            got.is_sign_negative() == expected.is_sign_negative()
                && got.abs() >= expected.abs() * (1.0 - RELATIVE_ACCURACY) * (1.0 - 1e-12)
                && (min..=max).contains(&got),
            "{what}: got {got}, expected {expected} or more in magnitude, within [{min}, {max}]"
        ),
    }
    Ok(())
}

fn policy(i: usize) -> StoragePolicy {
    POLICIES[i].0.parse().unwrap()
}

fn window_start(t: i64, resolution: i64) -> i64 {
    t.div_euclid(resolution) * resolution
}

/// The output ID of `agg` for series `s`: suffixed for timers and for several types.
fn output_id(s: usize, sr: &Series, agg: AggregationType) -> String {
    let base = format!("s{s}");
    if sr.metric_type == MetricType::Timer || sr.resolved().len() > 1 {
        let mut out = Vec::new();
        with_suffix(base.as_bytes(), agg.output_name(), &mut out).unwrap();
        String::from_utf8(out).unwrap()
    } else {
        base
    }
}

/// (output ID, storage policy, seconds after `T0` of the window end, aggregation).
type OutputKey = (String, String, i64, AggregationType);

/// (series, policy index, window start) → accepted points, in arrival order.
type Windows = BTreeMap<(usize, usize, i64), Vec<(i64, f64)>>;

/// One write as applied: series, timestamp, arrival time, drawn value, drawn non-finite value.
struct Event {
    series: usize,
    t: i64,
    now: i64,
    value: f64,
    special: Option<f64>,
}

/// Running totals the engine's counters must match.
#[derive(Default)]
struct Counts {
    too_far_past: u64,
    too_far_future: u64,
    added: [u64; 3],
    nan_discarded: u64,
}

fn metric_type_index(t: MetricType) -> usize {
    MetricType::ALL.iter().position(|m| *m == t).unwrap()
}

/// Flushes as leader at `now` and compares the outputs with the windows the model closes.
fn flush_and_check(
    agg: &Aggregator,
    series: &[Series],
    open: &mut Windows,
    counts: &mut Counts,
    now: i64,
) -> Result<(), TestCaseError> {
    let mut out: Vec<AggregatedOutput> = Vec::new();
    let result = agg.flush(now, FlushMode::Leader, &mut out);
    prop_assert_eq!(result.outputs, out.len());
    let due: Vec<(usize, usize, i64)> = open
        .keys()
        .filter(|(_, p, start)| {
            let res = POLICIES[*p].1;
            start + res <= window_start(now - BUFFER_PAST - res, res)
        })
        .copied()
        .collect();
    let mut want: BTreeMap<OutputKey, Want> = BTreeMap::new();
    for key in due {
        let (s, p, start) = key;
        let points = open.remove(&key).unwrap();
        let sr = &series[s];
        let end = start + POLICIES[p].1;
        for agg_type in sr.resolved() {
            match expect(agg_type, &points) {
                Want::Discarded => counts.nan_discarded += 1,
                w => {
                    let k = (
                        output_id(s, sr, agg_type),
                        POLICIES[p].0.to_string(),
                        (end - T0) / S,
                        agg_type,
                    );
                    want.insert(k, w);
                }
            }
        }
    }
    let mut got: BTreeMap<OutputKey, f64> = BTreeMap::new();
    for o in &out {
        let k = (
            String::from_utf8_lossy(&o.id).into_owned(),
            o.storage_policy.to_string(),
            (o.time_nanos - T0) / S,
            o.aggregation,
        );
        prop_assert!(got.insert(k, o.value).is_none(), "emitted twice: {:?}", o);
    }
    let flushed_at = (now - T0) as f64 / S as f64;
    prop_assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "outputs of the flush at T0+{}s",
        flushed_at
    );
    for (k, w) in want {
        let what = format!("{} {} at T0+{}s {}", k.0, k.1, k.2, k.3);
        check(&what, got[&k], w)?;
    }
    prop_assert_eq!(
        agg.metrics().outputs_discarded(OutputDiscard::Nan),
        counts.nan_discarded,
        "NaN results discarded by the flush at T0+{}s",
        flushed_at
    );
    Ok(())
}

fn run(
    mut series: Vec<Series>,
    writes: Vec<Write>,
    flushes: Vec<i64>,
    burst: Option<Burst>,
) -> Result<(), TestCaseError> {
    let agg = Aggregator::new(
        AggregatorOptions {
            buffer_past: Duration::from_nanos(BUFFER_PAST as u64),
            buffer_future: Duration::from_nanos(BUFFER_FUTURE as u64),
            ..AggregatorOptions::default()
        },
        Arc::new(|id: &[u8]| u32::from(id.last().copied().unwrap_or(0)) % 3),
    );
    agg.set_shards((0..3).map(ShardAssignment::unbounded).collect(), 0);

    let mut events: Vec<Event> = writes
        .into_iter()
        .map(|(s, offset, value, special, delay)| {
            let counter = series[s].metric_type == MetricType::Counter;
            Event {
                series: s,
                t: T0 + offset,
                now: T0 + offset + delay,
                value: if counter { value.trunc() } else { value },
                special: special.filter(|_| !counter),
            }
        })
        .collect();
    if let Some((sr, window, count, seed)) = burst {
        let s = series.len();
        series.push(sr);
        let start = T0 + window * 10 * S;
        for (i, v) in burst_values(count, seed).into_iter().enumerate() {
            let i = i as i64;
            let t = start + (i * 7_919_993) % (10 * S);
            events.push(Event {
                series: s,
                t,
                now: t + (i * 13 * S / 7) % (20 * S),
                value: v,
                special: None,
            });
        }
    }
    // Arrival order; writes arriving together keep their drawn order.
    events.sort_by_key(|e| e.now);
    let metadatas: Vec<_> = series
        .iter()
        .map(|sr| {
            let policies: Vec<StoragePolicy> = sr.policies.iter().map(|&p| policy(p)).collect();
            build::simple(sr.types, &policies)
        })
        .collect();
    let mut flush_times: Vec<i64> = flushes.iter().map(|f| T0 + f).collect();
    flush_times.sort_unstable();
    flush_times.push(FINAL_FLUSH);
    let mut flush_times = flush_times.into_iter().peekable();

    let mut open = Windows::new();
    let mut counts = Counts::default();
    for e in events {
        while let Some(f) = flush_times.next_if(|f| *f < e.now) {
            flush_and_check(&agg, &series, &mut open, &mut counts, f)?;
        }
        let sr = &series[e.series];
        // Per policy, in metadata order: accepted (None) or why not.
        let verdicts: Vec<Option<RejectReason>> = sr
            .policies
            .iter()
            .map(|&p| {
                let res = POLICIES[p].1;
                if e.t - e.now > BUFFER_FUTURE {
                    Some(RejectReason::TooFarFuture)
                } else if e.now - e.t > BUFFER_PAST + res {
                    Some(RejectReason::TooFarPast)
                } else {
                    None
                }
            })
            .collect();
        let value = e.special.unwrap_or(e.value);
        let id = format!("s{}", e.series);
        let metadatas = if sr.staged {
            Metadatas::Staged(&metadatas[e.series])
        } else {
            Metadatas::Single {
                aggregation_id: sr.types,
                storage_policy: policy(sr.policies[0]),
            }
        };
        let result = agg.add_timed(sr.metric_type, id.as_bytes(), e.t, value, metadatas, e.now);
        let first_rejection = verdicts.iter().flatten().next().copied();
        prop_assert_eq!(
            result.as_ref().err().map(|err| err.reason()),
            first_rejection,
            "write of {} at T0+{}ns arriving at T0+{}ns: {:?}",
            id,
            e.t - T0,
            e.now - T0,
            result
        );
        for (&p, verdict) in sr.policies.iter().zip(&verdicts) {
            match verdict {
                None => open
                    .entry((e.series, p, window_start(e.t, POLICIES[p].1)))
                    .or_default()
                    .push((e.t, value)),
                Some(RejectReason::TooFarPast) => counts.too_far_past += 1,
                Some(_) => counts.too_far_future += 1,
            }
        }
        if verdicts.iter().any(Option::is_none) {
            counts.added[metric_type_index(sr.metric_type)] += 1;
        }
    }
    for f in flush_times {
        flush_and_check(&agg, &series, &mut open, &mut counts, f)?;
    }
    prop_assert!(open.is_empty(), "windows left after the final flush");
    prop_assert_eq!(agg.stats().windows, 0);
    let m = agg.metrics();
    prop_assert_eq!(m.rejected(RejectReason::TooFarPast), counts.too_far_past);
    prop_assert_eq!(
        m.rejected(RejectReason::TooFarFuture),
        counts.too_far_future
    );
    for t in MetricType::ALL {
        prop_assert_eq!(
            m.added(t),
            counts.added[metric_type_index(t)],
            "added {:?}",
            t
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn flushes_match_naive_model(
        (series, writes) in prop::collection::vec(series_strategy(), 1..5)
            .prop_flat_map(|series| {
                let n = series.len();
                (Just(series), writes_strategy(n))
            }),
        flushes in flushes_strategy(),
        burst in burst_strategy(),
    ) {
        run(series, writes, flushes, burst)?;
    }
}
