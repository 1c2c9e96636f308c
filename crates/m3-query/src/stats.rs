//! The numeric building blocks of functions and aggregations, each computed the way
//! Prometheus 2.x computes it, so results agree to the last bits where the order of
//! floating-point operations matters (an incremental mean is not `sum / n`).
//!
//! Also the few calendar computations the date functions need (days ↔ civil dates in the
//! proleptic Gregorian calendar, UTC).

/// Go's `math.Max`: NaN if either is NaN (Rust's `f64::max` ignores a NaN).
pub(crate) fn go_max(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a.max(b)
    }
}

/// Go's `math.Min`: NaN if either is NaN.
pub(crate) fn go_min(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a.min(b)
    }
}

/// One step of Neumaier's compensated (Kahan) summation, as Prometheus 2.42 sums over time:
/// `sum + inc`, with the rounding error gathered in `c`.
fn kahan_add(inc: f64, sum: f64, c: f64) -> (f64, f64) {
    let t = sum + inc;
    let c = if sum.abs() >= inc.abs() {
        c + ((sum - t) + inc)
    } else {
        c + ((inc - t) + sum)
    };
    (t, c)
}

/// A compensated sum and its correction together; an infinite sum ignores the correction
/// (which is NaN then).
#[derive(Debug, Default, Clone, Copy)]
struct CompensatedSum {
    sum: f64,
    c: f64,
}

impl CompensatedSum {
    fn add(&mut self, inc: f64) {
        (self.sum, self.c) = kahan_add(inc, self.sum, self.c);
    }

    fn value(self) -> f64 {
        if self.sum.is_infinite() {
            self.sum
        } else {
            self.sum + self.c
        }
    }
}

/// `sum_over_time`: the compensated sum.
pub(crate) fn compensated_sum(values: impl Iterator<Item = f64>) -> f64 {
    let mut sum = CompensatedSum::default();
    values.for_each(|v| sum.add(v));
    sum.value()
}

/// The mean as Prometheus accumulates it over time (`mean += v/n − mean/n`, compensated),
/// which does not overflow where `sum / n` would, with its handling of infinities.
pub(crate) fn incremental_mean(values: impl Iterator<Item = f64>) -> f64 {
    let mut mean = CompensatedSum::default();
    let mut count: f64 = 0.0;
    for v in values {
        count += 1.0;
        if mean.sum.is_infinite() {
            if v.is_infinite() && (mean.sum > 0.0) == (v > 0.0) {
                continue;
            }
            if !v.is_infinite() && !v.is_nan() {
                continue;
            }
        }
        mean.add(v / count - mean.sum / count);
    }
    mean.value()
}

/// The population variance, by Welford's method with compensated sums as Prometheus 2.42
/// computes it over time.
pub(crate) fn variance(values: impl Iterator<Item = f64>) -> f64 {
    let mut count = 0.0;
    let mut mean = CompensatedSum::default();
    let mut aux = CompensatedSum::default();
    for v in values {
        count += 1.0;
        let delta = v - (mean.sum + mean.c);
        mean.add(delta / count);
        aux.add(delta * (v - (mean.sum + mean.c)));
    }
    (aux.sum + aux.c) / count
}

/// The order Go's float sorts give: NaN before every number. A total order, which Rust's
/// sorts require (`partial_cmp` with a fallback is not one when NaN is present).
pub(crate) fn nan_first(a: f64, b: f64) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    match (a.is_nan(), b.is_nan()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Less,
        (false, true) => Ordering::Greater,
        (false, false) => a.partial_cmp(&b).unwrap_or(Ordering::Equal),
    }
}

/// The φ-quantile of `values` (reordered), interpolating between the closest ranks; −Inf
/// below φ = 0, +Inf above 1, NaN for NaN or no values.
pub(crate) fn quantile(q: f64, values: &mut [f64]) -> f64 {
    if values.is_empty() || q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    values.sort_by(|a, b| nan_first(*a, *b));
    let n = values.len() as f64;
    let rank = q * (n - 1.0);
    let lower = rank.floor().max(0.0);
    let upper = (lower + 1.0).min(n - 1.0);
    let weight = rank - rank.floor();
    values[lower as usize] * (1.0 - weight) + values[upper as usize] * weight
}

