//! Label sets shared by the heads of one store, and the inverted index over them, so a series
//! written to several namespaces keeps its labels and its postings once.
//!
//! The coordinator writes each series to the raw namespace and, once its windows flush, its
//! aggregated outputs (same labels) to every aggregated namespace. A head that packed its own
//! copy would hold each label set once per namespace: at 100,000 series of ten labels and two
//! aggregated namespaces, some 40 MB that say the same thing; and a head with postings of its
//! own (label name → value → its series) would hold the same lists again, some 4 MB a head. The
//! heads of a [`Store`](crate::Store) instead take their [`PackedLabels`] from one [`LabelSets`]:
//! the first head to create a series packs it and numbers it (a [`SetId`]), the postings list
//! the numbers, and the others get a reference to the same bytes. A head answers a matcher by
//! mapping the numbers the postings give to its own series, skipping those it does not hold.
//!
//! ```text
//! LabelSets: hash → (labels, number)    postings: job="api" → numbers 0, 1, 7 …
//!   raw head:     series 17 ─────────┐  (number 7 → series 17)
//!   agg_10s head: series 3  ─────────┼──▶ [packed labels], number 7
//!   agg_1m head:  series 9  ─────────┘  (number 7 → series 9)
//! ```
//!
//! The table holds a reference of its own to each label set, so it can unindex a set whatever
//! became of the heads: a set goes, with its postings, when the last head releases it
//! ([`LabelSets::release_all`]), and one whose heads were dropped whole without releasing it (a
//! head replaced after a failed log write) is taken back by a creation of the same labels or
//! dropped by the sweep each retention pass runs ([`LabelSets::purge_dead`]). Its number then
//! goes to a later set. The mutex is taken when a head creates a series, when it removes series
//! (once per retention or compaction pass of that head) and when it answers matchers, never when
//! a head finds a series it has: that reads the head's own hash table and series. Hashing
//! happens before the lock is taken.

use std::hash::BuildHasher;
use std::sync::Arc;

use hashbrown::{HashMap, HashTable};
use parking_lot::Mutex;

use crate::labels::LabelsView;
use crate::matcher::Matcher;
use crate::tsdb::packed_labels::PackedLabels;
use crate::tsdb::postings::PostingList;

/// A label set's number in its store's [`LabelSets`]: what the postings list. Numbers are
/// dense (a new set takes a removed one's number, or the next), which keeps the postings'
/// bitmaps short.
pub type SetId = u32;

/// The label sets of a store's heads and their postings. Cloning gives another handle to the
/// same table.
#[derive(Clone, Default)]
pub struct LabelSets {
    inner: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    /// Fixed at creation: hashing needs no lock.
    hasher: hashbrown::DefaultHashBuilder,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    entries: HashTable<Entry>,
    /// Label name → value → the sets carrying it, ascending by number.
    postings: HashMap<Box<str>, HashMap<Box<str>, PostingList>>,
    /// Numbers of removed sets, for new ones.
    free: Vec<SetId>,
    /// The number after the highest given.
    next: SetId,
}

/// One label set: the table's own reference to its bytes (a head holding it is a second).
struct Entry {
    labels: PackedLabels,
    id: SetId,
    /// The set's [`TableHash`], kept in 32 bits: 16 bytes an entry instead of 24.
    hash: u32,
}

/// The hash the table files a label set under: 32 bits of its 64-bit hash, in both halves of
/// the `u64` the table takes (its top bits tag the bucket, its low bits pick it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TableHash(u32);

impl TableHash {
    fn of(hasher: &hashbrown::DefaultHashBuilder, labels: LabelsView<'_>) -> TableHash {
        let hash = hasher.hash_one(labels);
        TableHash((hash >> 32) as u32 ^ hash as u32)
    }

    fn wide(self) -> u64 {
        (u64::from(self.0) << 32) | u64::from(self.0)
    }
}

impl Entry {
    fn wide_hash(&self) -> u64 {
        TableHash(self.hash).wide()
    }

    /// Whether no head holds the set any more: only the table's reference is left.
    fn is_dead(&self) -> bool {
        self.labels.holders() == 1
    }
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
    /// The packed form of `labels` and its number: the bytes another head already holds, or
    /// packed, numbered and indexed now.
    pub fn intern(&self, labels: LabelsView<'_>) -> (PackedLabels, SetId) {
        let hash = TableHash::of(&self.inner.hasher, labels);
        let mut state = self.inner.state.lock();
        if let Some(found) = state.entries.find(hash.wide(), |e| {
            e.hash == hash.0 && e.labels.matches(labels)
        }) {
            return (found.labels.clone(), found.id);
        }
        // Packed under the lock (a copy of the labels' bytes), so two heads creating the
        // same series at once still share one copy.
        let packed = PackedLabels::new(labels);
        let state = &mut *state;
        let id = state.free.pop().unwrap_or_else(|| {
            let id = state.next;
            state.next = state.next.saturating_add(1);
            id
        });
        for (name, value) in labels.iter() {
            // Creation only: the double lookups keep the keys boxed, not `String`s.
            if !state.postings.contains_key(name) {
                state.postings.insert(name.into(), HashMap::new());
            }
            if let Some(values) = state.postings.get_mut(name) {
                if !values.contains_key(value) {
                    values.insert(value.into(), PostingList::default());
                }
                if let Some(list) = values.get_mut(value) {
                    list.insert(id);
                }
            }
        }
        let entry = Entry {
            labels: packed.clone(),
            id,
            hash: hash.0,
        };
        state
            .entries
            .insert_unique(hash.wide(), entry, Entry::wide_hash);
        (packed, id)
    }

