//! The ID bytes of one shard's entries, packed end to end in a few large pages.
//!
//! A series ID is a few hundred bytes and lives as long as its entry. Boxed one by one, each
//! costs its box (16 bytes in the slot) and the allocator's rounding up to a size class (a
//! 270-byte ID takes 320). Here an entry keeps a 4-byte [`IdRef`] (the page and where in it
//! the ID starts) and the bytes sit in a page next to the other IDs of the shard, each behind
//! its length (one byte below 128, two below 16 KiB):
//!
//! ```text
//! page 0: [len|id a][len|id b][len|id c][  spare  ]      IdRef = page << 16 | start
//! page 1: [len|id d][ dead ][len|id e][   spare   ]
//! page 2: [a 20 KiB id, its page alone]                  start = OWN_PAGE
//! ```
//!
//! The reference is this small because a shard finds its series by their hash, not their
//! bytes (see `EntryMap` in `shard.rs`): the bytes are read only to flush, so keeping their
//! length out of the slot costs nothing on the add path, and the slot keeps the 4 bytes for
//! the hash instead.
//!
//! Pages are never grown in place (an ID never moves while its entry lives), and a new page is
//! an eighth of what the arena already holds (so the spare end of the last page stays small
//! next to it): a small shard takes a few hundred bytes, a large one pages of 64 KiB. An ID
//! too long for a shared page gets a page of its own. A shard addresses at most 2^16 pages,
//! about 4 GiB of IDs; [`IdArena::add`] refuses an ID past that. Removing an ID only counts its
//! bytes dead; once the dead bytes outweigh the live ones the owner copies the live IDs into a
//! fresh arena ([`IdArena::compact`]), which is how the memory of expired series comes back.

/// Where one ID's bytes are: the page in the high 16 bits, the start of its length in the low
/// 16 ([`OWN_PAGE`] for an ID that is the whole of its page).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IdRef(u32);

/// The largest page shared by several IDs: every start in it is below [`OWN_PAGE`].
const MAX_PAGE: usize = u16::MAX as usize;
/// The smallest page: what the first IDs of a shard share.
const MIN_PAGE: usize = 512;
/// The start of an ID that has a page of its own.
const OWN_PAGE: u16 = u16::MAX;
/// The most pages an arena addresses (the page is 16 bits of an [`IdRef`]).
const MAX_PAGES: usize = 1 << 16;
/// IDs at least this long get a page of their own (a shared ID's length takes at most two
/// bytes).
const LONGEST_SHARED: usize = 1 << 14;

/// The arena addresses as many pages as it can; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ArenaFull;

/// ID bytes by [`IdRef`]; see the module docs.
#[derive(Debug)]
pub(crate) struct IdArena {
    pages: Vec<Vec<u8>>,
    /// The most pages this arena takes: [`MAX_PAGES`], fewer in tests.
    page_limit: usize,
    /// Bytes of the IDs added and not removed (without their lengths).
    live: usize,
    /// Bytes of removed IDs still taking page space.
    dead: usize,
}

impl Default for IdArena {
    fn default() -> IdArena {
        IdArena {
            pages: Vec::new(),
            page_limit: MAX_PAGES,
            live: 0,
            dead: 0,
        }
    }
}

/// The bytes `len` (below [`LONGEST_SHARED`]) is stored as: seven bits a byte, low first, the
/// high bit set on a byte that has another after it.
fn put_len(page: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        page.push(len as u8);
    } else {
        page.push((len & 0x7f) as u8 | 0x80);
        page.push((len >> 7) as u8);
    }
}

/// The length stored at the front of `bytes` by [`put_len`], and how many bytes it took.
fn take_len(bytes: &[u8]) -> (usize, usize) {
    match bytes {
        [first, ..] if *first < 0x80 => (usize::from(*first), 1),
        [first, second, ..] => (usize::from(first & 0x7f) | usize::from(*second) << 7, 2),
        // Only `put_len` writes a shared page, and it never leaves a length cut short.
        _ => (0, bytes.len()),
    }
}

impl IdArena {
    /// Copies `id` in and returns where it is, or [`ArenaFull`] when a new page is needed and
    /// the arena already addresses as many as it can.
    pub(crate) fn add(&mut self, id: &[u8]) -> Result<IdRef, ArenaFull> {
        if id.len() >= LONGEST_SHARED {
            let page = self.push_page(id.to_vec())?;
            self.live += id.len();
            return Ok(IdRef(page << 16 | u32::from(OWN_PAGE)));
        }
        let stored = id.len() + if id.len() < 0x80 { 1 } else { 2 };
        let fits = self
            .pages
            .last()
            .is_some_and(|p| p.capacity() <= MAX_PAGE && p.capacity() - p.len() >= stored);
        if !fits {
            let size = (self.live / 8).clamp(MIN_PAGE, MAX_PAGE).max(stored);
            self.push_page(Vec::with_capacity(size))?;
        }
        let page_index = self.pages.len() - 1;
        let page = &mut self.pages[page_index];
        // A shared page holds at most MAX_PAGE bytes and the ID ends inside it, so its start
        // is below OWN_PAGE.
        let start = page.len() as u32;
        put_len(page, id.len());
        page.extend_from_slice(id);
        self.live += id.len();
        Ok(IdRef((page_index as u32) << 16 | start))
    }

