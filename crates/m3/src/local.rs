//! `m3 local`: the whole pipeline in one process.
//!
//! ```text
//! Prometheus ─▶ coordinator :7201 ─samples─▶ aggregator a :6000   shard set 1, elected leader
//!                                      └···▶ aggregator b :6100   (optional: RF 2, follower)
//!              embedded store (./data) ◀── leader's output (in-process)
//!              coordinator ingest :7507 (m3msg, for aggregators elsewhere)
//! ```
//!
//! One aggregator runs by default. A second one (give two `aggregators.listenAddresses` and
//! two `httpListenAddresses`) makes a replicated pair as the seed deploys it: both take every
//! sample, one is elected leader and flushes, and the other takes over when the leader resigns
//! (`/resign`). In one process the pair protects nothing (the process is the failure domain,
//! and neither replica keeps its windows across a restart), while it doubles the aggregators'
//! memory and CPU: it is there to watch the hand-over, not the default.
//!
//! Every part is the one a deployment runs, started in-process; only the KV is in memory. The
//! coordinator adds each request's samples to the aggregators' engines itself, before it
//! answers ([`InProcessAggregators`], `apply_in_process_on_commit`): the same routing, shards
//! and engine calls, without frames, queues or loopback sockets. Rollup values an aggregator
//! forwards go as frames through the same in-process link. A leader's flushed windows go to
//! the coordinator's ingest handler as they are ([`InProcessOutput`]), stored as it stores
//! m3msg messages, without encoding, loopback sockets or acks: the flush times move on once
//! they are stored, and what cannot be stored is retried until `aggregators.messageTTL`, as
//! over m3msg. The aggregators still listen on their rawtcp addresses, and the coordinator
//! on its m3msg ingest address, for other senders. The placements and the topic are created at
//! startup when absent. Ctrl-C (or SIGTERM) shuts down in pipeline order: the coordinator's
//! queues to the aggregators drain, each aggregator leader flushes every window that has ended
//! and waits for the coordinator to ack it, then the coordinator stops and flushes the store.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use m3_aggregator::AggregatorOptions;
use m3_aggregator::client::InProcessAggregators;
use m3_aggregator::instance::InstanceOptions;
use m3_aggregator::output::InProcessOutput;
use m3_aggregator::server::{AggregatorServer, Listeners, ServerOptions};
use m3_cluster::keys::{self, ServiceId};
use m3_cluster::placement::store::PlacementStoreError;
use m3_cluster::placement::{
    Instance, PlacementFormat, PlacementStore, build_mirrored, build_non_sharded,
};
use m3_cluster::topic::TopicStore;
use m3_cluster::{ConsumerService, ConsumptionType, ElectionState, KvStore, MemoryKv, TopicError};
use m3_coordinator::config::CoordinatorConfig;
use m3_coordinator::server::Coordinator;
use m3_metric::StoragePolicy;
use m3_server::process::ShutdownSignal;
use serde::Deserialize;
use tokio::net::TcpListener;

/// The `m3 local` config file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct LocalConfig {
    /// A coordinator config, as `m3coordinator` reads it.
    coordinator: CoordinatorConfig,
    /// The aggregators: one by default, or two as a replicated pair.
    #[serde(default)]
    aggregators: LocalAggregators,
}

/// The aggregators of `m3 local`: one, or two as a replicated pair (RF 2).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct LocalAggregators {
    /// rawtcp listen addresses, one per aggregator (one or two).
    #[serde(default = "default_aggregator_addresses")]
    listen_addresses: Vec<String>,
    /// HTTP admin addresses (`/health`, `/status`, `/resign`, `/metrics`), one per aggregator.
    #[serde(default = "default_aggregator_http_addresses")]
    http_listen_addresses: Vec<String>,
    /// Shards in the placement and the topic.
    #[serde(default = "default_num_shards")]
    num_shards: u32,
    /// `bufferDurationForPastTimedMetric`.
    #[serde(default = "default_buffer", with = "m3_config::duration")]
    buffer_duration_for_past_timed_metric: Duration,
    /// `bufferDurationForFutureTimedMetric`.
    #[serde(default = "default_buffer", with = "m3_config::duration")]
    buffer_duration_for_future_timed_metric: Duration,
    /// `entryTTL`.
    #[serde(default = "default_entry_ttl", with = "m3_config::duration")]
    #[serde(rename = "entryTTL")]
    entry_ttl: Duration,
    /// `entryCheckInterval`: how often idle series are looked for (default 10m).
    #[serde(default = "default_entry_check_interval", with = "m3_config::duration")]
    entry_check_interval: Duration,
    /// `defaultStoragePolicies` for metrics that carry none.
    #[serde(default = "default_policies")]
    default_storage_policies: Vec<StoragePolicy>,
    /// How long an aggregated output may wait to be stored before it is dropped and counted
    /// (also the m3msg message TTL of the coordinator consumer service in the topic).
    #[serde(default = "default_message_ttl", with = "m3_config::duration")]
    #[serde(rename = "messageTTL")]
    message_ttl: Duration,
    /// rawtcp connections per aggregator (default 4096).
    #[serde(default)]
    max_connections: Option<usize>,
    /// rawtcp: a connection that sends nothing for this long is closed (default 10m).
    #[serde(default, with = "m3_config::option_duration")]
    idle_timeout: Option<Duration>,
    /// rawtcp: a frame must arrive whole within this long (default 1m).
    #[serde(default, with = "m3_config::option_duration")]
    frame_timeout: Option<Duration>,
}

