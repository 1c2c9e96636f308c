//! Leader failover between the two replicas of one shard set loses no window and emits none
//! twice.
//!
//! The cluster is the one `m3 local` runs, built in-process: two [`AggregatorInstance`]s in one
//! mirrored shard set (RF 2) sharing a [`MemoryKv`], the `aggregated_metrics` topic with a
//! SHARED consumer service, and in place of the coordinator an m3msg [`ConsumerServer`] that
//! records every `AggregatedMetric` it receives and acks it. A writer sends timed gauges over
//! rawtcp to *both* replicas, as the coordinator's aggregator client does. Each sample's value
//! is its own timestamp in seconds, so the `Last` of every window is known from what was sent.
//! With them goes a counter of 1 per sample, aggregated as `Sum`: a window emitted by a replica
//! that missed some of its samples shows as a smaller sum, which `Last` would hide.
//!
//! ```text
//!  writer ──rawtcp──▶ leader   ── emits w1 w2 w3 ─┐ persists flush times
//!         └─rawtcp──▶ follower ── discards w1..w3 │ (KV)
//!                          ▼  failover            │
//!                     new leader ── emits w4 w5 … ┴──▶ fake coordinator: every window once
//! ```
//!
//! Two ways to fail over, one test each:
//!
//! - [`resigned_leader_hands_over_without_gap_or_duplicate`]: `resign()` (what `POST /resign`
//!   calls); the follower takes over at once.
//! - [`crashed_leader_hands_over_without_gap_or_duplicate`]: the leader's Tokio runtime is
//!   dropped, so every task of that aggregator (flush loop, election, producer, rawtcp server)
//!   stops where it stands: no final flush, no resignation, sockets closed. The follower takes
//!   over once the crashed leader's election lease runs out, one election TTL later (checked:
//!   right after the crash the election still names the crashed leader, so the "crash" did not
//!   resign).
//!
//! Each aggregator therefore runs on a runtime of its own; the test, the writer and the fake
//! coordinator run on the test's runtime.
//!
//! What a crash can still lose, and why the crash test avoids it: the leader persists its flush
//! times when it hands its output to the m3msg producer, not when the coordinator acks that
//! output. Whatever is still in the producer's buffers when the leader dies is gone, and the new
//! leader resumes after it. The crash test kills the leader between two window closes, once all
//! it has emitted has been received, so that it tests the hand-over of flush times rather than
//! that gap.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use m3_aggregator::flush_manager::FlushStatus;
use m3_aggregator::instance::{AggregatorInstance, InstanceOptions};
use m3_aggregator::metadata::build;
use m3_aggregator::metrics::WindowDiscard;
use m3_aggregator::rawtcp::unix_nanos_now;
use m3_aggregator::{Aggregator, AggregatorOptions, RejectReason, serve_rawtcp};
use m3_cluster::keys::{self, ServiceId};
use m3_cluster::placement::{
    Instance, PlacementFormat, PlacementStore, build_mirrored, build_non_sharded,
};
use m3_cluster::topic::TopicStore;
use m3_cluster::{
    ConsumerService, ConsumptionType, ElectionState, KvStore, LeaderElection, MemoryKv,
};
use m3_metric::{AggregationId, AggregationType, MetricType, StoragePolicy};
use m3_msg::{ConsumerConfig, ConsumerServer, Decision, handler_fn};
use m3_proto::framing::{DEFAULT_RAWTCP_MAX_MESSAGE_SIZE, put_rawtcp_frame};
use m3_proto::metricpb::{
    AggregatedMetric, MetricWithMetadatas, TimedMetric, TimedMetricWithMetadatas,
    metric_with_metadatas::Type,
};
use parking_lot::Mutex;
use prometheus_client::registry::Registry;
use prost::Message;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const SECOND: i64 = 1_000_000_000;
const NUM_SHARDS: u32 = 8;
/// The storage policy's resolution; timed windows are flushed `RESOLUTION + BUFFER_PAST` after
/// they end.
const RESOLUTION: Duration = Duration::from_secs(1);
const BUFFER_PAST: Duration = Duration::from_secs(1);
const CHECK_EVERY: Duration = Duration::from_millis(100);
const ELECTION_TTL: Duration = Duration::from_secs(3);
const WRITE_EVERY: Duration = Duration::from_millis(25);
const SERIES: [&str; 3] = ["failover.gauge.a", "failover.gauge.b", "failover.gauge.c"];
/// The counter written with every round of gauges, 1 per sample, aggregated as `Sum`.
const COUNTER: &str = "failover.counter";
/// Windows per series the first leader emits before it is failed over.
const WINDOWS_BEFORE_FAILOVER: usize = 3;
/// Windows per series the new leader emits before writing stops.
const WINDOWS_AFTER_FAILOVER: usize = 3;
/// Bound of every wait; each test takes about 9 s.
const PATIENCE: Duration = Duration::from_secs(20);

fn policy() -> StoragePolicy {
    StoragePolicy::new(RESOLUTION, Duration::from_secs(3600))
}

