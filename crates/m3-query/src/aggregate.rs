//! Aggregation operators: `sum`, `avg`, `count`, `min`, `max`, `group`, `stddev`, `stdvar`,
//! `topk`, `bottomk`, `quantile` and `count_values`, with `by` and `without`.
//!
//! A series' group depends only on its labels, so each series is assigned to its group once;
//! then every step folds the values present in each group. `topk` and `bottomk` keep the
//! chosen series whole (labels included), so their result is the input series filtered step
//! by step; every other operator yields one series per group, labelled with the grouping
//! labels (`by`) or everything but the listed labels and the metric name (`without`).

use std::collections::HashMap;

use promql_parser::parser::token::{
    T_AVG, T_BOTTOMK, T_COUNT, T_COUNT_VALUES, T_GROUP, T_MAX, T_MIN, T_QUANTILE, T_STDDEV,
    T_STDVAR, T_SUM, T_TOPK,
};
use promql_parser::parser::{AggregateExpr, Expr, LabelModifier};

use crate::error::{QueryError, Result};
use crate::eval::{Budget, Evaluator, Steps};
use crate::functions::{self, is_label_name};
use crate::labels::{LabelIndex, LabelSet};
use crate::stats;
use crate::value::{StepSeries, Value};

/// Evaluates an aggregation at every step.
pub(crate) fn eval(ev: &mut Evaluator<'_>, agg: &AggregateExpr, steps: &Steps) -> Result<Value> {
    let op = agg.op.id();
    let param = match &agg.param {
        Some(p) => Some(ev.eval(p, steps)?),
        None => None,
    };
    let modifier = agg.modifier.as_ref();
    if let Some(fold_op) = FoldOp::from_token(op)
        && let Some(folded) = stream_fold(ev, &agg.expr, fold_op, modifier, steps)?
    {
        return Ok(Value::Vector(folded));
    }
    let mut series = ev.eval_vector(&agg.expr, steps)?;
    if op == T_TOPK || op == T_BOTTOMK {
        let k = scalar_param(param, "k")?;
        // Prometheus converts k to an int64 and refuses what does not convert: 2^63 itself
        // does not.
        const TWO_TO_63: f64 = 9_223_372_036_854_775_808.0;
        if let Some(bad) = k.iter().find(|k| !(-TWO_TO_63..TWO_TO_63).contains(*k)) {
            return Err(QueryError::Execution(format!(
                "Scalar value {} overflows int64",
                go_format_g(*bad)
            )));
        }
        return Ok(Value::Vector(top_k(
            series,
            modifier,
            &k,
            op == T_TOPK,
            steps,
        )));
    }
    if op == T_COUNT_VALUES {
        let Some(Value::String(label)) = param else {
            return Err(QueryError::BadData(
                "count_values: expected a string parameter".into(),
            ));
        };
        if !is_label_name(&label) {
            return Err(QueryError::Execution(format!(
                "invalid label name {label:?}"
            )));
        }
        return count_values(&mut ev.budget, series, modifier, &label, steps).map(Value::Vector);
    }
    let q = if op == T_QUANTILE {
        Some(scalar_param(param, "quantile")?)
    } else {
        None
    };
    let fold_op = match (FoldOp::from_token(op), &q) {
        (Some(f), _) => f,
        // `quantile` collects values instead of folding them.
        (None, Some(_)) => FoldOp::Group,
        (None, None) => {
            return Err(QueryError::BadData(format!(
                "aggregation {} is not supported",
                agg.op
            )));
        }
    };
    // Group index of each series, and each group's labels.
    let mut group_of = LabelIndex::default();
    let mut groups: Vec<LabelSet> = Vec::new();
    let mut member_of = Vec::with_capacity(series.len());
    for s in &series {
        let key = grouping_labels(&s.labels, modifier);
        let (index, new) = group_of.index_of(&key);
        if new {
            groups.push(key);
        }
        member_of.push(index);
    }
    let mut folds: Vec<Fold> = vec![Fold::default(); groups.len()];
    let mut out: Vec<StepSeries> = Vec::with_capacity(groups.len());
    for labels in groups {
        ev.budget.take_series(steps)?;
        out.push(StepSeries {
            labels,
            values: vec![None; steps.count],
        });
    }
    let mut quantile_values: Vec<Vec<f64>> = vec![Vec::new(); out.len()];
    for step in 0..steps.count {
        if step % 64 == 0 {
            ev.budget.check_deadline("aggregation")?;
        }
        folds.iter_mut().for_each(|f| *f = Fold::default());
        quantile_values.iter_mut().for_each(Vec::clear);
        for (s, &g) in series.iter_mut().zip(&member_of) {
            let Some(v) = s.values[step] else { continue };
            if q.is_some() {
                quantile_values[g].push(v);
            } else {
                folds[g].add(fold_op, v);
            }
        }
        for (g, group) in out.iter_mut().enumerate() {
            group.values[step] = match &q {
                Some(q) => (!quantile_values[g].is_empty())
                    .then(|| stats::quantile(q[step], &mut quantile_values[g])),
                None => folds[g].result(fold_op),
            };
        }
    }
    out.retain(|s| s.values.iter().any(Option::is_some));
    Ok(Value::Vector(out))
}