    /// The number of `labels`, which a head holds (`None`: not from this table).
    pub fn id_of(&self, labels: &PackedLabels) -> Option<SetId> {
        let hash = TableHash::of(&self.inner.hasher, labels.unpack().view());
        let state = self.inner.state.lock();
        state
            .entries
            .find(hash.wide(), |e| {
                e.hash == hash.0 && e.labels.shares_bytes_with(labels)
            })
            .map(|e| e.id)
    }

    /// Gives back a head's references to `released`, and returns their numbers (the head
    /// forgets them). A set no other head holds goes, with its postings. Takes the lock once
    /// for all of them.
    pub fn release_all(&self, released: impl IntoIterator<Item = PackedLabels>) -> Vec<SetId> {
        // The hashes first, outside the lock (a removal unpacks the labels to hash them).
        let released: Vec<(TableHash, PackedLabels)> = released
            .into_iter()
            .map(|labels| {
                (
                    TableHash::of(&self.inner.hasher, labels.unpack().view()),
                    labels,
                )
            })
            .collect();
        let mut ids = Vec::with_capacity(released.len());
        let mut gone: Vec<Entry> = Vec::new();
        let mut state = self.inner.state.lock();
        for (hash, labels) in released {
            let Ok(entry) = state.entries.find_entry(hash.wide(), |e| {
                e.hash == hash.0 && e.labels.shares_bytes_with(&labels)
            }) else {
                continue;
            };
            ids.push(entry.get().id);
            // The table's reference and this one: the last holder.
            if labels.holders() == 2 {
                gone.push(entry.remove().0);
            }
            // Dropped while the lock is held: a head releasing the same labels next sees the
            // count this one leaves, so the last holder always removes the entry.
            drop(labels);
        }
        state.unindex(&mut gone);
        ids
    }

    /// Drops the sets no head holds any more (see the [module docs](self)), and gives back
    /// the table's room once most of it is empty. Returns how many went.
    pub fn purge_dead(&self) -> usize {
        let mut state = self.inner.state.lock();
        let state = &mut *state;
        let mut gone: Vec<Entry> = state.entries.extract_if(|e| e.is_dead()).collect();
        if state.entries.len() < state.entries.capacity() / 4 {
            state.entries.shrink_to_fit(Entry::wide_hash);
        }
        let purged = gone.len();
        state.unindex(&mut gone);
        purged
    }

    /// The numbers of the sets the matchers that need their label (those rejecting `""`)
    /// accept, ascending; `None` when no matcher needs its label (every set is a candidate).
    /// A caller checks every matcher on what it keeps of them.
    pub(crate) fn candidates(&self, matchers: &[Matcher]) -> Option<Vec<SetId>> {
        let state = self.inner.state.lock();
        let mut candidates: Option<Vec<SetId>> = None;
        for matcher in matchers.iter().filter(|m| !m.matches_empty()) {
            let mut ids: Vec<SetId> = match matcher {
                Matcher::Equal { name, value } => state
                    .postings
                    .get(name.as_str())
                    .and_then(|values| values.get(value.as_str()))
                    .map(|list| list.iter().collect())
                    .unwrap_or_default(),
                _ => {
                    let mut ids: Vec<SetId> = state
                        .postings
                        .get(matcher.name())
                        .into_iter()
                        .flatten()
                        .filter(|(value, _)| matcher.matches_value(value))
                        .flat_map(|(_, ids)| ids.iter())
                        .collect();
                    ids.sort_unstable();
                    ids
                }
            };
            if let Some(previous) = candidates {
                ids.retain(|id| previous.binary_search(id).is_ok());
            }
            candidates = Some(ids);
        }
        candidates
    }

    /// Label sets some head holds.
    pub fn len(&self) -> usize {
        self.inner.state.lock().entries.len()
    }

    /// Whether no head holds any label set.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Heap bytes of the table and the postings, and the table's share of the label bytes
    /// (the heads count theirs).
    pub fn heap_bytes(&self) -> usize {
        let state = self.inner.state.lock();
        let postings: usize = state
            .postings
            .iter()
            .map(|(name, values)| {
                name.len()
                    + values.allocation_size()
                    + values
                        .iter()
                        .map(|(value, list)| value.len() + list.heap_bytes())
                        .sum::<usize>()
            })
            .sum();
        let labels: usize = state.entries.iter().map(|e| e.labels.heap_bytes()).sum();
        state.entries.allocation_size()
            + state.postings.allocation_size()
            + postings
            + labels
            + state.free.capacity() * std::mem::size_of::<SetId>()
    }
}

