//! One label value's postings: the label sets of a store carrying it, ascending by number
//! ([`LabelSets`](crate::tsdb::label_sets::LabelSets) numbers them; the heads map numbers to
//! their series). The type's references are called series references, as a set is a series.
//!
//! Set numbers are dense (a new set takes a removed one's number, or the next), and label values
//! come in two kinds: those that tell series apart (a pod, an instance), carried by one series
//! or a few, and those shared by a large part of the store (a job, a region, an environment).
//! A sorted vector suits the first and wastes memory on the second: it costs 32 bits per series
//! carrying the value, where a bitmap costs 1 bit per series of the store. So a list is kept in
//! whichever form is smaller:
//!
//! | form | size | used while |
//! |---|---|---|
//! | one reference, inline | 0 B on the heap | one series carries the value |
//! | sorted vector | 4 B per series carrying it | under 1 in 32 of the references below the highest |
//! | bitmap | 1 bit per reference below the highest | denser than that |
//!
//! A list turns into a bitmap as it gets denser, and back into a vector only once it is half
//! as dense as the switch point, so a list near the switch does not flip on every change.
//! Both grow by an eighth at a time rather than doubling: postings of a store with many series
//! are long, and doubling would leave up to half of each unused.

use crate::tsdb::head::SeriesRef;

/// Bits per bitmap word.
const WORD_BITS: usize = 64;

/// A vector of more than one reference in this many of the references below its highest is
/// larger than the bitmap of the same references (32 bits per entry against 1 per reference).
const DENSE_EVERY: usize = 32;

/// The postings of one label value; see the module docs.
#[derive(Debug, Clone)]
pub(crate) enum PostingList {
    One(SeriesRef),
    Sorted(Vec<SeriesRef>),
    /// Bit `r` of the words is set when series `r` carries the value; `len` bits are set.
    /// The words past the highest set bit are zero (room to grow into).
    Bitmap {
        words: Box<[u64]>,
        len: u32,
    },
}

impl Default for PostingList {
    fn default() -> PostingList {
        PostingList::Sorted(Vec::new())
    }
}

impl PostingList {
    /// Adds `reference` (already there: nothing changes).
    pub(crate) fn insert(&mut self, reference: SeriesRef) {
        match self {
            PostingList::Sorted(list) if list.is_empty() => *self = PostingList::One(reference),
            PostingList::One(only) if *only == reference => {}
            PostingList::One(only) => {
                let mut list = Vec::with_capacity(4);
                list.extend([(*only).min(reference), (*only).max(reference)]);
                *self = PostingList::Sorted(list);
            }
            PostingList::Sorted(list) => {
                let Err(at) = list.binary_search(&reference) else {
                    return;
                };
                let highest = list.last().map_or(reference, |&last| last.max(reference));
                if (list.len() + 1) * DENSE_EVERY > highest as usize + 1 {
                    let mut words = bitmap_words(highest);
                    for &r in list.iter().chain([&reference]) {
                        set_bit(&mut words, r);
                    }
                    *self = PostingList::Bitmap {
                        words,
                        len: list.len() as u32 + 1,
                    };
                    return;
                }
                if list.len() == list.capacity() {
                    list.reserve_exact((list.len() / 8).max(4));
                }
                list.insert(at, reference);
            }
            PostingList::Bitmap { words, len } => {
                let word = reference as usize / WORD_BITS;
                if word >= words.len() {
                    if (*len as usize + 1) * DENSE_EVERY * 2 <= reference as usize + 1 {
                        // Far past the bitmap's end: as sparse as a vector's lists are.
                        let mut list = Vec::with_capacity(*len as usize + 1 + *len as usize / 8);
                        list.extend(bits_of(words));
                        list.push(reference);
                        *self = PostingList::Sorted(list);
                        return;
                    }
                    // Grow by an eighth, at least to the new reference.
                    let grown = (words.len() + words.len() / 8 + 1).max(word + 1);
                    let mut wider = vec![0u64; grown].into_boxed_slice();
                    wider[..words.len()].copy_from_slice(words);
                    *words = wider;
                }
                if !set_bit(words, reference) {
                    *len += 1;
                }
            }
        }
    }

    /// Keeps only the references `keep` says.
    pub(crate) fn retain(&mut self, keep: impl Fn(SeriesRef) -> bool) {
        match self {
            PostingList::One(only) if !keep(*only) => *self = PostingList::default(),
            PostingList::One(_) => {}
            PostingList::Sorted(list) => {
                list.retain(|&r| keep(r));
                if let [only] = list[..] {
                    *self = PostingList::One(only);
                }
            }
            PostingList::Bitmap { words, len } => {
                let mut kept = 0u32;
                let mut highest = None;
                for (index, word) in words.iter_mut().enumerate() {
                    let mut bits = *word;
                    while bits != 0 {
                        let bit = bits.trailing_zeros() as usize;
                        bits &= bits - 1;
                        let reference = (index * WORD_BITS + bit) as SeriesRef;
                        if keep(reference) {
                            kept += 1;
                            highest = Some(reference);
                        } else {
                            *word &= !(1u64 << bit);
                        }
                    }
                }
                *len = kept;
                // Back to a vector once half as dense as the switch point (see the module
                // docs), counted up to the highest reference left.
                let sparse =
                    highest.is_none_or(|h| kept as usize * DENSE_EVERY * 2 <= h as usize + 1);
                if sparse {
                    let list: Vec<SeriesRef> = self.iter().collect();
                    *self = match list[..] {
                        [only] => PostingList::One(only),
                        _ => PostingList::Sorted(list),
                    };
                }
            }
        }
    }

