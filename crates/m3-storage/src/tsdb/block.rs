//! Immutable blocks: the samples of one time range of a namespace, on disk, found without
//! scanning every series.
//!
//! A block is a directory holding two files:
//!
//! ```text
//! chunks   the chunks' encoded bytes, back to back
//! index    "M3BLOCK1" | min time i64 | max time i64
//!          | series count u32 | per series, sorted by labels:
//!          |   label count u16 | (name len u32, name, value len u32, value)…
//!          |   chunk count u32 | (first i64, last i64, samples u32, offset u64, length u32)…
//!          | postings count u32 | per (name, value), sorted:
//!          |   name len u32, name, value len u32, value, series count u32, series u32…
//!          | CRC-32 of everything before (u32)                          (all little-endian)
//! ```
//!
//! [`write_block`] writes both into a temporary directory, syncs them and renames it into
//! place, so a block is either whole or absent. [`Block::open`] reads and checks the index
//! (its checksum, every length and offset against the chunks file), keeps it in memory and reads
//! chunk bytes from the file when a query needs them. Nothing in either file can make it panic.
//! Retention deletes a block's directory once its max time is past.

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::labels::Labels;
use crate::matcher::Matcher;
use crate::tsdb::chunk::{Chunk, SealedChunk};
use crate::tsdb::head::chunk_has_samples_in;

const MAGIC: &[u8; 8] = b"M3BLOCK1";
const INDEX_FILE: &str = "index";
const CHUNKS_FILE: &str = "chunks";

/// One series' samples to write: its labels and its chunks in time order.
pub type BlockSeries<'a> = (&'a Labels, Vec<&'a SealedChunk>);

/// Why a block could not be written or opened.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// Reading or writing its files failed.
    #[error("block {dir}: {source}")]
    Io {
        /// The block's directory.
        dir: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// Its files do not hold a block.
    #[error("block {dir} is corrupt: {reason}")]
    Corrupt {
        /// The block's directory.
        dir: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// Where one chunk is, and what it covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ChunkMeta {
    first: i64,
    last: i64,
    samples: u32,
    offset: u64,
    length: u32,
}

/// A block open for reading: its index kept as the file's bytes, read where a query needs it.
///
/// A block's series stay until retention, and a namespace has a block per two hours of it.
/// Parsed (labels, postings as maps of strings) an index took 435 bytes per series per block;
/// as the file's bytes, with where each series record starts, it takes 335, the file's size
/// (`block/memory` in `benches/tsdb.rs`: 100,000 series of ten labels). A postings entry is
/// found from the mark of every sixteenth, walking at most that many entries.
#[derive(Debug)]
pub struct Block {
    dir: PathBuf,
    min_time: i64,
    max_time: i64,
    chunks: File,
    /// The index file, checked whole when opened.
    index: Box<[u8]>,
    /// Where each series record starts in `index`, by position.
    series_offsets: Box<[usize]>,
    posting_count: u32,
    /// The offset in `index` of postings entry `i * MARK_EVERY`, for each `i`.
    posting_marks: Box<[usize]>,
    sample_count: u64,
    chunk_bytes: u64,
}

/// See [`Block`]: one postings entry in this many has its offset kept.
const MARK_EVERY: usize = 16;

/// One series record of the index, borrowed.
#[derive(Debug, Clone, Copy)]
struct SeriesRecord<'a> {
    label_count: u16,
    /// The (name, value) pairs, each as `len u32, bytes`.
    pairs: &'a [u8],
    /// The chunk metadata, 32 bytes each.
    metas: &'a [u8],
}