impl LocalAggregators {
    /// The server options of the aggregator whose instance ID is `instance_id`.
    fn server_options(&self, instance_id: &str) -> ServerOptions {
        let limits = m3_server::tcp::ListenerLimits::default();
        ServerOptions {
            engine: AggregatorOptions {
                buffer_past: self.buffer_duration_for_past_timed_metric,
                buffer_future: self.buffer_duration_for_future_timed_metric,
                entry_ttl: self.entry_ttl,
                default_storage_policies: self.default_storage_policies.clone(),
                ..AggregatorOptions::default()
            },
            instance: InstanceOptions {
                entry_check_interval: self.entry_check_interval,
                ..InstanceOptions::new(instance_id)
            },
            rawtcp_max_message_size: m3_proto::framing::DEFAULT_RAWTCP_MAX_MESSAGE_SIZE,
            rawtcp_limits: m3_server::tcp::ListenerLimits {
                max_connections: self.max_connections.unwrap_or(limits.max_connections),
                idle_timeout: self.idle_timeout.unwrap_or(limits.idle_timeout),
                frame_timeout: self.frame_timeout.unwrap_or(limits.frame_timeout),
            },
            m3msg: m3_msg::ConsumerConfig::default(),
            http_limits: m3_server::http::HttpLimits::default(),
        }
    }
}

impl Default for LocalAggregators {
    fn default() -> Self {
        LocalAggregators {
            listen_addresses: default_aggregator_addresses(),
            http_listen_addresses: default_aggregator_http_addresses(),
            num_shards: default_num_shards(),
            buffer_duration_for_past_timed_metric: default_buffer(),
            buffer_duration_for_future_timed_metric: default_buffer(),
            entry_ttl: default_entry_ttl(),
            entry_check_interval: default_entry_check_interval(),
            default_storage_policies: default_policies(),
            message_ttl: default_message_ttl(),
            max_connections: None,
            idle_timeout: None,
            frame_timeout: None,
        }
    }
}

fn default_aggregator_addresses() -> Vec<String> {
    vec!["127.0.0.1:6000".to_string()]
}
fn default_aggregator_http_addresses() -> Vec<String> {
    vec!["127.0.0.1:6001".to_string()]
}
fn default_num_shards() -> u32 {
    64
}
fn default_buffer() -> Duration {
    Duration::from_secs(60)
}
fn default_entry_check_interval() -> Duration {
    InstanceOptions::DEFAULT_ENTRY_CHECK_INTERVAL
}
fn default_entry_ttl() -> Duration {
    Duration::from_secs(3600)
}
fn default_policies() -> Vec<StoragePolicy> {
    vec![StoragePolicy::new(
        Duration::from_secs(10),
        Duration::from_secs(2 * 86_400),
    )]
}
fn default_message_ttl() -> Duration {
    Duration::from_secs(300)
}

