//! m3msg from coordinator to aggregators, as M3's how-to sets it up: the aggregators run an
//! `m3msg:` ingest server instead of rawtcp, the coordinator's client is `type: m3msg` on the
//! `aggregator_ingest` topic, whose consumer service is m3aggregator (REPLICATED).
//!
//! SEED.md's walkthrough runs first (placements, the `aggregated_metrics` topic), then the
//! how-to's two extra calls create `aggregator_ingest` and add m3aggregator to it. Remote-write
//! samples of ten series go through a mapping rule asking for Sum and Count per 10s window,
//! values where a window missing a sample shows. The leader is killed and restarted while
//! samples flow; every window must be stored exactly once with the Sum and Count written.

mod support;

use std::time::Duration;

use m3_proto::prometheus::{Label, Sample, TimeSeries, WriteRequest};
use serde_json::json;
use support::{
    Cluster, RESOLUTION_MS, SentWindows, now_ms, remote_write, wait_sum_count_exact, window_end,
};

const METRIC: &str = "e2e_m3msg_requests";
const SERIES: usize = 10;

/// The shipped aggregator config with the how-to's `m3msg:` server in place of `rawtcp:`
/// (on the same address, which the placement names) and an m3msg forwarding client.
fn aggregator_config() -> String {
    let shipped = std::fs::read_to_string(support::AGGREGATOR_CONFIG).expect("shipped config");
    let start = shipped.find("rawtcp:").expect("a rawtcp block");
    let end = shipped.find("http:").expect("an http block");
    let m3msg = "m3msg:
  server:
    listenAddress: ${M3AGGREGATOR_RAWTCP_ADDRESS:0.0.0.0:6000}
    retry:
      maxBackoff: 10s
      jitter: true
  consumer:
    messagePool:
      size: 16384
      watermark:
        low: 0.2
        high: 0.5

";
    let client = "aggregator:
  client:
    type: m3msg
    m3msg:
      producer:
        writer:
          topicName: aggregator_ingest
          topicServiceOverride:
            zone: embedded
            environment: default_env
          placement:
            isStaged: true
          placementServiceOverride:
            namespaces:
              placement: /placement
";
    let config = format!("{}{m3msg}{}", &shipped[..start], &shipped[end..]).replacen(
        "aggregator:\n",
        client,
        1,
    );
    assert!(config.contains("type: m3msg") && !config.contains("rawtcp:"));
    config
}

/// The shipped coordinator config with the client on m3msg and a rule for Sum and Count.
fn coordinator_config() -> String {
    let shipped = std::fs::read_to_string(support::COORDINATOR_CONFIG).expect("shipped config");
    let config = shipped
        .replacen(
            "    client:\n",
            "    client:
      type: m3msg
      m3msg:
        producer:
          writer:
            topicName: aggregator_ingest
            topicServiceOverride:
              zone: embedded
              environment: default_env
            placement:
              isStaged: true
            placementServiceOverride:
              namespaces:
                placement: /placement
            connection:
              numConnections: 4
            messagePool:
              size: 16384
              watermark:
                low: 0.2
                high: 0.5
",
            1,
        )
        .replacen(
            "downsample:\n",
            &format!(
                "downsample:
  rules:
    mappingRules:
      - name: sum and count
        filter: \"__name__:{METRIC}\"
        aggregations: [Sum, Count]
        storagePolicies:
          - resolution: 10s
            retention: 2d
"
            ),
            1,
        );
    assert!(config.contains("type: m3msg") && config.contains("mappingRules"));
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn samples_over_m3msg_survive_a_leader_restart_window_by_window() {
    let dir = tempfile::tempdir().expect("temporary dir");
    let aggregator_path = dir.path().join("m3aggregator.yml");
    let coordinator_path = dir.path().join("m3coordinator.yml");
    std::fs::write(&aggregator_path, aggregator_config()).expect("write config");
    std::fs::write(&coordinator_path, coordinator_config()).expect("write config");
    let mut cluster = Cluster::start_with("m3msg", 1, &aggregator_path, &coordinator_path).await;
    cluster.run_seed_commands().await;
    // The how-to's calls for the ingest topic.
    let coordinator = cluster.coordinators[0].url();
    for (path, body) in [
        ("/api/v1/topic/init", json!({"numberOfShards": 64})),
        (
            "/api/v1/topic",
            json!({"consumerService": {
                "serviceId": {"name": "m3aggregator", "environment": "default_env", "zone": "embedded"},
                "consumptionType": "REPLICATED",
                "messageTtlNanos": "300000000000"
            }}),
        ),
    ] {
        let response = cluster
            .client
            .post(format!("{coordinator}{path}"))
            .header("Topic-Name", "aggregator_ingest")
            .json(&body)
            .send()
            .await
            .expect("coordinator answers");
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        assert!(status.is_success(), "{path}: {status} {text}");
    }
    cluster.wait_for_leader(Duration::from_secs(60)).await;

    let started = now_ms();
    let writer = tokio::spawn(write_samples(
        cluster.client.clone(),
        coordinator.clone(),
        Duration::from_secs(45),
    ));
    tokio::time::sleep(Duration::from_secs(15)).await;
    let leader = cluster.wait_for_leader(Duration::from_secs(30)).await;
    cluster.aggregators[leader].process.kill();
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.restart_aggregator(
        leader,
        &format!("m3msg-m3aggregator{:02}-restarted", leader + 1),
    );
    cluster.wait_aggregator_healthy(leader).await;
    let (sent, refused) = writer.await.expect("writer task");
    let stopped = now_ms();
    assert_eq!(refused, 0, "the coordinator refused remote writes");

    let (from, to) = (
        window_end(started, RESOLUTION_MS),
        window_end(stopped, RESOLUTION_MS) - RESOLUTION_MS,
    );
    let report = wait_sum_count_exact(
        &cluster,
        &sent,
        METRIC,
        (from, to),
        Duration::from_secs(90),
        "over m3msg",
    )
    .await;
    assert!(report.expected >= 2 * SERIES * 3, "{report}");
    println!("over m3msg, through a leader restart: {report}");
}

/// Remote-writes one sample per series every 500ms for `run` (value n at the n-th round);
/// returns what the coordinator accepted as Sum and Count per window, and how many requests
/// it refused.
async fn write_samples(
    client: reqwest::Client,
    coordinator: String,
    run: Duration,
) -> (SentWindows, usize) {
    let mut sent = SentWindows::new();
    let mut refused = 0;
    let deadline = tokio::time::Instant::now() + run;
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut n = 0u64;
    while tokio::time::Instant::now() < deadline {
        tick.tick().await;
        n += 1;
        let t = now_ms();
        let timeseries = (0..SERIES)
            .map(|i| TimeSeries {
                labels: vec![label("__name__", METRIC), label("series", &format!("c{i}"))],
                samples: vec![Sample {
                    value: n as f64,
                    timestamp: t,
                }],
            })
            .collect();
        let accepted = matches!(
            remote_write(&client, &coordinator, &WriteRequest { timeseries }).await,
            Ok((200, _))
        );
        if !accepted {
            refused += 1;
            continue;
        }
        for i in 0..SERIES {
            let window = sent
                .entry(format!("c{i}"))
                .or_default()
                .entry(window_end(t, RESOLUTION_MS))
                .or_default();
            window.sum += n as f64;
            window.count += 1;
        }
    }
    (sent, refused)
}

fn label(name: &str, value: &str) -> Label {
    Label {
        name: name.to_string(),
        value: value.to_string(),
    }
}
