//! The closed chunks of one head series, packed into one byte buffer.
//!
//! A series closes a chunk every [`CHUNK_SAMPLES`](crate::tsdb::head::CHUNK_SAMPLES) samples and
//! the head keeps up to one and a half block ranges of them, so what the head remembers of each
//! closed chunk is paid once per 120 samples of every series: at a sample every 15 s, six
//! chunks per series over three hours; under a load test writing each series fifteen times a
//! second, one every eight seconds. Held as fixed-size records (where the chunk is in the
//! head's files, its first and last time, its sample count) a chunk took 24 to 32 bytes.
//! Packed as varints, with the first time relative to the series' first chunk and the last
//! relative to the first, one takes about twelve.
//!
//! ```text
//! entry:  kind     varint   segment × 2 for a chunk in the files, 1 for one in memory
//!         first    varint   first time − the first entry's first time (0 for the first entry)
//!         span     varint   last time − first time
//!         count    varint
//!         in the files: offset varint, length varint
//!         in memory:    length varint, the chunk's bytes
//! ```
//!
//! Differences are taken modulo 2^64, so any times round-trip; the usual ones are small. A
//! chunk the files could not take (no files, a full disk) keeps its bytes inline. Appending is
//! one reallocation to the exact new length and reads only the first entry; dropping chunks
//! (retention, a block cut) re-packs what is left, once per pass.

use crate::tsdb::chunk::{Chunk, SealedChunk};
use crate::tsdb::chunk_files::ChunkLocation;
use crate::tsdb::varint;

/// One closed chunk: what it covers and where its bytes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ClosedChunk<'a> {
    pub(crate) first_time: i64,
    pub(crate) last_time: i64,
    /// Samples (never 0 in a head: a chunk is closed full).
    pub(crate) count: u32,
    pub(crate) place: Place<'a>,
}

/// Where a closed chunk's bytes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Place<'a> {
    /// In the head's chunk files.
    File(ChunkLocation),
    /// Here, in the packed list: the files could not take them.
    Memory(&'a [u8]),
}

impl<'a> ClosedChunk<'a> {
    /// `chunk`, at `location` in the files, or kept in memory when it has none.
    pub(crate) fn of(chunk: &'a Chunk, location: Option<ChunkLocation>) -> ClosedChunk<'a> {
        ClosedChunk {
            first_time: chunk.first_time(),
            last_time: chunk.last_time(),
            count: chunk.len() as u32,
            place: location.map_or(Place::Memory(chunk.bytes()), Place::File),
        }
    }

    pub(crate) fn first_time(&self) -> i64 {
        self.first_time
    }

    pub(crate) fn last_time(&self) -> i64 {
        self.last_time
    }

    pub(crate) fn len(&self) -> usize {
        self.count as usize
    }

    /// The size of the chunk's encoded bytes.
    pub(crate) fn encoded_len(&self) -> usize {
        match self.place {
            Place::File(location) => location.len(),
            Place::Memory(bytes) => bytes.len(),
        }
    }

    /// The chunk as a block takes it, with `bytes` (its own when they are in memory).
    pub(crate) fn sealed(&self, bytes: Box<[u8]>) -> SealedChunk {
        SealedChunk::from_parts(bytes, self.count, self.first_time, self.last_time)
    }
}

/// The closed chunks of a series, oldest first; see the [module docs](self).
#[derive(Debug, Default)]
pub(crate) struct ClosedChunks {
    packed: Box<[u8]>,
}

/// The `kind` of an entry in memory.
const IN_MEMORY: u64 = 1;

impl ClosedChunks {
    pub(crate) fn is_empty(&self) -> bool {
        self.packed.is_empty()
    }

    /// How many chunks (counted by reading the list).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.iter().count()
    }

    /// Heap bytes held.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.packed.len()
    }

    pub(crate) fn iter(&self) -> Iter<'_> {
        Iter {
            rest: &self.packed,
            base: None,
        }
    }

    /// The newest chunk (which must not end before the ones held).
    pub(crate) fn push(&mut self, chunk: ClosedChunk<'_>) {
        let base = self.iter().next().map_or(0, |first| first.first_time);
        let mut entry = Vec::new();
        encode(&chunk, base, &mut entry);
        let mut packed = std::mem::take(&mut self.packed).into_vec();
        // Exactly this much more: the list stays a boxed slice.
        packed.reserve_exact(entry.len());
        packed.extend_from_slice(&entry);
        self.packed = packed.into_boxed_slice();
    }
}

impl<'a> FromIterator<ClosedChunk<'a>> for ClosedChunks {
    fn from_iter<I: IntoIterator<Item = ClosedChunk<'a>>>(chunks: I) -> ClosedChunks {
        let mut packed = Vec::new();
        // The first entry's own first time is the base of every later one.
        let mut base = None;
        for chunk in chunks {
            encode(&chunk, base.unwrap_or(0), &mut packed);
            base.get_or_insert(chunk.first_time);
        }
        ClosedChunks {
            packed: packed.into_boxed_slice(),
        }
    }
}

