//! Immutable blocks: the samples of one time range of a namespace, on disk, found without
//! scanning every series.
//!
//! A block is a directory holding two files, and a summary of the index beside them
//! (`summary`, see `tsdb::block_summary`: what opening the block needs, so a start need not
//! read every index):
//!
//! ```text
//! chunks   per chunk: its encoded bytes, then their CRC-32 (u32); back to back
//! index    "M3BLOCK1" | min time i64 | max time i64
//!          | series count u32 | per series, sorted by labels:
//!          |   label count u16 | (name len u32, name, value len u32, value)…
//!          |   chunk count u32 | (first i64, last i64, samples u32, offset u64, length u32)…
//!          | postings count u32 | per (name, value), sorted:
//!          |   name len u32, name, value len u32, value, series count u32, series u32…
//!          | CRC-32 of everything before (u32)                          (all little-endian)
//! ```
//!
//! [`write_block`] writes the three into a temporary directory, syncs them and renames it into
//! place, so a block is either whole or absent; a series record goes to the file as it is
//! added, so a writer never holds the index. [`Block::open`] takes the summary when it
//! describes the files beside it; otherwise (a block written before summaries) it reads and
//! checks the index a buffer at a time (its checksum, every length and offset against the
//! chunks file). Either way it keeps where every
//! sixteenth series record and postings entry starts; a query reads the index and chunk bytes
//! it needs from the files. Nothing in either file, at open or changed later, can make it panic.
//! Retention deletes a block's directory once its max time is past.

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::labels::{Labels, is_canonical};
use crate::matcher::Matcher;
use crate::tsdb::block_summary::{Described, IndexSummary, SUMMARY_FILE};
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

impl BlockError {
    /// Whether the block itself is at fault (its files are damaged or missing), rather than
    /// the reading of them (permissions, a full file table, a failing disk): reopening a
    /// damaged block fails again, while the other kind may pass next time.
    pub fn is_damage(&self) -> bool {
        match self {
            BlockError::Corrupt { .. } => true,
            BlockError::Io { source, .. } => matches!(
                source.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::UnexpectedEof | io::ErrorKind::InvalidData
            ),
        }
    }
}

/// Where one chunk is in a block's chunks file, and what it covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ChunkMeta {
    /// The first sample's time (ms).
    pub(crate) first: i64,
    /// The last sample's time (ms).
    pub(crate) last: i64,
    /// Samples in it.
    pub(crate) samples: u32,
    offset: u64,
    length: u32,
}

/// A block open for reading: its index read from the file where a query needs it.
///
/// A block's series stay until retention, and a namespace has a block per two hours of it, so
/// what an open block holds in memory is multiplied by hundreds. It holds the offset of every
/// sixteenth series record and every sixteenth postings entry, and reads the rest with
/// positioned reads of the index file (the kernel's page cache keeps what is read often). At
/// 100,000 series of ten labels that is about one byte per series, where the index file is
/// 335 (`block/memory` in `benches/tsdb.rs`).
///
/// A query names a series of the block by where its record starts in the index file (a
/// [`SeriesRecordAt`], as [`Block::matching`] gives it), so reading its samples reads that
/// record alone.
#[derive(Debug)]
pub struct Block {
    dir: PathBuf,
    min_time: i64,
    max_time: i64,
    chunks: File,
    /// The index file: checked whole when opened without a summary, and before a merge.
    index: File,
    series_count: u32,
    /// The offset of series record `i * MARK_EVERY`, for each `i`, then the end of the series
    /// records: group `i` of records is `marks[i]..marks[i + 1]`.
    series_marks: Box<[u64]>,
    /// The offset of postings entry `i * MARK_EVERY`, for each `i`, then the end of the
    /// postings, as for `series_marks`.
    posting_marks: Box<[u64]>,
    sample_count: u64,
    chunk_bytes: u64,
    /// Whether each chunk in the chunks file is followed by its CRC-32 (see
    /// [`chunk_checksums_in`]).
    chunk_checksums: bool,
    /// The chunks file's length when opened: no chunk read may reach past it.
    chunks_len: u64,
}

/// The CRC-32 that follows each chunk's bytes in the chunks file.
const CHUNK_CRC_LEN: u64 = 4;

/// Whether a block's chunks file holds a CRC-32 after every chunk: it is then exactly the
/// chunks' bytes and four more per chunk. Blocks written before chunk checksums hold the
/// chunks back to back, exactly their bytes. Any other length is a damaged file (a chunk or
/// checksum cut off), refused rather than read without checks. The index names each chunk's
/// bytes alone (offset and length), so builds before checksums read blocks with them as well.
fn chunk_checksums_in(summary: &IndexSummary, chunks_len: u64) -> Result<bool, String> {
    let with_checksums = summary
        .chunk_count
        .checked_mul(CHUNK_CRC_LEN)
        .and_then(|crcs| crcs.checked_add(summary.chunk_bytes));
    if summary.chunk_count > 0 && Some(chunks_len) == with_checksums {
        Ok(true)
    } else if chunks_len == summary.chunk_bytes {
        Ok(false)
    } else {
        Err(format!(
            "the chunks file holds {chunks_len} bytes, where its {} chunks take {} (or {} with their checksums)",
            summary.chunk_count,
            summary.chunk_bytes,
            with_checksums.unwrap_or(u64::MAX)
        ))
    }
}

/// Where a series' record starts in its block's index file: how a query names the series to
/// [`Block::samples`] and [`Block::has_samples`].
pub type SeriesRecordAt = u64;

/// See [`Block`]: one series record and one postings entry in this many has its offset kept.
pub(crate) const MARK_EVERY: usize = 16;

/// Bytes read first for one record or postings key; most are shorter. A longer one is read
/// again whole.
const FIRST_READ: u64 = 512;

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
    series.sort_by(|a, b| a.0.cmp(b.0));
    let mut writer = BlockWriter::create(dir)?;
    for (labels, chunks) in series.iter() {
        writer.add_series(labels, chunks.iter().map(|chunk| ChunkBytes::of(chunk)))?;
    }
    writer.finish(min_time, max_time)
}

/// One encoded chunk to write: its times, its sample count and its bytes.
#[derive(Debug, Clone, Copy)]
pub struct ChunkBytes<'a> {
    /// The first sample's time (ms).
    pub first: i64,
    /// The last sample's time (ms).
    pub last: i64,
    /// Samples encoded.
    pub samples: u32,
    /// The encoded bytes.
    pub bytes: &'a [u8],
}

impl<'a> ChunkBytes<'a> {
    /// The bytes of a sealed chunk, as it is.
    pub fn of(chunk: &'a SealedChunk) -> ChunkBytes<'a> {
        ChunkBytes {
            first: chunk.first_time(),
            last: chunk.last_time(),
            samples: chunk.len() as u32,
            bytes: chunk.bytes(),
        }
    }
}

/// Writes a block one series at a time, in label order: the chunks and the series records go
/// to their files as they come, so what a writer holds is the postings being gathered (a
/// position per series per label, and each distinct label value once), never the index or
/// the labels of every series. A merge of blocks larger than memory writes through it;
/// [`write_block`] is the same for series held in memory.
///
/// Everything goes to a temporary directory beside `dir`, renamed into place by `finish`: a
/// block is whole or absent. A writer dropped unfinished removes its temporary directory.
#[derive(Debug)]
pub struct BlockWriter {
    dir: PathBuf,
    temporary: PathBuf,
    chunks: Option<io::BufWriter<File>>,
    /// The index file, its header written last (by `finish`).
    index: Option<io::BufWriter<File>>,
    /// The checksum of the index past its header, as it is written.
    index_crc: crc32fast::Hasher,
    /// Bytes of the index written so far, the header's room included.
    index_len: u64,
    /// One series record, built before it is written; reused.
    record: Vec<u8>,
    /// Where every `MARK_EVERY`th series record starts, for the summary.
    series_marks: Vec<u64>,
    sample_count: u64,
    /// The chunks' encoded bytes (their checksums not counted) and their number.
    chunk_bytes: u64,
    chunk_count: u64,
    /// Whether each chunk is followed by its CRC-32; only tests write blocks without, as
    /// builds before chunk checksums did.
    chunk_checksums: bool,
    /// Bytes written to the chunks file.
    offset: u64,
    /// The labels of the series added last, which the next must sort after.
    last_labels: Option<Labels>,
    series_count: u32,
    postings: PostingsBuilder,
}

/// Where the header's series count is in the index: after the magic and the two times.
const SERIES_COUNT_AT: usize = MAGIC.len() + 16;
/// The header's length: the magic, the two times and the series count.
const HEADER_LEN: usize = SERIES_COUNT_AT + 4;

/// The postings of a block being written: per label name, per value, the positions of the
/// series carrying it, in the order they were added (ascending).
#[derive(Debug, Default)]
struct PostingsBuilder {
    by_name: hashbrown::HashMap<Box<str>, hashbrown::HashMap<Box<str>, Vec<u32>>>,
}

impl PostingsBuilder {
    fn add(&mut self, labels: &Labels, position: u32) {
        for (name, value) in labels.iter() {
            let values = match self.by_name.get_mut(name) {
                Some(values) => values,
                None => self.by_name.entry(Box::from(name)).or_default(),
            };
            match values.get_mut(value) {
                Some(positions) => positions.push(position),
                None => {
                    values.insert(Box::from(value), vec![position]);
                }
            }
        }
    }

