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

use super::{Guard, KvError, KvStore};

/// How long after its TTL an unrenewed lease may take to end: etcd checks expiry in steps.
const LEASE_EXPIRY_SLACK: Duration = Duration::from_secs(3);

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
    watch_of_missing_key_sees_creation_and_deletion(kv.clone(), &format!("{prefix}/watch_missing"))
        .await;
    check_and_set_guarded_needs_its_guard(kv.clone(), &format!("{prefix}/guarded")).await;
    earlier_versions_read_back(kv.clone(), &format!("{prefix}/history")).await;
    list_by_creation_is_in_creation_order(kv.clone(), &format!("{prefix}/list")).await;
    leased_keys_go_with_their_lease(kv.clone(), &format!("{prefix}/lease")).await;
    an_unrenewed_lease_expires_and_its_keys_with_it(kv, &format!("{prefix}/lease_expiry")).await;
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

/// `list_by_creation` lists the keys under the prefix, earliest created first (not in key
/// order), and nothing outside it; an overwrite keeps a key's place.
pub async fn list_by_creation_is_in_creation_order(kv: Arc<dyn KvStore>, prefix: &str) {
    for name in ["b", "a", "c"] {
        kv.set(&format!("{prefix}/q/{name}"), Bytes::from(name))
            .await
            .expect("set");
    }
    kv.set(&format!("{prefix}/q/b"), Bytes::from_static(b"b2"))
        .await
        .expect("overwrite");
    kv.set(&format!("{prefix}/other"), Bytes::from_static(b"x"))
        .await
        .expect("set");
    let listed = kv
        .list_by_creation(&format!("{prefix}/q/"))
        .await
        .expect("list");
    let keys: Vec<&str> = listed.iter().map(|k| k.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            format!("{prefix}/q/b"),
            format!("{prefix}/q/a"),
            format!("{prefix}/q/c")
        ],
        "listed in creation order"
    );
    assert_eq!(listed[0].value, Bytes::from_static(b"b2"));
    assert!(
        listed
            .windows(2)
            .all(|w| w[0].create_revision < w[1].create_revision)
    );
    assert!(listed.iter().all(|k| k.lease == 0));
}

/// A key created with a lease carries it, is created once, and goes when the lease is revoked;
/// a revoked lease can be neither renewed nor used.
pub async fn leased_keys_go_with_their_lease(kv: Arc<dyn KvStore>, prefix: &str) {
    let lease = kv
        .grant_lease(Duration::from_secs(30))
        .await
        .expect("grant");
    assert_ne!(lease, 0, "0 means no lease");
    let key = format!("{prefix}/k");
    let mut rx = kv.watch(&key).await.expect("watch");
    assert!(
        kv.create_with_lease(&key, Bytes::from_static(b"mine"), lease)
            .await
            .expect("create")
    );
    assert!(
        !kv.create_with_lease(&key, Bytes::from_static(b"again"), lease)
            .await
            .expect("create existing"),
        "an existing key is left alone"
    );
    let listed = kv
        .list_by_creation(&format!("{prefix}/"))
        .await
        .expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].lease, lease);
    assert_eq!(listed[0].value, Bytes::from_static(b"mine"));
    kv.keep_lease_alive(lease).await.expect("keep alive");
    kv.revoke_lease(lease).await.expect("revoke");
    wait_for(&mut rx, "the deletion by revocation", Option::is_none).await;
    assert_eq!(kv.get(&key).await.expect("get"), None);
    assert_eq!(
        kv.keep_lease_alive(lease).await,
        Err(KvError::LeaseNotFound { lease })
    );
    assert_eq!(
        kv.create_with_lease(&key, Bytes::from_static(b"late"), lease)
            .await,
        Err(KvError::LeaseNotFound { lease })
    );
    kv.revoke_lease(lease)
        .await
        .expect("revoking twice is fine");
}

