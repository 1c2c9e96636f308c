//! A label set packed into one allocation, as the head keeps it for each series.
//!
//! A [`Labels`] holds every name and value in its own `String`: twenty allocations for ten
//! labels, and comparing it with a written series' labels follows twenty pointers into cold
//! memory. With a million series that comparison, done for every sample written, is most of the
//! cost of a write. [`PackedLabels`] keeps the pairs back to back in one reference-counted
//! slice, each name and value as the number the process's [`Symbols`] table gave it, or as its
//! text when it has none (a long value, a label with too many values to number, a full table):
//!
//! ```text
//! label count: varint | per label, name then value: reference varint [text]
//!   reference even: the symbol's number × 2      (a byte or two instead of the text)
//!   reference odd:  the text's length × 2 + 1, the text follows
//! ```
//!
//! sorted by name.
//!
//! Names and most values are shared by many series (`__name__`, `job`, a region), so a series
//! of ten labels packs into the text of the values that tell it apart (its pod, its instance)
//! and a few bytes for the rest, instead of some 230 bytes of text. The numbered text is few
//! strings read by every compare, so it stays in cache. The reference count lets the heads of
//! one store share a label set ([`LabelSets`](crate::tsdb::label_sets::LabelSets)): a series
//! in three namespaces pays for its labels once. The length is kept in the allocation, next to
//! the count ([`triomphe::ThinArc`]), so a holder keeps one pointer: every series of every head
//! holds one, and `Arc<[u8]>` would take 8 bytes more in each, for the same bytes on the heap.

use triomphe::ThinArc;

use crate::labels::{Labels, LabelsView};
use crate::tsdb::symbols::{SymbolId, Symbols};
use crate::tsdb::varint;

/// A label set in one allocation. See the [module docs](self).
///
/// The allocation is reference-counted so that the heads of one store can hold the same label
/// set once ([`LabelSets`](crate::tsdb::label_sets::LabelSets)); cloning shares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackedLabels(ThinArc<(), u8>);

fn put_varint(out: &mut Vec<u8>, n: usize) {
    varint::put(out, n as u64);
}

/// Reads one varint off the front of `bytes`.
fn take_varint(bytes: &mut &[u8]) -> Option<usize> {
    varint::take(bytes).and_then(|n| usize::try_from(n).ok())
}

/// Appends one name or value: its number when it has one, its text otherwise.
fn put_text(out: &mut Vec<u8>, text: &str, id: Option<SymbolId>) {
    match id {
        Some(id) => put_varint(out, 2 * id as usize),
        None => {
            put_varint(out, 2 * text.len() + 1);
            out.extend_from_slice(text.as_bytes());
        }
    }
}

/// One name or value as packed: its number, or its text.
enum Part<'a> {
    Numbered(SymbolId),
    Inline(&'a [u8]),
}

/// Reads one name or value off the front of `bytes`.
#[inline]
fn take_part<'a>(bytes: &mut &'a [u8]) -> Option<Part<'a>> {
    // Most references are one byte: a number below 64, or text shorter than 64 bytes.
    let reference = match bytes.split_first() {
        Some((&byte, rest)) if byte < 0x80 => {
            *bytes = rest;
            usize::from(byte)
        }
        _ => take_varint(bytes)?,
    };
    if reference % 2 == 0 {
        return SymbolId::try_from(reference / 2).ok().map(Part::Numbered);
    }
    let (text, rest) = bytes.split_at_checked(reference / 2)?;
    *bytes = rest;
    Some(Part::Inline(text))
}

/// Reads one name or value off the front of `bytes` as text.
fn take_text<'a>(bytes: &mut &'a [u8]) -> Option<&'a str> {
    match take_part(bytes)? {
        Part::Numbered(id) => Symbols::process().text(id),
        // Packed from `str`s: always UTF-8.
        Part::Inline(text) => std::str::from_utf8(text).ok(),
    }
}

/// Reads one name or value off the front of `bytes`, and whether it is `expected`: inline
/// text is compared byte by byte, without checking it is UTF-8.
fn take_text_equal(bytes: &mut &[u8], expected: &[u8], symbols: &Symbols) -> bool {
    match take_part(bytes) {
        Some(Part::Numbered(id)) => symbols
            .text(id)
            .is_some_and(|text| same_bytes(text.as_bytes(), expected)),
        Some(Part::Inline(text)) => same_bytes(text, expected),
        None => false,
    }
}

