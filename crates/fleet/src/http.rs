//! The fleet's HTTP endpoints, merged into the REST router of each process.
//!
//! Router: `PUT|DELETE /v2/fleet/workers/{id}` (the embedded registry: a worker registers and
//! refreshes its record, or leaves), `GET /v2/fleet` (the view: workers, their state, load and
//! capacity, budgets, which worker consumes each single-consumer source), `GET /v2/fleet/events`,
//! `PUT|DELETE /v2/fleet/leases/{source}` (source leases, embedded registry), the fleet's drift
//! view (`/v2/models/{m}/drift[/window]`, see [`crate::drift`]) and pass-through of the
//! endpoints that belong to one worker (Feast's `/get-online-features` and `/push` to a worker
//! with a feature store).
//!
//! Worker: `POST /v2/admin/preempt` (the hook a spot-notice watcher calls) and
//! `GET /v2/admin/worker` (the record it advertises).

use crate::agent::Agent;
use crate::members::Applied;
use crate::nats::Kv;
use crate::record::WorkerRecord;
use crate::router::Fleet;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use flotilla_core::Error;
use flotilla_http::ApiError;
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

#[derive(Clone)]
struct RouterState {
    fleet: Arc<Fleet>,
    /// The NATS registry, when the router uses one: HTTP registrations are mirrored into it.
    registry: Option<Arc<Kv>>,
    max_request_bytes: usize,
}

/// The router's fleet routes.
pub fn router_routes(fleet: Arc<Fleet>, registry: Option<Arc<Kv>>, max_request_bytes: usize) -> Router {
    Router::new()
        .route("/v2/fleet", get(view))
        .route("/v2/fleet/events", get(events))
        .route("/v2/fleet/traffic", get(traffic))
        .route("/v2/fleet/workers/{id}/assignment", get(assignment))
        .route("/v2/fleet/artifacts/{model}", get(artifact))
        .route("/v2/fleet/blobs/{sha256}", get(blob))
        .route("/v2/fleet/traffic/{model}/shadow", get(shadow_samples))
        .route("/v2/fleet/workers/{id}", put(register).delete(deregister))
        .route("/v2/fleet/leases/{source}", put(take_lease).delete(release_lease))
        .route("/get-online-features", post(proxy_features))
        .route("/push", post(proxy_features))
        .route("/v2/models/{model}/drift", get(fleet_drift))
        .route("/v2/models/{model}/drift/window", get(fleet_drift_window))
        .with_state(RouterState { fleet, registry, max_request_bytes })
}

async fn register(State(s): State<RouterState>, Path(id): Path<String>, body: axum::body::Bytes) -> Response {
    let record: WorkerRecord = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return ApiError(Error::invalid(format!("worker record is not valid JSON: {e}"))).into_response(),
    };
    if record.id != id {
        return ApiError(Error::invalid(format!("the record's id '{}' is not the path's '{id}'", record.id)))
            .into_response();
    }
    if let Some(kv) = &s.registry {
        let (kv, r) = (kv.clone(), record.clone());
        tokio::spawn(async move {
            if let Err(e) = kv.put(&r).await {
                tracing::debug!(error = %e, "registration not mirrored into the registry");
            }
        });
    }
    let id = record.id.clone();
    match s.fleet.members.apply(record) {
        Ok(applied) => {
            let mut answer = json!({
                "applied": matches!(applied, Applied::Joined | Applied::Refreshed),
                "ttl_ms": s.fleet.members.ttl.as_millis() as u64,
            });
            // Digest-based sync: the answer names only the digest the worker should have.
            let placement = &s.fleet.control.placement;
            if placement.active() && s.fleet.leads() {
                let digest = placement.desired_digest(&id);
                s.fleet.metrics.sync_bytes.with_label_values(&["digest"]).inc_by(digest.len() as u64);
                answer["desired_digest"] = json!(digest);
            }
            Json(answer).into_response()
        }
        Err(e) => ApiError(Error::invalid(e)).into_response(),
    }
}

async fn deregister(State(s): State<RouterState>, Path(id): Path<String>) -> Response {
    if let Some(kv) = &s.registry {
        let _ = kv.delete(&id).await;
    }
    s.fleet.members.remove(&id, "left", "deregistered");
    StatusCode::OK.into_response()
}

