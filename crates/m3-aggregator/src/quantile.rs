//! Quantiles of a timer window: exact for tiny windows, a DDSketch beyond.
//!
//! M3 estimates quantiles with a Cormode–Muthukrishnan stream. We use a DDSketch instead because
//! it is mergeable (two replicas' or two windows' sketches combine exactly) and its error bound
//! is *relative* and easy to state:
//!
//! Both follow M3's rank rule, *nearest rank*: the quantile `q` of `n` values is the value at
//! 1-based rank `ceil(q·n)` of the sorted values (at least 1). For the values 1..10, P50 is 5
//! and P95 = P99 = 10.
//!
//! * With fewer than [`EXACT_LIMIT`] values (0, 1 or 2) the quantile is exact.
//! * From [`EXACT_LIMIT`] values on, the result `v` is within [`RELATIVE_ACCURACY`] (1 %) of
//!   the true value `x` at that rank: `|v − x| ≤ 0.01·|x|`. (The sketch itself answers for
//!   0-based rank `floor(p·(n−1))`; it is asked for the `p` that lands on M3's rank.) Values with `|x| ≤ 1e-9` are reported as 0. The sketch keeps at most
//!   2048 buckets per sign, which covers a ratio of about 6·10^17 between the smallest and the
//!   largest magnitude; beyond that the smallest buckets are merged and only low quantiles lose
//!   accuracy. Results are clamped to the window's exact min and max.
//!
//! NaN values are not added to the quantile structure (they still count for Count and make Sum
//! NaN); infinities are clamped to ±`f64::MAX` so the sketch's bucket index stays finite.

use sketches_ddsketch::{Config, DDSketch};

/// Relative accuracy of quantiles computed from the sketch.
pub const RELATIVE_ACCURACY: f64 = 0.01;
/// Number of values from which the sketch is used; below it quantiles are exact.
pub const EXACT_LIMIT: usize = 3;

const MAX_BINS: u32 = 2048;
const MIN_MAGNITUDE: f64 = 1e-9;

/// The quantile state of one timer window.
#[derive(Clone)]
pub enum QuantileSketch {
    /// Fewer than [`EXACT_LIMIT`] values, kept exactly.
    Exact {
        /// The values, the first `len` of which are set.
        values: [f64; EXACT_LIMIT - 1],
        /// How many values are set.
        len: u8,
    },
    /// A DDSketch with [`RELATIVE_ACCURACY`].
    Sketch(Box<DDSketch>),
}

impl std::fmt::Debug for QuantileSketch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            QuantileSketch::Exact { values, len } => f
                .debug_struct("Exact")
                .field("values", &&values[..usize::from(*len)])
                .finish(),
            QuantileSketch::Sketch(s) => {
                f.debug_struct("Sketch").field("count", &s.count()).finish()
            }
        }
    }
}

impl Default for QuantileSketch {
    fn default() -> Self {
        QuantileSketch::Exact {
            values: [0.0; EXACT_LIMIT - 1],
            len: 0,
        }
    }
}

impl QuantileSketch {
    /// Adds one value.
    pub fn add(&mut self, value: f64) {
        if value.is_nan() {
            return;
        }
        let value = value.clamp(-f64::MAX, f64::MAX);
        match self {
            QuantileSketch::Exact { values, len } => {
                let n = usize::from(*len);
                if n < values.len() {
                    values[n] = value;
                    *len += 1;
                    return;
                }
                let mut sketch = Box::new(DDSketch::new(Config::new(
                    RELATIVE_ACCURACY,
                    MAX_BINS,
                    MIN_MAGNITUDE,
                )));
                for v in &values[..n] {
                    sketch.add(*v);
                }
                sketch.add(value);
                *self = QuantileSketch::Sketch(sketch);
            }
            QuantileSketch::Sketch(sketch) => sketch.add(value),
        }
    }

    /// Number of (non-NaN) values added.
    pub fn count(&self) -> usize {
        match self {
            QuantileSketch::Exact { len, .. } => usize::from(*len),
            QuantileSketch::Sketch(s) => s.count(),
        }
    }

