//! What every binary (`m3`, `m3aggregator`, `m3coordinator`) sets up the same way before it
//! serves: logging, the runtime and how an error ends the process, the signals it reacts to,
//! and its file-descriptor limit.

use std::fmt::Display;
use std::future::Future;
use std::process::ExitCode;

use tokio::signal::unix::{Signal, SignalKind, signal};

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

/// Logs to stdout, with the banner `m3 local` prints, at the level `RUST_LOG` asks for
/// (default `info`).
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
/// (`SIGXFSZ`), so the store reports it like a full disk. Call once, inside the runtime, before
/// anything else: the returned [`ShutdownSignal`] catches SIGTERM from here on.
#[must_use = "the process stops gracefully only when it waits on the returned signal"]
pub fn prepare() -> ShutdownSignal {
    let shutdown = ShutdownSignal::install();
    match crate::fd_limit::raise() {
        Ok(limit) => tracing::debug!(limit, "Open-file limit raised to the hard limit."),
        Err(e) => tracing::warn!(error = %e, "Cannot raise the open-file limit."),
    }
    let xfsz = SignalKind::from_raw(25); // SIGXFSZ on Linux
    match signal(xfsz) {
        Ok(mut signals) => {
            tokio::spawn(async move {
                while signals.recv().await.is_some() {
                    tracing::warn!("A write went past the file-size limit (SIGXFSZ).");
                }
            });
        }
        Err(e) => tracing::warn!(error = %e, "Cannot handle SIGXFSZ."),
    }
    shutdown
}

/// SIGTERM and Ctrl-C (SIGINT), caught from the moment this is made.
///
/// A signal's default action kills the process, and tokio replaces it only when a handler is
/// registered. Registering where the process starts to wait would leave its whole start-up
/// (opening stores, binding listeners, announcing its addresses) open to being killed
/// mid-way by a supervisor's SIGTERM. Made first, this keeps such a signal, and the process
/// stops gracefully as soon as it serves.
pub struct ShutdownSignal {
    terminate: Option<Signal>,
    interrupt: Option<Signal>,
}

impl ShutdownSignal {
    /// Registers the handlers. Call inside the runtime, before anything else starts.
    pub fn install() -> Self {
        let register = |kind: SignalKind, name: &str| match signal(kind) {
            Ok(stream) => Some(stream),
            Err(e) => {
                tracing::warn!(error = %e, signal = name, "Cannot handle the signal; it stops the process at once.");
                None
            }
        };
        Self {
            terminate: register(SignalKind::terminate(), "SIGTERM"),
            interrupt: register(SignalKind::interrupt(), "SIGINT"),
        }
    }

    /// Completes on the first SIGTERM or SIGINT received since [`ShutdownSignal::install`].
    pub async fn received(mut self) {
        async fn next(stream: &mut Option<Signal>) {
            match stream {
                Some(stream) => {
                    stream.recv().await;
                }
                None => std::future::pending().await,
            }
        }
        tokio::select! {
            _ = next(&mut self.terminate) => {}
            _ = next(&mut self.interrupt) => {}
        }
    }
}
