//! One namespace's time-series database: a durable head for recent samples, immutable blocks
//! for older ones, and the reads that merge them.
//!
//! ```text
//! <dir>/wal/00000007.wal …            the head's write-ahead log
//! <dir>/head_chunks/00000001.chunks …  the head's closed chunks (rebuilt from the log at open)
//! <dir>/blocks/00000003-1733097600000  a block: sequence number, then the cutoff it was cut at
//! <dir>/blocks/00000051-1733270400000-00000004
//!                                      a merged block: it replaces the blocks 4 to 51
//! ```
//!
//! # Writes
//!
//! A batch takes the head's lock once: the head applies it and logs what it took with one
//! append (see [`DurableHead::append`]); the log write goes to the page cache, so the lock is
//! held for a `write(2)`, not for a disk flush.
//!
//! # Compaction
//!
//! [`NamespaceDb::compact`] runs from a background thread. At wall-clock `now` it cuts the
//! head at `cutoff = (now − range/2)` rounded down to the block range: every chunk wholly
//! before it leaves the head. The cut chunks are published as an in-memory part in the same
//! critical section, so a read never misses them; the block is then written without any lock
//! held and replaces the in-memory part. Only then does the log drop the segments whose
//! samples are all before the cutoff ([`DurableHead::prepare_checkpoint`]; the checkpoint is
//! written without the head's lock, appends going to the newer segment meanwhile). A crash before that
//! replays them into the head again; the next compaction cuts them into another block, whose
//! samples equal the first's (reads merge blocks, so the copy costs disk, not correctness).
//!
//! Samples arriving out of order may land before a cutoff already cut (within the head's
//! out-of-order window); they are cut into a later block. Blocks may therefore overlap: reads
//! merge every part that covers the range, a later part winning over an earlier one on equal
//! timestamps and the head over every block, which is the order the writes happened in.
//!
//! # Merging
//!
//! A long retention would keep hundreds of blocks, each with its own index of the same series
//! (two open files, and the index repeating every series' labels). Once a compaction's cutoff passes the end of a
//! `merge_range` (a tenth of the retention, rounded down to whole block ranges), the blocks
//! cut in it are merged into one ([`merge_blocks`]) and then deleted, one range per
//! compaction, oldest first. A block belongs to the range its cutoff closes: cutoffs grow with
//! the sequence, so a range's blocks are a run of consecutive sequence numbers and no other
//! block falls between them in the read order. The merged block takes their place in that
//! order, and its name keeps the run: a crash after it was renamed into place and before every
//! source was deleted leaves sources that the next open deletes.
//!
//! # Retention
//!
//! [`NamespaceDb::truncate_before`] deletes the blocks whose newest sample is before the
//! cutoff and drops the head's chunks wholly before it: space is freed in whole chunks and
//! blocks, as Prometheus and M3DB do. Reads never show a sample before the cutoff, though: it
//! is kept (in `<dir>/retention`, so a restart that replays older samples from the log hides
//! them too) and every read starts at it.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use parking_lot::{Mutex, RwLock};

use crate::labels::{AsLabelsView, Labels};
use crate::matcher::{Matcher, matches_all};
use crate::tsdb::block::{Block, BlockError, write_block};
use crate::tsdb::chunk::SealedChunk;
use crate::tsdb::durable::{AppendError, DurableError, DurableHead};
use crate::tsdb::head::{
    AppendSummary, ChunkFileStats, HeadOptions, HeadSeries, Truncated, chunk_has_samples_in,
};
use crate::tsdb::merge::{Merged, merge_blocks};
use crate::tsdb::wal::{ReplayReport, WalOptions};

const WAL_DIR: &str = "wal";
const HEAD_CHUNKS_DIR: &str = "head_chunks";
const BLOCKS_DIR: &str = "blocks";
const RETENTION_FILE: &str = "retention";
/// Where blocks that do not open are moved, in the namespace's directory.
const QUARANTINE_DIR: &str = "quarantine";

/// Why a namespace's database could not be opened, compacted or read.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The write-ahead log could not be replayed.
    #[error("{dir}: {source}")]
    Log {
        /// The log's directory.
        dir: PathBuf,
        /// What went wrong.
        #[source]
        source: DurableError,
    },
    /// A block could not be written, opened or read.
    #[error(transparent)]
    Block(#[from] BlockError),
    /// A directory could not be listed, created or removed.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> DbError + '_ {
    move |source| DbError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// How a namespace's database keeps its samples.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbOptions {
    /// How the head takes samples (its out-of-order window) and where its series' labels
    /// come from (the store's shared label sets).
    pub head: HeadOptions,
    /// How the log writes.
    pub wal: WalOptions,
    /// The time range (ms) a compaction rounds its cutoff to; the head keeps between half and
    /// one and a half of it.
    pub block_range: i64,
    /// The longer range (ms, a multiple of `block_range`) whose blocks are merged into one
    /// once it is past; 0 never merges. See the [module docs](self).
    pub merge_range: i64,
}

/// Samples cut from the head, readable while their block is being written.
#[derive(Debug)]
struct CutChunks {
    series: Vec<(Labels, Vec<SealedChunk>)>,
}

/// A part of the namespace older than the head: a block, or chunks about to become one.
#[derive(Debug)]
enum Part {
    Writing(CutChunks),
    Written(Block),
}

impl Part {
    fn overlaps(&self, start: i64, end: i64) -> bool {
        match self {
            Part::Written(block) => {
                let (min, max) = block.time_range();
                min <= end && max >= start
            }
            Part::Writing(_) => true,
        }
    }

    /// The matching series: where each is in the part (a block's
    /// [`SeriesRecordAt`](crate::tsdb::block::SeriesRecordAt), or the
    /// index of cut chunks) and its labels.
    fn matching(&self, matchers: &[Matcher]) -> Result<Vec<(u64, Cow<'_, Labels>)>, BlockError> {
        Ok(match self {
            Part::Written(block) => block
                .matching(matchers)?
                .into_iter()
                .map(|(at, labels)| (at, Cow::Owned(labels)))
                .collect(),
            Part::Writing(cut) => cut
                .series
                .iter()
                .enumerate()
                .filter(|(_, (labels, _))| matches_all(matchers, labels))
                .map(|(position, (labels, _))| (position as u64, Cow::Borrowed(labels)))
                .collect(),
        })
    }

    fn has_samples(&self, position: u64, start: i64, end: i64) -> Result<bool, BlockError> {
        match self {
            Part::Written(block) => block.has_samples(position, start, end),
            Part::Writing(cut) => Ok(cut
                .series
                .get(usize::try_from(position).unwrap_or(usize::MAX))
                .is_some_and(|(_, chunks)| {
                    chunks.iter().any(|c| {
                        chunk_has_samples_in(c.first_time(), c.last_time(), start, end, || c.iter())
                    })
                })),
        }
    }

    fn samples(
        &self,
        position: u64,
        start: i64,
        end: i64,
        out: &mut Vec<(i64, f64)>,
    ) -> Result<(), BlockError> {
        match self {
            Part::Written(block) => block.samples(position, start, end, out),
            Part::Writing(cut) => {
                if let Some((_, chunks)) = cut
                    .series
                    .get(usize::try_from(position).unwrap_or(usize::MAX))
                {
                    out.extend(
                        chunks
                            .iter()
                            .filter(|c| c.last_time() >= start && c.first_time() <= end)
                            .flat_map(SealedChunk::iter)
                            .filter(|s| (start..=end).contains(&s.0)),
                    );
                }
                Ok(())
            }
        }
    }
}

