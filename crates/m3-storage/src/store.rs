//! The embedded store: series, their index and their samples on fjall.
//!
//! # Shape
//!
//! [`Store`] is a cheap handle (`Clone`, `Send`, `Sync`) around one fjall database in one
//! directory. It knows its [`Namespaces`] and keeps, per namespace, an in-memory map from label
//! set to series id, rebuilt at open from the persisted index; the write path consults only that
//! map for series that already exist, so steady-state writes are a single fjall batch of sample
//! inserts. The on-disk layout is described in [`crate::keys`].
//!
//! # Writes
//!
//! [`Store::write_batch`] takes a whole request's worth of samples for one namespace and commits
//! them in one atomic fjall batch. When every series already exists, writers share the
//! namespace's map (read lock) through the commit; a batch that creates series takes it
//! exclusively and puts the new index entries, the advanced id counter and the samples in the
//! same batch, so a crash never leaves a sample without its series or the reverse.
//! Writing the same (series, timestamp) again replaces the value, so at-least-once redelivery is
//! harmless.
//!
//! # Durability
//!
//! Batches are written to fjall's journal buffer. [`Store::flush`] syncs the journal to disk and
//! [`Store::close`] flushes before dropping the handle; fjall also syncs when the last handle is
//! dropped. A process that exits cleanly therefore finds every acknowledged write after restart.
//!
//! # Reads
//!
//! Reading (`select`, `label_values`, ...) lives in [`crate::query`], PromQL in [`crate::promql`],
//! retention in [`crate::retention`]; they share the helpers at the bottom of this file.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use parking_lot::{Mutex, RwLock};

use crate::error::{Error, Result};
use crate::keys;
use crate::labels::{Labels, LabelsError};
use crate::matcher::Matcher;
use crate::metrics::StoreMetrics;
use crate::namespace::{NamespaceConfig, Namespaces};

/// One sample to write: the series' labels, a timestamp in Unix milliseconds and a value.
pub type SampleRef<'a> = (&'a Labels, i64, f64);

/// What a successful [`Store::write_batch`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteSummary {
    /// Samples written (including rewrites of existing points).
    pub samples: u64,
    /// Series that did not exist before this call.
    pub series_created: u64,
}

/// The embedded time-series store. See the [module docs](self).
#[derive(Clone)]
pub struct Store {
    pub(crate) inner: Arc<Inner>,
}

/// The fjall database and its keyspaces. Replaced as a whole when the store reopens after a
/// failed write (see [`Store::try_recover`]).
pub(crate) struct Engine {
    db: Database,
    meta: Keyspace,
    series_ids: Keyspace,
    series_labels: Keyspace,
    postings: Keyspace,
    samples: Keyspace,
}

impl Engine {
    fn open(dir: &Path) -> Result<Engine> {
        let db = Database::builder(dir).open()?;
        Ok(Engine {
            meta: db.keyspace(keys::KS_META, KeyspaceCreateOptions::default)?,
            series_ids: db.keyspace(keys::KS_SERIES_IDS, KeyspaceCreateOptions::default)?,
            series_labels: db.keyspace(keys::KS_SERIES_LABELS, KeyspaceCreateOptions::default)?,
            postings: db.keyspace(keys::KS_POSTINGS, KeyspaceCreateOptions::default)?,
            samples: db.keyspace(keys::KS_SAMPLES, KeyspaceCreateOptions::default)?,
            db,
        })
    }
}

pub(crate) struct Inner {
    dir: PathBuf,
    /// `None` only while [`Store::try_recover`] swaps it.
    engine: RwLock<Option<Arc<Engine>>>,
    /// Why the store cannot write, since the write that failed; `None` while it can.
    write_failure: Mutex<Option<String>>,
    pub(crate) namespaces: Namespaces,
    /// Numeric namespace ids, parallel to `namespaces`.
    ns_ids: Vec<u32>,
    /// Label set → series id, per namespace, parallel to `namespaces`.
    series: Vec<RwLock<HashMap<Labels, u64>>>,
    /// The next series id to hand out (ids are unique across namespaces and never reused).
    next_series_id: Mutex<u64>,
    pub(crate) metrics: StoreMetrics,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("namespaces", &self.inner.namespaces)
            .finish_non_exhaustive()
    }
}

