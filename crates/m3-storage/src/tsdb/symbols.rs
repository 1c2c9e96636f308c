//! Label names and values held once per process and named by a number, so that a packed label
//! set ([`PackedLabels`](crate::tsdb::packed_labels::PackedLabels)) stores a few bytes for each
//! instead of the text.
//!
//! Most of a label set's text is shared with many other series: every series has `__name__`,
//! `instance` and `job`, and `job`, `namespace`, `region` or `env` take a handful of values.
//! Packed as text, ten labels took some 230 bytes per series; with their names and shared
//! values as numbers, the text of the values that tell the series apart (a pod, an instance)
//! and a byte or two for each of the rest. The text of each numbered string is held once, here.
//!
//! The table only grows. A string, once numbered, keeps its number and its text for the life
//! of the process, so a reader turns a number into text with two atomic loads: no lock, no
//! reference count, no handle to the table in every label set. What makes that safe to run for
//! months is the bound: at most [`MAX_SYMBOLS`] strings and [`MAX_TEXT_BYTES`] of text, and no
//! string longer than [`MAX_SYMBOL_BYTES`]. Past it a label set packs the string inline, as
//! before, and nothing is refused. Values that tell series apart and churn (pod names) keep
//! their room after their series go; the bound caps that waste at a few MiB, and a restart,
//! which rebuilds the heads from the log, starts a table holding only what live series carry.
//!
//! ```text
//! pages: [page 0: numbers 0..4096] [page 1] …   each slot set once, never changed
//! index: hash of the text → number              taken only to number a new string
//! ```

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{LazyLock, OnceLock};

use hashbrown::HashTable;
use parking_lot::{Mutex, MutexGuard};

/// The most strings the process's table numbers.
pub const MAX_SYMBOLS: usize = 1 << 16;
/// The most text the process's table holds.
pub const MAX_TEXT_BYTES: usize = 4 << 20;
/// Longer strings are always packed inline: a long value is rarely shared, and would take
/// the room of many short ones.
pub const MAX_SYMBOL_BYTES: usize = 128;
/// The most values numbered for one label name. A label with more (a pod, an instance)
/// tells series apart: its values are each shared by a few series at most, so numbering
/// them saves little, and reading them back would miss the cache on every compare. Its
/// further values are packed inline.
pub const MAX_VALUES_PER_NAME: u32 = 4096;

/// Numbers per page; a power of two.
const PAGE_SLOTS: usize = 4096;
/// Pages of a table: room for [`MAX_SYMBOLS`], held in the table itself so that reading a
/// number does not first load where the pages are.
const PAGES: usize = MAX_SYMBOLS / PAGE_SLOTS;

/// A string's number in the table.
pub type SymbolId = u32;

type Page = Box<[OnceLock<Box<str>>]>;

/// A table of numbered strings; see the [module docs](self).
pub struct Symbols {
    hasher: hashbrown::DefaultHashBuilder,
    /// Page `p` holds numbers `p * PAGE_SLOTS ..`; created when its first number is given.
    pages: [OnceLock<Page>; PAGES],
    max_symbols: usize,
    max_text_bytes: usize,
    index: Mutex<Index>,
    /// Bytes held, for the store's metrics; changes only under the index's lock.
    heap_bytes: AtomicUsize,
}

struct Index {
    /// Numbers, found by the hash of their text.
    by_text: HashTable<SymbolId>,
    len: usize,
    text_bytes: usize,
    /// By a name's number: how many values were numbered for it.
    values_numbered: Vec<u32>,
}

impl std::fmt::Debug for Symbols {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Symbols")
            .field("heap_bytes", &self.heap_bytes())
            .finish()
    }
}

static PROCESS_SYMBOLS: LazyLock<Symbols> =
    LazyLock::new(|| Symbols::with_limits(MAX_SYMBOLS, MAX_TEXT_BYTES));