/// Least-squares fit of `points` with time measured in seconds from `intercept_time`:
/// `(slope, intercept)`. A constant series has slope 0 (and NaN if it is infinite).
pub(crate) fn linear_regression(points: &[(i64, f64)], intercept_time: i64) -> (f64, f64) {
    let mut n = 0.0;
    let [mut sum_x, mut sum_y, mut sum_xy, mut sum_x2] = [CompensatedSum::default(); 4];
    let first = points.first().map_or(0.0, |p| p.1);
    let mut constant = true;
    for (i, &(t, v)) in points.iter().enumerate() {
        if i > 0 && v != first {
            constant = false;
        }
        n += 1.0;
        // In i128: the evaluation time may be anywhere in i64's range.
        let x = (i128::from(t) - i128::from(intercept_time)) as f64 / 1e3;
        sum_x.add(x);
        sum_y.add(v);
        sum_xy.add(x * v);
        sum_x2.add(x * x);
    }
    let [sum_x, sum_y, sum_xy, sum_x2] = [sum_x, sum_y, sum_xy, sum_x2].map(|s| s.sum + s.c);
    if constant {
        if first.is_infinite() {
            return (f64::NAN, f64::NAN);
        }
        return (0.0, first);
    }
    let cov_xy = sum_xy - sum_x * sum_y / n;
    let var_x = sum_x2 - sum_x * sum_x / n;
    let slope = cov_xy / var_x;
    let intercept = sum_y / n - slope * sum_x / n;
    (slope, intercept)
}

/// Double exponential smoothing with smoothing factor `sf` and trend factor `tf`.
pub(crate) fn holt_winters(points: &[(i64, f64)], sf: f64, tf: f64) -> Option<f64> {
    if points.len() < 2 {
        return None;
    }
    let (mut s0, mut s1) = (0.0, points[0].1);
    let mut trend = points[1].1 - points[0].1;
    for (i, &(_, v)) in points.iter().enumerate().skip(1) {
        let x = sf * v;
        if i > 1 {
            trend = tf * (s1 - s0) + (1.0 - tf) * trend;
        }
        let y = (1.0 - sf) * (s1 + trend);
        s0 = s1;
        s1 = x + y;
    }
    Some(s1)
}

/// A float as Go's `strconv.ParseFloat` reads one (`+Inf`, `Inf`, `-inf`, `NaN`, decimal).
pub(crate) fn parse_go_float(s: &str) -> Option<f64> {
    let lower = s.to_ascii_lowercase();
    match lower.trim_start_matches('+') {
        "inf" | "infinity" => {
            return Some(if lower.starts_with('-') {
                f64::NEG_INFINITY
            } else {
                f64::INFINITY
            });
        }
        "-inf" | "-infinity" => return Some(f64::NEG_INFINITY),
        "nan" => return Some(f64::NAN),
        _ => {}
    }
    s.parse().ok()
}

/// The φ-quantile of a classic histogram's `(upper bound, cumulative count)` buckets
/// (reordered): NaN without a `+Inf` bucket, fewer than two buckets or no observations.
pub(crate) fn bucket_quantile(q: f64, buckets: &mut Vec<(f64, f64)>) -> f64 {
    if q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    buckets.sort_by(|a, b| nan_first(a.0, b.0));
    if buckets.last().is_none_or(|b| b.0 != f64::INFINITY) {
        return f64::NAN;
    }
    // Buckets with the same bound are one bucket.
    buckets.dedup_by(|later, earlier| {
        if later.0 == earlier.0 {
            earlier.1 += later.1;
            true
        } else {
            false
        }
    });
    // Counts never decrease (scrapes of a histogram are not atomic); a NaN count stays NaN.
    let mut max = f64::NEG_INFINITY;
    for b in buckets.iter_mut() {
        if b.1 > max {
            max = b.1;
        } else if b.1 < max {
            b.1 = max;
        }
    }
    if buckets.len() < 2 {
        return f64::NAN;
    }
    let observations = buckets[buckets.len() - 1].1;
    if observations == 0.0 {
        return f64::NAN;
    }
    let mut rank = q * observations;
    let last = buckets.len() - 1;
    let b = buckets[..last].partition_point(|b| b.1 < rank);
    if b == last {
        return buckets[last - 1].0;
    }
    if b == 0 && buckets[0].0 <= 0.0 {
        return buckets[0].0;
    }
    let (mut start, end, mut count) = (0.0, buckets[b].0, buckets[b].1);
    if b > 0 {
        start = buckets[b - 1].0;
        count -= buckets[b - 1].1;
        rank -= buckets[b - 1].1;
    }
    start + (end - start) * (rank / count)
}

