//! The placement and topic admin API: how operators lay out aggregators, coordinators and the
//! topic that carries aggregated metrics back to the coordinators.
//!
//! Everything here is a thin HTTP face over `m3-cluster`: a handler parses the request, reads
//! the current placement or topic from KV, lets the placement algorithms or the topic store
//! compute the next state, and writes it back with check-and-set. Nothing is cached in the
//! coordinator, so several coordinators can serve the same API over one etcd.
//!
//! # Routes
//!
//! | method and path | body | does |
//! |---|---|---|
//! | `POST /api/v1/services/{svc}/placement/init` | `{"num_shards", "replication_factor", "instances": [..]}` | builds and stores the first placement; 409 if one exists |
//! | `GET /api/v1/services/{svc}/placement` | — | the placement; 404 if none |
//! | `DELETE /api/v1/services/{svc}/placement` | — | deletes it; answers with what was deleted |
//! | `POST /api/v1/services/{svc}/placement` | `{"instances": [..]}` | adds instances |
//! | `POST /api/v1/services/{svc}/placement/remove` | `{"instance_ids": [..]}` | removes instances |
//! | `POST /api/v1/services/{svc}/placement/replace` | `{"leavingInstanceIDs": [..], "candidates": [..]}` | replaces instances one for one |
//! | `DELETE /api/v1/services/{svc}/placement/{id}` | — | removes one instance |
//! | `POST /api/v1/topic/init` | `{"numberOfShards": 64}` | creates the topic; 409 if it exists |
//! | `GET /api/v1/topic` | — | the topic; 404 if none |
//! | `POST /api/v1/topic` | `{"consumerService": {..}}` | adds a consumer service |
//! | `PUT /api/v1/topic` | `{"consumerServices": [..], "version": N}` | replaces the consumer services if the topic is still at `version` |
//! | `DELETE /api/v1/topic` | — | deletes the topic; answers with what was deleted |
//!
//! `{svc}` picks the placement kind and its KV namespace, as M3's coordinator does:
//!
//! | `{svc}` | placement | KV key |
//! |---|---|---|
//! | `m3aggregator` | mirrored: shard sets of RF members holding identical shards | `/placement/<env>/m3aggregator` |
//! | `m3coordinator` | non-sharded: a list of instances | `_sd.placement/<env>/m3coordinator` |
//! | `m3db` | sharded, RF copies of each shard on distinct isolation groups | `_sd.placement/<env>/m3db` |
//!
//! Headers: `Cluster-Environment-Name` (default `default_env`) picks the environment part of
//! the KV keys; `Cluster-Zone-Name` (default `embedded`) is the zone given to instances that
//! name none; `Topic-Name` (default `aggregated_metrics`) picks the topic.
//!
//! # JSON
//!
//! M3 parses requests with jsonpb and answers with jsonpb (`EmitDefaults`), and its users'
//! scripts depend on both, so this module copies that behaviour rather than serde's defaults:
//!
//! - Requests accept the proto field name and the lowerCamelCase JSON name (`num_shards` and
//!   `numShards`, `instance_ids` and `instanceIds`, ...). Integers may be JSON numbers or
//!   strings (`"messageTtlNanos": "300000000000"`), enums may be names or numbers. A field
//!   neither form knows is rejected with 400, so a typo never passes silently.
//! - Responses use lowerCamelCase, emit every field even when it holds its default, write 64-bit
//!   integers as strings (`"cutoverNanos": "0"`) and 32-bit ones as numbers, and write enums by
//!   name (`"state": "INITIALIZING"`). They are `{"placement": .., "version": N}` and
//!   `{"topic": .., "version": N}`.
//! - Errors are `{"status": "error", "error": "<reason>"}`. [`AdminError::status`] is the one
//!   place that maps an error to its HTTP status: 400 for bad input, 404 for a missing
//!   placement, topic, service or instance, 409 when the request conflicts with what is stored
//!   (init of something that exists, a version that moved on), 500 only when KV fails or holds
//!   something that does not decode; only those are logged at error level.
//!
//! # Cutover times
//!
//! Changes to an existing placement (add, remove, replace) hand shards from an old owner to a
//! new one at a transition time: now, rounded up to a multiple of the largest aggregation window
//! ([`AdminState::max_aggregation_window`]), so a transition never splits a window. Each change
//! first ends the previous one (see `m3_cluster::placement`), so a second change is refused with
//! 400 until the first one's transition time has passed, plus one window when shards left an
//! instance (the leaving owner still flushes the windows that end before the transition).
//!
//! An initial placement is different: its shards have no previous owner that could still be
//! aggregating them, so there is nothing to hand over from and no reason to wait. Its shards are
//! INITIALIZING with cutover 0, which means "owned since forever": aggregators accept data for
//! them at once. (M3 gives the initial shards a cutover of now rounded up to the window, so a
//! fresh cluster refuses data for up to one window after it is created.)
//!
//! # Not supported
//!
//! Dry runs and forced changes: a `Dry-Run: true` or `Force: true` header, or `"force": true`
//! in a body, is rejected with 400 on every placement change, so that neither is silently
//! applied as an ordinary change. Also missing: `GET ..?version=N`, `POST ../placement/set`,
//! and the deletion of an aggregator shard set's election and flush-times keys when its last
//! instance goes. `num_shards` and `replication_factor` are ignored for `m3coordinator`, whose
//! placement has no shards, and `option_override.skip_port_mirroring` has no effect because
//! shard sets are formed by isolation group, never by port. Shards given on request instances
//! are parsed and checked, but the algorithms assign shards themselves.

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::limits::PlacementLimits;
use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use m3_cluster::keys::{self, DEFAULT_ENVIRONMENT, DEFAULT_ZONE, ServiceId};
use m3_cluster::placement::store::PlacementStoreError;
use m3_cluster::placement::{
    self, Instance, InstanceMetadata, Placement, PlacementError, PlacementStore, Shard, ShardState,
    Timing,
};
use m3_cluster::topic::{ConsumerService, ConsumptionType, Topic, TopicError, TopicStore};
use m3_cluster::{KvStore, Versioned};
use m3_proto::topicpb;
use serde::de::{self, DeserializeOwned, Deserializer, Unexpected, Visitor};
use serde::{Deserialize, Serialize};

/// The header naming the environment (the `<env>` of every KV key).
pub const ENVIRONMENT_HEADER: &str = "Cluster-Environment-Name";
/// The header naming the zone given to instances that name none.
pub const ZONE_HEADER: &str = "Cluster-Zone-Name";
/// The header naming the topic of the topic routes.
pub const TOPIC_NAME_HEADER: &str = "Topic-Name";
/// M3's dry-run header; refused on placement changes (not supported).
const DRY_RUN_HEADER: &str = "Dry-Run";
/// M3's force header; refused on placement changes (not supported).
const FORCE_HEADER: &str = "Force";
/// The topic used when [`TOPIC_NAME_HEADER`] is absent.
pub const DEFAULT_TOPIC_NAME: &str = "aggregated_metrics";
/// The largest aggregation window used when none is configured: one minute, as in M3.
pub const DEFAULT_MAX_AGGREGATION_WINDOW: Duration = Duration::from_secs(60);

/// What the admin routes need: the cluster KV and the largest aggregation window.
#[derive(Clone)]
pub struct AdminState {
    /// The cluster KV holding placements and topics.
    pub kv: Arc<dyn KvStore>,
    /// The largest resolution among the aggregated namespaces (default
    /// [`DEFAULT_MAX_AGGREGATION_WINDOW`], one minute). Placement changes cut over on a multiple
    /// of it, and a change is refused until the previous one's leaving shards are one window
    /// past their cutoff.
    pub max_aggregation_window: Duration,
    /// Bounds on shard counts, instance counts and ID lengths (`limits.placement`).
    pub limits: PlacementLimits,
}

impl AdminState {
    /// A state over `kv` with the default aggregation window of one minute.
    pub fn new(kv: Arc<dyn KvStore>) -> Self {
        AdminState {
            kv,
            max_aggregation_window: DEFAULT_MAX_AGGREGATION_WINDOW,
            limits: PlacementLimits::default(),
        }
    }

    /// The timing of a change made now: no warm-up, transition on the next window boundary.
    fn timing(&self) -> Timing {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, nanos);
        Timing::new(now, 0, nanos(self.max_aggregation_window))
    }
}

impl fmt::Debug for AdminState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminState")
            .field("max_aggregation_window", &self.max_aggregation_window)
            .finish_non_exhaustive()
    }
}

fn nanos(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

/// The admin routes (see the [module docs](self)), ready to be merged into the coordinator's
/// HTTP router.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route(
            "/api/v1/services/{svc}/placement",
            get(placement_get)
                .delete(placement_delete)
                .post(placement_add),
        )
        .route(
            "/api/v1/services/{svc}/placement/init",
            post(placement_init),
        )
        .route(
            "/api/v1/services/{svc}/placement/remove",
            post(placement_remove),
        )
        .route(
            "/api/v1/services/{svc}/placement/replace",
            post(placement_replace),
        )
        .route(
            "/api/v1/services/{svc}/placement/{id}",
            delete(placement_delete_instance),
        )
        .route("/api/v1/topic/init", post(topic_init))
        .route(
            "/api/v1/topic",
            get(topic_get)
                .post(topic_add)
                .put(topic_update)
                .delete(topic_delete),
        )
        .with_state(state)
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

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
            AdminError::UnknownService { .. } | AdminError::PlacementNotFound { .. } => {
                StatusCode::NOT_FOUND
            }
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

