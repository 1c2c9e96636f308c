//! The write-ahead log: every write batch is appended here before it is applied to the head,
//! and replayed into the head at start, so what was acknowledged survives a crash.
//!
//! The log is a directory of numbered segments (`00000001.wal`, …). A segment is a run of
//! records, each framed as
//!
//! ```text
//! length (u32 LE, at least 1) | CRC-32 (IEEE) of the payload (u32 LE) | payload
//! ```
//!
//! A batch is one `write(2)` of all its records, so a batch costs one system call however many
//! samples it holds (group commit per request). A record is acknowledged once written to the
//! operating system, which is what a process crash (`kill -9`) cannot take away; `fsync` happens
//! when a segment is finished and at [`Wal::close`], or after every batch with
//! [`SyncPolicy::EveryBatch`] for machines whose power may fail.
//!
//! A write that fails (a full disk) is cut back off the segment, so later batches do not follow
//! a broken record; when that is not possible, or a segment cannot be finished, the log refuses
//! every later append ([`Wal::is_poisoned`]) until it is opened again, rather than acknowledge
//! batches that replay would drop.
//!
//! Replay reads the segments in order and stops at the first record that is cut short or whose
//! checksum does not match: that is the torn tail of a crash mid-write (or a corruption), it is
//! reported with a warning and cut off, and writing resumes in a new segment. Nothing in the log
//! can make replay panic or allocate more than one segment's worth.
//!
//! Segments the head no longer needs (their samples are in blocks) are removed with
//! [`Wal::remove_segments_before`].

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

/// Bytes of a record's header.
const HEADER_LEN: usize = 8;
/// Where [`Wal::checkpoint`] writes before renaming into place; removed at open.
const CHECKPOINT_TEMPORARY: &str = "checkpoint.tmp";
/// The largest record accepted; larger lengths in a segment are corruption.
pub const MAX_RECORD_LEN: usize = 64 * 1024 * 1024;

/// When the log calls `fsync`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncPolicy {
    /// When a segment is finished and at close: a process crash loses nothing written, a power
    /// failure may lose the last seconds (Prometheus and VictoriaMetrics do the same).
    #[default]
    SegmentEnd,
    /// After every batch: nothing acknowledged is lost even to a power failure, at the cost of
    /// one disk flush per batch.
    EveryBatch,
}

/// Options of a log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalOptions {
    /// A segment is finished once it holds this many bytes.
    pub segment_bytes: u64,
    /// When to `fsync`.
    pub sync: SyncPolicy,
}

impl Default for WalOptions {
    fn default() -> WalOptions {
        WalOptions {
            segment_bytes: 128 * 1024 * 1024,
            sync: SyncPolicy::SegmentEnd,
        }
    }
}

/// What replay found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayReport {
    /// Records read back.
    pub records: u64,
    /// Segments read.
    pub segments: usize,
    /// The torn or corrupt tail that was cut off, if any.
    pub torn_tail: Option<TornTail>,
}

/// Where replay stopped early.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    /// The segment file.
    pub segment: PathBuf,
    /// Offset of the first bad record.
    pub offset: u64,
    /// Bytes from there to the end of the log that were dropped (that segment's rest and any
    /// later segments).
    pub dropped_bytes: u64,
    /// What was wrong.
    pub reason: &'static str,
}

/// A write-ahead log open for appending.
#[derive(Debug)]
pub struct Wal {
    dir: PathBuf,
    options: WalOptions,
    /// The segment being written and its number.
    file: File,
    segment: u64,
    /// Bytes in the current segment.
    written: u64,
    /// Reused buffer of one batch.
    buffer: Vec<u8>,
    /// Set when the log is in a state where appending would lose data; see the module docs.
    poisoned: bool,
}

/// `00000042.wal`.
fn segment_name(number: u64) -> String {
    format!("{number:08}.wal")
}

/// The segment numbers in `dir`, ascending; only names this log writes count.
fn segments(dir: &Path) -> io::Result<Vec<u64>> {
    let mut numbers = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(number) = name
            .strip_suffix(".wal")
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|n| n.parse::<u64>().ok())
            .filter(|&n| segment_name(n) == name && n < u64::MAX)
        {
            numbers.push(number);
        }
    }
    numbers.sort_unstable();
    Ok(numbers)
}

