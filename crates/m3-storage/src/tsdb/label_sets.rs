//! Label sets shared by the heads of one store, so a series written to several namespaces keeps
//! its labels once.
//!
//! The coordinator writes each series to the raw namespace and, once its windows flush, its
//! aggregated outputs (same labels) to every aggregated namespace. A head that packed its own
//! copy would hold each label set once per namespace: at 100,000 series of ten labels and two
//! aggregated namespaces, some 40 MB that say the same thing. The heads of a
//! [`Store`](crate::Store) instead take their [`PackedLabels`] from one [`LabelSets`]: the
//! first head to create a series packs it, the others get a reference to the same bytes.
//!
//! ```text
//! LabelSets: hash → weak reference ──┐
//!   raw head:     series 17 ─────────┼──▶ [packed labels]
//!   agg_10s head: series 3  ─────────┤
//!   agg_1m head:  series 9  ─────────┘
//! ```
//!
//! The table holds weak references, so the bytes go when the last head removes its series.
//! It is consulted only when a head creates a series (behind a mutex: creation is rare next
//! to the samples written); a lookup of an existing series reads the head's own reference and
//! never touches the table. A dead entry is dropped when a lookup of the same hash meets it
//! and when a head [releases](LabelSets::release) a series.

use std::hash::BuildHasher;
use std::sync::{Arc, Weak};

use hashbrown::HashTable;
use parking_lot::Mutex;

use crate::labels::LabelsView;
use crate::tsdb::packed_labels::PackedLabels;

/// The label sets of a store's heads. Cloning gives another handle to the same table.
#[derive(Clone, Default)]
pub struct LabelSets {
    inner: Arc<Mutex<Table>>,
}

#[derive(Default)]
struct Table {
    hasher: hashbrown::DefaultHashBuilder,
    /// (hash of the label set, its bytes while some head holds them).
    entries: HashTable<(u64, Weak<[u8]>)>,
}

impl std::fmt::Debug for LabelSets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LabelSets")
            .field("entries", &self.inner.lock().entries.len())
            .finish()
    }
}

/// Two handles are equal when they share one table.
impl PartialEq for LabelSets {
    fn eq(&self, other: &LabelSets) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }
}
impl Eq for LabelSets {}

impl LabelSets {
    /// The packed form of `labels`: the bytes another head already holds, or packed now.
    pub fn intern(&self, labels: LabelsView<'_>) -> PackedLabels {
        let mut table = self.inner.lock();
        let hash = table.hasher.hash_one(labels);
        // Entries of this hash whose every holder is gone are dropped on the way.
        while let Ok(dead) = table
            .entries
            .find_entry(hash, |(h, weak)| *h == hash && weak.strong_count() == 0)
        {
            dead.remove();
        }
        let found = table.entries.find(hash, |(h, weak)| {
            *h == hash
                && weak
                    .upgrade()
                    .is_some_and(|bytes| PackedLabels::from_shared(bytes).matches(labels))
        });
        if let Some(bytes) = found.and_then(|(_, weak)| weak.upgrade()) {
            return PackedLabels::from_shared(bytes);
        }
        let packed = PackedLabels::new(labels);
        let weak = Arc::downgrade(packed.shared());
        table.entries.insert_unique(hash, (hash, weak), |(h, _)| *h);
        packed
    }

    /// Gives back a head's reference to `labels`, dropping the table's entry once no head
    /// holds them.
    pub fn release(&self, labels: PackedLabels) {
        let mut table = self.inner.lock();
        let shared = labels.shared();
        if Arc::strong_count(shared) > 1 {
            return;
        }
        // Retention only: unpacking to hash again costs nothing that matters.
        let hash = table.hasher.hash_one(labels.unpack().view());
        if let Ok(entry) = table.entries.find_entry(hash, |(h, weak)| {
            *h == hash && std::ptr::addr_eq(weak.as_ptr(), Arc::as_ptr(shared))
        }) {
            entry.remove();
        }
        // `labels` drops here, under the lock: no other head can take it in between.
    }

    /// Label sets some head holds.
    pub fn len(&self) -> usize {
        self.inner.lock().entries.len()
    }

    /// Whether no head holds any label set.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Heap bytes of the table itself (the label bytes are counted by the heads).
    pub fn heap_bytes(&self) -> usize {
        let table = self.inner.lock();
        table.entries.capacity() * (std::mem::size_of::<(u64, Weak<[u8]>)>() + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::labels::Labels;

    fn labels(instance: &str) -> Labels {
        Labels::new([("__name__", "up"), ("instance", instance)]).unwrap()
    }

    #[test]
    fn heads_interning_the_same_labels_share_one_copy() {
        let sets = LabelSets::default();
        let a = labels("a");
        let first = sets.intern(a.view());
        let second = sets.intern(a.view());
        assert!(Arc::ptr_eq(first.shared(), second.shared()));
        let other = sets.intern(labels("b").view());
        assert!(!Arc::ptr_eq(first.shared(), other.shared()));
        assert_eq!(second.unpack(), a);
        assert_eq!(sets.len(), 2);
    }

    #[test]
    fn the_entry_goes_with_the_last_holder() {
        let sets = LabelSets::default();
        let a = labels("a");
        let first = sets.intern(a.view());
        let second = sets.intern(a.view());
        sets.release(first);
        assert_eq!(sets.len(), 1, "one head still holds the labels");
        sets.release(second);
        assert!(sets.is_empty());
        // Dropped without a release (a head closed whole): the next intern replaces it.
        drop(sets.intern(a.view()));
        assert_eq!(sets.len(), 1);
        let again = sets.intern(a.view());
        assert_eq!(sets.len(), 1);
        assert_eq!(again.unpack(), a);
    }
}
