//! A label set packed into one allocation, as the head keeps it for each series.
//!
//! A [`Labels`] holds every name and value in its own `String`: twenty allocations for ten
//! labels, and comparing it with a written series' labels follows twenty pointers into cold
//! memory. With a million series that comparison, done for every sample written, is most of the
//! cost of a write. [`PackedLabels`] keeps the pairs back to back in one reference-counted slice:
//!
//! ```text
//! label count: varint | (name length: varint, value length: varint)… | names and values back to back
//! ```
//!
//! sorted by name.
//!
//! The lengths come first and the text after them, as a [`LabelsView`] holds it (names and
//! values back to back), so comparing with a written series' labels is a loop over a few
//! one-byte lengths and one comparison of the text, and a series costs its labels' bytes, a
//! byte or two per string and the slice's 16-byte reference count, instead of a `String`
//! header and an allocation each. The count lets the heads of one store share a label set
//! ([`LabelSets`](crate::tsdb::label_sets::LabelSets)): a series in three namespaces pays for
//! its labels once.

use std::sync::Arc;

use crate::labels::{Labels, LabelsView};
use crate::tsdb::varint;

/// A label set in one allocation. See the [module docs](self).
///
/// The allocation is reference-counted so that the heads of one store can hold the same label
/// set once ([`LabelSets`](crate::tsdb::label_sets::LabelSets)); cloning shares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackedLabels(Arc<[u8]>);

fn put_varint(out: &mut Vec<u8>, n: usize) {
    varint::put(out, n as u64);
}

/// Reads one varint off the front of `bytes`.
fn take_varint(bytes: &mut &[u8]) -> Option<usize> {
    varint::take(bytes).and_then(|n| usize::try_from(n).ok())
}

impl PackedLabels {
    /// Packs `labels`.
    pub fn new(labels: LabelsView<'_>) -> PackedLabels {
        let text = labels.text();
        let mut out = Vec::with_capacity(text.len() + 2 * labels.len() + 2);
        put_varint(&mut out, labels.len());
        for (name, value) in labels.iter() {
            put_varint(&mut out, name.len());
            put_varint(&mut out, value.len());
        }
        out.extend_from_slice(text.as_bytes());
        PackedLabels(out.into())
    }

    /// Labels packed before, as [`shared`](Self::shared) gave them.
    pub(crate) fn from_shared(bytes: Arc<[u8]>) -> PackedLabels {
        PackedLabels(bytes)
    }

    /// The packed bytes, shared with every clone.
    pub(crate) fn shared(&self) -> &Arc<[u8]> {
        &self.0
    }

    /// The pairs, in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> + Clone {
        let mut lengths: &[u8] = &self.0;
        let mut remaining = take_varint(&mut lengths).unwrap_or(0);
        let mut text = lengths;
        for _ in 0..2 * remaining {
            if take_varint(&mut text).is_none() {
                remaining = 0;
            }
        }
        std::iter::from_fn(move || {
            remaining = remaining.checked_sub(1)?;
            let name_len = take_varint(&mut lengths)?;
            let value_len = take_varint(&mut lengths)?;
            let name = text.get(..name_len)?;
            let value = text.get(name_len..name_len.checked_add(value_len)?)?;
            text = &text[name_len + value_len..];
            // Packed from `str`s: always UTF-8.
            Some((
                std::str::from_utf8(name).unwrap_or_default(),
                std::str::from_utf8(value).unwrap_or_default(),
            ))
        })
    }

    /// The value of label `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
    }

    /// Whether these are exactly `labels`: the same lengths, then the same text.
    pub fn matches(&self, labels: LabelsView<'_>) -> bool {
        let mut rest: &[u8] = &self.0;
        if take_varint(&mut rest) != Some(labels.len()) {
            return false;
        }
        let mut previous_end = 0usize;
        for &(name_end, value_end) in labels.ends() {
            let (name_end, value_end) = (name_end as usize, value_end as usize);
            if take_varint(&mut rest) != Some(name_end.wrapping_sub(previous_end))
                || take_varint(&mut rest) != Some(value_end.wrapping_sub(name_end))
            {
                return false;
            }
            previous_end = value_end;
        }
        rest == labels.text().as_bytes()
    }

    /// The labels as a [`Labels`] again.
    pub fn unpack(&self) -> Labels {
        // Packed from a valid `Labels`: already sorted, distinct and non-empty.
        Labels::from_valid_pairs(self.iter())
    }

    /// Heap bytes held, shared equally among the holders of the same bytes.
    pub fn heap_bytes(&self) -> usize {
        (self.0.len() + 2 * std::mem::size_of::<usize>()) / Arc::strong_count(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn packs_compares_and_unpacks_as_the_labels_it_came_from(
            pairs in proptest::collection::btree_map("[a-z_]{1,12}", "\\PC{1,300}", 1..12),
            other in proptest::collection::btree_map("[a-z_]{1,12}", "\\PC{1,300}", 1..12),
        ) {
            let labels = Labels::new(pairs.clone()).unwrap();
            let packed = PackedLabels::new(labels.view());
            prop_assert!(packed.matches(labels.view()));
            prop_assert_eq!(packed.unpack(), labels.clone());
            for (name, value) in &pairs {
                prop_assert_eq!(packed.get(name), Some(value.as_str()));
            }
            prop_assert_eq!(packed.get("NOT-A-NAME"), None);
            let other = Labels::new(other).unwrap();
            prop_assert_eq!(packed.matches(other.view()), other == labels);
        }
    }

    #[test]
    fn a_prefix_or_an_extra_label_is_not_a_match() {
        let ab = Labels::new([("a", "1"), ("b", "2")]).unwrap();
        let a = Labels::new([("a", "1")]).unwrap();
        assert!(!PackedLabels::new(ab.view()).matches(a.view()));
        assert!(!PackedLabels::new(a.view()).matches(ab.view()));
        let long = "x".repeat(70_000);
        let big = Labels::new([("a", long.as_str())]).unwrap();
        let packed = PackedLabels::new(big.view());
        assert!(packed.matches(big.view()));
        assert_eq!(packed.get("a").map(str::len), Some(70_000));
    }

    /// The same text cut at other places is another label set.
    #[test]
    fn the_same_text_with_other_boundaries_is_not_a_match() {
        let a = Labels::new([("a", "bc")]).unwrap();
        let ab = Labels::new([("ab", "c")]).unwrap();
        assert!(!PackedLabels::new(a.view()).matches(ab.view()));
        assert!(!PackedLabels::new(ab.view()).matches(a.view()));
        let two = Labels::new([("a", "b"), ("c", "d")]).unwrap();
        let one = Labels::new([("a", "bc"), ("d", "d")]).unwrap();
        assert!(!PackedLabels::new(two.view()).matches(one.view()));
    }
}