/// What a compaction did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Compacted {
    /// Series and samples written to the new block.
    pub series: usize,
    /// Samples in the new block.
    pub samples: u64,
    /// Log segments dropped.
    pub segments_removed: usize,
    /// What merging the blocks of a past merge range wrote, when it merged some.
    pub merged: Option<Merged>,
    /// Blocks the merge replaced.
    pub blocks_merged: usize,
    /// Whether a merge was tried and failed (logged; the blocks stay as they were).
    pub merge_failed: bool,
}

/// What a namespace's blocks on disk hold.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BlockStats {
    /// Blocks.
    pub blocks: usize,
    /// Bytes of their chunks.
    pub chunk_bytes: u64,
    /// Samples in them.
    pub samples: u64,
}

/// What retention removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Expired {
    /// Samples removed (in whole chunks and blocks).
    pub samples: u64,
    /// Series the head dropped once empty.
    pub series: u64,
    /// Blocks deleted.
    pub blocks: usize,
}

/// Compaction's own state, behind one lock so compactions run one at a time.
#[derive(Debug)]
struct CompactionState {
    /// The cutoff of the last compaction (from the newest block's name after a restart).
    last_cutoff: i64,
    next_sequence: u64,
    /// The merge ranges whose merge failed since the start: not tried again.
    merges_failed: Vec<i64>,
}

/// One namespace's database. See the [module docs](self).
#[derive(Debug)]
pub struct NamespaceDb {
    dir: PathBuf,
    options: DbOptions,
    head: RwLock<DurableHead>,
    /// In the order they were cut (later wins on equal timestamps).
    parts: RwLock<Arc<Vec<Arc<Part>>>>,
    compaction: Mutex<CompactionState>,
    /// The last retention cutoff: reads start here.
    retention_floor: AtomicI64,
    /// What replaying the log brought back from before that cutoff, and was dropped at once.
    expired_at_open: Truncated,
    /// Where the blocks that did not open were moved to when the database opened.
    quarantined_at_open: Vec<PathBuf>,
}

/// A block directory's name: `00000003-1733097600000` (sequence, cutoff), or for a merged
/// block `00000051-1733270400000-00000004` (its last source's sequence and cutoff, then its
/// first source's sequence).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct BlockName {
    sequence: u64,
    cutoff: i64,
    /// A merged block's first source: it replaces `merged_from..=sequence`.
    merged_from: Option<u64>,
}

impl BlockName {
    fn cut(sequence: u64, cutoff: i64) -> BlockName {
        BlockName {
            sequence,
            cutoff,
            merged_from: None,
        }
    }

    fn parse(name: &str) -> Option<BlockName> {
        let (sequence, rest) = name.split_once('-')?;
        // The cutoff may be negative: the separator after it is past its first character.
        let (cutoff, merged_from) = match rest.get(1..)?.find('-') {
            Some(at) => (&rest[..=at], Some(&rest[at + 2..])),
            None => (rest, None),
        };
        let parsed = BlockName {
            sequence: sequence.parse().ok()?,
            cutoff: cutoff.parse().ok()?,
            merged_from: merged_from.map(str::parse).transpose().ok()?,
        };
        (parsed.to_string() == name).then_some(parsed)
    }

    /// Whether this merged block replaces the block named `other`: another block whose
    /// sequence numbers are within this one's run.
    fn replaces(&self, other: &BlockName) -> bool {
        let run = |name: &BlockName| name.merged_from.unwrap_or(name.sequence)..=name.sequence;
        other != self
            && self.merged_from.is_some()
            && run(self).contains(run(other).start())
            && run(self).contains(run(other).end())
    }
}

impl std::fmt::Display for BlockName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:08}-{}", self.sequence, self.cutoff)?;
        if let Some(from) = self.merged_from {
            write!(f, "-{from:08}")?;
        }
        Ok(())
    }
}

/// Deletes the sources a merge did not get to delete before a crash, once their merged block
/// is known to open; a merged block that does not open while any of its sources is left is
/// deleted instead, the sources staying. Returns the blocks left.
fn remove_merged_sources(
    found: Vec<(BlockName, PathBuf)>,
) -> Result<Vec<(BlockName, PathBuf)>, DbError> {
    let mut gone: Vec<PathBuf> = Vec::new();
    for (merged, merged_path) in found.iter().filter(|(name, _)| name.merged_from.is_some()) {
        let sources: Vec<&PathBuf> = found
            .iter()
            .filter(|(name, _)| merged.replaces(name))
            .map(|(_, path)| path)
            .collect();
        if sources.is_empty() {
            continue;
        }
        // Checked whole: its sources are deleted on the strength of it.
        match Block::open_checked(merged_path) {
            Ok(_) => {
                for path in sources {
                    tracing::warn!(path = %path.display(), "Removing a block a merged block replaced.");
                    std::fs::remove_dir_all(path).map_err(io_at(path))?;
                    gone.push(path.clone());
                }
            }
            Err(e) => {
                tracing::warn!(path = %merged_path.display(), error = %e, "A merged block whose sources are still there does not open; removing it and keeping them.");
                std::fs::remove_dir_all(merged_path).map_err(io_at(merged_path))?;
                gone.push(merged_path.clone());
            }
        }
    }
    Ok(found
        .into_iter()
        .filter(|(_, path)| !gone.contains(path))
        .collect())
}

/// The name of the block at `dir` (`None` for a directory that is not one).
fn name_of(dir: &Path) -> Option<BlockName> {
    BlockName::parse(dir.file_name()?.to_str()?)
}

/// Moves the block directory `block` into `to` (created if missing), under its own name or,
/// if a block of that name was quarantined before, that name and the first free `.N`.
fn quarantine(block: &Path, to: &Path) -> Result<PathBuf, DbError> {
    std::fs::create_dir_all(to).map_err(io_at(to))?;
    let name = block.file_name().unwrap_or_default().to_string_lossy();
    let mut dest = to.join(&*name);
    let mut n = 1u32;
    while dest.exists() {
        dest = to.join(format!("{name}.{n}"));
        n += 1;
    }
    std::fs::rename(block, &dest).map_err(io_at(block))?;
    Ok(dest)
}