/// The aggregation of a range function of one metric's windows (`sum by (job)
/// (rate(x[5m]))`, the commonest dashboard query), folded one series at a time as the store
/// hands them over: what is held is one fold per group and step, never every series' points
/// or values. The folds see each group's values in the order the whole-vector path gives
/// them, so the result is the same. `None`, having read nothing, for other arguments.
fn stream_fold(
    ev: &mut Evaluator<'_>,
    arg: &Expr,
    op: FoldOp,
    modifier: Option<&LabelModifier>,
    steps: &Steps,
) -> Result<Option<Vec<StepSeries>>> {
    let mut arg = arg;
    while let Expr::Paren(p) = arg {
        arg = &p.expr;
    }
    let Expr::Call(call) = arg else {
        return Ok(None);
    };
    let mut group_of = LabelIndex::default();
    let mut groups: Vec<(LabelSet, Vec<Fold>)> = Vec::new();
    let streamed =
        functions::stream_window_call(ev, call, steps, &mut |budget, labels, values| {
            let key = grouping_labels(&labels, modifier);
            let (group, new) = group_of.index_of(&key);
            if new {
                budget.take_series(steps)?;
                groups.push((key, vec![Fold::default(); steps.count]));
            }
            for (fold, value) in groups[group].1.iter_mut().zip(values) {
                if let Some(v) = value {
                    fold.add(op, *v);
                }
            }
            Ok(())
        })?;
    if !streamed {
        return Ok(None);
    }
    Ok(Some(
        groups
            .into_iter()
            .filter_map(|(labels, folds)| {
                let values: Vec<Option<f64>> = folds.iter().map(|f| f.result(op)).collect();
                values
                    .iter()
                    .any(Option::is_some)
                    .then_some(StepSeries { labels, values })
            })
            .collect(),
    ))
}

fn scalar_param(param: Option<Value>, what: &str) -> Result<Vec<f64>> {
    match param {
        Some(Value::Scalar(v)) => Ok(v),
        _ => Err(QueryError::BadData(format!(
            "expected a scalar {what} parameter"
        ))),
    }
}

/// The labels that name a series' group.
fn grouping_labels(labels: &LabelSet, modifier: Option<&LabelModifier>) -> LabelSet {
    match modifier {
        None => LabelSet::empty(),
        Some(LabelModifier::Include(by)) => {
            let mut l = labels.clone();
            l.keep_only(&by.labels);
            l
        }
        Some(LabelModifier::Exclude(without)) => {
            let mut l = labels.clone().without_metric_name();
            l.remove_all(&without.labels);
            l
        }
    }
}

/// The operators that fold a group's values into one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FoldOp {
    Sum,
    Avg,
    Count,
    Min,
    Max,
    Group,
    Stddev,
    Stdvar,
}

impl FoldOp {
    fn from_token(op: u16) -> Option<FoldOp> {
        Some(match op {
            T_SUM => FoldOp::Sum,
            T_AVG => FoldOp::Avg,
            T_COUNT => FoldOp::Count,
            T_MIN => FoldOp::Min,
            T_MAX => FoldOp::Max,
            T_GROUP => FoldOp::Group,
            T_STDDEV => FoldOp::Stddev,
            T_STDVAR => FoldOp::Stdvar,
            _ => return None,
        })
    }
}

