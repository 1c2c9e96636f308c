//! The etcd backend against a real etcd (the Debian `etcd-server` binary, started per test by
//! `m3-testkit` on free loopback ports).
//!
//! - the KV contract every backend passes ([`m3_cluster::kv::contract`]);
//! - leader election over etcd with real time and a short TTL, also against `etcdctl elect` in
//!   another process: etcd's Go election client, the one M3's aggregators campaign with;
//! - surviving an etcd restart: requests fail during the outage and succeed after, and a watch
//!   resumes and sees writes made after the restart;
//! - a clear, fast startup error when etcd is unreachable.
//!
//! Without `etcd` on `PATH` these tests fail and say how to install it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use m3_cluster::kv::etcd::{EtcdClusterConfig, EtcdConfig, EtcdKv};
use m3_cluster::kv::{KvError, KvStore, KvWatch, Versioned, contract};
use m3_cluster::{ElectionState, LeaderElection, keys};
use m3_testkit::{ChildProcess, EtcdProcess};

/// Short timeouts so outage tests stay quick, but not so short that an etcd slowed by a loaded
/// machine (fsyncs of a second and more while two test suites run) fails healthy requests.
fn config(endpoint: String) -> EtcdConfig {
    EtcdConfig {
        zone: keys::DEFAULT_ZONE.into(),
        env: keys::DEFAULT_ENVIRONMENT.into(),
        service: keys::M3AGGREGATOR.into(),
        etcd_clusters: vec![EtcdClusterConfig {
            zone: keys::DEFAULT_ZONE.into(),
            endpoints: vec![endpoint],
            dial_timeout: Some(Duration::from_secs(2)),
            ..EtcdClusterConfig::default()
        }],
        request_timeout: Some(Duration::from_secs(5)),
        ..EtcdConfig::default()
    }
}

/// Shows the client's logs (watch interruptions, resumptions) in a failing test's output.
fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("m3_cluster=debug")
        .with_test_writer()
        .try_init();
}

async fn connect(etcd: &EtcdProcess) -> EtcdKv {
    init_logs();
    EtcdKv::connect(&config(etcd.endpoint()))
        .await
        .expect("connect to the test etcd")
}

async fn wait_for(rx: &mut KvWatch, what: &str, pred: impl Fn(&Option<Versioned>) -> bool) {
    let waited = tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|v| pred(v)))
        .await
        .map(|r| r.is_ok());
    match waited {
        Ok(true) => {}
        Ok(false) => panic!("watch closed while waiting for {what}"),
        Err(_) => panic!(
            "watch did not deliver {what} within 10s; it holds {:?}",
            *rx.borrow()
        ),
    }
}

#[tokio::test]
async fn etcd_kv_passes_the_contract() {
    let etcd = EtcdProcess::start();
    let kv: Arc<dyn KvStore> = Arc::new(connect(&etcd).await);
    contract::run_all(kv, "_kv/contract").await;
}

#[tokio::test]
async fn keys_are_stored_verbatim_in_m3s_layout() {
    let etcd = EtcdProcess::start();
    let kv = connect(&etcd).await;
    let key = keys::placement_key(&m3_cluster::ServiceId::new(
        keys::M3AGGREGATOR,
        keys::DEFAULT_ENVIRONMENT,
        keys::DEFAULT_ZONE,
    ));
    kv.set(&key, Bytes::from_static(b"p")).await.unwrap();
    // A second, independent client reads the raw etcd key.
    let other = connect(&etcd).await;
    let got = other
        .get("/placement/default_env/m3aggregator")
        .await
        .unwrap();
    assert_eq!(got.map(|v| v.value), Some(Bytes::from_static(b"p")));
}

#[tokio::test]
async fn unreachable_etcd_fails_fast_with_a_clear_message() {
    let port = m3_testkit::free_port();
    let endpoint = format!("127.0.0.1:{port}");
    // Bounded by the dial timeout: a connect that hangs fails here, not by a stopwatch.
    let err = tokio::time::timeout(
        Duration::from_secs(60),
        EtcdKv::connect(&config(endpoint.clone())),
    )
    .await
    .expect("the connect gives up after its dial timeout")
    .expect_err("nothing listens there");
    let message = err.to_string();
    assert!(
        matches!(err, KvError::Backend { .. }),
        "unexpected error kind: {err:?}"
    );
    assert!(
        message.contains(&format!("cannot reach etcd at {endpoint} within 2s")),
        "message must name the endpoint and the dial timeout: {message}"
    );
}

