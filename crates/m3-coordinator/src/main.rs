//! `m3coordinator -f <config>`: a coordinator of the cluster.
//!
//! Flags and glue only: [`m3_coordinator::server::Coordinator`] assembles the parts.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use m3_cluster::KvStore;
use m3_cluster::kv::etcd::EtcdKv;
use m3_config::ConfigError;
use m3_coordinator::config::CoordinatorConfig;
use m3_coordinator::server::Coordinator;

/// jemalloc rather than glibc's malloc: the same RSS, and a sixth more samples per CPU-second
/// in `m3 local` (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// An m3coordinator instance.
#[derive(Debug, Parser)]
#[command(name = "m3coordinator", version, about)]
struct Args {
    /// The config file (M3's m3coordinator.yml keys).
    #[arg(short = 'f', long = "config")]
    config: PathBuf,
}

fn main() -> ExitCode {
    m3_server::process::run_main(run(Args::parse()))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let shutdown = m3_server::process::prepare();
    let config = CoordinatorConfig::load(&args.config)?;
    let etcd = config
        .etcd
        .as_ref()
        .ok_or_else(|| ConfigError::invalid(&args.config, "clusterManagement", "missing"))?;
    let kv: Arc<dyn KvStore> = Arc::new(
        EtcdKv::connect(etcd)
            .await
            .context("connecting to etcd (clusterManagement.etcd)")?,
    );
    let coordinator = Coordinator::start(&config, kv, None, None)
        .await
        .context("starting the coordinator")?;
    tracing::info!(http = %coordinator.addrs().http, ingest = ?coordinator.addrs().ingest, "m3coordinator is running.");
    shutdown.received().await;
    tracing::info!("Shutting down.");
    coordinator
        .drain_aggregator_client(Duration::from_secs(5))
        .await;
    coordinator.shutdown().await;
    tracing::info!("Stopped.");
    Ok(())
}