    /// The entries sorted by (name, value), as the index stores them.
    fn sorted(&self) -> Vec<(&str, &str, &[u32])> {
        let mut entries: Vec<(&str, &str, &[u32])> = self
            .by_name
            .iter()
            .flat_map(|(name, values)| {
                values
                    .iter()
                    .map(move |(value, positions)| (&**name, &**value, positions.as_slice()))
            })
            .collect();
        entries.sort_unstable_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
        entries
    }
}

impl BlockWriter {
    /// Starts the block that will be `dir`.
    ///
    /// # Errors
    /// I/O errors.
    pub fn create(dir: &Path) -> Result<BlockWriter, BlockError> {
        let io_error = |source| BlockError::Io {
            dir: dir.to_path_buf(),
            source,
        };
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let temporary = dir.with_file_name(format!(".{name}.tmp"));
        if temporary.exists() {
            std::fs::remove_dir_all(&temporary).map_err(io_error)?;
        }
        std::fs::create_dir_all(&temporary).map_err(io_error)?;
        let chunks = File::create(temporary.join(CHUNKS_FILE)).map_err(io_error)?;
        let mut index =
            io::BufWriter::new(File::create(temporary.join(INDEX_FILE)).map_err(io_error)?);
        // The header's room; `finish` writes it once the times and the count are known.
        index.write_all(&[0; HEADER_LEN]).map_err(io_error)?;
        Ok(BlockWriter {
            dir: dir.to_path_buf(),
            temporary,
            chunks: Some(io::BufWriter::new(chunks)),
            index: Some(index),
            index_crc: crc32fast::Hasher::new(),
            index_len: HEADER_LEN as u64,
            record: Vec::new(),
            series_marks: Vec::new(),
            sample_count: 0,
            chunk_bytes: 0,
            chunk_count: 0,
            chunk_checksums: true,
            offset: 0,
            last_labels: None,
            series_count: 0,
            postings: PostingsBuilder::default(),
        })
    }

    fn io_error(&self, source: io::Error) -> BlockError {
        BlockError::Io {
            dir: self.dir.clone(),
            source,
        }
    }

    /// Appends `bytes` to the index, after the header, and to its checksum.
    fn write_index(&mut self, bytes: &[u8]) -> Result<(), BlockError> {
        self.index_crc.update(bytes);
        self.index_len += bytes.len() as u64;
        let written = match &mut self.index {
            Some(index) => index.write_all(bytes),
            None => Ok(()),
        };
        written.map_err(|source| self.io_error(source))
    }

    /// Adds a series after every series added before it in label order, with its chunks in
    /// time order.
    ///
    /// # Errors
    /// I/O errors; a series out of label order is refused as corrupt (it would make the block
    /// unreadable).
    pub fn add_series<'c>(
        &mut self,
        labels: &Labels,
        chunks: impl Iterator<Item = ChunkBytes<'c>>,
    ) -> Result<(), BlockError> {
        if self.last_labels.as_ref().is_some_and(|last| last >= labels) {
            return Err(BlockError::Corrupt {
                dir: self.dir.clone(),
                reason: format!("series {labels:?} added out of label order"),
            });
        }
        let mut record = std::mem::take(&mut self.record);
        record.clear();
        put_labels(&mut record, labels);
        let count_at = record.len();
        record.extend_from_slice(&0u32.to_le_bytes());
        let mut count = 0u32;
        for chunk in chunks {
            if let Some(out) = &mut self.chunks {
                let crc = crc32fast::hash(chunk.bytes).to_le_bytes();
                let checksum: &[u8] = if self.chunk_checksums { &crc } else { &[] };
                if let Err(source) = out
                    .write_all(chunk.bytes)
                    .and_then(|()| out.write_all(checksum))
                {
                    return Err(self.io_error(source));
                }
            }
            record.extend_from_slice(&chunk.first.to_le_bytes());
            record.extend_from_slice(&chunk.last.to_le_bytes());
            record.extend_from_slice(&chunk.samples.to_le_bytes());
            record.extend_from_slice(&self.offset.to_le_bytes());
            record.extend_from_slice(&(chunk.bytes.len() as u32).to_le_bytes());
            self.offset += chunk.bytes.len() as u64;
            if self.chunk_checksums {
                self.offset += CHUNK_CRC_LEN;
            }
            self.chunk_bytes += chunk.bytes.len() as u64;
            self.chunk_count += 1;
            self.sample_count += u64::from(chunk.samples);
            count += 1;
        }
        record[count_at..count_at + 4].copy_from_slice(&count.to_le_bytes());
        if (self.series_count as usize).is_multiple_of(MARK_EVERY) {
            self.series_marks.push(self.index_len);
        }
        let written = self.write_index(&record);
        self.record = record;
        written?;
        self.postings.add(labels, self.series_count);
        self.series_count += 1;
        self.last_labels = Some(labels.clone());
        Ok(())
    }

    /// The writer of a block as builds before chunk checksums wrote it: the chunks back to
    /// back, without a checksum after each.
    #[cfg(test)]
    fn without_chunk_checksums(mut self) -> BlockWriter {
        self.chunk_checksums = false;
        self
    }

    /// Series added so far.
    pub fn series_count(&self) -> usize {
        self.series_count as usize
    }

    /// Writes the postings and the header with `min_time..=max_time` as the block's range,
    /// syncs both files and renames the directory into place.
    ///
    /// # Errors
    /// I/O errors (nothing is left at `dir` then).
    pub fn finish(mut self, min_time: i64, max_time: i64) -> Result<(), BlockError> {
        let postings = std::mem::take(&mut self.postings);
        let entries = postings.sorted();
        let mut series_marks = std::mem::take(&mut self.series_marks);
        series_marks.push(self.index_len);
        let posting_count = entries.len() as u32;
        let mut posting_marks = Vec::with_capacity(entries.len().div_ceil(MARK_EVERY) + 1);
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&posting_count.to_le_bytes());
        for (i, (name, value, positions)) in entries.into_iter().enumerate() {
            if i % MARK_EVERY == 0 {
                posting_marks.push(self.index_len + bytes.len() as u64);
            }
            put_text(&mut bytes, name);
            put_text(&mut bytes, value);
            bytes.extend_from_slice(&(positions.len() as u32).to_le_bytes());
            for position in positions {
                bytes.extend_from_slice(&position.to_le_bytes());
            }
            // Written a few kilobytes at a time rather than gathered whole.
            if bytes.len() >= 1 << 16 {
                self.write_index(&bytes)?;
                bytes.clear();
            }
        }
        self.write_index(&bytes)?;
        posting_marks.push(self.index_len);
        let mut header = [0u8; HEADER_LEN];
        header[..MAGIC.len()].copy_from_slice(MAGIC);
        header[MAGIC.len()..MAGIC.len() + 8].copy_from_slice(&min_time.to_le_bytes());
        header[MAGIC.len() + 8..SERIES_COUNT_AT].copy_from_slice(&max_time.to_le_bytes());
        header[SERIES_COUNT_AT..].copy_from_slice(&self.series_count.to_le_bytes());
        // The checksum covers the header and everything after it, as if written in order.
        let mut crc = crc32fast::Hasher::new();
        crc.update(&header);
        crc.combine(&self.index_crc);
        let crc = crc.finalize();
        let summary = IndexSummary {
            min_time,
            max_time,
            series_count: self.series_count,
            posting_count,
            series_marks,
            posting_marks,
            sample_count: self.sample_count,
            chunk_bytes: self.chunk_bytes,
            chunk_count: self.chunk_count,
        }
        .encode(Described {
            index_len: self.index_len + 4,
            index_crc: crc,
            chunks_len: self.offset,
        });
        let (chunks, index) = (self.chunks.take(), self.index.take());
        let written = (|| -> io::Result<()> {
            if let Some(chunks) = chunks {
                let chunks = chunks
                    .into_inner()
                    .map_err(io::IntoInnerError::into_error)?;
                chunks.sync_all()?;
            }
            if let Some(mut index) = index {
                index.write_all(&crc.to_le_bytes())?;
                let index = index.into_inner().map_err(io::IntoInnerError::into_error)?;
                index.write_all_at(&header, 0)?;
                index.sync_all()?;
            }
            let mut summary_file = File::create(self.temporary.join(SUMMARY_FILE))?;
            summary_file.write_all(&summary)?;
            summary_file.sync_all()?;
            File::open(&self.temporary)?.sync_all()?;
            std::fs::rename(&self.temporary, &self.dir)?;
            if let Some(parent) = self.dir.parent() {
                File::open(parent)?.sync_all()?;
            }
            Ok(())
        })();
        written.map_err(|source| self.io_error(source))
    }
}