    /// Adds `page` as the last page and returns its index.
    fn push_page(&mut self, page: Vec<u8>) -> Result<u32, ArenaFull> {
        if self.pages.len() >= self.page_limit {
            return Err(ArenaFull);
        }
        self.pages.push(page);
        Ok((self.pages.len() - 1) as u32)
    }

    /// The bytes of the ID at `at`, which must come from this arena's [`add`](Self::add)
    /// (and not precede a [`compact`](Self::compact)).
    pub(crate) fn get(&self, at: IdRef) -> &[u8] {
        let page = &self.pages[(at.0 >> 16) as usize];
        let start = (at.0 & 0xffff) as u16;
        if start == OWN_PAGE {
            return page;
        }
        let rest = &page[usize::from(start)..];
        let (len, len_bytes) = take_len(rest);
        &rest[len_bytes..len_bytes + len]
    }

    /// Counts the bytes of the ID at `at` as dead; they are given back by
    /// [`compact`](Self::compact).
    pub(crate) fn remove(&mut self, at: IdRef) {
        let len = self.get(at).len();
        self.live = self.live.saturating_sub(len);
        self.dead += len;
    }

    /// Whether enough bytes are dead that compacting pays: more dead than live, and more than
    /// a small page's worth.
    pub(crate) fn is_sparse(&self) -> bool {
        self.dead > self.live && self.dead > MIN_PAGE
    }

    /// Copies the IDs at `refs` (every live one) into fresh pages, rewriting each ref in place,
    /// and frees the old pages.
    pub(crate) fn compact<'a>(&mut self, refs: impl Iterator<Item = &'a mut IdRef>) {
        let old = std::mem::replace(
            self,
            IdArena {
                page_limit: self.page_limit,
                ..IdArena::default()
            },
        );
        for at in refs {
            // The live IDs took fewer pages than the live and dead ones did, and a fresh page
            // is never smaller than one of the old arena at the same fill.
            *at = self
                .add(old.get(*at))
                .expect("the live IDs fit in fewer pages than they took");
        }
    }

    /// Heap bytes of the pages (by capacity).
    pub(crate) fn allocation_size(&self) -> usize {
        self.pages.iter().map(Vec::capacity).sum::<usize>()
            + self.pages.capacity() * std::mem::size_of::<Vec<u8>>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Against a model: adds (short, page-sized and longer IDs), removes and compactions
        /// in any order leave every live ID readable as it was added.
        #[test]
        fn live_ids_read_back_through_removals_and_compactions(
            ops in proptest::collection::vec((0u8..10, 0usize..4, any::<u8>()), 1..400)
        ) {
            let mut arena = IdArena::default();
            let mut live: Vec<(IdRef, Vec<u8>)> = Vec::new();
            for (op, size, byte) in ops {
                match op {
                    0..=5 => {
                        let len = [usize::from(byte), LONGEST_SHARED - 1, 40_000, 70_000][size];
                        let id: Vec<u8> = (0..len).map(|i| byte.wrapping_add(i as u8)).collect();
                        live.push((arena.add(&id).unwrap(), id));
                    }
                    6..=8 if !live.is_empty() => {
                        let (at, _) = live.swap_remove(usize::from(byte) % live.len());
                        arena.remove(at);
                    }
                    _ => {
                        if arena.is_sparse() || byte % 2 == 0 {
                            arena.compact(live.iter_mut().map(|(at, _)| at));
                        }
                    }
                }
                for (at, id) in &live {
                    prop_assert_eq!(arena.get(*at), &id[..]);
                }
            }
        }
    }

    #[test]
    fn small_ids_share_pages_and_compaction_frees_dead_bytes() {
        let mut arena = IdArena::default();
        let mut refs: Vec<IdRef> = (0..1000u32)
            .map(|i| arena.add(format!("series-{i:0>260}").as_bytes()).unwrap())
            .collect();
        let pages = arena.pages.len();
        assert!(pages < 100, "1000 IDs of 267 bytes took {pages} pages");
        let before = arena.allocation_size();
        assert!(
            before < 1000 * 267 * 115 / 100,
            "{before} bytes for 267,000 of IDs"
        );
        for at in refs.drain(100..) {
            arena.remove(at);
        }
        assert!(arena.is_sparse());
        arena.compact(refs.iter_mut());
        assert!(!arena.is_sparse());
        assert!(arena.allocation_size() < before / 4);
        for (i, at) in refs.iter().enumerate() {
            assert_eq!(arena.get(*at), format!("series-{i:0>260}").as_bytes());
        }
    }

    #[test]
    fn an_arena_out_of_pages_refuses_ids_and_keeps_the_ones_it_has() {
        let mut arena = IdArena {
            page_limit: 3,
            ..IdArena::default()
        };
        let long = vec![7u8; LONGEST_SHARED];
        let kept: Vec<IdRef> = (0..3).map(|_| arena.add(&long).unwrap()).collect();
        assert_eq!(arena.add(&long), Err(ArenaFull));
        assert_eq!(arena.add(b"short"), Err(ArenaFull));
        for at in kept {
            assert_eq!(arena.get(at), &long[..]);
        }
    }

    #[test]
    fn a_reference_is_four_bytes() {
        assert_eq!(std::mem::size_of::<IdRef>(), 4);
    }
}
