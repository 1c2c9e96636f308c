//! The embedded store: one time-series database per namespace in one data directory.
//!
//! # Shape
//!
//! [`Store`] is a cheap handle (`Clone`, `Send`, `Sync`) over the namespaces' databases
//! ([`NamespaceDb`]: a head of compressed chunks behind a write-ahead log, and immutable
//! blocks on disk). On disk:
//!
//! ```text
//! <dataDir>/FORMAT            "m3-rs tsdb 1": which layout this is
//! <dataDir>/<namespace>/wal   the head's write-ahead log
//! <dataDir>/<namespace>/blocks/<sequence>-<cutoff>
//! <dataDir>/<namespace>/retention
//! ```
//!
//! A data directory written by the earlier store (one fjall key per sample) is refused at
//! open with [`Error::OldFormat`], which says what to do; it is never read as empty.
//!
//! # Writes
//!
//! [`Store::write_batch`] takes a whole request's worth of samples for one namespace: the
//! head applies them and logs what it took in one append, and the call returns once the log
//! holds them (a process crash cannot take them away; see
//! [`SyncPolicy`](crate::tsdb::wal::SyncPolicy) for power loss). Writing a (series,
//! timestamp) again replaces the value, so at-least-once redelivery is harmless. A sample
//! further behind its series' newest than the namespace's
//! [`buffer_past`](NamespaceConfig::buffer_past) is refused, counted in
//! [`WriteSummary::too_old`] and in `m3_storage_samples_refused_total`, and the rest of the
//! batch is stored; so is a sample further ahead of the clock than the namespace's
//! [`buffer_future`](NamespaceConfig::buffer_future) ([`WriteSummary::too_new`]).
//!
//! # Failures
//!
//! A log write that fails (a full disk) fails the batch; the store then reports
//! [`write_failure`](Store::write_failure) (health checks, 503 to writers) until
//! [`try_recover`](Store::try_recover) finds the disk writable again.
//!
//! # Maintenance
//!
//! [`Store::compact`] cuts each head into blocks and trims the logs; retention
//! ([`crate::retention`]) deletes whole blocks and chunks. A [`RetentionTask`](crate::RetentionTask)
//! runs both on a timer.
//!
//! # Reads
//!
//! Reading (`select`, `label_values`, ...) lives in [`crate::query`] and reads through
//! `Store::reader`; PromQL is evaluated over it by the `m3-query` crate.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::SystemTime;

use crate::error::{Error, Result};
use crate::labels::AsLabelsView;
use crate::labels::{Labels, LabelsError};
use crate::metrics::StoreMetrics;
use crate::namespace::{NamespaceConfig, Namespaces};
use crate::retention::unix_ms;
use crate::tsdb::block::BlockError;
use crate::tsdb::db::{DbError, DbOptions, NamespaceDb, Reader};
use crate::tsdb::durable::AppendError;
use crate::tsdb::head::HeadOptions;
use crate::tsdb::label_sets::LabelSets;
use crate::tsdb::wal::WalOptions;

/// One sample to write: the series' labels, a timestamp in Unix milliseconds and a value
/// ([`Store::write_batch`] takes any [`AsLabelsView`] in place of the `&Labels`).
pub type SampleRef<'a> = (&'a Labels, i64, f64);

/// The file naming the layout of a data directory.
const FORMAT_FILE: &str = "FORMAT";
/// What [`FORMAT_FILE`] holds.
const FORMAT: &str = "m3-rs tsdb 1";

/// What a successful [`Store::write_batch`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteSummary {
    /// Samples stored (including rewrites of existing points and repeats of equal ones).
    pub samples: u64,
    /// Series that did not exist before this call.
    pub series_created: u64,
    /// Samples refused because they were further behind their series' newest sample than the
    /// namespace's `buffer_past`.
    pub too_old: u64,
    /// Samples refused because they were further ahead of the clock than the namespace's
    /// `buffer_future`.
    pub too_new: u64,
}