/// The running state of one group at one step, updated as Prometheus 2.x updates it.
#[derive(Debug, Clone, Copy, Default)]
struct Fold {
    count: usize,
    value: f64,
    mean: f64,
}

impl Fold {
    fn add(&mut self, op: FoldOp, v: f64) {
        self.count += 1;
        if self.count == 1 {
            self.value = if matches!(op, FoldOp::Stddev | FoldOp::Stdvar) {
                0.0
            } else {
                v
            };
            self.mean = v;
            return;
        }
        let n = self.count as f64;
        match op {
            FoldOp::Sum => self.value += v,
            FoldOp::Max if self.value < v || self.value.is_nan() => self.value = v,
            FoldOp::Min if self.value > v || self.value.is_nan() => self.value = v,
            FoldOp::Avg => {
                // An infinite mean stays unless a NaN or the opposite infinity arrives.
                let stays = self.mean.is_infinite()
                    && ((v.is_infinite() && (self.mean > 0.0) == (v > 0.0))
                        || (!v.is_infinite() && !v.is_nan()));
                if !stays {
                    self.mean += v / n - self.mean / n;
                }
            }
            FoldOp::Stddev | FoldOp::Stdvar => {
                let delta = v - self.mean;
                self.mean += delta / n;
                self.value += delta * (v - self.mean);
            }
            FoldOp::Min | FoldOp::Max | FoldOp::Count | FoldOp::Group => {}
        }
    }

    fn result(&self, op: FoldOp) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let n = self.count as f64;
        Some(match op {
            FoldOp::Avg => self.mean,
            FoldOp::Count => n,
            FoldOp::Group => 1.0,
            FoldOp::Stdvar => self.value / n,
            FoldOp::Stddev => (self.value / n).sqrt(),
            FoldOp::Sum | FoldOp::Min | FoldOp::Max => self.value,
        })
    }
}

/// `topk(k, v)` / `bottomk(k, v)`: at each step, the `k` largest (smallest) values of each
/// group keep their series; ties and NaN as Prometheus orders them (a NaN loses to any
/// number). An instant query's answer is ordered by group, then value.
fn top_k(
    mut series: Vec<StepSeries>,
    modifier: Option<&LabelModifier>,
    k: &[f64],
    largest: bool,
    steps: &Steps,
) -> Vec<StepSeries> {
    let keys: Vec<LabelSet> = series
        .iter()
        .map(|s| grouping_labels(&s.labels, modifier))
        .collect();
    let mut kept = vec![vec![false; steps.count]; series.len()];
    let mut members: HashMap<&LabelSet, Vec<usize>> = HashMap::new();
    for (i, key) in keys.iter().enumerate() {
        members.entry(key).or_default().push(i);
    }
    let better = |a: f64, b: f64| -> bool {
        // Whether `a` ranks before `b`.
        match (a.is_nan(), b.is_nan()) {
            (false, true) => true,
            (_, false) if a.is_nan() => false,
            (true, true) => false,
            _ if largest => a > b,
            _ => a < b,
        }
    };
    let mut order: Vec<usize> = Vec::new();
    for step in 0..steps.count {
        // Prometheus converts k to an integer and clamps it to the input size.
        let want = if k[step].is_nan() || k[step] < 1.0 {
            0
        } else {
            k[step].min(series.len() as f64) as usize
        };
        if want == 0 {
            continue;
        }
        for indices in members.values() {
            order.clear();
            order.extend(
                indices
                    .iter()
                    .copied()
                    .filter(|&i| series[i].values[step].is_some()),
            );
            order.sort_by(|&a, &b| {
                let (x, y) = (
                    series[a].values[step].unwrap_or(f64::NAN),
                    series[b].values[step].unwrap_or(f64::NAN),
                );
                if better(x, y) {
                    std::cmp::Ordering::Less
                } else if better(y, x) {
                    std::cmp::Ordering::Greater
                } else {
                    series[a].labels.cmp(&series[b].labels)
                }
            });
            for &i in order.iter().take(want) {
                kept[i][step] = true;
            }
        }
    }
    for (s, keep) in series.iter_mut().zip(&kept) {
        for (v, &k) in s.values.iter_mut().zip(keep) {
            if !k {
                *v = None;
            }
        }
    }
    let mut out: Vec<(LabelSet, StepSeries)> = series
        .into_iter()
        .zip(keys)
        .filter(|(s, _)| s.values.iter().any(Option::is_some))
        .map(|(s, k)| (k, s))
        .collect();
    // For an instant query: by group, then the order the values rank in.
    out.sort_by(|(ka, a), (kb, b)| {
        ka.cmp(kb).then_with(|| {
            let (x, y) = (
                a.values[0].unwrap_or(f64::NAN),
                b.values[0].unwrap_or(f64::NAN),
            );
            if better(x, y) {
                std::cmp::Ordering::Less
            } else if better(y, x) {
                std::cmp::Ordering::Greater
            } else {
                a.labels.cmp(&b.labels)
            }
        })
    });
    out.into_iter().map(|(_, s)| s).collect()
}

