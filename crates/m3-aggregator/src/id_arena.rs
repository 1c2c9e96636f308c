//! The ID bytes of one shard's entries, packed end to end in a few large pages.
//!
//! A series ID is a few hundred bytes and lives as long as its entry. Boxed one by one, each
//! costs its box (16 bytes in the slot) and the allocator's rounding up to a size class (a
//! 270-byte ID takes 320). Here an entry keeps an 8-byte [`IdRef`] and the bytes sit in a
//! page next to the other IDs of the shard:
//!
//! ```text
//! page 0: [id a][id b][id c][  spare  ]      IdRef { page, start, len }
//! page 1: [id d][id e][ dead ][id f][   spare   ]
//! ```
//!
//! Pages are never grown in place (an ID never moves while its entry lives), and a new page is
//! an eighth of what the arena already holds (so the spare end of the last page stays small
//! next to it): a small shard takes a few hundred bytes, a large one pages of 64 KiB. An ID longer than that gets a page of its own. Removing an ID only
//! counts its bytes dead; once the dead bytes outweigh the live ones the owner copies the live
//! IDs into a fresh arena ([`IdArena::compact`]), which is how the memory of expired series
//! comes back.

/// Where one ID's bytes are: 8 bytes, so a slot is no larger than with a pointer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IdRef {
    page: u32,
    start: u16,
    /// The length, or [`WHOLE_PAGE`] for an ID that has a page of its own.
    len: u16,
}

/// The largest page shared by several IDs; longer IDs get a page of their own.
const MAX_PAGE: usize = 1 << 16;
/// The smallest page: what the first IDs of a shard share.
const MIN_PAGE: usize = 512;
/// `IdRef::len` of an ID that is the whole of its page.
const WHOLE_PAGE: u16 = u16::MAX;

/// ID bytes by [`IdRef`]; see the module docs.
#[derive(Debug, Default)]
pub(crate) struct IdArena {
    pages: Vec<Vec<u8>>,
    /// Bytes of the IDs added and not removed.
    live: usize,
    /// Bytes of removed IDs still taking page space.
    dead: usize,
}

impl IdArena {
    /// Copies `id` in and returns where it is.
    pub(crate) fn add(&mut self, id: &[u8]) -> IdRef {
        self.live += id.len();
        if id.len() >= usize::from(WHOLE_PAGE) {
            return IdRef {
                page: self.push_page(id.to_vec()),
                start: 0,
                len: WHOLE_PAGE,
            };
        }
        let fits = self
            .pages
            .last()
            .is_some_and(|p| p.capacity() <= MAX_PAGE && p.capacity() - p.len() >= id.len());
        if !fits {
            let size = (self.live / 8).clamp(MIN_PAGE, MAX_PAGE).max(id.len());
            self.push_page(Vec::with_capacity(size));
        }
        let page_index = self.pages.len() - 1;
        let page = &mut self.pages[page_index];
        // A shared page holds at most MAX_PAGE bytes and the ID ends inside it, so its start
        // is below 2^16; its length is below WHOLE_PAGE (checked above).
        let start = page.len() as u16;
        page.extend_from_slice(id);
        IdRef {
            page: page_index as u32,
            start,
            len: id.len() as u16,
        }
    }

    fn push_page(&mut self, page: Vec<u8>) -> u32 {
        self.pages.push(page);
        // A shard would need terabytes of IDs to reach 2^32 pages.
        (self.pages.len() - 1) as u32
    }

    /// The bytes of the ID at `at`, which must come from this arena's [`add`](Self::add)
    /// (and not precede a [`compact`](Self::compact)).
    pub(crate) fn get(&self, at: IdRef) -> &[u8] {
        let page = &self.pages[at.page as usize];
        if at.len == WHOLE_PAGE {
            return page;
        }
        let start = usize::from(at.start);
        &page[start..start + usize::from(at.len)]
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
        let old = std::mem::take(self);
        for at in refs {
            *at = self.add(old.get(*at));
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
            ops in proptest::collection::vec((0u8..10, 0usize..3, any::<u8>()), 1..400)
        ) {
            let mut arena = IdArena::default();
            let mut live: Vec<(IdRef, Vec<u8>)> = Vec::new();
            for (op, size, byte) in ops {
                match op {
                    0..=5 => {
                        let len = [usize::from(byte), 40_000, 70_000][size];
                        let id: Vec<u8> = (0..len).map(|i| byte.wrapping_add(i as u8)).collect();
                        live.push((arena.add(&id), id));
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
            .map(|i| arena.add(format!("series-{i:0>260}").as_bytes()))
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
}
