//! An in-memory [`KvStore`], for `m3 local` and for tests.
//!
//! All keys live in one map behind a mutex; operations are short and never await while holding
//! it. Versions follow etcd (see the [parent module](super)), so code tested against this
//! backend behaves the same on etcd. Each watched key keeps one `tokio::sync::watch` sender; it
//! is dropped again once nobody listens.
//!
//! Leases follow etcd too: every write moves a store-wide revision, keys remember the revision
//! that created them, and each lease has a deadline on Tokio's clock (so tests with paused time
//! control expiry). A task per lease, spawned when it is granted, sleeps until the deadline and
//! deletes the lease's keys then unless a renewal moved it; watchers see those deletions as
//! they would etcd's.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::watch;
use tokio::time::Instant;

use super::{
    BoxFuture, CreatedKey, Guard, KvError, KvStore, KvWatch, LeaseId, Versioned, lease_ttl_seconds,
};

/// How many versions of a key [`KvStore::get_version`] can read back, the current one included.
pub const HISTORY: usize = 64;

/// An in-memory [`KvStore`]. Cheap to create; share it as `Arc<MemoryKv>` or `Arc<dyn KvStore>`.
#[derive(Debug, Default)]
pub struct MemoryKv {
    state: Arc<Mutex<State>>,
}

#[derive(Debug, Default)]
struct State {
    values: HashMap<String, Entry>,
    watchers: HashMap<String, watch::Sender<Option<Versioned>>>,
    leases: HashMap<LeaseId, Lease>,
    /// The store revision: one more on every write and delete.
    revision: i64,
    /// The last lease ID handed out.
    last_lease: LeaseId,
}

#[derive(Debug)]
struct Entry {
    stored: Versioned,
    create_revision: i64,
    lease: LeaseId,
    /// The last [`HISTORY`] values, oldest first; the last one is `stored`'s.
    history: VecDeque<Bytes>,
}

#[derive(Debug)]
struct Lease {
    ttl: Duration,
    deadline: Instant,
    keys: HashSet<String>,
}

impl State {
    fn version_of(&self, key: &str) -> i64 {
        self.values.get(key).map_or(0, |e| e.stored.version)
    }

    /// Writes `key` if its version is `expected` (0: absent), as `check_and_set` does.
    fn write_if_version(&mut self, key: &str, expected: i64, value: Bytes) -> Result<i64, KvError> {
        let actual = self.version_of(key);
        if actual == expected {
            Ok(self.write(key, value))
        } else {
            Err(KvError::VersionMismatch {
                key: key.to_owned(),
                expected,
                actual,
            })
        }
    }

    fn write(&mut self, key: &str, value: Bytes) -> i64 {
        self.write_with_lease(key, value, 0)
    }

    fn write_with_lease(&mut self, key: &str, value: Bytes, lease: LeaseId) -> i64 {
        self.revision += 1;
        let version = self.version_of(key) + 1;
        let stored = Versioned { value, version };
        let create_revision = self
            .values
            .get(key)
            .map_or(self.revision, |e| e.create_revision);
        let previous_lease = self.values.get(key).map_or(0, |e| e.lease);
        let mut history = self
            .values
            .remove(key)
            .map(|e| e.history)
            .unwrap_or_default();
        if history.len() == HISTORY {
            history.pop_front();
        }
        history.push_back(stored.value.clone());
        if previous_lease != lease
            && let Some(previous) = self.leases.get_mut(&previous_lease)
        {
            previous.keys.remove(key);
        }
        if let Some(lease) = self.leases.get_mut(&lease) {
            lease.keys.insert(key.to_owned());
        }
        self.values.insert(
            key.to_owned(),
            Entry {
                stored: stored.clone(),
                create_revision,
                lease,
                history,
            },
        );
        self.notify(key, Some(stored));
        version
    }