    /// The `q` quantile (0 ≤ q ≤ 1), or NaN when no value was added or `q` is out of range.
    pub fn quantile(&self, q: f64) -> f64 {
        if !(0.0..=1.0).contains(&q) {
            return f64::NAN;
        }
        match self {
            QuantileSketch::Exact { values, len } => {
                let n = usize::from(*len);
                if n == 0 {
                    return f64::NAN;
                }
                let mut sorted = *values;
                let sorted = &mut sorted[..n];
                sorted.sort_by(f64::total_cmp);
                sorted[nearest_rank(q, n) - 1]
            }
            QuantileSketch::Sketch(s) => {
                let n = s.count();
                if n < 2 {
                    return s.quantile(q).ok().flatten().unwrap_or(f64::NAN);
                }
                // The sketch's rank for p is floor(p·(n−1)): ask for the middle of M3's rank
                // so rounding cannot land on its neighbour.
                let rank = nearest_rank(q, n) - 1;
                let p = ((rank as f64 + 0.5) / (n - 1) as f64).min(1.0);
                s.quantile(p).ok().flatten().unwrap_or(f64::NAN)
            }
        }
    }
}

/// M3's nearest rank of quantile `q` among `n` values: 1-based `ceil(q·n)`, in `1..=n`.
pub fn nearest_rank(q: f64, n: usize) -> usize {
    ((q * n as f64).ceil() as usize).clamp(1, n.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_below_three_values_uses_nearest_rank() {
        let mut s = QuantileSketch::default();
        assert!(s.quantile(0.5).is_nan());
        s.add(100.0);
        for q in [0.01, 0.5, 0.99, 1.0] {
            assert_eq!(s.quantile(q), 100.0);
        }
        s.add(-3.0);
        assert_eq!(s.quantile(0.5), -3.0);
        assert_eq!(s.quantile(0.95), 100.0);
        assert_eq!(s.quantile(0.0), -3.0);
        assert!(matches!(s, QuantileSketch::Exact { len: 2, .. }));
    }

    #[test]
    fn sketch_within_relative_error() {
        let mut s = QuantileSketch::default();
        let mut values: Vec<f64> = (1..=10_000).map(|i| f64::from(i) * 0.37).collect();
        for v in &values {
            s.add(*v);
        }
        values.sort_by(f64::total_cmp);
        for q in [0.1, 0.5, 0.9, 0.99, 0.999] {
            let exact = values[nearest_rank(q, values.len()) - 1];
            let got = s.quantile(q);
            assert!(
                (got - exact).abs() <= RELATIVE_ACCURACY * exact.abs(),
                "q={q} got={got} exact={exact}"
            );
        }
        assert_eq!(s.count(), 10_000);
    }

    /// M3 reports P95 = P99 = 10 for 1..10 (nearest rank); `floor(q·(n−1))` would say 9.
    #[test]
    fn small_counts_follow_m3s_nearest_rank() {
        type Case<'a> = (&'a [f64], &'a [(f64, f64)]);
        let cases: &[Case] = &[
            (
                &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0],
                &[
                    (0.5, 5.0),
                    (0.95, 10.0),
                    (0.99, 10.0),
                    (0.1, 1.0),
                    (0.25, 3.0),
                ],
            ),
            (&[7.0, 1.0, 4.0], &[(0.5, 4.0), (0.99, 7.0), (0.01, 1.0)]),
            (
                &[2.0, 8.0, 4.0, 6.0],
                &[(0.5, 4.0), (0.75, 6.0), (0.76, 8.0)],
            ),
        ];
        for (values, expected) in cases {
            let mut s = QuantileSketch::default();
            for v in *values {
                s.add(*v);
            }
            for (q, want) in *expected {
                let got = s.quantile(*q);
                // 1 % relative, with room for the last bit of floating-point rounding.
                assert!(
                    (got - want).abs() <= RELATIVE_ACCURACY * want.abs() * (1.0 + 1e-12),
                    "{values:?} q={q}: got {got}, M3 says {want}"
                );
            }
        }
    }

    #[test]
    fn odd_values_do_not_panic() {
        let mut s = QuantileSketch::default();
        for v in [
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            0.0,
            -0.0,
            1e-300,
            -1e300,
            f64::MAX,
            f64::MIN_POSITIVE,
        ] {
            s.add(v);
        }
        assert_eq!(s.count(), 8);
        for q in [0.0, 0.1, 0.5, 0.9, 1.0] {
            assert!(!s.quantile(q).is_nan());
        }
        assert!(s.quantile(1.5).is_nan());
    }
}
