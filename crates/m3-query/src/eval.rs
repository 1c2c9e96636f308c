//! The evaluator: one PromQL expression over every step of a query.
//!
//! Each node is evaluated once for all steps (`start, start + step, …, end`): a selector reads
//! each matching series once over the union of its windows and picks a value per step, a
//! function or operator then works series by series. This is Prometheus' model and its
//! semantics, version 2.x:
//!
//! * an instant selector at `t` takes the latest sample in `[t − lookback, t]` (five minutes
//!   by default); a staleness marker there means no value;
//! * a range selector `x[r]` at `t` holds the samples in `[t − r, t]`, markers left out;
//! * `offset o` moves both windows back by `o`; `@ a` pins them at `a` whatever `t` is
//!   (`@ start()` and `@ end()` name the query's ends);
//! * a subquery `e[r:s]` evaluates `e` at the multiples of `s` (the default step is one
//!   minute) within `[t − r, t]` and offers those points as a range vector.
//!
//! Everything a query holds is counted against its [`Limits`]. `max_samples` bounds the
//! samples and per-step slots held at once, as Prometheus counts them: a node is charged for
//! each series' dense slots *before* it allocates them, and once the node is done its
//! arguments are given back and its result stays charged until its parent is done in turn.
//! `max_series` bounds the series read by all selectors together. The deadline is checked at
//! every node, every series read and in the per-series and per-group loops.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use m3_storage::Matcher;
use promql_parser::label::MatchOp;
use promql_parser::parser::{AtModifier, Expr, Offset, SubqueryExpr, VectorSelector};

use crate::error::{QueryError, Result};
use crate::labels::{LabelSet, METRIC_NAME};
use crate::source::SeriesSource;
use crate::value::{RangeSeries, RangeVector, StepSeries, Value};
use crate::{aggregate, binary, functions};

/// The bit pattern of Prometheus' staleness marker NaN.
pub const STALE_NAN_BITS: u64 = 0x7ff0_0000_0000_0002;

/// Whether `v` is Prometheus' staleness marker.
pub fn is_stale_marker(v: f64) -> bool {
    v.to_bits() == STALE_NAN_BITS
}

/// What one query may spend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Samples and points held at once (Prometheus' `--query.max-samples`, default 50M).
    pub max_samples: usize,
    /// Series read from the store by all selectors of the query together.
    pub max_series: usize,
    /// When the query gives up.
    pub deadline: Option<Instant>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_samples: 50_000_000,
            max_series: 1_000_000,
            deadline: None,
        }
    }
}

/// The steps of an evaluation: `start, start + step, …` up to `end`, `count` of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Steps {
    pub(crate) start: i64,
    pub(crate) step: i64,
    pub(crate) count: usize,
}

impl Steps {
    /// The time of step `i`.
    pub(crate) fn time(&self, i: usize) -> i64 {
        self.start + self.step * i as i64
    }

    pub(crate) fn times(&self) -> impl Iterator<Item = i64> + '_ {
        (0..self.count).map(|i| self.time(i))
    }
}

/// The running account of a query against its limits.
#[derive(Debug)]
pub(crate) struct Budget {
    limits: Limits,
    held: usize,
    series: usize,
}

impl Budget {
    pub(crate) fn new(limits: Limits) -> Budget {
        Budget {
            limits,
            held: 0,
            series: 0,
        }
    }

    /// Counts `n` more samples held.
    pub(crate) fn take(&mut self, n: usize) -> Result<()> {
        self.held = self.held.saturating_add(n);
        if self.held > self.limits.max_samples {
            return Err(QueryError::TooManySamples {
                limit: self.limits.max_samples,
            });
        }
        Ok(())
    }

    /// Gives back `n` samples no longer held.
    pub(crate) fn give_back(&mut self, n: usize) {
        self.held = self.held.saturating_sub(n);
    }

    /// Counts one more series of `steps` dense slots, and checks the deadline: called before
    /// each such series is allocated.
    pub(crate) fn take_series(&mut self, steps: &Steps) -> Result<()> {
        self.check_deadline("query evaluation")?;
        self.take(steps.count)
    }

