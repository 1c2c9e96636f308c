//! PromQL's functions, with Prometheus 2.x's semantics.
//!
//! Three shapes cover nearly all of them:
//!
//! * **range functions** (`rate`, `avg_over_time`, …) read each series' window at each step
//!   ([`over_windows`]) and yield one value, or none when the window is too sparse;
//! * **element functions** (`abs`, `clamp`, `hour`, …) map each value of an instant vector;
//! * **the rest** (`label_replace`, `histogram_quantile`, `absent`, `scalar`, `sort`…) reshape
//!   a vector, each in its own function below.
//!
//! Every function drops the metric name from its result except `last_over_time`,
//! `label_replace`, `label_join`, `sort` and `sort_desc`, as Prometheus does. A result where
//! two series end up with the same labels at the same step is an `execution` error.

use std::f64::consts::PI;

use promql_parser::label::MatchOp;
use promql_parser::parser::{Call, Expr};
use regex::Regex;

use crate::error::{QueryError, Result};
use crate::eval::{
    Budget, Evaluator, Selector, Steps, duration_ms, merge_same_labels, require_distinct_labels,
};
use crate::labels::{LabelIndex, LabelSet, METRIC_NAME};
use crate::stats::{self, go_max, go_min};
use crate::value::{RangeVector, StepSeries, Value};

