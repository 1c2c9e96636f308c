//! The cluster key-value store: the one place where placements, topics, elections and flush
//! times live.
//!
//! # Shape
//!
//! [`KvStore`] is deliberately small: `get`, `set`, `set_if_not_exists`, `check_and_set`,
//! `delete` and `watch` on string keys holding opaque bytes, plus the few things leader election
//! and M3's admin API need beyond that (leases, a creation-ordered listing, a check-and-set
//! guarded by another key, earlier versions of a key). That is what M3 asks of etcd, and nothing
//! more, so every backend (the in-memory [`memory::MemoryKv`] used by `m3 local` and tests, and
//! [`etcd::EtcdKv`]) can honour it completely.
//!
//! The trait is object safe and used as `Arc<dyn KvStore>`: components receive the store at start
//! time and never know which backend they talk to. Methods return boxed futures
//! ([`BoxFuture`]) instead of using `async fn` in the trait, because `async fn` in traits is not
//! object safe.
//!
//! # Versions
//!
//! Every key carries a version, as in etcd: the first write of a key gives version 1, each later
//! write adds one, and a delete forgets the key so that the next write starts again at 1. The
//! version is the basis of optimistic concurrency: read a value with its version, compute a new
//! value, write it with [`KvStore::check_and_set`] and retry or report a conflict when somebody
//! else wrote in between. `check_and_set` with an expected version of 0 means "only if the key
//! does not exist", like etcd's per-key version 0.
//!
//! # Watches
//!
//! [`KvStore::watch`] returns a [`KvWatch`], a `tokio::sync::watch` receiver that holds the
//! current value at once and then each later change. Like M3's value watches it has
//! latest-value semantics: a slow reader may skip intermediate values, but it always ends up
//! with the newest one. `None` means the key does not exist (never written, or deleted).
//!
//! # Leases
//!
//! Leader election needs one thing more, as in etcd: keys that live only as long as their owner.
//! [`KvStore::grant_lease`] grants a lease with a TTL; the owner renews it with
//! [`KvStore::keep_lease_alive`] and ends it with [`KvStore::revoke_lease`]. A key created with
//! [`KvStore::create_with_lease`] is deleted when its lease ends, by revocation or because no
//! renewal came within the TTL (a crashed owner); watchers see the deletion.
//! [`KvStore::list_by_creation`] lists the keys under a prefix oldest first, the order etcd's
//! election recipe queues candidates in (see [`crate::election`]).
//!
//! # Contract
//!
//! `contract` holds a test suite that any backend must pass; the in-memory backend runs it in
//! its tests and the etcd backend runs the same functions against a real etcd. It is built only
//! for tests and with the `testing` feature, so release builds do not carry it.

#[cfg(any(test, feature = "testing"))]
pub mod contract;
pub mod etcd;
pub mod memory;

mod decoded;

pub use decoded::{DecodedWatch, watch_decoded};

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;

/// A boxed, `Send` future, the return type of every [`KvStore`] method.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A value together with the version it was stored at.
///
/// For raw KV values `T` is [`Bytes`]; decoded watches ([`watch_decoded`]) reuse the same shape
/// for typed values such as placements and topics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned<T = Bytes> {
    /// The stored value.
    pub value: T,
    /// The per-key version: 1 on the first write, then increased by one on every write.
    pub version: i64,
}

/// The ID of a lease (see the [module docs](self)): etcd's lease ID, or the in-memory
/// backend's. Never 0, which etcd uses for "no lease".
pub type LeaseId = i64;

/// The key a [`KvStore::check_and_set_guarded`] write depends on: it must exist, created at
/// `create_revision` (a key deleted and created again is another guard).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Guard {
    /// The guard key.
    pub key: String,
    /// The store revision that created it.
    pub create_revision: i64,
}

/// One key of [`KvStore::list_by_creation`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatedKey {
    /// The full key.
    pub key: String,
    /// Its value.
    pub value: Bytes,
    /// The store revision that created it: keys created earlier have smaller ones.
    pub create_revision: i64,
    /// The lease it is attached to; 0 for none.
    pub lease: LeaseId,
}

/// A watch on one key: holds the current value (`None` when the key is absent) and is notified
/// of every later change.
pub type KvWatch = tokio::sync::watch::Receiver<Option<Versioned>>;

/// Errors from a [`KvStore`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KvError {
    /// `set_if_not_exists` found the key already present.
    #[error("key {key:?} already exists")]
    AlreadyExists {
        /// The key that exists.
        key: String,
    },
    /// [`KvStore::check_and_set_guarded`] found its guard key absent, or created again since.
    #[error("not written to {key:?}: guard key {guard:?} is gone")]
    GuardMissing {
        /// The key not written.
        key: String,
        /// The guard key that was absent.
        guard: String,
    },
    /// An earlier revision of `key` was asked for and the backend no longer keeps it (etcd:
    /// compacted away).
    #[error("earlier revisions of {key:?} are compacted away")]
    Compacted {
        /// The key read.
        key: String,
    },
    /// The lease does not exist: it expired or was revoked.
    #[error("lease {lease:x} not found: it expired or was revoked")]
    LeaseNotFound {
        /// The lease.
        lease: LeaseId,
    },
    /// `check_and_set` found another version than the one expected. `actual` is 0 when the key
    /// does not exist.
    #[error("version mismatch on key {key:?}: expected version {expected}, found {actual}")]
    VersionMismatch {
        /// The key written.
        key: String,
        /// The version the caller expected.
        expected: i64,
        /// The version found in the store (0 when absent).
        actual: i64,
    },
    /// The backend failed (connection lost, timeout, etcd error). The operation may or may not
    /// have been applied; callers that need to know read the key again.
    #[error("kv backend error: {message}")]
    Backend {
        /// What the backend reported.
        message: String,
    },
}