    /// Ends a node: what it held while working (its arguments, its scratch) is given back
    /// down to `before`, and its result, `slots` of them, is held instead.
    fn settle(&mut self, before: usize, slots: usize) -> Result<()> {
        self.held = before;
        self.take(slots)
    }

    fn add_series(&mut self) -> Result<()> {
        self.series += 1;
        if self.series > self.limits.max_series {
            return Err(QueryError::TooManySeries {
                limit: self.limits.max_series,
            });
        }
        Ok(())
    }

    pub(crate) fn check_deadline(&self, phase: &'static str) -> Result<()> {
        match self.limits.deadline {
            Some(d) if Instant::now() >= d => Err(QueryError::Timeout(phase)),
            _ => Ok(()),
        }
    }
}

/// What [`Evaluator::select_range_each`] calls with each series: the budget, where each
/// step's window ends, the series' labels and its points.
pub(crate) type EachRangeSeries<'a> =
    dyn FnMut(&mut Budget, &[i64], LabelSet, &[(i64, f64)]) -> Result<()> + 'a;

/// Evaluates expressions of one query.
pub(crate) struct Evaluator<'a> {
    source: &'a dyn SeriesSource,
    pub(crate) budget: Budget,
    lookback_ms: i64,
    /// The query's own start and end, for `@ start()` and `@ end()`.
    query_start: i64,
    query_end: i64,
    subquery_step_ms: i64,
}

/// The default step of a subquery without one (Prometheus' default evaluation interval).
pub(crate) const DEFAULT_SUBQUERY_STEP_MS: i64 = 60_000;