/// Runs `m3 local` until Ctrl-C or SIGTERM.
///
/// # Errors
/// A bad config, a port in use, a store that does not open.
pub(crate) async fn run(
    config_path: &Path,
    data_dir: Option<PathBuf>,
    shutdown: ShutdownSignal,
) -> anyhow::Result<()> {
    let mut config: LocalConfig = m3_config::load(config_path)?;
    if let Some(dir) = data_dir {
        config.coordinator.storage.data_dir = dir.display().to_string();
    }
    let mut problems = m3_config::Problems::new(config_path);
    let replicas = config.aggregators.listen_addresses.len();
    if !(1..=2).contains(&replicas) {
        problems.add(
            "aggregators.listenAddresses",
            format!("m3 local runs one aggregator, or two as a replicated pair (RF 2); {replicas} addresses given"),
        );
    } else if config.aggregators.http_listen_addresses.len() != replicas {
        problems.add(
            "aggregators.httpListenAddresses",
            format!(
                "give one per aggregator: {replicas} listenAddresses, {} httpListenAddresses",
                config.aggregators.http_listen_addresses.len()
            ),
        );
    }
    if config.aggregators.num_shards == 0 {
        problems.add("aggregators.numShards", "must be at least 1");
    }
    if config.coordinator.ingest.is_none() {
        problems.add(
            "coordinator.ingest",
            "missing: m3 local needs coordinator.ingest.m3msg.server.listenAddress",
        );
    }
    let coordinator_config = problems.check_under(
        "coordinator",
        config.coordinator.clone().validate(config_path),
    );
    let Some(coordinator_config) = problems.finish(coordinator_config)? else {
        anyhow::bail!("the coordinator config did not validate");
    };
    let kv: Arc<dyn KvStore> = Arc::new(MemoryKv::new());

    // Bind everything first so a port in use fails before anything starts.
    let mut aggregator_listeners = Vec::new();
    for address in &config.aggregators.listen_addresses {
        let listener = TcpListener::bind(address)
            .await
            .with_context(|| format!("binding aggregator rawtcp address {address}"))?;
        aggregator_listeners.push(listener);
    }
    let mut http_listeners = Vec::new();
    for address in &config.aggregators.http_listen_addresses {
        let listener = TcpListener::bind(address)
            .await
            .with_context(|| format!("binding aggregator HTTP address {address}"))?;
        http_listeners.push(listener);
    }
    let ingest_address = coordinator_config
        .ingest
        .as_ref()
        .map(|i| i.m3msg.server.listen_address.clone())
        .context("m3 local needs coordinator.ingest.m3msg.server.listenAddress")?;
    let ingest_listener = TcpListener::bind(&ingest_address)
        .await
        .with_context(|| format!("binding ingest address {ingest_address}"))?;
    let ingest_endpoint = ingest_listener.local_addr()?.to_string();
    let aggregator_endpoints: Vec<String> = aggregator_listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.to_string()))
        .collect::<Result<_, _>>()?;

    init_cluster(
        &kv,
        &config.aggregators,
        &aggregator_endpoints,
        &ingest_endpoint,
    )
    .await?;

    // The aggregators first, so that the coordinator's first write already finds them in
    // this process.
    let in_process = InProcessAggregators::default();
    let output = InProcessOutput::new(config.aggregators.message_ttl);
    let mut servers = Vec::new();
    let mut http_endpoints = Vec::new();
    for ((listener, http_listener), endpoint) in aggregator_listeners
        .into_iter()
        .zip(http_listeners)
        .zip(&aggregator_endpoints)
    {
        http_endpoints.push(http_listener.local_addr()?.to_string());
        let mut options = config.aggregators.server_options(endpoint);
        // Rollup values forwarded between aggregators go in the process too.
        options.instance.client.in_process = in_process.clone();
        // Their output goes to the coordinator in the process too, once it has started.
        options.instance.in_process_output = Some(output.clone());
        let server = AggregatorServer::start(
            options,
            Arc::clone(&kv),
            Listeners {
                rawtcp: Some(listener),
                m3msg: None,
                http: http_listener,
            },
        )
        .await
        .with_context(|| format!("starting aggregator {endpoint}"))?;
        in_process.attach(endpoint.clone(), Arc::clone(server.aggregator()));
        servers.push(server);
    }

    let mut coordinator_config = coordinator_config;
    if let Some((_, client_options)) = coordinator_config.remote_aggregator.as_mut() {
        client_options.in_process = in_process;
        client_options.apply_in_process_on_commit = true;
    }
    let coordinator = Coordinator::start(
        &coordinator_config,
        Arc::clone(&kv),
        None,
        Some(ingest_listener),
    )
    .await
    .context("starting the coordinator")?;
    output.attach(
        coordinator
            .aggregated_output_sink()
            .context("m3 local needs coordinator.ingest")?,
    );

    let http = coordinator.addrs().http;
    println!();
    println!("m3 local is running.");
    println!("  coordinator API:      http://{http}");
    println!(
        "  aggregators (rawtcp): {}",
        aggregator_endpoints.join(", ")
    );
    println!("  aggregators (HTTP):   {}", http_endpoints.join(", "));
    println!("  ingest (m3msg):       {ingest_endpoint}");
    println!("  data directory:       {}", coordinator_config.data_dir);
    println!();
    println!("Point Prometheus at it (prometheus.yml):");
    println!("  remote_write:");
    println!("    - url: http://{http}/api/v1/prom/remote/write");
    println!();
    println!("Query raw samples:        curl 'http://{http}/api/v1/query?query=up'");
    println!(
        "Query 10s aggregates:     curl -H 'M3-Metrics-Type: aggregated' -H 'M3-Storage-Policy: 10s:2d' 'http://{http}/api/v1/query?query=up'"
    );
    println!("Press Ctrl-C to stop (closed windows are flushed and stored first).");
    println!();

    shutdown.received().await;
    tracing::info!("Shutting down: draining the coordinator's queues to the aggregators.");
    coordinator
        .drain_aggregator_client(Duration::from_secs(5))
        .await;
    // Let the aggregators read what was just written before they stop listening.
    tokio::time::sleep(Duration::from_millis(200)).await;
    for server in &mut servers {
        server.stop_listening().await;
    }
    tracing::info!("Flushing ended windows from the aggregators.");
    // Followers first: a follower stopped after its leader would take over and emit the
    // leader's windows a second time.
    servers.sort_by_key(|server| server.status().election_state == ElectionState::Leader);
    for server in servers {
        server.shutdown().await;
    }
    coordinator.shutdown().await;
    tracing::info!("Stopped.");
    Ok(())
}

