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
//! | `GET /api/v1/services/{svc}/placement` | — | the placement; 404 if none. `?version=N`: the placement as stored at version N (404 if that version is not kept: etcd keeps versions until compaction, the in-memory store the last 64) |
//! | `DELETE /api/v1/services/{svc}/placement` | — | deletes it; answers `{"deleted": true}` |
//! | `POST /api/v1/services/{svc}/placement` | `{"instances": [..]}` | adds instances |
//! | `POST /api/v1/services/{svc}/placement/remove` | `{"instance_ids": [..]}` | removes instances |
//! | `POST /api/v1/services/{svc}/placement/replace` | `{"leavingInstanceIDs": [..], "candidates": [..]}` | replaces instances one for one |
//! | `DELETE /api/v1/services/{svc}/placement/{id}` | — | removes one instance |
//! | `POST /api/v1/services/{svc}/placement/set` | `{"placement": {..}, "version": N, "confirm": true}` | stores the given placement as it is (see below) |
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
//! # Dry runs, force and set
//!
//! - `Dry-Run: true` on init, add, remove, replace and the removal of one instance computes and
//!   checks the change and answers with the placement it would store, without storing it (the
//!   version is the current one, 0 for init). On `DELETE ../placement` it answers
//!   `{"deleted": false, "dryRun": true}`. A value other than `true` or `false` is refused with
//!   400, so that a preview is never applied as a change.
//! - `"force": true` in a body (and the `Force` header, and `?force=true` on the removal of
//!   one instance) is accepted. M3 needs it to change an aggregator placement whose shards are
//!   still INITIALIZING; here such shards are marked available once their cutover has passed,
//!   force or not. As in M3 for aggregators, force never skips the cutover and cutoff checks.
//! - `POST ../placement/set` stores `placement` as given (M3's keys, as GET answers them).
//!   It is validated first (400 `unable to validate new placement: ..`), also with
//!   `"force": true`, which M3 lets skip validation: an invalid placement stops aggregators.
//!   Without `"confirm": true` it is a dry run: nothing is stored and the answer says
//!   `"dryRun": true` with the version the placement would get. With `"version": N` (N > 0)
//!   it is stored only if the placement is still at version N, else 409; M3 ignores
//!   `version`, which lets a stale edit overwrite a newer placement.
//!
//! When a change leaves an aggregator shard set with no instance (the last instance of a shard
//! set dropped, or the placement deleted), the shard set's election and flush-times keys are
//! deleted with it, as M3 does; its candidates' keys are leased and go with their leases once
//! the members stop (only keys without a lease are deleted). Members of that shard set still
//! running can write flush times again until they see the change; stop them before reusing the
//! shard set's ID. The keys are per environment, not per zone, as in M3.
//!
//! # Not supported
//!
//! `num_shards` and `replication_factor` are ignored for `m3coordinator`, whose placement has
//! no shards, and `option_override.skip_port_mirroring` has no effect because shard sets are
//! formed by isolation group, never by port. Shards given on request instances are parsed and
//! checked, but the algorithms assign shards themselves.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::limits::PlacementLimits;
use axum::Router;
use axum::http::HeaderMap;
use axum::routing::{delete, get, post};
use m3_cluster::KvStore;
use m3_cluster::placement::Timing;

mod error;
mod json;
mod placement;
#[cfg(test)]
mod tests;
mod topic;

pub use error::AdminError;
use json::*;
use placement::*;
use topic::*;

/// The header naming the environment (the `<env>` of every KV key).
pub const ENVIRONMENT_HEADER: &str = "Cluster-Environment-Name";
/// The header naming the zone given to instances that name none.
pub const ZONE_HEADER: &str = "Cluster-Zone-Name";
/// The header naming the topic of the topic routes.
pub const TOPIC_NAME_HEADER: &str = "Topic-Name";
/// M3's dry-run header: compute and answer a change without storing it.
const DRY_RUN_HEADER: &str = "Dry-Run";
/// M3's force header: accepted (see the module docs).
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
        .route("/api/v1/services/{svc}/placement/set", post(placement_set))
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

/// Whether a request is a dry run (`Dry-Run: true`), after checking the `Force` header is a
/// boolean too (see the module docs).
fn is_dry_run(headers: &HeaderMap) -> Result<bool, AdminError> {
    boolean_header(headers, FORCE_HEADER)?;
    boolean_header(headers, DRY_RUN_HEADER)
}

/// A `true`/`false` header (any case; absent means false); anything else is refused.
fn boolean_header(headers: &HeaderMap, name: &str) -> Result<bool, AdminError> {
    let value = header_or(headers, name, "false")?;
    if value.eq_ignore_ascii_case("true") {
        Ok(true)
    } else if value.eq_ignore_ascii_case("false") {
        Ok(false)
    } else {
        Err(AdminError::BadRequest(format!(
            "header {name}: {value:?} is neither true nor false"
        )))
    }
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