/// A namespace resolved for one call: its position and its numeric id.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ns {
    pub(crate) index: usize,
    pub(crate) id: u32,
}

impl Store {
    /// Opens (creating if needed) the store in `dir` with these namespaces.
    ///
    /// Namespaces present on disk but absent from `namespaces` are left untouched and invisible;
    /// configuring them again later brings their data back.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] when the namespaces do not validate (see [`Namespaces::new`]),
    /// [`Error::Engine`] when fjall cannot open the directory (e.g. another process holds it),
    /// [`Error::Corrupt`] when persisted bytes do not decode.
    pub fn open(dir: &Path, namespaces: Vec<NamespaceConfig>) -> Result<Store> {
        let namespaces = Namespaces::new(namespaces)?;
        let engine = Engine::open(dir)?;
        let Engine {
            db,
            meta,
            series_ids,
            ..
        } = &engine;

        match read_u32(meta, keys::META_FORMAT_VERSION)? {
            None => meta.insert(
                keys::META_FORMAT_VERSION,
                keys::FORMAT_VERSION.to_be_bytes(),
            )?,
            Some(keys::FORMAT_VERSION) => {}
            Some(v) => {
                return Err(Error::corrupt(
                    "format version",
                    format!(
                        "{} was written with format version {v}, this build reads {}",
                        dir.display(),
                        keys::FORMAT_VERSION
                    ),
                ));
            }
        }

        // Assign numeric ids to namespaces seen for the first time.
        let mut next_ns = read_u32(meta, keys::META_NEXT_NAMESPACE_ID)?.unwrap_or(0);
        let mut ns_ids = Vec::with_capacity(namespaces.len());
        let mut batch = db.batch();
        for ns in namespaces.iter() {
            let key = keys::meta_namespace_key(&ns.name);
            let id = match read_u32(meta, &key)? {
                Some(id) => id,
                None => {
                    let id = next_ns;
                    next_ns = next_ns
                        .checked_add(1)
                        .ok_or_else(|| Error::corrupt("meta", "namespace ids exhausted"))?;
                    batch.insert(meta, &key, id.to_be_bytes());
                    tracing::info!(namespace = %ns.name, id, "New namespace.");
                    id
                }
            };
            ns_ids.push(id);
        }
        batch.insert(meta, keys::META_NEXT_NAMESPACE_ID, next_ns.to_be_bytes());
        batch.commit()?;

        // Rebuild the label set → id maps from the persisted index.
        let position: HashMap<u32, usize> =
            ns_ids.iter().enumerate().map(|(i, id)| (*id, i)).collect();
        let mut maps: Vec<HashMap<Labels, u64>> = vec![HashMap::new(); namespaces.len()];
        let mut next_series = read_u64(meta, keys::META_NEXT_SERIES_ID)?.unwrap_or(0);
        for guard in series_ids.iter() {
            let (k, v) = guard.into_inner()?;
            let (ns_id, labels) = keys::parse_series_id_key(&k)
                .ok_or_else(|| Error::corrupt("series index key", format!("{:?}", &*k)))?;
            let sid =
                decode_u64(&v).ok_or_else(|| Error::corrupt("series id", format!("{:?}", &*v)))?;
            next_series = next_series.max(sid.saturating_add(1));
            if let Some(&i) = position.get(&ns_id) {
                maps[i].insert(labels, sid);
            }
        }
        tracing::info!(
            dir = %dir.display(),
            series = maps.iter().map(HashMap::len).sum::<usize>(),
            "Opened embedded store."
        );

        Ok(Store {
            inner: Arc::new(Inner {
                dir: dir.to_path_buf(),
                engine: RwLock::new(Some(Arc::new(engine))),
                write_failure: Mutex::new(None),
                namespaces,
                ns_ids,
                series: maps.into_iter().map(RwLock::new).collect(),
                next_series_id: Mutex::new(next_series),
                metrics: StoreMetrics::default(),
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
    /// already present is overwritten with the new value.
    ///
    /// # Errors
    ///
    /// [`Error::UnknownNamespace`], or [`Error::Engine`] when fjall fails; then nothing of the
    /// batch was written.
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
    pub fn write_batch(&self, namespace: &str, samples: &[SampleRef<'_>]) -> Result<WriteSummary> {
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

    fn write_batch_inner(
        &self,
        namespace: &str,
        samples: &[SampleRef<'_>],
    ) -> Result<WriteSummary> {
        let engine = self.engine()?;
        let ns = self.ns(namespace)?;
        let map = &self.inner.series[ns.index];
        let written = samples.len() as u64;

        // Fast path: every series exists. The read lock is held through the commit so that
        // retention cannot drop one of these series between lookup and write.
        {
            let known = map.read();
            if samples.iter().all(|(l, _, _)| known.contains_key(*l)) {
                let mut batch = engine.db.batch();
                for (labels, ts, value) in samples {
                    if let Some(&sid) = known.get(*labels) {
                        batch.insert(
                            &engine.samples,
                            keys::sample_key(ns.id, sid, *ts),
                            keys::encode_value(*value),
                        );
                    }
                }
                batch.commit()?;
                self.inner.metrics.samples_written.inc_by(written);
                return Ok(WriteSummary {
                    samples: written,
                    series_created: 0,
                });
            }
        }

        // Slow path: create the missing series and write everything in one atomic batch,
        // holding the namespace's map exclusively so no other writer creates the same series.
        let mut known = map.write();
        let mut next = self.inner.next_series_id.lock();
        let mut batch = engine.db.batch();
        let mut fresh: HashMap<&Labels, u64> = HashMap::new();
        let mut encoded = Vec::new();
        for (labels, ts, value) in samples {
            let sid = match known.get(*labels).or_else(|| fresh.get(*labels)) {
                Some(&sid) => sid,
                None => {
                    let sid = next
                        .checked_add(fresh.len() as u64)
                        .ok_or_else(|| Error::corrupt("meta", "series ids exhausted"))?;
                    encoded.clear();
                    labels.encode_into(&mut encoded);
                    debug_assert_eq!(
                        encoded.len(),
                        Labels::encoded_len(labels.iter().map(|(n, v)| (n.len(), v.len())))
                    );
                    if encoded.len() > crate::labels::MAX_ENCODED_LABELS_BYTES {
                        return Err(Error::InvalidLabels(LabelsError::SeriesTooLong {
                            name: labels
                                .get(crate::METRIC_NAME_LABEL)
                                .unwrap_or("")
                                .to_owned(),
                            size: encoded.len(),
                            max: crate::labels::MAX_ENCODED_LABELS_BYTES,
                        }));
                    }
                    Self::add_series_to_batch(&engine, &mut batch, ns, labels, sid, &encoded);
                    fresh.insert(*labels, sid);
                    sid
                }
            };
            batch.insert(
                &engine.samples,
                keys::sample_key(ns.id, sid, *ts),
                keys::encode_value(*value),
            );
        }
        let created = fresh.len() as u64;
        let new_next = next
            .checked_add(created)
            .ok_or_else(|| Error::corrupt("meta", "series ids exhausted"))?;
        batch.insert(
            &engine.meta,
            keys::META_NEXT_SERIES_ID,
            new_next.to_be_bytes(),
        );
        batch.commit()?;

        *next = new_next;
        known.extend(fresh.into_iter().map(|(l, sid)| (l.clone(), sid)));
        self.inner.metrics.series_created.inc_by(created);
        self.inner.metrics.samples_written.inc_by(written);
        tracing::debug!(namespace, created, "Created series.");
        Ok(WriteSummary {
            samples: written,
            series_created: created,
        })
    }

    fn add_series_to_batch(
        engine: &Engine,
        batch: &mut fjall::OwnedWriteBatch,
        ns: Ns,
        labels: &Labels,
        sid: u64,
        encoded: &[u8],
    ) {
        batch.insert(
            &engine.series_ids,
            keys::series_id_key(ns.id, labels),
            sid.to_be_bytes(),
        );
        batch.insert(
            &engine.series_labels,
            keys::series_labels_key(ns.id, sid),
            encoded,
        );
        for (name, value) in labels.iter() {
            batch.insert(
                &engine.postings,
                keys::postings_key(ns.id, name, value, sid),
                [],
            );
        }
    }

    /// Drops the index entries of those `sids` that have no sample left. Returns how many went.
    ///
    /// Takes the namespace's map exclusively: writers hold it (shared) from series lookup to
    /// commit, so a series found empty here cannot receive a sample concurrently.
    pub(crate) fn remove_empty_series(&self, ns: Ns, sids: &[u64]) -> Result<u64> {
        let engine = self.engine()?;
        if sids.is_empty() {
            return Ok(0);
        }
        let inner = &*self.inner;
        let mut known = inner.series[ns.index].write();
        let mut batch = engine.db.batch();
        let mut gone = Vec::new();
        for &sid in sids {
            if self.has_samples_in(ns, sid, i64::MIN, i64::MAX)? {
                continue;
            }
            let Some(labels) = self.labels_of(ns, sid)? else {
                continue;
            };
            batch.remove(&engine.series_ids, keys::series_id_key(ns.id, &labels));
            batch.remove(&engine.series_labels, keys::series_labels_key(ns.id, sid));
            for (name, value) in labels.iter() {
                batch.remove(
                    &engine.postings,
                    keys::postings_key(ns.id, name, value, sid),
                );
            }
            gone.push(labels);
        }
        batch.commit()?;
        for labels in &gone {
            known.remove(labels);
        }
        Ok(gone.len() as u64)
    }

    /// Why the store cannot write, if it cannot: set when a write fails in the engine (a full
    /// disk, an I/O error: fjall then refuses every later write), cleared by
    /// [`try_recover`](Self::try_recover). Health endpoints report it.
    pub fn write_failure(&self) -> Option<String> {
        self.inner.write_failure.lock().clone()
    }

    fn record_write_failure(&self, e: &Error) {
        if matches!(e, Error::Engine(_) | Error::Unavailable(_)) {
            let mut failure = self.inner.write_failure.lock();
            if failure.is_none() {
                *failure = Some(e.to_string());
                self.inner.metrics.writable.set(0);
            }
        }
    }

    /// Makes a store that cannot write (see [`write_failure`](Self::write_failure)) write
    /// again once the cause is gone (space freed): reopens the engine, which replays its
    /// journal, and checks that a write reaches the disk. Call it periodically while
    /// `write_failure` is set; returns whether the store can write. Blocking.
    ///
    /// Queries in flight keep the old engine alive; the reopen waits (briefly) for them and
    /// otherwise tries again at the next call. The in-memory series maps stay valid: they only
    /// change after a commit succeeded.
    ///
    /// # Errors
    /// The engine does not reopen, or the probe write fails (the disk is still full).
    pub fn try_recover(&self) -> Result<bool> {
        if self.write_failure().is_none() {
            return Ok(true);
        }
        let old = self.inner.engine.write().take();
        if let Some(old) = old {
            let mut old = old;
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            loop {
                match Arc::try_unwrap(old) {
                    Ok(engine) => {
                        drop(engine);
                        break;
                    }
                    Err(shared) if std::time::Instant::now() < deadline => {
                        old = shared;
                        std::thread::sleep(std::time::Duration::from_millis(20));
                    }
                    Err(shared) => {
                        *self.inner.engine.write() = Some(shared);
                        return Ok(false);
                    }
                }
            }
        }
        let engine = match Engine::open(&self.inner.dir) {
            Ok(engine) => engine,
            Err(e) => {
                // Without an engine the store cannot even read: keep trying at each call.
                tracing::warn!(error = %e, "Reopening the embedded store failed.");
                return Err(e);
            }
        };
        let probe = engine
            .meta
            .insert(keys::META_WRITE_PROBE, [1])
            .map_err(Error::from)
            .and_then(|()| {
                engine
                    .db
                    .persist(PersistMode::SyncData)
                    .map_err(Error::from)
            });
        *self.inner.engine.write() = Some(Arc::new(engine));
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

    /// Syncs everything written so far to disk.
    ///
    /// # Errors
    ///
    /// [`Error::Engine`] when the sync fails; fjall then refuses further writes.
    pub fn flush(&self) -> Result<()> {
        let engine = self.engine()?;
        let result = engine.db.persist(PersistMode::SyncAll).map_err(Error::from);
        if let Err(e) = &result {
            self.record_write_failure(e);
        }
        result
    }

    /// Flushes and drops this handle. The database closes once every clone is dropped.
    ///
    /// # Errors
    ///
    /// As for [`flush`](Self::flush).
    pub fn close(self) -> Result<()> {
        self.flush()
    }

    /// The number of series in `namespace`.
    ///
    /// # Errors
    ///
    /// [`Error::UnknownNamespace`].
    pub fn series_count(&self, namespace: &str) -> Result<usize> {
        let ns = self.ns(namespace)?;
        Ok(self.inner.series[ns.index].read().len())
    }

    // ---- helpers shared by query, promql and retention ----

    /// The current engine.
    pub(crate) fn engine(&self) -> Result<Arc<Engine>> {
        self.inner.engine.read().clone().ok_or(Error::Unavailable(
            "the store is reopening after a failed write",
        ))
    }

    pub(crate) fn ns(&self, name: &str) -> Result<Ns> {
        let index = self.inner.namespaces.index_of(name)?;
        Ok(Ns {
            index,
            id: self.inner.ns_ids[index],
        })
    }

    pub(crate) fn series_ids_of(&self, ns: Ns) -> Vec<u64> {
        self.inner.series[ns.index]
            .read()
            .values()
            .copied()
            .collect()
    }

    /// Samples of one series with `start <= t <= end`, oldest first.
    pub(crate) fn samples_in(
        &self,
        ns: Ns,
        sid: u64,
        start: i64,
        end: i64,
    ) -> Result<Vec<(i64, f64)>> {
        let engine = self.engine()?;
        if start > end {
            return Ok(Vec::new());
        }
        let range = keys::sample_key(ns.id, sid, start)..=keys::sample_key(ns.id, sid, end);
        let mut out = Vec::new();
        for guard in engine.samples.range(range) {
            let (k, v) = guard.into_inner()?;
            out.push(decode_sample(&k, &v)?);
        }
        Ok(out)
    }

    /// [`Store::samples_in`], taking each sample from `budget` as it is read.
    pub(crate) fn samples_in_budget(
        &self,
        ns: Ns,
        sid: u64,
        start: i64,
        end: i64,
        budget: &mut crate::budget::Budget,
    ) -> Result<Vec<(i64, f64)>> {
        let engine = self.engine()?;
        if start > end {
            return Ok(Vec::new());
        }
        let range = keys::sample_key(ns.id, sid, start)..=keys::sample_key(ns.id, sid, end);
        let mut out = Vec::new();
        for guard in engine.samples.range(range) {
            let (k, v) = guard.into_inner()?;
            budget.take(1)?;
            if out.len() % crate::budget::DEADLINE_CHECK_EVERY == 0 {
                budget.check_deadline()?;
            }
            out.push(decode_sample(&k, &v)?);
        }
        Ok(out)
    }

    /// The newest sample of one series with `start <= t <= end`.
    pub(crate) fn latest_in(
        &self,
        ns: Ns,
        sid: u64,
        start: i64,
        end: i64,
    ) -> Result<Option<(i64, f64)>> {
        let engine = self.engine()?;
        if start > end {
            return Ok(None);
        }
        let range = keys::sample_key(ns.id, sid, start)..=keys::sample_key(ns.id, sid, end);
        match engine.samples.range(range).next_back() {
            None => Ok(None),
            Some(guard) => {
                let (k, v) = guard.into_inner()?;
                Ok(Some(decode_sample(&k, &v)?))
            }
        }
    }

    /// Whether one series has any sample with `start <= t <= end`.
    pub(crate) fn has_samples_in(&self, ns: Ns, sid: u64, start: i64, end: i64) -> Result<bool> {
        let engine = self.engine()?;
        if start > end {
            return Ok(false);
        }
        let range = keys::sample_key(ns.id, sid, start)..=keys::sample_key(ns.id, sid, end);
        match engine.samples.range(range).next() {
            None => Ok(false),
            Some(guard) => {
                guard.key()?;
                Ok(true)
            }
        }
    }

    /// Keys of the samples of one series with `t < before`, oldest first, at most `limit`.
    pub(crate) fn sample_keys_before(
        &self,
        ns: Ns,
        sid: u64,
        before: i64,
        limit: usize,
    ) -> Result<Vec<fjall::UserKey>> {
        let engine = self.engine()?;
        let range = keys::sample_key(ns.id, sid, i64::MIN)..keys::sample_key(ns.id, sid, before);
        let mut out = Vec::new();
        for guard in engine.samples.range(range).take(limit) {
            out.push(guard.key()?);
        }
        Ok(out)
    }

    pub(crate) fn remove_samples(&self, keys: Vec<fjall::UserKey>) -> Result<()> {
        let engine = self.engine()?;
        let mut batch = engine.db.batch();
        for k in keys {
            batch.remove(&engine.samples, k);
        }
        batch.commit()?;
        Ok(())
    }

    /// The label set of a series, from the persisted reverse index.
    pub(crate) fn labels_of(&self, ns: Ns, sid: u64) -> Result<Option<Labels>> {
        match self
            .engine()?
            .series_labels
            .get(keys::series_labels_key(ns.id, sid))?
        {
            None => Ok(None),
            Some(v) => Labels::decode(&v)
                .map(Some)
                .ok_or_else(|| Error::corrupt("series labels", format!("series id {sid}"))),
        }
    }

    /// Every series of a namespace, from the persisted reverse index.
    pub(crate) fn all_series(&self, ns: Ns) -> Result<Vec<(u64, Labels)>> {
        let engine = self.engine()?;
        let mut out = Vec::new();
        for guard in engine.series_labels.prefix(ns.id.to_be_bytes()) {
            let (k, v) = guard.into_inner()?;
            let sid = keys::parse_series_labels_key(&k)
                .ok_or_else(|| Error::corrupt("series labels key", format!("{:?}", &*k)))?;
            let labels = Labels::decode(&v)
                .ok_or_else(|| Error::corrupt("series labels", format!("series id {sid}")))?;
            out.push((sid, labels));
        }
        Ok(out)
    }

    /// Series ids whose value for the matcher's label satisfies it. Only meaningful for matchers
    /// that reject the empty value (series lacking the label are not in the postings).
    pub(crate) fn postings_for(&self, ns: Ns, m: &Matcher) -> Result<BTreeSet<u64>> {
        let engine = self.engine()?;
        let mut out = BTreeSet::new();
        if let Matcher::Equal { name, value } = m {
            let prefix = keys::postings_value_prefix(ns.id, name, value);
            for guard in engine.postings.prefix(&prefix) {
                let k = guard.key()?;
                let sid = k
                    .get(prefix.len()..)
                    .and_then(|b| <[u8; 8]>::try_from(b).ok())
                    .ok_or_else(|| Error::corrupt("postings key", format!("{:?}", &*k)))?;
                out.insert(u64::from_be_bytes(sid));
            }
            return Ok(out);
        }
        self.scan_label(ns, m.name(), |value, sid| {
            if m.matches_value(value) {
                out.insert(sid);
            }
        })?;
        Ok(out)
    }

    /// Calls `f(value, series id)` for every posting of label `name`.
    pub(crate) fn scan_label(
        &self,
        ns: Ns,
        name: &str,
        mut f: impl FnMut(&str, u64),
    ) -> Result<()> {
        let engine = self.engine()?;
        let prefix = keys::postings_name_prefix(ns.id, name);
        for guard in engine.postings.prefix(&prefix) {
            let k = guard.key()?;
            let (value, sid) = k
                .get(prefix.len()..)
                .and_then(keys::parse_postings_rest)
                .ok_or_else(|| Error::corrupt("postings key", format!("{:?}", &*k)))?;
            f(&value, sid);
        }
        Ok(())
    }
}

fn decode_sample(k: &[u8], v: &[u8]) -> Result<(i64, f64)> {
    keys::decode_sample(k, v).ok_or_else(|| Error::corrupt("sample", format!("key {k:?}")))
}

fn decode_u64(v: &[u8]) -> Option<u64> {
    <[u8; 8]>::try_from(v).ok().map(u64::from_be_bytes)
}

fn read_u32(ks: &Keyspace, key: &[u8]) -> Result<Option<u32>> {
    match ks.get(key)? {
        None => Ok(None),
        Some(v) => <[u8; 4]>::try_from(&*v)
            .map(|b| Some(u32::from_be_bytes(b)))
            .map_err(|_| Error::corrupt("meta", format!("value of {key:?}"))),
    }
}

fn read_u64(ks: &Keyspace, key: &[u8]) -> Result<Option<u64>> {
    match ks.get(key)? {
        None => Ok(None),
        Some(v) => decode_u64(&v)
            .map(Some)
            .ok_or_else(|| Error::corrupt("meta", format!("value of {key:?}"))),
    }
}
