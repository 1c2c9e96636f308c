//! The state of one aggregation window, in four sizes.
//!
//! A window holds just enough to answer the aggregation types its elem was asked for, so a
//! million gauges aggregated with `Last` cost 16 bytes of state each and no quantile sketch:
//!
//! | state | used when the types are | size |
//! |---|---|---|
//! | [`LastValue`] | exactly `{Last}` (the gauge default) | 16 B |
//! | [`SumValue`] | exactly `{Sum}` (the counter default) | 8 B |
//! | [`Moments`] | anything else without quantiles | 56 B |
//! | [`TimerValues`] | any set with a quantile (timers only) | 80 B + sketch |
//!
//! Semantics follow M3:
//! * **Last** is the value with the latest *metric timestamp*, not the latest arrival; for equal
//!   timestamps the later arrival wins. Untimed metrics use their arrival time as timestamp.
//! * **Min** / **Max** (output names `lower` / `upper`), **Sum**, **SumSq**, **Count**,
//!   **Mean** = Sum / Count.
//! * **Stdev** is the *sample* standard deviation, with n − 1 in the denominator, computed as M3
//!   does from the running sums: `sqrt((n·SumSq − Sum²) / (n·(n−1)))`, 0 for a single value.
//!   Rounding can make the numerator slightly negative for near-constant values; it is clamped
//!   to 0 rather than producing NaN.
//! * Quantiles come from [`crate::quantile::QuantileSketch`]: exact below three
//!   values, within 1 % relative error above.
//!
//! Counter increments are integers on the wire; they are accumulated as `f64`, which is exact up
//! to 2^53 per window.

use m3_metric::{AggregationId, AggregationType, MetricType};

use crate::quantile::QuantileSketch;

/// The state of one window: created from its first value, updated with each later one.
pub trait WindowState {
    /// A state holding one value observed at `time_nanos`.
    fn new(time_nanos: i64, value: f64) -> Self
    where
        Self: Sized;
    /// Adds a value observed at `time_nanos`.
    fn add(&mut self, time_nanos: i64, value: f64);
    /// The result of `aggregation`, or NaN if this state cannot answer it.
    fn value_of(&self, aggregation: AggregationType) -> f64;
}

/// Which [`WindowState`] an elem uses, chosen from its aggregation types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateKind {
    /// [`LastValue`].
    Last,
    /// [`SumValue`].
    Sum,
    /// [`Moments`].
    Moments,
    /// [`TimerValues`].
    Timer,
}

impl StateKind {
    /// The smallest state that answers every type in `types` (already resolved, not default).
    pub fn for_types(types: AggregationId) -> StateKind {
        let last = AggregationId::from_types([AggregationType::Last]);
        let sum = AggregationId::from_types([AggregationType::Sum]);
        if types.types().any(|t| t.quantile().is_some()) {
            StateKind::Timer
        } else if types == last {
            StateKind::Last
        } else if types == sum {
            StateKind::Sum
        } else {
            StateKind::Moments
        }
    }
}

/// Whether every type in `types` is valid for `metric_type`, and no unknown bit is set.
pub fn is_valid(types: AggregationId, metric_type: MetricType) -> bool {
    !types.has_unknown_bits()
        && !types.is_default()
        && types.types().all(|t| t.is_valid_for(metric_type))
}

/// The latest value by timestamp.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LastValue {
    time_nanos: i64,
    value: f64,
}

impl LastValue {
    /// The timestamp of the value.
    pub(crate) fn time_nanos(&self) -> i64 {
        self.time_nanos
    }
}

impl WindowState for LastValue {
    fn new(time_nanos: i64, value: f64) -> Self {
        LastValue { time_nanos, value }
    }

    fn add(&mut self, time_nanos: i64, value: f64) {
        if time_nanos >= self.time_nanos {
            self.time_nanos = time_nanos;
            self.value = value;
        }
    }

    fn value_of(&self, aggregation: AggregationType) -> f64 {
        match aggregation {
            AggregationType::Last => self.value,
            _ => f64::NAN,
        }
    }
}

/// A running sum.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SumValue(f64);

impl WindowState for SumValue {
    fn new(_time_nanos: i64, value: f64) -> Self {
        SumValue(value)
    }

    fn add(&mut self, _time_nanos: i64, value: f64) {
        self.0 += value;
    }

    fn value_of(&self, aggregation: AggregationType) -> f64 {
        match aggregation {
            AggregationType::Sum => self.0,
            _ => f64::NAN,
        }
    }
}

/// Count, sum, sum of squares, min, max and last: every non-quantile aggregation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Moments {
    count: u64,
    sum: f64,
    sum_sq: f64,
    min: f64,
    max: f64,
    last: LastValue,
}