impl Drop for BlockWriter {
    fn drop(&mut self) {
        // Renamed away by a finish that succeeded; otherwise a leftover.
        if self.temporary.exists() {
            let _ = std::fs::remove_dir_all(&self.temporary);
        }
    }
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
    /// Opens the block in `dir` from its summary, or where there is none that describes its
    /// files, by checking its index (its checksum, every length, offset and position) against
    /// its chunks file.
    ///
    /// # Errors
    /// I/O errors; [`BlockError::Corrupt`] when the files do not hold a whole block.
    pub fn open(dir: &Path) -> Result<Block, BlockError> {
        Block::open_with(dir, true)
    }

    /// Opens the block in `dir` by checking its whole index, whatever its summary says: for a
    /// decision that must not rest on an index nobody read, such as deleting the blocks a
    /// merged block replaces.
    ///
    /// # Errors
    /// As [`Block::open`].
    pub fn open_checked(dir: &Path) -> Result<Block, BlockError> {
        Block::open_with(dir, false)
    }

    fn open_with(dir: &Path, use_summary: bool) -> Result<Block, BlockError> {
        let io_error = |source| BlockError::Io {
            dir: dir.to_path_buf(),
            source,
        };
        let corrupt = |reason: String| BlockError::Corrupt {
            dir: dir.to_path_buf(),
            reason,
        };
        let index = File::open(dir.join(INDEX_FILE)).map_err(io_error)?;
        let index_len = index.metadata().map_err(io_error)?.len();
        let chunks = File::open(dir.join(CHUNKS_FILE)).map_err(io_error)?;
        let chunks_len = chunks.metadata().map_err(io_error)?.len();
        let found = if use_summary {
            read_summary(dir, &index, index_len, chunks_len)
        } else {
            Summary::NotUsed
        };
        let missing = matches!(found, Summary::Missing);
        let checked = match found {
            Summary::Usable(summary) => summary,
            Summary::Missing | Summary::NotUsed => check_index(&index, index_len, chunks_len)
                .map_err(|e| match e {
                    CheckError::Io(source) => io_error(source),
                    CheckError::Corrupt(reason) => corrupt(reason),
                })?,
        };
        let chunk_checksums = chunk_checksums_in(&checked, chunks_len).map_err(corrupt)?;
        if missing {
            // A block written before summaries, checked whole: the next start opens it from
            // this one. (A summary that is there and not used, perhaps another build's, is
            // left as it is.)
            if let Err(e) = write_summary(dir, &checked, &index, index_len, chunks_len) {
                tracing::warn!(block = %dir.display(), error = %e, "could not write the block's summary; the next start checks its index again");
            }
        }
        Ok(Block {
            dir: dir.to_path_buf(),
            min_time: checked.min_time,
            max_time: checked.max_time,
            chunks,
            index,
            series_count: checked.series_count,
            series_marks: checked.series_marks.into_boxed_slice(),
            posting_marks: checked.posting_marks.into_boxed_slice(),
            sample_count: checked.sample_count,
            chunk_bytes: checked.chunk_bytes,
            chunk_checksums,
            chunks_len,
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
        self.series_count as usize
    }

    /// Samples in the block.
    pub fn sample_count(&self) -> u64 {
        self.sample_count
    }

    /// Bytes of the chunks file (the samples' share of the block on disk).
    pub fn chunk_bytes(&self) -> u64 {
        self.chunk_bytes
    }

    fn io_error(&self, source: io::Error) -> BlockError {
        BlockError::Io {
            dir: self.dir.clone(),
            source,
        }
    }

    /// The error for an index that no longer reads as it did when it was checked.
    fn changed(&self) -> BlockError {
        BlockError::Corrupt {
            dir: self.dir.clone(),
            reason: "the index file changed since the block was opened".into(),
        }
    }

    /// Reads `offset..end` of the index file into `buffer`, replacing what it held.
    fn read_index(&self, offset: u64, end: u64, buffer: &mut Vec<u8>) -> Result<(), BlockError> {
        let length = usize::try_from(end.saturating_sub(offset)).map_err(|_| self.changed())?;
        buffer.clear();
        buffer.resize(length, 0);
        self.index
            .read_exact_at(buffer, offset)
            .map_err(|source| self.io_error(source))
    }

    /// Reads the front of `offset..end` of the index file into `buffer` and hands it to
    /// `parse`, reading four times as much each time `parse` finds it short, up to `end`.
    fn read_until_parsed<T>(
        &self,
        offset: u64,
        end: u64,
        buffer: &mut Vec<u8>,
        parse: impl Fn(&mut Reader<'_>) -> Result<T, String>,
    ) -> Result<T, BlockError> {
        let mut length = FIRST_READ;
        loop {
            let read_end = offset.saturating_add(length).min(end);
            self.read_index(offset, read_end, buffer)?;
            if let Ok(parsed) = parse(&mut Reader { bytes: buffer }) {
                return Ok(parsed);
            }
            if read_end >= end {
                return Err(self.changed());
            }
            length = length.saturating_mul(4);
        }
    }

    /// The series record at `at`, read into `buffer`.
    fn record_at<'b>(
        &self,
        at: SeriesRecordAt,
        buffer: &'b mut Vec<u8>,
    ) -> Result<SeriesRecord<'b>, BlockError> {
        let records_end = self.series_marks.last().copied().unwrap_or(0);
        let length = self.read_until_parsed(at, records_end, buffer, |reader| {
            let before = reader.bytes.len();
            SeriesRecord::read(reader)?;
            Ok(before - reader.bytes.len())
        })?;
        let bytes: &'b [u8] = buffer;
        SeriesRecord::read(&mut Reader {
            bytes: bytes.get(..length).unwrap_or_default(),
        })
        .map_err(|_| self.changed())
    }

    /// Whether the key of postings group `group`'s first entry sorts before `key`.
    fn posting_group_starts_before(
        &self,
        group: usize,
        key: (&str, &str),
        buffer: &mut Vec<u8>,
    ) -> Result<bool, BlockError> {
        let (Some(&start), Some(&end)) = (
            self.posting_marks.get(group),
            self.posting_marks.get(group + 1),
        ) else {
            return Ok(false);
        };
        self.read_until_parsed(start, end, buffer, |reader| {
            Ok((reader.str()?, reader.str()?) < key)
        })
    }

    /// Appends to `out` the positions of the series whose label `matcher.name()` has a value
    /// `matcher` accepts (the series without the label are not among them).
    fn positions_matching(
        &self,
        matcher: &Matcher,
        out: &mut Vec<u32>,
        buffer: &mut Vec<u8>,
    ) -> Result<(), BlockError> {
        let name = matcher.name();
        // An `=` matcher's entry is found directly; the others look at every value.
        let (from, only) = match matcher {
            Matcher::Equal { value, .. } => (value.as_str(), true),
            _ => ("", false),
        };
        // The first group whose first entry is not before (name, from): the entries wanted
        // start in the group before it.
        let groups = self.posting_marks.len().saturating_sub(1);
        let (mut low, mut high) = (0, groups);
        while low < high {
            let middle = low + (high - low) / 2;
            if self.posting_group_starts_before(middle, (name, from), buffer)? {
                low = middle + 1;
            } else {
                high = middle;
            }
        }
        for group in low.saturating_sub(1)..groups {
            self.read_index(
                self.posting_marks[group],
                self.posting_marks[group + 1],
                buffer,
            )?;
            let mut reader = Reader { bytes: buffer };
            while !reader.bytes.is_empty() {
                let entry = (|| {
                    let key = (reader.str()?, reader.str()?);
                    let count = reader.u32()? as usize;
                    Ok::<_, String>((key, reader.take(count.saturating_mul(4))?))
                })();
                let ((entry_name, value), list) = entry.map_err(|_| self.changed())?;
                if (entry_name, value) < (name, from) {
                    continue;
                }
                if entry_name != name || (only && value != from) {
                    return Ok(());
                }
                if matcher.matches_value(value) {
                    out.extend(
                        list.chunks_exact(4)
                            .map(|p| u32::from_le_bytes([p[0], p[1], p[2], p[3]])),
                    );
                }
            }
        }
        Ok(())
    }

    /// The series matching every matcher (all for none), in label order, as where their
    /// records start with their labels.
    ///
    /// # Errors
    /// Reading the index failed, or it changed since the block was opened.
    pub fn matching(
        &self,
        matchers: &[Matcher],
    ) -> Result<Vec<(SeriesRecordAt, Labels)>, BlockError> {
        let mut buffer = Vec::new();
        let mut candidates: Option<Vec<u32>> = None;
        for matcher in matchers.iter().filter(|m| !m.matches_empty()) {
            let mut found = Vec::new();
            self.positions_matching(matcher, &mut found, &mut buffer)?;
            found.sort_unstable();
            found.dedup();
            if let Some(previous) = candidates {
                found.retain(|p| previous.binary_search(p).is_ok());
            }
            let none = found.is_empty();
            candidates = Some(found);
            if none {
                break;
            }
        }
        // Candidates are in position order: each group of records is read once, and the
        // records in it found by walking it.
        let mut out = Vec::new();
        let mut wanted = candidates.map(Vec::into_iter);
        let mut next = |after: Option<u32>| match &mut wanted {
            Some(list) => list.next(),
            None => match after {
                None => (self.series_count > 0).then_some(0),
                Some(p) => p.checked_add(1).filter(|&n| n < self.series_count),
            },
        };
        let mut position = next(None);
        let mut loaded: Option<usize> = None;
        let mut starts = [0usize; MARK_EVERY];
        while let Some(p) = position {
            let group = p as usize / MARK_EVERY;
            let (Some(&group_start), Some(&group_end)) = (
                self.series_marks.get(group),
                self.series_marks.get(group + 1),
            ) else {
                return Err(self.changed());
            };
            if loaded != Some(group) {
                self.read_index(group_start, group_end, &mut buffer)?;
                let mut reader = Reader { bytes: &buffer };
                for start in &mut starts {
                    *start = buffer.len() - reader.bytes.len();
                    if !reader.bytes.is_empty() {
                        SeriesRecord::read(&mut reader).map_err(|_| self.changed())?;
                    }
                }
                loaded = Some(group);
            }
            let start = starts[p as usize % MARK_EVERY];
            let record = SeriesRecord::read(&mut Reader {
                bytes: buffer.get(start..).unwrap_or_default(),
            })
            .map_err(|_| self.changed())?;
            if record.matches(matchers) {
                out.push((group_start + start as u64, record.labels()));
            }
            position = next(Some(p));
        }
        Ok(out)
    }

    /// Whether the series whose record is at `at` has a sample in `start..=end`; reads only
    /// the chunks that straddle an end of the range.
    ///
    /// # Errors
    /// Reading the block failed, or its index changed since it was opened.
    pub fn has_samples(
        &self,
        at: SeriesRecordAt,
        start: i64,
        end: i64,
    ) -> Result<bool, BlockError> {
        let mut record_bytes = Vec::new();
        let record = self.record_at(at, &mut record_bytes)?;
        let mut bytes = Vec::new();
        for meta in record.metas() {
            let mut failed = None;
            let found = chunk_has_samples_in(meta.first, meta.last, start, end, || {
                if let Err(error) = self.read_chunk(&meta, &mut bytes) {
                    failed = Some(error);
                    bytes.clear();
                }
                Chunk::decode(&bytes, meta.samples)
            });
            if let Some(error) = failed {
                return Err(error);
            }
            if found {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The samples in `start..=end` of the series whose record is at `at`, appended to `out`
    /// in time order.
    ///
    /// # Errors
    /// Reading the block failed, or its index changed since it was opened.
    pub fn samples(
        &self,
        at: SeriesRecordAt,
        start: i64,
        end: i64,
        out: &mut Vec<(i64, f64)>,
    ) -> Result<(), BlockError> {
        let mut record_bytes = Vec::new();
        let record = self.record_at(at, &mut record_bytes)?;
        let mut bytes = Vec::new();
        for meta in record.metas().filter(|m| m.last >= start && m.first <= end) {
            self.read_chunk(&meta, &mut bytes)?;
            out.extend(
                Chunk::decode(&bytes, meta.samples).filter(|s| (start..=end).contains(&s.0)),
            );
        }
        Ok(())
    }
}

impl Block {
    /// Every series of the block in label order, with its chunks: what a merge of blocks
    /// reads, a group of sixteen records at a time.
    pub(crate) fn all_series(&self) -> AllSeries<'_> {
        AllSeries {
            block: self,
            next_group: 0,
            read: std::collections::VecDeque::with_capacity(MARK_EVERY),
            buffer: Vec::new(),
        }
    }

    /// Reads and checks the whole index, as an open without a summary does, and that it gives
    /// what the block was opened with. A merge does this to its sources first: written again
    /// into the merged block under a fresh checksum, damage in an index nobody checked would
    /// look whole there, and the sources are deleted.
    ///
    /// # Errors
    /// Reading failed; [`BlockError::Corrupt`] when the index does not check or says other
    /// than the summary the block was opened from.
    pub(crate) fn check(&self) -> Result<(), BlockError> {
        let index_len = self
            .index
            .metadata()
            .map_err(|source| self.io_error(source))?
            .len();
        let checked =
            check_index(&self.index, index_len, self.chunks_len).map_err(|e| match e {
                CheckError::Io(source) => self.io_error(source),
                CheckError::Corrupt(reason) => BlockError::Corrupt {
                    dir: self.dir.clone(),
                    reason,
                },
            })?;
        let same = (checked.min_time, checked.max_time, checked.series_count)
            == (self.min_time, self.max_time, self.series_count)
            && checked.series_marks[..] == self.series_marks[..]
            && checked.posting_marks[..] == self.posting_marks[..]
            && (checked.sample_count, checked.chunk_bytes) == (self.sample_count, self.chunk_bytes);
        if same {
            Ok(())
        } else {
            Err(BlockError::Corrupt {
                dir: self.dir.clone(),
                reason: "its index does not say what its summary said".into(),
            })
        }
    }

    /// Reads one chunk's bytes into `buffer`, replacing what it held, and checks them against
    /// the checksum after them (in blocks written with chunk checksums).
    ///
    /// # Errors
    /// Reading the chunks file failed; [`BlockError::Corrupt`] when the chunk would reach past
    /// the end of the chunks file, or its bytes do not match their checksum.
    pub(crate) fn read_chunk(
        &self,
        meta: &ChunkMeta,
        buffer: &mut Vec<u8>,
    ) -> Result<(), BlockError> {
        let length = meta.length as usize;
        let stored = if self.chunk_checksums {
            CHUNK_CRC_LEN as usize
        } else {
            0
        };
        // A length from the index is checked against the file before it sizes a buffer.
        if meta
            .offset
            .checked_add(u64::from(meta.length) + stored as u64)
            .is_none_or(|end| end > self.chunks_len)
        {
            return Err(BlockError::Corrupt {
                dir: self.dir.clone(),
                reason: format!(
                    "a chunk at {}+{} is past the end of the chunks file ({} bytes)",
                    meta.offset, meta.length, self.chunks_len
                ),
            });
        }
        buffer.clear();
        buffer.resize(length + stored, 0);
        self.chunks
            .read_exact_at(buffer, meta.offset)
            .map_err(|source| self.io_error(source))?;
        if let Some(crc) = buffer.last_chunk::<4>().filter(|_| self.chunk_checksums) {
            let crc = u32::from_le_bytes(*crc);
            buffer.truncate(length);
            if crc32fast::hash(buffer) != crc {
                return Err(BlockError::Corrupt {
                    dir: self.dir.clone(),
                    reason: format!(
                        "the chunk at {}+{} of the chunks file does not match its checksum",
                        meta.offset, meta.length
                    ),
                });
            }
        }
        Ok(())
    }
}

/// A series' labels and its chunks in a block.
pub(crate) type SeriesChunks = (Labels, Vec<ChunkMeta>);

/// See [`Block::all_series`].
#[derive(Debug)]
pub(crate) struct AllSeries<'b> {
    block: &'b Block,
    next_group: usize,
    read: std::collections::VecDeque<SeriesChunks>,
    buffer: Vec<u8>,
}

impl AllSeries<'_> {
    /// The next series and its chunks, `None` after the last.
    ///
    /// # Errors
    /// Reading the index failed, or it changed since the block was opened.
    pub(crate) fn next_series(&mut self) -> Result<Option<SeriesChunks>, BlockError> {
        if self.read.is_empty() {
            let marks = &self.block.series_marks;
            let (Some(&start), Some(&end)) =
                (marks.get(self.next_group), marks.get(self.next_group + 1))
            else {
                return Ok(None);
            };
            let group = self.next_group;
            self.next_group += 1;
            self.block.read_index(start, end, &mut self.buffer)?;
            let mut reader = Reader {
                bytes: &self.buffer,
            };
            while !reader.bytes.is_empty() {
                let record = SeriesRecord::read(&mut reader).map_err(|_| self.block.changed())?;
                self.read
                    .push_back((record.labels(), record.metas().collect()));
            }
            // Every group holds MARK_EVERY records and the last the rest: a series count that
            // does not fit the records (a summary's) would end the walk early or late.
            let expected = (self.block.series_count as usize)
                .saturating_sub(group * MARK_EVERY)
                .min(MARK_EVERY);
            if self.read.len() != expected {
                return Err(BlockError::Corrupt {
                    dir: self.block.dir.clone(),
                    reason: format!(
                        "group {group} of the index holds {} series records where its series count gives {expected}",
                        self.read.len()
                    ),
                });
            }
        }
        Ok(self.read.pop_front())
    }
}

/// Writes `summary` for the index and chunks files of the block in `dir`, beside them: under
/// a temporary name, synced, then renamed into place.
fn write_summary(
    dir: &Path,
    summary: &IndexSummary,
    index: &File,
    index_len: u64,
    chunks_len: u64,
) -> io::Result<()> {
    let mut stored_crc = [0u8; 4];
    index.read_exact_at(&mut stored_crc, index_len.saturating_sub(4))?;
    let bytes = summary.encode(Described {
        index_len,
        index_crc: u32::from_le_bytes(stored_crc),
        chunks_len,
    });
    let temporary = dir.join(format!(".{SUMMARY_FILE}.tmp"));
    let written = (|| {
        let mut file = File::create(&temporary)?;
        file.write_all(&bytes)?;
        file.sync_all()?;
        std::fs::rename(&temporary, dir.join(SUMMARY_FILE))?;
        File::open(dir)?.sync_all()
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    written
}

/// What [`read_summary`] found beside an index.
enum Summary {
    /// A summary that describes the files beside it.
    Usable(IndexSummary),
    /// None: a block written before summaries.
    Missing,
    /// One that does not describe the files beside it, or could not be read (logged); or
    /// none was looked for.
    NotUsed,
}

/// The summary beside the index (see `tsdb::block_summary`), if there is one that
/// describes these files; a summary that does not is logged and left unused.
fn read_summary(dir: &Path, index: &File, index_len: u64, chunks_len: u64) -> Summary {
    let bytes = match std::fs::read(dir.join(SUMMARY_FILE)) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Summary::Missing,
        Err(e) => {
            tracing::warn!(block = %dir.display(), error = %e, "block summary unreadable; checking the whole index");
            return Summary::NotUsed;
        }
    };
    let mut stored_crc = [0u8; 4];
    let Some(crc_at) = index_len.checked_sub(4) else {
        return Summary::NotUsed;
    };
    if index.read_exact_at(&mut stored_crc, crc_at).is_err() {
        return Summary::NotUsed;
    }
    let described = Described {
        index_len,
        index_crc: u32::from_le_bytes(stored_crc),
        chunks_len,
    };
    match IndexSummary::decode(&bytes, described, HEADER_LEN as u64) {
        Ok(summary) => Summary::Usable(summary),
        Err(reason) => {
            tracing::warn!(block = %dir.display(), %reason, "block summary not used; checking the whole index");
            Summary::NotUsed
        }
    }
}

/// Why [`check_index`] refused an index.
enum CheckError {
    Io(io::Error),
    Corrupt(String),
}

impl From<String> for CheckError {
    fn from(reason: String) -> CheckError {
        CheckError::Corrupt(reason)
    }
}

impl From<io::Error> for CheckError {
    fn from(source: io::Error) -> CheckError {
        CheckError::Io(source)
    }
}

/// Bytes [`check_index`] reads at a time.
const CHECK_READ: usize = 1 << 16;

/// An index file read front to back for [`check_index`], through a buffer that holds about
/// one read (or the largest item, when that is longer): a block's index is tens of megabytes
/// per 100,000 series, and a merged block's more, so it is never read whole into memory.
struct IndexStream<'f> {
    file: &'f File,
    buffer: Vec<u8>,
    /// Bytes of `buffer` already taken.
    taken: usize,
    /// The file offset of `buffer[0]`.
    buffer_at: u64,
    /// Where the items end: the checksum's offset.
    end: u64,
}

impl<'f> IndexStream<'f> {
    /// The file offset of the next item.
    fn offset(&self) -> u64 {
        self.buffer_at + self.taken as u64
    }

