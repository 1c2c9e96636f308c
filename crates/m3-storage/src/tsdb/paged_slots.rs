//! Numbered slots, each empty or holding one value, kept in fixed-size pages rather than one
//! vector.
//!
//! The head keeps every series in a slot numbered by its [`SeriesRef`](super::head::SeriesRef).
//! In one `Vec` those slots cost up to twice what they hold (the vector doubles: at 100,000
//! series of 152 bytes, 5 MB of the 20 MB is spare room), and each doubling briefly holds
//! the old and the new vector at once, a jump in RSS of one and a half times the slots. Pages
//! of [`PagedSlots::PAGE_SLOTS`] slots grow one page at a time and never move, so the spare
//! room is at most one page and growth copies nothing:
//!
//! ```text
//! pages: [page 0: slots 0..n] [page 1: n..2n] … [last page: filled up to len]
//! ```
//!
//! A page holds as many slots as fit in [`PAGE_BYTES`], one of the allocator's size classes,
//! so no page is rounded up to a larger allocation whatever the slot's size. Finding slot `i`
//! is a division by that constant (a multiply and a shift), and the page table is small
//! enough to stay in cache.

/// Bytes per page: 128 KiB, one of jemalloc's size classes (an allocation of it is not rounded
/// up), 1638 slots of the head's 80-byte series.
pub const PAGE_BYTES: usize = 128 << 10;

/// Slots `0..len`, each empty or holding a `T`. See the [module docs](self).
#[derive(Debug)]
pub struct PagedSlots<T> {
    pages: Vec<Box<[Option<T>]>>,
    len: usize,
}

impl<T> Default for PagedSlots<T> {
    fn default() -> Self {
        PagedSlots {
            pages: Vec::new(),
            len: 0,
        }
    }
}

impl<T> PagedSlots<T> {
    /// Slots per page: as many as fit in [`PAGE_BYTES`].
    pub const PAGE_SLOTS: usize = {
        let slot = std::mem::size_of::<Option<T>>();
        if slot == 0 || slot >= PAGE_BYTES {
            1
        } else {
            PAGE_BYTES / slot
        }
    };

    /// The number of slots, empty or not.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are no slots.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Slot `index`, when `index < len`.
    pub fn get(&self, index: usize) -> Option<&Option<T>> {
        if index >= self.len {
            return None;
        }
        self.pages
            .get(index / Self::PAGE_SLOTS)
            .and_then(|page| page.get(index % Self::PAGE_SLOTS))
    }

    /// Slot `index`, when `index < len`.
    pub fn get_mut(&mut self, index: usize) -> Option<&mut Option<T>> {
        if index >= self.len {
            return None;
        }
        self.pages
            .get_mut(index / Self::PAGE_SLOTS)
            .and_then(|page| page.get_mut(index % Self::PAGE_SLOTS))
    }

    /// Slot `index`, adding empty slots up to it first.
    pub fn slot_mut(&mut self, index: usize) -> &mut Option<T> {
        while self.pages.len() * Self::PAGE_SLOTS <= index {
            self.pages.push(
                std::iter::repeat_with(|| None)
                    .take(Self::PAGE_SLOTS)
                    .collect(),
            );
        }
        self.len = self.len.max(index + 1);
        &mut self.pages[index / Self::PAGE_SLOTS][index % Self::PAGE_SLOTS]
    }

    /// The slots in order.
    pub fn iter(&self) -> impl Iterator<Item = &Option<T>> {
        self.pages
            .iter()
            .flat_map(|page| page.iter())
            .take(self.len)
    }

    /// The slots in order, mutably.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut Option<T>> {
        self.pages
            .iter_mut()
            .flat_map(|page| page.iter_mut())
            .take(self.len)
    }

    /// Heap bytes of the pages (the slots themselves, not what their values point to).
    pub fn allocation_size(&self) -> usize {
        self.pages.len() * Self::PAGE_SLOTS * std::mem::size_of::<Option<T>>()
            + self.pages.capacity() * std::mem::size_of::<Box<[Option<T>]>>()
    }
}

impl<T> std::ops::Index<usize> for PagedSlots<T> {
    type Output = Option<T>;

    /// Slot `index`; panics past `len`, as a slice does.
    fn index(&self, index: usize) -> &Option<T> {
        assert!(index < self.len, "slot {index} of {}", self.len);
        &self.pages[index / Self::PAGE_SLOTS][index % Self::PAGE_SLOTS]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_read_back_across_pages_and_stop_at_len() {
        const PAGE_SLOTS: usize = PagedSlots::<usize>::PAGE_SLOTS;
        let mut slots = PagedSlots::default();
        assert!(slots.is_empty());
        assert_eq!(slots.get(0), None);
        *slots.slot_mut(3) = Some(3);
        *slots.slot_mut(PAGE_SLOTS + 1) = Some(PAGE_SLOTS + 1);
        assert_eq!(slots.len(), PAGE_SLOTS + 2);
        assert_eq!(slots.get(3), Some(&Some(3)));
        assert_eq!(slots.get(4), Some(&None));
        assert_eq!(slots[PAGE_SLOTS + 1], Some(PAGE_SLOTS + 1));
        assert_eq!(slots.get(PAGE_SLOTS + 2), None, "past len, inside the page");
        assert_eq!(slots.get_mut(PAGE_SLOTS + 2), None);
        let held: Vec<usize> = slots.iter().flatten().copied().collect();
        assert_eq!(held, vec![3, PAGE_SLOTS + 1]);
        assert_eq!(slots.iter().count(), slots.len());
        for slot in slots.iter_mut().flatten() {
            *slot += 1;
        }
        assert_eq!(slots[3], Some(4));
        // A slot before len does not shorten the slots.
        *slots.slot_mut(0) = Some(0);
        assert_eq!(slots.len(), PAGE_SLOTS + 2);
        assert_eq!(
            slots.allocation_size() / PAGE_SLOTS,
            2 * std::mem::size_of::<Option<usize>>()
        );
    }

    #[test]
    fn a_page_fills_its_size_class_whatever_the_slot_size() {
        // A box gives `Option` a niche, so these slots are exactly 128 and 120 bytes.
        assert_eq!(PagedSlots::<(Box<u8>, [u8; 120])>::PAGE_SLOTS, 1024);
        assert_eq!(PagedSlots::<(Box<u8>, [u8; 112])>::PAGE_SLOTS, 1092);
        let mut slots: PagedSlots<[u8; 120]> = PagedSlots::default();
        let page = PagedSlots::<[u8; 120]>::PAGE_SLOTS;
        for i in [0, page - 1, page, 3 * page + 5] {
            *slots.slot_mut(i) = Some([i as u8; 120]);
        }
        for i in [0, page - 1, page, 3 * page + 5] {
            assert_eq!(slots[i], Some([i as u8; 120]));
        }
        assert_eq!(slots.get(1), Some(&None));
        assert_eq!(slots.iter().flatten().count(), 4);
        assert!(slots.allocation_size() <= 4 * PAGE_BYTES + 4 * 16);
    }
}
