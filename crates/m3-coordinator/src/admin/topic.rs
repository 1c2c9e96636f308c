//! The topic routes: init, get, add or replace consumer services, delete.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use m3_cluster::keys::DEFAULT_ENVIRONMENT;
use m3_cluster::topic::{TopicError, TopicStore};

use super::*;

pub(super) fn topic_scope(
    state: &AdminState,
    headers: &HeaderMap,
) -> Result<(TopicStore, String), AdminError> {
    let environment = header_or(headers, ENVIRONMENT_HEADER, DEFAULT_ENVIRONMENT)?;
    let name = header_or(headers, TOPIC_NAME_HEADER, DEFAULT_TOPIC_NAME)?;
    check_length("environment", &environment, state.limits.max_id_length)?;
    check_length("topic name", &name, state.limits.max_id_length)?;
    Ok((TopicStore::new(Arc::clone(&state.kv), environment), name))
}

pub(super) async fn topic_init(
    State(state): State<AdminState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, AdminError> {
    let (store, name) = topic_scope(&state, &headers)?;
    let req: TopicInitRequest = parse(&body, "topic init request")?;
    check_shards("numberOfShards", req.number_of_shards, &state.limits)?;
    let created = store.init(&name, req.number_of_shards).await?;
    tracing::info!(topic = %name, shards = req.number_of_shards, "Topic created.");
    Ok(topic_response(&created))
}

pub(super) async fn topic_get(
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

pub(super) async fn topic_add(
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
    tracing::info!(topic = %name, version = updated.version, "Consumer service added.");
    Ok(topic_response(&updated))
}

pub(super) async fn topic_update(
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
    tracing::info!(topic = %name, version = updated.version, "Consumer services replaced.");
    Ok(topic_response(&updated))
}

pub(super) async fn topic_delete(
    State(state): State<AdminState>,
    headers: HeaderMap,
) -> Result<Response, AdminError> {
    let (store, name) = topic_scope(&state, &headers)?;
    let deleted = store.delete(&name).await?;
    tracing::info!(topic = %name, "Topic deleted.");
    Ok(topic_response(&deleted))
}
