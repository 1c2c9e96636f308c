//! A head whose every batch is in the write-ahead log before it is applied: what
//! [`DurableHead::append`] acknowledged is there again after a crash and [`DurableHead::open`].
//!
//! A batch becomes log records — one per series the batch creates, then one holding every
//! sample — written with one append:
//!
//! ```text
//! series  record: 1 | ref u32 | label count u16 | (name len u32, name, value len u32, value)…
//! samples record: 2 | count u32 | (ref u32, time i64, value bits u64)…
//! removed record: 3 | count u32 | ref u32…                                  (all little-endian)
//! ```
//!
//! Series references are the head's, so replaying the records rebuilds the same references.
//! Retention's removals are logged too ([`DurableHead::truncate_before`]), and only a logged
//! removal lets a new series take the reference: replay then sees the old series go before the
//! new one comes, even when the new one has the same labels. A record that passes its checksum but does not decode is not a torn write:
//! opening fails with [`DurableError::Corrupt`] rather than guessing.

use std::collections::BTreeMap;
use std::io;
use std::path::Path;

use m3_hash_index::PREFETCH_AHEAD;

use crate::labels::{AsLabelsView, Labels, LabelsView, MAX_ENCODED_LABELS_BYTES};
use crate::tsdb::chunk::SealedChunk;
use crate::tsdb::chunk_files::ChunkFiles;
use crate::tsdb::head::{AppendSummary, Head, HeadOptions, SeriesRef, Truncated};
use crate::tsdb::varint;
use crate::tsdb::wal::{
    Checkpoint, KEPT_BUFFER_BYTES, ReplayReport, Wal, WalError, WalOptions, give_back_excess,
};

const SERIES_RECORD: u8 = 1;
/// How far past the next reference a replayed series record may name one (references skipped
/// by batches that could not be logged leave gaps).
const MAX_REFERENCE_GAP: usize = 1 << 20;
const SAMPLES_RECORD: u8 = 2;
const REMOVED_RECORD: u8 = 3;
/// Samples as deltas: per sample the zigzag varint of its reference less the one before, of
/// its time less the one before (both from 0), then its value's eight bytes. A remote-write
/// batch's samples mostly share a time and follow their series' creation order, so a sample
/// takes about ten bytes where [`SAMPLES_RECORD`] (logs before this record) took twenty.
const PACKED_SAMPLES_RECORD: u8 = 4;
/// The fewest bytes a packed sample takes: a byte per delta and the value.
const MIN_PACKED_SAMPLE: usize = 10;

