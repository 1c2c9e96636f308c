//! A PromQL subset: selectors, evaluated against one namespace.
//!
//! Supported, with Prometheus' semantics:
//!
//! * instant vector selectors: `up`, `http_requests_total{job="api", code=~"5.."}`;
//! * range vector selectors: `http_requests_total{job="api"}[5m]` (instant queries only);
//! * `offset <duration>` (also negative) and `@ <time>` / `@ start()` / `@ end()` on both;
//! * parentheses around any of these.
//!
//! Anything else (functions, aggregations, operators, literals, subqueries, `or` inside braces)
//! is rejected with [`Error::Unsupported`], which an HTTP layer answers with `400 bad_data`.
//! A query that does not parse is [`Error::BadQuery`].
//!
//! [`parse_series_selector`] reads the `match[]` parameter of the metadata endpoints
//! (`/api/v1/series`, `/api/v1/labels`, `/api/v1/label/{name}/values`) with the same parser and
//! the same matcher conversion, so a selector means one thing wherever it is written.
//!
//! # Evaluation
//!
//! ```text
//!  instant vector at t:   latest sample in (t − lookback, t]            → value stamped t
//!                         ────(·····lookback·····]t
//!  range vector  at t:    every sample in (t − range, t]                → raw points
//!  range query:           the instant vector at start, start+step, …, ≤ end
//!                         |-step-|-step-|-step-|
//!                         start                 end
//! ```
//!
//! With `offset o` the window ends at `t − o` instead of `t`; with `@ a` it ends at `a` whatever
//! the evaluation time. Prometheus' staleness markers (a NaN with the bit pattern
//! [`STALE_NAN_BITS`]) end a series: a lookup that lands on one returns nothing, and range
//! vectors leave them out. The default lookback is five minutes, as in Prometheus.

use std::time::{Duration, SystemTime};

use promql_parser::label::MatchOp;
use promql_parser::parser::{self, AtModifier, Expr, Offset, VectorSelector};

use crate::budget::{Budget, QueryLimits};
use crate::error::{Error, Result};
use crate::matcher::Matcher;
use crate::query::read_samples;
use crate::result::Series;
use crate::result::{InstantSample, QueryResult};
use crate::retention::unix_ms;
use crate::store::Store;

/// Prometheus' lookback delta default.
pub const DEFAULT_LOOKBACK: Duration = Duration::from_secs(5 * 60);

/// The most points a range query may return per series (Prometheus' limit).
pub const MAX_POINTS_PER_SERIES: i64 = 11_000;

/// The bit pattern of Prometheus' staleness marker NaN.
pub const STALE_NAN_BITS: u64 = 0x7ff0_0000_0000_0002;

/// Whether `v` is Prometheus' staleness marker.
pub fn is_stale_marker(v: f64) -> bool {
    v.to_bits() == STALE_NAN_BITS
}

/// Evaluates PromQL selectors against a [`Store`]. Cheap to clone.
#[derive(Debug, Clone)]
pub struct QueryEngine {
    store: Store,
    lookback_ms: i64,
    limits: QueryLimits,
}

impl QueryEngine {
    /// An engine over `store` with the default lookback of five minutes.
    pub fn new(store: Store) -> Self {
        QueryEngine {
            store,
            lookback_ms: duration_ms(DEFAULT_LOOKBACK),
            limits: QueryLimits::default(),
        }
    }

