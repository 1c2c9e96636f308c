//! The Prometheus-compatible query HTTP API of the coordinator.
//!
//! Grafana, `promtool` and anything else that speaks Prometheus' HTTP API can point at the
//! coordinator and read back what was written, raw or aggregated:
//!
//! | endpoint                        | methods    | parameters                                  |
//! |---------------------------------|------------|---------------------------------------------|
//! | `/api/v1/query`                 | GET, POST  | `query`, `time`, `timeout`                  |
//! | `/api/v1/query_range`           | GET, POST  | `query`, `start`, `end`, `step`, `timeout`  |
//! | `/api/v1/labels`                | GET, POST  | `match[]` (repeated), `start`, `end`, `limit` |
//! | `/api/v1/label/{name}/values`   | GET        | `match[]` (repeated), `start`, `end`, `limit` |
//! | `/api/v1/series`                | GET, POST  | `match[]` (repeated, required), `start`, `end`, `limit` |
//! | `/api/v1/status/buildinfo`      | GET        | (none)                                      |
//! | `/api/v1/metadata`              | GET        | `metric`, `limit` (always `{}`: metadata is not stored) |
//! | `/api/v1/query_exemplars`       | GET, POST  | `query`, `start`, `end` (always `[]`: exemplars are not stored) |
//! | `/api/v1/format_query`          | GET, POST  | `query`                                     |
//!
//! Parameters come from the URL query string and, for POST, from an
//! `application/x-www-form-urlencoded` body (body values first, as Prometheus reads them).
//! Times are RFC 3339 (`2024-05-01T12:00:00.5Z`) or Unix seconds with an optional fraction
//! (`1714564800.5`); durations are seconds (`15`, `0.5`) or duration strings (`15s`, `1m30s`).
//! A query's `timeout` can only shorten `limits.query.timeout`, as Prometheus' caps it by
//! `--query.timeout`.
//! The PromQL itself is evaluated by [`m3_query`]'s engine (all of PromQL, checked against
//! Prometheus; see docs/promql.md), and `match[]` is read by
//! [`m3_query::parse_series_selector`] with the same parser.
//!
//! # Which namespace is read
//!
//! Every request reads exactly one namespace, chosen as M3's coordinator chooses: by how far
//! back the request reaches, unless two of M3's headers name one.
//!
//! ```text
//! M3-Metrics-Type   M3-Storage-Policy   namespace read
//! ───────────────   ─────────────────   ────────────────────────────────────────────────────
//! (absent)          (absent)            by range: the unaggregated one while the request's
//!                                       reach is within its retention, otherwise the
//!                                       aggregated one of finest resolution whose retention
//!                                       covers the reach (the longest retention if none does)
//! unaggregated      (absent)            the unaggregated one
//! aggregated        (absent)            by range among the aggregated ones
//! aggregated        10s:2d              the aggregated one with window 10s and retention 2d
//! (absent)          10s:2d              as for `aggregated`
//! unaggregated      10s:2d              400: a policy only applies to aggregated data
//! ```
//!
//! How far back a query reaches is the earliest sample its expression reads
//! ([`m3_query::Engine::earliest_read`], found by the engine after parsing, before reading:
//! its `start` or `time` moved back by lookback,
//! ranges, offsets and subqueries, or pinned by `@`); the metadata endpoints reach back to their
//! `start` (now when they give none). An unknown metrics type, a policy that
//! does not parse or that no namespace has is a `400` naming the header and, where it helps,
//! the namespaces that are configured.
//!
//! # Responses
//!
//! Exactly Prometheus' envelope: `{"status":"success","data":…}` on success, and on failure
//! `{"status":"error","errorType":…,"error":"<reason>"}` with Prometheus' classes: `400
//! bad_data` when the request is at fault, `422 execution` when a valid query cannot be
//! computed (a limit, colliding series), `503 timeout`, `500 internal` when the store failed.
//! `ApiError::classify` is the one place that decides; only `500`s are logged at error level.
//!
//! Store calls are synchronous (they read blocks from disk), so each runs on tokio's blocking pool rather than on a
//! runtime worker.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Form, FromRequest, Path, Query, Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

use m3_metric::StoragePolicy;
use m3_query::{Engine, NamespaceSource, QueryError, QueryValue};
use m3_storage::{Labels, Matcher, Store};

use crate::config::ValidNamespace;
use crate::limits::QueryLimits;

/// Header choosing between raw (`unaggregated`) and downsampled (`aggregated`) data.
pub const METRICS_TYPE_HEADER: &str = "M3-Metrics-Type";

/// Header naming the storage policy (`resolution:retention`, e.g. `1m:40d`) of the aggregated
/// namespace to read.
pub const STORAGE_POLICY_HEADER: &str = "M3-Storage-Policy";

/// The largest form body accepted on POST requests.
const MAX_FORM_BYTES: usize = 2 * 1024 * 1024;

/// Prometheus' smallest timestamp (`-292273086-05-16T16:47:06Z`) in Unix milliseconds: the
/// default `start` of the metadata endpoints.
const MIN_TIME_MS: i64 = -9_223_309_901_257_974_000;

/// Prometheus' largest timestamp (`292277025-08-18T07:12:54.999999999Z`) in Unix milliseconds:
/// the default `end` of the metadata endpoints.
const MAX_TIME_MS: i64 = 9_223_309_901_257_974_999;

/// How Prometheus clients spell [`MIN_TIME_MS`] and [`MAX_TIME_MS`] when they send them back.
const MIN_TIME_TEXT: &str = "-292273086-05-16T16:47:06Z";
const MAX_TIME_TEXT: &str = "292277025-08-18T07:12:54.999999999Z";

/// What the query API serves: the store and the namespaces of the coordinator's config.
#[derive(Debug, Clone)]
pub struct QueryState {
    /// The embedded store holding every namespace below.
    pub store: Store,
    /// The configured namespaces; the headers pick one of them per request.
    pub namespaces: Vec<ValidNamespace>,
    /// Samples per query, timeout and concurrency (`limits.query`).
    pub limits: QueryLimits,
    /// Queries evaluated at once; the others wait in line within their timeout.
    pub slots: Arc<tokio::sync::Semaphore>,
    /// The current time in Unix milliseconds: what the namespace choice measures retention
    /// from (a fixed clock in tests).
    pub clock: fn() -> i64,
}

impl QueryState {
    /// A state over `store` and `namespaces` within `limits`.
    pub fn new(store: Store, namespaces: Vec<ValidNamespace>, limits: QueryLimits) -> QueryState {
        QueryState {
            store,
            namespaces,
            slots: Arc::new(tokio::sync::Semaphore::new(
                limits
                    .max_concurrency
                    .clamp(1, tokio::sync::Semaphore::MAX_PERMITS),
            )),
            limits,
            clock: now_ms,
        }
    }

    /// Waits for an evaluation slot, within the query's deadline, and the engine to evaluate
    /// with.
    /// `requested` is the request's own `timeout`, which can only shorten the configured one.
    async fn engine(
        &self,
        requested: Option<Duration>,
    ) -> Result<(tokio::sync::OwnedSemaphorePermit, Engine), ApiError> {
        let started = std::time::Instant::now();
        let timeout = requested.map_or(self.limits.timeout, |t| t.min(self.limits.timeout));
        let permit = self.slot_within(timeout).await?;
        let engine = Engine::new()
            .with_max_samples(self.limits.max_samples)
            .with_max_series(self.limits.max_series)
            .with_timeout(Some(timeout.saturating_sub(started.elapsed())));
        Ok((permit, engine))
    }

