//! The placement routes: init, get, delete, add, remove and replace instances, for the three
//! placement kinds (see the parent module for the routes and the cutover rules).

use std::collections::HashMap;
use std::sync::Arc;

use crate::limits::PlacementLimits;
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use m3_cluster::Versioned;
use m3_cluster::keys::{self, DEFAULT_ENVIRONMENT, DEFAULT_ZONE, ServiceId};
use m3_cluster::placement::store::PlacementStoreError;
use m3_cluster::placement::{self, Instance, Placement, PlacementFormat, PlacementStore};

use super::*;

/// How a service's placement is built and changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Mirrored,
    Sharded,
    NonSharded,
}

impl Kind {
    pub(super) fn of(service: &str) -> Result<Kind, AdminError> {
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

    pub(super) fn is_sharded(self) -> bool {
        self != Kind::NonSharded
    }
}

/// The placement a request is about: its service, store and the request's default zone.
pub(super) struct Target {
    pub(super) kv: Arc<dyn m3_cluster::KvStore>,
    pub(super) service: String,
    pub(super) environment: String,
    pub(super) zone: String,
    pub(super) kind: Kind,
    pub(super) store: PlacementStore,
}

impl Target {
    pub(super) fn new(
        state: &AdminState,
        service: String,
        headers: &HeaderMap,
    ) -> Result<Self, AdminError> {
        let kind = Kind::of(&service)?;
        let environment = header_or(headers, ENVIRONMENT_HEADER, DEFAULT_ENVIRONMENT)?;
        let zone = header_or(headers, ZONE_HEADER, DEFAULT_ZONE)?;
        let id = ServiceId::new(service.as_str(), environment.as_str(), zone.as_str());
        let key = keys::placement_key_in(keys::placement_namespace(&service), &id);
        Ok(Target {
            kv: Arc::clone(&state.kv),
            store: PlacementStore::new(
                Arc::clone(&state.kv),
                key,
                PlacementFormat::of_service(&service),
            ),
            service,
            environment,
            zone,
            kind,
        })
    }