impl Wal {
    /// Opens the log in `dir` (created if missing): replays every record into `apply`, in order,
    /// cuts off a torn tail, and starts a new segment for what comes next.
    ///
    /// # Errors
    /// I/O errors, and whatever `apply` returns (replay stops there).
    pub fn open<E>(
        dir: &Path,
        options: WalOptions,
        mut apply: impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<(Wal, ReplayReport), WalError<E>> {
        Wal::open_segmented(dir, options, |_, record| apply(record))
    }

    /// [`Wal::open`], telling `apply` the number of the segment each record comes from (a
    /// head tracks which segments still hold samples it has not put in a block).
    ///
    /// # Errors
    /// As for [`Wal::open`].
    pub fn open_segmented<E>(
        dir: &Path,
        options: WalOptions,
        mut apply: impl FnMut(u64, &[u8]) -> Result<(), E>,
    ) -> Result<(Wal, ReplayReport), WalError<E>> {
        // A checkpoint cut short by a crash is not part of the log.
        match std::fs::remove_file(dir.join(CHECKPOINT_TEMPORARY)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(WalError::Io(e)),
        }
        std::fs::create_dir_all(dir).map_err(WalError::Io)?;
        let numbers = segments(dir).map_err(WalError::Io)?;
        let mut report = ReplayReport::default();
        let mut record = Vec::new();
        for (i, &number) in numbers.iter().enumerate() {
            let path = dir.join(segment_name(number));
            report.segments += 1;
            let mut reader = io::BufReader::new(File::open(&path).map_err(WalError::Io)?);
            let mut offset = 0u64;
            loop {
                match read_record(&mut reader, &mut record).map_err(WalError::Io)? {
                    ReadOutcome::End => break,
                    ReadOutcome::Record(len) => {
                        apply(number, &record).map_err(WalError::Apply)?;
                        report.records += 1;
                        offset += (HEADER_LEN + len) as u64;
                    }
                    ReadOutcome::Torn(reason) => {
                        let len = std::fs::metadata(&path).map_err(WalError::Io)?.len();
                        let mut dropped = len - offset;
                        for &later in &numbers[i + 1..] {
                            let later = dir.join(segment_name(later));
                            dropped += std::fs::metadata(&later).map(|m| m.len()).unwrap_or(0);
                            std::fs::remove_file(&later).map_err(WalError::Io)?;
                        }
                        tracing::warn!(
                            segment = %path.display(),
                            offset,
                            dropped_bytes = dropped,
                            reason,
                            "Write-ahead log ends in a torn or corrupt record; replayed up to it and cut the rest."
                        );
                        let file = OpenOptions::new()
                            .write(true)
                            .open(&path)
                            .map_err(WalError::Io)?;
                        file.set_len(offset).map_err(WalError::Io)?;
                        file.sync_all().map_err(WalError::Io)?;
                        report.torn_tail = Some(TornTail {
                            segment: path.clone(),
                            offset,
                            dropped_bytes: dropped,
                            reason,
                        });
                        break;
                    }
                }
            }
            if report.torn_tail.is_some() {
                break;
            }
        }
        let next = numbers
            .iter()
            .copied()
            .take(report.segments)
            .max()
            .map_or(1, |n| n.saturating_add(1));
        let wal = Wal::create_segment(dir, options, next).map_err(WalError::Io)?;
        Ok((wal, report))
    }

    fn create_segment(dir: &Path, options: WalOptions, segment: u64) -> io::Result<Wal> {
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(dir.join(segment_name(segment)))?;
        sync_dir(dir)?;
        Ok(Wal {
            dir: dir.to_path_buf(),
            options,
            file,
            segment,
            written: 0,
            buffer: Vec::new(),
            poisoned: false,
        })
    }

    /// The segment being written.
    pub fn segment(&self) -> u64 {
        self.segment
    }

    /// Appends `records` as one batch: one write, then an `fsync` if the policy says so. When it
    /// returns `Ok`, the records are in the log.
    ///
    /// # Errors
    /// An empty or oversized record (nothing written); I/O errors (a full disk), after which the
    /// partial write is cut off again, or, when that fails too, the log is poisoned.
    pub fn append<R: AsRef<[u8]>>(&mut self, records: &[R]) -> io::Result<()> {
        if self.poisoned {
            return Err(io::Error::other(
                "the write-ahead log failed earlier and takes no more writes until it is reopened",
            ));
        }
        self.buffer.clear();
        for record in records {
            frame_into(&mut self.buffer, record.as_ref())?;
        }
        if let Err(e) = self.file.write_all(&self.buffer) {
            // Cut the partial batch off, so what comes next does not follow a broken record.
            if self.file.set_len(self.written).is_err() {
                self.poisoned = true;
            }
            return Err(e);
        }
        self.written += self.buffer.len() as u64;
        give_back_excess(&mut self.buffer, KEPT_BUFFER_BYTES);
        if self.options.sync == SyncPolicy::EveryBatch
            && let Err(e) = self.file.sync_data()
        {
            // Whether the batch reached the disk is unknown: replay may bring it back, so
            // nothing more may be acknowledged on top of it.
            self.poisoned = true;
            return Err(e);
        }
        if self.written >= self.options.segment_bytes
            && let Err(e) = self.next_segment()
        {
            // The batch is in the log; the next segment could not be started.
            self.poisoned = true;
            tracing::error!(error = %e, "Write-ahead log cannot start its next segment; refusing writes until reopened.");
        }
        Ok(())
    }

    /// The bytes its batch buffer holds on to between batches.
    #[cfg(test)]
    pub(crate) fn buffer_capacity(&self) -> usize {
        self.buffer.capacity()
    }

    /// Whether an earlier failure makes the log refuse appends (see the module docs).
    pub fn is_poisoned(&self) -> bool {
        self.poisoned
    }

    /// Finishes the current segment (`fsync`) and starts the next.
    ///
    /// # Errors
    /// I/O errors.
    pub fn next_segment(&mut self) -> io::Result<()> {
        self.file.sync_all()?;
        let number = self
            .segment
            .checked_add(1)
            .ok_or_else(|| io::Error::other("write-ahead log segment numbers exhausted"))?;
        let next = Wal::create_segment(&self.dir, self.options, number)?;
        *self = Wal {
            buffer: std::mem::take(&mut self.buffer),
            ..next
        };
        Ok(())
    }

    /// Replaces every segment numbered below `keep_from` with one segment holding `records`:
    /// see [`Checkpoint::write`], which this is with the log borrowed throughout; a head uses
    /// [`Wal::checkpoint_at`] instead, so appends go on while the checkpoint is written.
    ///
    /// # Errors
    /// As for [`Checkpoint::write`].
    pub fn checkpoint<R: AsRef<[u8]>>(
        &mut self,
        keep_from: u64,
        records: &[R],
    ) -> io::Result<usize> {
        self.checkpoint_at(keep_from).write(records)
    }

    /// A checkpoint of the segments below `keep_from` (at most the one being written), to write
    /// without holding the log: appends only touch the segment being written, which it leaves.
    pub fn checkpoint_at(&self, keep_from: u64) -> Checkpoint {
        Checkpoint {
            dir: self.dir.clone(),
            keep_from: keep_from.min(self.segment),
        }
    }

    /// Removes every segment numbered below `segment` (their records are persisted elsewhere).
    ///
    /// # Errors
    /// I/O errors.
    pub fn remove_segments_before(&self, segment: u64) -> io::Result<usize> {
        let mut removed = 0;
        for number in segments(&self.dir)? {
            if number < segment.min(self.segment) {
                std::fs::remove_file(self.dir.join(segment_name(number)))?;
                removed += 1;
            }
        }
        if removed > 0 {
            sync_dir(&self.dir)?;
        }
        Ok(removed)
    }

    /// Flushes the current segment to disk (`fsync`).
    ///
    /// # Errors
    /// I/O errors.
    pub fn sync(&self) -> io::Result<()> {
        self.file.sync_all()
    }

    /// Flushes the current segment to disk and closes the log.
    ///
    /// # Errors
    /// I/O errors.
    pub fn close(self) -> io::Result<()> {
        self.sync()
    }
}

/// Segments of a log to replace with a record of what they still matter for; see
/// [`Wal::checkpoint_at`].
#[derive(Debug, Clone)]
pub struct Checkpoint {
    dir: PathBuf,
    keep_from: u64,
}

impl Checkpoint {
    /// Replaces every segment numbered below the checkpoint's `keep_from` with one segment
    /// holding `records`: replay then reads `records` first and the later segments after them.
    /// A head writes one once the samples of those segments are in blocks, with a record of
    /// every series still live (later segments name them by reference only).
    ///
    /// The new segment is written under a temporary name, synced, and renamed over segment
    /// `keep_from − 1`; only then are the older ones removed. A crash at any point leaves
    /// either the old segments or the new one. Returns how many segments went; none when no
    /// segment is below `keep_from`.
    ///
    /// # Errors
    /// An empty or oversized record, I/O errors (the log is unchanged then, apart from
    /// segments already removed after the rename).
    pub fn write<R: AsRef<[u8]>>(&self, records: &[R]) -> io::Result<usize> {
        let older: Vec<u64> = segments(&self.dir)?
            .into_iter()
            .filter(|&n| n < self.keep_from)
            .collect();
        let Some(&last_replaced) = older.last() else {
            return Ok(0);
        };
        let mut framed = Vec::new();
        for record in records {
            frame_into(&mut framed, record.as_ref())?;
        }
        let temporary = self.dir.join(CHECKPOINT_TEMPORARY);
        {
            let mut file = File::create(&temporary)?;
            file.write_all(&framed)?;
            file.sync_all()?;
        }
        std::fs::rename(&temporary, self.dir.join(segment_name(last_replaced)))?;
        sync_dir(&self.dir)?;
        for &number in &older[..older.len() - 1] {
            std::fs::remove_file(self.dir.join(segment_name(number)))?;
        }
        sync_dir(&self.dir)?;
        Ok(older.len() - 1)
    }
}

/// What reading one record gave.
enum ReadOutcome {
    /// A whole record of this many bytes is in the buffer.
    Record(usize),
    /// The segment ended cleanly.
    End,
    /// A record is cut short or corrupt.
    Torn(&'static str),
}

fn read_record(reader: &mut impl Read, record: &mut Vec<u8>) -> io::Result<ReadOutcome> {
    let mut header = [0u8; HEADER_LEN];
    match read_full(reader, &mut header)? {
        0 => return Ok(ReadOutcome::End),
        HEADER_LEN => {}
        _ => return Ok(ReadOutcome::Torn("record header cut short")),
    }
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    if len == 0 {
        // No record is empty: zeros are a file tail that was never written (a power loss).
        return Ok(ReadOutcome::Torn("zero-length record"));
    }
    if len > MAX_RECORD_LEN {
        return Ok(ReadOutcome::Torn("record length over the limit"));
    }
    record.clear();
    // `take` reads what is there, so a corrupt length cannot make this allocate ahead of the
    // bytes that exist.
    reader.by_ref().take(len as u64).read_to_end(record)?;
    if record.len() < len {
        return Ok(ReadOutcome::Torn("record cut short"));
    }
    if crc32fast::hash(record) != crc {
        return Ok(ReadOutcome::Torn("record checksum mismatch"));
    }
    Ok(ReadOutcome::Record(len))
}

/// Reads until `buf` is full or the input ends; the bytes read.
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// The most bytes a batch buffer keeps between batches (the log's, and the head's record
/// buffers). A remote-write request's samples record is some 20 KiB; a batch that needed more
/// (a first scrape of many targets, an aggregated flush) allocates for itself, and what it grew
/// is given back rather than held by every namespace until the process ends.
pub(crate) const KEPT_BUFFER_BYTES: usize = 256 << 10;

/// Empties a reused batch buffer that grew past `kept` items and gives back what it holds over
/// that; a buffer within `kept` keeps its contents and capacity.
pub(crate) fn give_back_excess<T>(buffer: &mut Vec<T>, kept: usize) {
    if buffer.capacity() > kept {
        buffer.clear();
        buffer.shrink_to(kept);
    }
}

/// Appends one record, framed, to `buffer`.
fn frame_into(buffer: &mut Vec<u8>, payload: &[u8]) -> io::Result<()> {
    if payload.is_empty() || payload.len() > MAX_RECORD_LEN {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "a write-ahead log record must hold 1 to {MAX_RECORD_LEN} bytes, not {}",
                payload.len()
            ),
        ));
    }
    buffer.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    buffer.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    buffer.extend_from_slice(payload);
    Ok(())
}

