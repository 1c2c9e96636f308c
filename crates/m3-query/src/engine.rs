//! The query entry points: instant and range queries over a [`SeriesSource`].
//!
//! An instant query is evaluated as a range query of one step; the answer's shape follows
//! the expression's type as Prometheus' API gives it (`scalar`, `string`, `vector`, or
//! `matrix` for a range vector). A range query must be a scalar or an instant vector and
//! always answers a `matrix`, series sorted by labels, each with the steps it has a value at.

use std::time::{Duration, Instant};

use promql_parser::parser::{self, Expr};

use crate::error::{QueryError, Result};
use crate::eval::{Evaluator, Limits, Steps, duration_ms};
use crate::functions::window;
use crate::labels::LabelSet;
use crate::source::SeriesSource;
use crate::value::{QueryValue, Sample, SeriesPoints, Value};

/// Prometheus' lookback delta default.
pub const DEFAULT_LOOKBACK: Duration = Duration::from_secs(5 * 60);

/// The most points a range query may return per series (Prometheus' limit).
pub const MAX_POINTS_PER_SERIES: i64 = 11_000;

/// The longest query text evaluated, in bytes. Far beyond any written or generated dashboard
/// query; it bounds the depth of the tree a query parses into, and so the stack its parsing,
/// evaluation and drop take.
pub const MAX_QUERY_BYTES: usize = 256 * 1024;

/// The deepest expression tree evaluated (nested calls, operators, parentheses), and the most
/// operators a query may hold. The parser takes time quadratic in nesting (a thousand levels
/// parse in about 10 ms, three thousand in 300 ms), so both are checked on the text before it
/// is parsed, and the depth again on the tree.
pub const MAX_NESTING: usize = 1_000;

/// The stack of the thread a query is parsed and evaluated on: evaluation recurses once per
/// level of the expression tree, and dropping a parsed tree recurses once per level too.
const EVAL_STACK_BYTES: usize = 64 * 1024 * 1024;

/// Evaluates PromQL. Holds only settings: cheap to clone, shared by all queries.
#[derive(Debug, Clone)]
pub struct Engine {
    lookback_ms: i64,
    max_samples: usize,
    max_series: usize,
    timeout: Option<Duration>,
}

impl Default for Engine {
    fn default() -> Self {
        let limits = Limits::default();
        Engine {
            lookback_ms: duration_ms(DEFAULT_LOOKBACK),
            max_samples: limits.max_samples,
            max_series: limits.max_series,
            timeout: None,
        }
    }
}

impl Engine {
    /// An engine with Prometheus' defaults: five-minute lookback, 50M samples, no timeout.
    pub fn new() -> Engine {
        Engine::default()
    }

    /// How far back an instant selector looks for a sample (at least 1 ms).
    pub fn with_lookback(mut self, lookback: Duration) -> Engine {
        self.lookback_ms = duration_ms(lookback).max(1);
        self
    }

    /// The most samples a query may hold at once.
    pub fn with_max_samples(mut self, max_samples: usize) -> Engine {
        self.max_samples = max_samples;
        self
    }

    /// The most series a query may read.
    pub fn with_max_series(mut self, max_series: usize) -> Engine {
        self.max_series = max_series;
        self
    }

    /// How long a query may run.
    pub fn with_timeout(mut self, timeout: Option<Duration>) -> Engine {
        self.timeout = timeout;
        self
    }

    /// The earliest sample time `expr` reads when evaluated from `start_ms` to `end_ms` (an
    /// instant query has both at its time): `start_ms` moved back by the lookback, ranges,
    /// offsets and subqueries it holds, or to where an `@` pins it; `start_ms` itself when it
    /// reads no series.
    pub fn earliest_read(&self, expr: &Expr, start_ms: i64, end_ms: i64) -> i64 {
        crate::reach::earliest_read(expr, start_ms, end_ms, self.lookback_ms).unwrap_or(start_ms)
    }