    pub(super) async fn current(&self) -> Result<Versioned<Placement>, AdminError> {
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
    pub(super) fn instances(
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

    /// A whole placement from a request, checked against `limits` and this service's kind
    /// (an aggregator placement is sharded and mirrored, a coordinator's is not sharded).
    pub(super) fn placement(
        &self,
        requested: PlacementRequest,
        limits: &PlacementLimits,
    ) -> Result<Placement, AdminError> {
        check_shards("numShards", requested.num_shards, limits)?;
        let (sharded, mirrored) = match self.kind {
            Kind::Mirrored => (true, true),
            Kind::Sharded => (true, false),
            Kind::NonSharded => (false, false),
        };
        if requested.is_sharded != sharded || requested.is_mirrored != mirrored {
            return Err(AdminError::BadRequest(format!(
                "a {} placement has isSharded {sharded} and isMirrored {mirrored}; the request \
                 has {} and {}",
                self.service, requested.is_sharded, requested.is_mirrored
            )));
        }
        let (keys, instances): (Vec<String>, Vec<InstanceRequest>) =
            requested.instances.into_iter().unzip();
        for key in &keys {
            check_length("instance key", key, limits.max_id_length)?;
        }
        let instances = self.instances(instances, limits)?;
        Ok(Placement {
            instances: keys.into_iter().zip(instances).collect(),
            replica_factor: requested.replica_factor,
            num_shards: requested.num_shards,
            is_sharded: requested.is_sharded,
            cutover_time: requested.cutover_time,
            is_mirrored: requested.is_mirrored,
            max_shard_set_id: requested.max_shard_set_id,
            is_subclustered: requested.is_subclustered,
            instances_per_subcluster: requested.instances_per_subcluster,
        })
    }

    pub(super) fn check_override(&self, o: Option<&OptionsRequest>) -> Result<(), AdminError> {
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

    /// Writes `next` over `current` (at its version) and answers with it; on a dry run,
    /// answers without writing.
    pub(super) async fn update(
        &self,
        current: &Versioned<Placement>,
        next: Placement,
        dry_run: bool,
    ) -> Result<Response, AdminError> {
        if dry_run {
            return Ok(placement_response(&next, current.version));
        }
        let version = self.store.check_and_set(&next, current.version).await?;
        tracing::info!(service = %self.service, environment = %self.environment, version,
            instances = next.instances.len(), "Placement changed.");
        self.forget_removed_shard_sets(Some(&current.value), Some(&next))
            .await;
        Ok(placement_response(&next, version))
    }

    /// Deletes the election and flush-times keys of the aggregator shard sets that `before`
    /// has and `after` has not (see the module docs). A failure is logged, not answered: the
    /// placement change itself is stored.
    pub(super) async fn forget_removed_shard_sets(
        &self,
        before: Option<&Placement>,
        after: Option<&Placement>,
    ) {
        if self.kind != Kind::Mirrored {
            return;
        }
        let shard_sets = |p: Option<&Placement>| -> std::collections::BTreeSet<u32> {
            p.map(|p| p.instances.values().map(|i| i.shard_set_id).collect())
                .unwrap_or_default()
        };
        let remaining = shard_sets(after);
        for shard_set in shard_sets(before).difference(&remaining) {
            let election = keys::election_key(&self.environment, &self.service, *shard_set);
            // Leased candidate keys are left to their leases: the shard set's members still
            // lead it until its cutoff, and deleting a live leader's key would hand its shards
            // to another member mid-flush. Keys without a lease belong to nobody.
            let candidates = match self
                .kv
                .list_by_creation(&keys::election_queue_prefix(&election))
                .await
            {
                Ok(queue) => queue
                    .into_iter()
                    .filter(|k| k.lease == 0)
                    .map(|k| k.key)
                    .collect(),
                Err(e) => {
                    tracing::warn!(key = %election, error = %e, shard_set, "Listing a removed shard set's election candidates failed.");
                    Vec::new()
                }
            };
            for key in candidates.into_iter().chain([
                election,
                keys::flush_times_key(&self.environment, *shard_set),
            ]) {
                match self.kv.delete(&key).await {
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(key, error = %e, shard_set, "Deleting a removed shard set's key failed.");
                    }
                }
            }
            tracing::info!(service = %self.service, environment = %self.environment, shard_set,
                "Removed shard set's election and flush-times keys deleted.");
        }
    }
}

pub(super) async fn placement_init(
    State(state): State<AdminState>,
    Path(svc): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, AdminError> {
    let target = Target::new(&state, svc, &headers)?;
    let dry_run = is_dry_run(&headers)?;
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
    if dry_run {
        return Ok(placement_response(&placement, 0));
    }
    let version = target.store.init(&placement).await?;
    tracing::info!(service = %target.service, environment = %target.environment,
        instances = placement.instances.len(), num_shards = placement.num_shards,
        "Placement created.");
    Ok(placement_response(&placement, version))
}

pub(super) async fn placement_get(
    State(state): State<AdminState>,
    Path(svc): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, AdminError> {
    let target = Target::new(&state, svc, &headers)?;
    let Some(asked) = query.get("version").filter(|v| !v.is_empty()) else {
        let current = target.current().await?;
        return Ok(placement_response(&current.value, current.version));
    };
    // As M3: an earlier version of the placement, 400 when `version` is not a number, 404
    // when that version is not there.
    let version: i64 = asked
        .parse()
        .map_err(|_| AdminError::BadRequest(format!("version {asked:?} is not an integer")))?;
    match target.store.get_version(version).await? {
        Some(placement) => Ok(placement_response(&placement, version)),
        None => Err(AdminError::PlacementVersionNotFound {
            service: target.service,
            environment: target.environment,
            version,
        }),
    }
}

pub(super) async fn placement_delete(
    State(state): State<AdminState>,
    Path(svc): Path<String>,
    headers: HeaderMap,
) -> Result<Response, AdminError> {
    let target = Target::new(&state, svc, &headers)?;
    if is_dry_run(&headers)? {
        target.current().await?;
        return Ok(Json(serde_json::json!({"deleted": false, "dryRun": true})).into_response());
    }
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
        "Placement deleted.");
    target
        .forget_removed_shard_sets(Some(&deleted.value), None)
        .await;
    Ok(Json(serde_json::json!({"deleted": true})).into_response())
}

pub(super) async fn placement_add(
    State(state): State<AdminState>,
    Path(svc): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, AdminError> {
    let target = Target::new(&state, svc, &headers)?;
    let dry_run = is_dry_run(&headers)?;
    let req: PlacementAddRequest = parse(&body, "placement add request")?;
    target.check_override(req.option_override.as_ref())?;
    let instances = target.instances(req.instances, &state.limits)?;
    let current = target.current().await?;
    let next = current.value.add_instances(instances, &state.timing())?;
    target.update(&current, next, dry_run).await
}

pub(super) async fn placement_remove(
    State(state): State<AdminState>,
    Path(svc): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, AdminError> {
    let target = Target::new(&state, svc, &headers)?;
    let dry_run = is_dry_run(&headers)?;
    let req: PlacementRemoveRequest = parse(&body, "placement remove request")?;
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
    target.update(&current, next, dry_run).await
}

pub(super) async fn placement_replace(
    State(state): State<AdminState>,
    Path(svc): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, AdminError> {
    let target = Target::new(&state, svc, &headers)?;
    let dry_run = is_dry_run(&headers)?;
    let req: PlacementReplaceRequest = parse(&body, "placement replace request")?;
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
    target.update(&current, next, dry_run).await
}

pub(super) async fn placement_delete_instance(
    State(state): State<AdminState>,
    Path((svc, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, AdminError> {
    let target = Target::new(&state, svc, &headers)?;
    let dry_run = is_dry_run(&headers)?;
    // `?force=true` is accepted like the body's force (see the module docs); other query
    // parameters are ignored, as M3 does.
    let current = target.current().await?;
    let next = current.value.remove_instances(&[id], &state.timing())?;
    target.update(&current, next, dry_run).await
}

pub(super) async fn placement_set(
    State(state): State<AdminState>,
    Path(svc): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, AdminError> {
    let target = Target::new(&state, svc, &headers)?;
    let header_dry_run = is_dry_run(&headers)?;
    let req: PlacementSetRequest = parse(&body, "placement set request")?;
    let placement = target.placement(req.placement, &state.limits)?;
    // Validated even when forced: the store refuses what the aggregators cannot run with.
    placement
        .validate()
        .map_err(|e| AdminError::BadRequest(format!("unable to validate new placement: {e}")))?;
    let current = target.store.get().await?;
    if req.version > 0 {
        let at = current.as_ref().map_or(0, |c| c.version);
        if at != req.version {
            return Err(AdminError::PlacementStore(
                PlacementStoreError::VersionMismatch {
                    key: target.store.key().to_owned(),
                    expected: req.version,
                    actual: at,
                },
            ));
        }
    }
    let dry_run = header_dry_run || !req.confirm;
    let version = if dry_run {
        current.as_ref().map_or(0, |c| c.version + 1)
    } else {
        let version = match &current {
            None => target.store.init(&placement).await?,
            Some(c) => target.store.check_and_set(&placement, c.version).await?,
        };
        tracing::info!(service = %target.service, environment = %target.environment, version,
            instances = placement.instances.len(), "Placement set.");
        target
            .forget_removed_shard_sets(current.as_ref().map(|c| &c.value), Some(&placement))
            .await;
        version
    };
    Ok(Json(PlacementSetResponse {
        placement: placement_json(&placement),
        version,
        dry_run,
    })
    .into_response())
}