impl<'a> SeriesRecord<'a> {
    /// Reads the record at the front of `reader`.
    fn read(reader: &mut Reader<'a>) -> Result<SeriesRecord<'a>, String> {
        let label_count = u16::from_le_bytes(reader.array()?);
        let start = reader.bytes;
        for _ in 0..2 * u32::from(label_count) {
            let len = reader.u32()? as usize;
            reader.take(len)?;
        }
        let pairs = &start[..start.len() - reader.bytes.len()];
        let chunk_count = reader.count(32)?;
        let metas = reader.take(chunk_count * 32)?;
        Ok(SeriesRecord {
            label_count,
            pairs,
            metas,
        })
    }

    /// The (name, value) pairs; a pair that is not UTF-8 (the file changed since it was
    /// checked) ends them.
    fn pairs(&self) -> Pairs<'a> {
        Pairs {
            reader: Reader { bytes: self.pairs },
            left: self.label_count,
        }
    }

    /// The labels, as [`check_index`] found them: sorted, distinct, none empty.
    fn labels(&self) -> Labels {
        Labels::from_valid_pairs(self.pairs())
    }

    /// Whether the series' labels satisfy every matcher (a missing label is "").
    fn matches(&self, matchers: &[Matcher]) -> bool {
        matchers.iter().all(|m| {
            let value = self
                .pairs()
                .find(|(name, _)| *name == m.name())
                .map_or("", |(_, value)| value);
            m.matches_value(value)
        })
    }

    fn metas(&self) -> impl Iterator<Item = ChunkMeta> + 'a {
        // Each piece is 32 bytes, so every read succeeds.
        self.metas.chunks_exact(32).filter_map(|m| {
            let mut reader = Reader { bytes: m };
            Some(ChunkMeta {
                first: reader.i64().ok()?,
                last: reader.i64().ok()?,
                samples: reader.u32().ok()?,
                offset: u64::from_le_bytes(reader.array().ok()?),
                length: reader.u32().ok()?,
            })
        })
    }
}