impl Symbols {
    /// The process's table, which every packed label set reads.
    pub fn process() -> &'static Symbols {
        &PROCESS_SYMBOLS
    }

    /// An empty table of at most `max_symbols` (up to [`MAX_SYMBOLS`]) strings and
    /// `max_text_bytes` of text.
    pub fn with_limits(max_symbols: usize, max_text_bytes: usize) -> Symbols {
        let max_symbols = max_symbols.min(MAX_SYMBOLS);
        Symbols {
            hasher: hashbrown::DefaultHashBuilder::default(),
            pages: std::array::from_fn(|_| OnceLock::new()),
            max_symbols,
            max_text_bytes,
            index: Mutex::new(Index {
                by_text: HashTable::new(),
                len: 0,
                text_bytes: 0,
                values_numbered: Vec::new(),
            }),
            heap_bytes: AtomicUsize::new(0),
        }
    }

    /// The text numbered `id`; `None` for a number the table never gave.
    pub fn text(&self, id: SymbolId) -> Option<&str> {
        let id = id as usize;
        let page = self.pages.get(id / PAGE_SLOTS)?.get()?;
        page.get(id % PAGE_SLOTS)?.get().map(|text| &**text)
    }

    /// Numbers strings under one lock: a label set's names and values are numbered together.
    pub fn numberer(&self) -> Numberer<'_> {
        Numberer {
            symbols: self,
            index: self.index.lock(),
        }
    }

    /// Bytes the table holds: its text, its slots and its index.
    pub fn heap_bytes(&self) -> usize {
        self.heap_bytes.load(Ordering::Relaxed)
    }
}

/// Numbers strings while it holds the table's lock; from [`Symbols::numberer`].
pub struct Numberer<'a> {
    symbols: &'a Symbols,
    index: MutexGuard<'a, Index>,
}