    /// The namespace a request reading back to `start_ms` reads (see the [module docs](self)).
    fn namespace(&self, headers: &HeaderMap, start_ms: i64) -> Result<String, ApiError> {
        choose_namespace(&self.namespaces, headers, start_ms, (self.clock)())
            .map(|ns| ns.name.clone())
    }

    /// The namespace a query reaching back to `reach_ms` reads, as the engine's source.
    fn source(&self, headers: &HeaderMap, reach_ms: i64) -> Result<NamespaceSource, QueryError> {
        let namespace = self
            .namespace(headers, reach_ms)
            .map_err(|e| QueryError::BadData(e.to_string()))?;
        Ok(NamespaceSource::new(self.store.clone(), namespace))
    }

    /// Waits for an evaluation slot, within the query timeout. Metadata requests (`/labels`,
    /// `/label/…/values`, `/series`) take one too: they read the index as queries do.
    async fn slot(&self) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
        self.slot_within(self.limits.timeout).await
    }

    async fn slot_within(
        &self,
        timeout: Duration,
    ) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
        tokio::time::timeout(timeout, Arc::clone(&self.slots).acquire_owned())
            .await
            .map_err(|_| ApiError::Query(QueryError::Timeout("waiting for a query slot")))?
            .map_err(|_| ApiError::Internal("the query API is shutting down".into()))
    }
}

/// The query API's routes (see the [module docs](self)), ready to be merged into the
/// coordinator's HTTP router.
pub fn router(state: QueryState) -> Router {
    Router::new()
        .route("/api/v1/query", get(instant_query).post(instant_query))
        .route("/api/v1/query_range", get(range_query).post(range_query))
        .route("/api/v1/labels", get(label_names).post(label_names))
        .route("/api/v1/label/{name}/values", get(label_values))
        .route("/api/v1/series", get(series).post(series))
        .with_state(Arc::new(state))
        .merge(grafana_router())
}

/// What Grafana asks a Prometheus data source besides queries and series: the build, metric
/// metadata and exemplars (neither is stored: empty answers, as Prometheus gives for none), and
/// query formatting. Served with or without a store.
fn grafana_router() -> Router {
    Router::new()
        .route("/api/v1/status/buildinfo", get(build_info))
        .route("/api/v1/metadata", get(metadata))
        .route(
            "/api/v1/query_exemplars",
            get(query_exemplars).post(query_exemplars),
        )
        .route("/api/v1/format_query", get(format_query).post(format_query))
}

/// The Prometheus version whose query semantics the engine follows (its differential test
/// runs against it), reported as the build's `version` so clients enable what it supports.
const PROMETHEUS_API_VERSION: &str = "2.42.0";

async fn build_info() -> Json<Success<serde_json::Value>> {
    success(serde_json::json!({
        "version": PROMETHEUS_API_VERSION,
        "revision": "",
        "branch": "",
        "buildUser": "",
        "buildDate": "",
        "goVersion": "",
        "application": format!("m3coordinator (m3-rs {})", env!("CARGO_PKG_VERSION")),
    }))
}

async fn metadata(params: Params) -> Result<Json<Success<serde_json::Value>>, ApiError> {
    params.limit()?;
    Ok(success(serde_json::json!({})))
}

async fn query_exemplars(params: Params) -> Result<Json<Success<Vec<()>>>, ApiError> {
    m3_query::validate_query(params.first("query").unwrap_or_default())?;
    params.time_range()?;
    Ok(success(Vec::new()))
}

async fn format_query(params: Params) -> Result<Json<Success<String>>, ApiError> {
    Ok(success(m3_query::format_query(
        params.first("query").unwrap_or_default(),
    )?))
}

/// The query endpoints of a coordinator that stores nothing (`backend: prom-remote`): each
/// answers 400 `bad_data` saying where the data is.
pub fn without_store_router() -> Router {
    async fn no_data() -> ApiError {
        ApiError::BadData(
            "this coordinator stores nothing (backend: prom-remote): query the \
             prometheusRemoteBackend endpoints it writes to"
                .to_string(),
        )
    }
    Router::new()
        .route("/api/v1/query", get(no_data).post(no_data))
        .route("/api/v1/query_range", get(no_data).post(no_data))
        .route("/api/v1/labels", get(no_data).post(no_data))
        .route("/api/v1/label/{name}/values", get(no_data))
        .route("/api/v1/series", get(no_data).post(no_data))
        .merge(grafana_router())
}

type Shared = State<Arc<QueryState>>;

/// `{"status":"success","data":…}`.
#[derive(Debug, Serialize)]
struct Success<T> {
    status: &'static str,
    data: T,
}

fn success<T: Serialize>(data: T) -> Json<Success<T>> {
    Json(Success {
        status: "success",
        data,
    })
}

async fn instant_query(
    State(state): Shared,
    headers: HeaderMap,
    params: Params,
) -> Result<Json<Success<QueryValue>>, ApiError> {
    let query = params.first("query").unwrap_or_default().to_string();
    let time = match params.first("time") {
        Some(text) => parse_time("time", text)?,
        None => (state.clock)(),
    };
    let timeout = params.timeout()?;
    state.namespace(&headers, time)?; // a bad header is refused before waiting for a slot
    let (permit, engine) = state.engine(timeout).await?;
    let result = blocking(move || {
        let result =
            engine.instant_query_reading(&query, time, |reach| state.source(&headers, reach));
        drop(permit);
        result
    })
    .await?;
    Ok(success(result))
}

async fn range_query(
    State(state): Shared,
    headers: HeaderMap,
    params: Params,
) -> Result<Json<Success<QueryValue>>, ApiError> {
    let query = params.first("query").unwrap_or_default().to_string();
    let start = parse_time("start", params.first("start").unwrap_or_default())?;
    let end = parse_time("end", params.first("end").unwrap_or_default())?;
    let step = parse_duration_ms("step", params.first("step").unwrap_or_default())?;
    let timeout = params.timeout()?;
    state.namespace(&headers, start)?; // a bad header is refused before waiting for a slot
    let (permit, engine) = state.engine(timeout).await?;
    let result = blocking(move || {
        let result = engine.range_query_reading(&query, start, end, step, |reach| {
            state.source(&headers, reach)
        });
        drop(permit);
        result
    })
    .await?;
    Ok(success(result))
}

async fn label_names(
    State(state): Shared,
    headers: HeaderMap,
    params: Params,
) -> Result<Json<Success<Vec<String>>>, ApiError> {
    let (start, end) = params.time_range()?;
    let limit = params.limit()?;
    let namespace = state.namespace(&headers, metadata_start(start, (state.clock)()))?;
    let selectors = params.selectors();
    let _slot = state.slot().await?;
    let store = state.store.clone();
    let names = blocking(move || -> Result<_, ApiError> {
        let selectors = parse_selectors(&selectors)?;
        if selectors.is_empty() {
            return Ok(store.label_names(&namespace, &[], start, end)?);
        }
        let mut all = BTreeSet::new();
        for matchers in &selectors {
            all.extend(store.label_names(&namespace, matchers, start, end)?);
        }
        Ok(all.into_iter().collect())
    })
    .await?;
    Ok(success(truncated(names, limit)))
}

async fn label_values(
    State(state): Shared,
    headers: HeaderMap,
    name: Result<Path<String>, PathRejection>,
    params: Params,
) -> Result<Json<Success<Vec<String>>>, ApiError> {
    let Path(name) = name.map_err(|e| ApiError::BadData(e.body_text()))?;
    let (start, end) = params.time_range()?;
    let limit = params.limit()?;
    let namespace = state.namespace(&headers, metadata_start(start, (state.clock)()))?;
    let selectors = params.selectors();
    let _slot = state.slot().await?;
    let store = state.store.clone();
    let values = blocking(move || -> Result<_, ApiError> {
        let selectors = parse_selectors(&selectors)?;
        if selectors.is_empty() {
            return Ok(store.label_values(&namespace, &name, &[], start, end)?);
        }
        let mut all = BTreeSet::new();
        for matchers in &selectors {
            all.extend(store.label_values(&namespace, &name, matchers, start, end)?);
        }
        Ok(all.into_iter().collect())
    })
    .await?;
    Ok(success(truncated(values, limit)))
}

