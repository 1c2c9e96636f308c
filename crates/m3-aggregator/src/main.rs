//! `m3aggregator -f <config>`: one aggregator of the cluster.
//!
//! Flags and glue only: the config is read by [`m3_aggregator::config`]; the engine, cluster
//! membership, listeners and shutdown order live in [`m3_aggregator::server`].

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use m3_aggregator::config::AggregatorConfig;
use m3_aggregator::server::{AggregatorServer, Listeners, ServerOptions};
use m3_cluster::KvStore;
use m3_cluster::kv::etcd::EtcdKv;
use tokio::net::TcpListener;

/// jemalloc rather than glibc's malloc: the same RSS, and a sixth more samples per CPU-second
/// in `m3 local` (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// An m3aggregator instance.
#[derive(Debug, Parser)]
#[command(name = "m3aggregator", version, about)]
struct Args {
    /// The config file (M3's m3aggregator.yml keys).
    #[arg(short = 'f', long = "config")]
    config: PathBuf,
}

fn main() -> ExitCode {
    m3_server::process::run_main(run(Args::parse()))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let shutdown = m3_server::process::prepare();
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

    let server = AggregatorServer::start(
        ServerOptions::from(&config),
        kv,
        Listeners {
            rawtcp,
            m3msg,
            http,
        },
    )
    .await
    .context("joining the cluster")?;
    tracing::info!(
        rawtcp = ?config.rawtcp_address,
        m3msg = ?config.m3msg.as_ref().map(|(address, _)| address),
        http = %config.http_address,
        "m3aggregator is running."
    );

    shutdown.received().await;
    tracing::info!("Shutting down: flushing ended windows.");
    server.shutdown().await;
    tracing::info!("Stopped.");
    Ok(())
}
