//! The bytes of a shard's series IDs, stored end to end in chunks.
//!
//! A heap block per ID costs an allocator header and a 16-byte pointer per series, a fifth of
//! what a series with one open window costs in all. Here an ID is 8 bytes of [`IdRef`] plus
//! its bytes. The arena grows by whole chunks (1 KiB doubling up to 64 KiB; an ID longer than
//! that gets a chunk of its own), never by reallocating: a growing vector would copy itself
//! at every doubling and leave the old copies behind as heap holes.
//!
//! Removing an ID leaves its bytes behind as garbage, except the newest (a series created
//! and dropped in the same batch), which is taken back. Once garbage passes the live bytes,
//! the owner copies the live IDs into fresh chunks ([`IdArena::compact`]): the arena never
//! holds much more than twice its live bytes, and each byte removed is copied at most once
//! on average.

use crate::error::AddError;

/// Where an ID's bytes are: chunk (24 bits), offset in it (16 bits) and length (24 bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IdRef(u64);

const LEN_BITS: u32 = 24;
const OFFSET_BITS: u32 = 16;
const CHUNK_BITS: u32 = 64 - LEN_BITS - OFFSET_BITS;

impl IdRef {
    fn new(chunk: usize, offset: usize, len: usize) -> IdRef {
        IdRef(
            ((chunk as u64) << (OFFSET_BITS + LEN_BITS))
                | ((offset as u64) << LEN_BITS)
                | len as u64,
        )
    }

    fn chunk(self) -> usize {
        (self.0 >> (OFFSET_BITS + LEN_BITS)) as usize
    }

    fn range(self) -> std::ops::Range<usize> {
        let offset = ((self.0 >> LEN_BITS) & ((1 << OFFSET_BITS) - 1)) as usize;
        offset..offset + self.len()
    }

    fn len(self) -> usize {
        (self.0 & ((1 << LEN_BITS) - 1)) as usize
    }
}

/// The smallest and largest shared chunk; offsets in a shared chunk fit in 16 bits.
const MIN_CHUNK: usize = 1 << 10;
const MAX_CHUNK: usize = 1 << OFFSET_BITS;
/// Garbage below this is never worth a compaction.
const MIN_COMPACTED_GARBAGE: usize = 64 * 1024;

/// Series IDs of one shard and category; see the module documentation.
#[derive(Debug, Default)]
pub(crate) struct IdArena {
    /// Each chunk's capacity is fixed when it is created: pushing never reallocates.
    chunks: Vec<Vec<u8>>,
    /// Bytes of the chunks no [`IdRef`] refers to.
    garbage: usize,
    /// Bytes stored, garbage included.
    stored: usize,
}

impl IdArena {
    /// The longest ID stored.
    pub(crate) const MAX_LEN: usize = (1 << LEN_BITS) - 1;

    /// Stores `id`.
    ///
    /// # Errors
    /// [`AddError::IdTooLong`] for an ID longer than [`MAX_LEN`](Self::MAX_LEN) (or, before
    /// that could happen, 2^24 chunks: a terabyte of IDs in one shard).
    pub(crate) fn push(&mut self, id: &[u8]) -> Result<IdRef, AddError> {
        let too_long = || AddError::IdTooLong {
            len: id.len(),
            max: Self::MAX_LEN,
        };
        if id.len() > Self::MAX_LEN {
            return Err(too_long());
        }
        let fits = self
            .chunks
            .last()
            .is_some_and(|c| c.capacity() <= MAX_CHUNK && c.capacity() - c.len() >= id.len());
        if !fits {
            if self.chunks.len() >= 1 << CHUNK_BITS {
                return Err(too_long());
            }
            let shared = MIN_CHUNK << self.chunks.len().min(6);
            self.chunks.push(Vec::with_capacity(shared.max(id.len())));
        }
        let chunk_index = self.chunks.len() - 1;
        let chunk = &mut self.chunks[chunk_index];
        // A chunk longer than MAX_CHUNK holds one ID at offset 0.
        let offset = chunk.len();
        chunk.extend_from_slice(id);
        self.stored += id.len();
        Ok(IdRef::new(chunk_index, offset, id.len()))
    }

    /// The bytes of `id`.
    pub(crate) fn get(&self, id: IdRef) -> &[u8] {
        &self.chunks[id.chunk()][id.range()]
    }

    /// Gives back the bytes of `id`, which no longer refers to anything.
    pub(crate) fn release(&mut self, id: IdRef) {
        let chunk_index = id.chunk();
        let range = id.range();
        if chunk_index + 1 == self.chunks.len() && range.end == self.chunks[chunk_index].len() {
            // The newest ID: taken back (with its chunk, if it was the chunk's only one).
            self.chunks[chunk_index].truncate(range.start);
            if range.start == 0 {
                self.chunks.pop();
            }
            self.stored -= range.len();
        } else {
            self.garbage += range.len();
        }
    }

