//! REST endpoint handlers: decode, call the service, encode.

use crate::body;
use crate::json::{decode_request, encode_response};
use crate::{ApiError, AppState};
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use flotilla_core::config::to_json;
use flotilla_core::stats::{CountNs, StatsSnapshot};
use flotilla_core::{protocol, stage, trace};
use flotilla_core::{Api, Error};
use serde_json::{json, Value};
use tracing::Instrument;

type Result<T> = std::result::Result<T, ApiError>;

pub async fn server_metadata<A: Api>(State(s): State<AppState<A>>) -> Json<Value> {
    let o = s.service.options();
    Json(json!({
        "name": o.server_name,
        "version": o.server_version,
        "extensions": flotilla_core::service::EXTENSIONS,
    }))
}

/// 200 when true, 503 when false; the body is the Open Inference Protocol's `{"<key>": bool}`
/// (Triton's clients read the status, the KServe SDK reads the body).
fn health(key: &str, ok: bool) -> (StatusCode, Json<Value>) {
    let status = if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(json!({ key: ok })))
}

pub async fn live<A: Api>(State(s): State<AppState<A>>) -> (StatusCode, Json<Value>) {
    health("live", s.service.live())
}

pub async fn ready<A: Api>(State(s): State<AppState<A>>) -> (StatusCode, Json<Value>) {
    health("ready", s.service.ready())
}

async fn metadata<A: Api>(s: &AppState<A>, model: &str, version: &str) -> Result<Json<Value>> {
    let m = s.service.model_metadata(model, version).await?;
    let tensors = |ts: &[flotilla_core::service::TensorMeta]| -> Vec<Value> {
        ts.iter().map(|t| json!({"name": t.name, "datatype": t.datatype, "shape": t.shape})).collect()
    };
    Ok(Json(json!({
        "name": m.name,
        "versions": m.versions,
        "platform": m.platform,
        "inputs": tensors(&m.inputs),
        "outputs": tensors(&m.outputs),
    })))
}

pub async fn model_metadata<A: Api>(State(s): State<AppState<A>>, Path(model): Path<String>) -> Result<Json<Value>> {
    metadata(&s, &model, "").await
}

pub async fn model_metadata_v<A: Api>(
    State(s): State<AppState<A>>,
    Path((m, v)): Path<(String, String)>,
) -> Result<Json<Value>> {
    metadata(&s, &m, &v).await
}

/// 200 `{"name", "ready": true}`, or the reason's status with `{"error", "name", "ready": false}`
/// (tritonclient reads the status, the KServe SDK the body).
async fn ready_status<A: Api>(s: &AppState<A>, model: &str, version: &str) -> Response {
    let r = s.service.model_ready(model, version).await;
    if r.ready {
        return Json(json!({"name": model, "ready": true})).into_response();
    }
    let e = r.reason.unwrap_or_else(|| Error::unavailable(format!("model '{model}' is not ready")));
    let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    let kind = [(flotilla_core::error::KIND_HEADER, e.kind.as_str())];
    (status, kind, Json(json!({"error": e.message, "name": model, "ready": false}))).into_response()
}

pub async fn model_ready<A: Api>(State(s): State<AppState<A>>, Path(model): Path<String>) -> Response {
    ready_status(&s, &model, "").await
}

pub async fn model_ready_v<A: Api>(State(s): State<AppState<A>>, Path((m, v)): Path<(String, String)>) -> Response {
    ready_status(&s, &m, &v).await
}

pub async fn model_config<A: Api>(State(s): State<AppState<A>>, Path(model): Path<String>) -> Result<Json<Value>> {
    Ok(Json(to_json(&*s.service.model_config(&model, "").await?)))
}

pub async fn model_config_v<A: Api>(
    State(s): State<AppState<A>>,
    Path((m, v)): Path<(String, String)>,
) -> Result<Json<Value>> {
    Ok(Json(to_json(&*s.service.model_config(&m, &v).await?)))
}

fn count_ns(c: CountNs) -> Value {
    json!({"count": c.count, "ns": c.ns})
}