/// Writes `series` (sorted by labels or not) as the block of `min_time..=max_time` into
/// `dir`, which must not exist yet.
///
/// # Errors
/// I/O errors (nothing is left at `dir` then).
pub fn write_block(
    dir: &Path,
    min_time: i64,
    max_time: i64,
    series: &mut [BlockSeries<'_>],
) -> Result<(), BlockError> {
    let io_error = |source| BlockError::Io {
        dir: dir.to_path_buf(),
        source,
    };
    series.sort_by(|a, b| a.0.cmp(b.0));
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temporary = dir.with_file_name(format!(".{name}.tmp"));
    if temporary.exists() {
        std::fs::remove_dir_all(&temporary).map_err(io_error)?;
    }
    std::fs::create_dir_all(&temporary).map_err(io_error)?;
    let written = (|| -> io::Result<()> {
        let mut chunks = io::BufWriter::new(File::create(temporary.join(CHUNKS_FILE))?);
        let mut index = Vec::new();
        index.extend_from_slice(MAGIC);
        index.extend_from_slice(&min_time.to_le_bytes());
        index.extend_from_slice(&max_time.to_le_bytes());
        index.extend_from_slice(&(series.len() as u32).to_le_bytes());
        let mut offset = 0u64;
        let mut postings: Vec<((&str, &str), u32)> = Vec::new();
        for (position, (labels, series_chunks)) in series.iter().enumerate() {
            put_labels(&mut index, labels);
            index.extend_from_slice(&(series_chunks.len() as u32).to_le_bytes());
            for chunk in series_chunks {
                let bytes = chunk.bytes();
                chunks.write_all(bytes)?;
                index.extend_from_slice(&chunk.first_time().to_le_bytes());
                index.extend_from_slice(&chunk.last_time().to_le_bytes());
                index.extend_from_slice(&(chunk.len() as u32).to_le_bytes());
                index.extend_from_slice(&offset.to_le_bytes());
                index.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
                offset += bytes.len() as u64;
            }
            postings.extend(labels.iter().map(|pair| (pair, position as u32)));
        }
        postings.sort_unstable();
        let mut groups: Vec<((&str, &str), Vec<u32>)> = Vec::new();
        for (pair, position) in postings {
            match groups.last_mut() {
                Some((last, list)) if *last == pair => list.push(position),
                _ => groups.push((pair, vec![position])),
            }
        }
        index.extend_from_slice(&(groups.len() as u32).to_le_bytes());
        for ((name, value), list) in &groups {
            put_text(&mut index, name);
            put_text(&mut index, value);
            index.extend_from_slice(&(list.len() as u32).to_le_bytes());
            for position in list {
                index.extend_from_slice(&position.to_le_bytes());
            }
        }
        let crc = crc32fast::hash(&index);
        index.extend_from_slice(&crc.to_le_bytes());
        let chunks = chunks
            .into_inner()
            .map_err(io::IntoInnerError::into_error)?;
        chunks.sync_all()?;
        let mut index_file = File::create(temporary.join(INDEX_FILE))?;
        index_file.write_all(&index)?;
        index_file.sync_all()?;
        File::open(&temporary)?.sync_all()?;
        std::fs::rename(&temporary, dir)?;
        if let Some(parent) = dir.parent() {
            File::open(parent)?.sync_all()?;
        }
        Ok(())
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_dir_all(&temporary);
        return Err(io_error(e));
    }
    Ok(())
}

fn put_text(out: &mut Vec<u8>, text: &str) {
    out.extend_from_slice(&(text.len() as u32).to_le_bytes());
    out.extend_from_slice(text.as_bytes());
}

fn put_labels(out: &mut Vec<u8>, labels: &Labels) {
    // Label sets of more than u16::MAX labels do not come through remote write's limits; the
    // count saturates rather than wraps.
    out.extend_from_slice(&(labels.len().min(usize::from(u16::MAX)) as u16).to_le_bytes());
    for (name, value) in labels.iter().take(usize::from(u16::MAX)) {
        put_text(out, name);
        put_text(out, value);
    }
}

/// The (name, value) pairs of a [`SeriesRecord`].
#[derive(Clone)]
struct Pairs<'a> {
    reader: Reader<'a>,
    left: u16,
}

impl<'a> Iterator for Pairs<'a> {
    type Item = (&'a str, &'a str);

    fn next(&mut self) -> Option<(&'a str, &'a str)> {
        self.left = self.left.checked_sub(1)?;
        let name = self.reader.str().ok()?;
        let value = self.reader.str().ok()?;
        Some((name, value))
    }
}

/// Reads the index's fields, every read checked.
#[derive(Clone)]
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.bytes.len() < n {
            return Err(format!("index ends {} bytes early", n - self.bytes.len()));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn i64(&mut self) -> Result<i64, String> {
        Ok(i64::from_le_bytes(self.array()?))
    }

    fn str(&mut self) -> Result<&'a str, String> {
        let len = self.u32()? as usize;
        std::str::from_utf8(self.take(len)?).map_err(|_| "a label is not UTF-8".into())
    }

    /// A count of items at least `item_bytes` long each: refused when the rest cannot hold
    /// them, so a corrupt count cannot make the reader allocate.
    fn count(&mut self, item_bytes: usize) -> Result<usize, String> {
        let count = self.u32()? as usize;
        if count.saturating_mul(item_bytes) > self.bytes.len() {
            return Err(format!("a count of {count} does not fit the index"));
        }
        Ok(count)
    }
}

