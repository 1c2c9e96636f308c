//! How far back in time a query reads: what the coordinator weighs against each namespace's
//! retention when no header names the namespace.
//!
//! A query evaluated from `start` reads before `start`: an instant selector by the lookback,
//! a range selector by its range, `offset` by its amount, a subquery by its range and offset
//! on top of whatever its inner expression reads; `@` pins a selector or subquery to a time
//! of its own. `rate(x[7d])` asked at "now" reads seven days back, so a two-day raw namespace
//! cannot answer it.

use promql_parser::parser::{AtModifier, Expr};

use crate::engine::children;
use crate::eval::{At, duration_ms, offset_ms};

/// The earliest sample time `expr` reads when evaluated from `start_ms` to `end_ms`, with
/// instant selectors looking back `lookback_ms`; `None` when it reads no series.
pub(crate) fn earliest_read(
    expr: &Expr,
    start_ms: i64,
    end_ms: i64,
    lookback_ms: i64,
) -> Option<i64> {
    let pinned_time = |at: &AtModifier| At::from(at).time(start_ms, end_ms);
    let mut earliest: Option<i64> = None;
    // (expression, the time its evaluation starts at, set by an enclosing `@` or subquery).
    let mut stack = vec![(expr, start_ms)];
    while let Some((e, from)) = stack.pop() {
        let mut read = |reach_back: i64, at: Option<&AtModifier>, offset: i64| {
            let base = at.map_or(from, pinned_time);
            let t = base.saturating_sub(offset).saturating_sub(reach_back);
            earliest = Some(earliest.map_or(t, |e| e.min(t)));
        };
        match e {
            Expr::VectorSelector(vs) => {
                read(lookback_ms, vs.at.as_ref(), offset_ms(vs.offset.as_ref()));
            }
            Expr::MatrixSelector(ms) => read(
                duration_ms(ms.range),
                ms.vs.at.as_ref(),
                offset_ms(ms.vs.offset.as_ref()),
            ),
            Expr::Subquery(sq) => {
                let base = sq.at.as_ref().map_or(from, pinned_time);
                let inner_from = base
                    .saturating_sub(offset_ms(sq.offset.as_ref()))
                    .saturating_sub(duration_ms(sq.range));
                stack.push((&sq.expr, inner_from));
            }
            other => stack.extend(children(other).map(|child| (child, from))),
        }
    }
    earliest
}