async fn series(
    State(state): Shared,
    headers: HeaderMap,
    params: Params,
) -> Result<Json<Success<Vec<Labels>>>, ApiError> {
    let (start, end) = params.time_range()?;
    let limit = params.limit()?;
    let namespace = state.namespace(&headers, metadata_start(start, (state.clock)()))?;
    let selectors = params.selectors();
    if selectors.is_empty() {
        return Err(ApiError::BadData("no match[] parameter provided".into()));
    }
    let _slot = state.slot().await?;
    let store = state.store.clone();
    let found = blocking(move || -> Result<_, ApiError> {
        let selectors = parse_selectors(&selectors)?;
        let mut all = BTreeSet::new();
        for matchers in &selectors {
            all.extend(store.series(&namespace, matchers, start, end)?);
        }
        Ok(all.into_iter().collect())
    })
    .await?;
    Ok(success(truncated(found, limit)))
}

/// The `match[]` selectors parsed into matchers.
fn parse_selectors(texts: &[String]) -> Result<Vec<Vec<Matcher>>, ApiError> {
    texts
        .iter()
        .map(|text| m3_query::parse_series_selector(text).map_err(ApiError::from))
        .collect()
}

/// At most `limit` items (all when `None`).
fn truncated<T>(mut items: Vec<T>, limit: Option<usize>) -> Vec<T> {
    if let Some(limit) = limit {
        items.truncate(limit);
    }
    items
}

/// Where a metadata request without `start` reaches back to, for the namespace choice: now.
fn metadata_start(start: i64, now: i64) -> i64 {
    if start == MIN_TIME_MS { now } else { start }
}

/// Runs a store or engine call on the blocking pool.
async fn blocking<T, E, F>(call: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    E: Into<ApiError> + Send + 'static,
    F: FnOnce() -> Result<T, E> + Send + 'static,
{
    match tokio::task::spawn_blocking(call).await {
        Ok(result) => result.map_err(Into::into),
        Err(e) => Err(ApiError::Internal(format!(
            "query task did not finish: {e}"
        ))),
    }
}

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
enum ApiError {
    /// The request itself is wrong: a parameter, a header, the body.
    #[error("{0}")]
    BadData(String),
    /// The store refused the call; [`m3_storage::Error::is_bad_input`] says whose fault it was.
    #[error(transparent)]
    Storage(m3_storage::Error),
    /// The query engine refused or failed; it names its class.
    #[error(transparent)]
    Query(QueryError),
    /// Something on our side failed outside the store.
    #[error("{0}")]
    Internal(String),
}

impl From<m3_storage::Error> for ApiError {
    fn from(e: m3_storage::Error) -> ApiError {
        ApiError::Storage(e)
    }
}

impl From<QueryError> for ApiError {
    fn from(e: QueryError) -> ApiError {
        match e {
            QueryError::Storage(e) => ApiError::Storage(e),
            other => ApiError::Query(other),
        }
    }
}

impl ApiError {
    /// The HTTP status and Prometheus `errorType` of this error: the one place that decides.
    fn classify(&self) -> (StatusCode, &'static str) {
        const BAD_DATA: (StatusCode, &str) = (StatusCode::BAD_REQUEST, "bad_data");
        const INTERNAL: (StatusCode, &str) = (StatusCode::INTERNAL_SERVER_ERROR, "internal");
        match self {
            ApiError::BadData(_) => BAD_DATA,
            ApiError::Storage(e) if e.is_bad_input() => BAD_DATA,
            ApiError::Query(e) => (
                StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                e.error_type(),
            ),
            ApiError::Storage(_) | ApiError::Internal(_) => INTERNAL,
        }
    }
}

/// `{"status":"error","errorType":…,"error":…}`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Failure {
    status: &'static str,
    error_type: &'static str,
    error: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, error_type) = self.classify();
        if status.is_server_error() {
            tracing::error!(error = %self, "Query API request failed.");
        } else {
            tracing::debug!(error = %self, "Query API request rejected.");
        }
        let body = Failure {
            status: "error",
            error_type,
            error: self.to_string(),
        };
        (status, Json(body)).into_response()
    }
}

/// Picks the namespace a request reads from its `M3-Metrics-Type` and `M3-Storage-Policy`
/// headers; see the table in the [module docs](self).
fn choose_namespace<'a>(
    namespaces: &'a [ValidNamespace],
    headers: &HeaderMap,
    start_ms: i64,
    now_ms: i64,
) -> Result<&'a ValidNamespace, ApiError> {
    let metrics_type = header_text(headers, METRICS_TYPE_HEADER)?;
    let policy = match header_text(headers, STORAGE_POLICY_HEADER)? {
        None => None,
        Some(text) => Some(text.parse::<StoragePolicy>().map_err(|e| {
            ApiError::BadData(format!("invalid {STORAGE_POLICY_HEADER} header: {e}"))
        })?),
    };
    let unaggregated = || namespaces.iter().find(|ns| ns.policy.is_none());
    let aggregated = namespaces.iter().filter(|ns| ns.policy.is_some());

    let want_aggregated = match metrics_type.map(str::to_ascii_lowercase).as_deref() {
        Some("aggregated") => true,
        Some("unaggregated") => {
            if policy.is_some() {
                return Err(ApiError::BadData(format!(
                    "{STORAGE_POLICY_HEADER} applies only to {METRICS_TYPE_HEADER}: aggregated"
                )));
            }
            return unaggregated().ok_or_else(|| {
                ApiError::BadData("no unaggregated namespace is configured".into())
            });
        }
        Some(_) => {
            return Err(ApiError::BadData(format!(
                "invalid {METRICS_TYPE_HEADER} header {:?}: expected unaggregated or aggregated",
                metrics_type.unwrap_or_default()
            )));
        }
        None => policy.is_some(),
    };

    // How far back a namespace keeps data; a request reaching further back needs a longer one.
    let covers = |ns: &ValidNamespace| {
        let retention_ms = i64::try_from(ns.retention.as_millis()).unwrap_or(i64::MAX);
        start_ms >= now_ms.saturating_sub(retention_ms)
    };
    if !want_aggregated
        && let Some(ns) = unaggregated()
        && (covers(ns) || aggregated.clone().next().is_none())
    {
        return Ok(ns);
    }
    let configured = || {
        let list: Vec<String> = aggregated
            .clone()
            .filter_map(|ns| ns.policy.map(|p| p.to_string()))
            .collect();
        if list.is_empty() {
            "none".to_string()
        } else {
            list.join(", ")
        }
    };
    if let Some(want) = policy {
        return aggregated
            .clone()
            .find(|ns| {
                ns.policy.is_some_and(|p| {
                    p.resolution.window == want.resolution.window && p.retention == want.retention
                })
            })
            .ok_or_else(|| {
                ApiError::BadData(format!(
                    "no aggregated namespace with storage policy {want} \
                     (configured aggregated namespaces: {})",
                    configured()
                ))
            });
    }
    let resolution = |ns: &ValidNamespace| ns.policy.map(|p| p.resolution.window);
    let finest_covering = aggregated
        .clone()
        .filter(|ns| covers(ns))
        .min_by_key(|ns| resolution(ns));
    let longest_kept = || aggregated.clone().max_by_key(|ns| ns.retention);
    match finest_covering.or_else(longest_kept) {
        Some(ns) => Ok(ns),
        None if want_aggregated => Err(ApiError::BadData(format!(
            "no aggregated namespace is configured (configured aggregated namespaces: {})",
            configured()
        ))),
        None => Err(ApiError::BadData("no namespace is configured".into())),
    }
}