fn resolution_nanos() -> i64 {
    i64::try_from(RESOLUTION.as_nanos()).expect("resolution fits in i64")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failover {
    Resign,
    Crash,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resigned_leader_hands_over_without_gap_or_duplicate() {
    run_failover(Failover::Resign).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashed_leader_hands_over_without_gap_or_duplicate() {
    run_failover(Failover::Crash).await;
}

/// The two failover tests run one at a time: on a loaded 2-core machine two clusters of
/// flushing aggregators at once starve each other's timers.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn run_failover(failover: Failover) {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::start().await;
    let (old, new) = cluster.wait_for_roles().await;
    let writer = Writer::start(&cluster.nodes).await;

    cluster
        .coordinator
        .wait_for_windows(WINDOWS_BEFORE_FAILOVER, "the first leader's windows")
        .await;
    assert_eq!(
        cluster.nodes[new].aggregator.metrics().outputs_flushed(),
        0,
        "the follower {} emitted output while {} led",
        cluster.nodes[new].name,
        cluster.nodes[old].name
    );
    // Outputs the crashed leader emitted between the quiet-moment check and its death.
    let mut raced_flush = None;
    match failover {
        Failover::Resign => cluster.nodes[old]
            .instance()
            .resign()
            .await
            .expect("the leader resigns"),
        Failover::Crash => {
            let delivered = cluster.wait_until_nothing_in_flight(old).await;
            cluster.nodes[old].crash().await;
            let emitted = cluster.nodes[old].aggregator.metrics().outputs_flushed();
            if emitted != delivered {
                raced_flush = Some(emitted - delivered);
            }
        }
    }
    let failover_at = unix_nanos_now();
    if failover == Failover::Crash {
        // A crash leaves the lease to run out: the record still names the crashed leader (a
        // resignation would have cleared it).
        let observer = LeaderElection::new(
            Arc::clone(&cluster.kv),
            keys::election_key(keys::DEFAULT_ENVIRONMENT, "m3aggregator", 1),
            "observer",
            ELECTION_TTL,
        );
        let holder = observer.leader().await.expect("read the election key");
        assert_eq!(
            holder.as_deref(),
            Some(cluster.nodes[old].name.as_str()),
            "the crashed leader's lease must still be held, not resigned"
        );
    }

    let taking_over = &cluster.nodes[new];
    wait_until(
        &format!("{} to become leader after the failover", taking_over.name),
        || taking_over.status().election_state == ElectionState::Leader,
    )
    .await;
    let wanted = (WINDOWS_AFTER_FAILOVER * SERIES.len()) as u64;
    wait_until(
        &format!(
            "{} to emit {WINDOWS_AFTER_FAILOVER} windows per series",
            taking_over.name
        ),
        || taking_over.aggregator.metrics().outputs_flushed() >= wanted,
    )
    .await;

    let log = writer.stop().await;
    let expected_failures: Vec<&str> = match failover {
        Failover::Resign => Vec::new(),
        Failover::Crash => vec![cluster.nodes[old].name.as_str()],
    };
    assert!(
        log.failed
            .keys()
            .all(|name| expected_failures.contains(&name.as_str())),
        "writes failed to a running aggregator: {:?}",
        log.failed
    );
    // Every sample sent to a running aggregator has been aggregated: nothing rejected, nothing
    // still in a socket buffer.
    for node in cluster.nodes.iter().filter(|n| n.is_running()) {
        let sent = log.sent_to.get(&node.name).copied().unwrap_or(0);
        wait_until(
            &format!("{} to take all {sent} samples sent to it", node.name),
            || node.aggregator.metrics().added(MetricType::Gauge) >= sent,
        )
        .await;
        let added = node.aggregator.metrics().added(MetricType::Gauge);
        assert_eq!(
            added, sent,
            "{} aggregated samples it was never sent",
            node.name
        );
        let rejected: Vec<_> = RejectReason::ALL
            .into_iter()
            .map(|r| (r, node.aggregator.metrics().rejected(r)))
            .filter(|(_, n)| *n > 0)
            .collect();
        assert!(
            rejected.is_empty(),
            "{} rejected samples: {rejected:?}",
            node.name
        );
    }

    // Let the last window end, then stop: the leader's final flush emits the windows still
    // inside the past buffer.
    let last_end = log.last_window_end().expect("samples were written");
    let until_end = u64::try_from(last_end - unix_nanos_now()).unwrap_or(0);
    tokio::time::sleep(Duration::from_nanos(until_end) + CHECK_EVERY).await;

    let status = cluster.nodes[new].status();
    assert_eq!(
        status,
        FlushStatus {
            election_state: ElectionState::Leader,
            can_lead: true
        },
        "{} took over and must still report itself leader",
        cluster.nodes[new].name
    );
    if failover == Failover::Resign {
        let old_node = &cluster.nodes[old];
        wait_until(
            &format!("{} to follow after resigning", old_node.name),
            || old_node.status().election_state == ElectionState::Follower,
        )
        .await;
    }
    cluster.shutdown(old, new).await;
    let received = cluster.coordinator.stop().await;

    let problems = check_windows(&log, &received);
    let hint = match raced_flush {
        Some(n) => format!(
            "\n(the crash raced a flush: the old leader emitted {n} outputs after everything it \
             had emitted was seen delivered; output lost with it is the known limitation in the \
             module docs, not a hand-over bug)"
        ),
        None => String::new(),
    };
    assert!(
        problems.is_empty(),
        "after a {failover:?} failover at {}, the coordinator's output is wrong:\n  {}{hint}",
        seconds(failover_at),
        problems.join("\n  ")
    );
    let old_emitted = cluster.nodes[old].aggregator.metrics().outputs_flushed();
    let new_emitted = cluster.nodes[new].aggregator.metrics().outputs_flushed();
    assert!(
        old_emitted > 0 && new_emitted > 0,
        "both replicas must have emitted part of the run ({} emitted {old_emitted}, {} emitted \
         {new_emitted})",
        cluster.nodes[old].name,
        cluster.nodes[new].name,
    );
    assert_eq!(
        old_emitted + new_emitted,
        received.len() as u64,
        "every output emitted by either replica reached the coordinator exactly once \
         ({} emitted {old_emitted}, {} emitted {new_emitted}, {} received)",
        cluster.nodes[old].name,
        cluster.nodes[new].name,
        received.len()
    );
}

/// A coordinator that stops acking (its store fails) leaves the leader's flush times where
/// they are; the follower would hold every window meanwhile. After `maxBufferSize` it drops
/// the windows older than that, every `forcedFlushWindowSize`, and stops once the flush times
/// move again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_drops_old_windows_while_the_leaders_flush_times_do_not_move() {
    const MAX_BUFFER: Duration = Duration::from_secs(3);
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::start_with(|options| {
        options.max_buffer_size = MAX_BUFFER;
        options.forced_flush_window_size = Duration::from_millis(200);
        options.ack_wait = Duration::from_millis(200);
    })
    .await;
    let (old, new) = cluster.wait_for_roles().await;
    let writer = Writer::start(&cluster.nodes).await;
    cluster
        .coordinator
        .wait_for_windows(2, "the leader, acked")
        .await;
    let follower = &cluster.nodes[new];
    let forced = || {
        follower
            .aggregator
            .metrics()
            .windows_discarded(WindowDiscard::FollowerForced)
    };
    assert_eq!(forced(), 0, "nothing forced while the flush times move");

    cluster
        .coordinator
        .acking
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let stuck_at = tokio::time::Instant::now();
    wait_until(
        &format!(
            "{} to drop windows older than {MAX_BUFFER:?}",
            follower.name
        ),
        || forced() > 0,
    )
    .await;
    assert!(
        stuck_at.elapsed() >= MAX_BUFFER - Duration::from_millis(500),
        "forced mode began {:?} after the acks stopped, before maxBufferSize",
        stuck_at.elapsed()
    );
    // It keeps dropping as windows keep growing older.
    let first = forced();
    wait_until("a later forced flush", || forced() > first).await;

    // Acks resume: the leader persists its flush times, which the follower follows again.
    cluster
        .coordinator
        .acking
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let follower_discarded = || {
        follower
            .aggregator
            .metrics()
            .windows_discarded(WindowDiscard::Follower)
    };
    let before = follower_discarded();
    wait_until("the follower to discard by flush times again", || {
        follower_discarded() > before
    })
    .await;
    let settled = forced();
    tokio::time::sleep(MAX_BUFFER / 2).await;
    assert_eq!(
        forced(),
        settled,
        "forced flushes go on although the flush times move again"
    );
    assert_eq!(
        cluster.nodes[old]
            .aggregator
            .metrics()
            .windows_discarded(WindowDiscard::FollowerForced),
        0,
        "the leader never force-flushes"
    );
    writer.stop().await;
    cluster.shutdown(old, new).await;
    cluster.coordinator.stop().await;
}

/// An output topic with no consumer service (the coordinators not registered yet): the
/// windows wait for one for `maxBufferSize` past their end, then are dropped and counted, so
/// memory stays bounded; once a consumer service registers, the output flows and nothing more
/// is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windows_with_no_consumer_wait_max_buffer_size_then_go() {
    const MAX_BUFFER: Duration = Duration::from_secs(3);
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::start_without_consumer(|options| {
        options.max_buffer_size = MAX_BUFFER;
    })
    .await;
    let (old, new) = cluster.wait_for_roles().await;
    let writer = Writer::start(&cluster.nodes).await;
    let started = tokio::time::Instant::now();
    let dropped = |node: usize| {
        cluster.nodes[node]
            .aggregator
            .metrics()
            .windows_discarded(WindowDiscard::NoOutput)
    };
    wait_until("both aggregators to drop windows with no consumer", || {
        dropped(old) > 0 && dropped(new) > 0
    })
    .await;
    assert!(
        started.elapsed() >= MAX_BUFFER,
        "windows dropped {:?} after the first write, before maxBufferSize",
        started.elapsed()
    );
    assert_eq!(
        cluster.coordinator.received_count(),
        0,
        "nothing to send to"
    );
    // What is held is bounded by maxBufferSize: four series, a window a second, kept up to
    // maxBufferSize + the past buffer + a resolution after their start.
    tokio::time::sleep(MAX_BUFFER).await;
    let per_series = (MAX_BUFFER + BUFFER_PAST + RESOLUTION).as_secs() as usize + 2;
    for node in [old, new] {
        let windows = cluster.nodes[node].aggregator.stats().windows;
        assert!(
            windows <= (SERIES.len() + 1) * per_series,
            "{} holds {windows} windows",
            cluster.nodes[node].name
        );
    }

    cluster.add_consumer_service().await;
    cluster
        .coordinator
        .wait_for_windows(2, "the leader, once a consumer service registered")
        .await;
    // The follower sees the consumer service by the same watch, within a flush or two.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let settled = (dropped(old), dropped(new));
    tokio::time::sleep(MAX_BUFFER + Duration::from_secs(1)).await;
    assert_eq!(
        (dropped(old), dropped(new)),
        settled,
        "windows dropped although the output has a consumer again"
    );
    writer.stop().await;
    cluster.shutdown(old, new).await;
    cluster.coordinator.stop().await;
}