impl WindowState for Moments {
    fn new(time_nanos: i64, value: f64) -> Self {
        Moments {
            count: 1,
            sum: value,
            sum_sq: value * value,
            min: value,
            max: value,
            last: LastValue::new(time_nanos, value),
        }
    }

    fn add(&mut self, time_nanos: i64, value: f64) {
        self.count += 1;
        self.sum += value;
        self.sum_sq += value * value;
        // `min`/`max` ignore NaN, as M3's gauge does: a window whose first value was NaN takes
        // the next real value.
        if value < self.min || self.min.is_nan() {
            self.min = value;
        }
        if value > self.max || self.max.is_nan() {
            self.max = value;
        }
        self.last.add(time_nanos, value);
    }

    fn value_of(&self, aggregation: AggregationType) -> f64 {
        let n = self.count as f64;
        match aggregation {
            AggregationType::Last => self.last.value,
            AggregationType::Min => self.min,
            AggregationType::Max => self.max,
            AggregationType::Mean => self.sum / n,
            AggregationType::Count => n,
            AggregationType::Sum => self.sum,
            AggregationType::SumSq => self.sum_sq,
            AggregationType::Stdev => stdev(self.count, self.sum, self.sum_sq),
            _ => f64::NAN,
        }
    }
}

/// Sample standard deviation from running sums, as M3 computes it (see the module doc).
pub fn stdev(count: u64, sum: f64, sum_sq: f64) -> f64 {
    if count < 2 {
        return 0.0;
    }
    let n = count as f64;
    let numerator = n * sum_sq - sum * sum;
    if numerator.is_nan() {
        return f64::NAN;
    }
    (numerator.max(0.0) / (n * (n - 1.0))).sqrt()
}

/// [`Moments`] plus a quantile sketch: a timer window.
#[derive(Debug, Clone)]
pub struct TimerValues {
    moments: Moments,
    quantiles: QuantileSketch,
}

impl WindowState for TimerValues {
    fn new(time_nanos: i64, value: f64) -> Self {
        let mut quantiles = QuantileSketch::default();
        quantiles.add(value);
        TimerValues {
            moments: Moments::new(time_nanos, value),
            quantiles,
        }
    }

    fn add(&mut self, time_nanos: i64, value: f64) {
        self.moments.add(time_nanos, value);
        self.quantiles.add(value);
    }

