//! Rollups across series that arrive at different coordinators, on the cluster the tier exists
//! for: etcd, four `m3aggregator`s in two shard sets of RF 2 (127.0.0.2–5), two
//! `m3coordinator`s taking writes in turn.
//!
//! Prometheus-style counters of 200 series of one family (`route` × `pod`) go half to each
//! coordinator, every second. The rule `Increase → rollup Sum by (route) → Add` makes the
//! aggregator owning each series take the per-window increase of its last value and forward it
//! to the aggregators owning the rollup ID, which sum the sources and keep a running total.
//! Window by window, the stored rollup must equal the running total of the per-series increases
//! computed from what the coordinators accepted — also while the leader of the shard set that
//! owns a rollup ID is killed and restarted, and then the leader of the other shard set (which
//! owns sources): no window lost, none counted twice.

mod support;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use m3_proto::prometheus::{Label, Sample, TimeSeries, WriteRequest};
use m3_testkit::EtcdProcess;
use serde_json::{Value, json};
use support::{
    Cluster, RESOLUTION_MS, now_ms, remote_write, start_aggregator, start_coordinator_with,
    window_end,
};

const HOSTS: [Ipv4Addr; 4] = [
    Ipv4Addr::new(127, 0, 0, 2),
    Ipv4Addr::new(127, 0, 0, 3),
    Ipv4Addr::new(127, 0, 0, 4),
    Ipv4Addr::new(127, 0, 0, 5),
];
const NUM_SHARDS: u32 = 64;
const ROUTES: usize = 4;
const PODS: usize = 50;
const METRIC: &str = "e2e_rollup_requests_total";
const ROLLUP: &str = "e2e_rollup_by_route";

/// The shipped coordinator config with the rule added.
fn coordinator_config() -> String {
    let shipped = std::fs::read_to_string(support::COORDINATOR_CONFIG).expect("shipped config");
    let rules = format!(
        r#"downsample:
  rules:
    rollupRules:
      - name: requests by route
        filter: "__name__:{METRIC}"
        transforms:
          - transform:
              type: "Increase"
          - rollup:
              metricName: "{ROLLUP}"
              groupBy: ["route"]
              aggregations: ["Sum"]
          - transform:
              type: "Add"
        storagePolicies:
          - resolution: 10s
            retention: 2d
  remoteAggregator:"#
    );
    let config = shipped.replace("downsample:\n  remoteAggregator:", &rules);
    assert!(
        config.contains("rollupRules"),
        "the shipped config changed shape"
    );
    config
}

struct Setup {
    cluster: Cluster,
    _config: tempfile::NamedTempFile,
}

async fn start() -> Setup {
    let etcd = EtcdProcess::start();
    let rawtcp_port = m3_testkit::free_port_on_all(&HOSTS);
    let http_port = loop {
        let port = m3_testkit::free_port_on_all(&HOSTS);
        if port != rawtcp_port {
            break port;
        }
    };
    let aggregators = HOSTS
        .iter()
        .enumerate()
        .map(|(i, host)| {
            start_aggregator(
                &format!("rollup-m3aggregator{:02}", i + 1),
                &etcd,
                *host,
                rawtcp_port,
                http_port,
            )
        })
        .collect();
    let config = tempfile::NamedTempFile::new().expect("config file");
    std::fs::write(config.path(), coordinator_config()).expect("write config");
    let coordinators = (0..2)
        .map(|i| {
            start_coordinator_with(
                &format!("rollup-m3coordinator{:02}", i + 1),
                &etcd,
                config.path(),
            )
        })
        .collect();
    let cluster = Cluster {
        etcd,
        aggregators,
        coordinators,
        rawtcp_port,
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("HTTP client"),
    };
    for a in &cluster.aggregators {
        cluster
            .wait_healthy(&format!("http://{}/health", a.http), &a.process)
            .await;
    }
    for c in &cluster.coordinators {
        cluster
            .wait_healthy(&format!("{}/health", c.url()), &c.process)
            .await;
    }
    Setup {
        cluster,
        _config: config,
    }
}