/// `count_values("label", v)`: per group and distinct value, how many series have it, the
/// value written into `label`.
fn count_values(
    budget: &mut Budget,
    series: Vec<StepSeries>,
    modifier: Option<&LabelModifier>,
    label: &str,
    steps: &Steps,
) -> Result<Vec<StepSeries>> {
    let mut index = LabelIndex::default();
    let mut out: Vec<StepSeries> = Vec::new();
    for step in 0..steps.count {
        budget.check_deadline("aggregation")?;
        for s in &series {
            let Some(v) = s.values[step] else { continue };
            let mut labels = s.labels.clone();
            labels.set(label, go_format_float(v));
            let key = match modifier {
                Some(LabelModifier::Include(by)) => {
                    let mut keep = by.labels.clone();
                    keep.push(label.to_owned());
                    labels.keep_only(&keep);
                    labels
                }
                Some(LabelModifier::Exclude(without)) => {
                    let mut l = labels.without_metric_name();
                    l.remove_all(&without.labels);
                    l
                }
                None => {
                    let mut l = LabelSet::empty();
                    l.set(label, go_format_float(v));
                    l
                }
            };
            let (i, new) = index.index_of(&key);
            if new {
                budget.take_series(steps)?;
                out.push(StepSeries {
                    labels: key,
                    values: vec![None; steps.count],
                });
            }
            let slot = &mut out[i].values[step];
            *slot = Some(slot.unwrap_or(0.0) + 1.0);
        }
    }
    Ok(out)
}

/// A float as Go's `%v` writes it (`strconv.FormatFloat(v, 'g', -1, 64)`): the shortest
/// digits, with an exponent (`1e+19`, `1.5e-07`) when it is below −4 or at least 6.
fn go_format_g(v: f64) -> String {
    if !v.is_finite() {
        return go_format_float(v);
    }
    let scientific = format!("{v:e}");
    let Some((mantissa, exponent)) = scientific.split_once('e') else {
        return scientific;
    };
    let exponent: i32 = exponent.parse().unwrap_or(0);
    if (-4..6).contains(&exponent) {
        return format!("{v}");
    }
    let sign = if exponent < 0 { '-' } else { '+' };
    format!("{mantissa}e{sign}{:02}", exponent.unsigned_abs())
}

/// A float as Go's `strconv.FormatFloat(v, 'f', -1, 64)` writes it.
fn go_format_float(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_print_as_go_prints_them() {
        for (v, go) in [
            (1e19, "1e+19"),
            (9_223_372_036_854_775_808.0, "9.223372036854776e+18"),
            (-1.5e-7, "-1.5e-07"),
            (123_456.0, "123456"),
            (1_234_567.0, "1.234567e+06"),
            (0.0001, "0.0001"),
            (0.5, "0.5"),
            (f64::NAN, "NaN"),
            (f64::INFINITY, "+Inf"),
        ] {
            assert_eq!(go_format_g(v), go, "{v}");
        }
    }
}