/// A header's value, trimmed; `None` when absent.
fn header_text<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, ApiError> {
    match headers.get(name) {
        None => Ok(None),
        Some(value) => value
            .to_str()
            .map(|v| Some(v.trim()))
            .map_err(|_| ApiError::BadData(format!("{name} header is not visible ASCII"))),
    }
}

/// A request's parameters in Prometheus' order: form body first, then the URL query string.
#[derive(Debug, Default)]
struct Params(Vec<(String, String)>);

impl<S: Send + Sync> FromRequest<S> for Params {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let from_url = if req.uri().query().is_some() {
            Query::<Vec<(String, String)>>::try_from_uri(req.uri())
                .map_err(|e| ApiError::BadData(format!("invalid query string: {}", e.body_text())))?
                .0
        } else {
            Vec::new()
        };
        if req.method() != Method::POST {
            return Ok(Params(from_url));
        }
        let (parts, body) = req.into_parts();
        let bytes = axum::body::to_bytes(body, MAX_FORM_BYTES)
            .await
            .map_err(|e| {
                ApiError::BadData(format!(
                    "cannot read the request body (limit {MAX_FORM_BYTES} bytes): {e}"
                ))
            })?;
        if bytes.is_empty() {
            return Ok(Params(from_url));
        }
        let req = Request::from_parts(parts, Body::from(bytes));
        let Form(mut pairs) = Form::<Vec<(String, String)>>::from_request(req, state)
            .await
            .map_err(|e| ApiError::BadData(format!("invalid form body: {}", e.body_text())))?;
        pairs.extend(from_url);
        Ok(Params(pairs))
    }
}