    /// The references, ascending.
    pub(crate) fn iter(&self) -> Iter<'_> {
        match self {
            PostingList::One(only) => Iter::Slice(std::slice::from_ref(only).iter()),
            PostingList::Sorted(list) => Iter::Slice(list.iter()),
            PostingList::Bitmap { words, .. } => bits_of(words),
        }
    }

    /// How many references the list holds.
    pub(crate) fn len(&self) -> usize {
        match self {
            PostingList::One(_) => 1,
            PostingList::Sorted(list) => list.len(),
            PostingList::Bitmap { len, .. } => *len as usize,
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Heap bytes held (capacity, not length).
    pub(crate) fn heap_bytes(&self) -> usize {
        match self {
            PostingList::One(_) => 0,
            PostingList::Sorted(list) => list.capacity() * std::mem::size_of::<SeriesRef>(),
            PostingList::Bitmap { words, .. } => words.len() * std::mem::size_of::<u64>(),
        }
    }
}

/// The set bits of `words`, ascending.
fn bits_of(words: &[u64]) -> Iter<'_> {
    Iter::Bits {
        words,
        index: 0,
        bits: words.first().copied().unwrap_or(0),
    }
}

/// Zeroed words for references up to `highest`, with an eighth more room.
fn bitmap_words(highest: SeriesRef) -> Box<[u64]> {
    let needed = highest as usize / WORD_BITS + 1;
    vec![0u64; needed + needed / 8].into_boxed_slice()
}

/// Sets bit `reference` (which must be inside `words`); whether it was set before.
fn set_bit(words: &mut [u64], reference: SeriesRef) -> bool {
    let (word, bit) = (
        reference as usize / WORD_BITS,
        reference as usize % WORD_BITS,
    );
    let was = words[word] & (1u64 << bit) != 0;
    words[word] |= 1u64 << bit;
    was
}

/// The references of a [`PostingList`], ascending.
#[derive(Debug, Clone)]
pub(crate) enum Iter<'a> {
    Slice(std::slice::Iter<'a, SeriesRef>),
    /// The set bits of `words`: `bits` holds what is left of word `index`.
    Bits {
        words: &'a [u64],
        index: usize,
        bits: u64,
    },
}

impl Iterator for Iter<'_> {
    type Item = SeriesRef;

    fn next(&mut self) -> Option<SeriesRef> {
        match self {
            Iter::Slice(refs) => refs.next().copied(),
            Iter::Bits { words, index, bits } => loop {
                if *bits != 0 {
                    let bit = bits.trailing_zeros() as usize;
                    *bits &= *bits - 1;
                    return Some((*index * WORD_BITS + bit) as SeriesRef);
                }
                *index += 1;
                *bits = *words.get(*index)?;
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    proptest! {
        /// Against a set: inserts (sparse and dense, in any order) and removals leave the same
        /// references, ascending, whichever form the list is in.
        #[test]
        fn holds_what_a_set_holds(
            ops in proptest::collection::vec((0u8..10, 0u32..4096), 1..600)
        ) {
            let mut list = PostingList::default();
            let mut model = BTreeSet::new();
            for (op, reference) in ops {
                match op {
                    0..=7 => {
                        // Mostly dense, low references; some far out.
                        let reference = if op == 7 { reference * 16 } else { reference / 8 };
                        list.insert(reference);
                        model.insert(reference);
                    }
                    _ => {
                        let modulus = reference % 5 + 2;
                        list.retain(|r| r % modulus != 0);
                        model.retain(|r| r % modulus != 0);
                    }
                }
                prop_assert_eq!(list.iter().collect::<Vec<_>>(), model.iter().copied().collect::<Vec<_>>());
                prop_assert_eq!(list.len(), model.len());
            }
        }
    }

    #[test]
    fn dense_lists_are_bitmaps_and_sparse_ones_vectors() {
        // A value every fifth series of 100,000 carries, and one every 5,000th.
        let mut dense = PostingList::default();
        let mut sparse = PostingList::default();
        for r in 0..100_000u32 {
            if r % 5 == 0 {
                dense.insert(r);
            }
            if r % 5_000 == 0 {
                sparse.insert(r);
            }
        }
        assert!(matches!(dense, PostingList::Bitmap { .. }), "{dense:?}");
        assert!(
            dense.heap_bytes() < 100_000 / 8 * 9 / 8 + 64,
            "{} bytes for 20,000 of 100,000 series",
            dense.heap_bytes()
        );
        assert_eq!(dense.len(), 20_000);
        assert!(matches!(sparse, PostingList::Sorted(_)), "{sparse:?}");
        assert_eq!(
            sparse.iter().collect::<Vec<_>>(),
            (0..20).map(|i| i * 5_000).collect::<Vec<_>>()
        );
        // Most of the dense list's series gone: a vector again.
        dense.retain(|r| r % 1_000 == 0);
        assert!(matches!(dense, PostingList::Sorted(_)), "{dense:?}");
        assert_eq!(
            dense.iter().collect::<Vec<_>>(),
            (0..100).map(|i| i * 1_000).collect::<Vec<_>>()
        );
        dense.retain(|r| r == 7_000);
        assert!(matches!(dense, PostingList::One(7_000)));
        dense.retain(|_| false);
        assert!(dense.is_empty());
    }
}
