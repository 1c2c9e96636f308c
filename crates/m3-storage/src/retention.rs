//! Retention: deleting samples that are older than their namespace keeps them.
//!
//! ```text
//!            cutoff = now − retention                     now
//!   ────────────────┼─────────────────────────────────────┼──▶ time
//!    deleted (t < cutoff) │ kept (t ≥ cutoff)
//! ```
//!
//! [`Store::enforce_retention`] walks every series of every namespace and removes its samples
//! before the namespace's cutoff, in fjall batches of at most [`DELETE_BATCH`] keys so a large
//! backlog does not build one huge batch. Samples are ordered by time within a series, so the
//! walk touches only the expired keys. A series left without any sample is then dropped from the
//! index (all its keys in `series_ids`, `series_labels` and `postings`), so churning label sets
//! do not grow the index forever; if it is written again later it comes back under a new id.
//!
//! The call is synchronous and may take a while on a big store. Run it off the async runtime:
//! either `spawn_blocking` it on a timer, or start a [`RetentionTask`], a plain thread that
//! enforces retention at a fixed interval until stopped.

use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::error::Result;
use crate::store::Store;

/// The most sample keys removed in one fjall batch.
pub const DELETE_BATCH: usize = 4096;

/// What one retention pass removed from one namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NamespaceRetention {
    /// The namespace.
    pub namespace: String,
    /// Samples deleted because they were older than the cutoff.
    pub samples_deleted: u64,
    /// Series dropped from the index because they had no sample left.
    pub series_removed: u64,
}

/// What one retention pass removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionReport {
    /// One entry per namespace, in configuration order.
    pub per_namespace: Vec<NamespaceRetention>,
}

impl RetentionReport {
    /// Samples deleted across all namespaces.
    pub fn samples_deleted(&self) -> u64 {
        self.per_namespace.iter().map(|n| n.samples_deleted).sum()
    }

    /// Series removed across all namespaces.
    pub fn series_removed(&self) -> u64 {
        self.per_namespace.iter().map(|n| n.series_removed).sum()
    }
}

impl Store {
    /// Deletes, in every namespace, the samples with a timestamp before `now_ms − retention`,
    /// then drops series that have no sample left from the index.
    ///
    /// # Errors
    ///
    /// [`Error::Engine`](crate::Error::Engine) when fjall fails; samples deleted before the
    /// failure stay deleted and are counted in the metrics.
    pub fn enforce_retention(&self, now_ms: i64) -> Result<RetentionReport> {
        let mut report = RetentionReport::default();
        for ns_cfg in self.namespaces().iter() {
            let ns = self.ns(&ns_cfg.name)?;
            let cutoff = now_ms.saturating_sub(ns_cfg.retention_ms());
            let mut deleted = 0u64;
            let mut emptied = Vec::new();
            for sid in self.series_ids_of(ns) {
                loop {
                    let keys = self.sample_keys_before(ns, sid, cutoff, DELETE_BATCH)?;
                    let n = keys.len();
                    if n == 0 {
                        break;
                    }
                    self.remove_samples(keys)?;
                    deleted += n as u64;
                    self.inner
                        .metrics
                        .samples_deleted_by_retention
                        .inc_by(n as u64);
                    if n < DELETE_BATCH {
                        break;
                    }
                }
                // Checked for every series, not only those touched now, so a series emptied by
                // an earlier, interrupted pass is still collected.
                if !self.has_samples_in(ns, sid, i64::MIN, i64::MAX)? {
                    emptied.push(sid);
                }
            }
            let removed = self.remove_empty_series(ns, &emptied)?;
            self.inner
                .metrics
                .series_removed_by_retention
                .inc_by(removed);
            if deleted > 0 || removed > 0 {
                tracing::debug!(namespace = %ns_cfg.name, deleted, removed, cutoff, "Retention pass.");
            }
            report.per_namespace.push(NamespaceRetention {
                namespace: ns_cfg.name.clone(),
                samples_deleted: deleted,
                series_removed: removed,
            });
        }
        Ok(report)
    }

    /// [`enforce_retention`](Self::enforce_retention) at the wall-clock time `now`.
    ///
    /// # Errors
    ///
    /// As for [`enforce_retention`](Self::enforce_retention).
    pub fn enforce_retention_at(&self, now: SystemTime) -> Result<RetentionReport> {
        self.enforce_retention(unix_ms(now))
    }
}

/// Milliseconds since the Unix epoch, negative before it, saturating at the `i64` range.
pub fn unix_ms(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_millis()).map_or(i64::MIN, |ms| -ms),
    }
}

/// A background thread that enforces retention every `interval` until stopped.
///
/// Errors are logged and counted by the store; the next tick tries again. Dropping the task stops
/// it too (without waiting for the thread).
#[derive(Debug)]
pub struct RetentionTask {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl RetentionTask {
    /// Starts the thread. The first pass runs after one `interval`.
    ///
    /// # Errors
    ///
    /// The OS error when the thread cannot be spawned.
    pub fn start(store: Store, interval: Duration) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("m3-storage-retention".into())
            .spawn(move || {
                loop {
                    match rx.recv_timeout(interval) {
                        Err(RecvTimeoutError::Timeout) => {}
                        Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
                    }
                    if let Err(e) = store.enforce_retention_at(SystemTime::now()) {
                        tracing::error!(error = %e, "Retention pass failed.");
                    }
                }
            })?;
        Ok(RetentionTask {
            stop: Some(tx),
            thread: Some(thread),
        })
    }

    /// Stops the thread and waits for a pass in progress to finish.
    pub fn stop(mut self) {
        self.stop.take();
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            tracing::error!("Retention thread panicked.");
        }
    }
}

impl Drop for RetentionTask {
    fn drop(&mut self) {
        // Dropping the sender disconnects the channel, which ends the loop.
        self.stop.take();
    }
}
