//! SEED.md as an automated test: a real etcd, two `m3aggregator`s (127.0.0.2 and 127.0.0.3, the
//! same rawtcp port, as the seed's placement has them), `m3coordinator`s, the seed's `curl`
//! commands with only the host names changed, then remote writes whose aggregated output (Last
//! per 10s window) must be stored exactly — also while the leader aggregator is killed, while
//! etcd restarts, and with two coordinators taking writes in turn.
//!
//! Windows flush at window end + bufferPast (5s here) + resolution (10s); the waits below are
//! bounded by that plus the election TTL (10s) where a failover is involved.

mod support;

use std::time::Duration;

use support::{
    Cluster, RESOLUTION_MS, SumWriter, Writer, now_ms, wait_aggregated, wait_sum_count_exact,
    window_end,
};

/// Series written per request.
const SERIES: usize = 6;
/// Time between writes (Prometheus's scrape interval in a fast setup).
const WRITE_EVERY: Duration = Duration::from_secs(1);

/// How long a window may take to be stored once its last sample is written: bufferPast (5s) +
/// resolution (10s) + flush check and delivery.
const FLUSH_WAIT: Duration = Duration::from_secs(30);

#[test]
fn seed_has_the_four_curl_commands_of_the_walkthrough() {
    let commands = support::seed_commands();
    let urls: Vec<&str> = commands.iter().map(|c| c.url.as_str()).collect();
    assert_eq!(
        urls,
        [
            "http://m3coordinator01:7201/api/v1/services/m3aggregator/placement/init",
            "http://m3coordinator01:7201/api/v1/topic/init",
            "http://m3coordinator01:7201/api/v1/services/m3coordinator/placement/init",
            "http://m3coordinator01:7201/api/v1/topic",
        ]
    );
    assert!(commands.iter().all(|c| c.method == "POST"));
    let hosts = support::SeedHosts {
        coordinator_http: "127.0.0.1:17201".parse().unwrap(),
        coordinator_ingest: "127.0.0.1:17507".parse().unwrap(),
        aggregators: support::AGGREGATOR_HOSTS,
        aggregator_port: 16000,
    };
    let placement = commands[0].localized(&hosts);
    assert_eq!(
        placement.url,
        "http://127.0.0.1:17201/api/v1/services/m3aggregator/placement/init"
    );
    // Only host names and ports change; the rest is byte for byte the seed's.
    assert_eq!(
        placement.body,
        commands[0]
            .body
            .replace("m3aggregator01", "127.0.0.2")
            .replace("m3aggregator02", "127.0.0.3")
            .replace("6000", "16000")
    );
    let coordinators = commands[2].localized(&hosts);
    assert!(
        coordinators
            .body
            .contains("\"endpoint\": \"127.0.0.1:17507\"")
    );
    assert!(coordinators.body.contains("\"id\": \"m3coordinator01\""));
    assert_eq!(commands[3].localized(&hosts).body, commands[3].body);
}

