//! Retention: deleting samples that are older than their namespace keeps them.
//!
//! ```text
//!            cutoff = now − retention                     now
//!   ────────────────┼─────────────────────────────────────┼──▶ time
//!    deleted (t < cutoff) │ kept (t ≥ cutoff)
//! ```
//!
//! [`Store::enforce_retention`] moves each namespace's retention cutoff forward: reads never
//! show a sample before it again (even after a restart), and the space goes in whole pieces —
//! the blocks whose newest sample is before the cutoff are deleted, the head drops its chunks
//! wholly before it, and a series left without samples leaves the head's index, so churning
//! label sets do not grow it forever.
//!
//! The call is synchronous. Run it off the async runtime: either `spawn_blocking` it on a
//! timer, or start a [`RetentionTask`], a plain thread that compacts the heads into blocks
//! ([`Store::compact`]) and enforces retention at a fixed interval until stopped.

use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::error::Result;
use crate::store::Store;
use crate::tsdb::head::ChunkFileStats;
use crate::tsdb::symbols::Symbols;

/// What one retention pass removed from one namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NamespaceRetention {
    /// The namespace.
    pub namespace: String,
    /// Samples deleted because they were older than the cutoff (in whole chunks and blocks:
    /// samples before the cutoff that share a chunk with newer ones are hidden from reads and
    /// deleted with their chunk later).
    pub samples_deleted: u64,
    /// Series dropped from the head's index because they had no sample left.
    pub series_removed: u64,
    /// Blocks deleted.
    pub blocks_deleted: usize,
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
    /// Applies, in every namespace, the cutoff `now_ms − retention`: nothing before it is read
    /// again, and the blocks and chunks wholly before it are deleted.
    ///
    /// # Errors
    ///
    /// [`Error::Engine`](crate::Error::Engine) when the cutoff cannot be persisted or a block
    /// cannot be deleted in a namespace (the first such error; the other namespaces are done
    /// all the same, and the failed one is tried again next time).
    pub fn enforce_retention(&self, now_ms: i64) -> Result<RetentionReport> {
        let report = self.expire(now_ms);
        self.update_size_gauges();
        report
    }

    /// Sets the head and block gauges from what the namespaces hold now.
    fn update_size_gauges(&self) {
        let (mut series, mut bytes, mut blocks, mut block_bytes) = (0, 0, 0, 0);
        let mut files = ChunkFileStats::default();
        for (_, db) in self.databases() {
            series += db.head_series();
            bytes += db.head_bytes();
            let stats = db.chunk_file_stats();
            files.bytes += stats.bytes;
            files.write_errors += stats.write_errors;
            files.read_errors += stats.read_errors;
            let stats = db.block_stats();
            blocks += stats.blocks;
            block_bytes += stats.chunk_bytes;
        }
        let metrics = &self.inner.metrics;
        let gauge = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        metrics.head_series.set(gauge(series as u64));
        let label_sets = &self.inner.label_sets;
        label_sets.purge_dead();
        metrics.head_bytes.set(gauge(
            (bytes + label_sets.heap_bytes() + Symbols::process().heap_bytes()) as u64,
        ));
        metrics.head_label_sets.set(gauge(label_sets.len() as u64));
        metrics.blocks.set(gauge(blocks as u64));
        metrics.block_bytes.set(gauge(block_bytes));
        metrics.head_chunk_file_bytes.set(gauge(files.bytes));
        metrics
            .head_chunk_file_write_errors
            .set(gauge(files.write_errors));
        metrics
            .head_chunk_file_read_errors
            .set(gauge(files.read_errors));
    }

    fn expire(&self, now_ms: i64) -> Result<RetentionReport> {
        let mut report = RetentionReport::default();
        self.each_namespace("retention", |ns_cfg, db| {
            let cutoff = now_ms.saturating_sub(ns_cfg.retention_ms());
            let expired = db.truncate_before(cutoff)?;
            let metrics = &self.inner.metrics;
            metrics.samples_deleted_by_retention.inc_by(expired.samples);
            metrics.series_removed_by_retention.inc_by(expired.series);
            if expired.samples > 0 || expired.series > 0 {
                tracing::debug!(
                    namespace = %ns_cfg.name,
                    samples = expired.samples,
                    series = expired.series,
                    blocks = expired.blocks,
                    cutoff,
                    "Retention pass."
                );
            }
            report.per_namespace.push(NamespaceRetention {
                namespace: ns_cfg.name.clone(),
                samples_deleted: expired.samples,
                series_removed: expired.series,
                blocks_deleted: expired.blocks,
            });
            Ok(())
        })?;
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

/// A background thread that compacts the heads and enforces retention every `interval` until
/// stopped.
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
                    if let Err(e) = store.compact(unix_ms(SystemTime::now())) {
                        tracing::error!(error = %e, "Compaction failed.");
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
