//! Reading, writing and watching one service's placement in KV.
//!
//! A [`PlacementStore`] is bound to one key (see [`crate::keys::placement_key`]) and stores the
//! placement in its service's format: `placementpb.PlacementSnapshots` for aggregators,
//! `placementpb.Placement` for the others, as M3 does (see [`PlacementFormat`]). Writes are versioned so the admin API can offer
//! M3's semantics: `init` fails when a placement exists, updates are check-and-set against the
//! version the caller read, and a watch gives every process the latest placement without
//! polling. A stored value that does not decode is an error on `get` and is skipped (logged) by
//! watches, so one bad write cannot crash the processes that follow the placement.

use std::sync::Arc;

use crate::kv::{DecodedWatch, KvError, KvStore, Versioned, watch_decoded};

use super::{Placement, PlacementError, PlacementFormat};

/// Errors of a [`PlacementStore`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementStoreError {
    /// `init` found a placement already stored.
    #[error("placement {key:?} already exists")]
    AlreadyExists {
        /// The KV key.
        key: String,
    },
    /// No placement is stored.
    #[error("placement {key:?} not found")]
    NotFound {
        /// The KV key.
        key: String,
    },
    /// The placement changed since the caller read it.
    #[error(
        "placement {key:?} changed: expected version {expected}, found {actual}; read it again and retry"
    )]
    VersionMismatch {
        /// The KV key.
        key: String,
        /// The version the caller expected.
        expected: i64,
        /// The stored version (0 when absent).
        actual: i64,
    },
    /// The stored placement does not decode, or a placement to store is invalid.
    #[error(transparent)]
    Placement(#[from] PlacementError),
    /// The KV backend failed.
    #[error(transparent)]
    Kv(KvError),
}

impl From<KvError> for PlacementStoreError {
    fn from(e: KvError) -> Self {
        match e {
            KvError::AlreadyExists { key } => PlacementStoreError::AlreadyExists { key },
            KvError::VersionMismatch {
                key,
                expected,
                actual,
            } => PlacementStoreError::VersionMismatch {
                key,
                expected,
                actual,
            },
            other => PlacementStoreError::Kv(other),
        }
    }
}

/// One service's placement in KV.
#[derive(Clone)]
pub struct PlacementStore {
    kv: Arc<dyn KvStore>,
    key: String,
    format: PlacementFormat,
}

impl std::fmt::Debug for PlacementStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlacementStore")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl PlacementStore {
    /// A store for the placement at `key` (e.g. from [`crate::keys::placement_key`]), kept
    /// in `format` (for a service: [`PlacementFormat::of_service`]).
    pub fn new(kv: Arc<dyn KvStore>, key: impl Into<String>, format: PlacementFormat) -> Self {
        PlacementStore {
            kv,
            key: key.into(),
            format,
        }
    }

    /// The KV key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The stored placement and its version, `None` when there is none.
    ///
    /// # Errors
    /// [`PlacementStoreError::Placement`] when the stored value does not decode;
    /// [`PlacementStoreError::Kv`] on backend failure.
    pub async fn get(&self) -> Result<Option<Versioned<Placement>>, PlacementStoreError> {
        match self.kv.get(&self.key).await? {
            None => Ok(None),
            Some(v) => Ok(Some(Versioned {
                value: self.format.decode(&v.value)?,
                version: v.version,
            })),
        }
    }

    /// The placement as stored at `version` (M3's `PlacementForVersion`), `None` when that
    /// version is not (or no longer) there (see [`KvStore::get_version`]).
    ///
    /// # Errors
    /// [`PlacementStoreError::Placement`] when the stored value does not decode;
    /// [`PlacementStoreError::Kv`] on backend failure.
    pub async fn get_version(
        &self,
        version: i64,
    ) -> Result<Option<Placement>, PlacementStoreError> {
        match self.kv.get_version(&self.key, version).await? {
            None => Ok(None),
            Some(bytes) => Ok(Some(self.format.decode(&bytes)?)),
        }
    }

    /// Stores the first placement; returns its version (1).
    ///
    /// # Errors
    /// [`PlacementStoreError::AlreadyExists`] when a placement is stored;
    /// [`PlacementStoreError::Placement`] when `placement` fails [`Placement::validate`];
    /// [`PlacementStoreError::Kv`] on backend failure.
    pub async fn init(&self, placement: &Placement) -> Result<i64, PlacementStoreError> {
        placement.validate()?;
        Ok(self
            .kv
            .set_if_not_exists(&self.key, self.format.encode(placement))
            .await?)
    }

    /// Replaces the placement if it is still at `expected_version`; returns the new version.
    ///
    /// # Errors
    /// [`PlacementStoreError::VersionMismatch`] when it changed (or is absent: actual 0);
    /// [`PlacementStoreError::Placement`] when `placement` fails [`Placement::validate`];
    /// [`PlacementStoreError::Kv`] on backend failure.
    pub async fn check_and_set(
        &self,
        placement: &Placement,
        expected_version: i64,
    ) -> Result<i64, PlacementStoreError> {
        placement.validate()?;
        Ok(self
            .kv
            .check_and_set(&self.key, expected_version, self.format.encode(placement))
            .await?)
    }

    /// Deletes the placement and returns what was stored.
    ///
    /// # Errors
    /// [`PlacementStoreError::NotFound`] when none is stored; [`PlacementStoreError::Kv`] on
    /// backend failure. A stored value that does not decode is deleted and reported as
    /// [`PlacementStoreError::Placement`].
    pub async fn delete(&self) -> Result<Versioned<Placement>, PlacementStoreError> {
        let previous =
            self.kv
                .delete(&self.key)
                .await?
                .ok_or_else(|| PlacementStoreError::NotFound {
                    key: self.key.clone(),
                })?;
        Ok(Versioned {
            value: self.format.decode(&previous.value)?,
            version: previous.version,
        })
    }

    /// Watches the placement: the receiver holds the current placement (`None` when absent) and
    /// every later one. Values that do not decode are logged and skipped.
    ///
    /// # Errors
    /// [`PlacementStoreError::Kv`] when the watch cannot be established.
    ///
    /// # Panics
    /// Spawns a task, so it must be called within a Tokio runtime.
    pub async fn watch(&self) -> Result<DecodedWatch<Placement>, PlacementStoreError> {
        let raw = self.kv.watch(&self.key).await?;
        let format = self.format;
        Ok(watch_decoded(raw, "placement", move |b| format.decode(b)))
    }
}