    fn remove(&mut self, key: &str) -> Option<Versioned> {
        let entry = self.values.remove(key)?;
        self.revision += 1;
        if let Some(lease) = self.leases.get_mut(&entry.lease) {
            lease.keys.remove(key);
        }
        self.notify(key, None);
        Some(entry.stored)
    }

    /// Ends `lease` and deletes its keys.
    fn end_lease(&mut self, lease: LeaseId) {
        if let Some(ended) = self.leases.remove(&lease) {
            for key in ended.keys {
                self.remove(&key);
            }
        }
    }

    fn notify(&mut self, key: &str, value: Option<Versioned>) {
        if let Some(tx) = self.watchers.get(key) {
            if tx.receiver_count() == 0 {
                self.watchers.remove(key);
            } else {
                tx.send_replace(value);
            }
        }
    }
}

impl MemoryKv {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn ready<T: Send + 'static>(value: T) -> BoxFuture<'static, T> {
        Box::pin(std::future::ready(value))
    }
}

/// Ends `lease` at its deadline unless renewals keep moving it; stops when the store is gone or
/// the lease ended otherwise.
async fn expire_lease(state: Weak<Mutex<State>>, lease: LeaseId) {
    loop {
        let deadline = {
            let Some(state) = state.upgrade() else { return };
            let mut state = state.lock();
            match state.leases.get(&lease).map(|l| l.deadline) {
                None => return,
                Some(deadline) if deadline <= Instant::now() => {
                    state.end_lease(lease);
                    return;
                }
                Some(deadline) => deadline,
            }
        };
        tokio::time::sleep_until(deadline).await;
    }
}

impl KvStore for MemoryKv {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Versioned>, KvError>> {
        let value = self.state.lock().values.get(key).map(|e| e.stored.clone());
        Self::ready(Ok(value))
    }