#[derive(serde::Deserialize)]
struct LeaseAsk {
    holder: String,
    ttl_ms: u64,
}

/// A worker takes or renews the lease of a source with one consumer (embedded registry): the
/// answer names the holder after the attempt.
async fn take_lease(State(s): State<RouterState>, Path(source): Path<String>, body: axum::body::Bytes) -> Response {
    let ask: LeaseAsk = match serde_json::from_slice(&body) {
        Ok(a) => a,
        Err(e) => return ApiError(Error::invalid(format!("lease request is not valid JSON: {e}"))).into_response(),
    };
    if ask.holder.is_empty() || !(1..=60_000).contains(&ask.ttl_ms) {
        return ApiError(Error::invalid("a lease needs a holder and a ttl_ms of 1 to 60000")).into_response();
    }
    let lease = s.fleet.leases.acquire(&source, &ask.holder, Duration::from_millis(ask.ttl_ms));
    Json(json!(lease)).into_response()
}

#[derive(serde::Deserialize)]
struct Holder {
    holder: String,
}

async fn release_lease(State(s): State<RouterState>, Path(source): Path<String>, Query(q): Query<Holder>) -> Response {
    let released = s.fleet.leases.release(&source, &q.holder);
    Json(json!({"released": released})).into_response()
}

/// Which worker consumes each source with one consumer: the router's table (with NATS, its
/// copy of the registry's leases, so that the view never waits on NATS).
fn sources(fleet: &Fleet) -> Value {
    json!(fleet
        .leases
        .live()
        .into_iter()
        .map(|(source, l)| json!({"source": source, "consumer": l.holder, "expires_ms": l.expires_ms}))
        .collect::<Vec<_>>())
}

/// The fleet as the router sees it.
async fn view(State(s): State<RouterState>) -> Json<Value> {
    Json(fleet_view(&s.fleet))
}

/// The `GET /v2/fleet` document (also the dashboard's Fleet page).
pub fn fleet_view(f: &Fleet) -> Value {
    let sources = sources(f);
    let workers: Vec<Value> = f
        .members
        .all()
        .iter()
        .map(|m| {
            let r = m.record();
            let lanes: Vec<Value> = m
                .lanes_view()
                .into_iter()
                .map(|(model, peak, base, rate, outstanding)| {
                    json!({
                        "model": model,
                        "peak_latency_ms": peak / 1e6,
                        "latency_ms": base / 1e6,
                        "rate_rps": rate,
                        "outstanding": outstanding,
                    })
                })
                .collect();
            json!({
                "id": r.id,
                "state": m.state_label(),
                "capacity_class": r.capacity_class,
                "hardware": r.hardware,
                "http": r.http,
                "grpc": r.grpc,
                "models": r.models,
                "load": r.load,
                "outstanding": m.outstanding.load(Ordering::Relaxed),
                "routing": lanes,
                "features": r.features,
                "drift": r.drift,
                "last_seen_ms_ago": m.seen().elapsed().as_millis() as u64,
                "applied_digest": r.applied_digest,
                "desired_digest": (f.control.placement.active() && f.leads()).then(|| f.control.placement.desired_digest(&r.id)),
            })
        })
        .collect();
    json!({
        "policy": f.settings.policy.as_str(),
        "registry_frozen": f.members.frozen(),
        "ttl_ms": f.members.ttl.as_millis() as u64,
        "retry_budget": {"percent": f.settings.retry_percent * 100.0, "min_per_sec": f.settings.retry_min_per_sec},
        "hedging": {"models": f.settings.hedge_models, "percent": f.settings.hedge_percent * 100.0},
        "desired_state": f.control.status(),
        "control": {"router": f.router_id, "leader": f.leads(), "lease": *f.lease.read()},
        "traffic": f.control.all().iter().map(|t| t.view()).collect::<Vec<_>>(),
        "placement": {
            "models": f.control.placement.placed(),
            "artifact_errors": f.control.placement.errors(),
        },
        "sources": sources,
        "workers": workers,
    })
}

