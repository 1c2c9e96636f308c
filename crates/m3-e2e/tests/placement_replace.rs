//! Replacing the leading aggregator with `POST /placement/replace` while traffic flows, on the
//! seed's cluster: etcd, two `m3aggregator` processes, a coordinator, and a third aggregator
//! started as the replacement.
//!
//! The replaced instance's shards are cut off, and the replacement's cut over, at the same
//! transition time: the next multiple of the largest aggregation window. The coordinator here
//! keeps the 10s namespace only, so that is the next 10s boundary and the test takes about a
//! minute and a half instead of three. The replaced leader keeps leading until its windows up to
//! the transition are out, then stops campaigning; the replacement does not campaign before
//! its cutover. Counters go to the aggregators as Sum and Count per 10s window, so a window
//! emitted with missing samples shows; gauges go through the coordinator as Last. Every window
//! must be stored once, with its exact value.

mod support;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use support::{
    AGGREGATOR_CONFIG, COORDINATOR_CONFIG, Cluster, RESOLUTION_MS, SumWriter, Writer, now_ms,
    start_aggregator_with, wait_aggregated, wait_sum_count_exact, window_end,
};

/// The replacement's host ID and address.
const REPLACEMENT_HOST: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 4);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replacing_the_leader_under_traffic_loses_no_window() {
    let shipped = std::fs::read_to_string(COORDINATOR_CONFIG).expect("shipped coordinator config");
    let one_minute = "      - namespace: agg_1m_40d\n        type: aggregated\n        resolution: 1m\n        retention: 40d\n";
    assert!(
        shipped.contains(one_minute),
        "the shipped config's 1m namespace moved"
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let coordinator_config = dir.path().join("m3coordinator.yml");
    std::fs::write(&coordinator_config, shipped.replace(one_minute, "")).expect("write config");
    let mut cluster = Cluster::start_with(
        "replace",
        1,
        Path::new(AGGREGATOR_CONFIG),
        &coordinator_config,
    )
    .await;
    cluster.run_seed_commands().await;
    let leader = cluster.wait_for_leader(Duration::from_secs(60)).await;

    // The replacement runs before it is placed, owning nothing, as a new pod would.
    let rawtcp_port = m3_testkit::free_port_on_all(&[REPLACEMENT_HOST]);
    let http_port = loop {
        let port = m3_testkit::free_port_on_all(&[REPLACEMENT_HOST]);
        if port != rawtcp_port {
            break port;
        }
    };
    let replacement = start_aggregator_with(
        "replace-m3aggregator03",
        &cluster.etcd,
        REPLACEMENT_HOST,
        (rawtcp_port, http_port),
        Path::new(AGGREGATOR_CONFIG),
    );
    let replacement_rawtcp = replacement.rawtcp;
    cluster.aggregators.push(replacement);
    let new = cluster.aggregators.len() - 1;
    cluster.wait_aggregator_healthy(new).await;

    let started = now_ms();
    let gauges = Writer::start(
        cluster.client.clone(),
        vec![cluster.coordinators[0].url()],
        "e2e_replace_gauge",
        10,
        Duration::from_secs(1),
    );
    let endpoints: Vec<SocketAddr> = cluster.aggregators.iter().map(|a| a.rawtcp).collect();
    assert!(endpoints.contains(&replacement_rawtcp));
    let counters = SumWriter::start(endpoints, "e2e_replace_sum", 10, Duration::from_millis(500));
    tokio::time::sleep(Duration::from_secs(12)).await;

    // Replace the leader, as an operator would: its ID and isolation group from the placement.
    let placement_url = format!(
        "{}/api/v1/services/m3aggregator/placement",
        cluster.coordinators[0].url()
    );
    let placement: Value = cluster
        .client
        .get(&placement_url)
        .send()
        .await
        .expect("GET placement")
        .json()
        .await
        .expect("placement JSON");
    let leaving_id = format!(
        "{}:{}",
        cluster.aggregators[leader].host, cluster.rawtcp_port
    );
    let leaving = &placement["placement"]["instances"][&leaving_id];
    assert!(leaving.is_object(), "{leaving_id} not in {placement}");
    let candidate_id = format!("{REPLACEMENT_HOST}:{rawtcp_port}");
    let request = json!({
        "leavingInstanceIDs": [leaving_id],
        "candidates": [{
            "id": candidate_id,
            "isolation_group": leaving["isolationGroup"],
            "zone": leaving["zone"],
            "weight": leaving["weight"],
            "endpoint": replacement_rawtcp.to_string(),
            "hostname": REPLACEMENT_HOST.to_string(),
            "port": rawtcp_port,
        }],
    });
    let response = cluster
        .client
        .post(format!("{placement_url}/replace"))
        .json(&request)
        .send()
        .await
        .expect("POST replace");
    let status = response.status().as_u16();
    let answer: Value = response.json().await.expect("replace answer");
    assert_eq!(status, 200, "{answer}");
    let transition: i64 = answer["placement"]["cutoverTime"]
        .as_str()
        .and_then(|t| t.parse().ok())
        .expect("a transition time");
    let transition_ms = transition / 1_000_000;
    println!(
        "{} replaced aggregator {leader} ({leaving_id}) with {candidate_id}; transition at {transition_ms}",
        now_ms()
    );

    // The replaced leader stops campaigning once its windows up to the transition are out; the
    // staying member or the replacement leads.
    let handed_over =
        m3_testkit::wait_for(Duration::from_secs(90), Duration::from_millis(500), || {
            let states = cluster.election_states();
            async move {
                let states = states.await;
                let leaders: Vec<usize> = (0..states.len())
                    .filter(|&i| states[i] == "leader")
                    .collect();
                (states[leader] != "leader" && leaders.len() == 1).then(|| (leaders[0], states))
            }
        })
        .await;
    let (new_leader, states) = handed_over.unwrap_or_else(|| {
        panic!(
            "the replaced leader did not hand over within 90s{}",
            cluster.logs()
        )
    });
    let handed_over_at = now_ms();
    println!("{handed_over_at} aggregator {new_leader} leads; states {states:?}");
    assert!(
        handed_over_at >= transition_ms,
        "leadership moved before the transition at {transition_ms}"
    );

    // Traffic goes on past the hand-over, then every window from the first sample on is read.
    tokio::time::sleep(Duration::from_secs(15)).await;
    let sent = counters.stop().await;
    let stopped = now_ms();
    let gauge_failures = gauges.with_written(|w| w.failures.clone());
    let (from, to) = (started - RESOLUTION_MS, window_end(stopped, RESOLUTION_MS));
    let report = wait_sum_count_exact(
        &cluster,
        &sent,
        "e2e_replace_sum",
        (from, to),
        Duration::from_secs(90),
        &format!("across the replacement at {transition_ms}"),
    )
    .await;
    println!("{} counters: {report}", now_ms());
    wait_aggregated(
        &cluster,
        &gauges,
        "e2e_replace_gauge",
        from,
        window_end(stopped, RESOLUTION_MS),
        Duration::from_secs(60),
    )
    .await;
    gauges.stop().await;
    assert!(
        gauge_failures.is_empty(),
        "remote writes failed across the replacement: {gauge_failures:?}"
    );
}
