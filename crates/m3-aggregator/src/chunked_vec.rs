//! A vector that grows by whole chunks: the slab of a shard's series.
//!
//! A `Vec` that grows copies itself into a larger block and frees the old one; in a heap that
//! also holds millions of small blocks, those freed blocks stay resident as holes. A shard's
//! slab is the largest thing it grows (40 bytes per series), so it grows here by chunks of
//! [`CHUNK`] elements that never move: only the last, while it is smaller than a chunk, is a
//! vector that reallocates. Element `i` is at `chunks[i / CHUNK][i % CHUNK]`.

use std::ops::{Index, IndexMut};

/// Elements per chunk.
const CHUNK: usize = 512;

#[derive(Debug)]
pub(crate) struct ChunkedVec<T> {
    /// Every chunk but the last holds exactly `CHUNK` elements; the last holds 1 to `CHUNK`.
    chunks: Vec<Vec<T>>,
    len: usize,
}

impl<T> Default for ChunkedVec<T> {
    fn default() -> Self {
        ChunkedVec {
            chunks: Vec::new(),
            len: 0,
        }
    }
}

impl<T> ChunkedVec<T> {
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn push(&mut self, value: T) {
        match self.chunks.last_mut() {
            Some(last) if last.len() < CHUNK => {
                if last.len() == last.capacity() {
                    // The last chunk grows as a vector until it is whole.
                    let len = last.len();
                    last.reserve_exact(len.clamp(16, CHUNK - len));
                }
                last.push(value);
            }
            _ => {
                let mut chunk = Vec::with_capacity(if self.chunks.is_empty() { 16 } else { CHUNK });
                chunk.push(value);
                self.chunks.push(chunk);
            }
        }
        self.len += 1;
    }

    pub(crate) fn get(&self, i: usize) -> Option<&T> {
        self.chunks.get(i / CHUNK)?.get(i % CHUNK)
    }

    /// Removes element `i`, moving the last element into its place.
    ///
    /// # Panics
    /// If `i` is out of bounds, as `Vec::swap_remove`.
    pub(crate) fn swap_remove(&mut self, i: usize) -> T {
        assert!(
            i < self.len,
            "swap_remove index {i} out of bounds ({})",
            self.len
        );
        let last_chunk = self.chunks.len() - 1;
        let mut last = match self.chunks[last_chunk].pop() {
            Some(last) => last,
            None => unreachable!("the last chunk is never empty"),
        };
        if self.chunks[last_chunk].is_empty() {
            self.chunks.pop();
        }
        self.len -= 1;
        if i < self.len {
            std::mem::swap(&mut self[i], &mut last);
        }
        last
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &T> {
        self.chunks.iter().flatten()
    }

    pub(crate) fn iter_mut(&mut self) -> impl Iterator<Item = &mut T> {
        self.chunks.iter_mut().flatten()
    }

    /// Heap bytes held (by capacity).
    pub(crate) fn allocation_size(&self) -> usize {
        self.chunks.capacity() * std::mem::size_of::<Vec<T>>()
            + self
                .chunks
                .iter()
                .map(|c| c.capacity() * std::mem::size_of::<T>())
                .sum::<usize>()
    }
}

impl<T> Index<usize> for ChunkedVec<T> {
    type Output = T;

    fn index(&self, i: usize) -> &T {
        &self.chunks[i / CHUNK][i % CHUNK]
    }
}

impl<T> IndexMut<usize> for ChunkedVec<T> {
    fn index_mut(&mut self, i: usize) -> &mut T {
        &mut self.chunks[i / CHUNK][i % CHUNK]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn behaves_as_a_vec_through_pushes_and_swap_removes() {
        let mut chunked = ChunkedVec::default();
        let mut model = Vec::new();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for step in 0..20_000u64 {
            // xorshift: remove about one element in three.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if x.is_multiple_of(3) && !model.is_empty() {
                let i = (x as usize / 3) % model.len();
                assert_eq!(chunked.swap_remove(i), model.swap_remove(i), "step {step}");
            } else {
                chunked.push(step);
                model.push(step);
            }
            assert_eq!(chunked.len(), model.len());
        }
        assert!(chunked.iter().eq(model.iter()));
        for (i, v) in model.iter().enumerate() {
            assert_eq!(chunked[i], *v);
            assert_eq!(chunked.get(i), Some(v));
        }
        assert_eq!(chunked.get(model.len()), None);
        for v in chunked.iter_mut() {
            *v += 1;
        }
        assert!(chunked.iter().copied().eq(model.iter().map(|v| v + 1)));
        while chunked.len() > 0 {
            chunked.swap_remove(0);
        }
        assert_eq!(chunked.allocation_size(), chunked.chunks.capacity() * 24);
    }

    #[test]
    fn whole_chunks_never_reallocate() {
        let mut chunked = ChunkedVec::default();
        for i in 0..CHUNK * 3 + 5 {
            chunked.push(i);
        }
        let first = chunked.chunks[0].as_ptr();
        for i in 0..CHUNK * 2 {
            chunked.push(i);
        }
        assert_eq!(chunked.chunks[0].as_ptr(), first);
        assert!(chunked.chunks.iter().all(|c| c.capacity() <= CHUNK));
    }
}