/// The statistics document (Triton's `{"model_stats": [...]}`) of `rows`; the GraphQL API
/// answers the same document.
pub fn stats_json(rows: Vec<flotilla_core::service::VersionStats>) -> Value {
    let models: Vec<Value> = rows
        .into_iter()
        .map(|r| {
            let s: StatsSnapshot = r.stats;
            let batches: Vec<Value> = s
                .batches
                .iter()
                .map(|(size, [i, c, o])| {
                    json!({"batch_size": size, "compute_input": count_ns(*i), "compute_infer": count_ns(*c), "compute_output": count_ns(*o)})
                })
                .collect();
            json!({
                "name": r.name,
                "version": r.version,
                "last_inference": s.last_inference_ms,
                "inference_count": s.inference_count,
                "execution_count": s.execution_count,
                "inference_stats": {
                    "success": count_ns(s.success),
                    "fail": count_ns(s.fail),
                    "queue": count_ns(s.queue),
                    "compute_input": count_ns(s.compute_input),
                    "compute_infer": count_ns(s.compute_infer),
                    "compute_output": count_ns(s.compute_output),
                    "cache_hit": count_ns(CountNs::default()),
                    "cache_miss": count_ns(CountNs::default()),
                },
                "response_stats": {},
                "batch_stats": batches,
                "memory_usage": [],
            })
        })
        .collect();
    json!({ "model_stats": models })
}

pub async fn stats_all<A: Api>(State(s): State<AppState<A>>) -> Result<Json<Value>> {
    Ok(Json(stats_json(s.service.statistics("", "").await?)))
}

pub async fn model_stats<A: Api>(State(s): State<AppState<A>>, Path(model): Path<String>) -> Result<Json<Value>> {
    Ok(Json(stats_json(s.service.statistics(&model, "").await?)))
}

pub async fn model_stats_v<A: Api>(
    State(s): State<AppState<A>>,
    Path((m, v)): Path<(String, String)>,
) -> Result<Json<Value>> {
    Ok(Json(stats_json(s.service.statistics(&m, &v).await?)))
}

/// Drift monitoring of a model: reference summary, settings, alert states, recent windows.
pub async fn model_drift<A: Api>(State(s): State<AppState<A>>, Path(model): Path<String>) -> Result<Json<Value>> {
    drift_monitor(&s, &model).await?.report(&model).map(Json).ok_or_else(|| no_profile(&s, &model).into())
}

/// The open and recently closed windows' mergeable summaries per version (sketches, counts,
/// moments): what a fleet view merges across workers; `?profile=true` adds the profile and
/// `drift.toml` to score them with.
pub async fn model_drift_window<A: Api>(
    State(s): State<AppState<A>>,
    Path(model): Path<String>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> Result<Json<Value>> {
    let with_profile = query.is_some_and(|q| q.split('&').any(|kv| kv == "profile=true" || kv == "profile=1"));
    drift_monitor(&s, &model)
        .await?
        .open_windows(&model, with_profile)
        .map(Json)
        .ok_or_else(|| no_profile(&s, &model).into())
}

fn no_profile<A>(s: &AppState<A>, model: &str) -> Error {
    match s.options.drift.as_deref() {
        Some(monitor) => monitor.why_none(model),
        None => Error::not_found("drift monitoring is off (serve --drift-monitoring true turns it on)"),
    }
}

async fn drift_monitor<'a, A: Api>(s: &'a AppState<A>, model: &str) -> Result<&'a flotilla_drift::monitor::Monitor> {
    let r = s.service.model_ready(model, "").await;
    if let Some(e) = r.reason.filter(|_| !r.ready) {
        return Err(e.into());
    }
    s.options
        .drift
        .as_deref()
        .ok_or_else(|| Error::not_found("drift monitoring is off (serve --drift-monitoring true turns it on)").into())
}

pub async fn infer<A: Api>(
    State(s): State<AppState<A>>,
    Path(model): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    infer_inner(s, model, String::new(), headers, body).await.unwrap_or_else(|e| e.into_response())
}

