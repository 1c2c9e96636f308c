//! Admin API errors: one type, and the one place that maps each to its HTTP status and the
//! `{"status": "error", "error": ..}` body.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use m3_cluster::placement::PlacementError;
use m3_cluster::placement::store::PlacementStoreError;
use m3_cluster::topic::TopicError;
use serde::Serialize;

/// Why an admin request failed. The message is the `error` of the response body.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The request is malformed or asks for something this API does not do.
    #[error("{0}")]
    BadRequest(String),
    /// `{svc}` is not a service with a placement.
    #[error(
        "unknown service {name:?}: placements exist for m3aggregator, m3coordinator and m3db{hint}"
    )]
    UnknownService {
        /// The name in the path.
        name: String,
        /// A "did you mean" suffix, or empty.
        hint: String,
    },
    /// No placement is stored for the service.
    #[error(
        "no placement for service {service:?} in environment {environment:?} (key {key:?}); \
         create one with POST /api/v1/services/{service}/placement/init"
    )]
    PlacementNotFound {
        /// The service.
        service: String,
        /// The environment.
        environment: String,
        /// The KV key read.
        key: String,
    },
    /// `GET ..?version=N` asked for a version that is not (or no longer) stored.
    #[error(
        "placement version {version} not found for service {service:?} in environment {environment:?}"
    )]
    PlacementVersionNotFound {
        /// The service.
        service: String,
        /// The environment.
        environment: String,
        /// The version asked for.
        version: i64,
    },
    /// The placement store refused or failed.
    #[error(transparent)]
    PlacementStore(#[from] PlacementStoreError),
    /// A placement could not be built or changed.
    #[error(transparent)]
    Placement(#[from] PlacementError),
    /// The topic store refused or failed.
    #[error(transparent)]
    Topic(#[from] TopicError),
}

impl AdminError {
    /// The HTTP status of the error; the one place where errors are classified.
    pub fn status(&self) -> StatusCode {
        match self {
            AdminError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AdminError::UnknownService { .. }
            | AdminError::PlacementNotFound { .. }
            | AdminError::PlacementVersionNotFound { .. } => StatusCode::NOT_FOUND,
            AdminError::PlacementStore(e) => match e {
                PlacementStoreError::AlreadyExists { .. }
                | PlacementStoreError::VersionMismatch { .. } => StatusCode::CONFLICT,
                PlacementStoreError::NotFound { .. } => StatusCode::NOT_FOUND,
                PlacementStoreError::Placement(e) => placement_status(e),
                PlacementStoreError::Kv(_) => StatusCode::INTERNAL_SERVER_ERROR,
            },
            AdminError::Placement(e) => placement_status(e),
            AdminError::Topic(e) => match e {
                TopicError::AlreadyExists { .. } | TopicError::VersionMismatch { .. } => {
                    StatusCode::CONFLICT
                }
                TopicError::NotFound { .. } => StatusCode::NOT_FOUND,
                e if e.is_invalid_input() => StatusCode::BAD_REQUEST,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            },
        }
    }
}

pub(super) fn placement_status(e: &PlacementError) -> StatusCode {
    match e {
        PlacementError::UnknownInstance { .. } => StatusCode::NOT_FOUND,
        e if e.is_invalid_input() => StatusCode::BAD_REQUEST,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// M3's error body.
#[derive(Serialize)]
pub(super) struct ErrorBody<'a> {
    pub(super) status: &'static str,
    pub(super) error: &'a str,
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        let status = self.status();
        let reason = self.to_string();
        if status.is_server_error() {
            tracing::error!(error = %reason, "Admin request failed.");
        } else {
            tracing::debug!(status = status.as_u16(), error = %reason, "Admin request refused.");
        }
        let body = ErrorBody {
            status: "error",
            error: &reason,
        };
        (status, Json(body)).into_response()
    }
}