    /// Bytes left before the checksum.
    fn left(&self) -> u64 {
        self.end - self.offset()
    }

    /// The next item's bytes: as many as `measure` reads of them. `measure` may only fail for
    /// want of bytes (the stream reads more and tries again), or at the end, where its error
    /// is the answer.
    fn next_item(
        &mut self,
        measure: impl Fn(&mut Reader<'_>) -> Result<(), String>,
    ) -> Result<&[u8], CheckError> {
        loop {
            let available = &self.buffer[self.taken..];
            let mut reader = Reader { bytes: available };
            match measure(&mut reader) {
                Ok(()) => {
                    let length = available.len() - reader.bytes.len();
                    let item = self.taken..self.taken + length;
                    self.taken += length;
                    return Ok(&self.buffer[item]);
                }
                Err(reason) if self.buffer_at + self.buffer.len() as u64 >= self.end => {
                    return Err(CheckError::Corrupt(reason));
                }
                Err(_) => self.read_more()?,
            }
        }
    }

    /// Drops the bytes taken and reads at least as many again as the buffer holds.
    fn read_more(&mut self) -> io::Result<()> {
        self.buffer.drain(..self.taken);
        self.buffer_at += self.taken as u64;
        self.taken = 0;
        let from = self.buffer_at + self.buffer.len() as u64;
        let wanted = self.buffer.len().max(CHECK_READ) as u64;
        // Bounded by the read above: it fits in memory.
        let length = wanted.min(self.end - from) as usize;
        let held = self.buffer.len();
        self.buffer.resize(held + length, 0);
        self.file.read_exact_at(&mut self.buffer[held..], from)
    }
}

/// A series record's length, read without checking its contents.
fn measure_record(reader: &mut Reader<'_>) -> Result<(), String> {
    SeriesRecord::read(reader).map(|_| ())
}

/// A postings entry's length, read without checking its contents.
fn measure_posting(reader: &mut Reader<'_>) -> Result<(), String> {
    for _ in 0..2 {
        let len = reader.u32()? as usize;
        reader.take(len)?;
    }
    let count = reader.count(4)?;
    reader.take(count * 4).map(|_| ())
}

/// Checks a whole index file of `file_len` bytes: its magic and checksum, every record's
/// lengths and labels, every chunk within the chunks file's `chunks_len` bytes, every
/// postings entry in order and naming a series of the block. The file is read twice, a
/// buffer at a time: once for the checksum, then for the rest.
fn check_index(file: &File, file_len: u64, chunks_len: u64) -> Result<IndexSummary, CheckError> {
    if file_len < (HEADER_LEN + 4) as u64 {
        return Err("the index does not start with M3BLOCK1".to_string().into());
    }
    let body_len = file_len - 4;
    let mut buffer = vec![0u8; CHECK_READ];
    let mut crc = crc32fast::Hasher::new();
    let mut at = 0u64;
    while at < body_len {
        // At most CHECK_READ.
        let length = (body_len - at).min(CHECK_READ as u64) as usize;
        file.read_exact_at(&mut buffer[..length], at)?;
        crc.update(&buffer[..length]);
        at += length as u64;
    }
    let mut stored = [0u8; 4];
    file.read_exact_at(&mut stored, body_len)?;
    let mut header = [0u8; HEADER_LEN];
    file.read_exact_at(&mut header, 0)?;
    if &header[..MAGIC.len()] != MAGIC {
        return Err("the index does not start with M3BLOCK1".to_string().into());
    }
    if crc.finalize() != u32::from_le_bytes(stored) {
        return Err("index checksum mismatch".to_string().into());
    }
    let mut header = Reader {
        bytes: &header[MAGIC.len()..],
    };
    let min_time = header.i64()?;
    let max_time = header.i64()?;
    let series_count = header.u32()? as usize;
    let mut stream = IndexStream {
        file,
        buffer,
        taken: 0,
        buffer_at: HEADER_LEN as u64,
        end: body_len,
    };
    stream.buffer.clear();
    // Every record takes at least six bytes: a count beyond that is not a count (and would
    // size the marks).
    if series_count as u64 * 6 > stream.left() {
        return Err(format!("a count of {series_count} does not fit the index").into());
    }
    let mut series_marks = Vec::with_capacity(series_count.div_ceil(MARK_EVERY) + 1);
    let (mut sample_count, mut chunk_bytes, mut chunk_count) = (0u64, 0u64, 0u64);
    for position in 0..series_count {
        if position % MARK_EVERY == 0 {
            series_marks.push(stream.offset());
        }
        let record = SeriesRecord::read(&mut Reader {
            bytes: stream.next_item(measure_record)?,
        })?;
        // Read back without checks later: the pairs must be a label set as written, every
        // one of them UTF-8 (the pairs end at the first that is not).
        let mut pairs = 0usize;
        let canonical = is_canonical(record.pairs().inspect(|_| pairs += 1));
        if !canonical || pairs != usize::from(record.label_count) {
            return Err(
                if record.pairs().count() != usize::from(record.label_count) {
                    "a label is not UTF-8".to_string().into()
                } else {
                    "a series' labels are not sorted, distinct and non-empty"
                        .to_string()
                        .into()
                },
            );
        }
        for meta in record.metas() {
            if meta.offset.saturating_add(u64::from(meta.length)) > chunks_len {
                return Err(format!(
                    "a chunk at {}+{} is past the end of the chunks file ({chunks_len} bytes)",
                    meta.offset, meta.length
                )
                .into());
            }
            sample_count += u64::from(meta.samples);
            chunk_bytes += u64::from(meta.length);
            chunk_count += 1;
        }
    }
    series_marks.push(stream.offset());
    let count = stream.next_item(|reader| reader.take(4).map(|_| ()))?;
    let posting_count = Reader { bytes: count }.u32()? as usize;
    // Every entry takes at least twelve bytes, as for the series count.
    if posting_count as u64 * 12 > stream.left() {
        return Err(format!("a count of {posting_count} does not fit the index").into());
    }
    let mut posting_marks = Vec::with_capacity(posting_count.div_ceil(MARK_EVERY) + 1);
    let mut previous: Option<(String, String)> = None;
    for entry in 0..posting_count {
        if entry % MARK_EVERY == 0 {
            posting_marks.push(stream.offset());
        }
        let mut reader = Reader {
            bytes: stream.next_item(measure_posting)?,
        };
        let name = reader.str()?;
        let value = reader.str()?;
        if previous
            .as_ref()
            .is_some_and(|(n, v)| (n.as_str(), v.as_str()) >= (name, value))
        {
            return Err(format!("postings of {name}={value:?} out of order").into());
        }
        let list_len = reader.count(4)?;
        for _ in 0..list_len {
            let position = reader.u32()?;
            if position as usize >= series_count {
                return Err(format!("postings name series {position} of {series_count}").into());
            }
        }
        match &mut previous {
            Some((n, v)) => {
                n.clear();
                n.push_str(name);
                v.clear();
                v.push_str(value);
            }
            None => previous = Some((name.to_owned(), value.to_owned())),
        }
    }
    if stream.left() > 0 {
        return Err(format!("{} bytes after the postings", stream.left()).into());
    }
    posting_marks.push(stream.offset());
    Ok(IndexSummary {
        min_time,
        max_time,
        series_count: series_count as u32,
        posting_count: posting_count as u32,
        series_marks,
        posting_marks,
        sample_count,
        chunk_bytes,
        chunk_count,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tsdb::head::{Head, HeadOptions};
    use crate::tsdb::merge::merge_blocks;
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
        let api = block.matching(&[Matcher::equal("job", "api")]).unwrap();
        assert_eq!(api.len(), 1);
        assert_eq!(api[0].1, a);
        let mut got = Vec::new();
        block.samples(api[0].0, 119_500, 121_000, &mut got).unwrap();
        assert_eq!(got, vec![(120_000, 120.0), (121_000, 121.0)]);
        assert_eq!(
            block
                .matching(&[Matcher::regex("i", "1|2").unwrap()])
                .unwrap()
                .len(),
            2
        );
        assert!(
            block
                .matching(&[Matcher::equal("job", "none")])
                .unwrap()
                .is_empty()
        );
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
        // A flipped bit, in a block without a summary (written before them): the checksum.
        let summary = std::fs::read(dir.join(SUMMARY_FILE)).unwrap();
        std::fs::remove_file(dir.join(SUMMARY_FILE)).unwrap();
        let mut flipped = index.clone();
        flipped[20] ^= 1;
        std::fs::write(dir.join(INDEX_FILE), &flipped).unwrap();
        let err = Block::open(&dir).unwrap_err().to_string();
        assert!(err.contains("checksum mismatch"), "{err}");
        std::fs::write(dir.join(SUMMARY_FILE), &summary).unwrap();
        // A chunks file cut short: the summary does not describe it, and the offsets do not
        // fit it.
        std::fs::write(dir.join(INDEX_FILE), &index).unwrap();
        std::fs::write(dir.join(CHUNKS_FILE), b"").unwrap();
        let err = Block::open(&dir).unwrap_err().to_string();
        assert!(err.contains("past the end of the chunks file"), "{err}");
        // Not a block at all.
        std::fs::write(dir.join(INDEX_FILE), b"nothing").unwrap();
        let err = Block::open(&dir).unwrap_err().to_string();
        assert!(err.contains("M3BLOCK1"), "{err}");
    }

    /// A block opened from its summary, and the same block opened by checking its index.
    fn opened_both_ways(dir: &Path) -> (Block, Block) {
        let from_summary = Block::open(dir).unwrap();
        let summary = std::fs::read(dir.join(SUMMARY_FILE)).unwrap();
        std::fs::remove_file(dir.join(SUMMARY_FILE)).unwrap();
        let checked = Block::open(dir).unwrap();
        std::fs::write(dir.join(SUMMARY_FILE), summary).unwrap();
        (from_summary, checked)
    }

    fn same_opening(a: &Block, b: &Block) -> bool {
        (
            a.min_time,
            a.max_time,
            a.series_count,
            &a.series_marks,
            &a.posting_marks,
        ) == (
            b.min_time,
            b.max_time,
            b.series_count,
            &b.series_marks,
            &b.posting_marks,
        ) && (a.sample_count, a.chunk_bytes, a.chunk_checksums)
            == (b.sample_count, b.chunk_bytes, b.chunk_checksums)
    }

    /// A chunk whose bytes changed on disk is an error naming the block, for a query and for a
    /// merge, and the other series still read.
    #[test]
    fn a_chunk_that_does_not_match_its_checksum_is_an_error_naming_the_block() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("b");
        let (a, b) = (labels("api", 1), labels("db", 2));
        let a_chunks = chunks_of(&[(1, 1.0), (2, 2.0), (3, 3.0)]);
        let b_chunks = chunks_of(&[(1, 5.0)]);
        let mut series = vec![
            (&a, a_chunks.iter().collect()),
            (&b, b_chunks.iter().collect()),
        ];
        write_block(&dir, 0, 10, &mut series).unwrap();
        let block = Block::open(&dir).unwrap();
        assert!(block.chunk_checksums);
        let found = block.matching(&[]).unwrap();
        assert_eq!(found[0].1, a);
        // Series `a` sorts first: its chunk starts the chunks file.
        let mut chunks = std::fs::read(dir.join(CHUNKS_FILE)).unwrap();
        chunks[2] ^= 0x01;
        std::fs::write(dir.join(CHUNKS_FILE), &chunks).unwrap();

        let err = block
            .samples(found[0].0, 0, 10, &mut Vec::new())
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not match its checksum"), "{err}");
        assert!(err.contains(&dir.display().to_string()), "{err}");
        assert!(block.has_samples(found[0].0, 2, 2).is_err());
        let mut other = Vec::new();
        block.samples(found[1].0, 0, 10, &mut other).unwrap();
        assert_eq!(other, vec![(1, 5.0)]);
        let merged = merge_blocks(&[&block], &root.path().join("merged"));
        assert!(merged.unwrap_err().to_string().contains("checksum"));
    }

    /// A block written before chunk checksums (the chunks back to back) opens, from its
    /// summary or checked, and reads as before.
    #[test]
    fn a_block_without_chunk_checksums_reads_as_before() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("b");
        let a = labels("api", 1);
        let samples: Vec<(i64, f64)> = (0..300).map(|t| (t, t as f64)).collect();
        let chunks = chunks_of(&samples);
        let mut writer = BlockWriter::create(&dir).unwrap().without_chunk_checksums();
        writer
            .add_series(&a, chunks.iter().map(ChunkBytes::of))
            .unwrap();
        writer.finish(0, 300).unwrap();
        let encoded: u64 = chunks.iter().map(|c| c.bytes().len() as u64).sum();
        assert_eq!(
            std::fs::metadata(dir.join(CHUNKS_FILE)).unwrap().len(),
            encoded
        );
        let (from_summary, checked) = opened_both_ways(&dir);
        assert!(same_opening(&from_summary, &checked));
        for block in [from_summary, checked] {
            assert!(!block.chunk_checksums);
            let at = block.matching(&[]).unwrap()[0].0;
            let mut got = Vec::new();
            block.samples(at, 0, 300, &mut got).unwrap();
            assert_eq!(got, samples);
        }
    }

