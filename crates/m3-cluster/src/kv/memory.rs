//! An in-memory [`KvStore`], for `m3 local` and for tests.
//!
//! All keys live in one map behind a mutex; operations are short and never await while holding
//! it. Versions follow etcd (see the [parent module](super)), so code tested against this
//! backend behaves the same on etcd. Each watched key keeps one `tokio::sync::watch` sender; it
//! is dropped again once nobody listens.

use std::collections::HashMap;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::watch;

use super::{BoxFuture, KvError, KvStore, KvWatch, Versioned};

/// An in-memory [`KvStore`]. Cheap to create; share it as `Arc<MemoryKv>` or `Arc<dyn KvStore>`.
#[derive(Debug, Default)]
pub struct MemoryKv {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    values: HashMap<String, Versioned>,
    watchers: HashMap<String, watch::Sender<Option<Versioned>>>,
}

impl State {
    fn version_of(&self, key: &str) -> i64 {
        self.values.get(key).map_or(0, |v| v.version)
    }

    fn write(&mut self, key: &str, value: Bytes) -> i64 {
        let version = self.version_of(key) + 1;
        let stored = Versioned { value, version };
        self.values.insert(key.to_owned(), stored.clone());
        self.notify(key, Some(stored));
        version
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

impl KvStore for MemoryKv {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Versioned>, KvError>> {
        let value = self.state.lock().values.get(key).cloned();
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
        let mut state = self.state.lock();
        let actual = state.version_of(key);
        let result = if actual == expected_version {
            Ok(state.write(key, value))
        } else {
            Err(KvError::VersionMismatch {
                key: key.to_owned(),
                expected: expected_version,
                actual,
            })
        };
        Self::ready(result)
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Versioned>, KvError>> {
        let mut state = self.state.lock();
        let previous = state.values.remove(key);
        if previous.is_some() {
            state.notify(key, None);
        }
        Self::ready(Ok(previous))
    }

    fn watch<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<KvWatch, KvError>> {
        let mut state = self.state.lock();
        let current = state.values.get(key).cloned();
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
