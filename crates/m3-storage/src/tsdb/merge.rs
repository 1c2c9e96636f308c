//! Merging blocks: the blocks of one longer time range written again as one.
//!
//! A namespace cuts a block per two hours (or 120 windows), so a long retention means hundreds
//! of blocks, each with its own index of the same series: at 100,000 series an index is about
//! 34 MB on disk, and two open files. Prometheus merges old
//! blocks into ranges up to a tenth of the retention; [`merge_blocks`] does that merge for the
//! blocks [`NamespaceDb`](crate::tsdb::db::NamespaceDb) picks.
//!
//! Each source's index is read and checked whole first (a block opened from its summary has
//! not had it read): the merged block's fresh checksum would otherwise make damage in a
//! source look whole, and the sources are deleted once it is in place.
//!
//! The merge streams: every source is read a group of records at a time, in label order, and
//! the merged block is written a series at a time ([`BlockWriter`]), so it never holds the
//! sources' samples, nor the merged index (only its postings until the end). A series' chunks are copied as they are when no two of them overlap in
//! time, which is the common case (each block holds what was cut in its own range). Where they
//! do overlap (samples that came out of order and were cut into a later block), the series'
//! samples are decoded, merged with the later block winning on equal timestamps, exactly as a
//! read merges them, and encoded again.

use std::path::Path;

use crate::tsdb::block::{
    AllSeries, Block, BlockError, BlockWriter, ChunkBytes, ChunkMeta, SeriesChunks,
};
use crate::tsdb::chunk::{Chunk, SealedChunk};
use crate::tsdb::db::merge_newer_wins;
use crate::tsdb::head::CHUNK_SAMPLES;

/// What a merge wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Merged {
    /// Series in the merged block.
    pub series: usize,
    /// Samples in it.
    pub samples: u64,
    /// Series whose chunks overlapped and were decoded and encoded again.
    pub series_rewritten: usize,
}

/// Writes the blocks `sources` (oldest first: a later one wins on equal timestamps) as one
/// block at `dir`, which must not exist yet. The sources are left as they are.
///
/// # Errors
/// Reading a source or writing the block failed (nothing is left at `dir` then).
pub fn merge_blocks(sources: &[&Block], dir: &Path) -> Result<Merged, BlockError> {
    // Sources opened from their summaries have not had their indexes read: checked first, so
    // that damage in one is not written again under the merged block's fresh checksum.
    for source in sources {
        source.check()?;
    }
    // Each source's cursor and the series it is at.
    let mut cursors: Vec<(AllSeries<'_>, Option<SeriesChunks>)> = Vec::new();
    for source in sources {
        let mut cursor = source.all_series();
        let first = cursor.next_series()?;
        cursors.push((cursor, first));
    }
    let mut writer = BlockWriter::create(dir)?;
    let mut merged = Merged::default();
    let (mut min_time, mut max_time) = (i64::MAX, i64::MIN);
    // (source, chunk) of the series being merged, and buffers reused across series.
    let mut pieces: Vec<(usize, ChunkMeta)> = Vec::new();
    let mut by_time: Vec<(usize, ChunkMeta)> = Vec::new();
    let mut bytes: Vec<Vec<u8>> = Vec::new();
    let mut scratch = Vec::new();
    while let Some(labels) = cursors
        .iter()
        .filter_map(|(_, current)| current.as_ref().map(|(labels, _)| labels))
        .min()
        .cloned()
    {
        pieces.clear();
        for (index, (cursor, current)) in cursors.iter_mut().enumerate() {
            if current.as_ref().is_some_and(|(l, _)| *l == labels) {
                if let Some((_, metas)) = current.take() {
                    pieces.extend(metas.into_iter().map(|meta| (index, meta)));
                }
                *current = cursor.next_series()?;
            }
        }
        // Sources in order, each source's chunks in time order: sorted by time, the chunks
        // either follow one another or some overlap.
        by_time.clear();
        by_time.extend_from_slice(&pieces);
        by_time.sort_by_key(|(_, meta)| (meta.first, meta.last));
        let overlapping = by_time.windows(2).any(|w| w[0].1.last >= w[1].1.first);
        if let (Some(first), Some(last)) = (by_time.first(), by_time.iter().map(|p| p.1.last).max())
        {
            min_time = min_time.min(first.1.first);
            max_time = max_time.max(last);
        }
        if overlapping {
            let chunks = merge_samples(sources, &pieces, &mut scratch)?;
            merged.samples += chunks.iter().map(|c| c.len() as u64).sum::<u64>();
            merged.series_rewritten += 1;
            writer.add_series(&labels, chunks.iter().map(ChunkBytes::of))?;
        } else {
            bytes.resize_with(bytes.len().max(by_time.len()), Vec::new);
            for ((source, meta), buffer) in by_time.iter().zip(bytes.iter_mut()) {
                sources[*source].read_chunk(meta, buffer)?;
                merged.samples += u64::from(meta.samples);
            }
            writer.add_series(
                &labels,
                by_time
                    .iter()
                    .zip(&bytes)
                    .map(|((_, meta), bytes)| ChunkBytes {
                        first: meta.first,
                        last: meta.last,
                        samples: meta.samples,
                        bytes,
                    }),
            )?;
        }
        merged.series += 1;
    }
    if merged.series == 0 {
        (min_time, max_time) = (0, 0);
    }
    writer.finish(min_time, max_time)?;
    Ok(merged)
}

/// The samples of `pieces` (in source order) merged as a read merges them, a later source
/// winning on equal timestamps, encoded as chunks of [`CHUNK_SAMPLES`].
fn merge_samples(
    sources: &[&Block],
    pieces: &[(usize, ChunkMeta)],
    bytes: &mut Vec<u8>,
) -> Result<Vec<SealedChunk>, BlockError> {
    let (mut merged, mut run, mut out) = (Vec::new(), Vec::new(), Vec::new());
    for same_source in pieces.chunk_by(|a, b| a.0 == b.0) {
        run.clear();
        for (source, meta) in same_source {
            sources[*source].read_chunk(meta, bytes)?;
            run.extend(Chunk::decode(bytes, meta.samples));
        }
        // Within one block a series' chunks follow one another; sorting is cheap insurance.
        run.sort_by_key(|s: &(i64, f64)| s.0);
        run.dedup_by_key(|s| s.0);
        merge_newer_wins(&merged, &run, &mut out);
        std::mem::swap(&mut merged, &mut out);
    }
    let mut chunks = Vec::with_capacity(merged.len().div_ceil(CHUNK_SAMPLES));
    for part in merged.chunks(CHUNK_SAMPLES) {
        let mut chunk = Chunk::new();
        for &(time, value) in part {
            // Strictly increasing after the merge: every push is taken.
            let _ = chunk.push(time, value);
        }
        chunks.push(chunk.seal());
    }
    Ok(chunks)
}