impl NamespaceDb {
    /// Opens the namespace's database in `dir` (created if missing): opens its blocks,
    /// replays its log into the head. Leftovers of a block write cut short are removed.
    ///
    /// # Errors
    /// I/O errors, a log record that does not decode. A block whose files are damaged or
    /// missing does not stop the open: it is moved to the `quarantine` directory, logged, and
    /// listed by [`quarantined_at_open`](Self::quarantined_at_open).
    pub fn open(dir: &Path, options: DbOptions) -> Result<(NamespaceDb, ReplayReport), DbError> {
        let blocks_dir = dir.join(BLOCKS_DIR);
        std::fs::create_dir_all(&blocks_dir).map_err(io_at(&blocks_dir))?;
        let mut found = Vec::new();
        for entry in std::fs::read_dir(&blocks_dir).map_err(io_at(&blocks_dir))? {
            let entry = entry.map_err(io_at(&blocks_dir))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.starts_with('.') && name.ends_with(".tmp") {
                let path = entry.path();
                tracing::warn!(path = %path.display(), "Removing a block whose write was cut short.");
                std::fs::remove_dir_all(&path).map_err(io_at(&path))?;
                continue;
            }
            if let Some(parsed) = BlockName::parse(name) {
                found.push((parsed, entry.path()));
            }
        }
        let mut found = remove_merged_sources(found)?;
        found.sort_unstable_by_key(|(name, _)| name.sequence);
        let mut parts = Vec::with_capacity(found.len());
        let mut state = CompactionState {
            last_cutoff: i64::MIN,
            next_sequence: 1,
            merges_failed: Vec::new(),
        };
        let mut quarantined = Vec::new();
        for (name, path) in found {
            // A quarantined block's range was cut all the same: its samples left the log.
            state.last_cutoff = state.last_cutoff.max(name.cutoff);
            state.next_sequence = name.sequence.saturating_add(1);
            match Block::open(&path) {
                Ok(block) => parts.push(Arc::new(Part::Written(block))),
                Err(error) if error.is_damage() => {
                    let moved_to = quarantine(&path, &dir.join(QUARANTINE_DIR))?;
                    tracing::error!(
                        block = %path.display(),
                        moved_to = %moved_to.display(),
                        %error,
                        "A block does not open. It was moved aside and the namespace opens without its samples; the files are kept for inspection."
                    );
                    quarantined.push(moved_to);
                }
                Err(error) => return Err(error.into()),
            }
        }
        let retention_path = dir.join(RETENTION_FILE);
        let retention_floor = match std::fs::read_to_string(&retention_path) {
            Ok(text) => text.trim().parse::<i64>().unwrap_or_else(|_| {
                tracing::warn!(path = %retention_path.display(), "Unreadable retention cutoff; the next retention pass writes it again.");
                i64::MIN
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => i64::MIN,
            Err(e) => return Err(io_at(&retention_path)(e)),
        };
        let wal_dir = dir.join(WAL_DIR);
        let chunk_dir = dir.join(HEAD_CHUNKS_DIR);
        let (mut head, report) = DurableHead::open(
            &wal_dir,
            options.head.clone(),
            options.wal,
            Some(&chunk_dir),
        )
        .map_err(|source| DbError::Log {
            dir: wal_dir.clone(),
            source,
        })?;
        // The log may hold samples retention had already dropped.
        let expired_at_open = head.truncate_before(retention_floor);
        Ok((
            NamespaceDb {
                dir: dir.to_path_buf(),
                options,
                head: RwLock::new(head),
                parts: RwLock::new(Arc::new(parts)),
                compaction: Mutex::new(state),
                retention_floor: AtomicI64::new(retention_floor),
                expired_at_open,
                quarantined_at_open: quarantined,
            },
            report,
        ))
    }

    /// Applies and logs a batch (see [`DurableHead::append`]).
    ///
    /// # Errors
    /// As for [`DurableHead::append`].
    pub fn append<L: AsLabelsView>(
        &self,
        samples: &[(L, i64, f64)],
    ) -> Result<AppendSummary, AppendError> {
        self.head.write().append(samples)
    }

    /// Whether the log refuses appends until [`reopen_log`](Self::reopen_log).
    pub fn is_poisoned(&self) -> bool {
        self.head.read().is_poisoned()
    }

    /// Replaces the head with one replayed from the log: after a failed write poisoned the
    /// log, this is how the namespace writes again. Samples applied but never logged (those of
    /// the failed batch, unacknowledged) are gone afterwards.
    ///
    /// # Errors
    /// As for [`open`](Self::open); the old head stays then.
    pub fn reopen_log(&self) -> Result<(), DbError> {
        let wal_dir = self.dir.join(WAL_DIR);
        let chunk_dir = self.dir.join(HEAD_CHUNKS_DIR);
        let mut head = self.head.write();
        let (fresh, _) = DurableHead::open(
            &wal_dir,
            self.options.head.clone(),
            self.options.wal,
            Some(&chunk_dir),
        )
        .map_err(|source| DbError::Log {
            dir: wal_dir.clone(),
            source,
        })?;
        *head = fresh;
        Ok(())
    }

    /// What the head's chunk files hold and how often they failed.
    pub fn chunk_file_stats(&self) -> ChunkFileStats {
        self.head.read().head().chunk_file_stats()
    }

    /// Flushes the log to disk.
    ///
    /// # Errors
    /// I/O errors.
    pub fn sync(&self) -> std::io::Result<()> {
        self.head.read().sync()
    }

    /// What opening dropped from the replayed head because it was before the retention
    /// cutoff (samples written below the cutoff after the pass that set it).
    pub fn expired_at_open(&self) -> Truncated {
        self.expired_at_open
    }

    /// Where the blocks that did not open (damaged or missing files) were moved to when the
    /// database opened, in its `quarantine` directory.
    pub fn quarantined_at_open(&self) -> &[PathBuf] {
        &self.quarantined_at_open
    }

    /// Live series in the head.
    pub fn head_series(&self) -> usize {
        self.head.read().head().series_count()
    }

    /// An estimate of the head's memory (bytes).
    pub fn head_bytes(&self) -> usize {
        self.head.read().head().heap_bytes()
    }

    /// What the blocks on disk hold.
    pub fn block_stats(&self) -> BlockStats {
        let parts = self.parts.read().clone();
        let mut stats = BlockStats::default();
        for part in parts.iter() {
            if let Part::Written(block) = &**part {
                stats.blocks += 1;
                stats.chunk_bytes += block.chunk_bytes();
                stats.samples += block.sample_count();
            }
        }
        stats
    }

    /// Cuts what the head holds before `(now − range/2)` rounded down to the block range into
    /// a block, then drops the log segments that only held it. Nothing when that cutoff is not
    /// past the last one. See the [module docs](self).
    ///
    /// # Errors
    /// Writing the block failed (its samples stay readable in memory and in the log, and the
    /// next compaction tries again), or the checkpoint failed (the log keeps its segments).
    pub fn compact(&self, now_ms: i64) -> Result<Option<Compacted>, DbError> {
        let mut state = self.compaction.lock();
        // A block left in memory by a failed write goes to disk first.
        self.write_pending(&mut state)?;
        let range = self.options.block_range.max(1);
        let cutoff = now_ms
            .saturating_sub(range / 2)
            .div_euclid(range)
            .saturating_mul(range);
        if cutoff <= state.last_cutoff {
            return Ok(None);
        }
        let mut compacted = Compacted::default();
        {
            let mut head = self.head.write();
            let cut = head.cut_before(cutoff);
            if !cut.is_empty() {
                compacted.series = cut.len();
                let mut parts = self.parts.write();
                let mut list = parts.as_ref().clone();
                list.push(Arc::new(Part::Writing(CutChunks { series: cut })));
                *parts = Arc::new(list);
            }
        }
        state.last_cutoff = cutoff;
        if compacted.series > 0 {
            compacted.samples = self.write_pending(&mut state)?;
        }
        // Taken under the head's lock, written without it.
        let wal_dir = self.dir.join(WAL_DIR);
        let checkpoint = self
            .head
            .write()
            .prepare_checkpoint(cutoff)
            .map_err(io_at(&wal_dir))?;
        compacted.segments_removed = checkpoint.write().map_err(io_at(&wal_dir))?;
        // The cut is done: a merge that fails is reported, not the compaction, and its range is
        // not tried again until the next start.
        match self.merge_one_range(&mut state) {
            Ok(Some((merged, sources))) => {
                compacted.merged = Some(merged);
                compacted.blocks_merged = sources;
            }
            Ok(None) => {}
            Err(e) => {
                tracing::error!(dir = %self.dir.display(), error = %e, "Merging a past range's blocks failed; they stay as they are.");
                compacted.merge_failed = true;
            }
        }
        Ok(Some(compacted))
    }

    /// Merges the blocks of the oldest `merge_range` that is past the last cutoff and holds
    /// more than one block, then deletes them. See the [module docs](self).
    /// Returns what the merge wrote and how many blocks it replaced.
    fn merge_one_range(
        &self,
        state: &mut CompactionState,
    ) -> Result<Option<(Merged, usize)>, DbError> {
        let range = self.options.merge_range;
        if range <= 0 {
            return Ok(None);
        }
        let parts = self.parts.read().clone();
        // Each written block with the range its cutoff closes, in sequence order.
        let written: Vec<(&Arc<Part>, &Block, BlockName, i64)> = parts
            .iter()
            .filter_map(|part| match &**part {
                Part::Written(block) => {
                    let name = name_of(block.dir())?;
                    let merge_range = name.cutoff.saturating_sub(1).div_euclid(range);
                    Some((part, block, name, merge_range))
                }
                Part::Writing(_) => None,
            })
            .collect();
        let Some(run) = written.chunk_by(|a, b| a.3 == b.3).find(|run| {
            let end = run[0].3.saturating_add(1).saturating_mul(range);
            run.len() > 1 && end <= state.last_cutoff && !state.merges_failed.contains(&run[0].3)
        }) else {
            return Ok(None);
        };
        // Until it succeeds: taken off again below.
        state.merges_failed.push(run[0].3);
        let (first, last) = (run[0].2, run[run.len() - 1].2);
        let name = BlockName {
            merged_from: Some(first.merged_from.unwrap_or(first.sequence)),
            ..last
        };
        let dir = self.dir.join(BLOCKS_DIR).join(name.to_string());
        let sources: Vec<&Block> = run.iter().map(|(_, block, _, _)| *block).collect();
        let merged = merge_blocks(&sources, &dir)?;
        let block = Block::open(&dir).inspect_err(|_| {
            // Its sources stay: a merged block beside them that does not open would make the
            // next open choose between them.
            let _ = std::fs::remove_dir_all(&dir);
        })?;
        let mut block = Some(block);
        {
            // Retention may have removed sources meanwhile: the merged block takes the place
            // of the first that is left.
            let mut current = self.parts.write();
            let mut list = Vec::with_capacity(current.len());
            for part in current.iter() {
                if run.iter().any(|(source, ..)| Arc::ptr_eq(source, part)) {
                    if let Some(block) = block.take() {
                        list.push(Arc::new(Part::Written(block)));
                    }
                } else {
                    list.push(part.clone());
                }
            }
            *current = Arc::new(list);
        }
        if block.is_some() {
            std::fs::remove_dir_all(&dir).map_err(io_at(&dir))?;
        }
        // Readers that hold a source keep reading it through its open files.
        for (_, source, ..) in run {
            if let Err(e) = std::fs::remove_dir_all(source.dir())
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(dir = %source.dir().display(), error = %e, "Removing a merged block's source failed; the next open removes it.");
            }
        }
        state.merges_failed.retain(|r| *r != run[0].3);
        Ok(Some((merged, run.len())))
    }

    /// Writes the in-memory part (at most one: compactions run one at a time) to disk and
    /// swaps it for the block. Returns the samples written.
    fn write_pending(&self, state: &mut CompactionState) -> Result<u64, DbError> {
        let parts = self.parts.read().clone();
        let Some((index, pending)) = parts
            .iter()
            .enumerate()
            .find(|(_, p)| matches!(&***p, Part::Writing(_)))
        else {
            return Ok(0);
        };
        let Part::Writing(cut) = &**pending else {
            return Ok(0);
        };
        let min = cut
            .series
            .iter()
            .flat_map(|(_, chunks)| chunks.first())
            .map(SealedChunk::first_time)
            .min()
            .unwrap_or(0);
        let max = cut
            .series
            .iter()
            .flat_map(|(_, chunks)| chunks.last())
            .map(SealedChunk::last_time)
            .max()
            .unwrap_or(0);
        let dir = self
            .dir
            .join(BLOCKS_DIR)
            .join(BlockName::cut(state.next_sequence, state.last_cutoff).to_string());
        let mut series: Vec<_> = cut
            .series
            .iter()
            .map(|(labels, chunks)| (labels, chunks.iter().collect::<Vec<_>>()))
            .collect();
        write_block(&dir, min, max, &mut series)?;
        let block = Block::open(&dir)?;
        let samples = block.sample_count();
        state.next_sequence = state.next_sequence.saturating_add(1);
        let mut current = self.parts.write();
        let mut list = current.as_ref().clone();
        // The list only grows at the end and loses expired blocks: find the pending part by
        // identity, not by position.
        if let Some(slot) = list.iter_mut().find(|p| Arc::ptr_eq(p, pending)) {
            *slot = Arc::new(Part::Written(block));
        } else {
            tracing::debug!(index, "A block expired while it was written.");
        }
        *current = Arc::new(list);
        Ok(samples)
    }

    /// Retention: deletes the blocks wholly before `cutoff` and drops the head's chunks wholly
    /// before it, and the series left empty.
    ///
    /// # Errors
    /// Removing a block's directory failed (it stays listed and is tried again next time).
    pub fn truncate_before(&self, cutoff: i64) -> Result<Expired, DbError> {
        let cutoff = cutoff.max(self.retention_floor.load(Ordering::Relaxed));
        let path = self.dir.join(RETENTION_FILE);
        let temporary = self.dir.join(".retention.tmp");
        std::fs::write(&temporary, cutoff.to_string())
            .and_then(|()| std::fs::rename(&temporary, &path))
            .map_err(io_at(&path))?;
        self.retention_floor.store(cutoff, Ordering::Relaxed);
        let truncated = self.head.write().truncate_before(cutoff);
        let mut expired = Expired {
            samples: truncated.samples as u64,
            series: truncated.series as u64,
            blocks: 0,
        };
        let gone: Vec<Arc<Part>> = {
            let mut parts = self.parts.write();
            let (gone, kept): (Vec<_>, Vec<_>) = parts
                .iter()
                .cloned()
                .partition(|p| matches!(&**p, Part::Written(b) if b.time_range().1 < cutoff));
            *parts = Arc::new(kept);
            gone
        };
        let mut failed = Vec::new();
        for part in gone {
            if let Part::Written(block) = &*part {
                match std::fs::remove_dir_all(block.dir()) {
                    Ok(()) => {
                        expired.blocks += 1;
                        expired.samples += block.sample_count();
                    }
                    Err(e) => {
                        tracing::warn!(dir = %block.dir().display(), error = %e, "Removing an expired block failed; trying again next time.");
                        failed.push(part.clone());
                    }
                }
            }
        }
        if !failed.is_empty() {
            let mut parts = self.parts.write();
            let mut list = failed;
            list.extend(parts.iter().cloned());
            *parts = Arc::new(list);
        }
        Ok(expired)
    }

    /// A consistent view for one query: the parts as they are now, and the head.
    pub fn reader(&self) -> Reader<'_> {
        Reader {
            db: self,
            parts: self.parts.read().clone(),
            floor: self.retention_floor.load(Ordering::Relaxed),
        }
    }
}

