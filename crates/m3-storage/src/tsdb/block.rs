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

use hashbrown::HashMap;

use crate::labels::Labels;
use crate::matcher::{Matcher, matches_all};
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

/// A block open for reading.
#[derive(Debug)]
pub struct Block {
    dir: PathBuf,
    min_time: i64,
    max_time: i64,
    chunks: File,
    series: Vec<(Labels, Vec<ChunkMeta>)>,
    postings: HashMap<String, HashMap<String, Vec<u32>>>,
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

/// Reads the index's fields, every read checked.
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

    fn text(&mut self) -> Result<String, String> {
        let len = self.u32()? as usize;
        String::from_utf8(self.take(len)?.to_vec()).map_err(|_| "a label is not UTF-8".into())
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
    /// Opens the block in `dir`, checking its index against its chunks file.
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
        if index.len() < MAGIC.len() + 4 || &index[..MAGIC.len()] != MAGIC {
            return Err(corrupt("the index does not start with M3BLOCK1".into()));
        }
        let (body, crc) = index.split_at(index.len() - 4);
        if crc32fast::hash(body) != u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]) {
            return Err(corrupt("index checksum mismatch".into()));
        }
        let mut reader = Reader {
            bytes: &body[MAGIC.len()..],
        };
        let parsed = (|| -> Result<Block, String> {
            let min_time = reader.i64()?;
            let max_time = reader.i64()?;
            let series_count = reader.count(6)?;
            let mut series = Vec::with_capacity(series_count);
            for _ in 0..series_count {
                let label_count = u16::from_le_bytes(reader.array()?);
                let mut pairs = Vec::with_capacity(usize::from(label_count));
                for _ in 0..label_count {
                    let name = reader.text()?;
                    let value = reader.text()?;
                    pairs.push((name, value));
                }
                let labels = Labels::new(pairs).map_err(|e| e.to_string())?;
                let chunk_count = reader.count(32)?;
                let mut metas = Vec::with_capacity(chunk_count);
                for _ in 0..chunk_count {
                    let meta = ChunkMeta {
                        first: reader.i64()?,
                        last: reader.i64()?,
                        samples: reader.u32()?,
                        offset: u64::from_le_bytes(reader.array()?),
                        length: reader.u32()?,
                    };
                    if meta.offset.saturating_add(u64::from(meta.length)) > chunks_len {
                        return Err(format!(
                            "a chunk at {}+{} is past the end of the chunks file ({chunks_len} bytes)",
                            meta.offset, meta.length
                        ));
                    }
                    metas.push(meta);
                }
                series.push((labels, metas));
            }
            let posting_count = reader.count(12)?;
            let mut postings: HashMap<String, HashMap<String, Vec<u32>>> = HashMap::new();
            for _ in 0..posting_count {
                let name = reader.text()?;
                let value = reader.text()?;
                let list_len = reader.count(4)?;
                let mut list = Vec::with_capacity(list_len);
                for _ in 0..list_len {
                    let position = reader.u32()?;
                    if position as usize >= series.len() {
                        return Err(format!(
                            "postings name series {position} of {}",
                            series.len()
                        ));
                    }
                    list.push(position);
                }
                postings.entry(name).or_default().insert(value, list);
            }
            if !reader.bytes.is_empty() {
                return Err(format!("{} bytes after the postings", reader.bytes.len()));
            }
            Ok(Block {
                dir: dir.to_path_buf(),
                min_time,
                max_time,
                chunks: chunks.try_clone().map_err(|e| e.to_string())?,
                series,
                postings,
            })
        })();
        parsed.map_err(corrupt)
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
        self.series.len()
    }

    /// Samples in the block.
    pub fn sample_count(&self) -> u64 {
        self.series
            .iter()
            .flat_map(|(_, metas)| metas)
            .map(|m| u64::from(m.samples))
            .sum()
    }

    /// Bytes of the chunks file (the samples' share of the block on disk).
    pub fn chunk_bytes(&self) -> u64 {
        self.series
            .iter()
            .flat_map(|(_, metas)| metas)
            .map(|m| u64::from(m.length))
            .sum()
    }

    /// The series matching every matcher (all for none), as positions in the block.
    pub fn matching(&self, matchers: &[Matcher]) -> Vec<u32> {
        let mut candidates: Option<Vec<u32>> = None;
        for matcher in matchers.iter().filter(|m| !m.matches_empty()) {
            let mut found: Vec<u32> = self
                .postings
                .get(matcher.name())
                .into_iter()
                .flatten()
                .filter(|(value, _)| matcher.matches_value(value))
                .flat_map(|(_, list)| list.iter().copied())
                .collect();
            found.sort_unstable();
            found.dedup();
            if let Some(previous) = candidates {
                found.retain(|p| previous.binary_search(p).is_ok());
            }
            candidates = Some(found);
        }
        candidates
            .unwrap_or_else(|| (0..self.series.len() as u32).collect())
            .into_iter()
            .filter(|&p| matches_all(matchers, &self.series[p as usize].0))
            .collect()
    }

    /// The labels of series `position`.
    pub fn labels(&self, position: u32) -> Option<&Labels> {
        self.series.get(position as usize).map(|s| &s.0)
    }

    /// Whether series `position` has a sample in `start..=end`; reads only the chunks that
    /// straddle an end of the range.
    ///
    /// # Errors
    /// Reading the chunks file failed.
    pub fn has_samples(&self, position: u32, start: i64, end: i64) -> Result<bool, BlockError> {
        let Some((_, metas)) = self.series.get(position as usize) else {
            return Ok(false);
        };
        let mut bytes = Vec::new();
        for meta in metas {
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
        let Some((_, metas)) = self.series.get(position as usize) else {
            return Ok(());
        };
        let mut bytes = Vec::new();
        for meta in metas.iter().filter(|m| m.last >= start && m.first <= end) {
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
        assert_eq!(block.labels(api[0]), Some(&a));
        let mut got = Vec::new();
        block.samples(api[0], 119_500, 121_000, &mut got).unwrap();
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
                let from_block: Vec<Labels> = block.matching(&matchers).into_iter().map(|p| block.labels(p).unwrap().clone()).collect();
                prop_assert_eq!(&from_block, &from_head);
                for labels in &from_block {
                    let r = head.find(labels.view()).unwrap();
                    let p = block.matching(&[]).into_iter().find(|&p| block.labels(p) == Some(labels)).unwrap();
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
                if let Some(p) = block.matching(&[]).into_iter().find(|&p| block.labels(p) == Some(labels)) {
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