    fn limits(&self) -> Limits {
        Limits {
            max_samples: self.max_samples,
            max_series: self.max_series,
            deadline: self.timeout.and_then(|t| Instant::now().checked_add(t)),
        }
    }

    /// Evaluates `query` at `time_ms`.
    ///
    /// # Errors
    ///
    /// [`QueryError::BadData`] when the query does not parse or is not valid PromQL, the
    /// limits' errors, [`QueryError::Execution`] for evaluation errors, storage errors.
    pub fn instant_query(
        &self,
        source: &(dyn SeriesSource + Sync),
        query: &str,
        time_ms: i64,
    ) -> Result<QueryValue> {
        self.instant_query_reading(query, time_ms, |_| Ok(source))
    }

    /// [`instant_query`](Self::instant_query) over the source `source_for` gives for the
    /// earliest sample time the query reads (see [`earliest_read`](Self::earliest_read)):
    /// how a caller with several namespaces picks the one whose retention covers the query.
    ///
    /// # Errors
    ///
    /// As for [`instant_query`](Self::instant_query), and what `source_for` returns.
    pub fn instant_query_reading<S: SeriesSource>(
        &self,
        query: &str,
        time_ms: i64,
        source_for: impl FnOnce(i64) -> Result<S> + Send,
    ) -> Result<QueryValue> {
        on_eval_stack(|| {
            let expr = parse(query)?;
            let source = source_for(self.earliest_read(&expr, time_ms, time_ms))?;
            self.instant_query_here(&source, &expr, time_ms)
        })
    }

    fn instant_query_here(
        &self,
        source: &dyn SeriesSource,
        expr: &Expr,
        time_ms: i64,
    ) -> Result<QueryValue> {
        let steps = Steps {
            start: time_ms,
            step: 1,
            count: 1,
        };
        let mut ev = Evaluator::new(source, self.limits(), self.lookback_ms, time_ms, time_ms);
        Ok(match ev.eval(expr, &steps)? {
            Value::Scalar(v) => QueryValue::Scalar {
                timestamp_ms: time_ms,
                value: v[0],
            },
            Value::String(s) => QueryValue::String {
                timestamp_ms: time_ms,
                value: s,
            },
            Value::Vector(series) => QueryValue::Vector(
                series
                    .into_iter()
                    .filter_map(|s| {
                        s.values[0].map(|value| Sample {
                            labels: s.labels,
                            timestamp_ms: time_ms,
                            value,
                        })
                    })
                    .collect(),
            ),
            Value::Range(range) => {
                let end = range.window_ends[0];
                let mut out: Vec<SeriesPoints> = range
                    .series
                    .into_iter()
                    .filter_map(|s| {
                        let points =
                            window(&s.points, end.saturating_sub(range.range_ms), end).to_vec();
                        (!points.is_empty()).then_some(SeriesPoints {
                            labels: s.labels,
                            points,
                        })
                    })
                    .collect();
                out.sort_by(|a, b| a.labels.cmp(&b.labels));
                QueryValue::Matrix(out)
            }
        })
    }

    /// Evaluates `query` at `start_ms`, `start_ms + step_ms`, … up to `end_ms`.
    ///
    /// # Errors
    ///
    /// As for [`instant_query`](Self::instant_query); also [`QueryError::BadData`] when
    /// `end_ms < start_ms`, `step_ms <= 0`, more than [`MAX_POINTS_PER_SERIES`] steps, or the
    /// expression is not a scalar or an instant vector.
    pub fn range_query(
        &self,
        source: &(dyn SeriesSource + Sync),
        query: &str,
        start_ms: i64,
        end_ms: i64,
        step_ms: i64,
    ) -> Result<QueryValue> {
        self.range_query_reading(query, start_ms, end_ms, step_ms, |_| Ok(source))
    }