/// Why opening a durable head failed.
#[derive(Debug, thiserror::Error)]
pub enum DurableError {
    /// The log could not be read, cut or created.
    #[error(transparent)]
    Io(#[from] io::Error),
    /// A checksummed record does not decode (written by another format, or a bug).
    #[error("write-ahead log record does not decode: {0}")]
    Corrupt(String),
}

/// Why a batch was not appended.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// A new series' labels are too long to store; nothing of the batch was logged.
    #[error("series {name:?} has labels of {size} bytes encoded, over the limit of {max}")]
    SeriesTooLong {
        /// Its metric name (`""` without one).
        name: String,
        /// Its encoded size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The log write failed (a full disk); see [`DurableHead::append`].
    #[error("write-ahead log: {0}")]
    Io(#[from] io::Error),
}

/// A checkpoint taken by [`DurableHead::prepare_checkpoint`], to write without the head.
#[derive(Debug)]
pub struct PendingCheckpoint {
    checkpoint: Checkpoint,
    records: Vec<Vec<u8>>,
}

impl PendingCheckpoint {
    /// Writes it; returns how many log segments went.
    ///
    /// # Errors
    /// I/O errors; the log then still holds everything it held.
    pub fn write(self) -> io::Result<usize> {
        self.checkpoint.write(&self.records)
    }
}

/// A [`Head`] with its write-ahead log.
#[derive(Debug)]
pub struct DurableHead {
    head: Head,
    wal: Wal,
    /// The newest sample time logged in each segment (`i64::MIN` for none), so a checkpoint
    /// knows which segments hold only samples already in blocks.
    segment_max_time: BTreeMap<u64, i64>,
    /// The series records of a batch's new series, back to back (reused; see
    /// [`KEPT_BUFFER_BYTES`]), and where each ends.
    series_records: Vec<u8>,
    series_record_ends: Vec<usize>,
    /// The samples record of a batch (reused; see [`KEPT_BUFFER_BYTES`]).
    samples_record: Vec<u8>,
    refs: Vec<(SeriesRef, i64, f64)>,
    /// The hashes of a batch's label sets, computed before any is looked up.
    hashes: Vec<u64>,
}

impl DurableHead {
    /// Opens the log in `dir` (created if missing) and replays it into a new head, which keeps
    /// its closed chunks in files in `chunk_dir` (emptied first; see
    /// [`crate::tsdb::chunk_files::ChunkFiles`]) or, without one, in memory.
    ///
    /// # Errors
    /// I/O errors, and a record that passes its checksum but does not decode.
    pub fn open(
        dir: &Path,
        head_options: HeadOptions,
        wal_options: WalOptions,
        chunk_dir: Option<&Path>,
    ) -> Result<(DurableHead, ReplayReport), DurableError> {
        let mut head = match chunk_dir {
            Some(chunk_dir) => {
                let files = ChunkFiles::open(chunk_dir).map_err(|e| {
                    io::Error::new(e.kind(), format!("{}: {e}", chunk_dir.display()))
                })?;
                Head::with_chunk_files(head_options, files)
            }
            None => Head::new(head_options),
        };
        let mut refs = Vec::new();
        let mut segment_max_time = BTreeMap::new();
        let (wal, report) = Wal::open_segmented(dir, wal_options, |segment, record| {
            let newest = replay(&mut head, &mut refs, record)?;
            let entry = segment_max_time.entry(segment).or_insert(i64::MIN);
            *entry = (*entry).max(newest);
            Ok(())
        })
        .map_err(|e| match e {
            WalError::Io(e) => DurableError::Io(e),
            WalError::Apply(e) => e,
        })?;
        segment_max_time.insert(wal.segment(), i64::MIN);
        // References the log no longer names (their series were removed) go to new series.
        head.reclaim_free_references();
        Ok((
            DurableHead {
                head,
                wal,
                segment_max_time,
                series_records: Vec::new(),
                series_record_ends: Vec::new(),
                samples_record: Vec::new(),
                refs,
                hashes: Vec::new(),
            },
            report,
        ))
    }

    /// The head, for reads.
    pub fn head(&self) -> &Head {
        &self.head
    }

    /// Applies `samples`, then logs those taken; once it returns `Ok` they survive a crash.
    /// Samples the head refuses (too old) are not logged, so replay cannot bring them back.
    ///
    /// # Errors
    /// [`AppendError::SeriesTooLong`] when a new series' labels encode to more than
    /// [`MAX_ENCODED_LABELS_BYTES`] (or hold more than 65,535 labels): nothing applied or
    /// logged. [`AppendError::Io`] when the log write failed (a full disk): the series the
    /// batch created are removed again, and samples it applied to existing series stay in
    /// memory unacknowledged (the writer retries; a retry logs them again, as duplicates are
    /// logged). That is safe because the log either cut the failed write off or, when it
    /// could not (or the batch may have reached it after all), refuses every later batch until
    /// reopened: no later record can name the same labels under another reference.
    pub fn append<L: AsLabelsView>(
        &mut self,
        samples: &[(L, i64, f64)],
    ) -> Result<AppendSummary, AppendError> {
        self.refs.clear();
        self.series_records.clear();
        self.series_record_ends.clear();
        let mut new_refs = Vec::new();
        self.hashes.clear();
        self.hashes.extend(
            samples
                .iter()
                .map(|sample| self.head.hash(sample.0.labels_view())),
        );
        for (i, ((labels, time, value), &hash)) in samples.iter().zip(&self.hashes).enumerate() {
            if let Some(&ahead) = self.hashes.get(i + PREFETCH_AHEAD) {
                self.head.prefetch(ahead);
            }
            let (labels, time, value) = (labels.labels_view(), *time, *value);
            let (reference, new) = self.head.get_or_create_hashed(labels, hash);
            if new {
                new_refs.push(reference);
                let size = Labels::encoded_len(labels.iter().map(|(n, v)| (n.len(), v.len())));
                if size > MAX_ENCODED_LABELS_BYTES || labels.len() > usize::from(u16::MAX) {
                    for reference in new_refs {
                        self.head.remove_series(reference);
                    }
                    return Err(AppendError::SeriesTooLong {
                        name: labels.metric_name().unwrap_or("").to_owned(),
                        size,
                        max: MAX_ENCODED_LABELS_BYTES,
                    });
                }
                encode_series(reference, labels, &mut self.series_records);
                self.series_record_ends.push(self.series_records.len());
            }
            self.refs.push((reference, time, value));
        }
        let summary = self.head.append_refs_retaining_taken(&mut self.refs);
        encode_samples(&self.refs, &mut self.samples_record);
        let created = self.series_record_ends.len();
        let starts = std::iter::once(0).chain(self.series_record_ends.iter().copied());
        let records: Vec<&[u8]> = starts
            .zip(&self.series_record_ends)
            .map(|(start, &end)| &self.series_records[start..end])
            .chain(std::iter::once(self.samples_record.as_slice()))
            .collect();
        let segment = self.wal.segment();
        let appended = self.wal.append(&records);
        drop(records);
        // What one exceptional batch needed is not kept for every later one.
        give_back_excess(&mut self.series_records, KEPT_BUFFER_BYTES);
        give_back_excess(&mut self.samples_record, KEPT_BUFFER_BYTES);
        give_back_excess(&mut self.series_record_ends, KEPT_BUFFER_BYTES / 64);
        if let Err(e) = appended {
            for reference in new_refs {
                self.head.remove_series(reference);
            }
            return Err(e.into());
        }
        let newest = self.refs.iter().map(|s| s.1).max().unwrap_or(i64::MIN);
        let entry = self.segment_max_time.entry(segment).or_insert(i64::MIN);
        *entry = (*entry).max(newest);
        self.segment_max_time
            .entry(self.wal.segment())
            .or_insert(i64::MIN);
        Ok(AppendSummary {
            new_series: created,
            ..summary
        })
    }

    /// Whether the log refuses appends until reopened (see [`Wal::is_poisoned`]).
    pub fn is_poisoned(&self) -> bool {
        self.wal.is_poisoned()
    }

    /// Takes the chunks wholly before `cutoff` out of the head (see [`Head::cut_before`]).
    /// They stay in the log until a checkpoint ([`prepare_checkpoint`](Self::prepare_checkpoint))
    /// is written with a cutoff past them, which the caller does once they are safely in a block.
    pub fn cut_before(&mut self, cutoff: i64) -> Vec<(Labels, Vec<SealedChunk>)> {
        self.head.cut_before(cutoff)
    }

    /// Drops what is wholly before `cutoff` from the head (retention; see
    /// [`Head::truncate_before`]) and logs the series it removed, whose references then go to
    /// new series. When the log write fails the references stay unused until the log is
    /// reopened, whose replay removes the series again.
    pub fn truncate_before(&mut self, cutoff: i64) -> Truncated {
        let mut removed = Vec::new();
        let truncated = self
            .head
            .truncate_before_holding_references(cutoff, &mut removed);
        if removed.is_empty() {
            return truncated;
        }
        let mut record = Vec::new();
        encode_removed(&removed, &mut record);
        match self.wal.append(&[record]) {
            Ok(()) => self.head.free_references(&removed),
            Err(e) => tracing::warn!(
                error = %e,
                series = removed.len(),
                "Could not log the removal of series; their slots stay unused until the log is reopened."
            ),
        }
        truncated
    }

    /// Prepares dropping from the log the segments whose samples are all before `cutoff` and
    /// before everything the head still holds (so they are in blocks, or expired), keeping a
    /// record of every live series in their place: starts a new segment, so the one being
    /// written can go too, and takes the records. The caller writes the returned
    /// [`PendingCheckpoint`] without holding the head, so writes go on meanwhile.
    ///
    /// # Errors
    /// Starting the new segment failed; the log holds everything it held.
    pub fn prepare_checkpoint(&mut self, cutoff: i64) -> io::Result<PendingCheckpoint> {
        let cutoff = cutoff.min(self.head.min_time());
        self.wal.next_segment()?;
        self.segment_max_time
            .entry(self.wal.segment())
            .or_insert(i64::MIN);
        let keep_from = self
            .segment_max_time
            .iter()
            .find(|&(_, &newest)| newest >= cutoff)
            .map_or(self.wal.segment(), |(&segment, _)| segment)
            .min(self.wal.segment());
        let mut records = Vec::new();
        for (reference, labels) in self.head.live_series() {
            let mut record = Vec::new();
            encode_series(reference, labels.view(), &mut record);
            records.push(record);
        }
        if records.is_empty() {
            // A segment needs a record; an empty samples record stands for "no series".
            let mut record = Vec::new();
            encode_samples(&[], &mut record);
            records.push(record);
        }
        // The segments below `keep_from` go (or stay, if the write fails, until the next
        // checkpoint, which replaces them too: it lists the directory).
        if let Some(&replaced) = self
            .segment_max_time
            .range(..keep_from)
            .next_back()
            .map(|(s, _)| s)
        {
            self.segment_max_time = self.segment_max_time.split_off(&replaced);
            self.segment_max_time.insert(replaced, i64::MIN);
        }
        Ok(PendingCheckpoint {
            checkpoint: self.wal.checkpoint_at(keep_from),
            records,
        })
    }

    /// Flushes the log to disk.
    ///
    /// # Errors
    /// I/O errors.
    pub fn sync(&self) -> io::Result<()> {
        self.wal.sync()
    }

    /// Flushes the log to disk and closes it.
    ///
    /// # Errors
    /// I/O errors.
    pub fn close(self) -> io::Result<()> {
        self.wal.close()
    }
}

/// Appends the series record of `reference` to `out`.
fn encode_series(reference: SeriesRef, labels: LabelsView<'_>, out: &mut Vec<u8>) {
    out.push(SERIES_RECORD);
    out.extend_from_slice(&reference.to_le_bytes());
    // `append` refuses label sets over u16::MAX labels before encoding.
    out.extend_from_slice(&(labels.len().min(usize::from(u16::MAX)) as u16).to_le_bytes());
    for (name, value) in labels.iter() {
        out.extend_from_slice(&(name.len() as u32).to_le_bytes());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&(value.len() as u32).to_le_bytes());
        out.extend_from_slice(value.as_bytes());
    }
}

fn encode_samples(samples: &[(SeriesRef, i64, f64)], out: &mut Vec<u8>) {
    out.clear();
    out.reserve(11 + samples.len() * 14);
    out.push(PACKED_SAMPLES_RECORD);
    varint::put(out, samples.len() as u64);
    let (mut previous_reference, mut previous_time) = (0i64, 0i64);
    for &(reference, time, value) in samples {
        varint::put(
            out,
            varint::zigzag(i64::from(reference) - previous_reference),
        );
        varint::put(out, varint::zigzag(time.wrapping_sub(previous_time)));
        out.extend_from_slice(&value.to_bits().to_le_bytes());
        (previous_reference, previous_time) = (i64::from(reference), time);
    }
}

/// The samples of a [`PACKED_SAMPLES_RECORD`] past its type, into `out`.
fn decode_packed_samples(
    mut bytes: &[u8],
    out: &mut Vec<(SeriesRef, i64, f64)>,
) -> Result<(), DurableError> {
    let corrupt = |what: &str| DurableError::Corrupt(format!("a packed samples record {what}"));
    let count = varint::take(&mut bytes).ok_or_else(|| corrupt("has no count"))?;
    // Refused before anything is sized by it.
    if count > (bytes.len() / MIN_PACKED_SAMPLE) as u64 {
        return Err(corrupt("counts more samples than it holds"));
    }
    out.clear();
    out.reserve(count as usize);
    let (mut reference, mut time) = (0i64, 0i64);
    for _ in 0..count {
        let reference_delta = varint::take(&mut bytes).map(varint::unzigzag);
        let time_delta = varint::take(&mut bytes).map(varint::unzigzag);
        let (Some(reference_delta), Some(time_delta), Some((value, rest))) =
            (reference_delta, time_delta, bytes.split_first_chunk::<8>())
        else {
            return Err(corrupt("ends inside a sample"));
        };
        bytes = rest;
        reference = reference
            .checked_add(reference_delta)
            .filter(|r| u32::try_from(*r).is_ok())
            .ok_or_else(|| corrupt("names a series reference out of range"))?;
        time = time.wrapping_add(time_delta);
        out.push((
            reference as SeriesRef,
            time,
            f64::from_bits(u64::from_le_bytes(*value)),
        ));
    }
    if !bytes.is_empty() {
        return Err(corrupt("has bytes after its samples"));
    }
    Ok(())
}

fn encode_removed(references: &[SeriesRef], out: &mut Vec<u8>) {
    out.clear();
    out.reserve(5 + references.len() * 4);
    out.push(REMOVED_RECORD);
    out.extend_from_slice(&(references.len() as u32).to_le_bytes());
    for reference in references {
        out.extend_from_slice(&reference.to_le_bytes());
    }
}

/// Reads little-endian fields off a record.
struct Fields<'a>(&'a [u8]);