impl Numberer<'_> {
    /// The numbers of a label's name and value, given now where they have none. Either is
    /// `None` when the caller is to keep the text itself: too long, the table full, or (for
    /// the value) the name already has [`MAX_VALUES_PER_NAME`] values numbered and this one
    /// is new.
    pub fn number_label(
        &mut self,
        name: &str,
        value: &str,
    ) -> (Option<SymbolId>, Option<SymbolId>) {
        let name_id = self.find_or_add(name, true);
        let room_for_value = name_id.is_some_and(|id| {
            self.index
                .values_numbered
                .get(id as usize)
                .copied()
                .unwrap_or(0)
                < MAX_VALUES_PER_NAME
        });
        let len_before = self.index.len;
        let value_id = self.find_or_add(value, room_for_value);
        if let Some(name_id) = name_id
            && self.index.len > len_before
        {
            let counts = &mut self.index.values_numbered;
            if counts.len() <= name_id as usize {
                counts.resize(name_id as usize + 1, 0);
            }
            counts[name_id as usize] += 1;
        }
        (name_id, value_id)
    }

    /// The number of `text`; given now if it has none and `may_add`.
    fn find_or_add(&mut self, text: &str, may_add: bool) -> Option<SymbolId> {
        if text.len() > MAX_SYMBOL_BYTES {
            return None;
        }
        let symbols = self.symbols;
        let hash = symbols.hasher.hash_one(text);
        let index = &mut *self.index;
        if let Some(&id) = index
            .by_text
            .find(hash, |&id| symbols.text(id) == Some(text))
        {
            return Some(id);
        }
        let id = index.len;
        if !may_add
            || id >= symbols.max_symbols
            || index.text_bytes + text.len() > symbols.max_text_bytes
        {
            return None;
        }
        let new_page = symbols.pages[id / PAGE_SLOTS].get().is_none();
        let page = symbols.pages[id / PAGE_SLOTS]
            .get_or_init(|| (0..PAGE_SLOTS).map(|_| OnceLock::new()).collect());
        // Numbers are given in order under the lock, so this slot was never set.
        if page[id % PAGE_SLOTS].set(Box::from(text)).is_err() {
            return None;
        }
        let id = id as SymbolId;
        let index_capacity_before = index.by_text.capacity();
        index.by_text.insert_unique(hash, id, |&known| {
            symbols
                .hasher
                .hash_one(symbols.text(known).unwrap_or_default())
        });
        index.len += 1;
        index.text_bytes += text.len();
        let mut grown = text.len() + std::mem::size_of::<u32>();
        if new_page {
            grown += PAGE_SLOTS * std::mem::size_of::<OnceLock<Box<str>>>();
        }
        let index_grown = index
            .by_text
            .capacity()
            .saturating_sub(index_capacity_before)
            * (std::mem::size_of::<SymbolId>() + 1);
        symbols
            .heap_bytes
            .fetch_add(grown + index_grown, Ordering::Relaxed);
        Some(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_text_gets_the_same_number_and_reads_back() {
        let symbols = Symbols::with_limits(10_000, 1 << 20);
        let mut numberer = symbols.numberer();
        let (job, api) = numberer.number_label("job", "api");
        let (job, api) = (job.expect("room"), api.expect("room"));
        assert_ne!(job, api);
        assert_eq!(numberer.number_label("job", "api"), (Some(job), Some(api)));
        assert_eq!(
            numberer.number_label("container", "api").1,
            Some(api),
            "a value has one number whatever its name"
        );
        drop(numberer);
        assert_eq!(symbols.text(job), Some("job"));
        assert_eq!(symbols.text(api), Some("api"));
        assert_eq!(
            symbols.text(api + 2),
            None,
            "a number never given reads nothing"
        );
        assert_eq!(symbols.text(SymbolId::MAX), None);
        assert!(symbols.heap_bytes() >= "jobapicontainer".len());
    }

    #[test]
    fn a_name_with_many_values_gets_no_more_numbers_for_new_ones() {
        let symbols = Symbols::with_limits(MAX_SYMBOLS, MAX_TEXT_BYTES);
        let mut numberer = symbols.numberer();
        let pods: Vec<(Option<SymbolId>, Option<SymbolId>)> = (0..MAX_VALUES_PER_NAME + 10)
            .map(|i| numberer.number_label("pod", &format!("pod-{i}")))
            .collect();
        let limit = MAX_VALUES_PER_NAME as usize;
        assert!(pods.iter().all(|(name, _)| name.is_some()));
        assert!(pods[..limit].iter().all(|(_, value)| value.is_some()));
        assert!(pods[limit..].iter().all(|(_, value)| value.is_none()));
        assert_eq!(
            numberer.number_label("pod", "pod-7"),
            pods[7],
            "values numbered before keep their numbers"
        );
        assert!(
            numberer.number_label("job", "api").1.is_some(),
            "another name has its own room"
        );
        let numbered_elsewhere = numberer.number_label("node", "pod-new").1;
        assert!(numbered_elsewhere.is_some());
        assert_eq!(
            numberer.number_label("pod", "pod-new").1,
            numbered_elsewhere,
            "a value numbered for another name is read by its number"
        );
    }

    #[test]
    fn past_its_bounds_the_table_numbers_nothing_new_and_keeps_what_it_has() {
        let symbols = Symbols::with_limits(PAGE_SLOTS + 3, 1 << 20);
        let mut numberer = symbols.numberer();
        // Each name is new and numbered with its one value: two numbers a label.
        let numbered: Vec<(Option<SymbolId>, Option<SymbolId>)> = (0..PAGE_SLOTS)
            .map(|i| numberer.number_label(&format!("n{i}"), &format!("v{i}")))
            .collect();
        let given = numbered
            .iter()
            .flat_map(|(name, value)| [name, value])
            .filter(|id| id.is_some())
            .count();
        assert_eq!(given, PAGE_SLOTS + 3);
        assert_eq!(
            numberer.number_label("n7", "v7"),
            numbered[7],
            "a full table still finds what it has"
        );
        assert_eq!(numberer.number_label("n7", "new"), (numbered[7].0, None));
        drop(numberer);
        for (i, (name, value)) in numbered.iter().enumerate().take(10) {
            assert_eq!(
                symbols.text(name.expect("room")),
                Some(format!("n{i}").as_str())
            );
            assert_eq!(
                symbols.text(value.expect("room")),
                Some(format!("v{i}").as_str())
            );
        }
        let long = "x".repeat(MAX_SYMBOL_BYTES + 1);
        let roomy = Symbols::with_limits(10, 1 << 20);
        assert_eq!(
            roomy.numberer().number_label("a", &long),
            (Some(0), None),
            "a long value stays inline"
        );

        let small = Symbols::with_limits(1_000, 10);
        let mut numberer = small.numberer();
        assert_eq!(numberer.number_label("name", "012345"), (Some(0), Some(1)));
        assert_eq!(
            numberer.number_label("name", "a"),
            (Some(0), None),
            "the text bound holds"
        );
    }

    #[test]
    fn readers_on_other_threads_see_numbers_given_while_they_read() {
        let symbols = Symbols::with_limits(MAX_SYMBOLS, MAX_TEXT_BYTES);
        std::thread::scope(|scope| {
            let writer = scope.spawn(|| {
                (0..20_000)
                    .map(|i| {
                        symbols
                            .numberer()
                            .number_label(&format!("n{}", i % 10), &format!("s{i}"))
                    })
                    .collect::<Vec<_>>()
            });
            scope.spawn(|| {
                for id in 0..20_000 {
                    if let Some(text) = symbols.text(id) {
                        assert!(text.starts_with('s') || text.starts_with('n'));
                    }
                }
            });
            let ids = writer.join().expect("writer");
            for (i, (_, value)) in ids.into_iter().enumerate() {
                assert_eq!(
                    symbols.text(value.expect("room")),
                    Some(format!("s{i}").as_str())
                );
            }
        });
    }
}
