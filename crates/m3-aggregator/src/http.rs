//! The aggregator's HTTP admin endpoints, with M3's paths and JSON:
//!
//! | path | answer |
//! |---|---|
//! | `GET /health` | `{"state":"OK"}` |
//! | `GET /status` | `{"status":{"flushStatus":{"electionState":"leader","canLead":true}}}` |
//! | `POST /resign` | gives up leadership of the shard set; `{"state":"OK"}` |
//! | `GET /metrics` | self-metrics in the Prometheus text format |

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use m3_cluster::ElectionState;
use parking_lot::Mutex;
use prometheus_client::registry::Registry;
use serde_json::json;

use crate::instance::AggregatorInstance;

#[derive(Clone)]
struct HttpState {
    instance: Arc<AggregatorInstance>,
    registry: Arc<Mutex<Registry>>,
}

/// The admin router of `instance`, serving `registry` at `/metrics`.
pub fn router(instance: Arc<AggregatorInstance>, registry: Arc<Mutex<Registry>>) -> Router {
    Router::new()
        .route(
            "/health",
            get(|| async { axum::Json(json!({"state": "OK"})) }),
        )
        .route("/status", get(status))
        .route("/resign", post(resign))
        .route("/metrics", get(metrics))
        .with_state(HttpState { instance, registry })
}

/// M3's name of an election state.
pub fn election_state_name(state: ElectionState) -> &'static str {
    match state {
        ElectionState::Leader => "leader",
        ElectionState::Follower => "follower",
        ElectionState::PendingFollower => "pendingFollower",
        ElectionState::Unknown => "unknown",
    }
}

async fn status(State(state): State<HttpState>) -> Response {
    let status = state.instance.status();
    axum::Json(json!({
        "status": {
            "flushStatus": {
                "electionState": election_state_name(status.election_state),
                "canLead": status.can_lead,
            }
        }
    }))
    .into_response()
}

async fn resign(State(state): State<HttpState>) -> Response {
    match state.instance.resign().await {
        Ok(()) => axum::Json(json!({"state": "OK"})).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "Resigning failed.");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                axum::Json(json!({"error": e.to_string()})),
            )
                .into_response()
        }
    }
}

async fn metrics(State(state): State<HttpState>) -> Response {
    m3_server::http::metrics_response(&state.registry)
}