/// Evaluates a function call at every step.
pub(crate) fn call(ev: &mut Evaluator<'_>, call: &Call, steps: &Steps) -> Result<Value> {
    let name = call.func.name;
    let args: Vec<&Expr> = call.args.args.iter().map(|a| a.as_ref()).collect();
    let arg = |i: usize| -> Result<&Expr> {
        args.get(i).copied().ok_or_else(|| {
            QueryError::BadData(format!("{name}(): expected at least {} argument(s)", i + 1))
        })
    };
    let vector = match name {
        "time" => return Ok(Value::Scalar(steps.times().map(seconds).collect())),
        "pi" => return Ok(Value::Scalar(vec![PI; steps.count])),
        "vector" => {
            let values = ev.eval_scalar(arg(0)?, steps)?;
            vec![StepSeries {
                labels: LabelSet::empty(),
                values: values.into_iter().map(Some).collect(),
            }]
        }
        "scalar" => {
            let series = ev.eval_vector(arg(0)?, steps)?;
            let values = (0..steps.count)
                .map(|i| {
                    let mut present = series.iter().filter_map(|s| s.values[i]);
                    match (present.next(), present.next()) {
                        (Some(v), None) => v,
                        _ => f64::NAN,
                    }
                })
                .collect();
            return Ok(Value::Scalar(values));
        }
        "timestamp" => timestamp(ev, arg(0)?, steps)?,
        "absent" => {
            let series = ev.eval_vector(arg(0)?, steps)?;
            absent(arg(0)?, steps, |i| {
                series.iter().any(|s| s.values[i].is_some())
            })?
        }
        "absent_over_time" => {
            let range = ev.eval_range(arg(0)?, steps)?;
            absent(arg(0)?, steps, |i| {
                let end = range.window_ends[i];
                range
                    .series
                    .iter()
                    .any(|s| !window(&s.points, end.saturating_sub(range.range_ms), end).is_empty())
            })?
        }
        "label_replace" => label_replace(ev, &args, steps)?,
        "label_join" => label_join(ev, &args, steps)?,
        "sort" | "sort_desc" => {
            let mut series = ev.eval_vector(arg(0)?, steps)?;
            let desc = name == "sort_desc";
            // Only an instant query's order shows: sort by the first (only) step, NaN last
            // either way.
            series.sort_by(|a, b| {
                let (x, y) = (
                    a.values[0].unwrap_or(f64::NAN),
                    b.values[0].unwrap_or(f64::NAN),
                );
                match (x.is_nan(), y.is_nan()) {
                    (true, false) => std::cmp::Ordering::Greater,
                    (false, true) => std::cmp::Ordering::Less,
                    _ if desc => stats::nan_first(y, x),
                    _ => stats::nan_first(x, y),
                }
                .then_with(|| a.labels.cmp(&b.labels))
            });
            return Ok(Value::Vector(series));
        }
        "histogram_quantile" => {
            let q = ev.eval_scalar(arg(0)?, steps)?;
            let series = ev.eval_vector(arg(1)?, steps)?;
            histogram_quantile(&mut ev.budget, &q, series, steps)?
        }
        "round" => {
            let to_nearest = match args.get(1) {
                Some(e) => ev.eval_scalar(e, steps)?,
                None => vec![1.0; steps.count],
            };
            map_values(ev.eval_vector(arg(0)?, steps)?, |v, i| {
                let inverse = 1.0 / to_nearest[i];
                Some((v * inverse + 0.5).floor() / inverse)
            })
        }
        "clamp" => {
            let lo = ev.eval_scalar(arg(1)?, steps)?;
            let hi = ev.eval_scalar(arg(2)?, steps)?;
            // No value where the bounds are inverted; a NaN bound gives NaN.
            map_values(ev.eval_vector(arg(0)?, steps)?, |v, i| {
                (hi[i] >= lo[i] || hi[i].is_nan() || lo[i].is_nan())
                    .then(|| go_max(lo[i], go_min(hi[i], v)))
            })
        }
        "clamp_min" => {
            let lo = ev.eval_scalar(arg(1)?, steps)?;
            map_values(ev.eval_vector(arg(0)?, steps)?, |v, i| {
                Some(go_max(v, lo[i]))
            })
        }
        "clamp_max" => {
            let hi = ev.eval_scalar(arg(1)?, steps)?;
            map_values(ev.eval_vector(arg(0)?, steps)?, |v, i| {
                Some(go_min(v, hi[i]))
            })
        }
        "day_of_month" | "day_of_week" | "day_of_year" | "days_in_month" | "hour" | "minute"
        | "month" | "year" => {
            let series = match args.first() {
                Some(e) => ev.eval_vector(e, steps)?,
                None => vec![StepSeries {
                    labels: LabelSet::empty(),
                    values: steps.times().map(|t| Some(seconds(t))).collect(),
                }],
            };
            map_values(series, |v, _| Some(date_part(name, v)))
        }
        _ => {
            if let Some(f) = element_function(name) {
                map_values(ev.eval_vector(arg(0)?, steps)?, |v, _| Some(f(v)))
            } else {
                return range_function(ev, name, &args, steps).map(Value::Vector);
            }
        }
    };
    Ok(Value::Vector(merge_same_labels(vector)?))
}

/// Unix milliseconds as seconds.
fn seconds(ms: i64) -> f64 {
    ms as f64 / 1000.0
}

/// A function of one value, if `name` is one.
fn element_function(name: &str) -> Option<fn(f64) -> f64> {
    Some(match name {
        "abs" => f64::abs,
        "ceil" => f64::ceil,
        "floor" => f64::floor,
        "exp" => f64::exp,
        "sqrt" => f64::sqrt,
        "ln" => f64::ln,
        "log2" => f64::log2,
        "log10" => f64::log10,
        "sgn" => |v: f64| {
            if v < 0.0 {
                -1.0
            } else if v > 0.0 {
                1.0
            } else {
                v
            }
        },
        "acos" => f64::acos,
        "acosh" => f64::acosh,
        "asin" => f64::asin,
        "asinh" => f64::asinh,
        "atan" => f64::atan,
        "atanh" => f64::atanh,
        "cos" => f64::cos,
        "cosh" => f64::cosh,
        "sin" => f64::sin,
        "sinh" => f64::sinh,
        "tan" => f64::tan,
        "tanh" => f64::tanh,
        "deg" => |v: f64| v * 180.0 / PI,
        "rad" => |v: f64| v * PI / 180.0,
        _ => return None,
    })
}

