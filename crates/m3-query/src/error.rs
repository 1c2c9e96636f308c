//! Why a query failed, in the classes Prometheus' HTTP API answers with.
//!
//! Prometheus tells a client whether to fix the query (`bad_data`, 400), whether the query was
//! valid but could not be computed (`execution`, 422: two series collide after a function drops
//! their names, a limit is reached), or whether it ran out of time (`timeout`, 503). Each
//! variant here maps to one of those classes through [`QueryError::error_type`], so the HTTP
//! layer decides nothing itself.

use thiserror::Error;

/// A query that could not be answered.
#[derive(Debug, Error)]
pub enum QueryError {
    /// The query does not parse, or a parameter is out of range: the client must change it.
    #[error("{0}")]
    BadData(String),
    /// The query is valid but its evaluation failed on the data (Prometheus' `execution`).
    #[error("{0}")]
    Execution(String),
    /// The query would hold more samples in memory than allowed.
    #[error("query processing would load too many samples into memory in query execution")]
    TooManySamples {
        /// The configured limit.
        limit: usize,
    },
    /// The query would select more series than allowed.
    #[error("query would select more than {limit} series; narrow the selectors")]
    TooManySeries {
        /// The configured limit.
        limit: usize,
    },
    /// The query did not finish within its timeout.
    #[error("query timed out in {0}")]
    Timeout(&'static str),
    /// The store failed while reading.
    #[error(transparent)]
    Storage(#[from] m3_storage::Error),
}

impl QueryError {
    /// Prometheus' `errorType` for this error: `bad_data`, `execution`, `timeout` or
    /// `internal`.
    pub fn error_type(&self) -> &'static str {
        match self {
            QueryError::BadData(_) => "bad_data",
            QueryError::Execution(_)
            | QueryError::TooManySamples { .. }
            | QueryError::TooManySeries { .. } => "execution",
            QueryError::Timeout(_) => "timeout",
            QueryError::Storage(e) if e.is_bad_input() => "bad_data",
            QueryError::Storage(_) => "internal",
        }
    }

    /// The HTTP status Prometheus answers this error with.
    pub fn http_status(&self) -> u16 {
        match self.error_type() {
            "bad_data" => 400,
            "execution" => 422,
            "timeout" => 503,
            _ => 500,
        }
    }
}

/// The result of a query step.
pub type Result<T, E = QueryError> = std::result::Result<T, E>;
