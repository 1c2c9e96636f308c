//! What every binary (`m3`, `m3aggregator`, `m3coordinator`) sets up the same way before it
//! serves: logging, the runtime and how an error ends the process, the signals it reacts to,
//! and its file-descriptor limit.

use std::fmt::Display;
use std::future::Future;
use std::process::ExitCode;

use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::watch;

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
///
/// A second signal, during start-up or during the graceful stop, ends the process at once
/// with the shell's code for it (128 + the signal's number): a stop can wait tens of seconds
/// on unacknowledged outputs and leader resignation, and an operator who presses Ctrl-C again
/// means now. What the store had acknowledged is in its write-ahead log either way.
pub struct ShutdownSignal {
    /// Set to `true` by the first signal.
    first: watch::Receiver<bool>,
}

impl ShutdownSignal {
    /// Registers the handlers. Call inside the runtime, before anything else starts.
    pub fn install() -> Self {
        Self::install_with(|code| std::process::exit(code))
    }

    /// [`install`](Self::install), with what a second signal does given as `force` (called
    /// with the exit code).
    fn install_with(force: impl FnOnce(i32) + Send + 'static) -> Self {
        let register = |kind: SignalKind, name: &str| match signal(kind) {
            Ok(stream) => Some(stream),
            Err(e) => {
                tracing::warn!(error = %e, signal = name, "Cannot handle the signal; it stops the process at once.");
                None
            }
        };
        let mut terminate = register(SignalKind::terminate(), "SIGTERM");
        let mut interrupt = register(SignalKind::interrupt(), "SIGINT");
        let (first, receiver) = watch::channel(false);
        tokio::spawn(async move {
            next_signal(&mut terminate, &mut interrupt).await;
            first.send_replace(true);
            let (name, number) = next_signal(&mut terminate, &mut interrupt).await;
            tracing::warn!(
                signal = name,
                "A second signal: stopping at once, without finishing the graceful stop."
            );
            force(128 + number);
        });
        Self { first: receiver }
    }

    /// Completes on the first SIGTERM or SIGINT received since [`ShutdownSignal::install`].
    pub async fn received(mut self) {
        if self.first.wait_for(|received| *received).await.is_err() {
            // The watcher only ends with the process; without it, no signal comes.
            std::future::pending::<()>().await;
        }
    }
}

/// The next SIGTERM or SIGINT, by name and number.
async fn next_signal(
    terminate: &mut Option<Signal>,
    interrupt: &mut Option<Signal>,
) -> (&'static str, i32) {
    async fn next(stream: &mut Option<Signal>) {
        match stream {
            Some(stream) => {
                stream.recv().await;
            }
            None => std::future::pending().await,
        }
    }
    tokio::select! {
        _ = next(terminate) => ("SIGTERM", 15),
        _ = next(interrupt) => ("SIGINT", 2),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn send_to_self(signal: &str) {
        let status = std::process::Command::new("kill")
            .args([signal, &std::process::id().to_string()])
            .status()
            .expect("the kill command runs");
        assert!(status.success(), "kill {signal} failed");
    }

    #[tokio::test]
    async fn the_first_signal_stops_gracefully_and_a_second_forces_the_exit() {
        let (forced, mut forced_code) = tokio::sync::oneshot::channel();
        let shutdown = ShutdownSignal::install_with(move |code| {
            let _ = forced.send(code);
        });
        send_to_self("-TERM");
        tokio::time::timeout(Duration::from_secs(10), shutdown.received())
            .await
            .expect("the first SIGTERM ends the wait");
        assert!(
            forced_code.try_recv().is_err(),
            "one signal must not force the exit"
        );
        send_to_self("-INT");
        let code = tokio::time::timeout(Duration::from_secs(10), forced_code)
            .await
            .expect("the second signal forces the exit")
            .expect("the watcher calls force");
        assert_eq!(code, 130, "SIGINT's exit code is 128 + 2");
    }
}