/// Maps every value (with its step index), dropping the metric name.
fn map_values(
    series: Vec<StepSeries>,
    mut f: impl FnMut(f64, usize) -> Option<f64>,
) -> Vec<StepSeries> {
    series
        .into_iter()
        .filter_map(|s| {
            let values: Vec<Option<f64>> = s
                .values
                .iter()
                .enumerate()
                .map(|(i, v)| v.and_then(|v| f(v, i)))
                .collect();
            values.iter().any(Option::is_some).then(|| StepSeries {
                labels: s.labels.without_metric_name(),
                values,
            })
        })
        .collect()
}

/// The samples of `points` in `[start, end]`.
pub(crate) fn window(points: &[(i64, f64)], start: i64, end: i64) -> &[(i64, f64)] {
    let a = points.partition_point(|p| p.0 < start);
    let b = points.partition_point(|p| p.0 <= end);
    points.get(a..b.max(a)).unwrap_or(&[])
}

/// What a range function is given at one step.
struct Window<'a> {
    points: &'a [(i64, f64)],
    /// `[start, end]` of the window.
    start: i64,
    end: i64,
    range_ms: i64,
    /// The step's index and evaluation time.
    step: usize,
    time: i64,
}

/// Applies `f` to every series' window at every step.
fn over_windows(
    budget: &mut Budget,
    range: RangeVector,
    steps: &Steps,
    keep_name: bool,
    mut f: impl FnMut(&Window<'_>) -> Option<f64>,
) -> Result<Vec<StepSeries>> {
    let mut out = Vec::with_capacity(range.series.len());
    for s in range.series {
        budget.take_series(steps)?;
        let mut values = Vec::with_capacity(steps.count);
        each_window(
            &range.window_ends,
            range.range_ms,
            steps,
            &s.points,
            &mut f,
            &mut values,
        );
        if values.iter().any(Option::is_some) {
            out.push(StepSeries {
                labels: if keep_name {
                    s.labels
                } else {
                    s.labels.without_metric_name()
                },
                values,
            });
        } else {
            budget.give_back(steps.count);
        }
    }
    require_distinct_labels(out)
}

/// One series' value at every step: `f` of its points in the step's window (`None` where
/// the window holds none), into `out` (cleared first).
fn each_window(
    window_ends: &[i64],
    range_ms: i64,
    steps: &Steps,
    points: &[(i64, f64)],
    f: &mut impl FnMut(&Window<'_>) -> Option<f64>,
    out: &mut Vec<Option<f64>>,
) {
    out.clear();
    out.extend(window_ends.iter().enumerate().map(|(i, &end)| {
        let start = end.saturating_sub(range_ms);
        let in_window = window(points, start, end);
        if in_window.is_empty() {
            return None;
        }
        f(&Window {
            points: in_window,
            start,
            end,
            range_ms,
            step: i,
            time: steps.time(i),
        })
    }));
}

/// The functions over a range vector.
fn range_function(
    ev: &mut Evaluator<'_>,
    name: &str,
    args: &[&Expr],
    steps: &Steps,
) -> Result<Vec<StepSeries>> {
    let range_arg = |i: usize| {
        args.get(i).copied().ok_or_else(|| {
            QueryError::BadData(format!("{name}(): expected a range vector argument"))
        })
    };
    if let Some((f, keep_name)) = window_only(name) {
        let range = ev.eval_range(range_arg(0)?, steps)?;
        return over_windows(&mut ev.budget, range, steps, keep_name, f);
    }
    match name {
        "predict_linear" => {
            let range = ev.eval_range(range_arg(0)?, steps)?;
            let by = ev.eval_scalar(range_arg(1)?, steps)?;
            over_windows(&mut ev.budget, range, steps, false, |w| {
                (w.points.len() >= 2).then(|| {
                    let (slope, intercept) = stats::linear_regression(w.points, w.time);
                    intercept + slope * by[w.step]
                })
            })
        }
        "double_exponential_smoothing" => {
            let range = ev.eval_range(range_arg(0)?, steps)?;
            let sf = ev.eval_scalar(range_arg(1)?, steps)?;
            let tf = ev.eval_scalar(range_arg(2)?, steps)?;
            for (what, factors) in [("smoothing", &sf), ("trend", &tf)] {
                if let Some(bad) = factors.iter().find(|f| **f <= 0.0 || **f >= 1.0) {
                    return Err(QueryError::Execution(format!(
                        "invalid {what} factor. Expected: 0 < {} < 1, got: {bad:.6}",
                        if what == "smoothing" { "sf" } else { "tf" }
                    )));
                }
            }
            over_windows(&mut ev.budget, range, steps, false, |w| {
                stats::holt_winters(w.points, sf[w.step], tf[w.step])
            })
        }
        "quantile_over_time" => {
            let q = ev.eval_scalar(range_arg(0)?, steps)?;
            let range = ev.eval_range(range_arg(1)?, steps)?;
            let mut buf = Vec::new();
            over_windows(&mut ev.budget, range, steps, false, |w| {
                buf.clear();
                buf.extend(values(w));
                Some(stats::quantile(q[w.step], &mut buf))
            })
        }
        _ => Err(QueryError::BadData(format!(
            "function {name}() is not supported"
        ))),
    }
}

/// The values of a window's points.
fn values<'w>(w: &Window<'w>) -> impl Iterator<Item = f64> + 'w {
    w.points.iter().map(|p| p.1)
}

