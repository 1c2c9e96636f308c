//! What every binary (`m3`, `m3aggregator`, `m3coordinator`) sets up the same way before it
//! serves: logging, the runtime and how an error ends the process, the signals it reacts to,
//! and its file-descriptor limit.

use std::fmt::Display;
use std::future::Future;
use std::process::ExitCode;

/// A binary's `main` after its flags are parsed: logging, a multi-threaded runtime, `run` to
/// completion. An error is printed with its chain (`{:#}`) on stderr and the process exits
/// with code 2.
pub fn run_main<E: Display>(run: impl Future<Output = Result<(), E>>) -> ExitCode {
    init_logging();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Logs to stderr at the level `RUST_LOG` asks for (default `info`).
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
}

/// Raises the file-descriptor limit (see [`crate::fd_limit`]) and logs the outcome, and makes
/// a write past the file-size limit fail with `EFBIG` instead of killing the process
/// (`SIGXFSZ`), so the store reports it like a full disk. Call once, inside the runtime.
pub fn prepare() {
    match crate::fd_limit::raise() {
        Ok(limit) => tracing::debug!(limit, "Open-file limit raised to the hard limit."),
        Err(e) => tracing::warn!(error = %e, "Cannot raise the open-file limit."),
    }
    let xfsz = tokio::signal::unix::SignalKind::from_raw(25); // SIGXFSZ on Linux
    match tokio::signal::unix::signal(xfsz) {
        Ok(mut signals) => {
            tokio::spawn(async move {
                while signals.recv().await.is_some() {
                    tracing::warn!("A write went past the file-size limit (SIGXFSZ).");
                }
            });
        }
        Err(e) => tracing::warn!(error = %e, "Cannot handle SIGXFSZ."),
    }
}

/// Completes on SIGTERM or Ctrl-C (SIGINT).
pub async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