    /// [`range_query`](Self::range_query) over the source `source_for` gives for the earliest
    /// sample time the query reads, as [`instant_query_reading`](Self::instant_query_reading).
    ///
    /// # Errors
    ///
    /// As for [`range_query`](Self::range_query), and what `source_for` returns.
    pub fn range_query_reading<S: SeriesSource>(
        &self,
        query: &str,
        start_ms: i64,
        end_ms: i64,
        step_ms: i64,
        source_for: impl FnOnce(i64) -> Result<S> + Send,
    ) -> Result<QueryValue> {
        if end_ms < start_ms {
            return Err(QueryError::BadData(
                "end timestamp must not be before start time".into(),
            ));
        }
        if step_ms <= 0 {
            return Err(QueryError::BadData(
                "zero or negative query resolution step widths are not accepted. \
                 Try a positive integer"
                    .into(),
            ));
        }
        let count = (i128::from(end_ms) - i128::from(start_ms)) / i128::from(step_ms) + 1;
        if count > i128::from(MAX_POINTS_PER_SERIES) {
            return Err(QueryError::BadData(format!(
                "exceeded maximum resolution of {MAX_POINTS_PER_SERIES} points per timeseries. \
                 Try decreasing the query resolution (?step=XX)"
            )));
        }
        let steps = Steps {
            start: start_ms,
            step: step_ms,
            count: count as usize,
        };
        on_eval_stack(|| {
            let expr = parse(query)?;
            let source = source_for(self.earliest_read(&expr, start_ms, end_ms))?;
            self.range_query_here(&source, &expr, steps, end_ms)
        })
    }

    fn range_query_here(
        &self,
        source: &dyn SeriesSource,
        expr: &Expr,
        steps: Steps,
        end_ms: i64,
    ) -> Result<QueryValue> {
        let start_ms = steps.start;
        let mut ev = Evaluator::new(source, self.limits(), self.lookback_ms, start_ms, end_ms);
        let series = match ev.eval(expr, &steps)? {
            Value::Scalar(values) => vec![crate::value::StepSeries {
                labels: LabelSet::empty(),
                values: values.into_iter().map(Some).collect(),
            }],
            Value::Vector(series) => series,
            other => {
                return Err(QueryError::BadData(format!(
                    "invalid expression type {:?} for range query, must be Scalar or instant \
                     Vector",
                    other.type_name()
                )));
            }
        };
        let mut out: Vec<SeriesPoints> = series
            .into_iter()
            .filter_map(|s| {
                let points: Vec<(i64, f64)> = s
                    .values
                    .iter()
                    .enumerate()
                    .filter_map(|(i, v)| v.map(|v| (steps.time(i), v)))
                    .collect();
                (!points.is_empty()).then_some(SeriesPoints {
                    labels: s.labels,
                    points,
                })
            })
            .collect();
        out.sort_by(|a, b| a.labels.cmp(&b.labels));
        Ok(QueryValue::Matrix(out))
    }
}

/// The query laid out as Prometheus' `/api/v1/format_query` lays it out. Parsed, printed and
/// dropped on a thread of its own with a large stack, like an evaluation: safe to call from an
/// async task.
///
/// # Errors
///
/// As for [`parse`].
pub fn format_query(query: &str) -> Result<String> {
    on_eval_stack(|| Ok(parse(query)?.prettify()))
}

/// Whether `query` parses, as [`parse`] decides, with the tree built and dropped on a thread
/// of its own with a large stack: safe to call from an async task.
///
/// # Errors
///
/// As for [`parse`].
pub fn validate_query(query: &str) -> Result<()> {
    on_eval_stack(|| parse(query).map(drop))
}

/// Parses a query; a parse error is `bad_data`, worded as Prometheus words it. Queries longer
/// than [`MAX_QUERY_BYTES`] or nested deeper than [`MAX_NESTING`] are refused.
///
/// Printing or dropping the tree recurses once per level, which a thousand levels can take
/// past an async worker's stack: from one, use [`validate_query`] or [`format_query`].
pub fn parse(query: &str) -> Result<Expr> {
    parse_guarded(query, MAX_NESTING)
        .map_err(|reason| QueryError::BadData(format!("invalid parameter \"query\": {reason}")))
}