/// The walkthrough, then SIGKILL of the leader: the follower, which received every sample too,
/// takes over after the election TTL. The killed aggregator comes back (as a crashed pod does),
/// catches up until it can lead, and then the survivor is killed too: the restarted one takes
/// over. No window is lost or changed, for Last (gauges through the coordinator) nor for Sum and
/// Count (counters straight to the aggregators), where a window missing samples would show.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_walkthrough_then_leader_killed_restarted_and_survivor_killed() {
    let mut cluster = Cluster::start("walkthrough", 1).await;
    cluster.run_seed_commands().await;
    let leader = cluster.wait_for_leader(Duration::from_secs(30)).await;
    println!("{} leader: aggregator {leader}", now_ms());

    let name = "e2e_walkthrough";
    let started = now_ms();
    let writer = Writer::start(
        cluster.client.clone(),
        vec![cluster.coordinators[0].url()],
        name,
        SERIES,
        WRITE_EVERY,
    );
    let counters = SumWriter::start(
        cluster.aggregators.iter().map(|a| a.rawtcp).collect(),
        "e2e_walkthrough_sum",
        SERIES,
        Duration::from_millis(500),
    );
    // The first (partial) window and one written in full.
    let first_checked = window_end(now_ms(), RESOLUTION_MS) + RESOLUTION_MS;
    writer
        .wait_past(first_checked, Duration::from_secs(40))
        .await;
    wait_aggregated(&cluster, &writer, name, 0, first_checked, FLUSH_WAIT).await;
    println!("{} windows up to {first_checked} stored", now_ms());

    let survivor = 1 - leader;
    cluster.aggregators[leader].process.kill();
    let killed_at = now_ms();
    println!("{killed_at} SIGKILLed aggregator {leader}");
    wait_leader_is(&cluster, survivor, "the leader's SIGKILL").await;
    println!("{} aggregator {survivor} is leader", now_ms());

    // The crashed aggregator comes back and catches up: it can lead once the survivor has
    // flushed every window it missed.
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.restart_aggregator(leader, "walkthrough-m3aggregator-restarted");
    cluster.wait_aggregator_healthy(leader).await;
    println!("{} restarted aggregator {leader}", now_ms());
    let caught_up = m3_testkit::wait_for(Duration::from_secs(180), Duration::from_secs(1), || {
        let status = cluster.status(leader);
        async move { status.await.filter(|s| s.1).map(|_| ()) }
    })
    .await;
    assert!(
        caught_up.is_some(),
        "the restarted aggregator never reported canLead{}",
        cluster.logs()
    );
    println!("{} restarted aggregator {leader} can lead", now_ms());

    cluster.aggregators[survivor].process.kill();
    let second_kill = now_ms();
    println!("{second_kill} SIGKILLed the survivor {survivor}");
    wait_leader_is(&cluster, leader, "the survivor's SIGKILL").await;
    println!("{} aggregator {leader} is leader again", now_ms());

    // Two windows after the second kill, from the restarted aggregator alone.
    let last_checked = window_end(second_kill, RESOLUTION_MS) + RESOLUTION_MS;
    writer
        .wait_past(last_checked, Duration::from_secs(40))
        .await;
    let sent = counters.stop().await;
    wait_aggregated(&cluster, &writer, name, 0, last_checked, FLUSH_WAIT).await;
    let from = started - RESOLUTION_MS;
    let report = wait_sum_count_exact(
        &cluster,
        &sent,
        "e2e_walkthrough_sum",
        (from, last_checked),
        FLUSH_WAIT * 2,
        "across both failovers",
    )
    .await;
    println!("{} Sum/Count: {report}", now_ms());

    let failures = writer.with_written(|w| w.failures.clone());
    writer.stop().await;
    assert!(
        failures.is_empty(),
        "remote writes failed while an aggregator was down: {failures:?}"
    );
}

/// Waits (up to 40s) until aggregator `index` is leader.
async fn wait_leader_is(cluster: &Cluster, index: usize, after: &str) {
    let states = m3_testkit::wait_for(Duration::from_secs(40), Duration::from_millis(200), || {
        let states = cluster.election_states();
        async move {
            let states = states.await;
            (states[index] == "leader").then_some(states)
        }
    })
    .await;
    assert!(
        states.is_some(),
        "aggregator {index} did not become leader within 40s of {after}{}",
        cluster.logs()
    );
}

