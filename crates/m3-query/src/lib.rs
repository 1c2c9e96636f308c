//! PromQL over what m3-rs stores.
//!
//! [`Engine`] evaluates instant and range queries against a [`SeriesSource`] (for the
//! embedded store, [`NamespaceSource`]: one namespace), with Prometheus 2.x's semantics:
//! the lookback of instant selectors and staleness markers, `offset` and `@`, subqueries,
//! every aggregation operator, binary operators with vector matching, and Prometheus'
//! functions. Results are [`QueryValue`]s, serialised exactly as Prometheus' HTTP API writes
//! its `data` member.
//!
//! | module | what it holds |
//! |---|---|
//! | [`engine`] | the entry points, parsing, the answer's shape |
//! | `eval` | the evaluator: selectors, subqueries, limits, one node at a time over all steps |
//! | `functions`, `aggregate`, `binary` | the three kinds of operation |
//! | `reach` | how far back a query reads, for the choice of namespace |
//! | `stats` | numeric kernels computed in Prometheus' order of operations |
//! | [`labels`], [`value`] | label sets and values as evaluation shapes them |
//! | [`source`] | where series come from |
//! | [`series_selector`] | the `match[]` parameter of the metadata endpoints |
//! | [`error`] | failures in Prometheus' error classes |

#![warn(missing_docs, unreachable_pub)]

mod aggregate;
mod binary;
pub mod engine;
pub mod error;
mod eval;
mod functions;
pub mod labels;
mod reach;
pub mod series_selector;
pub mod source;
mod stats;
pub mod value;

pub use engine::{
    DEFAULT_LOOKBACK, Engine, MAX_POINTS_PER_SERIES, format_query, parse, validate_query,
};
pub use error::QueryError;
pub use eval::{Limits, STALE_NAN_BITS, is_stale_marker};
pub use labels::LabelSet;
pub use series_selector::parse_series_selector;
pub use source::{NamespaceSource, SeriesSource};
pub use value::{QueryValue, Sample, SeriesPoints};