/// Two shard sets of two aggregators each, the topic, both coordinators as its consumers.
async fn init_topology(cluster: &Cluster) {
    let port = cluster.rawtcp_port;
    let instances: Vec<Value> = HOSTS
        .iter()
        .enumerate()
        .map(|(i, host)| {
            json!({
                "id": format!("{host}:{port}"),
                "isolation_group": if i % 2 == 0 { "availability-zone-a" } else { "availability-zone-b" },
                "zone": "embedded",
                "weight": 100,
                "endpoint": format!("{host}:{port}"),
                "hostname": host.to_string(),
                "port": port,
            })
        })
        .collect();
    let coordinators: Vec<Value> = cluster
        .coordinators
        .iter()
        .enumerate()
        .map(|(i, c)| {
            json!({
                "id": format!("m3coordinator{:02}", i + 1),
                "zone": "embedded",
                "endpoint": c.ingest.to_string(),
                "hostname": c.ingest.ip().to_string(),
                "port": c.ingest.port(),
            })
        })
        .collect();
    let base = cluster.coordinators[0].url();
    for (path, body) in [
        (
            "/api/v1/services/m3aggregator/placement/init",
            json!({"num_shards": NUM_SHARDS, "replication_factor": 2, "instances": instances}),
        ),
        ("/api/v1/topic/init", json!({"numberOfShards": NUM_SHARDS})),
        (
            "/api/v1/services/m3coordinator/placement/init",
            json!({"instances": coordinators}),
        ),
        (
            "/api/v1/topic",
            json!({"consumerService": {
                "serviceId": {"name": "m3coordinator", "environment": "default_env", "zone": "embedded"},
                "consumptionType": "SHARED",
                "messageTtlNanos": "300000000000"
            }}),
        ),
    ] {
        let response = cluster
            .client
            .post(format!("{base}{path}"))
            .body(body.to_string())
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {path}: {e}"));
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        assert!(status.is_success(), "POST {path}: {status} {text}");
    }
}

/// Shard set ID of each aggregator (by index), from the placement.
async fn shard_sets(cluster: &Cluster) -> (Vec<u32>, BTreeMap<u32, u32>) {
    let placement: Value = cluster
        .client
        .get(format!(
            "{}/api/v1/services/m3aggregator/placement",
            cluster.coordinators[0].url()
        ))
        .send()
        .await
        .expect("placement")
        .json()
        .await
        .expect("placement JSON");
    let mut of_aggregator = Vec::new();
    let mut of_shard = BTreeMap::new();
    for a in &cluster.aggregators {
        let id = a.rawtcp.to_string();
        let instance = &placement["placement"]["instances"][&id];
        let set = instance["shardSetId"].as_u64().expect("shardSetId") as u32;
        of_aggregator.push(set);
        for shard in instance["shards"].as_array().into_iter().flatten() {
            of_shard.insert(shard["id"].as_u64().unwrap_or(0) as u32, set);
        }
    }
    (of_aggregator, of_shard)
}

/// The index of the aggregator leading shard set `set`.
async fn leader_of(cluster: &Cluster, sets: &[u32], set: u32) -> usize {
    let found = m3_testkit::wait_for(Duration::from_secs(60), Duration::from_millis(300), || {
        let cluster = &cluster;
        async move {
            for (i, s) in sets.iter().enumerate() {
                if *s == set
                    && cluster
                        .status(i)
                        .await
                        .is_some_and(|(state, _)| state == "leader")
                {
                    return Some(i);
                }
            }
            None
        }
    })
    .await;
    found.unwrap_or_else(|| panic!("shard set {set} has no leader{}", cluster.logs()))
}

type Written = Arc<Mutex<BTreeMap<(usize, usize), Vec<(i64, f64)>>>>;