fn placement_status(e: &PlacementError) -> StatusCode {
    match e {
        PlacementError::UnknownInstance { .. } => StatusCode::NOT_FOUND,
        e if e.is_invalid_input() => StatusCode::BAD_REQUEST,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// M3's error body.
#[derive(Serialize)]
struct ErrorBody<'a> {
    status: &'static str,
    error: &'a str,
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        let status = self.status();
        let reason = self.to_string();
        if status.is_server_error() {
            tracing::error!(error = %reason, "admin request failed");
        } else {
            tracing::debug!(status = status.as_u16(), error = %reason, "admin request refused");
        }
        let body = ErrorBody {
            status: "error",
            error: &reason,
        };
        (status, Json(body)).into_response()
    }
}

/// Parses a request body. Like jsonpb, only a JSON object is a message: serde would also read a
/// struct from an array of its fields in order, which no M3 client sends on purpose.
fn parse<T: DeserializeOwned>(body: &[u8], what: &str) -> Result<T, AdminError> {
    match body.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => {}
        None => {
            return Err(AdminError::BadRequest(format!(
                "invalid {what}: the body is empty; expected a JSON object"
            )));
        }
        Some(_) => {
            return Err(AdminError::BadRequest(format!(
                "invalid {what}: expected a JSON object starting with '{{'"
            )));
        }
    }
    serde_json::from_slice(body).map_err(|e| AdminError::BadRequest(format!("invalid {what}: {e}")))
}

/// Refuses the `Dry-Run` and `Force` headers on a placement change (see "Not supported").
fn reject_unsupported_headers(headers: &HeaderMap) -> Result<(), AdminError> {
    for name in [DRY_RUN_HEADER, FORCE_HEADER] {
        let value = header_or(headers, name, "false")?;
        if !value.eq_ignore_ascii_case("false") {
            return Err(AdminError::BadRequest(format!(
                "header {name}: {value} is not supported; send the change without it"
            )));
        }
    }
    Ok(())
}

fn reject_force(force: bool) -> Result<(), AdminError> {
    if force {
        return Err(AdminError::BadRequest(
            "force is not supported: every change is checked against the placement's cutover \
             and cutoff times; retry without force once the previous change has completed"
                .into(),
        ));
    }
    Ok(())
}

/// A header's value, or `default` when it is absent or empty.
fn header_or(headers: &HeaderMap, name: &str, default: &str) -> Result<String, AdminError> {
    match headers.get(name) {
        None => Ok(default.to_owned()),
        Some(v) => {
            let v = v.to_str().map_err(|_| {
                AdminError::BadRequest(format!("header {name} is not visible ASCII text"))
            })?;
            let v = v.trim();
            if v.len() > MAX_HEADER_LENGTH {
                return Err(AdminError::BadRequest(format!(
                    "header {name} is {} bytes long; at most {MAX_HEADER_LENGTH} are accepted",
                    v.len()
                )));
            }
            Ok(if v.is_empty() { default } else { v }.to_owned())
        }
    }
}

/// Longest environment, zone or topic name accepted in a header.
const MAX_HEADER_LENGTH: usize = 256;

/// Refuses `value` longer than `max` bytes, naming `field`.
fn check_length(field: &str, value: &str, max: usize) -> Result<(), AdminError> {
    if value.len() > max {
        return Err(AdminError::BadRequest(format!(
            "{field} is {} bytes long; at most {max} are accepted (limits.placement.maxIdLength)",
            value.len()
        )));
    }
    Ok(())
}