impl State {
    /// Takes the sets `gone` (out of the table already) out of the postings, and gives their
    /// numbers to later sets: each list touched is filtered once, however many of its sets go.
    fn unindex(&mut self, gone: &mut [Entry]) {
        if gone.is_empty() {
            return;
        }
        gone.sort_unstable_by_key(|e| e.id);
        let is_gone = |id: SetId| gone.binary_search_by_key(&id, |e| e.id).is_ok();
        let mut touched: Vec<(&str, &str)> = gone.iter().flat_map(|e| e.labels.iter()).collect();
        touched.sort_unstable();
        touched.dedup();
        for (name, value) in touched {
            if let Some(values) = self.postings.get_mut(name) {
                if let Some(list) = values.get_mut(value) {
                    list.retain(|id| !is_gone(id));
                    if list.is_empty() {
                        values.remove(value);
                    }
                }
                if values.is_empty() {
                    self.postings.remove(name);
                }
            }
        }
        // Taken from the end: the lowest first, which keeps the numbers low.
        self.free.extend(gone.iter().rev().map(|e| e.id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::labels::Labels;
    use crate::matcher::Matcher;

    fn labels(instance: &str) -> Labels {
        Labels::new([("__name__", "up"), ("instance", instance)]).unwrap()
    }

    #[test]
    fn heads_interning_the_same_labels_share_one_copy() {
        let sets = LabelSets::default();
        let a = labels("a");
        let (first, first_id) = sets.intern(a.view());
        let (second, second_id) = sets.intern(a.view());
        assert!(first.shares_bytes_with(&second));
        assert_eq!(first_id, second_id);
        let (other, other_id) = sets.intern(labels("b").view());
        assert!(!first.shares_bytes_with(&other));
        assert_ne!(other_id, first_id);
        assert_eq!(second.unpack(), a);
        assert_eq!(sets.len(), 2);
        assert_eq!(sets.id_of(&other), Some(other_id));
    }

    #[test]
    fn the_entry_goes_with_the_last_holder() {
        let sets = LabelSets::default();
        let a = labels("a");
        let (first, _) = sets.intern(a.view());
        let (second, _) = sets.intern(a.view());
        sets.release_all([first]);
        assert_eq!(sets.len(), 1, "one head still holds the labels");
        sets.release_all([second]);
        assert!(sets.is_empty());
        // Dropped without a release (a head closed whole): the next intern replaces it.
        drop(sets.intern(a.view()));
        assert_eq!(sets.len(), 1);
        let (again, _) = sets.intern(a.view());
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

    fn numbers(sets: &LabelSets, matchers: &[Matcher]) -> Option<Vec<SetId>> {
        sets.candidates(matchers)
    }

    /// The postings list a set while some head holds it, and its number goes to a later set
    /// once the last holder released it or the sweep found it held by none.
    #[test]
    fn postings_follow_the_holders_and_numbers_are_reused() {
        let sets = LabelSets::default();
        let (a_raw, a) = sets.intern(labels("a").view());
        let (a_agg, _) = sets.intern(labels("a").view());
        let (b_raw, b) = sets.intern(labels("b").view());
        let up = [Matcher::equal("__name__", "up")];
        assert_eq!(numbers(&sets, &up), Some(vec![a, b]));
        assert_eq!(
            numbers(&sets, &[Matcher::regex("instance", "b|c").unwrap()]),
            Some(vec![b])
        );
        assert_eq!(numbers(&sets, &[Matcher::not_equal("instance", "a")]), None);
        assert_eq!(sets.release_all([a_raw]), vec![a]);
        assert_eq!(
            numbers(&sets, &up),
            Some(vec![a, b]),
            "one head still holds a"
        );
        assert_eq!(sets.release_all([a_agg]), vec![a]);
        assert_eq!(numbers(&sets, &up), Some(vec![b]));
        let (c_raw, c) = sets.intern(labels("c").view());
        assert_eq!(c, a, "a's number goes to the next set");
        assert_eq!(
            numbers(&sets, &[Matcher::equal("instance", "a")]),
            Some(vec![])
        );
        // Dropped without a release: listed until the sweep.
        drop(b_raw);
        drop(c_raw);
        assert_eq!(numbers(&sets, &up), Some(vec![a, b]));
        assert_eq!(sets.purge_dead(), 2, "b, and c whose holder went");
        assert_eq!(numbers(&sets, &up), Some(vec![]));
        assert!(sets.is_empty());
    }

    /// Heads releasing the same labels from several threads at once: whatever the
    /// interleaving, the entry goes with the last holder.
    #[test]
    fn concurrent_releases_leave_no_entry_behind() {
        let sets = LabelSets::default();
        for round in 0..2_000 {
            let set = labels(&round.to_string());
            let holders: Vec<PackedLabels> = (0..4).map(|_| sets.intern(set.view()).0).collect();
            std::thread::scope(|scope| {
                for held in holders {
                    let sets = &sets;
                    scope.spawn(move || {
                        sets.release_all([held]);
                    });
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