    fn get_version<'a>(
        &'a self,
        key: &'a str,
        version: i64,
    ) -> BoxFuture<'a, Result<Option<Bytes>, KvError>> {
        let state = self.state.lock();
        let value = state.values.get(key).and_then(|e| {
            let back = usize::try_from(e.stored.version.checked_sub(version)?).ok()?;
            let index = e.history.len().checked_sub(1)?.checked_sub(back)?;
            (version >= 1)
                .then(|| e.history.get(index).cloned())
                .flatten()
        });
        Self::ready(Ok(value))
    }

    fn set<'a>(&'a self, key: &'a str, value: Bytes) -> BoxFuture<'a, Result<i64, KvError>> {
        let version = self.state.lock().write(key, value);
        Self::ready(Ok(version))
    }

    fn set_if_not_exists<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
    ) -> BoxFuture<'a, Result<i64, KvError>> {
        let mut state = self.state.lock();
        let result = if state.values.contains_key(key) {
            Err(KvError::AlreadyExists {
                key: key.to_owned(),
            })
        } else {
            Ok(state.write(key, value))
        };
        Self::ready(result)
    }

    fn check_and_set<'a>(
        &'a self,
        key: &'a str,
        expected_version: i64,
        value: Bytes,
    ) -> BoxFuture<'a, Result<i64, KvError>> {
        let result = self
            .state
            .lock()
            .write_if_version(key, expected_version, value);
        Self::ready(result)
    }

    fn check_and_set_guarded<'a>(
        &'a self,
        key: &'a str,
        expected_version: i64,
        value: Bytes,
        guard: &'a Guard,
    ) -> BoxFuture<'a, Result<i64, KvError>> {
        let mut state = self.state.lock();
        let guard_holds = state
            .values
            .get(&guard.key)
            .is_some_and(|e| e.create_revision == guard.create_revision);
        let result = if guard_holds {
            state.write_if_version(key, expected_version, value)
        } else {
            Err(KvError::GuardMissing {
                key: key.to_owned(),
                guard: guard.key.clone(),
            })
        };
        Self::ready(result)
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Versioned>, KvError>> {
        let previous = self.state.lock().remove(key);
        Self::ready(Ok(previous))
    }

    fn watch<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<KvWatch, KvError>> {
        let mut state = self.state.lock();
        let current = state.values.get(key).map(|e| e.stored.clone());
        let rx = match state.watchers.get(key) {
            Some(tx) => tx.subscribe(),
            None => {
                let (tx, rx) = watch::channel(current);
                state.watchers.insert(key.to_owned(), tx);
                rx
            }
        };
        Self::ready(Ok(rx))
    }

    fn grant_lease(&self, ttl: Duration) -> BoxFuture<'_, Result<LeaseId, KvError>> {
        Box::pin(async move {
            let ttl = Duration::from_secs(lease_ttl_seconds(ttl).unsigned_abs());
            let lease = {
                let mut state = self.state.lock();
                state.last_lease += 1;
                let lease = state.last_lease;
                state.leases.insert(
                    lease,
                    Lease {
                        ttl,
                        deadline: Instant::now() + ttl,
                        keys: HashSet::new(),
                    },
                );
                lease
            };
            tokio::spawn(expire_lease(Arc::downgrade(&self.state), lease));
            Ok(lease)
        })
    }

    fn keep_lease_alive(&self, lease: LeaseId) -> BoxFuture<'_, Result<(), KvError>> {
        let mut state = self.state.lock();
        let now = Instant::now();
        let result = match state.leases.get_mut(&lease) {
            Some(l) if l.deadline > now => {
                l.deadline = now + l.ttl;
                Ok(())
            }
            Some(_) => {
                // Past its deadline, its expiry task just has not run yet: it ended.
                state.end_lease(lease);
                Err(KvError::LeaseNotFound { lease })
            }
            None => Err(KvError::LeaseNotFound { lease }),
        };
        Self::ready(result)
    }

    fn revoke_lease(&self, lease: LeaseId) -> BoxFuture<'_, Result<(), KvError>> {
        self.state.lock().end_lease(lease);
        Self::ready(Ok(()))
    }

    fn create_with_lease<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        lease: LeaseId,
    ) -> BoxFuture<'a, Result<bool, KvError>> {
        let mut state = self.state.lock();
        let live = state
            .leases
            .get(&lease)
            .is_some_and(|l| l.deadline > Instant::now());
        let result = if !live {
            Err(KvError::LeaseNotFound { lease })
        } else if state.values.contains_key(key) {
            Ok(false)
        } else {
            state.write_with_lease(key, value, lease);
            Ok(true)
        };
        Self::ready(result)
    }

    fn list_by_creation<'a>(
        &'a self,
        prefix: &'a str,
    ) -> BoxFuture<'a, Result<Vec<CreatedKey>, KvError>> {
        let state = self.state.lock();
        let now = Instant::now();
        // A key whose lease is past its deadline is gone, even if the expiry task has not run.
        let alive = |e: &Entry| {
            e.lease == 0 || state.leases.get(&e.lease).is_some_and(|l| l.deadline > now)
        };
        let mut keys: Vec<CreatedKey> = state
            .values
            .iter()
            .filter(|(key, e)| key.starts_with(prefix) && alive(e))
            .map(|(key, e)| CreatedKey {
                key: key.clone(),
                value: e.stored.value.clone(),
                create_revision: e.create_revision,
                lease: e.lease,
            })
            .collect();
        keys.sort_by_key(|k| k.create_revision);
        Self::ready(Ok(keys))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::kv::contract;

    #[tokio::test]
    async fn memory_kv_passes_the_contract() {
        contract::run_all(Arc::new(MemoryKv::new()), "contract").await;
    }

    #[tokio::test]
    async fn unwatched_senders_are_dropped_on_next_write() {
        let kv = MemoryKv::new();
        let rx = kv.watch("k").await.unwrap();
        drop(rx);
        kv.set("k", Bytes::from_static(b"v")).await.unwrap();
        assert!(kv.state.lock().watchers.is_empty());
    }
}
