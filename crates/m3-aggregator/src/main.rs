//! `m3aggregator -f <config>`: one aggregator of the cluster.
//!
//! Flags and glue only: the config is read by [`m3_aggregator::config`], the engine, cluster
//! membership and admin endpoints live in the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use m3_aggregator::config::AggregatorConfig;
use m3_aggregator::instance::{AggregatorInstance, placement_shard_fn};
use m3_aggregator::m3msg_ingest::serve_m3msg;
use m3_aggregator::{Aggregator, serve_rawtcp};
use m3_cluster::KvStore;
use m3_cluster::kv::etcd::EtcdKv;
use parking_lot::Mutex;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// An m3aggregator instance.
#[derive(Debug, Parser)]
#[command(name = "m3aggregator", version, about)]
struct Args {
    /// The config file (M3's m3aggregator.yml keys).
    #[arg(short = 'f', long = "config")]
    config: PathBuf,
}

fn main() -> ExitCode {
    m3_server::process::init_logging();
    let args = Args::parse();
    let result = tokio::runtime::Runtime::new()
        .context("starting the async runtime")
        .and_then(|rt| rt.block_on(run(args)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    m3_server::process::prepare();
    let config = AggregatorConfig::load(&args.config)?;
    tracing::info!(instance = %config.instance.instance_id, host_id = %config.host_id, "Starting m3aggregator.");
    let kv: Arc<dyn KvStore> = Arc::new(
        EtcdKv::connect(&config.etcd)
            .await
            .context("connecting to etcd (kvClient.etcd)")?,
    );
    let rawtcp = match &config.rawtcp_address {
        Some(address) => Some(
            TcpListener::bind(address)
                .await
                .with_context(|| format!("binding rawtcp.listenAddress {address}"))?,
        ),
        None => None,
    };
    let m3msg = match &config.m3msg {
        Some((address, _)) => Some(
            TcpListener::bind(address)
                .await
                .with_context(|| format!("binding m3msg.server.listenAddress {address}"))?,
        ),
        None => None,
    };
    let http = TcpListener::bind(&config.http_address)
        .await
        .with_context(|| format!("binding http.listenAddress {}", config.http_address))?;

    let aggregator = Arc::new(Aggregator::new(
        config.engine.clone(),
        placement_shard_fn(&config.instance),
    ));
    let mut registry = Registry::default();
    let consumer_metrics = m3_msg::ConsumerMetrics::default();
    if m3msg.is_some() {
        consumer_metrics.register(&mut registry, "m3aggregator_m3msg_ingest");
    }
    let instance = Arc::new(
        AggregatorInstance::start(
            Arc::clone(&aggregator),
            kv,
            config.instance.clone(),
            &mut registry,
        )
        .await
        .context("joining the cluster")?,
    );
    let cancel = CancellationToken::new();
    let http_refused = Arc::clone(&aggregator);
    let mut ingest_tasks = Vec::new();
    if let Some(listener) = rawtcp {
        let serving = serve_rawtcp(
            listener,
            Arc::clone(&aggregator),
            config.rawtcp_max_message_size,
            config.rawtcp_limits,
            cancel.clone(),
        );
        ingest_tasks.push(tokio::spawn(async move {
            if let Err(e) = serving.await {
                tracing::error!(error = %e, "rawtcp server failed.");
            }
        }));
    }
    if let (Some(listener), Some((_, consumer))) = (m3msg, &config.m3msg) {
        ingest_tasks.push(tokio::spawn(serve_m3msg(
            listener,
            Arc::clone(&aggregator),
            consumer.clone(),
            consumer_metrics,
            cancel.clone(),
        )));
    }
    drop(aggregator);
    let app = m3_aggregator::http::router(Arc::clone(&instance), Arc::new(Mutex::new(registry)));
    let http_task = tokio::spawn(m3_server::http::serve(
        http,
        app,
        config.http_limits,
        cancel.clone(),
        move || http_refused.metrics().record_http_connection_refused(),
    ));
    tracing::info!(
        rawtcp = ?config.rawtcp_address,
        m3msg = ?config.m3msg.as_ref().map(|(address, _)| address),
        http = %config.http_address,
        "m3aggregator is running."
    );

    m3_server::process::shutdown_signal().await;
    tracing::info!("Shutting down: flushing ended windows.");
    cancel.cancel();
    // A client that never finishes a request must not keep the final flush from running.
    ingest_tasks.push(http_task);
    for mut task in ingest_tasks {
        if tokio::time::timeout(std::time::Duration::from_secs(5), &mut task)
            .await
            .is_err()
        {
            task.abort();
            let _ = task.await;
        }
    }
    match Arc::try_unwrap(instance) {
        Ok(instance) => instance.shutdown().await,
        Err(_) => tracing::warn!("The instance is still referenced; it was not shut down cleanly."),
    }
    tracing::info!("Stopped.");
    Ok(())
}
