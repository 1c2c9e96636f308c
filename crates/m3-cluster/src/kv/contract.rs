//! The behaviour every [`KvStore`] backend must show, as a test suite any backend can run.
//!
//! Each function exercises one rule against an `Arc<dyn KvStore>` and panics with a message on
//! violation, so it is meant to be called from `#[tokio::test]`s: the in-memory backend calls
//! [`run_all`] in its unit tests, and the etcd backend calls it against a real etcd. Every
//! function takes a key prefix and only touches keys under it, so a shared etcd can host several
//! runs; use a fresh prefix per run.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::{KvError, KvStore};

/// How long a watch may take to deliver a change before the contract counts it as lost. Generous
/// because a real etcd delivers asynchronously.
const WATCH_DEADLINE: Duration = Duration::from_secs(5);

/// Runs every contract check, each under its own sub-prefix of `prefix`.
pub async fn run_all(kv: Arc<dyn KvStore>, prefix: &str) {
    get_missing_is_none(kv.clone(), &format!("{prefix}/get_missing")).await;
    versions_start_at_one_and_increase(kv.clone(), &format!("{prefix}/versions")).await;
    set_if_not_exists_refuses_existing(kv.clone(), &format!("{prefix}/sine")).await;
    check_and_set_checks_version(kv.clone(), &format!("{prefix}/cas")).await;
    check_and_set_zero_means_absent(kv.clone(), &format!("{prefix}/cas_zero")).await;
    delete_returns_previous_and_resets_version(kv.clone(), &format!("{prefix}/delete")).await;
    keys_are_independent(kv.clone(), &format!("{prefix}/independent")).await;
    watch_sees_current_value_and_changes(kv.clone(), &format!("{prefix}/watch")).await;
    watch_of_missing_key_sees_creation_and_deletion(kv, &format!("{prefix}/watch_missing")).await;
}

/// `get` of a key never written is `None`.
pub async fn get_missing_is_none(kv: Arc<dyn KvStore>, prefix: &str) {
    let got = kv.get(&format!("{prefix}/nothing")).await.expect("get");
    assert_eq!(got, None, "a key never written must read as None");
}

/// The first `set` gives version 1, each later one adds one; `get` returns the last value.
pub async fn versions_start_at_one_and_increase(kv: Arc<dyn KvStore>, prefix: &str) {
    let key = format!("{prefix}/k");
    for expected in 1..=3 {
        let value = Bytes::from(format!("v{expected}"));
        let version = kv.set(&key, value.clone()).await.expect("set");
        assert_eq!(version, expected, "set must return version {expected}");
        let got = kv.get(&key).await.expect("get").expect("value present");
        assert_eq!(got.value, value);
        assert_eq!(got.version, expected);
    }
}

/// `set_if_not_exists` writes version 1 once, then refuses with `AlreadyExists` and leaves the
/// value alone.
pub async fn set_if_not_exists_refuses_existing(kv: Arc<dyn KvStore>, prefix: &str) {
    let key = format!("{prefix}/k");
    let version = kv
        .set_if_not_exists(&key, Bytes::from_static(b"first"))
        .await
        .expect("first set_if_not_exists");
    assert_eq!(version, 1);
    let err = kv
        .set_if_not_exists(&key, Bytes::from_static(b"second"))
        .await
        .expect_err("second set_if_not_exists must fail");
    assert_eq!(err, KvError::AlreadyExists { key: key.clone() });
    let got = kv.get(&key).await.expect("get").expect("value present");
    assert_eq!(got.value, Bytes::from_static(b"first"));
    assert_eq!(got.version, 1);
}

/// `check_and_set` succeeds only with the current version and reports the actual version
/// otherwise.
pub async fn check_and_set_checks_version(kv: Arc<dyn KvStore>, prefix: &str) {
    let key = format!("{prefix}/k");
    kv.set(&key, Bytes::from_static(b"a")).await.expect("set");
    let v2 = kv
        .check_and_set(&key, 1, Bytes::from_static(b"b"))
        .await
        .expect("check_and_set with the current version");
    assert_eq!(v2, 2);
    let err = kv
        .check_and_set(&key, 1, Bytes::from_static(b"c"))
        .await
        .expect_err("stale version must fail");
    assert_eq!(
        err,
        KvError::VersionMismatch {
            key: key.clone(),
            expected: 1,
            actual: 2
        }
    );
    let got = kv.get(&key).await.expect("get").expect("value present");
    assert_eq!(got.value, Bytes::from_static(b"b"));
    let err = kv
        .check_and_set(&format!("{prefix}/absent"), 3, Bytes::from_static(b"x"))
        .await
        .expect_err("check_and_set on an absent key with a version must fail");
    assert!(
        matches!(err, KvError::VersionMismatch { actual: 0, .. }),
        "absent key must report actual version 0, got {err:?}"
    );
}

