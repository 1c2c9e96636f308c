//! A block's summary: what opening a block needs of its index, written beside it so that a
//! start need not read every index.
//!
//! Opening a block without a summary reads and checks its whole index (tens of megabytes per
//! 100,000 series, hundreds for a merged block) to find where its groups of records and
//! postings entries start; a start opens every block, so it read every index of the store.
//! The writer knows those offsets as it writes, and puts them in a small file beside the index:
//!
//! ```text
//! summary  "M3BSUM01" | index length u64 | index checksum u32 | chunks length u64
//!          | min time i64 | max time i64 | series count u32 | postings count u32
//!          | sample count u64 | chunk bytes u64 | chunk count u64
//!          | series marks count u32, u64… | postings marks count u32, u64…
//!          | CRC-32 of everything before (u32)                       (all little-endian)
//! ```
//!
//! It is about one byte per series. A summary is used only when it describes the files beside
//! it: the index's length and stored checksum (its last four bytes) and the chunks file's
//! length must be those it names, and its marks must fit them. Otherwise, and for blocks
//! written before summaries, the index is checked whole as before; a block that had none is
//! given one once its check passes, so only the first start after an upgrade reads it. A block opened from its
//! summary has not had its index checked: what a damaged index holds shows as read errors
//! naming the block (never a panic), as for an index changed after it was checked.

use crate::tsdb::block::MARK_EVERY;

/// The summary's file name in a block's directory.
pub(crate) const SUMMARY_FILE: &str = "summary";
const MAGIC: &[u8; 8] = b"M3BSUM01";

/// What opening a block needs of its index: its range, its counts and where every
/// [`MARK_EVERY`]th series record and postings entry starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IndexSummary {
    pub(crate) min_time: i64,
    pub(crate) max_time: i64,
    pub(crate) series_count: u32,
    pub(crate) posting_count: u32,
    /// The offset of series record `i * MARK_EVERY` for each `i`, then the records' end.
    pub(crate) series_marks: Vec<u64>,
    /// The offset of postings entry `i * MARK_EVERY` for each `i`, then the entries' end.
    pub(crate) posting_marks: Vec<u64>,
    pub(crate) sample_count: u64,
    /// The chunks' encoded bytes, their checksums not counted.
    pub(crate) chunk_bytes: u64,
    pub(crate) chunk_count: u64,
}

/// The files a summary describes: it is used only for these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Described {
    /// The index file's length.
    pub(crate) index_len: u64,
    /// The checksum stored at the end of the index file.
    pub(crate) index_crc: u32,
    /// The chunks file's length.
    pub(crate) chunks_len: u64,
}

impl IndexSummary {
    /// The summary file's bytes for these files.
    pub(crate) fn encode(&self, files: Described) -> Vec<u8> {
        let mut out =
            Vec::with_capacity(80 + 8 * (self.series_marks.len() + self.posting_marks.len()));
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&files.index_len.to_le_bytes());
        out.extend_from_slice(&files.index_crc.to_le_bytes());
        out.extend_from_slice(&files.chunks_len.to_le_bytes());
        out.extend_from_slice(&self.min_time.to_le_bytes());
        out.extend_from_slice(&self.max_time.to_le_bytes());
        out.extend_from_slice(&self.series_count.to_le_bytes());
        out.extend_from_slice(&self.posting_count.to_le_bytes());
        out.extend_from_slice(&self.sample_count.to_le_bytes());
        out.extend_from_slice(&self.chunk_bytes.to_le_bytes());
        out.extend_from_slice(&self.chunk_count.to_le_bytes());
        for marks in [&self.series_marks, &self.posting_marks] {
            out.extend_from_slice(&(marks.len() as u32).to_le_bytes());
            for mark in marks {
                out.extend_from_slice(&mark.to_le_bytes());
            }
        }
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// The summary in `bytes` if it describes `files` and its marks fit them; the reason
    /// otherwise. `records_start` is where an index's first series record starts.
    pub(crate) fn decode(
        bytes: &[u8],
        files: Described,
        records_start: u64,
    ) -> Result<IndexSummary, String> {
        if bytes.len() < MAGIC.len() + 4 || &bytes[..MAGIC.len()] != MAGIC {
            return Err("not a block summary".into());
        }
        let (body, crc) = bytes.split_at(bytes.len() - 4);
        if crc32fast::hash(body) != u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]) {
            return Err("summary checksum mismatch".into());
        }
        let mut fields = Fields(&body[MAGIC.len()..]);
        let described = Described {
            index_len: fields.u64()?,
            index_crc: fields.u32()?,
            chunks_len: fields.u64()?,
        };
        if described != files {
            return Err(format!(
                "the summary describes other files ({described:?}, not {files:?})"
            ));
        }
        let min_time = fields.u64()? as i64;
        let max_time = fields.u64()? as i64;
        let series_count = fields.u32()?;
        let posting_count = fields.u32()?;
        let sample_count = fields.u64()?;
        let chunk_bytes = fields.u64()?;
        let chunk_count = fields.u64()?;
        let series_marks = fields.marks()?;
        let posting_marks = fields.marks()?;
        if !fields.0.is_empty() {
            return Err(format!("{} bytes after the marks", fields.0.len()));
        }
        let groups = |count: u32| (count as usize).div_ceil(MARK_EVERY) + 1;
        if series_marks.len() != groups(series_count)
            || posting_marks.len() != groups(posting_count)
        {
            return Err("the marks do not match the counts".into());
        }
        // Records from the header on, then the postings count (u32), then the entries up to
        // the index's checksum, every mark within them and in order.
        let records_end = series_marks.last().copied().unwrap_or(0);
        let fits = series_marks.first() == Some(&records_start)
            && posting_marks.first() == Some(&records_end.saturating_add(4))
            && posting_marks.last() == Some(&files.index_len.saturating_sub(4))
            // Every group holds at least one record (six bytes or more) or entry (twelve).
            && series_marks.windows(2).all(|w| w[0] < w[1])
            && posting_marks.windows(2).all(|w| w[0] < w[1]);
        if !fits {
            return Err("the marks do not fit the index".into());
        }
        Ok(IndexSummary {
            min_time,
            max_time,
            series_count,
            posting_count,
            series_marks,
            posting_marks,
            sample_count,
            chunk_bytes,
            chunk_count,
        })
    }
}

/// The summary's fields, every read checked.
struct Fields<'a>(&'a [u8]);

impl Fields<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let Some((head, rest)) = self.0.split_first_chunk::<N>() else {
            return Err("the summary ends early".into());
        };
        self.0 = rest;
        Ok(*head)
    }

    fn u32(&mut self) -> Result<u32, String> {
        self.take().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Result<u64, String> {
        self.take().map(u64::from_le_bytes)
    }

    /// A count and that many offsets; a count the rest cannot hold is refused before
    /// anything is allocated for it.
    fn marks(&mut self) -> Result<Vec<u64>, String> {
        let count = self.u32()? as usize;
        if count.saturating_mul(8) > self.0.len() {
            return Err(format!("a count of {count} marks does not fit the summary"));
        }
        (0..count).map(|_| self.u64()).collect()
    }
}