    /// Whether garbage is more than the live bytes (and enough to be worth copying them).
    pub(crate) fn needs_compaction(&self) -> bool {
        self.garbage >= MIN_COMPACTED_GARBAGE && self.garbage > self.stored - self.garbage
    }

    /// Copies every live ID (each `ids` yields, which must be all of them) into fresh chunks,
    /// updating each reference.
    pub(crate) fn compact<'a>(&mut self, ids: impl Iterator<Item = &'a mut IdRef>) {
        let old = std::mem::take(self);
        for id in ids {
            let bytes = old.get(*id);
            // Every live ID was stored before, so it fits again.
            if let Ok(moved) = self.push(bytes) {
                *id = moved;
            }
        }
    }

    /// Heap bytes held (chunks by capacity).
    pub(crate) fn allocation_size(&self) -> usize {
        self.chunks.capacity() * std::mem::size_of::<Vec<u8>>()
            + self.chunks.iter().map(Vec::capacity).sum::<usize>()
    }

    /// Bytes stored, garbage included.
    #[cfg(test)]
    pub(crate) fn stored(&self) -> usize {
        self.stored
    }

    /// Bytes of garbage.
    #[cfg(test)]
    pub(crate) fn garbage(&self) -> usize {
        self.garbage
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(i: u32, len: usize) -> Vec<u8> {
        let mut id = vec![b'x'; len.max(4)];
        id[..4].copy_from_slice(&i.to_be_bytes());
        id
    }

    #[test]
    fn ids_come_back_whole_across_chunks_of_every_size() {
        let mut arena = IdArena::default();
        let lens = [
            4,
            70,
            1000,
            1024,
            5000,
            MAX_CHUNK,
            MAX_CHUNK + 1,
            300_000,
            7,
        ];
        let mut stored = Vec::new();
        for round in 0..40u32 {
            for (k, &len) in lens.iter().enumerate() {
                let bytes = id(round * 100 + k as u32, len);
                stored.push((arena.push(&bytes).unwrap(), bytes));
            }
        }
        for (r, bytes) in &stored {
            assert_eq!(arena.get(*r), &bytes[..]);
        }
        // No chunk ever grew past its first capacity.
        for c in &arena.chunks {
            assert!(c.len() <= c.capacity());
        }
    }

    #[test]
    fn the_newest_id_is_taken_back_and_others_become_garbage() {
        let mut arena = IdArena::default();
        let a = arena.push(b"first").unwrap();
        let b = arena.push(b"second").unwrap();
        arena.release(b);
        assert_eq!((arena.stored(), arena.garbage()), (5, 0));
        let c = arena.push(b"third").unwrap();
        arena.release(a);
        assert_eq!((arena.stored(), arena.garbage()), (10, 5));
        assert_eq!(arena.get(c), b"third");
    }

    #[test]
    fn compaction_keeps_the_live_ids_only() {
        let mut arena = IdArena::default();
        let mut refs: Vec<(IdRef, Vec<u8>)> = (0..2000)
            .map(|i| {
                let bytes = id(i, 100);
                (arena.push(&bytes).unwrap(), bytes)
            })
            .collect();
        let mut kept = Vec::new();
        for (i, (r, bytes)) in refs.drain(..).enumerate() {
            if i % 4 == 0 {
                kept.push((r, bytes));
            } else {
                arena.release(r);
            }
        }
        assert!(arena.needs_compaction());
        let before = arena.allocation_size();
        arena.compact(kept.iter_mut().map(|(r, _)| r));
        assert_eq!((arena.stored(), arena.garbage()), (500 * 100, 0));
        assert!(!arena.needs_compaction());
        assert!(arena.allocation_size() < before / 2);
        for (r, bytes) in &kept {
            assert_eq!(arena.get(*r), &bytes[..]);
        }
    }

    #[test]
    fn an_id_longer_than_the_limit_is_refused() {
        let mut arena = IdArena::default();
        let long = vec![b'a'; IdArena::MAX_LEN + 1];
        assert_eq!(
            arena.push(&long),
            Err(AddError::IdTooLong {
                len: IdArena::MAX_LEN + 1,
                max: IdArena::MAX_LEN
            })
        );
        let longest = &long[..IdArena::MAX_LEN];
        let r = arena.push(longest).unwrap();
        assert_eq!(arena.get(r), longest);
        assert_eq!(arena.stored(), IdArena::MAX_LEN);
    }
}