/// What a worker should serve from the router's artifacts: model → leaf digest, and the digest.
async fn assignment(State(s): State<RouterState>, Path(id): Path<String>) -> Response {
    let a = s.fleet.control.placement.assignment(&id);
    let body = serde_json::to_vec(&a).unwrap_or_default();
    s.fleet.metrics.sync_bytes.with_label_values(&["assignment"]).inc_by(body.len() as u64);
    ([(axum::http::header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// A placed model's files with their hashes.
async fn artifact(State(s): State<RouterState>, Path(model): Path<String>) -> Response {
    match s.fleet.control.placement.manifest(&model) {
        Some(m) => {
            let body = serde_json::to_vec(&m).unwrap_or_default();
            s.fleet.metrics.sync_bytes.with_label_values(&["manifest"]).inc_by(body.len() as u64);
            ([(axum::http::header::CONTENT_TYPE, "application/json")], body).into_response()
        }
        None => ApiError(Error::not_found(format!("model '{model}' is not served from an artifact"))).into_response(),
    }
}

/// One file of an artifact, by its SHA-256.
async fn blob(State(s): State<RouterState>, Path(sha): Path<String>) -> Response {
    let Some(path) = s.fleet.control.placement.blob(&sha) else {
        return ApiError(Error::not_found(format!("no artifact file has SHA-256 {sha}"))).into_response();
    };
    match tokio::fs::read(&path).await {
        Ok(bytes) => {
            s.fleet.metrics.sync_bytes.with_label_values(&["blob"]).inc_by(bytes.len() as u64);
            ([(axum::http::header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response()
        }
        Err(e) => ApiError(Error::unavailable(format!("cannot read {}: {e}", path.display()))).into_response(),
    }
}

/// The desired state in force and each declared model's traffic (arms, canary, rollout, shadow).
async fn traffic(State(s): State<RouterState>) -> Json<Value> {
    let f = &s.fleet;
    Json(json!({
        "desired_state": f.control.status(),
        "models": f.control.all().iter().map(|t| t.view()).collect::<Vec<_>>(),
    }))
}

/// The last mirrored requests whose candidate answer differed from the primary's, or failed.
async fn shadow_samples(State(s): State<RouterState>, Path(model): Path<String>) -> Response {
    match s.fleet.control.traffic(&model) {
        Some(t) => {
            Json(json!({ "model": model, "totals": t.view().shadow, "samples": t.shadow_samples() })).into_response()
        }
        None => ApiError(Error::not_found(format!("model '{model}' has no traffic policy in the desired state")))
            .into_response(),
    }
}

#[derive(serde::Deserialize)]
struct Since {
    since_ms: Option<f64>,
}

async fn events(State(s): State<RouterState>, Query(q): Query<Since>) -> Json<Value> {
    Json(json!({ "events": s.fleet.events().since(q.since_ms) }))
}

async fn proxy_features(
    State(s): State<RouterState>,
    method: Method,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Some(m) = s.fleet.feature_worker() else {
        return ApiError(Error::unavailable(crate::router::NO_FEATURE_WORKER)).into_response();
    };
    pass_through(&s, &m.record().http, method, uri.path(), None, headers, body).await
}

/// The fleet's drift view of `model` (collected afresh): windows merged from every worker
/// that monitors it, scored once for the fleet.
async fn fleet_drift(State(s): State<RouterState>, Path(model): Path<String>) -> Response {
    match drift_view(&s, &model).await {
        Ok(()) => s.fleet.drift.report(&model).await.map(Json).ok_or_else(|| no_drift(&s, &model)).into_response(),
        Err(e) => ApiError(e).into_response(),
    }
}

/// The workers' open windows of `model`, merged (the workers' `/drift/window` format).
async fn fleet_drift_window(State(s): State<RouterState>, Path(model): Path<String>) -> Response {
    match drift_view(&s, &model).await {
        Ok(()) => {
            s.fleet.drift.open_windows(&model).await.map(Json).ok_or_else(|| no_drift(&s, &model)).into_response()
        }
        Err(e) => ApiError(e).into_response(),
    }
}

async fn drift_view(s: &RouterState, model: &str) -> Result<(), Error> {
    match s.fleet.drift.collect(&s.fleet, model).await {
        Ok(_) => Ok(()),
        Err(e) => Err(Error::internal(format!("the workers' drift windows of '{model}' do not merge: {e}"))),
    }
}

/// Why there is no drift view: an unknown model, or no worker monitors it.
fn no_drift(s: &RouterState, model: &str) -> ApiError {
    ApiError(match s.fleet.members.all().iter().any(|m| m.record().offer(model, "").is_some()) {
        true => Error::unavailable(format!(
            "no worker that serves model '{model}' monitors its drift (a drift_profile.json in its folder)"
        )),
        false => Error::not_found(format!("Request for unknown model: '{model}' is not found")),
    })
}

/// Sends the request on to `base` as it came (body, type and encodings) and its answer back.
async fn pass_through(
    s: &RouterState,
    base: &str,
    method: Method,
    path: &str,
    query: Option<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let bytes = match axum::body::to_bytes(body, s.max_request_bytes).await {
        Ok(b) => b,
        Err(_) => {
            return ApiError(Error::too_large(format!(
                "request body exceeds --max-request-bytes ({})",
                s.max_request_bytes
            )))
            .into_response()
        }
    };
    let url = match query {
        Some(q) => format!("{base}{path}?{q}"),
        None => format!("{base}{path}"),
    };
    let mut request = s.fleet.http.request(method, url).timeout(Duration::from_secs(30)).body(bytes);
    for h in [header::CONTENT_TYPE, header::CONTENT_ENCODING, header::ACCEPT_ENCODING, header::ACCEPT] {
        if let Some(v) = headers.get(&h) {
            request = request.header(h, v);
        }
    }
    let answer = match request.send().await {
        Ok(a) => a,
        Err(e) => return ApiError(Error::unavailable(format!("the worker did not answer: {e}"))).into_response(),
    };
    let status = answer.status();
    let mut out = HeaderMap::new();
    for h in [header::CONTENT_TYPE, header::CONTENT_ENCODING] {
        if let Some(v) = answer.headers().get(&h) {
            out.insert(h, v.clone());
        }
    }
    match answer.bytes().await {
        Ok(b) => (status, out, b).into_response(),
        Err(e) => ApiError(Error::unavailable(format!("the worker's answer broke off: {e}"))).into_response(),
    }
}

/// The worker's admin routes.
pub fn worker_routes(agent: Arc<Agent>, default_deadline: Duration) -> Router {
    Router::new()
        .route("/v2/admin/preempt", post(preempt))
        .route("/v2/admin/worker", get(worker))
        .route("/v2/admin/sync", post(sync_poke))
        .with_state((agent, default_deadline))
}

/// `POST /v2/admin/sync {"digest": "..."}`: a router says this worker's assignment changed (so it
/// need not wait for its next heartbeat's answer).
async fn sync_poke(State((agent, _)): State<(Arc<Agent>, Duration)>, body: axum::body::Bytes) -> Response {
    let digest = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v.get("digest").and_then(|d| d.as_str()).map(str::to_string))
        .filter(|d| d.len() == 64 && d.bytes().all(|b| b.is_ascii_hexdigit()));
    let Some(digest) = digest else {
        return ApiError(Error::invalid("expected {\"digest\": \"<64 hex characters>\"}")).into_response();
    };
    match agent.poke_sync(&digest) {
        true => StatusCode::ACCEPTED.into_response(),
        false => ApiError(Error::new(
            flotilla_core::ErrorKind::FailedPrecondition,
            "this worker syncs from no router (joined a NATS registry only)",
        ))
        .into_response(),
    }
}

/// `POST /v2/admin/preempt {"deadline_ms": N}`: a preemption notice.
async fn preempt(State((agent, default)): State<(Arc<Agent>, Duration)>, body: axum::body::Bytes) -> Response {
    let deadline = if body.iter().all(|b| b.is_ascii_whitespace()) {
        default
    } else {
        let v: Value = match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => return ApiError(Error::invalid(format!("malformed JSON body: {e}"))).into_response(),
        };
        match v.get("deadline_ms") {
            None | Some(Value::Null) => default,
            Some(d) => match d.as_u64().filter(|ms| *ms <= 86_400_000) {
                Some(ms) => Duration::from_millis(ms),
                None => {
                    return ApiError(Error::invalid(
                        "deadline_ms must be a whole number of milliseconds from 0 to 86400000",
                    ))
                    .into_response()
                }
            },
        }
    };
    Json(agent.preempt(deadline).await).into_response()
}

async fn worker(State((agent, _)): State<(Arc<Agent>, Duration)>) -> Json<WorkerRecord> {
    Json(agent.record())
}