/// Refuses a shard count over `limits.placement.maxShards`.
fn check_shards(field: &str, shards: u32, limits: &PlacementLimits) -> Result<(), AdminError> {
    if shards > limits.max_shards {
        return Err(AdminError::BadRequest(format!(
            "{field} {shards} is more than the {} shards accepted (limits.placement.maxShards)",
            limits.max_shards
        )));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Placement routes
// ---------------------------------------------------------------------------------------------

/// How a service's placement is built and changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Mirrored,
    Sharded,
    NonSharded,
}

impl Kind {
    fn of(service: &str) -> Result<Kind, AdminError> {
        match service {
            keys::M3AGGREGATOR => Ok(Kind::Mirrored),
            keys::M3COORDINATOR => Ok(Kind::NonSharded),
            "m3db" => Ok(Kind::Sharded),
            other => {
                let lower = other.to_ascii_lowercase();
                let hint = ["m3aggregator", "m3coordinator", "m3db"]
                    .into_iter()
                    .find(|known| {
                        lower == *known
                            || (lower.len() >= 4
                                && (known.starts_with(&lower) || lower.starts_with(known)))
                    })
                    .map(|known| format!("; did you mean {known:?}?"))
                    .unwrap_or_default();
                Err(AdminError::UnknownService {
                    name: other.to_owned(),
                    hint,
                })
            }
        }
    }

    fn is_sharded(self) -> bool {
        self != Kind::NonSharded
    }
}

/// The placement a request is about: its service, store and the request's default zone.
struct Target {
    service: String,
    environment: String,
    zone: String,
    kind: Kind,
    store: PlacementStore,
}

impl Target {
    fn new(state: &AdminState, service: String, headers: &HeaderMap) -> Result<Self, AdminError> {
        let kind = Kind::of(&service)?;
        let environment = header_or(headers, ENVIRONMENT_HEADER, DEFAULT_ENVIRONMENT)?;
        let zone = header_or(headers, ZONE_HEADER, DEFAULT_ZONE)?;
        let id = ServiceId::new(service.as_str(), environment.as_str(), zone.as_str());
        let key = keys::placement_key_in(keys::placement_namespace(&service), &id);
        Ok(Target {
            store: PlacementStore::new(Arc::clone(&state.kv), key),
            service,
            environment,
            zone,
            kind,
        })
    }

    async fn current(&self) -> Result<Versioned<Placement>, AdminError> {
        self.store
            .get()
            .await?
            .ok_or_else(|| AdminError::PlacementNotFound {
                service: self.service.clone(),
                environment: self.environment.clone(),
                key: self.store.key().to_owned(),
            })
    }

    /// The requested instances, after checking their number and the length of their IDs
    /// against `limits`.
    fn instances(
        &self,
        requested: Vec<InstanceRequest>,
        limits: &PlacementLimits,
    ) -> Result<Vec<Instance>, AdminError> {
        if requested.len() > limits.max_instances {
            return Err(AdminError::BadRequest(format!(
                "{} instances requested; at most {} are accepted (limits.placement.maxInstances)",
                requested.len(),
                limits.max_instances
            )));
        }
        for i in &requested {
            for (field, value) in [
                ("instance id", &i.id),
                ("isolation_group", &i.isolation_group),
                ("zone", &i.zone),
                ("endpoint", &i.endpoint),
                ("hostname", &i.hostname),
            ] {
                check_length(field, value, limits.max_id_length)?;
            }
        }
        Ok(requested
            .into_iter()
            .map(|i| i.into_instance(&self.zone))
            .collect())
    }

    fn check_override(&self, o: Option<&OptionsRequest>) -> Result<(), AdminError> {
        if let Some(sharded) = o.and_then(|o| o.is_sharded)
            && sharded != self.kind.is_sharded()
        {
            return Err(AdminError::BadRequest(format!(
                "option_override.is_sharded={sharded} is not supported for {}: its placement is \
                 always {}",
                self.service,
                if self.kind.is_sharded() {
                    "sharded"
                } else {
                    "non-sharded"
                }
            )));
        }
        Ok(())
    }

    /// Writes `next` over the placement read at `version` and answers with it.
    async fn update(&self, next: Placement, version: i64) -> Result<Response, AdminError> {
        let version = self.store.check_and_set(&next, version).await?;
        tracing::info!(service = %self.service, environment = %self.environment, version,
            instances = next.instances.len(), "placement changed");
        Ok(placement_response(&next, version))
    }
}

async fn placement_init(
    State(state): State<AdminState>,
    Path(svc): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, AdminError> {
    let target = Target::new(&state, svc, &headers)?;
    reject_unsupported_headers(&headers)?;
    let req: PlacementInitRequest = parse(&body, "placement init request")?;
    target.check_override(req.option_override.as_ref())?;
    check_shards("num_shards", req.num_shards, &state.limits)?;
    if target.kind.is_sharded() {
        if req.num_shards == 0 {
            return Err(AdminError::BadRequest(format!(
                "num_shards is required for {} placements and must be at least 1",
                target.service
            )));
        }
        if req.replication_factor == 0 {
            return Err(AdminError::BadRequest(format!(
                "replication_factor is required for {} placements and must be at least 1",
                target.service
            )));
        }
    }
    let instances = target.instances(req.instances, &state.limits)?;
    // An existing placement answers 409 before any work is done.
    if target.store.get().await?.is_some() {
        return Err(AdminError::PlacementStore(
            PlacementStoreError::AlreadyExists {
                key: target.store.key().to_owned(),
            },
        ));
    }
    // Cutover 0: the initial shards have no previous owner to hand over from (module docs).
    // Building assigns every shard: CPU work, off the async runtime.
    let (kind, num_shards, rf) = (target.kind, req.num_shards, req.replication_factor);
    let placement = tokio::task::spawn_blocking(move || match kind {
        Kind::Mirrored => placement::build_mirrored(instances, num_shards, rf, 0),
        Kind::Sharded => placement::build_sharded(instances, num_shards, rf, 0),
        Kind::NonSharded => placement::build_non_sharded(instances),
    })
    .await
    .map_err(|e| AdminError::BadRequest(format!("building the placement failed: {e}")))??;
    let version = target.store.init(&placement).await?;
    tracing::info!(service = %target.service, environment = %target.environment,
        instances = placement.instances.len(), num_shards = placement.num_shards,
        "placement created");
    Ok(placement_response(&placement, version))
}

async fn placement_get(
    State(state): State<AdminState>,
    Path(svc): Path<String>,
    headers: HeaderMap,
) -> Result<Response, AdminError> {
    let target = Target::new(&state, svc, &headers)?;
    let current = target.current().await?;
    Ok(placement_response(&current.value, current.version))
}

async fn placement_delete(
    State(state): State<AdminState>,
    Path(svc): Path<String>,
    headers: HeaderMap,
) -> Result<Response, AdminError> {
    let target = Target::new(&state, svc, &headers)?;
    reject_unsupported_headers(&headers)?;
    let deleted = match target.store.delete().await {
        Ok(deleted) => deleted,
        Err(PlacementStoreError::NotFound { key }) => {
            return Err(AdminError::PlacementNotFound {
                service: target.service,
                environment: target.environment,
                key,
            });
        }
        Err(e) => return Err(e.into()),
    };
    tracing::info!(service = %target.service, environment = %target.environment,
        "placement deleted");
    Ok(placement_response(&deleted.value, deleted.version))
}

async fn placement_add(
    State(state): State<AdminState>,
    Path(svc): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, AdminError> {
    let target = Target::new(&state, svc, &headers)?;
    reject_unsupported_headers(&headers)?;
    let req: PlacementAddRequest = parse(&body, "placement add request")?;
    reject_force(req.force)?;
    target.check_override(req.option_override.as_ref())?;
    let instances = target.instances(req.instances, &state.limits)?;
    let current = target.current().await?;
    let next = current.value.add_instances(instances, &state.timing())?;
    target.update(next, current.version).await
}

async fn placement_remove(
    State(state): State<AdminState>,
    Path(svc): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, AdminError> {
    let target = Target::new(&state, svc, &headers)?;
    reject_unsupported_headers(&headers)?;
    let req: PlacementRemoveRequest = parse(&body, "placement remove request")?;
    reject_force(req.force)?;
    target.check_override(req.option_override.as_ref())?;
    if req.instance_ids.is_empty() {
        return Err(AdminError::BadRequest(
            "instance_ids is empty; name the instances to remove".into(),
        ));
    }
    let current = target.current().await?;
    let next = current
        .value
        .remove_instances(&req.instance_ids, &state.timing())?;
    target.update(next, current.version).await
}

async fn placement_replace(
    State(state): State<AdminState>,
    Path(svc): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, AdminError> {
    let target = Target::new(&state, svc, &headers)?;
    reject_unsupported_headers(&headers)?;
    let req: PlacementReplaceRequest = parse(&body, "placement replace request")?;
    reject_force(req.force)?;
    target.check_override(req.option_override.as_ref())?;
    if req.leaving_instance_ids.is_empty() {
        return Err(AdminError::BadRequest(
            "leavingInstanceIDs is empty; name the instances to replace".into(),
        ));
    }
    if req.candidates.is_empty() {
        return Err(AdminError::BadRequest(
            "candidates is empty; give at least one instance per leaving instance".into(),
        ));
    }
    let candidates = target.instances(req.candidates, &state.limits)?;
    let current = target.current().await?;
    let next =
        current
            .value
            .replace_instances(&req.leaving_instance_ids, candidates, &state.timing())?;
    target.update(next, current.version).await
}

async fn placement_delete_instance(
    State(state): State<AdminState>,
    Path((svc, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, AdminError> {
    let target = Target::new(&state, svc, &headers)?;
    reject_unsupported_headers(&headers)?;
    let current = target.current().await?;
    let next = current.value.remove_instances(&[id], &state.timing())?;
    target.update(next, current.version).await
}

// ---------------------------------------------------------------------------------------------
// Topic routes
// ---------------------------------------------------------------------------------------------

fn topic_scope(
    state: &AdminState,
    headers: &HeaderMap,
) -> Result<(TopicStore, String), AdminError> {
    let environment = header_or(headers, ENVIRONMENT_HEADER, DEFAULT_ENVIRONMENT)?;
    let name = header_or(headers, TOPIC_NAME_HEADER, DEFAULT_TOPIC_NAME)?;
    check_length("environment", &environment, state.limits.max_id_length)?;
    check_length("topic name", &name, state.limits.max_id_length)?;
    Ok((TopicStore::new(Arc::clone(&state.kv), environment), name))
}

async fn topic_init(
    State(state): State<AdminState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, AdminError> {
    let (store, name) = topic_scope(&state, &headers)?;
    let req: TopicInitRequest = parse(&body, "topic init request")?;
    check_shards("numberOfShards", req.number_of_shards, &state.limits)?;
    let created = store.init(&name, req.number_of_shards).await?;
    tracing::info!(topic = %name, shards = req.number_of_shards, "topic created");
    Ok(topic_response(&created))
}

async fn topic_get(
    State(state): State<AdminState>,
    headers: HeaderMap,
) -> Result<Response, AdminError> {
    let (store, name) = topic_scope(&state, &headers)?;
    let topic = store
        .get(&name)
        .await?
        .ok_or(TopicError::NotFound { name })?;
    Ok(topic_response(&topic))
}

async fn topic_add(
    State(state): State<AdminState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, AdminError> {
    let (store, name) = topic_scope(&state, &headers)?;
    let req: TopicAddRequest = parse(&body, "topic add request")?;
    let service = req
        .consumer_service
        .ok_or_else(|| AdminError::BadRequest("consumerService is required".into()))?
        .into_consumer_service(&state.limits)?;
    let updated = store.add_consumer_service(&name, service).await?;
    tracing::info!(topic = %name, version = updated.version, "consumer service added");
    Ok(topic_response(&updated))
}

async fn topic_update(
    State(state): State<AdminState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, AdminError> {
    let (store, name) = topic_scope(&state, &headers)?;
    let req: TopicUpdateRequest = parse(&body, "topic update request")?;
    if req.consumer_services.len() > state.limits.max_instances {
        return Err(AdminError::BadRequest(format!(
            "{} consumer services; at most {} are accepted (limits.placement.maxInstances)",
            req.consumer_services.len(),
            state.limits.max_instances
        )));
    }
    let services = req
        .consumer_services
        .into_iter()
        .map(|service| service.into_consumer_service(&state.limits))
        .collect::<Result<_, _>>()?;
    let updated = store
        .replace_consumer_services(&name, services, i64::from(req.version))
        .await?;
    tracing::info!(topic = %name, version = updated.version, "consumer services replaced");
    Ok(topic_response(&updated))
}

async fn topic_delete(
    State(state): State<AdminState>,
    headers: HeaderMap,
) -> Result<Response, AdminError> {
    let (store, name) = topic_scope(&state, &headers)?;
    let deleted = store.delete(&name).await?;
    tracing::info!(topic = %name, "topic deleted");
    Ok(topic_response(&deleted))
}

// ---------------------------------------------------------------------------------------------
// Requests (jsonpb-compatible parsing)
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PlacementInitRequest {
    #[serde(default)]
    instances: Vec<InstanceRequest>,
    #[serde(
        default,
        rename = "numShards",
        alias = "num_shards",
        deserialize_with = "int"
    )]
    num_shards: u32,
    #[serde(
        default,
        rename = "replicationFactor",
        alias = "replication_factor",
        deserialize_with = "int"
    )]
    replication_factor: u32,
    #[serde(default, rename = "optionOverride", alias = "option_override")]
    option_override: Option<OptionsRequest>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PlacementAddRequest {
    #[serde(default)]
    instances: Vec<InstanceRequest>,
    #[serde(default)]
    force: bool,
    #[serde(default, rename = "optionOverride", alias = "option_override")]
    option_override: Option<OptionsRequest>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PlacementRemoveRequest {
    #[serde(default, rename = "instanceIds", alias = "instance_ids")]
    instance_ids: Vec<String>,
    #[serde(default)]
    force: bool,
    #[serde(default, rename = "optionOverride", alias = "option_override")]
    option_override: Option<OptionsRequest>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PlacementReplaceRequest {
    #[serde(
        default,
        rename = "leavingInstanceIDs",
        alias = "leavingInstanceIds",
        alias = "leaving_instance_ids"
    )]
    leaving_instance_ids: Vec<String>,
    #[serde(default)]
    candidates: Vec<InstanceRequest>,
    #[serde(default)]
    force: bool,
    #[serde(default, rename = "optionOverride", alias = "option_override")]
    option_override: Option<OptionsRequest>,
}

/// `placementpb.Options`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OptionsRequest {
    #[serde(default, rename = "isSharded", alias = "is_sharded")]
    is_sharded: Option<bool>,
    /// Accepted for compatibility; shard sets never depend on ports here.
    #[serde(default, rename = "skipPortMirroring", alias = "skip_port_mirroring")]
    _skip_port_mirroring: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InstanceRequest {
    #[serde(default)]
    id: String,
    #[serde(default, rename = "isolationGroup", alias = "isolation_group")]
    isolation_group: String,
    #[serde(default)]
    zone: String,
    #[serde(default, deserialize_with = "int")]
    weight: u32,
    #[serde(default)]
    endpoint: String,
    #[serde(default)]
    shards: Vec<ShardRequest>,
    #[serde(
        default,
        rename = "shardSetId",
        alias = "shard_set_id",
        deserialize_with = "int"
    )]
    shard_set_id: u32,
    #[serde(default)]
    hostname: String,
    #[serde(default, deserialize_with = "int")]
    port: u32,
    #[serde(default)]
    metadata: Option<MetadataRequest>,
    #[serde(
        default,
        rename = "subclusterId",
        alias = "subcluster_id",
        deserialize_with = "int"
    )]
    subcluster_id: u32,
}

impl InstanceRequest {
    fn into_instance(self, default_zone: &str) -> Instance {
        let mut shards: Vec<Shard> = self
            .shards
            .into_iter()
            .map(ShardRequest::into_shard)
            .collect();
        shards.sort_by_key(|s| s.id);
        Instance {
            id: self.id,
            isolation_group: self.isolation_group,
            zone: if self.zone.is_empty() {
                default_zone.to_owned()
            } else {
                self.zone
            },
            weight: self.weight,
            endpoint: self.endpoint,
            hostname: self.hostname,
            port: self.port,
            shard_set_id: self.shard_set_id,
            shards,
            metadata: self.metadata.map(|m| InstanceMetadata {
                debug_port: m.debug_port,
            }),
            subcluster_id: self.subcluster_id,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MetadataRequest {
    #[serde(
        default,
        rename = "debugPort",
        alias = "debug_port",
        deserialize_with = "int"
    )]
    debug_port: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ShardRequest {
    #[serde(default, deserialize_with = "int")]
    id: u32,
    #[serde(default = "initializing", deserialize_with = "shard_state")]
    state: ShardState,
    #[serde(default, rename = "sourceId", alias = "source_id")]
    source_id: String,
    #[serde(
        default,
        rename = "cutoverNanos",
        alias = "cutover_nanos",
        deserialize_with = "int"
    )]
    cutover_nanos: i64,
    #[serde(
        default,
        rename = "cutoffNanos",
        alias = "cutoff_nanos",
        deserialize_with = "int"
    )]
    cutoff_nanos: i64,
    #[serde(
        default,
        rename = "redirectToShardId",
        alias = "redirect_to_shard_id",
        deserialize_with = "optional_int"
    )]
    redirect_to_shard_id: Option<u32>,
}

