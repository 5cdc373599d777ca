//! KServe v2 REST adapter: decodes HTTP into [`flotilla_core::Api`] calls and encodes what they
//! return. No business logic lives here. The same adapter fronts a worker
//! ([`flotilla_core::Service`]) and the fleet router.
//!
//! - [`router`] builds the axum router with every endpoint and the shared
//!   metrics middleware.
//! - `json`: the JSON + binary tensor codec; `body`: size limits and compression.
//! - [`auth`]: the bearer-token check in front of every route (when `--auth-tokens` is set).
//! - [`openapi`]: the OpenAPI document of these routes, at `/openapi.json`.
//! - [`features`]: Feast's feature-server endpoints (`/get-online-features`, `/push`).
#![forbid(unsafe_code)]

pub mod auth;
pub mod body;
pub mod features;
mod handlers;
pub mod json;
pub mod openapi;

pub use handlers::stats_json;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use flotilla_core::{Api, Error};
use std::sync::Arc;
use std::time::Instant;

/// Settings of the HTTP adapter.
#[derive(Clone)]
pub struct HttpOptions {
    /// Bodies above this many bytes (compressed or not) are answered 413.
    pub max_request_bytes: usize,
    /// The feature store behind Feast's `/get-online-features` and `/push`, when one is open.
    pub features: Option<Arc<flotilla_features::FeatureStore>>,
    /// Drift monitoring behind `GET /v2/models/{m}/drift`, when it is on.
    pub drift: Option<Arc<flotilla_drift::monitor::Monitor>>,
    /// Bearer tokens every route but the health probes needs (`--auth-tokens`); `None`: open.
    pub auth: Option<Arc<flotilla_core::auth::Auth>>,
}

pub(crate) struct AppState<A> {
    pub service: Arc<A>,
    pub options: HttpOptions,
}

impl<A> Clone for AppState<A> {
    fn clone(&self) -> Self {
        Self { service: self.service.clone(), options: self.options.clone() }
    }
}

/// An error on its way to the client as `{"error": "..."}` with the table's status (and
/// `Retry-After` on 429); other crates' routes (the fleet's) answer errors through it too.
pub struct ApiError(pub Error);

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        Self(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = axum::http::StatusCode::from_u16(self.0.http_status())
            .unwrap_or(axum::http::StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::json!({ "error": self.0.message });
        let kind = [(flotilla_core::error::KIND_HEADER, self.0.kind.as_str())];
        if status == axum::http::StatusCode::TOO_MANY_REQUESTS {
            // Shed load: tell the client when to come back.
            return (status, [(axum::http::header::RETRY_AFTER, "1")], kind, axum::Json(body)).into_response();
        }
        if status == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
            // The rest of the body is never read, so this connection ends after the answer: say
            // so, or a client reuses it for its next request and finds it closed (HTTP/1.1 only;
            // HTTP/2 drops the header and resets just the stream).
            return (status, [(axum::http::header::CONNECTION, "close")], kind, axum::Json(body)).into_response();
        }
        (status, kind, axum::Json(body)).into_response()
    }
}

/// The REST router over `service`: the KServe v2 and Triton endpoints, Feast's feature-server
/// endpoints when `options.features` is set, the drift endpoints when `options.drift` is, and
/// `extra` (the process's own routes: fleet membership, admin), all under the metrics middleware.
pub fn router<A: Api>(service: Arc<A>, options: HttpOptions, extra: Router) -> Router {
    use handlers::*;
    let features = options.features.clone().map(|f| features::router(f, options.max_request_bytes));
    let drift = options.drift.is_some();
    let auth = options.auth.clone();
    let state = AppState { service, options };
    let mut router = Router::new()
        .route("/v2", get(server_metadata::<A>))
        .route("/v2/health/live", get(live::<A>))
        .route("/v2/health/ready", get(ready::<A>))
        .route("/v2/models/stats", get(stats_all::<A>))
        .route("/v2/models/{model}", get(model_metadata::<A>))
        .route("/v2/models/{model}/versions/{version}", get(model_metadata_v::<A>))
        .route("/v2/models/{model}/ready", get(model_ready::<A>))
        .route("/v2/models/{model}/versions/{version}/ready", get(model_ready_v::<A>))
        .route("/v2/models/{model}/config", get(model_config::<A>))
        .route("/v2/models/{model}/versions/{version}/config", get(model_config_v::<A>))
        .route("/v2/models/{model}/stats", get(model_stats::<A>))
        .route("/v2/models/{model}/versions/{version}/stats", get(model_stats_v::<A>))
        .route("/v2/models/{model}/infer", post(infer::<A>))
        .route("/v2/models/{model}/versions/{version}/infer", post(infer_v::<A>))
        .route("/v2/repository/index", post(repository_index::<A>))
        .route("/v2/repository/models/{model}/load", post(load::<A>))
        .route("/v2/repository/models/{model}/unload", post(unload::<A>))
        .route("/v2/systemsharedmemory", get(unimplemented_shm))
        .route("/v2/systemsharedmemory/{*rest}", get(unimplemented_shm).post(unimplemented_shm))
        .route("/v2/cudasharedmemory", get(unimplemented_shm))
        .route("/v2/cudasharedmemory/{*rest}", get(unimplemented_shm).post(unimplemented_shm))
        .route("/v2/trace/setting", get(unimplemented_trace).post(unimplemented_trace))
        .route("/v2/models/{model}/trace/setting", get(unimplemented_trace).post(unimplemented_trace))
        .route("/v2/logging", get(unimplemented_logging).post(unimplemented_logging));
    let described = openapi::document(openapi::Parts { features: features.is_some(), drift });
    router = router.route("/openapi.json", get(move || std::future::ready(axum::Json(described.clone()))));
    if drift {
        router = router
            .route("/v2/models/{model}/drift", get(model_drift::<A>))
            .route("/v2/models/{model}/drift/window", get(model_drift_window::<A>));
    }
    let mut router = router.with_state(state.clone()).merge(extra);
    if let Some(f) = features {
        router = router.merge(f);
    }
    // The token check runs inside the metrics middleware, so refusals are counted too.
    auth::guard(router.fallback(not_found), auth).layer(axum::middleware::from_fn_with_state(state, record::<A>))
}

/// Shared middleware: counts responses by endpoint and status and times them.
async fn record<A: Api>(State(state): State<AppState<A>>, request: Request, next: Next) -> Response {
    let endpoint =
        request.extensions().get::<MatchedPath>().map(|p| p.as_str().to_string()).unwrap_or_else(|| "unmatched".into());
    let start = Instant::now();
    let response = next.run(request).await;
    let m = state.service.metrics();
    let code = response.status().as_u16().to_string();
    m.responses.with_label_values(&["http", &endpoint, &code]).inc();
    m.response_duration.with_label_values(&["http", &endpoint]).observe(start.elapsed().as_secs_f64());
    response
}