impl KvError {
    /// A backend error with the given message.
    pub fn backend(message: impl Into<String>) -> Self {
        KvError::Backend {
            message: message.into(),
        }
    }
}

/// A versioned key-value store with watches; see the [module docs](self) for the semantics every
/// backend must provide.
///
/// Keys are strings laid out as in [`crate::keys`]; values are opaque bytes (usually protobuf).
pub trait KvStore: Send + Sync + 'static {
    /// Reads a key. `Ok(None)` when the key does not exist.
    ///
    /// # Errors
    /// [`KvError::Backend`] when the backend cannot be reached.
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Versioned>, KvError>>;

    /// The value `key` held at `version` of its current life (since it was last created), for
    /// M3's `GET ..?version=N`. `Ok(None)` when there is no such version: never written, or
    /// older than the history the backend keeps (etcd: until compaction; in memory: the last
    /// [`memory::HISTORY`] versions).
    ///
    /// # Errors
    /// [`KvError::Backend`] when the backend cannot be reached.
    fn get_version<'a>(
        &'a self,
        key: &'a str,
        version: i64,
    ) -> BoxFuture<'a, Result<Option<Bytes>, KvError>>;

    /// Writes a key unconditionally and returns the new version.
    ///
    /// # Errors
    /// [`KvError::Backend`] when the backend cannot be reached.
    fn set<'a>(&'a self, key: &'a str, value: Bytes) -> BoxFuture<'a, Result<i64, KvError>>;

    /// Writes a key only if it does not exist; returns the new version (always 1).
    ///
    /// # Errors
    /// [`KvError::AlreadyExists`] when the key exists; [`KvError::Backend`] on backend failure.
    fn set_if_not_exists<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
    ) -> BoxFuture<'a, Result<i64, KvError>>;

    /// Writes a key only if its current version is `expected_version` (0: only if absent);
    /// returns the new version.
    ///
    /// # Errors
    /// [`KvError::VersionMismatch`] when the version differs; [`KvError::Backend`] on backend
    /// failure.
    fn check_and_set<'a>(
        &'a self,
        key: &'a str,
        expected_version: i64,
        value: Bytes,
    ) -> BoxFuture<'a, Result<i64, KvError>>;

    /// As [`KvStore::check_and_set`], and only while `guard`'s key exists as created at its
    /// revision, in one atomic step: a leader writes state "as leader" guarded by its election
    /// term, so the write fails once the term ended, however late it arrives (see
    /// [`crate::election`]).
    ///
    /// # Errors
    /// [`KvError::GuardMissing`] when the guard key does not exist or was created again;
    /// [`KvError::VersionMismatch`] when the version differs; [`KvError::Backend`] on backend
    /// failure.
    fn check_and_set_guarded<'a>(
        &'a self,
        key: &'a str,
        expected_version: i64,
        value: Bytes,
        guard: &'a Guard,
    ) -> BoxFuture<'a, Result<i64, KvError>>;

    /// Deletes a key and returns the value it held, or `None` when it did not exist.
    ///
    /// # Errors
    /// [`KvError::Backend`] on backend failure.
    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Versioned>, KvError>>;

    /// Watches a key: the returned receiver holds the current value and sees every later change
    /// (latest-value semantics).
    ///
    /// # Errors
    /// [`KvError::Backend`] when the watch cannot be established.
    fn watch<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<KvWatch, KvError>>;

    /// Grants a lease that ends `ttl` (at least one second, rounded up to whole seconds as in
    /// etcd) after it was granted or last renewed.
    ///
    /// # Errors
    /// [`KvError::Backend`] on backend failure.
    fn grant_lease(&self, ttl: Duration) -> BoxFuture<'_, Result<LeaseId, KvError>>;

    /// Renews `lease` for its full TTL.
    ///
    /// # Errors
    /// [`KvError::LeaseNotFound`] when it already ended; [`KvError::Backend`] on backend
    /// failure.
    fn keep_lease_alive(&self, lease: LeaseId) -> BoxFuture<'_, Result<(), KvError>>;

    /// Ends `lease` now and deletes its keys. A lease that already ended is not an error.
    ///
    /// # Errors
    /// [`KvError::Backend`] on backend failure.
    fn revoke_lease(&self, lease: LeaseId) -> BoxFuture<'_, Result<(), KvError>>;

    /// Creates `key` attached to `lease` if it does not exist; returns whether it did (`false`:
    /// the key existed and was left alone).
    ///
    /// # Errors
    /// [`KvError::LeaseNotFound`] when the lease ended; [`KvError::Backend`] on backend failure.
    fn create_with_lease<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        lease: LeaseId,
    ) -> BoxFuture<'a, Result<bool, KvError>>;

    /// Every key starting with `prefix`, the earliest created first.
    ///
    /// # Errors
    /// [`KvError::Backend`] on backend failure.
    fn list_by_creation<'a>(
        &'a self,
        prefix: &'a str,
    ) -> BoxFuture<'a, Result<Vec<CreatedKey>, KvError>>;
}

/// A lease TTL as etcd counts it: whole seconds, at least one.
pub fn lease_ttl_seconds(ttl: Duration) -> i64 {
    let seconds = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
    i64::try_from(seconds.max(1)).unwrap_or(i64::MAX)
}
