//! Label sets as PromQL evaluation shapes them.
//!
//! The store's [`m3_storage::Labels`] is built for millions of stored series: validated,
//! packed, never empty. A query's intermediate series are few and are reshaped at every step
//! (`by` keeps some labels, arithmetic drops the metric name, `label_replace` sets one, an
//! aggregation without grouping has none at all), so here a label set is a plain vector of
//! name/value pairs kept sorted by name, and it may be empty.

use std::collections::HashMap;
use std::fmt;

use serde::ser::{Serialize, SerializeMap, Serializer};

/// The metric name label.
pub const METRIC_NAME: &str = "__name__";

/// Name/value pairs sorted by name, names distinct, no empty value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LabelSet(Vec<(String, String)>);

impl LabelSet {
    /// The empty label set (`{}`).
    pub fn empty() -> LabelSet {
        LabelSet(Vec::new())
    }

    /// A label set from pairs in any order; empty values are dropped, a repeated name keeps
    /// its last value.
    pub fn from_pairs<N: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (N, V)>,
    ) -> LabelSet {
        let mut set = LabelSet::empty();
        for (name, value) in pairs {
            set.set(&name.into(), value.into());
        }
        set
    }

    /// The store's label set.
    pub fn from_stored(labels: &m3_storage::Labels) -> LabelSet {
        // Already sorted, distinct and without empty values.
        LabelSet(
            labels
                .iter()
                .map(|(n, v)| (n.to_owned(), v.to_owned()))
                .collect(),
        )
    }

    /// The value of `name`, if set.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.position(name).ok().map(|i| self.0[i].1.as_str())
    }

    /// Sets `name` to `value`; an empty value removes the label.
    pub fn set(&mut self, name: &str, value: String) {
        match (self.position(name), value.is_empty()) {
            (Ok(i), true) => {
                self.0.remove(i);
            }
            (Ok(i), false) => self.0[i].1 = value,
            (Err(_), true) => {}
            (Err(i), false) => self.0.insert(i, (name.to_owned(), value)),
        }
    }

    /// Removes `name`.
    pub fn remove(&mut self, name: &str) {
        if let Ok(i) = self.position(name) {
            self.0.remove(i);
        }
    }

    /// The set without the metric name.
    pub fn without_metric_name(mut self) -> LabelSet {
        self.remove(METRIC_NAME);
        self
    }

    /// Keeps only the labels whose name is in `names`.
    pub fn keep_only(&mut self, names: &[String]) {
        self.0.retain(|(n, _)| names.iter().any(|k| k == n));
    }

    /// Removes every label whose name is in `names`.
    pub fn remove_all(&mut self, names: &[String]) {
        self.0.retain(|(n, _)| !names.iter().any(|k| k == n));
    }

    /// The pairs, in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    /// Number of labels.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are no labels.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn position(&self, name: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(n, _)| n.as_str().cmp(name))
    }
}

/// Numbers distinct label sets in the order they are first seen: the groups of an
/// aggregation, the series of a result being assembled. One hash per lookup; a label set is
/// cloned only the first time.
#[derive(Debug, Default)]
pub(crate) struct LabelIndex(HashMap<LabelSet, usize>);

impl LabelIndex {
    /// The number of `labels`, and whether it is new (its number is then the count of label
    /// sets seen before it).
    pub(crate) fn index_of(&mut self, labels: &LabelSet) -> (usize, bool) {
        if let Some(&index) = self.0.get(labels) {
            return (index, false);
        }
        let index = self.0.len();
        self.0.insert(labels.clone(), index);
        (index, true)
    }
}

impl fmt::Display for LabelSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("{")?;
        for (i, (n, v)) in self.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{n}={v:?}")?;
        }
        f.write_str("}")
    }
}

impl Serialize for LabelSet {
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
    fn set_keeps_order_and_empty_value_removes() {
        let mut l = LabelSet::from_pairs([("job", "api"), ("__name__", "up")]);
        l.set("instance", "a:1".into());
        let names: Vec<&str> = l.iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["__name__", "instance", "job"]);
        l.set("job", String::new());
        assert_eq!(l.get("job"), None);
        assert_eq!(l.without_metric_name().to_string(), r#"{instance="a:1"}"#);
        assert_eq!(
            serde_json::to_string(&LabelSet::empty()).unwrap_or_default(),
            "{}"
        );
    }
}