/// Parses PromQL text behind every guard the parser needs (size, operators, nesting, bare
/// numbers as durations, panics), with brackets nested at most `max_depth` deep; the error is
/// the reason alone, for the caller to say which parameter held the text.
pub(crate) fn parse_guarded(query: &str, max_depth: usize) -> std::result::Result<Expr, String> {
    if query.len() > MAX_QUERY_BYTES {
        return Err(format!(
            "{} bytes, more than the {MAX_QUERY_BYTES} a query may have",
            query.len()
        ));
    }
    let scan = scan(query);
    if scan.operators > MAX_NESTING {
        return Err(format!(
            "{} operators; at most {MAX_NESTING} are evaluated",
            scan.operators
        ));
    }
    if scan.depth > max_depth {
        return Err(format!(
            "brackets nested {} deep; at most {max_depth} levels are evaluated",
            scan.depth
        ));
    }
    if let Some(number) = scan.bad_duration {
        return Err(format!(
            "{number:?} is not a duration (seconds from 0 to about 1.8e19)"
        ));
    }
    // The parser is another crate's: should it still panic on some input, the query is refused
    // rather than the thread lost.
    let parsed = std::panic::catch_unwind(|| parser::parse(query))
        .map_err(|_| "the parser failed on it".to_string())?;
    let expr = parsed.map_err(|e| e.trim().to_string())?;
    if nesting(&expr) > MAX_NESTING {
        return Err(format!("expressions nested more than {MAX_NESTING} deep"));
    }
    Ok(expr)
}

/// What a look at the query text finds before it is parsed.
#[derive(Debug, Default)]
struct Scan<'q> {
    /// Runs of operator characters (`+ - * / % ^ = ! < >`), every sign within a run, and the
    /// keywords `and`, `or`, `unless`, `atan2`, outside string literals (an overcount:
    /// matchers' `=` count too).
    operators: usize,
    /// The deepest nesting of brackets.
    depth: usize,
    /// A bare number where a duration goes (`x[1e400]`, `offset Inf`) that is not a valid
    /// duration: the parser converts it without checking and panics.
    bad_duration: Option<&'q str>,
}

fn scan(query: &str) -> Scan<'_> {
    let bytes = query.as_bytes();
    let mut found = Scan::default();
    let mut brackets: Vec<u8> = Vec::new();
    // Whether the last word was `offset` (a sign may follow).
    let mut after_offset = false;
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'"' | b'\'' | b'`' => {
                // A string literal: skip to its closing quote (backslash escapes, except in
                // backticks).
                i += 1;
                while let Some(&c) = bytes.get(i) {
                    if c == b {
                        break;
                    }
                    i += if c == b'\\' && b != b'`' { 2 } else { 1 };
                }
                i += 1;
                after_offset = false;
            }
            b'(' | b'[' | b'{' => {
                brackets.push(b);
                found.depth = found.depth.max(brackets.len());
                i += 1;
                after_offset = false;
            }
            b')' | b']' | b'}' => {
                brackets.pop();
                i += 1;
                after_offset = false;
            }
            b'+' | b'-' | b'*' | b'/' | b'%' | b'^' | b'=' | b'!' | b'<' | b'>' => {
                // A run such as `!=` or `>=` is one operator, but every sign in it counts:
                // `---x` nests three unary minuses.
                found.operators += 1;
                i += 1;
                while let Some(c) = bytes.get(i).filter(|c| b"+-*/%^=!<>".contains(c)) {
                    found.operators += usize::from(matches!(c, b'+' | b'-'));
                    i += 1;
                }
                // `offset -5m`: the sign belongs to the duration.
                after_offset &= matches!(b, b'+' | b'-');
            }
            c if c.is_ascii_alphanumeric() || c == b'_' || c == b'.' => {
                let start = i;
                while bytes
                    .get(i)
                    .is_some_and(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b':' | b'.'))
                {
                    i += 1;
                }
                // A signed exponent (`1e+400`) belongs to its number.
                let number = bytes[start].is_ascii_digit() || bytes[start] == b'.';
                let hex = bytes[start..i].starts_with(b"0x") || bytes[start..i].starts_with(b"0X");
                if number
                    && !hex
                    && matches!(bytes[i - 1], b'e' | b'E')
                    && matches!(bytes.get(i), Some(b'+' | b'-'))
                    && bytes.get(i + 1).is_some_and(u8::is_ascii_digit)
                {
                    i += 1;
                    while bytes.get(i).is_some_and(|c| {
                        c.is_ascii_alphanumeric() || matches!(c, b'_' | b':' | b'.')
                    }) {
                        i += 1;
                    }
                }
                let word = &query[start..i];
                let in_duration = after_offset || brackets.last() == Some(&b'[');
                // A subquery's `range:step` reads as one word (metric names may hold `:`).
                if in_duration && found.bad_duration.is_none() {
                    found.bad_duration = word.split(':').find(|part| !valid_duration_number(part));
                }
                if ["and", "or", "unless", "atan2"]
                    .iter()
                    .any(|k| word.eq_ignore_ascii_case(k))
                {
                    found.operators += 1;
                }
                after_offset = word.eq_ignore_ascii_case("offset");
            }
            b':' => {
                // `x[5m:1m]`: the step is a duration too; the bracket is still `[`.
                i += 1;
                after_offset = false;
            }
            _ => i += 1,
        }
    }
    found
}