impl<'a> Evaluator<'a> {
    pub(crate) fn new(
        source: &'a dyn SeriesSource,
        limits: Limits,
        lookback_ms: i64,
        query_start: i64,
        query_end: i64,
    ) -> Evaluator<'a> {
        Evaluator {
            source,
            budget: Budget::new(limits),
            lookback_ms,
            query_start,
            query_end,
            subquery_step_ms: DEFAULT_SUBQUERY_STEP_MS,
        }
    }

    /// Evaluates `expr` at every step of `steps`; its result stays charged to the budget.
    pub(crate) fn eval(&mut self, expr: &Expr, steps: &Steps) -> Result<Value> {
        self.budget.check_deadline("query evaluation")?;
        let before = self.budget.held;
        let value = self.eval_node(expr, steps)?;
        self.budget.settle(before, value.slots())?;
        Ok(value)
    }

    fn eval_node(&mut self, expr: &Expr, steps: &Steps) -> Result<Value> {
        match expr {
            Expr::NumberLiteral(n) => {
                self.budget.take(steps.count)?;
                Ok(Value::Scalar(vec![n.val; steps.count]))
            }
            Expr::StringLiteral(s) => Ok(Value::String(s.val.clone())),
            Expr::Paren(p) => self.eval(&p.expr, steps),
            Expr::Unary(u) => match self.eval(&u.expr, steps)? {
                Value::Scalar(v) => Ok(Value::Scalar(v.into_iter().map(|x| -x).collect())),
                Value::Vector(series) => require_distinct_labels(
                    series
                        .into_iter()
                        .map(|s| StepSeries {
                            labels: s.labels.without_metric_name(),
                            values: s.values.into_iter().map(|v| v.map(|x| -x)).collect(),
                        })
                        .collect(),
                )
                .map(Value::Vector),
                other => Err(QueryError::BadData(format!(
                    "unary expression only allowed on expressions of type scalar or instant \
                     vector, got {:?}",
                    other.type_name()
                ))),
            },
            Expr::VectorSelector(vs) => Ok(Value::Vector(self.select_instant(vs, steps, false)?)),
            Expr::MatrixSelector(ms) => {
                let selector = Selector::new(&ms.vs)?;
                let range_ms = duration_ms(ms.range);
                Ok(Value::Range(self.select_range(&selector, range_ms, steps)?))
            }
            Expr::Subquery(sq) => Ok(Value::Range(self.subquery(sq, steps)?)),
            Expr::Call(call) => functions::call(self, call, steps),
            Expr::Aggregate(agg) => aggregate::eval(self, agg, steps),
            Expr::Binary(bin) => binary::eval(self, bin, steps),
            Expr::Extension(_) => Err(QueryError::BadData(
                "extension expressions are not supported".into(),
            )),
        }
    }

    /// Evaluates `expr` and requires an instant vector.
    pub(crate) fn eval_vector(&mut self, expr: &Expr, steps: &Steps) -> Result<Vec<StepSeries>> {
        match self.eval(expr, steps)? {
            Value::Vector(v) => Ok(v),
            other => Err(QueryError::BadData(format!(
                "expected type instant vector, got {}",
                other.type_name()
            ))),
        }
    }

    /// Evaluates `expr` and requires a scalar.
    pub(crate) fn eval_scalar(&mut self, expr: &Expr, steps: &Steps) -> Result<Vec<f64>> {
        match self.eval(expr, steps)? {
            Value::Scalar(v) => Ok(v),
            other => Err(QueryError::BadData(format!(
                "expected type scalar, got {}",
                other.type_name()
            ))),
        }
    }

    /// Evaluates `expr` and requires a range vector.
    pub(crate) fn eval_range(&mut self, expr: &Expr, steps: &Steps) -> Result<RangeVector> {
        match self.eval(expr, steps)? {
            Value::Range(r) => Ok(r),
            other => Err(QueryError::BadData(format!(
                "expected type range vector, got {}",
                other.type_name()
            ))),
        }
    }

    /// An instant selector at every step. With `sample_times`, each value is the time of the
    /// sample found (in seconds) instead of its value: what `timestamp()` returns.
    pub(crate) fn select_instant(
        &mut self,
        vs: &VectorSelector,
        steps: &Steps,
        sample_times: bool,
    ) -> Result<Vec<StepSeries>> {
        let selector = Selector::new(vs)?;
        let (ends, bounds) = self.window_ends(selector.at, selector.offset_ms, steps);
        let Some((lo, hi)) = bounds else {
            return Ok(Vec::new());
        };
        let lookback = self.lookback_ms;
        let budget = &mut self.budget;
        let mut out = Vec::new();
        self.source.select_each(
            &selector.matchers,
            lo.saturating_sub(lookback),
            hi,
            &mut |labels, samples| {
                budget.add_series()?;
                budget.check_deadline("reading series")?;
                budget.take(samples.len().saturating_add(ends.len()))?;
                let mut values = Vec::with_capacity(ends.len());
                let mut found = 0;
                for &end in &ends {
                    let idx = samples.partition_point(|(t, _)| *t <= end);
                    let value = idx
                        .checked_sub(1)
                        .and_then(|i| samples.get(i))
                        .filter(|(t, v)| *t >= end.saturating_sub(lookback) && !is_stale_marker(*v))
                        .map(|&(t, v)| if sample_times { t as f64 / 1000.0 } else { v });
                    found += usize::from(value.is_some());
                    values.push(value);
                }
                budget.give_back(samples.len());
                if found == 0 {
                    budget.give_back(ends.len());
                } else {
                    out.push(StepSeries {
                        labels: LabelSet::from_stored(labels),
                        values,
                    });
                }
                Ok(())
            },
        )?;
        Ok(out)
    }

    /// A range selector at every step: each series' points over the union of the windows.
    fn select_range(
        &mut self,
        selector: &Selector,
        range_ms: i64,
        steps: &Steps,
    ) -> Result<RangeVector> {
        let mut series = Vec::new();
        let window_ends = self.select_range_each(
            selector,
            range_ms,
            steps,
            &mut |budget, _, labels, points| {
                budget.take(points.len())?;
                series.push(RangeSeries {
                    labels,
                    points: points.to_vec(),
                });
                Ok(())
            },
        )?;
        Ok(RangeVector {
            series,
            range_ms,
            window_ends,
        })
    }

    /// A range selector's series one at a time: `each` gets where each step's window ends and
    /// every series with points in some window (staleness markers left out, and what falls in
    /// no window), and keeps what it charges to the budget. Returns the windows' ends.
    pub(crate) fn select_range_each(
        &mut self,
        selector: &Selector,
        range_ms: i64,
        steps: &Steps,
        each: &mut EachRangeSeries<'_>,
    ) -> Result<Vec<i64>> {
        let (window_ends, bounds) = self.window_ends(selector.at, selector.offset_ms, steps);
        let Some((lo, hi)) = bounds else {
            return Ok(window_ends);
        };
        let budget = &mut self.budget;
        // The ends ascend (or are all one time, under `@`).
        let gaps = window_ends
            .windows(2)
            .any(|w| w[1].saturating_sub(w[0]) > range_ms);
        // Windows shorter than the step leave gaps: what falls in none is not kept.
        let in_a_window = |t: i64| {
            !gaps || {
                let next_end = window_ends.partition_point(|&e| e < t);
                window_ends
                    .get(next_end)
                    .is_some_and(|&e| e.saturating_sub(range_ms) <= t)
            }
        };
        let mut points: Vec<(i64, f64)> = Vec::new();
        self.source.select_each(
            &selector.matchers,
            lo.saturating_sub(range_ms),
            hi,
            &mut |labels, samples| {
                budget.add_series()?;
                budget.check_deadline("reading series")?;
                budget.take(samples.len())?;
                points.clear();
                points.extend(
                    samples
                        .iter()
                        .copied()
                        .filter(|&(t, v)| !is_stale_marker(v) && in_a_window(t)),
                );
                let result = if points.is_empty() {
                    Ok(())
                } else {
                    each(budget, &window_ends, LabelSet::from_stored(labels), &points)
                };
                budget.give_back(samples.len());
                result
            },
        )?;
        Ok(window_ends)
    }

    /// Where each step's window ends for a selector or subquery with these modifiers (`@`
    /// pins it, `offset` moves it back), and the earliest and latest of those ends.
    fn window_ends(
        &self,
        at: Option<At>,
        offset_ms: i64,
        steps: &Steps,
    ) -> (Vec<i64>, Option<(i64, i64)>) {
        let ends: Vec<i64> = steps
            .times()
            .map(|t| {
                at.map_or(t, |a| a.time(self.query_start, self.query_end))
                    .saturating_sub(offset_ms)
            })
            .collect();
        let bounds = ends
            .iter()
            .min()
            .zip(ends.iter().max())
            .map(|(&lo, &hi)| (lo, hi));
        (ends, bounds)
    }

    /// A subquery at every step: the inner expression at the aligned inner steps covering all
    /// windows, offered as points.
    fn subquery(&mut self, sq: &SubqueryExpr, steps: &Steps) -> Result<RangeVector> {
        let offset_ms = offset_ms(sq.offset.as_ref());
        let at = sq.at.as_ref().map(At::from);
        let range_ms = duration_ms(sq.range);
        let step_ms = sq
            .step
            .map(duration_ms)
            .filter(|s| *s > 0)
            .unwrap_or(self.subquery_step_ms);
        let (window_ends, bounds) = self.window_ends(at, offset_ms, steps);
        let Some((lo, hi)) = bounds else {
            return Ok(RangeVector {
                series: Vec::new(),
                range_ms,
                window_ends,
            });
        };
        let first = lo.saturating_sub(range_ms);
        let mut inner_start = first.div_euclid(step_ms).saturating_mul(step_ms);
        if inner_start < first {
            inner_start = inner_start.saturating_add(step_ms);
        }
        let mut series = Vec::new();
        if inner_start <= hi {
            let count = usize::try_from(
                (i128::from(hi) - i128::from(inner_start)) / i128::from(step_ms) + 1,
            )
            .unwrap_or(usize::MAX);
            // The inner evaluation holds at least one point per step per series: refuse a
            // subquery whose steps alone would exceed the budget before allocating them.
            self.budget.take(count)?;
            self.budget.give_back(count);
            let inner = Steps {
                start: inner_start,
                step: step_ms,
                count,
            };
            for s in self.eval_vector(&sq.expr, &inner)? {
                let points: Vec<(i64, f64)> = s
                    .values
                    .iter()
                    .enumerate()
                    .filter_map(|(i, v)| v.map(|v| (inner.time(i), v)))
                    .collect();
                if !points.is_empty() {
                    series.push(RangeSeries {
                        labels: s.labels,
                        points,
                    });
                }
            }
        }
        Ok(RangeVector {
            series,
            range_ms,
            window_ends,
        })
    }
}

