//! The live web dashboard at `/dashboard` on the metrics port (a worker's, and the router's for
//! the fleet). Static assets are embedded (`include_str!`); the pages poll JSON endpoints:
//!
//! - `GET /dashboard`, `/dashboard/{page}`: the page shell (`assets/index.html`); `app.js` draws
//!   the page the path names (serving, features, drift, fleet) with the vendored uPlot.
//! - `GET /dashboard/assets/{file}`: app.js, style.css, uPlot (see `assets/README.md`).
//! - `GET /dashboard/api/pages`: the pages this process has data for.
//! - `GET /dashboard/api/series?page=serving|features`: the [`series::Sampler`]'s ring.
//! - `GET /dashboard/api/drift`: each model's `/v2/models/{m}/drift` document ([`Monitor::report`]).
//! - `GET /dashboard/api/fleet`: the router's `/v2/fleet` view and its recent events.

pub mod series;

use axum::extract::{Path, RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use flotilla_drift::monitor::Monitor;
use flotilla_fleet::router::Fleet;
use serde_json::{json, Value};
use series::Sampler;
use std::sync::Arc;

const INDEX: &str = include_str!("assets/index.html");
const ASSETS: &[(&str, &str, &str)] = &[
    ("app.js", "text/javascript; charset=utf-8", include_str!("assets/app.js")),
    ("style.css", "text/css; charset=utf-8", include_str!("assets/style.css")),
    ("uPlot.iife.min.js", "text/javascript; charset=utf-8", include_str!("assets/uPlot.iife.min.js")),
    ("uPlot.min.css", "text/css; charset=utf-8", include_str!("assets/uPlot.min.css")),
    ("LICENSE", "text/plain; charset=utf-8", include_str!("assets/LICENSE")),
];

/// What the dashboard reads: the metrics ring, and drift monitoring or the fleet when present.
#[derive(Clone)]
pub struct Dashboard {
    pub sampler: Arc<Sampler>,
    pub drift: Option<Arc<Monitor>>,
    pub fleet: Option<Arc<Fleet>>,
    /// Whether a feature store is open (the Feature store page).
    pub features: bool,
}

impl Dashboard {
    /// A dashboard over `registry`; start [`Sampler::run`] on `self.sampler`.
    pub fn new(registry: prometheus::Registry) -> Dashboard {
        Dashboard { sampler: Arc::new(Sampler::new(registry)), drift: None, fleet: None, features: false }
    }

    /// The `/dashboard` routes.
    pub fn routes(self) -> Router {
        Router::new()
            .route("/dashboard", get(index))
            .route("/dashboard/", get(index))
            .route("/dashboard/{page}", get(index))
            .route("/dashboard/assets/{file}", get(asset))
            .route("/dashboard/api/pages", get(pages))
            .route("/dashboard/api/series", get(series))
            .route("/dashboard/api/drift", get(drift))
            .route("/dashboard/api/fleet", get(fleet))
            .with_state(self)
    }
}

async fn index() -> Response {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8"), (header::CACHE_CONTROL, "no-cache")], INDEX).into_response()
}

async fn asset(Path(file): Path<String>) -> Response {
    match ASSETS.iter().find(|(name, _, _)| *name == file) {
        Some((_, kind, body)) => ([(header::CONTENT_TYPE, *kind)], *body).into_response(),
        None => (StatusCode::NOT_FOUND, "no such asset").into_response(),
    }
}

async fn pages(State(d): State<Dashboard>) -> Json<Value> {
    let mut pages = Vec::new();
    if d.fleet.is_none() {
        pages.push("serving");
    }
    if d.drift.is_some() {
        pages.push("drift");
    }
    if d.features {
        pages.push("features");
    }
    if d.fleet.is_some() {
        pages.extend(["fleet", "serving"]);
    }
    Json(json!({ "pages": pages }))
}

/// The value of `key` in a query string (`a=1&b=2`; no percent-decoding: the values are names).
fn query_value<'a>(query: &'a Option<String>, key: &str) -> Option<&'a str> {
    query.as_deref()?.split('&').find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

async fn series(State(d): State<Dashboard>, RawQuery(q): RawQuery) -> Response {
    let page = query_value(&q, "page").unwrap_or("serving").to_string();
    match d.sampler.page(&page) {
        Some(v) => Json(v).into_response(),
        None => (StatusCode::NOT_FOUND, Json(json!({"error": format!("no page {page:?}: serving or features")})))
            .into_response(),
    }
}

/// Each model with a drift profile: its `/v2/models/{m}/drift` document. The models are the
/// ones the registry says are loaded (`flotilla_model_ready`).
async fn drift(State(d): State<Dashboard>) -> Response {
    let Some(monitor) = d.drift.clone() else {
        return (StatusCode::NOT_FOUND, Json(json!({"error": "drift monitoring is off"}))).into_response();
    };
    let models = loaded_models(d.sampler.registry());
    let reports =
        tokio::task::spawn_blocking(move || models.iter().filter_map(|m| monitor.report(m)).collect::<Vec<_>>())
            .await
            .unwrap_or_default();
    Json(json!({ "models": reports })).into_response()
}

/// The models with a ready version, by the `flotilla_model_ready` gauge.
fn loaded_models(registry: &prometheus::Registry) -> Vec<String> {
    let mut models: Vec<String> = registry
        .gather()
        .iter()
        .filter(|f| f.name() == "flotilla_model_ready")
        .flat_map(|f| f.get_metric().iter())
        .filter(|m| m.get_gauge().get_value() > 0.0)
        .filter_map(|m| m.get_label().iter().find(|l| l.name() == "model").map(|l| l.value().to_string()))
        .collect();
    models.sort();
    models.dedup();
    models
}

async fn fleet(State(d): State<Dashboard>, RawQuery(q): RawQuery) -> Response {
    let Some(fleet) = d.fleet.as_ref() else {
        return (StatusCode::NOT_FOUND, Json(json!({"error": "the fleet page is on the router (flotilla route)"})))
            .into_response();
    };
    let mut view = flotilla_fleet::http::fleet_view(fleet);
    view["events"] = json!(fleet.events().since(query_value(&q, "since_ms").and_then(|v| v.parse().ok())));
    Json(view).into_response()
}