pub async fn infer_v<A: Api>(
    State(s): State<AppState<A>>,
    Path((m, v)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    infer_inner(s, m, v, headers, body).await.unwrap_or_else(|e| e.into_response())
}

/// One inference request, in its trace span (the caller's `traceparent` is its parent).
async fn infer_inner<A: Api>(
    s: AppState<A>,
    model: String,
    version: String,
    headers: HeaderMap,
    body: Body,
) -> Result<Response> {
    let span = trace::request_span("http", &model, &version, |k| headers.get(k).and_then(|v| v.to_str().ok()));
    let result = infer_traced(s, model, version, headers, body).instrument(span.clone()).await;
    if let Err(e) = &result {
        trace::failed(&span, &e.0);
    }
    result
}

async fn infer_traced<A: Api>(
    s: AppState<A>,
    model: String,
    version: String,
    headers: HeaderMap,
    body: Body,
) -> Result<Response> {
    let bytes = body::read(&headers, body, s.options.max_request_bytes).await?;
    s.service.shed_early(&model, &version)?;
    let header_len = match headers.get("inference-header-content-length") {
        None => None,
        Some(v) => Some(v.to_str().ok().and_then(|v| v.trim().parse::<usize>().ok()).ok_or_else(|| {
            Error::invalid(format!("Inference-Header-Content-Length {v:?} is not a non-negative integer"))
        })?),
    };
    let mut decoded = stage!("decode").in_scope(|| decode_request(&model, &version, bytes, header_len))?;
    let forwarded = headers.iter().map(|(k, v)| (k.as_str(), v.to_str().ok()));
    protocol::forward_headers(&mut decoded.request.parameters, forwarded, |name| s.service.forwards_header(name));
    let (binary_outputs, default_binary) = (decoded.binary_outputs, decoded.default_binary);
    let response = s.service.infer(decoded.request).await?;
    let (payload, json_len) = stage!("encode")
        .in_scope(|| encode_response(&response, |name| binary_outputs.get(name).copied().unwrap_or(default_binary)))?;
    let mut out_headers = HeaderMap::new();
    if let Some(n) = json_len {
        out_headers.insert("inference-header-content-length", HeaderValue::from(n));
        out_headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    } else {
        out_headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    let payload = match body::accepted_encoding(&headers) {
        Some(enc) => {
            out_headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static(enc));
            body::compress(&payload, enc)
        }
        None => payload,
    };
    Ok((StatusCode::OK, out_headers, payload).into_response())
}

async fn json_body<A: Api>(s: &AppState<A>, headers: &HeaderMap, body: Body) -> Result<Value> {
    let bytes = body::read(headers, body, s.options.max_request_bytes).await?;
    if bytes.iter().all(|b| b.is_ascii_whitespace()) {
        return Ok(json!({}));
    }
    let v: Value = serde_json::from_slice(&bytes).map_err(|e| Error::invalid(format!("malformed JSON body: {e}")))?;
    if !v.is_object() {
        return Err(Error::invalid("request body must be a JSON object").into());
    }
    Ok(v)
}

pub async fn repository_index<A: Api>(
    State(s): State<AppState<A>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>> {
    let req = json_body(&s, &headers, body).await?;
    let ready = match req.get("ready") {
        None => false,
        Some(v) => v.as_bool().ok_or_else(|| Error::invalid("'ready' must be a boolean"))?,
    };
    let rows: Vec<Value> = s
        .service
        .repository_index(ready)
        .await?
        .into_iter()
        .map(|e| {
            let mut row = json!({"name": e.name});
            if !e.version.is_empty() {
                row["version"] = json!(e.version);
            }
            if !e.state.is_empty() {
                row["state"] = json!(e.state);
            }
            if !e.reason.is_empty() {
                row["reason"] = json!(e.reason);
            }
            row
        })
        .collect();
    Ok(Json(Value::Array(rows)))
}

pub async fn load<A: Api>(
    State(s): State<AppState<A>>,
    Path(model): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<StatusCode> {
    let req = json_body(&s, &headers, body).await?;
    let options = match req.get("parameters") {
        None | Some(Value::Null) => protocol::LoadOptions::default(),
        Some(Value::Object(params)) => protocol::load_options(params.iter().map(|(k, v)| (k.as_str(), v.as_str())))?,
        Some(_) => return Err(Error::invalid("'parameters' must be a JSON object").into()),
    };
    s.service.load_model(&model, options).await?;
    Ok(StatusCode::OK)
}

pub async fn unload<A: Api>(
    State(s): State<AppState<A>>,
    Path(model): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<StatusCode> {
    let _ = json_body(&s, &headers, body).await?;
    s.service.unload_model(&model).await?;
    Ok(StatusCode::OK)
}

pub async fn unimplemented_shm() -> ApiError {
    Error::unimplemented("shared-memory regions are not supported by Flotilla; send tensors in the request body").into()
}

pub async fn unimplemented_trace() -> ApiError {
    Error::unimplemented("trace settings are not supported by Flotilla; use its tracing logs (--log-level)").into()
}

pub async fn unimplemented_logging() -> ApiError {
    Error::unimplemented("log settings cannot be changed at run time; use --log-level and --log-format").into()
}

pub async fn not_found(uri: axum::http::Uri) -> ApiError {
    Error::not_found(format!("no endpoint at {}", uri.path())).into()
}