#[tokio::test]
async fn survives_an_etcd_restart_and_the_watch_resumes() {
    let mut etcd = EtcdProcess::start();
    let kv = connect(&etcd).await;
    let key = "_kv/default_env/shardset/1/flush";
    kv.set(key, Bytes::from_static(b"before")).await.unwrap();
    let mut rx = kv.watch(key).await.unwrap();
    wait_for(&mut rx, "the current value", |v| {
        v.as_ref()
            .is_some_and(|v| v.value == "before" && v.version == 1)
    })
    .await;
    // A change seen through the watch proves its etcd stream is established before etcd stops.
    kv.set(key, Bytes::from_static(b"before")).await.unwrap();
    wait_for(&mut rx, "a change before the restart", |v| {
        v.as_ref().is_some_and(|v| v.version == 2)
    })
    .await;

    etcd.stop();
    let get = kv.get(key).await;
    assert!(
        matches!(get, Err(KvError::Backend { .. })),
        "a get during the outage must fail with a backend error, got {get:?}"
    );
    let set = kv.set(key, Bytes::from_static(b"lost")).await;
    assert!(
        matches!(set, Err(KvError::Backend { .. })),
        "a set during the outage must fail with a backend error, got {set:?}"
    );
    assert!(
        set.unwrap_err().to_string().contains(&etcd.endpoint()),
        "the error names the endpoint"
    );
    // An outage longer than a few request timeouts: every request keeps failing cleanly, and the
    // watch task keeps retrying in the background.
    let outage_end = Instant::now() + Duration::from_millis(2500);
    while Instant::now() < outage_end {
        let check = kv.check_and_set(key, 2, Bytes::from_static(b"lost")).await;
        assert!(
            matches!(check, Err(KvError::Backend { .. })),
            "requests during the outage must fail with a backend error, got {check:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        rx.borrow().as_ref().map(|v| v.version),
        Some(2),
        "the watch keeps the last value during the outage"
    );

    etcd.restart();
    // Callers retry; the same client must succeed again once etcd is back.
    let deadline = Instant::now() + Duration::from_secs(10);
    let current = loop {
        match kv.get(key).await {
            Ok(v) => break v,
            Err(e) if Instant::now() < deadline => {
                eprintln!("retrying after etcd restart: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("the client did not recover within 10s of the restart: {e}"),
        }
    };
    assert_eq!(
        current.map(|v| v.value),
        Some(Bytes::from_static(b"before")),
        "the data survives the restart"
    );
    let version = kv.set(key, Bytes::from_static(b"after")).await.unwrap();
    assert_eq!(version, 3);
    wait_for(&mut rx, "the write made after the restart", |v| {
        v.as_ref()
            .is_some_and(|v| v.value == "after" && v.version == 3)
    })
    .await;

    // The resumed watch keeps following: a delete and a new write.
    kv.delete(key).await.unwrap();
    wait_for(&mut rx, "the delete", Option::is_none).await;
    kv.set(key, Bytes::from_static(b"again")).await.unwrap();
    wait_for(&mut rx, "the write after the delete", |v| {
        v.as_ref()
            .is_some_and(|v| v.value == "again" && v.version == 1)
    })
    .await;
}

#[tokio::test]
async fn a_watch_opened_during_an_outage_fails_and_works_after() {
    let mut etcd = EtcdProcess::start();
    let kv = connect(&etcd).await;
    etcd.stop();
    let err = kv.watch("_kv/default_env/k").await.unwrap_err();
    assert!(matches!(err, KvError::Backend { .. }), "{err:?}");
    etcd.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut rx = loop {
        match kv.watch("_kv/default_env/k").await {
            Ok(rx) => break rx,
            Err(e) if Instant::now() < deadline => {
                eprintln!("retrying: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("watch did not work within 10s of the restart: {e}"),
        }
    };
    assert_eq!(*rx.borrow_and_update(), None);
    kv.set("_kv/default_env/k", Bytes::from_static(b"v"))
        .await
        .unwrap();
    wait_for(&mut rx, "the first write", Option::is_some).await;
}

/// Polls one of etcd's metrics until it has `want`.
async fn wait_for_metric(etcd: &EtcdProcess, name: &str, want: f64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = etcd.metric(name);
        if got == Some(want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "etcd metric {name} is {got:?}, expected {want} within 10s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_etcd_watch_ends_when_every_receiver_is_dropped() {
    const WATCHERS: &str = "etcd_debugging_mvcc_watcher_total";
    let etcd = EtcdProcess::start();
    let kv = connect(&etcd).await;
    wait_for_metric(&etcd, WATCHERS, 0.0).await;
    let rx = kv.watch("_kv/default_env/a").await.unwrap();
    let clone = rx.clone();
    let other = kv.watch("_kv/default_env/b").await.unwrap();
    wait_for_metric(&etcd, WATCHERS, 2.0).await;
    drop(rx);
    // One receiver of the first watch is left: it keeps watching.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(etcd.metric(WATCHERS), Some(2.0));
    drop(clone);
    wait_for_metric(&etcd, WATCHERS, 1.0).await;
    drop(other);
    wait_for_metric(&etcd, WATCHERS, 0.0).await;
}

// Elections over etcd, with real time: the properties the in-memory tests check with paused time.
// No assertion here is on wall time (how fast a hand-over happens is checked with paused time in
// `m3_cluster::election`); waits are generous so a loaded machine does not fail them.

const TTL: Duration = Duration::from_secs(3);

fn election_key(shard_set: u32) -> String {
    keys::election_key(keys::DEFAULT_ENVIRONMENT, keys::M3AGGREGATOR, shard_set)
}

fn candidates(kv: &Arc<dyn KvStore>, key: &str, n: usize) -> Vec<LeaderElection> {
    (0..n)
        .map(|i| LeaderElection::new(kv.clone(), key, format!("agg{i}"), TTL))
        .collect()
}

fn leaders(elections: &[LeaderElection]) -> Vec<usize> {
    elections
        .iter()
        .enumerate()
        .filter(|(_, e)| *e.state().borrow() == ElectionState::Leader)
        .map(|(i, _)| i)
        .collect()
}

/// Waits until exactly one of `elections` leads and returns its index.
async fn one_leader(elections: &[LeaderElection], within: Duration) -> usize {
    let deadline = Instant::now() + within;
    loop {
        let lead = leaders(elections);
        if lead.len() == 1 {
            return lead[0];
        }
        assert!(lead.len() <= 1, "two members lead at once: {lead:?}");
        if Instant::now() >= deadline {
            panic!("no leader within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn election_over_etcd_one_leader_resign_and_failover() {
    let etcd = EtcdProcess::start();
    // Each member has its own client, as separate processes would.
    let key = election_key(1);
    let mut elections = Vec::new();
    for i in 0..3 {
        let kv: Arc<dyn KvStore> = Arc::new(connect(&etcd).await);
        elections.push(LeaderElection::new(
            kv,
            key.as_str(),
            format!("agg{i}"),
            TTL,
        ));
    }
    for e in &elections {
        e.campaign();
    }

    // One leader of three, stable across several TTLs, and everybody agrees on it.
    let first = one_leader(&elections, Duration::from_secs(5)).await;
    tokio::time::sleep(TTL * 2).await;
    assert_eq!(
        leaders(&elections),
        vec![first],
        "leadership must be stable"
    );
    for e in &elections {
        assert_eq!(e.leader().await.unwrap(), Some(format!("agg{first}")));
    }

    // Resign hands over to another member.
    elections[first].resign().await.unwrap();
    let second = one_leader(&elections, TTL * 5).await;
    assert_ne!(second, first, "the resigned member is held back");

    // A leader that stops renewing (as in a crash) keeps its lease until it runs out, then is
    // replaced by one of the others.
    let dropped = elections.remove(second);
    let dropped_value = format!("agg{second}");
    drop(dropped);
    let observer = &elections[0];
    assert_eq!(
        observer.leader().await.unwrap().as_deref(),
        Some(dropped_value.as_str()),
        "the dropped leader's lease is still held: nobody may take it over before it runs out"
    );
    let next = one_leader(&elections, TTL * 10).await;
    let next_value = elections[next].leader().await.unwrap();
    assert!(
        next_value.is_some() && next_value.as_deref() != Some(dropped_value.as_str()),
        "the new leader is one of the remaining members, got {next_value:?}"
    );
    for e in &elections {
        e.close().await;
    }
}

#[tokio::test]
async fn elections_of_different_shard_sets_are_independent() {
    let etcd = EtcdProcess::start();
    let kv: Arc<dyn KvStore> = Arc::new(connect(&etcd).await);
    let one = candidates(&kv, &election_key(1), 2);
    let two = candidates(&kv, &election_key(2), 2);
    for e in one.iter().chain(&two) {
        e.campaign();
    }
    one_leader(&one, Duration::from_secs(5)).await;
    one_leader(&two, Duration::from_secs(5)).await;
}

/// Waits until the output of `process` contains `text`, failing with that output after 20s.
async fn wait_for_output(process: &ChildProcess, text: &str) {
    let seen = m3_testkit::wait_for(Duration::from_secs(20), Duration::from_millis(50), || {
        let log = process.log();
        async move { log.contains(text).then_some(()) }
    })
    .await;
    assert!(seen.is_some(), "no {text:?} from {process}");
}

/// `etcdctl elect <key> <value>`: a candidate of another process, campaigning with etcd's Go
/// election client (`concurrency.Election`), the one M3's aggregators use. It prints its key and
/// value once elected and resigns on SIGTERM.
fn go_candidate(etcd: &EtcdProcess, name: &str, key: &str, value: &str) -> ChildProcess {
    let mut command = etcd.etcdctl();
    command.arg("elect").arg(key).arg(value);
    ChildProcess::spawn(name, command)
}

/// Two processes share one election: `etcdctl`, campaigning as an M3 aggregator does, and this
/// test's member. Whichever stands first leads, the other waits for it, and each sees the
/// other's value as leader: m3-rs and M3 aggregators of one shard set exclude each other.
#[tokio::test]
async fn a_member_and_an_etcd_go_client_in_another_process_exclude_each_other() {
    let etcd = EtcdProcess::start();
    let key = election_key(1);

    // The Go client leads first.
    let mut go_leader = go_candidate(&etcd, "etcdctl-elect-first", &key, "m3-go-first");
    wait_for_output(&go_leader, "m3-go-first").await;
    let go_key = go_leader
        .log()
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned();
    assert!(
        go_key.starts_with(&format!("{key}/")),
        "etcd's recipe stands under the election key: {go_key:?}"
    );
    let kv: Arc<dyn KvStore> = Arc::new(connect(&etcd).await);
    let member = LeaderElection::new(kv.clone(), key.as_str(), "10.0.0.1:6000", TTL);
    let mut state = member.campaign();
    let until = Instant::now() + TTL * 3;
    while Instant::now() < until {
        assert_ne!(
            *state.borrow_and_update(),
            ElectionState::Leader,
            "leads while the Go client does"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        member.leader().await.unwrap().as_deref(),
        Some("m3-go-first")
    );
    let queue = kv
        .list_by_creation(&keys::election_queue_prefix(&key))
        .await
        .unwrap();
    assert_eq!(queue.len(), 2, "both stand: {queue:?}");
    assert_eq!(queue[0].key, go_key);

    // It resigns: the member, next in the queue, leads.
    go_leader.terminate();
    assert!(
        go_leader.wait_exit(Duration::from_secs(10)).is_some(),
        "{go_leader}"
    );
    tokio::time::timeout(
        Duration::from_secs(10),
        state.wait_for(|s| *s == ElectionState::Leader),
    )
    .await
    .expect("the member leads once the Go client resigned")
    .unwrap();

    // Now a Go observer sees the member as leader, and a second Go candidate waits.
    let mut observe = etcd.etcdctl();
    observe.arg("elect").arg("--listen").arg(&key);
    let observer = ChildProcess::spawn("etcdctl-elect-listen", observe);
    wait_for_output(&observer, "10.0.0.1:6000").await;
    let go_second = go_candidate(&etcd, "etcdctl-elect-second", &key, "m3-go-second");
    tokio::time::sleep(TTL * 2).await;
    assert!(
        !go_second.log().contains("m3-go-second"),
        "the Go client was elected while the member leads: {go_second}"
    );
    assert!(member.leads());

    // The member closes: the Go client leads, and the observer sees it.
    member.close().await;
    wait_for_output(&go_second, "m3-go-second").await;
    wait_for_output(&observer, "m3-go-second").await;
}
