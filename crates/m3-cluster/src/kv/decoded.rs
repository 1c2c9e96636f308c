//! Typed watches: a [`KvWatch`] of bytes turned into a watch of decoded values.
//!
//! Placements and topics are watched by every process, and a value written by a broken or newer
//! writer must not take a process down. So decoding runs in one background task per watch: a
//! value that fails to decode is logged and skipped, and subscribers keep the last good value.
//! A deleted key is passed on as `None`.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::watch;

use super::{KvWatch, Versioned};

/// A watch of decoded values: the latest good value and its version, `None` when the key is
/// absent. Values are shared behind an `Arc`, so cloning one out of the receiver is cheap.
pub type DecodedWatch<T> = watch::Receiver<Option<Arc<Versioned<T>>>>;

/// Turns a raw watch into a [`DecodedWatch`] using `decode`.
///
/// The returned receiver holds the decoded current value at once (or `None` when the key is
/// absent or the current value does not decode). A background task follows the raw watch until
/// every receiver is dropped or the raw watch closes; `what` names the value in log messages.
///
/// # Panics
/// Spawns a task, so it must be called within a Tokio runtime.
pub fn watch_decoded<T, E, F>(mut raw: KvWatch, what: &'static str, decode: F) -> DecodedWatch<T>
where
    T: Send + Sync + 'static,
    E: std::fmt::Display,
    F: Fn(&Bytes) -> Result<T, E> + Send + 'static,
{
    // Outer `None`: nothing to publish (the value did not decode); inner `None`: key absent.
    let apply = move |current: Option<&Versioned>| -> Option<Option<Arc<Versioned<T>>>> {
        match current {
            None => Some(None),
            Some(v) => match decode(&v.value) {
                Ok(value) => Some(Some(Arc::new(Versioned {
                    value,
                    version: v.version,
                }))),
                Err(err) => {
                    tracing::warn!(
                        what,
                        version = v.version,
                        error = %err,
                        "Skipping a value that does not decode; keeping the previous one."
                    );
                    None
                }
            },
        }
    };

    let initial = apply(raw.borrow_and_update().as_ref()).flatten();
    let (tx, rx) = watch::channel(initial);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                changed = raw.changed() => {
                    if changed.is_err() {
                        tracing::debug!(what, "kv watch closed; decoded watch ends.");
                        return;
                    }
                }
                () = tx.closed() => return,
            }
            let next = apply(raw.borrow_and_update().as_ref());
            if let Some(next) = next {
                tx.send_replace(next);
            }
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::kv::KvStore;
    use crate::kv::memory::MemoryKv;

    fn decode_utf8(b: &Bytes) -> Result<String, std::str::Utf8Error> {
        std::str::from_utf8(b).map(str::to_owned)
    }

    #[tokio::test]
    async fn bad_values_are_skipped_and_deletes_pass_through() {
        let kv = Arc::new(MemoryKv::new());
        kv.set("k", Bytes::from_static(b"one")).await.unwrap();
        let mut rx = watch_decoded(kv.watch("k").await.unwrap(), "test", decode_utf8);
        assert_eq!(rx.borrow().as_ref().unwrap().value, "one");

        kv.set("k", Bytes::from_static(&[0xff, 0xfe]))
            .await
            .unwrap();
        kv.set("k", Bytes::from_static(b"three")).await.unwrap();
        rx.wait_for(|v| v.as_ref().is_some_and(|v| v.version == 3))
            .await
            .unwrap();
        assert_eq!(rx.borrow().as_ref().unwrap().value, "three");

        kv.delete("k").await.unwrap();
        rx.wait_for(|v| v.is_none()).await.unwrap();
    }

    #[tokio::test]
    async fn an_undecodable_current_value_starts_as_none() {
        let kv = Arc::new(MemoryKv::new());
        kv.set("k", Bytes::from_static(&[0xff])).await.unwrap();
        let mut rx = watch_decoded(kv.watch("k").await.unwrap(), "test", decode_utf8);
        assert!(rx.borrow().is_none());
        kv.set("k", Bytes::from_static(b"ok")).await.unwrap();
        rx.wait_for(|v| v.is_some()).await.unwrap();
    }
}