/// `check_and_set` with expected version 0 creates an absent key and refuses an existing one.
pub async fn check_and_set_zero_means_absent(kv: Arc<dyn KvStore>, prefix: &str) {
    let key = format!("{prefix}/k");
    let v = kv
        .check_and_set(&key, 0, Bytes::from_static(b"a"))
        .await
        .expect("check_and_set 0 on an absent key");
    assert_eq!(v, 1);
    let err = kv
        .check_and_set(&key, 0, Bytes::from_static(b"b"))
        .await
        .expect_err("check_and_set 0 on an existing key must fail");
    assert!(matches!(
        err,
        KvError::VersionMismatch {
            expected: 0,
            actual: 1,
            ..
        }
    ));
}

/// `delete` returns the previous value, makes the key absent, and the next write starts again at
/// version 1 (etcd's per-key version).
pub async fn delete_returns_previous_and_resets_version(kv: Arc<dyn KvStore>, prefix: &str) {
    let key = format!("{prefix}/k");
    kv.set(&key, Bytes::from_static(b"a")).await.expect("set");
    kv.set(&key, Bytes::from_static(b"b")).await.expect("set");
    let previous = kv.delete(&key).await.expect("delete").expect("previous");
    assert_eq!(previous.value, Bytes::from_static(b"b"));
    assert_eq!(previous.version, 2);
    assert_eq!(kv.get(&key).await.expect("get"), None);
    assert_eq!(kv.delete(&key).await.expect("second delete"), None);
    let v = kv.set(&key, Bytes::from_static(b"c")).await.expect("set");
    assert_eq!(v, 1, "a key written after delete starts at version 1");
}

/// Writes to one key do not change another key's value or version, even when one key is a
/// prefix of the other.
pub async fn keys_are_independent(kv: Arc<dyn KvStore>, prefix: &str) {
    let a = format!("{prefix}/a");
    let ab = format!("{prefix}/a/b");
    kv.set(&a, Bytes::from_static(b"1")).await.expect("set");
    kv.set(&a, Bytes::from_static(b"2")).await.expect("set");
    kv.set(&ab, Bytes::from_static(b"x")).await.expect("set");
    let got = kv.get(&ab).await.expect("get").expect("present");
    assert_eq!(got.version, 1);
    kv.delete(&ab).await.expect("delete");
    let got = kv.get(&a).await.expect("get").expect("present");
    assert_eq!(got.value, Bytes::from_static(b"2"));
    assert_eq!(got.version, 2);
}

async fn wait_for(
    rx: &mut super::KvWatch,
    what: &str,
    pred: impl Fn(&Option<super::Versioned>) -> bool,
) {
    let waited = tokio::time::timeout(WATCH_DEADLINE, rx.wait_for(|v| pred(v))).await;
    match waited {
        Ok(Ok(_)) => {}
        Ok(Err(_)) => panic!("watch closed while waiting for {what}"),
        Err(_) => panic!("watch did not deliver {what} within {WATCH_DEADLINE:?}"),
    }
}

/// A watch holds the current value at once, then sees later writes.
pub async fn watch_sees_current_value_and_changes(kv: Arc<dyn KvStore>, prefix: &str) {
    let key = format!("{prefix}/k");
    kv.set(&key, Bytes::from_static(b"a")).await.expect("set");
    let mut rx = kv.watch(&key).await.expect("watch");
    wait_for(&mut rx, "the current value", |v| {
        v.as_ref().is_some_and(|v| v.version == 1 && v.value == "a")
    })
    .await;
    kv.set(&key, Bytes::from_static(b"b")).await.expect("set");
    wait_for(&mut rx, "the second write", |v| {
        v.as_ref().is_some_and(|v| v.version == 2 && v.value == "b")
    })
    .await;
    let mut second = kv.watch(&key).await.expect("second watch");
    wait_for(&mut second, "the current value on a second watch", |v| {
        v.as_ref().is_some_and(|v| v.version == 2)
    })
    .await;
    kv.check_and_set(&key, 2, Bytes::from_static(b"c"))
        .await
        .expect("cas");
    wait_for(&mut rx, "a check_and_set", |v| {
        v.as_ref().is_some_and(|v| v.version == 3)
    })
    .await;
    wait_for(&mut second, "a check_and_set on a second watch", |v| {
        v.as_ref().is_some_and(|v| v.version == 3)
    })
    .await;
}

/// A watch on an absent key holds `None`, then sees the key created and deleted.
pub async fn watch_of_missing_key_sees_creation_and_deletion(kv: Arc<dyn KvStore>, prefix: &str) {
    let key = format!("{prefix}/k");
    let mut rx = kv.watch(&key).await.expect("watch");
    assert_eq!(
        *rx.borrow_and_update(),
        None,
        "absent key must watch as None"
    );
    kv.set_if_not_exists(&key, Bytes::from_static(b"a"))
        .await
        .expect("create");
    wait_for(&mut rx, "the creation", |v| {
        v.as_ref().is_some_and(|v| v.version == 1)
    })
    .await;
    kv.delete(&key).await.expect("delete");
    wait_for(&mut rx, "the deletion", |v| v.is_none()).await;
}