    /// What the summary of the block in `dir` must describe.
    fn described(dir: &Path) -> Described {
        let index = std::fs::read(dir.join(INDEX_FILE)).unwrap();
        Described {
            index_len: index.len() as u64,
            index_crc: u32::from_le_bytes(*index.last_chunk::<4>().unwrap()),
            chunks_len: std::fs::metadata(dir.join(CHUNKS_FILE)).unwrap().len(),
        }
    }

    /// Forty series of two jobs, each with one chunk: three groups of records.
    fn forty_series_block(dir: &Path) {
        let pool: Vec<Labels> = (0..40)
            .map(|i| labels(if i % 2 == 0 { "api" } else { "db" }, i))
            .collect();
        let chunks = chunks_of(&[(1, 1.0), (2, 2.0)]);
        let mut series: Vec<BlockSeries<'_>> =
            pool.iter().map(|l| (l, chunks.iter().collect())).collect();
        write_block(dir, 0, 10, &mut series).unwrap();
    }

    /// A block without a summary (written before them) gets one when it is first opened: the
    /// one its writer would have written.
    #[test]
    fn a_block_without_a_summary_gets_one_when_first_opened() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("b");
        forty_series_block(&dir);
        let written = std::fs::read(dir.join(SUMMARY_FILE)).unwrap();
        std::fs::remove_file(dir.join(SUMMARY_FILE)).unwrap();
        let block = Block::open(&dir).unwrap();
        assert_eq!(block.matching(&[]).unwrap().len(), 40);
        assert_eq!(std::fs::read(dir.join(SUMMARY_FILE)).unwrap(), written);
        assert!(!root.path().join("b").join(".summary.tmp").exists());
    }