/// Writes every series every second, half to each coordinator (alternating), and records the
/// samples the coordinators accepted.
fn start_writer(
    cluster: &Cluster,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> (Written, tokio::task::JoinHandle<Vec<String>>) {
    let written: Written = Arc::new(Mutex::new(BTreeMap::new()));
    let client = cluster.client.clone();
    let urls: Vec<String> = cluster.coordinators.iter().map(|c| c.url()).collect();
    let record = Arc::clone(&written);
    let task = tokio::spawn(async move {
        let mut counters = vec![0u64; ROUTES * PODS];
        let mut failures = Vec::new();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut round = 0u64;
        while !stop.load(std::sync::atomic::Ordering::SeqCst) {
            tick.tick().await;
            round += 1;
            let t = now_ms();
            let mut halves: [Vec<(usize, usize, f64)>; 2] = [Vec::new(), Vec::new()];
            for route in 0..ROUTES {
                for pod in 0..PODS {
                    let i = route * PODS + pod;
                    counters[i] += 1 + (round + i as u64) % 7;
                    halves[(i + round as usize) % 2].push((route, pod, counters[i] as f64));
                }
            }
            for (target, half) in halves.iter().enumerate() {
                let request = WriteRequest {
                    timeseries: half
                        .iter()
                        .map(|(route, pod, value)| TimeSeries {
                            labels: vec![
                                label("__name__", METRIC),
                                label("pod", &format!("p{pod:02}")),
                                label("route", &format!("/r{route}")),
                            ],
                            samples: vec![Sample {
                                value: *value,
                                timestamp: t,
                            }],
                        })
                        .collect(),
                };
                match remote_write(&client, &urls[target], &request).await {
                    Ok((200, _)) => {
                        let mut w = record.lock().unwrap_or_else(|e| e.into_inner());
                        for (route, pod, value) in half {
                            w.entry((*route, *pod)).or_default().push((t, *value));
                        }
                    }
                    Ok((status, body)) => failures.push(format!("{t} {target}: {status} {body}")),
                    Err(e) => failures.push(format!("{t} {target}: {e}")),
                }
            }
        }
        failures
    });
    (written, task)
}

fn label(name: &str, value: &str) -> Label {
    Label {
        name: name.to_string(),
        value: value.to_string(),
    }
}

/// route → window end → running total of the per-series increases of the last value.
fn expected(written: &BTreeMap<(usize, usize), Vec<(i64, f64)>>) -> BTreeMap<(usize, i64), f64> {
    let mut increases: BTreeMap<(usize, i64), f64> = BTreeMap::new();
    for ((route, _), points) in written {
        let mut last: BTreeMap<i64, f64> = BTreeMap::new();
        for &(t, v) in points {
            last.insert(window_end(t, RESOLUTION_MS), v);
        }
        let mut previous = 0.0;
        for (end, value) in last {
            *increases.entry((*route, end)).or_default() += value - previous;
            previous = value;
        }
    }
    let mut totals = BTreeMap::new();
    for route in 0..ROUTES {
        let mut running = 0.0;
        for (&(r, end), inc) in &increases {
            if r == route {
                running += inc;
                totals.insert((route, end), running);
            }
        }
    }
    totals
}

/// Stored rollup windows from both coordinators: (route, window end) → values found.
async fn stored(cluster: &Cluster) -> BTreeMap<(usize, i64), Vec<f64>> {
    let mut out: BTreeMap<(usize, i64), Vec<f64>> = BTreeMap::new();
    for (labels, _, points) in cluster
        .stored(&format!("{ROLLUP}[15m]"), support::AGG_10S)
        .await
    {
        let route: usize = labels
            .get("route")
            .and_then(|r| r.trim_start_matches("/r").parse().ok())
            .unwrap_or(usize::MAX);
        for (t, v) in points {
            out.entry((route, t)).or_default().push(v);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollup_across_coordinators_is_exact_through_leader_kills() {
    let Setup {
        mut cluster,
        _config,
    } = start().await;
    init_topology(&cluster).await;
    let (sets, set_of_shard) = shard_sets(&cluster).await;
    let distinct: std::collections::BTreeSet<u32> = sets.iter().copied().collect();
    assert_eq!(distinct.len(), 2, "two shard sets: {sets:?}");

    // Which shard set owns the rollup ID of route 0.
    let mut id = Vec::new();
    m3_metric::id::encode_tags(
        [
            (&b"__name__"[..], ROLLUP.as_bytes()),
            (&b"__rollup__"[..], &b"true"[..]),
            (&b"route"[..], &b"/r0"[..]),
        ],
        &mut id,
    )
    .expect("rollup ID");
    let rollup_set = set_of_shard[&m3_cluster::shard_for(&id, NUM_SHARDS)];
    let other_set = *distinct
        .iter()
        .find(|s| **s != rollup_set)
        .expect("two sets");
    for set in &distinct {
        leader_of(&cluster, &sets, *set).await;
    }

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let started = now_ms();
    let (written, writer) = start_writer(&cluster, Arc::clone(&stop));
    tokio::time::sleep(Duration::from_secs(25)).await;

    for (set, what) in [
        (rollup_set, "owns the rollup ID of /r0"),
        (other_set, "owns sources only"),
    ] {
        let leader = leader_of(&cluster, &sets, set).await;
        cluster.aggregators[leader].process.kill();
        println!(
            "{} SIGKILLed aggregator {leader}, leader of shard set {set} ({what})",
            now_ms()
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
        cluster.restart_aggregator(
            leader,
            &format!("rollup-m3aggregator{:02}-restarted", leader + 1),
        );
        cluster.wait_aggregator_healthy(leader).await;
        leader_of(&cluster, &sets, set).await;
        tokio::time::sleep(Duration::from_secs(30)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let failures = writer.await.expect("writer");
    let stopped = now_ms();
    let written = written.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let want = expected(&written);
    let last_end = window_end(stopped, RESOLUTION_MS);

    // Every window, once all are flushed: end + past buffer + forwarding delay.
    let report = m3_testkit::wait_for(Duration::from_secs(150), Duration::from_secs(2), || {
        let got = stored(&cluster);
        let want = &want;
        async move {
            let got = got.await;
            let complete = want
                .keys()
                .filter(|(_, end)| *end >= last_end)
                .all(|key| got.contains_key(key));
            complete.then_some(got)
        }
    })
    .await;
    let got = match report {
        Some(got) => got,
        None => stored(&cluster).await,
    };
    let (mut missing, mut differing, mut twice) = (Vec::new(), Vec::new(), 0);
    for (key, value) in &want {
        match got.get(key) {
            None => missing.push(format!("route {} @{}: want {value}", key.0, key.1)),
            Some(values) => {
                if values.len() > 1 {
                    twice += 1;
                }
                if values.iter().any(|v| v != value) {
                    differing.push(format!(
                        "route {} @{}: want {value}, got {values:?}",
                        key.0, key.1
                    ));
                }
            }
        }
    }
    for (key, values) in &got {
        if !want.contains_key(key) && key.1 > started {
            differing.push(format!(
                "route {} @{}: not expected, got {values:?}",
                key.0, key.1
            ));
        }
    }
    println!(
        "{} rollup windows: expected {}, stored {}, missing {}, differing {}, stored on both coordinators {twice}",
        now_ms(),
        want.len(),
        want.len() - missing.len(),
        missing.len(),
        differing.len()
    );
    assert!(
        missing.is_empty() && differing.is_empty(),
        "rollup windows wrong:\nmissing:\n{}\ndiffering:\n{}\nwrite failures: {failures:?}{}",
        missing.join("\n"),
        differing.join("\n"),
        cluster.logs()
    );
}
