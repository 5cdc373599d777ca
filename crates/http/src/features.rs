//! Feast's feature-server endpoints over the feature store: `POST /get-online-features` and
//! `POST /push` (the same JSON as `feast serve`), plus `GET /health`.

use crate::body;
use crate::ApiError;
use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use flotilla_core::Error;
use flotilla_features::FeatureStore;
use std::sync::Arc;

#[derive(Clone)]
struct FeatureState {
    store: Arc<FeatureStore>,
    max_request_bytes: usize,
}

/// The feature-server routes (merged into the REST router when a feature store is open).
pub fn router(store: Arc<FeatureStore>, max_request_bytes: usize) -> Router {
    Router::new()
        .route("/get-online-features", post(get_online_features))
        .route("/push", post(push))
        .route("/health", get(|| async { "" }))
        .with_state(FeatureState { store, max_request_bytes })
}

async fn json_body(s: &FeatureState, headers: &HeaderMap, body: Body) -> Result<serde_json::Value, ApiError> {
    let bytes = body::read(headers, body, s.max_request_bytes).await?;
    serde_json::from_slice(&bytes).map_err(|e| ApiError(Error::invalid(format!("request body is not valid JSON: {e}"))))
}

async fn get_online_features(State(s): State<FeatureState>, headers: HeaderMap, body: Body) -> Response {
    let result = async {
        let body = json_body(&s, &headers, body).await?;
        let request = s.store.parse_online_request(&body).map_err(|e| ApiError(e.into_core()))?;
        let response = s.store.get_online_features(&request).await.map_err(|e| ApiError(e.into_core()))?;
        Ok::<_, ApiError>(Json(response).into_response())
    };
    result.await.unwrap_or_else(|e| e.into_response())
}

async fn push(State(s): State<FeatureState>, headers: HeaderMap, body: Body) -> Response {
    let result = async {
        let body = json_body(&s, &headers, body).await?;
        let outcome = s.store.push(&body).await.map_err(|e| ApiError(e.into_core()))?;
        Ok::<_, ApiError>(
            Json(serde_json::json!({ "applied": outcome.applied, "stale": outcome.stale })).into_response(),
        )
    };
    result.await.unwrap_or_else(|e| e.into_response())
}