/// `(year, month 1–12, day 1–31)` of the day `days` after 1970-01-01.
pub(crate) fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Days after 1970-01-01 of a civil date.
pub(crate) fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Days in `month` of `year`.
pub(crate) fn days_in_month(year: i64, month: i64) -> i64 {
    let (next_year, next_month) = if month == 12 {
        (year + 1, 1)
    } else {
        (year, month + 1)
    };
    days_from_civil(next_year, next_month, 1) - days_from_civil(year, month, 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calendar_round_trips() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(days_from_civil(2024, 2, 29), 19_782);
        assert_eq!(days_in_month(2024, 2), 29);
        assert_eq!(days_in_month(2023, 2), 28);
        assert_eq!(days_in_month(2023, 12), 31);
        for d in [-1_000_000, -1, 0, 59, 60, 365, 10_000, 2_000_000] {
            let (y, m, day) = civil_from_days(d);
            assert_eq!(days_from_civil(y, m, day), d);
        }
    }

    #[test]
    fn quantiles_interpolate() {
        assert_eq!(quantile(0.5, &mut [4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(quantile(1.5, &mut [1.0]), f64::INFINITY);
        let mut buckets = vec![(1.0, 10.0), (f64::INFINITY, 20.0), (0.5, 5.0)];
        assert_eq!(bucket_quantile(0.5, &mut buckets), 1.0);
        let mut buckets = vec![(1.0, 10.0), (2.0, 20.0), (f64::INFINITY, 20.0)];
        assert_eq!(bucket_quantile(0.75, &mut buckets), 1.5);
    }

    #[test]
    fn nan_sorts_first_and_never_breaks_the_sort() {
        // Many NaN among numbers: a comparator that is not a total order may panic here.
        let mut values: Vec<f64> = (0..200)
            .map(|i| {
                if i % 3 == 0 {
                    f64::NAN
                } else {
                    f64::from(100 - i)
                }
            })
            .collect();
        values.sort_by(|a, b| nan_first(*a, *b));
        let nan = values.iter().take_while(|v| v.is_nan()).count();
        assert_eq!(nan, 67);
        assert!(values[nan..].windows(2).all(|w| w[0] <= w[1]));
        // The quantile of values with NaN ranks NaN lowest, as Prometheus does.
        assert!(quantile(0.0, &mut [3.0, f64::NAN, 1.0]).is_nan());
        assert_eq!(quantile(1.0, &mut [3.0, f64::NAN, 1.0]), 3.0);
        // A bucket with a NaN bound sorts first; a NaN count is left as it is, not raised to
        // the running maximum.
        let mut buckets = vec![(f64::INFINITY, 10.0), (f64::NAN, 4.0), (1.0, 5.0)];
        assert_eq!(bucket_quantile(0.9, &mut buckets), 1.0);
        let mut buckets = vec![(1.0, 5.0), (2.0, f64::NAN), (f64::INFINITY, 10.0)];
        bucket_quantile(0.9, &mut buckets);
        assert!(buckets[1].1.is_nan(), "{buckets:?}");
    }

    #[test]
    fn go_min_max_propagate_nan() {
        assert!(go_max(f64::NAN, 1.0).is_nan());
        assert!(go_min(1.0, f64::NAN).is_nan());
        assert_eq!(go_max(1.0, 2.0), 2.0);
    }
}