    /// Sets the samples a query may hold and its deadline. Default: 50 million samples, no
    /// deadline.
    pub fn with_limits(mut self, limits: QueryLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Sets how far back an instant selector looks for a sample. Default: [`DEFAULT_LOOKBACK`].
    /// A zero lookback is raised to 1ms (only samples exactly at the evaluation time count).
    pub fn with_lookback(mut self, lookback: Duration) -> Self {
        self.lookback_ms = duration_ms(lookback).max(1);
        self
    }

    /// Evaluates `expr` at `time_ms`.
    ///
    /// A vector selector yields a [`QueryResult::Vector`]; a matrix selector a
    /// [`QueryResult::Matrix`] of raw points.
    ///
    /// # Errors
    ///
    /// [`Error::BadQuery`] when `expr` does not parse, [`Error::Unsupported`] for expressions
    /// beyond selectors, [`Error::InvalidRegex`], [`Error::UnknownNamespace`], engine errors.
    pub fn instant_query(&self, namespace: &str, expr: &str, time_ms: i64) -> Result<QueryResult> {
        let reader = self.store.reader(namespace)?;
        let mut budget = Budget::new(self.limits);
        let mut samples = Vec::new();
        match plan(expr)? {
            Plan::Instant(sel) => {
                let eval = sel.window_end(time_ms, time_ms, time_ms);
                let start = eval.saturating_sub(self.lookback_ms).saturating_add(1);
                let mut out = Vec::new();
                for (labels, sources) in reader.matching(&sel.matchers, start, eval) {
                    budget.take(1)?;
                    if out.len() % crate::budget::DEADLINE_CHECK_EVERY == 0 {
                        budget.check_deadline()?;
                    }
                    samples.clear();
                    read_samples(&reader, &sources, start, eval, &mut samples)?;
                    if let Some(&(_, value)) = samples.last()
                        && !is_stale_marker(value)
                    {
                        out.push(InstantSample {
                            labels,
                            timestamp_ms: time_ms,
                            value,
                        });
                    }
                }
                Ok(QueryResult::Vector(out))
            }
            Plan::Range(sel, range_ms) => {
                let eval = sel.window_end(time_ms, time_ms, time_ms);
                let start = eval.saturating_sub(range_ms).saturating_add(1);
                let mut out = Vec::new();
                for (labels, sources) in reader.matching(&sel.matchers, start, eval) {
                    budget.check_deadline()?;
                    let mut samples = Vec::new();
                    read_samples(&reader, &sources, start, eval, &mut samples)?;
                    budget.take(samples.len())?;
                    samples.retain(|(_, v)| !is_stale_marker(*v));
                    if !samples.is_empty() {
                        out.push(Series { labels, samples });
                    }
                }
                Ok(QueryResult::Matrix(out))
            }
        }
    }

    /// Evaluates `expr` at `start_ms`, `start_ms + step_ms`, … up to `end_ms`.
    ///
    /// Returns a [`QueryResult::Matrix`] with one point per step at which the series had a sample
    /// within the lookback; series without any point are left out.
    ///
    /// # Errors
    ///
    /// [`Error::BadQuery`] when `end_ms < start_ms`, `step_ms <= 0`, more than
    /// [`MAX_POINTS_PER_SERIES`] steps, `expr` is a range vector, or does not parse; otherwise as
    /// for [`instant_query`](Self::instant_query).
    pub fn range_query(
        &self,
        namespace: &str,
        expr: &str,
        start_ms: i64,
        end_ms: i64,
        step_ms: i64,
    ) -> Result<QueryResult> {
        if end_ms < start_ms {
            return Err(Error::BadQuery(
                "end timestamp must not be before start time".into(),
            ));
        }
        if step_ms <= 0 {
            return Err(Error::BadQuery(
                "zero or negative query resolution step widths are not accepted. \
                 Try a positive integer"
                    .into(),
            ));
        }
        let steps = (i128::from(end_ms) - i128::from(start_ms)) / i128::from(step_ms) + 1;
        if steps > i128::from(MAX_POINTS_PER_SERIES) {
            return Err(Error::BadQuery(format!(
                "exceeded maximum resolution of {MAX_POINTS_PER_SERIES} points per timeseries. \
                 Try decreasing the query resolution (?step=XX)"
            )));
        }
        let reader = self.store.reader(namespace)?;
        let sel = match plan(expr)? {
            Plan::Instant(sel) => sel,
            Plan::Range(..) => {
                return Err(Error::BadQuery(
                    "invalid expression type \"range vector\" for range query, \
                     must be Scalar or instant Vector"
                        .into(),
                ));
            }
        };

        // (output timestamp, end of the lookup window) per step. `steps` ≤ MAX_POINTS_PER_SERIES
        // and every step lies in [start_ms, end_ms], so the arithmetic stays in range.
        let evals: Vec<(i64, i64)> = (0..steps as i64)
            .map(|i| {
                let t = i128::from(start_ms) + i128::from(i) * i128::from(step_ms);
                let t = i64::try_from(t).unwrap_or(end_ms);
                (t, sel.window_end(t, start_ms, end_ms))
            })
            .collect();
        let lo = evals.iter().map(|e| e.1).min().unwrap_or(start_ms);
        let hi = evals.iter().map(|e| e.1).max().unwrap_or(end_ms);
        let load_from = lo.saturating_sub(self.lookback_ms).saturating_add(1);

        let mut out = Vec::new();
        let mut budget = Budget::new(self.limits);
        let mut samples = Vec::new();
        for (labels, sources) in reader.matching(&sel.matchers, load_from, hi) {
            budget.check_deadline()?;
            samples.clear();
            read_samples(&reader, &sources, load_from, hi, &mut samples)?;
            // Held while this series' points are picked, then given back.
            budget.take(samples.len())?;
            budget.give_back(samples.len());
            if samples.is_empty() {
                continue;
            }
            let mut points = Vec::new();
            for &(t, window_end) in &evals {
                let idx = samples.partition_point(|(ts, _)| *ts <= window_end);
                if let Some(&(ts, v)) = idx.checked_sub(1).and_then(|i| samples.get(i))
                    && ts > window_end.saturating_sub(self.lookback_ms)
                    && !is_stale_marker(v)
                {
                    budget.take(1)?;
                    points.push((t, v));
                }
            }
            if !points.is_empty() {
                out.push(Series {
                    labels,
                    samples: points,
                });
            }
        }
        Ok(QueryResult::Matrix(out))
    }
}

impl Store {
    /// [`QueryEngine::instant_query`] with the default five-minute lookback.
    ///
    /// # Errors
    ///
    /// As for [`QueryEngine::instant_query`].
    pub fn instant_query(&self, namespace: &str, expr: &str, time_ms: i64) -> Result<QueryResult> {
        QueryEngine::new(self.clone()).instant_query(namespace, expr, time_ms)
    }