/// The embedded time-series store. See the [module docs](self).
#[derive(Clone)]
pub struct Store {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) namespaces: Namespaces,
    /// Parallel to `namespaces`.
    dbs: Vec<NamespaceDb>,
    /// The label sets the namespaces' heads share.
    pub(crate) label_sets: LabelSets,
    /// Why the store cannot write, since the write that failed; `None` while it can.
    write_failure: Mutex<Option<String>>,
    pub(crate) metrics: StoreMetrics,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("namespaces", &self.inner.namespaces)
            .finish_non_exhaustive()
    }
}

impl From<DbError> for Error {
    fn from(e: DbError) -> Self {
        Error::Engine(e.to_string())
    }
}

impl From<BlockError> for Error {
    fn from(e: BlockError) -> Self {
        Error::Engine(e.to_string())
    }
}

/// Checks (or, in an empty directory, writes) the layout marker of `dir`.
fn check_format(dir: &Path) -> Result<()> {
    let marker = dir.join(FORMAT_FILE);
    match std::fs::read_to_string(&marker) {
        Ok(found) if found.trim() == FORMAT => return Ok(()),
        Ok(found) => {
            return Err(Error::OldFormat {
                dir: dir.display().to_string(),
                found: format!("{FORMAT_FILE} says {:?}", found.trim()),
            });
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::Engine(format!("{}: {e}", marker.display()))),
    }
    // No marker: a new directory, or one the earlier store wrote (fjall keeps a `version`
    // file and a `keyspaces` directory at its top).
    if dir.join("keyspaces").is_dir() || dir.join("version").is_file() {
        return Err(Error::OldFormat {
            dir: dir.display().to_string(),
            found: "one key per sample in an LSM tree (fjall), written before version 0.2"
                .to_string(),
        });
    }
    let temporary = dir.join(".FORMAT.tmp");
    std::fs::write(&temporary, format!("{FORMAT}\n"))
        .and_then(|()| std::fs::rename(&temporary, &marker))
        .map_err(|e| Error::Engine(format!("{}: {e}", marker.display())))
}