impl Block {
    /// Opens the block in `dir`, checking its index (its checksum, every length, offset and
    /// position) against its chunks file.
    ///
    /// # Errors
    /// I/O errors; [`BlockError::Corrupt`] when the files do not hold a whole block.
    pub fn open(dir: &Path) -> Result<Block, BlockError> {
        let io_error = |source| BlockError::Io {
            dir: dir.to_path_buf(),
            source,
        };
        let corrupt = |reason: String| BlockError::Corrupt {
            dir: dir.to_path_buf(),
            reason,
        };
        let index = std::fs::read(dir.join(INDEX_FILE)).map_err(io_error)?;
        let chunks = File::open(dir.join(CHUNKS_FILE)).map_err(io_error)?;
        let chunks_len = chunks.metadata().map_err(io_error)?.len();
        let checked = check_index(&index, chunks_len).map_err(corrupt)?;
        Ok(Block {
            dir: dir.to_path_buf(),
            min_time: checked.min_time,
            max_time: checked.max_time,
            chunks,
            index: index.into_boxed_slice(),
            series_offsets: checked.series_offsets.into_boxed_slice(),
            posting_count: checked.posting_count,
            posting_marks: checked.posting_marks.into_boxed_slice(),
            sample_count: checked.sample_count,
            chunk_bytes: checked.chunk_bytes,
        })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The first and last time the block covers (ms).
    pub fn time_range(&self) -> (i64, i64) {
        (self.min_time, self.max_time)
    }

    /// Series in the block.
    pub fn series_count(&self) -> usize {
        self.series_offsets.len()
    }

    /// Samples in the block.
    pub fn sample_count(&self) -> u64 {
        self.sample_count
    }

    /// Bytes of the chunks file (the samples' share of the block on disk).
    pub fn chunk_bytes(&self) -> u64 {
        self.chunk_bytes
    }

    /// A reader of the index from `offset` on (empty past its end).
    fn reader_at(&self, offset: usize) -> Reader<'_> {
        Reader {
            bytes: self.index.get(offset..).unwrap_or_default(),
        }
    }

