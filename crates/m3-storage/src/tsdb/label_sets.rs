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
//! Its mutex is taken when a head creates a series and when it removes series (once per
//! retention or compaction pass of that head), never when a head finds a series it has: that
//! reads the head's own reference. Hashing happens before the lock is taken. An
//! entry whose holders are all gone without releasing it (a head dropped whole, as when one is
//! replaced after a failed log write) is dropped when a creation of the same labels meets it,
//! or by the sweep each retention pass runs ([`LabelSets::purge_dead`]).

use std::hash::BuildHasher;
use std::sync::{Arc, Weak};

use hashbrown::HashTable;
use parking_lot::Mutex;

use crate::labels::LabelsView;
use crate::tsdb::packed_labels::PackedLabels;

/// The label sets of a store's heads. Cloning gives another handle to the same table.
#[derive(Clone, Default)]
pub struct LabelSets {
    inner: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    /// Fixed at creation: hashing needs no lock.
    hasher: hashbrown::DefaultHashBuilder,
    /// (hash of the label set, its bytes while some head holds them).
    entries: Mutex<HashTable<(u64, Weak<[u8]>)>>,
}

impl std::fmt::Debug for LabelSets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LabelSets")
            .field("entries", &self.len())
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
        let hash = self.inner.hasher.hash_one(labels);
        let mut entries = self.inner.entries.lock();
        // Entries of this hash whose every holder is gone are dropped on the way.
        while let Ok(dead) =
            entries.find_entry(hash, |(h, weak)| *h == hash && weak.strong_count() == 0)
        {
            dead.remove();
        }
        let found = entries.find(hash, |(h, weak)| {
            *h == hash
                && weak
                    .upgrade()
                    .is_some_and(|bytes| PackedLabels::from_shared(bytes).matches(labels))
        });
        if let Some(bytes) = found.and_then(|(_, weak)| weak.upgrade()) {
            return PackedLabels::from_shared(bytes);
        }
        // Packed under the lock (a copy of the labels' bytes), so two heads creating the
        // same series at once still share one copy.
        let packed = PackedLabels::new(labels);
        let weak = Arc::downgrade(packed.shared());
        entries.insert_unique(hash, (hash, weak), |(h, _)| *h);
        packed
    }

    /// Gives back a head's references to `released`, dropping the table's entry of each label
    /// set no other head holds. Takes the lock once for all of them.
    pub fn release_all(&self, released: impl IntoIterator<Item = PackedLabels>) {
        // The hashes first, outside the lock (a removal unpacks the labels to hash them).
        let released: Vec<(u64, PackedLabels)> = released
            .into_iter()
            .map(|labels| (self.inner.hasher.hash_one(labels.unpack().view()), labels))
            .collect();
        let mut entries = self.inner.entries.lock();
        for (hash, labels) in released {
            let shared = labels.shared();
            if Arc::strong_count(shared) == 1
                && let Ok(entry) = entries.find_entry(hash, |(h, weak)| {
                    *h == hash && std::ptr::addr_eq(weak.as_ptr(), Arc::as_ptr(shared))
                })
            {
                entry.remove();
            }
            // Dropped while the lock is held: a head releasing the same labels next sees the
            // count this one leaves, so the last holder always removes the entry.
            drop(labels);
        }
        drop(entries);
    }

    /// Drops the entries no head holds any more (see the [module docs](self)), and gives
    /// back the table's room once most of it is empty. Returns how many went.
    pub fn purge_dead(&self) -> usize {
        let mut entries = self.inner.entries.lock();
        let before = entries.len();
        entries.retain(|(_, weak)| weak.strong_count() > 0);
        if entries.len() < entries.capacity() / 4 {
            entries.shrink_to_fit(|(h, _)| *h);
        }
        before - entries.len()
    }

    /// Label sets some head holds.
    pub fn len(&self) -> usize {
        self.inner.entries.lock().len()
    }

    /// Whether no head holds any label set.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Heap bytes of the table itself (the label bytes are counted by the heads).
    pub fn heap_bytes(&self) -> usize {
        self.inner.entries.lock().allocation_size()
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
        sets.release_all([first]);
        assert_eq!(sets.len(), 1, "one head still holds the labels");
        sets.release_all([second]);
        assert!(sets.is_empty());
        // Dropped without a release (a head closed whole): the next intern replaces it.
        drop(sets.intern(a.view()));
        assert_eq!(sets.len(), 1);
        let again = sets.intern(a.view());
        assert_eq!(sets.len(), 1);
        assert_eq!(again.unpack(), a);
        // Or a sweep drops it.
        drop(again);
        drop(sets.intern(labels("b").view()));
        let kept = sets.intern(labels("c").view());
        assert_eq!(sets.purge_dead(), 2);
        assert_eq!(sets.len(), 1);
        assert_eq!(sets.intern(labels("c").view()), kept);
    }

    /// Heads releasing the same labels from several threads at once: whatever the
    /// interleaving, the entry goes with the last holder.
    #[test]
    fn concurrent_releases_leave_no_entry_behind() {
        let sets = LabelSets::default();
        for round in 0..2_000 {
            let set = labels(&round.to_string());
            let holders: Vec<PackedLabels> = (0..4).map(|_| sets.intern(set.view())).collect();
            std::thread::scope(|scope| {
                for held in holders {
                    let sets = &sets;
                    scope.spawn(move || sets.release_all([held]));
                }
            });
            assert!(
                sets.is_empty(),
                "round {round}: {} entries left",
                sets.len()
            );
        }
    }
}
