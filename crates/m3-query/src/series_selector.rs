//! The `match[]` parameter of Prometheus' metadata endpoints (`/api/v1/series`,
//! `/api/v1/labels`, `/api/v1/label/{name}/values`): a plain series selector, read by the same
//! parser and turned into the same store matchers as a query's selectors, so a selector means
//! one thing wherever it is written.

use m3_storage::Matcher;
use promql_parser::parser::Expr;

use crate::engine::parse_guarded;
use crate::error::{QueryError, Result};
use crate::eval::matchers;

/// Parses a series selector such as `up`, `up{job="api"}` or
/// `{__name__=~"http_.*", code!="200"}` into store matchers: the metric name first (as a
/// `__name__` equality), then the label matchers in the order written. PromQL's own rules
/// apply: a selector without a metric name needs a matcher that rejects the empty value.
///
/// # Errors
///
/// [`QueryError::BadData`] when `text` does not parse or is anything but a plain vector
/// selector (a range, an `offset` or `@`, parentheses, a function, an operator, a literal),
/// or holds a regex the store refuses.
///
/// # Examples
///
/// ```
/// use m3_query::parse_series_selector;
///
/// let matchers = parse_series_selector(r#"up{job=~"api|web"}"#).unwrap();
/// let text: Vec<String> = matchers.iter().map(ToString::to_string).collect();
/// assert_eq!(text, [r#"__name__="up""#, r#"job=~"api|web""#]);
///
/// let err = parse_series_selector("rate(up[5m])").unwrap_err();
/// assert_eq!(
///     err.to_string(),
///     r#"match[] must be a series selector, got "rate(up[5m])": a function call (rate)"#
/// );
/// ```
pub fn parse_series_selector(text: &str) -> Result<Vec<Matcher>> {
    let not_selector = |reason: String| {
        QueryError::BadData(format!(
            "match[] must be a series selector, got {text:?}: {reason}"
        ))
    };
    // A selector's brackets never nest: anything nested deeper than the simplest mistakes
    // (`rate(up[5m])`) is refused before the parser builds a tree on the caller's (async,
    // small-stacked) thread.
    let parsed = parse_guarded(text, 2).map_err(not_selector)?;
    let what = match &parsed {
        Expr::VectorSelector(vs) if vs.offset.is_some() => "an offset modifier".to_string(),
        Expr::VectorSelector(vs) if vs.at.is_some() => "an @ modifier".to_string(),
        Expr::VectorSelector(vs) => return matchers(vs),
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