    /// Series record `position`.
    fn series(&self, position: u32) -> Option<SeriesRecord<'_>> {
        let offset = *self.series_offsets.get(position as usize)?;
        SeriesRecord::read(&mut self.reader_at(offset)).ok()
    }

    /// The postings entries of label `name`, from its value `from` on: (value, positions as
    /// 4-byte little-endian).
    fn postings_of<'a>(
        &'a self,
        name: &'a str,
        from: &'a str,
    ) -> impl Iterator<Item = (&'a str, &'a [u8])> {
        // The last mark whose entry sorts before (name, from): the entries wanted start after
        // it, within the next MARK_EVERY.
        let entry = |offset: usize| {
            let mut reader = self.reader_at(offset);
            Some((reader.str().ok()?, reader.str().ok()?))
        };
        let first = self
            .posting_marks
            .partition_point(|&offset| entry(offset).is_some_and(|e| e < (name, from)));
        let start = first.saturating_sub(1);
        let mut reader = self.reader_at(self.posting_marks.get(start).copied().unwrap_or(0));
        let mut left = (self.posting_count as usize).saturating_sub(start * MARK_EVERY);
        std::iter::from_fn(move || {
            while left > 0 {
                left -= 1;
                let entry_name = reader.str().ok()?;
                let value = reader.str().ok()?;
                let count = reader.u32().ok()? as usize;
                let list = reader.take(count.checked_mul(4)?).ok()?;
                match (entry_name, value).cmp(&(name, from)) {
                    std::cmp::Ordering::Less => continue,
                    _ if entry_name == name => return Some((value, list)),
                    _ => return None,
                }
            }
            None
        })
    }

    /// The series matching every matcher (all for none), as positions in the block with their
    /// labels.
    pub fn matching(&self, matchers: &[Matcher]) -> Vec<(u32, Labels)> {
        let mut candidates: Option<Vec<u32>> = None;
        for matcher in matchers.iter().filter(|m| !m.matches_empty()) {
            // An `=` matcher's entry is found directly; the others look at every value.
            let (from, only) = match matcher {
                Matcher::Equal { value, .. } => (value.as_str(), true),
                _ => ("", false),
            };
            let mut found: Vec<u32> = self
                .postings_of(matcher.name(), from)
                .take_while(|(value, _)| !only || *value == from)
                .filter(|(value, _)| matcher.matches_value(value))
                .flat_map(|(_, list)| {
                    list.chunks_exact(4)
                        .map(|p| u32::from_le_bytes([p[0], p[1], p[2], p[3]]))
                })
                .collect();
            found.sort_unstable();
            found.dedup();
            if let Some(previous) = candidates {
                found.retain(|p| previous.binary_search(p).is_ok());
            }
            candidates = Some(found);
        }
        let candidates =
            candidates.unwrap_or_else(|| (0..self.series_offsets.len() as u32).collect());
        candidates
            .into_iter()
            .filter_map(|position| {
                let record = self.series(position)?;
                if !record.matches(matchers) {
                    return None;
                }
                Some((position, record.labels()))
            })
            .collect()
    }

    /// The labels of series `position`.
    pub fn labels(&self, position: u32) -> Option<Labels> {
        Some(self.series(position)?.labels())
    }

    /// Whether series `position` has a sample in `start..=end`; reads only the chunks that
    /// straddle an end of the range.
    ///
    /// # Errors
    /// Reading the chunks file failed.
    pub fn has_samples(&self, position: u32, start: i64, end: i64) -> Result<bool, BlockError> {
        let Some(record) = self.series(position) else {
            return Ok(false);
        };
        let mut bytes = Vec::new();
        for meta in record.metas() {
            let mut failed = None;
            let found = chunk_has_samples_in(meta.first, meta.last, start, end, || {
                bytes.resize(meta.length as usize, 0);
                if let Err(source) = self.chunks.read_exact_at(&mut bytes, meta.offset) {
                    failed = Some(source);
                    bytes.clear();
                }
                Chunk::decode(&bytes, meta.samples)
            });
            if let Some(source) = failed {
                return Err(BlockError::Io {
                    dir: self.dir.clone(),
                    source,
                });
            }
            if found {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The samples of series `position` in `start..=end`, appended to `out` in time order.
    ///
    /// # Errors
    /// Reading the chunks file failed.
    pub fn samples(
        &self,
        position: u32,
        start: i64,
        end: i64,
        out: &mut Vec<(i64, f64)>,
    ) -> Result<(), BlockError> {
        let Some(record) = self.series(position) else {
            return Ok(());
        };
        let mut bytes = Vec::new();
        for meta in record.metas().filter(|m| m.last >= start && m.first <= end) {
            bytes.resize(meta.length as usize, 0);
            self.chunks
                .read_exact_at(&mut bytes, meta.offset)
                .map_err(|source| BlockError::Io {
                    dir: self.dir.clone(),
                    source,
                })?;
            out.extend(
                Chunk::decode(&bytes, meta.samples).filter(|s| (start..=end).contains(&s.0)),
            );
        }
        Ok(())
    }
}

/// What [`check_index`] found in a whole, consistent index.
struct CheckedIndex {
    min_time: i64,
    max_time: i64,
    series_offsets: Vec<usize>,
    posting_count: u32,
    posting_marks: Vec<usize>,
    sample_count: u64,
    chunk_bytes: u64,
}

/// Checks a whole index file: its magic and checksum, every record's lengths and labels,
/// every chunk within the chunks file's `chunks_len` bytes, every postings entry in order
/// and naming a series of the block.
fn check_index(index: &[u8], chunks_len: u64) -> Result<CheckedIndex, String> {
    if index.len() < MAGIC.len() + 4 || &index[..MAGIC.len()] != MAGIC {
        return Err("the index does not start with M3BLOCK1".into());
    }
    let (body, crc) = index.split_at(index.len() - 4);
    if crc32fast::hash(body) != u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]) {
        return Err("index checksum mismatch".into());
    }
    let mut reader = Reader {
        bytes: &body[MAGIC.len()..],
    };
    let offset = |reader: &Reader<'_>| body.len() - reader.bytes.len();
    let min_time = reader.i64()?;
    let max_time = reader.i64()?;
    let series_count = reader.count(6)?;
    let mut series_offsets = Vec::with_capacity(series_count);
    let (mut sample_count, mut chunk_bytes) = (0u64, 0u64);
    for _ in 0..series_count {
        series_offsets.push(offset(&reader));
        let record = SeriesRecord::read(&mut reader)?;
        if record.pairs().count() != usize::from(record.label_count) {
            return Err("a label is not UTF-8".into());
        }
        // Read back without checks later: the pairs must be a label set as written.
        let labels = Labels::new(record.pairs()).map_err(|e| e.to_string())?;
        if !labels.iter().eq(record.pairs()) {
            return Err("a series' labels are not sorted, distinct and non-empty".into());
        }
        for meta in record.metas() {
            if meta.offset.saturating_add(u64::from(meta.length)) > chunks_len {
                return Err(format!(
                    "a chunk at {}+{} is past the end of the chunks file ({chunks_len} bytes)",
                    meta.offset, meta.length
                ));
            }
            sample_count += u64::from(meta.samples);
            chunk_bytes += u64::from(meta.length);
        }
    }
    let posting_count = reader.count(12)?;
    let mut posting_marks = Vec::with_capacity(posting_count.div_ceil(MARK_EVERY));
    let mut previous: Option<(&str, &str)> = None;
    for entry in 0..posting_count {
        if entry % MARK_EVERY == 0 {
            posting_marks.push(offset(&reader));
        }
        let name = reader.str()?;
        let value = reader.str()?;
        if previous.is_some_and(|p| p >= (name, value)) {
            return Err(format!("postings of {name}={value:?} out of order"));
        }
        previous = Some((name, value));
        let list_len = reader.count(4)?;
        for _ in 0..list_len {
            let position = reader.u32()?;
            if position as usize >= series_count {
                return Err(format!("postings name series {position} of {series_count}"));
            }
        }
    }
    if !reader.bytes.is_empty() {
        return Err(format!("{} bytes after the postings", reader.bytes.len()));
    }
    Ok(CheckedIndex {
        min_time,
        max_time,
        series_offsets,
        posting_count: posting_count as u32,
        posting_marks,
        sample_count,
        chunk_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tsdb::head::{Head, HeadOptions};
    use proptest::prelude::*;

    fn labels(job: &str, i: usize) -> Labels {
        Labels::new([("__name__", "up"), ("job", job), ("i", &i.to_string()[..])]).unwrap()
    }

    /// Chunks of `samples` (sorted), 120 a chunk.
    fn chunks_of(samples: &[(i64, f64)]) -> Vec<SealedChunk> {
        samples
            .chunks(120)
            .map(|part| {
                let mut chunk = Chunk::new();
                for &(t, v) in part {
                    chunk.push(t, v).unwrap();
                }
                chunk.seal()
            })
            .collect()
    }

    #[test]
    fn a_written_block_answers_matchers_and_ranges() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("0-1000000");
        let a = labels("api", 1);
        let b = labels("db", 2);
        let a_samples: Vec<(i64, f64)> = (0..300).map(|i| (i * 1000, i as f64)).collect();
        let a_chunks = chunks_of(&a_samples);
        let b_chunks = chunks_of(&[(5, 0.5)]);
        let mut series = vec![
            (&b, b_chunks.iter().collect()),
            (&a, a_chunks.iter().collect()),
        ];
        write_block(&dir, 0, 1_000_000, &mut series).unwrap();
        assert!(!root.path().join(".0-1000000.tmp").exists());
        let block = Block::open(&dir).unwrap();
        assert_eq!(block.time_range(), (0, 1_000_000));
        assert_eq!(block.series_count(), 2);
        let api = block.matching(&[Matcher::equal("job", "api")]);
        assert_eq!(api.len(), 1);
        assert_eq!(api[0].1, a);
        assert_eq!(block.labels(api[0].0), Some(a.clone()));
        let mut got = Vec::new();
        block.samples(api[0].0, 119_500, 121_000, &mut got).unwrap();
        assert_eq!(got, vec![(120_000, 120.0), (121_000, 121.0)]);
        assert_eq!(
            block.matching(&[Matcher::regex("i", "1|2").unwrap()]).len(),
            2
        );
        assert!(block.matching(&[Matcher::equal("job", "none")]).is_empty());
        // A block is written once.
        assert!(write_block(&dir, 0, 1, &mut Vec::new()).is_err());
    }

    #[test]
    fn damaged_files_are_refused_with_the_reason() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("b");
        let a = labels("api", 1);
        let chunks = chunks_of(&[(1, 1.0), (2, 2.0)]);
        write_block(&dir, 0, 10, &mut [(&a, chunks.iter().collect())]).unwrap();
        let index = std::fs::read(dir.join(INDEX_FILE)).unwrap();
        // A flipped bit: the checksum.
        let mut flipped = index.clone();
        flipped[20] ^= 1;
        std::fs::write(dir.join(INDEX_FILE), &flipped).unwrap();
        let err = Block::open(&dir).unwrap_err().to_string();
        assert!(err.contains("checksum mismatch"), "{err}");
        // A chunks file cut short: the offsets.
        std::fs::write(dir.join(INDEX_FILE), &index).unwrap();
        std::fs::write(dir.join(CHUNKS_FILE), b"").unwrap();
        let err = Block::open(&dir).unwrap_err().to_string();
        assert!(err.contains("past the end of the chunks file"), "{err}");
        // Not a block at all.
        std::fs::write(dir.join(INDEX_FILE), b"nothing").unwrap();
        let err = Block::open(&dir).unwrap_err().to_string();
        assert!(err.contains("M3BLOCK1"), "{err}");
    }

    proptest! {
        /// A head's series written as a block read back exactly, for any matcher and range.
        #[test]
        fn a_block_answers_as_the_head_it_was_written_from(
            samples in prop::collection::vec((0usize..8, 0i64..2_000, 0u8..10), 1..400),
            ranges in prop::collection::vec((0i64..2_000, 0i64..1_000), 3),
        ) {
            let mut head = Head::new(HeadOptions { out_of_order_window: 0, ..HeadOptions::default() });
            let pool: Vec<Labels> = (0..8).map(|i| labels(if i % 3 == 0 { "api" } else { "db" }, i)).collect();
            let mut sorted = samples.clone();
            sorted.sort_by_key(|s| s.1);
            let batch: Vec<(&Labels, i64, f64)> = sorted.iter().map(|&(s, t, v)| (&pool[s], t, f64::from(v))).collect();
            head.append(&batch);
            // The head's samples of each series, re-chunked, as a block.
            let refs = head.matching(&[]);
            let mut per_series = Vec::new();
            for &r in &refs {
                let mut all = Vec::new();
                head.samples(r, i64::MIN, i64::MAX, &mut all);
                per_series.push((head.labels(r).unwrap(), chunks_of(&all)));
            }
            let mut series: Vec<BlockSeries<'_>> = per_series.iter().map(|(l, c)| (l, c.iter().collect())).collect();
            let root = tempfile::tempdir().unwrap();
            let dir = root.path().join("b");
            write_block(&dir, 0, 2_000, &mut series).unwrap();
            let block = Block::open(&dir).unwrap();
            for matchers in [
                vec![],
                vec![Matcher::equal("job", "api")],
                vec![Matcher::not_equal("job", "api"), Matcher::regex("i", "[0-4]").unwrap()],
            ] {
                let mut from_head: Vec<Labels> = head.matching(&matchers).into_iter().map(|r| head.labels(r).unwrap()).collect();
                from_head.sort();
                let from_block: Vec<Labels> = block.matching(&matchers).into_iter().map(|(p, labels)| {
                    assert_eq!(block.labels(p).as_ref(), Some(&labels));
                    labels
                }).collect();
                prop_assert_eq!(&from_block, &from_head);
                for labels in &from_block {
                    let r = head.find(labels.view()).unwrap();
                    let p = block.matching(&[]).into_iter().find(|(_, l)| l == labels).unwrap().0;
                    for &(start, len) in &ranges {
                        let (mut want, mut got) = (Vec::new(), Vec::new());
                        head.samples(r, start, start + len, &mut want);
                        block.samples(p, start, start + len, &mut got).unwrap();
                        prop_assert_eq!(got, want);
                    }
                }
            }
        }

        /// Cutting a head: the chunks taken, written as a block, and what stays in the head
        /// together hold every sample the head held, and the block holds only whole chunks
        /// that end before the cutoff.
        #[test]
        fn a_cut_head_and_its_block_hold_what_the_head_held(
            samples in prop::collection::vec((0usize..6, 0i64..3_000, 0u8..10), 1..500),
            cutoff in 0i64..3_000,
        ) {
            let mut head = Head::new(HeadOptions { out_of_order_window: 500, ..HeadOptions::default() });
            let pool: Vec<Labels> = (0..6).map(|i| labels("api", i)).collect();
            let batch: Vec<(&Labels, i64, f64)> = samples.iter().map(|&(s, t, v)| (&pool[s], t, f64::from(v))).collect();
            head.append(&batch);
            let snapshot = |head: &Head| -> Vec<(Labels, Vec<(i64, f64)>)> {
                let mut out: Vec<(Labels, Vec<(i64, f64)>)> = head.matching(&[]).into_iter().map(|r| {
                    let mut all = Vec::new();
                    head.samples(r, i64::MIN, i64::MAX, &mut all);
                    (head.labels(r).unwrap(), all)
                }).collect();
                out.sort_by(|a, b| a.0.cmp(&b.0));
                out
            };
            let before = snapshot(&head);
            let cut = head.cut_before(cutoff);
            for (_, chunks) in &cut {
                for chunk in chunks {
                    prop_assert!(chunk.last_time() < cutoff);
                }
            }
            let mut series: Vec<BlockSeries<'_>> = cut.iter().map(|(l, c)| (l, c.iter().collect())).collect();
            let root = tempfile::tempdir().unwrap();
            let dir = root.path().join("b");
            write_block(&dir, 0, cutoff, &mut series).unwrap();
            let block = Block::open(&dir).unwrap();
            let after = snapshot(&head);
            for (labels, all) in &before {
                let mut merged: Vec<(i64, f64)> = Vec::new();
                if let Some((p, _)) = block.matching(&[]).into_iter().find(|(_, l)| l == labels) {
                    block.samples(p, i64::MIN, i64::MAX, &mut merged).unwrap();
                }
                if let Some((_, rest)) = after.iter().find(|(l, _)| l == labels) {
                    merged.extend(rest);
                }
                merged.sort_by_key(|s| s.0);
                prop_assert_eq!(&merged, all, "{:?}", labels);
            }
        }

        /// Any damage to the index is refused or read, never a panic.
        #[test]
        fn any_index_damage_never_panics(position in any::<prop::sample::Index>(), byte in any::<u8>(), cut in any::<prop::sample::Index>()) {
            let root = tempfile::tempdir().unwrap();
            let dir = root.path().join("b");
            let a = labels("api", 1);
            let chunks = chunks_of(&[(1, 1.0), (2, 2.0)]);
            write_block(&dir, 0, 10, &mut [(&a, chunks.iter().collect())]).unwrap();
            let index = std::fs::read(dir.join(INDEX_FILE)).unwrap();
            // Damage the body, then give it a matching checksum, so the parser itself reads it.
            let mut body = index[..index.len() - 4].to_vec();
            let i = position.index(body.len());
            body[i] = byte;
            body.truncate(cut.index(body.len() + 1).max(i));
            let crc = crc32fast::hash(&body);
            body.extend_from_slice(&crc.to_le_bytes());
            std::fs::write(dir.join(INDEX_FILE), &body).unwrap();
            let _ = Block::open(&dir);
        }
    }
}