    /// A summary with a good checksum whose marks are wrong is refused when they cannot be
    /// right (two equal), and otherwise caught before a merge writes the block again: the
    /// merge fails rather than drop or misplace series, and walking the series is an error.
    #[test]
    fn a_summary_whose_marks_are_wrong_is_refused_or_caught_before_a_merge() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("b");
        forty_series_block(&dir);
        let good = IndexSummary::decode(
            &std::fs::read(dir.join(SUMMARY_FILE)).unwrap(),
            described(&dir),
            HEADER_LEN as u64,
        )
        .unwrap();
        assert_eq!(good.series_marks.len(), 4);

        let mut equal = good.clone();
        equal.series_marks[2] = equal.series_marks[1];
        std::fs::write(dir.join(SUMMARY_FILE), equal.encode(described(&dir))).unwrap();
        let block = Block::open(&dir).unwrap();
        assert_eq!(
            block.series_marks[..],
            good.series_marks[..],
            "checked instead"
        );
        let merged = merge_blocks(&[&block], &root.path().join("merged")).unwrap();
        assert_eq!(merged.series, 40);

        let mut moved = good.clone();
        moved.series_marks[1] += 1;
        std::fs::write(dir.join(SUMMARY_FILE), moved.encode(described(&dir))).unwrap();
        let block = Block::open(&dir).unwrap();
        assert_eq!(
            block.series_marks[1],
            good.series_marks[1] + 1,
            "taken as it is"
        );
        let err = merge_blocks(&[&block], &root.path().join("merged-again"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not say what its summary said"), "{err}");
        let mut walk = block.all_series();
        let walked: Result<Vec<_>, _> =
            std::iter::from_fn(|| walk.next_series().transpose()).collect();
        assert!(walked.is_err());

        // A series count that gives as many groups as the records make, but fewer series:
        // walking the records finds the last group fuller than the count says.
        let mut fewer = good.clone();
        fewer.series_count = 35;
        std::fs::write(dir.join(SUMMARY_FILE), fewer.encode(described(&dir))).unwrap();
        let block = Block::open(&dir).unwrap();
        assert_eq!(block.series_count(), 35, "taken as it is");
        let mut walk = block.all_series();
        let walked: Result<Vec<_>, _> =
            std::iter::from_fn(|| walk.next_series().transpose()).collect();
        let err = walked.unwrap_err().to_string();
        assert!(
            err.contains("holds 8 series records where its series count gives 3"),
            "{err}"
        );
    }

    /// A chunks file of neither length a block can have (a checksum cut short) is refused,
    /// not read without checks.
    #[test]
    fn a_chunks_file_cut_inside_a_checksum_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("b");
        forty_series_block(&dir);
        let chunks = std::fs::read(dir.join(CHUNKS_FILE)).unwrap();
        let summary = std::fs::read(dir.join(SUMMARY_FILE)).unwrap();
        std::fs::write(dir.join(CHUNKS_FILE), &chunks[..chunks.len() - 2]).unwrap();
        let err = Block::open(&dir).unwrap_err().to_string();
        assert!(err.contains("the chunks file holds"), "{err}");
        // The summary of the whole files is left as it was.
        assert_eq!(std::fs::read(dir.join(SUMMARY_FILE)).unwrap(), summary);
        // Without one, a block refused gets none.
        std::fs::remove_file(dir.join(SUMMARY_FILE)).unwrap();
        assert!(Block::open(&dir).is_err());
        assert!(!dir.join(SUMMARY_FILE).exists());
    }