impl ShardRequest {
    fn into_shard(self) -> Shard {
        Shard {
            id: self.id,
            state: self.state,
            source_id: self.source_id,
            cutover_nanos: self.cutover_nanos,
            cutoff_nanos: self.cutoff_nanos,
            redirect_to_shard_id: self.redirect_to_shard_id,
        }
    }
}

fn initializing() -> ShardState {
    ShardState::Initializing
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TopicInitRequest {
    #[serde(
        default,
        rename = "numberOfShards",
        alias = "number_of_shards",
        deserialize_with = "int"
    )]
    number_of_shards: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TopicAddRequest {
    #[serde(default, rename = "consumerService", alias = "consumer_service")]
    consumer_service: Option<ConsumerServiceRequest>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TopicUpdateRequest {
    #[serde(default, rename = "consumerServices", alias = "consumer_services")]
    consumer_services: Vec<ConsumerServiceRequest>,
    #[serde(default, deserialize_with = "int")]
    version: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConsumerServiceRequest {
    #[serde(default, rename = "serviceId", alias = "service_id")]
    service_id: Option<ServiceIdRequest>,
    #[serde(
        default = "unknown_consumption",
        rename = "consumptionType",
        alias = "consumption_type",
        deserialize_with = "consumption_type"
    )]
    consumption_type: ConsumptionType,
    #[serde(
        default,
        rename = "messageTtlNanos",
        alias = "message_ttl_nanos",
        deserialize_with = "int"
    )]
    message_ttl_nanos: i64,
    #[serde(default)]
    filters: Option<FiltersRequest>,
}

impl ConsumerServiceRequest {
    /// The consumer service, its service ID's name, environment and zone checked against
    /// `limits.placement.maxIdLength`.
    fn into_consumer_service(
        self,
        limits: &PlacementLimits,
    ) -> Result<ConsumerService, AdminError> {
        let sid = self.service_id.unwrap_or_default();
        check_length("serviceId.name", &sid.name, limits.max_id_length)?;
        check_length(
            "serviceId.environment",
            &sid.environment,
            limits.max_id_length,
        )?;
        check_length("serviceId.zone", &sid.zone, limits.max_id_length)?;
        Ok(ConsumerService {
            service_id: ServiceId::new(sid.name, sid.environment, sid.zone),
            consumption_type: self.consumption_type,
            message_ttl_nanos: self.message_ttl_nanos,
            filters: self.filters.map(FiltersRequest::into_proto),
        })
    }
}

fn unknown_consumption() -> ConsumptionType {
    ConsumptionType::Unknown
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ServiceIdRequest {
    #[serde(default)]
    name: String,
    #[serde(default)]
    environment: String,
    #[serde(default)]
    zone: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FiltersRequest {
    #[serde(
        default,
        rename = "storagePolicyFilter",
        alias = "storage_policy_filter"
    )]
    storage_policy_filter: Option<StoragePolicyFilterJson>,
    #[serde(default, rename = "percentageFilter", alias = "percentage_filter")]
    percentage_filter: Option<PercentageFilterJson>,
    #[serde(default, rename = "shardSetFilter", alias = "shard_set_filter")]
    shard_set_filter: Option<ShardSetFilterJson>,
    #[serde(
        default,
        rename = "routingPolicyFilter",
        alias = "routing_policy_filter"
    )]
    routing_policy_filter: Option<RoutingPolicyFilterJson>,
}

impl FiltersRequest {
    fn into_proto(self) -> topicpb::Filters {
        topicpb::Filters {
            storage_policy_filter: self.storage_policy_filter.map(|f| {
                topicpb::StoragePolicyFilter {
                    storage_policies: f.storage_policies,
                }
            }),
            percentage_filter: self.percentage_filter.map(|f| topicpb::PercentageFilter {
                percentage: f.percentage,
            }),
            shard_set_filter: self.shard_set_filter.map(|f| topicpb::ShardSetFilter {
                shard_set: f.shard_set,
            }),
            routing_policy_filter: self.routing_policy_filter.map(|f| {
                topicpb::RoutingPolicyFilter {
                    allowed_traffic_types: f.allowed_traffic_types,
                    is_default: f.is_default,
                }
            }),
        }
    }
}

// The filter messages have the same shape in requests and responses.

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct StoragePolicyFilterJson {
    #[serde(default, rename = "storagePolicies", alias = "storage_policies")]
    storage_policies: Vec<String>,
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct PercentageFilterJson {
    #[serde(default)]
    percentage: f64,
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct ShardSetFilterJson {
    #[serde(default, rename = "shardSet", alias = "shard_set")]
    shard_set: String,
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RoutingPolicyFilterJson {
    #[serde(
        default,
        rename = "allowedTrafficTypes",
        alias = "allowed_traffic_types"
    )]
    allowed_traffic_types: Vec<String>,
    #[serde(default, rename = "isDefault", alias = "is_default")]
    is_default: bool,
}

/// An integer as jsonpb reads it: a JSON number or a decimal string; `null` is the default.
fn int<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<i128> + Default,
{
    d.deserialize_any(IntVisitor(PhantomData))
}

/// Like [`int`] for an optional wrapper value (`google.protobuf.UInt32Value`).
fn optional_int<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<i128> + Default,
{
    Option::<IntOrString<T>>::deserialize(d).map(|v| v.map(|v| v.0))
}

struct IntOrString<T>(T);

impl<'de, T: TryFrom<i128> + Default> Deserialize<'de> for IntOrString<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        int(d).map(IntOrString)
    }
}

struct IntVisitor<T>(PhantomData<T>);

impl<T: TryFrom<i128>> IntVisitor<T> {
    fn fit<E: de::Error>(n: i128) -> Result<T, E> {
        T::try_from(n).map_err(|_| {
            E::custom(format!(
                "{n} is out of range for {}",
                std::any::type_name::<T>()
            ))
        })
    }
}

