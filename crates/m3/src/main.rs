//! The `m3` command: flags and glue only; the parts live in the library crates.
//!
//! * `m3 local` runs the whole pipeline in one process (see [`local`]).

mod local;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// M3's aggregation tier, in Rust.
#[derive(Debug, Parser)]
#[command(name = "m3", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a coordinator, two aggregators (RF 2), an in-memory KV and the embedded store in one
    /// process, all talking over loopback TCP.
    Local {
        /// The config file.
        #[arg(short = 'f', long = "config", default_value = "config/m3local.yml")]
        config: PathBuf,
        /// Where the embedded store keeps its files (overrides `coordinator.storage.dataDir`).
        #[arg(long = "data-dir")]
        data_dir: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Local { config, data_dir } => local::run(&config, data_dir).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
