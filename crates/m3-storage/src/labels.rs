//! Label sets: the identity of a series.
//!
//! A series is named by its labels, Prometheus style: `{__name__="http_requests_total",
//! job="api"}`. [`Labels`] keeps the pairs sorted by name with no duplicate names and no empty
//! values, so two label sets that mean the same series compare and hash equal whatever order the
//! client sent them in. An empty value is dropped on construction because Prometheus treats
//! `foo=""` and "no label `foo`" as the same thing.
//!
//! # Size
//!
//! A label set's size is measured as its length-prefixed encoding ([`Labels::encoded_len`]):
//!
//! ```text
//! count: u32 | ( name_len: u32 | name bytes | value_len: u32 | value bytes ) * count
//! ```

use std::fmt;

use serde::ser::{Serialize, SerializeMap, Serializer};

/// The label that carries the metric name.
pub const METRIC_NAME_LABEL: &str = "__name__";

/// The most bytes a series' labels may take once encoded ([`Labels::encoded_len`]); a bound on
/// what one series costs in the index and in every log and block record naming it. A writer
/// checks it per series before writing a batch, so one such series is refused alone instead of
/// failing the whole batch.
pub const MAX_ENCODED_LABELS_BYTES: usize = 60 * 1024;

/// Why a list of pairs is not a valid label set.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LabelsError {
    /// No label had a non-empty value.
    #[error("a series needs at least one label with a non-empty value")]
    Empty,
    /// A label with an empty name.
    #[error("label name is empty (value {value:?})")]
    EmptyName {
        /// The value the nameless label carried.
        value: String,
    },
    /// The same name twice.
    #[error("duplicate label name {0:?}")]
    DuplicateName(String),
    /// A name or value longer than the on-disk format allows (4 GiB).
    #[error("label {0:?} is too long")]
    TooLong(String),
    /// The labels together are longer than a key of the engine may be.
    #[error("the labels of series {name:?} take {size} bytes; a series may take at most {max}")]
    SeriesTooLong {
        /// The series' `__name__` (or empty).
        name: String,
        /// Encoded size.
        size: usize,
        /// The limit.
        max: usize,
    },
}

/// A validated, sorted label set. See the [module docs](self).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Labels(Vec<(String, String)>);

impl Labels {
    /// Builds a label set from name/value pairs in any order.
    ///
    /// Pairs with an empty value are dropped.
    ///
    /// # Errors
    ///
    /// [`LabelsError`] when a name is empty, a name repeats, or nothing is left.
    ///
    /// # Examples
    ///
    /// ```
    /// use m3_storage::Labels;
    ///
    /// let l = Labels::new([("job", "api"), ("__name__", "up"), ("zone", "")]).unwrap();
    /// assert_eq!(l.metric_name(), Some("up"));
    /// assert_eq!(l.get("zone"), None);
    /// assert_eq!(l.to_string(), r#"{__name__="up", job="api"}"#);
    /// ```
    pub fn new<I, N, V>(pairs: I) -> Result<Self, LabelsError>
    where
        I: IntoIterator<Item = (N, V)>,
        N: Into<String>,
        V: Into<String>,
    {
        let mut out: Vec<(String, String)> = Vec::new();
        for (name, value) in pairs {
            let (name, value) = (name.into(), value.into());
            if name.is_empty() {
                return Err(LabelsError::EmptyName { value });
            }
            if u32::try_from(name.len()).is_err() || u32::try_from(value.len()).is_err() {
                return Err(LabelsError::TooLong(name));
            }
            if !value.is_empty() {
                out.push((name, value));
            }
        }
        out.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        if let Some(w) = out.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(LabelsError::DuplicateName(w[0].0.clone()));
        }
        if out.is_empty() {
            return Err(LabelsError::Empty);
        }
        Ok(Labels(out))
    }

    /// The value of label `name`, if present.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .binary_search_by(|(n, _)| n.as_str().cmp(name))
            .ok()
            .map(|i| self.0[i].1.as_str())
    }

    /// The value of `__name__`, if present.
    pub fn metric_name(&self) -> Option<&str> {
        self.get(METRIC_NAME_LABEL)
    }

    /// The pairs, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    /// The number of labels (never zero).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Always `false`: a label set has at least one label. Present for API symmetry.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The pairs, sorted by name.
    pub fn as_slice(&self) -> &[(String, String)] {
        &self.0
    }

    /// Labels from pairs taken out of another `Labels` in order (sorted by name, distinct,
    /// no empty values), without checking them again.
    pub(crate) fn from_valid_pairs(pairs: Vec<(String, String)>) -> Labels {
        debug_assert!(pairs.windows(2).all(|w| w[0].0 < w[1].0));
        Labels(pairs)
    }

    /// How many bytes the encoding of labels with these (name, value) byte lengths takes,
    /// to compare with [`MAX_ENCODED_LABELS_BYTES`] before building the labels.
    pub fn encoded_len(lengths: impl IntoIterator<Item = (usize, usize)>) -> usize {
        lengths.into_iter().fold(4, |total, (name, value)| {
            total + Labels::encoded_label_len(name, value)
        })
    }

    /// What one label with these name and value byte lengths adds to
    /// [`encoded_len`](Self::encoded_len).
    pub const fn encoded_label_len(name: usize, value: usize) -> usize {
        8 + name + value
    }
}

impl fmt::Display for Labels {
    /// Prometheus' text form: `{a="1", b="2"}` with Go-style escapes in values.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("{")?;
        for (i, (n, v)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{n}=\"")?;
            for c in v.chars() {
                match c {
                    '"' => f.write_str("\\\"")?,
                    '\\' => f.write_str("\\\\")?,
                    '\n' => f.write_str("\\n")?,
                    c => write!(f, "{c}")?,
                }
            }
            f.write_str("\"")?;
        }
        f.write_str("}")
    }
}

impl fmt::Debug for Labels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for Labels {
    /// A JSON object `{"name": "value", ...}`, the `metric` field of Prometheus' API.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (n, v) in &self.0 {
            map.serialize_entry(n, v)?;
        }
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorts_and_drops_empty_values() {
        let l = Labels::new([("b", "2"), ("a", "1"), ("c", "")]).unwrap();
        assert_eq!(
            l.as_slice(),
            &[("a".into(), "1".into()), ("b".into(), "2".into())]
        );
    }

    #[test]
    fn rejects_bad_sets() {
        assert_eq!(
            Labels::new([("a", "1"), ("a", "2")]),
            Err(LabelsError::DuplicateName("a".into()))
        );
        assert_eq!(Labels::new([("a", "")]), Err(LabelsError::Empty));
        assert!(matches!(
            Labels::new([("", "x")]),
            Err(LabelsError::EmptyName { .. })
        ));
        assert_eq!(
            Labels::new(Vec::<(String, String)>::new()),
            Err(LabelsError::Empty)
        );
    }

    #[test]
    fn display_escapes_values() {
        let l = Labels::new([("a", "x\"y\\z\n")]).unwrap();
        assert_eq!(l.to_string(), r#"{a="x\"y\\z\n"}"#);
    }
}