/// Appends `chunk`'s entry, its first time relative to `base`.
fn encode(chunk: &ClosedChunk<'_>, base: i64, out: &mut Vec<u8>) {
    let kind = match chunk.place {
        Place::File(location) => u64::from(location.parts().0) << 1,
        Place::Memory(_) => IN_MEMORY,
    };
    varint::put(out, kind);
    varint::put(out, chunk.first_time.wrapping_sub(base) as u64);
    varint::put(out, chunk.last_time.wrapping_sub(chunk.first_time) as u64);
    varint::put(out, u64::from(chunk.count));
    match chunk.place {
        Place::File(location) => {
            let (_, offset, len) = location.parts();
            varint::put(out, u64::from(offset));
            varint::put(out, u64::from(len));
        }
        Place::Memory(bytes) => {
            varint::put(out, bytes.len() as u64);
            out.extend_from_slice(bytes);
        }
    }
}

/// The chunks of a [`ClosedChunks`], oldest first.
#[derive(Debug, Clone)]
pub(crate) struct Iter<'a> {
    rest: &'a [u8],
    /// The first entry's first time, once it is read.
    base: Option<i64>,
}

impl<'a> Iter<'a> {
    /// The next entry; `None` at the end (or, were the list ever malformed, there).
    fn decode(&mut self) -> Option<ClosedChunk<'a>> {
        let rest = &mut self.rest;
        let kind = varint::take(rest)?;
        let first_time = (varint::take(rest)? as i64).wrapping_add(self.base.unwrap_or(0));
        let last_time = first_time.wrapping_add(varint::take(rest)? as i64);
        let count = u32::try_from(varint::take(rest)?).ok()?;
        let place = if kind == IN_MEMORY {
            let len = usize::try_from(varint::take(rest)?).ok()?;
            let (bytes, after) = rest.split_at_checked(len)?;
            *rest = after;
            Place::Memory(bytes)
        } else {
            let segment = u32::try_from(kind >> 1).ok()?;
            let offset = u32::try_from(varint::take(rest)?).ok()?;
            let len = u32::try_from(varint::take(rest)?).ok()?;
            Place::File(ChunkLocation::from_parts(segment, offset, len))
        };
        self.base.get_or_insert(first_time);
        Some(ClosedChunk {
            first_time,
            last_time,
            count,
            place,
        })
    }
}

impl<'a> Iterator for Iter<'a> {
    type Item = ClosedChunk<'a>;

    fn next(&mut self) -> Option<ClosedChunk<'a>> {
        if self.rest.is_empty() {
            return None;
        }
        let chunk = self.decode();
        debug_assert!(chunk.is_some(), "a packed chunk list that does not decode");
        if chunk.is_none() {
            self.rest = &[];
        }
        chunk
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn chunk(first: i64, span: i64, count: u32, place: Place<'_>) -> ClosedChunk<'_> {
        ClosedChunk {
            first_time: first,
            last_time: first.wrapping_add(span),
            count,
            place,
        }
    }

    fn place(in_memory: bool, bytes: &[u8], segment: u32, offset: u32) -> Place<'_> {
        if in_memory {
            Place::Memory(bytes)
        } else {
            Place::File(ChunkLocation::from_parts(
                segment,
                offset,
                bytes.len() as u32,
            ))
        }
    }

    proptest! {
        /// Whatever the times, places and counts, pushing chunks one by one and collecting
        /// them at once give the same list, and it reads back as given.
        #[test]
        fn chunks_read_back_as_pushed(
            entries in prop::collection::vec(
                (any::<i64>(), any::<i64>(), any::<u32>(), any::<bool>(),
                 prop::collection::vec(any::<u8>(), 0..40), any::<u32>(), any::<u32>()),
                0..12,
            )
        ) {
            let chunks: Vec<ClosedChunk<'_>> = entries
                .iter()
                .map(|(first, span, count, in_memory, bytes, segment, offset)| {
                    chunk(*first, *span, *count, place(*in_memory, bytes, *segment, *offset))
                })
                .collect();
            let mut pushed = ClosedChunks::default();
            for c in &chunks {
                pushed.push(*c);
            }
            let collected: ClosedChunks = chunks.iter().copied().collect();
            prop_assert_eq!(pushed.iter().collect::<Vec<_>>(), chunks.clone());
            prop_assert_eq!(collected.iter().collect::<Vec<_>>(), chunks.clone());
            prop_assert_eq!(pushed.len(), chunks.len());
            prop_assert_eq!(pushed.is_empty(), chunks.is_empty());
        }
    }

    /// Chunks in the files as a head closes them take at most two thirds of the 24 bytes of a
    /// fixed record: over a three-hour head at a 15 s scrape (six chunks of 120 samples), and
    /// at the fifteen samples a second of `m3 bench` after 90 s (eleven).
    #[test]
    fn chunks_in_the_files_take_at_most_sixteen_bytes_each() {
        for (interval, chunks) in [(15_000, 6), (66, 11)] {
            let mut list = ClosedChunks::default();
            let start = 1_700_000_000_000;
            let span = 119 * interval;
            for i in 0..chunks {
                let first = start + i * (span + interval);
                let location = ChunkLocation::from_parts(3, 40_000_000 + i as u32 * 300, 300);
                list.push(chunk(first, span, 120, Place::File(location)));
            }
            assert_eq!(list.len(), chunks as usize);
            let per_chunk = list.heap_bytes() as f64 / chunks as f64;
            assert!(
                per_chunk <= 16.0,
                "{per_chunk} bytes a chunk at {interval} ms"
            );
            let last = list.iter().last().unwrap();
            assert_eq!(last.first_time, start + (chunks - 1) * (span + interval));
            assert_eq!(last.last_time - last.first_time, span);
        }
    }
}