/// What a range function of the window alone computes from one window.
type WindowFn = fn(&Window<'_>) -> Option<f64>;

/// The range functions that need nothing but each window: the function, and whether it keeps
/// the metric name (only `last_over_time` does).
fn window_only(name: &str) -> Option<(WindowFn, bool)> {
    let f: WindowFn = match name {
        "rate" => |w| extrapolated_delta(w, true, true),
        "increase" => |w| extrapolated_delta(w, true, false),
        "delta" => |w| extrapolated_delta(w, false, false),
        "irate" => |w| instant_delta(w.points, true),
        "idelta" => |w| instant_delta(w.points, false),
        "deriv" => {
            |w| (w.points.len() >= 2).then(|| stats::linear_regression(w.points, w.points[0].0).0)
        }
        "avg_over_time" => |w| Some(stats::incremental_mean(values(w))),
        "sum_over_time" => |w| Some(stats::compensated_sum(values(w))),
        "count_over_time" => |w| Some(w.points.len() as f64),
        "min_over_time" => |w| values(w).reduce(|m, v| if v < m || m.is_nan() { v } else { m }),
        "max_over_time" => |w| values(w).reduce(|m, v| if v > m || m.is_nan() { v } else { m }),
        "last_over_time" => |w| w.points.last().map(|p| p.1),
        "present_over_time" => |_| Some(1.0),
        "stddev_over_time" => |w| Some(stats::variance(values(w)).sqrt()),
        "stdvar_over_time" => |w| Some(stats::variance(values(w))),
        "changes" => |w| {
            Some(
                w.points
                    .windows(2)
                    .filter(|p| p[0].1 != p[1].1 && !(p[0].1.is_nan() && p[1].1.is_nan()))
                    .count() as f64,
            )
        },
        "resets" => |w| Some(w.points.windows(2).filter(|p| p[1].1 < p[0].1).count() as f64),
        _ => return None,
    };
    Some((f, name == "last_over_time"))
}

/// What [`stream_window_call`] calls with each result series: the budget, the series' labels
/// and its value at each step.
pub(crate) type EachStepSeries<'a> =
    dyn FnMut(&mut Budget, LabelSet, &[Option<f64>]) -> Result<()> + 'a;

/// Evaluates `call` one series at a time when it is a range function of the window alone
/// over a selector of one metric name (`rate(x[5m])`, `max_over_time(x{job="a"}[1h])`):
/// each result series goes to `each` as its labels and its values per step, and is not kept.
/// Returns `false`, having read nothing, for any other call: evaluate it whole then.
///
/// With one metric name no two results can share labels once it is dropped, so nothing is
/// lost by not seeing them all at once.
pub(crate) fn stream_window_call(
    ev: &mut Evaluator<'_>,
    call: &Call,
    steps: &Steps,
    each: &mut EachStepSeries<'_>,
) -> Result<bool> {
    let Some((mut f, keep_name)) = window_only(call.func.name) else {
        return Ok(false);
    };
    let [arg] = call.args.args.as_slice() else {
        return Ok(false);
    };
    let Expr::MatrixSelector(ms) = arg.as_ref() else {
        return Ok(false);
    };
    if ms.vs.name.is_none() {
        return Ok(false);
    }
    let selector = Selector::new(&ms.vs)?;
    let range_ms = duration_ms(ms.range);
    let mut values: Vec<Option<f64>> = Vec::with_capacity(steps.count);
    ev.select_range_each(
        &selector,
        range_ms,
        steps,
        &mut |budget, ends, labels, points| {
            each_window(ends, range_ms, steps, points, &mut f, &mut values);
            if values.iter().all(Option::is_none) {
                return Ok(());
            }
            let labels = if keep_name {
                labels
            } else {
                labels.without_metric_name()
            };
            each(budget, labels, &values)
        },
    )?;
    Ok(true)
}

/// `rate`, `increase` and `delta`: the change over the window, extrapolated towards its
/// edges when the samples stop short of them (Prometheus' `extrapolatedRate`).
fn extrapolated_delta(w: &Window<'_>, is_counter: bool, is_rate: bool) -> Option<f64> {
    let points = w.points;
    if points.len() < 2 {
        return None;
    }
    let (first, last) = (points[0], points[points.len() - 1]);
    let mut result = last.1 - first.1;
    if is_counter {
        let mut previous = 0.0;
        for &(_, v) in points {
            if v < previous {
                result += previous;
            }
            previous = v;
        }
    }
    let mut to_start = seconds(first.0.saturating_sub(w.start));
    let to_end = seconds(w.end.saturating_sub(last.0));
    let sampled = seconds(last.0.saturating_sub(first.0));
    let average_gap = sampled / (points.len() - 1) as f64;
    if is_counter && result > 0.0 && first.1 >= 0.0 {
        // A counter does not go below zero: do not extrapolate past the point it would.
        let to_zero = sampled * (first.1 / result);
        if to_zero < to_start {
            to_start = to_zero;
        }
    }
    let threshold = average_gap * 1.1;
    let mut interval = sampled;
    interval += if to_start < threshold {
        to_start
    } else {
        average_gap / 2.0
    };
    interval += if to_end < threshold {
        to_end
    } else {
        average_gap / 2.0
    };
    result *= interval / sampled;
    if is_rate {
        result /= seconds(w.range_ms);
    }
    Some(result)
}

/// `irate` and `idelta`: from the last two samples.
fn instant_delta(points: &[(i64, f64)], is_rate: bool) -> Option<f64> {
    let [.., previous, last] = points else {
        return None;
    };
    let mut result = if is_rate && last.1 < previous.1 {
        last.1
    } else {
        last.1 - previous.1
    };
    let interval = last.0.saturating_sub(previous.0);
    if interval == 0 {
        return None;
    }
    if is_rate {
        result /= seconds(interval);
    }
    Some(result)
}

/// `timestamp(v)`: the time of each sample when `v` is a selector, else the step's time.
fn timestamp(ev: &mut Evaluator<'_>, arg: &Expr, steps: &Steps) -> Result<Vec<StepSeries>> {
    let mut inner = arg;
    while let Expr::Paren(p) = inner {
        inner = &p.expr;
    }
    if let Expr::VectorSelector(vs) = inner {
        let series = ev.select_instant(vs, steps, true)?;
        return Ok(map_values(series, |v, _| Some(v)));
    }
    let series = ev.eval_vector(arg, steps)?;
    Ok(map_values(series, |_, i| Some(seconds(steps.time(i)))))
}

/// `absent(v)` and `absent_over_time(v[r])`: `1` at each step where `present(i)` is false,
/// labelled from the selector's equality matchers.
fn absent(arg: &Expr, steps: &Steps, present: impl Fn(usize) -> bool) -> Result<Vec<StepSeries>> {
    let values: Vec<Option<f64>> = (0..steps.count)
        .map(|i| (!present(i)).then_some(1.0))
        .collect();
    if values.iter().all(Option::is_none) {
        return Ok(Vec::new());
    }
    Ok(vec![StepSeries {
        labels: absent_labels(arg)?,
        values,
    }])
}

/// The labels `absent` gives: those a selector fixes with `=`, unless another matcher names
/// the same label.
fn absent_labels(arg: &Expr) -> Result<LabelSet> {
    let selector = match arg {
        Expr::VectorSelector(vs) => vs,
        Expr::MatrixSelector(ms) => &ms.vs,
        _ => return Ok(LabelSet::empty()),
    };
    let mut labels = LabelSet::empty();
    let mut ambiguous = Vec::new();
    for m in &selector.matchers.matchers {
        if m.name == METRIC_NAME {
            continue;
        }
        match m.op {
            MatchOp::Equal if labels.get(&m.name).is_none() => {
                labels.set(&m.name, m.value.clone());
            }
            _ => ambiguous.push(m.name.clone()),
        }
    }
    labels.remove_all(&ambiguous);
    Ok(labels)
}

/// A string argument.
fn string_arg(
    ev: &mut Evaluator<'_>,
    arg: Option<&&Expr>,
    steps: &Steps,
    what: &str,
) -> Result<String> {
    match arg {
        Some(e) => match ev.eval(e, steps)? {
            Value::String(s) => Ok(s),
            other => Err(QueryError::BadData(format!(
                "{what}: expected a string, got {}",
                other.type_name()
            ))),
        },
        None => Err(QueryError::BadData(format!("{what}: missing argument"))),
    }
}

/// Whether `name` is a valid label name.
pub(crate) fn is_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `label_replace(v, dst, replacement, src, regex)`.
fn label_replace(ev: &mut Evaluator<'_>, args: &[&Expr], steps: &Steps) -> Result<Vec<StepSeries>> {
    let series = ev.eval_vector(
        args.first()
            .copied()
            .ok_or_else(|| QueryError::BadData("label_replace(): expected 5 arguments".into()))?,
        steps,
    )?;
    let dst = string_arg(ev, args.get(1), steps, "label_replace()")?;
    let replacement = string_arg(ev, args.get(2), steps, "label_replace()")?;
    let src = string_arg(ev, args.get(3), steps, "label_replace()")?;
    let pattern = string_arg(ev, args.get(4), steps, "label_replace()")?;
    let regex = Regex::new(&format!("^(?:{pattern})$")).map_err(|_| {
        QueryError::Execution(format!(
            "invalid regular expression in label_replace(): {pattern}"
        ))
    })?;
    if !is_label_name(&dst) {
        return Err(QueryError::Execution(format!(
            "invalid destination label name in label_replace(): {dst}"
        )));
    }
    let mut out = Vec::with_capacity(series.len());
    for mut s in series {
        let value = s.labels.get(&src).unwrap_or("").to_owned();
        if let Some(captures) = regex.captures(&value) {
            let mut result = String::new();
            captures.expand(&replacement, &mut result);
            s.labels.set(&dst, result);
        }
        out.push(s);
    }
    merge_same_labels(out)
}

/// `label_join(v, dst, separator, src…)`.
fn label_join(ev: &mut Evaluator<'_>, args: &[&Expr], steps: &Steps) -> Result<Vec<StepSeries>> {
    let series = ev.eval_vector(
        args.first().copied().ok_or_else(|| {
            QueryError::BadData("label_join(): expected at least 3 arguments".into())
        })?,
        steps,
    )?;
    let dst = string_arg(ev, args.get(1), steps, "label_join()")?;
    let separator = string_arg(ev, args.get(2), steps, "label_join()")?;
    let mut sources = Vec::new();
    for i in 3..args.len() {
        let src = string_arg(ev, args.get(i), steps, "label_join()")?;
        if !is_label_name(&src) {
            return Err(QueryError::Execution(format!(
                "invalid source label name in label_join(): {src}"
            )));
        }
        sources.push(src);
    }
    if !is_label_name(&dst) {
        return Err(QueryError::Execution(format!(
            "invalid destination label name in label_join(): {dst}"
        )));
    }
    let mut out = Vec::with_capacity(series.len());
    for mut s in series {
        let joined = sources
            .iter()
            .map(|n| s.labels.get(n).unwrap_or(""))
            .collect::<Vec<_>>()
            .join(&separator);
        s.labels.set(&dst, joined);
        out.push(s);
    }
    merge_same_labels(out)
}

/// `histogram_quantile(φ, buckets)`: per group of series equal but for `le`, the quantile
/// interpolated within the bucket it falls in.
fn histogram_quantile(
    budget: &mut Budget,
    q: &[f64],
    series: Vec<StepSeries>,
    steps: &Steps,
) -> Result<Vec<StepSeries>> {
    // Per group (labels without `le`): each bucket's upper bound and its values per step.
    type Buckets = Vec<(f64, Vec<Option<f64>>)>;
    let mut group_of = LabelIndex::default();
    let mut groups: Vec<(LabelSet, Buckets)> = Vec::new();
    for s in series {
        let Some(upper) = s.labels.get("le").and_then(stats::parse_go_float) else {
            continue;
        };
        let mut labels = s.labels;
        labels.remove("le");
        let (index, new) = group_of.index_of(&labels);
        if new {
            groups.push((labels, Vec::new()));
        }
        groups[index].1.push((upper, s.values));
    }
    drop(group_of);
    let mut buckets = Vec::new();
    let mut out = Vec::with_capacity(groups.len());
    for (labels, members) in groups {
        budget.take_series(steps)?;
        let values: Vec<Option<f64>> = (0..steps.count)
            .map(|i| {
                buckets.clear();
                buckets.extend(
                    members
                        .iter()
                        .filter_map(|(upper, values)| values[i].map(|c| (*upper, c))),
                );
                (!buckets.is_empty()).then(|| stats::bucket_quantile(q[i], &mut buckets))
            })
            .collect();
        if values.iter().any(Option::is_some) {
            out.push(StepSeries {
                labels: labels.without_metric_name(),
                values,
            });
        } else {
            budget.give_back(steps.count);
        }
    }
    Ok(out)
}

/// `hour()`, `month()`, … of a Unix time in seconds, in UTC.
fn date_part(name: &str, v: f64) -> f64 {
    let secs = v as i64;
    let days = secs.div_euclid(86_400);
    let of_day = secs.rem_euclid(86_400);
    let (year, month, day) = stats::civil_from_days(days);
    match name {
        "day_of_month" => day as f64,
        "day_of_week" => (days + 4).rem_euclid(7) as f64,
        "day_of_year" => (days - stats::days_from_civil(year, 1, 1) + 1) as f64,
        "days_in_month" => stats::days_in_month(year, month) as f64,
        "hour" => (of_day / 3600) as f64,
        "minute" => (of_day % 3600 / 60) as f64,
        "month" => month as f64,
        _ => year as f64,
    }
}
