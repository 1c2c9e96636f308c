//! `m3 sink`: a remote-write endpoint that takes every request and keeps nothing.
//!
//! The relay benchmark (`scripts/bench-relay-vs-vmagent.sh`) points vmagent at it, so that the
//! relay's own CPU is measured with a receiver that costs next to nothing. It reads each body
//! whole (so the sender's writes complete as they would against a real store), counts the
//! requests and bytes, and answers 204; the counts are printed when it stops.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context;
use axum::Router;
use axum::body::Bytes;
use axum::extract::DefaultBodyLimit;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;

#[derive(Default)]
struct Received {
    requests: AtomicU64,
    bytes: AtomicU64,
}

async fn take(State(received): State<Arc<Received>>, body: Bytes) -> StatusCode {
    received.requests.fetch_add(1, Ordering::Relaxed);
    received
        .bytes
        .fetch_add(body.len() as u64, Ordering::Relaxed);
    StatusCode::NO_CONTENT
}

/// Serves until interrupted, then prints what it received.
///
/// # Errors
/// The address cannot be bound.
pub(crate) async fn run(listen: SocketAddr) -> anyhow::Result<()> {
    let shutdown = m3_server::process::ShutdownSignal::install();
    let received = Arc::new(Received::default());
    let app = Router::new()
        .fallback(post(take))
        .layer(DefaultBodyLimit::disable())
        .with_state(Arc::clone(&received));
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding the sink to {listen}"))?;
    println!("sink listening on {listen}");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.received())
        .await
        .context("serving the sink")?;
    println!(
        "sink received {} requests, {} bytes",
        received.requests.load(Ordering::Relaxed),
        received.bytes.load(Ordering::Relaxed)
    );
    Ok(())
}