/// `a == b`, with strings of up to sixteen bytes (most names and values) compared as two
/// words each, in line: a compare reads twenty of them, and a call to `memcmp` for each was
/// the largest part of its cost.
#[inline]
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    if let (Some(a_first), Some(b_first), Some(a_last), Some(b_last)) = (
        a.first_chunk::<8>(),
        b.first_chunk::<8>(),
        a.last_chunk::<8>(),
        b.last_chunk::<8>(),
    ) {
        // Eight to sixteen bytes: the first and last eight cover them all.
        if a.len() <= 16 {
            return a_first == b_first && a_last == b_last;
        }
        return a == b;
    }
    if let (Some(a_first), Some(b_first), Some(a_last), Some(b_last)) = (
        a.first_chunk::<4>(),
        b.first_chunk::<4>(),
        a.last_chunk::<4>(),
        b.last_chunk::<4>(),
    ) {
        return a_first == b_first && a_last == b_last;
    }
    a.iter().zip(b).all(|(x, y)| x == y)
}

impl PackedLabels {
    /// Packs `labels`, numbering their names and values in the process's [`Symbols`].
    pub fn new(labels: LabelsView<'_>) -> PackedLabels {
        let mut out = Vec::with_capacity(4 * labels.len() + 2);
        put_varint(&mut out, labels.len());
        let mut numberer = Symbols::process().numberer();
        for (name, value) in labels.iter() {
            let (name_id, value_id) = numberer.number_label(name, value);
            put_text(&mut out, name, name_id);
            put_text(&mut out, value, value_id);
        }
        drop(numberer);
        PackedLabels(ThinArc::from_header_and_slice((), &out))
    }

    /// The packed bytes, shared with every clone.
    fn bytes(&self) -> &[u8] {
        &self.0.slice
    }

    /// How many hold these bytes (this one included).
    pub(crate) fn holders(&self) -> usize {
        ThinArc::strong_count(&self.0)
    }

    /// Whether `other` holds the very same bytes (not only equal ones).
    pub(crate) fn shares_bytes_with(&self, other: &PackedLabels) -> bool {
        self.0.heap_ptr() == other.0.heap_ptr()
    }

    /// The pairs, in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> + Clone {
        let mut rest: &[u8] = self.bytes();
        let mut remaining = take_varint(&mut rest).unwrap_or(0);
        std::iter::from_fn(move || {
            remaining = remaining.checked_sub(1)?;
            let name = take_text(&mut rest)?;
            let value = take_text(&mut rest)?;
            Some((name, value))
        })
    }

    /// The value of label `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
    }

    /// Whether these are exactly `labels`: the same count, then each name and value the same.
    pub fn matches(&self, labels: LabelsView<'_>) -> bool {
        let mut rest: &[u8] = self.bytes();
        if take_varint(&mut rest) != Some(labels.len()) {
            return false;
        }
        let symbols = Symbols::process();
        for (name, value) in labels.byte_pairs() {
            if !take_text_equal(&mut rest, name, symbols)
                || !take_text_equal(&mut rest, value, symbols)
            {
                return false;
            }
        }
        rest.is_empty()
    }

    /// The labels as a [`Labels`] again.
    pub fn unpack(&self) -> Labels {
        // Packed from a valid `Labels`: already sorted, distinct and non-empty.
        Labels::from_valid_pairs(self.iter())
    }

    /// Heap bytes held, shared equally among the holders of the same bytes.
    pub fn heap_bytes(&self) -> usize {
        (self.bytes().len() + 2 * std::mem::size_of::<usize>()) / self.holders()
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
    fn bytes_of_every_length_compare_as_equality_does() {
        let base: Vec<u8> = (0..40u8).map(|i| b'a' + i % 26).collect();
        for len in 0..base.len() {
            let a = &base[..len];
            assert!(same_bytes(a, a));
            for i in 0..len {
                let mut b = a.to_vec();
                b[i] ^= 1;
                assert!(!same_bytes(a, &b), "length {len}, byte {i} differs");
            }
            assert!(!same_bytes(a, &base[..len + 1]));
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
