//! The out-of-order samples of a head's series, held beside the series rather than in them.
//!
//! A sample at or before its series' newest time is kept in a small sorted buffer until
//! [`OUT_OF_ORDER_FOLD`](crate::tsdb::head::OUT_OF_ORDER_FOLD) gather (see the head's module
//! docs). Regular scrapes and aggregated outputs never produce one, so almost every series has
//! no buffer; a pointer to one in every series still took 8 bytes of each series of each head
//! (2.4 MB at 100,000 series in three namespaces). The buffers live in one map per head
//! instead, keyed by series reference, and a head with none (the usual case) answers every
//! lookup without hashing.
//!
//! The head keeps the map in step with its slots: a series removed takes its buffer with it,
//! one moved to another slot moves it, and a slot given to a new series starts without one.

use rustc_hash::FxHashMap;

use crate::tsdb::head::SeriesRef;

/// One series' buffer: sorted by time, one sample per time.
pub(crate) type Buffer = Vec<(i64, f64)>;

/// The out-of-order buffers of one head's series; see the [module docs](self).
#[derive(Debug, Default)]
pub(crate) struct OutOfOrderBuffers {
    by_series: FxHashMap<SeriesRef, Buffer>,
}

impl OutOfOrderBuffers {
    /// Series `reference`'s buffered samples, sorted by time (empty without a buffer).
    #[inline]
    pub(crate) fn of(&self, reference: SeriesRef) -> &[(i64, f64)] {
        if self.by_series.is_empty() {
            return &[];
        }
        self.by_series.get(&reference).map_or(&[], Vec::as_slice)
    }

    /// Puts `(time, value)` into series `reference`'s buffer, replacing the value at an equal
    /// time; the buffer's length after.
    pub(crate) fn insert(&mut self, reference: SeriesRef, time: i64, value: f64) -> usize {
        let buffer = self.by_series.entry(reference).or_default();
        match buffer.binary_search_by_key(&time, |s| s.0) {
            Ok(i) => buffer[i].1 = value,
            Err(i) => buffer.insert(i, (time, value)),
        }
        buffer.len()
    }

    /// Takes series `reference`'s buffer out (empty without one).
    pub(crate) fn take(&mut self, reference: SeriesRef) -> Buffer {
        if self.by_series.is_empty() {
            return Buffer::new();
        }
        self.by_series.remove(&reference).unwrap_or_default()
    }

    /// Keeps only the samples of series `reference` that `keep` says; none left drops the
    /// buffer. How many went.
    pub(crate) fn retain(
        &mut self,
        reference: SeriesRef,
        keep: impl FnMut(&(i64, f64)) -> bool,
    ) -> usize {
        let Some(buffer) = self.by_series.get_mut(&reference) else {
            return 0;
        };
        let before = buffer.len();
        buffer.retain(keep);
        let dropped = before - buffer.len();
        if buffer.is_empty() {
            self.by_series.remove(&reference);
        }
        dropped
    }

    /// Gives series `from`'s buffer to `to` (a series moved to another slot).
    pub(crate) fn move_buffer(&mut self, from: SeriesRef, to: SeriesRef) {
        let buffer = self.take(from);
        if !buffer.is_empty() {
            self.by_series.insert(to, buffer);
        }
    }

    /// Heap bytes held: the map's table and the buffers.
    pub(crate) fn heap_bytes(&self) -> usize {
        let entry = std::mem::size_of::<(SeriesRef, Buffer)>() + 1;
        self.by_series.capacity() * entry
            + self
                .by_series
                .values()
                .map(|b| b.capacity() * std::mem::size_of::<(i64, f64)>())
                .sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_stay_sorted_replace_equal_times_and_follow_their_series() {
        let mut buffers = OutOfOrderBuffers::default();
        assert!(buffers.of(3).is_empty());
        assert_eq!(buffers.insert(3, 20, 2.0), 1);
        assert_eq!(buffers.insert(3, 10, 1.0), 2);
        assert_eq!(buffers.insert(3, 20, 5.0), 2);
        assert_eq!(buffers.of(3), &[(10, 1.0), (20, 5.0)]);
        assert!(buffers.of(4).is_empty());

        buffers.move_buffer(3, 7);
        assert!(buffers.of(3).is_empty());
        assert_eq!(buffers.of(7), &[(10, 1.0), (20, 5.0)]);

        assert_eq!(buffers.retain(7, |s| s.0 > 10), 1);
        assert_eq!(buffers.of(7), &[(20, 5.0)]);
        assert_eq!(buffers.retain(7, |_| false), 1);
        assert!(buffers.by_series.is_empty(), "an emptied buffer goes");

        buffers.insert(1, 5, 0.5);
        assert_eq!(buffers.take(1), vec![(5, 0.5)]);
        assert!(buffers.take(1).is_empty());
        assert_eq!(buffers.heap_bytes(), buffers.by_series.capacity() * 33);
    }
}