/// `placement/replace` of the leader under load: its shards are cut off at the transition
/// time T and the replacement's, in the same shard set and election, cut over at T. The
/// leaving leader keeps leading until its flush times reach T, then stops campaigning; the
/// replacement does not campaign before T. Every window is emitted once, by whoever leads:
/// before this, the leaving leader kept the lease, dropped every window after T as cut off
/// and marked it flushed, so nobody emitted it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_leader_hands_over_at_the_transition_without_gap_or_duplicate() {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::start().await;
    let (old, staying) = cluster.wait_for_roles().await;
    // The replacement runs from the start but owns nothing until the placement names it; the
    // writer sends to it all along, as the coordinator would from the cutover on.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind rawtcp");
    let endpoint = listener.local_addr().expect("rawtcp address").to_string();
    let replacement_name = "aggregator-c";
    cluster
        .nodes
        .push(Node::start(replacement_name, listener, Arc::clone(&cluster.kv), |_| {}).await);
    let new = cluster.nodes.len() - 1;
    let writer = Writer::start(&cluster.nodes).await;
    cluster
        .coordinator
        .wait_for_windows(WINDOWS_BEFORE_FAILOVER, "the first leader's windows")
        .await;

    let store = PlacementStore::new(
        Arc::clone(&cluster.kv),
        keys::placement_key(&ServiceId::new(
            "m3aggregator",
            keys::DEFAULT_ENVIRONMENT,
            keys::DEFAULT_ZONE,
        )),
        PlacementFormat::Snapshots,
    );
    let current = store
        .get()
        .await
        .expect("read the placement")
        .expect("a placement");
    let leaving = cluster.nodes[old].name.clone();
    let group = current
        .value
        .instance(&leaving)
        .expect("the leader is placed")
        .isolation_group
        .clone();
    let timing = m3_cluster::placement::Timing::new(unix_nanos_now(), 0, resolution_nanos());
    let transition = timing.transition_nanos;
    let next = current
        .value
        .replace_instances(
            &[leaving.as_str()],
            vec![
                Instance::new(replacement_name)
                    .with_endpoint(endpoint)
                    .with_isolation_group(group)
                    .with_zone(keys::DEFAULT_ZONE)
                    .with_weight(100),
            ],
            &timing,
        )
        .expect("replace the leader");
    store
        .check_and_set(&next, current.version)
        .await
        .expect("store the placement");
    println!(
        "replaced {leaving} with {replacement_name} at {}",
        seconds(transition)
    );

    // The leaving leader stops campaigning once its windows up to T are flushed.
    let leaving_node = &cluster.nodes[old];
    wait_until(&format!("{leaving} to stop campaigning"), || {
        leaving_node.status().election_state == ElectionState::Unknown
    })
    .await;
    let leader = |cluster: &Cluster| {
        [staying, new]
            .into_iter()
            .find(|i| cluster.nodes[*i].status().election_state == ElectionState::Leader)
    };
    wait_until("the staying member or the replacement to lead", || {
        leader(&cluster).is_some()
    })
    .await;
    let taking_over = leader(&cluster).expect("a leader");
    let wanted = (WINDOWS_AFTER_FAILOVER * SERIES.len()) as u64;
    wait_until(
        &format!(
            "{} to emit {WINDOWS_AFTER_FAILOVER} windows per series",
            cluster.nodes[taking_over].name
        ),
        || {
            cluster.nodes[taking_over]
                .aggregator
                .metrics()
                .outputs_flushed()
                >= wanted
        },
    )
    .await;
    let log = writer.stop().await;
    assert!(log.failed.is_empty(), "writes failed: {:?}", log.failed);
    let last_end = log.last_window_end().expect("samples were written");
    let until_end = u64::try_from(last_end - unix_nanos_now()).unwrap_or(0);
    tokio::time::sleep(Duration::from_nanos(until_end) + CHECK_EVERY).await;

    // Followers first, the leader last: its final flush emits what is still open.
    let others: Vec<usize> = (0..cluster.nodes.len())
        .filter(|i| *i != taking_over)
        .collect();
    for i in others {
        cluster.nodes[i].shutdown().await;
    }
    cluster.nodes[taking_over].shutdown().await;
    let received = std::mem::replace(&mut cluster.coordinator, FakeCoordinator::start().await)
        .stop()
        .await;
    let problems = check_windows(&log, &received);
    assert!(
        problems.is_empty(),
        "after replacing the leader at {}, the coordinator's output is wrong:\n  {}",
        seconds(transition),
        problems.join("\n  ")
    );
    let after_transition = received
        .iter()
        .filter(|r| r.time_nanos > transition)
        .count();
    assert!(
        after_transition > 0,
        "no window after the transition was emitted"
    );
}

