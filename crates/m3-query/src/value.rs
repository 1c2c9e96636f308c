//! What expressions evaluate to, and what a query answers.
//!
//! Evaluation works on every step of a query at once, as Prometheus' engine does: an
//! instant-vector expression yields a list of `StepSeries`, each with one optional value
//! per step (an instant query is a range query of one step). Series stay whole across steps,
//! so the work that depends only on labels (grouping keys, match signatures, dropped names)
//! is done once per series, not once per point.
//!
//! [`QueryValue`] is the answer, serialised exactly as the `data` member of Prometheus' API:
//! `scalar` and `string` as `[t, "v"]`, `vector` and `matrix` as lists of
//! `{"metric": …, "value"/"values": …}`.

use m3_storage::Point;
use m3_storage::result::Seconds;
use serde::ser::{Serialize, SerializeStruct, SerializeTuple, Serializer};

use crate::labels::LabelSet;

/// One series of an instant-vector expression, over every step of the query.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct StepSeries {
    pub(crate) labels: LabelSet,
    /// One entry per step: `None` where the series has no value at that step.
    pub(crate) values: Vec<Option<f64>>,
}

/// A series with its raw points, the argument of a range-vector function.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RangeSeries {
    pub(crate) labels: LabelSet,
    /// `(ms, value)`, oldest first, without staleness markers.
    pub(crate) points: Vec<(i64, f64)>,
}

/// A range vector: series with their points, and for each step the window
/// `[end - range, end]` that a function reads.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RangeVector {
    pub(crate) series: Vec<RangeSeries>,
    pub(crate) range_ms: i64,
    /// The end of each step's window.
    pub(crate) window_ends: Vec<i64>,
}

/// The value of an expression over all steps.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    /// One number per step.
    Scalar(Vec<f64>),
    /// An instant vector.
    Vector(Vec<StepSeries>),
    /// A range vector (a matrix selector or a subquery), only ever a function's argument or an
    /// instant query's answer.
    Range(RangeVector),
    /// A string literal.
    String(String),
}

impl Value {
    /// How many samples or per-step slots the value holds, as the query's budget counts them.
    pub(crate) fn slots(&self) -> usize {
        match self {
            Value::Scalar(v) => v.len(),
            Value::Vector(series) => series.iter().map(|s| s.values.len()).sum(),
            Value::Range(r) => {
                r.series.iter().map(|s| s.points.len()).sum::<usize>() + r.window_ends.len()
            }
            Value::String(_) => 0,
        }
    }

    /// The PromQL type name, for error messages.
    pub(crate) fn type_name(&self) -> &'static str {
        match self {
            Value::Scalar(_) => "scalar",
            Value::Vector(_) => "instant vector",
            Value::Range(_) => "range vector",
            Value::String(_) => "string",
        }
    }
}

/// One element of an instant vector answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The series' labels.
    pub labels: LabelSet,
    /// The evaluation time, Unix milliseconds.
    pub timestamp_ms: i64,
    /// The value.
    pub value: f64,
}

/// One series of a matrix answer.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesPoints {
    /// The series' labels.
    pub labels: LabelSet,
    /// `(ms, value)`, oldest first.
    pub points: Vec<(i64, f64)>,
}

/// The answer to a query, Prometheus' `data` object.
#[derive(Debug, Clone, PartialEq)]
pub enum QueryValue {
    /// A number at the evaluation time.
    Scalar {
        /// Unix milliseconds.
        timestamp_ms: i64,
        /// The number.
        value: f64,
    },
    /// A string at the evaluation time.
    String {
        /// Unix milliseconds.
        timestamp_ms: i64,
        /// The string.
        value: String,
    },
    /// An instant vector.
    Vector(Vec<Sample>),
    /// A range vector, or a range query's answer.
    Matrix(Vec<SeriesPoints>),
}

impl QueryValue {
    /// Prometheus' `resultType`.
    pub fn result_type(&self) -> &'static str {
        match self {
            QueryValue::Scalar { .. } => "scalar",
            QueryValue::String { .. } => "string",
            QueryValue::Vector(_) => "vector",
            QueryValue::Matrix(_) => "matrix",
        }
    }
}

impl Serialize for QueryValue {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("QueryValue", 2)?;
        s.serialize_field("resultType", self.result_type())?;
        match self {
            QueryValue::Scalar {
                timestamp_ms,
                value,
            } => s.serialize_field("result", &Point(*timestamp_ms, *value))?,
            QueryValue::String {
                timestamp_ms,
                value,
            } => s.serialize_field("result", &StringPoint(*timestamp_ms, value))?,
            QueryValue::Vector(v) => s.serialize_field("result", v)?,
            QueryValue::Matrix(m) => s.serialize_field("result", m)?,
        }
        s.end()
    }
}

struct StringPoint<'a>(i64, &'a str);

impl Serialize for StringPoint<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut t = serializer.serialize_tuple(2)?;
        t.serialize_element(&Seconds(self.0))?;
        t.serialize_element(self.1)?;
        t.end()
    }
}

impl Serialize for Sample {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("Sample", 2)?;
        s.serialize_field("metric", &self.labels)?;
        s.serialize_field("value", &Point(self.timestamp_ms, self.value))?;
        s.end()
    }
}

impl Serialize for SeriesPoints {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("SeriesPoints", 2)?;
        s.serialize_field("metric", &self.labels)?;
        let points: Vec<Point> = self.points.iter().map(|&(t, v)| Point(t, v)).collect();
        s.serialize_field("values", &points)?;
        s.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serialises_as_prometheus_does() {
        let json = |v: &QueryValue| serde_json::to_string(v).unwrap_or_default();
        assert_eq!(
            json(&QueryValue::Scalar {
                timestamp_ms: 1_500,
                value: 2.0
            }),
            r#"{"resultType":"scalar","result":[1.5,"2"]}"#
        );
        assert_eq!(
            json(&QueryValue::String {
                timestamp_ms: 1_000,
                value: "a".into()
            }),
            r#"{"resultType":"string","result":[1,"a"]}"#
        );
        assert_eq!(
            json(&QueryValue::Vector(vec![Sample {
                labels: LabelSet::empty(),
                timestamp_ms: 0,
                value: f64::NAN
            }])),
            r#"{"resultType":"vector","result":[{"metric":{},"value":[0,"NaN"]}]}"#
        );
    }
}