/// Makes a new file's directory entry durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Why opening a log failed.
#[derive(Debug, thiserror::Error)]
pub enum WalError<E> {
    /// Reading, truncating or creating a segment failed.
    #[error("write-ahead log: {0}")]
    Io(#[source] io::Error),
    /// Applying a replayed record failed.
    #[error("write-ahead log replay: {0}")]
    Apply(E),
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::convert::Infallible;

    fn replay(dir: &Path, options: WalOptions) -> (Wal, ReplayReport, Vec<Vec<u8>>) {
        let mut records = Vec::new();
        let (wal, report) = Wal::open(dir, options, |r: &[u8]| {
            records.push(r.to_vec());
            Ok::<(), Infallible>(())
        })
        .unwrap();
        (wal, report, records)
    }

    fn small() -> WalOptions {
        WalOptions {
            segment_bytes: 100,
            sync: SyncPolicy::SegmentEnd,
        }
    }

    #[test]
    fn batches_come_back_in_order_across_segments_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, report, records) = replay(dir.path(), small());
        assert_eq!((report.records, records.len()), (0, 0));
        let mut written = Vec::new();
        for i in 0..20u32 {
            let batch: Vec<Vec<u8>> = (0..i % 4)
                .map(|j| vec![i as u8; (j * 10 + 1) as usize])
                .collect();
            wal.append(&batch).unwrap();
            written.extend(batch);
        }
        assert!(wal.segment() > 3, "segments rotate at 100 bytes");
        drop(wal);
        let (mut wal, report, records) = replay(dir.path(), small());
        assert_eq!(records, written);
        assert!(report.torn_tail.is_none());
        // Appends after a reopen go to a new segment and come back after the old ones.
        wal.append(&[b"after".to_vec()]).unwrap();
        drop(wal);
        let (_, _, records) = replay(dir.path(), small());
        assert_eq!(records.last().unwrap(), b"after");
        assert_eq!(records.len(), written.len() + 1);
    }

    #[test]
    fn a_checkpoint_replaces_the_older_segments_and_replays_first() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, ..) = replay(dir.path(), small());
        for i in 0..12u8 {
            wal.append(&[vec![i; 40]]).unwrap();
        }
        let current = wal.segment();
        assert!(current >= 5, "several segments: {current}");
        let keep_from = current - 1;
        drop(wal);
        let mut kept = Vec::new();
        let (mut wal, _) = Wal::open_segmented(dir.path(), small(), |segment, r: &[u8]| {
            if segment >= keep_from {
                kept.push(r.to_vec());
            }
            Ok::<(), Infallible>(())
        })
        .unwrap();
        assert!(!kept.is_empty() && kept.len() < 12, "{}", kept.len());
        let removed = wal
            .checkpoint(keep_from, &[b"live series".as_slice()])
            .unwrap();
        assert_eq!(removed, keep_from as usize - 2, "all but the renamed one");
        assert!(!dir.path().join(CHECKPOINT_TEMPORARY).exists());
        wal.append(&[b"after".as_slice()]).unwrap();
        drop(wal);
        let (mut wal, _, records) = replay(dir.path(), small());
        let mut expected = vec![b"live series".to_vec()];
        expected.extend(kept);
        expected.push(b"after".to_vec());
        assert_eq!(records, expected);
        // Nothing below the oldest segment: a checkpoint there changes nothing.
        assert_eq!(wal.checkpoint(1, &[b"x".as_slice()]).unwrap(), 0);
        // A temporary file left by a crash is not replayed.
        std::fs::write(dir.path().join(CHECKPOINT_TEMPORARY), b"garbage").unwrap();
        drop(wal);
        let (_, report, again) = replay(dir.path(), small());
        assert_eq!(again, expected);
        assert!(report.torn_tail.is_none());
        assert!(!dir.path().join(CHECKPOINT_TEMPORARY).exists());
    }

    #[test]
    fn a_torn_tail_is_cut_with_a_report_and_writing_resumes() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, ..) = replay(dir.path(), WalOptions::default());
        wal.append(&[b"one".as_slice(), b"two".as_slice()]).unwrap();
        wal.append(&[b"three".as_slice()]).unwrap();
        let segment = dir.path().join(segment_name(wal.segment()));
        drop(wal);
        // A crash in the middle of the last record.
        let len = std::fs::metadata(&segment).unwrap().len();
        OpenOptions::new()
            .write(true)
            .open(&segment)
            .unwrap()
            .set_len(len - 2)
            .unwrap();
        let (mut wal, report, records) = replay(dir.path(), WalOptions::default());
        assert_eq!(records, vec![b"one".to_vec(), b"two".to_vec()]);
        let torn = report.torn_tail.unwrap();
        assert_eq!((torn.offset, torn.reason), (22, "record cut short"));
        wal.append(&[b"four".as_slice()]).unwrap();
        drop(wal);
        let (_, report, records) = replay(dir.path(), WalOptions::default());
        assert_eq!(
            records,
            vec![b"one".to_vec(), b"two".to_vec(), b"four".to_vec()]
        );
        assert!(report.torn_tail.is_none(), "the cut tail is gone");
    }

    #[test]
    fn a_corrupt_record_ends_replay_and_later_segments_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, ..) = replay(dir.path(), small());
        for i in 0..10u8 {
            wal.append(&[vec![i; 30]]).unwrap();
        }
        drop(wal);
        // Flip a payload byte of the first record of the second segment.
        let second = dir.path().join(segment_name(2));
        let mut bytes = std::fs::read(&second).unwrap();
        bytes[HEADER_LEN] ^= 0xff;
        std::fs::write(&second, &bytes).unwrap();
        let (_, report, records) = replay(dir.path(), small());
        let torn = report.torn_tail.unwrap();
        assert_eq!(torn.reason, "record checksum mismatch");
        assert_eq!(torn.segment, second);
        // 30-byte records in 100-byte segments: three per segment; the first segment's come back.
        assert_eq!(records, vec![vec![0u8; 30], vec![1u8; 30], vec![2u8; 30]]);
        assert_eq!(segments(dir.path()).unwrap().iter().max(), Some(&3));
    }

    #[test]
    fn old_segments_are_removed_but_never_the_current_one() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, ..) = replay(dir.path(), small());
        for _ in 0..10 {
            wal.append(&[vec![0u8; 60]]).unwrap();
        }
        let current = wal.segment();
        assert_eq!(
            wal.remove_segments_before(current - 2).unwrap() as u64,
            current - 3
        );
        assert_eq!(wal.remove_segments_before(u64::MAX).unwrap(), 2);
        assert_eq!(segments(dir.path()).unwrap(), vec![current]);
    }

    #[test]
    fn a_zero_filled_tail_is_torn_and_empty_records_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, ..) = replay(dir.path(), WalOptions::default());
        assert!(wal.append(&[b"".as_slice()]).is_err());
        wal.append(&[b"kept".as_slice()]).unwrap();
        let segment = dir.path().join(segment_name(wal.segment()));
        wal.close().unwrap();
        let mut bytes = std::fs::read(&segment).unwrap();
        bytes.extend_from_slice(&[0u8; 80]);
        std::fs::write(&segment, &bytes).unwrap();
        let (_, report, records) = replay(dir.path(), WalOptions::default());
        assert_eq!(records, vec![b"kept".to_vec()]);
        assert_eq!(report.torn_tail.unwrap().reason, "zero-length record");
    }

    #[test]
    fn only_names_this_log_writes_are_segments() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "1.wal",
            "+0000001.wal",
            "00000002.wal.tmp",
            "18446744073709551615.wal",
        ] {
            std::fs::write(dir.path().join(name), b"x").unwrap();
        }
        std::fs::write(dir.path().join(segment_name(3)), b"").unwrap();
        assert_eq!(segments(dir.path()).unwrap(), vec![3]);
    }

    proptest! {
        /// Whatever bytes a segment ends with, replay returns a prefix of what was written and
        /// never panics.
        #[test]
        fn any_damage_replays_a_prefix(
            records in prop::collection::vec(prop::collection::vec(any::<u8>(), 1..50), 1..20),
            cut in any::<prop::sample::Index>(),
            garbage in prop::collection::vec(any::<u8>(), 0..40),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let (mut wal, ..) = replay(dir.path(), WalOptions::default());
            wal.append(&records).unwrap();
            let segment = dir.path().join(segment_name(wal.segment()));
            drop(wal);
            let mut bytes = std::fs::read(&segment).unwrap();
            bytes.truncate(cut.index(bytes.len() + 1));
            bytes.extend_from_slice(&garbage);
            std::fs::write(&segment, &bytes).unwrap();
            let (_, _, got) = replay(dir.path(), WalOptions::default());
            prop_assert!(got.len() <= records.len());
            prop_assert_eq!(&got[..], &records[..got.len()]);
        }
    }
}