/// Creates the aggregator placement, the topic, the coordinator placement and its consumer
/// service, each only when absent.
async fn init_cluster(
    kv: &Arc<dyn KvStore>,
    aggregators: &LocalAggregators,
    aggregator_endpoints: &[String],
    ingest_endpoint: &str,
) -> anyhow::Result<()> {
    let env = keys::DEFAULT_ENVIRONMENT;
    let zone = keys::DEFAULT_ZONE;
    let groups = ["availability-zone-a", "availability-zone-b"];
    let instances: Vec<Instance> = aggregator_endpoints
        .iter()
        .zip(groups)
        .map(|(endpoint, group)| {
            Instance::new(endpoint.clone())
                .with_endpoint(endpoint.clone())
                .with_isolation_group(group)
                .with_zone(zone)
                .with_weight(100)
        })
        .collect();
    let replication_factor = u32::try_from(instances.len())?;
    let placement = build_mirrored(instances, aggregators.num_shards, replication_factor, 0)?;
    let aggregator_key = keys::placement_key(&ServiceId::new("m3aggregator", env, zone));
    ignore_exists(
        PlacementStore::new(Arc::clone(kv), aggregator_key, PlacementFormat::Snapshots)
            .init(&placement)
            .await,
    )?;

    let topics = TopicStore::new(Arc::clone(kv), env);
    match topics
        .init("aggregated_metrics", aggregators.num_shards)
        .await
    {
        Ok(_) | Err(TopicError::AlreadyExists { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    let coordinator = Instance::new("m3coordinator01")
        .with_endpoint(ingest_endpoint)
        .with_zone(zone);
    let coordinator_placement = build_non_sharded(vec![coordinator])?;
    let coordinator_key = keys::placement_key(&ServiceId::new("m3coordinator", env, zone));
    ignore_exists(
        PlacementStore::new(Arc::clone(kv), coordinator_key, PlacementFormat::Bare)
            .init(&coordinator_placement)
            .await,
    )?;
    let mut service = ConsumerService::new(
        ServiceId::new("m3coordinator", env, zone),
        ConsumptionType::Shared,
    );
    service.message_ttl_nanos =
        i64::try_from(aggregators.message_ttl.as_nanos()).unwrap_or(i64::MAX);
    match topics
        .add_consumer_service("aggregated_metrics", service)
        .await
    {
        Ok(_) | Err(TopicError::ConsumerServiceExists { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    Ok(())
}

fn ignore_exists(result: Result<i64, PlacementStoreError>) -> anyhow::Result<()> {
    match result {
        Ok(_) | Err(PlacementStoreError::AlreadyExists { .. }) => Ok(()),
        Err(e) => Err(e.into()),
    }
}