/// A selector's matchers and where its windows end.
#[derive(Debug)]
pub(crate) struct Selector {
    pub(crate) matchers: Vec<Matcher>,
    /// Positive shifts the window into the past.
    offset_ms: i64,
    at: Option<At>,
}

/// Where an `@` pins a selector or subquery.
#[derive(Debug, Clone, Copy)]
pub(crate) enum At {
    Time(i64),
    Start,
    End,
}

impl From<&AtModifier> for At {
    fn from(a: &AtModifier) -> At {
        match a {
            AtModifier::Start => At::Start,
            AtModifier::End => At::End,
            AtModifier::At(t) => At::Time(system_time_ms(*t)),
        }
    }
}

impl At {
    /// The pinned time, given the query's start and end.
    pub(crate) fn time(self, query_start: i64, query_end: i64) -> i64 {
        match self {
            At::Time(t) => t,
            At::Start => query_start,
            At::End => query_end,
        }
    }
}

impl Selector {
    pub(crate) fn new(vs: &VectorSelector) -> Result<Selector> {
        Ok(Selector {
            matchers: matchers(vs)?,
            offset_ms: offset_ms(vs.offset.as_ref()),
            at: vs.at.as_ref().map(At::from),
        })
    }
}

/// The store matchers of a selector: the metric name first, then the label matchers.
///
/// # Errors
///
/// `or` between matcher groups (not supported yet), or a regex the store refuses.
pub(crate) fn matchers(vs: &VectorSelector) -> Result<Vec<Matcher>> {
    if !vs.matchers.or_matchers.is_empty() {
        return Err(QueryError::BadData(
            "`or` between label matchers is not supported".into(),
        ));
    }
    let mut out = Vec::with_capacity(vs.matchers.matchers.len() + 1);
    if let Some(name) = &vs.name {
        out.push(Matcher::equal(METRIC_NAME, name.as_str()));
    }
    for m in &vs.matchers.matchers {
        out.push(match &m.op {
            MatchOp::Equal => Matcher::equal(m.name.as_str(), m.value.as_str()),
            MatchOp::NotEqual => Matcher::not_equal(m.name.as_str(), m.value.as_str()),
            MatchOp::Re(_) => Matcher::regex(m.name.as_str(), &m.value)?,
            MatchOp::NotRe(_) => Matcher::not_regex(m.name.as_str(), &m.value)?,
        });
    }
    Ok(out)
}