    /// [`QueryEngine::range_query`] with the default five-minute lookback.
    ///
    /// # Errors
    ///
    /// As for [`QueryEngine::range_query`].
    pub fn range_query(
        &self,
        namespace: &str,
        expr: &str,
        start_ms: i64,
        end_ms: i64,
        step_ms: i64,
    ) -> Result<QueryResult> {
        QueryEngine::new(self.clone()).range_query(namespace, expr, start_ms, end_ms, step_ms)
    }
}

/// Parses a series selector, the `match[]` parameter of Prometheus' metadata endpoints: a plain
/// vector selector such as `up`, `up{job="api"}` or `{__name__=~"http_.*", code!="200"}`.
///
/// The metric name, if any, comes first as a `__name__` equality matcher, followed by the label
/// matchers in the order written. PromQL's own rules apply: a selector without a metric name needs
/// a matcher that rejects the empty value (`{job=~".*"}` is refused), and the name may not be given
/// both outside and inside the braces. Strings are read by `promql_parser`, which, unlike
/// Prometheus, applies escape sequences inside backtick strings too.
///
/// # Errors
///
/// [`Error::NotSeriesSelector`] when `text` does not parse or is anything but a plain vector
/// selector: a range (`up[5m]`), an `offset` or `@` modifier, parentheses, a function, an
/// aggregation, an operator or a literal. [`Error::Unsupported`] for `or` inside the braces, and
/// [`Error::InvalidRegex`] for a pattern the store's regex engine refuses.
///
/// # Examples
///
/// ```
/// use m3_storage::{Error, parse_series_selector};
///
/// let matchers = parse_series_selector(r#"up{job=~"api|web"}"#)?;
/// let text: Vec<String> = matchers.iter().map(ToString::to_string).collect();
/// assert_eq!(text, [r#"__name__="up""#, r#"job=~"api|web""#]);
///
/// let err = parse_series_selector("rate(up[5m])").unwrap_err();
/// assert!(matches!(err, Error::NotSeriesSelector { .. }));
/// assert_eq!(
///     err.to_string(),
///     r#"match[] must be a series selector, got "rate(up[5m])": a function call (rate)"#
/// );
/// # Ok::<(), Error>(())
/// ```
pub fn parse_series_selector(text: &str) -> Result<Vec<Matcher>> {
    let not_selector = |reason: String| Error::NotSeriesSelector {
        selector: text.to_string(),
        reason,
    };
    let parsed = parser::parse(text).map_err(|e| not_selector(e.trim().to_string()))?;
    let what = match &parsed {
        Expr::VectorSelector(vs) if vs.offset.is_some() => "an offset modifier".to_string(),
        Expr::VectorSelector(vs) if vs.at.is_some() => "an @ modifier".to_string(),
        Expr::VectorSelector(vs) => return Ok(selector(vs, text)?.matchers),
        Expr::MatrixSelector(_) => "a range selector".to_string(),
        Expr::Paren(_) => "an expression in parentheses".to_string(),
        Expr::Call(c) => format!("a function call ({})", c.func.name),
        Expr::Aggregate(_) => "an aggregation".to_string(),
        Expr::Unary(_) => "a unary operator".to_string(),
        Expr::Binary(_) => "a binary operator".to_string(),
        Expr::Subquery(_) => "a subquery".to_string(),
        Expr::NumberLiteral(_) => "a number literal".to_string(),
        Expr::StringLiteral(_) => "a string literal".to_string(),
        Expr::Extension(_) => "an extension expression".to_string(),
    };
    Err(not_selector(what))
}

/// What an expression asks for, once checked to be within the subset.
#[derive(Debug)]
enum Plan {
    Instant(Selector),
    Range(Selector, i64),
}

#[derive(Debug)]
struct Selector {
    matchers: Vec<Matcher>,
    /// Positive shifts the window into the past.
    offset_ms: i64,
    at: Option<At>,
}

#[derive(Debug, Clone, Copy)]
enum At {
    Time(i64),
    Start,
    End,
}

impl Selector {
    /// Where the lookup window ends when evaluating at `t` within a query over `[start, end]`.
    fn window_end(&self, t: i64, start: i64, end: i64) -> i64 {
        let base = match self.at {
            None => t,
            Some(At::Time(a)) => a,
            Some(At::Start) => start,
            Some(At::End) => end,
        };
        base.saturating_sub(self.offset_ms)
    }
}

fn plan(expr: &str) -> Result<Plan> {
    let parsed = parser::parse(expr).map_err(|e| Error::BadQuery(format!("{e} (in {expr:?})")))?;
    plan_expr(&parsed, expr)
}

fn plan_expr(e: &Expr, src: &str) -> Result<Plan> {
    let what = match e {
        Expr::Paren(p) => return plan_expr(&p.expr, src),
        Expr::VectorSelector(vs) => return Ok(Plan::Instant(selector(vs, src)?)),
        Expr::MatrixSelector(ms) => {
            return Ok(Plan::Range(selector(&ms.vs, src)?, duration_ms(ms.range)));
        }
        Expr::Aggregate(_) => "aggregations".to_string(),
        Expr::Unary(_) => "unary operators".to_string(),
        Expr::Binary(_) => "binary operators".to_string(),
        Expr::Subquery(_) => "subqueries".to_string(),
        Expr::NumberLiteral(_) => "number literals".to_string(),
        Expr::StringLiteral(_) => "string literals".to_string(),
        Expr::Call(c) => format!("functions ({}())", c.func.name),
        Expr::Extension(_) => "extensions".to_string(),
    };
    Err(Error::Unsupported(format!(
        "{src}: {what} are not supported; only vector selectors (`name{{label=\"value\"}}`) \
         and matrix selectors (`name[5m]`) are"
    )))
}

fn selector(vs: &VectorSelector, src: &str) -> Result<Selector> {
    if !vs.matchers.or_matchers.is_empty() {
        return Err(Error::Unsupported(format!(
            "{src}: `or` inside label matchers is not supported"
        )));
    }
    let mut matchers = Vec::with_capacity(vs.matchers.matchers.len() + 1);
    if let Some(name) = &vs.name {
        matchers.push(Matcher::equal(
            crate::labels::METRIC_NAME_LABEL,
            name.as_str(),
        ));
    }
    for m in &vs.matchers.matchers {
        matchers.push(match &m.op {
            MatchOp::Equal => Matcher::equal(m.name.as_str(), m.value.as_str()),
            MatchOp::NotEqual => Matcher::not_equal(m.name.as_str(), m.value.as_str()),
            MatchOp::Re(_) => Matcher::regex(m.name.as_str(), &m.value)?,
            MatchOp::NotRe(_) => Matcher::not_regex(m.name.as_str(), &m.value)?,
        });
    }
    let offset_ms = match &vs.offset {
        None => 0,
        Some(Offset::Pos(d)) => duration_ms(*d),
        Some(Offset::Neg(d)) => duration_ms(*d).saturating_neg(),
    };
    let at = vs.at.as_ref().map(|a| match a {
        AtModifier::Start => At::Start,
        AtModifier::End => At::End,
        AtModifier::At(t) => At::Time(system_time_ms(*t)),
    });
    Ok(Selector {
        matchers,
        offset_ms,
        at,
    })
}

fn system_time_ms(t: SystemTime) -> i64 {
    unix_ms(t)
}

fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unsupported(expr: &str) -> String {
        match plan(expr) {
            Err(Error::Unsupported(m)) => m,
            other => panic!("{expr}: expected Unsupported, got {other:?}"),
        }
    }