impl<'a> Fields<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DurableError> {
        if self.0.len() < n {
            return Err(DurableError::Corrupt(format!(
                "record ends {} bytes early",
                n - self.0.len()
            )));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn finish(&self, what: &str) -> Result<(), DurableError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(DurableError::Corrupt(format!(
                "{what} has {} bytes left over",
                self.0.len()
            )))
        }
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DurableError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn text(&mut self, len: usize) -> Result<String, DurableError> {
        String::from_utf8(self.take(len)?.to_vec())
            .map_err(|_| DurableError::Corrupt("a label is not UTF-8".to_string()))
    }
}

fn replay(
    head: &mut Head,
    refs: &mut Vec<(SeriesRef, i64, f64)>,
    record: &[u8],
) -> Result<i64, DurableError> {
    let mut fields = Fields(record);
    let mut newest = i64::MIN;
    match fields.array::<1>()?[0] {
        SERIES_RECORD => {
            let reference = u32::from_le_bytes(fields.array()?);
            // References are handed out in order: one far beyond the next is not a reference
            // (and would make the head allocate for every number below it).
            if reference as usize > head.next_reference().saturating_add(MAX_REFERENCE_GAP) {
                return Err(DurableError::Corrupt(format!(
                    "series reference {reference} far beyond the {} series so far",
                    head.next_reference()
                )));
            }
            let count = u16::from_le_bytes(fields.array()?);
            let mut pairs = Vec::with_capacity(usize::from(count));
            for _ in 0..count {
                let name_len = u32::from_le_bytes(fields.array()?);
                let name = fields.text(name_len as usize)?;
                let value_len = u32::from_le_bytes(fields.array()?);
                let value = fields.text(value_len as usize)?;
                pairs.push((name, value));
            }
            fields.finish("a series record")?;
            let labels = Labels::new(pairs)
                .map_err(|e| DurableError::Corrupt(format!("series {reference}: {e}")))?;
            head.restore_series(reference, labels);
        }
        SAMPLES_RECORD => {
            let count = u32::from_le_bytes(fields.array()?) as usize;
            if Some(fields.0.len()) != count.checked_mul(20) {
                return Err(DurableError::Corrupt(format!(
                    "a samples record of {count} samples holds {} bytes",
                    fields.0.len()
                )));
            }
            refs.clear();
            for _ in 0..count {
                let reference = u32::from_le_bytes(fields.array()?);
                let time = i64::from_le_bytes(fields.array()?);
                let value = f64::from_bits(u64::from_le_bytes(fields.array()?));
                refs.push((reference, time, value));
                newest = newest.max(time);
            }
            head.append_refs(refs);
        }
        PACKED_SAMPLES_RECORD => {
            decode_packed_samples(fields.0, refs)?;
            newest = refs.iter().map(|s| s.1).max().unwrap_or(i64::MIN);
            head.append_refs(refs);
        }
        REMOVED_RECORD => {
            let count = u32::from_le_bytes(fields.array()?) as usize;
            if Some(fields.0.len()) != count.checked_mul(4) {
                return Err(DurableError::Corrupt(format!(
                    "a removal record of {count} series holds {} bytes",
                    fields.0.len()
                )));
            }
            for _ in 0..count {
                head.remove_series(u32::from_le_bytes(fields.array()?));
            }
        }
        other => {
            return Err(DurableError::Corrupt(format!(
                "unknown record type {other}"
            )));
        }
    }
    Ok(newest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::matcher::Matcher;

    fn options() -> (HeadOptions, WalOptions) {
        (
            HeadOptions {
                out_of_order_window: 60_000,
                ..HeadOptions::default()
            },
            WalOptions {
                segment_bytes: 4096,
                ..WalOptions::default()
            },
        )
    }

    fn everything(head: &Head) -> Vec<(Labels, Vec<(i64, f64)>)> {
        let mut out = Vec::new();
        for reference in head.matching(&[]) {
            let mut samples = Vec::new();
            head.samples(reference, i64::MIN, i64::MAX, &mut samples);
            out.push((head.labels(reference).unwrap(), samples));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// A batch creating many series, or one with very long labels, leaves no more record
    /// buffers behind than a usual batch does.
    #[test]
    fn record_buffers_kept_between_batches_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let (head_options, wal_options) = options();
        let (mut durable, _) = DurableHead::open(
            dir.path(),
            head_options,
            WalOptions {
                segment_bytes: 64 << 20,
                ..wal_options
            },
            None,
        )
        .unwrap();
        let long = "x".repeat(60_000);
        let mut sets: Vec<Labels> =
            vec![Labels::new([("__name__", "long"), ("v", &long[..])]).unwrap()];
        sets.extend(
            (0..20_000)
                .map(|i| Labels::new([("__name__", "m"), ("i", &i.to_string()[..])]).unwrap()),
        );
        let batch: Vec<(&Labels, i64, f64)> = sets.iter().map(|l| (l, 1_000, 1.0)).collect();
        assert_eq!(durable.append(&batch).unwrap().new_series, sets.len());
        assert!(durable.series_records.capacity() <= KEPT_BUFFER_BYTES);
        assert!(durable.samples_record.capacity() <= KEPT_BUFFER_BYTES);
        assert!(durable.series_record_ends.capacity() <= KEPT_BUFFER_BYTES / 64);
        assert!(durable.wal.buffer_capacity() <= KEPT_BUFFER_BYTES);
        assert_eq!(everything(durable.head()).len(), sets.len());
        // The next batch, usual again, finds its buffers.
        let next: Vec<(&Labels, i64, f64)> = sets.iter().map(|l| (l, 2_000, 2.0)).collect();
        assert_eq!(durable.append(&next).unwrap().appended, sets.len());
        let written = everything(durable.head());
        drop(durable);
        let (head_options, wal_options) = options();
        let (reopened, _) = DurableHead::open(dir.path(), head_options, wal_options, None).unwrap();
        assert_eq!(everything(reopened.head()), written);
    }

    /// Series removed by retention give their references to new series, the removal is
    /// logged, and a reopened head is the head that was: the new series under the reused
    /// references, and a series written again under its old reference with only its new
    /// samples (an older sample of it is not taken for the newest).
    #[test]
    fn reused_references_replay_as_they_were_given() {
        let dir = tempfile::tempdir().unwrap();
        let (head_options, wal_options) = options();
        let (mut durable, _) =
            DurableHead::open(dir.path(), head_options.clone(), wal_options, None).unwrap();
        let pod = |name: &str| Labels::new([("__name__", "up"), ("pod", name)]).unwrap();
        let (a, b, c) = (pod("a"), pod("b"), pod("c"));
        durable
            .append(&[(&a, 100_000, 1.0), (&b, 100_000, 1.0)])
            .unwrap();
        let (ref_a, ref_b) = (
            durable.head().find(a.view()).unwrap(),
            durable.head().find(b.view()).unwrap(),
        );
        assert_eq!(durable.truncate_before(200_000).series, 2);
        // `c` takes a removed reference; `a` comes back with a sample older than its last.
        durable
            .append(&[(&c, 300_000, 3.0), (&a, 1_000, 2.0)])
            .unwrap();
        let mut reused = vec![
            durable.head().find(c.view()).unwrap(),
            durable.head().find(a.view()).unwrap(),
        ];
        reused.sort_unstable();
        let mut freed = vec![ref_a, ref_b];
        freed.sort_unstable();
        assert_eq!(reused, freed, "no new slot while removed ones are free");
        let before = everything(durable.head());
        assert_eq!(
            before,
            vec![
                (a.clone(), vec![(1_000, 2.0)]),
                (c.clone(), vec![(300_000, 3.0)])
            ]
        );
        drop(durable);
        let (mut durable, _) =
            DurableHead::open(dir.path(), head_options.clone(), wal_options, None).unwrap();
        assert_eq!(everything(durable.head()), before);
        assert_eq!(durable.head().next_reference(), 2);
        // After the reopen as before it: `b`'s slot is free again only once removed.
        durable.append(&[(&b, 400_000, 4.0)]).unwrap();
        assert_eq!(durable.head().next_reference(), 3);
    }

    #[test]
    fn a_reopened_head_holds_what_was_appended_with_the_same_references() {
        let dir = tempfile::tempdir().unwrap();
        let (head_options, wal_options) = options();
        let (mut durable, report) =
            DurableHead::open(dir.path(), head_options.clone(), wal_options, None).unwrap();
        assert_eq!(report.records, 0);
        let sets: Vec<Labels> = (0..50)
            .map(|i| Labels::new([("__name__", "m"), ("i", &i.to_string()[..])]).unwrap())
            .collect();
        for round in 0..40i64 {
            let batch: Vec<(&Labels, i64, f64)> = sets
                .iter()
                .enumerate()
                .filter(|(i, _)| (*i as i64 + round) % 3 != 0)
                .map(|(i, l)| (l, round * 1000 + i as i64, (round * i as i64) as f64))
                .collect();
            durable.append(&batch).unwrap();
        }
        // Out of order and a replaced value are logged too.
        durable
            .append(&[(&sets[1], 500, -1.0), (&sets[1], 1001, 7.0)])
            .unwrap();
        let before = everything(durable.head());
        let reference = durable.head().find(sets[7].view()).unwrap();
        drop(durable);
        let (durable, report) =
            DurableHead::open(dir.path(), head_options.clone(), wal_options, None).unwrap();
        assert!(report.segments > 1, "several segments replayed");
        assert_eq!(everything(durable.head()), before);
        assert_eq!(durable.head().find(sets[7].view()), Some(reference));
        assert_eq!(
            durable.head().matching(&[Matcher::equal("i", "7")]).len(),
            1
        );
    }

    #[test]
    fn records_naming_far_references_or_of_the_wrong_length_fail_the_open() {
        let (head_options, wal_options) = options();
        let mut far = vec![SERIES_RECORD];
        far.extend_from_slice(&u32::MAX.to_le_bytes());
        far.extend_from_slice(&0u16.to_le_bytes());
        let labels = Labels::new([("a", "b")]).unwrap();
        let mut extra = Vec::new();
        encode_series(0, labels.view(), &mut extra);
        extra.push(0);
        let mut short_removal = Vec::new();
        encode_removed(&[1, 2], &mut short_removal);
        short_removal.pop();
        for (record, message) in [
            (far, "far beyond"),
            (extra, "bytes left over"),
            (short_removal, "a removal record of 2 series holds 7 bytes"),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let (mut wal, _) = Wal::open(dir.path(), wal_options, |_| Ok::<(), DurableError>(()))
                .map_err(|_| ())
                .unwrap();
            wal.append(&[&record[..]]).unwrap();
            drop(wal);
            let err =
                DurableHead::open(dir.path(), head_options.clone(), wal_options, None).unwrap_err();
            assert!(err.to_string().contains(message), "{err}");
        }
    }

    #[test]
    fn a_record_that_does_not_decode_fails_the_open() {
        let dir = tempfile::tempdir().unwrap();
        let (head_options, wal_options) = options();
        let (mut wal, _) = Wal::open(dir.path(), wal_options, |_| Ok::<(), DurableError>(()))
            .map_err(|_| ())
            .unwrap();
        wal.append(&[&[SAMPLES_RECORD, 9, 0, 0, 0, 1, 2][..]])
            .unwrap();
        drop(wal);
        let err =
            DurableHead::open(dir.path(), head_options.clone(), wal_options, None).unwrap_err();
        assert!(
            err.to_string().contains("samples record of 9 samples"),
            "{err}"
        );
    }

    /// A samples record as logs before packed records held it: twenty bytes a sample.
    fn encode_unpacked_samples(samples: &[(SeriesRef, i64, f64)]) -> Vec<u8> {
        let mut out = vec![SAMPLES_RECORD];
        out.extend_from_slice(&(samples.len() as u32).to_le_bytes());
        for &(reference, time, value) in samples {
            out.extend_from_slice(&reference.to_le_bytes());
            out.extend_from_slice(&time.to_le_bytes());
            out.extend_from_slice(&value.to_bits().to_le_bytes());
        }
        out
    }

    /// A log written before packed sample records (series records, then samples of twenty
    /// bytes each) replays as it did, and the batches appended after it go packed.
    #[test]
    fn a_log_of_unpacked_samples_replays_and_later_batches_are_packed() {
        let dir = tempfile::tempdir().unwrap();
        let (head_options, wal_options) = options();
        let a = Labels::new([("__name__", "up"), ("job", "a")]).unwrap();
        let b = Labels::new([("__name__", "up"), ("job", "b")]).unwrap();
        let (mut wal, _) = Wal::open(dir.path(), wal_options, |_| Ok::<(), DurableError>(()))
            .map_err(|_| ())
            .unwrap();
        let (mut series_a, mut series_b) = (Vec::new(), Vec::new());
        encode_series(0, a.view(), &mut series_a);
        encode_series(1, b.view(), &mut series_b);
        let samples =
            encode_unpacked_samples(&[(0, 1_000, 1.5), (1, 1_000, -2.0), (0, 2_000, 3.0)]);
        wal.append(&[&series_a[..], &series_b[..], &samples[..]])
            .unwrap();
        drop(wal);
        let (mut durable, _) =
            DurableHead::open(dir.path(), head_options.clone(), wal_options, None).unwrap();
        assert_eq!(
            everything(durable.head()),
            vec![
                (a.clone(), vec![(1_000, 1.5), (2_000, 3.0)]),
                (b.clone(), vec![(1_000, -2.0)])
            ]
        );
        durable.append(&[(&b, 3_000, 4.0)]).unwrap();
        assert_eq!(durable.samples_record[0], PACKED_SAMPLES_RECORD);
        drop(durable);
        let (durable, _) = DurableHead::open(dir.path(), head_options, wal_options, None).unwrap();
        assert_eq!(
            everything(durable.head())[1],
            (b, vec![(1_000, -2.0), (3_000, 4.0)])
        );
    }

    /// A scrape's batch (series in creation order, one time) takes about ten bytes a sample,
    /// half of what the unpacked record took.
    #[test]
    fn a_scrape_batch_packs_to_about_ten_bytes_a_sample() {
        let batch: Vec<(SeriesRef, i64, f64)> = (0..2_000u32)
            .map(|r| (r + 40_000, 1_733_000_000_000, f64::from(r) * 0.37))
            .collect();
        let mut record = Vec::new();
        encode_samples(&batch, &mut record);
        assert!(record.len() <= 2_000 * 10 + 16, "{} bytes", record.len());
        assert_eq!(encode_unpacked_samples(&batch).len(), 5 + 2_000 * 20);
    }

    proptest::proptest! {
        /// Any samples read back exactly from a packed record (values by their bits).
        #[test]
        fn packed_samples_read_back_exactly(
            samples in proptest::collection::vec(
                (proptest::prelude::any::<u32>(), proptest::prelude::any::<i64>(), proptest::prelude::any::<u64>()),
                0..200,
            ),
        ) {
            let samples: Vec<(SeriesRef, i64, f64)> =
                samples.into_iter().map(|(r, t, v)| (r, t, f64::from_bits(v))).collect();
            let mut record = Vec::new();
            encode_samples(&samples, &mut record);
            proptest::prop_assert_eq!(record[0], PACKED_SAMPLES_RECORD);
            let mut decoded = Vec::new();
            decode_packed_samples(&record[1..], &mut decoded).unwrap();
            let bits = |s: &[(SeriesRef, i64, f64)]| -> Vec<(SeriesRef, i64, u64)> {
                s.iter().map(|&(r, t, v)| (r, t, v.to_bits())).collect()
            };
            proptest::prop_assert_eq!(bits(&decoded), bits(&samples));
        }

        /// Any bytes as a packed record decode or are refused, without a panic, and a count
        /// beyond what the record holds is refused before anything is sized by it.
        #[test]
        fn any_packed_record_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64)) {
            let mut decoded = Vec::new();
            if decode_packed_samples(&bytes, &mut decoded).is_ok() {
                proptest::prop_assert!(decoded.len() * MIN_PACKED_SAMPLE <= bytes.len());
            }
        }
    }
}
