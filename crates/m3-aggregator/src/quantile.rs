//! Quantiles of a timer window: exact for tiny windows, a DDSketch beyond.
//!
//! M3 estimates quantiles with a Cormode–Muthukrishnan stream. We use a DDSketch instead because
//! it is mergeable (two replicas' or two windows' sketches combine exactly) and its error bound
//! is *relative* and easy to state:
//!
//! * With fewer than [`EXACT_LIMIT`] values (0, 1 or 2) the quantile is exact and follows M3's
//!   nearest-rank rule: the value at 1-based rank `ceil(q·n)` of the sorted values (so with two
//!   values P50 is the lower one and P95 the upper one), as M3's stream does before it has
//!   enough samples to compress.
//! * From [`EXACT_LIMIT`] values on, the result `v` for quantile `q` is within
//!   [`RELATIVE_ACCURACY`] (1 %) of the true value `x` at 0-based rank `floor(q·(n−1))`:
//!   `|v − x| ≤ 0.01·|x|`. Values with `|x| ≤ 1e-9` are reported as 0. The sketch keeps at most
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
                // Nearest rank: 1-based rank ceil(q·n), at least 1.
                let rank = ((q * n as f64).ceil() as usize).clamp(1, n);
                sorted[rank - 1]
            }
            QuantileSketch::Sketch(s) => s.quantile(q).ok().flatten().unwrap_or(f64::NAN),
        }
    }
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
            let exact = values[(q * (values.len() - 1) as f64) as usize];
            let got = s.quantile(q);
            assert!(
                (got - exact).abs() <= RELATIVE_ACCURACY * exact.abs(),
                "q={q} got={got} exact={exact}"
            );
        }
        assert_eq!(s.count(), 10_000);
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