impl Params {
    /// The first value of `name`, as Go's `Request.FormValue` returns it.
    fn first(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every `match[]` selector's text, for [`parse_selectors`] on the blocking pool (parsing
    /// a long one takes milliseconds: not on a runtime worker).
    fn selectors(&self) -> Vec<String> {
        self.0
            .iter()
            .filter(|(n, _)| n == "match[]")
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// `timeout`: the request's own evaluation timeout (a duration or seconds), absent or
    /// empty for the configured one.
    fn timeout(&self) -> Result<Option<Duration>, ApiError> {
        match self.first("timeout") {
            None | Some("") => Ok(None),
            Some(text) => {
                let ms = parse_duration_ms("timeout", text)?;
                Ok(Some(Duration::from_millis(ms.unsigned_abs())))
            }
        }
    }

    /// `limit`: a non-negative integer, 0 or absent for no limit.
    fn limit(&self) -> Result<Option<usize>, ApiError> {
        match self.first("limit") {
            None | Some("") => Ok(None),
            Some(text) => match text.parse::<usize>() {
                Ok(0) => Ok(None),
                Ok(n) => Ok(Some(n)),
                Err(_) => Err(ApiError::BadData(format!(
                    "invalid parameter \"limit\": cannot parse {text:?} to a non-negative integer"
                ))),
            },
        }
    }

    /// `start` and `end` of the metadata endpoints, defaulting to all of time.
    fn time_range(&self) -> Result<(i64, i64), ApiError> {
        let start = match self.first("start") {
            Some(text) => parse_time("start", text)?,
            None => MIN_TIME_MS,
        };
        let end = match self.first("end") {
            Some(text) => parse_time("end", text)?,
            None => MAX_TIME_MS,
        };
        if end < start {
            return Err(ApiError::BadData(
                "end timestamp must not be before start time".into(),
            ));
        }
        Ok((start, end))
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Parses a timestamp parameter: Unix seconds (fraction rounded to the millisecond) or RFC 3339.
fn parse_time(param: &str, text: &str) -> Result<i64, ApiError> {
    let bad = || {
        ApiError::BadData(format!(
            "invalid parameter {param:?}: cannot parse {text:?} to a valid timestamp"
        ))
    };
    if let Ok(seconds) = text.parse::<f64>() {
        return seconds_to_ms(seconds).ok_or_else(bad);
    }
    match text {
        MIN_TIME_TEXT => Ok(MIN_TIME_MS),
        MAX_TIME_TEXT => Ok(MAX_TIME_MS),
        _ => parse_rfc3339_ms(text).ok_or_else(bad),
    }
}

/// Parses a duration parameter: seconds (`15`, `0.5`) or a duration string (`15s`, `1m30s`).
/// Negative and zero values pass; the engine rejects them with Prometheus' message.
fn parse_duration_ms(param: &str, text: &str) -> Result<i64, ApiError> {
    let bad = || {
        ApiError::BadData(format!(
            "invalid parameter {param:?}: cannot parse {text:?} to a valid duration"
        ))
    };
    if let Ok(seconds) = text.parse::<f64>() {
        return seconds_to_ms(seconds).ok_or_else(bad);
    }
    let duration = m3_config::duration::parse_duration(text).map_err(|_| bad())?;
    i64::try_from(duration.as_millis()).map_err(|_| bad())
}

/// Seconds as milliseconds, rounded; `None` when not finite or outside Prometheus' time range.
fn seconds_to_ms(seconds: f64) -> Option<i64> {
    let ms = (seconds * 1000.0).round();
    // The range check also keeps the cast below exact-or-in-range.
    if ms.is_finite() && ms >= MIN_TIME_MS as f64 && ms <= MAX_TIME_MS as f64 {
        Some(ms as i64)
    } else {
        None
    }
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)` into Unix milliseconds (the fraction is
/// truncated to the millisecond, as Prometheus does).
fn parse_rfc3339_ms(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    let num = |range: std::ops::Range<usize>| -> Option<i64> {
        let part = b.get(range)?;
        if part.is_empty() || !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        part.iter()
            .try_fold(0i64, |acc, d| Some(acc * 10 + i64::from(d - b'0')))
    };
    let at = |i: usize, expected: &[u8]| b.get(i).is_some_and(|c| expected.contains(c));
    if !(at(4, b"-") && at(7, b"-") && at(10, b"Tt") && at(13, b":") && at(16, b":")) {
        return None;
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 59
    {
        return None;
    }
    let mut i = 19;
    let mut millis = 0;
    if at(i, b".") {
        let digits = b
            .get(i + 1..)?
            .iter()
            .take_while(|c| c.is_ascii_digit())
            .count();
        if digits == 0 {
            return None;
        }
        for k in 0..3 {
            millis = millis * 10
                + if k < digits {
                    num(i + 1 + k..i + 2 + k)?
                } else {
                    0
                };
        }
        i += 1 + digits;
    }
    let offset_minutes = if at(i, b"Zz") && b.len() == i + 1 {
        0
    } else if at(i, b"+-") && at(i + 3, b":") && b.len() == i + 6 {
        let (h, m) = (num(i + 1..i + 3)?, num(i + 4..i + 6)?);
        if h > 23 || m > 59 {
            return None;
        }
        let sign = if at(i, b"-") { -1 } else { 1 };
        sign * (h * 60 + m)
    } else {
        return None;
    };
    let days = days_from_civil(year, month, day);
    let seconds = days * 86_400 + hour * 3_600 + minute * 60 + second - offset_minutes * 60;
    Some(seconds * 1000 + millis)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_from_march = (month + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    use axum::http::HeaderValue;
    use m3_storage::NamespaceConfig;
    use serde_json::{Value, json};

    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    /// A directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> TempDir {
            static NEXT: AtomicU64 = AtomicU64::new(0);
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            let path = std::env::temp_dir().join(format!(
                "m3-query-api-{}-{nanos}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&path).unwrap();
            TempDir(path)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn valid(name: &str, policy: Option<&str>) -> ValidNamespace {
        let policy: Option<StoragePolicy> = policy.map(|p| p.parse().unwrap());
        ValidNamespace {
            name: name.to_string(),
            policy,
            retention: policy.map_or(2 * DAY, |p| p.retention.0),
            downsample_all: true,
            read_only: false,
            buffer_past: None,
            buffer_future: None,
        }
    }

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        Labels::new(pairs.iter().copied()).unwrap()
    }

    /// The same series `cpu{host="a"}` in three namespaces with different values, plus two `up`
    /// series in the unaggregated one. Timestamps are around t = 1000s.
    fn fixture(dir: &TempDir) -> QueryState {
        let store = Store::open(
            &dir.0,
            vec![
                NamespaceConfig::unaggregated("default", 2 * DAY),
                NamespaceConfig::aggregated("agg_10s", Duration::from_secs(10), 2 * DAY),
                NamespaceConfig::aggregated("agg_1m", Duration::from_secs(60), 40 * DAY),
            ],
        )
        .unwrap();
        let cpu = labels(&[("__name__", "cpu"), ("host", "a")]);
        let api = labels(&[("__name__", "up"), ("job", "api")]);
        let db = labels(&[("__name__", "up"), ("job", "db"), ("zone", "eu")]);
        store
            .write_batch(
                "default",
                &[
                    (&cpu, 1_000_000, 1.0),
                    (&cpu, 1_010_000, 2.0),
                    (&cpu, 1_020_000, 3.0),
                    (&api, 1_000_000, 1.0),
                    (&db, 1_000_000, 0.0),
                ],
            )
            .unwrap();
        store
            .write_series("agg_10s", &cpu, &[(1_010_000, 20.0), (1_020_000, 30.0)])
            .unwrap();
        store
            .write_series("agg_1m", &cpu, &[(1_020_000, 600.0)])
            .unwrap();
        QueryState {
            // "Now" is just after the data: every namespace still holds all of it.
            clock: || FIXTURE_NOW_MS,
            ..QueryState::new(
                store,
                vec![
                    valid("default", None),
                    valid("agg_10s", Some("10s:2d")),
                    valid("agg_1m", Some("1m:40d")),
                ],
                QueryLimits::default(),
            )
        }
    }

    /// The fixture's clock.
    const FIXTURE_NOW_MS: i64 = 1_600_000;

    /// Without headers, the namespace follows how far back the query reaches: the raw one while
    /// its retention (2d) covers the start, then the finest aggregated one that covers it
    /// (10s:2d cannot, 1m:40d can), then the one that keeps data longest.
    #[test]
    fn namespace_follows_the_range_without_headers() {
        let dir = TempDir::new();
        let state = fixture(&dir);
        let headers = HeaderMap::new();
        let day = 86_400_000;
        let now = 100 * day;
        let pick = |start: i64| {
            choose_namespace(&state.namespaces, &headers, start, now)
                .map(|ns| ns.name.clone())
                .unwrap()
        };
        assert_eq!(pick(now), "default");
        assert_eq!(pick(now - 2 * day), "default");
        assert_eq!(pick(now - 2 * day - 1), "agg_1m");
        assert_eq!(pick(now - 40 * day), "agg_1m");
        assert_eq!(
            pick(now - 400 * day),
            "agg_1m",
            "the longest retention when none covers"
        );
        let mut aggregated = HeaderMap::new();
        aggregated.insert(METRICS_TYPE_HEADER, "aggregated".parse().unwrap());
        let pick_aggregated = |start: i64| {
            choose_namespace(&state.namespaces, &aggregated, start, now)
                .map(|ns| ns.name.clone())
                .unwrap()
        };
        assert_eq!(
            pick_aggregated(now - day),
            "agg_10s",
            "the finest that covers"
        );
        assert_eq!(pick_aggregated(now - 3 * day), "agg_1m");
    }

    /// Queries over `maxConcurrency` wait in line rather than being refused, and one that
    /// cannot start within `limits.query.timeout` gets Prometheus's 503 `timeout`.
    #[tokio::test]
    async fn queries_wait_for_a_slot_within_their_timeout() {
        let dir = TempDir::new();
        let mut state = fixture(&dir);
        state.limits = QueryLimits {
            timeout: Duration::from_millis(300),
            max_concurrency: 1,
            ..QueryLimits::default()
        };
        state.slots = Arc::new(tokio::sync::Semaphore::new(1));
        let slots = Arc::clone(&state.slots);
        let app = router(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        let api = Api {
            base: format!("http://{addr}"),
            client: reqwest::Client::new(),
            _dir: TempDir::new(),
        };
        let query = [("query", "cpu"), ("time", "1020")];

        // The only slot is busy for longer than the timeout: the query times out.
        let busy = Arc::clone(&slots).acquire_owned().await.unwrap();
        let (status, body) = api.get("/api/v1/query", &query, &[]).await;
        assert_eq!(status, 503, "{body}");
        assert_eq!(body["errorType"], "timeout", "{body}");
        // Metadata requests read the index as queries do and take a slot too.
        let (status, body) = api.get("/api/v1/labels", &[], &[]).await;
        assert_eq!(status, 503, "{body}");
        assert_eq!(body["errorType"], "timeout", "{body}");

        // Busy for less than the timeout: the query waits its turn and is answered.
        let release = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            drop(busy);
        });
        let (status, body) = api.get("/api/v1/query", &query, &[]).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["data"]["result"][0]["value"][1], "3", "{body}");
        release.await.unwrap();

        // A request's own `timeout` shortens the configured one: the same wait of 100 ms now
        // outlasts it.
        let busy = Arc::clone(&slots).acquire_owned().await.unwrap();
        let release = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            drop(busy);
        });
        let short = [("query", "cpu"), ("time", "1020"), ("timeout", "20ms")];
        let (status, body) = api.get("/api/v1/query", &short, &[]).await;
        assert_eq!(status, 503, "{body}");
        assert_eq!(body["errorType"], "timeout", "{body}");
        release.await.unwrap();
        let (status, body) = api
            .get(
                "/api/v1/query",
                &[("query", "cpu"), ("timeout", "soon")],
                &[],
            )
            .await;
        assert_bad_data(status, &body, "invalid parameter \"timeout\"");
    }

    /// The router served on a free local port.
    struct Api {
        base: String,
        client: reqwest::Client,
        _dir: TempDir,
    }

    async fn serve() -> Api {
        let dir = TempDir::new();
        let app = router(fixture(&dir));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Api {
            base: format!("http://{addr}"),
            client: reqwest::Client::new(),
            _dir: dir,
        }
    }

    fn encode(text: &str) -> String {
        let mut out = String::new();
        for b in text.bytes() {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                out.push(char::from(b));
            } else {
                out.push_str(&format!("%{b:02X}"));
            }
        }
        out
    }

    fn form(params: &[(&str, &str)]) -> String {
        params
            .iter()
            .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
            .collect::<Vec<_>>()
            .join("&")
    }

    impl Api {
        async fn get(
            &self,
            path: &str,
            params: &[(&str, &str)],
            headers: &[(&str, &str)],
        ) -> (u16, Value) {
            let url = format!("{}{path}?{}", self.base, form(params));
            let mut request = self.client.get(url);
            for (name, value) in headers {
                request = request.header(*name, *value);
            }
            Self::finish(request).await
        }

        async fn post(
            &self,
            path: &str,
            params: &[(&str, &str)],
            headers: &[(&str, &str)],
        ) -> (u16, Value) {
            let mut request = self
                .client
                .post(format!("{}{path}", self.base))
                .header("Content-Type", "application/x-www-form-urlencoded")
                .body(form(params));
            for (name, value) in headers {
                request = request.header(*name, *value);
            }
            Self::finish(request).await
        }

        async fn finish(request: reqwest::RequestBuilder) -> (u16, Value) {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let text = response.text().await.unwrap();
            let body = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("body is not JSON ({e}): {text}"));
            (status, body)
        }

        /// The value of the single-element vector `cpu` at t = 1020s with these headers.
        async fn cpu_value(&self, headers: &[(&str, &str)]) -> Value {
            let (status, body) = self
                .get(
                    "/api/v1/query",
                    &[("query", "cpu"), ("time", "1020")],
                    headers,
                )
                .await;
            assert_eq!(status, 200, "{body}");
            body["data"]["result"][0]["value"][1].clone()
        }
    }

    fn assert_bad_data(status: u16, body: &Value, needle: &str) {
        assert_eq!(status, 400, "{body}");
        assert_eq!(body["status"], "error", "{body}");
        assert_eq!(body["errorType"], "bad_data", "{body}");
        let error = body["error"].as_str().unwrap_or_default();
        assert!(error.contains(needle), "{needle:?} not in {error:?}");
    }

    #[tokio::test]
    async fn instant_query_returns_a_vector() {
        let api = serve().await;
        let (status, body) = api
            .get(
                "/api/v1/query",
                &[("query", r#"up{job="api"}"#), ("time", "1015")],
                &[],
            )
            .await;
        assert_eq!(status, 200);
        assert_eq!(
            body,
            json!({"status": "success", "data": {"resultType": "vector", "result": [
                {"metric": {"__name__": "up", "job": "api"}, "value": [1015, "1"]}
            ]}})
        );

        // RFC 3339 and fractional seconds name the same instants.
        let (_, body) = api
            .get(
                "/api/v1/query",
                &[("query", "up"), ("time", "1970-01-01T00:16:55Z")],
                &[],
            )
            .await;
        assert_eq!(body["data"]["result"][0]["value"], json!([1015, "1"]));
        assert_eq!(body["data"]["result"][1]["metric"]["zone"], "eu");
        let (_, body) = api
            .get(
                "/api/v1/query",
                &[("query", "cpu"), ("time", "1015.5")],
                &[],
            )
            .await;
        assert_eq!(body["data"]["result"][0]["value"], json!([1015.5, "2"]));

        // Without `time` the query runs at now: the samples are older than the lookback.
        let (status, body) = api.get("/api/v1/query", &[("query", "cpu")], &[]).await;
        assert_eq!(status, 200);
        assert_eq!(body["data"]["result"], json!([]));
    }

    #[tokio::test]
    async fn range_query_returns_a_matrix() {
        let api = serve().await;
        for step in ["10s", "10"] {
            let (status, body) = api
                .get(
                    "/api/v1/query_range",
                    &[
                        ("query", "cpu"),
                        ("start", "995"),
                        ("end", "1025"),
                        ("step", step),
                    ],
                    &[],
                )
                .await;
            assert_eq!(status, 200, "{body}");
            assert_eq!(
                body,
                json!({"status": "success", "data": {"resultType": "matrix", "result": [
                    {"metric": {"__name__": "cpu", "host": "a"},
                     "values": [[1005, "1"], [1015, "2"], [1025, "3"]]}
                ]}})
            );
        }
    }

    #[tokio::test]
    async fn range_selector_returns_raw_points() {
        let api = serve().await;
        let (status, body) = api
            .get(
                "/api/v1/query",
                &[("query", "cpu[5m]"), ("time", "1020")],
                &[],
            )
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            body["data"],
            json!({"resultType": "matrix", "result": [
                {"metric": {"__name__": "cpu", "host": "a"},
                 "values": [[1000, "1"], [1010, "2"], [1020, "3"]]}
            ]})
        );
        // A range selector is not an instant vector, so a range query refuses it.
        let (status, body) = api
            .get(
                "/api/v1/query_range",
                &[
                    ("query", "cpu[5m]"),
                    ("start", "1000"),
                    ("end", "1020"),
                    ("step", "10s"),
                ],
                &[],
            )
            .await;
        assert_bad_data(status, &body, "range vector");
    }

    #[tokio::test]
    async fn labels_label_values_and_series() {
        let api = serve().await;
        let (status, body) = api.get("/api/v1/labels", &[], &[]).await;
        assert_eq!(status, 200);
        assert_eq!(
            body,
            json!({"status": "success", "data": ["__name__", "host", "job", "zone"]})
        );
        let (_, body) = api
            .get(
                "/api/v1/labels",
                &[("match[]", r#"up{job="api"}"#), ("match[]", "cpu")],
                &[],
            )
            .await;
        assert_eq!(body["data"], json!(["__name__", "host", "job"]));

        let (_, body) = api.get("/api/v1/label/job/values", &[], &[]).await;
        assert_eq!(body["data"], json!(["api", "db"]));
        let (_, body) = api.get("/api/v1/label/__name__/values", &[], &[]).await;
        assert_eq!(body["data"], json!(["cpu", "up"]));
        let (_, body) = api
            .get(
                "/api/v1/label/job/values",
                &[("match[]", r#"{zone="eu"}"#)],
                &[],
            )
            .await;
        assert_eq!(body["data"], json!(["db"]));

        let (status, body) = api
            .get(
                "/api/v1/series",
                &[("match[]", r#"up{job=~"a.*"}"#), ("match[]", "cpu")],
                &[],
            )
            .await;
        assert_eq!(status, 200);
        assert_eq!(
            body,
            json!({"status": "success", "data": [
                {"__name__": "cpu", "host": "a"},
                {"__name__": "up", "job": "api"}
            ]})
        );
        // Overlapping selectors list a series once.
        let (_, body) = api
            .get(
                "/api/v1/series",
                &[("match[]", "up"), ("match[]", r#"{job="db"}"#)],
                &[],
            )
            .await;
        assert_eq!(body["data"].as_array().map(Vec::len), Some(2));
        // `start`/`end` keep only series with samples in range.
        let (_, body) = api
            .get(
                "/api/v1/series",
                &[("match[]", "cpu"), ("start", "1005"), ("end", "1008")],
                &[],
            )
            .await;
        assert_eq!(body["data"], json!([]));
        let (_, body) = api
            .get(
                "/api/v1/series",
                &[("match[]", "up"), ("start", "2000")],
                &[],
            )
            .await;
        assert_eq!(body["data"], json!([]));

        let (status, body) = api.get("/api/v1/series", &[], &[]).await;
        assert_bad_data(status, &body, "no match[]");
        let (status, body) = api
            .get("/api/v1/labels", &[("start", "1020"), ("end", "1000")], &[])
            .await;
        assert_bad_data(status, &body, "end timestamp must not be before start time");
    }

    #[tokio::test]
    async fn headers_pick_the_namespace() {
        let api = serve().await;
        assert_eq!(api.cpu_value(&[]).await, "3");
        assert_eq!(
            api.cpu_value(&[(METRICS_TYPE_HEADER, "unaggregated")])
                .await,
            "3"
        );
        assert_eq!(
            api.cpu_value(&[
                (METRICS_TYPE_HEADER, "aggregated"),
                (STORAGE_POLICY_HEADER, "10s:2d")
            ])
            .await,
            "30"
        );
        assert_eq!(
            api.cpu_value(&[
                (METRICS_TYPE_HEADER, "aggregated"),
                (STORAGE_POLICY_HEADER, "1m:40d")
            ])
            .await,
            "600"
        );
        // A policy alone implies aggregated; precision does not take part in the match.
        assert_eq!(
            api.cpu_value(&[(STORAGE_POLICY_HEADER, "1m@1s:40d")]).await,
            "600"
        );

        // The metadata endpoints follow the same headers.
        let agg = [
            (METRICS_TYPE_HEADER, "aggregated"),
            (STORAGE_POLICY_HEADER, "10s:2d"),
        ];
        let (_, body) = api.get("/api/v1/label/__name__/values", &[], &agg).await;
        assert_eq!(body["data"], json!(["cpu"]));
        let (_, body) = api
            .get(
                "/api/v1/query_range",
                &[
                    ("query", "cpu"),
                    ("start", "1010"),
                    ("end", "1020"),
                    ("step", "10s"),
                ],
                &agg,
            )
            .await;
        assert_eq!(
            body["data"]["result"][0]["values"],
            json!([[1010, "20"], [1020, "30"]])
        );
    }

    /// Without headers, the namespace follows how far back the expression reads, not only the
    /// query's time: a three-day range at a time inside the raw retention reads the rollups.
    #[tokio::test]
    async fn namespace_follows_how_far_back_the_expression_reads() {
        let api = serve().await;
        let value_of = |query: &'static str| {
            let api = &api;
            async move {
                let (status, body) = api
                    .get("/api/v1/query", &[("query", query), ("time", "1020")], &[])
                    .await;
                assert_eq!(status, 200, "{body}");
                body["data"]["result"][0]["value"][1].clone()
            }
        };
        assert_eq!(value_of("max_over_time(cpu[1d])").await, "3");
        assert_eq!(value_of("max_over_time(cpu[3d])").await, "600");
        assert_eq!(
            value_of("max_over_time(cpu[1d:1m] offset 2d) or cpu").await,
            "600"
        );
        let (status, body) = api
            .get(
                "/api/v1/query_range",
                &[
                    ("query", "max_over_time(cpu[3d])"),
                    ("start", "1020"),
                    ("end", "1020"),
                    ("step", "10s"),
                ],
                &[],
            )
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["data"]["result"][0]["values"], json!([[1020, "600"]]));
    }

    #[tokio::test]
    async fn grafana_endpoints_answer_as_prometheus_does() {
        let api = serve().await;
        let (status, body) = api.get("/api/v1/status/buildinfo", &[], &[]).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["data"]["version"], PROMETHEUS_API_VERSION);
        let (status, body) = api.get("/api/v1/metadata", &[("limit", "5")], &[]).await;
        assert_eq!((status, &body["data"]), (200, &json!({})), "{body}");
        let (status, body) = api
            .get(
                "/api/v1/query_exemplars",
                &[("query", "up"), ("start", "0"), ("end", "10")],
                &[],
            )
            .await;
        assert_eq!((status, &body["data"]), (200, &json!([])), "{body}");
        let (status, body) = api
            .get(
                "/api/v1/format_query",
                &[("query", "sum by(job)(rate(up[5m]))")],
                &[],
            )
            .await;
        assert_eq!(
            (status, &body["data"]),
            (200, &json!("sum by (job) (rate(up[5m]))")),
            "{body}"
        );
        let (status, body) = api
            .get("/api/v1/format_query", &[("query", "sum(")], &[])
            .await;
        assert_bad_data(status, &body, "invalid parameter \"query\"");

        // `limit` bounds the metadata endpoints' answers.
        let (_, body) = api.get("/api/v1/series", &[("match[]", "up")], &[]).await;
        assert_eq!(body["data"].as_array().map(Vec::len), Some(2), "{body}");
        let (_, body) = api
            .get("/api/v1/series", &[("match[]", "up"), ("limit", "1")], &[])
            .await;
        assert_eq!(body["data"].as_array().map(Vec::len), Some(1), "{body}");
        let (_, body) = api.get("/api/v1/labels", &[("limit", "2")], &[]).await;
        assert_eq!(body["data"], json!(["__name__", "host"]), "{body}");
        let (_, body) = api
            .get("/api/v1/label/job/values", &[("limit", "1")], &[])
            .await;
        assert_eq!(body["data"], json!(["api"]), "{body}");
        let (status, body) = api.get("/api/v1/labels", &[("limit", "-1")], &[]).await;
        assert_bad_data(status, &body, "invalid parameter \"limit\"");
    }

    /// A valid query that cannot be computed is 422 `execution`, Prometheus' class.
    #[tokio::test]
    async fn evaluation_errors_are_422_execution() {
        let api = serve().await;
        let (status, body) = api
            .get(
                "/api/v1/query",
                &[
                    (
                        "query",
                        r#"label_replace(label_replace(up, "job", "x", "", ""), "zone", "", "", "")"#,
                    ),
                    ("time", "1010"),
                ],
                &[],
            )
            .await;
        assert_eq!(status, 422, "{body}");
        assert_eq!(body["errorType"], "execution", "{body}");
        assert_eq!(
            body["error"],
            "vector cannot contain metrics with the same labelset"
        );
        let (status, body) = api
            .get(
                "/api/v1/query",
                &[
                    (
                        "query",
                        "sum by (job) (rate(up[5m])) * on (job) group_left up",
                    ),
                    ("time", "1010"),
                ],
                &[],
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }

    #[tokio::test]
    async fn bad_headers_are_rejected() {
        let api = serve().await;
        let query = [("query", "cpu"), ("time", "1020")];
        let cases: [(&[(&str, &str)], &str); 4] = [
            (
                &[(METRICS_TYPE_HEADER, "raw")],
                "invalid M3-Metrics-Type header \"raw\"",
            ),
            (
                &[(STORAGE_POLICY_HEADER, "ten seconds")],
                "invalid M3-Storage-Policy header",
            ),
            (
                &[
                    (METRICS_TYPE_HEADER, "aggregated"),
                    (STORAGE_POLICY_HEADER, "5m:1d"),
                ],
                "no aggregated namespace with storage policy 5m:1d \
                 (configured aggregated namespaces: 10s:2d, 1m:40d)",
            ),
            (
                &[
                    (METRICS_TYPE_HEADER, "unaggregated"),
                    (STORAGE_POLICY_HEADER, "10s:2d"),
                ],
                "applies only to",
            ),
        ];
        for (headers, needle) in cases {
            let (status, body) = api.get("/api/v1/query", &query, headers).await;
            assert_bad_data(status, &body, needle);
            let (status, body) = api.get("/api/v1/labels", &[], headers).await;
            assert_bad_data(status, &body, needle);
        }
    }

    #[tokio::test]
    async fn post_form_bodies_work() {
        let api = serve().await;
        let (status, body) = api
            .post("/api/v1/query", &[("query", "cpu"), ("time", "1020")], &[])
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["data"]["result"][0]["value"], json!([1020, "3"]));

        let (_, body) = api
            .post(
                "/api/v1/query_range",
                &[
                    ("query", "cpu"),
                    ("start", "1000"),
                    ("end", "1020"),
                    ("step", "20s"),
                ],
                &[(STORAGE_POLICY_HEADER, "10s:2d")],
            )
            .await;
        assert_eq!(body["data"]["result"][0]["values"], json!([[1020, "30"]]));

        let (_, body) = api
            .post(
                "/api/v1/series",
                &[("match[]", "up"), ("match[]", "cpu")],
                &[],
            )
            .await;
        assert_eq!(body["data"].as_array().map(Vec::len), Some(3));
        let (_, body) = api.post("/api/v1/labels", &[("match[]", "cpu")], &[]).await;
        assert_eq!(body["data"], json!(["__name__", "host"]));

        // Parameters in the URL of a POST without a body count too; a body wins over the URL.
        let response = api
            .client
            .post(format!("{}/api/v1/query?query=cpu&time=1010", api.base))
            .send()
            .await
            .unwrap();
        let body: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
        assert_eq!(body["data"]["result"][0]["value"], json!([1010, "2"]));
        let response = api
            .client
            .post(format!("{}/api/v1/query?query=cpu&time=1010", api.base))
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body("time=1000")
            .send()
            .await
            .unwrap();
        let body: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
        assert_eq!(body["data"]["result"][0]["value"], json!([1000, "1"]));

        // A body that is not a form is refused, not ignored.
        let response = api
            .client
            .post(format!("{}/api/v1/query", api.base))
            .header("Content-Type", "application/json")
            .body(r#"{"query":"cpu"}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 400);
        let body: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
        assert_bad_data(400, &body, "invalid form body");
    }

    /// Endpoint, parameters, and a part of the expected error message.
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);

    #[tokio::test]
    async fn bad_input_is_400_bad_data() {
        let api = serve().await;
        let cases: [Case<'_>; 10] = [
            (
                "/api/v1/query",
                &[("query", "rate(cpu)"), ("time", "1020")],
                r#"invalid parameter "query""#,
            ),
            (
                "/api/v1/query",
                &[("query", "cpu{")],
                r#"invalid parameter "query""#,
            ),
            (
                "/api/v1/query",
                &[("query", "")],
                r#"invalid parameter "query""#,
            ),
            (
                "/api/v1/query",
                &[("query", "cpu"), ("time", "yesterday")],
                r#"invalid parameter "time": cannot parse "yesterday" to a valid timestamp"#,
            ),
            (
                "/api/v1/query",
                &[("query", r#"cpu{host=~"("}"#), ("time", "1020")],
                "regex",
            ),
            (
                "/api/v1/query_range",
                &[("query", "cpu"), ("end", "1020"), ("step", "10s")],
                r#"invalid parameter "start""#,
            ),
            (
                "/api/v1/query_range",
                &[
                    ("query", "cpu"),
                    ("start", "1000"),
                    ("end", "1020"),
                    ("step", "ten"),
                ],
                r#"invalid parameter "step": cannot parse "ten" to a valid duration"#,
            ),
            (
                "/api/v1/query_range",
                &[
                    ("query", "cpu"),
                    ("start", "1000"),
                    ("end", "1020"),
                    ("step", "0"),
                ],
                "zero or negative query resolution step",
            ),
            (
                "/api/v1/series",
                &[("match[]", "rate(cpu[5m])")],
                r#"match[] must be a series selector, got "rate(cpu[5m])": a function call"#,
            ),
            (
                "/api/v1/labels",
                &[("match[]", r#"{job=~".*"}"#)],
                "at least one non-empty matcher",
            ),
        ];
        for (path, params, needle) in cases {
            let (status, body) = api.get(path, params, &[]).await;
            assert_bad_data(status, &body, needle);
        }
    }

    #[tokio::test]
    async fn store_failures_are_500_internal() {
        let error = ApiError::Storage(m3_storage::Error::Corrupt {
            what: "sample",
            detail: "short value".into(),
        });
        assert_eq!(
            error.classify(),
            (StatusCode::INTERNAL_SERVER_ERROR, "internal")
        );
        let response = error.into_response();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        let body: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(
            body,
            json!({"status": "error", "errorType": "internal",
                   "error": "corrupt sample in the store: short value"})
        );
        let bad = ApiError::Storage(m3_storage::Error::UnknownNamespace("x".into()));
        assert_eq!(bad.classify(), (StatusCode::BAD_REQUEST, "bad_data"));
    }

    #[test]
    fn default_namespace_without_an_unaggregated_one() {
        let only_agg = [valid("agg", Some("1m:40d"))];
        let none = HeaderMap::new();
        assert_eq!(
            choose_namespace(&only_agg, &none, 0, 0).unwrap().name,
            "agg"
        );
        let mut unagg = HeaderMap::new();
        unagg.insert(
            METRICS_TYPE_HEADER,
            HeaderValue::from_static("unaggregated"),
        );
        assert!(choose_namespace(&only_agg, &unagg, 0, 0).is_err());
        assert!(choose_namespace(&[], &none, 0, 0).is_err());
        let mut upper = HeaderMap::new();
        upper.insert(METRICS_TYPE_HEADER, HeaderValue::from_static("Aggregated"));
        assert_eq!(
            choose_namespace(&only_agg, &upper, 0, 0).unwrap().name,
            "agg"
        );
    }

    fn time(text: &str) -> Option<i64> {
        parse_time("time", text).ok()
    }

    #[test]
    fn times_parse_like_prometheus() {
        assert_eq!(time("1700000000"), Some(1_700_000_000_000));
        assert_eq!(time("1700000000.1234"), Some(1_700_000_000_123));
        assert_eq!(time("-1.5"), Some(-1_500));
        assert_eq!(time("2023-11-14T22:13:20Z"), Some(1_700_000_000_000));
        assert_eq!(
            time("2023-11-14T22:13:20.987654321Z"),
            Some(1_700_000_000_987)
        );
        assert_eq!(time("2023-11-14t22:13:20.5z"), Some(1_700_000_000_500));
        assert_eq!(time("2023-11-15T00:13:20+02:00"), Some(1_700_000_000_000));
        assert_eq!(time("2023-11-14T20:13:20-02:00"), Some(1_700_000_000_000));
        assert_eq!(time("2024-02-29T00:00:00Z"), Some(1_709_164_800_000));
        assert_eq!(time("1969-12-31T23:59:59Z"), Some(-1_000));
        assert_eq!(time(MIN_TIME_TEXT), Some(MIN_TIME_MS));
        assert_eq!(time(MAX_TIME_TEXT), Some(MAX_TIME_MS));
        for bad in [
            "",
            "NaN",
            "inf",
            "1e300",
            "2023-02-29T00:00:00Z",
            "2023-11-14T24:00:00Z",
            "2023-11-14T22:13:20",
            "2023-11-14T22:13:20.Z",
            "2023-11-14 22:13:20Z",
            "2023-11-14T22:13:20+0200",
            "2023-11-14T22:13:20Zjunk",
            "２023-11-14T22:13:20Z",
        ] {
            assert_eq!(time(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn durations_parse_like_prometheus() {
        let ms = |text| parse_duration_ms("step", text).ok();
        assert_eq!(ms("15"), Some(15_000));
        assert_eq!(ms("0.25"), Some(250));
        assert_eq!(ms("15s"), Some(15_000));
        assert_eq!(ms("1m30s"), Some(90_000));
        assert_eq!(ms("1h"), Some(3_600_000));
        assert_eq!(ms("-5"), Some(-5_000));
        assert_eq!(ms(""), None);
        assert_eq!(ms("5 parsecs"), None);
    }

    proptest::proptest! {
        #[test]
        fn parsers_never_panic(text in "\\PC{0,40}") {
            let _ = parse_time("time", &text);
            let _ = parse_duration_ms("step", &text);
        }

        #[test]
        fn unix_seconds_round_trip(ms in -4_000_000_000_000i64..4_000_000_000_000) {
            let sign = if ms < 0 { "-" } else { "" };
            let abs = ms.unsigned_abs();
            let text = format!("{sign}{}.{:03}", abs / 1000, abs % 1000);
            proptest::prop_assert_eq!(parse_time("time", &text).ok(), Some(ms));
        }
    }
}