    #[test]
    fn plans_selectors() {
        let Plan::Instant(s) = plan(r#"up{job="api",zone=~"eu.*"} offset 1m"#).unwrap() else {
            panic!()
        };
        assert_eq!(s.matchers.len(), 3);
        assert_eq!(s.offset_ms, 60_000);
        let Plan::Range(s, r) = plan("(rate_me[5m] offset -30s)").unwrap() else {
            panic!()
        };
        assert_eq!((r, s.offset_ms), (300_000, -30_000));
        let Plan::Instant(s) = plan("up @ 1700000000.5").unwrap() else {
            panic!()
        };
        assert_eq!(s.window_end(0, 0, 0), 1_700_000_000_500);
    }

    #[test]
    fn rejects_everything_else() {
        assert!(unsupported("sum(up)").contains("aggregations"));
        assert!(unsupported("rate(up[5m])").contains("functions (rate())"));
        assert!(unsupported("up + 1").contains("binary operators"));
        assert!(unsupported("-up").contains("unary"));
        assert!(unsupported("1").contains("number literals"));
        assert!(unsupported("up[5m:1m]").contains("subqueries"));
        assert!(unsupported(r#"up{a="1" or b="2"}"#).contains("`or`"));
        let e = Error::Unsupported(unsupported("sum(up)"));
        assert!(
            e.to_string()
                .starts_with("unsupported expression: sum(up): "),
            "{e}"
        );
        assert!(matches!(plan("up{"), Err(Error::BadQuery(_))));
        assert!(matches!(plan(""), Err(Error::BadQuery(_))));
    }

    fn series_selector(text: &str) -> Result<Vec<String>> {
        parse_series_selector(text).map(|ms| ms.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn series_selectors_parse() {
        let cases: [(&str, &[&str]); 5] = [
            ("up", &[r#"__name__="up""#]),
            (
                r#" job:req_rate:5m { job = "api" , code!~'5..', path=~`/a.b`, } "#,
                &[
                    r#"__name__="job:req_rate:5m""#,
                    r#"job="api""#,
                    r#"code!~"5..""#,
                    r#"path=~"/a.b""#,
                ],
            ),
            (
                r#"{"my.metric", "service.name"="x\ty\u00e9\101"}"#,
                &[r#"__name__="my.metric""#, "service.name=\"x\\ty\u{e9}A\""],
            ),
            (
                r#"{__name__=~"up|cpu", a!=""}"#,
                &[r#"__name__=~"up|cpu""#, r#"a!="""#],
            ),
            (
                r#"{zone=~"eu.*", job=""}"#,
                &[r#"zone=~"eu.*""#, r#"job="""#],
            ),
        ];
        for (text, want) in cases {
            assert_eq!(series_selector(text).unwrap(), want, "{text}");
        }
    }

    #[test]
    fn non_selectors_are_refused() {
        for (text, reason) in [
            ("cpu[5m]", "a range selector"),
            ("cpu offset 5m", "an offset modifier"),
            ("cpu @ 100", "an @ modifier"),
            ("(cpu)", "an expression in parentheses"),
            ("rate(cpu[5m])", "a function call (rate)"),
            ("sum by (job) (up)", "an aggregation"),
            ("-up", "a unary operator"),
            ("up + 1", "a binary operator"),
            ("up[5m:1m]", "a subquery"),
            ("42", "a number literal"),
            (r#""up""#, "a string literal"),
        ] {
            match parse_series_selector(text) {
                Err(e @ Error::NotSeriesSelector { .. }) => {
                    assert_eq!(
                        e.to_string(),
                        format!("match[] must be a series selector, got {text:?}: {reason}")
                    );
                    assert!(e.is_bad_input());
                }
                other => panic!("{text}: {other:?}"),
            }
        }
    }

    #[test]
    fn malformed_selectors_are_refused() {
        for (text, needle) in [
            ("", "no expression found"),
            ("   ", "no expression found"),
            ("up{", "unexpected end of input"),
            ("up{job}", "expected label matching operator after 'job'"),
            ("up{job=api}", "expected string"),
            (r#"up{job="api"#, "unterminated quoted string"),
            (r#"up{job="a\qb"}"#, "unknown escape sequence"),
            (r#"{job=""}"#, "at least one non-empty matcher"),
            (r#"{job=~".*"}"#, "at least one non-empty matcher"),
            ("{}", "at least one non-empty matcher"),
            (r#"up{__name__="cpu"}"#, "metric name must not be set twice"),
            (r#"{job=~"("}"#, "illegal regex"),
        ] {
            match parse_series_selector(text) {
                Err(Error::NotSeriesSelector { selector, reason }) => {
                    assert_eq!(selector, text);
                    assert!(
                        reason.contains(needle),
                        "{text:?}: {needle:?} not in {reason:?}"
                    );
                }
                other => panic!("{text:?}: {other:?}"),
            }
        }
        assert!(matches!(
            parse_series_selector(r#"up{a="1" or b="2"}"#),
            Err(Error::Unsupported(_))
        ));
    }

    proptest::proptest! {
        #[test]
        fn series_selectors_never_panic(text in "\\PC{0,40}") {
            let _ = parse_series_selector(&text);
        }

        #[test]
        fn selector_like_input_never_panics(
            text in r#"[a-z_:]{0,4}(\{([a-z"'`\\=!~,. ]|\\[xuU0-7]){0,20}\}?)?"#
        ) {
            let _ = parse_series_selector(&text);
        }
    }
}