/// Whether `word`, in a duration's place, is either not a bare number (a duration with units
/// like `5m`, left to the parser) or a number of seconds a `Duration` holds.
fn valid_duration_number(word: &str) -> bool {
    let lower = word.to_ascii_lowercase();
    let value = if let Some(hex) = lower.strip_prefix("0x") {
        match u64::from_str_radix(hex, 16) {
            Ok(v) => v as f64,
            Err(_) if hex.chars().all(|c| c.is_ascii_hexdigit()) && !hex.is_empty() => {
                return false;
            }
            Err(_) => return true,
        }
    } else {
        match lower.parse::<f64>() {
            Ok(v) => v,
            Err(_) => return true,
        }
    };
    (0.0..1.8e19).contains(&value)
}

/// The depth of the expression tree, walked without recursion.
fn nesting(expr: &Expr) -> usize {
    let mut deepest = 0;
    let mut stack = vec![(expr, 1)];
    while let Some((e, depth)) = stack.pop() {
        deepest = deepest.max(depth);
        stack.extend(children(e).map(|child| (child, depth + 1)));
    }
    deepest
}

/// The expressions directly below `expr`.
pub(crate) fn children(expr: &Expr) -> impl Iterator<Item = &Expr> {
    let (first, second): (Option<&Expr>, Option<&Expr>) = match expr {
        Expr::Aggregate(a) => (Some(&a.expr), a.param.as_deref()),
        Expr::Unary(u) => (Some(&u.expr), None),
        Expr::Binary(b) => (Some(&b.lhs), Some(&b.rhs)),
        Expr::Paren(p) => (Some(&p.expr), None),
        Expr::Subquery(s) => (Some(&s.expr), None),
        Expr::Call(_)
        | Expr::NumberLiteral(_)
        | Expr::StringLiteral(_)
        | Expr::VectorSelector(_)
        | Expr::MatrixSelector(_)
        | Expr::Extension(_) => (None, None),
    };
    let args = match expr {
        Expr::Call(c) => c.args.args.as_slice(),
        _ => &[],
    };
    first
        .into_iter()
        .chain(second)
        .chain(args.iter().map(|a| a.as_ref()))
}

/// Runs `f` on a thread with [`EVAL_STACK_BYTES`] of stack (see there), and waits for it. A
/// panic in `f` continues in the caller.
fn on_eval_stack<T: Send>(f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    std::thread::scope(|scope| {
        let handle = std::thread::Builder::new()
            .name("promql-eval".into())
            .stack_size(EVAL_STACK_BYTES)
            .spawn_scoped(scope, f)
            .map_err(|e| QueryError::Execution(format!("cannot start a query thread: {e}")))?;
        match handle.join() {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}