pub(crate) fn offset_ms(offset: Option<&Offset>) -> i64 {
    match offset {
        None => 0,
        Some(Offset::Pos(d)) => duration_ms(*d),
        Some(Offset::Neg(d)) => duration_ms(*d).saturating_neg(),
    }
}

/// Milliseconds of a duration, saturating.
pub(crate) fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

pub(crate) fn system_time_ms(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => duration_ms(d),
        Err(e) => duration_ms(e.duration()).saturating_neg(),
    }
}

/// The series, sorted by labels, unless two of them have the same labels: Prometheus' check on
/// a whole result (unary minus, range functions), which unlike [`merge_same_labels`] refuses
/// such a pair even when their steps do not overlap.
pub(crate) fn require_distinct_labels(mut series: Vec<StepSeries>) -> Result<Vec<StepSeries>> {
    series.sort_by(|a, b| a.labels.cmp(&b.labels));
    if series
        .windows(2)
        .any(|pair| pair[0].labels == pair[1].labels)
    {
        return Err(QueryError::Execution(
            "vector cannot contain metrics with the same labelset".into(),
        ));
    }
    Ok(series)
}

/// Series with equal label sets merged into one, as Prometheus' matrix holds one series per
/// label set: an error if two of them have a value at the same step.
pub(crate) fn merge_same_labels(mut series: Vec<StepSeries>) -> Result<Vec<StepSeries>> {
    if series.len() < 2 {
        return Ok(series);
    }
    series.sort_by(|a, b| a.labels.cmp(&b.labels));
    let mut out: Vec<StepSeries> = Vec::with_capacity(series.len());
    for s in series {
        match out.last_mut() {
            Some(last) if last.labels == s.labels => {
                for (into, v) in last.values.iter_mut().zip(s.values) {
                    if v.is_some() {
                        if into.is_some() {
                            return Err(QueryError::Execution(
                                "vector cannot contain metrics with the same labelset".into(),
                            ));
                        }
                        *into = v;
                    }
                }
            }
            _ => out.push(s),
        }
    }
    Ok(out)
}
