//! A leader aggregator that crashes and comes back within the election TTL, several times,
//! under traffic: the most common failure on Kubernetes, where a crashed pod restarts in
//! seconds.
//!
//! The restarted process holds none of the windows its previous life had open. It must not take
//! its old lease back, and must not lead while the follower, which holds every window, is
//! alive. Counters are aggregated as Sum and Count, so a window emitted by a replica that missed
//! some of its samples shows; gauges go through the coordinator as Last.

mod support;

use std::time::Duration;

use support::{
    Cluster, RESOLUTION_MS, SumWriter, Writer, now_ms, wait_aggregated, wait_sum_count_exact,
    window_end,
};

/// Leader crashes in the test.
const KILLS: usize = 4;
/// Time between two crashes: more than a window's flush delay (end + bufferPast 5s + one
/// resolution), so the replica restarted last time holds every window not yet flushed.
const KILL_EVERY: Duration = Duration::from_secs(35);
/// How long a crashed aggregator stays down before it is started again.
const DOWN_FOR: Duration = Duration::from_secs(2);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_killed_and_restarted_within_the_ttl_loses_no_window() {
    let mut cluster = Cluster::start("restarted-leader", 1).await;
    cluster.run_seed_commands().await;
    cluster.wait_for_leader(Duration::from_secs(60)).await;

    let started = now_ms();
    let gauges = Writer::start(
        cluster.client.clone(),
        vec![cluster.coordinators[0].url()],
        "e2e_restart_gauge",
        10,
        Duration::from_secs(1),
    );
    let counters = SumWriter::start(
        cluster.aggregators.iter().map(|a| a.rawtcp).collect(),
        "e2e_restart_sum",
        10,
        Duration::from_millis(500),
    );
    tokio::time::sleep(Duration::from_secs(20)).await;

    for kill in 0..KILLS {
        let leader = cluster.wait_for_leader(Duration::from_secs(60)).await;
        cluster.aggregators[leader].process.kill();
        println!("{} kill {}: SIGKILLed leader {leader}", now_ms(), kill + 1);
        tokio::time::sleep(DOWN_FOR).await;
        cluster.restart_aggregator(
            leader,
            &format!(
                "restarted-leader-m3aggregator{:02}-life{}",
                leader + 1,
                kill + 2
            ),
        );
        cluster.wait_aggregator_healthy(leader).await;
        println!("{} restarted aggregator {leader}", now_ms());
        tokio::time::sleep(KILL_EVERY - DOWN_FOR).await;
        let states = cluster.election_states().await;
        assert_ne!(
            states[leader],
            "leader",
            "the restarted aggregator leads again while the follower that holds every window is alive{}",
            cluster.logs()
        );
    }
    cluster.wait_for_leader(Duration::from_secs(60)).await;
    let sent = counters.stop().await;
    let stopped = now_ms();
    let gauge_failures = gauges.with_written(|w| w.failures.clone());

    // Every window from the first to the last sample, including the partial first and last
    // ones: their expected values are what was sent.
    let (from, to) = (started - RESOLUTION_MS, window_end(stopped, RESOLUTION_MS));
    let report = wait_sum_count_exact(
        &cluster,
        &sent,
        "e2e_restart_sum",
        (from, to),
        Duration::from_secs(90),
        &format!("after {KILLS} leader restarts"),
    )
    .await;
    println!("{} counters: {report}", now_ms());

    let last_gauge = window_end(stopped, RESOLUTION_MS);
    wait_aggregated(
        &cluster,
        &gauges,
        "e2e_restart_gauge",
        from,
        last_gauge,
        Duration::from_secs(60),
    )
    .await;
    gauges.stop().await;
    assert!(
        gauge_failures.is_empty(),
        "remote writes failed while an aggregator restarted: {gauge_failures:?}"
    );
}