    fn value_of(&self, aggregation: AggregationType) -> f64 {
        match aggregation.quantile() {
            Some(q) => {
                // Within the window's min and max; `f64::max`/`min` skip a NaN bound where
                // `clamp` would panic on one.
                self.quantiles
                    .quantile(q)
                    .max(self.moments.min)
                    .min(self.moments.max)
            }
            None => self.moments.value_of(aggregation),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use AggregationType::*;

    fn build<S: WindowState>(values: &[(i64, f64)]) -> S {
        let mut s = S::new(values[0].0, values[0].1);
        for (t, v) in &values[1..] {
            s.add(*t, *v);
        }
        s
    }

    #[test]
    fn counter_aggregations_by_hand() {
        // 1, 2, 3, 4: sum 10, sumsq 30, mean 2.5, sample stdev sqrt(5/3).
        let m: Moments = build(&[(1, 1.0), (2, 2.0), (3, 3.0), (4, 4.0)]);
        assert_eq!(m.value_of(Sum), 10.0);
        assert_eq!(m.value_of(SumSq), 30.0);
        assert_eq!(m.value_of(Mean), 2.5);
        assert_eq!(m.value_of(Min), 1.0);
        assert_eq!(m.value_of(Max), 4.0);
        assert_eq!(m.value_of(Count), 4.0);
        assert!((m.value_of(Stdev) - (5.0f64 / 3.0).sqrt()).abs() < 1e-12);
        let s: SumValue = build(&[(1, 5.0), (1, -2.0), (9, 7.0)]);
        assert_eq!(s.value_of(Sum), 10.0);
        assert!(s.value_of(Last).is_nan());
    }

    /// Regression: a window whose first value was NaN kept NaN as its min and max, so Min and
    /// Max were never emitted and any quantile of such a timer window panicked at flush
    /// (`clamp` with NaN bounds).
    #[test]
    fn a_leading_nan_neither_sticks_in_min_max_nor_panics_a_quantile() {
        let m: Moments = build(&[(1, f64::NAN), (2, 5.0), (3, 6.0)]);
        assert_eq!(m.value_of(Min), 5.0);
        assert_eq!(m.value_of(Max), 6.0);
        let t: TimerValues = build(&[(1, f64::NAN), (2, 5.0), (3, 6.0), (4, 7.0)]);
        assert_eq!(t.value_of(Min), 5.0);
        let p50 = t.value_of(P50);
        assert!((p50 - 6.0).abs() <= 0.06, "P50 {p50}");
        let all_nan: TimerValues = build(&[(1, f64::NAN), (2, f64::NAN)]);
        assert!(all_nan.value_of(P99).is_nan());
        assert!(all_nan.value_of(Min).is_nan());
    }

    #[test]
    fn stdev_edge_cases() {
        assert_eq!(stdev(0, 0.0, 0.0), 0.0);
        assert_eq!(stdev(1, 5.0, 25.0), 0.0);
        // Constant values whose rounding would give a negative numerator.
        let m: Moments = build(&[(0, 0.1), (0, 0.1), (0, 0.1)]);
        assert_eq!(m.value_of(Stdev), 0.0);
        // 2, 4, 4, 4, 5, 5, 7, 9: population stdev 2, sample stdev sqrt(32/7).
        let pts: Vec<(i64, f64)> = [2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]
            .iter()
            .map(|v| (0, *v))
            .collect();
        let m: Moments = build(&pts);
        assert!((m.value_of(Stdev) - (32.0f64 / 7.0).sqrt()).abs() < 1e-12);
    }

    #[test]
    fn last_is_by_timestamp_not_arrival() {
        let l: LastValue = build(&[(30, 3.0), (10, 1.0), (20, 2.0)]);
        assert_eq!(l.value_of(Last), 3.0);
        // Ties go to the later arrival.
        let l: LastValue = build(&[(30, 3.0), (30, 4.0), (10, 1.0)]);
        assert_eq!(l.value_of(Last), 4.0);
        let m: Moments = build(&[(30, 3.0), (10, 1.0), (20, 2.0)]);
        assert_eq!(m.value_of(Last), 3.0);
        assert_eq!(m.value_of(Min), 1.0);
    }

    #[test]
    fn gauge_aggregations_by_hand() {
        let m: Moments = build(&[(5, -1.5), (7, 2.5), (6, 4.0)]);
        assert_eq!(m.value_of(Last), 2.5);
        assert_eq!(m.value_of(Min), -1.5);
        assert_eq!(m.value_of(Max), 4.0);
        assert_eq!(m.value_of(Sum), 5.0);
        assert_eq!(m.value_of(SumSq), 2.25 + 6.25 + 16.0);
        assert!((m.value_of(Mean) - 5.0 / 3.0).abs() < 1e-12);
        assert_eq!(m.value_of(Count), 3.0);
    }

    #[test]
    fn timer_aggregations_by_hand() {
        let pts: Vec<(i64, f64)> = (1..=100).map(|i| (0, f64::from(i))).collect();
        let t: TimerValues = build(&pts);
        assert_eq!(t.value_of(Sum), 5050.0);
        assert_eq!(t.value_of(Count), 100.0);
        assert_eq!(t.value_of(Min), 1.0);
        assert_eq!(t.value_of(Max), 100.0);
        assert_eq!(t.value_of(Mean), 50.5);
        assert_eq!(t.value_of(SumSq), 338_350.0);
        assert!((t.value_of(Stdev) - 29.011_491_975_882_016).abs() < 1e-9);
        // Exact rank floor(q·99): P50 → 50, P95 → 95, P99 → 99, each within 1 %.
        for (agg, exact) in [(P50, 50.0), (Median, 50.0), (P95, 95.0), (P99, 99.0)] {
            let got = t.value_of(agg);
            assert!((got - exact).abs() <= 0.01 * exact, "{agg}: {got}");
        }
        // Two values: exact, M3's nearest rank.
        let t: TimerValues = build(&[(0, 10.0), (0, 20.0)]);
        assert_eq!(t.value_of(P50), 10.0);
        assert_eq!(t.value_of(P99), 20.0);
        assert_eq!(t.value_of(Stdev), 50.0f64.sqrt());
    }

    #[test]
    fn state_kind_follows_types() {
        let id = |ts: &[AggregationType]| AggregationId::from_types(ts.iter().copied());
        assert_eq!(StateKind::for_types(id(&[Last])), StateKind::Last);
        assert_eq!(StateKind::for_types(id(&[Sum])), StateKind::Sum);
        assert_eq!(StateKind::for_types(id(&[Sum, Max])), StateKind::Moments);
        assert_eq!(StateKind::for_types(id(&[Last, Min])), StateKind::Moments);
        assert_eq!(StateKind::for_types(id(&[Sum, P99])), StateKind::Timer);
        assert!(is_valid(id(&[Last, Min]), MetricType::Gauge));
        assert!(!is_valid(id(&[P99]), MetricType::Gauge));
        assert!(!is_valid(id(&[Last]), MetricType::Timer));
        assert!(!is_valid(id(&[Last]), MetricType::Counter));
        assert!(!is_valid(AggregationId(1), MetricType::Timer));
    }
}