/// Compares what the coordinator received with what the writer sent; one line per problem.
fn check_windows(log: &WriteLog, received: &[Received]) -> Vec<String> {
    let mut problems = Vec::new();
    let mut by_series: BTreeMap<&[u8], BTreeMap<i64, Vec<f64>>> = BTreeMap::new();
    for r in received {
        let want_type = if r.id == COUNTER.as_bytes() {
            MetricType::Counter
        } else {
            MetricType::Gauge
        };
        if r.metric_type != want_type.to_proto() || r.policy != Some(policy()) {
            problems.push(format!(
                "{}: window ending {} has type {} and policy {:?}, want a {want_type:?} at {}",
                String::from_utf8_lossy(&r.id),
                seconds(r.time_nanos),
                r.metric_type,
                r.policy,
                policy()
            ));
        }
        by_series
            .entry(&r.id)
            .or_default()
            .entry(r.time_nanos)
            .or_default()
            .push(r.value);
    }
    let expected = SERIES
        .iter()
        .map(|series| {
            let samples = log.sent.get(series).map_or(&[][..], Vec::as_slice);
            (*series, "Last", expected_windows(samples))
        })
        .chain(std::iter::once((
            COUNTER,
            "Sum",
            expected_sums(log.sent.get(COUNTER).map_or(&[][..], Vec::as_slice)),
        )));
    for (series, aggregation, want) in expected {
        let got = by_series.remove(series.as_bytes()).unwrap_or_default();
        if want.is_empty() {
            problems.push(format!("{series}: nothing was written"));
        }
        for (end, value) in &want {
            match got.get(end).map(Vec::as_slice) {
                None => problems.push(format!(
                    "{series}: window ending {} is missing",
                    seconds(*end)
                )),
                Some([v]) if v == value => {}
                Some([v]) => problems.push(format!(
                    "{series}: window ending {} has {aggregation} {v}, want {value}",
                    seconds(*end)
                )),
                Some(values) => problems.push(format!(
                    "{series}: window ending {} was emitted {} times, values {values:?}",
                    seconds(*end),
                    values.len()
                )),
            }
        }
        for (end, values) in got.iter().filter(|(end, _)| !want.contains_key(end)) {
            problems.push(format!(
                "{series}: window ending {} holds no sample but was emitted with {values:?}",
                seconds(*end)
            ));
        }
    }
    for (id, windows) in by_series {
        problems.push(format!(
            "{}: never written, yet {} windows were emitted",
            String::from_utf8_lossy(id),
            windows.len()
        ));
    }
    problems
}

