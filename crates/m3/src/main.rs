//! The `m3` command: flags and glue only; the parts live in the library crates.
//!
//! * `m3 local` runs the whole pipeline in one process (see [`local`]).
//! * `m3 bench` writes remote-write load to a coordinator and reports what it stored (see
//!   [`bench`](mod@bench)).
//! * `m3 sink` takes remote writes and keeps nothing: the receiver of the relay benchmark (see
//!   [`sink`]).

/// jemalloc rather than glibc's malloc: the same RSS, and a sixth more samples per CPU-second
/// in `m3 local` (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

mod bench;
mod local;
mod query_bench;
mod sink;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

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
    /// Run a coordinator, an aggregator (or a replicated pair), an in-memory KV and the embedded
    /// store in one process.
    Local {
        /// The config file.
        #[arg(short = 'f', long = "config", default_value = "config/m3local.yml")]
        config: PathBuf,
        /// Where the embedded store keeps its files (overrides `coordinator.storage.dataDir`).
        #[arg(long = "data-dir")]
        data_dir: Option<PathBuf>,
    },
    /// Write Prometheus remote-write load to a coordinator, then print what was sent, accepted,
    /// rejected and failed, the achieved rate, and what the coordinator stored raw and
    /// aggregated meanwhile (from its /metrics).
    Bench {
        /// The coordinator's base URL.
        #[arg(long, default_value = "http://127.0.0.1:7201")]
        url: String,
        /// The remote-write path under `--url` (VictoriaMetrics and Prometheus take
        /// `/api/v1/write`, to compare them on the same traffic).
        #[arg(long, default_value = "/api/v1/prom/remote/write")]
        write_path: String,
        /// Distinct series; each gets one sample per round.
        #[arg(long, default_value_t = 10_000)]
        series: usize,
        /// Target samples per second; 0 sends as fast as the coordinator answers.
        #[arg(long, default_value_t = 100_000)]
        rate: u64,
        /// How long to send (`30s`, `2m`, or seconds).
        #[arg(long, default_value = "30s", value_parser = bench::parse_duration_arg)]
        duration: Duration,
        /// Samples per request (Prometheus sends up to 2000).
        #[arg(long, default_value_t = 2000)]
        batch: usize,
        /// Requests in flight at once.
        #[arg(long, default_value_t = 4)]
        concurrency: usize,
        /// Labels per series, `__name__` included (`instance`, `job`, `pod`, `namespace`, ...).
        #[arg(long, default_value_t = 10)]
        labels: usize,
        /// Prefix of every metric name.
        #[arg(long, default_value = "m3bench_")]
        metric_prefix: String,
        /// After sending, how long to wait for aggregated output to be stored (`90s`, or
        /// seconds). Windows are stored after window end + past buffer + resolution.
        #[arg(long, default_value = "0", value_parser = bench::parse_duration_arg)]
        wait_stored: Duration,
        /// A process whose CPU time over the run to print (repeat for several).
        #[arg(long = "pid")]
        pids: Vec<u32>,
        /// The resolutions of the coordinator's aggregated namespaces (m3 local's: 10s and
        /// 1m): one output is expected per series, window and resolution.
        #[arg(long, value_delimiter = ',', default_value = "10s,1m", value_parser = bench::parse_duration_arg)]
        resolutions: Vec<Duration>,
        /// The aggregators' past buffer (`bufferDurationForPastTimedMetric`, m3 local's: 1m):
        /// a window is due once window end + past buffer + resolution, and 5s for its outputs
        /// to be stored, have passed.
        #[arg(long, default_value = "1m", value_parser = bench::parse_duration_arg)]
        buffer_past: Duration,
    },
    /// Write the same counters to several Prometheus-compatible APIs, then time the same range
    /// query against each and print the ratio to the first (the baseline).
    QueryBench {
        /// `NAME=URL[,WRITE_PATH]`, repeated; the first is the baseline.
        #[arg(long = "target", value_parser = query_bench::parse_target, required = true)]
        targets: Vec<query_bench::Target>,
        /// Distinct series.
        #[arg(long, default_value_t = 10_000)]
        series: usize,
        /// The range the query covers, ending now.
        #[arg(long, default_value = "1h", value_parser = bench::parse_duration_arg)]
        range: Duration,
        /// The query's step.
        #[arg(long, default_value = "15s", value_parser = bench::parse_duration_arg)]
        step: Duration,
        /// Timed runs per target (after two warm-ups).
        #[arg(long, default_value_t = 10)]
        runs: usize,
        /// The query.
        #[arg(
            long,
            default_value = "sum by (job) (rate(bench_http_requests_total[5m]))"
        )]
        query: String,
    },
    /// Take Prometheus remote writes on every path, answer 204 and keep nothing; print the
    /// requests and bytes received when stopped. The receiver for relay benchmarks.
    Sink {
        /// The address to listen on.
        #[arg(long, default_value = "127.0.0.1:18429")]
        listen: std::net::SocketAddr,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    m3_server::process::run_main(async {
        match cli.command {
            Command::Local { config, data_dir } => {
                let shutdown = m3_server::process::prepare();
                local::run(&config, data_dir, shutdown).await
            }
            Command::Bench {
                url,
                write_path,
                series,
                rate,
                duration,
                batch,
                concurrency,
                labels,
                metric_prefix,
                wait_stored,
                pids,
                resolutions,
                buffer_past,
            } => {
                bench::run(bench::BenchOptions {
                    url,
                    write_path,
                    series,
                    rate,
                    duration,
                    batch,
                    concurrency,
                    labels,
                    metric_prefix,
                    wait_stored,
                    pids,
                    resolutions,
                    buffer_past,
                })
                .await
            }
            Command::QueryBench {
                targets,
                series,
                range,
                step,
                runs,
                query,
            } => {
                query_bench::run(query_bench::QueryBenchOptions {
                    targets,
                    series,
                    range,
                    step,
                    runs,
                    query,
                })
                .await
            }
            Command::Sink { listen } => sink::run(listen).await,
        }
    })
}