/// A lease nobody renews ends after its TTL, and its keys with it; renewals keep another alive.
pub async fn an_unrenewed_lease_expires_and_its_keys_with_it(kv: Arc<dyn KvStore>, prefix: &str) {
    let ttl = Duration::from_secs(2);
    let lapsing = kv.grant_lease(ttl).await.expect("grant");
    let renewed = kv.grant_lease(ttl).await.expect("grant");
    let lapsing_key = format!("{prefix}/lapsing");
    let renewed_key = format!("{prefix}/renewed");
    for (key, lease) in [(&lapsing_key, lapsing), (&renewed_key, renewed)] {
        kv.create_with_lease(key, Bytes::from_static(b"v"), lease)
            .await
            .expect("create");
    }
    let mut rx = kv.watch(&lapsing_key).await.expect("watch");
    let deadline = tokio::time::Instant::now() + ttl + LEASE_EXPIRY_SLACK;
    while rx.borrow_and_update().is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the unrenewed lease outlived its TTL by {LEASE_EXPIRY_SLACK:?}"
        );
        kv.keep_lease_alive(renewed).await.expect("keep alive");
        let _ = tokio::time::timeout(ttl / 4, rx.changed()).await;
    }
    assert_eq!(
        kv.keep_lease_alive(lapsing).await,
        Err(KvError::LeaseNotFound { lease: lapsing })
    );
    assert!(
        kv.get(&renewed_key).await.expect("get").is_some(),
        "the renewed lease's key stays"
    );
    kv.revoke_lease(renewed).await.expect("revoke");
}

/// The guard of `key`: its create revision as listed, `None` when absent.
async fn guard_of(kv: &Arc<dyn KvStore>, prefix: &str, key: &str) -> Option<Guard> {
    kv.list_by_creation(prefix)
        .await
        .expect("list")
        .into_iter()
        .find(|k| k.key == key)
        .map(|k| Guard {
            key: k.key,
            create_revision: k.create_revision,
        })
}

/// `check_and_set_guarded` writes only while the guard key exists as created at the guard's
/// revision (not after it was deleted, nor once it was created again), and checks the version
/// too.
pub async fn check_and_set_guarded_needs_its_guard(kv: Arc<dyn KvStore>, prefix: &str) {
    let (key, guard_key) = (format!("{prefix}/k"), format!("{prefix}/guard"));
    let absent = Guard {
        key: guard_key.clone(),
        create_revision: 1,
    };
    let refused = kv
        .check_and_set_guarded(&key, 0, Bytes::from_static(b"a"), &absent)
        .await;
    assert_eq!(
        refused,
        Err(KvError::GuardMissing {
            key: key.clone(),
            guard: guard_key.clone()
        })
    );
    assert_eq!(kv.get(&key).await.expect("get"), None, "nothing written");
    kv.set(&guard_key, Bytes::from_static(b"term"))
        .await
        .expect("set");
    let guard = guard_of(&kv, prefix, &guard_key)
        .await
        .expect("guard listed");
    let version = kv
        .check_and_set_guarded(&key, 0, Bytes::from_static(b"a"), &guard)
        .await
        .expect("guarded write");
    assert_eq!(version, 1);
    assert_eq!(
        kv.check_and_set_guarded(&key, 0, Bytes::from_static(b"b"), &guard)
            .await,
        Err(KvError::VersionMismatch {
            key: key.clone(),
            expected: 0,
            actual: 1
        })
    );
    kv.delete(&guard_key).await.expect("delete");
    assert!(matches!(
        kv.check_and_set_guarded(&key, 1, Bytes::from_static(b"c"), &guard)
            .await,
        Err(KvError::GuardMissing { .. })
    ));
    // Created again: another term, another guard.
    kv.set(&guard_key, Bytes::from_static(b"next term"))
        .await
        .expect("set");
    assert!(matches!(
        kv.check_and_set_guarded(&key, 1, Bytes::from_static(b"c"), &guard)
            .await,
        Err(KvError::GuardMissing { .. })
    ));
    let stored = kv.get(&key).await.expect("get").expect("present");
    assert_eq!(
        (stored.value, stored.version),
        (Bytes::from_static(b"a"), 1)
    );
}

/// `get_version` reads each version of the key's current life; versions before a delete, or
/// never written, are `None`.
pub async fn earlier_versions_read_back(kv: Arc<dyn KvStore>, prefix: &str) {
    let key = format!("{prefix}/k");
    kv.set(&key, Bytes::from_static(b"old life"))
        .await
        .expect("set");
    kv.delete(&key).await.expect("delete");
    for value in ["v1", "v2", "v3"] {
        kv.set(&key, Bytes::from(value)).await.expect("set");
        kv.set(&format!("{prefix}/other"), Bytes::from(value))
            .await
            .expect("set");
    }
    for (version, value) in [(1, "v1"), (2, "v2"), (3, "v3")] {
        assert_eq!(
            kv.get_version(&key, version).await.expect("get_version"),
            Some(Bytes::from(value)),
            "version {version}"
        );
    }
    for missing in [0, 4, -1] {
        assert_eq!(
            kv.get_version(&key, missing).await.expect("get_version"),
            None,
            "version {missing}"
        );
    }
    assert_eq!(
        kv.get_version(&format!("{prefix}/never"), 1)
            .await
            .expect("get_version"),
        None
    );
}