/// Window end → the sum of the values of the samples in that window (`Sum`).
fn expected_sums(samples: &[(i64, f64)]) -> BTreeMap<i64, f64> {
    let resolution = resolution_nanos();
    let mut sums: BTreeMap<i64, f64> = BTreeMap::new();
    for &(t, v) in samples {
        *sums
            .entry(t - t.rem_euclid(resolution) + resolution)
            .or_default() += v;
    }
    sums
}

/// Window end → the value of the latest sample in that window (`Last`).
fn expected_windows(samples: &[(i64, f64)]) -> BTreeMap<i64, f64> {
    let resolution = resolution_nanos();
    let mut latest: BTreeMap<i64, (i64, f64)> = BTreeMap::new();
    for &(t, v) in samples {
        let end = t - t.rem_euclid(resolution) + resolution;
        let slot = latest.entry(end).or_insert((t, v));
        if t > slot.0 {
            *slot = (t, v);
        }
    }
    latest.into_iter().map(|(end, (_, v))| (end, v)).collect()
}

/// Unix nanoseconds as seconds with millisecond precision, for messages.
fn seconds(nanos: i64) -> String {
    format!(
        "{}.{:03}s",
        nanos.div_euclid(SECOND),
        nanos.rem_euclid(SECOND) / 1_000_000
    )
}

