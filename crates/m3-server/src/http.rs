//! The HTTP server of every process: an axum [`Router`] served by hyper with bounds.
//!
//! `axum::serve` sets no timeout: a client that opens a connection and sends nothing, or
//! half a request line, holds a file descriptor forever, and enough of them make `/health`
//! unreachable. [`serve`] adds:
//!
//! * a header-read timeout, which in hyper also bounds how long a keep-alive connection may
//!   sit idle between requests;
//! * a connection limit: beyond it a connection gets `503` and is closed at once, so the
//!   process never runs out of file descriptors because of idle clients;
//! * graceful shutdown: on cancellation it stops accepting, lets requests in progress finish
//!   (bounded) and closes idle connections.
//!
//! Request bodies are bounded by the handlers, which know what they accept.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::tcp::ConnectionLimit;

/// Bounds of one HTTP listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// Connections served at once (default 4096).
    pub max_connections: usize,
    /// A request's headers must arrive within this long, counted from the connection's start
    /// or from the end of the previous response: also the keep-alive idle timeout (default
    /// 60s, M3's `http.readTimeout`).
    pub header_read_timeout: Duration,
    /// How long shutdown waits for requests in progress (default 10s).
    pub shutdown_grace: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_connections: 4096,
            header_read_timeout: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

/// What a connection over the limit is answered before it is closed.
const OVER_LIMIT_RESPONSE: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nRetry-After: 1\r\nContent-Type: text/plain\r\nContent-Length: 34\r\n\r\ntoo many connections; retry later\n";

/// Serves `router` on `listener` until `shutdown` is cancelled, within `limits`.
/// `on_rejected` is called for each connection refused over the limit (to count it).
///
/// # Cancel safety
/// Dropping the future stops accepting and drops the connections being served; cancel
/// `shutdown` for a graceful stop.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: HttpLimits,
    shutdown: CancellationToken,
    on_rejected: impl Fn() + Send + Sync + 'static,
) {
    // HTTP/1.1 only: telling HTTP/2 apart means waiting for the first bytes with no timeout at
    // all, and remote-write clients speak HTTP/1.1 in plain text.
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let graceful = GracefulShutdown::new();
    let connections = ConnectionLimit::new(limits.max_connections);
    let mut backoff = Duration::from_millis(5);
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => {
                backoff = Duration::from_millis(5);
                accepted
            }
            Err(e) => {
                // Running out of file descriptors lands here: wait and retry.
                tracing::warn!(error = %e, ?backoff, "HTTP accept failed, retrying.");
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let Some(permit) = connections.try_acquire() else {
            on_rejected();
            refuse(stream, peer);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(router.clone());
        let connection = builder.serve_connection(TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%peer, error = %e, "HTTP connection ended with an error.");
            }
            drop(permit);
        });
    }
    drop(listener);
    if tokio::time::timeout(limits.shutdown_grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            grace = ?limits.shutdown_grace,
            "HTTP connections still open after the shutdown grace period; closing them."
        );
    }
}

/// Answers 503 without reading the request and closes the connection.
fn refuse(stream: tokio::net::TcpStream, peer: SocketAddr) {
    tracing::debug!(%peer, "HTTP connection over the limit refused.");
    let _ = stream.try_write(OVER_LIMIT_RESPONSE);
}

/// The `/metrics` answer of every process: `registry` in the OpenMetrics text format, or 500
/// when it does not encode.
pub fn metrics_response(
    registry: &parking_lot::Mutex<prometheus_client::registry::Registry>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let mut text = String::new();
    if prometheus_client::encoding::text::encode(&mut text, &registry.lock()).is_err() {
        return axum::http::StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn start(limits: HttpLimits) -> (SocketAddr, CancellationToken, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = Router::new().route("/health", axum::routing::get(|| async { "ok" }));
        let shutdown = CancellationToken::new();
        let rejected = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&rejected);
        tokio::spawn(serve(
            listener,
            router,
            limits,
            shutdown.clone(),
            move || {
                counter.fetch_add(1, Ordering::Relaxed);
            },
        ));
        (addr, shutdown, rejected)
    }

    #[tokio::test]
    async fn a_silent_connection_is_closed_after_the_header_timeout() {
        let limits = HttpLimits {
            header_read_timeout: Duration::from_millis(200),
            ..HttpLimits::default()
        };
        let (addr, shutdown, _) = start(limits).await;
        // One connection that sends nothing, one that stops inside its request line.
        let mut mute = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut buf = Vec::new();
        let _closed = tokio::time::timeout(Duration::from_secs(5), mute.read_to_end(&mut buf))
            .await
            .expect("the server closes a connection that sends nothing");
        let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
        silent.write_all(b"GET /hea").await.unwrap();
        let mut buf = Vec::new();
        // EOF or a reset: either way closed, not hanging.
        let _closed = tokio::time::timeout(Duration::from_secs(5), silent.read_to_end(&mut buf))
            .await
            .expect("the server closes a connection that never finishes its headers");
        shutdown.cancel();
    }

    #[tokio::test]
    async fn connections_over_the_limit_get_503_and_the_rest_are_served() {
        let limits = HttpLimits {
            max_connections: 2,
            ..HttpLimits::default()
        };
        let (addr, shutdown, rejected) = start(limits).await;
        let _a = tokio::net::TcpStream::connect(addr).await.unwrap();
        let _b = tokio::net::TcpStream::connect(addr).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut answer = String::new();
        c.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
        assert_eq!(rejected.load(Ordering::Relaxed), 1);
        drop((_a, _b));
        let ok = m3_wait(|| async {
            reqwest::get(format!("http://{addr}/health"))
                .await
                .ok()
                .filter(|r| r.status().is_success())
        })
        .await;
        assert!(ok, "served again once the idle connections are gone");
        shutdown.cancel();
    }

    async fn m3_wait<F, Fut, T>(mut check: F) -> bool
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        for _ in 0..100 {
            if check().await.is_some() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }
}