/// Two coordinators behind a round-robin balancer (SEED.md: "send metrics to your
/// m3coordinators in round robin fashion"), then etcd killed for longer than the election TTL and
/// restarted on the same ports.
///
/// Both coordinators are in the coordinator placement; the seed's admin requests and the remote
/// writes alternate between them. Each aggregated window is stored by one of them (SHARED
/// consumption), so their union must hold exactly one Last per window per series, as one
/// coordinator does. Writes are accepted while etcd is down, the processes reconnect, and every
/// window — before, during and after the outage — is stored exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_coordinators_and_etcd_restart() {
    let mut cluster = Cluster::start("etcd-restart", 2).await;
    let commands = support::seed_commands();
    for (i, command) in commands.iter().enumerate() {
        let target = i % 2;
        let mut command = command.localized(&cluster.hosts(target));
        if command
            .url
            .ends_with("/api/v1/services/m3coordinator/placement/init")
        {
            command.body = with_second_coordinator(&command.body, &cluster);
        }
        cluster.send_curl(&command).await;
    }
    cluster.wait_for_leader(Duration::from_secs(30)).await;

    let name = "e2e_round_robin";
    let writer = Writer::start(
        cluster.client.clone(),
        cluster.coordinators.iter().map(|c| c.url()).collect(),
        name,
        SERIES,
        WRITE_EVERY,
    );
    let first_checked = window_end(now_ms(), RESOLUTION_MS) + RESOLUTION_MS;
    writer
        .wait_past(first_checked, Duration::from_secs(30))
        .await;
    wait_aggregated(&cluster, &writer, name, 0, first_checked, FLUSH_WAIT).await;

    cluster.etcd.stop();
    let stopped_at = now_ms();
    println!("{stopped_at} etcd stopped");
    // Writes keep being accepted while etcd is down (placements are cached), for longer than
    // the election TTL (10s).
    writer
        .wait_past(stopped_at + 12_000, Duration::from_secs(30))
        .await;
    for aggregator in &mut cluster.aggregators {
        assert!(
            aggregator.process.is_running(),
            "an aggregator exited while etcd was down: {}",
            aggregator.process
        );
    }
    for coordinator in &mut cluster.coordinators {
        assert!(
            coordinator.process.is_running(),
            "a coordinator exited while etcd was down: {}",
            coordinator.process
        );
    }
    cluster.etcd.restart();
    let restarted_at = now_ms();
    println!("{restarted_at} etcd restarted");

    // The admin API of each coordinator reads etcd again.
    for coordinator in &cluster.coordinators {
        let url = format!(
            "{}/api/v1/services/m3aggregator/placement",
            coordinator.url()
        );
        let read =
            m3_testkit::wait_for(Duration::from_secs(20), Duration::from_millis(200), || {
                let request = cluster.client.get(&url).send();
                async move { request.await.ok().filter(|r| r.status().is_success()) }
            })
            .await;
        assert!(
            read.is_some(),
            "GET {url} did not succeed within 20s of etcd's restart{}",
            cluster.logs()
        );
    }
    cluster.wait_for_leader(Duration::from_secs(30)).await;

    let last_checked = window_end(restarted_at, RESOLUTION_MS) + RESOLUTION_MS;
    writer
        .wait_past(last_checked, Duration::from_secs(30))
        .await;
    wait_aggregated(&cluster, &writer, name, 0, last_checked, FLUSH_WAIT).await;

    let failures = writer.with_written(|w| w.failures.clone());
    writer.stop().await;
    assert!(
        failures.is_empty(),
        "remote writes failed around etcd's restart: {failures:?}"
    );
}

/// The seed's coordinator placement body with a second instance for coordinator 2.
fn with_second_coordinator(body: &str, cluster: &Cluster) -> String {
    let mut placement: serde_json::Value = serde_json::from_str(body)
        .unwrap_or_else(|e| panic!("SEED.md's coordinator placement is not JSON ({e}): {body}"));
    let instances = placement["instances"]
        .as_array_mut()
        .expect("the coordinator placement lists instances");
    let ingest = cluster.coordinators[1].ingest;
    let mut second = instances[0].clone();
    second["id"] = "m3coordinator02".into();
    second["endpoint"] = ingest.to_string().into();
    second["hostname"] = ingest.ip().to_string().into();
    second["port"] = ingest.port().into();
    instances.push(second);
    placement.to_string()
}