impl<T: TryFrom<i128> + Default> Visitor<'_> for IntVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an integer, as a number or a string")
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        Self::fit(i128::from(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        Self::fit(i128::from(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        match v.parse::<i128>() {
            Ok(n) => Self::fit(n),
            Err(_) => Err(E::invalid_value(Unexpected::Str(v), &self)),
        }
    }

    fn visit_unit<E: de::Error>(self) -> Result<T, E> {
        Ok(T::default())
    }
}

/// A shard state by name (`INITIALIZING`, `AVAILABLE`, `LEAVING`) or number (0, 1, 2).
fn shard_state<'de, D: Deserializer<'de>>(d: D) -> Result<ShardState, D::Error> {
    const NAMES: &[&str] = &["INITIALIZING", "AVAILABLE", "LEAVING"];
    let state = |n: i128| match n {
        0 => Some(ShardState::Initializing),
        1 => Some(ShardState::Available),
        2 => Some(ShardState::Leaving),
        _ => None,
    };
    match d.deserialize_any(EnumVisitor {
        what: "shard state",
    })? {
        EnumValue::Name(name) => match name.to_ascii_uppercase().as_str() {
            "INITIALIZING" => Ok(ShardState::Initializing),
            "AVAILABLE" => Ok(ShardState::Available),
            "LEAVING" => Ok(ShardState::Leaving),
            _ => Err(de::Error::unknown_variant(&name, NAMES)),
        },
        EnumValue::Number(n) => state(n).ok_or_else(|| {
            de::Error::custom(format!("unknown shard state {n}; expected 0, 1 or 2"))
        }),
    }
}

/// A consumption type by name (`SHARED`, `REPLICATED`) or number (1, 2).
fn consumption_type<'de, D: Deserializer<'de>>(d: D) -> Result<ConsumptionType, D::Error> {
    match d.deserialize_any(EnumVisitor {
        what: "consumption type",
    })? {
        EnumValue::Name(name) => name.parse().map_err(de::Error::custom),
        EnumValue::Number(0) => Ok(ConsumptionType::Unknown),
        EnumValue::Number(1) => Ok(ConsumptionType::Shared),
        EnumValue::Number(2) => Ok(ConsumptionType::Replicated),
        EnumValue::Number(n) => Err(de::Error::custom(format!(
            "unknown consumption type {n}; expected SHARED (1) or REPLICATED (2)"
        ))),
    }
}

enum EnumValue {
    Name(String),
    Number(i128),
}

struct EnumVisitor {
    what: &'static str,
}

impl Visitor<'_> for EnumVisitor {
    type Value = EnumValue;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a {} name or number", self.what)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<EnumValue, E> {
        Ok(EnumValue::Number(i128::from(v)))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<EnumValue, E> {
        Ok(EnumValue::Number(i128::from(v)))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<EnumValue, E> {
        Ok(EnumValue::Name(v.to_owned()))
    }

    fn visit_unit<E: de::Error>(self) -> Result<EnumValue, E> {
        Ok(EnumValue::Number(0))
    }
}

// ---------------------------------------------------------------------------------------------
// Responses (jsonpb with EmitDefaults)
// ---------------------------------------------------------------------------------------------

#[derive(Serialize)]
struct PlacementResponse<'a> {
    placement: PlacementJson<'a>,
    version: i64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PlacementJson<'a> {
    instances: BTreeMap<&'a str, InstanceJson<'a>>,
    replica_factor: u32,
    num_shards: u32,
    is_sharded: bool,
    cutover_time: String,
    is_mirrored: bool,
    max_shard_set_id: u32,
    is_subclustered: bool,
    instances_per_subcluster: u32,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct InstanceJson<'a> {
    id: &'a str,
    isolation_group: &'a str,
    zone: &'a str,
    weight: u32,
    endpoint: &'a str,
    shards: Vec<ShardJson<'a>>,
    shard_set_id: u32,
    hostname: &'a str,
    port: u32,
    metadata: MetadataJson,
    subcluster_id: u32,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ShardJson<'a> {
    id: u32,
    state: &'static str,
    source_id: &'a str,
    cutover_nanos: String,
    cutoff_nanos: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    redirect_to_shard_id: Option<u32>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct MetadataJson {
    debug_port: u32,
}

fn placement_json(p: &Placement) -> PlacementJson<'_> {
    let instances = p
        .instances
        .iter()
        .map(|(id, i)| {
            let instance = InstanceJson {
                id: &i.id,
                isolation_group: &i.isolation_group,
                zone: &i.zone,
                weight: i.weight,
                endpoint: &i.endpoint,
                shards: i
                    .shards
                    .iter()
                    .map(|s| ShardJson {
                        id: s.id,
                        state: s.state.as_str(),
                        source_id: &s.source_id,
                        cutover_nanos: s.cutover_nanos.to_string(),
                        cutoff_nanos: s.cutoff_nanos.to_string(),
                        redirect_to_shard_id: s.redirect_to_shard_id,
                    })
                    .collect(),
                shard_set_id: i.shard_set_id,
                hostname: &i.hostname,
                port: i.port,
                metadata: MetadataJson {
                    debug_port: i.metadata.map_or(0, |m| m.debug_port),
                },
                subcluster_id: i.subcluster_id,
            };
            (id.as_str(), instance)
        })
        .collect();
    PlacementJson {
        instances,
        replica_factor: p.replica_factor,
        num_shards: p.num_shards,
        is_sharded: p.is_sharded,
        cutover_time: p.cutover_time.to_string(),
        is_mirrored: p.is_mirrored,
        max_shard_set_id: p.max_shard_set_id,
        is_subclustered: p.is_subclustered,
        instances_per_subcluster: p.instances_per_subcluster,
    }
}

fn placement_response(p: &Placement, version: i64) -> Response {
    Json(PlacementResponse {
        placement: placement_json(p),
        version,
    })
    .into_response()
}

#[derive(Serialize)]
struct TopicResponse<'a> {
    topic: TopicJson<'a>,
    version: i64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct TopicJson<'a> {
    name: &'a str,
    number_of_shards: u32,
    consumer_services: Vec<ConsumerServiceJson<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ConsumerServiceJson<'a> {
    service_id: ServiceIdJson<'a>,
    consumption_type: &'static str,
    message_ttl_nanos: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    filters: Option<FiltersJson>,
}

#[derive(Serialize)]
struct ServiceIdJson<'a> {
    name: &'a str,
    environment: &'a str,
    zone: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct FiltersJson {
    storage_policy_filter: Option<StoragePolicyFilterJson>,
    percentage_filter: Option<PercentageFilterJson>,
    shard_set_filter: Option<ShardSetFilterJson>,
    routing_policy_filter: Option<RoutingPolicyFilterJson>,
}

impl FiltersJson {
    fn from_proto(f: &topicpb::Filters) -> Self {
        FiltersJson {
            storage_policy_filter: f.storage_policy_filter.as_ref().map(|f| {
                StoragePolicyFilterJson {
                    storage_policies: f.storage_policies.clone(),
                }
            }),
            percentage_filter: f.percentage_filter.as_ref().map(|f| PercentageFilterJson {
                percentage: f.percentage,
            }),
            shard_set_filter: f.shard_set_filter.as_ref().map(|f| ShardSetFilterJson {
                shard_set: f.shard_set.clone(),
            }),
            routing_policy_filter: f.routing_policy_filter.as_ref().map(|f| {
                RoutingPolicyFilterJson {
                    allowed_traffic_types: f.allowed_traffic_types.clone(),
                    is_default: f.is_default,
                }
            }),
        }
    }
}