    /// A chunk length changed inside an index opened from its summary is refused against the
    /// chunks file's length before it sizes a buffer.
    #[test]
    fn a_chunk_length_past_the_chunks_file_is_refused_before_it_is_read() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("b");
        let a = labels("api", 1);
        let chunks = chunks_of(&[(1, 1.0), (2, 2.0)]);
        write_block(&dir, 0, 10, &mut [(&a, chunks.iter().collect())]).unwrap();
        let mut record = Vec::new();
        put_labels(&mut record, &a);
        // The record's labels, its chunk count, then first, last, samples and offset.
        let length_at = HEADER_LEN + record.len() + 4 + 28;
        let mut index = std::fs::read(dir.join(INDEX_FILE)).unwrap();
        index[length_at..length_at + 4].copy_from_slice(&0xF000_0000u32.to_le_bytes());
        std::fs::write(dir.join(INDEX_FILE), &index).unwrap();
        let block = Block::open(&dir).unwrap();
        let at = block.matching(&[]).unwrap()[0].0;
        let err = block
            .samples(at, 0, 10, &mut Vec::new())
            .unwrap_err()
            .to_string();
        assert!(err.contains("past the end of the chunks file"), "{err}");
    }

    /// A block opens from its summary without reading its index: a byte changed inside the
    /// index goes unnoticed at open (its stored checksum still matches the summary), where a
    /// check of the whole index refuses it.
    #[test]
    fn a_block_opens_from_its_summary_without_reading_the_index() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("b");
        let pool: Vec<Labels> = (0..100).map(|i| labels("api", i)).collect();
        let chunks = chunks_of(&[(1, 1.0), (2, 2.0)]);
        let mut series: Vec<BlockSeries<'_>> =
            pool.iter().map(|l| (l, chunks.iter().collect())).collect();
        write_block(&dir, 0, 10, &mut series).unwrap();
        let (from_summary, checked) = opened_both_ways(&dir);
        assert!(same_opening(&from_summary, &checked));
        assert_eq!(from_summary.matching(&[]).unwrap().len(), 100);

        let mut index = std::fs::read(dir.join(INDEX_FILE)).unwrap();
        let middle = index.len() / 2;
        index[middle] ^= 0x40;
        std::fs::write(dir.join(INDEX_FILE), &index).unwrap();
        Block::open(&dir).expect("opened from the summary");
        std::fs::remove_file(dir.join(SUMMARY_FILE)).unwrap();
        let err = Block::open(&dir).unwrap_err().to_string();
        assert!(err.contains("checksum mismatch"), "{err}");
    }

    /// A summary that does not describe the files beside it (another index, a damaged
    /// summary) is not used: the index is checked whole and the block opens as it would
    /// without one.
    #[test]
    fn a_summary_that_does_not_describe_its_files_is_not_used() {
        let root = tempfile::tempdir().unwrap();
        let (one, other) = (root.path().join("one"), root.path().join("other"));
        let pool: Vec<Labels> = (0..40).map(|i| labels("api", i)).collect();
        let chunks = chunks_of(&[(1, 1.0), (2, 2.0)]);
        let mut series: Vec<BlockSeries<'_>> =
            pool.iter().map(|l| (l, chunks.iter().collect())).collect();
        write_block(&one, 0, 10, &mut series).unwrap();
        write_block(&other, 0, 10, &mut series[..20]).unwrap();
        let summary = std::fs::read(one.join(SUMMARY_FILE)).unwrap();

        // Another block's summary.
        std::fs::copy(other.join(SUMMARY_FILE), one.join(SUMMARY_FILE)).unwrap();
        let block = Block::open(&one).unwrap();
        assert_eq!(block.series_count(), 40);
        assert_eq!(block.matching(&[]).unwrap().len(), 40);

        // Any byte of the summary changed.
        for at in 0..summary.len() {
            let mut damaged = summary.clone();
            damaged[at] ^= 0x10;
            std::fs::write(one.join(SUMMARY_FILE), &damaged).unwrap();
            let block = Block::open(&one).unwrap();
            assert_eq!(block.matching(&[]).unwrap().len(), 40, "byte {at}");
        }
        std::fs::write(one.join(SUMMARY_FILE), &summary).unwrap();
        let (from_summary, checked) = opened_both_ways(&one);
        assert!(same_opening(&from_summary, &checked));
    }

    /// An index many times longer than one read of [`check_index`], with a series record and
    /// a postings entry each longer than a read, opens and reads back whole; damage to a
    /// record far into it (given a matching checksum) is refused with the reason.
    #[test]
    fn an_index_longer_than_a_read_is_checked_a_buffer_at_a_time() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("b");
        // 20,000 series carry `__name__="up"`: a postings entry of 80,000 bytes.
        let pool: Vec<Labels> = (0..20_000).map(|i| labels("api", i)).collect();
        let one = chunks_of(&[(1, 1.0)]);
        // Series 7 has 3,000 chunks: a record of 96,000 bytes.
        let long_samples: Vec<(i64, f64)> = (0..360_000).map(|t| (t, t as f64)).collect();
        let long = chunks_of(&long_samples);
        let mut series: Vec<BlockSeries<'_>> = pool
            .iter()
            .enumerate()
            .map(|(i, l)| {
                (
                    l,
                    if i == 7 {
                        long.iter().collect()
                    } else {
                        one.iter().collect()
                    },
                )
            })
            .collect();
        write_block(&dir, 0, 360_000, &mut series).unwrap();
        let index_len = std::fs::metadata(dir.join(INDEX_FILE)).unwrap().len();
        assert!(index_len > 10 * CHECK_READ as u64, "{index_len}");

        // Checked, not opened from the summary.
        let summary = std::fs::read(dir.join(SUMMARY_FILE)).unwrap();
        std::fs::remove_file(dir.join(SUMMARY_FILE)).unwrap();
        let block = Block::open(&dir).unwrap();
        std::fs::write(dir.join(SUMMARY_FILE), summary).unwrap();
        assert!(same_opening(&block, &Block::open(&dir).unwrap()));
        assert_eq!(block.series_count(), 20_000);
        assert_eq!(block.sample_count(), 360_000 + 19_999);
        let all = block.matching(&[Matcher::equal("__name__", "up")]).unwrap();
        let mut expected = pool.clone();
        expected.sort();
        assert!(all.iter().map(|(_, l)| l).eq(expected.iter()));
        let seven = block.matching(&[Matcher::equal("i", "7")]).unwrap();
        let mut got = Vec::new();
        block.samples(seven[0].0, 0, i64::MAX, &mut got).unwrap();
        assert_eq!(got, long_samples);

        // A label value of a record past the first few reads made not UTF-8, the checksum
        // made to match (so the summary no longer describes the index): the parser itself
        // finds it.
        let mut index = std::fs::read(dir.join(INDEX_FILE)).unwrap();
        let needle = b"i\x05\x00\x00\x0019999";
        let at = index
            .windows(needle.len())
            .position(|w| w == needle)
            .expect("the record of series 19999");
        assert!(at > 4 * CHECK_READ);
        index[at + needle.len() - 1] = 0xff;
        let body_len = index.len() - 4;
        let crc = crc32fast::hash(&index[..body_len]);
        index[body_len..].copy_from_slice(&crc.to_le_bytes());
        std::fs::write(dir.join(INDEX_FILE), &index).unwrap();
        let err = Block::open(&dir).unwrap_err().to_string();
        assert!(err.contains("not UTF-8"), "{err}");
    }

    /// The writer sends each series record to the index file as it is added: what it holds
    /// until `finish` is the postings, not the index.
    #[test]
    fn series_records_reach_the_file_before_the_block_is_finished() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("b");
        let pool: Vec<Labels> = (0..5_000).map(|i| labels("api", i)).collect();
        let mut sorted = pool.clone();
        sorted.sort();
        let chunks = chunks_of(&[(1, 1.0), (2, 2.0)]);
        let mut writer = BlockWriter::create(&dir).unwrap();
        for labels in &sorted {
            writer
                .add_series(labels, chunks.iter().map(ChunkBytes::of))
                .unwrap();
        }
        let temporary = root.path().join(".b.tmp").join(INDEX_FILE);
        let on_disk = std::fs::metadata(&temporary).unwrap().len();
        // Each record is over 60 bytes; at most a write buffer's worth is still in memory.
        assert!(on_disk > 5_000 * 60 - 8 * 1024, "{on_disk}");
        writer.finish(0, 10).unwrap();
        assert!(!temporary.exists());
        let block = Block::open(&dir).unwrap();
        assert_eq!(block.series_count(), 5_000);
        assert_eq!(
            block
                .matching(&[Matcher::equal("job", "api")])
                .unwrap()
                .len(),
            5_000
        );
    }

    proptest! {
        /// A head's series written as a block read back exactly, for any matcher and range.
        #[test]
        fn a_block_answers_as_the_head_it_was_written_from(
            samples in prop::collection::vec((0usize..60, 0i64..2_000, 0u8..10), 1..600),
            ranges in prop::collection::vec((0i64..2_000, 0i64..1_000), 3),
        ) {
            let mut head = Head::new(HeadOptions { out_of_order_window: 0, ..HeadOptions::default() });
            // Enough series for several groups of records and postings, some with a label
            // longer than a first read.
            let pool: Vec<Labels> = (0..60).map(|i| match i % 7 {
                0 => Labels::new([("__name__", "up"), ("job", "api"), ("long", &"x".repeat(700 + i)[..])]).unwrap(),
                1 | 4 => labels("api", i),
                _ => labels("db", i),
            }).collect();
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
            let (block, checked) = opened_both_ways(&dir);
            prop_assert!(same_opening(&block, &checked), "the summary says what a check finds");
            for matchers in [
                vec![],
                vec![Matcher::equal("job", "api")],
                vec![Matcher::not_equal("job", "api"), Matcher::regex("i", "[0-4]").unwrap()],
                vec![Matcher::equal("i", "17")],
                vec![Matcher::regex("long", "x+").unwrap()],
                vec![Matcher::not_regex("job", "db|api").unwrap()],
                vec![Matcher::equal("zzz", "none")],
            ] {
                let mut from_head: Vec<Labels> = head.matching(&matchers).into_iter().map(|r| head.labels(r).unwrap()).collect();
                from_head.sort();
                let from_block: Vec<Labels> = block.matching(&matchers).unwrap().into_iter().map(|(_, labels)| labels).collect();
                prop_assert_eq!(&from_block, &from_head);
                let everything = block.matching(&[]).unwrap();
                for labels in &from_block {
                    let r = head.find(labels.view()).unwrap();
                    let p = everything.iter().find(|(_, l)| l == labels).unwrap().0;
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
                if let Some((p, _)) = block.matching(&[]).unwrap().into_iter().find(|(_, l)| l == labels) {
                    block.samples(p, i64::MIN, i64::MAX, &mut merged).unwrap();
                }
                if let Some((_, rest)) = after.iter().find(|(l, _)| l == labels) {
                    merged.extend(rest);
                }
                merged.sort_by_key(|s| s.0);
                prop_assert_eq!(&merged, all, "{:?}", labels);
            }
        }

        /// An index changed after the block was opened (it is read from the file as queries
        /// need it) gives errors or wrong answers, never a panic.
        #[test]
        fn an_index_changed_after_open_never_panics(position in any::<prop::sample::Index>(), byte in any::<u8>(), cut in any::<prop::sample::Index>()) {
            let root = tempfile::tempdir().unwrap();
            let dir = root.path().join("b");
            let pool: Vec<Labels> = (0..40).map(|i| labels(if i % 2 == 0 { "api" } else { "db" }, i)).collect();
            let chunks = chunks_of(&[(1, 1.0), (2, 2.0)]);
            let mut series: Vec<BlockSeries<'_>> = pool.iter().map(|l| (l, chunks.iter().collect())).collect();
            write_block(&dir, 0, 10, &mut series).unwrap();
            let block = Block::open(&dir).unwrap();
            let found = block.matching(&[]).unwrap();
            prop_assert_eq!(found.len(), 40);
            let mut index = std::fs::read(dir.join(INDEX_FILE)).unwrap();
            let i = position.index(index.len());
            index[i] = byte;
            index.truncate(cut.index(index.len() + 1).max(i));
            std::fs::write(dir.join(INDEX_FILE), &index).unwrap();
            for matchers in [
                vec![],
                vec![Matcher::equal("job", "api")],
                vec![Matcher::regex("i", "1.*").unwrap()],
            ] {
                let _ = block.matching(&matchers);
            }
            let mut out = Vec::new();
            for (at, _) in &found {
                let _ = block.samples(*at, 0, 10, &mut out);
                let _ = block.has_samples(*at, 0, 10);
            }
        }

        /// A summary with any field changed, given a matching checksum, is refused or used;
        /// either way no read panics.
        #[test]
        fn any_summary_damage_never_panics(position in any::<prop::sample::Index>(), byte in any::<u8>(), cut in any::<prop::sample::Index>()) {
            let root = tempfile::tempdir().unwrap();
            let dir = root.path().join("b");
            let pool: Vec<Labels> = (0..40).map(|i| labels(if i % 2 == 0 { "api" } else { "db" }, i)).collect();
            let chunks = chunks_of(&[(1, 1.0), (2, 2.0)]);
            let mut series: Vec<BlockSeries<'_>> = pool.iter().map(|l| (l, chunks.iter().collect())).collect();
            write_block(&dir, 0, 10, &mut series).unwrap();
            let summary = std::fs::read(dir.join(SUMMARY_FILE)).unwrap();
            let mut body = summary[..summary.len() - 4].to_vec();
            let i = position.index(body.len());
            body[i] = byte;
            body.truncate(cut.index(body.len() + 1).max(i));
            let crc = crc32fast::hash(&body);
            body.extend_from_slice(&crc.to_le_bytes());
            std::fs::write(dir.join(SUMMARY_FILE), &body).unwrap();
            if let Ok(block) = Block::open(&dir) {
                for matchers in [
                    vec![],
                    vec![Matcher::equal("job", "api")],
                    vec![Matcher::regex("i", "1.*").unwrap()],
                ] {
                    if let Ok(found) = block.matching(&matchers) {
                        let mut out = Vec::new();
                        for (at, _) in &found {
                            let _ = block.samples(*at, 0, 10, &mut out);
                            let _ = block.has_samples(*at, 0, 10);
                        }
                    }
                }
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