/// Where one series' samples are: a head reference and positions in parts.
#[derive(Debug, Clone, Default)]
pub struct SeriesSources {
    head: Option<HeadSeries>,
    /// (part index in the reader's list, where the series is in the part), in part order.
    parts: Vec<(u32, u64)>,
}

/// A view of one namespace for a query. See [`NamespaceDb::reader`].
#[derive(Debug)]
pub struct Reader<'a> {
    db: &'a NamespaceDb,
    parts: Arc<Vec<Arc<Part>>>,
    /// The retention cutoff when the view was taken: nothing before it is read.
    floor: i64,
}

impl Reader<'_> {
    /// The series matching every matcher that may have samples in `start..=end`, sorted by
    /// labels, each once however many parts hold it.
    ///
    /// # Errors
    /// Reading a block's index failed.
    pub fn matching(
        &self,
        matchers: &[Matcher],
        start: i64,
        end: i64,
    ) -> Result<Vec<(Labels, SeriesSources)>, BlockError> {
        let mut found: Vec<(Labels, SeriesSources)> = {
            let head = self.db.head.read();
            let head = head.head();
            head.matching(matchers)
                .into_iter()
                .filter_map(|r| {
                    let labels = head.labels(r)?;
                    let handle = head.series_handle(r)?;
                    Some((
                        labels,
                        SeriesSources {
                            head: Some(handle),
                            parts: Vec::new(),
                        },
                    ))
                })
                .collect()
        };
        let from_parts: Vec<(u32, &Part)> = self
            .parts
            .iter()
            .enumerate()
            .filter(|(_, p)| p.overlaps(start, end))
            .map(|(i, p)| (i as u32, &**p))
            .collect();
        if from_parts.is_empty() {
            found.sort_by(|a, b| a.0.cmp(&b.0));
            return Ok(found);
        }
        let mut by_labels: hashbrown::HashMap<Labels, SeriesSources> = found.into_iter().collect();
        for (index, part) in from_parts {
            for (position, labels) in part.matching(matchers)? {
                match by_labels.get_mut(labels.as_ref()) {
                    Some(sources) => sources.parts.push((index, position)),
                    None => {
                        by_labels.insert(
                            labels.into_owned(),
                            SeriesSources {
                                head: None,
                                parts: vec![(index, position)],
                            },
                        );
                    }
                }
            }
        }
        let mut out: Vec<(Labels, SeriesSources)> = by_labels.into_iter().collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// Whether the series has a sample in `start..=end`, reading as little as it can.
    ///
    /// # Errors
    /// Reading a block's chunks failed.
    pub fn has_samples(
        &self,
        sources: &SeriesSources,
        start: i64,
        end: i64,
    ) -> Result<bool, BlockError> {
        let start = start.max(self.floor);
        if start > end {
            return Ok(false);
        }
        if let Some(handle) = &sources.head
            && self
                .db
                .head
                .read()
                .head()
                .handle_has_samples(handle, start, end)
        {
            return Ok(true);
        }
        for &(index, position) in &sources.parts {
            if let Some(part) = self.parts.get(index as usize)
                && part.has_samples(position, start, end)?
            {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The series' samples in `start..=end`, in time order, one per timestamp (the head over
    /// every part, a later part over an earlier one), appended to `out`.
    ///
    /// # Errors
    /// Reading a block's chunks failed.
    pub fn samples(
        &self,
        sources: &SeriesSources,
        start: i64,
        end: i64,
        out: &mut Vec<(i64, f64)>,
    ) -> Result<(), BlockError> {
        let start = start.max(self.floor);
        if start > end {
            return Ok(());
        }
        if sources.parts.is_empty() {
            if let Some(handle) = &sources.head {
                self.db
                    .head
                    .read()
                    .head()
                    .handle_samples(handle, start, end, out);
            }
            return Ok(());
        }
        let mut merged = Vec::new();
        let mut run = Vec::new();
        let mut scratch = Vec::new();
        for &(index, position) in &sources.parts {
            if let Some(part) = self.parts.get(index as usize) {
                run.clear();
                part.samples(position, start, end, &mut run)?;
                merge_newer_wins(&merged, &run, &mut scratch);
                std::mem::swap(&mut merged, &mut scratch);
            }
        }
        if let Some(handle) = &sources.head {
            run.clear();
            self.db
                .head
                .read()
                .head()
                .handle_samples(handle, start, end, &mut run);
            merge_newer_wins(&merged, &run, &mut scratch);
            std::mem::swap(&mut merged, &mut scratch);
        }
        out.extend_from_slice(&merged);
        Ok(())
    }
}

/// Merges two time-sorted runs into `out` (cleared first); on equal times `newer` wins.
pub(crate) fn merge_newer_wins(
    older: &[(i64, f64)],
    newer: &[(i64, f64)],
    out: &mut Vec<(i64, f64)>,
) {
    out.clear();
    out.reserve(older.len() + newer.len());
    let (mut i, mut j) = (0, 0);
    while i < older.len() && j < newer.len() {
        match older[i].0.cmp(&newer[j].0) {
            std::cmp::Ordering::Less => {
                out.push(older[i]);
                i += 1;
            }
            std::cmp::Ordering::Equal => {
                out.push(newer[j]);
                i += 1;
                j += 1;
            }
            std::cmp::Ordering::Greater => {
                out.push(newer[j]);
                j += 1;
            }
        }
    }
    out.extend_from_slice(&older[i..]);
    out.extend_from_slice(&newer[j..]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    const RANGE: i64 = 10_000;
    const WINDOW: i64 = 3_000;

    fn options() -> DbOptions {
        DbOptions {
            head: HeadOptions {
                out_of_order_window: WINDOW,
                ..HeadOptions::default()
            },
            wal: WalOptions {
                segment_bytes: 2048,
                ..WalOptions::default()
            },
            block_range: RANGE,
            merge_range: 0,
        }
    }

    fn labels(i: u8) -> Labels {
        Labels::new([("__name__", "m"), ("i", &i.to_string()[..])]).unwrap()
    }

    fn everything(db: &NamespaceDb) -> BTreeMap<Labels, Vec<(i64, f64)>> {
        let reader = db.reader();
        reader
            .matching(&[], i64::MIN, i64::MAX)
            .unwrap()
            .into_iter()
            .map(|(labels, sources)| {
                let mut samples = Vec::new();
                reader
                    .samples(&sources, i64::MIN, i64::MAX, &mut samples)
                    .unwrap();
                (labels, samples)
            })
            .filter(|(_, s)| !s.is_empty())
            .collect()
    }

    #[derive(Debug, Clone)]
    enum Step {
        /// (series, time, value) written in one batch.
        Write(Vec<(u8, i64, i8)>),
        /// Compaction at this wall-clock time.
        Compact(i64),
        /// Compactions every half block range over six block ranges from this wall-clock
        /// time on, as the clock passes: a cut per range, then the merges of the ranges they
        /// close.
        CompactAsTimePasses(i64),
        /// Retention with this cutoff.
        Expire(i64),
        Reopen,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            6 => proptest::collection::vec((0u8..6, 0i64..60_000, any::<i8>()), 1..20)
                .prop_map(Step::Write),
            2 => (0i64..80_000).prop_map(Step::Compact),
            1 => (0i64..60_000).prop_map(Step::CompactAsTimePasses),
            1 => (0i64..40_000).prop_map(Step::Expire),
            1 => Just(Step::Reopen),
        ]
    }

    /// What the model says a write takes: per series, samples within the window behind its
    /// newest (the newest survives cuts and is lost only when retention empties the series).
    #[derive(Default)]
    struct Model {
        samples: BTreeMap<u8, BTreeMap<i64, f64>>,
        newest: BTreeMap<u8, i64>,
    }

    /// Writes at times that follow a clock, each series lagging it by its own amount (0, 6, 12
    /// and 18 seconds) and each sample late by up to the out-of-order window (rewriting the
    /// times of earlier rounds, with other values), with a
    /// compaction at the clock now and then: the lagging series' samples land behind cutoffs
    /// already passed, so consecutive blocks hold overlapping chunks of them, and the merges
    /// (the clock passes merge ranges as it goes, and a last run of compactions closes them
    /// all) decode and merge those series.
    fn lagging_steps() -> impl Strategy<Value = Vec<Step>> {
        let round = (
            // Lateness in steps of half a second, as the clock: later rounds write again at
            // the times of earlier ones, so a block and a later one hold the same timestamp.
            proptest::collection::vec((0u8..4, (0i64..6).prop_map(|k| k * 500), any::<i8>()), 1..6),
            any::<bool>(),
            0u8..12,
        );
        proptest::collection::vec(round, 10..60).prop_map(|rounds| {
            let mut steps = Vec::new();
            let mut clock = 25_000;
            for (writes, compact, reopen) in rounds {
                clock += 500;
                steps.push(Step::Write(
                    writes
                        .into_iter()
                        .map(|(series, late, value)| {
                            (series, clock - i64::from(series) * 6_000 - late, value)
                        })
                        .collect(),
                ));
                if compact {
                    steps.push(Step::Compact(clock));
                }
                if reopen == 0 {
                    steps.push(Step::Reopen);
                }
            }
            steps.push(Step::CompactAsTimePasses(clock));
            steps
        })
    }

    /// Runs `steps` against a database (merging ranges of two blocks, or not merging) and
    /// the model: after every step, every read equals the model of what was taken.
    fn reads_equal_the_model(steps: Vec<Step>, merge: bool) -> Result<(), TestCaseError> {
        // Merging or not, every read is the same.
        let options = || DbOptions {
            merge_range: if merge { 2 * RANGE } else { 0 },
            ..options()
        };
        let dir = tempfile::tempdir().unwrap();
        let (mut db, _) = NamespaceDb::open(dir.path(), options()).unwrap();
        let mut model = Model::default();
        let mut floor = i64::MIN;
        for step in steps {
            match step {
                Step::Write(batch) => {
                    let sets: Vec<Labels> = batch.iter().map(|s| labels(s.0)).collect();
                    let samples: Vec<(&Labels, i64, f64)> = batch
                        .iter()
                        .zip(&sets)
                        .map(|(s, l)| (l, s.1, f64::from(s.2)))
                        .collect();
                    db.append(&samples).unwrap();
                    for &(series, time, value) in &batch {
                        let newest = model.newest.get(&series).copied();
                        match newest {
                            Some(n) if time <= n && time < n - WINDOW => {}
                            _ if time < floor => {
                                // Taken, but never read: before the retention cutoff.
                                let n = newest.unwrap_or(i64::MIN).max(time);
                                model.newest.insert(series, n);
                            }
                            _ => {
                                model
                                    .samples
                                    .entry(series)
                                    .or_default()
                                    .insert(time, f64::from(value));
                                let n = newest.unwrap_or(i64::MIN).max(time);
                                model.newest.insert(series, n);
                            }
                        }
                    }
                }
                Step::Compact(now) => {
                    db.compact(now).unwrap();
                }
                Step::CompactAsTimePasses(from) => {
                    for now in (from..from + 6 * RANGE).step_by(RANGE as usize / 2) {
                        db.compact(now).unwrap();
                    }
                }
                Step::Expire(cutoff) => {
                    db.truncate_before(cutoff).unwrap();
                    floor = floor.max(cutoff);
                    for samples in model.samples.values_mut() {
                        samples.retain(|t, _| *t >= floor);
                    }
                    // A series retention emptied from the head forgets its newest.
                    let head = db.head.read();
                    model
                        .newest
                        .retain(|s, _| head.head().find(labels(*s).view()).is_some());
                }
                Step::Reopen => {
                    drop(db);
                    db = NamespaceDb::open(dir.path(), options()).unwrap().0;
                    // The head's newest per series comes back from what is replayed; the
                    // model follows the head (what it holds decides the window).
                    model.newest.clear();
                    model_newest_from_head(&db, &mut model);
                }
            }
            // Whether a series has samples in a range agrees with reading them.
            {
                let reader = db.reader();
                for (_, sources) in reader.matching(&[], i64::MIN, i64::MAX).unwrap() {
                    for (start, end) in [
                        (0, 10_000),
                        (25_000, 25_010),
                        (-5, 70_000),
                        (59_000, 59_999),
                    ] {
                        let mut read = Vec::new();
                        reader.samples(&sources, start, end, &mut read).unwrap();
                        prop_assert_eq!(
                            reader.has_samples(&sources, start, end).unwrap(),
                            !read.is_empty()
                        );
                    }
                }
            }
            let expected: BTreeMap<Labels, Vec<(i64, f64)>> = model
                .samples
                .iter()
                .filter(|(_, s)| !s.is_empty())
                .map(|(series, s)| (labels(*series), s.iter().map(|(t, v)| (*t, *v)).collect()))
                .collect();
            prop_assert_eq!(everything(&db), expected);
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Random writes, compactions, retention and reopenings in any order: every read
        /// equals the model of what was taken, and nothing taken is lost across a reopen.
        #[test]
        fn reads_equal_the_model_through_compaction_retention_and_reopen(
            steps in proptest::collection::vec(step(), 1..40),
            merge in any::<bool>(),
        ) {
            reads_equal_the_model(steps, merge)?;
        }

        /// Series lagging the clock (see [`lagging_steps`]): their late samples are cut into
        /// later blocks whose chunks overlap the earlier ones', merged or not.
        #[test]
        fn late_samples_of_lagging_series_read_as_the_model_through_cuts_and_merges(
            steps in lagging_steps(),
            merge in any::<bool>(),
        ) {
            reads_equal_the_model(steps, merge)?;
        }
    }

    /// After a reopen the window counts from the newest sample the head replayed.
    fn model_newest_from_head(db: &NamespaceDb, model: &mut Model) {
        let head = db.head.read();
        let head = head.head();
        for (reference, labels_of) in head.live_series() {
            let mut samples = Vec::new();
            head.samples(reference, i64::MIN, i64::MAX, &mut samples);
            let series = (0u8..6).find(|&i| labels(i) == labels_of);
            if let (Some(series), Some(&(newest, _))) = (series, samples.last()) {
                model.newest.insert(series, newest);
            }
        }
    }

    #[test]
    fn a_compaction_writes_a_block_drops_log_segments_and_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (db, _) = NamespaceDb::open(dir.path(), options()).unwrap();
        let sets: Vec<Labels> = (0..4).map(labels).collect();
        for t in 0..400 {
            let batch: Vec<(&Labels, i64, f64)> =
                sets.iter().map(|l| (l, t * 100, t as f64)).collect();
            db.append(&batch).unwrap();
        }
        let before = everything(&db);
        // Three of each series' four chunks are closed, in the head's chunk files.
        let files = db.chunk_file_stats();
        assert!(files.bytes > 0, "{files:?}");
        assert!(
            dir.path()
                .join(HEAD_CHUNKS_DIR)
                .join("00000001.chunks")
                .exists()
        );
        let segments_before = std::fs::read_dir(dir.path().join(WAL_DIR)).unwrap().count();
        let compacted = db.compact(40_000).unwrap().unwrap();
        // cutoff = (40000 - 5000) rounded down to 30000: the chunks 0..11900 and 12000..23900
        // of each series are cut, 24000..35900 straddles the cutoff and stays.
        assert_eq!(compacted.series, 4);
        assert_eq!(compacted.samples, 4 * 240, "{compacted:?}");
        assert!(compacted.segments_removed > 0, "{compacted:?}");
        let segments_after = std::fs::read_dir(dir.path().join(WAL_DIR)).unwrap().count();
        assert!(segments_after < segments_before);
        assert_eq!(
            everything(&db),
            before,
            "the block and the head together hold it all"
        );
        assert!(
            db.compact(40_000).unwrap().is_none(),
            "same cutoff: nothing to do"
        );
        drop(db);
        let (db, _) = NamespaceDb::open(dir.path(), options()).unwrap();
        assert_eq!(everything(&db), before);
        assert_eq!(db.block_stats().blocks, 1);
        let files = db.chunk_file_stats();
        assert_eq!((files.read_errors, files.write_errors), (0, 0));
        // Retention past the block deletes it.
        let expired = db.truncate_before(25_000).unwrap();
        assert_eq!(expired.blocks, 1);
        assert_eq!(expired.samples, 4 * 240);
        assert!(
            everything(&db)
                .values()
                .all(|s| s.len() == 150 && s[0].0 == 25_000)
        );
        drop(db);
        let (db, _) = NamespaceDb::open(dir.path(), options()).unwrap();
        assert!(
            everything(&db)
                .values()
                .all(|s| s.len() == 150 && s[0].0 == 25_000),
            "samples before the retention cutoff replayed from the log stay hidden"
        );
    }

    #[test]
    fn a_block_that_does_not_open_is_moved_aside_and_the_rest_opens() {
        let dir = tempfile::tempdir().unwrap();
        let (db, _) = NamespaceDb::open(dir.path(), options()).unwrap();
        let a = labels(1);
        let first: Vec<(&Labels, i64, f64)> = (0..100).map(|t| (&a, t * 100, 1.0)).collect();
        db.append(&first).unwrap();
        db.compact(20_000).unwrap();
        let second: Vec<(&Labels, i64, f64)> = (100..200).map(|t| (&a, t * 100, 2.0)).collect();
        db.append(&second).unwrap();
        db.compact(30_000).unwrap();
        assert_eq!(db.block_stats().blocks, 2);
        drop(db);
        let names = block_names(dir.path());
        let damaged = dir.path().join(BLOCKS_DIR).join(&names[0]);
        std::fs::remove_file(damaged.join("chunks")).unwrap();

        let (db, _) = NamespaceDb::open(dir.path(), options()).unwrap();
        let moved_to = dir.path().join(QUARANTINE_DIR).join(&names[0]);
        assert_eq!(db.quarantined_at_open(), std::slice::from_ref(&moved_to));
        assert!(moved_to.join("index").exists(), "the files are kept");
        assert!(!damaged.exists());
        assert_eq!(block_names(dir.path()), names[1..]);
        let expected: Vec<(i64, f64)> = (100..200).map(|t| (t * 100, 2.0)).collect();
        assert_eq!(everything(&db).remove(&a), Some(expected.clone()));
        // Blocks cut after the open do not reuse the quarantined block's name.
        db.append(&[(&a, 25_000, 3.0)]).unwrap();
        db.compact(40_000).unwrap();
        assert_eq!(block_names(dir.path()).len(), 2);
        assert!(!block_names(dir.path()).contains(&names[0]));
        drop(db);

        // Opened again, nothing more is moved, and what was there reads the same.
        let (db, _) = NamespaceDb::open(dir.path(), options()).unwrap();
        assert!(db.quarantined_at_open().is_empty());
        let mut with_late = expected;
        with_late.push((25_000, 3.0));
        assert_eq!(everything(&db).remove(&a), Some(with_late));
    }

    #[test]
    fn only_damage_moves_a_block_aside() {
        let damage = |kind| BlockError::Io {
            dir: PathBuf::from("b"),
            source: std::io::Error::from(kind),
        };
        assert!(damage(std::io::ErrorKind::NotFound).is_damage());
        assert!(damage(std::io::ErrorKind::UnexpectedEof).is_damage());
        assert!(!damage(std::io::ErrorKind::PermissionDenied).is_damage());
        assert!(!damage(std::io::ErrorKind::Other).is_damage());
        let corrupt = BlockError::Corrupt {
            dir: PathBuf::from("b"),
            reason: "bad magic".into(),
        };
        assert!(corrupt.is_damage());
    }

    #[test]
    fn a_late_sample_cut_after_its_range_wins_over_the_older_block() {
        let dir = tempfile::tempdir().unwrap();
        let (db, _) = NamespaceDb::open(dir.path(), options()).unwrap();
        let a = labels(1);
        let batch: Vec<(&Labels, i64, f64)> = (0..130).map(|t| (&a, t * 10, 1.0)).collect();
        db.append(&batch).unwrap();
        db.compact(20_000).unwrap();
        // Replaces a value that is now in a block (within the window of the newest, 1290).
        db.append(&[(&a, 1_000, 9.0)]).unwrap();
        db.compact(30_000).unwrap();
        assert_eq!(db.block_stats().blocks, 2);
        let got = everything(&db).remove(&a).unwrap();
        assert_eq!(got.len(), 130);
        assert_eq!(got.iter().find(|s| s.0 == 1_000), Some(&(1_000, 9.0)));
        drop(db);
        let (db, _) = NamespaceDb::open(dir.path(), options()).unwrap();
        let got = everything(&db).remove(&a).unwrap();
        assert_eq!(got.iter().find(|s| s.0 == 1_000), Some(&(1_000, 9.0)));
    }

    fn merging() -> DbOptions {
        DbOptions {
            merge_range: 2 * RANGE,
            ..options()
        }
    }

    fn block_names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir.join(BLOCKS_DIR))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn the_blocks_of_a_past_merge_range_become_one_and_read_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let (db, _) = NamespaceDb::open(dir.path(), merging()).unwrap();
        let sets: Vec<Labels> = (0..4).map(labels).collect();
        let mut cuts = 0;
        for t in 0..900i64 {
            // Series 3 only writes in the first half: it is in some blocks and not others.
            let batch: Vec<(&Labels, i64, f64)> = sets
                .iter()
                .filter(|l| **l != sets[3] || t < 450)
                .map(|l| (l, t * 100, t as f64))
                .collect();
            db.append(&batch).unwrap();
            if t % 50 == 49 {
                let before = everything(&db);
                if let Some(done) = db.compact(t * 100).unwrap()
                    && done.samples > 0
                {
                    cuts += 1;
                }
                assert_eq!(everything(&db), before, "at {t}");
            }
        }
        let before = everything(&db);
        let names = block_names(dir.path());
        let merged = names.iter().filter(|n| n.split('-').count() == 3).count();
        assert!(merged >= 2, "{names:?}");
        assert!(
            names.len() < cuts,
            "{} blocks from {cuts} cuts: {names:?}",
            names.len()
        );
        assert_eq!(db.block_stats().blocks, names.len());
        drop(db);
        let (db, _) = NamespaceDb::open(dir.path(), merging()).unwrap();
        assert_eq!(everything(&db), before);
        assert_eq!(block_names(dir.path()), names);
    }

    /// A merging database with 130 samples of one series (0 to 1,290 ms) cut into its first
    /// block, `00000001-10000`; the next compaction at 30,000 cuts a second block of the same
    /// merge range and merges the two.
    fn one_block_cut() -> (tempfile::TempDir, NamespaceDb, Labels) {
        let dir = tempfile::tempdir().unwrap();
        let (db, _) = NamespaceDb::open(dir.path(), merging()).unwrap();
        let a = labels(1);
        let batch: Vec<(&Labels, i64, f64)> = (0..130).map(|t| (&a, t * 10, 1.0)).collect();
        db.append(&batch).unwrap();
        db.compact(20_000).unwrap();
        (dir, db, a)
    }

    /// Copies the first block aside, as a crash before a merge deleted it would leave it:
    /// (where it is, where the copy is).
    fn save_first_block(dir: &Path) -> (PathBuf, PathBuf) {
        let first = dir.join(BLOCKS_DIR).join("00000001-10000");
        let saved = dir.join("saved");
        std::fs::create_dir(&saved).unwrap();
        for file in ["index", "chunks", "summary"] {
            std::fs::copy(first.join(file), saved.join(file)).unwrap();
        }
        (first, saved)
    }

    #[test]
    fn sources_a_merge_left_behind_are_removed_at_open() {
        let (dir, db, a) = one_block_cut();
        let (first, saved) = save_first_block(dir.path());
        db.append(&[(&a, 1_000, 9.0)]).unwrap();
        let done = db.compact(30_000).unwrap().unwrap();
        assert_eq!(done.blocks_merged, 2, "{done:?}");
        assert_eq!(done.merged.map(|m| m.series_rewritten), Some(1));
        assert_eq!(block_names(dir.path()), ["00000002-20000-00000001"]);
        let before = everything(&db);
        assert_eq!(
            before[&a].iter().find(|s| s.0 == 1_000),
            Some(&(1_000, 9.0))
        );
        drop(db);
        // A crash after the merged block was renamed into place, before its sources went.
        std::fs::rename(&saved, &first).unwrap();
        let (db, _) = NamespaceDb::open(dir.path(), merging()).unwrap();
        assert_eq!(block_names(dir.path()), ["00000002-20000-00000001"]);
        assert_eq!(everything(&db), before);
    }

    /// A merged block damaged while a source it replaces is still there (a crash before the
    /// sources were deleted, and a disk that lost the merged block's bytes): the open keeps
    /// the source and deletes the merged block rather than fail or lose both.
    #[test]
    fn a_merged_block_that_does_not_open_gives_way_to_its_sources() {
        let (dir, db, a) = one_block_cut();
        let (first, saved) = save_first_block(dir.path());
        db.append(&[(&a, 1_000, 2.0)]).unwrap();
        let done = db.compact(30_000).unwrap().unwrap();
        assert_eq!(done.blocks_merged, 2, "{done:?}");
        drop(db);
        std::fs::rename(&saved, &first).unwrap();
        let merged = dir.path().join(BLOCKS_DIR).join("00000002-20000-00000001");
        // A byte flipped inside its index: the summary still describes the file, so only a
        // check of the whole index finds it.
        let mut index = std::fs::read(merged.join("index")).unwrap();
        let middle = index.len() / 2;
        index[middle] ^= 0x20;
        std::fs::write(merged.join("index"), &index).unwrap();
        let (db, _) = NamespaceDb::open(dir.path(), merging()).unwrap();
        assert_eq!(block_names(dir.path()), ["00000001-10000"]);
        let got = everything(&db).remove(&a).unwrap();
        assert_eq!(got.len(), 130, "the source's samples are all there");
        assert_eq!(got.iter().find(|s| s.0 == 1_000), Some(&(1_000, 1.0)));
    }

    /// A merge that fails (a source's index damaged since it was opened) leaves the blocks as
    /// they were, fails neither this compaction nor the next, and is not tried again.
    #[test]
    fn a_failed_merge_leaves_the_blocks_and_the_compactions_go_on() {
        let (dir, db, a) = one_block_cut();
        let first = dir.path().join(BLOCKS_DIR).join("00000001-10000");
        std::fs::write(first.join("index"), b"damaged").unwrap();
        db.append(&[(&a, 1_000, 2.0)]).unwrap();
        let done = db.compact(30_000).unwrap().unwrap();
        assert!(done.merge_failed, "{done:?}");
        assert_eq!(done.samples, 1, "the cut itself is done");
        let names = ["00000001-10000", "00000002-20000"];
        assert_eq!(block_names(dir.path()), names, "no merged block is left");
        db.append(&[(&a, 25_000, 3.0)]).unwrap();
        let next = db.compact(40_000).unwrap().unwrap();
        assert!(!next.merge_failed && next.merged.is_none(), "{next:?}");
    }

    #[test]
    fn block_names_read_back_and_merged_ones_name_what_they_replace() {
        let cut = BlockName::cut(3, 1_733_097_600_000);
        assert_eq!(cut.to_string(), "00000003-1733097600000");
        assert_eq!(BlockName::parse("00000003-1733097600000"), Some(cut));
        let merged = BlockName {
            merged_from: Some(2),
            ..BlockName::cut(5, 50)
        };
        assert_eq!(BlockName::parse(&merged.to_string()), Some(merged));
        for (other, replaced) in [(1, false), (2, true), (5, true), (6, false)] {
            assert_eq!(
                merged.replaces(&BlockName::cut(other, 0)),
                replaced,
                "{other}"
            );
        }
        assert!(!merged.replaces(&merged));
        // A negative cutoff (a clock before 1970) reads back too.
        let negative = BlockName::cut(3, -5);
        assert_eq!(BlockName::parse("00000003--5"), Some(negative));
        let merged_negative = BlockName {
            merged_from: Some(1),
            ..negative
        };
        assert_eq!(
            BlockName::parse("00000003--5-00000001"),
            Some(merged_negative)
        );
        for bad in [
            "3-10",
            "00000003-10-",
            "00000003-10-00000001-1",
            "x-1",
            ".00000003-10.tmp",
        ] {
            assert_eq!(BlockName::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn merging_prefers_the_newer_run() {
        let mut out = Vec::new();
        merge_newer_wins(
            &[(1, 1.0), (2, 1.0), (4, 1.0)],
            &[(2, 2.0), (3, 2.0)],
            &mut out,
        );
        assert_eq!(out, vec![(1, 1.0), (2, 2.0), (3, 2.0), (4, 1.0)]);
    }
}