impl Store {
    /// Opens (creating if needed) the store in `dir` with these namespaces: replays each
    /// namespace's log into its head and opens its blocks.
    ///
    /// Namespaces present on disk but absent from `namespaces` are left untouched and invisible;
    /// configuring them again later brings their data back.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] when the namespaces do not validate (see [`Namespaces::new`]),
    /// [`Error::OldFormat`] when `dir` holds a store of an earlier format, [`Error::Engine`]
    /// when a log or block cannot be read.
    pub fn open(dir: &Path, namespaces: Vec<NamespaceConfig>) -> Result<Store> {
        let namespaces = Namespaces::new(namespaces)?;
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::Engine(format!("creating {}: {e}", dir.display())))?;
        check_format(dir)?;
        let mut dbs = Vec::with_capacity(namespaces.len());
        // A series stored raw and aggregated keeps its labels once for every namespace.
        let label_sets = LabelSets::default();
        for ns in namespaces.iter() {
            let ns_dir: PathBuf = dir.join(ns.dir_name());
            let options = DbOptions {
                head: HeadOptions {
                    out_of_order_window: ns.buffer_past_ms(),
                    label_sets: Some(label_sets.clone()),
                },
                wal: WalOptions::default(),
                block_range: ns.block_range_ms(),
                merge_range: ns.merge_range_ms(),
            };
            let (db, report) = NamespaceDb::open(&ns_dir, options)?;
            tracing::info!(
                namespace = %ns.name,
                dir = %ns_dir.display(),
                series = db.head_series(),
                records = report.records,
                segments = report.segments,
                "Opened namespace."
            );
            dbs.push(db);
        }
        let metrics = StoreMetrics::default();
        let replayed_series: usize = dbs.iter().map(NamespaceDb::head_series).sum();
        metrics
            .head_series
            .set(i64::try_from(replayed_series).unwrap_or(i64::MAX));
        metrics
            .head_label_sets
            .set(i64::try_from(label_sets.len()).unwrap_or(i64::MAX));
        for db in &dbs {
            metrics
                .blocks_quarantined
                .inc_by(db.quarantined_at_open().len() as u64);
            let expired = db.expired_at_open();
            metrics
                .samples_deleted_by_retention
                .inc_by(expired.samples as u64);
            metrics
                .series_removed_by_retention
                .inc_by(expired.series as u64);
        }
        Ok(Store {
            inner: Arc::new(Inner {
                namespaces,
                dbs,
                label_sets,
                write_failure: Mutex::new(None),
                metrics,
            }),
        })
    }

    /// The configured namespaces, with lookups by name and by storage policy.
    pub fn namespaces(&self) -> &Namespaces {
        &self.inner.namespaces
    }

    /// The store's self-metrics.
    pub fn metrics(&self) -> &StoreMetrics {
        &self.inner.metrics
    }

    /// Writes samples to `namespace` in one batch, creating series as needed.
    ///
    /// Samples may belong to any number of series and come in any order. A (series, timestamp)
    /// already present is overwritten with the new value; one further behind its series'
    /// newest than the namespace's `buffer_past` is refused and counted in
    /// [`WriteSummary::too_old`], and one further ahead of the clock than its `buffer_future`
    /// in [`WriteSummary::too_new`].
    ///
    /// # Errors
    ///
    /// [`Error::UnknownNamespace`]; [`Error::InvalidLabels`] when a new series' labels are too
    /// long to store (nothing of the batch is stored); [`Error::Engine`] when the log write
    /// failed (nothing of the batch is acknowledged; the store reports
    /// [`write_failure`](Self::write_failure) until it recovers).
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::time::Duration;
    /// use m3_storage::{Labels, NamespaceConfig, Store};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let store = Store::open(dir.path(), vec![
    ///     NamespaceConfig::unaggregated("default", Duration::from_secs(48 * 3600)),
    /// ])?;
    /// let up = Labels::new([("__name__", "up"), ("job", "api")])?;
    /// let summary = store.write_batch("default", &[(&up, 1_000, 1.0), (&up, 2_000, 0.0)])?;
    /// assert_eq!(summary.series_created, 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn write_batch<L: AsLabelsView>(
        &self,
        namespace: &str,
        samples: &[(L, i64, f64)],
    ) -> Result<WriteSummary> {
        let result = self.write_batch_inner(namespace, samples);
        if let Err(e) = &result {
            self.inner.metrics.write_errors.inc();
            if e.is_bad_input() {
                tracing::debug!(namespace, error = %e, "Write to embedded store rejected.");
            } else {
                tracing::error!(namespace, error = %e, "Write to embedded store failed.");
                self.record_write_failure(e);
            }
        }
        result
    }

    /// Writes many samples of one series. Convenience over [`write_batch`](Self::write_batch).
    ///
    /// # Errors
    ///
    /// As for [`write_batch`](Self::write_batch).
    pub fn write_series(
        &self,
        namespace: &str,
        labels: &Labels,
        points: &[(i64, f64)],
    ) -> Result<WriteSummary> {
        let batch: Vec<SampleRef<'_>> = points.iter().map(|&(t, v)| (labels, t, v)).collect();
        self.write_batch(namespace, &batch)
    }

    fn write_batch_inner<L: AsLabelsView>(
        &self,
        namespace: &str,
        samples: &[(L, i64, f64)],
    ) -> Result<WriteSummary> {
        let index = self.inner.namespaces.index_of(namespace)?;
        if let Some(reason) = self.write_failure() {
            return Err(Error::Engine(format!(
                "cannot write until the disk takes writes again; the last failure: {reason}"
            )));
        }
        // Checked here, against the clock, so the head and its log never see such a sample.
        let latest = unix_ms(SystemTime::now())
            .saturating_add(self.inner.namespaces.by_index(index).buffer_future_ms());
        let too_new = samples.iter().filter(|s| s.1 > latest).count();
        let db = &self.inner.dbs[index];
        let appended = if too_new == 0 {
            db.append(samples)
        } else {
            let kept: Vec<(&L, i64, f64)> = samples
                .iter()
                .filter(|s| s.1 <= latest)
                .map(|(labels, t, v)| (labels, *t, *v))
                .collect();
            db.append(&kept)
        };
        let summary = appended.map_err(|e| match e {
            AppendError::SeriesTooLong { name, size, max } => {
                Error::InvalidLabels(LabelsError::SeriesTooLong { name, size, max })
            }
            AppendError::Io(e) => {
                Error::Engine(format!("namespace {namespace:?}: write-ahead log: {e}"))
            }
        })?;
        let stored = (summary.appended + summary.duplicates) as u64;
        let metrics = &self.inner.metrics;
        metrics.samples_written.inc_by(stored);
        metrics.series_created.inc_by(summary.new_series as u64);
        // Live between passes: only compaction and retention remove series from a head, and
        // the pass after them sets the gauge to the count.
        metrics
            .head_series
            .inc_by(i64::try_from(summary.new_series).unwrap_or(i64::MAX));
        if summary.too_old > 0 {
            metrics
                .samples_refused_too_old
                .inc_by(summary.too_old as u64);
            tracing::debug!(
                namespace,
                refused = summary.too_old,
                "Refused samples older than the namespace's bufferPast."
            );
        }
        if too_new > 0 {
            metrics.samples_refused_too_new.inc_by(too_new as u64);
            tracing::debug!(
                namespace,
                refused = too_new,
                "Refused samples further ahead of the clock than the namespace's bufferFuture."
            );
        }
        Ok(WriteSummary {
            samples: stored,
            series_created: summary.new_series as u64,
            too_old: summary.too_old as u64,
            too_new: too_new as u64,
        })
    }

    /// Why the store cannot write, if it cannot: set when a log write fails (a full disk, an
    /// I/O error), cleared by [`try_recover`](Self::try_recover). Health endpoints report it.
    pub fn write_failure(&self) -> Option<String> {
        self.inner.write_failure.lock().clone()
    }

    fn record_write_failure(&self, e: &Error) {
        if matches!(e, Error::Engine(_) | Error::Unavailable(_)) {
            let mut failure = self.inner.write_failure.lock();
            if failure.is_none() {
                *failure = Some(match e {
                    Error::Engine(reason) => reason.clone(),
                    other => other.to_string(),
                });
                self.inner.metrics.writable.set(0);
            }
        }
    }

    /// Makes a store that cannot write (see [`write_failure`](Self::write_failure)) write
    /// again once the cause is gone (space freed): reopens every log that refuses writes
    /// (replaying it, so the head holds exactly what was acknowledged), then checks that a
    /// write reaches the disk. Call it periodically while `write_failure` is set; returns
    /// whether the store can write. Blocking.
    ///
    /// # Errors
    /// A log does not reopen, or the probe write fails (the disk is still full).
    pub fn try_recover(&self) -> Result<bool> {
        if self.write_failure().is_none() {
            return Ok(true);
        }
        let probe = (|| -> Result<()> {
            for (ns, db) in self.databases() {
                if db.is_poisoned() {
                    tracing::info!(namespace = %ns.name, "Reopening the write-ahead log after a failed write.");
                    db.reopen_log()?;
                }
                db.append::<&Labels>(&[])
                    .map_err(|e| Error::Engine(format!("namespace {:?}: {e}", ns.name)))?;
                db.sync()
                    .map_err(|e| Error::Engine(format!("namespace {:?}: {e}", ns.name)))?;
            }
            Ok(())
        })();
        match probe {
            Ok(()) => {
                *self.inner.write_failure.lock() = None;
                self.inner.metrics.writable.set(1);
                tracing::info!("The embedded store writes again.");
                Ok(true)
            }
            Err(e) => {
                *self.inner.write_failure.lock() = Some(e.to_string());
                Err(e)
            }
        }
    }

    /// Syncs every namespace's log to disk.
    ///
    /// # Errors
    ///
    /// [`Error::Engine`] when a sync fails.
    pub fn flush(&self) -> Result<()> {
        for (ns, db) in self.databases() {
            if let Err(e) = db.sync() {
                let e = Error::Engine(format!("namespace {:?}: syncing the log: {e}", ns.name));
                self.record_write_failure(&e);
                return Err(e);
            }
        }
        Ok(())
    }

    /// Flushes and drops this handle. The store closes once every clone is dropped.
    ///
    /// # Errors
    ///
    /// As for [`flush`](Self::flush).
    pub fn close(self) -> Result<()> {
        self.flush()
    }

    /// Cuts what each namespace's head holds from before its current block range into a block
    /// on disk and trims its log (see [`NamespaceDb::compact`]), at wall-clock time `now_ms`.
    /// Returns the samples written to blocks. Blocking; run it off the async runtime.
    ///
    /// # Errors
    ///
    /// [`Error::Engine`] when a block or the log cannot be written in a namespace (the first
    /// such error; the other namespaces are compacted all the same); what was cut stays
    /// readable and the next call tries again.
    pub fn compact(&self, now_ms: i64) -> Result<u64> {
        let mut written = 0;
        self.each_namespace("compaction", |ns, db| {
            if let Some(done) = db.compact(now_ms)? {
                written += done.samples;
                self.inner.metrics.samples_compacted.inc_by(done.samples);
                if done.merge_failed {
                    self.inner.metrics.block_merge_errors.inc();
                }
                if let Some(merged) = done.merged {
                    self.inner
                        .metrics
                        .blocks_merged
                        .inc_by(done.blocks_merged as u64);
                    tracing::info!(
                        namespace = %ns.name,
                        blocks = done.blocks_merged,
                        series = merged.series,
                        samples = merged.samples,
                        series_rewritten = merged.series_rewritten,
                        "Merged the blocks of a past range into one."
                    );
                }
                if done.samples > 0 || done.segments_removed > 0 {
                    tracing::info!(
                        namespace = %ns.name,
                        series = done.series,
                        samples = done.samples,
                        log_segments_removed = done.segments_removed,
                        "Compacted the head into a block."
                    );
                }
            }
            Ok(())
        })?;
        Ok(written)
    }

    /// The number of series in `namespace` with a sample a read can see (at or after the
    /// retention cutoff). Reads every series: meant for tests and tools, not for hot paths.
    ///
    /// # Errors
    ///
    /// [`Error::UnknownNamespace`], or a block that cannot be read.
    pub fn series_count(&self, namespace: &str) -> Result<usize> {
        Ok(self.series(namespace, &[], i64::MIN, i64::MAX)?.len())
    }

    /// A read view of one namespace.
    pub(crate) fn reader(&self, namespace: &str) -> Result<Reader<'_>> {
        let index = self.inner.namespaces.index_of(namespace)?;
        Ok(self.inner.dbs[index].reader())
    }

    /// The namespaces' databases with their configuration, for retention.
    pub(crate) fn databases(&self) -> impl Iterator<Item = (&NamespaceConfig, &NamespaceDb)> {
        self.inner.namespaces.iter().zip(self.inner.dbs.iter())
    }

    /// Runs the maintenance `pass` (named `what` in the log) on every namespace in turn. One
    /// that fails is logged and the others go on, so a namespace damaged from outside does not
    /// leave the rest to grow; the first error is returned once every namespace was tried.
    pub(crate) fn each_namespace(
        &self,
        what: &str,
        mut pass: impl FnMut(&NamespaceConfig, &NamespaceDb) -> std::result::Result<(), DbError>,
    ) -> Result<()> {
        let mut first_error = None;
        for (ns, db) in self.databases() {
            if let Err(e) = pass(ns, db) {
                tracing::error!(namespace = %ns.name, pass = what, error = %e, "A maintenance pass failed in a namespace; the others go on.");
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), |e| Err(e.into()))
    }
}