fn topic_response(t: &Versioned<Topic>) -> Response {
    let topic = &t.value;
    Json(TopicResponse {
        topic: TopicJson {
            name: &topic.name,
            number_of_shards: topic.number_of_shards,
            consumer_services: topic
                .consumer_services
                .iter()
                .map(|c| ConsumerServiceJson {
                    service_id: ServiceIdJson {
                        name: &c.service_id.name,
                        environment: &c.service_id.environment,
                        zone: &c.service_id.zone,
                    },
                    consumption_type: c.consumption_type.as_str(),
                    message_ttl_nanos: c.message_ttl_nanos.to_string(),
                    filters: c.filters.as_ref().map(FiltersJson::from_proto),
                })
                .collect(),
        },
        version: t.version,
    })
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use m3_cluster::MemoryKv;
    use reqwest::Method;
    use serde_json::Value;

    const SEED: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/seed/m3aggregator.md"
    );

    /// The router served on a free local port over one in-memory KV.
    struct Server {
        base: String,
        client: reqwest::Client,
        kv: Arc<MemoryKv>,
    }

    impl Server {
        async fn start(max_aggregation_window: Duration) -> Server {
            let kv = Arc::new(MemoryKv::new());
            let state = AdminState {
                kv: kv.clone(),
                max_aggregation_window,
                limits: PlacementLimits::default(),
            };
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(async move { axum::serve(listener, router(state)).await });
            Server {
                base: format!("http://{addr}"),
                client: reqwest::Client::new(),
                kv,
            }
        }

        /// Sends a request and returns the status and the JSON body.
        async fn send_with(
            &self,
            method: Method,
            path: &str,
            headers: &[(&str, &str)],
            body: Option<&str>,
        ) -> (u16, Value) {
            let mut req = self
                .client
                .request(method.clone(), format!("{}{path}", self.base));
            for (name, value) in headers {
                req = req.header(*name, *value);
            }
            if let Some(body) = body {
                // What `curl -d` sends.
                req = req
                    .header("Content-Type", "application/x-www-form-urlencoded")
                    .body(body.to_owned());
            }
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            let text = resp.text().await.unwrap();
            let json = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{method} {path}: body {text:?} is not JSON: {e}"));
            (status, json)
        }

        async fn send(&self, method: Method, path: &str, body: Option<&str>) -> (u16, Value) {
            self.send_with(method, path, &[], body).await
        }

        async fn ok(&self, method: Method, path: &str, body: Option<&str>) -> Value {
            let (status, json) = self.send(method.clone(), path, body).await;
            assert_eq!(status, 200, "{method} {path}: {json}");
            json
        }

        async fn fails(&self, method: Method, path: &str, body: Option<&str>, want: u16) -> String {
            let (status, json) = self.send(method.clone(), path, body).await;
            assert_error(status, &json, want, &format!("{method} {path}"))
        }
    }

    /// Checks an error answer and returns its reason.
    fn assert_error(status: u16, json: &Value, want: u16, what: &str) -> String {
        assert_eq!(status, want, "{what}: {json}");
        assert_eq!(json["status"], "error", "{what}: {json}");
        let reason = json["error"].as_str().unwrap_or_default().to_owned();
        assert!(!reason.is_empty(), "{what}: empty reason in {json}");
        reason
    }

    const AGG_PLACEMENT: &str = "/api/v1/services/m3aggregator/placement";
    const COORD_PLACEMENT: &str = "/api/v1/services/m3coordinator/placement";

    fn agg(id: &str, group: &str) -> Value {
        serde_json::json!({
            "id": id, "isolation_group": group, "zone": "embedded", "weight": 100,
            "endpoint": id, "hostname": id, "port": 6000
        })
    }

    fn init_body(num_shards: u32, rf: u32, instances: &[Value]) -> String {
        serde_json::json!({
            "num_shards": num_shards, "replication_factor": rf, "instances": instances
        })
        .to_string()
    }

    /// One shard of an instance in a response: (id, state, sourceId, cutoverNanos).
    type ShardRow = (u64, String, String, String);
    /// Instance ID → (shard set, its shards by ID).
    type Layout = BTreeMap<String, (u64, Vec<ShardRow>)>;

    /// The layout of a placement response.
    fn shards_by_instance(p: &Value) -> Layout {
        let instances = p["placement"]["instances"].as_object().unwrap();
        instances
            .iter()
            .map(|(id, i)| {
                let shards = i["shards"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|s| {
                        (
                            s["id"].as_u64().unwrap(),
                            s["state"].as_str().unwrap().to_owned(),
                            s["sourceId"].as_str().unwrap().to_owned(),
                            s["cutoverNanos"].as_str().unwrap().to_owned(),
                        )
                    })
                    .collect();
                (id.clone(), (i["shardSetId"].as_u64().unwrap(), shards))
            })
            .collect()
    }

    /// One `curl -X METHOD URL -d '<body>'` command of the seed document.
    struct SeedCommand {
        method: String,
        path: String,
        body: String,
    }

    fn seed_commands() -> Vec<SeedCommand> {
        let text = std::fs::read_to_string(SEED).unwrap_or_else(|e| {
            panic!("cannot read the seed document {SEED}: {e}; the admin API tests replay its curl commands")
        });
        let mut commands = Vec::new();
        let mut rest = text.as_str();
        while let Some(start) = rest.find("curl ") {
            rest = &rest[start..];
            let (head, after) = rest
                .split_once(" -d '")
                .unwrap_or_else(|| panic!("curl command without -d '..' in {SEED}: {rest:.80}"));
            let (body, after) = after
                .split_once('\'')
                .unwrap_or_else(|| panic!("unterminated -d body in {SEED}: {head}"));
            let mut words = head.split_whitespace();
            let mut method = String::from("POST");
            let mut url = None;
            while let Some(word) = words.next() {
                if word == "-X" {
                    method = words.next().unwrap_or("POST").to_owned();
                } else if word.starts_with("http://") || word.starts_with("https://") {
                    url = Some(word);
                }
            }
            let url = url.unwrap_or_else(|| panic!("curl command without URL: {head}"));
            let path = url
                .split_once("://")
                .and_then(|(_, hostpath)| hostpath.find('/').map(|i| &hostpath[i..]))
                .unwrap_or("/");
            commands.push(SeedCommand {
                method,
                path: path.to_owned(),
                body: body.to_owned(),
            });
            rest = after;
        }
        commands
    }

    #[tokio::test]
    async fn seed_commands_create_the_documented_topology() {
        let commands = seed_commands();
        let paths: Vec<(&str, &str)> = commands
            .iter()
            .map(|c| (c.method.as_str(), c.path.as_str()))
            .collect();
        assert_eq!(
            paths,
            [
                ("POST", "/api/v1/services/m3aggregator/placement/init"),
                ("POST", "/api/v1/topic/init"),
                ("POST", "/api/v1/services/m3coordinator/placement/init"),
                ("POST", "/api/v1/topic"),
            ],
            "the seed's curl commands changed"
        );

        let server = Server::start(DEFAULT_MAX_AGGREGATION_WINDOW).await;
        for c in &commands {
            let method = Method::from_bytes(c.method.as_bytes()).unwrap();
            server.ok(method, &c.path, Some(&c.body)).await;
        }

        // The aggregator placement: 64 shards, RF 2, one shard set of two instances in
        // distinct isolation groups holding identical shards, owned from cutover 0.
        let p = server.ok(Method::GET, AGG_PLACEMENT, None).await;
        assert_eq!(p["version"], 1);
        let placement = &p["placement"];
        assert_eq!(placement["numShards"], 64);
        assert_eq!(placement["replicaFactor"], 2);
        assert_eq!(placement["isSharded"], true);
        assert_eq!(placement["isMirrored"], true);
        assert_eq!(placement["maxShardSetId"], 1);
        assert_eq!(placement["cutoverTime"], "0");
        assert_eq!(placement["isSubclustered"], false);
        assert_eq!(placement["instancesPerSubcluster"], 0);
        let a = &placement["instances"]["m3aggregator01:6000"];
        let b = &placement["instances"]["m3aggregator02:6000"];
        assert_eq!(a["isolationGroup"], "availability-zone-a");
        assert_eq!(b["isolationGroup"], "availability-zone-b");
        for i in [a, b] {
            assert_eq!(i["zone"], "embedded");
            assert_eq!(i["weight"], 100);
            assert_eq!(i["port"], 6000);
            assert_eq!(i["metadata"]["debugPort"], 0);
            assert_eq!(i["subclusterId"], 0);
        }
        assert_eq!(a["endpoint"], "m3aggregator01:6000");
        assert_eq!(a["hostname"], "m3aggregator01");
        let sets = shards_by_instance(&p);
        assert_eq!(sets.len(), 2);
        let (set_a, shards_a) = &sets["m3aggregator01:6000"];
        let (set_b, shards_b) = &sets["m3aggregator02:6000"];
        assert_eq!(
            (set_a, set_b),
            (&1, &1),
            "RF 2 mirrored: one shard set of two"
        );
        assert_eq!(
            shards_a, shards_b,
            "members of a shard set hold identical shards"
        );
        assert_eq!(
            shards_a.iter().map(|s| s.0).collect::<Vec<_>>(),
            (0..64).collect::<Vec<_>>()
        );
        assert!(shards_a.iter().all(|s| s.1 == "INITIALIZING" && s.3 == "0"));
        assert_eq!(a["shards"][0]["cutoffNanos"], "0");
        assert!(
            server
                .kv
                .get("/placement/default_env/m3aggregator")
                .await
                .unwrap()
                .is_some()
        );

        // The coordinator placement: non-sharded, one instance.
        let c = server.ok(Method::GET, COORD_PLACEMENT, None).await;
        assert_eq!(c["placement"]["isSharded"], false);
        let coord = &c["placement"]["instances"]["m3coordinator01"];
        assert_eq!(coord["endpoint"], "m3coordinator01:7507");
        assert_eq!(coord["zone"], "embedded");
        assert_eq!(coord["port"], 7507);
        assert_eq!(coord["shards"], serde_json::json!([]));
        assert!(
            server
                .kv
                .get("_sd.placement/default_env/m3coordinator")
                .await
                .unwrap()
                .is_some()
        );

        // The topic with the coordinators as SHARED consumers.
        let t = server.ok(Method::GET, "/api/v1/topic", None).await;
        assert_eq!(t["version"], 2);
        assert_eq!(t["topic"]["name"], "aggregated_metrics");
        assert_eq!(t["topic"]["numberOfShards"], 64);
        assert_eq!(
            t["topic"]["consumerServices"],
            serde_json::json!([{
                "serviceId": {"name": "m3coordinator", "environment": "default_env", "zone": "embedded"},
                "consumptionType": "SHARED",
                "messageTtlNanos": "300000000000"
            }])
        );
    }

    #[tokio::test]
    async fn replication_factor_larger_than_isolation_groups_is_rejected() {
        let server = Server::start(DEFAULT_MAX_AGGREGATION_WINDOW).await;
        let body = init_body(64, 3, &[agg("a:1", "zone-a"), agg("b:1", "zone-b")]);
        let reason = server
            .fails(
                Method::POST,
                &format!("{AGG_PLACEMENT}/init"),
                Some(&body),
                400,
            )
            .await;
        assert!(reason.contains("isolation groups"), "{reason}");
        server.fails(Method::GET, AGG_PLACEMENT, None, 404).await;
    }

    #[tokio::test]
    async fn duplicate_instance_ids_are_rejected() {
        let server = Server::start(DEFAULT_MAX_AGGREGATION_WINDOW).await;
        let body = init_body(64, 2, &[agg("a:1", "zone-a"), agg("a:1", "zone-b")]);
        let reason = server
            .fails(
                Method::POST,
                &format!("{AGG_PLACEMENT}/init"),
                Some(&body),
                400,
            )
            .await;
        assert!(reason.contains("duplicate"), "{reason}");
        let coord = r#"{"instances":[{"id":"c","endpoint":"c:1"},{"id":"c","endpoint":"c:2"}]}"#;
        server
            .fails(
                Method::POST,
                &format!("{COORD_PLACEMENT}/init"),
                Some(coord),
                400,
            )
            .await;
    }

    #[tokio::test]
    async fn zero_or_absent_num_shards_is_rejected_for_sharded_services() {
        let server = Server::start(DEFAULT_MAX_AGGREGATION_WINDOW).await;
        let instances = [agg("a:1", "zone-a"), agg("b:1", "zone-b")];
        let zero = init_body(0, 2, &instances);
        let absent =
            serde_json::json!({"replication_factor": 2, "instances": instances}).to_string();
        for svc in ["m3aggregator", "m3db"] {
            for body in [&zero, &absent] {
                let path = format!("/api/v1/services/{svc}/placement/init");
                let reason = server.fails(Method::POST, &path, Some(body), 400).await;
                assert!(reason.contains("num_shards"), "{reason}");
            }
        }
        let negative = r#"{"numShards": -1, "replicationFactor": 2}"#;
        server
            .fails(
                Method::POST,
                &format!("{AGG_PLACEMENT}/init"),
                Some(negative),
                400,
            )
            .await;
    }

    #[tokio::test]
    async fn unknown_consumption_type_is_rejected() {
        let server = Server::start(DEFAULT_MAX_AGGREGATION_WINDOW).await;
        server
            .ok(
                Method::POST,
                "/api/v1/topic/init",
                Some(r#"{"numberOfShards": 64}"#),
            )
            .await;
        for ty in [r#""BROADCAST""#, "7", r#""UNKNOWN""#] {
            let body = format!(
                r#"{{"consumerService":{{"serviceId":{{"name":"m3coordinator"}},"consumptionType":{ty}}}}}"#
            );
            let reason = server
                .fails(Method::POST, "/api/v1/topic", Some(&body), 400)
                .await;
            assert!(reason.contains("consumption type"), "{ty}: {reason}");
        }
        // Absent: UNKNOWN, rejected too.
        let body = r#"{"consumerService":{"serviceId":{"name":"m3coordinator"}}}"#;
        server
            .fails(Method::POST, "/api/v1/topic", Some(body), 400)
            .await;
        let t = server.ok(Method::GET, "/api/v1/topic", None).await;
        assert_eq!(t["topic"]["consumerServices"], serde_json::json!([]));
    }

    /// Regression: consumer service IDs in topic bodies had no length limit.
    #[tokio::test]
    async fn overlong_consumer_service_ids_are_rejected() {
        let server = Server::start(DEFAULT_MAX_AGGREGATION_WINDOW).await;
        server
            .ok(
                Method::POST,
                "/api/v1/topic/init",
                Some(r#"{"numberOfShards": 64}"#),
            )
            .await;
        let long = "x".repeat(PlacementLimits::default().max_id_length + 1);
        for (field, service_id) in [
            ("serviceId.name", format!(r#"{{"name":"{long}"}}"#)),
            (
                "serviceId.environment",
                format!(r#"{{"name":"m3coordinator","environment":"{long}"}}"#),
            ),
            (
                "serviceId.zone",
                format!(r#"{{"name":"m3coordinator","zone":"{long}"}}"#),
            ),
        ] {
            let service = format!(r#"{{"serviceId":{service_id},"consumptionType":"SHARED"}}"#);
            let reason = server
                .fails(
                    Method::POST,
                    "/api/v1/topic",
                    Some(&format!(r#"{{"consumerService":{service}}}"#)),
                    400,
                )
                .await;
            assert!(reason.contains(field), "{field}: {reason}");
            let reason = server
                .fails(
                    Method::PUT,
                    "/api/v1/topic",
                    Some(&format!(
                        r#"{{"consumerServices":[{service}],"version":1}}"#
                    )),
                    400,
                )
                .await;
            assert!(reason.contains(field), "{field}: {reason}");
        }
        let t = server.ok(Method::GET, "/api/v1/topic", None).await;
        assert_eq!(t["topic"]["consumerServices"], serde_json::json!([]));
    }

    #[tokio::test]
    async fn malformed_json_is_rejected() {
        let server = Server::start(DEFAULT_MAX_AGGREGATION_WINDOW).await;
        for (path, body) in [
            (format!("{AGG_PLACEMENT}/init"), r#"{"num_shards": 64,"#),
            (format!("{AGG_PLACEMENT}/init"), ""),
            (format!("{AGG_PLACEMENT}/init"), r#"{"num_shards": 1.5}"#),
            (format!("{AGG_PLACEMENT}/init"), r#"{"num_shards": "many"}"#),
            (AGG_PLACEMENT.to_owned(), "[]"),
            ("/api/v1/topic/init".to_owned(), "numberOfShards=64"),
            ("/api/v1/topic".to_owned(), r#"{"consumerService": 5}"#),
        ] {
            let reason = server.fails(Method::POST, &path, Some(body), 400).await;
            assert!(reason.starts_with("invalid "), "{path} {body:?}: {reason}");
        }
    }

    #[tokio::test]
    async fn unknown_fields_are_rejected() {
        let server = Server::start(DEFAULT_MAX_AGGREGATION_WINDOW).await;
        let nested = serde_json::json!({
            "num_shards": 4, "replication_factor": 1,
            "instances": [{"id": "a:1", "endpoint": "a:1", "weight": 1, "isolationGroupp": "x"}]
        })
        .to_string();
        for (path, body) in [
            (format!("{AGG_PLACEMENT}/init"), r#"{"num_shard": 64}"#.to_owned()),
            (format!("{AGG_PLACEMENT}/init"), nested),
            (
                "/api/v1/topic/init".to_owned(),
                r#"{"numberOfShards": 64, "shards": 1}"#.to_owned(),
            ),
            (
                "/api/v1/topic".to_owned(),
                r#"{"consumerService":{"serviceId":{"name":"x","region":"y"},"consumptionType":"SHARED"}}"#
                    .to_owned(),
            ),
        ] {
            let reason = server.fails(Method::POST, &path, Some(&body), 400).await;
            assert!(reason.contains("unknown field"), "{path}: {reason}");
        }
    }

    #[tokio::test]
    async fn init_twice_conflicts() {
        let server = Server::start(DEFAULT_MAX_AGGREGATION_WINDOW).await;
        let body = init_body(8, 2, &[agg("a:1", "zone-a"), agg("b:1", "zone-b")]);
        let init = format!("{AGG_PLACEMENT}/init");
        server.ok(Method::POST, &init, Some(&body)).await;
        let reason = server.fails(Method::POST, &init, Some(&body), 409).await;
        assert!(reason.contains("already exists"), "{reason}");

        let topic = r#"{"numberOfShards": 64}"#;
        let t = server
            .ok(Method::POST, "/api/v1/topic/init", Some(topic))
            .await;
        assert_eq!(t["version"], 1);
        let reason = server
            .fails(Method::POST, "/api/v1/topic/init", Some(topic), 409)
            .await;
        assert!(reason.contains("already exists"), "{reason}");
    }

    #[tokio::test]
    async fn missing_placement_topic_and_service_are_not_found() {
        let server = Server::start(DEFAULT_MAX_AGGREGATION_WINDOW).await;
        for path in [
            AGG_PLACEMENT,
            COORD_PLACEMENT,
            "/api/v1/services/m3db/placement",
        ] {
            let reason = server.fails(Method::GET, path, None, 404).await;
            assert!(reason.contains("no placement"), "{reason}");
            server.fails(Method::DELETE, path, None, 404).await;
            server
                .fails(Method::DELETE, &format!("{path}/x:1"), None, 404)
                .await;
            server
                .fails(Method::POST, path, Some(r#"{"instances":[]}"#), 404)
                .await;
        }
        let reason = server.fails(Method::GET, "/api/v1/topic", None, 404).await;
        assert!(reason.contains("not found"), "{reason}");
        server
            .fails(Method::DELETE, "/api/v1/topic", None, 404)
            .await;
        let add = r#"{"consumerService":{"serviceId":{"name":"m3coordinator"},"consumptionType":"SHARED"}}"#;
        server
            .fails(Method::POST, "/api/v1/topic", Some(add), 404)
            .await;

        let reason = server
            .fails(
                Method::GET,
                "/api/v1/services/m3aggregators/placement",
                None,
                404,
            )
            .await;
        assert!(reason.contains("did you mean \"m3aggregator\""), "{reason}");
        server
            .fails(
                Method::POST,
                "/api/v1/services/prometheus/placement/init",
                Some("{}"),
                404,
            )
            .await;
    }

    #[tokio::test]
    async fn add_then_remove_aggregator_instances() {
        // A 1ns window: each change's transition is its own request time, so the next change
        // may start at once.
        let server = Server::start(Duration::from_nanos(1)).await;
        let body = init_body(64, 2, &[agg("a:1", "zone-a"), agg("b:1", "zone-b")]);
        server
            .ok(Method::POST, &format!("{AGG_PLACEMENT}/init"), Some(&body))
            .await;

        let add = serde_json::json!({"instances": [agg("c:1", "zone-a"), agg("d:1", "zone-b")]})
            .to_string();
        let p = server.ok(Method::POST, AGG_PLACEMENT, Some(&add)).await;
        assert_eq!(p["version"], 2);
        assert_eq!(p["placement"]["maxShardSetId"], 2);
        let sets = shards_by_instance(&p);
        let (set_c, shards_c) = &sets["c:1"];
        assert_eq!(*set_c, 2);
        // Same shards, each member taking over from its counterpart in the old shard set.
        let without_source = |shards: &[ShardRow]| {
            shards
                .iter()
                .map(|s| (s.0, s.1.clone(), s.3.clone()))
                .collect::<Vec<_>>()
        };
        assert_eq!(without_source(shards_c), without_source(&sets["d:1"].1));
        assert_eq!(shards_c.len(), 32, "balanced across two shard sets");
        let transition = p["placement"]["cutoverTime"].as_str().unwrap().to_owned();
        assert_ne!(transition, "0");
        for (shard, state, source, cutover) in shards_c {
            assert_eq!(state, "INITIALIZING");
            assert_eq!(cutover, &transition);
            assert!(source == "a:1" || source == "b:1", "{source}");
            // The old owner keeps the shard LEAVING until the transition.
            let old = sets[source].1.iter().find(|s| s.0 == *shard).unwrap();
            assert_eq!(old.1, "LEAVING");
        }

        let remove = r#"{"instanceIds": ["c:1", "d:1"]}"#;
        let p = server
            .ok(
                Method::POST,
                &format!("{AGG_PLACEMENT}/remove"),
                Some(remove),
            )
            .await;
        assert_eq!(p["version"], 3);
        let sets = shards_by_instance(&p);
        for id in ["a:1", "b:1"] {
            let owned: Vec<u64> = sets[id]
                .1
                .iter()
                .filter(|s| s.1 != "LEAVING")
                .map(|s| s.0)
                .collect();
            assert_eq!(
                owned,
                (0..64).collect::<Vec<_>>(),
                "{id} owns every shard again"
            );
        }
        for id in ["c:1", "d:1"] {
            assert!(sets[id].1.iter().all(|s| s.1 == "LEAVING"), "{id}");
        }

        // Part of a shard set, or an unknown instance.
        let reason = server
            .fails(
                Method::POST,
                &format!("{AGG_PLACEMENT}/remove"),
                Some(r#"{"instance_ids": ["a:1"]}"#),
                400,
            )
            .await;
        assert!(reason.contains("whole shard set"), "{reason}");
        server
            .fails(
                Method::POST,
                &format!("{AGG_PLACEMENT}/remove"),
                Some(r#"{"instance_ids": ["zz:1"]}"#),
                404,
            )
            .await;
        server
            .fails(
                Method::POST,
                &format!("{AGG_PLACEMENT}/remove"),
                Some(r#"{"instance_ids": []}"#),
                400,
            )
            .await;
        server
            .fails(
                Method::POST,
                &format!("{AGG_PLACEMENT}/remove"),
                Some(r#"{"instance_ids": ["c:1"], "force": true}"#),
                400,
            )
            .await;
    }

    #[tokio::test]
    async fn a_change_waits_for_the_previous_transition() {
        let server = Server::start(DEFAULT_MAX_AGGREGATION_WINDOW).await;
        let body = init_body(16, 2, &[agg("a:1", "zone-a"), agg("b:1", "zone-b")]);
        server
            .ok(Method::POST, &format!("{AGG_PLACEMENT}/init"), Some(&body))
            .await;
        // Shards of the initial placement are owned since cutover 0: adding works at once.
        let add = serde_json::json!({"instances": [agg("c:1", "zone-a"), agg("d:1", "zone-b")]})
            .to_string();
        let p = server.ok(Method::POST, AGG_PLACEMENT, Some(&add)).await;
        let cutover: i64 = p["placement"]["cutoverTime"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(
            cutover % 60_000_000_000,
            0,
            "transition on a window boundary"
        );
        // The transition is up to a minute away: the next change is refused.
        let reason = server
            .fails(
                Method::POST,
                &format!("{AGG_PLACEMENT}/remove"),
                Some(r#"{"instance_ids": ["c:1", "d:1"]}"#),
                400,
            )
            .await;
        assert!(reason.contains("before cutover"), "{reason}");
    }

    #[tokio::test]
    async fn replace_an_aggregator_instance() {
        let server = Server::start(Duration::from_nanos(1)).await;
        let body = init_body(8, 2, &[agg("a:1", "zone-a"), agg("b:1", "zone-b")]);
        server
            .ok(Method::POST, &format!("{AGG_PLACEMENT}/init"), Some(&body))
            .await;
        let replace = serde_json::json!({
            "leavingInstanceIDs": ["a:1"], "candidates": [agg("c:1", "zone-a")]
        })
        .to_string();
        let p = server
            .ok(
                Method::POST,
                &format!("{AGG_PLACEMENT}/replace"),
                Some(&replace),
            )
            .await;
        let sets = shards_by_instance(&p);
        let (set_c, shards_c) = &sets["c:1"];
        assert_eq!(
            *set_c, 1,
            "the candidate joins the leaving instance's shard set"
        );
        assert_eq!(shards_c.len(), 8);
        assert!(
            shards_c
                .iter()
                .all(|s| s.1 == "INITIALIZING" && s.2 == "a:1")
        );
        assert!(sets["a:1"].1.iter().all(|s| s.1 == "LEAVING"));

        // No candidate from an isolation group the shard set does not already use.
        let bad = serde_json::json!({
            "leaving_instance_ids": ["b:1"], "candidates": [agg("d:1", "zone-a")]
        })
        .to_string();
        let reason = server
            .fails(
                Method::POST,
                &format!("{AGG_PLACEMENT}/replace"),
                Some(&bad),
                400,
            )
            .await;
        assert!(reason.contains("no replacement candidate"), "{reason}");
        let unknown = serde_json::json!({
            "leavingInstanceIDs": ["zz:1"], "candidates": [agg("d:1", "zone-b")]
        })
        .to_string();
        server
            .fails(
                Method::POST,
                &format!("{AGG_PLACEMENT}/replace"),
                Some(&unknown),
                404,
            )
            .await;
    }

    #[tokio::test]
    async fn delete_instances_placements_and_topics() {
        let server = Server::start(DEFAULT_MAX_AGGREGATION_WINDOW).await;
        let coord = r#"{"instances":[
            {"id":"c1","endpoint":"c1:7507"},
            {"id":"c2","endpoint":"c2:7507","zone":"other"}]}"#;
        let p = server
            .ok(
                Method::POST,
                &format!("{COORD_PLACEMENT}/init"),
                Some(coord),
            )
            .await;
        assert_eq!(
            p["placement"]["instances"]["c1"]["zone"], "embedded",
            "zone header default"
        );
        assert_eq!(p["placement"]["instances"]["c2"]["zone"], "other");
        let add = r#"{"instances":[{"id":"c3","endpoint":"c3:7507"}]}"#;
        server.ok(Method::POST, COORD_PLACEMENT, Some(add)).await;

        let p = server
            .ok(Method::DELETE, &format!("{COORD_PLACEMENT}/c1"), None)
            .await;
        assert_eq!(p["version"], 3);
        let ids: Vec<&String> = p["placement"]["instances"]
            .as_object()
            .unwrap()
            .keys()
            .collect();
        assert_eq!(ids, ["c2", "c3"]);
        let reason = server
            .fails(Method::DELETE, &format!("{COORD_PLACEMENT}/c1"), None, 404)
            .await;
        assert!(reason.contains("\"c1\""), "{reason}");

        let deleted = server.ok(Method::DELETE, COORD_PLACEMENT, None).await;
        assert_eq!(deleted["version"], 3);
        server.fails(Method::GET, COORD_PLACEMENT, None, 404).await;
        server
            .fails(Method::DELETE, COORD_PLACEMENT, None, 404)
            .await;

        server
            .ok(
                Method::POST,
                "/api/v1/topic/init",
                Some(r#"{"number_of_shards": "8"}"#),
            )
            .await;
        let deleted = server.ok(Method::DELETE, "/api/v1/topic", None).await;
        assert_eq!(deleted["topic"]["numberOfShards"], 8);
        server.fails(Method::GET, "/api/v1/topic", None, 404).await;
    }

    #[tokio::test]
    async fn topic_replace_is_check_and_set() {
        let server = Server::start(DEFAULT_MAX_AGGREGATION_WINDOW).await;
        server
            .ok(
                Method::POST,
                "/api/v1/topic/init",
                Some(r#"{"numberOfShards": 64}"#),
            )
            .await;
        let replicated = r#"{"consumer_services":[{"service_id":{"name":"m3aggregator",
            "environment":"default_env","zone":"embedded"},"consumption_type":2,
            "message_ttl_nanos":1000,"filters":{"percentageFilter":{"percentage":50}}}],
            "version":1}"#;
        let t = server
            .ok(Method::PUT, "/api/v1/topic", Some(replicated))
            .await;
        assert_eq!(t["version"], 2);
        let cs = &t["topic"]["consumerServices"][0];
        assert_eq!(cs["consumptionType"], "REPLICATED");
        assert_eq!(cs["messageTtlNanos"], "1000");
        assert_eq!(cs["filters"]["percentageFilter"]["percentage"], 50.0);
        // Stale version.
        let reason = server
            .fails(Method::PUT, "/api/v1/topic", Some(replicated), 409)
            .await;
        assert!(reason.contains("expected version 1"), "{reason}");
        // A duplicate consumer service is bad input.
        let dup = r#"{"consumerService":{"serviceId":{"name":"m3aggregator",
            "environment":"default_env","zone":"embedded"},"consumptionType":"REPLICATED"}}"#;
        server
            .fails(Method::POST, "/api/v1/topic", Some(dup), 400)
            .await;
    }

    #[tokio::test]
    async fn headers_pick_environment_zone_and_topic() {
        let server = Server::start(DEFAULT_MAX_AGGREGATION_WINDOW).await;
        let headers = [
            ("cluster-environment-name", "prod"),
            ("Cluster-Zone-Name", "zone-9"),
            ("Topic-Name", "aggregator_ingest"),
        ];
        let body = serde_json::json!({
            "numShards": "4", "replicationFactor": 1,
            "instances": [{"id": "a:1", "endpoint": "a:1", "weight": 1, "isolationGroup": "g"}]
        })
        .to_string();
        let (status, p) = server
            .send_with(
                Method::POST,
                &format!("{AGG_PLACEMENT}/init"),
                &headers,
                Some(&body),
            )
            .await;
        assert_eq!(status, 200, "{p}");
        assert_eq!(p["placement"]["instances"]["a:1"]["zone"], "zone-9");
        assert!(
            server
                .kv
                .get("/placement/prod/m3aggregator")
                .await
                .unwrap()
                .is_some()
        );
        server.fails(Method::GET, AGG_PLACEMENT, None, 404).await;
        let (status, _) = server
            .send_with(Method::GET, AGG_PLACEMENT, &headers, None)
            .await;
        assert_eq!(status, 200);

        let (status, t) = server
            .send_with(
                Method::POST,
                "/api/v1/topic/init",
                &headers,
                Some(r#"{"numberOfShards": 16}"#),
            )
            .await;
        assert_eq!(status, 200, "{t}");
        assert_eq!(t["topic"]["name"], "aggregator_ingest");
        assert!(
            server
                .kv
                .get("/topic/prod/aggregator_ingest")
                .await
                .unwrap()
                .is_some()
        );
        server.fails(Method::GET, "/api/v1/topic", None, 404).await;
    }

    #[tokio::test]
    async fn dry_run_and_force_headers_are_refused() {
        let server = Server::start(DEFAULT_MAX_AGGREGATION_WINDOW).await;
        let body = init_body(8, 2, &[agg("a:1", "zone-a"), agg("b:1", "zone-b")]);
        let init = format!("{AGG_PLACEMENT}/init");
        for header in [("Dry-Run", "true"), ("Force", "true")] {
            let (status, json) = server
                .send_with(Method::POST, &init, &[header], Some(&body))
                .await;
            let reason = assert_error(status, &json, 400, header.0);
            assert!(reason.contains(header.0), "{reason}");
        }
        server.fails(Method::GET, AGG_PLACEMENT, None, 404).await;
        let (status, json) = server
            .send_with(Method::POST, &init, &[("Dry-Run", "false")], Some(&body))
            .await;
        assert_eq!(status, 200, "{json}");
    }
}
