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
///
/// The names and values sit back to back in one string, with the end of each in a second
/// allocation: building one costs two allocations however many labels it has, hashing it is
/// two contiguous writes, and a million of them cost their text, not forty `String`s each.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Labels {
    /// Names and values back to back, in name order.
    text: Box<str>,
    /// Per label, where its name ends and where its value ends in `text`.
    ends: Box<[(u32, u32)]>,
}

impl Labels {
    /// Builds a label set from name/value pairs in any order.
    ///
    /// Pairs with an empty value are dropped.
    ///
    /// # Errors
    ///
    /// [`LabelsError`] when a name is empty, a name repeats, the labels hold more than 4 GiB,
    /// or nothing is left.
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
        N: AsRef<str>,
        V: AsRef<str>,
    {
        let mut kept: Vec<(N, V)> = Vec::new();
        for (name, value) in pairs {
            if name.as_ref().is_empty() {
                return Err(LabelsError::EmptyName {
                    value: value.as_ref().to_owned(),
                });
            }
            if !value.as_ref().is_empty() {
                kept.push((name, value));
            }
        }
        kept.sort_unstable_by(|a, b| a.0.as_ref().cmp(b.0.as_ref()));
        if let Some(w) = kept.windows(2).find(|w| w[0].0.as_ref() == w[1].0.as_ref()) {
            return Err(LabelsError::DuplicateName(w[0].0.as_ref().to_owned()));
        }
        if kept.is_empty() {
            return Err(LabelsError::Empty);
        }
        Labels::from_sorted(kept.iter().map(|(n, v)| (n.as_ref(), v.as_ref())))
    }

    /// Labels from pairs already sorted by name, distinct, with no empty value.
    fn from_sorted<'a>(
        pairs: impl Iterator<Item = (&'a str, &'a str)> + Clone,
    ) -> Result<Labels, LabelsError> {
        let len: usize = pairs.clone().map(|(n, v)| n.len() + v.len()).sum();
        let mut text = String::with_capacity(len);
        let mut ends = Vec::with_capacity(pairs.clone().count());
        for (name, value) in pairs {
            text.push_str(name);
            let name_end = u32::try_from(text.len());
            text.push_str(value);
            match (name_end, u32::try_from(text.len())) {
                (Ok(name_end), Ok(value_end)) => ends.push((name_end, value_end)),
                _ => return Err(LabelsError::TooLong(name.to_owned())),
            }
        }
        Ok(Labels {
            text: text.into_boxed_str(),
            ends: ends.into_boxed_slice(),
        })
    }

    /// Label `i`: its name and value.
    fn pair(&self, i: usize) -> (&str, &str) {
        let start = match i.checked_sub(1) {
            Some(previous) => self.ends[previous].1 as usize,
            None => 0,
        };
        let (name_end, value_end) = self.ends[i];
        (
            self.text.get(start..name_end as usize).unwrap_or_default(),
            self.text
                .get(name_end as usize..value_end as usize)
                .unwrap_or_default(),
        )
    }

    /// The value of label `name`, if present.
    pub fn get(&self, name: &str) -> Option<&str> {
        let (mut low, mut high) = (0, self.ends.len());
        while low < high {
            let middle = (low + high) / 2;
            let (n, v) = self.pair(middle);
            match n.cmp(name) {
                std::cmp::Ordering::Less => low = middle + 1,
                std::cmp::Ordering::Greater => high = middle,
                std::cmp::Ordering::Equal => return Some(v),
            }
        }
        None
    }

    /// The value of `__name__`, if present.
    pub fn metric_name(&self) -> Option<&str> {
        self.get(METRIC_NAME_LABEL)
    }

    /// The pairs, sorted by name.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &str)> + Clone {
        (0..self.ends.len()).map(|i| self.pair(i))
    }

    /// The number of labels (never zero).
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Always `false`: a label set has at least one label. Present for API symmetry.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Heap bytes held.
    pub fn heap_bytes(&self) -> usize {
        self.text.len() + self.ends.len() * std::mem::size_of::<(u32, u32)>()
    }

    /// Labels from pairs taken out of another `Labels` in order (sorted by name, distinct,
    /// no empty values), without sorting or checking them again.
    pub(crate) fn from_valid_pairs<'a>(
        pairs: impl Iterator<Item = (&'a str, &'a str)> + Clone,
    ) -> Labels {
        Labels::from_sorted(pairs).unwrap_or_else(|_| Labels {
            text: Box::default(),
            ends: Box::default(),
        })
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
        for (i, (n, v)) in self.iter().enumerate() {
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

impl Ord for Labels {
    /// Label by label: names, then values, as a list of pairs sorts.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.iter().cmp(other.iter())
    }
}

impl PartialOrd for Labels {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
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
        let mut map = serializer.serialize_map(Some(self.len()))?;
        for (n, v) in self.iter() {
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
        assert_eq!(l.iter().collect::<Vec<_>>(), vec![("a", "1"), ("b", "2")]);
        assert_eq!(l.get("a"), Some("1"));
        assert_eq!(l.get("b"), Some("2"));
        assert_eq!(l.get("c"), None);
    }

    #[test]
    fn order_is_label_by_label() {
        let l = |pairs: &[(&str, &str)]| Labels::new(pairs.iter().copied()).unwrap();
        let mut sets = [
            l(&[("b", "1")]),
            l(&[("a", "2")]),
            l(&[("a", "1"), ("b", "1")]),
            l(&[("a", "1")]),
            l(&[("ab", "0")]),
        ];
        sets.sort();
        let shown: Vec<String> = sets.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                r#"{a="1"}"#,
                r#"{a="1", b="1"}"#,
                r#"{a="2"}"#,
                r#"{ab="0"}"#,
                r#"{b="1"}"#
            ]
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