/// Polls `done` every 10 ms until it holds; panics after [`PATIENCE`].
async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {PATIENCE:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The placements, the topic, the fake coordinator and two aggregators.
struct Cluster {
    kv: Arc<dyn KvStore>,
    coordinator: FakeCoordinator,
    nodes: Vec<Node>,
}

impl Cluster {
    /// Initialises the KV as `m3 local` does (placements cut over at 0, topic, SHARED consumer
    /// service) and starts both aggregators.
    async fn start() -> Cluster {
        Cluster::start_with(|_| {}).await
    }

    /// As [`Cluster::start`], with `tweak` applied to each aggregator's instance options.
    async fn start_with(tweak: fn(&mut InstanceOptions)) -> Cluster {
        let cluster = Cluster::start_without_consumer(tweak).await;
        cluster.add_consumer_service().await;
        cluster
    }

    /// Registers the coordinator as the output topic's consumer service.
    async fn add_consumer_service(&self) {
        let env = keys::DEFAULT_ENVIRONMENT;
        TopicStore::new(Arc::clone(&self.kv), env)
            .add_consumer_service(
                "aggregated_metrics",
                ConsumerService::new(
                    ServiceId::new("m3coordinator", env, keys::DEFAULT_ZONE),
                    ConsumptionType::Shared,
                ),
            )
            .await
            .expect("consumer service");
    }

    /// As [`Cluster::start_with`], but the output topic has no consumer service yet.
    async fn start_without_consumer(tweak: fn(&mut InstanceOptions)) -> Cluster {
        let kv: Arc<dyn KvStore> = Arc::new(MemoryKv::new());
        let coordinator = FakeCoordinator::start().await;
        let names = ["aggregator-a", "aggregator-b"];
        let listeners: Vec<std::net::TcpListener> = names
            .iter()
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind rawtcp"))
            .collect();

        let env = keys::DEFAULT_ENVIRONMENT;
        let zone = keys::DEFAULT_ZONE;
        let instances: Vec<Instance> = names
            .iter()
            .zip(&listeners)
            .zip(["availability-zone-a", "availability-zone-b"])
            .map(|((name, listener), group)| {
                let endpoint = listener.local_addr().expect("rawtcp address").to_string();
                Instance::new(*name)
                    .with_endpoint(endpoint)
                    .with_isolation_group(group)
                    .with_zone(zone)
                    .with_weight(100)
            })
            .collect();
        let placement = build_mirrored(instances, NUM_SHARDS, 2, 0).expect("mirrored placement");
        let placement_key = keys::placement_key(&ServiceId::new("m3aggregator", env, zone));
        PlacementStore::new(Arc::clone(&kv), placement_key, PlacementFormat::Snapshots)
            .init(&placement)
            .await
            .expect("aggregator placement");
        let topics = TopicStore::new(Arc::clone(&kv), env);
        topics
            .init("aggregated_metrics", NUM_SHARDS)
            .await
            .expect("topic");
        let coordinator_placement = build_non_sharded(vec![
            Instance::new("m3coordinator01")
                .with_endpoint(coordinator.endpoint.to_string())
                .with_zone(zone),
        ])
        .expect("coordinator placement");
        let coordinator_key = keys::placement_key(&ServiceId::new("m3coordinator", env, zone));
        PlacementStore::new(Arc::clone(&kv), coordinator_key, PlacementFormat::Bare)
            .init(&coordinator_placement)
            .await
            .expect("coordinator placement stored");

        let mut nodes = Vec::new();
        for (name, listener) in names.into_iter().zip(listeners) {
            nodes.push(Node::start(name, listener, Arc::clone(&kv), tweak).await);
        }
        Cluster {
            kv,
            coordinator,
            nodes,
        }
    }

    /// Waits until one aggregator leads and the other follows, owning every shard; returns
    /// (leader, follower).
    async fn wait_for_roles(&self) -> (usize, usize) {
        wait_until("one leader and one follower owning every shard", || {
            let owns_all = self
                .nodes
                .iter()
                .all(|n| n.aggregator.owned_shards().len() == NUM_SHARDS as usize);
            let states: Vec<ElectionState> = self
                .nodes
                .iter()
                .map(|n| n.status().election_state)
                .collect();
            owns_all
                && states.contains(&ElectionState::Leader)
                && states.contains(&ElectionState::Follower)
        })
        .await;
        if self.nodes[0].status().election_state == ElectionState::Leader {
            (0, 1)
        } else {
            (1, 0)
        }
    }

    /// Waits for a moment when the leader has nothing in flight: everything it emitted has
    /// reached the coordinator, and the next window close (timed windows are flushed on whole
    /// seconds, give or take one flush check) is at least 200 ms away. Returns how many
    /// outputs the leader had emitted, all delivered, at that moment.
    async fn wait_until_nothing_in_flight(&self, leader: usize) -> u64 {
        let node = &self.nodes[leader];
        let quiet = 300 * 1_000_000..700 * 1_000_000;
        let mut delivered = 0;
        wait_until(
            &format!(
                "{} to have nothing in flight between two flushes",
                node.name
            ),
            || {
                delivered = node.aggregator.metrics().outputs_flushed();
                quiet.contains(&unix_nanos_now().rem_euclid(SECOND))
                    && self.coordinator.received_count() as u64 == delivered
            },
        )
        .await;
        delivered
    }

    /// Shuts the running aggregators down, the follower first, so the leader's final flush is
    /// the last output.
    async fn shutdown(&mut self, old: usize, new: usize) {
        for i in [old, new] {
            if self.nodes[i].is_running() {
                self.nodes[i].shutdown().await;
            }
        }
    }
}

/// One aggregator: its engine, its rawtcp server and its cluster membership, on a runtime of
/// its own so that dropping the runtime crashes it.
struct Node {
    name: String,
    aggregator: Arc<Aggregator>,
    rawtcp: SocketAddr,
    /// `None` once shut down or crashed.
    instance: Option<AggregatorInstance>,
    runtime: Option<tokio::runtime::Runtime>,
    stop_rawtcp: CancellationToken,
}

impl Node {
    async fn start(
        name: &str,
        listener: std::net::TcpListener,
        kv: Arc<dyn KvStore>,
        tweak: fn(&mut InstanceOptions),
    ) -> Node {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name(name)
            .enable_all()
            .build()
            .expect("aggregator runtime");
        let options = AggregatorOptions {
            buffer_past: BUFFER_PAST,
            buffer_future: BUFFER_PAST,
            ..AggregatorOptions::default()
        };
        let aggregator = Arc::new(Aggregator::new(
            options,
            Arc::new(|id: &[u8]| m3_cluster::shard_for(id, NUM_SHARDS)),
        ));
        let mut instance_options = InstanceOptions::new(name);
        instance_options.election_ttl = ELECTION_TTL;
        instance_options.check_every = CHECK_EVERY;
        instance_options.shutdown_ack_timeout = Duration::from_secs(5);
        // Output reaches the coordinator within milliseconds of a flush instead of up to the
        // default 1 s, which keeps the crash test's quiet moment easy to find.
        instance_options.producer.writer.connection.flush_interval = Duration::from_millis(10);
        tweak(&mut instance_options);

        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let rawtcp = listener.local_addr().expect("rawtcp address");
        let stop_rawtcp = CancellationToken::new();
        let (engine, stop) = (Arc::clone(&aggregator), stop_rawtcp.clone());
        let instance = runtime
            .spawn(async move {
                let listener = TcpListener::from_std(listener).expect("tokio listener");
                tokio::spawn(serve_rawtcp(
                    listener,
                    Arc::clone(&engine),
                    DEFAULT_RAWTCP_MAX_MESSAGE_SIZE,
                    m3_server::tcp::ListenerLimits::default(),
                    stop,
                ));
                let mut registry = Registry::default();
                AggregatorInstance::start(engine, kv, instance_options, &mut registry).await
            })
            .await
            .expect("start task")
            .unwrap_or_else(|e| panic!("{name} does not start: {e:#}"));
        Node {
            name: name.to_string(),
            aggregator,
            rawtcp,
            instance: Some(instance),
            runtime: Some(runtime),
            stop_rawtcp,
        }
    }

    fn is_running(&self) -> bool {
        self.instance.is_some()
    }

    fn instance(&self) -> &AggregatorInstance {
        self.instance
            .as_ref()
            .unwrap_or_else(|| panic!("{} is not running", self.name))
    }

    fn status(&self) -> FlushStatus {
        self.instance().status()
    }

    /// The orderly stop: rawtcp closed, final flush as leader, acks awaited, resignation.
    async fn shutdown(&mut self) {
        self.stop_rawtcp.cancel();
        let instance = self.instance.take().expect("running");
        let runtime = self.runtime.as_ref().expect("running");
        runtime
            .spawn(instance.shutdown())
            .await
            .expect("shutdown task");
    }

    /// Drops the runtime with every task of this aggregator in it: they stop at their next
    /// await point, so nothing more is flushed, persisted or renewed.
    async fn crash(&mut self) {
        let runtime = self.runtime.take().expect("running");
        // Dropping a runtime blocks until its worker has stopped, which must not happen on an
        // async worker thread.
        tokio::task::spawn_blocking(move || runtime.shutdown_timeout(Duration::from_secs(5)))
            .await
            .expect("runtime stops");
        drop(self.instance.take());
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // Reached without `shutdown` or `crash` only when the test failed early.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// One `AggregatedMetric` as the coordinator received it.
#[derive(Debug, Clone)]
struct Received {
    id: Bytes,
    time_nanos: i64,
    value: f64,
    metric_type: i32,
    policy: Option<StoragePolicy>,
}

/// Reads the m3msg value of `aggregated_metrics`.
fn decode_output(value: Bytes) -> Result<Received, String> {
    let decoded = AggregatedMetric::decode(value).map_err(|e| e.to_string())?;
    let metric = decoded.metric.ok_or("AggregatedMetric without metric")?;
    let timed = metric
        .timed_metric
        .ok_or("AggregatedMetric without timed_metric")?;
    Ok(Received {
        id: timed.id,
        time_nanos: timed.time_nanos,
        value: timed.value,
        metric_type: timed.r#type,
        policy: metric
            .storage_policy
            .as_ref()
            .and_then(StoragePolicy::from_proto),
    })
}

/// An m3msg consumer standing in for the coordinator's ingest: records and acks everything
/// (while `acking`; otherwise it answers no-ack, as a coordinator whose store fails does).
struct FakeCoordinator {
    endpoint: SocketAddr,
    acking: Arc<std::sync::atomic::AtomicBool>,
    received: Arc<Mutex<Vec<Received>>>,
    undecodable: Arc<Mutex<Vec<String>>>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl FakeCoordinator {
    async fn start() -> FakeCoordinator {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind ingest");
        let endpoint = listener.local_addr().expect("ingest address");
        let received = Arc::new(Mutex::new(Vec::new()));
        let undecodable = Arc::new(Mutex::new(Vec::new()));
        let acking = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (r, u, a) = (
            Arc::clone(&received),
            Arc::clone(&undecodable),
            Arc::clone(&acking),
        );
        let handler = handler_fn(move |value: Bytes, _| {
            let (received, undecodable) = (Arc::clone(&r), Arc::clone(&u));
            let acking = a.load(std::sync::atomic::Ordering::SeqCst);
            async move {
                if !acking {
                    return Decision::NoAck;
                }
                match decode_output(value) {
                    Ok(r) => received.lock().push(r),
                    Err(e) => undecodable.lock().push(e),
                }
                Decision::Ack
            }
        });
        let stop = CancellationToken::new();
        let server = ConsumerServer::new(ConsumerConfig::default(), handler);
        let task = tokio::spawn(server.serve(listener, stop.clone()));
        FakeCoordinator {
            endpoint,
            acking,
            received,
            undecodable,
            stop,
            task,
        }
    }

    fn received_count(&self) -> usize {
        self.received.lock().len()
    }

    /// Waits until every series has at least `windows` windows.
    async fn wait_for_windows(&self, windows: usize, what: &str) {
        wait_until(&format!("{windows} windows per series from {what}"), || {
            let received = self.received.lock();
            SERIES.iter().all(|series| {
                let mut ends: Vec<i64> = received
                    .iter()
                    .filter(|r| r.id == series.as_bytes())
                    .map(|r| r.time_nanos)
                    .collect();
                ends.sort_unstable();
                ends.dedup();
                ends.len() >= windows
            })
        })
        .await;
    }

    /// Stops serving; returns everything received.
    async fn stop(self) -> Vec<Received> {
        self.stop.cancel();
        self.task.await.expect("consumer server");
        let undecodable = self.undecodable.lock();
        assert!(
            undecodable.is_empty(),
            "the coordinator got messages that are not AggregatedMetrics: {undecodable:?}"
        );
        std::mem::take(&mut *self.received.lock())
    }
}

/// What the writer did.
#[derive(Debug, Default)]
struct WriteLog {
    /// Per series, (timestamp, value) of every sample written.
    sent: BTreeMap<&'static str, Vec<(i64, f64)>>,
    /// Per aggregator, gauge samples written to it.
    sent_to: BTreeMap<String, u64>,
    /// Per aggregator, the write error that made the writer give up on it.
    failed: BTreeMap<String, String>,
}

impl WriteLog {
    fn last_window_end(&self) -> Option<i64> {
        let last = self.sent.values().flatten().map(|(t, _)| *t).max()?;
        let resolution = resolution_nanos();
        Some(last - last.rem_euclid(resolution) + resolution)
    }
}

/// Sends a timed gauge per series to every aggregator every [`WRITE_EVERY`], stamped with the
/// current time and valued at that time in seconds. An aggregator whose connection fails is
/// dropped from the targets (as after a crash); the others keep getting every sample.
struct Writer {
    stop: CancellationToken,
    task: JoinHandle<WriteLog>,
}

impl Writer {
    async fn start(nodes: &[Node]) -> Writer {
        let mut targets = Vec::new();
        for node in nodes {
            let stream = TcpStream::connect(node.rawtcp)
                .await
                .unwrap_or_else(|e| panic!("connect to {}: {e}", node.name));
            targets.push((node.name.clone(), Some(stream)));
        }
        let stop = CancellationToken::new();
        let task = tokio::spawn(write_loop(targets, stop.clone()));
        Writer { stop, task }
    }

    async fn stop(self) -> WriteLog {
        self.stop.cancel();
        self.task.await.expect("writer task")
    }
}

async fn write_loop(
    mut targets: Vec<(String, Option<TcpStream>)>,
    stop: CancellationToken,
) -> WriteLog {
    let mut log = WriteLog::default();
    let metadatas = build::simple(
        AggregationId::from_types([AggregationType::Last]),
        &[policy()],
    );
    let counter_metadatas = build::simple(
        AggregationId::from_types([AggregationType::Sum]),
        &[policy()],
    );
    let mut frames = BytesMut::new();
    let mut tick = tokio::time::interval(WRITE_EVERY);
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let t = unix_nanos_now();
        let value = t as f64 / 1e9;
        frames.clear();
        let gauges = SERIES
            .iter()
            .map(|series| (MetricType::Gauge, *series, value, &metadatas));
        let counter = (MetricType::Counter, COUNTER, 1.0, &counter_metadatas);
        for (metric_type, series, value, metadatas) in gauges.chain(std::iter::once(counter)) {
            let metric = MetricWithMetadatas {
                r#type: Type::TimedMetricWithMetadatas as i32,
                timed_metric_with_metadatas: Some(TimedMetricWithMetadatas {
                    metric: Some(TimedMetric {
                        r#type: metric_type.to_proto(),
                        id: Bytes::from_static(series.as_bytes()),
                        time_nanos: t,
                        value,
                        annotation: Bytes::new(),
                    }),
                    metadatas: Some(metadatas.clone()),
                }),
                ..Default::default()
            };
            put_rawtcp_frame(&metric, &mut frames, DEFAULT_RAWTCP_MAX_MESSAGE_SIZE)
                .expect("frame fits");
        }
        for (name, stream) in &mut targets {
            let Some(s) = stream else { continue };
            match s.write_all(&frames).await {
                Ok(()) => *log.sent_to.entry(name.clone()).or_default() += SERIES.len() as u64,
                Err(e) => {
                    log.failed.insert(name.clone(), e.to_string());
                    *stream = None;
                }
            }
        }
        for series in SERIES {
            log.sent.entry(series).or_default().push((t, value));
        }
        log.sent.entry(COUNTER).or_default().push((t, 1.0));
    }
    log
}
