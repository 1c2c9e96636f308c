//! Values numbered by a 16-bit index that stays theirs while they live, a removed value's index
//! going to the next value added.
//!
//! A shard's elems name their spec and their pipeline by such an index, which keeps an elem
//! small. The values come and go with the series that use them (a rollup keeping a pod's tag
//! is a new pipeline with every pod), so a table that only appended would grow with every
//! value ever seen and run out of indexes; reusing a freed index keeps it at the values in use.

/// Values by 16-bit index; see the [module docs](self).
#[derive(Debug)]
pub(crate) struct IndexedSlots<T> {
    /// By index; `None` for a freed index, which is in `free`.
    slots: Vec<Option<T>>,
    free: Vec<u16>,
}

impl<T> Default for IndexedSlots<T> {
    fn default() -> Self {
        IndexedSlots {
            slots: Vec::new(),
            free: Vec::new(),
        }
    }
}

impl<T> IndexedSlots<T> {
    /// Whether `limit` values (at most 65,536) are held, so [`add`](Self::add) would refuse.
    pub(crate) fn is_full(&self, limit: usize) -> bool {
        self.free.is_empty() && self.slots.len() >= limit.min(usize::from(u16::MAX) + 1)
    }

    /// Adds `value` under a freed index, or the next one; `None` when [`is_full`](Self::is_full).
    pub(crate) fn add(&mut self, value: T, limit: usize) -> Option<u16> {
        if self.is_full(limit) {
            return None;
        }
        if let Some(index) = self.free.pop()
            && let Some(slot) = self.slots.get_mut(usize::from(index))
        {
            *slot = Some(value);
            return Some(index);
        }
        self.slots.push(Some(value));
        u16::try_from(self.slots.len() - 1).ok()
    }

    /// The value at `index`, if it holds one.
    pub(crate) fn get(&self, index: u16) -> Option<&T> {
        self.slots.get(usize::from(index)).and_then(Option::as_ref)
    }

    /// The value at `index`, if it holds one.
    pub(crate) fn get_mut(&mut self, index: u16) -> Option<&mut T> {
        self.slots
            .get_mut(usize::from(index))
            .and_then(Option::as_mut)
    }

    /// Takes the value at `index` out; the index goes to a later value.
    pub(crate) fn remove(&mut self, index: u16) -> Option<T> {
        let value = self.slots.get_mut(usize::from(index))?.take()?;
        self.free.push(index);
        Some(value)
    }

    /// Every index handed out so far, in order: its value, or `None` while it is free.
    pub(crate) fn slots(&self) -> &[Option<T>] {
        &self.slots
    }

    /// The values held.
    pub(crate) fn values(&self) -> impl Iterator<Item = &T> {
        self.slots.iter().flatten()
    }

    /// How many values are held.
    pub(crate) fn len(&self) -> usize {
        self.slots.len() - self.free.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_freed_index_goes_to_the_next_value_and_the_limit_counts_values_held() {
        let mut slots = IndexedSlots::default();
        assert_eq!(slots.add("a", 2), Some(0));
        assert_eq!(slots.add("b", 2), Some(1));
        assert!(slots.is_full(2));
        assert_eq!(slots.add("c", 2), None);
        assert_eq!(slots.remove(0), Some("a"));
        assert_eq!(slots.remove(0), None, "already free");
        assert_eq!((slots.len(), slots.get(0)), (1, None));
        assert_eq!(slots.slots(), &[None, Some("b")]);
        assert_eq!(slots.add("c", 2), Some(0));
        assert_eq!(slots.values().copied().collect::<Vec<_>>(), vec!["c", "b"]);
        if let Some(value) = slots.get_mut(1) {
            *value = "d";
        }
        assert_eq!(slots.get(1), Some(&"d"));
    }
}
